/*
 * sse_encode.h - the Server-Sent Events frame encoder.
 *
 * Pure: bytes in, one frame (or bytes appended to a buffer) out; no loop,
 * no Lua, no sockets.  The output follows the WHATWG "event stream"
 * grammar byte for byte, in this order:
 *
 *   event: <event>\n          when an event name is given
 *   id: <id>\n                when an id is given (an empty id is "id:\n")
 *   retry: <ms>\n             when retry >= 0
 *   data: <line>\n ...        one line per line of data; an empty line is
 *                             written "data:\n"; lines split on CR, LF, CRLF
 *   \n                        the blank line that dispatches the event
 *
 * An event with neither data, event, id nor retry encodes as nothing useful
 * and is refused.  event and id must not contain CR, LF or NUL: the encoder
 * refuses them rather than produce a stream that parses differently.
 */
#ifndef SLUICE_SSE_ENCODE_H
#define SLUICE_SSE_ENCODE_H

#include <stddef.h>

#include "buf.h"
#include "frame.h"

typedef struct sse_event {
  const char *data;  /* NULL: no data lines at all */
  size_t data_len;
  const char *event; /* NULL: no event field */
  size_t event_len;
  const char *id;    /* NULL: no id field */
  size_t id_len;
  long long retry;   /* < 0: no retry field */
} sse_event_t;

/* Which field of an event the encoder refused. */
enum sse_field { SSE_FIELD_NONE = 0, SSE_FIELD_EVENT, SSE_FIELD_ID, SSE_FIELD_EMPTY };

/* Returns 1 when the n bytes at s hold no CR, LF or NUL, else 0. */
int sse_field_ok(const char *s, size_t n);

/* Encodes ev into a new frame (one reference, owned by the caller).
 * Returns 0; -EINVAL with *bad set to the offending field when event or id
 * holds CR, LF or NUL, or when the event is empty; -ENOMEM. */
int sse_encode(const sse_event_t *ev, frame_t **out, enum sse_field *bad);

/* Appends ev, encoded as sse_encode() would, to out: many events in one
 * block, where they all go to the same place (a relayed stream).  Returns
 * 0; -EINVAL with *bad set as above; -ENOMEM (out is left as it was). */
int sse_encode_append(const sse_event_t *ev, buf_t *out, enum sse_field *bad);

/* A copy of the encoded event ev[0..len) with the field "id: ID" inserted
 * at byte offset at (where the encoder puts the id field: the hub numbers
 * events after they are encoded).  NULL when at is past the end or memory
 * is short. */
frame_t *sse_encode_with_id(const char *ev, size_t len, size_t at, const char *id, size_t idlen);

/* Encodes a comment: every line of text (split on CR, LF, CRLF) becomes
 * ": <line>\n" (":\n" for an empty line), then a blank line.  NULL text or
 * n == 0 gives the bare heartbeat ":\n\n".  NULL when out of memory. */
frame_t *sse_encode_comment(const char *text, size_t n);

#endif
