/*
 * fuzz_util.h - what the libFuzzer targets share: a failed invariant is an
 * abort() (so libFuzzer reports a crash and keeps the input), a small
 * deterministic PRNG seeded from the input (so a reproducer replays the same
 * way), and a text log for comparing runs.
 */
#ifndef SLUICE_FUZZ_UTIL_H
#define SLUICE_FUZZ_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"

/* Prints what broke and aborts: libFuzzer turns that into a crash report. */
#define FUZZ_ASSERT(cond, ...)                                              \
  do {                                                                      \
    if (!(cond)) {                                                          \
      fprintf(stderr, "%s:%d: invariant failed: %s\n  ", __FILE__, __LINE__, \
              #cond);                                                       \
      fprintf(stderr, __VA_ARGS__);                                         \
      fprintf(stderr, "\n");                                                \
      abort();                                                              \
    }                                                                       \
  } while (0)

/* The same, for a failure found without a single condition to name. */
#define FUZZ_FAIL(...)                                                \
  do {                                                                \
    fprintf(stderr, "%s:%d: invariant failed\n  ", __FILE__, __LINE__); \
    fprintf(stderr, __VA_ARGS__);                                     \
    fprintf(stderr, "\n");                                            \
    abort();                                                          \
  } while (0)

/* xorshift64*: enough to pick cut points, and reproducible. */
static inline uint64_t fuzz_rand(uint64_t *s) {
  uint64_t x = *s ? *s : 0x9E3779B97F4A7C15ull;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  *s = x;
  return x * 0x2545F4914F6CDD1Dull;
}

/* Appends bytes with everything but printable ASCII escaped. */
static inline void fuzz_put_escaped(buf_t *o, const char *p, size_t n) {
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)p[i];
    if (c >= 32 && c < 127 && c != '\\') buf_append(o, &p[i], 1);
    else buf_printf(o, "\\x%02x", c);
  }
}

/* Aborts when two logs differ, printing both (shortened) and where. */
static inline void fuzz_same_log(const buf_t *want, const buf_t *got, const char *how) {
  if (want->len == got->len && (want->len == 0 || memcmp(want->p, got->p, want->len) == 0)) return;
  size_t at = 0;
  while (at < want->len && at < got->len && want->p[at] == got->p[at]) at++;
  size_t from = at > 200 ? at - 200 : 0;
  fprintf(stderr, "%s: the log differs from the whole feed's at byte %zu\n", how, at);
  fprintf(stderr, "--- whole (from byte %zu):\n%.*s\n", from,
          (int)(want->len - from > 600 ? 600 : want->len - from), want->p + from);
  fprintf(stderr, "--- %s (from byte %zu):\n%.*s\n", how, from,
          (int)(got->len - from > 600 ? 600 : got->len - from), got->p + from);
  abort();
}

/* Fills cuts[] with up to max ascending offsets in (0, len) from the PRNG
 * and returns how many; small pieces are likelier, as on a real socket
 * under load, but now and then a large one. */
static inline size_t fuzz_cuts(uint64_t *seed, size_t len, size_t *cuts, size_t max) {
  size_t n = 0, at = 0;
  while (n < max) {
    uint64_t r = fuzz_rand(seed);
    size_t step = (r & 3) == 0 ? 1 + (size_t)((r >> 8) % 256) : 1 + (size_t)((r >> 8) % 8);
    at += step;
    if (at >= len) break;
    cuts[n++] = at;
  }
  return n;
}

#endif
