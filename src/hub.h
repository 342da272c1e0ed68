/*
 * hub.h - channels, their history, and the hand-off of events to workers.
 *
 * The hub is the only state the workers share.  A publish assigns the next
 * id from one monotonic sequence across all channels, appends the frame to
 * the channel's history ring and posts a reference to every worker's inbox,
 * all under one short lock, so every worker sees every channel's events in
 * the same order.  Each worker then writes them to its own subscribers (see
 * fanout.h); the hub knows frames and per-worker subscriber lists, never Lua
 * and never a socket.
 *
 * Ids start at the microsecond clock when the process starts, so that ids
 * from an earlier run of the server compare lower than this run's: a client
 * resuming across a restart replays what this run retained.
 */
#ifndef SLUICE_HUB_H
#define SLUICE_HUB_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "frame.h"
#include "list.h"

typedef struct hub hub_t;

/* One worker's view of a channel: its subscribers there.  Only that
 * worker's thread touches its slot. */
typedef struct hub_local {
  list_node_t subs;
  unsigned count;
  uint64_t mark;           /* scratch for the worker (fanout's dedupe) */
} hub_local_t;

typedef struct hub_channel {
  char *name;
  size_t name_len;
  /* history ring, guarded by the hub lock */
  struct hub_entry *ring;
  uint32_t head, count, cap;
  uint64_t evicted_upto;   /* newest id dropped from history; 0 if none */
  hub_local_t *local;      /* one slot per worker */
} hub_channel_t;

typedef struct hub_entry {
  uint64_t id;
  uint64_t at_ms;          /* hrtime when published, for history_ttl */
  frame_t *frame;
} hub_entry_t;

/* An event on its way to a worker. */
typedef struct hub_msg {
  hub_channel_t *ch;
  uint64_t id;
  frame_t *frame;
} hub_msg_t;

/* A worker's inbox: filled by publishers, drained by the worker. */
typedef struct hub_inbox {
  uv_mutex_t lock;
  hub_msg_t *items;
  size_t n, cap;
  uv_async_t *wake;        /* the worker's async handle */
} hub_inbox_t;

typedef struct hub_stats {
  uint64_t published;
  uint64_t channels;
  uint64_t retained;       /* events held in history, all channels */
} hub_stats_t;

/* Creates the hub for nworkers workers.  NULL when out of memory. */
hub_t *hub_new(int nworkers);

/* Frees the hub and everything it holds (after the workers stopped). */
void hub_free(hub_t *h);

/* Sets history length per channel, its age limit in seconds (0: none).
 * The first call wins: every worker loads the same app. */
void hub_configure(hub_t *h, size_t history, double ttl);

/* Registers worker slot w (0-based) with its inbox. */
void hub_attach(hub_t *h, int w, hub_inbox_t *inbox);

/* Unregisters worker slot w: no more events are posted to it (call before
 * its async handle closes). */
void hub_detach(hub_t *h, int w);

/* The channel named name, created on first use.  Channels live as long as
 * the hub (their pointers are stable).  NULL when out of memory. */
hub_channel_t *hub_channel(hub_t *h, const char *name, size_t len);

/* The channel named name if it exists, else NULL (nothing is created). */
hub_channel_t *hub_channel_find(hub_t *h, const char *name, size_t len);

/* Publishes an encoded event.  body is the event without an id field; the
 * hub writes "id: N\n" into a copy at byte offset id_at (where the encoder
 * puts the id field).  Returns 0 with *id set, or -ENOMEM. */
int hub_publish(hub_t *h, hub_channel_t *ch, const frame_t *body, size_t id_at, uint64_t *id);

/* Collects, in id order, every retained event of the n channels with an id
 * after since (all retained events when has_since is 0 -- callers pass
 * has_since 0 only for history reads) and at most the current id, up to
 * limit events (0: no limit).  Each collected frame gets a reference the
 * caller owns.  *watermark gets the current id (later events reach the
 * caller's worker through its inbox); *gap is set when an event after since
 * was already dropped from history.  Returns the number collected, or
 * -ENOMEM. */
int hub_collect(hub_t *h, hub_channel_t **chs, int n, uint64_t since, int has_since, size_t limit,
                hub_msg_t **out, uint64_t *watermark, int *gap);

/* Moves the inbox's messages into *items (the caller frees the array and
 * drops each frame reference) and returns how many. */
size_t hub_inbox_take(hub_inbox_t *in, hub_msg_t **items);

/* Counters for stats and metrics. */
void hub_get_stats(hub_t *h, hub_stats_t *out);

/* Parses an event id: 1 with *id set when s is all digits and fits, else 0
 * (unknown or malformed ids replay nothing). */
int hub_parse_id(const char *s, size_t n, uint64_t *id);

#endif
