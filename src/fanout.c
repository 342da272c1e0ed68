/* fanout.c - see fanout.h. */
#include "fanout.h"

#include <errno.h>
#include <stdlib.h>

#include "conn.h"
#include "log.h"
#include "request.h"
#include "rhub.h"
#include "worker.h"

int fanout_fresh(req_t *r, hub_channel_t **chs, int n, hub_channel_t **fresh) {
  static _Thread_local uint64_t marks;
  worker_t *w = r->w;
  /* Only channels not followed yet, each once: replaying one already
   * followed would repeat what it delivered live.  A fresh mark per call
   * tags the channels seen, in time linear in both lists. */
  uint64_t mark = ++marks;
  for (list_node_t *p = r->subs.next; p != &r->subs; p = p->next)
    list_entry(p, sub_t, rnode)->ch->local[w->idx].mark = mark;
  int k = 0;
  for (int i = 0; i < n; i++) {
    hub_local_t *loc = &chs[i]->local[w->idx];
    if (loc->mark == mark) continue;
    loc->mark = mark;
    fresh[k++] = chs[i];
  }
  return k;
}

sub_t *fanout_add(req_t *r, hub_channel_t *ch, uint64_t min_id) {
  worker_t *w = r->w;
  sub_t *s = malloc(sizeof(*s));
  if (s == NULL) return NULL;
  s->r = r;
  /* The subscription keeps its channel alive: its own reference, given
   * back in fanout_remove. */
  hub_channel_retain(w->srv->hub, ch);
  s->ch = ch;
  s->min_id = min_id;
  s->pending = NULL;
  hub_local_t *loc = &ch->local[w->idx];
  list_push_back(&loc->subs, &s->node);
  loc->count++;
  list_push_back(&r->subs, &s->rnode);
  STAT_ADD(w, subscribers, 1);
  return s;
}

int fanout_subscribe(req_t *r, hub_channel_t **chs, int n, int has_since, uint64_t since,
                     int *gap) {
  worker_t *w = r->w;
  *gap = 0;
  hub_channel_t **fresh = malloc((size_t)(n > 0 ? n : 1) * sizeof(*fresh));
  if (fresh == NULL) return -ENOMEM;
  int k = fanout_fresh(r, chs, n, fresh);
  hub_msg_t *items = NULL;
  uint64_t watermark;
  /* Under the hub lock this reads the history and the current id together:
   * events after the watermark reach this worker's inbox, which this thread
   * drains only after the subscriptions below exist. */
  int got = hub_collect(w->srv->hub, fresh, has_since ? k : 0, since, has_since, 0, &items,
                        &watermark, gap);
  if (got < 0) {
    free(fresh);
    return got;
  }
  if (!has_since) *gap = 0;
  for (int i = 0; i < k; i++) {
    /* Older events still in the inbox were replayed. */
    if (fanout_add(r, fresh[i], watermark) == NULL) {
      for (int j = 0; j < got; j++) frame_unref(items[j].frame);
      free(items);
      free(fresh);
      return -ENOMEM;
    }
  }
  for (int j = 0; j < got; j++) {
    req_stream_write(r, items[j].frame);
    frame_unref(items[j].frame);
  }
  free(items);
  free(fresh);
  return got;
}

void fanout_remove(sub_t *s) {
  worker_t *w = s->r->w;
  list_remove(&s->rnode);
  list_remove(&s->node);
  s->ch->local[w->idx].count--;
  STAT_ADD(w, subscribers, -1);
  /* Redis follows the channel for this worker while it has subscribers. */
  if (w->rhub != NULL) rhub_sub_removed(w->rhub, s);
  /* Off this worker's list first: the release may free the channel. */
  hub_channel_release(w->srv->hub, s->ch);
  free(s);
}

void fanout_unsubscribe_all(req_t *r) {
  while (!list_empty(&r->subs)) fanout_remove(list_entry(r->subs.next, sub_t, rnode));
}

int fanout_subscribed(const req_t *r) { return !list_empty(&r->subs); }

/* Drops a subscriber that cannot keep up: it is closed before the loop
 * sleeps, never inside a delivery loop. */
static void drop_slow(worker_t *w, req_t *r, size_t queued) {
  r->slow = 1;
  STAT_ADD(w, slow_drops, 1);
  char addr[64] = "?";
  req_remote_addr(r, addr, sizeof(addr));
  log_warn("slow subscriber %s dropped: %zu bytes queued (max_queue %zu)", addr, queued,
           w->app.max_queue);
  if (r->conn != NULL) conn_kill(r->conn);
}

size_t fanout_deliver(worker_t *w, hub_channel_t *ch, uint64_t id, frame_t *f) {
  size_t queued_frames = 0;
  size_t max_queue = w->app.max_queue;
  hub_local_t *loc = &ch->local[w->idx];
  for (list_node_t *p = loc->subs.next, *next; p != &loc->subs; p = next) {
    next = p->next;
    sub_t *s = list_entry(p, sub_t, node);
    req_t *r = s->r;
    if (s->pending != NULL) {
      rhub_hold(s->pending, ch, id, f); /* written after its replay */
      continue;
    }
    if (id <= s->min_id || r->slow) continue;
    /* An empty queue takes any frame: an event larger than max_queue
     * must not cut off every subscriber. */
    size_t queued = req_queued(r);
    if (queued > 0 && queued + f->len > max_queue) {
      drop_slow(w, r, queued);
      continue;
    }
    if (req_stream_write(r, f) == 0) {
      STAT_ADD(w, delivered, 1);
      queued_frames++;
    }
  }
  return queued_frames;
}

size_t fanout_drain(worker_t *w) {
  size_t queued_frames = 0;
  hub_msg_t *items;
  size_t n = hub_inbox_take(&w->inbox, &items);
  for (size_t i = 0; i < n; i++) queued_frames += fanout_deliver(w, items[i].ch, items[i].id, items[i].frame);
  /* Each message kept its channel alive until here, even if its last
   * subscriber on this worker left during the loop. */
  hub_msgs_release(w->srv->hub, items, n);
  return queued_frames;
}
