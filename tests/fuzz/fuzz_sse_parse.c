/*
 * fuzz_sse_parse.c - libFuzzer target for the upstream SSE parser.
 *
 * Input: one config byte, then the stream.  The config byte's low 3 bits
 * pick the parser's bound (max_event), so -E2BIG paths are reached with
 * short inputs.
 *
 * The stream is parsed as two streams in a row (the second after
 * sse_parser_finish(), as a reconnection reads it), in many ways:
 *   - whole, in one feed;
 *   - whole, with the callback stopping the feed after every callback and
 *     the caller resuming at p->consumed;
 *   - one byte at a time, with an empty feed after each byte;
 *   - cut at pseudo-random points (seeded from the input), with and
 *     without stopping;
 * every piece fed from its own heap copy that is freed right after the
 * feed, so a parser that keeps a pointer into a caller's bytes is caught
 * by ASan.  Every way must give the same log of callbacks, errors and final
 * state as the whole feed, and the whole feed must agree with a naive
 * reference parser written straight from the WHATWG rules (and the bound
 * as sse_parse.h states it).  The callback also checks the contract of
 * sse_parsed_t (NULLs, lengths, the bound).
 */
#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "fuzz_util.h"
#include "sse_parse.h"

static const size_t max_choices[8] = {0, 1, 3, 8, 32, 128, 1024, 0};

/* ------------------------------------------------------------- the log */

typedef struct logger {
  buf_t out;
  int stop;     /* returned by every callback */
  size_t max;   /* the parser's bound, for checking lengths */
} logger_t;

static void put_value(buf_t *b, const char *p, size_t n) {
  buf_puts(b, "[");
  fuzz_put_escaped(b, p, n);
  buf_puts(b, "]");
}

static void log_event(buf_t *b, const char *type, size_t type_len, const char *data,
                      size_t data_len, int has_id, const char *id, size_t id_len,
                      long long retry) {
  buf_puts(b, "E ");
  if (type_len) put_value(b, type, type_len);
  else buf_puts(b, "-");
  buf_puts(b, " ");
  put_value(b, data, data_len);
  buf_puts(b, " ");
  if (has_id) put_value(b, id, id_len);
  else buf_puts(b, "-");
  buf_printf(b, " %lld\n", retry);
}

static int log_cb(void *ctx, int kind, const sse_parsed_t *ev) {
  logger_t *lg = ctx;
  FUZZ_ASSERT(ev != NULL, "no event");
  FUZZ_ASSERT(ev->data != NULL, "data is NULL (kind %d)", kind);
  if (kind == SSE_PARSED_COMMENT) {
    FUZZ_ASSERT(ev->event == NULL && ev->id == NULL && ev->has_id == 0 && ev->retry == -1,
                "a comment carries more than its text");
    FUZZ_ASSERT(ev->data_len < lg->max, "comment of %zu bytes over the bound %zu",
                ev->data_len, lg->max);
    buf_puts(&lg->out, "C ");
    put_value(&lg->out, ev->data, ev->data_len);
    buf_puts(&lg->out, "\n");
  } else {
    FUZZ_ASSERT(kind == SSE_PARSED_EVENT, "unknown kind %d", kind);
    FUZZ_ASSERT((ev->event == NULL) == (ev->event_len == 0), "event %p with length %zu",
                (const void *)ev->event, ev->event_len);
    FUZZ_ASSERT(ev->has_id == 0 || ev->has_id == 1, "has_id %d", ev->has_id);
    FUZZ_ASSERT((ev->id != NULL) == ev->has_id, "id %p with has_id %d", (const void *)ev->id,
                ev->has_id);
    FUZZ_ASSERT(ev->has_id || ev->id_len == 0, "id_len %zu without an id", ev->id_len);
    FUZZ_ASSERT(ev->retry >= -1, "retry %lld", ev->retry);
    /* The data buffer holds data + LF, which the bound covers. */
    FUZZ_ASSERT(ev->data_len < lg->max, "data of %zu bytes over the bound %zu", ev->data_len,
                lg->max);
    FUZZ_ASSERT(ev->event_len <= lg->max && ev->id_len <= lg->max, "field over the bound");
    FUZZ_ASSERT(ev->id == NULL || memchr(ev->id, '\0', ev->id_len) == NULL, "NUL in the id");
    log_event(&lg->out, ev->event, ev->event_len, ev->data, ev->data_len, ev->has_id, ev->id,
              ev->id_len, ev->retry);
  }
  return lg->stop;
}

/* Feeds a heap copy of n bytes, resuming after each stop; frees the copy.
 * 0 to go on, -1 once the parser failed (logged). */
static int feed_piece(sse_parser_t *p, logger_t *lg, const char *s, size_t n) {
  char *copy = malloc(n ? n : 1);
  if (n) memcpy(copy, s, n);
  size_t off = 0;
  int ret = 0;
  for (int guard = 0;; guard++) {
    FUZZ_ASSERT(guard <= (int)n + 1, "the feed makes no progress");
    int rc = sse_parser_feed(p, copy + off, n - off, log_cb, lg);
    FUZZ_ASSERT(p->consumed <= n - off, "consumed %zu of %zu", p->consumed, n - off);
    if (rc == 0) {
      FUZZ_ASSERT(p->consumed == n - off, "returned 0 with %zu of %zu consumed", p->consumed,
                  n - off);
      break;
    }
    if (lg->stop && rc == lg->stop) {
      FUZZ_ASSERT(p->err == 0, "stopped by the callback but failed %d", p->err);
      off += p->consumed;
      if (off == n) break;
      continue;
    }
    FUZZ_ASSERT(rc == -E2BIG, "unexpected error %d", rc);
    FUZZ_ASSERT(p->err == rc, "returned %d but err is %d", rc, p->err);
    /* A failed parser refuses everything from now on. */
    FUZZ_ASSERT(sse_parser_feed(p, "data: x\n\n", 9, log_cb, lg) == rc, "failed parser parsed");
    buf_printf(&lg->out, "ERR %d\n", rc);
    ret = -1;
    break;
  }
  memset(copy, 0xAA, n);
  free(copy);
  return ret;
}

/* How one run cuts its input. */
enum how { WHOLE, BYTEWISE, RANDOM };

/* One stream, cut as told; returns -1 once the parser failed. */
static int run_stream(sse_parser_t *p, logger_t *lg, const char *in, size_t len, enum how how,
                      uint64_t *seed) {
  if (p->err) { /* a failed parser stays failed across streams */
    return feed_piece(p, lg, in, len);
  }
  if (how == WHOLE) return feed_piece(p, lg, in, len);
  if (how == BYTEWISE) {
    for (size_t i = 0; i < len; i++) {
      if (feed_piece(p, lg, in + i, 1)) return -1;
      if (feed_piece(p, lg, NULL, 0)) return -1;
    }
    return 0;
  }
  size_t at = 0;
  while (at < len) {
    uint64_t r = fuzz_rand(seed);
    size_t step = (r & 3) == 0 ? (size_t)((r >> 8) % 512) : (size_t)((r >> 8) % 9);
    if (step > len - at) step = len - at;
    if (feed_piece(p, lg, in + at, step)) return -1;
    at += step;
  }
  return 0;
}

/* The whole run: the input as a stream, finish, and again as a second
 * stream of the same parser; then its lasting state. */
static void run(logger_t *lg, size_t max, const char *in, size_t len, enum how how, int stop,
                uint64_t seed) {
  sse_parser_t p;
  buf_clear(&lg->out);
  lg->stop = stop;
  lg->max = max ? max : SSE_PARSE_DEFAULT_MAX;
  FUZZ_ASSERT(sse_parser_init(&p, max) == 0, "init failed");
  for (int pass = 0; pass < 2; pass++) {
    buf_printf(&lg->out, "STREAM %d\n", pass);
    if (run_stream(&p, lg, in, len, how, &seed) == 0) {
      /* An empty feed changes nothing. */
      FUZZ_ASSERT(sse_parser_feed(&p, "", 0, log_cb, lg) == 0, "empty feed failed");
    }
    sse_parser_finish(&p);
  }
  buf_printf(&lg->out, "END err=%d has_id=%d id=", p.err, p.has_id);
  put_value(&lg->out, p.id.p ? p.id.p : "", p.id.len);
  buf_printf(&lg->out, " reconnect=%lld\n", p.reconnect);
  sse_parser_free(&p);
}

/* ------------------------------------------------ the reference parser */

typedef struct ref {
  size_t max;
  int failed;
  buf_t data, type, id;
  int has_id;
  long long retry_pending, reconnect;
} ref_t;

static void ref_line(ref_t *r, buf_t *log, const char *line, size_t len) {
  if (len == 0) { /* dispatch */
    if (r->data.len > 0) {
      log_event(log, r->type.p, r->type.len, r->data.p, r->data.len - 1, r->has_id,
                r->id.p ? r->id.p : "", r->id.len, r->retry_pending);
      r->retry_pending = -1;
    }
    buf_clear(&r->data);
    buf_clear(&r->type);
    return;
  }
  size_t name_len = len, vlen = 0;
  const char *v = line + len;
  for (size_t i = 0; i < len; i++) {
    if (line[i] == ':') {
      name_len = i;
      v = line + i + 1;
      vlen = len - i - 1;
      if (vlen && v[0] == ' ') v++, vlen--;
      break;
    }
  }
  if (name_len == 0) {
    buf_puts(log, "C ");
    put_value(log, v, vlen);
    buf_puts(log, "\n");
    return;
  }
  if (name_len == 4 && memcmp(line, "data", 4) == 0) {
    if (r->data.len + vlen + 1 > r->max) {
      r->failed = 1;
      buf_printf(log, "ERR %d\n", -E2BIG);
      return;
    }
    buf_append(&r->data, v, vlen);
    buf_append(&r->data, "\n", 1);
  } else if (name_len == 5 && memcmp(line, "event", 5) == 0) {
    buf_clear(&r->type);
    buf_append(&r->type, v, vlen);
  } else if (name_len == 2 && memcmp(line, "id", 2) == 0) {
    if (memchr(v, '\0', vlen) == NULL) {
      buf_clear(&r->id);
      buf_append(&r->id, v, vlen);
      r->has_id = 1;
    }
  } else if (name_len == 5 && memcmp(line, "retry", 5) == 0) {
    if (vlen == 0) return;
    long long ms = 0;
    for (size_t i = 0; i < vlen; i++) {
      if (v[i] < '0' || v[i] > '9') return;
      int d = v[i] - '0';
      ms = ms > (LLONG_MAX - d) / 10 ? LLONG_MAX : ms * 10 + d;
    }
    r->retry_pending = r->reconnect = ms;
  }
}

/* One stream, parsed naively from the whole input. */
static void ref_stream(ref_t *r, buf_t *log, const unsigned char *in, size_t len) {
  if (r->failed) {
    buf_printf(log, "ERR %d\n", -E2BIG);
    return;
  }
  size_t i = 0;
  if (len >= 3 && in[0] == 0xEF && in[1] == 0xBB && in[2] == 0xBF) i = 3;
  else if (len < 3 && memcmp(in, "\xEF\xBB\xBF", len) == 0) i = len; /* a BOM cut short */
  while (i < len) {
    size_t e = i;
    while (e < len && in[e] != '\r' && in[e] != '\n') e++;
    if (e - i > r->max) { /* over the bound, line end or not */
      r->failed = 1;
      buf_printf(log, "ERR %d\n", -E2BIG);
      return;
    }
    if (e == len) break; /* an unfinished line: dropped at end of stream */
    ref_line(r, log, (const char *)in + i, e - i);
    if (r->failed) return;
    i = e + 1;
    if (in[e] == '\r' && i < len && in[i] == '\n') i++;
  }
  buf_clear(&r->data);
  buf_clear(&r->type);
  r->retry_pending = -1;
}

static void ref_run(buf_t *log, size_t max, const char *in, size_t len) {
  ref_t r = {0};
  r.max = max ? max : SSE_PARSE_DEFAULT_MAX;
  r.retry_pending = r.reconnect = -1;
  buf_clear(log);
  for (int pass = 0; pass < 2; pass++) {
    buf_printf(log, "STREAM %d\n", pass);
    ref_stream(&r, log, (const unsigned char *)in, len);
  }
  buf_printf(log, "END err=%d has_id=%d id=", r.failed ? -E2BIG : 0, r.has_id);
  put_value(log, r.id.p ? r.id.p : "", r.id.len);
  buf_printf(log, " reconnect=%lld\n", r.reconnect);
  buf_free(&r.data);
  buf_free(&r.type);
  buf_free(&r.id);
}

/* -------------------------------------------------------------- entry */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  size_t max = max_choices[data[0] & 7];
  const char *in = (const char *)data + 1;
  size_t len = size - 1;
  uint64_t seed = 1469598103934665603ull; /* FNV-1a of the input */
  for (size_t i = 0; i < size; i++) seed = (seed ^ data[i]) * 1099511628211ull;

  static logger_t whole, other;
  static buf_t ref;
  run(&whole, max, in, len, WHOLE, 0, seed);
  if (getenv("SLUICE_FUZZ_LOG")) /* to see what an input parses into */
    fprintf(stderr, "%.*s", (int)whole.out.len, whole.out.p);

  ref_run(&ref, max, in, len);
  fuzz_same_log(&ref, &whole.out, "the WHATWG reference parser");

  run(&other, max, in, len, WHOLE, 1, seed);
  fuzz_same_log(&whole.out, &other.out, "whole, stopping after every callback");
  run(&other, max, in, len, BYTEWISE, 0, seed);
  fuzz_same_log(&whole.out, &other.out, "one byte at a time");
  for (int i = 0; i < 4; i++) {
    uint64_t s = seed + (uint64_t)i * 0x9E3779B97F4A7C15ull;
    run(&other, max, in, len, RANDOM, i & 1 ? 7 : 0, s);
    fuzz_same_log(&whole.out, &other.out, i & 1 ? "random cuts, stopping" : "random cuts");
  }
  return 0;
}
