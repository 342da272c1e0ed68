/*
 * sse_parse.h - an incremental parser for upstream Server-Sent Events streams.
 *
 * Pure: bytes in, callbacks out; no loop, no Lua, no sockets.  It follows the
 * WHATWG HTML "event stream interpretation" rules exactly:
 *
 *   - one UTF-8 BOM (EF BB BF) at the very start of the stream is skipped;
 *   - lines end with CRLF, LF or CR, and a CR that ends one feed followed by
 *     an LF that starts the next is one line break, not two;
 *   - an empty line dispatches; a line starting with ':' is a comment;
 *   - "field: value" splits at the first colon and drops one leading space
 *     from the value; a line without a colon is a field with an empty value;
 *   - "event" sets the type, "data" appends value + LF, "id" sets the last
 *     event id unless the value holds a NUL, "retry" sets the reconnection
 *     time when the value is ASCII digits only; other fields are ignored;
 *   - a blank line with no data buffered dispatches nothing (and forgets the
 *     type); the incomplete event at end of stream is dropped.
 *
 * The parser is a plain struct so it can live inside the object that owns
 * the stream (a fetch response) without an allocation of its own.  Its
 * buffers grow on demand and are reused: once they have reached the size of
 * the largest event, parsing allocates nothing.  A line that arrives whole
 * inside one feed is never copied, and an event whose lines all arrive in
 * one feed is handed to the callback straight from the caller's bytes.
 *
 * Memory is bounded: a line, or the data of one event, longer than max_event
 * bytes is an error (-E2BIG) after which the parser refuses all input.
 */
#ifndef SLUICE_SSE_PARSE_H
#define SLUICE_SSE_PARSE_H

#include <stddef.h>

#include "buf.h"

/* The bound used when sse_parser_init() is given 0. */
#define SSE_PARSE_DEFAULT_MAX ((size_t)16 << 20)

/* What a callback is being told about. */
enum sse_parsed_kind { SSE_PARSED_EVENT = 1, SSE_PARSED_COMMENT = 2 };

/* One dispatched event, or one comment.  Every pointer is valid only during
 * the callback that receives it, and is never NULL except event and id as
 * described, so lengths can be passed on without further checks. */
typedef struct sse_parsed {
  const char *event; /* NULL when the type buffer is empty ("message") */
  size_t event_len;
  const char *data;  /* events: the data, minus its last LF; comments: the text */
  size_t data_len;
  const char *id;    /* the last event id buffer; NULL when has_id is 0 */
  size_t id_len;
  int has_id;        /* 1 once an id field was accepted, even an empty one */
  long long retry;   /* >= 0 when a valid retry came since the last dispatch */
} sse_parsed_t;

/* Receives each event (kind SSE_PARSED_EVENT) and each comment line (kind
 * SSE_PARSED_COMMENT: data holds the text after ':' minus one leading space,
 * event and id are NULL, has_id is 0, retry is -1).  Returning non-zero stops
 * the feed: sse_parser_feed() returns that value.  A callback must not call
 * into the parser that is calling it. */
typedef int (*sse_parse_cb)(void *ctx, int kind, const sse_parsed_t *ev);

/* The parser.  Fields are public for embedding; callers read only those
 * marked readable and leave the rest to the functions below. */
typedef struct sse_parser {
  size_t max;          /* bound on one line and on one event's data */
  int err;             /* 0, or the error that stopped the parser */
  int bom;             /* BOM bytes matched at the stream start; -1 once past */
  int skip_lf;         /* the last feed ended on CR: an LF next is its pair */
  buf_t line;          /* the start of a line split across feeds */
  buf_t data;          /* the data buffer, when it is not data_ref */
  const char *data_ref; /* during a feed: the data buffer is this value + LF */
  size_t data_ref_len;
  buf_t type;          /* the event type buffer, when it is not type_ref */
  const char *type_ref; /* during a feed: the event type is these bytes */
  size_t type_ref_len;
  buf_t id;            /* the last event id buffer */
  int has_id;          /* readable: an id was ever accepted */
  long long retry_pending; /* a valid retry since the last dispatch, or -1 */
  long long reconnect; /* readable: the last valid retry value, or -1 */
  size_t consumed;     /* readable: bytes of the last feed that were parsed */
} sse_parser_t;

/* Prepares p for a new stream that bounds lines and event data at max_event
 * bytes (0 means SSE_PARSE_DEFAULT_MAX).  Allocates nothing, so it returns 0;
 * the int result leaves room for -ENOMEM should that change. */
int sse_parser_init(sse_parser_t *p, size_t max_event);

/* Parses the len bytes at buf, which continue the bytes of earlier feeds,
 * and calls cb (which may be NULL to discard) for every comment line and
 * dispatched event they complete, in stream order.  Bytes that end
 * mid-line are kept for the next feed.
 *
 * Returns 0 once every byte is parsed.  When cb returns non-zero, parsing
 * stops right after the line that produced that callback and the value is
 * returned; p->consumed then says how many bytes of buf were parsed, and
 * feeding the rest (buf + p->consumed) later continues the stream exactly.
 * Returns -E2BIG when a line or one event's data exceeds the bound, and
 * -ENOMEM when a buffer cannot grow; both leave the parser failed, and every
 * later feed returns the same error without parsing anything. */
int sse_parser_feed(sse_parser_t *p, const char *buf, size_t len, sse_parse_cb cb,
                    void *ctx);

/* Ends the stream: drops the incomplete line and the undispatched event, as
 * a client does at end of stream.  The last event id and the reconnection
 * time are kept and the parser is ready for the next stream (a reconnection,
 * whose BOM it skips again).  A failed parser stays failed. */
void sse_parser_finish(sse_parser_t *p);

/* Releases p's buffers.  p must be initialised again before any other use. */
void sse_parser_free(sse_parser_t *p);

#endif
