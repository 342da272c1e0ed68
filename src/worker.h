/*
 * worker.h - one thread: a uv loop, a Lua VM, a listener, its connections.
 *
 * A worker owns every connection it accepted and every Lua value in its VM;
 * nothing of either ever crosses to another worker.  Its loop flushes output
 * once per iteration, before it sleeps (the prepare phase), so everything a
 * connection was sent during one iteration leaves in one writev.
 */
#ifndef SLUICE_WORKER_H
#define SLUICE_WORKER_H

#include <stdatomic.h>
#include <stdint.h>
#include <uv.h>

#include "buf.h"
#include "frame.h"
#include "hub.h"
#include "list.h"
#include "server.h"

struct runtime;

#define WORKER_READBUF (64 * 1024)

/* Options an app sets in sluice.app{...}, read once its VM is loaded. */
typedef struct app_opts {
  size_t max_body;     /* request body limit, bytes */
  double heartbeat;    /* seconds of silence before a ":" comment; 0 = off */
  char heartbeat_comment[64]; /* its text ("" for a bare ":") */
  long retry;          /* retry: sent when a stream opens; < 0 = none */
  double cpu_budget;   /* seconds a handler may run without yielding */
  size_t max_queue;    /* bytes queued for a subscriber before it is dropped */
  size_t history;      /* events kept per channel */
  double history_ttl;  /* seconds events stay in history; 0 = no limit */
  size_t memory_limit; /* bytes a Lua VM may hold; 0 = no limit */
  char public_dir[4096];
} app_opts_t;

/* Upper bounds (seconds) of the upstream time-to-first-byte histogram. */
#define WORKER_TTFB_BUCKETS 10
extern const double worker_ttfb_bounds[WORKER_TTFB_BUCKETS];

/* Per-worker counters.  Only the worker writes them, with STAT_ADD; any
 * thread reads them with STAT_GET (sluice.stats on this worker, metrics on
 * any): relaxed atomic loads and stores keep those reads defined without
 * costing the writer a locked instruction. */
typedef struct worker_stats {
  uint64_t subscribers;   /* subscriptions open now */
  uint64_t streams;       /* event streams open now */
  uint64_t delivered;     /* hub events written to subscribers */
  uint64_t slow_drops;    /* subscribers dropped at max_queue */
  uint64_t requests;      /* requests ended (answered, or streams closed) */
  uint64_t bytes_out;     /* bytes written to clients */
  uint64_t handler_errors;/* errors that escaped a handler (500s) */
  uint64_t budget_kills;  /* handlers stopped by the CPU budget */
  uint64_t upstream_requests;
  uint64_t upstream_errors;   /* transfers that failed (not those the app closed) */
  uint64_t ttfb_count;        /* upstream responses whose head arrived */
  uint64_t ttfb_us;           /* their times to first byte, summed */
  uint64_t ttfb_buckets[WORKER_TTFB_BUCKETS]; /* not cumulative: one per range */
  /* With --redis (rhub.c): */
  uint64_t redis_up;          /* 1 while the worker's link is up */
  uint64_t redis_published;   /* events it published */
  uint64_t redis_received;    /* notifications that arrived */
  uint64_t redis_reconnects;  /* links made again after a loss */
} worker_stats_t;

#define STAT_ADD(w, field, n) \
  __atomic_store_n(&(w)->stats.field, (w)->stats.field + (uint64_t)(n), __ATOMIC_RELAXED)
#define STAT_GET(w, field) __atomic_load_n(&(w)->stats.field, __ATOMIC_RELAXED)

typedef struct worker {
  int id;                 /* 1-based, for logs */
  int idx;                /* 0-based slot in the hub */
  hub_inbox_t inbox;      /* events posted by the hub */
  worker_stats_t stats;
  server_t *srv;
  const server_config_t *cfg;
  uv_loop_t loop;
  uv_thread_t thread;
  uv_tcp_t listener;
  /* Accepting paused for want of descriptors (EMFILE): the listener is
   * closed and a new one opens at listen_resume (loop ms); the back-off
   * doubles while the shortage lasts. */
  unsigned listen_paused : 1;
  unsigned listener_closed : 1; /* its close callback ran: it may be re-made */
  uint64_t listen_resume;
  uint64_t listen_backoff;
  uint64_t listen_calm_since;   /* accepting again since (loop ms) */
  uv_async_t wake;        /* hub events and stop requests */
  uv_prepare_t prepare;   /* before-sleep: parse stashed input, flush output */
  uv_idle_t idle;         /* active while work is left for the next iteration */
  uv_timer_t tick;        /* timeouts and heartbeats */
  /* Fan-out linger (worker.c): after a large delivery round, the next
   * drain of the inbox waits until drain_not_before (uv_hrtime ns), so
   * events published meanwhile share each subscriber's write. */
  uv_timer_t linger;
  uint64_t drain_not_before;
  unsigned large_round : 1; /* the last drain queued a large round */
  struct runtime *rt;
  struct rhub *rhub;      /* with --redis: this worker's link to Redis */
  app_opts_t app;
  char *readbuf;          /* shared by all connections: reads are consumed at once */
  frame_t *heartbeat;     /* ":\n\n", shared by every stream */

  list_node_t conns;      /* every open connection */
  list_node_t pending;    /* connections with output to flush or input to parse */
  list_node_t head_wait;  /* waiting for a request head; FIFO = deadline order */
  list_node_t idle_wait;  /* keep-alive, between requests; FIFO = deadline order */
  list_node_t lingering;  /* closing after an error: draining input; FIFO */
  list_node_t streams;    /* open event streams, least recently written first */
  unsigned nconns;
  uint64_t refused;           /* connections refused at the cap, not yet logged */
  uint64_t refused_logged_at; /* loop ms of the last such log line */

  atomic_int stop_requested;
  int stopping;
  uint64_t stop_deadline;
  buf_t access;           /* access log records not written yet (access.c) */
  char date[40];          /* "Date: ...\r\n", refreshed once a second */
  size_t date_len;
  uint64_t date_sec;
  struct req *spare_reqs; /* ended requests kept for reuse (request.c) */
  unsigned nspare_reqs;

  /* The watchdog: set around every Lua resume, read by the main thread. */
  atomic_uint_least64_t busy_since; /* loop ms when the resume began; 0 idle */
  atomic_uint resume_gen;
  atomic_uint kill_gen;
  atomic_uint_least64_t budget_us;  /* the app's cpu_budget, for the watchdog's thread */
  void *volatile running_co;        /* lua_State being resumed */
  pthread_t tid;
  unsigned wd_gen;                  /* main thread only: the resume it timed */
  uint64_t wd_cpu0;                 /* main thread only: thread CPU ms then */

  /* Reloads: the main thread asks for generation reload_req; the worker
   * answers with reload_done once it swapped VMs (reload_ok) or kept the
   * old one (reload_err says why). */
  atomic_uint reload_req;
  atomic_uint reload_done;
  unsigned reload_seen;
  int reload_ok;
  char reload_err[2048];
  list_node_t retired;    /* runtimes replaced by a reload, still running handlers */

  /* Startup handshake with the main thread. */
  uv_sem_t started;
  int start_rc;
  char start_error[1024];
} worker_t;

/* Starts a worker thread; it signals w->started when its listener is bound
 * and its app loaded, with w->start_rc 0 or an error (w->start_error). */
int worker_start(worker_t *w);

/* Asks a worker to stop (thread-safe): it stops accepting, ends its streams
 * cleanly and exits its thread within the shutdown grace. */
void worker_stop(worker_t *w);

/* Asks a worker (thread-safe) to load the app again: generation gen. */
void worker_reload(worker_t *w, unsigned gen);

/* Called by the connection layer after a connection's memory is freed. */
void worker_conn_closed(worker_t *w);

/* Queues c for the before-sleep pass of its worker. */
struct conn;
void worker_mark_pending(worker_t *w, struct conn *c);

/* The cached "Date: ...\r\n" header line for responses; *len gets its
 * length. */
const char *worker_date(worker_t *w, size_t *len);

/* Milliseconds on the worker's loop clock. */
static inline uint64_t worker_now(worker_t *w) { return uv_now(&w->loop); }

/* Brackets a Lua resume for the watchdog. */
void worker_busy_begin(worker_t *w, void *co);
void worker_busy_end(worker_t *w);

/* Called from the main thread's watchdog: when the worker's thread has
 * spent more CPU time than its budget inside one resume, interrupts it with
 * a signal that arms a Lua hook to raise "cpu budget exceeded". */
void worker_watchdog(worker_t *w, uint64_t now_ms);

#endif
