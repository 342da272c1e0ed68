/*
 * main.c - the command line.
 *
 *   sluice [--host H] [--port P] [--workers N|auto] [--reload] [--redis URL] APP_DIR
 *   sluice check APP_DIR | sluice new NAME     (tools.c)
 */
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>
#include <curl/curl.h>
#include <uv.h>

#include "log.h"
#include "server.h"
#include "tools.h"

static const char usage[] =
    "usage: sluice [options] APP_DIR\n"
    "       sluice check APP_DIR\n"
    "       sluice new NAME\n"
    "\n"
    "Serves the sluice app in APP_DIR (its app.lua and public/ folder).\n"
    "'check' loads the app as a worker would, lists its routes and exits (1 when\n"
    "it does not load); 'new' makes a new app in the folder NAME. An app folder\n"
    "named check or new is served as ./check or ./new.\n"
    "\n"
    "options:\n"
    "  --host H             address to listen on (default 127.0.0.1)\n"
    "  --port P             port to listen on (default $PORT, else 8080)\n"
    "  --workers N|auto     worker threads, each with its own loop and Lua VM\n"
    "                       (default 1; auto = one per CPU)\n"
    "  --reload             development mode: reload the app when its files change\n"
    "  --max-conns N        open connections at most, all workers together\n"
    "                       (default: the descriptor limit less a reserve)\n"
    "  --header-timeout S   seconds a client has to send a request head (default 10)\n"
    "  --idle-timeout S     seconds a keep-alive connection may idle (default 60)\n"
    "  --access-log on|off  one log line per request and per stream (default on)\n"
    "  --log-format F       text or json (default text)\n"
    "  --admin-token T      /_sluice/metrics and /_sluice/health need\n"
    "                       'Authorization: Bearer T' (default $SLUICE_ADMIN_TOKEN;\n"
    "                       without one, metrics answer loopback clients only,\n"
    "                       health anyone)\n"
    "  --redis URL          share channels and history with other nodes through\n"
    "                       Redis 7+: redis://[:PASSWORD@]HOST[:PORT][/DB]\n"
    "                       (default $SLUICE_REDIS; without it, in memory)\n"
    "  --help               print this help and exit\n"
    "  --version            print the version and exit\n";

/* Reports a command-line mistake in one line and exits 2. */
static void die(const char *fmt, const char *arg) {
  fprintf(stderr, "sluice: ");
  fprintf(stderr, fmt, arg);
  fprintf(stderr, " (see sluice --help)\n");
  exit(2);
}

static long parse_int(const char *flag, const char *v, long lo, long hi) {
  char *end;
  errno = 0;
  long n = strtol(v, &end, 10);
  if (errno || *v == '\0' || *end != '\0' || n < lo || n > hi) {
    char msg[128];
    snprintf(msg, sizeof(msg), "%s needs a whole number from %ld to %ld, not '%%s'", flag, lo, hi);
    die(msg, v);
  }
  return n;
}

static double parse_seconds(const char *flag, const char *v) {
  char *end;
  double d = strtod(v, &end);
  if (*v == '\0' || *end != '\0' || !(d > 0) || d > 86400) {
    char msg[128];
    snprintf(msg, sizeof(msg), "%s needs a number of seconds above 0, not '%%s'", flag);
    die(msg, v);
  }
  return d;
}

/* Finds the project's lua/ folder: SLUICE_LUA_DIR, else beside the binary
 * (a build tree: build/sluice -> lua/; an install: bin/ -> share/sluice/lua),
 * else the install prefix compiled in. */
static void find_lua_dir(char *out, size_t len) {
  const char *env = getenv("SLUICE_LUA_DIR");
  if (env && *env) {
    snprintf(out, len, "%s", env);
    return;
  }
  char exe[PATH_MAX];
  size_t n = sizeof(exe);
  if (uv_exepath(exe, &n) == 0) {
    char *slash = strrchr(exe, '/');
    if (slash) *slash = '\0';
    const char *tries[] = {"%s/../lua", "%s/../share/sluice/lua", NULL};
    for (int i = 0; tries[i]; i++) {
      char dir[PATH_MAX], probe[PATH_MAX + 32];
      snprintf(dir, sizeof(dir), tries[i], exe);
      snprintf(probe, sizeof(probe), "%s/sluice/init.lua", dir);
      if (access(probe, R_OK) == 0 && realpath(dir, out)) return;
    }
  }
  /* The install prefix's, else (a build tree outside the sources) the
   * library of the sources it was built from. */
  const char *fallbacks[] = {SLUICE_LUA_INSTALL_DIR, SLUICE_LUA_SOURCE_DIR, NULL};
  for (int i = 0; fallbacks[i]; i++) {
    char probe[PATH_MAX + 32];
    snprintf(probe, sizeof(probe), "%s/sluice/init.lua", fallbacks[i]);
    if (access(probe, R_OK) == 0) {
      snprintf(out, len, "%s", fallbacks[i]);
      return;
    }
  }
  snprintf(out, len, "%s", SLUICE_LUA_INSTALL_DIR);
}

/* Raises the descriptor limit to its hard maximum and returns it. */
static long raise_nofile(void) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return 1024;
  if (rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    getrlimit(RLIMIT_NOFILE, &rl);
  }
  return rl.rlim_cur == RLIM_INFINITY ? 1 << 20 : (long)rl.rlim_cur;
}

int main(int argc, char **argv) {
  if (argc >= 2 && (strcmp(argv[1], "check") == 0 || strcmp(argv[1], "new") == 0)) {
    char lua_dir[PATH_MAX];
    find_lua_dir(lua_dir, sizeof(lua_dir));
    return argv[1][0] == 'c' ? tools_check(argc, argv, lua_dir) : tools_new(argc, argv, lua_dir);
  }
  server_config_t cfg;
  memset(&cfg, 0, sizeof(cfg));
  cfg.host = "127.0.0.1";
  cfg.port = -1;
  cfg.workers = 1;
  cfg.header_timeout = 10;
  cfg.idle_timeout = 60;
  cfg.access_log = 1;
  const char *app = NULL;

  for (int i = 1; i < argc; i++) {
    char *a = argv[i];
    if (a[0] != '-' || strcmp(a, "-") == 0) {
      if (app) die("more than one app directory given: '%s'", a);
      app = a;
      continue;
    }
    if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
      fputs(usage, stdout);
      return 0;
    }
    if (strcmp(a, "--version") == 0 || strcmp(a, "-V") == 0) {
      printf("sluice %s\n", SLUICE_VERSION);
      return 0;
    }
    if (strcmp(a, "--reload") == 0) {
      cfg.reload = 1;
      continue;
    }
    /* options with a value: "--opt value" or "--opt=value" */
    char *val = strchr(a, '=');
    char name[64];
    if (val) {
      snprintf(name, sizeof(name), "%.*s", (int)(val - a), a);
      val++;
    } else {
      snprintf(name, sizeof(name), "%s", a);
    }
    static const char *with_value[] = {"--host", "--port", "--workers", "--max-conns",
                                       "--header-timeout", "--idle-timeout", "--redis",
                                       "--access-log", "--log-format", "--admin-token", NULL};
    int known = 0;
    for (int k = 0; with_value[k]; k++) known |= strcmp(name, with_value[k]) == 0;
    if (!known) die("unknown option '%s'", a);
    if (!val) {
      if (i + 1 >= argc) die("%s needs a value", name);
      val = argv[++i];
    }
    if (strcmp(name, "--host") == 0) {
      if (!*val) die("%s needs a value", name);
      cfg.host = val;
    } else if (strcmp(name, "--port") == 0) {
      cfg.port = (int)parse_int(name, val, 0, 65535);
    } else if (strcmp(name, "--workers") == 0) {
      cfg.workers = strcmp(val, "auto") == 0 ? (int)uv_available_parallelism()
                                             : (int)parse_int(name, val, 1, 256);
    } else if (strcmp(name, "--max-conns") == 0) {
      cfg.max_conns = (int)parse_int(name, val, 1, 10000000);
    } else if (strcmp(name, "--header-timeout") == 0) {
      cfg.header_timeout = parse_seconds(name, val);
    } else if (strcmp(name, "--idle-timeout") == 0) {
      cfg.idle_timeout = parse_seconds(name, val);
    } else if (strcmp(name, "--redis") == 0) {
      cfg.redis_url = val;
    } else if (strcmp(name, "--access-log") == 0) {
      if (strcmp(val, "on") != 0 && strcmp(val, "off") != 0) die("--access-log takes on or off, not '%s'", val);
      cfg.access_log = strcmp(val, "on") == 0;
    } else if (strcmp(name, "--log-format") == 0) {
      if (strcmp(val, "text") != 0 && strcmp(val, "json") != 0) die("--log-format takes text or json, not '%s'", val);
      cfg.log_json = strcmp(val, "json") == 0;
    } else if (strcmp(name, "--admin-token") == 0) {
      if (!*val) die("%s needs a value", name);
      cfg.admin_token = val;
    }
  }
  if (!app) die("%s", "no app directory given");
  if (cfg.port < 0) {
    const char *env = getenv("PORT");
    cfg.port = env && *env ? (int)parse_int("PORT", env, 0, 65535) : 8080;
  }

  struct stat st;
  if (stat(app, &st) != 0 || !S_ISDIR(st.st_mode)) {
    fprintf(stderr, "sluice: app directory '%s' does not exist\n", app);
    return 1;
  }
  if (!realpath(app, cfg.app_dir)) {
    fprintf(stderr, "sluice: cannot resolve '%s': %s\n", app, strerror(errno));
    return 1;
  }
  char app_lua[PATH_MAX + 16];
  snprintf(app_lua, sizeof(app_lua), "%s/app.lua", cfg.app_dir);
  if (access(app_lua, R_OK) != 0) {
    fprintf(stderr, "sluice: '%s' has no app.lua\n", app);
    return 1;
  }
  find_lua_dir(cfg.lua_dir, sizeof(cfg.lua_dir));
  if (cfg.admin_token == NULL) {
    /* From the environment, the token stays out of `ps`. */
    const char *env = getenv("SLUICE_ADMIN_TOKEN");
    if (env != NULL && *env) cfg.admin_token = env;
  }
  /* A bearer token is one word: one with a space could never be sent. */
  if (cfg.admin_token != NULL && strpbrk(cfg.admin_token, " \t\r\n") != NULL)
    die("%s", "the admin token must not contain white space");
  if (cfg.redis_url == NULL) {
    const char *env = getenv("SLUICE_REDIS");
    if (env != NULL && *env) cfg.redis_url = env;
  }
  if (cfg.redis_url != NULL) {
    char err[512];
    if (rhub_parse_url(cfg.redis_url, &cfg.redis, err, sizeof(err)) != 0) {
      fprintf(stderr, "sluice: %s\n", err);
      return 2;
    }
  }

  long nofile = raise_nofile();
  long cap = nofile - 64 - 16L * cfg.workers; /* listeners, loops, app files */
  if (cfg.max_conns == 0) cfg.max_conns = cap > 16 ? (int)cap : 16;

  log_set_json(cfg.log_json);
  signal(SIGPIPE, SIG_IGN); /* a vanished peer is an error return, not a kill */
  if (curl_global_init(CURL_GLOBAL_DEFAULT) != 0) {
    fprintf(stderr, "sluice: cannot initialise libcurl\n");
    return 1;
  }
  return server_run(&cfg);
}
