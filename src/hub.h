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
 *
 * Channel lifetime.  Apps name channels from requests (rooms, users), so a
 * channel is freed once nothing needs it: no holder of a pointer to it and
 * no event left in its history.  Every holder owns one reference, counted
 * under the hub lock: each subscription (a sub_t on some worker's list),
 * each message in a worker's inbox, and each caller between hub_channel()
 * or hub_channel_find() and hub_channel_release().  When the count drops
 * to zero the channel's expired events are dropped; an empty ring frees it
 * there and then, under the lock.  A channel left with retained events but
 * no reference waits on the hub's idle list (in the order channels were
 * left) for its events to expire by history_ttl; a sweep (on channel
 * creation and on stats) frees the expired ones from the head of that
 * list, so each is freed by the first sweep after it has been left for
 * history_ttl, often sooner.  Without history_ttl its events never expire,
 * so it stays: they must remain replayable to a client that comes back.
 *
 * Gaps across a channel's lifetimes.  A freed channel forgets which ids it
 * dropped, yet a client may resume it later with an old Last-Event-ID.  The
 * hub keeps, in a fixed table indexed by a hash of the name, the newest id
 * any freed channel of that hash slot had dropped; a channel made again
 * starts from its slot's value as its evicted_upto.  A real gap is never
 * missed; two names sharing a slot may report a gap that only the other
 * one had (ok = false where nothing was lost: a needless refetch, never a
 * silent loss).
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
  struct rchan *rc;        /* with Redis: the worker's subscription to it */
} hub_local_t;

/* A channel: one allocation holding the struct, the per-worker slots and
 * the name.  The fields up to local are guarded by the hub lock. */
typedef struct hub_channel {
  char *name;              /* NUL-terminated, inside this allocation */
  size_t name_len;
  size_t hash;             /* of the name: the table slot and the tombstone */
  uint32_t refs;           /* holders of a pointer (see the top of this file) */
  list_node_t idle;        /* on the hub's idle list while refs == 0 */
  /* history ring */
  struct hub_entry *ring;
  uint32_t head, count, cap;
  uint64_t evicted_upto;   /* newest id dropped from history; 0 if none */
  hub_local_t *local;      /* one slot per worker, each owned by its worker */
} hub_channel_t;

typedef struct hub_entry {
  uint64_t id;
  uint64_t at_ms;          /* hrtime when published, for history_ttl */
  frame_t *frame;
} hub_entry_t;

/* An event on its way to a worker.  In an inbox, a message owns one
 * reference to its frame and one to its channel (hub_msgs_release drops
 * both); in hub_collect's output it owns the frame reference only, and ch
 * stays valid as long as the caller's own reference to the channel. */
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

/* Unregisters worker slot w: no more events are posted to it, and the
 * messages still in its inbox are released here (call before its async
 * handle closes; a later hub_inbox_take finds the inbox empty). */
void hub_detach(hub_t *h, int w);

/* The channel named name, created on first use, with one reference that
 * the caller owns and gives back with hub_channel_release (its pointer
 * stays valid until then).  NULL when out of memory. */
hub_channel_t *hub_channel(hub_t *h, const char *name, size_t len);

/* The channel named name with a reference the caller owns, as
 * hub_channel, if it exists; else NULL (nothing is created). */
hub_channel_t *hub_channel_find(hub_t *h, const char *name, size_t len);

/* Takes one more reference to ch, on behalf of a caller that already holds
 * one (a subscription made from a looked-up channel). */
void hub_channel_retain(hub_t *h, hub_channel_t *ch);

/* Gives back one reference to ch; ch may be freed before this returns, so
 * the caller must not touch it afterwards. */
void hub_channel_release(hub_t *h, hub_channel_t *ch);

/* Publishes an encoded event on ch, which the caller holds a reference to.
 * body is the event without an id field; the hub writes "id: N\n" into a
 * copy at byte offset id_at (where the encoder puts the id field).
 * Returns 0 with *id set, or -ENOMEM. */
int hub_publish(hub_t *h, hub_channel_t *ch, const frame_t *body, size_t id_at, uint64_t *id);

/* hub_channel, hub_publish and hub_channel_release in one step under one
 * lock: the way to publish by name.  Returns 0 with *id set, or -ENOMEM. */
int hub_publish_to(hub_t *h, const char *name, size_t len, const frame_t *body, size_t id_at,
                   uint64_t *id);

/* Collects, in id order, every retained event of the n channels (each held
 * by a reference of the caller's) with an id after since (all retained
 * events when has_since is 0 -- callers pass has_since 0 only for history
 * reads) and at most the current id, up to limit events (0: no limit).  Each collected frame gets a reference the
 * caller owns.  *watermark gets the current id (later events reach the
 * caller's worker through its inbox); *gap is set when an event after since
 * was already dropped from history.  Returns the number collected, or
 * -ENOMEM. */
int hub_collect(hub_t *h, hub_channel_t **chs, int n, uint64_t since, int has_since, size_t limit,
                hub_msg_t **out, uint64_t *watermark, int *gap);

/* Moves the inbox's messages into *items and returns how many; the caller
 * owns them and gives them back with hub_msgs_release. */
size_t hub_inbox_take(hub_inbox_t *in, hub_msg_t **items);

/* Releases n messages taken from an inbox: their frame references and
 * channel references (under one lock for the batch), then the array. */
void hub_msgs_release(hub_t *h, hub_msg_t *items, size_t n);

/* Counters for stats and metrics.  channels counts the live ones: this
 * first frees the channels left idle whose history has expired (one may
 * stay up to history_ttl behind another left before it: see hub.c). */
void hub_get_stats(hub_t *h, hub_stats_t *out);

/* Parses an event id: 1 with *id set when s is all digits and fits, else 0
 * (unknown or malformed ids replay nothing). */
int hub_parse_id(const char *s, size_t n, uint64_t *id);

#endif
