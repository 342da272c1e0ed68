/*
 * put.h - writing bytes and decimals at a position, for the text a hot path
 * builds by hand instead of with printf (response heads, access records).
 * The caller has made room; each returns the position after what it wrote.
 */
#ifndef SLUICE_PUT_H
#define SLUICE_PUT_H

#include <stdint.h>
#include <string.h>

/* Writes the n bytes at s to p. */
static inline char *put_bytes(char *p, const char *s, size_t n) {
  memcpy(p, s, n);
  return p + n;
}

/* Writes a string literal to p. */
#define PUT_LIT(p, lit) put_bytes(p, lit, sizeof(lit) - 1)

/* Writes v in decimal to p (at most 20 bytes). */
static inline char *put_u64(char *p, uint64_t v) {
  char tmp[20];
  size_t n = 0;
  do tmp[n++] = (char)('0' + v % 10);
  while ((v /= 10) != 0);
  while (n > 0) *p++ = tmp[--n];
  return p;
}

#endif
