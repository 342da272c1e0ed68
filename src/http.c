/* http.c - see http.h. */
#include "http.h"

#include <errno.h>
#include <llhttp.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

struct http_parser {
  llhttp_t ll;          /* first, so the llhttp callbacks can cast back */
  http_msg_t *msg;      /* where the current message goes (set by caller) */
  size_t max_head;      /* bytes of url + header names and values */
  size_t max_body;
  size_t head_bytes;
  size_t body_bytes;    /* of the current message, kept or discarded */
  int status;           /* with HTTP_EV_ERROR: the status to answer */
  const char *reason;   /* with HTTP_EV_ERROR: a short explanation */
  enum http_event event;/* set by the callbacks, returned by http_feed */
  uint8_t in_value;     /* the last header callback was a value */
  uint8_t discard_body; /* the request was answered: drop its body bytes */
  uint8_t in_message;   /* a message has begun and not yet completed */
};

_Static_assert((int)HTTP_METHOD_GET == (int)HTTP_GET && (int)HTTP_METHOD_HEAD == (int)HTTP_HEAD &&
                   (int)HTTP_METHOD_POST == (int)HTTP_POST && (int)HTTP_METHOD_PUT == (int)HTTP_PUT &&
                   (int)HTTP_METHOD_DELETE == (int)HTTP_DELETE && (int)HTTP_METHOD_OPTIONS == (int)HTTP_OPTIONS &&
                   (int)HTTP_METHOD_PATCH == (int)HTTP_PATCH,
               "http_method mirrors llhttp's values");

static http_parser_t *P(llhttp_t *ll) { return (http_parser_t *)ll; }

/* Records an error to answer and tells llhttp to stop. */
static int fail(http_parser_t *p, int status, const char *reason) {
  p->status = status;
  p->reason = reason;
  return -1;
}

/* The tchars as a bit set over ASCII: the visible characters (33-126)
 * except the delimiters "(),/:;<=>?@[\]{} and the double quote.  Every
 * byte of every header name is tested, so this is a shift, not a search. */
static const uint64_t tchar_bits[2] = {0x03ff6cfa00000000u, 0x57ffffffc7fffffeu};

int http_token_char(unsigned char c) {
  return c < 128 && (tchar_bits[c >> 6] >> (c & 63)) & 1;
}

/* Counts head bytes against the limit; 0 or -1 after fail(). */
static int count_head(http_parser_t *p, size_t n) {
  p->head_bytes += n;
  if (p->head_bytes > p->max_head) return fail(p, 431, "request head too large");
  return 0;
}

static int on_message_begin(llhttp_t *ll) {
  http_parser_t *p = P(ll);
  if (p->msg == NULL) return fail(p, 500, "no message to parse into");
  http_msg_reset(p->msg);
  p->head_bytes = p->body_bytes = 0;
  p->in_value = 0;
  p->discard_body = 0;
  p->in_message = 1;
  return 0;
}

static int on_url(llhttp_t *ll, const char *at, size_t n) {
  http_parser_t *p = P(ll);
  http_msg_t *m = p->msg;
  if (m->url_len + n > HTTP_MAX_URL) return fail(p, 414, "request URL too long");
  if (count_head(p, n)) return -1;
  if (buf_append(&m->raw, at, n)) return fail(p, 503, "out of memory");
  m->url_len += (uint32_t)n;
  return 0;
}

static int on_header_field(llhttp_t *ll, const char *at, size_t n) {
  http_parser_t *p = P(ll);
  http_msg_t *m = p->msg;
  if (count_head(p, n)) return -1;
  if (m->nhdrs == 0 || p->in_value) { /* a new field begins */
    if (m->nhdrs == HTTP_MAX_HEADERS) return fail(p, 431, "too many header fields");
    if (m->nhdrs == m->hdrs_cap) {
      uint32_t cap = m->hdrs_cap ? m->hdrs_cap * 2 : 16;
      http_hdr_t *h = realloc(m->hdrs, cap * sizeof(*h));
      if (h == NULL) return fail(p, 503, "out of memory");
      m->hdrs = h;
      m->hdrs_cap = cap;
    }
    http_hdr_t *h = &m->hdrs[m->nhdrs++];
    h->name = (uint32_t)m->raw.len;
    h->name_len = 0;
    h->value = h->value_len = 0;
    p->in_value = 0;
  }
  http_hdr_t *h = &m->hdrs[m->nhdrs - 1];
  if (buf_reserve(&m->raw, n)) return fail(p, 503, "out of memory");
  for (size_t i = 0; i < n; i++) { /* names are case-insensitive: store lower */
    char c = at[i];
    /* llhttp lets other names than tokens through ("Host : a", "A B: c");
     * RFC 9112 demands a 400, and a name a proxy reads otherwise is a
     * smuggling shape. */
    if (!http_token_char((unsigned char)c)) return fail(p, 400, "invalid header name");
    m->raw.p[m->raw.len++] = (c >= 'A' && c <= 'Z') ? (char)(c + 32) : c;
  }
  h->name_len += (uint32_t)n;
  return 0;
}

static int on_header_value(llhttp_t *ll, const char *at, size_t n) {
  http_parser_t *p = P(ll);
  http_msg_t *m = p->msg;
  if (count_head(p, n)) return -1;
  http_hdr_t *h = &m->hdrs[m->nhdrs - 1];
  if (!p->in_value) {
    h->value = (uint32_t)m->raw.len;
    p->in_value = 1;
  }
  if (buf_append(&m->raw, at, n)) return fail(p, 503, "out of memory");
  h->value_len += (uint32_t)n;
  return 0;
}

/* A header with an empty value produces no value callback; give it an
 * offset anyway so lookups see "".  llhttp skips leading whitespace but
 * passes trailing whitespace on, which is not part of the value either
 * (RFC 9112 section 5): the value is the last thing in raw, so trim there. */
static int on_header_value_complete(llhttp_t *ll) {
  http_parser_t *p = P(ll);
  http_msg_t *m = p->msg;
  if (m->nhdrs == 0) return 0;
  http_hdr_t *h = &m->hdrs[m->nhdrs - 1];
  if (h->name_len == 0) return fail(p, 400, "empty header name");
  if (!p->in_value) {
    h->value = (uint32_t)m->raw.len;
    p->in_value = 1;
  }
  while (h->value_len > 0 && (m->raw.p[m->raw.len - 1] == ' ' || m->raw.p[m->raw.len - 1] == '\t')) {
    h->value_len--;
    m->raw.len--;
  }
  return 0;
}

/* Counts the head's fields named name (lower-case) and points *first, when
 * first is not NULL, at the first of them (NULL when there is none). */
static uint32_t count_fields(const http_msg_t *m, const char *name, const http_hdr_t **first) {
  size_t n = strlen(name);
  uint32_t count = 0;
  if (first) *first = NULL;
  for (uint32_t i = 0; i < m->nhdrs; i++) {
    const http_hdr_t *h = &m->hdrs[i];
    if (h->name_len != n || memcmp(m->raw.p + h->name, name, n) != 0) continue;
    if (count++ == 0 && first) *first = h;
  }
  return count;
}

/* Checks the head's framing and Host fields before the request is
 * dispatched; 0 when they are sound, else -1 after fail() with the status
 * to answer (the caller closes after it, as after any parse error). */
static int check_head_fields(http_parser_t *p, const http_msg_t *m) {
  /* Chunked is the only transfer coding this server undoes, so the one
   * Transfer-Encoding it takes is a single field that says exactly
   * "chunked" (llhttp trimmed the OWS before it, on_header_value_complete
   * the OWS after).  Anything else would hand the handler bytes that are
   * still encoded ("gzip, chunked", or gzip and chunked in two fields),
   * or is malformed (no coding, chunked twice, chunked not last).  RFC
   * 9112 6.1 asks 400 for the malformed shapes and suggests 501 for a
   * coding the server does not know; one answer, 400, covers both, keeps
   * the statuses a parse error can have to the ones http.h lists, and
   * closes the connection, as the body's length is unknown.  llhttp
   * rejects a Transfer-Encoding without chunked last only after the head
   * was dispatched, and takes an empty one: both are refused here first. */
  const http_hdr_t *te;
  uint32_t tes = count_fields(m, "transfer-encoding", &te);
  if (tes > 0) {
    if (tes > 1 || te->value_len != 7 || strncasecmp(m->raw.p + te->value, "chunked", 7) != 0 ||
        !m->chunked)
      return fail(p, 400, "Transfer-Encoding other than one chunked");
    /* RFC 9112 6.1: an HTTP/1.0 message with Transfer-Encoding has faulty
     * framing; an HTTP/1.0 proxy in front of us would not have read it as
     * chunked, so the two would disagree on where the request ends. */
    if (m->minor == 0) return fail(p, 400, "Transfer-Encoding in an HTTP/1.0 request");
  }
  /* RFC 9112 3.2: a server MUST answer 400 to an HTTP/1.1 request without
   * Host and to any request with more than one (which of two hosts a proxy
   * routed by and which one the app reads is an ambiguity that poisons
   * caches).  HTTP/1.0 did not require Host. */
  uint32_t hosts = count_fields(m, "host", NULL);
  if (hosts > 1) return fail(p, 400, "more than one Host field");
  if (hosts == 0 && m->minor >= 1) return fail(p, 400, "HTTP/1.1 request without Host");
  return 0;
}

/* Takes in the complete head: records what llhttp judged of it, refuses
 * what must not be dispatched (0 or -1 after fail()), and pauses the parser
 * so that the caller dispatches the request before its body is parsed. */
static int on_headers_complete(llhttp_t *ll) {
  http_parser_t *p = P(ll);
  http_msg_t *m = p->msg;
  m->method = (uint8_t)ll->method;
  m->major = ll->http_major;
  m->minor = ll->http_minor;
  if (m->major != 1) return fail(p, 400, "unsupported HTTP version");
  if (m->url_len == 0) return fail(p, 400, "empty request target");
  m->keep_alive = llhttp_should_keep_alive(ll) ? 1 : 0;
  m->chunked = (ll->flags & F_CHUNKED) ? 1 : 0;
  if (check_head_fields(p, m)) return -1;
  if (ll->flags & F_CONTENT_LENGTH) {
    m->has_length = 1;
    m->content_length = ll->content_length;
    if (m->content_length > p->max_body) return fail(p, 413, "request body too large");
  }
  m->upgrade = ll->upgrade ? 1 : 0;
  if (m->upgrade) m->keep_alive = 0;
  size_t vlen;
  const char *v = http_msg_header(m, "expect", &vlen);
  if (v != NULL) {
    if (vlen == 12 && strncasecmp(v, "100-continue", 12) == 0) {
      m->expect_continue = (m->chunked || m->content_length > 0) ? 1 : 0;
    } else {
      return fail(p, 417, "unsupported expectation");
    }
  }
  m->head_done = 1;
  p->event = HTTP_EV_HEAD;
  return HPE_PAUSED;
}

static int on_body(llhttp_t *ll, const char *at, size_t n) {
  http_parser_t *p = P(ll);
  http_msg_t *m = p->msg;
  /* Counted here rather than in body.len, which must keep describing the
   * bytes that body.p holds when the rest is discarded. */
  if (p->body_bytes + n > p->max_body) return fail(p, 413, "request body too large");
  p->body_bytes += n;
  if (p->discard_body) return 0;
  if (buf_append(&m->body, at, n)) return fail(p, 503, "out of memory");
  return 0;
}

static int on_message_complete(llhttp_t *ll) {
  http_parser_t *p = P(ll);
  p->msg->complete = 1;
  p->in_message = 0;
  p->event = HTTP_EV_MESSAGE;
  /* After an upgrade llhttp stops by itself (HPE_PAUSED_UPGRADE) right
   * after this; pausing here as well would report the message twice. */
  if (ll->upgrade) return 0;
  return HPE_PAUSED;
}

static const llhttp_settings_t settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_header_value_complete = on_header_value_complete,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

http_parser_t *http_parser_new(size_t max_head, size_t max_body) {
  http_parser_t *p = calloc(1, sizeof(*p));
  if (p == NULL) return NULL;
  llhttp_init(&p->ll, HTTP_REQUEST, &settings);
  p->max_head = max_head;
  p->max_body = max_body;
  return p;
}

void http_parser_free(http_parser_t *p) { free(p); }

int http_parser_status(const http_parser_t *p, const char **reason) {
  if (reason) *reason = p->reason ? p->reason : http_reason(p->status);
  return p->status;
}

void http_parser_discard_body(http_parser_t *p) { p->discard_body = 1; }

void http_parser_set_max_body(http_parser_t *p, size_t max_body) { p->max_body = max_body; }

void http_parser_set_msg(http_parser_t *p, http_msg_t *msg) { p->msg = msg; }

int http_parser_idle(const http_parser_t *p) {
  /* Not llhttp's "finish" state: that one only turns safe once parsing
   * goes on past the pause at the end of a message. */
  return !p->in_message;
}

enum http_event http_feed(http_parser_t *p, const char *data, size_t len, size_t *used) {
  p->event = HTTP_EV_NEED_MORE;
  llhttp_errno_t err = llhttp_execute(&p->ll, data, len);
  switch (err) {
  case HPE_OK:
    *used = len;
    return HTTP_EV_NEED_MORE;
  case HPE_PAUSED:
    *used = (size_t)(llhttp_get_error_pos(&p->ll) - data);
    llhttp_resume(&p->ll);
    return p->event;
  case HPE_PAUSED_UPGRADE:
    /* The message is complete and the rest of the bytes belong to another
     * protocol, which we do not speak: report the message and let the
     * caller close after answering it (keep_alive was cleared). */
    *used = (size_t)(llhttp_get_error_pos(&p->ll) - data);
    llhttp_resume_after_upgrade(&p->ll);
    if (p->msg) p->msg->complete = 1;
    return HTTP_EV_MESSAGE;
  default: {
    const char *pos = llhttp_get_error_pos(&p->ll);
    *used = pos ? (size_t)(pos - data) : len;
    if (p->status == 0) {
      p->status = 400;
      p->reason = llhttp_get_error_reason(&p->ll);
    }
    return HTTP_EV_ERROR;
  }
  }
}

const char *http_msg_header(const http_msg_t *m, const char *name, size_t *len) {
  size_t n = strlen(name);
  for (uint32_t i = 0; i < m->nhdrs; i++) {
    const http_hdr_t *h = &m->hdrs[i];
    if (h->name_len == n && memcmp(m->raw.p + h->name, name, n) == 0) {
      if (len) *len = h->value_len;
      return m->raw.p + h->value;
    }
  }
  return NULL;
}

const char *http_method_name(uint8_t method) {
  return llhttp_method_name((llhttp_method_t)method);
}

void http_msg_reset(http_msg_t *m) {
  buf_clear(&m->raw);
  buf_clear(&m->body);
  m->url_len = 0;
  m->nhdrs = 0;
  m->content_length = 0;
  m->method = 0;
  m->major = m->minor = 0;
  m->has_length = m->chunked = m->keep_alive = m->expect_continue = 0;
  m->head_done = m->complete = m->upgrade = 0;
}

void http_msg_shrink(http_msg_t *m) {
  buf_free(&m->body);
  free(m->hdrs);
  m->hdrs = NULL;
  m->hdrs_cap = m->nhdrs = 0;
  if (m->url_len == 0) {
    buf_free(&m->raw);
    return;
  }
  /* A fresh copy rather than realloc: a shrinking realloc may keep the
   * block where it was, holes and all. */
  char *url = malloc(m->url_len);
  if (url == NULL) return; /* keep the larger buffer: nothing is lost */
  memcpy(url, m->raw.p, m->url_len);
  free(m->raw.p);
  m->raw.p = url;
  m->raw.len = m->raw.cap = m->url_len;
}

void http_msg_free(http_msg_t *m) {
  buf_free(&m->raw);
  buf_free(&m->body);
  free(m->hdrs);
  m->hdrs = NULL;
  m->hdrs_cap = 0;
  http_msg_reset(m);
}

const char *http_reason(int status) {
  switch (status) {
  case 100: return "Continue";
  case 101: return "Switching Protocols";
  case 200: return "OK";
  case 201: return "Created";
  case 202: return "Accepted";
  case 204: return "No Content";
  case 206: return "Partial Content";
  case 301: return "Moved Permanently";
  case 302: return "Found";
  case 303: return "See Other";
  case 304: return "Not Modified";
  case 307: return "Temporary Redirect";
  case 308: return "Permanent Redirect";
  case 400: return "Bad Request";
  case 401: return "Unauthorized";
  case 403: return "Forbidden";
  case 404: return "Not Found";
  case 405: return "Method Not Allowed";
  case 406: return "Not Acceptable";
  case 408: return "Request Timeout";
  case 409: return "Conflict";
  case 410: return "Gone";
  case 411: return "Length Required";
  case 413: return "Content Too Large";
  case 414: return "URI Too Long";
  case 415: return "Unsupported Media Type";
  case 417: return "Expectation Failed";
  case 422: return "Unprocessable Content";
  case 429: return "Too Many Requests";
  case 431: return "Request Header Fields Too Large";
  case 500: return "Internal Server Error";
  case 501: return "Not Implemented";
  case 502: return "Bad Gateway";
  case 503: return "Service Unavailable";
  case 504: return "Gateway Timeout";
  default: return status < 200 ? "Informational" : status < 300 ? "OK"
                : status < 400 ? "Redirect" : status < 500 ? "Client Error" : "Server Error";
  }
}
