/* server.c - see server.h. */
#include "server.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "hub.h"
#include "log.h"
#include "worker.h"

#define WATCHDOG_MS 50

static server_t server;

/* Resolves the listen address (a literal or a name such as localhost). */
static int resolve(const server_config_t *cfg) {
  struct addrinfo hints, *res = NULL;
  memset(&hints, 0, sizeof(hints));
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  char port[16];
  snprintf(port, sizeof(port), "%d", cfg->port);
  int rc = getaddrinfo(cfg->host, port, &hints, &res);
  if (rc != 0) {
    log_error("cannot resolve host '%s': %s", cfg->host, gai_strerror(rc));
    return -1;
  }
  memcpy(&server.addr, res->ai_addr, res->ai_addrlen);
  server.addrlen = res->ai_addrlen;
  freeaddrinfo(res);
  return 0;
}

/* Fails when another process listens on the port already.  Our workers
 * bind with SO_REUSEPORT, which would quietly share the port with another
 * sluice; a plain bind here refuses to, so a second server says so. */
static int probe_port(const server_config_t *cfg) {
  const struct sockaddr *sa = (const struct sockaddr *)&server.addr;
  int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return 0;
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  int rc = bind(fd, sa, server.addrlen);
  int e = errno;
  close(fd);
  if (rc != 0) {
    if (e == EADDRINUSE)
      log_error("port %d on %s is already in use", cfg->port, cfg->host);
    else
      log_error("cannot bind %s:%d: %s", cfg->host, cfg->port, strerror(e));
    return -1;
  }
  return 0;
}

static int stopping;

static void stop_all(void) {
  if (stopping) return;
  stopping = 1;
  for (int i = 0; i < server.nworkers; i++) worker_stop(server.workers[i]);
}

static void on_signal(uv_signal_t *h, int signum) {
  (void)h;
  log_info("%s: shutting down", signum == SIGINT ? "SIGINT" : "SIGTERM");
  stop_all();
}

/* Interrupts runaway Lua, and ends the main loop once every worker has
 * left its loop (the watchdog keeps working through the shutdown). */
static void on_watchdog(uv_timer_t *h) {
  uint64_t now = uv_hrtime() / 1000000;
  for (int i = 0; i < server.nworkers; i++) worker_watchdog(server.workers[i], now);
  if (stopping && atomic_load(&server.running) == 0) uv_stop(h->loop);
}

int server_run(const server_config_t *cfg) {
  server.cfg = *cfg;
  atomic_init(&server.nconns, 0);
  atomic_init(&server.running, 0);
  if (resolve(cfg) != 0 || probe_port(cfg) != 0) return 1;

  /* Signals first: a SIGTERM that arrives while workers start must begin a
   * clean stop, not kill the process with the default action. */
  uv_loop_t *loop = uv_default_loop();
  uv_signal_t sigint, sigterm;
  uv_timer_t watchdog;
  uv_signal_init(loop, &sigint);
  uv_signal_init(loop, &sigterm);
  uv_signal_start(&sigint, on_signal, SIGINT);
  uv_signal_start(&sigterm, on_signal, SIGTERM);

  server.hub = hub_new(cfg->workers);
  server.workers = calloc((size_t)cfg->workers, sizeof(*server.workers));
  if (server.hub == NULL || server.workers == NULL) {
    log_error("out of memory");
    return 1;
  }
  for (int i = 0; i < cfg->workers; i++) {
    worker_t *w = calloc(1, sizeof(*w));
    w->id = i + 1;
    w->idx = i;
    w->srv = &server;
    w->cfg = &server.cfg;
    server.workers[i] = w;
    int rc = worker_start(w);
    server.nworkers = i + 1;
    if (rc != 0) {
      log_error("%s", w->start_error[0] ? w->start_error : uv_strerror(rc));
      uv_thread_join(&w->thread);
      server.nworkers = i;
      stop_all();
      for (int j = 0; j < i; j++) uv_thread_join(&server.workers[j]->thread);
      return 1;
    }
  }
  log_info("sluice %s serving %s on http://%s:%d with %d worker%s%s", SLUICE_VERSION,
           cfg->app_dir, cfg->host, cfg->port, cfg->workers, cfg->workers == 1 ? "" : "s",
           cfg->reload ? " (reload on)" : "");

  uv_timer_init(loop, &watchdog);
  uv_timer_start(&watchdog, on_watchdog, WATCHDOG_MS, WATCHDOG_MS);
  uv_run(loop, UV_RUN_DEFAULT);

  for (int i = 0; i < server.nworkers; i++) uv_thread_join(&server.workers[i]->thread);
  hub_free(server.hub);
  for (int i = 0; i < server.nworkers; i++) free(server.workers[i]);
  free(server.workers);
  log_info("stopped");
  return 0;
}
