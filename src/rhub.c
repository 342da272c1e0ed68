/* rhub.c - see rhub.h. */
#include "rhub.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include "buf.h"
#include "fanout.h"
#include "log.h"
#include "request.h"
#include "rpoll.h"
#include "sse_encode.h"
#include "worker.h"

#define SEQ_BITS 22
#define SEQ_MASK ((UINT64_C(1) << SEQ_BITS) - 1)
#define CONNECT_TIMEOUT_MS 3000
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 1000
#define DOWN_LOG_EVERY_MS 30000
/* A connection with commands (or subscriptions) waiting this long for an
 * answer is taken for lost (Redis hung, or the network went quiet). */
#define ANSWER_TIMEOUT_MS 5000
/* Reads of a readable Redis socket per loop turn, at most (hiredis reads
 * 16 KiB at a time). */
#define READS_PER_TURN 64
/* Live events a worker holds while its catch-up read is on its way. */
#define HELD_MAX 65536

/* Redis keys: one stream per channel, and the last id handed out. */
#define STREAM_PREFIX "sluice:s:"
#define LAST_KEY "sluice:last"

/* The functions every worker loads (FUNCTION LOAD REPLACE) on connecting.
 * Redis runs each atomically, so the id, the XADD and the PUBLISH of one
 * event happen together, in id order for every subscriber.  Their Lua is
 * Redis's (5.1): numbers are doubles, exact for millisecond clocks. */
static const char functions_src[] =
    "#!lua name=sluice_v1\n"
    "local function split(id)\n"
    "  local ms, seq = string.match(id, '^(%d+)-(%d+)$')\n"
    "  return tonumber(ms), tonumber(seq)\n"
    "end\n"
    "local function older(a, b)\n"
    "  local am, as = split(a)\n"
    "  local bm, bs = split(b)\n"
    "  return am < bm or (am == bm and as < bs)\n"
    "end\n"
    "local function now_ms()\n"
    "  local t = redis.call('TIME')\n"
    "  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "end\n"
    /* Ids increase across every channel: Redis's clock, but never at or
     * below the last id handed out (a clock that steps back, or several
     * events in one millisecond, count on in SEQ, which stays below 2^22). */
    "local function next_id(lastkey)\n"
    "  local ms, seq = now_ms(), 0\n"
    "  local last = redis.call('GET', lastkey)\n"
    "  if last then\n"
    "    local lms, lseq = split(last)\n"
    "    if ms <= lms then\n"
    "      ms, seq = lms, lseq + 1\n"
    "      if seq >= 4194304 then ms, seq = ms + 1, 0 end\n"
    "    end\n"
    "  end\n"
    "  return string.format('%.0f-%d', ms, seq)\n"
    "end\n"
    /* KEYS: stream, last id.  ARGV: history, ttl ms, notification
     * channel, id offset, event bytes.  Returns the id. */
    "redis.register_function('sluice_v1_publish', function(keys, args)\n"
    "  local id = next_id(keys[2])\n"
    "  local history = tonumber(args[1])\n"
    "  if history > 0 then\n"
    "    redis.call('XADD', keys[1], 'MAXLEN', '~', history, id, 'at', args[4], 'sse', args[5])\n"
    "  else\n"
    "    redis.call('XADD', keys[1], 'MAXLEN', 0, id, 'at', args[4], 'sse', args[5])\n"
    "  end\n"
    "  redis.call('SET', keys[2], id)\n"
    "  local ttl = tonumber(args[2])\n"
    "  if ttl > 0 then redis.call('PEXPIRE', keys[1], ttl) end\n"
    "  redis.call('PUBLISH', args[3], id .. ' ' .. args[4] .. ' ' .. args[5])\n"
    "  return id\n"
    "end)\n"
    /* KEYS: last id, then streams.  ARGV: ttl ms, count (0: all), then a
     * since id per stream ('' for all).  Returns { last id or '',
     * { gap, id, offset, bytes, ... } per stream }; gap is 1 when an
     * event after the stream's since may have been trimmed or expired.  Redis does not say
     * which ids MAXLEN trimmed, only the oldest one left: a since older
     * than that in a trimmed stream counts as a gap, so a client whose
     * last event falls between the newest trimmed one and the oldest kept
     * is told of a gap that did not happen (a needless refetch), and a
     * real one is never hidden. */
    "redis.register_function{function_name = 'sluice_v1_read', flags = { 'no-writes' },\n"
    "  callback = function(keys, args)\n"
    "  local ttl, count = tonumber(args[1]), tonumber(args[2])\n"
    "  local cutoff = ttl > 0 and now_ms() - ttl or nil\n"
    "  local out = { redis.call('GET', keys[1]) or '' }\n"
    "  for i = 2, #keys do\n"
    "    local since = args[i + 1]\n"
    "    local from = since == '' and '-' or '(' .. since\n"
    "    local range\n"
    "    if count > 0 then range = redis.call('XRANGE', keys[i], from, '+', 'COUNT', count)\n"
    "    else range = redis.call('XRANGE', keys[i], from, '+') end\n"
    "    local flat = { 0 }\n"
    "    for _, e in ipairs(range) do\n"
    "      if cutoff and split(e[1]) <= cutoff then\n"
    "        if since ~= '' then flat[1] = 1 end\n"
    "      else\n"
    "        flat[#flat + 1] = e[1]; flat[#flat + 1] = e[2][2]; flat[#flat + 1] = e[2][4]\n"
    "      end\n"
    "    end\n"
    "    if since ~= '' then\n"
    "      if redis.call('EXISTS', keys[i]) == 1 then\n"
    "        local info, f = redis.call('XINFO', 'STREAM', keys[i]), {}\n"
    "        for j = 1, #info, 2 do f[info[j]] = info[j + 1] end\n"
    "        if older(since, f['max-deleted-entry-id']) or\n"
    "           (f['entries-added'] > f['length'] and older(since, f['recorded-first-entry-id'])) then\n"
    "          flat[1] = 1\n"
    "        end\n"
    "      elseif cutoff and split(since) <= cutoff then\n"
    "        flat[1] = 1\n"
    "      end\n"
    "    end\n"
    "    out[#out + 1] = flat\n"
    "  end\n"
    "  return out\n"
    "end}\n";

/* The states of one connection to Redis. */
enum link_state {
  LINK_DOWN,       /* no connection; the timer makes the next attempt */
  LINK_CONNECTING, /* connecting or setting up (commands queue meanwhile) */
  LINK_UP,         /* its set-up answered */
  LINK_FAILING,    /* lost: the timer tears it down from a clean stack */
  LINK_CLOSED      /* rhub_close: for good */
};

/* One of a worker's two connections to Redis, each with a life of its
 * own: a lost pub/sub connection pauses delivery (then catches up), not
 * publishing; a lost command connection fails publishes and reads, not
 * delivery. */
typedef struct rconn {
  rhub_t *rh;
  const char *role;        /* "cmd" or "sub" */
  redisAsyncContext *ac;   /* NULL while down; its data points here */
  enum link_state state;
  uv_timer_t timer;        /* connect timeout, teardown, back-off */
  uint64_t backoff_ms;
  uint64_t down_since;     /* loop ms when it was lost; 0 while up */
  uint64_t down_logged;    /* loop ms of the last "still down" line */
  char reason[256];        /* why it went down */
  unsigned waiting;        /* commands (SUBSCRIBEs) sent and not answered */
  uint64_t last_answer;    /* loop ms of the last answer, or of the send
                              that made waiting non-zero */
} rconn_t;

/* One worker's subscription, on its pub/sub connection, to a channel's
 * notifications: it exists while the channel has subscribers on this
 * worker (or its UNSUBSCRIBE is not confirmed yet), holding a channel
 * reference, and is what hiredis hands to on_sub_reply. */
typedef struct rchan {
  rhub_t *rh;
  hub_channel_t *ch;
  uint64_t last_id;        /* newest event delivered here from this channel */
  uint64_t base;           /* watermark of its first replay: catch-up from here at least */
  enum { RC_IDLE, RC_SUBSCRIBING, RC_LIVE, RC_UNSUBSCRIBING } state;
  unsigned resubscribe : 1; /* subscribers came back while unsubscribing */
  unsigned in_catchup : 1;  /* its confirmation is awaited by the catch-up */
  unsigned synced : 1;      /* a read covering it completed since it was
                               subscribed: last_id and base mean something */
  unsigned waiters;         /* subscribe operations waiting for it to be live */
  list_node_t node;         /* on rh->chans */
} rchan_t;

enum op_kind { OP_PUBLISH, OP_SUBSCRIBE, OP_HISTORY, OP_CATCHUP };

struct rhub_op {
  rhub_t *rh;
  enum op_kind kind;
  rhub_done_fn done;       /* NULL once cancelled */
  void *ud;
  list_node_t node;        /* on rh->waiting or rh->ended */
  struct req *r;           /* subscribe: the stream, NULL once it left */
  int n;
  hub_channel_t **chs;     /* subscribe, catch-up: references of its own */
  unsigned char *live;     /* subscribe: which of chs are followed live */
  uint64_t *since;         /* per channel; NULL: no replay */
  char *name;              /* history: the channel */
  size_t name_len;
  size_t limit;
  unsigned unlive;         /* subscribe: channels not live yet */
  hub_msg_t *held;         /* subscribe: live events waiting for the replay */
  size_t nheld, capheld;
  unsigned gen;            /* catch-up: rh->catchup_gen when it was sent */
  unsigned history_since : 1; /* history: since was given */
};

struct rhub {
  worker_t *w;
  rhub_config_t cfg;
  /* A connection is up once its set-up is answered: Redis took the
   * functions (cmd), confirmed the anchor subscription (sub).  A
   * connection alone may still be refused its commands (a password, an
   * old Redis). */
  rconn_t cmd, sub;
  int up;                  /* both are: the link is up */
  int ever_up;
  uint64_t down_since;     /* loop ms when the link went down; 0 while up */
  uv_timer_t defer;        /* ends abandoned operations on a clean stack */
  int open_handles;        /* of the three timers: rh is freed when all closed */
  char notify_prefix[32];  /* "sluice:DB:n:": pub/sub is not per database */
  list_node_t chans;       /* every rchan */
  list_node_t waiting;     /* subscribe operations waiting for confirmations */
  list_node_t ended;       /* operations to end on the next loop turn */
  unsigned resub_pending;  /* catch-up: confirmations still to come */
  int catching_up;         /* live events wait in held for the catch-up read */
  int catchup_wanted;      /* the read waits for the command connection */
  unsigned catchup_gen;    /* counts pub/sub connections: a catch-up read
                              answered after its connection was lost is stale */
  hub_msg_t *held;         /* with a channel reference each */
  size_t nheld, capheld;
};

static void send_catchup(rhub_t *rh);
static void rchan_free(rchan_t *rc);
static void conn_ready(rconn_t *c);
static void conn_lost(rconn_t *c, const char *why);
static void conn_sent(rconn_t *c);
static void conn_answered(rconn_t *c);

/* ---------------------------------------------------------------- ids */

int rhub_format_id(uint64_t id, char *buf) {
  return snprintf(buf, 32, "%llu-%llu", (unsigned long long)(id >> SEQ_BITS),
                  (unsigned long long)(id & SEQ_MASK));
}

/* Reads the digits of s[0..n) as a number below limit: 1, or 0. */
static int parse_num(const char *s, size_t n, uint64_t limit, uint64_t *out) {
  if (n == 0 || n > 19) return 0;
  uint64_t v = 0;
  for (size_t i = 0; i < n; i++) {
    if (s[i] < '0' || s[i] > '9') return 0;
    v = v * 10 + (uint64_t)(s[i] - '0');
  }
  if (v >= limit) return 0;
  *out = v;
  return 1;
}

int rhub_parse_id(const char *s, size_t n, uint64_t *id) {
  const char *dash = memchr(s, '-', n);
  uint64_t ms, seq;
  if (dash == NULL) {
    /* "MS" alone is "MS-0", as Redis reads it: "0" is older than every id
     * (pages that start with no history resume from it). */
    if (!parse_num(s, n, UINT64_C(1) << (64 - SEQ_BITS), &ms)) return 0;
    *id = ms << SEQ_BITS;
    return 1;
  }
  if (!parse_num(s, (size_t)(dash - s), UINT64_C(1) << (64 - SEQ_BITS), &ms) ||
      !parse_num(dash + 1, n - (size_t)(dash - s) - 1, UINT64_C(1) << SEQ_BITS, &seq))
    return 0;
  *id = ms << SEQ_BITS | seq;
  return 1;
}

int rhub_local_channel(const char *name, size_t len) {
  return len >= 8 && memcmp(name, "_sluice.", 8) == 0;
}

int rhub_parse_url(const char *url, rhub_config_t *cfg, char *err, size_t errlen) {
  memset(cfg, 0, sizeof(*cfg));
  cfg->port = 6379;
  const char *p = url;
  if (strncmp(p, "redis://", 8) != 0) {
    snprintf(err, errlen, "'%s' is not a redis:// URL (redis://HOST[:PORT][/DB])", url);
    return -EINVAL;
  }
  p += 8;
  const char *at = strrchr(p, '@');
  if (at != NULL) {
    const char *colon = memchr(p, ':', (size_t)(at - p));
    const char *pw = colon ? colon + 1 : p; /* redis://:PASSWORD@ or redis://PASSWORD@ */
    size_t n = (size_t)(at - pw);
    if (n >= sizeof(cfg->password)) {
      snprintf(err, errlen, "the password in the Redis URL is too long");
      return -EINVAL;
    }
    memcpy(cfg->password, pw, n);
    p = at + 1;
  }
  size_t hl = strcspn(p, ":/");
  if (hl == 0 || hl >= sizeof(cfg->host)) {
    snprintf(err, errlen, "no host in the Redis URL '%s'", url);
    return -EINVAL;
  }
  memcpy(cfg->host, p, hl);
  p += hl;
  if (*p == ':') {
    char *end;
    long port = strtol(p + 1, &end, 10);
    if (end == p + 1 || port < 1 || port > 65535 || (*end != '\0' && *end != '/')) {
      snprintf(err, errlen, "bad port in the Redis URL '%s'", url);
      return -EINVAL;
    }
    cfg->port = (int)port;
    p = end;
  }
  if (*p == '/' && p[1] != '\0') {
    char *end;
    long db = strtol(p + 1, &end, 10);
    if (end == p + 1 || *end != '\0' || db < 0 || db > 1000000) {
      snprintf(err, errlen, "bad database number in the Redis URL '%s'", url);
      return -EINVAL;
    }
    cfg->db = (int)db;
  } else if (*p != '\0' && strcmp(p, "/") != 0) {
    snprintf(err, errlen, "cannot read the Redis URL '%s'", url);
    return -EINVAL;
  }
  return 0;
}

/* ------------------------------------------------------------ commands */

/* A command's arguments, built in one arena (offsets until it is sent,
 * as the arena may move while it grows). */
typedef struct cmd {
  buf_t arena;
  size_t off[64], len[64];
  size_t *offs, *lens;     /* off/len, or heap arrays past 64 arguments */
  int argc, cap;
  int failed;
} cmd_t;

static void cmd_init(cmd_t *c) {
  memset(c, 0, sizeof(*c));
  c->offs = c->off;
  c->lens = c->len;
  c->cap = 64;
}

static void cmd_free(cmd_t *c) {
  buf_free(&c->arena);
  if (c->offs != c->off) {
    free(c->offs);
    free(c->lens);
  }
}

/* Appends an argument made of a prefix and n bytes. */
static void cmd_add2(cmd_t *c, const char *prefix, const void *p, size_t n) {
  if (c->failed) return;
  if (c->argc == c->cap) {
    int cap = c->cap * 2;
    size_t *o = malloc((size_t)cap * sizeof(*o)), *l = malloc((size_t)cap * sizeof(*l));
    if (o == NULL || l == NULL) {
      free(o);
      free(l);
      c->failed = 1;
      return;
    }
    memcpy(o, c->offs, (size_t)c->argc * sizeof(*o));
    memcpy(l, c->lens, (size_t)c->argc * sizeof(*l));
    if (c->offs != c->off) {
      free(c->offs);
      free(c->lens);
    }
    c->offs = o;
    c->lens = l;
    c->cap = cap;
  }
  size_t start = c->arena.len;
  if (buf_puts(&c->arena, prefix) != 0 || buf_append(&c->arena, p, n) != 0) {
    c->failed = 1;
    return;
  }
  c->offs[c->argc] = start;
  c->lens[c->argc] = c->arena.len - start;
  c->argc++;
}

static void cmd_add(cmd_t *c, const char *s) { cmd_add2(c, "", s, strlen(s)); }

static void cmd_addu(cmd_t *c, unsigned long long v) {
  char num[24];
  int n = snprintf(num, sizeof(num), "%llu", v);
  cmd_add2(c, "", num, (size_t)n);
}

/* Sends the command on ac and frees it: REDIS_OK, or REDIS_ERR when it
 * could not be built or the connection takes no more commands (then fn is
 * never called). */
static int cmd_send(cmd_t *c, redisAsyncContext *ac, redisCallbackFn *fn, void *pd) {
  int rc = REDIS_ERR;
  const char *argv[64];
  const char **av = argv;
  if (!c->failed && ac != NULL && (c->argc <= 64 || (av = malloc((size_t)c->argc * sizeof(*av))) != NULL)) {
    for (int i = 0; i < c->argc; i++) av[i] = c->arena.p + c->offs[i];
    rc = redisAsyncCommandArgv(ac, fn, pd, c->argc, av, c->lens);
    if (av != argv) free(av);
  }
  cmd_free(c);
  return rc;
}

/* ---------------------------------------------------------- operations */

static rhub_op_t *op_new(rhub_t *rh, enum op_kind kind, rhub_done_fn done, void *ud) {
  rhub_op_t *op = calloc(1, sizeof(*op));
  if (op == NULL) return NULL;
  op->rh = rh;
  op->kind = kind;
  op->done = done;
  op->ud = ud;
  list_init(&op->node);
  return op;
}

static void msgs_unref(hub_msg_t *m, size_t n) {
  for (size_t i = 0; i < n; i++) frame_unref(m[i].frame);
}

/* Appends a message to a growable array: 0, or -ENOMEM. */
static int msgs_push(hub_msg_t **v, size_t *n, size_t *cap, hub_msg_t m) {
  if (*n == *cap) {
    size_t c = *cap ? *cap * 2 : 16;
    hub_msg_t *nv = realloc(*v, c * sizeof(*nv));
    if (nv == NULL) return -ENOMEM;
    *v = nv;
    *cap = c;
  }
  (*v)[(*n)++] = m;
  return 0;
}

static void op_free(rhub_op_t *op) {
  hub_t *hub = op->rh->w->srv->hub;
  list_remove(&op->node);
  for (int i = 0; i < op->n; i++) hub_channel_release(hub, op->chs[i]);
  msgs_unref(op->held, op->nheld);
  free(op->held);
  free(op->chs);
  free(op->live);
  free(op->since);
  free(op->name);
  free(op);
}

/* Ends op: its callback (unless cancelled), then its memory. */
static void op_end(rhub_op_t *op, int status, const rhub_result_t *res) {
  rhub_done_fn done = op->done;
  op->done = NULL;
  if (done != NULL) done(op->ud, status, res);
  op_free(op);
}

static void op_fail(rhub_op_t *op, int status, const char *why) {
  rhub_result_t res = {.err = why};
  op_end(op, status, &res);
}

void rhub_cancel(rhub_op_t *op) { op->done = NULL; }

void rhub_hold(rhub_op_t *op, hub_channel_t *ch, uint64_t id, frame_t *f) {
  /* Out of memory, the event is lost to this stream alone; its client
   * gets it on its next replay. */
  if (msgs_push(&op->held, &op->nheld, &op->capheld, (hub_msg_t){ch, id, f}) == 0) frame_ref(f);
}

/* Unties a subscribe operation from its stream's subscriptions, which are
 * going or staying live without it. */
static void op_detach_subs(rhub_op_t *op) {
  if (op->r == NULL) return;
  for (list_node_t *p = op->r->subs.next; p != &op->r->subs; p = p->next) {
    sub_t *s = list_entry(p, sub_t, rnode);
    if (s->pending == op) s->pending = NULL;
  }
  op->r = NULL;
}

/* Removes a failed subscribe's subscriptions from its stream. */
static void op_unsubscribe(rhub_op_t *op) {
  struct req *r = op->r;
  if (r == NULL) return;
  op->r = NULL;
  list_node_t *p = r->subs.next;
  while (p != &r->subs) {
    sub_t *s = list_entry(p, sub_t, rnode);
    p = p->next;
    if (s->pending != op) continue;
    s->pending = NULL;
    fanout_remove(s); /* may unsubscribe its channel; never frees op */
  }
}

/* Stops a waiting subscribe from counting on its channels' confirmations. */
static void op_stop_waiting(rhub_op_t *op) {
  int w = op->rh->w->idx;
  for (int i = 0; i < op->n; i++) {
    rchan_t *rc = op->chs[i]->local[w].rc;
    if (!op->live[i] && rc != NULL && rc->waiters > 0) rc->waiters--;
  }
  list_remove(&op->node);
}

static void on_defer(uv_timer_t *t) {
  rhub_t *rh = t->data;
  while (!list_empty(&rh->ended)) {
    rhub_op_t *op = list_entry(rh->ended.next, rhub_op_t, node);
    list_remove(&op->node);
    op_fail(op, UV_EPIPE, "closed");
  }
}

/* ---------------------------------------------------------------- frames */

/* Delivers an event of rc's channel unless this worker has delivered it
 * (or a later one) already. */
static void deliver(rchan_t *rc, uint64_t id, frame_t *f) {
  if (id <= rc->last_id) return;
  rc->last_id = id;
  fanout_deliver(rc->rh->w, rc->ch, id, f);
}

/* A notification: "ID OFFSET BYTES". */
static void on_message(rchan_t *rc, const char *s, size_t n) {
  rhub_t *rh = rc->rh;
  STAT_ADD(rh->w, redis_received, 1);
  rh->sub.last_answer = worker_now(rh->w); /* alive: confirmations may queue behind */
  const char *sp1 = memchr(s, ' ', n);
  const char *sp2 = sp1 ? memchr(sp1 + 1, ' ', n - (size_t)(sp1 + 1 - s)) : NULL;
  uint64_t id, at;
  if (sp2 == NULL || !rhub_parse_id(s, (size_t)(sp1 - s), &id) ||
      !parse_num(sp1 + 1, (size_t)(sp2 - sp1 - 1), UINT64_MAX, &at)) {
    log_warn("redis: unreadable notification on channel '%s' ignored", rc->ch->name);
    return;
  }
  const char *body = sp2 + 1;
  frame_t *f = sse_encode_with_id(body, n - (size_t)(body - s), at, s, (size_t)(sp1 - s));
  if (f == NULL) {
    log_warn("redis: event %.*s of channel '%s' dropped (bad offset or no memory)",
             (int)(sp1 - s), s, rc->ch->name);
    return;
  }
  if (rh->catching_up) {
    /* The catch-up read may or may not hold it: decide once it is in.
     * Should the read keep waiting (no command connection) while events
     * pour in, the pub/sub connection starts over instead of holding
     * them without bound. */
    if (rh->nheld >= HELD_MAX) {
      frame_unref(f);
      conn_lost(&rh->sub, "too many events waiting for the catch-up read");
      return;
    }
    if (msgs_push(&rh->held, &rh->nheld, &rh->capheld, (hub_msg_t){rc->ch, id, f}) == 0) {
      hub_channel_retain(rh->w->srv->hub, rc->ch);
      return;
    }
  } else {
    deliver(rc, id, f);
  }
  frame_unref(f);
}

/* ----------------------------------------------------------- channels */

/* The notification channel of ch: "sluice:DB:n:NAME". */
static void cmd_add_notify(cmd_t *c, rhub_t *rh, const hub_channel_t *ch) {
  cmd_add2(c, rh->notify_prefix, ch->name, ch->name_len);
}

static void on_sub_reply(redisAsyncContext *ac, void *reply, void *privdata);

static void rchan_send_subscribe(rchan_t *rc) {
  cmd_t c;
  cmd_init(&c);
  cmd_add(&c, "SUBSCRIBE");
  cmd_add_notify(&c, rc->rh, rc->ch);
  /* Refused only while the connection is going down; the channel is
   * subscribed again on the next one. */
  if (cmd_send(&c, rc->rh->sub.ac, on_sub_reply, rc) == REDIS_OK) {
    rc->state = RC_SUBSCRIBING;
    conn_sent(&rc->rh->sub);
  }
}

/* The worker's subscription to ch, made (and its SUBSCRIBE sent) when
 * there is none.  NULL when out of memory. */
static rchan_t *rchan_follow(rhub_t *rh, hub_channel_t *ch) {
  hub_local_t *loc = &ch->local[rh->w->idx];
  rchan_t *rc = loc->rc;
  if (rc == NULL) {
    rc = calloc(1, sizeof(*rc));
    if (rc == NULL) return NULL;
    rc->rh = rh;
    rc->ch = ch;
    hub_channel_retain(rh->w->srv->hub, ch);
    loc->rc = rc;
    list_push_back(&rh->chans, &rc->node);
  }
  if (rc->state == RC_IDLE && rh->sub.ac != NULL)
    rchan_send_subscribe(rc);
  else if (rc->state == RC_UNSUBSCRIBING)
    rc->resubscribe = 1;
  return rc;
}

static void rchan_free(rchan_t *rc) {
  rhub_t *rh = rc->rh;
  list_remove(&rc->node);
  rc->ch->local[rh->w->idx].rc = NULL;
  hub_channel_release(rh->w->srv->hub, rc->ch);
  free(rc);
}

/* The catch-up no longer waits for rc's confirmation. */
static void rchan_catchup_done(rchan_t *rc) {
  if (!rc->in_catchup) return;
  rc->in_catchup = 0;
  if (--rc->rh->resub_pending == 0) send_catchup(rc->rh);
}

/* The channel has no subscriber left on this worker: stop following it. */
static void rchan_unfollow(rchan_t *rc) {
  switch (rc->state) {
    case RC_IDLE:
      rchan_free(rc);
      return;
    case RC_SUBSCRIBING:
    case RC_LIVE: {
      cmd_t c;
      cmd_init(&c);
      cmd_add(&c, "UNSUBSCRIBE");
      cmd_add_notify(&c, rc->rh, rc->ch);
      /* If refused, the connection is going: its end frees rc. */
      if (cmd_send(&c, rc->rh->sub.ac, NULL, NULL) == REDIS_OK) {
        rc->state = RC_UNSUBSCRIBING;
        conn_sent(&rc->rh->sub);
      }
      return;
    }
    case RC_UNSUBSCRIBING:
      rc->resubscribe = 0;
      return;
  }
}

static int op_send_read(rhub_op_t *op);

/* rc's SUBSCRIBE is confirmed: events published from now on reach it, so
 * the reads that waited for it may go. */
static void rchan_live(rchan_t *rc) {
  rhub_t *rh = rc->rh;
  rc->state = RC_LIVE;
  if (rc->waiters == 0) return;
  int w = rh->w->idx;
  /* The operations ready now move to a list of their own first: sending
   * one may fail and resume Lua, which must not find this walk midway. */
  list_node_t ready;
  list_init(&ready);
  list_node_t *p = rh->waiting.next;
  while (p != &rh->waiting && rc->waiters > 0) {
    rhub_op_t *op = list_entry(p, rhub_op_t, node);
    p = p->next;
    for (int i = 0; i < op->n; i++) {
      if (op->live[i] || op->chs[i]->local[w].rc != rc) continue;
      op->live[i] = 1;
      op->unlive--;
      rc->waiters--;
    }
    if (op->unlive == 0) list_move_back(&ready, &op->node);
  }
  while (!list_empty(&ready)) {
    rhub_op_t *op = list_entry(ready.next, rhub_op_t, node);
    list_remove(&op->node);
    if (op_send_read(op) != 0) {
      op_unsubscribe(op);
      op_fail(op, UV_ECONNRESET, "redis: connection lost");
    }
  }
}

/* Replies on the pub/sub connection for one channel: confirmations,
 * notifications, and NULL once when the connection ends. */
static void on_sub_reply(redisAsyncContext *ac, void *reply, void *privdata) {
  rchan_t *rc = privdata;
  redisReply *rep = reply;
  if (rc == NULL) { /* the anchor channel (see conn_connect) */
    if (rep != NULL && rep->type == REDIS_REPLY_ARRAY && rep->elements >= 1 &&
        rep->element[0]->type == REDIS_REPLY_STRING && strcmp(rep->element[0]->str, "subscribe") == 0)
      conn_ready(ac->data);
    return;
  }
  if (rep == NULL) {
    rc->state = RC_IDLE;
    rc->resubscribe = 0;
    rc->in_catchup = 0;
    rc->waiters = 0;
    if (rc->ch->local[rc->rh->w->idx].count == 0) rchan_free(rc);
    return;
  }
  if (rep->type != REDIS_REPLY_ARRAY || rep->elements < 3 ||
      rep->element[0]->type != REDIS_REPLY_STRING)
    return;
  const char *kind = rep->element[0]->str;
  if (strcmp(kind, "message") == 0) {
    if (rep->element[2]->type == REDIS_REPLY_STRING)
      on_message(rc, rep->element[2]->str, rep->element[2]->len);
  } else if (strcmp(kind, "subscribe") == 0) {
    conn_answered(&rc->rh->sub);
    if (rc->state == RC_SUBSCRIBING) rchan_live(rc);
    rchan_catchup_done(rc);
  } else if (strcmp(kind, "unsubscribe") == 0) {
    conn_answered(&rc->rh->sub);
    if (rc->resubscribe && rc->ch->local[rc->rh->w->idx].count > 0) {
      /* What it knew ended with the old subscription. */
      rc->resubscribe = 0;
      rc->synced = 0;
      rc->last_id = rc->base = 0;
      rc->state = RC_IDLE;
      rchan_send_subscribe(rc);
    } else {
      rchan_free(rc);
    }
  }
}

void rhub_sub_removed(rhub_t *rh, sub_t *s) {
  rhub_op_t *op = s->pending;
  if (op != NULL) {
    op_detach_subs(op);
    if (list_linked(&op->node)) {
      /* Not sent yet: end it from the loop, not from inside fanout. */
      op_stop_waiting(op);
      list_push_back(&rh->ended, &op->node);
      uv_timer_start(&rh->defer, on_defer, 0, 0);
    }
  }
  hub_local_t *loc = &s->ch->local[rh->w->idx];
  if (loc->rc != NULL && loc->count == 0) rchan_unfollow(loc->rc);
}

/* --------------------------------------------------------------- reads */

static void on_read_reply(redisAsyncContext *ac, void *reply, void *privdata);

/* Sends op's read: the last id, and for each channel with a since the
 * events after it.  0, or -1 when the connection takes no more commands
 * (op is left to the caller). */
static int op_send_read(rhub_op_t *op) {
  rhub_t *rh = op->rh;
  int nstreams = op->kind == OP_HISTORY ? 1 : op->since ? op->n : 0;
  unsigned long long ttl = rh->w->app.history_ttl > 0 ? (unsigned long long)(rh->w->app.history_ttl * 1000) : 0;
  cmd_t c;
  cmd_init(&c);
  cmd_add(&c, "FCALL");
  cmd_add(&c, "sluice_v1_read");
  cmd_addu(&c, (unsigned long long)nstreams + 1);
  cmd_add(&c, LAST_KEY);
  for (int i = 0; i < nstreams; i++) {
    if (op->kind == OP_HISTORY)
      cmd_add2(&c, STREAM_PREFIX, op->name, op->name_len);
    else
      cmd_add2(&c, STREAM_PREFIX, op->chs[i]->name, op->chs[i]->name_len);
  }
  cmd_addu(&c, ttl);
  cmd_addu(&c, op->limit);
  for (int i = 0; i < nstreams; i++) {
    /* "" reads from the start; an id, even "0-0", reads after it and
     * tells of a gap (history reads without since are the first). */
    char id[32] = "";
    int n = op->kind == OP_HISTORY && !op->history_since ? 0 : rhub_format_id(op->since[i], id);
    cmd_add2(&c, "", id, (size_t)n);
  }
  if (cmd_send(&c, rh->cmd.ac, on_read_reply, op) != REDIS_OK) return -1;
  conn_sent(&rh->cmd);
  return 0;
}

static int by_id(const void *a, const void *b) {
  uint64_t x = ((const hub_msg_t *)a)->id, y = ((const hub_msg_t *)b)->id;
  return x < y ? -1 : x > y;
}

/* Turns a read's answer into messages (ch from op->chs, NULL for a
 * history read) in id order: 0 with *watermark and, when gaps is not
 * NULL, gaps[i] set for each stream i that lost events after its since;
 * *gap tells whether any did.  -1 when the answer is not what the
 * function returns. */
static int read_events(rhub_op_t *op, redisReply *rep, hub_msg_t **out, size_t *nout,
                       uint64_t *watermark, int *gap, unsigned char *gaps) {
  *out = NULL;
  *nout = 0;
  *gap = 0;
  if (rep->type != REDIS_REPLY_ARRAY || rep->elements < 1 || rep->element[0]->type != REDIS_REPLY_STRING)
    return -1;
  *watermark = 0;
  if (rep->element[0]->len > 0 && !rhub_parse_id(rep->element[0]->str, rep->element[0]->len, watermark))
    return -1;
  size_t cap = 0;
  for (size_t k = 1; k < rep->elements; k++) {
    redisReply *list = rep->element[k];
    hub_channel_t *ch = op->kind == OP_HISTORY ? NULL : op->chs[k - 1];
    if (list->type != REDIS_REPLY_ARRAY || list->elements < 1 || list->element[0]->type != REDIS_REPLY_INTEGER)
      continue;
    if (list->element[0]->integer != 0) {
      *gap = 1;
      if (gaps != NULL) gaps[k - 1] = 1;
    }
    for (size_t i = 1; i + 2 < list->elements; i += 3) {
      redisReply *idr = list->element[i], *atr = list->element[i + 1], *ev = list->element[i + 2];
      uint64_t id, at;
      if (idr->type != REDIS_REPLY_STRING || atr->type != REDIS_REPLY_STRING || ev->type != REDIS_REPLY_STRING ||
          !rhub_parse_id(idr->str, idr->len, &id) || !parse_num(atr->str, atr->len, UINT64_MAX, &at))
        continue;
      frame_t *f = sse_encode_with_id(ev->str, ev->len, at, idr->str, idr->len);
      if (f == NULL) continue;
      if (msgs_push(out, nout, &cap, (hub_msg_t){ch, id, f}) != 0) {
        frame_unref(f);
        msgs_unref(*out, *nout);
        free(*out);
        *out = NULL;
        *nout = 0;
        return -1;
      }
    }
  }
  if (rep->elements > 2) qsort(*out, *nout, sizeof(**out), by_id);
  return 0;
}

/* A subscribe's read is in: its replay, then the live events that came
 * meanwhile and are newer than what the read saw, then live. */
static void finish_subscribe(rhub_op_t *op, hub_msg_t *evs, size_t n, uint64_t watermark, int gap) {
  struct req *r = op->r;
  rhub_result_t res = {0};
  if (r == NULL) {
    op_fail(op, UV_EPIPE, "closed");
    return;
  }
  int w = op->rh->w->idx;
  for (int i = 0; i < op->n; i++) {
    rchan_t *rc = op->chs[i]->local[w].rc;
    if (rc == NULL || rc->synced) continue;
    rc->base = watermark;
    rc->synced = 1;
  }
  for (list_node_t *p = r->subs.next; p != &r->subs; p = p->next) {
    sub_t *s = list_entry(p, sub_t, rnode);
    if (s->pending != op) continue;
    s->pending = NULL;
    s->min_id = watermark;
  }
  op->r = NULL;
  for (size_t i = 0; i < n; i++) req_stream_write(r, evs[i].frame);
  for (size_t i = 0; i < op->nheld; i++)
    if (op->held[i].id > watermark) req_stream_write(r, op->held[i].frame);
  res.replayed = (int)n;
  res.gap = op->since != NULL && gap;
  op_end(op, 0, &res);
}

/* The catch-up read is in: what each channel missed while the link was
 * down, then what came live meanwhile, each event once.  A channel whose
 * stream no longer holds all it missed ends its streams here instead:
 * their clients reconnect with Last-Event-ID, get what is left, and the
 * app's subscribe learns of the gap (ok false), which live delivery
 * could not have told them. */
static void finish_catchup(rhub_op_t *op, hub_msg_t *evs, size_t n, const unsigned char *gaps) {
  rhub_t *rh = op->rh;
  int w = rh->w->idx;
  rh->catching_up = 0;
  for (int i = 0; gaps != NULL && i < op->n; i++) {
    if (!gaps[i]) continue;
    hub_local_t *loc = &op->chs[i]->local[w];
    log_warn("redis: channel '%s' lost events from history while this worker was disconnected; "
             "its %u stream(s) here end so that their clients resume and learn of the gap",
             op->chs[i]->name, loc->count);
    for (list_node_t *p = loc->subs.next; p != &loc->subs; p = p->next)
      req_stream_end(list_entry(p, sub_t, node)->r); /* closes later, off this list */
  }
  for (size_t i = 0; i < n; i++) {
    rchan_t *rc = evs[i].ch->local[w].rc;
    if (rc != NULL) deliver(rc, evs[i].id, evs[i].frame);
  }
  hub_msg_t *held = rh->held;
  size_t nheld = rh->nheld;
  rh->held = NULL;
  rh->nheld = rh->capheld = 0;
  for (size_t i = 0; i < nheld; i++) {
    rchan_t *rc = held[i].ch->local[w].rc;
    if (rc != NULL) deliver(rc, held[i].id, held[i].frame);
  }
  hub_msgs_release(rh->w->srv->hub, held, nheld);
}

static void on_read_reply(redisAsyncContext *ac, void *reply, void *privdata) {
  (void)ac;
  rhub_op_t *op = privdata;
  rhub_t *rh = op->rh;
  redisReply *rep = reply;
  conn_answered(&rh->cmd);
  char why[256];
  hub_msg_t *evs = NULL;
  size_t n = 0;
  uint64_t watermark = 0;
  int gap = 0, status = 0;
  unsigned char *gaps = op->kind == OP_CATCHUP && op->n > 0 ? calloc((size_t)op->n, 1) : NULL;
  if (rep == NULL) {
    status = UV_ECONNRESET;
    snprintf(why, sizeof(why), "redis: connection lost");
  } else if (rep->type == REDIS_REPLY_ERROR) {
    status = UV_EIO;
    snprintf(why, sizeof(why), "redis: %s", rep->str);
  } else if (read_events(op, rep, &evs, &n, &watermark, &gap, gaps) != 0) {
    status = UV_EIO;
    snprintf(why, sizeof(why), "redis: unexpected answer to a read");
  }
  if (op->kind == OP_CATCHUP && (op->gen != rh->catchup_gen || !rh->catching_up)) {
    status = UV_ECANCELED; /* its pub/sub connection was lost since: stale */
    snprintf(why, sizeof(why), "redis: stale catch-up");
  } else if (status != 0 && op->kind == OP_CATCHUP) {
    if (rep == NULL) {
      /* Sent again on the next command connection; meanwhile live events
       * keep waiting. */
      rh->catchup_wanted = 1;
    } else {
      /* Redis refused it (a busy script, a missing function): the pub/sub
       * connection starts over, and with it the catch-up, after the
       * back-off, rather than hold live events for good. */
      char lost[300];
      snprintf(lost, sizeof(lost), "catch-up read refused: %s", why);
      conn_lost(&rh->sub, lost);
    }
  }
  if (rep != NULL && rep->type == REDIS_REPLY_ERROR && strstr(rep->str, "Function not found"))
    conn_lost(&rh->cmd, why); /* its next connection loads them again */
  if (status != 0) {
    if (op->kind == OP_SUBSCRIBE) op_unsubscribe(op);
    op_fail(op, status, why);
    msgs_unref(evs, n);
    free(evs);
    free(gaps);
    return;
  }
  switch (op->kind) {
    case OP_SUBSCRIBE:
      finish_subscribe(op, evs, n, watermark, gap);
      break;
    case OP_CATCHUP:
      finish_catchup(op, evs, n, gaps);
      op_free(op);
      break;
    default: {
      rhub_result_t res = {.events = evs, .nevents = n};
      op_end(op, 0, &res);
      break;
    }
  }
  msgs_unref(evs, n);
  free(evs);
  free(gaps);
}

/* Reads, for every channel followed here, what was published after the
 * last event delivered from it: after a reconnect, the events of the
 * outage.  Live events wait in rh->held until it is answered. */
static void send_catchup(rhub_t *rh) {
  int w = rh->w->idx;
  int n = 0;
  for (list_node_t *p = rh->chans.next; p != &rh->chans; p = p->next) n++;
  rhub_op_t *op = op_new(rh, OP_CATCHUP, NULL, NULL);
  if (op != NULL && n > 0) {
    op->chs = malloc((size_t)n * sizeof(*op->chs));
    op->since = malloc((size_t)n * sizeof(*op->since));
  }
  if (op == NULL || (n > 0 && (op->chs == NULL || op->since == NULL))) {
    if (op != NULL) op_free(op);
    log_error("redis: no memory for the catch-up read; events of the outage are not delivered");
    rh->catching_up = 0;
    return;
  }
  for (list_node_t *p = rh->chans.next; p != &rh->chans; p = p->next) {
    rchan_t *rc = list_entry(p, rchan_t, node);
    /* A channel no read covered yet has only subscriptions whose own
     * replays are on their way: they need no catch-up. */
    if (rc->ch->local[w].count == 0 || !rc->synced) continue;
    hub_channel_retain(rh->w->srv->hub, rc->ch);
    op->chs[op->n] = rc->ch;
    op->since[op->n] = rc->last_id > rc->base ? rc->last_id : rc->base;
    op->n++;
  }
  op->gen = rh->catchup_gen;
  /* Without a command connection the read waits for the next one. */
  rh->catchup_wanted = 0;
  if (op_send_read(op) != 0) {
    op_free(op);
    rh->catchup_wanted = 1;
  }
}

/* ----------------------------------------------------------------- link */

static void on_conn_timer(uv_timer_t *t);

/* Whether operations on c are sent rather than refused: while it is up,
 * and while the first attempt is underway (commands queue until it is
 * answered); after a loss, only once it is back, so that while Redis is
 * away every call fails at once instead of waiting on each attempt. */
static int conn_usable(const rconn_t *c) {
  return c->state == LINK_UP || (c->state == LINK_CONNECTING && c->down_since == 0);
}

/* A command that expects an answer went out on c. */
static void conn_sent(rconn_t *c) {
  if (c->waiting++ == 0) c->last_answer = worker_now(c->rh->w);
}

/* An answer (or its end, NULL, at a teardown) came in on c. */
static void conn_answered(rconn_t *c) {
  if (c->waiting > 0) c->waiting--;
  c->last_answer = worker_now(c->rh->w);
}

/* Notes that the link as a whole went up or down, for stats and logs. */
static void link_update(rhub_t *rh) {
  int up = rh->cmd.state == LINK_UP && rh->sub.state == LINK_UP;
  if (up == rh->up) return;
  rh->up = up;
  __atomic_store_n(&rh->w->stats.redis_up, (uint64_t)up, __ATOMIC_RELAXED);
  uint64_t now = worker_now(rh->w);
  if (!up) {
    rh->down_since = now;
  } else if (rh->ever_up) {
    STAT_ADD(rh->w, redis_reconnects, 1);
    log_info("redis: connected again to %s:%d after %.1f s", rh->cfg.host, rh->cfg.port,
             (double)(now - rh->down_since) / 1000);
  } else {
    rh->ever_up = 1;
    log_info("redis: connected to %s:%d (db %d)", rh->cfg.host, rh->cfg.port, rh->cfg.db);
  }
}

/* Notes that c is lost; its timer tears it down from the loop, outside
 * hiredis's callbacks. */
static void conn_lost(rconn_t *c, const char *why) {
  if (c->state == LINK_FAILING || c->state == LINK_DOWN || c->state == LINK_CLOSED) return;
  snprintf(c->reason, sizeof(c->reason), "%s", why && *why ? why : "connection closed");
  c->state = LINK_FAILING;
  link_update(c->rh);
  uv_timer_start(&c->timer, on_conn_timer, 0, 0);
}

/* c answered its set-up: it is up. */
static void conn_ready(rconn_t *c) {
  rhub_t *rh = c->rh;
  if (c->state != LINK_CONNECTING) return;
  c->state = LINK_UP;
  uv_timer_stop(&c->timer);
  /* While up, its timer watches for answers. */
  uv_timer_start(&c->timer, on_conn_timer, ANSWER_TIMEOUT_MS / 5, ANSWER_TIMEOUT_MS / 5);
  c->backoff_ms = BACKOFF_MIN_MS;
  c->down_since = 0;
  link_update(rh);
  if (c == &rh->cmd && rh->catchup_wanted) send_catchup(rh);
}

static void on_connect(const redisAsyncContext *ac, int status) {
  rconn_t *c = ac->data;
  if (status == REDIS_OK) return; /* up once its set-up is answered */
  c->ac = NULL; /* hiredis frees ac after this returns */
  conn_lost(c, ac->errstr);
}

static void on_disconnect(const redisAsyncContext *ac, int status) {
  (void)status;
  rconn_t *c = ac->data;
  if (c->ac != ac) return; /* one we freed ourselves */
  c->ac = NULL;
  conn_lost(c, ac->errstr);
}

/* Answers of the set-up commands (privdata names the command): an error
 * ends this attempt, with the reason logged once per outage. */
static void on_setup_reply(redisAsyncContext *ac, void *reply, void *privdata) {
  redisReply *rep = reply;
  rconn_t *c = ac->data;
  if (rep == NULL) return;
  const char *what = privdata;
  if (rep->type == REDIS_REPLY_ERROR) {
    char why[300];
    snprintf(why, sizeof(why), "%s: %s%s", what, rep->str,
             strstr(rep->str, "unknown command") ? " (sluice needs Redis 7 or later)" : "");
    conn_lost(c, why);
    return;
  }
  if (strcmp(what, "FUNCTION LOAD") == 0) conn_ready(c);
}

/* A new connection for c, with the set-up every connection needs (AUTH,
 * a name); NULL with c->reason set when it cannot even start. */
static redisAsyncContext *context_new(rconn_t *c) {
  rhub_t *rh = c->rh;
  redisAsyncContext *ac = redisAsyncConnect(rh->cfg.host, rh->cfg.port);
  if (ac == NULL) {
    snprintf(c->reason, sizeof(c->reason), "out of memory");
    return NULL;
  }
  if (ac->err) {
    snprintf(c->reason, sizeof(c->reason), "%s", ac->errstr);
    redisAsyncFree(ac);
    return NULL;
  }
  ac->data = c;
  if (rpoll_attach(ac, &rh->w->loop, READS_PER_TURN) != 0) {
    snprintf(c->reason, sizeof(c->reason), "cannot watch the connection");
    redisAsyncFree(ac);
    return NULL;
  }
  redisAsyncSetConnectCallback(ac, on_connect);
  redisAsyncSetDisconnectCallback(ac, on_disconnect);
  /* A peer gone without a word (a partition, a NAT that forgot us) is
   * found by TCP itself within about half a minute, even on a quiet link. */
  redisEnableKeepAlive(&ac->c);
  cmd_t cmd;
  if (rh->cfg.password[0] != '\0') {
    cmd_init(&cmd);
    cmd_add(&cmd, "AUTH");
    cmd_add(&cmd, rh->cfg.password);
    cmd_send(&cmd, ac, on_setup_reply, "AUTH");
  }
  /* Named, so that CLIENT LIST tells an operator whose connection it is. */
  char name[64];
  snprintf(name, sizeof(name), "sluice-%d-w%d-%s", (int)getpid(), rh->w->id, c->role);
  cmd_init(&cmd);
  cmd_add(&cmd, "CLIENT");
  cmd_add(&cmd, "SETNAME");
  cmd_add(&cmd, name);
  cmd_send(&cmd, ac, on_setup_reply, "CLIENT SETNAME");
  return ac;
}

/* Starts a connection attempt for c and its set-up: on cmd the database
 * and the functions; on sub the anchor subscription, and every channel
 * followed here subscribed again, then the catch-up read. */
static void conn_connect(rconn_t *c) {
  rhub_t *rh = c->rh;
  c->state = LINK_CONNECTING;
  c->ac = context_new(c);
  if (c->ac == NULL) {
    conn_lost(c, c->reason);
    return;
  }
  cmd_t cmd;
  if (c == &rh->cmd) {
    if (rh->cfg.db != 0) {
      cmd_init(&cmd);
      cmd_add(&cmd, "SELECT");
      cmd_addu(&cmd, (unsigned long long)rh->cfg.db);
      cmd_send(&cmd, c->ac, on_setup_reply, "SELECT");
    }
    cmd_init(&cmd);
    cmd_add(&cmd, "FUNCTION");
    cmd_add(&cmd, "LOAD");
    cmd_add(&cmd, "REPLACE");
    cmd_add2(&cmd, "", functions_src, sizeof(functions_src) - 1);
    cmd_send(&cmd, c->ac, on_setup_reply, "FUNCTION LOAD");
  } else {
    /* An anchor subscription that is never dropped: hiredis 0.14 leaves
     * pub/sub mode when a reply says zero channels are left, even with a
     * SUBSCRIBE still on its way, and then fails on that SUBSCRIBE's
     * reply. */
    cmd_init(&cmd);
    cmd_add(&cmd, "SUBSCRIBE");
    cmd_add2(&cmd, rh->notify_prefix, "", 0);
    cmd_send(&cmd, c->ac, on_sub_reply, NULL);
    rh->catchup_gen++;
    rh->resub_pending = 0;
    for (list_node_t *p = rh->chans.next; p != &rh->chans; p = p->next) {
      rchan_t *rc = list_entry(p, rchan_t, node);
      rchan_send_subscribe(rc);
      if (rc->state == RC_SUBSCRIBING) {
        rc->in_catchup = 1;
        rh->resub_pending++;
      }
    }
    rh->catching_up = rh->resub_pending > 0;
  }
  uv_timer_start(&c->timer, on_conn_timer, CONNECT_TIMEOUT_MS, 0);
}

/* Closes c: what waits on it ends with status.  For the pub/sub
 * connection, the channels followed here wait (idle) for the next one,
 * and subscribes that waited for a confirmation fail. */
static void conn_teardown(rconn_t *c, int status, const char *why) {
  rhub_t *rh = c->rh;
  redisAsyncContext *ac = c->ac;
  c->ac = NULL;
  int sub = c == &rh->sub;
  c->waiting = 0;
  if (sub) {
    rh->catching_up = 0;
    rh->catchup_wanted = 0;
    rh->resub_pending = 0;
  }
  /* Its pending callbacks run now, with no reply. */
  if (ac != NULL) redisAsyncFree(ac);
  if (!sub) return;
  hub_msgs_release(rh->w->srv->hub, rh->held, rh->nheld);
  rh->held = NULL;
  rh->nheld = rh->capheld = 0;
  while (!list_empty(&rh->waiting)) {
    rhub_op_t *op = list_entry(rh->waiting.next, rhub_op_t, node);
    list_remove(&op->node);
    op_unsubscribe(op);
    op_fail(op, status, why);
  }
}

static void on_conn_timer(uv_timer_t *t) {
  rconn_t *c = t->data;
  rhub_t *rh = c->rh;
  uint64_t now = worker_now(rh->w);
  switch (c->state) {
    case LINK_CONNECTING:
      conn_lost(c, "timed out connecting");
      return;
    case LINK_FAILING:
      /* Down first, so that what the failures wake cannot start more. */
      c->state = LINK_DOWN;
      if (c->down_since == 0) {
        c->down_since = c->down_logged = now;
        log_warn("redis: %s connection to %s:%d lost (%s); %s until it is back, retrying", c->role,
                 rh->cfg.host, rh->cfg.port, c->reason,
                 c == &rh->cmd ? "publishing fails" : "delivery from other nodes waits");
      } else if (now - c->down_logged >= DOWN_LOG_EVERY_MS) {
        c->down_logged = now;
        log_warn("redis: %s connection to %s:%d still down after %.0f s (%s)", c->role,
                 rh->cfg.host, rh->cfg.port, (double)(now - c->down_since) / 1000, c->reason);
      }
      conn_teardown(c, UV_ECONNRESET, "redis: connection lost");
      uv_timer_start(&c->timer, on_conn_timer, c->backoff_ms, 0);
      c->backoff_ms = c->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : c->backoff_ms * 2;
      return;
    case LINK_DOWN:
      conn_connect(c);
      return;
    case LINK_UP:
      if (c->waiting > 0 && now - c->last_answer >= ANSWER_TIMEOUT_MS)
        conn_lost(c, "no answer for 5 s");
      return;
    default:
      return;
  }
}

/* ----------------------------------------------------------------- API */

/* Sets up c, one of rh's connections, and starts connecting. */
static void conn_init(rhub_t *rh, rconn_t *c, const char *role) {
  c->rh = rh;
  c->role = role;
  c->backoff_ms = BACKOFF_MIN_MS;
  uv_timer_init(&rh->w->loop, &c->timer);
  c->timer.data = c;
}

rhub_t *rhub_new(worker_t *w, const rhub_config_t *cfg) {
  rhub_t *rh = calloc(1, sizeof(*rh));
  if (rh == NULL) return NULL;
  rh->w = w;
  rh->cfg = *cfg;
  snprintf(rh->notify_prefix, sizeof(rh->notify_prefix), "sluice:%d:n:", cfg->db);
  list_init(&rh->chans);
  list_init(&rh->waiting);
  list_init(&rh->ended);
  uv_timer_init(&w->loop, &rh->defer);
  rh->defer.data = rh;
  conn_init(rh, &rh->cmd, "cmd");
  conn_init(rh, &rh->sub, "sub");
  rh->open_handles = 3;
  conn_connect(&rh->cmd);
  conn_connect(&rh->sub);
  return rh;
}

/* One of rh's timers is closed: the last frees rh. */
static void handle_closed(rhub_t *rh) {
  if (--rh->open_handles == 0) free(rh);
}

static void on_defer_closed(uv_handle_t *h) { handle_closed(h->data); }

static void on_conn_timer_closed(uv_handle_t *h) { handle_closed(((rconn_t *)h->data)->rh); }

void rhub_close(rhub_t *rh) {
  rh->cmd.state = rh->sub.state = LINK_CLOSED;
  __atomic_store_n(&rh->w->stats.redis_up, 0, __ATOMIC_RELAXED);
  uv_timer_stop(&rh->cmd.timer);
  uv_timer_stop(&rh->sub.timer);
  conn_teardown(&rh->cmd, UV_ECANCELED, "redis: closing");
  conn_teardown(&rh->sub, UV_ECANCELED, "redis: closing");
  on_defer(&rh->defer);
  while (!list_empty(&rh->chans)) rchan_free(list_entry(rh->chans.next, rchan_t, node));
  uv_close((uv_handle_t *)&rh->cmd.timer, on_conn_timer_closed);
  uv_close((uv_handle_t *)&rh->sub.timer, on_conn_timer_closed);
  uv_close((uv_handle_t *)&rh->defer, on_defer_closed);
}

static void on_publish_reply(redisAsyncContext *ac, void *reply, void *privdata) {
  (void)ac;
  rhub_op_t *op = privdata;
  redisReply *rep = reply;
  conn_answered(&op->rh->cmd);
  char why[256];
  rhub_result_t res = {0};
  int status = 0;
  if (rep == NULL) {
    status = UV_ECONNRESET;
    res.err = "redis: connection lost";
  } else if (rep->type == REDIS_REPLY_ERROR) {
    status = UV_EIO;
    snprintf(why, sizeof(why), "redis: %s", rep->str);
    res.err = why;
    /* Someone removed the functions: the next connection loads them. */
    if (strstr(rep->str, "Function not found")) conn_lost(&op->rh->cmd, why);
  } else if (rep->type != REDIS_REPLY_STRING || !rhub_parse_id(rep->str, rep->len, &res.id)) {
    status = UV_EIO;
    res.err = "redis: unexpected answer to a publish";
  } else {
    res.id_text = rep->str;
    STAT_ADD(op->rh->w, redis_published, 1);
  }
  op_end(op, status, &res);
}

int rhub_publish(rhub_t *rh, const char *name, size_t len, const frame_t *body, size_t id_at,
                 rhub_done_fn done, void *ud, rhub_op_t **opp, const char **err) {
  if (!conn_usable(&rh->cmd)) {
    *err = "redis: not connected";
    return UV_ENOTCONN;
  }
  rhub_op_t *op = op_new(rh, OP_PUBLISH, done, ud);
  if (op == NULL) {
    *err = "not enough memory";
    return UV_ENOMEM;
  }
  const app_opts_t *app = &rh->w->app;
  cmd_t c;
  cmd_init(&c);
  cmd_add(&c, "FCALL");
  cmd_add(&c, "sluice_v1_publish");
  cmd_add(&c, "2");
  cmd_add2(&c, STREAM_PREFIX, name, len);
  cmd_add(&c, LAST_KEY);
  cmd_addu(&c, app->history);
  cmd_addu(&c, app->history_ttl > 0 ? (unsigned long long)(app->history_ttl * 1000) : 0);
  cmd_add2(&c, rh->notify_prefix, name, len);
  cmd_addu(&c, id_at);
  cmd_add2(&c, "", body->data, body->len);
  if (cmd_send(&c, rh->cmd.ac, on_publish_reply, op) != REDIS_OK) {
    op_free(op);
    *err = "redis: connection lost";
    return UV_ECONNRESET;
  }
  conn_sent(&rh->cmd);
  *opp = op;
  return 0;
}

/* Lets go of the channels of fresh[0..k) that this call followed and left
 * without a subscriber (out of memory half way). */
static void unfollow_unused(rhub_t *rh, hub_channel_t **fresh, int k) {
  for (int j = 0; j < k; j++) {
    hub_local_t *loc = &fresh[j]->local[rh->w->idx];
    if (loc->rc != NULL && loc->count == 0) rchan_unfollow(loc->rc);
  }
}

int rhub_subscribe(rhub_t *rh, struct req *r, hub_channel_t **chs, int n, int has_since,
                   uint64_t since, rhub_done_fn done, void *ud, rhub_op_t **opp,
                   rhub_result_t *res, const char **err) {
  memset(res, 0, sizeof(*res));
  if (!conn_usable(&rh->cmd) || !conn_usable(&rh->sub)) {
    *err = "redis: not connected";
    return UV_ENOTCONN;
  }
  *err = "not enough memory";
  hub_channel_t **fresh = malloc((size_t)(n > 0 ? n : 1) * sizeof(*fresh));
  if (fresh == NULL) return UV_ENOMEM;
  int k = fanout_fresh(r, chs, n, fresh);
  if (k == 0) {
    /* Every channel is followed already: nothing to replay (as in memory). */
    free(fresh);
    return 1;
  }
  int w = rh->w->idx;
  int synced = 1, i;
  for (i = 0; i < k; i++) {
    rchan_t *rc = rchan_follow(rh, fresh[i]);
    if (rc == NULL) break;
    if (rc->state != RC_LIVE || !rc->synced) synced = 0;
  }
  if (i != k) {
    unfollow_unused(rh, fresh, k);
    free(fresh);
    return UV_ENOMEM;
  }
  if (!has_since && synced && !rh->catching_up) {
    /* Live and caught up already, nothing to replay: follow from the
     * newest event this worker knows of on each channel. */
    for (i = 0; i < k; i++) {
      rchan_t *rc = fresh[i]->local[w].rc;
      if (fanout_add(r, fresh[i], rc->last_id > rc->base ? rc->last_id : rc->base) == NULL) break;
    }
    if (i != k) unfollow_unused(rh, fresh, k);
    free(fresh);
    return i == k ? 1 : UV_ENOMEM;
  }
  rhub_op_t *op = op_new(rh, OP_SUBSCRIBE, done, ud);
  if (op != NULL) {
    op->chs = malloc((size_t)k * sizeof(*op->chs));
    op->live = calloc((size_t)k, 1);
    op->since = has_since ? malloc((size_t)k * sizeof(*op->since)) : NULL;
    if (op->chs == NULL || op->live == NULL || (has_since && op->since == NULL)) {
      op_free(op);
      op = NULL;
    }
  }
  if (op == NULL) {
    unfollow_unused(rh, fresh, k);
    free(fresh);
    return UV_ENOMEM;
  }
  op->r = r;
  for (i = 0; i < k; i++) {
    rchan_t *rc = fresh[i]->local[w].rc;
    hub_channel_retain(rh->w->srv->hub, fresh[i]);
    op->chs[op->n] = fresh[i];
    if (op->since) op->since[op->n] = since;
    op->live[op->n] = rc->state == RC_LIVE;
    op->n++;
    if (rc->state != RC_LIVE) {
      op->unlive++;
      rc->waiters++;
    }
    /* Nothing live reaches it before its replay (see rhub_hold). */
    sub_t *s = fanout_add(r, fresh[i], UINT64_MAX);
    if (s == NULL) break;
    s->pending = op;
  }
  if (i != k) {
    op_stop_waiting(op);
    op_unsubscribe(op);
    op_free(op);
    unfollow_unused(rh, fresh, k);
    free(fresh);
    return UV_ENOMEM;
  }
  free(fresh);
  if (op->unlive > 0) {
    list_push_back(&rh->waiting, &op->node);
  } else if (op_send_read(op) != 0) {
    op_unsubscribe(op);
    op_free(op);
    *err = "redis: connection lost";
    return UV_ECONNRESET;
  }
  *opp = op;
  return 0;
}

int rhub_history(rhub_t *rh, const char *name, size_t len, int has_since, uint64_t since,
                 size_t limit, rhub_done_fn done, void *ud, rhub_op_t **opp, const char **err) {
  if (!conn_usable(&rh->cmd)) {
    *err = "redis: not connected";
    return UV_ENOTCONN;
  }
  rhub_op_t *op = op_new(rh, OP_HISTORY, done, ud);
  if (op != NULL) {
    op->name = malloc(len + 1);
    op->since = malloc(sizeof(*op->since));
  }
  if (op == NULL || op->name == NULL || op->since == NULL) {
    if (op != NULL) op_free(op);
    *err = "not enough memory";
    return UV_ENOMEM;
  }
  memcpy(op->name, name, len);
  op->name[len] = '\0';
  op->name_len = len;
  op->since[0] = has_since ? since : 0;
  op->history_since = has_since != 0;
  op->limit = limit;
  if (op_send_read(op) != 0) {
    op_free(op);
    *err = "redis: connection lost";
    return UV_ECONNRESET;
  }
  *opp = op;
  return 0;
}
