/*
 * bind_core.c - the "sluice.core" module: the C half of `require "sluice"`.
 *
 * Time (sleep, now), tasks (spawn), timers (every, after), logging, JSON and
 * the request/stream functions.  lua/sluice/init.lua wraps these into the
 * documented API; apps never need sluice.core directly.
 */
#include <math.h>
#include <stdlib.h>

#include "log.h"
#include "lrt.h"
#include "worker.h"

#define TIMER_MT "sluice.timer"

/* ------------------------------------------------------------- sleep */

static void on_sleep(uv_timer_t *h) { rt_wake(h->data, 0); }

/* Converts seconds to timer milliseconds; negative or NaN is misuse. */
static uint64_t check_seconds(lua_State *L, int idx) {
  lua_Number s = luaL_checknumber(L, idx);
  luaL_argcheck(L, s >= 0 && !isnan(s), idx, "seconds must be a non-negative number");
  double ms = ceil(s * 1000.0);
  return ms > 1e15 ? (uint64_t)1e15 : (uint64_t)ms;
}

/* sluice.sleep(s): yields the task for s seconds. */
static int l_sleep(lua_State *L) {
  uint64_t ms = check_seconds(L, 1);
  task_t *t = lrt_current(L, "sluice.sleep");
  uv_timer_start(&t->timer, on_sleep, ms, 0);
  return lrt_yield(L, t, NULL);
}

/* sluice.now() -> seconds since the epoch, with sub-millisecond part. */
static int l_now(lua_State *L) {
  uv_timeval64_t tv;
  uv_gettimeofday(&tv);
  lua_pushnumber(L, (lua_Number)tv.tv_sec + (lua_Number)tv.tv_usec / 1e6);
  return 1;
}

/* sluice.spawn(fn, ...): runs fn(...) as its own task from the next loop
 * turn on; it outlives the caller. */
static int l_spawn(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  runtime_t *rt = lrt_get(L);
  if (rt->stopping) return luaL_error(L, "sluice.spawn: the server is stopping");
  int nargs = lua_gettop(L) - 1;
  if (lrt_spawn(rt, L, nargs) != 0) return luaL_error(L, "not enough memory");
  lua_pushboolean(L, 1);
  return 1;
}

/* core.log(level, message) with level "info", "warn", "error" or "debug". */
static int l_log(lua_State *L) {
  static const char *const levels[] = {"debug", "info", "warn", "error", NULL};
  int level = luaL_checkoption(L, 1, "info", levels);
  const char *msg = luaL_checkstring(L, 2);
  log_write((enum log_level)level, "%s", msg);
  return 0;
}

/* ------------------------------------------------------------ timers */

/* An app timer: owned by the runtime (on rt->timers) until cancelled; its
 * memory is freed in the uv handle's close callback.  The Lua handle only
 * points at it. */
typedef struct apptimer {
  uv_timer_t timer;
  runtime_t *rt;
  int fn_ref;
  int repeat;
  list_node_t node;
  struct apptimer **handle; /* the Lua handle's pointer, cleared on cancel */
} apptimer_t;

static void free_timer(uv_handle_t *h) { free(h->data); }

static void timer_cancel(apptimer_t *at) {
  if (at == NULL || uv_is_closing((uv_handle_t *)&at->timer)) return;
  uv_timer_stop(&at->timer);
  list_remove(&at->node);
  luaL_unref(at->rt->L, LUA_REGISTRYINDEX, at->fn_ref);
  if (at->handle != NULL) *at->handle = NULL;
  uv_close((uv_handle_t *)&at->timer, free_timer);
}

static void on_app_timer(uv_timer_t *h) {
  apptimer_t *at = h->data;
  runtime_t *rt = at->rt;
  lua_State *L = rt->L;
  lua_rawgeti(L, LUA_REGISTRYINDEX, at->fn_ref);
  if (!at->repeat) timer_cancel(at); /* the function is on the stack */
  if (lrt_spawn(rt, L, 0) != 0) log_error("timer: not enough memory to run the callback");
}

/* Creates a timer firing after s seconds (and every s when repeat). */
static int new_timer(lua_State *L, int repeat) {
  uint64_t ms = check_seconds(L, 1);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  runtime_t *rt = lrt_get(L);
  if (rt->stopping) return luaL_error(L, "timers cannot start: the server is stopping");
  if (repeat && ms == 0) return luaL_argerror(L, 1, "an interval must be above zero");
  apptimer_t *at = calloc(1, sizeof(*at));
  if (at == NULL) return luaL_error(L, "not enough memory");
  apptimer_t **h = lua_newuserdatauv(L, sizeof(*h), 0);
  *h = at;
  luaL_setmetatable(L, TIMER_MT);
  uv_timer_init(&rt->w->loop, &at->timer);
  at->timer.data = at;
  at->rt = rt;
  at->repeat = repeat;
  at->handle = h;
  lua_pushvalue(L, 2);
  at->fn_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  list_push_back(&rt->timers, &at->node);
  uv_timer_start(&at->timer, on_app_timer, ms, repeat ? ms : 0);
  return 1;
}

/* sluice.every(s, fn) -> timer: runs fn as a task every s seconds. */
static int l_every(lua_State *L) { return new_timer(L, 1); }

/* sluice.after(s, fn) -> timer: runs fn as a task once, after s seconds. */
static int l_after(lua_State *L) { return new_timer(L, 0); }

/* timer:cancel(): stops the timer (idempotent). */
static int l_timer_cancel(lua_State *L) {
  apptimer_t **h = luaL_checkudata(L, 1, TIMER_MT);
  timer_cancel(*h);
  *h = NULL;
  return 0;
}

/* __gc: the handle goes, the timer keeps running (it belongs to the app). */
static int l_timer_gc(lua_State *L) {
  apptimer_t **h = luaL_checkudata(L, 1, TIMER_MT);
  if (*h != NULL) (*h)->handle = NULL;
  *h = NULL;
  return 0;
}

void bind_timers_stop(runtime_t *rt) {
  while (!list_empty(&rt->timers)) timer_cancel(list_entry(rt->timers.next, apptimer_t, node));
}

/* ------------------------------------------------------------ module */

int luaopen_sluice_core(lua_State *L) {
  static const luaL_Reg fns[] = {{"sleep", l_sleep}, {"now", l_now},     {"spawn", l_spawn},
                                 {"every", l_every}, {"after", l_after}, {"log", l_log},
                                 {NULL, NULL}};
  static const luaL_Reg timer_methods[] = {{"cancel", l_timer_cancel}, {NULL, NULL}};

  static const luaL_Reg timer_meta[] = {{"__gc", l_timer_gc}, {NULL, NULL}};

  luaL_newmetatable(L, TIMER_MT);
  luaL_setfuncs(L, timer_meta, 0);
  luaL_newlib(L, timer_methods);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);

  luaL_newlib(L, fns);
  bind_http_open(L);
  bind_hub_open(L);
  bind_admin_open(L);
  bind_fetch_open(L);
  bind_json_open(L);
  lua_setfield(L, -2, "json");
  lua_pushlightuserdata(L, &lrt_yield_token);
  lua_setfield(L, -2, "yield_token");
  runtime_t *rt = lrt_get(L);
  lua_pushboolean(L, rt->w->cfg->reload);
  lua_setfield(L, -2, "reload");
  lua_pushinteger(L, rt->w->id);
  lua_setfield(L, -2, "worker");
  lua_pushliteral(L, SLUICE_VERSION);
  lua_setfield(L, -2, "version");
  return 1;
}
