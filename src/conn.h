/*
 * conn.h - a client TCP connection and its state machine.
 *
 *   head_wait --head--> active --(response queued)--> idle (keep-alive)
 *        ^                 |  \--req:sse()--> stream --(end)--> closing
 *        '----first byte---'----------------------------------------'
 *
 * A connection carries one request at a time (requests are separate objects,
 * see request.h); pipelined requests wait as unparsed bytes in `stash` until
 * the one before them is answered, so answers leave in order.  Output goes to
 * the write queue and is flushed once per loop iteration.  The connection's
 * memory is freed only in the tcp handle's close callback.
 */
#ifndef SLUICE_CONN_H
#define SLUICE_CONN_H

#include <stdint.h>
#include <uv.h>

#include "buf.h"
#include "frame.h"
#include "http.h"
#include "list.h"
#include "wqueue.h"

struct worker;
struct req;

/* Above this many queued bytes stream:send waits for the queue to drain to
 * CONN_LOW_WATER before it returns. */
#define CONN_HIGH_WATER (64 * 1024)
#define CONN_LOW_WATER (16 * 1024)
#define CONN_MAX_HEAD (16 * 1024)
#define CONN_MAX_STASH (256 * 1024)
#define CONN_LINGER_MS 2000

enum conn_state {
  CONN_HEAD_WAIT, /* waiting for (the rest of) a request head */
  CONN_ACTIVE,    /* a request is being handled */
  CONN_IDLE,      /* keep-alive, between requests */
  CONN_STREAM,    /* the response is an open event stream */
  CONN_CLOSING,   /* closing: no more input is looked at */
};

typedef struct conn {
  uv_tcp_t tcp;             /* first: the handle's address is the conn's */
  struct worker *w;
  http_parser_t *parser;    /* NULL once no further request can follow */
  struct req *req;          /* the request being read or answered */
  wqueue_t wq;
  buf_t stash;              /* input not parsed yet (pipelined requests) */
  uv_write_t *wreq;         /* the write in progress, if any */
  size_t inflight;          /* bytes handed to wreq */
  list_node_t all;          /* on w->conns */
  list_node_t pend;         /* on w->pending */
  list_node_t tnode;        /* on w->head_wait or w->idle_wait */
  uint64_t deadline;        /* for the list tnode is on */
  char *peer;               /* the peer's address as text, once asked for
                               (request.c caches it: the access log asks
                               for every request) */
  uint8_t state;
  unsigned end_after_flush : 1; /* close once the queue is empty */
  unsigned reading : 1;
  unsigned kill : 1;            /* conn_kill: close in the before-sleep pass */
  unsigned linger : 1;          /* after the flush: shut down writing, drain input */
} conn_t;

/* Accepts one connection from w's listener. */
void conn_accept(struct worker *w);

/* Queues a reference to f for sending.  0, or -EPIPE once closing. */
int conn_write(conn_t *c, frame_t *f);

/* Sends what is queued now, without waiting for the before-sleep pass. */
void conn_flush(conn_t *c);

/* The before-sleep pass for one connection: parses stashed input when the
 * connection is ready for the next request, then flushes. */
void conn_process(conn_t *c);

/* Closes once everything queued has been sent. */
void conn_end(conn_t *c);

/* Like conn_end, for an error answered before the client finished sending:
 * after the answer, writing is shut down and input is read and dropped for
 * a moment (CONN_LINGER_MS at most) before the close, so that the client's
 * unread bytes do not turn the close into a reset that loses the answer. */
void conn_end_lingering(conn_t *c);

/* Closes before the loop sleeps (not now: the caller may be walking a list
 * the close would change), dropping queued output. */
void conn_kill(conn_t *c);

/* Closes at once, dropping queued output; aborts the request in progress. */
void conn_close(conn_t *c);

/* The current request has been answered in full and read in full: frees it
 * and moves on to the next request (or closes when not keep-alive). */
void conn_request_done(conn_t *c);

/* The request turned into an event stream: no request can follow it. */
void conn_begin_stream(conn_t *c);

/* Times out connections whose deadlines passed; called by the worker tick. */
void conn_sweep(struct worker *w, uint64_t now);

#endif
