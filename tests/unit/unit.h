/*
 * unit.h - the smallest test harness that does the job.
 *
 * CHECK(cond) records a failure with file:line and carries on; a test file's
 * main() ends with UNIT_DONE(), which prints "N passed, N failed" and exits
 * non-zero when anything failed, so ctest reports it.
 */
#ifndef SLUICE_UNIT_H
#define SLUICE_UNIT_H

#include <stdio.h>
#include <string.h>

static int unit_passed, unit_failed;

#define CHECK(cond)                                                      \
  do {                                                                   \
    if (cond) {                                                          \
      unit_passed++;                                                     \
    } else {                                                             \
      unit_failed++;                                                     \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
    }                                                                    \
  } while (0)

/* Compares n bytes with an expected C string, printing both on mismatch. */
#define CHECK_BYTES(got, got_len, want)                                       \
  do {                                                                        \
    const char *w_ = (want);                                                  \
    size_t wl_ = strlen(w_);                                                  \
    if ((got_len) == wl_ && memcmp((got), w_, wl_) == 0) {                    \
      unit_passed++;                                                          \
    } else {                                                                  \
      unit_failed++;                                                          \
      fprintf(stderr, "%s:%d: bytes differ\n  got:  ", __FILE__, __LINE__);  \
      unit_dump((got), (got_len));                                            \
      fprintf(stderr, "\n  want: ");                                          \
      unit_dump(w_, wl_);                                                     \
      fprintf(stderr, "\n");                                                  \
    }                                                                         \
  } while (0)

static inline void unit_dump(const char *p, size_t n) {
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)p[i];
    if (c == '\n') fputs("\\n", stderr);
    else if (c == '\r') fputs("\\r", stderr);
    else if (c < 32 || c == 127) fprintf(stderr, "\\x%02x", c);
    else fputc(c, stderr);
  }
}

#define UNIT_DONE()                                                  \
  do {                                                               \
    printf("%d passed, %d failed\n", unit_passed, unit_failed);      \
    return unit_failed ? 1 : 0;                                      \
  } while (0)

#endif
