/*
 * sluice-loadgen: a load client for Server-Sent Events servers.
 *
 *   fanout   N subscribers stream GET <sub-path>; M keep-alive publishers POST
 *            K events carrying a send timestamp to <pub-path> (on --pub-port,
 *            which may be another node of the same channels); reports
 *            deliveries per second, complete subscribers and the
 *            publish-to-receive latency of every delivery.
 *   latency  the same run, named for use with --rate.
 *   idle     (or hold) opens N subscribers, prints "READY n" once all are open and
 *            holds them for --duration seconds (or until a signal or the end
 *            of standard input) so the caller can sample the server's memory;
 *            counts how the server ends the streams (orderly close, reset, or
 *            an event cut short).
 *   churn    connect, subscribe, wait for the stream to open, disconnect;
 *            --window connections at a time, --cycles times over; reports
 *            cycles per second and the failed ones.
 *
 * One libuv loop thread; one read buffer for the whole loop; every
 * connection's state is preallocated, so nothing is allocated per event.
 * Traffic goes to 127.0.0.0/8 only.  Run with --help for the options.
 */
#define _GNU_SOURCE
#include <uv.h>

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

#define READ_BUF_SIZE (256 * 1024)
#define MAX_HEAD_BYTES (64 * 1024)
#define TICK_MS 100
#define PATH_MAX_LEN 900
#define PUB_HEAD_MAX (PATH_MAX_LEN + 320)

enum { MODE_FANOUT, MODE_LATENCY, MODE_IDLE, MODE_CHURN };
enum { PH_SUBS, PH_PUBS, PH_SETTLE, PH_PUBLISH, PH_HOLD };
enum { S_NEW, S_CONNECTING, S_HEAD, S_OPEN, S_CLOSING, S_RETRY, S_FAILED, S_CLOSED };
enum { END_RETRY, END_FAILED, END_CLOSED };
enum { P_NEW, P_CONNECTING, P_IDLE, P_BUSY, P_CLOSING, P_RETRY, P_DEAD };

/* ------------------------------------------------------------ histogram */

/* Microsecond values below 2^16 get a bucket each; above, every power of two
 * is split into 1024 buckets (0.1% resolution) up to 2^48 us. */
#define H_LIN 65536u
#define H_SUB_BITS 10
#define H_SUB (1u << H_SUB_BITS)
#define H_MAX_EXP 48
#define H_BUCKETS (H_LIN + (H_MAX_EXP - 16) * H_SUB)

/* A latency histogram with the exact count, sum, min and max beside it. */
typedef struct {
  uint64_t count, sum, min, max;
  uint64_t *bucket;
} hist_t;

/* Allocates the buckets of an empty histogram. */
static int hist_init(hist_t *h) {
  memset(h, 0, sizeof *h);
  h->min = UINT64_MAX;
  h->bucket = calloc(H_BUCKETS, sizeof *h->bucket);
  return h->bucket ? 0 : -1;
}

/* Maps a value in microseconds to its bucket. */
static inline size_t hist_index(uint64_t v) {
  if (v < H_LIN)
    return (size_t)v;
  int k = 63 - __builtin_clzll(v);
  if (k >= H_MAX_EXP) {
    k = H_MAX_EXP - 1;
    v = (2ull << k) - 1;
  }
  return H_LIN + (size_t)(k - 16) * H_SUB + (size_t)((v >> (k - H_SUB_BITS)) - H_SUB);
}

/* Returns the smallest value a bucket holds. */
static uint64_t hist_value(size_t i) {
  if (i < H_LIN)
    return i;
  size_t k = (i - H_LIN) / H_SUB + 16, sub = (i - H_LIN) % H_SUB;
  return (uint64_t)(H_SUB + sub) << (k - H_SUB_BITS);
}

/* Records one value in microseconds. */
static inline void hist_add(hist_t *h, uint64_t v) {
  h->bucket[hist_index(v)]++;
  h->count++;
  h->sum += v;
  if (v < h->min)
    h->min = v;
  if (v > h->max)
    h->max = v;
}

/* Returns the value at quantile q (0..1): the lower bound of the bucket that
 * holds the ceil(q * count)-th smallest value, never above the exact max. */
static uint64_t hist_quantile(const hist_t *h, double q) {
  if (h->count == 0)
    return 0;
  uint64_t rank = (uint64_t)(q * (double)h->count + 0.999999);
  if (rank < 1)
    rank = 1;
  if (rank > h->count)
    rank = h->count;
  uint64_t seen = 0;
  for (size_t i = 0; i < H_BUCKETS; i++) {
    seen += h->bucket[i];
    if (seen >= rank) {
      uint64_t v = hist_value(i);
      return v > h->max ? h->max : (v < h->min ? h->min : v);
    }
  }
  return h->max;
}

/* ------------------------------------------------------ response reader */

enum {
  R_STATUS,
  R_HEADER,
  R_BODY_EOF,
  R_BODY_LEN,
  R_CHUNK_SIZE,
  R_CHUNK_EXT,
  R_CHUNK_DATA,
  R_CHUNK_END,
  R_TRAILER,
  R_DONE
};

/* An incremental HTTP/1.1 response reader: status line, the three headers
 * that decide framing, then a close-delimited, length-delimited or chunked
 * body handed on in slices.  Only a short prefix of each head line is kept. */
typedef struct {
  uint8_t state;
  uint8_t chunked, close, has_len, lastc, digits;
  uint16_t status;
  uint16_t linelen;
  uint32_t linetotal;
  uint32_t headlen;
  uint64_t remaining;
  char line[64];
} resp_t;

typedef int (*head_fn)(void *ud);
typedef void (*body_fn)(void *ud, const char *p, size_t n);

/* Makes a reader ready for the next response. */
static void resp_reset(resp_t *r) {
  r->state = R_STATUS;
  r->chunked = r->close = r->has_len = r->lastc = r->digits = 0;
  r->status = 0;
  r->linelen = 0;
  r->linetotal = 0;
  r->headlen = 0;
  r->remaining = 0;
}

/* Tells whether a kept head line starts with a header name (lower case,
 * with its colon) and returns its value past leading blanks. */
static const char *header_value(const resp_t *r, const char *name) {
  size_t n = strlen(name);
  if (r->linelen < n || strncasecmp(r->line, name, n) != 0)
    return NULL;
  const char *v = r->line + n;
  while (*v == ' ' || *v == '\t')
    v++;
  return v;
}

/* Handles one complete line of the status line, the headers or the
 * trailers; returns -1 on a malformed head, -2 when the head callback
 * asks to stop. */
static int resp_line(resp_t *r, head_fn on_head, void *ud) {
  bool empty = r->linetotal == 0 || (r->linetotal == 1 && r->lastc == '\r');
  if (r->linelen == r->linetotal && r->linelen > 0 && r->lastc == '\r')
    r->linelen--;
  r->line[r->linelen] = '\0';
  if (r->state == R_STATUS) {
    if (empty)
      return 0; /* tolerate a stray blank line before the status */
    if (r->linelen < 12 || memcmp(r->line, "HTTP/1.", 7) != 0 || r->line[8] != ' ')
      return -1;
    int s = 0;
    for (int i = 9; i < 12; i++) {
      if (r->line[i] < '0' || r->line[i] > '9')
        return -1;
      s = s * 10 + (r->line[i] - '0');
    }
    r->status = (uint16_t)s;
    r->state = R_HEADER;
    return 0;
  }
  if (r->state == R_TRAILER) {
    if (empty)
      r->state = R_DONE;
    return 0;
  }
  if (!empty) {
    const char *v;
    if ((v = header_value(r, "transfer-encoding:")) != NULL) {
      if (strcasestr(v, "chunked"))
        r->chunked = 1;
    } else if ((v = header_value(r, "content-length:")) != NULL) {
      char *end;
      unsigned long long len = strtoull(v, &end, 10);
      if (end == v)
        return -1;
      r->has_len = 1;
      r->remaining = len;
    } else if ((v = header_value(r, "connection:")) != NULL) {
      if (strcasestr(v, "close"))
        r->close = 1;
    }
    return 0;
  }
  if (r->status >= 100 && r->status < 200) { /* an interim response: another head follows */
    resp_reset(r);
    return 0;
  }
  if (r->chunked)
    r->state = R_CHUNK_SIZE;
  else if (r->has_len)
    r->state = r->remaining ? R_BODY_LEN : R_DONE;
  else if (r->status == 204 || r->status == 304)
    r->state = R_DONE;
  else
    r->state = R_BODY_EOF;
  if (on_head && on_head(ud) != 0)
    return -2;
  return 0;
}

/* Feeds received bytes to a reader, handing body bytes to on_body.  Returns
 * the bytes consumed (all of them, or fewer when the response ended), -1 on
 * a protocol error, -2 when on_head asked to stop. */
static ssize_t resp_feed(resp_t *r, const char *p, size_t n, head_fn on_head, body_fn on_body,
                         void *ud) {
  size_t i = 0;
  while (i < n) {
    switch (r->state) {
    case R_STATUS:
    case R_HEADER:
    case R_TRAILER: {
      const char *nl = memchr(p + i, '\n', n - i);
      size_t seg = nl ? (size_t)(nl - (p + i)) : n - i;
      r->headlen += (uint32_t)seg + 1;
      if (r->headlen > MAX_HEAD_BYTES)
        return -1;
      size_t room = sizeof r->line - 1 - r->linelen;
      size_t c = seg < room ? seg : room;
      memcpy(r->line + r->linelen, p + i, c);
      r->linelen += (uint16_t)c;
      r->linetotal += (uint32_t)seg;
      if (seg)
        r->lastc = (uint8_t)p[i + seg - 1];
      i += seg;
      if (!nl)
        break;
      i++;
      int rc = resp_line(r, on_head, ud);
      r->linelen = 0;
      r->linetotal = 0;
      r->lastc = 0;
      if (rc)
        return rc;
      break;
    }
    case R_BODY_EOF:
      if (on_body)
        on_body(ud, p + i, n - i);
      i = n;
      break;
    case R_BODY_LEN:
    case R_CHUNK_DATA: {
      size_t c = n - i;
      if (c > r->remaining)
        c = (size_t)r->remaining;
      if (on_body)
        on_body(ud, p + i, c);
      r->remaining -= c;
      i += c;
      if (r->remaining == 0)
        r->state = r->state == R_BODY_LEN ? R_DONE : R_CHUNK_END;
      break;
    }
    case R_CHUNK_SIZE: {
      char ch = p[i++];
      int v = -1;
      if (ch >= '0' && ch <= '9')
        v = ch - '0';
      else if (ch >= 'a' && ch <= 'f')
        v = ch - 'a' + 10;
      else if (ch >= 'A' && ch <= 'F')
        v = ch - 'A' + 10;
      if (v >= 0) {
        if (r->digits >= 15)
          return -1;
        r->remaining = r->remaining * 16 + (uint64_t)v;
        r->digits++;
      } else if (ch == ';' || ch == ' ' || ch == '\t') {
        if (!r->digits)
          return -1;
        r->state = R_CHUNK_EXT;
      } else if (ch == '\r') {
        if (!r->digits)
          return -1;
      } else if (ch == '\n') {
        if (!r->digits)
          return -1;
        r->digits = 0;
        r->state = r->remaining ? R_CHUNK_DATA : R_TRAILER;
      } else {
        return -1;
      }
      break;
    }
    case R_CHUNK_EXT: {
      const char *nl = memchr(p + i, '\n', n - i);
      if (!nl) {
        i = n;
        break;
      }
      i = (size_t)(nl - p) + 1;
      r->digits = 0;
      r->state = r->remaining ? R_CHUNK_DATA : R_TRAILER;
      break;
    }
    case R_CHUNK_END: {
      char ch = p[i++];
      if (ch == '\n')
        r->state = R_CHUNK_SIZE;
      else if (ch != '\r')
        return -1;
      break;
    }
    case R_DONE: return (ssize_t)i;
    }
  }
  return (ssize_t)i;
}

/* ------------------------------------------------------------- state */

#define SSE_PREFIX 48

/* The event-stream parser's state: a prefix of the current line (enough for
 * "data: {\"t\":" and the timestamp), and what the current event has seen. */
typedef struct {
  uint32_t linetotal;
  uint8_t plen, lastc, has_data, has_t;
  uint64_t t;
  char pre[SSE_PREFIX];
} sse_t;

/* One subscriber: its connection, response reader and stream parser. */
typedef struct {
  uv_tcp_t tcp;
  uv_connect_t creq;
  resp_t resp;
  sse_t sse;
  uint64_t started;  /* ns when the current attempt began */
  uint64_t retry_at; /* ns when a waiting retry may start */
  uint32_t got;      /* events received */
  uint32_t idx;
  uint32_t ch;
  uint8_t state, end, attempts, complete;
} sub_t;

/* One keep-alive publisher with its request buffers (one request at a time). */
typedef struct {
  uv_tcp_t tcp;
  uv_connect_t creq;
  uv_write_t wreq;
  resp_t resp;
  uint64_t sent;
  uint64_t retry_at;
  uint32_t ch;
  uint32_t headlen, bodylen;
  uint8_t state, attempts, ever, answered, writing;
  char head[PUB_HEAD_MAX];
  char *body;
} pub_t;

/* The run as the command line describes it. */
typedef struct {
  int mode;
  const char *mode_name;
  char host[64];
  int port, pub_port; /* pub_port: where publishers connect (default: port) */
  const char *sub_path, *pub_path;
  uint32_t subs, pubs, channels, size, sources, window, retries;
  uint64_t events, cycles;
  int plain, json, cpu, quiet, until_closed, close_on_head;
  double rate, timeout, duration, linger, settle_ms, connect_timeout;
} config_t;

/* The run's state: one loop, its connections, counters and histograms. */
static struct {
  config_t cfg;
  uv_loop_t *loop;
  struct sockaddr_in dst, pub_dst;
  struct sockaddr_in *src;
  char **sub_req;
  size_t *sub_req_len;
  char **pub_prefix;
  sub_t *subs;
  pub_t *pubs;
  uint64_t *accepted; /* per channel: publishes the server answered with 2xx */
  int phase;
  bool stopping, publish_done;
  const char *stop_reason;
  uint64_t now; /* ns, taken once per read callback */
  uint64_t t0, t_ready, t_pub_start, t_pub_end, t_last_recv, t_stop;
  /* subscribers */
  uint32_t next_new, inflight, open, terminal, retry_waiting, complete_open, max_open;
  uint64_t connect_errors, connect_retries, connect_timeouts, sub_http_errors, protocol_errors,
      closed, closed_eof, closed_reset, closed_partial;
  uint64_t t_last_close;
  /* churn */
  uint64_t cycles_started, cycles_done, cycles_failed;
  uint32_t churn_inflight;
  int last_error, last_sub_status, last_pub_status;
  uint64_t received, bytes, reads;
  /* publishers */
  uint32_t pubs_ready, pubs_dead, pub_inflight;
  uint64_t issued, acked, pub_http_errors, pub_errors, pub_reconnects;
  hist_t lat, rtt;
  uv_timer_t tick, settle, rate, hold;
  uv_signal_t sig[3];
  uv_pipe_t in;
  struct rusage ru_start, ru_stop;
  uint64_t ticks, prog_recv, prog_acked;
  uint64_t nofile;
} g;

static char rbuf[READ_BUF_SIZE];

static void pump(void);
static void check_phase(void);
static void check_finish(void);
static void check_publish_done(void);
static void pub_start(pub_t *p);
static void pub_send(pub_t *p);
static void stop(const char *reason);

/* Returns CLOCK_MONOTONIC in nanoseconds: the clock of every timestamp. */
static inline uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Returns seconds between two nanosecond timestamps. */
static double secs(uint64_t from, uint64_t to) {
  return to > from ? (double)(to - from) / 1e9 : 0.0;
}

/* Hands every read the loop's one buffer: each read is consumed before the
 * next one is made. */
static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)h;
  (void)suggested;
  buf->base = rbuf;
  buf->len = sizeof rbuf;
}

/* ------------------------------------------------------- event stream */

/* Resets the event-stream parser at the start of a stream. */
static void sse_reset(sse_t *e) { memset(e, 0, sizeof *e); }

/* Parses the decimal timestamp at p (up to end), as the payload carries it:
 * a JSON object whose first member is "t", or a plain leading number. */
static bool parse_stamp(const char *p, const char *end, uint64_t *out) {
  while (p < end && *p == ' ')
    p++;
  if (p < end && *p == '{') {
    static const char key[] = "\"t\":";
    const char *k = p + 1;
    if ((size_t)(end - k) < sizeof key - 1 || memcmp(k, key, sizeof key - 1) != 0) {
      k = memmem(p, (size_t)(end - p), key, sizeof key - 1);
      if (!k)
        return false;
    }
    p = k + sizeof key - 1;
    while (p < end && *p == ' ')
      p++;
  }
  if (p >= end || *p < '0' || *p > '9')
    return false;
  uint64_t v = 0;
  while (p < end && *p >= '0' && *p <= '9')
    v = v * 10 + (uint64_t)(*p++ - '0');
  *out = v;
  return true;
}

/* Counts one received event for a subscriber and records its latency. */
static inline void sub_deliver(sub_t *s) {
  sse_t *e = &s->sse;
  s->got++;
  g.received++;
  g.t_last_recv = g.now;
  if (e->has_t)
    hist_add(&g.lat, g.now > e->t ? (g.now - e->t) / 1000 : 0);
  if (g.publish_done && !s->complete && s->got >= g.accepted[s->ch]) {
    s->complete = 1;
    g.complete_open++;
    check_finish();
  }
}

/* Handles one complete line of the event stream: a blank line ends an event,
 * a data line marks it as carrying data (and its first one a timestamp). */
static inline void sse_line(sub_t *s) {
  sse_t *e = &s->sse;
  uint32_t len = e->linetotal - (e->lastc == '\r' ? 1 : 0);
  if (len == 0) {
    if (e->has_data)
      sub_deliver(s);
    e->has_data = 0;
    e->has_t = 0;
  } else if (e->plen >= 5 && memcmp(e->pre, "data:", 5) == 0) {
    if (!e->has_data)
      e->has_t = parse_stamp(e->pre + 5, e->pre + e->plen, &e->t);
    e->has_data = 1;
  }
  e->linetotal = 0;
  e->plen = 0;
  e->lastc = 0;
}

/* Splits body bytes of a subscriber's stream into lines (keeping a short
 * prefix of each) and handles each complete one. */
static void sse_feed(void *ud, const char *p, size_t n) {
  sub_t *s = ud;
  sse_t *e = &s->sse;
  while (n) {
    const char *nl = memchr(p, '\n', n);
    size_t seg = nl ? (size_t)(nl - p) : n;
    if (seg) {
      if (e->plen < SSE_PREFIX) {
        size_t c = SSE_PREFIX - e->plen;
        if (c > seg)
          c = seg;
        memcpy(e->pre + e->plen, p, c);
        e->plen += (uint8_t)c;
      }
      e->lastc = (uint8_t)p[seg - 1];
      e->linetotal += (uint32_t)seg;
    }
    if (!nl)
      return;
    sse_line(s);
    p += seg + 1;
    n -= seg + 1;
  }
}

/* --------------------------------------------------------- subscribers */

static void sub_closed(uv_handle_t *h);
static void churn_end(sub_t *s, bool ok, int err);

/* What sub_send_request returns when the write request for the rest of a
 * request could not be allocated (libuv's errors are all negative). */
#define SEND_NO_MEMORY 1

/* Readies a subscriber slot for a new connection (fresh response parser,
 * start time) and makes its TCP handle, which with its connect request
 * points back at the slot. Returns 0, or the error of uv_tcp_init_ex: then
 * there is no handle to close. */
static int sub_open(sub_t *s) {
  s->state = S_CONNECTING;
  s->started = now_ns();
  s->complete = 0;
  resp_reset(&s->resp);
  int rc = uv_tcp_init_ex(g.loop, &s->tcp, AF_INET);
  if (rc < 0)
    return rc;
  s->tcp.data = s;
  s->creq.data = s;
  return 0;
}

/* Connects a slot's handle to the server, from source address src (mod
 * --sources) when several are configured, with on_connect to follow.
 * Returns 0, or the error: the caller then closes the handle. */
static int sub_connect(sub_t *s, uint64_t src, uv_connect_cb on_connect) {
  if (g.src) {
    uv_os_fd_t fd;
    if (uv_fileno((uv_handle_t *)&s->tcp, &fd) == 0) {
      int one = 1;
      setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
    }
    int rc = uv_tcp_bind(&s->tcp, (const struct sockaddr *)&g.src[src % g.cfg.sources], 0);
    if (rc < 0)
      return rc;
  }
  return uv_tcp_connect(&s->creq, &s->tcp, (const struct sockaddr *)&g.dst, on_connect);
}

/* Sends a connected slot the subscribe request of its channel and starts
 * reading with on_read. A fresh socket takes the request at once; in the
 * rare other case the rest goes out through a write request that
 * on_written frees. Returns 0, SEND_NO_MEMORY, or libuv's error. */
static int sub_send_request(sub_t *s, uv_write_cb on_written, uv_read_cb on_read) {
  uv_buf_t b = uv_buf_init(g.sub_req[s->ch], (unsigned)g.sub_req_len[s->ch]);
  int rc = uv_try_write((uv_stream_t *)&s->tcp, &b, 1);
  if (rc == UV_EAGAIN)
    rc = 0;
  if (rc < 0)
    return rc;
  if ((size_t)rc < b.len) {
    uv_write_t *w = malloc(sizeof *w);
    if (!w)
      return SEND_NO_MEMORY;
    w->data = s;
    b.base += rc;
    b.len -= (size_t)rc;
    rc = uv_write(w, (uv_stream_t *)&s->tcp, &b, 1, on_written);
    if (rc < 0) {
      free(w);
      return rc;
    }
  }
  return uv_read_start((uv_stream_t *)&s->tcp, alloc_cb, on_read);
}

/* Says whether a slot's response head is a 200; any other status counts as
 * an HTTP error and is kept as the last one. */
static bool sub_head_ok(const sub_t *s) {
  if (s->resp.status == 200)
    return true;
  g.sub_http_errors++;
  g.last_sub_status = s->resp.status;
  return false;
}

/* Closes a subscriber's connection; end says whether to retry it (while
 * attempts remain), or that it failed, or that the server ended it. */
static void sub_close(sub_t *s, int end, int err) {
  if (s->state == S_CONNECTING || s->state == S_HEAD)
    g.inflight--;
  else if (s->state == S_OPEN) {
    g.open--;
    if (s->complete)
      g.complete_open--;
  } else {
    return;
  }
  if (err)
    g.last_error = err;
  s->end = (uint8_t)end;
  s->state = S_CLOSING;
  uv_close((uv_handle_t *)&s->tcp, sub_closed);
}

/* Settles a subscriber once its handle is closed: a retry waits for its
 * turn, anything else is final. */
static void sub_closed(uv_handle_t *h) {
  sub_t *s = h->data;
  if (g.stopping) {
    s->state = S_FAILED;
    return;
  }
  if (s->end == END_RETRY && s->attempts < g.cfg.retries) {
    s->attempts++;
    g.connect_retries++;
    s->state = S_RETRY;
    s->retry_at = now_ns() + 100000000ull * s->attempts;
    g.retry_waiting++;
  } else {
    if (s->end == END_RETRY)
      g.connect_errors++;
    s->state = s->end == END_CLOSED ? S_CLOSED : S_FAILED;
    g.terminal++;
  }
  pump();
  check_phase();
  check_finish();
  if (g.cfg.mode == MODE_IDLE && g.cfg.until_closed && g.phase == PH_HOLD && !g.stopping &&
      g.terminal >= g.cfg.subs)
    stop("all closed");
}

/* Accepts or refuses a subscriber's response head: only 200 opens it. */
static int sub_on_head(void *ud) {
  sub_t *s = ud;
  if (!sub_head_ok(s))
    return -1;
  g.inflight--;
  g.open++;
  if (g.open > g.max_open)
    g.max_open = g.open;
  s->state = S_OPEN;
  pump();
  check_phase();
  return 0;
}

/* Counts how the server ended an open stream: an orderly close (EOF, or the
 * end of a chunked body), a reset or other error, and whether an event or a
 * line was cut short by it. */
static void sub_ended(sub_t *s, ssize_t how) {
  g.closed++;
  g.t_last_close = now_ns();
  if (how == UV_EOF)
    g.closed_eof++;
  else
    g.closed_reset++;
  if (s->sse.linetotal != 0 || s->sse.has_data)
    g.closed_partial++;
}

/* Reads a subscriber's response: its head, then events until it ends. */
static void sub_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf) {
  sub_t *s = st->data;
  (void)buf;
  if (nread == 0 || (s->state != S_HEAD && s->state != S_OPEN))
    return;
  if (nread < 0) {
    if (s->state == S_HEAD) {
      sub_close(s, END_RETRY, (int)nread);
    } else {
      sub_ended(s, nread);
      sub_close(s, END_CLOSED, nread == UV_EOF ? 0 : (int)nread);
    }
    return;
  }
  g.now = now_ns();
  g.bytes += (uint64_t)nread;
  g.reads++;
  ssize_t rc = resp_feed(&s->resp, rbuf, (size_t)nread, sub_on_head, sse_feed, s);
  if (rc == -1) {
    g.protocol_errors++;
    sub_close(s, END_FAILED, UV_EPROTO);
  } else if (rc == -2) {
    sub_close(s, END_FAILED, 0);
  } else if (s->resp.state == R_DONE && s->state == S_OPEN) {
    sub_ended(s, UV_EOF);
    sub_close(s, END_CLOSED, 0);
  }
}

/* Frees a subscriber's request write once it has left. */
static void sub_written(uv_write_t *req, int status) {
  sub_t *s = req->data;
  free(req);
  if (status < 0 && status != UV_ECANCELED && s->state == S_HEAD)
    sub_close(s, END_RETRY, status);
}

/* Sends a connected subscriber's request and starts reading. */
static void sub_connected(uv_connect_t *req, int status) {
  sub_t *s = req->data;
  if (s->state != S_CONNECTING)
    return;
  if (status < 0) {
    sub_close(s, END_RETRY, status);
    return;
  }
  s->state = S_HEAD;
  int rc = sub_send_request(s, sub_written, sub_read);
  if (rc == SEND_NO_MEMORY)
    sub_close(s, END_FAILED, UV_ENOMEM);
  else if (rc < 0)
    sub_close(s, END_RETRY, rc);
}

/* Starts one connection attempt of a subscriber, from its source address
 * when several are configured. */
static void sub_start(sub_t *s) {
  s->got = 0;
  sse_reset(&s->sse);
  g.inflight++;
  int rc = sub_open(s);
  if (rc < 0) {
    g.inflight--;
    g.last_error = rc;
    g.connect_errors++;
    s->state = S_FAILED;
    g.terminal++;
    return;
  }
  rc = sub_connect(s, s->idx, sub_connected);
  if (rc < 0)
    sub_close(s, END_RETRY, rc);
}

/* Starts new subscribers while fewer than --window are in flight. */
static void pump(void) {
  if (g.stopping)
    return;
  while (g.inflight < g.cfg.window && g.next_new < g.cfg.subs)
    sub_start(&g.subs[g.next_new++]);
}

/* Starts the retries that are due, within the window. */
static void pump_retries(uint64_t now) {
  for (uint32_t i = 0; i < g.cfg.subs && g.retry_waiting && g.inflight < g.cfg.window; i++) {
    sub_t *s = &g.subs[i];
    if (s->state == S_RETRY && s->retry_at <= now) {
      g.retry_waiting--;
      sub_start(s);
    }
  }
}

/* Ends the attempts that have waited longer than --connect-timeout: for a
 * connection or a response head, to be retried; in churn mode, for the
 * stream's first bytes too, failing the cycle. */
static void expire_connects(uint64_t now) {
  bool churn = g.cfg.mode == MODE_CHURN;
  uint64_t limit = (uint64_t)(g.cfg.connect_timeout * 1e9);
  for (uint32_t i = 0; i < g.cfg.subs && (churn || g.inflight); i++) {
    sub_t *s = &g.subs[i];
    bool waiting = s->state == S_CONNECTING || s->state == S_HEAD || (churn && s->state == S_OPEN);
    if (!waiting || now <= s->started + limit)
      continue;
    g.connect_timeouts++;
    if (churn)
      churn_end(s, false, UV_ETIMEDOUT);
    else
      sub_close(s, END_RETRY, UV_ETIMEDOUT);
  }
}

/* --------------------------------------------------------------- churn */

static void churn_start(sub_t *s);

/* Starts another cycle on a slot whose connection has closed, or retires
 * the slot once every cycle has started; stops the run after the last. */
static void churn_closed(uv_handle_t *h) {
  sub_t *s = h->data;
  g.churn_inflight--;
  s->state = S_CLOSED;
  if (g.stopping)
    return;
  if (g.cycles_started < g.cfg.cycles)
    churn_start(s);
  else if (g.churn_inflight == 0)
    stop("complete");
}

/* Ends a slot's cycle, counting it done or failed (with its error), and
 * closes its connection. */
static void churn_end(sub_t *s, bool ok, int err) {
  if (s->state != S_CONNECTING && s->state != S_HEAD && s->state != S_OPEN)
    return;
  if (ok) {
    g.cycles_done++;
  } else {
    g.cycles_failed++;
    if (err)
      g.last_error = err;
  }
  s->state = S_CLOSING;
  uv_close((uv_handle_t *)&s->tcp, churn_closed);
}

/* Accepts a churn response head: only 200 counts, and with --close-on head
 * the cycle is done here (-2 stops the reader). */
static int churn_on_head(void *ud) {
  sub_t *s = ud;
  if (!sub_head_ok(s))
    return -1;
  s->state = S_OPEN;
  if (g.cfg.close_on_head) {
    s->complete = 1;
    return -2;
  }
  return 0;
}

/* Marks a churn stream as open for good once its first body bytes arrive. */
static void churn_on_body(void *ud, const char *p, size_t n) {
  sub_t *s = ud;
  (void)p;
  if (n)
    s->complete = 1;
}

/* Reads a churn connection until its cycle is done, failed or cut short. */
static void churn_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf) {
  sub_t *s = st->data;
  (void)buf;
  if (nread == 0 || (s->state != S_HEAD && s->state != S_OPEN))
    return;
  if (nread < 0) { /* the server ended it before its first bytes */
    churn_end(s, false, (int)nread);
    return;
  }
  g.bytes += (uint64_t)nread;
  g.reads++;
  ssize_t rc = resp_feed(&s->resp, rbuf, (size_t)nread, churn_on_head, churn_on_body, s);
  if (rc == -1) {
    if (s->resp.status == 200)
      g.protocol_errors++;
    churn_end(s, false, s->resp.status == 200 ? UV_EPROTO : 0);
  } else if (s->complete) {
    churn_end(s, true, 0);
  } else if (rc == -2 || s->resp.state == R_DONE) {
    churn_end(s, false, 0);
  }
}

/* Frees the write request of a churn request that did not leave at once. */
static void churn_written(uv_write_t *req, int status) {
  sub_t *s = req->data;
  free(req);
  if (status < 0 && status != UV_ECANCELED)
    churn_end(s, false, status);
}

/* Sends a connected churn slot's subscribe request and starts reading. */
static void churn_connected(uv_connect_t *req, int status) {
  sub_t *s = req->data;
  if (s->state != S_CONNECTING)
    return;
  if (status < 0) {
    g.connect_errors++;
    churn_end(s, false, status);
    return;
  }
  s->state = S_HEAD;
  int rc = sub_send_request(s, churn_written, churn_read);
  if (rc != 0)
    churn_end(s, false, rc == SEND_NO_MEMORY ? UV_ENOMEM : rc);
}

/* Starts the next cycle on a slot: a new connection (from its source
 * address when several are configured) to the next channel. */
static void churn_start(sub_t *s) {
  uint64_t cycle = g.cycles_started++;
  s->ch = (uint32_t)(cycle % g.cfg.channels);
  g.churn_inflight++;
  int rc = sub_open(s);
  if (rc < 0) { /* no handle to close: the slot retires, the cycle failed */
    g.churn_inflight--;
    g.cycles_failed++;
    g.connect_errors++;
    g.last_error = rc;
    s->state = S_FAILED;
    if (g.churn_inflight == 0)
      stop("setup failed");
    return;
  }
  rc = sub_connect(s, cycle, churn_connected);
  if (rc < 0) {
    g.connect_errors++;
    churn_end(s, false, rc);
  }
}

/* ---------------------------------------------------------- publishers */

static void pub_closed(uv_handle_t *h);

/* Closes a publisher's connection, to reconnect (now when the server closed
 * it cleanly, later after an error) or to give up once retries are spent. */
static void pub_close(pub_t *p, int err) {
  if (p->state == P_CLOSING || p->state == P_DEAD || p->state == P_RETRY || p->state == P_NEW)
    return;
  if (p->state == P_BUSY) {
    g.pub_inflight--;
    if (!p->answered)
      g.pub_errors++;
  }
  if (err) {
    g.last_error = err;
    p->attempts++;
  }
  p->state = P_CLOSING;
  uv_close((uv_handle_t *)&p->tcp, pub_closed);
}

/* Reconnects a closed publisher or retires it. */
static void pub_closed(uv_handle_t *h) {
  pub_t *p = h->data;
  if (g.stopping) {
    p->state = P_DEAD;
    return;
  }
  if (p->attempts > g.cfg.retries) {
    p->state = P_DEAD;
    g.pubs_dead++;
    if (g.phase == PH_PUBS && g.pubs_ready + g.pubs_dead == g.cfg.pubs)
      check_phase();
    check_publish_done();
    return;
  }
  g.pub_reconnects++;
  if (p->attempts == 0) {
    pub_start(p);
  } else {
    p->state = P_RETRY;
    p->retry_at = now_ns() + 100000000ull * p->attempts;
  }
}

/* Puts an idle publisher to work: the next event at once without a rate,
 * else whatever the rate has made due. */
static void pub_idle(pub_t *p) {
  p->state = P_IDLE;
  if (g.phase != PH_PUBLISH || g.stopping)
    return;
  if (g.cfg.rate <= 0) {
    if (g.issued < g.cfg.events)
      pub_send(p);
  } else {
    uint64_t el = now_ns() - g.t_pub_start;
    uint64_t due = (uint64_t)(g.cfg.rate * (double)el / 1e9) + 1;
    if (g.issued < due && g.issued < g.cfg.events)
      pub_send(p);
  }
  check_publish_done();
}

/* Records the answer to a publisher's request and makes it idle again. */
static void pub_answered(pub_t *p) {
  uint64_t now = now_ns();
  p->answered = 1;
  g.pub_inflight--;
  hist_add(&g.rtt, (now - p->sent) / 1000);
  if (p->resp.status >= 200 && p->resp.status < 300) {
    g.accepted[p->ch]++;
    g.acked++;
    p->attempts = 0;
  } else {
    g.pub_http_errors++;
    g.last_pub_status = p->resp.status;
  }
  if (p->resp.close || p->writing) { /* an answer before the whole request left ends it */
    p->state = P_IDLE;
    pub_close(p, 0);
    check_publish_done();
    return;
  }
  pub_idle(p);
}

/* Reads a publisher's responses. */
static void pub_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf) {
  pub_t *p = st->data;
  (void)buf;
  if (nread == 0 || (p->state != P_BUSY && p->state != P_IDLE))
    return;
  if (nread < 0) {
    if (p->state == P_BUSY && p->resp.state == R_BODY_EOF) {
      p->resp.close = 1; /* the body ended with the connection: reconnect */
      pub_answered(p);
    }
    if (p->state == P_BUSY || p->state == P_IDLE)
      pub_close(p, nread == UV_EOF ? 0 : (int)nread);
    return;
  }
  if (p->state != P_BUSY) {
    g.protocol_errors++;
    pub_close(p, UV_EPROTO);
    return;
  }
  ssize_t rc = resp_feed(&p->resp, rbuf, (size_t)nread, NULL, NULL, p);
  if (rc < 0) {
    g.protocol_errors++;
    pub_close(p, UV_EPROTO);
  } else if (p->resp.state == R_DONE) {
    pub_answered(p);
  }
}

/* Handles the end of a publisher's write that did not leave at once. */
static void pub_written(uv_write_t *req, int status) {
  pub_t *p = req->data;
  p->writing = 0;
  if (status < 0 && status != UV_ECANCELED && p->state == P_BUSY)
    pub_close(p, status);
}

/* Writes the payload of an event into a publisher's body buffer, stamped
 * with the current monotonic time, and returns its length. */
static uint32_t pub_fill(pub_t *p, uint64_t t) {
  uint32_t size = g.cfg.size;
  int n;
  if (g.cfg.plain) {
    n = snprintf(p->body, 32, "%" PRIu64, t);
    uint32_t len = (uint32_t)n;
    if (len < size) {
      p->body[len] = ' ';
      memset(p->body + len + 1, 'x', size - len - 1);
      len = size;
    }
    return len;
  }
  n = snprintf(p->body, 48, "{\"t\":%" PRIu64 ",\"pad\":\"", t);
  uint32_t len = (uint32_t)n;
  uint32_t pad = size > len + 2 ? size - len - 2 : 0;
  memset(p->body + len, 'x', pad);
  len += pad;
  p->body[len++] = '"';
  p->body[len++] = '}';
  return len;
}

/* Sends the next event on an idle publisher. */
static void pub_send(pub_t *p) {
  uint64_t j = g.issued++;
  p->ch = (uint32_t)(j % g.cfg.channels);
  p->sent = now_ns();
  p->bodylen = pub_fill(p, p->sent);
  int n = snprintf(p->head, sizeof p->head, "%sContent-Length: %u\r\n\r\n", g.pub_prefix[p->ch],
                   p->bodylen);
  p->headlen = (uint32_t)n;
  p->state = P_BUSY;
  p->answered = 0;
  g.pub_inflight++;
  resp_reset(&p->resp);
  uv_buf_t b[2] = {uv_buf_init(p->head, p->headlen), uv_buf_init(p->body, p->bodylen)};
  int rc = uv_try_write((uv_stream_t *)&p->tcp, b, 2);
  if (rc == UV_EAGAIN)
    rc = 0;
  if (rc < 0) {
    pub_close(p, rc);
    return;
  }
  size_t sent = (size_t)rc;
  if (sent == (size_t)p->headlen + p->bodylen)
    return;
  uv_buf_t *first = b;
  unsigned nb = 2;
  if (sent >= b[0].len) {
    sent -= b[0].len;
    first = b + 1;
    nb = 1;
  }
  first->base += sent;
  first->len -= sent;
  p->wreq.data = p;
  rc = uv_write(&p->wreq, (uv_stream_t *)&p->tcp, first, nb, pub_written);
  if (rc < 0)
    pub_close(p, rc);
  else
    p->writing = 1;
}

/* Starts reading on a connected publisher and puts it to work. */
static void pub_connected(uv_connect_t *req, int status) {
  pub_t *p = req->data;
  if (p->state != P_CONNECTING)
    return;
  if (status < 0) {
    p->state = P_IDLE;
    pub_close(p, status);
    return;
  }
  int rc = uv_read_start((uv_stream_t *)&p->tcp, alloc_cb, pub_read);
  if (rc < 0) {
    p->state = P_IDLE;
    pub_close(p, rc);
    return;
  }
  if (!p->ever) {
    p->ever = 1;
    g.pubs_ready++;
  }
  pub_idle(p);
  if (g.phase == PH_PUBS)
    check_phase();
}

/* Opens a publisher's keep-alive connection. */
static void pub_start(pub_t *p) {
  p->state = P_CONNECTING;
  int rc = uv_tcp_init_ex(g.loop, &p->tcp, AF_INET);
  if (rc < 0) {
    g.last_error = rc;
    p->state = P_DEAD;
    g.pubs_dead++;
    return;
  }
  p->tcp.data = p;
  p->creq.data = p;
  uv_tcp_nodelay(&p->tcp, 1);
  rc = uv_tcp_connect(&p->creq, &p->tcp, (const struct sockaddr *)&g.pub_dst, pub_connected);
  if (rc < 0) {
    p->state = P_IDLE;
    pub_close(p, rc);
  }
}

/* Sends the events a fixed rate has made due on idle publishers. */
static void rate_dispatch(uv_timer_t *t) {
  (void)t;
  if (g.stopping || g.phase != PH_PUBLISH)
    return;
  uint64_t el = now_ns() - g.t_pub_start;
  uint64_t due = (uint64_t)(g.cfg.rate * (double)el / 1e9) + 1;
  if (due > g.cfg.events)
    due = g.cfg.events;
  for (uint32_t i = 0; i < g.cfg.pubs && g.issued < due; i++)
    if (g.pubs[i].state == P_IDLE)
      pub_send(&g.pubs[i]);
  if (g.issued >= g.cfg.events)
    uv_timer_stop(&g.rate);
}

/* Reconnects the publishers whose retry delay has passed. */
static void pub_retries(uint64_t now) {
  for (uint32_t i = 0; i < g.cfg.pubs; i++)
    if (g.pubs[i].state == P_RETRY && g.pubs[i].retry_at <= now)
      pub_start(&g.pubs[i]);
}

/* ---------------------------------------------------------- run phases */

/* Begins publishing once the subscribers have settled. */
static void start_publish(uv_timer_t *t) {
  (void)t;
  if (g.stopping)
    return;
  g.phase = PH_PUBLISH;
  g.t_pub_start = now_ns();
  getrusage(RUSAGE_SELF, &g.ru_start);
  if (g.cfg.rate > 0) {
    uint64_t every = (uint64_t)(1000.0 / g.cfg.rate);
    if (every < 1)
      every = 1;
    uv_timer_start(&g.rate, rate_dispatch, every, every);
    rate_dispatch(&g.rate);
  } else {
    for (uint32_t i = 0; i < g.cfg.pubs && g.issued < g.cfg.events; i++)
      if (g.pubs[i].state == P_IDLE)
        pub_send(&g.pubs[i]);
  }
  check_publish_done();
}

/* Marks every open subscriber that has all its channel's events complete. */
static void mark_complete(void) {
  for (uint32_t i = 0; i < g.cfg.subs; i++) {
    sub_t *s = &g.subs[i];
    if (s->state == S_OPEN && !s->complete && s->got >= g.accepted[s->ch]) {
      s->complete = 1;
      g.complete_open++;
    }
  }
}

/* Ends publishing once every event was answered, or every publisher gave up. */
static void check_publish_done(void) {
  if (g.publish_done || g.phase != PH_PUBLISH || g.pub_inflight)
    return;
  if (g.issued < g.cfg.events && g.pubs_dead < g.cfg.pubs)
    return;
  g.publish_done = true;
  g.t_pub_end = now_ns();
  uv_timer_stop(&g.rate);
  mark_complete();
  check_finish();
}

/* Stops a fan-out run when every subscriber is complete or gone. */
static void check_finish(void) {
  if (g.cfg.mode == MODE_IDLE || !g.publish_done || g.stopping)
    return;
  if (g.terminal + g.complete_open >= g.cfg.subs)
    stop("complete");
}

/* Ends a hold on a read from standard input that finds its end. */
static void stdin_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf) {
  (void)st;
  (void)buf;
  if (nread < 0)
    stop("stdin");
}

/* Ends a hold when its duration is over. */
static void hold_over(uv_timer_t *t) {
  (void)t;
  stop("duration");
}

/* Moves a run on once all subscribers have settled (open or failed): an
 * idle run prints READY and holds; a fan-out run connects its publishers,
 * and once they are connected waits --settle before publishing. */
static void check_phase(void) {
  if (g.stopping)
    return;
  if (g.phase == PH_SUBS) {
    if (g.next_new < g.cfg.subs || g.open + g.terminal < g.cfg.subs)
      return;
    g.t_ready = now_ns();
    if (g.cfg.mode == MODE_IDLE) {
      g.phase = PH_HOLD;
      printf("READY %u\n", g.open);
      fflush(stdout);
      if (!g.cfg.quiet)
        fprintf(stderr, "[%6.1fs] READY %u of %u subscribers open (%" PRIu64 " failed)\n",
                secs(g.t0, g.t_ready), g.open, g.cfg.subs, (uint64_t)g.terminal);
      if (g.open == 0 && g.cfg.subs > 0) {
        stop("no subscriber");
        return;
      }
      if (g.cfg.duration > 0)
        uv_timer_start(&g.hold, hold_over, (uint64_t)(g.cfg.duration * 1000), 0);
      if (uv_guess_handle(0) == UV_NAMED_PIPE && uv_pipe_init(g.loop, &g.in, 0) == 0) {
        if (uv_pipe_open(&g.in, 0) != 0 ||
            uv_read_start((uv_stream_t *)&g.in, alloc_cb, stdin_read) != 0)
          uv_close((uv_handle_t *)&g.in, NULL);
      }
      return;
    }
    if (g.open == 0) {
      stop("no subscriber");
      return;
    }
    g.phase = PH_PUBS;
    for (uint32_t i = 0; i < g.cfg.pubs; i++)
      pub_start(&g.pubs[i]);
  }
  if (g.phase == PH_PUBS && g.pubs_ready + g.pubs_dead >= g.cfg.pubs) {
    if (g.pubs_ready == 0) {
      stop("no publisher");
      return;
    }
    g.phase = PH_SETTLE;
    uv_timer_start(&g.settle, start_publish, (uint64_t)g.cfg.settle_ms, 0);
  }
}

/* Prints one progress line on stderr. */
static void progress(uint64_t now) {
  double t = secs(g.t0, now);
  if (g.cfg.mode == MODE_CHURN) {
    fprintf(stderr,
            "[%6.1fs] cycles %" PRIu64 "/%" PRIu64 " done, %" PRIu64 " failed, %u in flight\n", t,
            g.cycles_done, g.cfg.cycles, g.cycles_failed, g.churn_inflight);
    return;
  }
  if (g.cfg.mode == MODE_IDLE || g.phase == PH_SUBS) {
    fprintf(stderr,
            "[%6.1fs] subs open %u/%u, connecting %u, retrying %u, failed %u | retries %" PRIu64
            ", http errors %" PRIu64 ", closed %" PRIu64 "\n",
            t, g.open, g.cfg.subs, g.inflight, g.retry_waiting, g.terminal, g.connect_retries,
            g.sub_http_errors, g.closed);
    return;
  }
  fprintf(stderr,
          "[%6.1fs] subs open %u/%u | published %" PRIu64 "/%" PRIu64 " (+%" PRIu64
          "/s) | received %" PRIu64 " (+%" PRIu64 "/s) | errors conn %" PRIu64 " http %" PRIu64
          " proto %" PRIu64 " closed %" PRIu64 "\n",
          t, g.open, g.cfg.subs, g.acked, g.cfg.events, g.acked - g.prog_acked, g.received,
          g.received - g.prog_recv, g.connect_errors, g.sub_http_errors + g.pub_http_errors,
          g.protocol_errors, g.closed);
  g.prog_acked = g.acked;
  g.prog_recv = g.received;
}

/* Runs every 100 ms: retries, connect timeouts, the run's time limits and,
 * every second, a progress line. */
static void tick(uv_timer_t *t) {
  (void)t;
  if (g.stopping)
    return;
  uint64_t now = now_ns();
  if (secs(g.t0, now) >= g.cfg.timeout) {
    stop("timeout");
    return;
  }
  if (g.cfg.mode == MODE_CHURN) {
    expire_connects(now);
    if (++g.ticks % (1000 / TICK_MS) == 0 && !g.cfg.quiet && !g.stopping)
      progress(now);
    return;
  }
  if (g.retry_waiting)
    pump_retries(now);
  if (g.inflight)
    expire_connects(now);
  if (g.phase >= PH_PUBS && g.phase <= PH_PUBLISH)
    pub_retries(now);
  pump();
  check_phase();
  if (g.publish_done && !g.stopping) {
    uint64_t last = g.t_last_recv > g.t_pub_end ? g.t_last_recv : g.t_pub_end;
    if (secs(last, now) >= g.cfg.linger)
      stop("linger");
  }
  if (++g.ticks % (1000 / TICK_MS) == 0 && !g.cfg.quiet && !g.stopping)
    progress(now);
}

/* Stops a run on SIGINT, SIGTERM or SIGUSR1. */
static void on_signal(uv_signal_t *h, int signum) {
  (void)h;
  stop(signum == SIGUSR1 ? "SIGUSR1" : signum == SIGINT ? "SIGINT" : "SIGTERM");
}

/* Ends the run: the loop stops and the report follows. */
static void stop(const char *reason) {
  if (g.stopping)
    return;
  g.stopping = true;
  g.stop_reason = reason;
  g.t_stop = now_ns();
  getrusage(RUSAGE_SELF, &g.ru_stop);
  uv_stop(g.loop);
}

/* ------------------------------------------------------------- report */

/* What the subscribers' counts add up to at the end of a run. */
typedef struct {
  uint64_t expected, complete, extra;
} tally_t;

/* Counts expected deliveries, complete subscribers and extra events. */
static tally_t tally(void) {
  tally_t t = {0, 0, 0};
  for (uint32_t i = 0; i < g.cfg.subs; i++) {
    const sub_t *s = &g.subs[i];
    uint64_t want = g.accepted[s->ch];
    t.expected += want;
    bool ok = s->state == S_OPEN || s->state == S_CLOSED || s->state == S_CLOSING;
    if (ok && s->got >= want)
      t.complete++;
    if (s->got > want)
      t.extra += s->got - want;
  }
  return t;
}

/* Returns CPU seconds (user + system) between two resource snapshots. */
static double cpu_secs(const struct rusage *a, const struct rusage *b) {
  double ua = (double)a->ru_utime.tv_sec + (double)a->ru_utime.tv_usec / 1e6;
  double sa = (double)a->ru_stime.tv_sec + (double)a->ru_stime.tv_usec / 1e6;
  double ub = (double)b->ru_utime.tv_sec + (double)b->ru_utime.tv_usec / 1e6;
  double sb = (double)b->ru_stime.tv_sec + (double)b->ru_stime.tv_usec / 1e6;
  return (ub + sb) - (ua + sa);
}

/* Writes a histogram as a JSON object of microseconds. */
static void hist_json(const char *name, const hist_t *h) {
  if (h->count == 0) {
    printf("\"%s\":{\"count\":0,\"min\":null,\"mean\":null,\"p50\":null,\"p90\":null,"
           "\"p99\":null,\"p999\":null,\"max\":null}",
           name);
    return;
  }
  printf("\"%s\":{\"count\":%" PRIu64 ",\"min\":%" PRIu64 ",\"mean\":%.1f,\"p50\":%" PRIu64
         ",\"p90\":%" PRIu64 ",\"p99\":%" PRIu64 ",\"p999\":%" PRIu64 ",\"max\":%" PRIu64 "}",
         name, h->count, h->min, (double)h->sum / (double)h->count, hist_quantile(h, 0.5),
         hist_quantile(h, 0.9), hist_quantile(h, 0.99), hist_quantile(h, 0.999), h->max);
}

/* Writes a histogram as one line of milliseconds. */
static void hist_text(const char *name, const hist_t *h) {
  if (h->count == 0) {
    printf("%-14s none\n", name);
    return;
  }
  printf("%-14s p50 %.3f ms  p90 %.3f ms  p99 %.3f ms  p99.9 %.3f ms  max %.3f ms  "
         "(min %.3f, mean %.3f, n=%" PRIu64 ")\n",
         name, (double)hist_quantile(h, 0.5) / 1e3, (double)hist_quantile(h, 0.9) / 1e3,
         (double)hist_quantile(h, 0.99) / 1e3, (double)hist_quantile(h, 0.999) / 1e3,
         (double)h->max / 1e3, (double)h->min / 1e3, (double)h->sum / (double)h->count / 1e3,
         h->count);
}

/* Escapes a string for JSON output (paths only hold printable ASCII). */
static void json_str(const char *s) {
  putchar('"');
  for (; *s; s++) {
    if (*s == '"' || *s == '\\')
      putchar('\\');
    putchar(*s);
  }
  putchar('"');
}

/* Prints the summary of a churn run: text lines, or one JSON object. */
static void report_churn(double wall, const char *err) {
  const config_t *c = &g.cfg;
  double run = secs(g.t0, g.t_stop);
  double cps = run > 0 ? (double)g.cycles_done / run : 0;
  if (c->json) {
    printf("{\"mode\":\"churn\",\"host\":\"%s\",\"port\":%d,\"sub_path\":", c->host, c->port);
    json_str(c->sub_path);
    printf(",\"channels\":%u,\"window\":%u,\"sources\":%u,\"close_on\":\"%s\",", c->channels,
           c->subs, c->sources, c->close_on_head ? "head" : "body");
    printf("\"stopped_by\":\"%s\",\"wall_s\":%.6f,\"cycles_wanted\":%" PRIu64
           ",\"cycles\":%" PRIu64 ",\"cycles_started\":%" PRIu64 ",\"cycles_failed\":%" PRIu64
           ",\"cycles_per_s\":%.1f,",
           g.stop_reason, wall, c->cycles, g.cycles_done, g.cycles_started, g.cycles_failed, cps);
    printf("\"connect_errors\":%" PRIu64 ",\"connect_timeouts\":%" PRIu64
           ",\"sub_http_errors\":%" PRIu64 ",\"protocol_errors\":%" PRIu64
           ",\"last_error\":\"%s\",\"last_http_status\":%d,\"bytes_received\":%" PRIu64
           ",\"reads\":%" PRIu64 "}\n",
           g.connect_errors, g.connect_timeouts, g.sub_http_errors, g.protocol_errors, err,
           g.last_sub_status, g.bytes, g.reads);
    return;
  }
  printf("mode           churn\n");
  printf("target         %s:%d  sub %s  channels %u  sources %u\n", c->host, c->port, c->sub_path,
         c->channels, c->sources);
  printf("cycles         %" PRIu64 "/%" PRIu64 " done, %" PRIu64 " failed, in %.3f s = %.0f/s "
         "(window %u, close on %s)\n",
         g.cycles_done, c->cycles, g.cycles_failed, run, cps, c->subs,
         c->close_on_head ? "head" : "body");
  printf("errors         connect %" PRIu64 ", timeouts %" PRIu64 ", http %" PRIu64
         ", protocol %" PRIu64 "%s%s\n",
         g.connect_errors, g.connect_timeouts, g.sub_http_errors, g.protocol_errors,
         *err ? ", last error " : "", err);
  printf("stopped        %s after %.3f s\n", g.stop_reason, wall);
}

/* Prints the summary: text lines, or one JSON object with --json. */
static void report(void) {
  const config_t *c = &g.cfg;
  tally_t t = tally();
  double wall = secs(g.t0, g.t_stop);
  double connect = g.t_ready ? secs(g.t0, g.t_ready) : 0;
  bool fan = c->mode != MODE_IDLE;
  double deliver = fan && g.received ? secs(g.t_pub_start, g.t_last_recv) : 0;
  double publish =
      fan && g.t_pub_start ? secs(g.t_pub_start, g.publish_done ? g.t_pub_end : g.t_stop) : 0;
  double held = !fan && g.t_ready ? secs(g.t_ready, g.t_stop) : 0;
  double dps = deliver > 0 ? (double)g.received / deliver : 0;
  double pps = publish > 0 ? (double)g.acked / publish : 0;
  double cpu = g.t_pub_start ? cpu_secs(&g.ru_start, &g.ru_stop) : 0;
  double dpc = cpu > 0 ? (double)g.received / cpu : 0;
  uint32_t failed = 0;
  for (uint32_t i = 0; i < c->subs; i++)
    if (g.subs[i].state == S_FAILED || g.subs[i].state == S_NEW || g.subs[i].state == S_RETRY)
      failed++;
  const char *err = g.last_error ? uv_err_name(g.last_error) : "";
  if (c->mode == MODE_CHURN) {
    report_churn(wall, err);
    return;
  }
  if (c->json) {
    printf("{\"mode\":\"%s\",\"host\":\"%s\",\"port\":%d,\"pub_port\":%d,", c->mode_name, c->host,
           c->port, c->pub_port);
    printf("\"sub_path\":");
    json_str(c->sub_path);
    printf(",\"pub_path\":");
    json_str(c->pub_path);
    printf(",\"channels\":%u,\"subs\":%u,\"pubs\":%u,\"events\":%" PRIu64
           ",\"size\":%u,\"rate\":%.3f,\"sources\":%u,",
           c->channels, c->subs, fan ? c->pubs : 0, fan ? c->events : 0, c->size, fan ? c->rate : 0,
           c->sources);
    printf("\"stopped_by\":\"%s\",\"wall_s\":%.6f,\"connect_s\":%.6f,", g.stop_reason, wall,
           connect);
    printf("\"subs_open\":%u,\"subs_open_max\":%u,\"subs_failed\":%u,\"connect_errors\":%" PRIu64
           ",\"connect_retries\":%" PRIu64 ",\"connect_timeouts\":%" PRIu64
           ",\"sub_http_errors\":%" PRIu64 ",\"protocol_errors\":%" PRIu64 ",\"closed\":%" PRIu64
           ",\"last_error\":\"%s\",\"last_http_status\":%d,",
           g.open, g.max_open, failed, g.connect_errors, g.connect_retries, g.connect_timeouts,
           g.sub_http_errors, g.protocol_errors, g.closed, err,
           g.last_sub_status ? g.last_sub_status : g.last_pub_status);
    printf("\"closed_eof\":%" PRIu64 ",\"closed_reset\":%" PRIu64 ",\"closed_partial\":%" PRIu64
           ",\"last_close_s\":%.6f,",
           g.closed_eof, g.closed_reset, g.closed_partial,
           g.t_last_close ? secs(g.t0, g.t_last_close) : 0.0);
    printf("\"received\":%" PRIu64 ",\"bytes_received\":%" PRIu64 ",\"reads\":%" PRIu64 ",",
           g.received, g.bytes, g.reads);
    if (fan) {
      printf("\"published\":%" PRIu64 ",\"issued\":%" PRIu64 ",\"pub_http_errors\":%" PRIu64
             ",\"pub_errors\":%" PRIu64 ",\"pub_reconnects\":%" PRIu64 ",",
             g.acked, g.issued, g.pub_http_errors, g.pub_errors, g.pub_reconnects);
      printf("\"expected\":%" PRIu64 ",\"complete\":%" PRIu64 ",\"incomplete\":%" PRIu64
             ",\"extra\":%" PRIu64 ",",
             t.expected, t.complete, (uint64_t)c->subs - t.complete, t.extra);
      printf(
          "\"publish_s\":%.6f,\"publish_per_s\":%.1f,\"deliver_s\":%.6f,"
          "\"deliveries_per_s\":%.1f,\"client_cpu_s\":%.6f,\"deliveries_per_client_cpu_s\":%.1f,",
          publish, pps, deliver, dps, cpu, dpc);
      hist_json("latency_us", &g.lat);
      putchar(',');
      hist_json("publish_rtt_us", &g.rtt);
    } else {
      printf("\"ready\":%s,\"held_s\":%.6f", g.t_ready ? "true" : "false", held);
    }
    printf("}\n");
    return;
  }
  printf("mode           %s\n", c->mode_name);
  printf("target         %s:%d  sub %s", c->host, c->port, c->sub_path);
  if (fan && c->pub_port != c->port)
    printf("  pub :%d%s", c->pub_port, c->pub_path);
  else if (fan)
    printf("  pub %s", c->pub_path);
  printf("  channels %u  sources %u\n", c->channels, c->sources);
  printf("subscribers    %u open of %u (max %u), %u failed; connect errors %" PRIu64
         ", retries %" PRIu64 ", timeouts %" PRIu64 ", http errors %" PRIu64
         "%s%s; ready in %.3f s\n",
         g.open, c->subs, g.max_open, failed, g.connect_errors, g.connect_retries,
         g.connect_timeouts, g.sub_http_errors, *err ? ", last error " : "", err, connect);
  if (fan) {
    printf("publishers     %u; %" PRIu64 "/%" PRIu64 " events accepted (%" PRIu64
           " http errors, %" PRIu64 " failed, %" PRIu64 " reconnects) in %.3f s = %.0f/s\n",
           c->pubs, g.acked, c->events, g.pub_http_errors, g.pub_errors, g.pub_reconnects, publish,
           pps);
    printf("deliveries     %" PRIu64 "/%" PRIu64 " (complete %" PRIu64 ", incomplete %" PRIu64
           ", extra %" PRIu64 ") in %.3f s = %.0f/s\n",
           g.received, t.expected, t.complete, (uint64_t)c->subs - t.complete, t.extra, deliver,
           dps);
    hist_text("latency", &g.lat);
    hist_text("publish rtt", &g.rtt);
    printf("client         %.3f cpu-s from first publish = %.0f deliveries per client cpu-second; "
           "%" PRIu64 " reads, %.2f events per read\n",
           cpu, dpc, g.reads, g.reads ? (double)g.received / (double)g.reads : 0.0);
  } else {
    printf("held           %.3f s, %" PRIu64 " events and %" PRIu64 " bytes received\n", held,
           g.received, g.bytes);
  }
  printf("errors         protocol %" PRIu64 ", closed by server %" PRIu64 " (%" PRIu64
         " orderly, %" PRIu64 " reset, %" PRIu64 " mid-event)\n",
         g.protocol_errors, g.closed, g.closed_eof, g.closed_reset, g.closed_partial);
  printf("stopped        %s after %.3f s\n", g.stop_reason, wall);
}

/* ----------------------------------------------------------- options */

/* Prints the usage text. */
static void usage(FILE *f) {
  fputs(
      "usage: sluice-loadgen MODE [options]\n"
      "\n"
      "Load client for Server-Sent Events servers on 127.0.0.0/8.\n"
      "\n"
      "modes:\n"
      "  fanout    N subscribers stream GET SUB_PATH; M keep-alive publishers POST K\n"
      "            events stamped with their send time to PUB_PATH; waits until every\n"
      "            subscriber has every accepted event (or --linger, --timeout), then\n"
      "            reports deliveries/s and publish-to-receive latency\n"
      "  latency   the same as fanout (meant for runs with --rate)\n"
      "  idle      (or hold) opens N subscribers, prints \"READY n\" on stdout once all have\n"
      "            their response head (n = how many are open), holds them for\n"
      "            --duration, or until SIGINT, SIGTERM, SIGUSR1 or the end of a piped\n"
      "            stdin (or, with --until-closed, until the server has ended them all),\n"
      "            then reports, with how the server ended streams: closed_eof (an\n"
      "            orderly close), closed_reset (a reset or other error) and\n"
      "            closed_partial (an event or line cut short)\n"
      "  churn     --cycles times: connect, GET SUB_PATH, wait for the 200 head and the\n"
      "            first body bytes (--close-on head: the head only), close; --window\n"
      "            cycles in flight at a time; reports cycles/s and failed cycles (a\n"
      "            refused or reset connection, a status other than 200, a stream\n"
      "            ended before its first bytes, or --connect-timeout passed)\n"
      "\n"
      "options:\n"
      "  -H, --host ADDR          server address in 127.0.0.0/8 (default 127.0.0.1)\n"
      "  -p, --port PORT          server port (default 8080)\n"
      "      --pub-port PORT      port the publishers connect to (default: --port),\n"
      "                           e.g. another node sharing channels with the first\n"
      "      --sub-path PATH      subscriber path; %d becomes the channel index\n"
      "                           (default /sub?ch=bench%d)\n"
      "      --pub-path PATH      publisher path; %d as above\n"
      "                           (default /publish?ch=bench%d)\n"
      "  -c, --channels C         subscriber i (churn: cycle i) listens on channel i mod C;\n"
      "                           event j is published to channel j mod C (default 1)\n"
      "  -n, --subs N             subscribers (default 100)\n"
      "  -m, --pubs M             keep-alive publisher connections (default 1)\n"
      "  -k, --events K           events published in all (default 1000)\n"
      "  -s, --size BYTES         body size of each event (default 64)\n"
      "      --plain              body \"<t> xxx...\" instead of {\"t\":<t>,\"pad\":\"xxx...\"};\n"
      "                           <t> is CLOCK_MONOTONIC in ns\n"
      "  -r, --rate R             events/s over all publishers, spread evenly\n"
      "                           (default 0: each publisher sends its next event as\n"
      "                           soon as its previous one is answered)\n"
      "      --settle MS          wait between all subscribers open and the first\n"
      "                           publish (default 200)\n"
      "      --linger S           once publishing is over, stop after S seconds\n"
      "                           without an event (default 2)\n"
      "  -d, --duration S         idle: seconds to hold (default 0: until a signal,\n"
      "                           stdin's end or --timeout)\n"
      "  -t, --timeout S          hard limit on the whole run (default 120)\n"
      "      --until-closed       idle: stop once the server has ended every stream\n"
      "      --cycles N           churn: connect/subscribe/disconnect cycles (default 10000)\n"
      "      --close-on WHAT      churn: \"body\" (default) to close after the first body\n"
      "                           bytes, \"head\" to close after the response head\n"
      "      --sources S          bind subscribers to 127.0.0.1 .. 127.0.0.S in turn\n"
      "                           (default 1: no bind); lifts the ~28k port limit\n"
      "                           and speeds up connects beyond ~10k\n"
      "      --window W           connections in flight (connecting or awaiting their\n"
      "                           head) at most (default 500)\n"
      "      --retries R          retries of a refused, reset or timed-out connection\n"
      "                           (default 5; 100 ms more delay each time)\n"
      "      --connect-timeout S  limit on connect + response head (default 10)\n"
      "      --cpu N              pin this process to CPU N\n"
      "      --json               print the summary as one JSON object on stdout\n"
      "  -q, --quiet              no progress lines on stderr\n"
      "  -h, --help               print this help and exit\n"
      "\n"
      "Progress goes to stderr every second, the summary to stdout (with --json, one\n"
      "line: the last on stdout, after READY in idle mode).  Exit status:\n"
      "0 when every subscriber was complete (fanout), all N were held open to the\n"
      "end (idle; with --until-closed: all N opened and were then ended by the\n"
      "server) or every cycle was done (churn), 1 otherwise, 2 on a usage or setup\n"
      "error.\n",
      f);
}

/* Parses a number option within bounds or exits with a usage error. */
static double num_arg(const char *name, const char *v, double lo, double hi) {
  char *end;
  errno = 0;
  double d = strtod(v, &end);
  if (errno || end == v || *end || d < lo || d > hi) {
    fprintf(stderr, "sluice-loadgen: bad value for %s: %s\n", name, v);
    exit(2);
  }
  return d;
}

/* Substitutes the channel index for each %d of a path (%% for a percent
 * sign) and checks that the result is a plain request target. */
static int subst_path(const char *tmpl, uint32_t idx, char *out, size_t cap) {
  size_t o = 0;
  for (const char *p = tmpl; *p; p++) {
    char num[16];
    const char *ins = NULL;
    size_t n = 1;
    if (p[0] == '%' && p[1] == 'd') {
      snprintf(num, sizeof num, "%u", idx);
      ins = num;
      n = strlen(num);
      p++;
    } else if (p[0] == '%' && p[1] == '%') {
      ins = "%";
      p++;
    } else {
      if ((unsigned char)*p <= ' ' || *p == 127)
        return -1;
      ins = p;
    }
    if (o + n >= cap)
      return -1;
    memcpy(out + o, ins, n);
    o += n;
  }
  out[o] = '\0';
  return out[0] == '/' ? 0 : -1;
}

/* Reads the command line into g.cfg. */
static void parse_args(int argc, char **argv) {
  config_t *c = &g.cfg;
  *c = (config_t){.port = 8080,
                  .sub_path = "/sub?ch=bench%d",
                  .pub_path = "/publish?ch=bench%d",
                  .subs = 100,
                  .pubs = 1,
                  .channels = 1,
                  .size = 64,
                  .sources = 1,
                  .window = 500,
                  .retries = 5,
                  .events = 1000,
                  .cpu = -1,
                  .timeout = 120,
                  .linger = 2,
                  .settle_ms = 200,
                  .cycles = 10000,
                  .connect_timeout = 10};
  snprintf(c->host, sizeof c->host, "127.0.0.1");
  if (argc < 2 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0) {
    usage(argc < 2 ? stderr : stdout);
    exit(argc < 2 ? 2 : 0);
  }
  c->mode_name = argv[1];
  if (strcmp(argv[1], "fanout") == 0)
    c->mode = MODE_FANOUT;
  else if (strcmp(argv[1], "latency") == 0)
    c->mode = MODE_LATENCY;
  else if (strcmp(argv[1], "idle") == 0 || strcmp(argv[1], "hold") == 0) {
    c->mode = MODE_IDLE;
    c->mode_name = "idle";
  } else if (strcmp(argv[1], "churn") == 0) {
    c->mode = MODE_CHURN;
  } else {
    fprintf(stderr, "sluice-loadgen: unknown mode '%s' (fanout, latency, idle or churn)\n",
            argv[1]);
    exit(2);
  }
  enum {
    O_SUB = 256,
    O_PUB,
    O_PUB_PORT,
    O_PLAIN,
    O_SETTLE,
    O_LINGER,
    O_SOURCES,
    O_WINDOW,
    O_RETRIES,
    O_CTIMEOUT,
    O_CPU,
    O_JSON,
    O_UNTIL_CLOSED,
    O_CYCLES,
    O_CLOSE_ON
  };
  static const struct option opts[] = {{"host", required_argument, NULL, 'H'},
                                       {"port", required_argument, NULL, 'p'},
                                       {"sub-path", required_argument, NULL, O_SUB},
                                       {"pub-path", required_argument, NULL, O_PUB},
                                       {"pub-port", required_argument, NULL, O_PUB_PORT},
                                       {"channels", required_argument, NULL, 'c'},
                                       {"subs", required_argument, NULL, 'n'},
                                       {"pubs", required_argument, NULL, 'm'},
                                       {"events", required_argument, NULL, 'k'},
                                       {"size", required_argument, NULL, 's'},
                                       {"plain", no_argument, NULL, O_PLAIN},
                                       {"rate", required_argument, NULL, 'r'},
                                       {"settle", required_argument, NULL, O_SETTLE},
                                       {"linger", required_argument, NULL, O_LINGER},
                                       {"duration", required_argument, NULL, 'd'},
                                       {"timeout", required_argument, NULL, 't'},
                                       {"sources", required_argument, NULL, O_SOURCES},
                                       {"window", required_argument, NULL, O_WINDOW},
                                       {"retries", required_argument, NULL, O_RETRIES},
                                       {"connect-timeout", required_argument, NULL, O_CTIMEOUT},
                                       {"cpu", required_argument, NULL, O_CPU},
                                       {"json", no_argument, NULL, O_JSON},
                                       {"until-closed", no_argument, NULL, O_UNTIL_CLOSED},
                                       {"cycles", required_argument, NULL, O_CYCLES},
                                       {"close-on", required_argument, NULL, O_CLOSE_ON},
                                       {"quiet", no_argument, NULL, 'q'},
                                       {"help", no_argument, NULL, 'h'},
                                       {NULL, 0, NULL, 0}};
  optind = 2;
  int o;
  while ((o = getopt_long(argc, argv, "H:p:c:n:m:k:s:r:d:t:qh", opts, NULL)) != -1) {
    switch (o) {
    case 'H':
      snprintf(c->host, sizeof c->host, "%s",
               strcmp(optarg, "localhost") == 0 ? "127.0.0.1" : optarg);
      break;
    case 'p': c->port = (int)num_arg("--port", optarg, 1, 65535); break;
    case O_SUB: c->sub_path = optarg; break;
    case O_PUB: c->pub_path = optarg; break;
    case O_PUB_PORT: c->pub_port = (int)num_arg("--pub-port", optarg, 1, 65535); break;
    case 'c': c->channels = (uint32_t)num_arg("--channels", optarg, 1, 1000000); break;
    case 'n': c->subs = (uint32_t)num_arg("--subs", optarg, 0, 10000000); break;
    case 'm': c->pubs = (uint32_t)num_arg("--pubs", optarg, 1, 10000); break;
    case 'k': c->events = (uint64_t)num_arg("--events", optarg, 0, 4e9); break;
    case 's': c->size = (uint32_t)num_arg("--size", optarg, 0, 16 << 20); break;
    case O_PLAIN: c->plain = 1; break;
    case 'r': c->rate = num_arg("--rate", optarg, 0, 1e8); break;
    case O_SETTLE: c->settle_ms = num_arg("--settle", optarg, 0, 3.6e6); break;
    case O_LINGER: c->linger = num_arg("--linger", optarg, 0.1, 86400); break;
    case 'd': c->duration = num_arg("--duration", optarg, 0, 86400 * 7); break;
    case 't': c->timeout = num_arg("--timeout", optarg, 0.1, 86400 * 7); break;
    case O_SOURCES: c->sources = (uint32_t)num_arg("--sources", optarg, 1, 254); break;
    case O_WINDOW: c->window = (uint32_t)num_arg("--window", optarg, 1, 1000000); break;
    case O_RETRIES: c->retries = (uint32_t)num_arg("--retries", optarg, 0, 100); break;
    case O_CTIMEOUT: c->connect_timeout = num_arg("--connect-timeout", optarg, 0.1, 3600); break;
    case O_CPU: c->cpu = (int)num_arg("--cpu", optarg, 0, CPU_SETSIZE - 1); break;
    case O_JSON: c->json = 1; break;
    case O_UNTIL_CLOSED: c->until_closed = 1; break;
    case O_CYCLES: c->cycles = (uint64_t)num_arg("--cycles", optarg, 1, 1e12); break;
    case O_CLOSE_ON:
      if (strcmp(optarg, "head") != 0 && strcmp(optarg, "body") != 0) {
        fprintf(stderr, "sluice-loadgen: --close-on takes head or body: %s\n", optarg);
        exit(2);
      }
      c->close_on_head = strcmp(optarg, "head") == 0;
      break;
    case 'q': c->quiet = 1; break;
    case 'h': usage(stdout); exit(0);
    default: usage(stderr); exit(2);
    }
  }
  if (optind < argc) {
    fprintf(stderr, "sluice-loadgen: unexpected argument '%s'\n", argv[optind]);
    exit(2);
  }
  if (c->pub_port == 0)
    c->pub_port = c->port;
  if (c->channels > c->subs && c->subs > 0 && c->mode == MODE_IDLE)
    c->channels = c->subs;
  if (c->mode == MODE_CHURN) /* one slot per cycle in flight; slots are reused */
    c->subs = (uint32_t)(c->cycles < c->window ? c->cycles : c->window);
}

/* ---------------------------------------------------------------- setup */

/* Raises the descriptor limit to its hard limit and warns when the run
 * needs more descriptors than that. */
static void raise_nofile(void) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
    return;
  if (rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    getrlimit(RLIMIT_NOFILE, &rl);
  }
  g.nofile = (uint64_t)rl.rlim_cur;
  bool no_pubs = g.cfg.mode == MODE_IDLE || g.cfg.mode == MODE_CHURN;
  uint64_t need = (uint64_t)g.cfg.subs + (no_pubs ? 0 : g.cfg.pubs) + 16;
  if (need > g.nofile)
    fprintf(stderr,
            "sluice-loadgen: %" PRIu64 " connections need about %" PRIu64
            " descriptors but the limit is %" PRIu64 ": the rest will fail (EMFILE)\n",
            need - 16, need, g.nofile);
}

/* Pins the process to one CPU. */
static int pin_cpu(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  if (sched_setaffinity(0, sizeof set, &set) != 0) {
    fprintf(stderr, "sluice-loadgen: cannot pin to CPU %d: %s\n", cpu, strerror(errno));
    return -1;
  }
  return 0;
}

/* Resolves addresses and builds each channel's requests and every
 * connection's state. */
static int setup(void) {
  config_t *c = &g.cfg;
  if (uv_ip4_addr(c->host, c->port, &g.dst) != 0 || (ntohl(g.dst.sin_addr.s_addr) >> 24) != 127) {
    fprintf(stderr, "sluice-loadgen: --host must be an IPv4 address in 127.0.0.0/8: %s\n", c->host);
    return -1;
  }
  g.pub_dst = g.dst;
  g.pub_dst.sin_port = htons((uint16_t)c->pub_port);
  if (c->sources > 1) {
    g.src = calloc(c->sources, sizeof *g.src);
    if (!g.src)
      return -1;
    for (uint32_t i = 0; i < c->sources; i++) {
      char a[32];
      snprintf(a, sizeof a, "127.0.0.%u", i + 1);
      uv_ip4_addr(a, 0, &g.src[i]);
    }
  }
  g.sub_req = calloc(c->channels, sizeof *g.sub_req);
  g.sub_req_len = calloc(c->channels, sizeof *g.sub_req_len);
  g.pub_prefix = calloc(c->channels, sizeof *g.pub_prefix);
  g.accepted = calloc(c->channels, sizeof *g.accepted);
  g.subs = calloc(c->subs ? c->subs : 1, sizeof *g.subs);
  g.pubs = calloc(c->pubs, sizeof *g.pubs);
  if (!g.sub_req || !g.sub_req_len || !g.pub_prefix || !g.accepted || !g.subs || !g.pubs)
    return -1;
  for (uint32_t ch = 0; ch < c->channels; ch++) {
    char path[PATH_MAX_LEN], buf[PATH_MAX_LEN + 256];
    if (subst_path(c->sub_path, ch, path, sizeof path) != 0) {
      fprintf(stderr, "sluice-loadgen: bad --sub-path: %s\n", c->sub_path);
      return -1;
    }
    int n = snprintf(buf, sizeof buf,
                     "GET %s HTTP/1.1\r\nHost: %s:%d\r\nAccept: text/event-stream\r\n"
                     "Cache-Control: no-cache\r\nUser-Agent: sluice-loadgen\r\n\r\n",
                     path, c->host, c->port);
    g.sub_req[ch] = strdup(buf);
    g.sub_req_len[ch] = (size_t)n;
    if (subst_path(c->pub_path, ch, path, sizeof path) != 0) {
      fprintf(stderr, "sluice-loadgen: bad --pub-path: %s\n", c->pub_path);
      return -1;
    }
    snprintf(buf, sizeof buf,
             "POST %s HTTP/1.1\r\nHost: %s:%d\r\nUser-Agent: sluice-loadgen\r\n"
             "Content-Type: %s\r\n",
             path, c->host, c->pub_port, c->plain ? "text/plain" : "application/json");
    g.pub_prefix[ch] = strdup(buf);
    if (!g.sub_req[ch] || !g.pub_prefix[ch])
      return -1;
  }
  for (uint32_t i = 0; i < c->subs; i++) {
    g.subs[i].idx = i;
    g.subs[i].ch = i % c->channels;
  }
  for (uint32_t i = 0; i < c->pubs; i++) {
    g.pubs[i].body = malloc((size_t)c->size + 64);
    if (!g.pubs[i].body)
      return -1;
  }
  if (hist_init(&g.lat) != 0 || hist_init(&g.rtt) != 0)
    return -1;
  return 0;
}

/* Closes whatever handle is still open once the run is over. */
static void close_walk(uv_handle_t *h, void *arg) {
  (void)arg;
  if (!uv_is_closing(h))
    uv_close(h, NULL);
}

/* Frees everything setup() allocated. */
static void teardown(void) {
  for (uint32_t ch = 0; ch < g.cfg.channels; ch++) {
    if (g.sub_req)
      free(g.sub_req[ch]);
    if (g.pub_prefix)
      free(g.pub_prefix[ch]);
  }
  for (uint32_t i = 0; g.pubs && i < g.cfg.pubs; i++)
    free(g.pubs[i].body);
  free(g.sub_req);
  free(g.sub_req_len);
  free(g.pub_prefix);
  free(g.accepted);
  free(g.subs);
  free(g.pubs);
  free(g.src);
  free(g.lat.bucket);
  free(g.rtt.bucket);
}

/* Runs one load test and reports it. */
int main(int argc, char **argv) {
  parse_args(argc, argv);
  signal(SIGPIPE, SIG_IGN);
  if (g.cfg.cpu >= 0 && pin_cpu(g.cfg.cpu) != 0)
    return 2;
  raise_nofile();
  if (setup() != 0) {
    teardown();
    return 2;
  }
  g.loop = uv_default_loop();
  uv_timer_init(g.loop, &g.tick);
  uv_timer_init(g.loop, &g.settle);
  uv_timer_init(g.loop, &g.rate);
  uv_timer_init(g.loop, &g.hold);
  static const int sigs[] = {SIGINT, SIGTERM, SIGUSR1};
  for (int i = 0; i < 3; i++) {
    uv_signal_init(g.loop, &g.sig[i]);
    uv_signal_start(&g.sig[i], on_signal, sigs[i]);
  }
  if (!g.cfg.quiet && g.cfg.mode == MODE_CHURN) {
    const config_t *c = &g.cfg;
    fprintf(stderr, "sluice-loadgen: churn %s:%d, %" PRIu64 " cycles, %u in flight, nofile %" PRIu64
            "%s\n", c->host, c->port, c->cycles, c->subs, g.nofile, c->cpu >= 0 ? ", pinned" : "");
  } else if (!g.cfg.quiet) {
    const config_t *c = &g.cfg;
    fprintf(stderr, "sluice-loadgen: %s %s:%d, %u subscribers", c->mode_name, c->host, c->port,
            c->subs);
    if (c->mode != MODE_IDLE)
      fprintf(stderr, ", %u publishers (port %d), %" PRIu64 " events of %u bytes, rate %s",
              c->pubs, c->pub_port, c->events, c->size, c->rate > 0 ? "fixed" : "open");
    fprintf(stderr, ", %u channel(s), nofile %" PRIu64 "%s\n", c->channels, g.nofile,
            c->cpu >= 0 ? ", pinned" : "");
  }
  g.t0 = now_ns();
  g.phase = PH_SUBS;
  uv_timer_start(&g.tick, tick, TICK_MS, TICK_MS);
  if (g.cfg.mode == MODE_CHURN) {
    for (uint32_t i = 0; i < g.cfg.subs; i++)
      churn_start(&g.subs[i]);
  } else {
    pump();
    check_phase();
  }
  uv_run(g.loop, UV_RUN_DEFAULT);
  if (!g.stopping)
    stop("loop ended");
  report();
  fflush(stdout);
  tally_t t = tally();
  bool ok;
  if (g.cfg.mode == MODE_CHURN)
    ok = g.cycles_done == g.cfg.cycles;
  else if (g.cfg.mode == MODE_IDLE && g.cfg.until_closed)
    ok = g.t_ready && g.closed == g.cfg.subs;
  else if (g.cfg.mode == MODE_IDLE)
    ok = g.t_ready && g.open == g.cfg.subs;
  else
    ok = t.complete == g.cfg.subs && g.cfg.subs > 0;
  uv_walk(g.loop, close_walk, NULL);
  uv_run(g.loop, UV_RUN_DEFAULT);
  uv_loop_close(g.loop);
  teardown();
  return ok ? 0 : 1;
}
