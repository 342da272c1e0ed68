/*
 * sse_encode.c - the Server-Sent Events frame encoder; see sse_encode.h.
 *
 * Every encoding is done in two passes over the same input: the first
 * measures the exact output length, the second writes it into a frame that
 * was allocated once at that size.  Both passes walk lines with the same
 * iterator, so they cannot disagree about where a line ends.
 */
#include "sse_encode.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* Walks the lines of a block of text.  A line ends at CR, LF or CRLF; the
 * text after the last break is a line too, even when it is empty, so text
 * holding k breaks has k + 1 lines and empty text has one empty line. */
typedef struct line_iter {
  const char *p;
  const char *end;
  const char *lf; /* the next LF at or after p, or end; NULL: not looked for */
  const char *cr; /* the same for CR */
  int done;
} line_iter_t;

/* Starts an iterator over the n bytes at text, which must not be NULL. */
static void line_iter_init(line_iter_t *it, const char *text, size_t n) {
  it->p = text;
  it->end = text + n;
  it->lf = it->cr = NULL;
  it->done = 0;
}

/* Returns the first c at or after s before end, or end. */
static const char *find(const char *s, const char *end, char c) {
  const char *q = memchr(s, c, (size_t)(end - s));
  return q ? q : end;
}

/* Stores the next line (without its break) in *line and *len and returns 1,
 * or returns 0 once every line has been produced.  A CR directly followed by
 * LF is consumed as one break, as the WHATWG parser reads it. */
static int line_iter_next(line_iter_t *it, const char **line, size_t *len) {
  if (it->done) return 0;
  const char *s = it->p;
  /* memchr beats a byte loop on the usual data, one long line (a JSON
   * chunk) without CR; remembering where each break character was found
   * keeps the scans linear however the two kinds alternate. */
  if (it->lf == NULL || it->lf < s) it->lf = find(s, it->end, '\n');
  if (it->cr == NULL || it->cr < s) it->cr = find(s, it->end, '\r');
  const char *q = it->lf < it->cr ? it->lf : it->cr;
  *line = s;
  *len = (size_t)(q - s);
  if (q == it->end) {
    it->done = 1;
  } else {
    if (*q == '\r' && q + 1 < it->end && q[1] == '\n') q++;
    it->p = q + 1;
  }
  return 1;
}

/* Returns the bytes needed to write every line of text as "<prefix>: <line>\n",
 * or "<prefix>:\n" for an empty line.  plen is the prefix length without
 * its colon. */
static size_t lines_len(const char *text, size_t n, size_t plen) {
  line_iter_t it;
  const char *line;
  size_t len, total = 0;
  line_iter_init(&it, text, n);
  while (line_iter_next(&it, &line, &len)) total += plen + (len ? 3 + len : 2);
  return total;
}

/* Writes one "name: value\n" field at out, or "name:\n" when value is empty,
 * and returns the position after it.  The space is left out of an empty
 * field because a reader would strip it anyway and "data:\n" is the shorter
 * form every parser accepts. */
static char *put_field(char *out, const char *name, size_t nlen, const char *val,
                       size_t vlen) {
  memcpy(out, name, nlen);
  out += nlen;
  *out++ = ':';
  if (vlen) {
    *out++ = ' ';
    memcpy(out, val, vlen);
    out += vlen;
  }
  *out++ = '\n';
  return out;
}

/* Writes every line of text as a field called name, and returns the
 * position after the last one. */
static char *put_lines(char *out, const char *name, size_t nlen, const char *text,
                       size_t n) {
  line_iter_t it;
  const char *line;
  size_t len;
  line_iter_init(&it, text, n);
  while (line_iter_next(&it, &line, &len)) out = put_field(out, name, nlen, line, len);
  return out;
}

/* Returns the bytes one single-line field takes on the wire. */
static size_t field_len(size_t nlen, size_t vlen) { return nlen + (vlen ? 3 + vlen : 2); }

int sse_field_ok(const char *s, size_t n) {
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    if (c == '\r' || c == '\n' || c == '\0') return 0;
  }
  return 1;
}

/* Checks ev and returns in *len the bytes it encodes to, with its retry
 * field's digits in retry (*retry_len of them).  0, or -EINVAL with *bad
 * set, or -ENOMEM when the size would overflow. */
static int measure(const sse_event_t *ev, size_t *len, char retry[24], size_t *retry_len,
                   enum sse_field *bad) {
  *bad = SSE_FIELD_NONE;
  if (ev->data == NULL && ev->event == NULL && ev->id == NULL && ev->retry < 0) {
    *bad = SSE_FIELD_EMPTY;
    return -EINVAL;
  }
  /* A break inside event or id would end the field early and turn the rest
   * into a field of the attacker's choosing, and a NUL in an id makes
   * conforming parsers drop it; refusing is the only safe answer. */
  if (ev->event != NULL && !sse_field_ok(ev->event, ev->event_len)) {
    *bad = SSE_FIELD_EVENT;
    return -EINVAL;
  }
  if (ev->id != NULL && !sse_field_ok(ev->id, ev->id_len)) {
    *bad = SSE_FIELD_ID;
    return -EINVAL;
  }

  /* Data of n bytes has at most n + 1 lines and each costs at most 7 bytes
   * besides its own, so these bounds keep the sum below from wrapping. */
  size_t fixed = ev->event_len + ev->id_len;
  if (ev->event_len > SIZE_MAX / 4 || ev->id_len > SIZE_MAX / 4 ||
      (ev->data != NULL && ev->data_len > (SIZE_MAX - fixed - 64) / 8))
    return -ENOMEM;

  *retry_len = 0;
  if (ev->retry >= 0) *retry_len = (size_t)snprintf(retry, 24, "%lld", ev->retry);

  size_t n = 1; /* the blank line that dispatches */
  if (ev->event != NULL) n += field_len(5, ev->event_len);
  if (ev->id != NULL) n += field_len(2, ev->id_len);
  if (ev->retry >= 0) n += field_len(5, *retry_len);
  if (ev->data != NULL) n += lines_len(ev->data, ev->data_len, 4);
  *len = n;
  return 0;
}

/* Writes the event measure() accepted at p, which has room for it. */
static void put_event(char *p, const sse_event_t *ev, const char *retry, size_t retry_len) {
  if (ev->event != NULL) p = put_field(p, "event", 5, ev->event, ev->event_len);
  if (ev->id != NULL) p = put_field(p, "id", 2, ev->id, ev->id_len);
  if (ev->retry >= 0) p = put_field(p, "retry", 5, retry, retry_len);
  if (ev->data != NULL) p = put_lines(p, "data", 4, ev->data, ev->data_len);
  *p = '\n';
}

int sse_encode(const sse_event_t *ev, frame_t **out, enum sse_field *bad) {
  enum sse_field dummy;
  char retry[24];
  size_t len, retry_len;
  *out = NULL;
  int rc = measure(ev, &len, retry, &retry_len, bad ? bad : &dummy);
  if (rc != 0) return rc;
  frame_t *f = frame_new(len);
  if (f == NULL) return -ENOMEM;
  put_event(f->data, ev, retry, retry_len);
  *out = f;
  return 0;
}

int sse_encode_append(const sse_event_t *ev, buf_t *out, enum sse_field *bad) {
  enum sse_field dummy;
  char retry[24];
  size_t len, retry_len;
  int rc = measure(ev, &len, retry, &retry_len, bad ? bad : &dummy);
  if (rc != 0) return rc;
  if (buf_reserve(out, len) != 0) return -ENOMEM;
  put_event(out->p + out->len, ev, retry, retry_len);
  out->len += len;
  return 0;
}

frame_t *sse_encode_comment(const char *text, size_t n) {
  if (text == NULL || n == 0) {
    text = ""; /* NULL + 0 is undefined, even unused */
    n = 0;
  }
  if (n > (SIZE_MAX - 64) / 8) return NULL;
  /* An empty line iterates once, so empty text falls out as ":\n\n". */
  frame_t *f = frame_new(lines_len(text, n, 0) + 1);
  if (f == NULL) return NULL;
  char *p = put_lines(f->data, "", 0, text, n);
  *p = '\n';
  return f;
}

frame_t *sse_encode_with_id(const char *ev, size_t len, size_t at, const char *id, size_t idlen) {
  if (at > len) return NULL;
  frame_t *f = frame_new(len + idlen + 5);
  if (f == NULL) return NULL;
  char *p = f->data;
  memcpy(p, ev, at);
  p += at;
  memcpy(p, "id: ", 4);
  memcpy(p + 4, id, idlen);
  p[4 + idlen] = '\n';
  p += idlen + 5;
  memcpy(p, ev + at, len - at);
  return f;
}
