/*
 * rhub.h - the hub's log in Redis, so that several nodes share channels.
 *
 * With --redis, every channel is a Redis stream and Redis, not this
 * process, numbers and keeps events; each worker talks to Redis over two
 * hiredis connections on its own loop (libuv adapter):
 *
 *   commands   publish: a Redis function XADDs the event to the channel's
 *              stream (MAXLEN ~ history) under an id made from Redis's
 *              clock and the last id handed out, so ids increase across
 *              every channel, then PUBLISHes it (id and bytes) on the
 *              channel's notification channel, in the same atomic call.
 *              Replay and history: a function reads XRANGE after since from
 *              several streams at once, with the last id handed out.
 *   pub/sub    SUBSCRIBE to the notification channel of each channel that
 *              has subscribers on this worker; every event arrives there
 *              once, with its bytes, in id order.
 *
 * Why Pub/Sub plus XRANGE and not a blocking XREAD: Redis routes a PUBLISH
 * to the connections subscribed to that channel, so a node pays only for
 * the channels its clients follow, and following one more is one
 * SUBSCRIBE.  An XREAD BLOCK names every stream at each call, so with
 * thousands of channels each batch of events costs a command as long as
 * the list, and adding a channel means unblocking it.  Pub/Sub drops what
 * it cannot deliver, but only by closing the connection; the streams keep
 * everything, so after a reconnect each channel is read again with XRANGE
 * from the last id this worker delivered, and no event is lost while the
 * stream holds it.
 *
 * The seam.  The two connections are separate sockets, so a live event and
 * the answer to a read may arrive in either order.  A new subscription is
 * therefore pending until its read is answered: live events for it wait in
 * the pending operation, then the replay is written, then the waiting
 * events with ids above the read's watermark (the last id handed out when
 * it ran).  The read is sent only once the SUBSCRIBE that covers its
 * channels is confirmed, so every event after the watermark comes live.
 * After a reconnect the whole worker does the same: live events wait until
 * the catch-up read is answered; per channel, an event is delivered only if
 * its id is above the last one delivered, which drops the overlap.
 *
 * Ids are Redis stream ids "MS-SEQ"; in C they are packed as MS << 22 | SEQ
 * so that they compare as integers (the function never lets SEQ reach
 * 2^22).  Channels named "_sluice.*" (the reload channel) stay in the
 * in-memory hub of each node.
 */
#ifndef SLUICE_RHUB_H
#define SLUICE_RHUB_H

#include <stddef.h>
#include <stdint.h>

#include "frame.h"
#include "hub.h"

struct worker;
struct req;
struct sub;

/* Where Redis is: parsed from redis://[:PASSWORD@]HOST[:PORT][/DB]. */
typedef struct rhub_config {
  char host[256];
  int port;
  int db;
  char password[256];
} rhub_config_t;

/* Parses url into cfg: 0, or -EINVAL with a message in err. */
int rhub_parse_url(const char *url, rhub_config_t *cfg, char *err, size_t errlen);

typedef struct rhub rhub_t;
typedef struct rhub_op rhub_op_t;

/* What an operation produced; valid during its callback only. */
typedef struct rhub_result {
  const char *err;         /* why it failed, when status < 0 */
  uint64_t id;             /* publish: the event's id */
  const char *id_text;     /* publish: the same, as Redis wrote it */
  int replayed;            /* subscribe: events replayed */
  int gap;                 /* subscribe: some after since were trimmed */
  const hub_msg_t *events; /* history: oldest first (ch is NULL) */
  size_t nevents;
} rhub_result_t;

/* Called once when an operation ends: status 0, or a negative errno with
 * res->err saying why.  Never called after rhub_cancel. */
typedef void (*rhub_done_fn)(void *ud, int status, const rhub_result_t *res);

/* Creates worker w's link to Redis and starts connecting; operations made
 * before the link is up wait for it.  NULL when out of memory. */
rhub_t *rhub_new(struct worker *w, const rhub_config_t *cfg);

/* Closes the link for good (the worker is stopping): operations still
 * pending end with UV_ECANCELED; memory is freed in close callbacks, so
 * run the loop afterwards. */
void rhub_close(rhub_t *rh);

/* Publishes an encoded event (without id; the id line goes at byte id_at)
 * on the channel named name.  0 with *op set (done is called later), or a
 * negative errno with *err set and nothing published. */
int rhub_publish(rhub_t *rh, const char *name, size_t len, const frame_t *body, size_t id_at,
                 rhub_done_fn done, void *ud, rhub_op_t **op, const char **err);

/* Subscribes stream r to the n channels chs (held by the caller), first
 * replaying the events after since when has_since.  Returns 1 when it is
 * done at once (res filled: no replay was asked and every channel is
 * followed already), 0 with *op set when done will be called, or a
 * negative errno with *err set and nothing subscribed. */
int rhub_subscribe(rhub_t *rh, struct req *r, hub_channel_t **chs, int n, int has_since,
                   uint64_t since, rhub_done_fn done, void *ud, rhub_op_t **op,
                   rhub_result_t *res, const char **err);

/* Reads the events of a channel after since (all when !has_since), at most
 * limit (0: no limit).  0 with *op set, or a negative errno with *err. */
int rhub_history(rhub_t *rh, const char *name, size_t len, int has_since, uint64_t since,
                 size_t limit, rhub_done_fn done, void *ud, rhub_op_t **op, const char **err);

/* Forgets the operation's callback: whoever waited on it is gone.  The
 * operation itself ends when Redis answers. */
void rhub_cancel(rhub_op_t *op);

/* A live event for a subscription still waiting for its replay: kept (with
 * a frame reference) until the replay is written. */
void rhub_hold(rhub_op_t *op, hub_channel_t *ch, uint64_t id, frame_t *f);

/* Called by fanout when subscription s goes (after it left its channel's
 * list): its pending subscribe, if any, ends, and a channel left without
 * subscribers on this worker is unsubscribed. */
void rhub_sub_removed(rhub_t *rh, struct sub *s);

/* The link's counters are the worker's (worker.h: redis_*), so that
 * metrics can read them from any thread for as long as the worker lives. */

/* Formats id as "MS-SEQ" into buf (at least 32 bytes); returns its length. */
int rhub_format_id(uint64_t id, char *buf);

/* Parses "MS-SEQ", or "MS" alone (as "MS-0", the way Redis reads it):
 * 1 with *id set, or 0 for anything else. */
int rhub_parse_id(const char *s, size_t n, uint64_t *id);

/* Whether a channel of this name stays in each node's own hub. */
int rhub_local_channel(const char *name, size_t len);

#endif
