/*
 * access.h - the access log: one record per request, and one per event
 * stream when it closes (its whole lifetime as the duration).
 *
 * Records go to stderr with the rest of the log, as text or JSON
 * (--log-format), unless --access-log off.  A worker gathers the records
 * of one loop turn in its own buffer and writes them in one go (log_out)
 * before the loop sleeps, as it does its sockets' output: a busy worker
 * pays a syscall per turn, not per request.
 */
#ifndef SLUICE_ACCESS_H
#define SLUICE_ACCESS_H

struct req;
struct worker;

/* Adds r's record to its worker's buffer (nothing when the access log is
 * off, or when r never got as far as a request).  Call while r's
 * connection is still open: the peer's address is read then. */
void access_log(struct req *r);

/* Writes the records gathered so far: before the loop sleeps, and when the
 * worker exits. */
void access_flush(struct worker *w);

#endif
