/*
 * frame.h - immutable, atomically refcounted byte blocks.
 *
 * A frame holds bytes that go out on one or more connections: an encoded SSE
 * event, a response head, a whole small response.  It is built once, then
 * shared by reference: write queues, the hub's history rings and other
 * workers each hold their own reference, and the last frame_unref() frees it.
 * After construction a frame's bytes never change, so any thread may read
 * them while it holds a reference.
 */
#ifndef SLUICE_FRAME_H
#define SLUICE_FRAME_H

#include <stdatomic.h>
#include <stddef.h>

typedef struct frame {
  atomic_uint refs;
  size_t len;
  char data[];
} frame_t;

/* Allocates a frame of len bytes with one reference held by the caller; its
 * bytes are uninitialised until the caller fills them.  NULL when out of
 * memory. */
frame_t *frame_new(size_t len);

/* Allocates a frame holding a copy of the len bytes at p. */
frame_t *frame_copy(const void *p, size_t len);

/* Takes one more reference on f and returns f. */
static inline frame_t *frame_ref(frame_t *f) {
  atomic_fetch_add_explicit(&f->refs, 1, memory_order_relaxed);
  return f;
}

/* Drops one reference; the last one frees the frame.  NULL is ignored. */
void frame_unref(frame_t *f);

#endif
