/*
 * sse_parse.c - the incremental SSE parser; see sse_parse.h.
 *
 * Bytes are scanned for line ends with memchr, and a line found whole in the
 * caller's buffer is parsed in place.  Only a line that straddles feeds is
 * copied, into p->line, and only once: the tail of one feed, then the head of
 * the next up to the line end.
 *
 * Within one feed the data and type buffers may be references into the
 * caller's bytes (data_ref, type_ref) rather than copies.  The common stream
 * ("data: {...}\n\n", one event per read) then dispatches straight from the
 * caller's buffer.  Before a feed returns, any reference still pending is
 * copied into its own buffer, because the caller's bytes go away.
 */
#include "sse_parse.h"

#include <errno.h>
#include <limits.h>
#include <string.h>

static const unsigned char bom_bytes[3] = {0xEF, 0xBB, 0xBF};

int sse_parser_init(sse_parser_t *p, size_t max_event) {
  memset(p, 0, sizeof(*p));
  p->max = max_event ? max_event : SSE_PARSE_DEFAULT_MAX;
  p->retry_pending = -1;
  p->reconnect = -1;
  return 0;
}

void sse_parser_free(sse_parser_t *p) {
  buf_free(&p->line);
  buf_free(&p->data);
  buf_free(&p->type);
  buf_free(&p->id);
  p->data_ref = p->type_ref = NULL;
  p->data_ref_len = p->type_ref_len = 0;
}

/* Marks the parser failed with err and returns err. */
static int fail(sse_parser_t *p, int err) {
  p->err = err;
  p->data_ref = p->type_ref = NULL;
  return err;
}

/* Length of the data buffer, counting the LF that ends each line. */
static size_t data_len(const sse_parser_t *p) {
  return p->data_ref ? p->data_ref_len + 1 : p->data.len;
}

/* Forgets the event being built: its data and its type. */
static void reset_event(sse_parser_t *p) {
  p->data_ref = NULL;
  p->data_ref_len = 0;
  buf_clear(&p->data);
  p->type_ref = NULL;
  p->type_ref_len = 0;
  buf_clear(&p->type);
}

/* Copies a pending data reference into p->data.  0 or -ENOMEM. */
static int own_data(sse_parser_t *p) {
  if (p->data_ref == NULL) return 0;
  buf_clear(&p->data);
  if (buf_reserve(&p->data, p->data_ref_len + 1)) return -ENOMEM;
  memcpy(p->data.p, p->data_ref, p->data_ref_len);
  p->data.p[p->data_ref_len] = '\n';
  p->data.len = p->data_ref_len + 1;
  p->data_ref = NULL;
  p->data_ref_len = 0;
  return 0;
}

/* Copies pending references into the parser's own buffers, so nothing points
 * into the caller's bytes or into p->line once they change.  0 or -ENOMEM. */
static int own_refs(sse_parser_t *p) {
  if (own_data(p)) return -ENOMEM;
  if (p->type_ref) {
    buf_clear(&p->type);
    if (buf_append(&p->type, p->type_ref, p->type_ref_len)) return -ENOMEM;
    p->type_ref = NULL;
    p->type_ref_len = 0;
  }
  return 0;
}

/* Runs the dispatch step for the blank line that ends an event. */
static int dispatch(sse_parser_t *p, sse_parse_cb cb, void *ctx) {
  if (data_len(p) == 0) {
    /* No data: nothing is dispatched, but the type is forgotten all the
     * same; a pending retry waits for the next real event. */
    reset_event(p);
    return 0;
  }
  sse_parsed_t ev;
  if (p->data_ref) {
    ev.data = p->data_ref;
    ev.data_len = p->data_ref_len;
  } else {
    ev.data = p->data.p;
    ev.data_len = p->data.len - 1; /* the last LF is not part of the data */
  }
  const char *type = p->type_ref ? p->type_ref : p->type.p;
  size_t type_len = p->type_ref ? p->type_ref_len : p->type.len;
  ev.event = type_len ? type : NULL;
  ev.event_len = type_len;
  ev.has_id = p->has_id;
  ev.id = p->has_id ? (p->id.p ? p->id.p : "") : NULL;
  ev.id_len = p->has_id ? p->id.len : 0;
  ev.retry = p->retry_pending;
  int rc = cb ? cb(ctx, SSE_PARSED_EVENT, &ev) : 0;
  reset_event(p);
  p->retry_pending = -1;
  return rc;
}

/* Appends one data line's value (and its LF) to the data buffer. */
static int add_data(sse_parser_t *p, const char *v, size_t n) {
  size_t cur = data_len(p);
  if (n + 1 > p->max - cur) return fail(p, -E2BIG);
  if (cur == 0) {
    /* The first line of an event: refer to it rather than copy it. */
    p->data_ref = v;
    p->data_ref_len = n;
    return 0;
  }
  if (own_data(p)) return fail(p, -ENOMEM);
  if (buf_reserve(&p->data, n + 1)) return fail(p, -ENOMEM);
  memcpy(p->data.p + p->data.len, v, n);
  p->data.p[p->data.len + n] = '\n';
  p->data.len += n + 1;
  return 0;
}

/* Applies a retry field: ASCII digits only, else ignored.  Values past
 * LLONG_MAX saturate rather than wrap. */
static void set_retry(sse_parser_t *p, const char *v, size_t n) {
  if (n == 0) return;
  long long ms = 0;
  for (size_t i = 0; i < n; i++) {
    if (v[i] < '0' || v[i] > '9') return;
    int d = v[i] - '0';
    ms = ms > (LLONG_MAX - d) / 10 ? LLONG_MAX : ms * 10 + d;
  }
  p->retry_pending = ms;
  p->reconnect = ms;
}

/* Parses one complete line (without its line break). */
static int parse_line(sse_parser_t *p, const char *line, size_t len, sse_parse_cb cb,
                      void *ctx) {
  if (len == 0) return dispatch(p, cb, ctx);

  const char *colon = memchr(line, ':', len);
  const char *name = line, *v;
  size_t name_len, n;
  if (colon) {
    name_len = (size_t)(colon - line);
    v = colon + 1;
    n = len - name_len - 1;
    if (n && *v == ' ') v++, n--;
  } else {
    name_len = len;
    v = line + len;
    n = 0;
  }

  if (name_len == 0) { /* a comment */
    if (cb == NULL) return 0;
    sse_parsed_t ev = {.data = v, .data_len = n, .retry = -1};
    return cb(ctx, SSE_PARSED_COMMENT, &ev);
  }
  switch (name_len) {
  case 4:
    if (memcmp(name, "data", 4) == 0) return add_data(p, v, n);
    break;
  case 5:
    if (memcmp(name, "event", 5) == 0) {
      buf_clear(&p->type);
      p->type_ref = n ? v : NULL;
      p->type_ref_len = n;
    } else if (memcmp(name, "retry", 5) == 0) {
      set_retry(p, v, n);
    }
    break;
  case 2:
    if (memcmp(name, "id", 2) == 0 && memchr(v, '\0', n) == NULL) {
      buf_clear(&p->id);
      if (buf_append(&p->id, v, n)) return fail(p, -ENOMEM);
      p->has_id = 1;
    }
    break;
  }
  return 0;
}

/* Returns the next c in [s, end), or end when there is none. */
static const char *find(const char *s, const char *end, char c) {
  const char *q = memchr(s, c, (size_t)(end - s));
  return q ? q : end;
}

int sse_parser_feed(sse_parser_t *p, const char *buf, size_t len, sse_parse_cb cb,
                    void *ctx) {
  p->consumed = 0;
  if (p->err) return p->err;
  if (len == 0) return 0; /* keeps a pending CR pairing with the next feed */
  const char *s = buf, *end = buf + len;

  /* The BOM may arrive a byte at a time; until it is complete or disproved
   * its bytes are held in p->bom.  Disproved, they were ordinary text. */
  while (p->bom >= 0 && s < end) {
    if ((unsigned char)*s == bom_bytes[p->bom]) {
      s++;
      if (++p->bom == 3) p->bom = -1;
    } else {
      if ((size_t)p->bom > p->max) return fail(p, -E2BIG);
      if (p->bom > 0 && buf_append(&p->line, bom_bytes, (size_t)p->bom))
        return fail(p, -ENOMEM);
      p->bom = -1;
    }
  }

  if (p->skip_lf && s < end) {
    if (*s == '\n') s++;
    p->skip_lf = 0;
  }

  /* The next CR and the next LF, each searched for again only once passed,
   * so a feed is scanned at most once per character. */
  const char *cr = find(s, end, '\r'), *lf = find(s, end, '\n');
  int rc = 0;
  while (s < end) {
    if (cr < s) cr = find(s, end, '\r');
    if (lf < s) lf = find(s, end, '\n');
    const char *e = cr < lf ? cr : lf;
    if (e == end) break;
    const char *next = e + 1;
    if (*e == '\r') {
      if (next == end) p->skip_lf = 1;
      else if (*next == '\n') next++;
    }
    size_t n = (size_t)(e - s);
    if (p->line.len) {
      /* The rest of a line begun in an earlier feed.  p->line is left
       * untouched until this feed ends, so references into it stay good. */
      if (n > p->max - p->line.len) return fail(p, -E2BIG);
      if (buf_append(&p->line, s, n)) return fail(p, -ENOMEM);
      n = p->line.len;
      p->line.len = 0;
      rc = parse_line(p, p->line.p, n, cb, ctx);
    } else {
      if (n > p->max) return fail(p, -E2BIG);
      rc = parse_line(p, s, n, cb, ctx);
    }
    s = next;
    if (p->err) return p->err;
    if (rc) break;
  }

  /* Whatever still refers to this feed's bytes or to p->line is copied
   * before p->line takes the unfinished tail. */
  if (own_refs(p)) return fail(p, -ENOMEM);
  if (rc == 0 && s < end) {
    size_t n = (size_t)(end - s);
    if (n > p->max - p->line.len) return fail(p, -E2BIG);
    if (buf_append(&p->line, s, n)) return fail(p, -ENOMEM);
    s = end;
  }
  p->consumed = (size_t)(s - buf);
  return rc;
}

void sse_parser_finish(sse_parser_t *p) {
  buf_clear(&p->line);
  reset_event(p);
  p->retry_pending = -1;
  p->skip_lf = 0;
  p->bom = 0;
}
