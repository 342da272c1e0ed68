/*
 * fetch.h - the upstream HTTP client: libcurl's multi interface on a
 * worker's uv loop.
 *
 * libcurl tells us which sockets to watch (uv_poll) and when to call it back
 * (one uv_timer per worker); no thread, no blocking call.  This is the only
 * module that includes curl.  A transfer buffers body bytes until its owner
 * takes them, and pauses the download while the buffer is over its limit,
 * so a slow consumer (a Lua loop, a slow browser behind a relay) slows the
 * upstream instead of growing memory.
 *
 * Owner notifications never run inside libcurl: events are queued while
 * curl works and delivered after it returns, so an owner may pause, resume
 * or abort from its callback.  After fetch_abort() no callback fires.
 */
#ifndef SLUICE_FETCH_H
#define SLUICE_FETCH_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "buf.h"

typedef struct fetch_multi fetch_multi_t;
typedef struct fetch fetch_t;

enum fetch_event {
  FETCH_HEADERS, /* the final status and headers are in */
  FETCH_DATA,    /* body bytes were added to the buffer */
  FETCH_DONE,    /* the transfer ended: fetch_error() tells how */
};

typedef void (*fetch_cb)(fetch_t *f, enum fetch_event ev, void *ud);

typedef struct fetch_opts {
  const char *url;
  const char *method;        /* NULL: GET, or POST when there is a body */
  const char *const *headers;/* "Name: value" strings, NULL-terminated, or NULL */
  const char *body;          /* copied */
  size_t body_len;
  int has_body;
  double timeout;            /* whole transfer, seconds; 0: none */
  double connect_timeout;    /* seconds; 0: 10 */
  double read_timeout;       /* seconds without a byte before failing; 0: none */
  long max_redirects;        /* 0: redirects are answers, not followed */
  const char *ca_file;       /* CA bundle to verify https with, or NULL for
                                the system's */
  size_t buffer_limit;       /* pause the download above this many unread bytes */
} fetch_opts_t;

/* Creates the worker's multi handle on loop.  NULL when out of memory. */
fetch_multi_t *fetch_multi_new(uv_loop_t *loop);

/* Aborts every transfer (no callbacks) and closes the handles; the memory
 * goes in their close callbacks, so run the loop afterwards. */
void fetch_multi_close(fetch_multi_t *m);

/* Starts a transfer.  Returns 0 with *out set, or a negative errno with a
 * message in err (bad URL, out of memory).  cb gets each event once per
 * occurrence (FETCH_HEADERS at most once, FETCH_DONE exactly once unless
 * the transfer is aborted). */
int fetch_start(fetch_multi_t *m, const fetch_opts_t *o, fetch_cb cb, void *ud, fetch_t **out,
                char *err, size_t errlen);

/* Stops the transfer (closing its connection at once) if it still runs;
 * no callback fires after.  The transfer's memory stays until fetch_free. */
void fetch_abort(fetch_t *f);

/* Aborts if needed and frees the transfer. */
void fetch_free(fetch_t *f);

/* Replaces the owner callback (relay takes over a response). */
void fetch_set_cb(fetch_t *f, fetch_cb cb, void *ud);

/* The HTTP status (0 before the headers). */
int fetch_status(const fetch_t *f);

/* The response header block: "Name: value\r\n" lines of the final response
 * (names as sent); *len gets its length. */
const char *fetch_headers(const fetch_t *f, size_t *len);

/* The unread body bytes; *len gets how many. */
const char *fetch_peek(const fetch_t *f, size_t *len);

/* Marks n of the unread bytes as read; resumes a paused download when the
 * buffer fell under half its limit. */
void fetch_consume(fetch_t *f, size_t n);

/* Pauses or resumes the download (for downstream backpressure). */
void fetch_hold(fetch_t *f, int hold);

/* Changes the buffer limit (0: no limit). */
void fetch_set_limit(fetch_t *f, size_t limit);

/* Whether the transfer ended (completely or not), and how: NULL when it
 * completed, else a message naming the cause ("connection refused: ...",
 * "timeout: ...", "TLS: ...", "DNS: ...", "connection reset: ..."). */
int fetch_done(const fetch_t *f);
const char *fetch_error(const fetch_t *f);

/* Bytes of body received so far. */
uint64_t fetch_received(const fetch_t *f);

#endif
