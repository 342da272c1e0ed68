/* test_http.c - the HTTP/1.1 request glue: what a request parses into, that
 * the result does not depend on how the bytes were split into reads,
 * pipelining, keep-alive, Expect, the limits and malformed input. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "http.h"
#include "unit.h"

#define S(lit) (lit), sizeof(lit) - 1 /* a literal and its length (NULs included) */

/* ------------------------------------------------------------------ driver */

#define MAX_MSGS 8

/* The parser's limits for one run, and whether to drop bodies as a caller
 * that answered at the head does. */
typedef struct opts {
  size_t max_head, max_body;
  int discard;
} opts_t;

static const opts_t defaults = {16384, 65536, 0};

/* What one run over an input produced: a text log of the events and the
 * messages (one per request, each set fresh on the parser as a caller does). */
typedef struct run {
  buf_t log;
  http_msg_t msgs[MAX_MSGS];
  int nmsgs;
  int status; /* with an error: the status to answer; otherwise 0 */
} run_t;

static void put_escaped(buf_t *o, const char *p, size_t n) {
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)p[i];
    if (c >= 32 && c < 127 && c != '\\') buf_append(o, &p[i], 1);
    else buf_printf(o, "\\x%02x", c);
  }
}

/* One line for the head, then "  name: value" per field and the body; the
 * text form makes a mismatch readable in the failure output. */
static void describe(buf_t *o, const http_msg_t *m) {
  buf_printf(o, "%s ", http_method_name(m->method));
  put_escaped(o, m->raw.p, m->url_len);
  buf_printf(o, " HTTP/%u.%u ka=%d ec=%d", m->major, m->minor, m->keep_alive, m->expect_continue);
  if (m->chunked) buf_puts(o, " chunked");
  if (m->has_length) buf_printf(o, " length=%llu", (unsigned long long)m->content_length);
  if (m->upgrade) buf_puts(o, " upgrade");
  buf_puts(o, "\n");
  for (uint32_t i = 0; i < m->nhdrs; i++) {
    const http_hdr_t *h = &m->hdrs[i];
    buf_puts(o, "  ");
    put_escaped(o, m->raw.p + h->name, h->name_len);
    buf_puts(o, ": ");
    put_escaped(o, m->raw.p + h->value, h->value_len);
    buf_puts(o, "\n");
  }
  if (m->body.len > m->body.cap) {
    buf_printf(o, "  BAD body.len %zu over its capacity %zu\n", m->body.len, m->body.cap);
  } else if (m->body.len > 0) {
    buf_printf(o, "  body[%zu]: ", m->body.len);
    put_escaped(o, m->body.p, m->body.len);
    buf_puts(o, "\n");
  }
}

/* Feeds in[0 .. len) as the chunks that cuts (increasing offsets) delimit,
 * driving the parser the way a connection does, and logs:
 *   "HEAD@off nh=N"  a head ended at input offset off with N fields,
 *   "MESSAGE@off" and the message's description,
 *   "ERROR status", and at the end "idle" or "partial".
 * Offsets are absolute, so the log checks the `used` accounting too; any
 * broken invariant of the feeding contract is logged as a "BAD" line. */
static void parse_cut(run_t *r, const char *in, size_t len, const size_t *cuts, size_t ncuts,
                      const opts_t *o) {
  if (o == NULL) o = &defaults;
  memset(r, 0, sizeof(*r));
  http_parser_t *p = http_parser_new(o->max_head, o->max_body);
  if (p == NULL) {
    buf_puts(&r->log, "BAD no parser\n");
    return;
  }
  http_parser_set_msg(p, &r->msgs[0]);
  r->nmsgs = 1;
  size_t start = 0;
  for (size_t c = 0; c <= ncuts; c++) {
    size_t end = c < ncuts ? cuts[c] : len;
    const char *d = in + start;
    size_t n = end - start;
    int again = 0; /* after a head, feed again even with nothing left */
    while (n > 0 || again) {
      again = 0;
      http_msg_t *m = &r->msgs[r->nmsgs - 1];
      size_t used = (size_t)-1;
      enum http_event ev = http_feed(p, d, n, &used);
      if (used > n) {
        buf_printf(&r->log, "BAD used %zu of %zu\n", used, n);
        goto out;
      }
      d += used;
      n -= used;
      size_t off = (size_t)(d - in);
      switch (ev) {
      case HTTP_EV_NEED_MORE:
        if (n != 0) buf_printf(&r->log, "BAD need-more with %zu left\n", n);
        break;
      case HTTP_EV_HEAD:
        buf_printf(&r->log, "HEAD@%zu nh=%u\n", off, m->nhdrs);
        if (!m->head_done || m->complete || m->body.len != 0) buf_puts(&r->log, "BAD head state\n");
        if (o->discard) http_parser_discard_body(p);
        again = 1;
        break;
      case HTTP_EV_MESSAGE:
        buf_printf(&r->log, "MESSAGE@%zu\n", off);
        if (!m->head_done || !m->complete || m->body.len > m->body.cap) buf_puts(&r->log, "BAD message state\n");
        describe(&r->log, m);
        if (r->nmsgs == MAX_MSGS) {
          buf_puts(&r->log, "BAD too many messages\n");
          goto out;
        }
        http_parser_set_msg(p, &r->msgs[r->nmsgs++]);
        break;
      case HTTP_EV_ERROR:
        r->status = http_parser_status(p, NULL);
        buf_printf(&r->log, "ERROR %d\n", r->status);
        goto out;
      default:
        buf_printf(&r->log, "BAD event %d\n", (int)ev);
        goto out;
      }
    }
    start = end;
  }
  buf_puts(&r->log, http_parser_idle(p) ? "idle\n" : "partial\n");
out:
  http_parser_free(p);
}

static void run_free(run_t *r) {
  buf_free(&r->log);
  for (int i = 0; i < MAX_MSGS; i++) http_msg_free(&r->msgs[i]);
}

/* Parses a whole input in one read; the log is NUL-terminated for strcmp. */
static void parse(run_t *r, const char *in, size_t len, const opts_t *o) {
  parse_cut(r, in, len, NULL, 0, o);
  buf_append(&r->log, "", 1);
  r->log.len--;
}

/* Parses in whole and checks the log against want. */
#define CHECK_PARSE(in, want)                    \
  do {                                           \
    run_t r_;                                    \
    parse(&r_, S(in), NULL);                     \
    CHECK_BYTES(r_.log.p, r_.log.len, want);     \
    run_free(&r_);                               \
  } while (0)

/* Parses in whole and checks that it fails with status. */
#define CHECK_STATUS(in, o, want_status)                                  \
  do {                                                                    \
    run_t r_;                                                             \
    parse(&r_, S(in), (o));                                               \
    CHECK(r_.status == (want_status));                                    \
    if (r_.status != (want_status)) {                                     \
      fprintf(stderr, "  input: ");                                       \
      unit_dump(in, sizeof(in) - 1);                                      \
      fprintf(stderr, "\n  log:\n%s", r_.log.p ? r_.log.p : "");          \
    }                                                                     \
    run_free(&r_);                                                        \
  } while (0)

/* The log of a split run must equal the whole run's; reports the first
 * difference only, so one bug does not print thousands of lines. */
static int same_as(const run_t *whole, const run_t *split, const char *what, size_t at) {
  if (split->log.len == whole->log.len && memcmp(split->log.p, whole->log.p, whole->log.len) == 0) return 1;
  fprintf(stderr, "split (%s, at %zu) differs from the whole parse\n", what, at);
  CHECK_BYTES(split->log.p, split->log.len, whole->log.p);
  return 0;
}

/* Parses in whole, then split in two at every byte boundary, then one byte
 * at a time, then in three at every pair of boundaries (when short enough),
 * and checks every split parses exactly as the whole did.  Returns the whole
 * run's log via *whole (to be freed by the caller). */
static void check_every_split(const char *in, size_t len, const opts_t *o, run_t *whole) {
  parse(whole, in, len, o);
  int ok = !strstr(whole->log.p, "BAD");
  CHECK(ok);
  if (!ok) fprintf(stderr, "%s", whole->log.p);
  run_t r;
  ok = 1;
  for (size_t k = 1; k < len && ok; k++) {
    size_t cut = k;
    parse_cut(&r, in, len, &cut, 1, o);
    buf_append(&r.log, "", 1);
    r.log.len--;
    ok = same_as(whole, &r, "two", k);
    run_free(&r);
  }
  CHECK(ok);

  size_t *cuts = malloc(len * sizeof(*cuts));
  for (size_t k = 1; k < len; k++) cuts[k - 1] = k;
  parse_cut(&r, in, len, cuts, len ? len - 1 : 0, o);
  buf_append(&r.log, "", 1);
  r.log.len--;
  CHECK(same_as(whole, &r, "bytewise", 0));
  run_free(&r);

  ok = 1;
  if (len <= 200) {
    for (size_t a = 1; a < len && ok; a++) {
      for (size_t b = a + 1; b < len && ok; b++) {
        size_t two[2] = {a, b};
        parse_cut(&r, in, len, two, 2, o);
        buf_append(&r.log, "", 1);
        r.log.len--;
        ok = same_as(whole, &r, "three", a * 1000 + b);
        run_free(&r);
      }
    }
  }
  CHECK(ok);
  free(cuts);
}

/* ------------------------------------------------------------------- tests */

static void test_simple_get(void) {
  CHECK_PARSE("GET /hello?x=1 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: t/1\r\n\r\n",
              "HEAD@63 nh=2\n"
              "MESSAGE@63\n"
              "GET /hello?x=1 HTTP/1.1 ka=1 ec=0\n"
              "  host: example.com\n"
              "  user-agent: t/1\n"
              "idle\n");

  /* The same, step by step through the API, as a connection drives it. */
  static const char in[] = "GET / HTTP/1.1\r\nHost: a\r\n\r\n";
  http_parser_t *p = http_parser_new(1024, 1024);
  http_msg_t m = {0};
  http_parser_set_msg(p, &m);
  CHECK(http_parser_idle(p));
  size_t used = 99;
  CHECK(http_feed(p, in, 0, &used) == HTTP_EV_NEED_MORE);
  CHECK(used == 0);
  CHECK(http_feed(p, in, sizeof(in) - 1, &used) == HTTP_EV_HEAD);
  CHECK(used == sizeof(in) - 1);
  CHECK(m.head_done && !m.complete);
  CHECK(m.method == HTTP_METHOD_GET);
  CHECK(m.major == 1 && m.minor == 1);
  CHECK_BYTES(m.raw.p, m.url_len, "/");
  CHECK(!http_parser_idle(p));
  /* A body-less message completes only on the next feed, with no bytes. */
  CHECK(http_feed(p, in + used, 0, &used) == HTTP_EV_MESSAGE);
  CHECK(used == 0);
  CHECK(m.complete);
  CHECK(!m.has_length && !m.chunked && m.body.len == 0);
  CHECK(http_parser_idle(p));
  CHECK(http_feed(p, in, 0, &used) == HTTP_EV_NEED_MORE);
  http_msg_free(&m);
  http_parser_free(p);
  http_parser_free(NULL); /* ignored */
}

static void test_header_values(void) {
  /* Names are lower-cased, values kept as sent, less surrounding OWS. */
  CHECK_PARSE("GET / HTTP/1.1\r\nHost: h\r\nCoNtEnT-TyPe: Text/Plain\r\nX-A:  padded \t \r\nX-B:\tv\r\n\r\n",
              "HEAD@78 nh=4\n"
              "MESSAGE@78\n"
              "GET / HTTP/1.1 ka=1 ec=0\n"
              "  host: h\n"
              "  content-type: Text/Plain\n"
              "  x-a: padded\n"
              "  x-b: v\n"
              "idle\n");
  /* Inner whitespace stays. */
  CHECK_PARSE("GET / HTTP/1.1\r\nHost: h\r\nX: a  b\r\n\r\n",
              "HEAD@36 nh=2\nMESSAGE@36\nGET / HTTP/1.1 ka=1 ec=0\n  host: h\n  x: a  b\nidle\n");
  /* Empty values: none at all, only whitespace, first, middle and last. */
  CHECK_PARSE("GET / HTTP/1.1\r\nHost: h\r\nA:\r\nB:   \r\nC: c\r\nD:\r\n\r\n",
              "HEAD@48 nh=5\n"
              "MESSAGE@48\n"
              "GET / HTTP/1.1 ka=1 ec=0\n"
              "  host: h\n"
              "  a: \n"
              "  b: \n"
              "  c: c\n"
              "  d: \n"
              "idle\n");
  /* Bytes over 127 in values pass through (they are opaque to HTTP). */
  CHECK_PARSE("GET / HTTP/1.1\r\nHost: h\r\nX: caf\xc3\xa9\r\n\r\n",
              "HEAD@37 nh=2\nMESSAGE@37\nGET / HTTP/1.1 ka=1 ec=0\n  host: h\n  x: caf\\xc3\\xa9\nidle\n");
  /* An obsolete line folding is joined as RFC 9112 allows (whitespace for
   * the CRLF), not taken for a new field. */
  CHECK_PARSE("GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n\tb\r\n\r\n",
              "HEAD@37 nh=2\nMESSAGE@37\nGET / HTTP/1.1 ka=1 ec=0\n  host: h\n  x: a\\x09b\nidle\n");
}

static void test_values_across_chunks(void) {
  static const char in[] = "GET /path HTTP/1.1\r\nHost: h\r\nX-Long-Name: abcdefghij   \r\nE:\r\nLast: z\r\n\r\n";
  size_t len = sizeof(in) - 1;
  /* Cut inside the name, right after the colon, inside the value, inside
   * its trailing whitespace, and inside the empty field, all at once. */
  const char *name = strstr(in, "Long"), *value = strstr(in, "abcde"), *ws = strstr(in, "j  ") + 2;
  const char *empty = strstr(in, "E:") + 2;
  size_t cuts[] = {(size_t)(name + 2 - in), (size_t)(value - 1 - in), (size_t)(value + 5 - in),
                   (size_t)(ws - in), (size_t)(empty - in)};
  run_t r;
  parse_cut(&r, in, len, cuts, 5, NULL);
  CHECK_BYTES(r.log.p, r.log.len,
              "HEAD@72 nh=4\n"
              "MESSAGE@72\n"
              "GET /path HTTP/1.1 ka=1 ec=0\n"
              "  host: h\n"
              "  x-long-name: abcdefghij\n"
              "  e: \n"
              "  last: z\n"
              "idle\n");
  const char *v;
  size_t vlen;
  v = http_msg_header(&r.msgs[0], "x-long-name", &vlen);
  CHECK(v != NULL && vlen == 10 && memcmp(v, "abcdefghij", 10) == 0);
  v = http_msg_header(&r.msgs[0], "e", &vlen);
  CHECK(v != NULL && vlen == 0);
  run_free(&r);
}

static void test_repeated_headers_and_lookup(void) {
  run_t r;
  parse(&r, S("GET / HTTP/1.1\r\nHost: h\r\nAccept: a\r\nX: 1\r\naccept: b\r\nACCEPT: c\r\nEmpty:\r\n\r\n"), NULL);
  CHECK_BYTES(r.log.p, r.log.len,
              "HEAD@74 nh=6\n"
              "MESSAGE@74\n"
              "GET / HTTP/1.1 ka=1 ec=0\n"
              "  host: h\n"
              "  accept: a\n"
              "  x: 1\n"
              "  accept: b\n"
              "  accept: c\n"
              "  empty: \n"
              "idle\n");
  const http_msg_t *m = &r.msgs[0];
  size_t vlen = 99;
  const char *v = http_msg_header(m, "accept", &vlen); /* the first one */
  CHECK(v != NULL && vlen == 1 && v[0] == 'a');
  v = http_msg_header(m, "x", NULL); /* len may be NULL */
  CHECK(v != NULL && v[0] == '1');
  vlen = 99;
  v = http_msg_header(m, "empty", &vlen);
  CHECK(v != NULL && vlen == 0);
  CHECK(http_msg_header(m, "missing", &vlen) == NULL);
  CHECK(http_msg_header(m, "accep", NULL) == NULL);   /* no prefix match */
  CHECK(http_msg_header(m, "accepts", NULL) == NULL); /* nor a longer name */
  CHECK(http_msg_header(m, "Accept", NULL) == NULL);  /* lookups take lower case */
  CHECK(http_msg_header(m, "", NULL) == NULL);
  run_free(&r);

  http_msg_t none = {0};
  CHECK(http_msg_header(&none, "host", NULL) == NULL);
}

/* A chunked POST with three chunks (one with an extension) and a trailer. */
static const char chunked_post[] =
    "POST /up HTTP/1.1\r\n"
    "Host: h\r\n"
    "Transfer-Encoding: chunked\r\n"
    "\r\n"
    "5\r\nhello\r\n"
    "1;ext=1\r\n,\r\n"
    "A\r\n worldwide\r\n"
    "0\r\n"
    "Trailer-X: t\r\n"
    "\r\n";

static void test_every_split(void) {
  run_t w;

  check_every_split(S("GET /a/b?c=d HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\nX-Empty:\r\n\r\n"),
                    NULL, &w);
  CHECK_BYTES(w.log.p, w.log.len,
              "HEAD@67 nh=3\n"
              "MESSAGE@67\n"
              "GET /a/b?c=d HTTP/1.1 ka=1 ec=0\n"
              "  host: example.com\n"
              "  accept: */*\n"
              "  x-empty: \n"
              "idle\n");
  run_free(&w);

  check_every_split(S("POST /form HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\nContent-Type: text/plain\r\n\r\n"
                      "hello\r\nworl"),
                    NULL, &w);
  CHECK_BYTES(w.log.p, w.log.len,
              "HEAD@78 nh=3\n"
              "MESSAGE@89\n"
              "POST /form HTTP/1.1 ka=1 ec=0 length=11\n"
              "  host: h\n"
              "  content-length: 11\n"
              "  content-type: text/plain\n"
              "  body[11]: hello\\x0d\\x0aworl\n"
              "idle\n");
  run_free(&w);

  check_every_split(S(chunked_post), NULL, &w);
  CHECK_BYTES(w.log.p, w.log.len,
              "HEAD@58 nh=2\n"
              "MESSAGE@114\n"
              "POST /up HTTP/1.1 ka=1 ec=0 chunked\n"
              "  host: h\n"
              "  transfer-encoding: chunked\n"
              "  trailer-x: t\n"
              "  body[16]: hello, worldwide\n"
              "idle\n");
  run_free(&w);

  check_every_split(S("GET /1 HTTP/1.1\r\nHost: h\r\n\r\n"
                      "POST /2 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"),
                    NULL, &w);
  CHECK_BYTES(w.log.p, w.log.len,
              "HEAD@28 nh=1\n"
              "MESSAGE@28\n"
              "GET /1 HTTP/1.1 ka=1 ec=0\n"
              "  host: h\n"
              "HEAD@76 nh=2\n"
              "MESSAGE@79\n"
              "POST /2 HTTP/1.1 ka=1 ec=0 length=3\n"
              "  host: h\n"
              "  content-length: 3\n"
              "  body[3]: abc\n"
              "idle\n");
  run_free(&w);

  check_every_split(S("POST /1 HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n"
                      "GET /2 HTTP/1.1\r\nHost: h\r\n\r\n"
                      "PUT /3 HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\nConnection: close\r\n\r\nxy"),
                    NULL, &w);
  CHECK_BYTES(w.log.p, w.log.len,
              "HEAD@57 nh=2\n"
              "MESSAGE@69\n"
              "POST /1 HTTP/1.1 ka=1 ec=0 chunked\n"
              "  host: h\n"
              "  transfer-encoding: chunked\n"
              "  body[2]: ab\n"
              "HEAD@97 nh=1\n"
              "MESSAGE@97\n"
              "GET /2 HTTP/1.1 ka=1 ec=0\n"
              "  host: h\n"
              "HEAD@163 nh=3\n"
              "MESSAGE@165\n"
              "PUT /3 HTTP/1.1 ka=0 ec=0 length=2\n"
              "  host: h\n"
              "  content-length: 2\n"
              "  connection: close\n"
              "  body[2]: xy\n"
              "idle\n");
  run_free(&w);

  /* An incomplete input ends partial at every split as well. */
  check_every_split(S("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nabc"), NULL, &w);
  CHECK_BYTES(w.log.p, w.log.len, "HEAD@47 nh=2\npartial\n");
  run_free(&w);
}

static void test_pipelining(void) {
  static const char in[] = "GET /a HTTP/1.1\r\nHost: h\r\n\r\n"                                   /* 0..28 */
                           "POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\nbody"         /* ..80 */
                           "DELETE /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n" /* ..139 */
                           "1\r\nx\r\n0\r\n\r\n";                                              /* ..150 */
  http_parser_t *p = http_parser_new(1024, 1024);
  http_msg_t m[3];
  memset(m, 0, sizeof(m));
  const char *d = in;
  size_t n = sizeof(in) - 1, used;

  http_parser_set_msg(p, &m[0]);
  CHECK(http_feed(p, d, n, &used) == HTTP_EV_HEAD);
  CHECK(used == 28);
  d += used, n -= used;
  CHECK(http_feed(p, d, n, &used) == HTTP_EV_MESSAGE);
  CHECK(used == 0);
  CHECK(m[0].complete && m[0].method == HTTP_METHOD_GET);
  CHECK_BYTES(m[0].raw.p, m[0].url_len, "/a");

  http_parser_set_msg(p, &m[1]);
  CHECK(http_feed(p, d, n, &used) == HTTP_EV_HEAD);
  CHECK(used == 48);
  d += used, n -= used;
  CHECK(m[1].head_done && !m[1].complete && m[1].body.len == 0);
  CHECK(http_feed(p, d, n, &used) == HTTP_EV_MESSAGE);
  CHECK(used == 4);
  d += used, n -= used;
  CHECK(m[1].complete && m[1].method == HTTP_METHOD_POST);
  CHECK_BYTES(m[1].body.p, m[1].body.len, "body");

  http_parser_set_msg(p, &m[2]);
  CHECK(http_feed(p, d, n, &used) == HTTP_EV_HEAD);
  CHECK(used == 59);
  d += used, n -= used;
  CHECK(http_feed(p, d, n, &used) == HTTP_EV_MESSAGE);
  CHECK(used == 11);
  d += used, n -= used;
  CHECK(n == 0);
  CHECK(m[2].complete && m[2].chunked && m[2].method == HTTP_METHOD_DELETE);
  CHECK_BYTES(m[2].body.p, m[2].body.len, "x");

  /* The earlier messages were not touched by the later ones. */
  CHECK_BYTES(m[0].raw.p, m[0].url_len, "/a");
  CHECK_BYTES(m[1].body.p, m[1].body.len, "body");
  CHECK(m[0].nhdrs == 1 && m[1].nhdrs == 2 && m[2].nhdrs == 2);
  CHECK(http_parser_idle(p));
  CHECK(http_feed(p, d, 0, &used) == HTTP_EV_NEED_MORE && used == 0);
  for (int i = 0; i < 3; i++) http_msg_free(&m[i]);
  http_parser_free(p);

  /* Empty lines between pipelined requests are skipped (RFC 9112 2.2). */
  CHECK_PARSE("GET /1 HTTP/1.1\r\nHost: h\r\n\r\n\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n",
              "HEAD@28 nh=1\nMESSAGE@28\nGET /1 HTTP/1.1 ka=1 ec=0\n"
              "  host: h\n"
              "HEAD@60 nh=1\nMESSAGE@60\nGET /2 HTTP/1.1 ka=1 ec=0\n  host: h\nidle\n");
  CHECK_PARSE("\r\n", "idle\n");
}

static void test_keep_alive(void) {
  CHECK_PARSE("GET / HTTP/1.1\r\nHost: h\r\n\r\n", "HEAD@27 nh=1\nMESSAGE@27\nGET / HTTP/1.1 ka=1 ec=0\n  host: h\nidle\n");
  CHECK_PARSE("GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
              "HEAD@46 nh=2\nMESSAGE@46\nGET / HTTP/1.1 ka=0 ec=0\n  host: h\n  connection: close\nidle\n");
  CHECK_PARSE("GET / HTTP/1.1\r\nHost: h\r\nConnection: Close \r\n\r\n",
              "HEAD@47 nh=2\nMESSAGE@47\nGET / HTTP/1.1 ka=0 ec=0\n  host: h\n  connection: Close\nidle\n");
  CHECK_PARSE("GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, close\r\n\r\n",
              "HEAD@58 nh=2\nMESSAGE@58\nGET / HTTP/1.1 ka=0 ec=0\n  host: h\n  connection: keep-alive, close\nidle\n");
  CHECK_PARSE("GET / HTTP/1.0\r\n\r\n", "HEAD@18 nh=0\nMESSAGE@18\nGET / HTTP/1.0 ka=0 ec=0\nidle\n");
  CHECK_PARSE("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
              "HEAD@42 nh=1\nMESSAGE@42\nGET / HTTP/1.0 ka=1 ec=0\n  connection: keep-alive\nidle\n");
  CHECK_PARSE("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n",
              "HEAD@42 nh=1\nMESSAGE@42\nGET / HTTP/1.0 ka=1 ec=0\n  connection: Keep-Alive\nidle\n");
  /* Other Connection tokens do not change the default. */
  CHECK_PARSE("GET / HTTP/1.1\r\nHost: h\r\nConnection: x-foo\r\n\r\n",
              "HEAD@46 nh=2\nMESSAGE@46\nGET / HTTP/1.1 ka=1 ec=0\n  host: h\n  connection: x-foo\nidle\n");
  /* llhttp (built in its loose mode) swallows whatever follows a message
   * that ends the connection, without an event: the caller must stop at
   * keep_alive == 0, as the connection code does. */
  CHECK_PARSE("GET / HTTP/1.0\r\n\r\nGET /next HTTP/1.1\r\nHost: h\r\n\r\n",
              "HEAD@18 nh=0\nMESSAGE@18\nGET / HTTP/1.0 ka=0 ec=0\nidle\n");
}

static void test_expect(void) {
  CHECK_PARSE("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\nabc",
              "HEAD@69 nh=3\nMESSAGE@72\nPOST / HTTP/1.1 ka=1 ec=1 length=3\n"
              "  host: h\n"
              "  content-length: 3\n  expect: 100-continue\n  body[3]: abc\nidle\n");
  CHECK_PARSE("POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-Continue \r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
              "HEAD@79 nh=3\nMESSAGE@84\nPOST / HTTP/1.1 ka=1 ec=1 chunked\n"
              "  host: h\n"
              "  expect: 100-Continue\n  transfer-encoding: chunked\nidle\n");
  /* With no body to come, there is nothing to wait for. */
  CHECK_PARSE("GET / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n\r\n",
              "HEAD@49 nh=2\nMESSAGE@49\nGET / HTTP/1.1 ka=1 ec=0\n  host: h\n  expect: 100-continue\nidle\n");
  CHECK_PARSE("POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n",
              "HEAD@69 nh=3\nMESSAGE@69\nPOST / HTTP/1.1 ka=1 ec=0 length=0\n"
              "  host: h\n"
              "  expect: 100-continue\n  content-length: 0\nidle\n");
  /* Any other expectation is refused at the head, before dispatch. */
  CHECK_PARSE("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nExpect: 200-ok\r\n\r\nabc", "ERROR 417\n");
  CHECK_PARSE("GET / HTTP/1.1\r\nHost: h\r\nExpect: something\r\n\r\n", "ERROR 417\n");
  CHECK_PARSE("GET / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue, foo\r\n\r\n", "ERROR 417\n");
  CHECK_PARSE("GET / HTTP/1.1\r\nHost: h\r\nExpect:\r\n\r\n", "ERROR 417\n");
}

/* A request line and n header fields (n >= 1): the Host an HTTP/1.1
 * request needs, then n - 1 lines "Xnnn: v", and the final CRLF. */
static char *many_headers(int n, size_t *len) {
  buf_t b = BUF_INIT;
  buf_puts(&b, "GET / HTTP/1.1\r\nHost: h\r\n");
  for (int i = 1; i < n; i++) buf_printf(&b, "X%03d: v\r\n", i);
  buf_puts(&b, "\r\n");
  *len = b.len;
  return b.p;
}

static void test_head_limits(void) {
  /* max_head counts the url, names and values: here 4 + 4 + 1 + 2 + 2 = 13. */
  static const char in[] = "GET /abc HTTP/1.1\r\nHost: h\r\nAb: cd\r\n\r\n";
  opts_t o = {13, 100, 0};
  run_t r;
  parse(&r, S(in), &o);
  CHECK(r.status == 0 && r.msgs[0].complete);
  run_free(&r);
  o.max_head = 12;
  CHECK_STATUS(in, &o, 431);
  /* Trailers count against the same limit. */
  o.max_head = 40;
  CHECK_STATUS("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nTrailer: 0123456789\r\n\r\n",
               &o, 431);
  /* A long value goes over the limit at every split too. */
  buf_t big = BUF_INIT;
  buf_puts(&big, "GET / HTTP/1.1\r\nHost: h\r\nX: ");
  for (int i = 0; i < 100; i++) buf_puts(&big, "v");
  buf_puts(&big, "\r\n\r\n");
  o.max_head = 64;
  check_every_split(big.p, big.len, &o, &r);
  CHECK_BYTES(r.log.p, r.log.len, "ERROR 431\n");
  run_free(&r);
  buf_free(&big);

  /* HTTP_MAX_HEADERS fields pass; one more is 431. */
  size_t len;
  char *h = many_headers(HTTP_MAX_HEADERS, &len);
  parse(&r, h, len, NULL);
  CHECK(r.status == 0 && r.msgs[0].complete && r.msgs[0].nhdrs == HTTP_MAX_HEADERS);
  run_free(&r);
  free(h);
  h = many_headers(HTTP_MAX_HEADERS + 1, &len);
  check_every_split(h, len, NULL, &r);
  CHECK_BYTES(r.log.p, r.log.len, "ERROR 431\n");
  run_free(&r);
  free(h);

  /* A url of HTTP_MAX_URL bytes passes; one more is 414 (not 431, with a
   * head limit that would allow it). */
  for (int extra = 0; extra <= 1; extra++) {
    buf_t u = BUF_INIT;
    buf_puts(&u, "GET /");
    for (int i = 1; i < HTTP_MAX_URL + extra; i++) buf_puts(&u, "u");
    buf_puts(&u, " HTTP/1.1\r\nHost: h\r\n\r\n");
    o.max_head = 4 * HTTP_MAX_URL;
    parse(&r, u.p, u.len, &o);
    if (extra) {
      CHECK(r.status == 414);
    } else {
      CHECK(r.status == 0 && r.msgs[0].complete && r.msgs[0].url_len == HTTP_MAX_URL);
    }
    run_free(&r);
    buf_free(&u);
  }
}

static void test_body_limits(void) {
  opts_t o = {1024, 10, 0};
  run_t r;

  /* Content-Length up to max_body passes; over it is 413 from the head
   * alone, before any body byte is sent, and without a dispatch. */
  parse(&r, S("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n0123456789"), &o);
  CHECK(r.status == 0 && r.msgs[0].body.len == 10);
  run_free(&r);
  parse(&r, S("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\n"), &o);
  CHECK_BYTES(r.log.p, r.log.len, "ERROR 413\n");
  run_free(&r);
  /* A length too large for any counter is malformed rather than large. */
  CHECK_STATUS("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999999999999\r\n\r\n", &o, 400);

  /* Chunked: the sum of the chunks is limited as it grows. */
  parse(&r, S("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n01234\r\n5\r\n56789\r\n0\r\n\r\n"), &o);
  CHECK(r.status == 0 && r.msgs[0].body.len == 10);
  run_free(&r);
  static const char over[] =
      "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nabcdef\r\n6\r\nghijkl\r\n0\r\n\r\n";
  check_every_split(S(over), &o, &r);
  CHECK_BYTES(r.log.p, r.log.len, "HEAD@56 nh=2\nERROR 413\n");
  run_free(&r);
  /* The error comes with the 11th byte, not at the end of the body. */
  const char *eleventh = strstr(over, "ghijk") + 4;
  size_t cut = (size_t)(eleventh - over);
  parse_cut(&r, over, cut, NULL, 0, &o);
  CHECK_BYTES(r.log.p, r.log.len, "HEAD@56 nh=2\npartial\n");
  run_free(&r);
  parse_cut(&r, over, cut + 1, NULL, 0, &o);
  CHECK_BYTES(r.log.p, r.log.len, "HEAD@56 nh=2\nERROR 413\n");
  run_free(&r);

  /* The limit can change between messages. */
  http_parser_t *p = http_parser_new(1024, 100);
  http_msg_t m = {0};
  size_t used;
  http_parser_set_msg(p, &m);
  http_parser_set_max_body(p, 4);
  CHECK(http_feed(p, S("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\n"), &used) == HTTP_EV_ERROR);
  CHECK(http_parser_status(p, NULL) == 413);
  http_parser_free(p);
  p = http_parser_new(1024, 4);
  http_parser_set_msg(p, &m);
  http_parser_set_max_body(p, 5);
  CHECK(http_feed(p, S("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\n"), &used) == HTTP_EV_HEAD);
  http_msg_free(&m);
  http_parser_free(p);
}

static void test_discard_body(void) {
  /* Discarded at the head: the message completes with an empty body. */
  opts_t o = {1024, 10, 1};
  run_t r;
  check_every_split(S("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n0123456789"
                      "POST /next HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nok"),
                    &o, &r);
  CHECK_BYTES(r.log.p, r.log.len,
              "HEAD@48 nh=2\nMESSAGE@58\nPOST / HTTP/1.1 ka=1 ec=0 length=10\n  host: h\n  content-length: 10\n"
              "HEAD@109 nh=2\nMESSAGE@111\nPOST /next HTTP/1.1 ka=1 ec=0 length=2\n  host: h\n  content-length: 2\n"
              "idle\n");
  CHECK(r.msgs[0].body.len == 0);
  run_free(&r);
  /* Dropped bytes still count: a chunked body over the limit is 413. */
  check_every_split(S("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nabcdef\r\n6\r\nghijkl\r\n0\r\n\r\n"),
                    &o, &r);
  CHECK_BYTES(r.log.p, r.log.len, "HEAD@56 nh=2\nERROR 413\n");
  run_free(&r);

  /* Discarding mid-body keeps what was read, and body.len keeps telling
   * how much of body.p is valid: it must not count the dropped bytes. */
  static const char in[] = "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n0123456789"
                           "POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nxyz";
  http_parser_t *p = http_parser_new(1024, 10);
  http_msg_t m = {0}, m2 = {0};
  size_t used, off = 0;
  http_parser_set_msg(p, &m);
  CHECK(http_feed(p, in, 51, &used) == HTTP_EV_HEAD);
  off += used;
  CHECK(http_feed(p, in + off, 51 - off, &used) == HTTP_EV_NEED_MORE);
  off += used;
  CHECK_BYTES(m.body.p, m.body.len, "012");
  http_parser_discard_body(p);
  CHECK(http_feed(p, in + off, sizeof(in) - 1 - off, &used) == HTTP_EV_MESSAGE);
  off += used;
  CHECK(off == 58);
  CHECK(m.complete);
  CHECK(m.body.len <= m.body.cap);
  CHECK_BYTES(m.body.p, m.body.len, "012");
  /* The next message is kept again. */
  http_parser_set_msg(p, &m2);
  CHECK(http_feed(p, in + off, sizeof(in) - 1 - off, &used) == HTTP_EV_HEAD);
  off += used;
  CHECK(http_feed(p, in + off, sizeof(in) - 1 - off, &used) == HTTP_EV_MESSAGE);
  CHECK_BYTES(m2.body.p, m2.body.len, "xyz");
  http_msg_free(&m);
  http_msg_free(&m2);
  http_parser_free(p);
}

/* Inputs that must be refused with 400 however they are split. */
static void check_bad(const char *in, size_t len) {
  run_t r;
  check_every_split(in, len, NULL, &r);
  int ok = r.status == 400 && !strstr(r.log.p, "MESSAGE");
  CHECK(ok);
  if (!ok) {
    fprintf(stderr, "  input: ");
    unit_dump(in, len);
    fprintf(stderr, "\n  log:\n%s", r.log.p);
  }
  run_free(&r);
}
#define CHECK_BAD(lit) check_bad(S(lit))

static void test_malformed(void) {
  /* Request line. */
  CHECK_BAD("HELLO\r\n\r\n");
  CHECK_BAD("FOO / HTTP/1.1\r\nHost: h\r\n\r\n");
  CHECK_BAD("get / HTTP/1.1\r\nHost: h\r\n\r\n");
  CHECK_BAD("GET /a b HTTP/1.1\r\nHost: h\r\n\r\n");
  CHECK_BAD("GET / http/1.1\r\n\r\n");
  CHECK_BAD("GET / HTTP/1.x\r\n\r\n");
  CHECK_BAD("GET / HTTP/1.12\r\n\r\n");
  CHECK_BAD("GET / HTTP/3.0\r\n\r\n");
  CHECK_BAD("GET / HTTP/2.0\r\n\r\n");  /* llhttp knows it; we do not speak it */
  CHECK_BAD("GET / HTTP/0.9\r\n\r\n");
  CHECK_BAD("GET /\r\n\r\n");           /* an HTTP/0.9 request */
  CHECK_BAD("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"); /* the HTTP/2 preface */
  CHECK_BAD("\x01GET / HTTP/1.1\r\nHost: h\r\n\r\n");
  /* Header fields. */
  CHECK_BAD("GET / HTTP/1.1\r\nHost: h\r\nBad Name: x\r\n\r\n");
  CHECK_BAD("GET / HTTP/1.1\r\nHost : a\r\n\r\n");
  CHECK_BAD("GET / HTTP/1.1\r\nHost\t: a\r\n\r\n");
  CHECK_BAD("GET / HTTP/1.1\r\nHost: h\r\n: v\r\n\r\n");
  CHECK_BAD("GET / HTTP/1.1\r\nHost: h\r\nA(b): v\r\n\r\n");
  CHECK_BAD("GET / HTTP/1.1\r\n X: v\r\nHost: h\r\n\r\n");  /* folding with nothing to fold */
  CHECK_BAD("GET / HTTP/1.1\r\nHost: h\r\nNoColon\r\n\r\n");
  CHECK_BAD("GET / HTTP/1.1\r\nHost: h\r\nX: a\x00" "b\r\n\r\n");
  CHECK_BAD("GET / HTTP/1.1\r\nHost: h\r\nX: a\rb\r\n\r\n");
  CHECK_BAD("GET / HTTP/1.1\r\nHost: h\r\nOk: 1\r\nBad Name: x\r\nOk2: 2\r\n\r\n");
  /* Framing: the shapes that request smuggling is made of. */
  CHECK_BAD("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
  CHECK_BAD("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n");
  CHECK_BAD("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!");
  CHECK_BAD("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello");
  CHECK_BAD("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 5\r\n\r\nhello");
  CHECK_BAD("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n");
  CHECK_BAD("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1x\r\n\r\nx");
  CHECK_BAD("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +5\r\n\r\nhello");
  CHECK_BAD("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n");
  CHECK_BAD("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, gzip\r\n\r\n");
  CHECK_BAD("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\r\n\r\n");
  CHECK_BAD("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n");
  CHECK_BAD("GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nTransfer-Encoding: gzip\r\n\r\n");
  /* Framing errors are found in the head, so the request is never
   * dispatched: no HEAD event precedes the error. */
  CHECK_PARSE("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n", "ERROR 400\n");
  CHECK_PARSE("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\r\n\r\n", "ERROR 400\n");
  CHECK_PARSE("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", "ERROR 400\n");
  CHECK_PARSE("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", "ERROR 400\n");
  CHECK_PARSE("GET / HTTP/1.1\r\nHost: h\r\nBad Name: x\r\n\r\n", "ERROR 400\n");
  /* Chunks. */
  CHECK_BAD("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n");
  CHECK_BAD("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n");
  CHECK_BAD("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n 5\r\nhello\r\n0\r\n\r\n");
  CHECK_BAD("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFF\r\n");
  CHECK_BAD("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n");

  /* The error is final: more input, even a valid request, gets it again. */
  http_parser_t *p = http_parser_new(1024, 1024);
  http_msg_t m = {0};
  size_t used;
  const char *reason = NULL;
  http_parser_set_msg(p, &m);
  CHECK(http_feed(p, S("BAD\r\n\r\n"), &used) == HTTP_EV_ERROR);
  CHECK(used <= 7);
  CHECK(http_parser_status(p, &reason) == 400);
  CHECK(reason != NULL && reason[0] != '\0');
  CHECK(http_feed(p, S("GET / HTTP/1.1\r\nHost: h\r\n\r\n"), &used) == HTTP_EV_ERROR);
  CHECK(http_parser_status(p, NULL) == 400);
  CHECK(!m.complete);
  http_msg_free(&m);
  http_parser_free(p);

  /* Feeding with no message set is a caller's bug, answered with 500
   * rather than a crash. */
  p = http_parser_new(1024, 1024);
  CHECK(http_feed(p, S("GET / HTTP/1.1\r\nHost: h\r\n\r\n"), &used) == HTTP_EV_ERROR);
  CHECK(http_parser_status(p, &reason) == 500);
  http_parser_free(p);
}

/* Chunked is the only transfer coding the server undoes, so the one
 * Transfer-Encoding it takes is a single field that says "chunked" (in any
 * case, OWS around it).  Anything else is refused with 400 at the head,
 * before dispatch: never a body passed on still encoded. */
static void test_transfer_encoding(void) {
  CHECK_PARSE("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: CHUNKED\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
              "HEAD@56 nh=2\nMESSAGE@69\nPOST / HTTP/1.1 ka=1 ec=0 chunked\n"
              "  host: h\n  transfer-encoding: CHUNKED\n  body[3]: abc\nidle\n");
  /* (Not a tab after it: llhttp does not take "chunked\t" for chunked, so
   * that is refused, which is the safe side.) */
  CHECK_PARSE("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: \t Chunked  \r\n\r\n3\r\nabc\r\n0\r\n\r\n",
              "HEAD@60 nh=2\nMESSAGE@73\nPOST / HTTP/1.1 ka=1 ec=0 chunked\n"
              "  host: h\n  transfer-encoding: Chunked\n  body[3]: abc\nidle\n");
  /* A coding the server does not undo before chunked: llhttp alone would
   * hand on "abc", which is not what the client meant as its body. */
  CHECK_BAD("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n");
  CHECK_BAD("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"
            "3\r\nabc\r\n0\r\n\r\n");
  CHECK_BAD("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: identity, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n");
  CHECK_BAD("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: x-custom,chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n");
  /* Chunked twice, in one field or two: malformed (RFC 9112 6.1). */
  CHECK_BAD("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n");
  CHECK_BAD("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"
            "3\r\nabc\r\n0\r\n\r\n");
  /* Not chunked at all, or not last, or not quite chunked. */
  CHECK_BAD("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: identity\r\n\r\n");
  CHECK_BAD("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n");
  CHECK_BAD("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: xchunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n");
  CHECK_BAD("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunkedx\r\n\r\n3\r\nabc\r\n0\r\n\r\n");
  CHECK_BAD("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked;x=1\r\n\r\n3\r\nabc\r\n0\r\n\r\n");
  CHECK_BAD("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip,\r\n chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n");
  /* HTTP/1.0 has no Transfer-Encoding: its framing is faulty (RFC 9112
   * 6.1), and a 1.0 hop in front would read the body otherwise. */
  CHECK_BAD("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n");
  CHECK_BAD("POST / HTTP/1.0\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n");
  /* Refused at the head: the request is never dispatched. */
  CHECK_PARSE("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
              "ERROR 400\n");
  CHECK_PARSE("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n",
              "ERROR 400\n");
  CHECK_PARSE("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", "ERROR 400\n");

  /* The reason names the field, for the log. */
  http_parser_t *p = http_parser_new(1024, 1024);
  http_msg_t m = {0};
  size_t used;
  const char *reason = NULL;
  http_parser_set_msg(p, &m);
  CHECK(http_feed(p, S("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"), &used) ==
        HTTP_EV_ERROR);
  CHECK(http_parser_status(p, &reason) == 400);
  CHECK(reason != NULL && strstr(reason, "Transfer-Encoding") != NULL);
  CHECK(!m.head_done);
  http_msg_free(&m);
  http_parser_free(p);
}

/* RFC 9112 3.2: an HTTP/1.1 request needs one Host field, an HTTP/1.0 one
 * none, and no request may have two.  The rest is 400 at the head, before
 * dispatch, however the input is split. */
static void test_host(void) {
  /* One Host, in any case, with any value (empty included: RFC 9112 3.2
   * asks for an empty one when the target has no authority). */
  CHECK_PARSE("GET / HTTP/1.1\r\nHOST: a.example\r\n\r\n",
              "HEAD@35 nh=1\nMESSAGE@35\nGET / HTTP/1.1 ka=1 ec=0\n  host: a.example\nidle\n");
  CHECK_PARSE("GET / HTTP/1.1\r\nHost:\r\n\r\n", "HEAD@25 nh=1\nMESSAGE@25\nGET / HTTP/1.1 ka=1 ec=0\n  host: \nidle\n");
  /* HTTP/1.0 did not require it. */
  CHECK_PARSE("GET / HTTP/1.0\r\n\r\n", "HEAD@18 nh=0\nMESSAGE@18\nGET / HTTP/1.0 ka=0 ec=0\nidle\n");
  CHECK_PARSE("GET / HTTP/1.0\r\nHost: a\r\n\r\n",
              "HEAD@27 nh=1\nMESSAGE@27\nGET / HTTP/1.0 ka=0 ec=0\n  host: a\nidle\n");
  /* None in HTTP/1.1: names that only look like it do not count. */
  CHECK_BAD("GET / HTTP/1.1\r\n\r\n");
  CHECK_BAD("GET / HTTP/1.1\r\nX-Host: a\r\nHosts: b\r\nHos: c\r\n\r\n");
  CHECK_BAD("POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc");
  CHECK_BAD("CONNECT example.com:443 HTTP/1.1\r\n\r\n");
  CHECK_PARSE("GET / HTTP/1.1\r\n\r\n", "ERROR 400\n");
  /* A Host among the trailer fields does not stand in for one in the head. */
  CHECK_BAD("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nHost: a\r\n\r\n");
  /* Two, even alike, in any case, in either version. */
  CHECK_BAD("GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n");
  CHECK_BAD("GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n");
  CHECK_BAD("GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\nhOsT: b\r\n\r\n");
  CHECK_BAD("GET / HTTP/1.1\r\nHost:\r\nHost: a\r\n\r\n");
  CHECK_BAD("GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n");
  CHECK_PARSE("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "ERROR 400\n");
  /* Each request of a pipeline is judged by itself. */
  run_t r;
  check_every_split(S("GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\n\r\n"), NULL, &r);
  CHECK_BYTES(r.log.p, r.log.len, "HEAD@28 nh=1\nMESSAGE@28\nGET /1 HTTP/1.1 ka=1 ec=0\n  host: a\nERROR 400\n");
  run_free(&r);

  /* The reasons say which it was, for the log. */
  static const char *const in[2] = {"GET / HTTP/1.1\r\n\r\n", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"};
  for (int i = 0; i < 2; i++) {
    http_parser_t *p = http_parser_new(1024, 1024);
    http_msg_t m = {0};
    size_t used;
    const char *reason = NULL;
    http_parser_set_msg(p, &m);
    CHECK(http_feed(p, in[i], strlen(in[i]), &used) == HTTP_EV_ERROR);
    CHECK(http_parser_status(p, &reason) == 400);
    CHECK(reason != NULL && strstr(reason, "Host") != NULL);
    CHECK(!m.head_done);
    http_msg_free(&m);
    http_parser_free(p);
  }
}

/* Bare LF line ends: llhttp takes some and refuses others.  Either is fine
 * as long as what it takes parses to the right request. */
static void check_lf(const char *in, size_t len, const char *want) {
  run_t r;
  check_every_split(in, len, NULL, &r);
  int ok = r.status == 400 || strcmp(r.log.p, want) == 0;
  CHECK(ok);
  if (!ok) {
    fprintf(stderr, "  input: ");
    unit_dump(in, len);
    fprintf(stderr, "\n  log:\n%s", r.log.p);
  }
  run_free(&r);
}

static void test_bare_lf(void) {
  check_lf(S("GET / HTTP/1.1\nHost: a\n\n"), "HEAD@24 nh=1\nMESSAGE@24\nGET / HTTP/1.1 ka=1 ec=0\n  host: a\nidle\n");
  check_lf(S("GET / HTTP/1.1\r\nHost: a\n\r\n"), "HEAD@26 nh=1\nMESSAGE@26\nGET / HTTP/1.1 ka=1 ec=0\n  host: a\nidle\n");
  check_lf(S("GET / HTTP/1.1\r\nHost: a\r\n\n"), "HEAD@26 nh=1\nMESSAGE@26\nGET / HTTP/1.1 ka=1 ec=0\n  host: a\nidle\n");
  /* (HTTP/1.0, which needs no Host, so that nothing comes between.) */
  check_lf(S("GET / HTTP/1.0\n\r\n"), "HEAD@17 nh=0\nMESSAGE@17\nGET / HTTP/1.0 ka=0 ec=0\nidle\n");
  check_lf(S("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n"),
           "HEAD@56 nh=2\nMESSAGE@70\nPOST / HTTP/1.1 ka=1 ec=0 chunked\n"
           "  host: h\n"
           "  transfer-encoding: chunked\n  body[5]: hello\nidle\n");
  check_lf(S("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\n"),
           "HEAD@56 nh=2\nMESSAGE@70\nPOST / HTTP/1.1 ka=1 ec=0 chunked\n"
           "  host: h\n"
           "  transfer-encoding: chunked\n  body[5]: hello\nidle\n");
  /* A bare CR is never a line end. */
  CHECK_BAD("GET / HTTP/1.1\r\nHost: a\r\rb\r\n\r\n");
}

static void test_methods(void) {
  static const struct {
    const char *name;
    int value;
  } known[] = {{"GET", HTTP_METHOD_GET},       {"HEAD", HTTP_METHOD_HEAD},
               {"POST", HTTP_METHOD_POST},     {"PUT", HTTP_METHOD_PUT},
               {"DELETE", HTTP_METHOD_DELETE}, {"OPTIONS", HTTP_METHOD_OPTIONS},
               {"PATCH", HTTP_METHOD_PATCH}};
  for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++) {
    CHECK(strcmp(http_method_name((uint8_t)known[i].value), known[i].name) == 0);
    buf_t in = BUF_INIT;
    buf_printf(&in, "%s /x HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n", known[i].name);
    run_t r;
    parse(&r, in.p, in.len, NULL);
    CHECK(r.status == 0 && r.msgs[0].complete);
    CHECK(r.msgs[0].method == known[i].value);
    run_free(&r);
    buf_free(&in);
  }
  /* Methods without a constant still parse and name themselves. */
  run_t r;
  parse(&r, S("PROPFIND /dav HTTP/1.1\r\nHost: h\r\n\r\n"), NULL);
  CHECK(r.status == 0 && strcmp(http_method_name(r.msgs[0].method), "PROPFIND") == 0);
  run_free(&r);
}

static void test_msg_reuse(void) {
  http_parser_t *p = http_parser_new(1024, 1024);
  http_msg_t m = {0};
  size_t used;

  /* Resetting or freeing an untouched message is harmless. */
  http_msg_reset(&m);
  http_msg_free(&m);
  CHECK(m.raw.p == NULL && m.hdrs == NULL && m.body.p == NULL);

  http_parser_set_msg(p, &m);
  CHECK(http_feed(p, S("POST /first HTTP/1.1\r\nHost: h\r\nA: 1\r\nB: 2\r\nContent-Length: 3\r\n\r\nabc"), &used) ==
        HTTP_EV_HEAD);
  CHECK(http_feed(p, "abc", 3, &used) == HTTP_EV_MESSAGE);
  CHECK(m.complete && m.nhdrs == 4 && m.body.len == 3);

  /* Reset: empty, but the memory is kept for the next request. */
  char *raw = m.raw.p, *body = m.body.p;
  http_hdr_t *hdrs = m.hdrs;
  http_msg_reset(&m);
  CHECK(m.raw.len == 0 && m.url_len == 0 && m.nhdrs == 0 && m.body.len == 0);
  CHECK(!m.complete && !m.head_done && !m.has_length && !m.keep_alive && m.content_length == 0);
  CHECK(m.raw.p == raw && m.body.p == body && m.hdrs == hdrs && m.hdrs_cap > 0);
  CHECK(http_msg_header(&m, "a", NULL) == NULL);

  http_parser_set_msg(p, &m);
  CHECK(http_feed(p, S("GET /second HTTP/1.1\r\nHost: h\r\nC: 3\r\n\r\n"), &used) == HTTP_EV_HEAD);
  CHECK(http_feed(p, "", 0, &used) == HTTP_EV_MESSAGE);
  CHECK_BYTES(m.raw.p, m.url_len, "/second");
  CHECK(m.nhdrs == 2 && m.body.len == 0 && !m.has_length);
  CHECK(http_msg_header(&m, "a", NULL) == NULL);

  /* A used message set again without a reset is reset by the parser. */
  http_parser_set_msg(p, &m);
  CHECK(http_feed(p, S("GET /third HTTP/1.1\r\nHost: h\r\n\r\n"), &used) == HTTP_EV_HEAD);
  CHECK(http_feed(p, "", 0, &used) == HTTP_EV_MESSAGE);
  CHECK_BYTES(m.raw.p, m.url_len, "/third");
  CHECK(m.nhdrs == 1 && http_msg_header(&m, "c", NULL) == NULL);

  /* Free: no memory left, and reusable all the same. */
  http_msg_free(&m);
  CHECK(m.raw.p == NULL && m.body.p == NULL && m.hdrs == NULL && m.hdrs_cap == 0);
  CHECK(m.raw.len == 0 && m.nhdrs == 0 && !m.complete);
  http_parser_set_msg(p, &m);
  CHECK(http_feed(p, S("PUT /fourth HTTP/1.1\r\nHost: h\r\nD: 4\r\nContent-Length: 2\r\n\r\nhi"), &used) ==
        HTTP_EV_HEAD);
  CHECK(http_feed(p, "hi", 2, &used) == HTTP_EV_MESSAGE);
  CHECK_BYTES(m.raw.p, m.url_len, "/fourth");
  CHECK_BYTES(m.body.p, m.body.len, "hi");
  size_t vlen;
  const char *v = http_msg_header(&m, "d", &vlen);
  CHECK(v != NULL && vlen == 1 && *v == '4');
  http_msg_free(&m);
  http_msg_free(&m); /* twice is fine */
  http_parser_free(p);
}

static void test_idle(void) {
  http_parser_t *p = http_parser_new(1024, 1024);
  http_msg_t m = {0};
  size_t used;
  http_parser_set_msg(p, &m);
  CHECK(http_parser_idle(p));
  CHECK(http_feed(p, S("\r\n"), &used) == HTTP_EV_NEED_MORE);
  CHECK(http_parser_idle(p));
  CHECK(http_feed(p, S("GET / HT"), &used) == HTTP_EV_NEED_MORE);
  CHECK(!http_parser_idle(p));
  CHECK(http_feed(p, S("TP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n"), &used) == HTTP_EV_HEAD);
  CHECK(!http_parser_idle(p));
  CHECK(http_feed(p, "a", 1, &used) == HTTP_EV_NEED_MORE);
  CHECK(!http_parser_idle(p));
  CHECK(http_feed(p, "b", 1, &used) == HTTP_EV_MESSAGE);
  CHECK(http_parser_idle(p)); /* right at the message's end, not one feed later */
  http_msg_free(&m);
  http_parser_free(p);
}

static void test_upgrade(void) {
  /* The message is reported once; the bytes after it are not HTTP and are
   * left to the caller, which closes since keep_alive is off. */
  static const char in[] = "GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nRAW";
  http_parser_t *p = http_parser_new(1024, 1024);
  http_msg_t m = {0}, m2 = {0};
  size_t used, off = 0, len = sizeof(in) - 1;
  http_parser_set_msg(p, &m);
  CHECK(http_feed(p, in, len, &used) == HTTP_EV_HEAD);
  off += used;
  CHECK(off == 70);
  CHECK(http_feed(p, in + off, len - off, &used) == HTTP_EV_MESSAGE);
  off += used;
  CHECK(off == 70);
  CHECK(m.complete && m.upgrade && !m.keep_alive);
  http_parser_set_msg(p, &m2);
  CHECK(http_feed(p, in + off, len - off, &used) != HTTP_EV_MESSAGE);
  CHECK(!m2.complete);
  http_msg_free(&m);
  http_msg_free(&m2);
  http_parser_free(p);

  CHECK_PARSE("CONNECT example.com:443 HTTP/1.1\r\nHost: h\r\n\r\n",
              "HEAD@45 nh=1\nMESSAGE@45\nCONNECT example.com:443 HTTP/1.1 ka=0 ec=0 upgrade\n  host: h\nidle\n");
}

static void test_trailers(void) {
  /* Trailer fields join the header list after the head fields, once the
   * body is read; the head that was dispatched had only its own. */
  run_t r;
  parse(&r, S(chunked_post), NULL);
  CHECK(strstr(r.log.p, "HEAD@58 nh=2\n") != NULL);
  const http_msg_t *m = &r.msgs[0];
  CHECK(m->nhdrs == 3);
  size_t vlen;
  const char *v = http_msg_header(m, "trailer-x", &vlen);
  CHECK(v != NULL && vlen == 1 && *v == 't');
  run_free(&r);
}

static void test_reasons(void) {
  CHECK(strcmp(http_reason(200), "OK") == 0);
  CHECK(strcmp(http_reason(400), "Bad Request") == 0);
  CHECK(strcmp(http_reason(413), "Content Too Large") == 0);
  CHECK(strcmp(http_reason(414), "URI Too Long") == 0);
  CHECK(strcmp(http_reason(417), "Expectation Failed") == 0);
  CHECK(strcmp(http_reason(431), "Request Header Fields Too Large") == 0);
  CHECK(strcmp(http_reason(499), "Client Error") == 0);
  CHECK(strcmp(http_reason(599), "Server Error") == 0);

  /* Every error status comes with a reason. */
  static const struct {
    const char *in;
    size_t max_head, max_body;
    int status;
  } cases[] = {
      {"BAD\r\n\r\n", 1024, 1024, 400},
      {"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 9\r\n\r\n", 1024, 8, 413},
      {"GET /0123456789 HTTP/1.1\r\nHost: h\r\n\r\n", 4, 1024, 431},
      {"GET / HTTP/1.1\r\nHost: h\r\nExpect: x\r\n\r\n", 1024, 1024, 417},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    http_parser_t *p = http_parser_new(cases[i].max_head, cases[i].max_body);
    http_msg_t m = {0};
    size_t used;
    const char *reason = NULL;
    http_parser_set_msg(p, &m);
    CHECK(http_feed(p, cases[i].in, strlen(cases[i].in), &used) == HTTP_EV_ERROR);
    CHECK(http_parser_status(p, &reason) == cases[i].status);
    CHECK(reason != NULL && reason[0] != '\0');
    http_msg_free(&m);
    http_parser_free(p);
  }
}

/* The token set is RFC 9110's tchar: visible ASCII but the delimiters. */
static void test_token_chars(void) {
  for (int c = 0; c < 256; c++) {
    int want = c > 32 && c < 127 && strchr("\"(),/:;<=>?@[\\]{}", c) == NULL;
    CHECK(http_token_char((unsigned char)c) == want);
  }
}

int main(void) {
  test_simple_get();
  test_header_values();
  test_values_across_chunks();
  test_repeated_headers_and_lookup();
  test_every_split();
  test_pipelining();
  test_keep_alive();
  test_expect();
  test_head_limits();
  test_body_limits();
  test_discard_body();
  test_malformed();
  test_transfer_encoding();
  test_host();
  test_bare_lf();
  test_methods();
  test_msg_reuse();
  test_idle();
  test_upgrade();
  test_trailers();
  test_reasons();
  test_token_chars();
  UNIT_DONE();
}
