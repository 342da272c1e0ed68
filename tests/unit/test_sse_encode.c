/* test_sse_encode.c - byte-exact checks of the SSE frame encoder. */
#include <errno.h>
#include <stdatomic.h>
#include <string.h>

#include "sse_encode.h"
#include "unit.h"

/* An event with only the given data (n bytes) and no other field. */
static sse_event_t data_event(const char *data, size_t n) {
  sse_event_t ev = {.data = data, .data_len = n, .retry = -1};
  return ev;
}

/* Encodes ev, checks that it succeeds and that the frame holds want; then
 * that appending it twice to a buffer after a prefix gives the prefix and
 * want twice. */
#define CHECK_ENCODES(ev, want)                                         \
  do {                                                                  \
    frame_t *f_ = NULL;                                                 \
    enum sse_field b_ = SSE_FIELD_EMPTY;                                \
    CHECK(sse_encode(&(ev), &f_, &b_) == 0);                            \
    CHECK(b_ == SSE_FIELD_NONE);                                        \
    if (f_ != NULL) CHECK_BYTES(f_->data, f_->len, want);               \
    frame_unref(f_);                                                    \
    buf_t a_ = BUF_INIT;                                                \
    CHECK(buf_puts(&a_, "x") == 0);                                     \
    CHECK(sse_encode_append(&(ev), &a_, &b_) == 0);                     \
    CHECK(sse_encode_append(&(ev), &a_, NULL) == 0);                    \
    size_t n_ = strlen(want);                                           \
    CHECK(a_.len == 1 + 2 * n_);                                        \
    if (a_.len == 1 + 2 * n_) {                                         \
      CHECK_BYTES(a_.p + 1, n_, want);                                  \
      CHECK_BYTES(a_.p + 1 + n_, n_, want);                             \
    }                                                                   \
    buf_free(&a_);                                                      \
  } while (0)

/* Encodes the C string s as the only data of an event. */
#define CHECK_DATA(s, want)                          \
  do {                                               \
    sse_event_t e_ = data_event((s), strlen(s));     \
    CHECK_ENCODES(e_, want);                         \
  } while (0)

/* Encodes ev, checks that it is refused with -EINVAL naming field, and
 * that appending it is refused alike and leaves the buffer as it was. */
#define CHECK_REFUSED(ev, field)                           \
  do {                                                     \
    frame_t *f_ = (frame_t *)&f_;                          \
    enum sse_field b_ = SSE_FIELD_NONE;                    \
    CHECK(sse_encode(&(ev), &f_, &b_) == -EINVAL);         \
    CHECK(b_ == (field));                                  \
    CHECK(f_ == NULL);                                     \
    buf_t a_ = BUF_INIT;                                   \
    CHECK(buf_puts(&a_, "x") == 0);                        \
    b_ = SSE_FIELD_NONE;                                   \
    CHECK(sse_encode_append(&(ev), &a_, &b_) == -EINVAL);  \
    CHECK(b_ == (field));                                  \
    CHECK(a_.len == 1);                                    \
    buf_free(&a_);                                         \
  } while (0)

/* Encodes the n bytes at s as a comment, checks the frame holds want. */
#define CHECK_COMMENT(s, n, want)                        \
  do {                                                   \
    frame_t *f_ = sse_encode_comment((s), (n));          \
    CHECK(f_ != NULL);                                   \
    if (f_ != NULL) CHECK_BYTES(f_->data, f_->len, want); \
    frame_unref(f_);                                     \
  } while (0)

static void test_data_lines(void) {
  CHECK_DATA("hello", "data: hello\n\n");
  CHECK_DATA("a\nb", "data: a\ndata: b\n\n");
  CHECK_DATA("a\rb", "data: a\ndata: b\n\n");
  CHECK_DATA("a\r\nb", "data: a\ndata: b\n\n");
  CHECK_DATA("a\n\rb", "data: a\ndata:\ndata: b\n\n");
  CHECK_DATA("a\r\rb", "data: a\ndata:\ndata: b\n\n");
  CHECK_DATA("a\n\nb", "data: a\ndata:\ndata: b\n\n");
  CHECK_DATA("a\r\n\r\nb", "data: a\ndata:\ndata: b\n\n");
  CHECK_DATA("1\n2\r3\r\n4", "data: 1\ndata: 2\ndata: 3\ndata: 4\n\n");
  CHECK_DATA("a\r\r\nb", "data: a\ndata:\ndata: b\n\n");
}

static void test_data_edges(void) {
  /* A trailing break leaves an empty last line, which is what makes the
   * reader's data end in a newline again. */
  CHECK_DATA("a\n", "data: a\ndata:\n\n");
  CHECK_DATA("a\r\n", "data: a\ndata:\n\n");
  CHECK_DATA("a\r", "data: a\ndata:\n\n");
  CHECK_DATA("", "data:\n\n");
  CHECK_DATA("\n", "data:\ndata:\n\n");
  CHECK_DATA("\r\n", "data:\ndata:\n\n");
  CHECK_DATA("\r", "data:\ndata:\n\n");
  CHECK_DATA("\n\n", "data:\ndata:\ndata:\n\n");
  CHECK_DATA("\nx", "data:\ndata: x\n\n");
  /* A leading space survives because the encoder always writes its own. */
  CHECK_DATA(" x", "data:  x\n\n");
  CHECK_DATA(" ", "data:  \n\n");
  CHECK_DATA(":not a comment", "data: :not a comment\n\n");
  CHECK_DATA("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x9a\xb0\n\xe6\xb0\xb4",
             "data: caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x9a\xb0\ndata: \xe6\xb0\xb4\n\n");

  /* Data is bytes, not a C string: a NUL inside it passes through. */
  sse_event_t ev = data_event("a\0b", 3);
  frame_t *f = NULL;
  CHECK(sse_encode(&ev, &f, NULL) == 0);
  CHECK(f != NULL && f->len == 11 && memcmp(f->data, "data: a\0b\n\n", 11) == 0);
  frame_unref(f);

  /* Only data_len bytes are read. */
  ev = data_event("abc\ndef", 3);
  CHECK_ENCODES(ev, "data: abc\n\n");
}

static void test_fields(void) {
  sse_event_t ev = {.data = "d", .data_len = 1, .event = "tick", .event_len = 4,
                    .id = "42", .id_len = 2, .retry = 2000};
  CHECK_ENCODES(ev, "event: tick\nid: 42\nretry: 2000\ndata: d\n\n");

  sse_event_t only_event = {.event = "ping", .event_len = 4, .retry = -1};
  CHECK_ENCODES(only_event, "event: ping\n\n");

  sse_event_t only_id = {.id = "7", .id_len = 1, .retry = -1};
  CHECK_ENCODES(only_id, "id: 7\n\n");

  sse_event_t empty_id = {.id = "", .id_len = 0, .retry = -1};
  CHECK_ENCODES(empty_id, "id:\n\n");

  sse_event_t empty_id_data = {.data = "x", .data_len = 1, .id = "", .id_len = 0, .retry = -1};
  CHECK_ENCODES(empty_id_data, "id:\ndata: x\n\n");

  sse_event_t retry0 = {.retry = 0};
  CHECK_ENCODES(retry0, "retry: 0\n\n");

  sse_event_t retry_big = {.data = "", .retry = 9223372036854775807LL};
  CHECK_ENCODES(retry_big, "retry: 9223372036854775807\ndata:\n\n");

  sse_event_t id_data = {.data = "a\nb", .data_len = 3, .id = "x y", .id_len = 3, .retry = -1};
  CHECK_ENCODES(id_data, "id: x y\ndata: a\ndata: b\n\n");

  sse_event_t unicode_names = {.data = "v", .data_len = 1, .event = "\xc3\xa9v", .event_len = 3,
                               .id = "\xe2\x82\xac", .id_len = 3, .retry = -1};
  CHECK_ENCODES(unicode_names, "event: \xc3\xa9v\nid: \xe2\x82\xac\ndata: v\n\n");
}

static void test_refused(void) {
  sse_event_t ev = {.data = "d", .data_len = 1, .retry = -1};

  ev.event = "a\rb", ev.event_len = 3;
  CHECK_REFUSED(ev, SSE_FIELD_EVENT);
  ev.event = "a\nb", ev.event_len = 3;
  CHECK_REFUSED(ev, SSE_FIELD_EVENT);
  ev.event = "a\0b", ev.event_len = 3;
  CHECK_REFUSED(ev, SSE_FIELD_EVENT);
  ev.event = "ab\n", ev.event_len = 3;
  CHECK_REFUSED(ev, SSE_FIELD_EVENT);
  ev.event = "ok", ev.event_len = 2;

  ev.id = "1\r", ev.id_len = 2;
  CHECK_REFUSED(ev, SSE_FIELD_ID);
  ev.id = "\n1", ev.id_len = 2;
  CHECK_REFUSED(ev, SSE_FIELD_ID);
  ev.id = "1\0", ev.id_len = 2;
  CHECK_REFUSED(ev, SSE_FIELD_ID);

  /* Both bad: the event is named, and *bad is reliable either way. */
  ev.event = "\n", ev.event_len = 1;
  CHECK_REFUSED(ev, SSE_FIELD_EVENT);

  /* A break beyond the stated length is not part of the field. */
  sse_event_t within = {.event = "ok\n", .event_len = 2, .retry = -1};
  CHECK_ENCODES(within, "event: ok\n\n");

  sse_event_t empty = {.retry = -1};
  CHECK_REFUSED(empty, SSE_FIELD_EMPTY);
  sse_event_t empty2 = {.data_len = 5, .event_len = 3, .id_len = 2, .retry = -7};
  CHECK_REFUSED(empty2, SSE_FIELD_EMPTY);

  CHECK(sse_field_ok("abc", 3) == 1);
  CHECK(sse_field_ok("", 0) == 1);
  CHECK(sse_field_ok("a\rc", 3) == 0);
  CHECK(sse_field_ok("a\nc", 3) == 0);
  CHECK(sse_field_ok("a\0c", 3) == 0);
  CHECK(sse_field_ok("ab\n", 2) == 1);
}

static void test_comments(void) {
  CHECK_COMMENT("hi", 2, ": hi\n\n");
  CHECK_COMMENT("a\nb\r\nc\rd", 8, ": a\n: b\n: c\n: d\n\n");
  CHECK_COMMENT("a\n", 2, ": a\n:\n\n");
  CHECK_COMMENT("\n", 1, ":\n:\n\n");
  CHECK_COMMENT(" x", 2, ":  x\n\n");
  CHECK_COMMENT("", 0, ":\n\n");
  CHECK_COMMENT(NULL, 0, ":\n\n");
  CHECK_COMMENT(NULL, 5, ":\n\n");
  CHECK_COMMENT("ignored", 0, ":\n\n");
}

static void test_frames(void) {
  sse_event_t ev = {.data = "x\ny", .data_len = 3, .event = "e", .event_len = 1, .retry = 10};
  frame_t *f = NULL;
  CHECK(sse_encode(&ev, &f, NULL) == 0);
  CHECK(f != NULL);
  if (f == NULL) return;
  CHECK(atomic_load(&f->refs) == 1);
  CHECK(f->len == strlen("event: e\nretry: 10\ndata: x\ndata: y\n\n"));
  CHECK_BYTES(f->data, f->len, "event: e\nretry: 10\ndata: x\ndata: y\n\n");
  frame_ref(f);
  CHECK(atomic_load(&f->refs) == 2);
  frame_unref(f);
  frame_unref(f);

  frame_t *c = sse_encode_comment("hb", 2);
  CHECK(c != NULL && atomic_load(&c->refs) == 1 && c->len == 6);
  frame_unref(c);

  /* Long data with every kind of break: compare with a straightforward
   * reference that normalises breaks to LF first. */
  static char big[70000];
  unsigned seed = 12345;
  for (size_t i = 0; i < sizeof(big); i++) {
    seed = seed * 1103515245u + 12345u;
    big[i] = "abcdefgh \r\n\xc3\xa9"[(seed >> 16) % 13];
  }
  static char norm[sizeof(big)], want[8 * sizeof(big) + 8];
  size_t nl = 0;
  for (size_t i = 0; i < sizeof(big); i++) {
    if (big[i] == '\r' && i + 1 < sizeof(big) && big[i + 1] == '\n') continue;
    norm[nl++] = big[i] == '\r' ? '\n' : big[i];
  }
  size_t wl = 0, start = 0;
  for (size_t i = 0; i <= nl; i++) {
    if (i < nl && norm[i] != '\n') continue;
    memcpy(want + wl, "data:", 5), wl += 5;
    if (i > start) want[wl++] = ' ', memcpy(want + wl, norm + start, i - start), wl += i - start;
    want[wl++] = '\n';
    start = i + 1;
  }
  want[wl++] = '\n';
  sse_event_t large = data_event(big, sizeof(big));
  CHECK(sse_encode(&large, &f, NULL) == 0);
  if (f != NULL) {
    CHECK(f->len == wl);
    CHECK(f->len == wl && memcmp(f->data, want, wl) == 0);
    frame_unref(f);
  }
}

int main(void) {
  test_data_lines();
  test_data_edges();
  test_fields();
  test_refused();
  test_comments();
  test_frames();
  UNIT_DONE();
}
