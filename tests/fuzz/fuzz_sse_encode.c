/*
 * fuzz_sse_encode.c - libFuzzer target for the SSE frame encoder.
 *
 * Input layout (short inputs are fine; missing bytes read as absent):
 *   byte 0      flags: 1 data, 2 event, 4 id, 8 retry
 *   byte 1      event length   (when flag 2)
 *   byte 2      id length      (when flag 4)
 *   8 bytes     retry, little-endian signed; negative means none (flag 8)
 *   event bytes, id bytes, then the rest is the data (flag 1)
 *
 * Checks, for sse_encode():
 *   - it refuses exactly what sse_encode.h says it refuses (an empty event,
 *     CR/LF/NUL in event or id), naming the right field, with *out NULL;
 *   - otherwise the frame is byte for byte what a reference encoder written
 *     from the grammar in sse_encode.h produces;
 *   - and it reads back through the project's WHATWG parser as exactly the
 *     event that was encoded (type, data with its line breaks as LF, id,
 *     retry), or as no event but the same id and retry when there is no data;
 * and for sse_encode_comment() on the same data: the reference bytes, and
 * one comment callback per line with the line's text, no event.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "frame.h"
#include "fuzz_util.h"
#include "sse_encode.h"
#include "sse_parse.h"

/* ------------------------------------------------- reference encoder */

/* Appends "<name>: <line>\n" for every line of text (CR, LF, CRLF), or
 * "<name>:\n" for an empty line. */
static void ref_lines(buf_t *o, const char *name, const char *t, size_t n) {
  size_t i = 0;
  for (;;) {
    size_t e = i;
    while (e < n && t[e] != '\r' && t[e] != '\n') e++;
    buf_puts(o, name);
    buf_puts(o, ":");
    if (e > i) {
      buf_puts(o, " ");
      buf_append(o, t + i, e - i);
    }
    buf_puts(o, "\n");
    if (e == n) break;
    i = e + 1;
    if (t[e] == '\r' && i < n && t[i] == '\n') i++;
  }
}

/* The data's lines joined with LF: what a reader sees as the data. */
static void normalized(buf_t *o, const char *t, size_t n) {
  for (size_t i = 0; i < n; i++) {
    if (t[i] == '\r') {
      buf_append(o, "\n", 1);
      if (i + 1 < n && t[i + 1] == '\n') i++;
    } else {
      buf_append(o, &t[i], 1);
    }
  }
}

static int has_break_or_nul(const char *s, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (s[i] == '\r' || s[i] == '\n' || s[i] == '\0') return 1;
  return 0;
}

/* ------------------------------------------------------ reading back */

typedef struct got {
  int events, comments;
  buf_t type, data, id, text;
  int has_id;
  long long retry;
} got_t;

static void got_clear(got_t *g) {
  g->events = g->comments = 0;
  buf_clear(&g->type);
  buf_clear(&g->data);
  buf_clear(&g->id);
  buf_clear(&g->text);
  g->has_id = 0;
  g->retry = -1;
}

static int got_cb(void *ctx, int kind, const sse_parsed_t *ev) {
  got_t *g = ctx;
  if (kind == SSE_PARSED_COMMENT) {
    if (g->comments++) buf_append(&g->text, "\n", 1);
    buf_append(&g->text, ev->data, ev->data_len);
    return 0;
  }
  g->events++;
  buf_append(&g->type, ev->event, ev->event_len);
  buf_append(&g->data, ev->data, ev->data_len);
  g->has_id = ev->has_id;
  if (ev->has_id) buf_append(&g->id, ev->id, ev->id_len);
  g->retry = ev->retry;
  return 0;
}

static void same_bytes(const char *what, const char *a, size_t an, const char *b, size_t bn) {
  if (an == bn && (an == 0 || memcmp(a, b, an) == 0)) return;
  buf_t o = BUF_INIT;
  fuzz_put_escaped(&o, a, an > 300 ? 300 : an);
  buf_puts(&o, "\n  want: ");
  fuzz_put_escaped(&o, b, bn > 300 ? 300 : bn);
  buf_append(&o, "", 1);
  FUZZ_FAIL("%s differ (%zu vs %zu bytes)\n  got:  %s", what, an, bn, o.p);
}

/* -------------------------------------------------------------- entry */

int LLVMFuzzerTestOneInput(const uint8_t *in, size_t size) {
  if (size < 1) return 0;
  unsigned flags = in[0];
  size_t at = 1;
  size_t elen = 0, ilen = 0;
  if (flags & 2) elen = at < size ? in[at++] : 0;
  if (flags & 4) ilen = at < size ? in[at++] : 0;
  long long retry = -1;
  if (flags & 8) {
    uint64_t r = 0;
    for (int i = 0; i < 8; i++) r |= (uint64_t)(at < size ? in[at++] : 0) << (8 * i);
    retry = (long long)r;
  }
  if (elen > size - at) elen = size - at;
  const char *event = (flags & 2) ? (const char *)in + at : NULL;
  at += elen;
  if (ilen > size - at) ilen = size - at;
  const char *id = (flags & 4) ? (const char *)in + at : NULL;
  at += ilen;
  /* Own copies, sized exactly, so an over-read of any field is caught. */
  size_t dlen = size - at;
  char *data = (flags & 1) ? malloc(dlen ? dlen : 1) : NULL;
  if (data && dlen) memcpy(data, in + at, dlen);
  char *ev_copy = event ? malloc(elen ? elen : 1) : NULL;
  if (ev_copy && elen) memcpy(ev_copy, event, elen);
  char *id_copy = id ? malloc(ilen ? ilen : 1) : NULL;
  if (id_copy && ilen) memcpy(id_copy, id, ilen);

  sse_event_t ev = {.data = data, .data_len = data ? dlen : 0,
                    .event = ev_copy, .event_len = ev_copy ? elen : 0,
                    .id = id_copy, .id_len = id_copy ? ilen : 0,
                    .retry = retry};
  frame_t *f = (frame_t *)&ev; /* must be overwritten */
  enum sse_field bad = (enum sse_field)99;
  int rc = sse_encode(&ev, &f, &bad);

  enum sse_field want_bad = SSE_FIELD_NONE;
  if (!data && !ev_copy && !id_copy && retry < 0) want_bad = SSE_FIELD_EMPTY;
  else if (ev_copy && has_break_or_nul(ev_copy, elen)) want_bad = SSE_FIELD_EVENT;
  else if (id_copy && has_break_or_nul(id_copy, ilen)) want_bad = SSE_FIELD_ID;
  FUZZ_ASSERT(sse_field_ok(ev_copy ? ev_copy : "", elen) == !(ev_copy && has_break_or_nul(ev_copy, elen)),
              "sse_field_ok disagrees on the event");

  static buf_t want, norm;
  static got_t got;
  if (want_bad != SSE_FIELD_NONE) {
    FUZZ_ASSERT(rc == -EINVAL, "rc %d, want -EINVAL", rc);
    FUZZ_ASSERT(bad == want_bad, "bad field %d, want %d", (int)bad, (int)want_bad);
    FUZZ_ASSERT(f == NULL, "a refused event left *out set");
  } else {
    FUZZ_ASSERT(rc == 0, "rc %d for a valid event", rc);
    FUZZ_ASSERT(bad == SSE_FIELD_NONE, "bad field %d on success", (int)bad);
    FUZZ_ASSERT(f != NULL, "no frame");
    FUZZ_ASSERT(atomic_load(&f->refs) == 1, "a new frame holds %u references",
                atomic_load(&f->refs));

    buf_clear(&want);
    if (ev_copy) {
      buf_puts(&want, elen ? "event: " : "event:");
      buf_append(&want, ev_copy, elen);
      buf_puts(&want, "\n");
    }
    if (id_copy) {
      buf_puts(&want, ilen ? "id: " : "id:");
      buf_append(&want, id_copy, ilen);
      buf_puts(&want, "\n");
    }
    if (retry >= 0) buf_printf(&want, "retry: %lld\n", retry);
    if (data) ref_lines(&want, "data", data, dlen);
    buf_puts(&want, "\n");
    same_bytes("encoded frame", f->data, f->len, want.p, want.len);

    /* Read it back as a client would. */
    sse_parser_t p;
    sse_parser_init(&p, 0);
    got_clear(&got);
    int prc = sse_parser_feed(&p, f->data, f->len, got_cb, &got);
    FUZZ_ASSERT(prc == 0, "the parser refused an encoded frame: %d", prc);
    FUZZ_ASSERT(got.comments == 0, "an event frame read back with %d comments", got.comments);
    if (data) {
      FUZZ_ASSERT(got.events == 1, "%d events read back, want 1", got.events);
      buf_clear(&norm);
      normalized(&norm, data, dlen);
      same_bytes("data read back", got.data.p, got.data.len, norm.p, norm.len);
      same_bytes("event type read back", got.type.p, got.type.len, ev_copy ? ev_copy : "",
                 ev_copy ? elen : 0);
      FUZZ_ASSERT(got.has_id == (id_copy != NULL), "has_id %d", got.has_id);
      if (id_copy) same_bytes("id read back", got.id.p, got.id.len, id_copy, ilen);
      FUZZ_ASSERT(got.retry == (retry >= 0 ? retry : -1), "retry %lld read back, want %lld",
                  got.retry, retry);
    } else {
      FUZZ_ASSERT(got.events == 0, "%d events read back from a frame without data", got.events);
    }
    FUZZ_ASSERT(p.has_id == (id_copy != NULL), "parser has_id %d", p.has_id);
    if (id_copy) same_bytes("last event id", p.id.p, p.id.len, id_copy, ilen);
    FUZZ_ASSERT(p.reconnect == (retry >= 0 ? retry : -1), "reconnect %lld, want %lld",
                p.reconnect, retry);
    sse_parser_free(&p);
    frame_unref(f);
  }

  /* The same bytes as a comment. */
  const char *text = data ? data : (const char *)in + at;
  size_t tlen = dlen;
  frame_t *c = sse_encode_comment(flags & 16 ? NULL : text, flags & 16 ? 0 : tlen);
  FUZZ_ASSERT(c != NULL, "no comment frame");
  buf_clear(&want);
  if (flags & 16) ref_lines(&want, "", "", 0);
  else ref_lines(&want, "", text, tlen);
  buf_puts(&want, "\n");
  same_bytes("comment frame", c->data, c->len, want.p, want.len);
  {
    sse_parser_t p;
    sse_parser_init(&p, 0);
    got_clear(&got);
    FUZZ_ASSERT(sse_parser_feed(&p, c->data, c->len, got_cb, &got) == 0, "comment refused");
    FUZZ_ASSERT(got.events == 0, "a comment frame dispatched %d events", got.events);
    buf_clear(&norm);
    if (!(flags & 16)) normalized(&norm, text, tlen);
    same_bytes("comment text read back", got.text.p, got.text.len, norm.p ? norm.p : "", norm.len);
    sse_parser_free(&p);
  }
  frame_unref(c);

  free(data);
  free(ev_copy);
  free(id_copy);
  return 0;
}
