/*
 * http.h - the HTTP/1.1 request glue around llhttp.
 *
 * Pure: bytes in, parsed requests and events out; no loop, no sockets.  This
 * is the only module that includes llhttp.  The parser stops (pauses) at the
 * two points where its caller must act before more bytes are parsed: when a
 * request head is complete (dispatch it) and when a request message is
 * complete (answer it before parsing the next pipelined one).
 *
 * Limits are enforced here and reported as the status to answer with:
 * 400 malformed (bad syntax, smuggling shapes, a Transfer-Encoding other
 * than one "chunked", an HTTP/1.1 request without Host or any request with
 * two, unsupported version), 414 URL over HTTP_MAX_URL, 431 head over
 * max_head bytes or HTTP_MAX_HEADERS fields, 413 body over max_body.
 */
#ifndef SLUICE_HTTP_H
#define SLUICE_HTTP_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"

#define HTTP_MAX_URL 8192
#define HTTP_MAX_HEADERS 100

/* One header field: offsets into http_msg_t.raw; names are lower-cased. */
typedef struct http_hdr {
  uint32_t name, name_len;
  uint32_t value, value_len;
} http_hdr_t;

/* A parsed request: head fields and body.  Owned by whoever owns the
 * enclosing request object; freed with http_msg_free(). */
typedef struct http_msg {
  buf_t raw;             /* url bytes, then each name and value */
  uint32_t url_len;      /* the url is raw.p[0 .. url_len) */
  http_hdr_t *hdrs;
  uint32_t nhdrs, hdrs_cap;
  buf_t body;
  uint64_t content_length; /* valid when has_length */
  uint8_t method;        /* llhttp_method_t */
  uint8_t major, minor;
  unsigned has_length : 1;
  unsigned chunked : 1;
  unsigned keep_alive : 1;      /* as llhttp judges it from version and Connection */
  unsigned expect_continue : 1; /* "Expect: 100-continue" with a body to come */
  unsigned head_done : 1;
  unsigned complete : 1;        /* the whole message, body included, was read */
  unsigned upgrade : 1;         /* Upgrade/CONNECT: what follows is not HTTP/1 */
} http_msg_t;

/* The methods other modules test for (values are llhttp's). */
enum http_method {
  HTTP_METHOD_DELETE = 0,
  HTTP_METHOD_GET = 1,
  HTTP_METHOD_HEAD = 2,
  HTTP_METHOD_POST = 3,
  HTTP_METHOD_PUT = 4,
  HTTP_METHOD_OPTIONS = 6,
  HTTP_METHOD_PATCH = 28,
};

enum http_event {
  HTTP_EV_NEED_MORE = 0, /* every byte fed was consumed; feed more when it comes */
  HTTP_EV_HEAD,          /* the message head is complete: dispatch it */
  HTTP_EV_MESSAGE,       /* the message is complete, body included */
  HTTP_EV_ERROR,         /* answer http_parser_status() and close */
};

/* A connection's parser state; opaque so that only this module sees llhttp. */
typedef struct http_parser http_parser_t;

/* Allocates a parser for a connection's first request; NULL without memory.
 * max_head bounds the url plus header names and values, max_body the body. */
http_parser_t *http_parser_new(size_t max_head, size_t max_body);

/* Frees a parser (NULL is ignored). */
void http_parser_free(http_parser_t *p);

/* With HTTP_EV_ERROR: the status to answer (400, 413, 414, 417, 431) and a
 * short reason. */
int http_parser_status(const http_parser_t *p, const char **reason);

/* Drops the body bytes of the current message from now on (its request was
 * answered without reading them); they still count against max_body. */
void http_parser_discard_body(http_parser_t *p);

/* Changes the body limit for messages whose head is not yet complete. */
void http_parser_set_max_body(http_parser_t *p, size_t max_body);

/* Points the parser at the message that the next request goes into.  The
 * caller sets one before feeding bytes at a message boundary. */
void http_parser_set_msg(http_parser_t *p, http_msg_t *msg);

/* Parses up to len bytes, stopping early at an event.  *used is the number
 * of bytes consumed; feed the rest again after acting on the event. */
enum http_event http_feed(http_parser_t *p, const char *data, size_t len, size_t *used);

/* Tells whether the parser is between messages (no partial message read). */
int http_parser_idle(const http_parser_t *p);

/* The value of the first header named name (lower-case), or NULL; *len gets
 * its length. */
const char *http_msg_header(const http_msg_t *m, const char *name, size_t *len);

/* Whether c may appear in a header field name (an RFC 9110 tchar). */
int http_token_char(unsigned char c);

/* The method's name, e.g. "GET". */
const char *http_method_name(uint8_t method);

/* Releases the message's memory; it is empty and reusable afterwards. */
void http_msg_free(http_msg_t *m);

/* Frees the header fields and the body but keeps the url (its bytes moved
 * to an allocation of their own size) and the flags (complete, keep_alive
 * ...): for a request that lives on as a stream, so an idle subscriber
 * holds a few dozen bytes of its request, not its whole head. */
void http_msg_shrink(http_msg_t *m);

/* Resets the message for reuse, keeping its buffers' memory. */
void http_msg_reset(http_msg_t *m);

/* The standard reason phrase for a status, e.g. "Not Found". */
const char *http_reason(int status);

#endif
