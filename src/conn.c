/* conn.c - see conn.h. */
#include "conn.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "request.h"
#include "worker.h"

#define IOV_MAX_BATCH 64

static void on_close(uv_handle_t *h);
static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);
static void parse_input(conn_t *c, const char *p, size_t len);

/* Puts c on the head-wait list with a fresh deadline. */
static void wait_head(conn_t *c) {
  worker_t *w = c->w;
  c->state = CONN_HEAD_WAIT;
  c->deadline = worker_now(w) + (uint64_t)(w->cfg->header_timeout * 1000);
  list_move_back(&w->head_wait, &c->tnode);
}

/* Puts c on the idle list: keep-alive between requests. */
static void wait_idle(conn_t *c) {
  worker_t *w = c->w;
  c->state = CONN_IDLE;
  c->deadline = worker_now(w) + (uint64_t)(w->cfg->idle_timeout * 1000);
  list_move_back(&w->idle_wait, &c->tnode);
}

/* Close callback for a connection that never got past accept. */
static void free_unaccepted(uv_handle_t *h) { free(h); }

/* Answers an over-capacity connection with 503 and closes it; the answer is
 * a single small write that a fresh socket buffer always takes. */
static void refuse(worker_t *w, uv_tcp_t *tcp) {
  static const char msg[] =
      "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
      "Content-Length: 20\r\nRetry-After: 1\r\nConnection: close\r\n\r\nserver at capacity\r\n";
  uv_buf_t b = uv_buf_init((char *)msg, sizeof(msg) - 1);
  uv_try_write((uv_stream_t *)tcp, &b, 1);
  /* One line a second at most, with a count: a flood must not flood the log. */
  w->refused++;
  uint64_t now = worker_now(w);
  if (now - w->refused_logged_at >= 1000 || w->refused_logged_at == 0) {
    log_warn("%llu connection%s refused: at the cap of %d connections", (unsigned long long)w->refused,
             w->refused == 1 ? "" : "s", w->cfg->max_conns);
    w->refused = 0;
    w->refused_logged_at = now;
  }
  uv_close((uv_handle_t *)tcp, free_unaccepted);
}

void conn_accept(worker_t *w) {
  conn_t *c = calloc(1, sizeof(*c));
  if (c == NULL) {
    log_error("accept: out of memory");
    return;
  }
  uv_tcp_init(&w->loop, &c->tcp);
  if (uv_accept((uv_stream_t *)&w->listener, (uv_stream_t *)&c->tcp) != 0) {
    uv_close((uv_handle_t *)&c->tcp, free_unaccepted);
    return;
  }
  int n = atomic_fetch_add(&w->srv->nconns, 1) + 1;
  if (n > w->cfg->max_conns || w->stopping) {
    atomic_fetch_sub(&w->srv->nconns, 1);
    refuse(w, &c->tcp);
    return;
  }
  c->w = w;
  c->tcp.data = c;
  list_init(&c->pend);
  list_init(&c->tnode);
  list_push_back(&w->conns, &c->all);
  w->nconns++;
  c->parser = http_parser_new(CONN_MAX_HEAD, w->app.max_body);
  if (c->parser == NULL) {
    conn_close(c);
    return;
  }
  uv_tcp_nodelay(&c->tcp, 1);
  wait_head(c);
  c->reading = 1;
  uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
}

/* Hands out the worker's read buffer: every read is parsed (or stashed) before
 * the next one, so one buffer serves all of the worker's connections and an
 * idle connection holds none. */
static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)suggested;
  worker_t *w = ((conn_t *)h->data)->w;
  *buf = uv_buf_init(w->readbuf, WORKER_READBUF);
}

static void start_reading(conn_t *c) {
  if (!c->reading && c->state != CONN_CLOSING) {
    c->reading = 1;
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
  }
}

static void stop_reading(conn_t *c) {
  if (c->reading) {
    c->reading = 0;
    uv_read_stop((uv_stream_t *)&c->tcp);
  }
}

/* Whether the connection is between requests, ready to parse the next. */
static int ready_for_request(const conn_t *c) {
  return c->req == NULL && c->parser != NULL && c->state != CONN_CLOSING;
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  conn_t *c = s->data;
  (void)buf;
  if (nread == 0) return;
  if (nread < 0) {
    /* EOF or error: the client is gone (half-closed clients included, as
     * an event stream can never be answered to one). */
    conn_close(c);
    return;
  }
  if (c->state == CONN_CLOSING) return; /* lingering: dropped */
  if (c->parser == NULL) return; /* a stream: nothing more is read */
  const char *p = c->w->readbuf;
  size_t len = (size_t)nread;
  if (c->stash.len > 0 || (c->req != NULL && c->req->msg.complete)) {
    /* Earlier input waits, or the current request is read in full and not
     * yet answered: keep order by queueing behind it. */
    if (c->stash.len + len > CONN_MAX_STASH) {
      stop_reading(c); /* backpressure on a pipelining client */
    }
    if (buf_append(&c->stash, p, len)) {
      conn_close(c);
      return;
    }
    worker_mark_pending(c->w, c);
    return;
  }
  parse_input(c, p, len);
}

/* Stashes the unparsed tail (when it is not already the stash itself). */
static void keep_rest(conn_t *c, const char *p, size_t len) {
  if (len == 0) return;
  if (c->stash.len > 0 && p >= c->stash.p && p < c->stash.p + c->stash.len) return;
  if (buf_append(&c->stash, p, len)) conn_close(c);
}

/* Answers a parse error and closes after the answer. */
static void parse_failed(conn_t *c) {
  const char *reason;
  int status = http_parser_status(c->parser, &reason);
  log_info("bad request: %d %s", status, reason);
  req_t *r = c->req;
  if (r == NULL || r->responded || r->streaming) {
    conn_end_lingering(c); /* the request was answered already: just close */
    return;
  }
  /* When a handler runs (a body went over the limit mid-way), this answers
   * for it; the handler sees the request closed from now on. */
  r->keep_alive = 0;
  req_respond_error(r, status, reason);
  conn_end_lingering(c);
}

/* Parses input until it is used up or the connection must wait for the
 * current request to be answered; what is left is stashed. */
static void parse_input(conn_t *c, const char *p, size_t len) {
  int again = 0; /* feed once more with no bytes: a head may end a message */
  while ((len > 0 || again) && c->state != CONN_CLOSING && c->parser != NULL) {
    again = 0;
    if (c->req == NULL) {
      c->req = req_new(c);
      if (c->req == NULL) {
        conn_close(c);
        return;
      }
      http_parser_set_msg(c->parser, &c->req->msg);
      if (c->state == CONN_IDLE) wait_head(c);
    } else if (c->req->msg.complete) {
      keep_rest(c, p, len); /* answer this one before parsing the next */
      return;
    }
    size_t used = 0;
    enum http_event ev = http_feed(c->parser, p, len, &used);
    p += used;
    len -= used;
    req_t *r = c->req;
    switch (ev) {
    case HTTP_EV_NEED_MORE:
      break;
    case HTTP_EV_HEAD:
      list_remove(&c->tnode);
      c->state = CONN_ACTIVE;
      req_dispatch(r);
      /* The handler may have answered already; its body (if any) still
       * has to be read, and dropped when nobody will read it. */
      if (c->req == r && r->responded && !r->msg.complete) {
        if (r->msg.expect_continue && !r->sent_continue) {
          /* The client waits for our go before sending the body; it will
           * not come, so this connection cannot carry another request. */
          r->keep_alive = 0;
          r->msg.complete = 1;
          if (req_finished(r)) conn_request_done(c);
          return;
        }
        http_parser_discard_body(c->parser);
        r->body_dropped = 1;
      }
      again = c->req == r && !r->msg.complete;
      break;
    case HTTP_EV_MESSAGE:
      req_on_message(r);
      if (c->req == r && req_finished(r)) {
        conn_request_done(c); /* may stash/close; loop re-checks */
      }
      break;
    case HTTP_EV_ERROR:
      parse_failed(c);
      return;
    }
  }
  if (len > 0 && c->state != CONN_CLOSING && c->parser != NULL) keep_rest(c, p, len);
}

void conn_kill(conn_t *c) {
  c->kill = 1;
  worker_mark_pending(c->w, c);
}

void conn_process(conn_t *c) {
  if (c->kill) {
    conn_close(c);
    return;
  }
  if (c->state == CONN_CLOSING && !c->end_after_flush) return;
  if (c->stash.len > 0 && ready_for_request(c)) {
    /* Parse out of a private copy: parsing may stash again. */
    buf_t in = c->stash;
    c->stash = (buf_t)BUF_INIT;
    parse_input(c, in.p, in.len);
    if (c->stash.len == 0 && c->state != CONN_CLOSING) {
      buf_free(&c->stash);
      c->stash = in; /* reuse the memory */
      buf_clear(&c->stash);
    } else {
      buf_free(&in);
    }
    if (c->stash.len < CONN_MAX_STASH) start_reading(c);
  }
  conn_flush(c);
}

int conn_write(conn_t *c, frame_t *f) {
  if (c->state == CONN_CLOSING && !c->end_after_flush) return -EPIPE;
  int rc = wq_push(&c->wq, f);
  if (rc) return rc;
  worker_mark_pending(c->w, c);
  return 0;
}

static void on_write(uv_write_t *wr, int status);

static void on_shutdown(uv_shutdown_t *sr, int status) {
  (void)status;
  free(sr); /* the connection closes on EOF or at its linger deadline */
}

/* Shuts down writing and keeps reading (to drop) until EOF or the deadline. */
static void start_linger(conn_t *c) {
  uv_shutdown_t *sr = malloc(sizeof(*sr));
  if (sr == NULL || uv_shutdown(sr, (uv_stream_t *)&c->tcp, on_shutdown) != 0) {
    free(sr);
    conn_close(c);
    return;
  }
  worker_t *w = c->w;
  c->deadline = worker_now(w) + CONN_LINGER_MS;
  list_move_back(&w->lingering, &c->tnode);
  c->reading = 1;
  uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
}

/* After the queue drained: wake a blocked sender, close an ending conn. */
static void after_drain(conn_t *c) {
  if (c->req != NULL && c->wq.bytes <= CONN_LOW_WATER) req_on_drain(c->req);
  if (c->wq.bytes == 0 && c->end_after_flush && c->wreq == NULL) {
    c->end_after_flush = 0;
    if (c->linger)
      start_linger(c);
    else
      conn_close(c);
  }
}

void conn_flush(conn_t *c) {
  if (c->wreq != NULL) return; /* on_write continues */
  if (c->state == CONN_CLOSING && !c->end_after_flush) return;
  uv_buf_t bufs[IOV_MAX_BATCH];
  while (c->wq.bytes > 0) {
    size_t total;
    int n = wq_iov(&c->wq, 0, bufs, IOV_MAX_BATCH, &total);
    int w = uv_try_write((uv_stream_t *)&c->tcp, bufs, (unsigned)n);
    if (w == UV_EAGAIN) w = 0;
    if (w < 0) {
      conn_close(c);
      return;
    }
    wq_consume(&c->wq, (size_t)w);
    STAT_ADD(c->w, bytes_out, w);
    if ((size_t)w < total) {
      /* The socket is full: hand the rest to libuv, which writes it when
       * the socket turns writable.  The frames stay referenced by the
       * queue until on_write. */
      n = wq_iov(&c->wq, 0, bufs, IOV_MAX_BATCH, &total);
      uv_write_t *wr = malloc(sizeof(*wr));
      if (wr == NULL) {
        conn_close(c);
        return;
      }
      wr->data = c;
      if (uv_write(wr, (uv_stream_t *)&c->tcp, bufs, (unsigned)n, on_write) != 0) {
        free(wr);
        conn_close(c);
        return;
      }
      c->wreq = wr;
      c->inflight = total;
      return;
    }
  }
  after_drain(c);
}

static void on_write(uv_write_t *wr, int status) {
  conn_t *c = wr->data;
  free(wr);
  c->wreq = NULL;
  if (status < 0) {
    /* UV_ECANCELED when closing; anything else: the peer is gone. */
    if (c->state != CONN_CLOSING || c->end_after_flush) conn_close(c);
    return;
  }
  wq_consume(&c->wq, c->inflight);
  STAT_ADD(c->w, bytes_out, c->inflight);
  c->inflight = 0;
  if (c->wq.bytes > 0) worker_mark_pending(c->w, c);
  else after_drain(c);
}

void conn_end(conn_t *c) {
  if (c->state == CONN_CLOSING) return;
  stop_reading(c);
  list_remove(&c->tnode);
  c->state = CONN_CLOSING;
  c->end_after_flush = 1;
  worker_mark_pending(c->w, c);
}

void conn_end_lingering(conn_t *c) {
  c->linger = 1;
  conn_end(c);
}

void conn_close(conn_t *c) {
  if (uv_is_closing((uv_handle_t *)&c->tcp)) return;
  c->state = CONN_CLOSING;
  c->end_after_flush = 0;
  stop_reading(c);
  list_remove(&c->tnode);
  list_remove(&c->pend);
  /* The request goes now, not in on_close: its handler must see the
   * stream closed from here on, and tasks must not wait on a dead conn. */
  req_t *r = c->req;
  c->req = NULL;
  if (r != NULL) req_abort(r);
  uv_close((uv_handle_t *)&c->tcp, on_close);
}

static void on_close(uv_handle_t *h) {
  conn_t *c = h->data;
  worker_t *w = c->w;
  list_remove(&c->all);
  w->nconns--;
  atomic_fetch_sub(&w->srv->nconns, 1);
  wq_free(&c->wq);
  buf_free(&c->stash);
  http_parser_free(c->parser);
  free(c->peer);
  free(c);
  worker_conn_closed(w);
}

void conn_request_done(conn_t *c) {
  req_t *r = c->req;
  int keep = r->keep_alive && !c->w->stopping;
  c->req = NULL;
  req_free(r);
  if (!keep || c->parser == NULL) {
    conn_end(c);
    return;
  }
  wait_idle(c);
  if (c->stash.len > 0) worker_mark_pending(c->w, c);
}

void conn_begin_stream(conn_t *c) {
  c->state = CONN_STREAM;
  list_remove(&c->tnode);
  /* No request can follow a stream (its end is the connection's end), so
   * the parser goes as soon as the request body is read; reading goes on
   * only to notice the client leaving. */
  if (c->req == NULL || c->req->msg.complete) {
    http_parser_free(c->parser);
    c->parser = NULL;
    buf_free(&c->stash);
  }
}

void conn_sweep(worker_t *w, uint64_t now) {
  while (!list_empty(&w->head_wait)) {
    conn_t *c = list_entry(w->head_wait.next, conn_t, tnode);
    if (c->deadline > now) break;
    list_remove(&c->tnode);
    if (c->req == NULL) {
      c->req = req_new(c);
      if (c->req == NULL) {
        conn_close(c);
        continue;
      }
    }
    c->req->keep_alive = 0;
    req_respond_error(c->req, 408, "request head not received in time");
    conn_end_lingering(c);
  }
  while (!list_empty(&w->lingering)) {
    conn_t *c = list_entry(w->lingering.next, conn_t, tnode);
    if (c->deadline > now) break;
    conn_close(c);
  }
  while (!list_empty(&w->idle_wait)) {
    conn_t *c = list_entry(w->idle_wait.next, conn_t, tnode);
    if (c->deadline > now) break;
    conn_end(c);
  }
}
