/* fetch.c - see fetch.h. */
#include "fetch.h"

#include <curl/curl.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "list.h"
#include "log.h"

struct fetch_multi {
  CURLM *multi;
  uv_loop_t *loop;
  uv_timer_t timer;         /* libcurl's one timeout */
  list_node_t transfers;    /* running */
  list_node_t pending;      /* with events to deliver */
  list_node_t socks;        /* watched sockets */
  list_node_t zombies;      /* freed by their owner during deliver() */
  uv_timer_t sweep;         /* read_timeout checks */
  int delivering;
  int closing;
};

/* A socket libcurl asked us to watch; freed in the poll's close callback. */
typedef struct fetch_sock {
  uv_poll_t poll;
  list_node_t node;         /* on m->socks */
  curl_socket_t fd;
  fetch_multi_t *m;
} fetch_sock_t;

struct fetch {
  CURL *easy;
  fetch_multi_t *m;
  struct curl_slist *hdrs;
  fetch_cb cb;
  void *ud;
  list_node_t node;         /* on m->transfers while running */
  list_node_t pnode;        /* on m->pending */
  buf_t head;               /* header lines of the response being read */
  buf_t data;               /* body bytes; data.p[off .. len) unread */
  size_t off;
  size_t limit;
  uint64_t received;
  uint64_t read_timeout_ms; /* 0: none */
  uint64_t last_byte_ms;    /* loop time of the last byte (or resume) */
  int redirects_seen;
  long status;
  long max_redirects;
  char errbuf[CURL_ERROR_SIZE];
  char *error;              /* the final error message, or NULL */
  unsigned running : 1;
  unsigned paused : 1;      /* by the buffer limit */
  unsigned held : 1;        /* by the owner (downstream backpressure) */
  unsigned head_ready : 1;
  unsigned done : 1;
  unsigned ev_headers : 1;  /* events waiting for delivery */
  unsigned ev_data : 1;
  unsigned ev_done : 1;
  unsigned zombie : 1;
};

static void deliver(fetch_multi_t *m);

/* ------------------------------------------------------------- loop glue */

static void check_done(fetch_multi_t *m);

static void queue_event(fetch_t *f) {
  if (!list_linked(&f->pnode)) list_push_back(&f->m->pending, &f->pnode);
}

static void on_poll(uv_poll_t *h, int status, int events) {
  fetch_sock_t *s = h->data;
  fetch_multi_t *m = s->m;
  int flags = 0;
  /* On a socket error let libcurl find out by reading and writing: a
   * reused keep-alive connection the upstream dropped is then retried on a
   * new one, where CURL_CSELECT_ERR would fail the transfer. */
  if (status < 0) flags = CURL_CSELECT_IN | CURL_CSELECT_OUT;
  if (events & UV_READABLE) flags |= CURL_CSELECT_IN;
  if (events & UV_WRITABLE) flags |= CURL_CSELECT_OUT;
  int running;
  curl_multi_socket_action(m->multi, s->fd, flags, &running);
  check_done(m);
  deliver(m);
}

static void on_timer(uv_timer_t *h) {
  fetch_multi_t *m = h->data;
  int running;
  curl_multi_socket_action(m->multi, CURL_SOCKET_TIMEOUT, 0, &running);
  check_done(m);
  deliver(m);
}

static void free_sock(uv_handle_t *h) { free(h->data); }

/* libcurl's socket callback: watch fd for what it asks, or stop watching. */
static int sock_cb(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp) {
  (void)easy;
  fetch_multi_t *m = userp;
  fetch_sock_t *s = socketp;
  if (what == CURL_POLL_REMOVE) {
    if (s != NULL) {
      list_remove(&s->node);
      uv_poll_stop(&s->poll);
      uv_close((uv_handle_t *)&s->poll, free_sock);
      curl_multi_assign(m->multi, fd, NULL);
    }
    return 0;
  }
  if (s == NULL) {
    s = calloc(1, sizeof(*s));
    if (s == NULL) return -1;
    if (uv_poll_init_socket(m->loop, &s->poll, fd) != 0) {
      free(s);
      return -1;
    }
    s->poll.data = s;
    s->fd = fd;
    s->m = m;
    list_push_back(&m->socks, &s->node);
    curl_multi_assign(m->multi, fd, s);
  }
  int events = 0;
  if (what & CURL_POLL_IN) events |= UV_READABLE;
  if (what & CURL_POLL_OUT) events |= UV_WRITABLE;
  uv_poll_start(&s->poll, events, on_poll);
  return 0;
}

/* libcurl's timer callback: when to call it back (-1: never). */
static int timer_cb(CURLM *multi, long timeout_ms, void *userp) {
  (void)multi;
  fetch_multi_t *m = userp;
  if (timeout_ms < 0)
    uv_timer_stop(&m->timer);
  else
    uv_timer_start(&m->timer, on_timer, (uint64_t)timeout_ms, 0);
  return 0;
}

fetch_multi_t *fetch_multi_new(uv_loop_t *loop) {
  fetch_multi_t *m = calloc(1, sizeof(*m));
  if (m == NULL) return NULL;
  m->multi = curl_multi_init();
  if (m->multi == NULL) {
    free(m);
    return NULL;
  }
  m->loop = loop;
  list_init(&m->transfers);
  list_init(&m->pending);
  list_init(&m->socks);
  list_init(&m->zombies);
  uv_timer_init(loop, &m->timer);
  m->timer.data = m;
  uv_timer_init(loop, &m->sweep);
  m->sweep.data = m;
  uv_unref((uv_handle_t *)&m->sweep);
  curl_multi_setopt(m->multi, CURLMOPT_SOCKETFUNCTION, sock_cb);
  curl_multi_setopt(m->multi, CURLMOPT_SOCKETDATA, m);
  curl_multi_setopt(m->multi, CURLMOPT_TIMERFUNCTION, timer_cb);
  curl_multi_setopt(m->multi, CURLMOPT_TIMERDATA, m);
  return m;
}

static void free_multi(uv_handle_t *h) { free(h->data); }

/* The sweep timer closed: close the other, whose callback frees m. */
static void sweep_closed(uv_handle_t *h) {
  fetch_multi_t *m = h->data;
  uv_close((uv_handle_t *)&m->timer, free_multi);
}

void fetch_multi_close(fetch_multi_t *m) {
  if (m == NULL) return;
  m->closing = 1;
  while (!list_empty(&m->transfers)) fetch_abort(list_entry(m->transfers.next, fetch_t, node));
  while (!list_empty(&m->pending)) list_remove(m->pending.next);
  curl_multi_cleanup(m->multi);
  /* Sockets libcurl closed without telling us (its connection cache). */
  while (!list_empty(&m->socks)) {
    fetch_sock_t *s = list_entry(m->socks.next, fetch_sock_t, node);
    list_remove(&s->node);
    uv_close((uv_handle_t *)&s->poll, free_sock);
  }
  uv_close((uv_handle_t *)&m->sweep, sweep_closed);
}

/* -------------------------------------------------------------- transfers */

/* Names the cause of a failed transfer in words a user can act on. */
static void set_error(fetch_t *f, CURLcode rc) {
  const char *cause;
  switch (rc) {
  case CURLE_COULDNT_CONNECT: cause = "connection refused"; break;
  case CURLE_COULDNT_RESOLVE_HOST:
  case CURLE_COULDNT_RESOLVE_PROXY: cause = "DNS"; break;
  case CURLE_OPERATION_TIMEDOUT: cause = "timeout"; break;
  case CURLE_SSL_CONNECT_ERROR:
  case CURLE_PEER_FAILED_VERIFICATION:
  case CURLE_SSL_CERTPROBLEM:
  case CURLE_SSL_CIPHER:
  case CURLE_SSL_CACERT_BADFILE: cause = "TLS"; break;
  case CURLE_RECV_ERROR:
  case CURLE_SEND_ERROR:
  case CURLE_GOT_NOTHING:
  case CURLE_PARTIAL_FILE: cause = "connection reset"; break;
  case CURLE_TOO_MANY_REDIRECTS: cause = "too many redirects"; break;
  case CURLE_URL_MALFORMAT:
  case CURLE_UNSUPPORTED_PROTOCOL: cause = "bad URL"; break;
  default: cause = "upstream error"; break;
  }
  const char *detail = f->errbuf[0] ? f->errbuf : curl_easy_strerror(rc);
  size_t n = strlen(cause) + strlen(detail) + 3;
  f->error = malloc(n);
  if (f->error) snprintf(f->error, n, "%s: %s", cause, detail);
}

/* Moves finished transfers out of libcurl and queues their DONE event. */
static void check_done(fetch_multi_t *m) {
  CURLMsg *msg;
  int left;
  while ((msg = curl_multi_info_read(m->multi, &left)) != NULL) {
    if (msg->msg != CURLMSG_DONE) continue;
    fetch_t *f = NULL;
    curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&f);
    CURLcode rc = msg->data.result;
    curl_multi_remove_handle(m->multi, f->easy);
    list_remove(&f->node);
    f->running = 0;
    f->done = 1;
    if (rc != CURLE_OK) set_error(f, rc);
    if (!f->head_ready) { /* e.g. a body-less answer: the headers are final now */
      curl_easy_getinfo(f->easy, CURLINFO_RESPONSE_CODE, &f->status);
      f->head_ready = 1;
      if (rc == CURLE_OK) f->ev_headers = 1;
    }
    f->ev_done = 1;
    queue_event(f);
  }
}

/* Delivers queued events, outside libcurl; owners may act on the transfer
 * (or on others) from their callbacks. */
static void deliver(fetch_multi_t *m) {
  if (m->delivering) return;
  m->delivering = 1;
  while (!list_empty(&m->pending)) {
    fetch_t *f = list_entry(m->pending.next, fetch_t, pnode);
    list_remove(&f->pnode);
    /* An owner may abort from a callback (cb becomes NULL) but frees the
     * transfer only outside them, so f stays valid here. */
    if (f->ev_headers) {
      f->ev_headers = 0;
      if (f->cb) f->cb(f, FETCH_HEADERS, f->ud);
    }
    if (f->ev_data) {
      f->ev_data = 0;
      if (f->cb) f->cb(f, FETCH_DATA, f->ud);
    }
    if (f->ev_done) {
      f->ev_done = 0;
      if (f->cb) f->cb(f, FETCH_DONE, f->ud);
    }
  }
  m->delivering = 0;
  while (!list_empty(&m->zombies)) {
    fetch_t *z = list_entry(m->zombies.next, fetch_t, pnode);
    list_remove(&z->pnode);
    fetch_free(z);
  }
}

/* Whether the header block read so far has a Location field. */
static int has_location(const fetch_t *f) {
  const char *p = f->head.p, *end = p + f->head.len;
  while (p && p < end) {
    if (end - p > 9 && strncasecmp(p, "location:", 9) == 0) return 1;
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    if (nl == NULL) break;
    p = nl + 1;
  }
  return 0;
}

/* Whether the response whose head just ended is the one to report: not a
 * proxy's tunnel answer, not an interim 1xx, not a redirect libcurl is
 * about to follow. */
static int final_head(fetch_t *f) {
  long code = 0;
  curl_easy_getinfo(f->easy, CURLINFO_RESPONSE_CODE, &code);
  /* 0: the head was a proxy's answer to CONNECT, not the upstream's. */
  if (code == 0 || (code >= 100 && code < 200)) return 0;
  if (f->max_redirects > 0 && f->redirects_seen < f->max_redirects &&
      (code == 301 || code == 302 || code == 303 || code == 307 || code == 308) && has_location(f)) {
    f->redirects_seen++; /* libcurl follows it: the next head is the answer */
    return 0;
  }
  f->status = code;
  return 1;
}

static size_t header_cb(char *p, size_t size, size_t n, void *ud) {
  fetch_t *f = ud;
  size_t len = size * n;
  f->last_byte_ms = uv_now(f->m->loop);
  if (f->head_ready) return len; /* trailers */
  if (len >= 5 && memcmp(p, "HTTP/", 5) == 0) {
    buf_clear(&f->head); /* a new response (after 1xx or a redirect) */
    return len;
  }
  if (len <= 2 && (p[0] == '\r' || p[0] == '\n')) {
    if (final_head(f)) {
      f->head_ready = 1;
      f->ev_headers = 1;
      queue_event(f);
    }
    return len;
  }
  if (buf_append(&f->head, p, len)) return 0; /* fails the transfer */
  return len;
}

static size_t write_cb(char *p, size_t size, size_t n, void *ud) {
  fetch_t *f = ud;
  size_t len = size * n;
  if (f->limit && f->data.len - f->off >= f->limit) {
    f->paused = 1; /* libcurl keeps these bytes and offers them again */
    return CURL_WRITEFUNC_PAUSE;
  }
  if (f->off > 0 && f->off == f->data.len) { /* all read: start over */
    buf_clear(&f->data);
    f->off = 0;
  }
  if (buf_append(&f->data, p, len)) return 0;
  f->received += len;
  f->last_byte_ms = uv_now(f->m->loop);
  if (!f->head_ready) { /* body before a blank line we saw: headers are final */
    curl_easy_getinfo(f->easy, CURLINFO_RESPONSE_CODE, &f->status);
    f->head_ready = 1;
    f->ev_headers = 1;
  }
  f->ev_data = 1;
  queue_event(f);
  return len;
}

/* Fails transfers whose upstream sent nothing for their read_timeout (time
 * the download was paused by its reader does not count). */
static void on_sweep(uv_timer_t *t) {
  fetch_multi_t *m = t->data;
  uint64_t now = uv_now(m->loop);
  int any = 0;
  list_node_t *n = m->transfers.next;
  while (n != &m->transfers) {
    fetch_t *f = list_entry(n, fetch_t, node);
    n = n->next;
    if (f->read_timeout_ms == 0) continue;
    any = 1;
    if (f->paused) {
      f->last_byte_ms = now;
      continue;
    }
    if (now - f->last_byte_ms < f->read_timeout_ms) continue;
    curl_multi_remove_handle(m->multi, f->easy);
    list_remove(&f->node);
    f->running = 0;
    f->done = 1;
    char msg[96];
    snprintf(msg, sizeof(msg), "timeout: no data for %.3g s (read_timeout)", (double)f->read_timeout_ms / 1000);
    f->error = strdup(msg);
    if (!f->head_ready) f->head_ready = 1;
    f->ev_done = 1;
    queue_event(f);
  }
  if (!any) uv_timer_stop(t);
  deliver(m);
}

int fetch_start(fetch_multi_t *m, const fetch_opts_t *o, fetch_cb cb, void *ud, fetch_t **out,
                char *err, size_t errlen) {
  fetch_t *f = calloc(1, sizeof(*f));
  if (f == NULL) {
    snprintf(err, errlen, "out of memory");
    return -ENOMEM;
  }
  f->easy = curl_easy_init();
  if (f->easy == NULL) {
    free(f);
    snprintf(err, errlen, "out of memory");
    return -ENOMEM;
  }
  f->m = m;
  f->cb = cb;
  f->ud = ud;
  f->limit = o->buffer_limit;
  f->max_redirects = o->max_redirects;
  list_init(&f->node);
  list_init(&f->pnode);
  CURL *e = f->easy;
  curl_easy_setopt(e, CURLOPT_PRIVATE, f);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_ERRORBUFFER, f->errbuf);
  curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, header_cb);
  curl_easy_setopt(e, CURLOPT_HEADERDATA, f);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, write_cb);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, f);
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(e, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(e, CURLOPT_USERAGENT, "sluice/" SLUICE_VERSION);
  if (o->ca_file != NULL) curl_easy_setopt(e, CURLOPT_CAINFO, o->ca_file);
  if (o->max_redirects > 0) {
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 1L);
    curl_easy_setopt(e, CURLOPT_MAXREDIRS, o->max_redirects);
  }
  curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS,
                   (long)((o->connect_timeout > 0 ? o->connect_timeout : 10) * 1000));
  if (o->timeout > 0) curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)(o->timeout * 1000));
  if (o->read_timeout > 0) {
    f->read_timeout_ms = (uint64_t)(o->read_timeout * 1000);
    f->last_byte_ms = uv_now(m->loop);
    if (!uv_is_active((uv_handle_t *)&m->sweep)) uv_timer_start(&m->sweep, on_sweep, 100, 100);
  }
  for (const char *const *h = o->headers; h && *h; h++) {
    struct curl_slist *l = curl_slist_append(f->hdrs, *h);
    if (l == NULL) goto nomem;
    f->hdrs = l;
  }
  /* No "Expect: 100-continue" round trip before sending a body. */
  struct curl_slist *l = curl_slist_append(f->hdrs, "Expect:");
  if (l == NULL) goto nomem;
  f->hdrs = l;
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, f->hdrs);
  if (o->has_body) {
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)o->body_len);
    curl_easy_setopt(e, CURLOPT_COPYPOSTFIELDS, o->body ? o->body : "");
  }
  const char *method = o->method ? o->method : (o->has_body ? "POST" : "GET");
  if (strcmp(method, "GET") == 0 && !o->has_body)
    curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
  else if (strcmp(method, "HEAD") == 0)
    curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
  else if (!(strcmp(method, "POST") == 0 && o->has_body))
    curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
  if (curl_easy_setopt(e, CURLOPT_URL, o->url) != CURLE_OK) {
    snprintf(err, errlen, "bad URL: %s", o->url);
    fetch_free(f);
    return -EINVAL;
  }
  if (curl_multi_add_handle(m->multi, e) != CURLM_OK) goto nomem;
  f->running = 1;
  list_push_back(&m->transfers, &f->node);
  *out = f;
  return 0;
nomem:
  snprintf(err, errlen, "out of memory");
  fetch_free(f);
  return -ENOMEM;
}

void fetch_abort(fetch_t *f) {
  f->cb = NULL;
  list_remove(&f->pnode);
  if (f->running) {
    curl_multi_remove_handle(f->m->multi, f->easy); /* closes the connection */
    list_remove(&f->node);
    f->running = 0;
  }
}

void fetch_free(fetch_t *f) {
  if (f == NULL) return;
  fetch_abort(f);
  if (f->m->delivering && !f->zombie) {
    /* deliver() may still look at f after the callback that let its owner
     * free it: free it when deliver() is done. */
    f->zombie = 1;
    list_push_back(&f->m->zombies, &f->pnode);
    return;
  }
  curl_easy_cleanup(f->easy);
  curl_slist_free_all(f->hdrs);
  buf_free(&f->head);
  buf_free(&f->data);
  free(f->error);
  free(f);
}

void fetch_set_cb(fetch_t *f, fetch_cb cb, void *ud) {
  f->cb = cb;
  f->ud = ud;
}

int fetch_status(const fetch_t *f) { return (int)f->status; }

const char *fetch_headers(const fetch_t *f, size_t *len) {
  *len = f->head.len;
  return f->head.p ? f->head.p : "";
}

const char *fetch_peek(const fetch_t *f, size_t *len) {
  *len = f->data.len - f->off;
  return f->data.p ? f->data.p + f->off : "";
}

/* Resumes the download when nothing holds it; libcurl may deliver the
 * bytes it kept at once (through write_cb: queued, delivered later). */
static void maybe_resume(fetch_t *f) {
  if (!f->running || f->held || !f->paused) return;
  if (f->limit && f->data.len - f->off > f->limit / 2) return;
  f->paused = 0;
  f->last_byte_ms = uv_now(f->m->loop);
  curl_easy_pause(f->easy, CURLPAUSE_CONT);
  deliver(f->m);
}

void fetch_consume(fetch_t *f, size_t n) {
  f->off += n;
  if (f->off >= f->data.len) {
    buf_clear(&f->data);
    f->off = 0;
  }
  maybe_resume(f);
}

void fetch_hold(fetch_t *f, int hold) {
  if (!f->running) return;
  if (hold && !f->held) {
    f->held = 1;
    f->paused = 1;
    curl_easy_pause(f->easy, CURLPAUSE_RECV);
  } else if (!hold && f->held) {
    f->held = 0;
    maybe_resume(f);
  }
}

void fetch_set_limit(fetch_t *f, size_t limit) {
  f->limit = limit;
  maybe_resume(f);
}

int fetch_done(const fetch_t *f) { return f->done; }

const char *fetch_error(const fetch_t *f) { return f->error; }

uint64_t fetch_received(const fetch_t *f) { return f->received; }
