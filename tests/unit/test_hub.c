/* Unit tests for the hub: ids, history rings, replay order and gaps,
 * inbox hand-off.  No server: a bare loop provides the async handles. */
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
    drop(items, (int)n);
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
