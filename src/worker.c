/* worker.c - see worker.h. */
#include "worker.h"

#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "access.h"
#include "conn.h"
#include "fanout.h"
#include "log.h"
#include "request.h"
#include "rhub.h"
#include "runtime.h"
#include "sse_encode.h"

#define TICK_MS 250
#define SHUTDOWN_GRACE_MS 1500
/* Pauses of accepting when out of descriptors: the first lasts 250 ms, one
 * that follows the last within 5 s of calm lasts twice the last, up to 4 s. */
#define LISTEN_BACKOFF_MIN_MS 250
#define LISTEN_BACKOFF_MAX_MS 4000
#define LISTEN_CALM_MS 5000
/* Fan-out linger: a delivery round of at least LINGER_MIN_FRAMES frames
 * (some milliseconds of writes) holds the next round back for LINGER_MS
 * after its writes end.  Rounds below it (a latency-bound stream to a few
 * hundred subscribers) go out at once. */
#define LINGER_MIN_FRAMES 256
#define LINGER_MS 1

static _Thread_local worker_t *tls_worker;

/* ------------------------------------------------------------ watchdog */

void worker_busy_begin(worker_t *w, void *co) {
  w->running_co = co;
  atomic_fetch_add(&w->resume_gen, 1);
  atomic_store(&w->busy_since, worker_now(w) + 1); /* never 0 */
}

void worker_busy_end(worker_t *w) {
  atomic_store(&w->busy_since, 0);
  w->running_co = NULL;
}

/* The CPU time the worker's thread has used, in ms (read from another
 * thread: the kernel keeps it per thread). */
static uint64_t thread_cpu_ms(worker_t *w) {
  clockid_t cid;
  struct timespec ts;
  if (pthread_getcpuclockid(w->tid, &cid) != 0 || clock_gettime(cid, &ts) != 0) return 0;
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

void worker_watchdog(worker_t *w, uint64_t now_ms) {
  (void)now_ms;
  uint64_t since = atomic_load(&w->busy_since);
  double budget = (double)atomic_load(&w->budget_us) / 1e6;
  if (since == 0 || budget <= 0) return;
  /* CPU time, not wall time: a handler waiting for a busy machine's CPU is
   * not running away.  The baseline is taken when the watchdog first sees
   * this resume (at most one watchdog tick of CPU late), which keeps every
   * clock read off the worker's own path. */
  unsigned gen = atomic_load(&w->resume_gen);
  if (gen != w->wd_gen) {
    w->wd_gen = gen;
    w->wd_cpu0 = thread_cpu_ms(w);
    return;
  }
  if (thread_cpu_ms(w) - w->wd_cpu0 <= (uint64_t)(budget * 1000)) return;
  if (atomic_load(&w->kill_gen) == gen) return; /* already interrupted */
  atomic_store(&w->kill_gen, gen);
  pthread_kill(w->tid, SIGURG);
}

/* Runs on the worker's own thread, between two Lua instructions or inside
 * a C call: it only arms a hook (lua_sethook is safe here, as in lua.c's
 * SIGINT handling); the hook raises the error in Lua's own time. */
static void on_budget_signal(int sig) {
  (void)sig;
  worker_t *w = tls_worker;
  if (w == NULL) return;
  void *co = w->running_co;
  if (co != NULL && atomic_load(&w->kill_gen) == atomic_load(&w->resume_gen)) rt_interrupt(co);
}

/* ------------------------------------------------------------ helpers */

void worker_mark_pending(worker_t *w, conn_t *c) {
  if (!list_linked(&c->pend)) list_push_back(&w->pending, &c->pend);
}

const char *worker_date(worker_t *w, size_t *len) {
  time_t now = time(NULL);
  if ((uint64_t)now != w->date_sec) {
    struct tm tm;
    gmtime_r(&now, &tm);
    w->date_len = strftime(w->date, sizeof(w->date), "Date: %a, %d %b %Y %H:%M:%S GMT\r\n", &tm);
    w->date_sec = (uint64_t)now;
  }
  *len = w->date_len;
  return w->date;
}

/* -------------------------------------------------------------- loop */

static void on_idle(uv_idle_t *h) { (void)h; /* keeps poll from sleeping */ }

/* Before the loop sleeps: parse what pipelined clients left waiting and
 * flush every connection that was written to during this iteration. */
static void on_prepare(uv_prepare_t *h) {
  worker_t *w = h->data;
  list_node_t work;
  list_init(&work);
  list_splice(&work, &w->pending); /* what is marked while we run waits a turn */
  while (!list_empty(&work)) {
    conn_t *c = list_entry(work.next, conn_t, pend);
    list_remove(&c->pend);
    conn_process(c);
  }
  if (w->large_round) { /* its writes are done: the linger starts now */
    w->large_round = 0;
    w->drain_not_before = uv_hrtime() + (uint64_t)LINGER_MS * 1000000;
  }
  if (list_empty(&w->pending))
    uv_idle_stop(&w->idle);
  else
    uv_idle_start(&w->idle, on_idle);
  if (w->access.len > 0) access_flush(w);
}

/* Sends a heartbeat comment on every stream silent for too long.  The list
 * is ordered by last output, so this stops at the first stream not due. */
static void heartbeats(worker_t *w, uint64_t now) {
  if (w->app.heartbeat <= 0) return;
  uint64_t every = (uint64_t)(w->app.heartbeat * 1000);
  while (!list_empty(&w->streams)) {
    req_t *r = list_entry(w->streams.next, req_t, hb);
    if (r->last_out + every > now) break;
    if (req_stream_write(r, w->heartbeat) != 0) list_remove(&r->hb);
  }
}

static void finish(worker_t *w);

static int listen_socket(worker_t *w);

/* The listener's close callback while accepting is paused. */
static void on_listener_closed(uv_handle_t *h) {
  worker_t *w = h->data;
  w->listener_closed = 1;
}

/* Stops accepting for a while: the process is out of descriptors.  libuv's
 * answer to EMFILE (close a spare descriptor, accept and drop, re-open the
 * spare) is per loop, but the descriptor table is the process's: another
 * worker can take the slot the spare left, and then libuv retries accept()
 * in a loop that never returns, calling us each time.  Closing the listener
 * ends that loop at once; meanwhile the kernel gives new connections to a
 * worker still listening, or refuses them, and on_tick listens again after
 * the back-off.  One log line per pause. */
static void pause_accepting(worker_t *w, int status) {
  if (w->listen_paused || w->stopping) return;
  uint64_t now = worker_now(w);
  /* A shortage that comes back soon after the last one doubles the wait. */
  if (w->listen_backoff == 0 || now - w->listen_calm_since > LISTEN_CALM_MS)
    w->listen_backoff = LISTEN_BACKOFF_MIN_MS;
  else if (w->listen_backoff < LISTEN_BACKOFF_MAX_MS)
    w->listen_backoff *= 2;
  w->listen_paused = 1;
  w->listener_closed = 0;
  w->listen_resume = now + w->listen_backoff;
  log_warn("accept: %s with %u connections open; not accepting for %llu ms", uv_strerror(status),
           w->nconns, (unsigned long long)w->listen_backoff);
  uv_close((uv_handle_t *)&w->listener, on_listener_closed);
}

/* Listens again once a pause's back-off is over; while descriptors are
 * still short the pause goes on for another back-off, silently. */
static void resume_accepting(worker_t *w, uint64_t now) {
  if (!w->listen_paused || !w->listener_closed || w->stopping || now < w->listen_resume) return;
  int rc = listen_socket(w);
  if (rc != 0) {
    /* A listener made before the failure (bind, listen) is closed again. */
    if (!uv_is_closing((uv_handle_t *)&w->listener)) {
      w->listener_closed = 0;
      uv_close((uv_handle_t *)&w->listener, on_listener_closed);
    }
    if (w->listen_backoff < LISTEN_BACKOFF_MAX_MS) w->listen_backoff *= 2;
    w->listen_resume = now + w->listen_backoff;
    return;
  }
  w->listen_paused = 0;
  w->listen_calm_since = now;
  log_info("accepting connections again (%u open)", w->nconns);
}

const double worker_ttfb_bounds[WORKER_TTFB_BUCKETS] = {0.005, 0.01, 0.025, 0.05, 0.1,
                                                         0.25, 0.5, 1, 2.5, 5};

static void on_tick(uv_timer_t *h) {
  worker_t *w = h->data;
  uint64_t now = worker_now(w);
  conn_sweep(w, now);
  resume_accepting(w, now);
  heartbeats(w, now);
  rt_reap(w, 0);
  if (w->stopping && now >= w->stop_deadline) {
    /* The grace is over: whatever is still open is cut. */
    for (list_node_t *n = w->conns.next; n != &w->conns; n = n->next)
      conn_close(list_entry(n, conn_t, all)); /* unlinked in its close callback */
  }
  if (w->stopping && w->nconns == 0) finish(w);
}

static void on_connection(uv_stream_t *server, int status) {
  worker_t *w = server->data;
  if (status == UV_EMFILE || status == UV_ENFILE) {
    pause_accepting(w, status);
    return;
  }
  if (status < 0) {
    log_warn("accept: %s", uv_strerror(status));
    return;
  }
  conn_accept(w);
}

/* Begins the shutdown: no new connections, streams end cleanly (their
 * queues flushed), idle connections close, running requests finish. */
static void begin_stop(worker_t *w) {
  if (w->stopping) return;
  w->stopping = 1;
  w->stop_deadline = worker_now(w) + SHUTDOWN_GRACE_MS;
  if (!uv_is_closing((uv_handle_t *)&w->listener)) uv_close((uv_handle_t *)&w->listener, NULL);
  rt_stop(w->rt);
  list_node_t *n = w->conns.next;
  while (n != &w->conns) {
    conn_t *c = list_entry(n, conn_t, all);
    n = n->next;
    if (c->state == CONN_STREAM && c->req != NULL)
      req_stream_end(c->req);
    else if (c->state == CONN_IDLE || c->state == CONN_HEAD_WAIT)
      conn_end(c);
    /* CONN_ACTIVE: its response goes out with "Connection: close". */
  }
  if (w->nconns == 0) finish(w);
}

/* Publishes the app's cpu_budget to the watchdog, which runs on the main
 * thread while a reload may rewrite w->app. */
static void set_budget(worker_t *w) {
  double b = w->app.cpu_budget > 0 ? w->app.cpu_budget : 0;
  atomic_store(&w->budget_us, (uint_least64_t)(b * 1e6));
}

/* Loads the app into a fresh VM; on success new requests go to it at once
 * and the old VM runs on only for the handlers it already has. */
static void reload_app(worker_t *w) {
  uint64_t t0 = uv_hrtime();
  char err[sizeof(w->reload_err)];
  runtime_t *nrt = rt_new(w, err, sizeof(err));
  if (nrt == NULL) {
    w->reload_ok = 0;
    memcpy(w->reload_err, err, sizeof(err));
    log_error("reload failed; the previous version keeps serving: %s", err);
    return;
  }
  runtime_t *old = w->rt;
  w->rt = nrt;
  w->app = *rt_opts(nrt);
  set_budget(w);
  frame_t *hb = sse_encode_comment(w->app.heartbeat_comment, strlen(w->app.heartbeat_comment));
  if (hb != NULL) {
    frame_unref(w->heartbeat);
    w->heartbeat = hb;
  }
  rt_retire(old);
  w->reload_ok = 1;
  w->reload_err[0] = '\0';
  log_info("reloaded in %.1f ms", (double)(uv_hrtime() - t0) / 1e6);
}

/* Delivers the inbox; a round large enough that writing it costs real time
 * starts a linger once it is flushed (see on_prepare). */
static void drain(worker_t *w) {
  uv_timer_stop(&w->linger);
  w->drain_not_before = 0;
  if (fanout_drain(w) >= LINGER_MIN_FRAMES) w->large_round = 1;
}

static void on_linger(uv_timer_t *t) { drain(t->data); }

/* Hub events (and stop and reload requests) have arrived.  Events wait
 * while a linger runs: under a stream of publishes to many subscribers,
 * each round then carries every event published during the last round's
 * writes and the linger, not one per publisher, which is what a round
 * costs (one writev per subscriber, mostly kernel).  Replies to the
 * publishers are not held back, so they keep publishing meanwhile; rounds
 * too small to matter never linger, and neither does a stop. */
static void on_wake(uv_async_t *h) {
  worker_t *w = h->data;
  if (w->drain_not_before != 0 && uv_hrtime() < w->drain_not_before &&
      !atomic_load(&w->stop_requested)) {
    if (!uv_is_active((uv_handle_t *)&w->linger)) uv_timer_start(&w->linger, on_linger, LINGER_MS, 0);
  } else {
    drain(w);
  }
  if (atomic_load(&w->stop_requested)) {
    begin_stop(w);
    return;
  }
  unsigned gen = atomic_load(&w->reload_req);
  if (gen != w->reload_seen && !w->stopping) {
    w->reload_seen = gen;
    reload_app(w);
    atomic_store(&w->reload_done, gen);
  }
}

void worker_reload(worker_t *w, unsigned gen) {
  atomic_store(&w->reload_req, gen);
  uv_async_send(&w->wake);
}

static void close_handle(uv_handle_t *h, void *arg) {
  (void)arg;
  if (!uv_is_closing(h)) uv_close(h, NULL);
}

/* Everything is closed: free the VM and let the loop end. */
static void finish(worker_t *w) {
  if (w->rt == NULL) return;
  rt_reap(w, 1);
  hub_detach(w->srv->hub, w->idx);
  hub_msg_t *items;
  size_t n = hub_inbox_take(&w->inbox, &items);
  for (size_t i = 0; i < n; i++) frame_unref(items[i].frame);
  free(items);
  rt_free(w->rt);
  w->rt = NULL;
  /* After the VM: no task is left to wake with what it cancels. */
  if (w->rhub != NULL) rhub_close(w->rhub);
  w->rhub = NULL;
  uv_walk(&w->loop, close_handle, NULL);
}

void worker_conn_closed(worker_t *w) {
  if (w->stopping && w->nconns == 0) finish(w);
}

void worker_stop(worker_t *w) {
  atomic_store(&w->stop_requested, 1);
  uv_async_send(&w->wake);
}

/* ------------------------------------------------------------ startup */

/* Binds this worker's own listening socket: SO_REUSEPORT lets the kernel
 * spread connections over the workers without a shared accept lock. */
static int listen_socket(worker_t *w) {
  const struct sockaddr *sa = (const struct sockaddr *)&w->srv->addr;
  int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -errno;
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0 ||
      bind(fd, sa, w->srv->addrlen) != 0) {
    int e = -errno;
    close(fd);
    return e;
  }
  uv_tcp_init(&w->loop, &w->listener);
  w->listener.data = w;
  int rc = uv_tcp_open(&w->listener, fd);
  if (rc == 0) rc = uv_listen((uv_stream_t *)&w->listener, 4096, on_connection);
  return rc;
}

static void worker_main(void *arg) {
  worker_t *w = arg;
  tls_worker = w;
  w->tid = pthread_self();
  char name[16];
  snprintf(name, sizeof(name), "w%d", w->id);
  log_set_thread_name(name);
  /* The same name in top -H, perf and /proc/PID/task/TID/comm. */
  char comm[16];
  snprintf(comm, sizeof(comm), "sluice-w%d", w->id);
  pthread_setname_np(pthread_self(), comm);
  /* Process signals belong to the main thread; the budget signal is ours. */
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &set, NULL);

  list_init(&w->conns);
  list_init(&w->pending);
  list_init(&w->head_wait);
  list_init(&w->idle_wait);
  list_init(&w->lingering);
  list_init(&w->streams);
  list_init(&w->retired);
  uv_loop_init(&w->loop);
  w->readbuf = malloc(WORKER_READBUF);

  uv_async_init(&w->loop, &w->wake, on_wake);
  w->wake.data = w;
  uv_mutex_init(&w->inbox.lock);
  w->inbox.wake = &w->wake;
  w->rt = rt_new(w, w->start_error, sizeof(w->start_error));
  int rc = w->rt ? 0 : -EINVAL;
  if (rc == 0) {
    w->app = *rt_opts(w->rt);
    set_budget(w);
  }
  if (rc == 0) {
    w->heartbeat = sse_encode_comment(w->app.heartbeat_comment, strlen(w->app.heartbeat_comment));
    if (w->heartbeat == NULL) rc = -ENOMEM;
  }
  if (rc == 0) hub_attach(w->srv->hub, w->idx, &w->inbox);
  if (rc == 0 && w->cfg->redis_url != NULL && (w->rhub = rhub_new(w, &w->cfg->redis)) == NULL) {
    rc = -ENOMEM;
    snprintf(w->start_error, sizeof(w->start_error), "not enough memory for the Redis link");
  }
  if (rc == 0) {
    rc = listen_socket(w);
    if (rc) snprintf(w->start_error, sizeof(w->start_error), "cannot listen on %s:%d: %s",
                     w->cfg->host, w->cfg->port, uv_strerror(rc));
  }
  w->start_rc = rc;
  if (rc != 0) {
    hub_detach(w->srv->hub, w->idx);
    uv_sem_post(&w->started);
    if (w->rt) rt_free(w->rt);
    w->rt = NULL;
    if (w->rhub != NULL) rhub_close(w->rhub);
    w->rhub = NULL;
    uv_walk(&w->loop, close_handle, NULL);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    uv_loop_close(&w->loop);
    return;
  }
  uv_prepare_init(&w->loop, &w->prepare);
  w->prepare.data = w;
  uv_prepare_start(&w->prepare, on_prepare);
  uv_unref((uv_handle_t *)&w->prepare);
  uv_idle_init(&w->loop, &w->idle);
  uv_timer_init(&w->loop, &w->tick);
  w->tick.data = w;
  uv_timer_start(&w->tick, on_tick, TICK_MS, TICK_MS);
  uv_timer_init(&w->loop, &w->linger);
  w->linger.data = w;
  atomic_fetch_add(&w->srv->running, 1);
  uv_sem_post(&w->started);

  uv_run(&w->loop, UV_RUN_DEFAULT);
  atomic_fetch_sub(&w->srv->running, 1);
  if (uv_loop_close(&w->loop) != 0) log_warn("worker loop closed with handles still open");
  frame_unref(w->heartbeat);
  access_flush(w);
  buf_free(&w->access);
  req_drop_spares(w);
  free(w->readbuf);
  uv_mutex_destroy(&w->inbox.lock);
}

int worker_start(worker_t *w) {
  static int signal_installed;
  if (!signal_installed) {
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_budget_signal;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGURG, &sa, NULL);
    signal_installed = 1;
  }
  uv_sem_init(&w->started, 0);
  int rc = uv_thread_create(&w->thread, worker_main, w);
  if (rc) return rc;
  uv_sem_wait(&w->started);
  return w->start_rc;
}
