/* server.c - see server.h. */
#include "server.h"

#include <dirent.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include <jansson.h>

#include "hub.h"
#include "log.h"
#include "sse_encode.h"
#include "watch.h"
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
  if (rc == 0 && cfg->port == 0) {
    /* Port 0: the kernel's pick, the same for every worker's listener. */
    struct sockaddr_storage ss;
    socklen_t n = sizeof(ss);
    if (getsockname(fd, (struct sockaddr *)&ss, &n) == 0) {
      uint16_t port = ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                               : ((struct sockaddr_in *)&ss)->sin_port;
      if (server.addr.ss_family == AF_INET6)
        ((struct sockaddr_in6 *)&server.addr)->sin6_port = port;
      else
        ((struct sockaddr_in *)&server.addr)->sin_port = port;
      server.cfg.port = ntohs(port);
    }
  }
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

/* ------------------------------------------------------------- reloads */

#define RELOAD_CHANNEL "_sluice.reload"

static unsigned reload_gen;
static uint64_t reload_t0;
static char reload_path[PATH_MAX];
static uv_timer_t reload_poll;
static watch_t *watcher;

/* Publishes the outcome of a reload on the channel /_sluice/reload
 * follows: "reload", or "error" with { message, file, line }. */
static void publish_reload(const char *event, json_t *data) {
  char *text = json_dumps(data, JSON_COMPACT | JSON_SORT_KEYS);
  if (text == NULL) return;
  sse_event_t ev = {0};
  ev.retry = -1;
  ev.event = event;
  ev.event_len = strlen(event);
  ev.data = text;
  ev.data_len = strlen(text);
  frame_t *body;
  enum sse_field bad;
  if (sse_encode(&ev, &body, &bad) == 0) {
    uint64_t id;
    hub_publish_to(server.hub, RELOAD_CHANNEL, strlen(RELOAD_CHANNEL), body,
                   strlen("event: \n") + ev.event_len, &id);
    frame_unref(body);
  }
  free(text);
}

/* Finds the file under root whose path ends with suffix (Lua shortens long
 * chunk names to "...tail"); 1 with the full path in out. */
static int find_suffix(const char *root, const char *suffix, char *out, size_t len, int depth) {
  if (depth > 32) return 0;
  DIR *dir = opendir(root);
  if (dir == NULL) return 0;
  struct dirent *e;
  int found = 0;
  size_t sl = strlen(suffix);
  while (!found && (e = readdir(dir)) != NULL) {
    if (e->d_name[0] == '.' || strcmp(e->d_name, "node_modules") == 0) continue;
    char path[PATH_MAX];
    if (snprintf(path, sizeof(path), "%s/%s", root, e->d_name) >= (int)sizeof(path)) continue;
    struct stat st;
    if (stat(path, &st) != 0) continue;
    if (S_ISDIR(st.st_mode)) {
      found = find_suffix(path, suffix, out, len, depth + 1);
    } else {
      size_t pl = strlen(path);
      if (pl >= sl && strcmp(path + pl - sl, suffix) == 0) {
        snprintf(out, len, "%s", path);
        found = 1;
      }
    }
  }
  closedir(dir);
  return found;
}

/* Turns a Lua load error into { message, file, line }: the message is the
 * text before its traceback; file and line come from the first "path:N: "
 * in it (for an error in a required module that is on its second line). */
static json_t *error_json(const char *err) {
  const char *tb = strstr(err, "\nstack traceback:");
  size_t len = tb ? (size_t)(tb - err) : strlen(err);
  json_t *o = json_object();
  json_object_set_new(o, "message", json_stringn(err, len));
  json_object_set_new(o, "file", json_null());
  json_object_set_new(o, "line", json_null());
  for (size_t i = 0; i + 2 < len; i++) {
    if (err[i] != ':' || err[i + 1] < '0' || err[i + 1] > '9') continue;
    size_t j = i + 1;
    while (j < len && err[j] >= '0' && err[j] <= '9') j++;
    if (j + 1 >= len || err[j] != ':' || err[j + 1] != ' ') continue;
    size_t k = i; /* the path runs back to whitespace or a quote */
    while (k > 0 && err[k - 1] != ' ' && err[k - 1] != '\t' && err[k - 1] != '\n' && err[k - 1] != '\'')
      k--;
    char file[PATH_MAX];
    snprintf(file, sizeof(file), "%.*s", (int)(i - k), err + k);
    if (strncmp(file, "...", 3) == 0) {
      char full[PATH_MAX];
      if (find_suffix(server.cfg.app_dir, file + 3, full, sizeof(full), 0) ||
          find_suffix(server.cfg.lua_dir, file + 3, full, sizeof(full), 0))
        snprintf(file, sizeof(file), "%s", full);
    }
    json_object_set_new(o, "file", json_string(file));
    json_object_set_new(o, "line", json_integer(strtol(err + i + 1, NULL, 10)));
    /* The message without its "path:N: " prefix when that is where it began. */
    if (k == 0) json_object_set_new(o, "message", json_stringn(err + j + 2, len - j - 2));
    break;
  }
  return o;
}

/* Waits (polling, briefly) until every worker answered the reload, then
 * reports it once. */
static void on_reload_poll(uv_timer_t *t) {
  for (int i = 0; i < server.nworkers; i++)
    if (atomic_load(&server.workers[i]->reload_done) != reload_gen) return;
  uv_timer_stop(t);
  for (int i = 0; i < server.nworkers; i++) {
    worker_t *w = server.workers[i];
    if (!w->reload_ok) {
      atomic_fetch_add(&server.reloads_failed, 1);
      json_t *e = error_json(w->reload_err);
      publish_reload("error", e);
      json_decref(e);
      return;
    }
  }
  atomic_fetch_add(&server.reloads_ok, 1);
  json_t *o = json_pack("{s:s, s:f}", "path", reload_path, "ms", (double)(uv_hrtime() - reload_t0) / 1e6);
  publish_reload("reload", o);
  json_decref(o);
}

/* Asks every worker to load the app again. */
static void start_reload(const char *why, const char *path) {
  reload_gen++;
  reload_t0 = uv_hrtime();
  snprintf(reload_path, sizeof(reload_path), "%s", path ? path : "");
  log_info("%s%s%s: reloading", why, path ? " " : "", path ? path : "");
  for (int i = 0; i < server.nworkers; i++) worker_reload(server.workers[i], reload_gen);
  uv_timer_start(&reload_poll, on_reload_poll, 1, 1);
}

static void on_change(void *arg, const char *path) {
  (void)arg;
  start_reload("changed:", path);
}

static void on_sighup(uv_signal_t *h, int signum) {
  (void)h;
  (void)signum;
  start_reload("SIGHUP", NULL);
}

static void on_signal(uv_signal_t *h, int signum) {
  (void)h;
  log_info("%s: shutting down", signum == SIGINT ? "SIGINT" : "SIGTERM");
  stop_all();
  watch_stop(watcher);
  watcher = NULL;
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
  uv_timeval64_t tv;
  uv_gettimeofday(&tv);
  server.started_at = (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
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
  uv_signal_t sighup;
  uv_signal_init(loop, &sighup);
  uv_signal_start(&sighup, on_sighup, SIGHUP);

  /* The watcher too: a save while workers start must not be missed (its
   * callback runs once the loop runs, after they all started). */
  uv_timer_init(loop, &reload_poll);
  if (cfg->reload) {
    const char *roots[] = {cfg->app_dir, cfg->lua_dir, NULL};
    watcher = watch_start(loop, roots, on_change, NULL);
  }

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
    /* Published for the metrics of the workers already serving. */
    __atomic_store_n(&server.workers[i], w, __ATOMIC_RELEASE);
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
           cfg->app_dir, cfg->host, server.cfg.port, cfg->workers, cfg->workers == 1 ? "" : "s",
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
