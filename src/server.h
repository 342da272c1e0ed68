/*
 * server.h - process-wide configuration, the workers and their lifecycle.
 *
 * The main thread parses the command line, checks the port, starts the
 * workers (each a thread with its own loop, Lua VM and listener), watches
 * them for runaway Lua, and on SIGINT/SIGTERM asks them to stop and joins
 * them.  Nothing else is shared between workers but what this module owns:
 * the configuration (read-only once workers start) and the connection count.
 */
#ifndef SLUICE_SERVER_H
#define SLUICE_SERVER_H

#include <limits.h>
#include <stdatomic.h>
#include <sys/socket.h>

#include "rhub.h"

typedef struct server_config {
  const char *host;
  int port;
  int workers;
  int reload;                  /* --reload: development mode */
  int max_conns;               /* across all workers */
  double header_timeout;       /* seconds to send a complete request head */
  double idle_timeout;         /* seconds a keep-alive connection may idle */
  char app_dir[PATH_MAX];      /* absolute */
  char lua_dir[PATH_MAX];      /* the project's lua/ folder */
  const char *admin_token;     /* --admin-token: needed for /_sluice/ admin routes */
  int access_log;              /* --access-log on|off (default on) */
  int log_json;                /* --log-format json */
  const char *redis_url;       /* --redis / SLUICE_REDIS; NULL: in-memory hub */
  rhub_config_t redis;         /* parsed from redis_url */
} server_config_t;

typedef struct server {
  server_config_t cfg;
  atomic_int nconns;           /* open client connections, all workers */
  atomic_int running;          /* workers still inside their loops */
  struct sockaddr_storage addr;/* where the listeners bind */
  socklen_t addrlen;
  struct worker **workers;
  struct hub *hub;
  atomic_uint reloads_ok;      /* reloads every worker took */
  atomic_uint reloads_failed;  /* reloads refused for a load error */
  double started_at;           /* Unix time the server started */
  int nworkers;
} server_t;

/* Runs the server until SIGINT/SIGTERM.  Returns the process exit code:
 * 0 after a clean shutdown, 1 when startup failed (reason logged). */
int server_run(const server_config_t *cfg);

#endif
