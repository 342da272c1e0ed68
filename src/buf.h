/*
 * buf.h - a growable byte buffer.
 *
 * Used where bytes accumulate before they are known in full: request heads
 * and bodies, response heads under construction, encoder scratch space.  The
 * owner of the buf_t owns its memory and releases it with buf_free().
 */
#ifndef SLUICE_BUF_H
#define SLUICE_BUF_H

#include <stddef.h>

typedef struct buf {
  char *p;
  size_t len;
  size_t cap;
} buf_t;

#define BUF_INIT {NULL, 0, 0}

/* Makes room for at least extra more bytes.  0, or -ENOMEM. */
int buf_reserve(buf_t *b, size_t extra);

/* Appends n bytes.  0, or -ENOMEM (the buffer is left unchanged). */
int buf_append(buf_t *b, const void *p, size_t n);

/* Appends a NUL-terminated string. */
int buf_puts(buf_t *b, const char *s);

/* Appends printf-formatted text.  0, or -ENOMEM. */
int buf_printf(buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Forgets the contents but keeps the memory for reuse. */
static inline void buf_clear(buf_t *b) { b->len = 0; }

/* Releases the memory; the buffer is empty and reusable afterwards. */
void buf_free(buf_t *b);

#endif
