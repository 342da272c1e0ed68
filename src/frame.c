/* frame.c - see frame.h. */
#include "frame.h"

#include <stdlib.h>
#include <string.h>

frame_t *frame_new(size_t len) {
  frame_t *f = malloc(sizeof(*f) + len);
  if (f == NULL) return NULL;
  atomic_init(&f->refs, 1);
  f->len = len;
  return f;
}

frame_t *frame_copy(const void *p, size_t len) {
  frame_t *f = frame_new(len);
  if (f != NULL && len > 0) memcpy(f->data, p, len);
  return f;
}

void frame_unref(frame_t *f) {
  if (f == NULL) return;
  /* acq_rel: every earlier use of the bytes by other holders happens before
   * the free. */
  if (atomic_fetch_sub_explicit(&f->refs, 1, memory_order_acq_rel) == 1) free(f);
}
