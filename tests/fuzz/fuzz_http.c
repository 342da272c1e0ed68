/*
 * fuzz_http.c - libFuzzer target for the HTTP/1.1 request glue (http.c
 * around llhttp).
 *
 * Input: one config byte, then the bytes a client sends on a connection.
 * The config byte picks the limits (max_head, max_body) and whether the
 * caller drops bodies at the head, as a connection does for a request it
 * answered without reading its body.
 *
 * The parser is driven as conn.c drives it: a fresh message is set before
 * each request (the previous one freed, so a parser that kept a pointer to
 * it trips ASan), after HTTP_EV_HEAD it is fed again even with no bytes
 * left, and a message that ends the connection (not keep-alive, upgrade)
 * or an error ends the run.  The input is parsed whole, one byte at a time,
 * and cut at pseudo-random points (seeded from the input), each piece fed
 * from its own heap copy freed right after; every way must log the same
 * events at the same absolute offsets with the same messages, and fail
 * (with a status http.h lists) or not alike.
 *
 * Each event is checked against http.h's contract: `used` within the
 * bytes fed, NEED_MORE only when all were used, HEAD with a complete head
 * and no body yet, MESSAGE complete; every offset and length inside the
 * message's buffers; header names lower-case tokens, values without
 * surrounding whitespace; the limits (URL, head, fields, body) held; an
 * error's status one of those http.h lists; an event never repeated
 * without progress.  Reusing one message object for every request, and
 * dropping bodies or not, must not change what is parsed either.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "fuzz_util.h"
#include "http.h"

typedef struct opts {
  size_t max_head, max_body;
  int discard;
  int reuse;    /* keep one message for every request (the parser resets it) */
  int no_body;  /* leave bodies out of the log */
} opts_t;

static const size_t head_choices[4] = {16 * 1024, 64, 512, 4096};
static const size_t body_choices[4] = {65536, 0, 16, 1024};

static void describe(buf_t *o, const http_msg_t *m, const opts_t *op) {
  FUZZ_ASSERT(m->raw.len <= m->raw.cap || m->raw.p == NULL, "raw.len %zu over cap %zu",
              m->raw.len, m->raw.cap);
  FUZZ_ASSERT(m->url_len <= m->raw.len, "url_len %u over raw.len %zu", m->url_len, m->raw.len);
  FUZZ_ASSERT(m->url_len <= HTTP_MAX_URL, "url of %u bytes", m->url_len);
  FUZZ_ASSERT(m->url_len > 0, "empty url accepted");
  FUZZ_ASSERT(m->nhdrs <= HTTP_MAX_HEADERS, "%u header fields", m->nhdrs);
  FUZZ_ASSERT(m->nhdrs <= m->hdrs_cap, "nhdrs %u over cap %u", m->nhdrs, m->hdrs_cap);
  FUZZ_ASSERT(m->major == 1, "HTTP/%u.%u accepted", m->major, m->minor);
  size_t head = m->url_len;
  buf_printf(o, "%s ", http_method_name(m->method));
  fuzz_put_escaped(o, m->raw.p, m->url_len);
  buf_printf(o, " HTTP/%u.%u ka=%d ec=%d", m->major, m->minor, m->keep_alive, m->expect_continue);
  if (m->chunked) buf_puts(o, " chunked");
  if (m->has_length) buf_printf(o, " length=%llu", (unsigned long long)m->content_length);
  if (m->upgrade) buf_puts(o, " upgrade");
  buf_puts(o, "\n");
  for (uint32_t i = 0; i < m->nhdrs; i++) {
    const http_hdr_t *h = &m->hdrs[i];
    FUZZ_ASSERT((size_t)h->name + h->name_len <= m->raw.len, "header %u name out of raw", i);
    FUZZ_ASSERT((size_t)h->value + h->value_len <= m->raw.len, "header %u value out of raw", i);
    FUZZ_ASSERT(h->name >= m->url_len, "header %u name inside the url", i);
    FUZZ_ASSERT(h->name_len > 0, "header %u has an empty name", i);
    for (uint32_t k = 0; k < h->name_len; k++) {
      unsigned char c = (unsigned char)m->raw.p[h->name + k];
      FUZZ_ASSERT(http_token_char(c) && !(c >= 'A' && c <= 'Z'),
                  "header %u name byte 0x%02x is not a lower-case token char", i, c);
    }
    if (h->value_len) {
      const char *v = m->raw.p + h->value;
      FUZZ_ASSERT(v[0] != ' ' && v[0] != '\t' && v[h->value_len - 1] != ' ' &&
                      v[h->value_len - 1] != '\t',
                  "header %u value keeps surrounding whitespace", i);
      for (uint32_t k = 0; k < h->value_len; k++)
        FUZZ_ASSERT(v[k] != '\r' && v[k] != '\n', "header %u value holds a line break", i);
    }
    head += h->name_len + h->value_len;
    buf_puts(o, "  ");
    fuzz_put_escaped(o, m->raw.p + h->name, h->name_len);
    buf_puts(o, ": ");
    fuzz_put_escaped(o, m->raw.p + h->value, h->value_len);
    buf_puts(o, "\n");
  }
  FUZZ_ASSERT(head <= op->max_head, "head of %zu bytes over max_head %zu", head, op->max_head);
  FUZZ_ASSERT(m->body.len <= m->body.cap || m->body.p == NULL, "body.len %zu over cap %zu",
              m->body.len, m->body.cap);
  FUZZ_ASSERT(m->body.len <= op->max_body, "body of %zu bytes over max_body %zu", m->body.len,
              op->max_body);
  FUZZ_ASSERT(!(m->has_length && m->chunked), "both Content-Length and chunked accepted");
  FUZZ_ASSERT(!m->has_length || m->content_length <= op->max_body,
              "Content-Length %llu over max_body accepted", (unsigned long long)m->content_length);
  if (m->body.len > 0 && !op->no_body) {
    buf_printf(o, "  body[%zu]: ", m->body.len);
    fuzz_put_escaped(o, m->body.p, m->body.len);
    buf_puts(o, "\n");
  }
}

/* Feeds in[0 .. len), cut at cuts[] (ascending), the way a connection does;
 * logs events with absolute offsets.  Each piece is a heap copy. */
static void parse_cut(buf_t *log, const char *in, size_t len, const size_t *cuts, size_t ncuts,
                      const opts_t *op) {
  buf_clear(log);
  http_parser_t *p = http_parser_new(op->max_head, op->max_body);
  FUZZ_ASSERT(p != NULL, "no parser");
  http_msg_t *m = calloc(1, sizeof(*m));
  http_parser_set_msg(p, m);
  FUZZ_ASSERT(http_parser_idle(p), "a new parser is not idle");
  size_t start = 0, nmsgs = 0;
  int done = 0, head_seen = 0;
  for (size_t c = 0; c <= ncuts && !done; c++) {
    size_t end = c < ncuts ? cuts[c] : len;
    size_t plen = end - start;
    char *piece = malloc(plen ? plen : 1);
    if (plen) memcpy(piece, in + start, plen);
    const char *d = piece;
    size_t n = plen;
    int again = 0;
    size_t spins = 0;
    while ((n > 0 || again) && !done) {
      again = 0;
      FUZZ_ASSERT(++spins <= 2 * plen + 4, "the parser makes no progress");
      size_t used = (size_t)-1;
      enum http_event ev = http_feed(p, d, n, &used);
      FUZZ_ASSERT(used <= n, "used %zu of %zu", used, n);
      d += used;
      n -= used;
      size_t off = start + (size_t)(d - piece);
      switch (ev) {
      case HTTP_EV_NEED_MORE:
        FUZZ_ASSERT(n == 0, "need-more with %zu bytes left", n);
        break;
      case HTTP_EV_HEAD:
        FUZZ_ASSERT(!head_seen, "a second HEAD for one message");
        head_seen = 1;
        buf_printf(log, "HEAD@%zu nh=%u\n", off, m->nhdrs);
        FUZZ_ASSERT(m->head_done && !m->complete && m->body.len == 0,
                    "head state: done=%d complete=%d body=%zu", m->head_done, m->complete,
                    m->body.len);
        FUZZ_ASSERT(!http_parser_idle(p), "idle at a head");
        if (op->discard) http_parser_discard_body(p);
        again = 1;
        break;
      case HTTP_EV_MESSAGE:
        buf_printf(log, "MESSAGE@%zu\n", off);
        FUZZ_ASSERT(m->head_done && m->complete, "message state: done=%d complete=%d",
                    m->head_done, m->complete);
        FUZZ_ASSERT(head_seen || m->upgrade, "a message without its head");
        FUZZ_ASSERT(http_parser_idle(p), "not idle after a message");
        FUZZ_ASSERT(!op->discard || m->body.len == 0, "a discarded body was kept");
        /* (CONNECT ends at its head: what follows is the tunnel's.) */
        if (!op->discard && m->has_length && !m->upgrade)
          FUZZ_ASSERT(m->body.len == m->content_length, "body of %zu bytes, Content-Length %llu",
                      m->body.len, (unsigned long long)m->content_length);
        describe(log, m, op);
        if (!m->keep_alive || m->upgrade) {
          /* The connection ends with this answer. */
          buf_puts(log, "CLOSE\n");
          done = 1;
          break;
        }
        if (++nmsgs > 10000) {
          done = 1;
          break;
        }
        if (op->reuse) {
          http_parser_set_msg(p, m);
          head_seen = 0;
          break;
        }
        /* A fresh message for the next request, the old one gone. */
        http_msg_t *next = calloc(1, sizeof(*next));
        http_parser_set_msg(p, next);
        http_msg_free(m);
        free(m);
        m = next;
        head_seen = 0;
        break;
      case HTTP_EV_ERROR: {
        const char *reason = NULL;
        int st = http_parser_status(p, &reason);
        FUZZ_ASSERT(st == 400 || st == 413 || st == 414 || st == 417 || st == 431,
                    "error status %d (%s)", st, reason ? reason : "");
        FUZZ_ASSERT(reason != NULL && reason[0] != '\0', "no reason for %d", st);
        /* Not the status: when two faults compete (a URL too long for the
         * head limit that also holds a bad byte) which one llhttp reports
         * first depends on where the reads were cut, and either answer is
         * right.  That it fails, after the same events, must not depend on it. */
        buf_puts(log, "ERROR\n");
        done = 1;
        break;
      }
      default:
        FUZZ_FAIL("unknown event %d", (int)ev);
      }
    }
    memset(piece, 0xAA, plen);
    free(piece);
    start = end;
  }
  if (!done) buf_puts(log, http_parser_idle(p) ? "idle\n" : "partial\n");
  http_parser_free(p);
  http_msg_free(m);
  free(m);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  opts_t op = {head_choices[data[0] & 3], body_choices[(data[0] >> 2) & 3], (data[0] >> 4) & 1,
               0, 0};
  const char *in = (const char *)data + 1;
  size_t len = size - 1;
  uint64_t seed = 1469598103934665603ull;
  for (size_t i = 0; i < size; i++) seed = (seed ^ data[i]) * 1099511628211ull;

  static buf_t whole, other;
  parse_cut(&whole, in, len, NULL, 0, &op);
  if (getenv("SLUICE_FUZZ_LOG")) /* to see what an input parses into */
    fprintf(stderr, "%.*s", (int)whole.len, whole.p);

  size_t *cuts = malloc((len + 1) * sizeof(*cuts));
  for (size_t i = 1; i < len; i++) cuts[i - 1] = i;
  parse_cut(&other, in, len, cuts, len ? len - 1 : 0, &op);
  fuzz_same_log(&whole, &other, "one byte at a time");

  for (int i = 0; i < 4; i++) {
    uint64_t s = seed + (uint64_t)i * 0x9E3779B97F4A7C15ull;
    size_t n = fuzz_cuts(&s, len, cuts, len);
    parse_cut(&other, in, len, cuts, n, &op);
    fuzz_same_log(&whole, &other, "random cuts");
  }
  free(cuts);

  /* One message object reused for every request parses the same. */
  opts_t o2 = op;
  o2.reuse = 1;
  parse_cut(&other, in, len, NULL, 0, &o2);
  fuzz_same_log(&whole, &other, "one message reused");

  /* Dropping bodies changes nothing but the bodies. */
  static buf_t kept;
  o2 = op;
  o2.no_body = 1;
  parse_cut(&kept, in, len, NULL, 0, &o2);
  o2.discard = !op.discard;
  parse_cut(&other, in, len, NULL, 0, &o2);
  fuzz_same_log(&kept, &other, op.discard ? "bodies kept" : "bodies dropped");
  return 0;
}
