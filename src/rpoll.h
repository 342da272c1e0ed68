/*
 * rpoll.h - hiredis's event hooks on a libuv poll.
 *
 * What hiredis's own libuv adapter does, except that a readable socket is
 * read until it is empty (up to max_reads reads of hiredis's 16 KiB per
 * loop turn): one read per turn caps how fast a worker takes in
 * notifications, and a worker busy writing to many subscribers then falls
 * behind Redis until Redis closes the connection at its pub/sub output
 * limit.  The poll's memory is freed in its close callback, after hiredis
 * has let go of it (its cleanup hook).
 */
#ifndef SLUICE_RPOLL_H
#define SLUICE_RPOLL_H

#include <hiredis/async.h>
#include <uv.h>

/* Hooks ac's events to a poll on loop: 0, or -1 with ac left as it was. */
int rpoll_attach(redisAsyncContext *ac, uv_loop_t *loop, int max_reads);

#endif
