/* hub.c - see hub.h. */
#include "hub.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define HUB_INITIAL_RING 16

struct hub {
  uv_mutex_t lock;          /* guards everything below but the inboxes */
  uint64_t seq;             /* the last id handed out */
  uint64_t start_seq;       /* ids up to here belong to earlier runs */
  size_t history;           /* events kept per channel */
  uint64_t ttl_ms;          /* 0: no age limit */
  int configured;
  hub_channel_t **table;    /* open addressing, by name */
  size_t table_cap, nchannels;
  uint64_t published;
  uint64_t retained;
  int nworkers;
  hub_inbox_t **inboxes;
};

hub_t *hub_new(int nworkers) {
  hub_t *h = calloc(1, sizeof(*h));
  if (h == NULL) return NULL;
  h->inboxes = calloc((size_t)nworkers, sizeof(*h->inboxes));
  h->table_cap = 64;
  h->table = calloc(h->table_cap, sizeof(*h->table));
  if (h->inboxes == NULL || h->table == NULL) {
    free(h->inboxes);
    free(h->table);
    free(h);
    return NULL;
  }
  uv_mutex_init(&h->lock);
  h->nworkers = nworkers;
  h->history = 1000;
  uv_timeval64_t tv;
  uv_gettimeofday(&tv);
  h->seq = h->start_seq = (uint64_t)tv.tv_sec * 1000000u + (uint64_t)tv.tv_usec;
  return h;
}

static void channel_free(hub_channel_t *ch) {
  for (uint32_t i = 0; i < ch->count; i++) frame_unref(ch->ring[(ch->head + i) % ch->cap].frame);
  free(ch->ring);
  free(ch->local);
  free(ch->name);
  free(ch);
}

void hub_free(hub_t *h) {
  if (h == NULL) return;
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

void hub_detach(hub_t *h, int w) {
  uv_mutex_lock(&h->lock);
  h->inboxes[w] = NULL;
  uv_mutex_unlock(&h->lock);
}

/* FNV-1a: channel names are short and chosen by apps, not attackers'
 * bytes alone; a table at most half full keeps probes short. */
static size_t hash_name(const char *s, size_t n) {
  uint64_t x = 1469598103934665603ull;
  for (size_t i = 0; i < n; i++) x = (x ^ (unsigned char)s[i]) * 1099511628211ull;
  return (size_t)x;
}

static int grow_table(hub_t *h) {
  size_t cap = h->table_cap * 2;
  hub_channel_t **t = calloc(cap, sizeof(*t));
  if (t == NULL) return -ENOMEM;
  for (size_t i = 0; i < h->table_cap; i++) {
    hub_channel_t *ch = h->table[i];
    if (ch == NULL) continue;
    size_t j = hash_name(ch->name, ch->name_len) & (cap - 1);
    while (t[j]) j = (j + 1) & (cap - 1);
    t[j] = ch;
  }
  free(h->table);
  h->table = t;
  h->table_cap = cap;
  return 0;
}

hub_channel_t *hub_channel_find(hub_t *h, const char *name, size_t len) {
  uv_mutex_lock(&h->lock);
  size_t i = hash_name(name, len) & (h->table_cap - 1);
  hub_channel_t *ch;
  while ((ch = h->table[i]) != NULL) {
    if (ch->name_len == len && memcmp(ch->name, name, len) == 0) break;
    i = (i + 1) & (h->table_cap - 1);
  }
  uv_mutex_unlock(&h->lock);
  return ch;
}

hub_channel_t *hub_channel(hub_t *h, const char *name, size_t len) {
  uv_mutex_lock(&h->lock);
  size_t i = hash_name(name, len) & (h->table_cap - 1);
  hub_channel_t *ch;
  while ((ch = h->table[i]) != NULL) {
    if (ch->name_len == len && memcmp(ch->name, name, len) == 0) goto out;
    i = (i + 1) & (h->table_cap - 1);
  }
  ch = calloc(1, sizeof(*ch));
  if (ch == NULL) goto out;
  ch->name = malloc(len + 1);
  ch->local = calloc((size_t)h->nworkers, sizeof(*ch->local));
  if (ch->name == NULL || ch->local == NULL) {
    free(ch->name);
    free(ch->local);
    free(ch);
    ch = NULL;
    goto out;
  }
  memcpy(ch->name, name, len);
  ch->name[len] = '\0';
  ch->name_len = len;
  for (int w = 0; w < h->nworkers; w++) list_init(&ch->local[w].subs);
  h->table[i] = ch;
  h->nchannels++;
  if (h->nchannels * 2 > h->table_cap) grow_table(h); /* on failure: probes grow longer */
out:
  uv_mutex_unlock(&h->lock);
  return ch;
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

/* Copies body with "id: N\n" inserted at offset at. */
static frame_t *with_id(const frame_t *body, size_t at, uint64_t id) {
  char line[32];
  int n = snprintf(line, sizeof(line), "id: %llu\n", (unsigned long long)id);
  frame_t *f = frame_new(body->len + (size_t)n);
  if (f == NULL) return NULL;
  memcpy(f->data, body->data, at);
  memcpy(f->data + at, line, (size_t)n);
  memcpy(f->data + at + n, body->data + at, body->len - at);
  return f;
}

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
  uv_mutex_unlock(&in->lock);
  uv_async_send(in->wake);
  return 0;
}

int hub_publish(hub_t *h, hub_channel_t *ch, const frame_t *body, size_t id_at, uint64_t *id) {
  uint64_t now = uv_hrtime() / 1000000;
  uv_mutex_lock(&h->lock);
  uint64_t next = h->seq + 1;
  frame_t *f = with_id(body, id_at, next);
  if (f == NULL) {
    uv_mutex_unlock(&h->lock);
    return -ENOMEM;
  }
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
  uv_mutex_unlock(&h->lock);
  frame_unref(f);
  *id = next;
  return 0;
}

static int by_id(const void *a, const void *b) {
  uint64_t x = ((const hub_msg_t *)a)->id, y = ((const hub_msg_t *)b)->id;
  return x < y ? -1 : x > y;
}

int hub_collect(hub_t *h, hub_channel_t **chs, int n, uint64_t since, int has_since, size_t limit,
                hub_msg_t **out, uint64_t *watermark, int *gap) {
  uint64_t now = uv_hrtime() / 1000000;
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

void hub_get_stats(hub_t *h, hub_stats_t *out) {
  uv_mutex_lock(&h->lock);
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
