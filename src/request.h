/*
 * request.h - one HTTP request and its response, apart from the connection.
 *
 * The request owns the parsed message, the response state and, once the
 * handler opens one, the event stream.  It talks to its carrier only through
 * conn_write/conn_end, so another carrier (TLS, an HTTP/2 stream) can slot
 * in under the same object.  The connection that carries it owns it and
 * frees it; when the connection goes first, req_abort() ends the handler
 * coroutine and turns every Lua handle on the request into "closed".
 */
#ifndef SLUICE_REQUEST_H
#define SLUICE_REQUEST_H

#include <stddef.h>
#include <stdint.h>

#include "frame.h"
#include "http.h"
#include "list.h"

struct conn;
struct worker;
struct task;

enum req_wait { REQ_WAIT_NONE, REQ_WAIT_BODY, REQ_WAIT_DRAIN };

typedef struct req {
  struct conn *conn;        /* the carrier; NULL once it is gone */
  struct worker *w;
  http_msg_t msg;
  struct task *task;        /* the handler coroutine, NULL once it ended */
  struct task *waiter;      /* a task blocked on this request (body, drain) */
  uint8_t wait;             /* enum req_wait: what waiter waits for */
  void *h_req, *h_stream;   /* Lua handles pointing here (bind layer) */
  void (*on_drain)(void *); /* a relay waiting for the queue to drain */
  void *on_drain_arg;
  list_node_t hb;           /* on w->streams while streaming */
  list_node_t subs;         /* its channel subscriptions (fanout.h) */
  uint64_t last_out;        /* loop ms of the last stream output */
  uint64_t t0;              /* uv_hrtime when dispatched, for the access log */
  uint64_t bytes;           /* response bytes queued (head included) */
  uint16_t status;          /* the response's status once its head is made */
  size_t path_len;          /* the url's path part is msg.raw.p[0 .. path_len) */
  unsigned responded : 1;   /* the complete response is queued */
  unsigned streaming : 1;   /* the response is an open event stream */
  unsigned stream_ended : 1;
  unsigned head_only : 1;   /* HEAD: no body bytes go out */
  unsigned keep_alive : 1;
  unsigned sent_continue : 1;
  unsigned body_dropped : 1; /* answered before its body came: not kept */
  unsigned slow : 1;        /* dropped as a slow subscriber */
  struct req *next_spare;   /* on w->spare_reqs once ended */
} req_t;

/* Makes a request for connection c; NULL when out of memory. */
req_t *req_new(struct conn *c);

/* Frees the requests the worker keeps for reuse (it is exiting). */
void req_drop_spares(struct worker *w);

/* Called by the connection when the request head is complete: checks it and
 * hands it to the app's handler. */
void req_dispatch(req_t *r);

/* Called by the connection when the whole body has arrived. */
void req_on_message(req_t *r);

/* Called by the connection when its queue drained below the low-water mark. */
void req_on_drain(req_t *r);

/* Called by the connection when it is gone: ends the handler, wakes any
 * other waiter with "closed", detaches Lua handles, frees the request. */
void req_abort(req_t *r);

/* Frees a request that completed normally (the connection moves on). */
void req_free(req_t *r);

/* Whether the request is finished: answered (or stream over), body read in
 * full, and no handler running. */
int req_finished(const req_t *r);

/* Queues a complete response.  hdrs are pre-rendered "Name: value\r\n"
 * lines (may be empty); Content-Length, Date and Connection are added here.
 * A HEAD request gets the head alone.  0, -EALREADY when a response was
 * already started, -EPIPE when the connection is gone, -ENOMEM. */
int req_respond(req_t *r, int status, const char *hdrs, size_t hlen, const char *body,
                size_t blen);

/* Like req_respond with a body held in a frame (sent by reference);
 * content_length is announced even when body is NULL (HEAD, 304). */
int req_respond_frame(req_t *r, int status, const char *hdrs, size_t hlen, frame_t *body,
                      size_t content_length);

/* A short text/plain answer for errors the server itself produces. */
int req_respond_error(req_t *r, int status, const char *text);

/* Starts an event stream: sends the SSE head (plus hdrs) and, when retry
 * >= 0, a retry field.  0 or a negative errno as for req_respond. */
int req_sse_open(req_t *r, const char *hdrs, size_t hlen, long retry);

/* Sends one frame on the open stream.  0; -EPIPE once the stream is over. */
int req_stream_write(req_t *r, frame_t *f);

/* Ends the stream: what is queued is sent, then the connection closes. */
void req_stream_end(req_t *r);

/* Whether the stream (or the whole request) can no longer send. */
int req_stream_closed(const req_t *r);

/* Bytes queued on the carrier and not yet sent. */
size_t req_queued(const req_t *r);

/* Called by the runtime when the handler coroutine has ended (returned,
 * failed or was killed). */
void req_handler_done(req_t *r);

/* Writes the peer's address as text into out (at least 64 bytes). */
int req_remote_addr(const req_t *r, char *out, size_t len);

/* Sends "100 Continue" if the client asked for it and it was not sent. */
void req_continue(req_t *r);

#endif
