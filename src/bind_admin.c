/*
 * bind_admin.c - what the server's own admin routes (/_sluice/metrics,
 * /_sluice/health; lua/sluice/init.lua) need from the core: the metrics
 * text, the health state, the --admin-token check, and the count of
 * handler errors the Lua dispatcher answers.  The token itself
 * never reaches Lua.
 */
#include <string.h>

#include "buf.h"
#include "lrt.h"
#include "metrics.h"
#include "worker.h"

static server_t *get_server(lua_State *L) { return lrt_get(L)->w->srv; }

/* core.metrics() -> the Prometheus exposition text. */
static int l_metrics(lua_State *L) {
  buf_t b = BUF_INIT;
  int rc = metrics_render(get_server(L), &b);
  if (rc == 0) lua_pushlstring(L, b.p, b.len);
  buf_free(&b);
  if (rc != 0) return luaL_error(L, "not enough memory");
  return 1;
}

/* core.health() -> { status = "ok", workers, uptime, redis = "up" |
 * "down" | "partial" (absent without --redis) }. */
static int l_health(lua_State *L) {
  server_t *srv = get_server(L);
  metrics_health_t h;
  metrics_health(srv, &h);
  lua_createtable(L, 0, 4);
  lua_pushliteral(L, "ok");
  lua_setfield(L, -2, "status");
  lua_pushinteger(L, h.workers);
  lua_setfield(L, -2, "workers");
  lua_pushnumber(L, (double)(long long)(h.uptime * 1000) / 1000); /* to the ms */
  lua_setfield(L, -2, "uptime");
  if (h.redis) {
    int up = h.redis - 1;
    lua_pushstring(L, up == h.workers ? "up" : up == 0 ? "down" : "partial");
    lua_setfield(L, -2, "redis");
  }
  return 1;
}

/* core.admin_token_ok(token) -> whether token is --admin-token's value,
 * compared in time that does not depend on where they differ. */
static int l_admin_token_ok(lua_State *L) {
  size_t n;
  const char *t = luaL_checklstring(L, 1, &n);
  const char *want = get_server(L)->cfg.admin_token;
  if (want == NULL) {
    lua_pushboolean(L, 0);
    return 1;
  }
  size_t m = strlen(want);
  unsigned char diff = n != m;
  for (size_t i = 0; i < n; i++) diff |= (unsigned char)(t[i] ^ want[i % (m ? m : 1)]);
  lua_pushboolean(L, diff == 0);
  return 1;
}

/* core.count_handler_error(): an error escaped a handler and the
 * dispatcher answered it (the errors it cannot catch, like a CPU budget
 * kill, are counted where the runtime logs them). */
static int l_count_handler_error(lua_State *L) {
  STAT_ADD(lrt_get(L)->w, handler_errors, 1);
  return 0;
}

/* Adds metrics, health, admin_token_ok, count_handler_error and
 * admin_token (whether one is set) to the core table at the top. */
void bind_admin_open(lua_State *L) {
  static const luaL_Reg fns[] = {{"metrics", l_metrics},
                                 {"health", l_health},
                                 {"admin_token_ok", l_admin_token_ok},
                                 {"count_handler_error", l_count_handler_error},
                                 {NULL, NULL}};
  luaL_setfuncs(L, fns, 0);
  lua_pushboolean(L, get_server(L)->cfg.admin_token != NULL);
  lua_setfield(L, -2, "admin_token");
}
