/* request.c - see request.h. */
#include "request.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "conn.h"
#include "fanout.h"
#include "log.h"
#include "runtime.h"
#include "worker.h"

req_t *req_new(conn_t *c) {
  req_t *r = calloc(1, sizeof(*r));
  if (r == NULL) return NULL;
  r->conn = c;
  r->w = c->w;
  list_init(&r->hb);
  list_init(&r->subs);
  r->keep_alive = 1;
  return r;
}

void req_dispatch(req_t *r) {
  http_msg_t *m = &r->msg;
  r->keep_alive = m->keep_alive;
  r->head_only = m->method == HTTP_METHOD_HEAD;
  const char *q = memchr(m->raw.p, '?', m->url_len);
  r->path_len = q ? (size_t)(q - m->raw.p) : m->url_len;
  if (m->raw.p[0] != '/') {
    /* Absolute-form and authority-form targets are for proxies. */
    r->keep_alive = 0;
    req_respond_error(r, 400, "request target must be a path");
    return;
  }
  if (rt_dispatch(r->w->rt, r) != 0) {
    r->keep_alive = 0;
    if (!r->responded) req_respond_error(r, 503, "out of memory");
  }
}

void req_on_message(req_t *r) {
  if (r->streaming && r->conn != NULL) conn_begin_stream(r->conn);
  if (r->wait == REQ_WAIT_BODY && r->waiter != NULL) {
    struct task *t = r->waiter;
    r->waiter = NULL;
    r->wait = REQ_WAIT_NONE;
    rt_wake(t, 0); /* may finish the request: r is not touched after */
  }
}

void req_on_drain(req_t *r) {
  if (r->on_drain != NULL) r->on_drain(r->on_drain_arg);
  if (r->wait == REQ_WAIT_DRAIN && r->waiter != NULL) {
    struct task *t = r->waiter;
    r->waiter = NULL;
    r->wait = REQ_WAIT_NONE;
    rt_wake(t, 0);
  }
}

/* Releases what every ending path releases. */
static void release(req_t *r) {
  fanout_unsubscribe_all(r);
  list_remove(&r->hb);
  http_msg_free(&r->msg);
  free(r);
}

void req_abort(req_t *r) {
  r->conn = NULL;
  list_remove(&r->hb);
  fanout_unsubscribe_all(r);
  /* From here every Lua handle sees "closed". */
  rt_detach_handles(r);
  r->on_drain = NULL;
  /* A handler draining an upstream (drain_on_disconnect) runs on without
   * the request; any other handler ends here. */
  if (r->task != NULL && rt_draining(r->task)) rt_detach_task(r->task);
  if (r->waiter != NULL && r->waiter != r->task) {
    struct task *t = r->waiter;
    r->waiter = NULL;
    r->wait = REQ_WAIT_NONE;
    rt_wake(t, -EPIPE); /* a send or body read of another task fails "closed" */
  }
  r->waiter = NULL;
  r->wait = REQ_WAIT_NONE;
  if (r->task != NULL) rt_kill(r->task); /* ends it; clears r->task */
  release(r);
}

void req_free(req_t *r) {
  rt_detach_handles(r);
  release(r);
}

int req_finished(const req_t *r) {
  return (r->responded || r->stream_ended) && r->msg.complete && r->task == NULL;
}

/* Appends the status line and the headers every response carries. */
static int begin_head(buf_t *b, req_t *r, int status) {
  return buf_printf(b, "HTTP/1.1 %d %s\r\n%s", status, http_reason(status), worker_date(r->w));
}

/* Appends Connection when it must be said, then the blank line. */
static int end_head(buf_t *b, req_t *r) {
  if (!r->keep_alive || r->w->stopping) {
    r->keep_alive = 0;
    return buf_puts(b, "Connection: close\r\n\r\n");
  }
  if (r->msg.minor == 0) return buf_puts(b, "Connection: keep-alive\r\n\r\n");
  return buf_puts(b, "\r\n");
}

/* Queues one frame on the carrier. */
static int send_frame(req_t *r, frame_t *f) {
  if (r->conn == NULL) return -EPIPE;
  return conn_write(r->conn, f);
}

/* Marks the response complete and lets the connection move on when the
 * request is otherwise finished. */
static void responded(req_t *r) {
  r->responded = 1;
  if (r->conn != NULL && req_finished(r)) conn_request_done(r->conn);
}

static int no_body_status(int status) {
  return (status >= 100 && status < 200) || status == 204 || status == 304;
}

int req_respond_frame(req_t *r, int status, const char *hdrs, size_t hlen, frame_t *body,
                      size_t content_length) {
  if (r->responded || r->streaming) return -EALREADY;
  if (r->conn == NULL) return -EPIPE;
  buf_t b = BUF_INIT;
  int rc = begin_head(&b, r, status);
  if (!rc && hlen) rc = buf_append(&b, hdrs, hlen);
  if (!rc && !no_body_status(status)) rc = buf_printf(&b, "Content-Length: %zu\r\n", content_length);
  if (!rc) rc = end_head(&b, r);
  frame_t *head = rc ? NULL : frame_copy(b.p, b.len);
  buf_free(&b);
  if (head == NULL) return -ENOMEM;
  rc = send_frame(r, head);
  frame_unref(head);
  if (!rc && body != NULL && !r->head_only && !no_body_status(status)) rc = send_frame(r, body);
  if (rc) return rc;
  responded(r);
  return 0;
}

int req_respond(req_t *r, int status, const char *hdrs, size_t hlen, const char *body,
                size_t blen) {
  if (r->responded || r->streaming) return -EALREADY;
  if (r->conn == NULL) return -EPIPE;
  /* Head and body in one frame: one allocation, one buffer to write. */
  buf_t b = BUF_INIT;
  int rc = begin_head(&b, r, status);
  if (!rc && hlen) rc = buf_append(&b, hdrs, hlen);
  if (!rc && !no_body_status(status)) rc = buf_printf(&b, "Content-Length: %zu\r\n", blen);
  if (!rc) rc = end_head(&b, r);
  if (!rc && blen && !r->head_only && !no_body_status(status)) rc = buf_append(&b, body, blen);
  frame_t *f = rc ? NULL : frame_copy(b.p, b.len);
  buf_free(&b);
  if (f == NULL) return -ENOMEM;
  rc = send_frame(r, f);
  frame_unref(f);
  if (rc) return rc;
  responded(r);
  return 0;
}

int req_respond_error(req_t *r, int status, const char *text) {
  char body[256];
  int n = snprintf(body, sizeof(body), "%s\n", text ? text : http_reason(status));
  if (n < 0 || (size_t)n >= sizeof(body)) n = sizeof(body) - 1;
  static const char ct[] = "Content-Type: text/plain; charset=utf-8\r\n";
  return req_respond(r, status, ct, sizeof(ct) - 1, body, (size_t)n);
}

int req_sse_open(req_t *r, const char *hdrs, size_t hlen, long retry) {
  if (r->responded || r->streaming) return -EALREADY;
  if (r->conn == NULL) return -EPIPE;
  static const char sse_head[] =
      "Content-Type: text/event-stream; charset=utf-8\r\n"
      "Cache-Control: no-cache\r\n"
      "X-Accel-Buffering: no\r\n";
  buf_t b = BUF_INIT;
  int rc = begin_head(&b, r, 200);
  if (!rc) rc = buf_append(&b, sse_head, sizeof(sse_head) - 1);
  if (!rc && hlen) rc = buf_append(&b, hdrs, hlen);
  /* The body ends when the connection does: no length, no chunking, so
   * every subscriber gets the very same frame bytes. */
  if (!rc) rc = buf_puts(&b, "Connection: close\r\n\r\n");
  if (!rc && retry >= 0 && !r->head_only) rc = buf_printf(&b, "retry: %ld\n\n", retry);
  frame_t *f = rc ? NULL : frame_copy(b.p, b.len);
  buf_free(&b);
  if (f == NULL) return -ENOMEM;
  rc = send_frame(r, f);
  frame_unref(f);
  if (rc) return rc;
  r->keep_alive = 0;
  r->streaming = 1;
  r->last_out = worker_now(r->w);
  list_push_back(&r->w->streams, &r->hb);
  /* Headers go out at the end of this loop iteration (the before-sleep
   * flush), not with the first event. */
  conn_begin_stream(r->conn);
  if (r->head_only) req_stream_end(r);
  return 0;
}

int req_stream_closed(const req_t *r) {
  return r->conn == NULL || r->stream_ended || !r->streaming;
}

int req_stream_write(req_t *r, frame_t *f) {
  if (req_stream_closed(r)) return -EPIPE;
  int rc = conn_write(r->conn, f);
  if (rc) return rc;
  r->last_out = worker_now(r->w);
  list_move_back(&r->w->streams, &r->hb);
  return 0;
}

void req_stream_end(req_t *r) {
  if (!r->streaming || r->stream_ended) return;
  r->stream_ended = 1;
  list_remove(&r->hb);
  if (r->conn != NULL) conn_end(r->conn);
}

size_t req_queued(const req_t *r) { return r->conn ? r->conn->wq.bytes : 0; }

void req_handler_done(req_t *r) {
  if (r->streaming) {
    /* A stream with nothing left to feed it ends with its handler; a
     * subscribed one lives on, fed by the hub, without the request's head
     * and body bytes (idle subscribers stay small). */
    if (!fanout_subscribed(r))
      req_stream_end(r);
    else if (r->msg.complete)
      http_msg_shrink(&r->msg);
  } else if (!r->responded && r->conn != NULL) {
    log_error("handler for %.*s returned no response", (int)r->path_len, r->msg.raw.p);
    r->keep_alive = 0;
    req_respond_error(r, 500, "handler returned no response");
    return; /* responded() moved the connection on */
  }
  if (r->conn != NULL && req_finished(r)) conn_request_done(r->conn);
}

int req_remote_addr(const req_t *r, char *out, size_t len) {
  if (r->conn == NULL) return -EPIPE;
  struct sockaddr_storage ss;
  int n = sizeof(ss);
  int rc = uv_tcp_getpeername(&r->conn->tcp, (struct sockaddr *)&ss, &n);
  if (rc) return rc;
  if (ss.ss_family == AF_INET6) return uv_ip6_name((struct sockaddr_in6 *)&ss, out, len);
  return uv_ip4_name((struct sockaddr_in *)&ss, out, len);
}

void req_continue(req_t *r) {
  if (!r->msg.expect_continue || r->sent_continue || r->msg.complete || r->conn == NULL) return;
  r->sent_continue = 1;
  frame_t *f = frame_copy("HTTP/1.1 100 Continue\r\n\r\n", 25);
  if (f == NULL) return;
  conn_write(r->conn, f); /* leaves with the before-sleep flush */
  frame_unref(f);
}
