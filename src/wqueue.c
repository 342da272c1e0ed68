/* wqueue.c - see wqueue.h. */
#include "wqueue.h"

#include <errno.h>
#include <stdlib.h>

/* Doubles the ring, unrolling it so that the head lands at index 0. */
static int grow(wqueue_t *q) {
  uint32_t cap = q->cap ? q->cap * 2 : 8;
  frame_t **ring = malloc(cap * sizeof(*ring));
  if (ring == NULL) return -ENOMEM;
  for (uint32_t i = 0; i < q->count; i++) ring[i] = q->ring[(q->head + i) & (q->cap - 1)];
  free(q->ring);
  q->ring = ring;
  q->head = 0;
  q->cap = cap;
  return 0;
}

int wq_push(wqueue_t *q, frame_t *f) {
  if (q->count == q->cap && grow(q)) return -ENOMEM;
  q->ring[(q->head + q->count) & (q->cap - 1)] = frame_ref(f);
  q->count++;
  q->bytes += f->len;
  return 0;
}

int wq_iov(const wqueue_t *q, size_t skip, uv_buf_t *bufs, int max, size_t *total) {
  int n = 0;
  size_t sum = 0;
  skip += q->off;
  for (uint32_t i = 0; i < q->count && n < max; i++) {
    frame_t *f = q->ring[(q->head + i) & (q->cap - 1)];
    if (skip >= f->len) {
      skip -= f->len;
      continue;
    }
    bufs[n++] = uv_buf_init(f->data + skip, (unsigned)(f->len - skip));
    sum += f->len - skip;
    skip = 0;
  }
  *total = sum;
  return n;
}

void wq_consume(wqueue_t *q, size_t n) {
  q->bytes -= n;
  while (n > 0 && q->count > 0) {
    frame_t *f = q->ring[q->head];
    size_t left = f->len - q->off;
    if (n < left) {
      q->off += n;
      return;
    }
    n -= left;
    frame_unref(f);
    q->head = (q->head + 1) & (q->cap - 1);
    q->count--;
    q->off = 0;
  }
  /* Zero-length frames at the head carry nothing; release them too. */
  while (q->count > 0 && q->ring[q->head]->len == 0) {
    frame_unref(q->ring[q->head]);
    q->head = (q->head + 1) & (q->cap - 1);
    q->count--;
  }
}

void wq_free(wqueue_t *q) {
  for (uint32_t i = 0; i < q->count; i++) frame_unref(q->ring[(q->head + i) & (q->cap - 1)]);
  free(q->ring);
  q->ring = NULL;
  q->head = q->count = q->cap = 0;
  q->off = q->bytes = 0;
}
