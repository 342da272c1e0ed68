/* request.c - see request.h. */
#include "request.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "access.h"
#include "buf.h"
#include "conn.h"
#include "fanout.h"
#include "log.h"
#include "put.h"
#include "runtime.h"
#include "worker.h"

/* A spare request is poisoned for AddressSanitizer, so that a use after its
 * end is still reported although its memory was not freed. */
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#else
#define ASAN_POISON_MEMORY_REGION(p, n) ((void)(p), (void)(n))
#define ASAN_UNPOISON_MEMORY_REGION(p, n) ((void)(p), (void)(n))
#endif

/* Ended requests a worker keeps for reuse, with their message buffers when
 * those stayed small: a keep-alive client's next request then allocates
 * nothing for its head.  Larger buffers (an upload's body) are freed. */
#define REQ_SPARE 32
#define REQ_SPARE_KEEP (4 * 1024)

req_t *req_new(conn_t *c) {
  worker_t *w = c->w;
  req_t *r = w->spare_reqs;
  if (r != NULL) {
    ASAN_UNPOISON_MEMORY_REGION(r, sizeof(*r));
    w->spare_reqs = r->next_spare;
    w->nspare_reqs--;
    r->next_spare = NULL;
  } else {
    r = calloc(1, sizeof(*r));
    if (r == NULL) return NULL;
  }
  r->conn = c;
  r->w = c->w;
  list_init(&r->hb);
  list_init(&r->subs);
  r->keep_alive = 1;
  return r;
}

void req_dispatch(req_t *r) {
  http_msg_t *m = &r->msg;
  r->t0 = uv_hrtime();
  if (r->w->cfg->access_log && r->conn->peer == NULL) {
    /* Read now, while the peer is surely there: a stream is logged when it
     * ends, and after a reset the address can no longer be read. */
    char addr[64];
    req_remote_addr(r, addr, sizeof(addr));
  }
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

/* Frees the head and body bytes of a subscribed stream once neither its
 * handler nor the parser needs them: the handler has ended and the message
 * is complete, in whichever order the two came (a subscribing handler
 * usually returns before its GET is complete: the head is dispatched
 * first).  Idle subscribers stay small; the url stays readable. */
static void release_head(req_t *r) {
  if (r->streaming && r->task == NULL && r->msg.complete && fanout_subscribed(r))
    http_msg_shrink(&r->msg);
}

void req_on_message(req_t *r) {
  if (r->streaming && r->conn != NULL) conn_begin_stream(r->conn);
  release_head(r);
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

/* Releases what every ending path releases; the request itself is kept as
 * a spare (cleared, as calloc would give it) while the worker has room. */
static void release(req_t *r) {
  worker_t *w = r->w;
  if (r->streaming) STAT_ADD(w, streams, -1);
  fanout_unsubscribe_all(r);
  list_remove(&r->hb);
  if (w->nspare_reqs >= REQ_SPARE) {
    http_msg_free(&r->msg);
    free(r);
    return;
  }
  if (r->msg.raw.cap > REQ_SPARE_KEEP || r->msg.body.cap > REQ_SPARE_KEEP)
    http_msg_free(&r->msg);
  else
    http_msg_reset(&r->msg);
  http_msg_t msg = r->msg;
  memset(r, 0, sizeof(*r));
  r->msg = msg;
  r->next_spare = w->spare_reqs;
  w->spare_reqs = r;
  w->nspare_reqs++;
  ASAN_POISON_MEMORY_REGION(r, sizeof(*r));
}

void req_drop_spares(worker_t *w) {
  while (w->spare_reqs != NULL) {
    req_t *r = w->spare_reqs;
    ASAN_UNPOISON_MEMORY_REGION(r, sizeof(*r));
    w->spare_reqs = r->next_spare;
    http_msg_free(&r->msg);
    free(r);
  }
  w->nspare_reqs = 0;
}

void req_abort(req_t *r) {
  access_log(r); /* while the peer's address can still be read */
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
  access_log(r);
  rt_detach_handles(r);
  release(r);
}

int req_finished(const req_t *r) {
  return (r->responded || r->stream_ended) && r->msg.complete && r->task == NULL;
}

/* Room for the status line and the Date line ("HTTP/1.1 ", the status,
 * a space, a reason of at most 31 bytes (http_reason's longest), CRLF and
 * the Date line's 37), and for the Content-Length and Connection lines with
 * the blank line that ends a head (at most 16 + 20 + 2 + 26). */
#define HEAD_START_MAX 128
#define HEAD_END_MAX 96

/* Renders the status line and the Date line every response carries into
 * out (HEAD_START_MAX bytes); returns their length.  Written by hand, not
 * with printf: this runs for every response. */
static size_t head_start(req_t *r, int status, char *out) {
  r->status = (uint16_t)status;
  const char *reason = http_reason(status);
  size_t dlen;
  const char *date = worker_date(r->w, &dlen);
  char *p = put_bytes(out, "HTTP/1.1 ", 9);
  p = put_u64(p, (uint64_t)(unsigned)status);
  *p++ = ' ';
  p = put_bytes(p, reason, strlen(reason));
  p = put_bytes(p, "\r\n", 2);
  p = put_bytes(p, date, dlen);
  return (size_t)(p - out);
}

static int no_body_status(int status) {
  return (status >= 100 && status < 200) || status == 204 || status == 304;
}

/* Renders Content-Length (for a status that has a body), Connection when
 * it must be said, and the blank line into out (HEAD_END_MAX bytes);
 * returns their length. */
static size_t head_end(req_t *r, int status, size_t content_length, char *out) {
  char *p = out;
  if (!no_body_status(status)) {
    p = put_bytes(p, "Content-Length: ", 16);
    p = put_u64(p, content_length);
    p = put_bytes(p, "\r\n", 2);
  }
  if (!r->keep_alive || r->w->stopping) {
    r->keep_alive = 0;
    p = put_bytes(p, "Connection: close\r\n\r\n", 21);
  } else if (r->msg.minor == 0) {
    p = put_bytes(p, "Connection: keep-alive\r\n\r\n", 26);
  } else {
    p = put_bytes(p, "\r\n", 2);
  }
  return (size_t)(p - out);
}

/* Makes the frame of a response: the head (the status line, Date, hdrs,
 * Content-Length and Connection) and then blen bytes of body, in one
 * allocation.  NULL when out of memory. */
static frame_t *response_frame(req_t *r, int status, const char *hdrs, size_t hlen,
                               size_t content_length, const char *body, size_t blen) {
  char start[HEAD_START_MAX], end[HEAD_END_MAX];
  size_t slen = head_start(r, status, start);
  size_t elen = head_end(r, status, content_length, end);
  frame_t *f = frame_new(slen + hlen + elen + blen);
  if (f == NULL) return NULL;
  char *p = put_bytes(f->data, start, slen);
  if (hlen) p = put_bytes(p, hdrs, hlen);
  p = put_bytes(p, end, elen);
  if (blen) memcpy(p, body, blen);
  return f;
}

/* Queues one frame on the carrier. */
static int send_frame(req_t *r, frame_t *f) {
  if (r->conn == NULL) return -EPIPE;
  r->bytes += f->len;
  return conn_write(r->conn, f);
}

/* Marks the response complete and lets the connection move on when the
 * request is otherwise finished. */
static void responded(req_t *r) {
  r->responded = 1;
  if (r->conn != NULL && req_finished(r)) conn_request_done(r->conn);
}

int req_respond_frame(req_t *r, int status, const char *hdrs, size_t hlen, frame_t *body,
                      size_t content_length) {
  if (r->responded || r->streaming) return -EALREADY;
  if (r->conn == NULL) return -EPIPE;
  frame_t *head = response_frame(r, status, hdrs, hlen, content_length, NULL, 0);
  if (head == NULL) return -ENOMEM;
  int rc = send_frame(r, head);
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
  size_t sent = (r->head_only || no_body_status(status)) ? 0 : blen;
  frame_t *f = response_frame(r, status, hdrs, hlen, blen, body, sent);
  if (f == NULL) return -ENOMEM;
  int rc = send_frame(r, f);
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
  char start[HEAD_START_MAX];
  size_t slen = head_start(r, 200, start);
  buf_t b = BUF_INIT;
  int rc = buf_append(&b, start, slen);
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
  STAT_ADD(r->w, streams, 1);
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
  r->bytes += f->len;
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
     * subscribed one lives on, fed by the hub. */
    if (!fanout_subscribed(r))
      req_stream_end(r);
    else
      release_head(r);
  } else if (!r->responded && r->conn != NULL) {
    log_error("handler for %.*s returned no response", (int)r->path_len, r->msg.raw.p);
    r->keep_alive = 0;
    req_respond_error(r, 500, "handler returned no response");
    return; /* responded() moved the connection on */
  }
  if (r->conn != NULL && req_finished(r)) conn_request_done(r->conn);
}

int req_remote_addr(const req_t *r, char *out, size_t len) {
  conn_t *c = r->conn;
  if (c == NULL) return -EPIPE;
  if (c->peer == NULL) {
    /* Once per connection: a keep-alive client's requests share it. */
    char text[64];
    struct sockaddr_storage ss;
    int n = sizeof(ss);
    int rc = uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &n);
    if (rc == 0)
      rc = ss.ss_family == AF_INET6 ? uv_ip6_name((struct sockaddr_in6 *)&ss, text, sizeof(text))
                                    : uv_ip4_name((struct sockaddr_in *)&ss, text, sizeof(text));
    if (rc) return rc;
    c->peer = strdup(text);
    if (c->peer == NULL) return snprintf(out, len, "%s", text) < 0 ? -ENOMEM : 0;
  }
  snprintf(out, len, "%s", c->peer);
  return 0;
}

void req_continue(req_t *r) {
  if (!r->msg.expect_continue || r->sent_continue || r->msg.complete || r->conn == NULL) return;
  r->sent_continue = 1;
  frame_t *f = frame_copy("HTTP/1.1 100 Continue\r\n\r\n", 25);
  if (f == NULL) return;
  conn_write(r->conn, f); /* leaves with the before-sleep flush */
  frame_unref(f);
}
