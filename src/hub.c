/* hub.c - see hub.h. */
#include "hub.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sse_encode.h"

#define HUB_INITIAL_RING 16
#define HUB_TABLE_MIN 64
/* Slots of the tombstone table (a power of two): 32 KiB for the hub. */
#define HUB_TOMBS 4096

struct hub {
  uv_mutex_t lock;          /* guards everything below but the inboxes */
  uint64_t seq;             /* the last id handed out */
  uint64_t start_seq;       /* ids up to here belong to earlier runs */
  size_t history;           /* events kept per channel */
  uint64_t ttl_ms;          /* 0: no age limit */
  int configured;
  hub_channel_t **table;    /* open addressing (linear probing), by name */
  size_t table_cap, nchannels;
  uint64_t published;
  uint64_t retained;
  int nworkers;
  hub_inbox_t **inboxes;
  /* Channels with no reference but retained events, in the order they
   * were left: the sweep frees them once their events have expired. */
  list_node_t idle;
  /* By name hash: the newest id dropped from history by a freed channel
   * (see "Gaps across a channel's lifetimes" in hub.h). */
  uint64_t tombs[HUB_TOMBS];
};

/* Milliseconds of the monotonic clock: the time base of history_ttl. */
static uint64_t now_ms(void) { return uv_hrtime() / 1000000; }

hub_t *hub_new(int nworkers) {
  hub_t *h = calloc(1, sizeof(*h));
  if (h == NULL) return NULL;
  h->inboxes = calloc((size_t)nworkers, sizeof(*h->inboxes));
  h->table_cap = HUB_TABLE_MIN;
  h->table = calloc(h->table_cap, sizeof(*h->table));
  if (h->inboxes == NULL || h->table == NULL) {
    free(h->inboxes);
    free(h->table);
    free(h);
    return NULL;
  }
  uv_mutex_init(&h->lock);
  list_init(&h->idle);
  h->nworkers = nworkers;
  h->history = 1000;
  uv_timeval64_t tv;
  uv_gettimeofday(&tv);
  h->seq = h->start_seq = (uint64_t)tv.tv_sec * 1000000u + (uint64_t)tv.tv_usec;
  return h;
}

/* Frees ch's memory and its history's frame references; the caller has
 * already taken it out of the table (or is freeing the whole hub). */
static void channel_free(hub_channel_t *ch) {
  for (uint32_t i = 0; i < ch->count; i++) frame_unref(ch->ring[(ch->head + i) % ch->cap].frame);
  free(ch->ring);
  free(ch); /* the name and the worker slots live in the same block */
}

void hub_free(hub_t *h) {
  if (h == NULL) return;
  /* Whatever references are left (a caller that never released, or an
   * inbox nobody drained) die with the hub: the workers have stopped. */
  for (size_t i = 0; i < h->table_cap; i++)
    if (h->table[i]) channel_free(h->table[i]);
  free(h->table);
  free(h->inboxes);
  uv_mutex_destroy(&h->lock);
  free(h);
}

void hub_configure(hub_t *h, size_t history, double ttl) {
  uv_mutex_lock(&h->lock);
  if (!h->configured) {
    h->history = history;
    h->ttl_ms = ttl > 0 ? (uint64_t)(ttl * 1000) : 0;
    h->configured = 1;
  }
  uv_mutex_unlock(&h->lock);
}

void hub_attach(hub_t *h, int w, hub_inbox_t *inbox) {
  uv_mutex_lock(&h->lock);
  h->inboxes[w] = inbox;
  uv_mutex_unlock(&h->lock);
}

/* FNV-1a: channel names are short and chosen by apps, not attackers'
 * bytes alone; a table at most half full keeps probes short. */
static size_t hash_name(const char *s, size_t n) {
  uint64_t x = 1469598103934665603ull;
  for (size_t i = 0; i < n; i++) x = (x ^ (unsigned char)s[i]) * 1099511628211ull;
  return (size_t)x;
}

/* Rebuilds the table with cap slots (a power of two, above nchannels):
 * 0, or -ENOMEM with the table unchanged (lock held). */
static int resize_table(hub_t *h, size_t cap) {
  hub_channel_t **t = calloc(cap, sizeof(*t));
  if (t == NULL) return -ENOMEM;
  for (size_t i = 0; i < h->table_cap; i++) {
    hub_channel_t *ch = h->table[i];
    if (ch == NULL) continue;
    size_t j = ch->hash & (cap - 1);
    while (t[j]) j = (j + 1) & (cap - 1);
    t[j] = ch;
  }
  free(h->table);
  h->table = t;
  h->table_cap = cap;
  return 0;
}

/* The slot holding the channel named name, or the empty slot ending its
 * probe sequence, where it would go (lock held). */
static size_t table_slot(hub_t *h, const char *name, size_t len, size_t hash) {
  size_t mask = h->table_cap - 1, i = hash & mask;
  hub_channel_t *ch;
  while ((ch = h->table[i]) != NULL) {
    if (ch->hash == hash && ch->name_len == len && memcmp(ch->name, name, len) == 0) break;
    i = (i + 1) & mask;
  }
  return i;
}

/* Takes ch out of the table by backward-shift deletion: every entry after
 * it in the same probe run that may move back does, so lookups need no
 * tombstones (lock held). */
static void table_remove(hub_t *h, hub_channel_t *ch) {
  size_t mask = h->table_cap - 1, i = ch->hash & mask;
  while (h->table[i] != ch) i = (i + 1) & mask;
  for (size_t j = (i + 1) & mask; h->table[j] != NULL; j = (j + 1) & mask) {
    size_t home = h->table[j]->hash & mask;
    /* The entry at j stays when its home lies cyclically in (i, j]. */
    int stays = i <= j ? (i < home && home <= j) : (i < home || home <= j);
    if (stays) continue;
    h->table[i] = h->table[j];
    i = j;
  }
  h->table[i] = NULL;
  h->nchannels--;
}

/* Frees ch, which nothing refers to and whose history is empty, leaving
 * its newest dropped id in its tombstone slot (lock held). */
static void channel_destroy(hub_t *h, hub_channel_t *ch) {
  uint64_t *tomb = &h->tombs[ch->hash & (HUB_TOMBS - 1)];
  if (ch->evicted_upto > *tomb) *tomb = ch->evicted_upto;
  list_remove(&ch->idle);
  table_remove(h, ch);
  /* Give back a table that a burst of channels grew: a quarter full at
   * most after halving, so the next growth is far away.  On failure the
   * big table simply stays. */
  if (h->table_cap > HUB_TABLE_MIN && h->nchannels * 8 < h->table_cap)
    resize_table(h, h->table_cap / 2);
  channel_free(ch);
}

/* Drops the oldest entry of ch's ring (lock held). */
static void drop_oldest(hub_t *h, hub_channel_t *ch) {
  hub_entry_t *e = &ch->ring[ch->head];
  ch->evicted_upto = e->id;
  frame_unref(e->frame);
  ch->head = (ch->head + 1) % ch->cap;
  ch->count--;
  h->retained--;
}

/* Drops entries older than the age limit (lock held). */
static void expire(hub_t *h, hub_channel_t *ch, uint64_t now) {
  if (h->ttl_ms == 0) return;
  while (ch->count > 0 && ch->ring[ch->head].at_ms + h->ttl_ms <= now) drop_oldest(h, ch);
}

/* Frees the idle channels whose history has expired, oldest left first,
 * stopping at the first that still holds an event.  A channel behind that
 * one may wait, but not long: the first one's events are all older than
 * the moment it was left, which comes before the moment any channel behind
 * it was left, so each is freed at most history_ttl after it was left.
 * Every channel is freed once, so the cost is amortised over creations
 * (lock held). */
static void sweep_idle(hub_t *h, uint64_t now) {
  if (h->ttl_ms == 0) return; /* without an age limit, idle events stay */
  while (!list_empty(&h->idle)) {
    hub_channel_t *ch = list_entry(h->idle.next, hub_channel_t, idle);
    expire(h, ch, now);
    if (ch->count > 0) break;
    channel_destroy(h, ch);
  }
}

/* Takes a reference to ch: it leaves the idle list (lock held). */
static void ref_locked(hub_channel_t *ch) {
  if (ch->refs++ == 0) list_remove(&ch->idle);
}

/* Drops a reference to ch.  The last one frees it when its history is
 * empty once expired events are dropped; otherwise it joins the tail of
 * the idle list, where the sweep finds it when those events expire
 * (lock held). */
static void unref_locked(hub_t *h, hub_channel_t *ch, uint64_t now) {
  if (--ch->refs > 0) return;
  expire(h, ch, now);
  if (ch->count == 0)
    channel_destroy(h, ch);
  else
    list_push_back(&h->idle, &ch->idle);
}

/* The channel named name, made (with no reference yet) when create is set
 * and it does not exist; NULL when it does not exist and is not made
 * (lock held). */
static hub_channel_t *lookup(hub_t *h, const char *name, size_t len, int create) {
  size_t hash = hash_name(name, len);
  size_t i = table_slot(h, name, len, hash);
  if (h->table[i] != NULL || !create) return h->table[i];
  /* A new channel is where the table grows, so the place to reclaim what
   * expired meanwhile; the sweep may shrink the table, hence the probe
   * again. */
  sweep_idle(h, now_ms());
  /* Keep the table at most half full; a table that cannot grow still
   * takes channels until one empty slot is left, which ends every probe. */
  if ((h->nchannels + 1) * 2 > h->table_cap && resize_table(h, h->table_cap * 2) != 0 &&
      h->nchannels + 2 > h->table_cap)
    return NULL;
  i = table_slot(h, name, len, hash);
  size_t nw = (size_t)h->nworkers;
  hub_channel_t *ch = calloc(1, sizeof(*ch) + nw * sizeof(hub_local_t) + len + 1);
  if (ch == NULL) return NULL;
  ch->local = (hub_local_t *)(ch + 1);
  ch->name = (char *)(ch->local + nw);
  memcpy(ch->name, name, len);
  ch->name[len] = '\0';
  ch->name_len = len;
  ch->hash = hash;
  list_init(&ch->idle);
  for (size_t w = 0; w < nw; w++) list_init(&ch->local[w].subs);
  /* Whatever an earlier channel of this name (or slot) dropped is still
   * missing for a client that saw less of it. */
  ch->evicted_upto = h->tombs[hash & (HUB_TOMBS - 1)];
  h->table[i] = ch;
  h->nchannels++;
  return ch;
}

/* Looks a channel up (making it when create is set) and takes a reference
 * for the caller; NULL when there is none (or no memory to make it). */
static hub_channel_t *get_ref(hub_t *h, const char *name, size_t len, int create) {
  uv_mutex_lock(&h->lock);
  hub_channel_t *ch = lookup(h, name, len, create);
  if (ch != NULL) ref_locked(ch);
  uv_mutex_unlock(&h->lock);
  return ch;
}

hub_channel_t *hub_channel_find(hub_t *h, const char *name, size_t len) {
  return get_ref(h, name, len, 0);
}

hub_channel_t *hub_channel(hub_t *h, const char *name, size_t len) {
  return get_ref(h, name, len, 1);
}

void hub_channel_retain(hub_t *h, hub_channel_t *ch) {
  uv_mutex_lock(&h->lock);
  ref_locked(ch);
  uv_mutex_unlock(&h->lock);
}

void hub_channel_release(hub_t *h, hub_channel_t *ch) {
  uint64_t now = now_ms();
  uv_mutex_lock(&h->lock);
  unref_locked(h, ch, now);
  uv_mutex_unlock(&h->lock);
}

/* Makes room for one more entry, growing the ring up to the history size. */
static int ring_room(hub_t *h, hub_channel_t *ch) {
  if (ch->count < ch->cap) return 0;
  if (ch->cap < h->history) {
    uint32_t cap = ch->cap ? ch->cap * 2 : HUB_INITIAL_RING;
    if (cap > h->history) cap = (uint32_t)h->history;
    hub_entry_t *ring = malloc(cap * sizeof(*ring));
    if (ring == NULL) return -ENOMEM;
    for (uint32_t i = 0; i < ch->count; i++) ring[i] = ch->ring[(ch->head + i) % ch->cap];
    free(ch->ring);
    ch->ring = ring;
    ch->head = 0;
    ch->cap = cap;
    return 0;
  }
  drop_oldest(h, ch);
  return 0;
}

/* Copies body with the field "id: N" inserted at offset at. */
static frame_t *with_id(const frame_t *body, size_t at, uint64_t id) {
  char num[24];
  int n = snprintf(num, sizeof(num), "%llu", (unsigned long long)id);
  return sse_encode_with_id(body->data, body->len, at, num, (size_t)n);
}

/* Appends a message for ch's event to a worker's inbox and wakes the
 * worker: the message takes a frame reference and a channel reference
 * (both given back by hub_msgs_release).  -ENOMEM when the inbox cannot
 * grow, with nothing taken (hub lock held). */
static int inbox_push(hub_inbox_t *in, hub_channel_t *ch, uint64_t id, frame_t *f) {
  uv_mutex_lock(&in->lock);
  if (in->n == in->cap) {
    size_t cap = in->cap ? in->cap * 2 : 64;
    hub_msg_t *items = realloc(in->items, cap * sizeof(*items));
    if (items == NULL) {
      uv_mutex_unlock(&in->lock);
      return -ENOMEM;
    }
    in->items = items;
    in->cap = cap;
  }
  in->items[in->n++] = (hub_msg_t){ch, id, frame_ref(f)};
  ref_locked(ch);
  uv_mutex_unlock(&in->lock);
  uv_async_send(in->wake);
  return 0;
}

/* Numbers, keeps and posts an event on ch, which someone holds a
 * reference to; 0, or -ENOMEM with nothing published (lock held). */
static int publish_locked(hub_t *h, hub_channel_t *ch, const frame_t *body, size_t id_at,
                          uint64_t now, uint64_t *id) {
  uint64_t next = h->seq + 1;
  frame_t *f = with_id(body, id_at, next);
  if (f == NULL) return -ENOMEM;
  h->seq = next;
  h->published++;
  expire(h, ch, now);
  if (h->history == 0) {
    ch->evicted_upto = next; /* nothing is kept: every event is a gap */
  } else if (ring_room(h, ch) == 0) {
    ch->ring[(ch->head + ch->count) % ch->cap] = (hub_entry_t){next, now, frame_ref(f)};
    ch->count++;
    h->retained++;
  } else {
    ch->evicted_upto = next; /* could not keep it: say so on replay */
  }
  /* Inboxes are filled under the hub lock so that every worker receives
   * events in id order.  A worker whose inbox cannot grow misses the event
   * live; its subscribers get it on their next replay. */
  for (int w = 0; w < h->nworkers; w++)
    if (h->inboxes[w] != NULL) inbox_push(h->inboxes[w], ch, next, f);
  frame_unref(f);
  *id = next;
  return 0;
}

int hub_publish(hub_t *h, hub_channel_t *ch, const frame_t *body, size_t id_at, uint64_t *id) {
  uint64_t now = now_ms();
  uv_mutex_lock(&h->lock);
  int rc = publish_locked(h, ch, body, id_at, now, id);
  uv_mutex_unlock(&h->lock);
  return rc;
}

int hub_publish_to(hub_t *h, const char *name, size_t len, const frame_t *body, size_t id_at,
                   uint64_t *id) {
  uint64_t now = now_ms();
  uv_mutex_lock(&h->lock);
  hub_channel_t *ch = lookup(h, name, len, 1);
  int rc = -ENOMEM;
  if (ch != NULL) {
    /* Held across the publish so that a channel made here and left with
     * nothing to keep (history 0, no worker attached) is freed at the
     * release, not leaked. */
    ref_locked(ch);
    rc = publish_locked(h, ch, body, id_at, now, id);
    unref_locked(h, ch, now);
  }
  uv_mutex_unlock(&h->lock);
  return rc;
}

static int by_id(const void *a, const void *b) {
  uint64_t x = ((const hub_msg_t *)a)->id, y = ((const hub_msg_t *)b)->id;
  return x < y ? -1 : x > y;
}

int hub_collect(hub_t *h, hub_channel_t **chs, int n, uint64_t since, int has_since, size_t limit,
                hub_msg_t **out, uint64_t *watermark, int *gap) {
  uint64_t now = now_ms();
  *out = NULL;
  *gap = 0;
  uv_mutex_lock(&h->lock);
  *watermark = h->seq;
  size_t total = 0;
  for (int i = 0; i < n; i++) {
    expire(h, chs[i], now);
    total += chs[i]->count;
    if (has_since && since < chs[i]->evicted_upto) *gap = 1;
  }
  /* An id from an earlier run: whatever came after it then is lost. */
  if (has_since && since > 0 && since < h->start_seq) *gap = 1;
  hub_msg_t *items = total ? malloc(total * sizeof(*items)) : NULL;
  if (total && items == NULL) {
    uv_mutex_unlock(&h->lock);
    return -ENOMEM;
  }
  size_t k = 0;
  for (int i = 0; i < n; i++) {
    hub_channel_t *ch = chs[i];
    for (uint32_t j = 0; j < ch->count; j++) {
      hub_entry_t *e = &ch->ring[(ch->head + j) % ch->cap];
      if (has_since && e->id <= since) continue;
      items[k++] = (hub_msg_t){ch, e->id, frame_ref(e->frame)};
    }
  }
  uv_mutex_unlock(&h->lock);
  if (n > 1) qsort(items, k, sizeof(*items), by_id); /* each ring is in order already */
  if (limit && k > limit) {
    for (size_t i = limit; i < k; i++) frame_unref(items[i].frame);
    k = limit;
  }
  *out = items;
  return (int)k;
}

size_t hub_inbox_take(hub_inbox_t *in, hub_msg_t **items) {
  uv_mutex_lock(&in->lock);
  size_t n = in->n;
  *items = in->items;
  in->items = NULL;
  in->n = in->cap = 0;
  uv_mutex_unlock(&in->lock);
  return n;
}

void hub_msgs_release(hub_t *h, hub_msg_t *items, size_t n) {
  if (n > 0) {
    /* One lock per batch, not per event: a worker drains many at once. */
    uint64_t now = now_ms();
    uv_mutex_lock(&h->lock);
    for (size_t i = 0; i < n; i++) unref_locked(h, items[i].ch, now);
    uv_mutex_unlock(&h->lock);
  }
  for (size_t i = 0; i < n; i++) frame_unref(items[i].frame);
  free(items);
}

void hub_detach(hub_t *h, int w) {
  hub_msg_t *items = NULL;
  size_t n = 0;
  uint64_t now = now_ms();
  uv_mutex_lock(&h->lock);
  hub_inbox_t *in = h->inboxes[w];
  h->inboxes[w] = NULL;
  if (in != NULL) {
    /* Nothing is posted to this inbox any more: what it still holds will
     * never be delivered, and its channel references must not outlive the
     * worker (its owner frees only the frames). */
    n = hub_inbox_take(in, &items);
    for (size_t i = 0; i < n; i++) unref_locked(h, items[i].ch, now);
  }
  uv_mutex_unlock(&h->lock);
  for (size_t i = 0; i < n; i++) frame_unref(items[i].frame);
  free(items);
}

void hub_get_stats(hub_t *h, hub_stats_t *out) {
  uint64_t now = now_ms();
  uv_mutex_lock(&h->lock);
  sweep_idle(h, now); /* count what lives, not what expired unnoticed */
  out->published = h->published;
  out->channels = h->nchannels;
  out->retained = h->retained;
  uv_mutex_unlock(&h->lock);
}

int hub_parse_id(const char *s, size_t n, uint64_t *id) {
  if (n == 0 || n > 20) return 0;
  uint64_t v = 0;
  for (size_t i = 0; i < n; i++) {
    if (s[i] < '0' || s[i] > '9') return 0;
    uint64_t d = (uint64_t)(s[i] - '0');
    if (v > (UINT64_MAX - d) / 10) return 0;
    v = v * 10 + d;
  }
  *id = v;
  return 1;
}
