/*
 * wqueue.h - a connection's queue of outgoing frames.
 *
 * The queue holds references, never copies: the same frame can sit in many
 * connections' queues and in the hub's history at once.  Bytes leave from the
 * head; `off` counts what of the head frame has already been written.  The
 * ring of references grows when needed and is kept for reuse, so queueing a
 * frame on a busy connection allocates nothing.
 */
#ifndef SLUICE_WQUEUE_H
#define SLUICE_WQUEUE_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "frame.h"

typedef struct wqueue {
  frame_t **ring;
  uint32_t head, count, cap; /* cap is 0 or a power of two */
  size_t off;                /* bytes of ring[head] already written */
  size_t bytes;              /* bytes queued and not yet written */
} wqueue_t;

/* Queues a reference to f (the queue takes its own).  0, or -ENOMEM. */
int wq_push(wqueue_t *q, frame_t *f);

/* Fills up to max buffers describing the queued bytes from the head, skipping
 * the first `skip` bytes (those already handed to a write in progress).
 * Returns the number of buffers; *total gets their byte count. */
int wq_iov(const wqueue_t *q, size_t skip, uv_buf_t *bufs, int max, size_t *total);

/* Drops n written bytes from the head, releasing frames written in full. */
void wq_consume(wqueue_t *q, size_t n);

/* Releases every queued reference and the ring itself. */
void wq_free(wqueue_t *q);

#endif
