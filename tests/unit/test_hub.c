/* Unit tests for the hub: ids, history rings, replay order and gaps,
 * inbox hand-off, channel lifetimes (references, freeing, the gap
 * watermark across re-creation).  No server: a bare loop provides the
 * async handles. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "hub.h"
#include "sse_encode.h"
#include "unit.h"

static uv_loop_t loop;
static uv_async_t wake[2];
static hub_inbox_t inbox[2];

static void noop(uv_async_t *h) { (void)h; }

/* Publishes data on ch with event "m" and returns the id. */
static uint64_t publish(hub_t *h, hub_channel_t *ch, const char *data) {
  sse_event_t ev = {0};
  ev.retry = -1;
  ev.event = "m";
  ev.event_len = 1;
  ev.data = data;
  ev.data_len = strlen(data);
  frame_t *body;
  enum sse_field bad;
  CHECK(sse_encode(&ev, &body, &bad) == 0);
  uint64_t id = 0;
  CHECK(hub_publish(h, ch, body, strlen("event: m\n"), &id) == 0);
  frame_unref(body);
  return id;
}

static void drop(hub_msg_t *items, int n) {
  for (int i = 0; i < n; i++) frame_unref(items[i].frame);
  free(items);
}

static void test_ids_and_frames(void) {
  hub_t *h = hub_new(2);
  hub_attach(h, 0, &inbox[0]);
  hub_attach(h, 1, &inbox[1]);
  hub_channel_t *a = hub_channel(h, "a", 1);
  CHECK(a != NULL && a == hub_channel(h, "a", 1)); /* found, not made again */
  uint64_t id1 = publish(h, a, "one");
  uint64_t id2 = publish(h, a, "two\nlines");
  CHECK(id2 == id1 + 1);

  /* Both workers got both events, in order, sharing one frame. */
  for (int w = 0; w < 2; w++) {
    hub_msg_t *items;
    size_t n = hub_inbox_take(&inbox[w], &items);
    CHECK(n == 2);
    CHECK(items[0].id == id1 && items[1].id == id2 && items[0].ch == a);
    char want[64];
    snprintf(want, sizeof(want), "event: m\nid: %llu\ndata: two\ndata: lines\n\n",
             (unsigned long long)id2);
    CHECK_BYTES(items[1].frame->data, items[1].frame->len, want);
    hub_msgs_release(h, items, n);
  }
  hub_free(h);
}

static void test_replay_order_and_gap(void) {
  hub_t *h = hub_new(1);
  hub_configure(h, 3, 0);
  hub_configure(h, 100, 0); /* the first configuration wins */
  hub_channel_t *a = hub_channel(h, "a", 1), *b = hub_channel(h, "b", 1);
  uint64_t ids[6];
  ids[0] = publish(h, a, "a0");
  ids[1] = publish(h, b, "b1");
  ids[2] = publish(h, a, "a2");
  ids[3] = publish(h, b, "b3");
  ids[4] = publish(h, a, "a4");
  ids[5] = publish(h, a, "a5"); /* a keeps 3: a0 is gone */

  hub_channel_t *both[2] = {a, b};
  hub_msg_t *items;
  uint64_t wm;
  int gap;
  int n = hub_collect(h, both, 2, ids[0], 1, 0, &items, &wm, &gap);
  CHECK(n == 5);
  CHECK(wm == ids[5]);
  CHECK(gap == 0); /* a0 itself was seen: nothing after it is missing */
  for (int i = 0; i < n; i++) CHECK(items[i].id == ids[i + 1]); /* merged in id order */
  drop(items, n);

  n = hub_collect(h, both, 2, ids[0] - 1, 1, 0, &items, &wm, &gap);
  CHECK(gap == 1); /* a0 came after since and is gone */
  CHECK(n == 5);
  drop(items, n);

  /* limit keeps the oldest; no since gives everything retained. */
  n = hub_collect(h, &a, 1, 0, 0, 2, &items, &wm, &gap);
  CHECK(n == 2 && items[0].id == ids[2] && items[1].id == ids[4]);
  drop(items, n);

  /* An id from the future (or the newest) replays nothing. */
  n = hub_collect(h, both, 2, ids[5], 1, 0, &items, &wm, &gap);
  CHECK(n == 0 && gap == 0);
  drop(items, n);

  hub_stats_t st;
  hub_get_stats(h, &st);
  CHECK(st.published == 6 && st.channels == 2 && st.retained == 5);
  hub_free(h);
}

static void test_history_off_and_ttl(void) {
  hub_t *h = hub_new(1);
  hub_configure(h, 0, 0);
  hub_channel_t *a = hub_channel(h, "a", 1);
  uint64_t id = publish(h, a, "x");
  hub_msg_t *items;
  uint64_t wm;
  int gap;
  int n = hub_collect(h, &a, 1, id - 1, 1, 0, &items, &wm, &gap);
  CHECK(n == 0 && gap == 1); /* nothing is kept, so the event is missed */
  drop(items, n);
  hub_free(h);

  h = hub_new(1);
  hub_configure(h, 10, 0.05);
  a = hub_channel(h, "a", 1);
  id = publish(h, a, "old");
  uv_sleep(80);
  uint64_t id2 = publish(h, a, "new"); /* expires "old" */
  n = hub_collect(h, &a, 1, id - 1, 1, 0, &items, &wm, &gap);
  CHECK(n == 1 && items[0].id == id2 && gap == 1);
  drop(items, n);
  hub_free(h);
}

static void test_restart_ids(void) {
  hub_t *h1 = hub_new(1);
  hub_channel_t *a = hub_channel(h1, "a", 1);
  uint64_t old = publish(h1, a, "x");
  hub_free(h1);
  uv_sleep(2);
  hub_t *h2 = hub_new(1);
  a = hub_channel(h2, "a", 1);
  uint64_t now = publish(h2, a, "y");
  CHECK(now > old); /* a later run numbers above an earlier one */
  hub_msg_t *items;
  uint64_t wm;
  int gap;
  int n = hub_collect(h2, &a, 1, old, 1, 0, &items, &wm, &gap);
  CHECK(n == 1 && gap == 1); /* what came after `old` in the earlier run is lost */
  drop(items, n);
  hub_free(h2);
}

/* The number of live channels, as sluice.stats() reports it. */
static uint64_t nchannels(hub_t *h) {
  hub_stats_t st;
  hub_get_stats(h, &st);
  return st.channels;
}

/* Whether a channel of that name exists (without keeping it). */
static int exists(hub_t *h, const char *name) {
  hub_channel_t *ch = hub_channel_find(h, name, strlen(name));
  if (ch != NULL) hub_channel_release(h, ch);
  return ch != NULL;
}

/* Collects ch's history after since; returns the count and sets *gap. */
static int replay(hub_t *h, hub_channel_t *ch, uint64_t since, int *gap) {
  hub_msg_t *items;
  uint64_t wm;
  int n = hub_collect(h, &ch, 1, since, 1, 0, &items, &wm, gap);
  drop(items, n);
  return n;
}

static void test_lifetime_refs(void) {
  hub_t *h = hub_new(1);
  hub_configure(h, 10, 0);
  hub_channel_t *a = hub_channel(h, "a", 1);
  CHECK(a != NULL && nchannels(h) == 1);
  CHECK(hub_channel(h, "a", 1) == a); /* a second holder, same channel */
  hub_channel_release(h, a);
  CHECK(nchannels(h) == 1);
  hub_channel_retain(h, a); /* as a subscription does */
  hub_channel_release(h, a); /* the looking-up caller is done */
  CHECK(nchannels(h) == 1 && exists(h, "a"));
  hub_channel_release(h, a); /* the last subscriber left: nothing kept */
  CHECK(nchannels(h) == 0 && !exists(h, "a"));

  /* Reading creates nothing. */
  CHECK(hub_channel_find(h, "nope", 4) == NULL && nchannels(h) == 0);

  /* Retained events keep a channel nobody holds, and it still replays. */
  hub_channel_t *b = hub_channel(h, "b", 1);
  uint64_t id = publish(h, b, "kept");
  hub_channel_release(h, b);
  CHECK(nchannels(h) == 1 && exists(h, "b"));
  b = hub_channel_find(h, "b", 1);
  int gap;
  CHECK(b != NULL && replay(h, b, id - 1, &gap) == 1 && gap == 0);
  hub_channel_release(h, b);

  /* Publishing by name: a channel with nothing to keep does not stay. */
  hub_free(h);
  h = hub_new(1);
  hub_configure(h, 0, 0);
  sse_event_t ev = {0};
  ev.retry = -1;
  ev.data = "x";
  ev.data_len = 1;
  frame_t *body;
  enum sse_field bad;
  CHECK(sse_encode(&ev, &body, &bad) == 0);
  CHECK(hub_publish_to(h, "p", 1, body, 0, &id) == 0 && id > 0);
  frame_unref(body);
  CHECK(nchannels(h) == 0);
  hub_free(h);
}

static void test_lifetime_many(void) {
  /* Thousands of channels grow the table; freeing them in a scattered
   * order shrinks it, and every survivor is still found where it is. */
  enum { N = 3000 };
  static hub_channel_t *chs[N];
  hub_t *h = hub_new(1);
  char name[32];
  for (int i = 0; i < N; i++) {
    int n = snprintf(name, sizeof(name), "room-%d", i);
    chs[i] = hub_channel(h, name, (size_t)n);
  }
  CHECK(nchannels(h) == N);
  int lost = 0;
  for (int pass = 0; pass < 3; pass++) {
    for (int i = pass; i < N; i += 3) hub_channel_release(h, chs[i]);
    for (int i = 0; i < N; i++) {
      if (i % 3 <= pass) continue;
      int n = snprintf(name, sizeof(name), "room-%d", i);
      hub_channel_t *ch = hub_channel_find(h, name, (size_t)n);
      if (ch != chs[i]) lost++;
      if (ch != NULL) hub_channel_release(h, ch);
    }
  }
  CHECK(lost == 0);
  CHECK(nchannels(h) == 0);
  /* And the emptied table takes new channels. */
  hub_channel_t *z = hub_channel(h, "z", 1);
  CHECK(z != NULL && nchannels(h) == 1);
  hub_channel_release(h, z);
  CHECK(nchannels(h) == 0);
  hub_free(h);
}

static void test_free_after_ttl(void) {
  hub_t *h = hub_new(1);
  hub_configure(h, 10, 0.05);
  hub_channel_t *a = hub_channel(h, "a", 1);
  publish(h, a, "soon gone");
  hub_channel_release(h, a);
  hub_stats_t st;
  hub_get_stats(h, &st);
  CHECK(st.channels == 1 && st.retained == 1); /* kept while its event lives */
  uv_sleep(80);
  hub_get_stats(h, &st);
  CHECK(st.channels == 0 && st.retained == 0); /* stats sweeps the expired */

  /* Making a channel sweeps too: the place where the table would grow. */
  hub_channel_t *c = hub_channel(h, "c", 1);
  publish(h, c, "x");
  hub_channel_release(h, c);
  uv_sleep(80);
  hub_channel_release(h, hub_channel(h, "d", 1));
  hub_channel_t *gone = hub_channel_find(h, "c", 1); /* (a find would free it at its release) */
  CHECK(gone == NULL);
  if (gone != NULL) hub_channel_release(h, gone);

  /* A channel whose events expired while it was held goes at the release. */
  hub_channel_t *e = hub_channel(h, "e", 1);
  publish(h, e, "x");
  uv_sleep(80);
  hub_channel_release(h, e);
  CHECK(!exists(h, "e"));

  hub_free(h);

  /* The sweep stops at the first idle channel still holding events; the
   * ones behind it go once it does.  (Sleeps only overrun: the margin is
   * for the check that f's event has not expired yet.) */
  h = hub_new(1);
  hub_configure(h, 10, 0.4);
  hub_channel_t *f = hub_channel(h, "f", 1), *g = hub_channel(h, "g", 1);
  publish(h, g, "older");
  uv_sleep(200);
  publish(h, f, "newer");
  hub_channel_release(h, f); /* f is left first, g behind it */
  hub_channel_release(h, g);
  uv_sleep(250); /* g's event has expired, f's not yet */
  CHECK(nchannels(h) == 2);
  uv_sleep(200);
  CHECK(nchannels(h) == 0);
  hub_free(h);
}

static void test_gap_after_recreation(void) {
  hub_t *h = hub_new(1);
  hub_configure(h, 2, 0.05);
  hub_channel_t *a = hub_channel(h, "room", 4);
  uint64_t id1 = publish(h, a, "1");
  uint64_t id2 = publish(h, a, "2");
  uint64_t id3 = publish(h, a, "3"); /* a keeps 2: 1 is evicted */
  hub_channel_release(h, a);
  uv_sleep(80);
  CHECK(nchannels(h) == 0); /* 2 and 3 expired: freed */

  /* Made again, the channel still knows that 1..3 are gone. */
  a = hub_channel(h, "room", 4);
  int gap;
  CHECK(replay(h, a, id1 - 1, &gap) == 0 && gap == 1);
  CHECK(replay(h, a, id2, &gap) == 0 && gap == 1);  /* 3 was missed */
  CHECK(replay(h, a, id3, &gap) == 0 && gap == 0);  /* saw everything */
  uint64_t id4 = publish(h, a, "4");
  hub_msg_t *items;
  uint64_t wm;
  int n = hub_collect(h, &a, 1, id3, 1, 0, &items, &wm, &gap);
  CHECK(n == 1 && items[0].id == id4 && gap == 0);
  drop(items, n);
  hub_channel_release(h, a);

  /* Another name (in another tombstone slot) has lost nothing. */
  hub_channel_t *o = hub_channel(h, "other", 5);
  CHECK(replay(h, o, id1 - 1, &gap) == 0 && gap == 0);
  hub_channel_release(h, o);

  /* history = 0: every event is a gap, for later incarnations too. */
  hub_free(h);
  h = hub_new(1);
  hub_configure(h, 0, 0);
  a = hub_channel(h, "live", 4);
  uint64_t id = publish(h, a, "x");
  hub_channel_release(h, a);
  CHECK(nchannels(h) == 0);
  a = hub_channel(h, "live", 4);
  CHECK(replay(h, a, id - 1, &gap) == 0 && gap == 1);
  CHECK(replay(h, a, id, &gap) == 0 && gap == 0);
  hub_channel_release(h, a);
  hub_free(h);
}

static void test_inbox_keeps_channel(void) {
  hub_t *h = hub_new(2);
  hub_configure(h, 0, 0); /* nothing retained: only references keep it */
  hub_attach(h, 0, &inbox[0]);
  hub_attach(h, 1, &inbox[1]);
  hub_channel_t *a = hub_channel(h, "a", 1);
  uint64_t id = publish(h, a, "in flight");
  hub_channel_release(h, a);
  CHECK(nchannels(h) == 1); /* both workers' messages still point at it */

  hub_msg_t *items;
  size_t n = hub_inbox_take(&inbox[0], &items);
  CHECK(n == 1 && items[0].id == id && strcmp(items[0].ch->name, "a") == 0);
  CHECK(items[0].ch->local[0].count == 0); /* what a worker reads on delivery */
  hub_msgs_release(h, items, n);
  CHECK(nchannels(h) == 1); /* worker 1 has not drained yet */

  /* A worker that stops gives its undelivered messages back. */
  hub_detach(h, 1);
  CHECK(nchannels(h) == 0);
  CHECK(hub_inbox_take(&inbox[1], &items) == 0);
  free(items);
  hub_detach(h, 0);
  hub_free(h);
}

/* Two threads play two workers: each subscribes, publishes and drains its
 * own inbox on a few shared channel names, so channels are made and freed
 * under their feet.  At the end every reference was given back. */
typedef struct {
  hub_t *h;
  int w;
  int bad;
} racer_t;

static void racer(void *arg) {
  racer_t *rc = arg;
  char name[16];
  uint64_t last = 0;
  /* No CHECK on this thread: the harness's counters are not atomic. */
  sse_event_t ev = {0};
  ev.retry = -1;
  ev.data = "r";
  ev.data_len = 1;
  frame_t *body;
  enum sse_field bad;
  if (sse_encode(&ev, &body, &bad) != 0) {
    rc->bad++;
    return;
  }
  for (int i = 0; i < 20000; i++) {
    int n = snprintf(name, sizeof(name), "c%d", (i * 7 + rc->w) % 16);
    hub_channel_t *ch = hub_channel(rc->h, name, (size_t)n);
    if (ch == NULL) {
      rc->bad++;
      continue;
    }
    hub_channel_retain(rc->h, ch); /* a subscription */
    uint64_t id = 0;
    if (hub_publish(rc->h, ch, body, 0, &id) != 0 || id <= last) rc->bad++;
    last = id;
    hub_channel_release(rc->h, ch);
    hub_msg_t *items;
    size_t k = hub_inbox_take(&inbox[rc->w], &items);
    for (size_t j = 0; j < k; j++)
      if (items[j].ch->name[0] != 'c') rc->bad++; /* still a live channel */
    hub_msgs_release(rc->h, items, k);
    hub_channel_release(rc->h, ch); /* the subscription ends */
  }
  frame_unref(body);
}

static void test_threads(void) {
  hub_t *h = hub_new(2);
  hub_configure(h, 0, 0);
  hub_attach(h, 0, &inbox[0]);
  hub_attach(h, 1, &inbox[1]);
  racer_t rc[2] = {{h, 0, 0}, {h, 1, 0}};
  uv_thread_t t[2];
  for (int i = 0; i < 2; i++) uv_thread_create(&t[i], racer, &rc[i]);
  for (int i = 0; i < 2; i++) uv_thread_join(&t[i]);
  CHECK(rc[0].bad == 0 && rc[1].bad == 0);
  hub_detach(h, 0);
  hub_detach(h, 1);
  hub_stats_t st;
  hub_get_stats(h, &st);
  CHECK(st.published == 40000 && st.channels == 0);
  hub_free(h);
}

static void test_parse_id(void) {
  uint64_t v;
  CHECK(hub_parse_id("123", 3, &v) == 1 && v == 123);
  CHECK(hub_parse_id("18446744073709551615", 20, &v) == 1 && v == UINT64_MAX);
  CHECK(hub_parse_id("18446744073709551616", 20, &v) == 0);
  CHECK(hub_parse_id("", 0, &v) == 0);
  CHECK(hub_parse_id("12a", 3, &v) == 0);
  CHECK(hub_parse_id("-1", 2, &v) == 0);
}

int main(void) {
  uv_loop_init(&loop);
  for (int i = 0; i < 2; i++) {
    uv_async_init(&loop, &wake[i], noop);
    uv_mutex_init(&inbox[i].lock);
    inbox[i].wake = &wake[i];
  }
  test_ids_and_frames();
  test_replay_order_and_gap();
  test_history_off_and_ttl();
  test_restart_ids();
  test_lifetime_refs();
  test_lifetime_many();
  test_free_after_ttl();
  test_gap_after_recreation();
  test_inbox_keeps_channel();
  test_threads();
  test_parse_id();
  for (int i = 0; i < 2; i++) {
    hub_msg_t *items;
    size_t n = hub_inbox_take(&inbox[i], &items);
    drop(items, (int)n);
    uv_close((uv_handle_t *)&wake[i], NULL);
  }
  uv_run(&loop, UV_RUN_DEFAULT);
  uv_loop_close(&loop);
  UNIT_DONE();
}
