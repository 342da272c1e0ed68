/*
 * test_sse_parse.c - the incremental SSE parser against the WHATWG rules.
 *
 * Every case is an input and the exact list of callbacks it must produce,
 * written one per line:
 *
 *   E <type> <data> <id> <retry>   a dispatched event
 *   C <text>                       a comment
 *   ERR <n>                        the feed that failed, with its error
 *
 * where a value is [bytes] (with \n, \r, \0, \\ and \] escaped) and an
 * absent one is "-": no type (a "message"), no id ever set, no retry.
 *
 * An upstream may cut its stream anywhere, so each case is parsed whole,
 * cut in two at every byte, fed one byte at a time (with empty feeds in
 * between), cut at every pair of points when short, and stopped by the
 * callback after every event and resumed; every way must give the same list.
 * Each piece is fed from its own heap copy, freed straight after its feed,
 * so a parser that kept a pointer into a caller's bytes trips the sanitizer.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "sse_parse.h"
#include "unit.h"

/* ------------------------------------------------------------ the log */

typedef struct logger {
  buf_t out;
  int stop;  /* return this from every callback (0: carry on) */
  int calls;
} logger_t;

static void put_value(buf_t *b, const char *p, size_t n) {
  buf_puts(b, "[");
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)p[i];
    if (c == '\n') buf_puts(b, "\\n");
    else if (c == '\r') buf_puts(b, "\\r");
    else if (c == '\0') buf_puts(b, "\\0");
    else if (c == '\\' || c == ']') buf_printf(b, "\\%c", c);
    else buf_append(b, &p[i], 1);
  }
  buf_puts(b, "]");
}

static int log_cb(void *ctx, int kind, const sse_parsed_t *ev) {
  logger_t *lg = ctx;
  buf_t *b = &lg->out;
  lg->calls++;
  if (kind == SSE_PARSED_COMMENT) {
    buf_puts(b, "C ");
    put_value(b, ev->data, ev->data_len);
    /* A comment carries nothing but its text. */
    if (ev->event || ev->id || ev->has_id || ev->retry != -1) buf_puts(b, " !extra");
  } else if (kind == SSE_PARSED_EVENT) {
    buf_puts(b, "E ");
    if (ev->event) put_value(b, ev->event, ev->event_len);
    else buf_puts(b, "-");
    buf_puts(b, " ");
    if (ev->data == NULL) buf_puts(b, "!null");
    else put_value(b, ev->data, ev->data_len);
    buf_puts(b, " ");
    if (ev->has_id) {
      if (ev->id == NULL) buf_puts(b, "!null");
      else put_value(b, ev->id, ev->id_len);
    } else {
      buf_puts(b, ev->id ? "!id" : "-");
    }
    if (ev->retry >= 0) buf_printf(b, " %lld", ev->retry);
    else buf_puts(b, " -");
  } else {
    buf_printf(b, "?%d", kind);
  }
  buf_puts(b, "\n");
  return lg->stop;
}

/* Feeds a heap copy of the n bytes at s, resuming after each callback stop,
 * and frees the copy.  0 to go on, or -1 once the parser failed. */
static int feed_piece(sse_parser_t *p, logger_t *lg, const char *s, size_t n) {
  char *copy = malloc(n ? n : 1);
  memcpy(copy, s, n);
  size_t off = 0;
  int ret = 0;
  for (;;) {
    int rc = sse_parser_feed(p, copy + off, n - off, log_cb, lg);
    if (rc == 0) break;
    if (lg->stop && rc == lg->stop && p->consumed <= n - off) {
      off += p->consumed;
      if (off == n) break;
      continue;
    }
    buf_printf(&lg->out, "ERR %d\n", rc);
    ret = -1;
    break;
  }
  memset(copy, 0xAA, n);
  free(copy);
  return ret;
}

/* Parses input cut at the ncuts ascending offsets in cuts (with an empty
 * feed between pieces when empties is set), ends the stream, and leaves the
 * callback list in lg->out. */
static void run(const char *in, size_t len, const size_t *cuts, int ncuts, size_t max,
                int stop, int empties, logger_t *lg) {
  sse_parser_t p;
  buf_clear(&lg->out);
  lg->stop = stop;
  lg->calls = 0;
  sse_parser_init(&p, max);
  size_t at = 0;
  for (int i = 0; i <= ncuts; i++) {
    size_t to = i < ncuts ? cuts[i] : len;
    if (feed_piece(&p, lg, in + at, to - at)) break;
    if (empties && sse_parser_feed(&p, NULL, 0, log_cb, lg) != 0) break;
    at = to;
  }
  sse_parser_finish(&p);
  sse_parser_free(&p);
}

/* Reports the first way of cutting that disagreed with want. */
static int same(logger_t *lg, const char *want, const char *name, const char *how,
                size_t a, size_t b) {
  size_t n = strlen(want);
  if (lg->out.len == n && (n == 0 || memcmp(lg->out.p, want, n) == 0)) return 1;
  fprintf(stderr, "%s: %s (%zu, %zu) differs\n  got:  ", name, how, a, b);
  unit_dump(lg->out.p, lg->out.len);
  fprintf(stderr, "\n  want: ");
  unit_dump(want, strlen(want));
  fprintf(stderr, "\n");
  return 0;
}

/* Checks every way of cutting input against want. */
static void check_all(const char *name, const char *in, size_t len, size_t max,
                      const char *want) {
  logger_t lg = {BUF_INIT, 0, 0};
  size_t *cuts = malloc((len + 1) * sizeof(size_t));

  /* Whole. */
  run(in, len, NULL, 0, max, 0, 0, &lg);
  CHECK(same(&lg, want, name, "whole", 0, 0));

  /* Whole, stopped by the callback after every event and resumed. */
  run(in, len, NULL, 0, max, 1, 0, &lg);
  CHECK(same(&lg, want, name, "whole, stopping", 0, 0));

  /* In two at every byte, plain and stopping. */
  int ok = 1;
  for (int stop = 0; stop <= 1; stop++) {
    for (size_t i = 0; i <= len && ok; i++) {
      run(in, len, &i, 1, max, stop, 0, &lg);
      ok = same(&lg, want, name, stop ? "two, stopping" : "two", i, 0);
    }
  }
  CHECK(ok);

  /* One byte at a time, with an empty feed after each. */
  for (size_t i = 0; i < len; i++) cuts[i] = i + 1;
  run(in, len, cuts, len ? (int)len - 1 : 0, max, 0, 1, &lg);
  CHECK(same(&lg, want, name, "bytewise", 0, 0));

  /* In three at every pair of points, for inputs short enough. */
  ok = 1;
  if (len <= 300) {
    for (size_t i = 0; i <= len && ok; i++) {
      for (size_t j = i; j <= len && ok; j++) {
        size_t two[2] = {i, j};
        run(in, len, two, 2, max, 0, 0, &lg);
        ok = same(&lg, want, name, "three", i, j);
      }
    }
  }
  CHECK(ok);

  free(cuts);
  buf_free(&lg.out);
}

/* Cases given as string literals may hold NULs: sizeof gives their length. */
#define CASE(in, want) check_all(#in, (in), sizeof(in) - 1, 0, (want))
#define CASE_MAX(in, max, want) check_all(#in, (in), sizeof(in) - 1, (max), (want))

/* ------------------------------------------------------------ WHATWG rules */

static void test_bom(void) {
  CASE("\xEF\xBB\xBF" "data: a\n\n", "E - [a] - -\n");
  CASE("\xEF\xBB\xBF", "");
  CASE("\xEF\xBB\xBF\n" "data: a\n\n", "E - [a] - -\n");
  CASE("\xEF\xBB\xBF" ": hi\n", "C [hi]\n");
  /* Only one BOM, only at the start: a second one is part of a field name. */
  CASE("\xEF\xBB\xBF\xEF\xBB\xBF" "data: a\n\n", "");
  CASE("\xEF\xBB\xBF" "data: \xEF\xBB\xBF" "a\n\n", "E - [\xEF\xBB\xBF" "a] - -\n");
  CASE("data: a\n\n\xEF\xBB\xBF" "data: b\n\n", "E - [a] - -\n");
  CASE("data: a\n\n:\xEF\xBB\xBF\n", "E - [a] - -\nC [\xEF\xBB\xBF]\n");
  /* A BOM's first bytes, then something else: those bytes are text. */
  CASE("\xEF" "data: a\n\n", "");
  CASE("\xEF\xBB" "data: a\n\n", "");
  CASE("\xEF\xBB\xBE" "data: a\n\n", "");
  CASE("\xEF\xBB\n" "data: a\n\n", "E - [a] - -\n");
  CASE("\xEF\n" "data: a\n\n", "E - [a] - -\n");
  CASE("\xEF\xBB", "");
}

static void test_line_endings(void) {
  CASE("data: a\n\n", "E - [a] - -\n");
  CASE("data: a\r\r", "E - [a] - -\n");
  CASE("data: a\r\n\r\n", "E - [a] - -\n");
  CASE("data: a\r\rdata: b\r\n\r\ndata: c\n\n",
       "E - [a] - -\nE - [b] - -\nE - [c] - -\n");
  CASE("data: a\r\ndata: b\rdata: c\n\r\n", "E - [a\\nb\\nc] - -\n");
  /* CRLF is one break; CR then CRLF is two. */
  CASE("data: a\r\n\n", "E - [a] - -\n");
  CASE("data: a\n\r\n", "E - [a] - -\n");
  CASE("data: a\r\r\n", "E - [a] - -\n");
  CASE("data: a\r\n\r\ndata: b\r\n\r\n", "E - [a] - -\nE - [b] - -\n");
  CASE("data: a\r\r\n\r\ndata: b\r\r", "E - [a] - -\nE - [b] - -\n");
  /* LF CR is two breaks, and so is LF LF. */
  CASE("data: a\n\rdata: b\n\n", "E - [a] - -\nE - [b] - -\n");
  /* A CR that ends the stream still ends its line. */
  CASE("data: a\n\r", "E - [a] - -\n");
  CASE("data: a\r", "");
  CASE("\r\r\n\n\r", "");
}

static void test_cr_then_lf_across_feeds(void) {
  /* The split drivers cover this everywhere; here it is spelled out. */
  sse_parser_t p;
  logger_t lg = {BUF_INIT, 0, 0};
  sse_parser_init(&p, 0);
  CHECK(sse_parser_feed(&p, "data: a\r", 8, log_cb, &lg) == 0);
  CHECK(sse_parser_feed(&p, "\ndata: b\r", 9, log_cb, &lg) == 0);
  CHECK(lg.calls == 0); /* the LF paired with the CR: no blank line yet */
  CHECK(sse_parser_feed(&p, "", 0, log_cb, &lg) == 0);
  CHECK(sse_parser_feed(&p, "\n", 1, log_cb, &lg) == 0);
  CHECK(lg.calls == 0);
  CHECK(sse_parser_feed(&p, "\r", 1, log_cb, &lg) == 0);
  CHECK_BYTES(lg.out.p, lg.out.len, "E - [a\\nb] - -\n");
  CHECK(sse_parser_feed(&p, "\n\n", 2, log_cb, &lg) == 0);
  CHECK(lg.calls == 1);
  sse_parser_free(&p);
  buf_free(&lg.out);
}

static void test_comments(void) {
  CASE(": ping\n:\n:  two\n:no space\n:a: b\n",
       "C [ping]\nC []\nC [ two]\nC [no space]\nC [a: b]\n");
  CASE(": ping\r\n\r\n", "C [ping]\n");
  /* A comment does not end or disturb an event. */
  CASE("data: a\n: c\ndata: b\n\n", "C [c]\nE - [a\\nb] - -\n");
  CASE(": x", "");
}

static void test_fields(void) {
  CASE("data\n\n", "E - [] - -\n");
  CASE("data\ndata\n\n", "E - [\\n] - -\n");
  CASE("data:x\n\n", "E - [x] - -\n");
  CASE("data:  x\n\n", "E - [ x] - -\n");
  CASE("data: \n\n", "E - [] - -\n");
  CASE("data:\n\n", "E - [] - -\n");
  CASE("data: x \n\n", "E - [x ] - -\n");
  CASE("data:x:y: z\n\n", "E - [x:y: z] - -\n");
  CASE("data: a\0b\n\n", "E - [a\\0b] - -\n");
  CASE("data : x\n\n", "");
  CASE(" data: x\n\n", "");
  CASE("data\t: x\n\n", "");
  CASE("foo: bar\nDATA: x\nData: y\ndata: z\nfoo\n\n", "E - [z] - -\n");
}

static void test_data(void) {
  CASE("data: a\ndata: b\ndata: c\n\n", "E - [a\\nb\\nc] - -\n");
  CASE("data: a\ndata:\ndata\ndata: b\n\n", "E - [a\\n\\n\\nb] - -\n");
  CASE("data:\ndata:\n\n", "E - [\\n] - -\n");
  CASE("data: a\n\n\n\ndata: b\n\n", "E - [a] - -\nE - [b] - -\n");
}

static void test_event_type(void) {
  CASE("event: add\ndata: 1\n\ndata: 2\n\n", "E [add] [1] - -\nE - [2] - -\n");
  CASE("data: 1\nevent: add\n\n", "E [add] [1] - -\n");
  CASE("event: a\nevent: b\ndata: 1\n\n", "E [b] [1] - -\n");
  CASE("event: x\nevent:\ndata: 1\n\n", "E - [1] - -\n");
  CASE("event\ndata: 1\n\n", "E - [1] - -\n");
  CASE("event: message\ndata: 1\n\n", "E [message] [1] - -\n");
  CASE("event:  spaced \ndata: 1\n\n", "E [ spaced ] [1] - -\n");
  /* No data, no dispatch, and the type is forgotten. */
  CASE("event: x\n\n", "");
  CASE("event: x\n\ndata: y\n\n", "E - [y] - -\n");
  CASE("event: x\r\n\r\nevent: y\r\ndata: z\r\n\r\n", "E [y] [z] - -\n");
}

static void test_id(void) {
  CASE("id: 7\ndata: a\n\ndata: b\n\nid: 8\ndata: c\n\n",
       "E - [a] [7] -\nE - [b] [7] -\nE - [c] [8] -\n");
  /* An id takes effect even in a block that dispatches nothing. */
  CASE("id: 1\n\ndata: x\n\n", "E - [x] [1] -\n");
  CASE("data: x\nid: 2\n\n", "E - [x] [2] -\n");
  /* An id holding NUL is ignored; the one before it stays. */
  CASE("id: 1\n\nid: a\0b\ndata: x\n\n", "E - [x] [1] -\n");
  CASE("id: \0\ndata: x\n\n", "E - [x] - -\n");
  /* An empty id is an id: set, and empty. */
  CASE("id: 1\ndata: a\n\nid\ndata: b\n\nid:\ndata: c\n\nid: \ndata: d\n\n",
       "E - [a] [1] -\nE - [b] [] -\nE - [c] [] -\nE - [d] [] -\n");
  CASE("id:  x \ndata: a\n\n", "E - [a] [ x ] -\n");
  CASE("Id: 1\nid : 2\ndata: a\n\n", "E - [a] - -\n");
}

static void test_retry(void) {
  CASE("retry: 10\ndata: a\n\ndata: b\n\n", "E - [a] - 10\nE - [b] - -\n");
  CASE("retry: 0\ndata: a\n\n", "E - [a] - 0\n");
  CASE("retry:10\ndata: a\n\n", "E - [a] - 10\n");
  CASE("retry: 1a\ndata: a\n\n", "E - [a] - -\n");
  CASE("retry: a1\ndata: a\n\n", "E - [a] - -\n");
  CASE("retry: -1\ndata: a\n\n", "E - [a] - -\n");
  CASE("retry: 1.5\ndata: a\n\n", "E - [a] - -\n");
  CASE("retry:\ndata: a\n\n", "E - [a] - -\n");
  CASE("retry\ndata: a\n\n", "E - [a] - -\n");
  CASE("retry:  10\ndata: a\n\n", "E - [a] - -\n");
  CASE("retry: 10 \ndata: a\n\n", "E - [a] - -\n");
  /* An invalid value leaves the valid one before it in place. */
  CASE("retry: 5\nretry: x\ndata: a\n\n", "E - [a] - 5\n");
  CASE("retry: 5\nretry: 7\ndata: a\n\n", "E - [a] - 7\n");
  /* A retry in a block without data waits for the next event. */
  CASE("retry: 3000\n\ndata: a\n\n", "E - [a] - 3000\n");
  CASE("retry: 99999999999999999999999\ndata: a\n\n", "E - [a] - 9223372036854775807\n");
  CASE("retry: 9223372036854775807\ndata: a\n\n", "E - [a] - 9223372036854775807\n");

  /* The reconnection time itself persists in the parser. */
  sse_parser_t p;
  sse_parser_init(&p, 0);
  CHECK(p.reconnect == -1);
  CHECK(sse_parser_feed(&p, "retry: 2500\n\n", 13, NULL, NULL) == 0);
  CHECK(p.reconnect == 2500);
  CHECK(sse_parser_feed(&p, "retry: x\ndata: a\n\n", 18, NULL, NULL) == 0);
  CHECK(p.reconnect == 2500);
  sse_parser_free(&p);
}

static void test_end_of_stream(void) {
  CASE("data: a\n\ndata: b\n", "E - [a] - -\n");
  CASE("data: a\n\ndata: b", "E - [a] - -\n");
  CASE("data: a\n\nevent: x\ndata: b\nid: 3\n", "E - [a] - -\n");
  CASE("data: a", "");
  CASE("", "");
}

/* ------------------------------------------------------------ real streams */

static void test_openai(void) {
  CASE("data: {\"id\":\"c1\",\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n"
       "data: {\"id\":\"c1\",\"choices\":[{\"delta\":{\"content\":\"lo\"}}]}\n\n"
       "data: [DONE]\n\n",
       "E - [{\"id\":\"c1\",\"choices\":[{\"delta\":{\"content\":\"Hel\"}}\\]}] - -\n"
       "E - [{\"id\":\"c1\",\"choices\":[{\"delta\":{\"content\":\"lo\"}}\\]}] - -\n"
       "E - [[DONE\\]] - -\n");
  /* Through a proxy that speaks CRLF and pings while the model thinks. */
  CASE(": ping\r\n\r\n: ping\r\n\r\n"
       "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\r\n\r\n"
       "data: [DONE]\r\n\r\n",
       "C [ping]\nC [ping]\n"
       "E - [{\"choices\":[{\"delta\":{\"content\":\"Hi\"}}\\]}] - -\n"
       "E - [[DONE\\]] - -\n");
}

static void test_anthropic(void) {
  CASE("event: message_start\n"
       "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\"}}\n\n"
       "event: content_block_delta\n"
       "data: {\"type\":\"content_block_delta\",\"index\":0,"
       "\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n"
       "event: ping\ndata: {\"type\": \"ping\"}\n\n"
       "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
       "E [message_start] [{\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\"}}] - -\n"
       "E [content_block_delta] [{\"type\":\"content_block_delta\",\"index\":0,"
       "\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}] - -\n"
       "E [ping] [{\"type\": \"ping\"}] - -\n"
       "E [message_stop] [{\"type\":\"message_stop\"}] - -\n");
}

/* ------------------------------------------------------------ limits */

static void test_limits(void) {
  /* The bound is on a line (without its break) and on one event's data
   * (with the LF after each line); exactly the bound is allowed. */
  CASE_MAX("data: 0123456789\n\n", 16, "E - [0123456789] - -\n");
  CASE_MAX("data: 01234567890\n\n", 16, "ERR -7\n");
  CASE_MAX("data: a\n\ndata: 01234567890\n\n", 16, "E - [a] - -\nERR -7\n");
  CASE_MAX(": 0123456789abcde\n", 16, "ERR -7\n");
  CASE_MAX("data: 0123456\ndata: 0123456\n\n", 16, "E - [0123456\\n0123456] - -\n");
  CASE_MAX("data: 0123456\ndata: 0123456\ndata\n\n", 16, "ERR -7\n");
  CASE_MAX("data: a\n\nxxxxxxxxxxxxxxxxx", 16, "E - [a] - -\nERR -7\n");
  CASE_MAX("data: a\n\nxxxxxxxxxxxxxxxx", 16, "E - [a] - -\n");
  CASE_MAX("\xEF\xBB" "0123456789abcdef\n", 16, "ERR -7\n");
  CASE_MAX("\xEF\xBB\xBF" "0123456789abcdef\n", 16, "");

  /* Once failed, always failed. */
  sse_parser_t p;
  logger_t lg = {BUF_INIT, 0, 0};
  sse_parser_init(&p, 8);
  CHECK(sse_parser_feed(&p, "data: a\n\ndata: 0123", 19, log_cb, &lg) == -E2BIG);
  CHECK(lg.calls == 1);
  CHECK(sse_parser_feed(&p, "\n\ndata: b\n\n", 11, log_cb, &lg) == -E2BIG);
  sse_parser_finish(&p);
  CHECK(sse_parser_feed(&p, "data: b\n\n", 9, log_cb, &lg) == -E2BIG);
  CHECK(lg.calls == 1);
  sse_parser_free(&p);
  buf_free(&lg.out);
}

/* Feeds in steps of step bytes; returns the feed result that stopped it. */
static int feed_steps(sse_parser_t *p, const char *in, size_t len, size_t step,
                      sse_parse_cb cb, void *ctx) {
  for (size_t at = 0; at < len; at += step) {
    size_t n = len - at < step ? len - at : step;
    int rc = sse_parser_feed(p, in + at, n, cb, ctx);
    if (rc) return rc;
  }
  return 0;
}

typedef struct big {
  int events;
  size_t len;
  int ok;
} big_t;

/* Checks that the data is the pattern written by test_long_lines. */
static int big_cb(void *ctx, int kind, const sse_parsed_t *ev) {
  big_t *b = ctx;
  if (kind != SSE_PARSED_EVENT) return 0;
  b->events++;
  b->len = ev->data_len;
  b->ok = ev->event && ev->event_len == 3 && memcmp(ev->event, "big", 3) == 0;
  for (size_t i = 0; i < ev->data_len && b->ok; i++) {
    char want = (i % 1001 == 1000) ? '\n' : (char)('a' + i % 26);
    if (ev->data[i] != want) b->ok = 0;
  }
  return 0;
}

static void test_long_lines(void) {
  /* 2 MB of data in lines of 1000 bytes, and one 1 MB line. */
  buf_t in = BUF_INIT;
  buf_puts(&in, "event: big\r\n");
  size_t total = 0;
  for (int line = 0; line < 2000; line++) {
    buf_puts(&in, "data: ");
    for (int i = 0; i < 1000; i++, total++) {
      char c = (char)('a' + total % 26);
      buf_append(&in, &c, 1);
    }
    total++; /* the LF between lines, counted in the pattern */
    buf_puts(&in, "\r\n");
  }
  buf_puts(&in, "\r\n");
  size_t want_len = total - 1;

  size_t steps[] = {1, 7, 4096, 65536, in.len};
  for (size_t k = 0; k < sizeof(steps) / sizeof(steps[0]); k++) {
    sse_parser_t p;
    big_t b = {0, 0, 0};
    sse_parser_init(&p, 0);
    CHECK(feed_steps(&p, in.p, in.len, steps[k], big_cb, &b) == 0);
    CHECK(b.events == 1);
    CHECK(b.len == want_len);
    CHECK(b.ok);
    sse_parser_free(&p);
  }

  /* The same just past a bound: refused, whatever the feed size. */
  for (size_t k = 0; k < sizeof(steps) / sizeof(steps[0]); k++) {
    sse_parser_t p;
    big_t b = {0, 0, 0};
    sse_parser_init(&p, want_len);
    CHECK(feed_steps(&p, in.p, in.len, steps[k], big_cb, &b) == -E2BIG);
    CHECK(b.events == 0);
    sse_parser_free(&p);
    sse_parser_init(&p, want_len + 1);
    CHECK(feed_steps(&p, in.p, in.len, steps[k], big_cb, &b) == 0);
    CHECK(b.events == 1 && b.ok);
    sse_parser_free(&p);
  }

  /* One line of 1 MB. */
  buf_t one = BUF_INIT;
  buf_puts(&one, "data: ");
  for (size_t i = 0; i < (1 << 20); i++) {
    char c = (char)('0' + i % 10);
    buf_append(&one, &c, 1);
  }
  buf_puts(&one, "\n\n");
  sse_parser_t p;
  logger_t lg = {BUF_INIT, 0, 0};
  sse_parser_init(&p, 0);
  CHECK(feed_steps(&p, one.p, one.len, 1000, log_cb, &lg) == 0);
  CHECK(lg.calls == 1);
  CHECK(lg.out.len == (1 << 20) + strlen("E - [] - -\n"));
  CHECK(lg.out.len > 14 && memcmp(lg.out.p, "E - [0123456789", 15) == 0);
  sse_parser_free(&p);

  buf_free(&lg.out);
  buf_free(&one);
  buf_free(&in);
}

/* ------------------------------------------------------------ the API */

typedef struct stopper {
  int calls;
  int stop_at; /* the call that returns 42 */
  buf_t out;
} stopper_t;

static int stop_cb(void *ctx, int kind, const sse_parsed_t *ev) {
  stopper_t *s = ctx;
  s->calls++;
  buf_append(&s->out, kind == SSE_PARSED_COMMENT ? "#" : "", kind == SSE_PARSED_COMMENT);
  buf_append(&s->out, ev->data, ev->data_len);
  buf_puts(&s->out, ";");
  return s->calls == s->stop_at ? 42 : 0;
}

static void test_callback_stops(void) {
  const char *in = "data: a\n\n: c\ndata: b\r\ndata: b2\r\n\r\ndata: c\n\n";
  size_t len = strlen(in);
  sse_parser_t p;
  stopper_t s = {0, 3, BUF_INIT};
  sse_parser_init(&p, 0);
  CHECK(sse_parser_feed(&p, in, len, stop_cb, &s) == 42);
  CHECK_BYTES(s.out.p, s.out.len, "a;#c;b\nb2;");
  /* Stopped after the CRLF of the blank line, and nothing after it. */
  CHECK(p.consumed == strlen("data: a\n\n: c\ndata: b\r\ndata: b2\r\n\r\n"));
  CHECK(sse_parser_feed(&p, in + p.consumed, len - p.consumed, stop_cb, &s) == 0);
  CHECK_BYTES(s.out.p, s.out.len, "a;#c;b\nb2;c;");
  CHECK(p.consumed == len - strlen("data: a\n\n: c\ndata: b\r\ndata: b2\r\n\r\n"));
  sse_parser_free(&p);

  /* Stopping on a comment, on a line completed from an earlier feed, and on
   * a CR that ends the feed (its LF arrives with the next). */
  buf_clear(&s.out);
  s.calls = 0;
  s.stop_at = 1;
  sse_parser_init(&p, 0);
  CHECK(sse_parser_feed(&p, ": he", 4, stop_cb, &s) == 0);
  CHECK(sse_parser_feed(&p, "llo\ndata: x\n\n", 13, stop_cb, &s) == 42);
  CHECK(p.consumed == 4);
  s.stop_at = 2;
  CHECK(sse_parser_feed(&p, "data: x\n\r", 9, stop_cb, &s) == 42);
  CHECK(p.consumed == 9);
  CHECK(sse_parser_feed(&p, "", 0, stop_cb, &s) == 0);
  CHECK(p.consumed == 0);
  CHECK(sse_parser_feed(&p, "\ndata: y\n\n", 10, stop_cb, &s) == 0);
  CHECK_BYTES(s.out.p, s.out.len, "#hello;x;y;");
  sse_parser_free(&p);
  buf_free(&s.out);
}

typedef struct where {
  const char *lo, *hi;
  int inside; /* events whose data and type pointed into [lo, hi) */
  int events;
} where_t;

static int where_cb(void *ctx, int kind, const sse_parsed_t *ev) {
  where_t *w = ctx;
  if (kind != SSE_PARSED_EVENT) return 0;
  w->events++;
  uintptr_t lo = (uintptr_t)w->lo, hi = (uintptr_t)w->hi;
  uintptr_t d = (uintptr_t)ev->data, e = (uintptr_t)ev->event;
  if (d >= lo && d < hi && e >= lo && e < hi) w->inside++;
  return 0;
}

static void test_no_copy(void) {
  /* An event whose lines arrive in one feed comes straight from that feed. */
  static const char in[] = "event: delta\ndata: {\"t\":\"x\"}\n\nevent: delta\ndata: y\n\n";
  where_t w = {in, in + sizeof(in) - 1, 0, 0};
  sse_parser_t p;
  sse_parser_init(&p, 0);
  CHECK(sse_parser_feed(&p, in, sizeof(in) - 1, where_cb, &w) == 0);
  CHECK(w.events == 2);
  CHECK(w.inside == 2);
  CHECK(p.line.cap == 0 && p.data.cap == 0 && p.type.cap == 0);
  sse_parser_free(&p);

  /* In steady state, split events reuse the buffers already grown. */
  static const char ev[] = "event: delta\ndata: chunk one\ndata: chunk two\nid: 12\n\n";
  logger_t lg = {BUF_INIT, 0, 0};
  sse_parser_init(&p, 0);
  for (size_t cut = 1; cut < sizeof(ev) - 1; cut++) {
    sse_parser_feed(&p, ev, cut, log_cb, &lg);
    sse_parser_feed(&p, ev + cut, sizeof(ev) - 1 - cut, log_cb, &lg);
  }
  const char *lp = p.line.p, *dp = p.data.p, *tp = p.type.p, *ip = p.id.p;
  int calls = lg.calls;
  for (int round = 0; round < 100; round++) {
    for (size_t cut = 1; cut < sizeof(ev) - 1; cut++) {
      sse_parser_feed(&p, ev, cut, NULL, NULL);
      sse_parser_feed(&p, ev + cut, sizeof(ev) - 1 - cut, NULL, NULL);
    }
  }
  CHECK(calls == (int)(sizeof(ev) - 2));
  CHECK(p.line.p == lp && p.data.p == dp && p.type.p == tp && p.id.p == ip);
  sse_parser_free(&p);
  buf_free(&lg.out);
}

static void test_finish_and_next_stream(void) {
  /* finish() drops the tail and readies the parser for a reconnection:
   * the last id and the reconnection time carry over, the unfinished event
   * is gone, and a BOM is skipped again. */
  sse_parser_t p;
  logger_t lg = {BUF_INIT, 0, 0};
  sse_parser_init(&p, 0);
  static const char one[] = "id: 5\nretry: 900\ndata: a\n\nevent: x\ndata: partial\r";
  CHECK(sse_parser_feed(&p, one, sizeof(one) - 1, log_cb, &lg) == 0);
  sse_parser_finish(&p);
  static const char two[] = "\xEF\xBB\xBF" "data: b\n\n";
  CHECK(sse_parser_feed(&p, two, sizeof(two) - 1, log_cb, &lg) == 0);
  CHECK_BYTES(lg.out.p, lg.out.len, "E - [a] [5] 900\nE - [b] [5] -\n");
  CHECK(p.has_id == 1 && p.reconnect == 900);
  sse_parser_free(&p);

  /* Free then init again gives a fresh parser. */
  buf_clear(&lg.out);
  sse_parser_init(&p, 0);
  CHECK(sse_parser_feed(&p, "data: c\n\n", 9, log_cb, &lg) == 0);
  CHECK_BYTES(lg.out.p, lg.out.len, "E - [c] - -\n");
  sse_parser_free(&p);
  sse_parser_free(&p); /* freeing twice is harmless */
  buf_free(&lg.out);
}

int main(void) {
  test_bom();
  test_line_endings();
  test_cr_then_lf_across_feeds();
  test_comments();
  test_fields();
  test_data();
  test_event_type();
  test_id();
  test_retry();
  test_end_of_stream();
  test_openai();
  test_anthropic();
  test_limits();
  test_long_lines();
  test_callback_stops();
  test_no_copy();
  test_finish_and_next_stream();
  UNIT_DONE();
}
