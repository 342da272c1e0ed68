/*
 * fanout.h - a worker's side of the hub: its subscriptions and delivery.
 *
 * A subscription ties one event stream (a request) to one hub channel.  It
 * sits on the channel's list for this worker, which only this worker's
 * thread touches, so delivery takes no lock.  Delivery writes each frame by
 * reference to every subscriber's queue; a subscriber whose queue would
 * grow past max_queue is dropped (asynchronously, before the loop sleeps)
 * instead of holding the publisher or growing memory: its client reconnects
 * with Last-Event-ID and replays what it missed from history.
 */
#ifndef SLUICE_FANOUT_H
#define SLUICE_FANOUT_H

#include <stdint.h>

#include "hub.h"
#include "list.h"

struct req;
struct worker;

typedef struct sub {
  list_node_t node;     /* on ch->local[worker].subs */
  list_node_t rnode;    /* on req->subs */
  struct req *r;
  hub_channel_t *ch;    /* a reference of its own (see hub.h) */
  uint64_t min_id;      /* ids up to here were replayed or came before */
  /* With Redis: the subscribe whose replay has not been written yet; live
   * events for this subscription wait in it meanwhile (see rhub.h). */
  struct rhub_op *pending;
} sub_t;

/* Subscribes stream r to n channels, which the caller holds references to
 * (each new subscription takes one of its own).  When has_since, first
 * replays every retained event after since, in id order, then live events
 * follow with no gap and no duplicate at the seam.  Channels r already
 * follows are left as they are.  Returns the number of events replayed
 * (*gap set when some after since were no longer retained), or -ENOMEM. */
int fanout_subscribe(struct req *r, hub_channel_t **chs, int n, int has_since, uint64_t since,
                     int *gap);

/* Removes every subscription of r (it is ending), giving back their
 * channel references. */
void fanout_unsubscribe_all(struct req *r);

/* Writes into fresh the channels of chs that r does not follow yet, each
 * once, and returns how many. */
int fanout_fresh(struct req *r, hub_channel_t **chs, int n, hub_channel_t **fresh);

/* Subscribes r to ch (taking a channel reference of its own), delivering
 * live events with ids above min_id.  NULL when out of memory. */
sub_t *fanout_add(struct req *r, hub_channel_t *ch, uint64_t min_id);

/* Removes one subscription, as fanout_unsubscribe_all does for each. */
void fanout_remove(sub_t *s);

/* Delivers one event of ch to this worker's subscribers of it; returns how
 * many frames it queued. */
size_t fanout_deliver(struct worker *w, hub_channel_t *ch, uint64_t id, frame_t *f);

/* Whether r follows any channel. */
int fanout_subscribed(const struct req *r);

/* Delivers what the hub posted to this worker's inbox; returns how many
 * frames it queued on streams. */
size_t fanout_drain(struct worker *w);

#endif
