/* runtime.c - see runtime.h and lrt.h. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fetch.h"
#include "hub.h"
#include "log.h"
#include "lrt.h"
#include "request.h"
#include "worker.h"

char lrt_yield_token;

/* lua_resetthread became lua_closethread in 5.4.6. */
#if LUA_VERSION_RELEASE_NUM >= 50406
#define close_thread(co, from) lua_closethread((co), (from))
#else
#define close_thread(co, from) ((void)(from), lua_resetthread(co))
#endif

static void resume(task_t *t, int nargs);

/* ------------------------------------------------------------ tasks */

/* Ended tasks kept per runtime for reuse.  A request's task is mostly its
 * coroutine (a Lua thread with its stack, anchored in the registry) and its
 * timer; making and collecting both for every request is a good part of a
 * small route's cost, so a task whose function returned normally goes back
 * here with both intact.  Enough for the handlers that end within one loop
 * iteration; the bound keeps what an idle worker holds small. */
#define RT_SPARE_TASKS 32

static void free_task(uv_handle_t *h) { free(h->data); }

/* Creates a task for request r (or NULL), reusing a spare one when there
 * is one: a spare's coroutine is finished with an empty stack, so it can
 * start a new function. */
static task_t *task_new(runtime_t *rt, struct req *r) {
  task_t *t;
  if (!list_empty(&rt->spare)) {
    t = list_entry(rt->spare.next, task_t, node);
    list_remove(&t->node);
    rt->nspare--;
    t->wait_req = NULL;
    t->wait_ctx = NULL;
    t->push = NULL;
    t->nargs = 0;
    t->running = t->waiting = t->ended = 0;
  } else {
    t = calloc(1, sizeof(*t));
    if (t == NULL) return NULL;
    uv_timer_init(&rt->w->loop, &t->timer);
    t->timer.data = t;
    t->rt = rt;
    t->co = lua_newthread(rt->L);
    t->co_ref = luaL_ref(rt->L, LUA_REGISTRYINDEX);
  }
  t->req = r;
  list_init(&t->fetches);
  list_push_back(&rt->tasks, &t->node);
  return t;
}

/* Frees a task for good: drops its coroutine and frees its memory in its
 * timer's close callback. */
static void task_destroy(task_t *t) {
  luaL_unref(t->rt->L, LUA_REGISTRYINDEX, t->co_ref);
  t->co = NULL;
  uv_close((uv_handle_t *)&t->timer, free_task);
}

/* Unties an ended task from everything it waited on.  With reuse set (its
 * function returned normally, so its coroutine is finished and its stack
 * empty) the task is kept as a spare while there is room; otherwise it is
 * destroyed. */
static void task_release(task_t *t, int reuse) {
  runtime_t *rt = t->rt;
  struct req *wr = t->wait_req;
  if (wr != NULL && wr->waiter == t) {
    wr->waiter = NULL;
    wr->wait = REQ_WAIT_NONE;
  }
  if (t->wait_cancel != NULL) t->wait_cancel(t);
  t->wait_cancel = NULL;
  t->wait_op = NULL;
  t->wait_req = NULL;
  t->wait_ctx = NULL;
  t->ended = 1;
  t->waiting = 0;
  bind_fetch_task_end(t);
  list_remove(&t->node);
  if (reuse && !rt->stopping && rt->nspare < RT_SPARE_TASKS && lua_status(t->co) == LUA_OK) {
    uv_timer_stop(&t->timer);
    lua_sethook(t->co, NULL, 0, 0); /* one a handler may have set on itself */
    list_push_back(&rt->spare, &t->node);
    rt->nspare++;
    return;
  }
  task_destroy(t);
}

/* Destroys the runtime's spare tasks. */
static void drop_spares(runtime_t *rt) {
  while (!list_empty(&rt->spare)) {
    task_t *t = list_entry(rt->spare.next, task_t, node);
    list_remove(&t->node);
    task_destroy(t);
  }
  rt->nspare = 0;
}

/* The task's function returned (reuse set) or failed: release it and tell
 * its request. */
static void task_finish(task_t *t, int reuse) {
  struct req *r = t->req;
  t->req = NULL;
  task_release(t, reuse);
  if (r != NULL) {
    r->task = NULL;
    if (r->waiter == t) {
      r->waiter = NULL;
      r->wait = REQ_WAIT_NONE;
    }
    req_handler_done(r);
  }
}

/* Runs the coroutine's pending to-be-closed variables, logging failures
 * (for a coroutine that failed, the status is its own error, logged already). */
static void close_pending(task_t *t, int failed) {
  lua_sethook(t->co, NULL, 0, 0);
  if (close_thread(t->co, t->rt->L) != LUA_OK && !failed) {
    log_error("error while closing a handler's variables: %s",
              lua_tostring(t->co, -1) ? lua_tostring(t->co, -1) : "(not a string)");
  }
}

void rt_kill(task_t *t) {
  if (t->ended) return;
  struct req *r = t->req;
  t->req = NULL;
  if (r != NULL) {
    r->task = NULL;
    if (r->waiter == t) {
      r->waiter = NULL;
      r->wait = REQ_WAIT_NONE;
    }
  }
  uv_timer_stop(&t->timer);
  if (t->wait_req != NULL && t->wait_req->waiter == t) {
    t->wait_req->waiter = NULL;
    t->wait_req->wait = REQ_WAIT_NONE;
  }
  t->wait_req = NULL;
  if (t->running) {
    /* Never expected (connections close from loop callbacks, not from
     * inside Lua); the coroutine ends when its resume returns. */
    t->ended = 1;
    return;
  }
  close_pending(t, 0);
  task_release(t, 0);
}

task_t *lrt_current(lua_State *L, const char *fname) {
  runtime_t *rt = lrt_get(L);
  if (rt->current == NULL || !lua_isyieldable(L))
    luaL_error(L, "%s can only be called from a handler, timer or spawned function", fname);
  return rt->current;
}

int lrt_yieldk(lua_State *L, task_t *t, lua_KContext ctx, lua_KFunction k) {
  t->push = NULL;
  t->waiting = 1;
  lua_pushlightuserdata(L, &lrt_yield_token);
  return lua_yieldk(L, 1, ctx, k);
}

struct fetch_multi *lrt_fetch_multi(runtime_t *rt) {
  if (rt->fetch == NULL) rt->fetch = fetch_multi_new(&rt->w->loop);
  return rt->fetch;
}

task_t *lrt_try_current(lua_State *L) {
  runtime_t *rt = lrt_get(L);
  return (rt->current != NULL && lua_isyieldable(L)) ? rt->current : NULL;
}

int lrt_yield(lua_State *L, task_t *t, lrt_push_fn push) {
  t->push = push;
  t->waiting = 1;
  lua_pushlightuserdata(L, &lrt_yield_token);
  return lua_yield(L, 1);
}

static void on_deferred_wake(uv_timer_t *h) {
  task_t *t = h->data;
  if (t->ended || t->running) return;
  if (t->nargs >= 0) {
    int n = t->nargs;
    t->nargs = -1;
    resume(t, n);
  }
}

void rt_wake(task_t *t, int status) {
  if (t->ended || !t->waiting) return;
  t->waiting = 0;
  lrt_push_fn push = t->push;
  t->push = NULL;
  int n = push ? push(t->co, t, status) : 0;
  t->wait_req = NULL;
  t->wait_ctx = NULL;
  if (t->rt->current != NULL) {
    /* A task is running (it caused this wake-up): resume this one on the
     * next loop turn rather than inside it. */
    t->nargs = n;
    uv_timer_start(&t->timer, on_deferred_wake, 0, 0);
    return;
  }
  resume(t, n);
}

/* Logs an error that escaped a task and answers its request with 500. */
static void task_failed(task_t *t, int status) {
  runtime_t *rt = t->rt;
  const char *msg = lua_tostring(t->co, -1);
  if (msg == NULL) msg = lua_pushfstring(t->co, "(error object is a %s value)", luaL_typename(t->co, -1));
  if (status == LUA_ERRRUN) {
    luaL_traceback(rt->L, t->co, msg, 0);
  } else {
    lua_pushstring(rt->L, msg);
  }
  const char *tb = lua_tostring(rt->L, -1);
  struct req *r = t->req;
  STAT_ADD(rt->w, handler_errors, 1);
  if (r != NULL) {
    log_error("%s %.*s: %s", http_method_name(r->msg.method), (int)r->path_len, r->msg.raw.p, tb);
    if (!r->responded && !r->streaming && r->conn != NULL) {
      r->keep_alive = 0;
      if (rt->w->cfg->reload)
        req_respond_error(r, 500, tb);
      else
        req_respond_error(r, 500, "internal server error");
    }
  } else {
    log_error("%s", tb);
  }
  lua_pop(rt->L, 1);
}

/* The watchdog's hook: raises an error on every call and count event
 * until the resume returns, so that a pcall in the runaway code cannot
 * swallow it for long. */
static void budget_hook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  runtime_t *rt = lrt_get(L);
  char msg[96];
  snprintf(msg, sizeof(msg), "cpu budget exceeded: ran over %g s without yielding",
           rt->opts.cpu_budget);
  luaL_error(L, "%s", msg);
}

void rt_interrupt(void *co) {
  lua_sethook(co, budget_hook, LUA_MASKCALL | LUA_MASKRET | LUA_MASKCOUNT, 1);
}

/* Resumes t with nargs values on its stack and handles how it stops. */
static void resume(task_t *t, int nargs) {
  runtime_t *rt = t->rt;
  worker_t *w = rt->w;
  lua_State *co = t->co;
  task_t *prev = rt->current;
  rt->current = t;
  t->running = 1;
  worker_busy_begin(w, co);
  int nres = 0;
  int status = lua_resume(co, rt->L, nargs, &nres);
  worker_busy_end(w);
  t->running = 0;
  rt->current = prev;
  int budget = lua_gethook(co) == budget_hook;
  if (budget) {
    lua_sethook(co, NULL, 0, 0);
    STAT_ADD(w, budget_kills, 1);
  }

  if (t->ended) { /* killed while it ran */
    lua_settop(co, 0);
    if (status == LUA_YIELD) close_pending(t, 0);
    t->ended = 0;
    task_release(t, 0);
    return;
  }
  if (status == LUA_YIELD) {
    if (nres == 1 && lua_touserdata(co, -1) == &lrt_yield_token) {
      lua_pop(co, 1);
      return; /* waiting; a callback will rt_wake() it */
    }
    lua_pop(co, nres);
    t->waiting = 0;
    lua_pushliteral(co, "attempt to yield from a handler: coroutine.yield works inside "
                        "coroutines the handler creates; to wait, use sluice.sleep");
    task_failed(t, LUA_ERRRUN);
    close_pending(t, 0);
    task_finish(t, 0);
    return;
  }
  if (status != LUA_OK) {
    task_failed(t, status);
    close_pending(t, 1);
  }
  lua_settop(co, 0);
  task_finish(t, status == LUA_OK);
}

int lrt_spawn(runtime_t *rt, lua_State *L, int nargs) {
  task_t *t = task_new(rt, NULL);
  if (t == NULL) return -ENOMEM;
  lua_xmove(L, t->co, nargs + 1);
  t->nargs = nargs;
  uv_timer_start(&t->timer, on_deferred_wake, 0, 0);
  return 0;
}

/* -------------------------------------------------------- dispatching */

int rt_dispatch(runtime_t *rt, struct req *r) {
  task_t *t = task_new(rt, r);
  if (t == NULL) return -ENOMEM;
  t->nargs = -1;
  r->task = t;
  http_msg_t *m = &r->msg;
  lua_State *co = t->co;
  lua_rawgeti(co, LUA_REGISTRYINDEX, rt->dispatch_ref);
  bind_push_request(co, r);
  lua_pushstring(co, http_method_name(m->method));
  lua_pushlstring(co, m->raw.p, r->path_len);
  if (r->path_len < m->url_len)
    lua_pushlstring(co, m->raw.p + r->path_len + 1, m->url_len - r->path_len - 1);
  else
    lua_pushnil(co);
  resume(t, 4);
  return 0;
}

void rt_detach_handles(struct req *r) { bind_detach(r); }

int rt_draining(task_t *t) { return bind_fetch_draining(t); }

void rt_detach_task(task_t *t) {
  struct req *r = t->req;
  t->req = NULL;
  if (r != NULL) r->task = NULL;
  if (t->wait_req == r) t->wait_req = NULL;
}


/* ---------------------------------------------------------- the VM */

/* Message handler for loading: the error with a traceback. */
static int traceback(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (msg == NULL) msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
  luaL_traceback(L, L, msg, 1);
  return 1;
}

/* Reads a number option from the table at idx, with a default. */
static double opt_number(lua_State *L, int idx, const char *name, double dflt) {
  lua_getfield(L, idx, name);
  double v = lua_isnumber(L, -1) ? lua_tonumber(L, -1) : dflt;
  lua_pop(L, 1);
  return v;
}

/* Loads the app: returns 0, or -1 with the error at the top of the stack. */
static int load_app(runtime_t *rt) {
  lua_State *L = rt->L;
  const server_config_t *cfg = rt->w->cfg;
  lua_pushcfunction(L, traceback);
  int msgh = lua_gettop(L);
  lua_getglobal(L, "require");
  lua_pushliteral(L, "sluice");
  if (lua_pcall(L, 1, 1, msgh) != LUA_OK) return -1;
  lua_getfield(L, -1, "_boot");
  lua_pushstring(L, cfg->app_dir);
  if (lua_pcall(L, 1, 2, msgh) != LUA_OK) return -1;
  /* stack: msgh, sluice, dispatch, options */
  app_opts_t *o = &rt->opts;
  o->max_body = (size_t)opt_number(L, -1, "max_body", 1024 * 1024);
  o->heartbeat = opt_number(L, -1, "heartbeat", 15);
  lua_getfield(L, -1, "heartbeat_comment");
  const char *hbc = lua_isstring(L, -1) ? lua_tostring(L, -1) : "";
  snprintf(o->heartbeat_comment, sizeof(o->heartbeat_comment), "%s", hbc);
  lua_pop(L, 1);
  o->retry = (long)opt_number(L, -1, "retry", -1);
  o->cpu_budget = opt_number(L, -1, "cpu_budget", 1.0);
  o->max_queue = (size_t)opt_number(L, -1, "max_queue", 1024 * 1024);
  o->history = (size_t)opt_number(L, -1, "history", 1000);
  o->history_ttl = opt_number(L, -1, "history_ttl", 0);
  hub_configure(rt->w->srv->hub, o->history, o->history_ttl); /* the first load's values stay */
  o->memory_limit = (size_t)opt_number(L, -1, "memory_limit", 256.0 * 1024 * 1024);
  lua_getfield(L, -1, "public");
  const char *pub = lua_isstring(L, -1) ? lua_tostring(L, -1) : "public";
  int n = pub[0] == '/' ? snprintf(o->public_dir, sizeof(o->public_dir), "%s", pub)
                        : snprintf(o->public_dir, sizeof(o->public_dir), "%.2048s/%.1024s",
                                   cfg->app_dir, pub);
  if (n < 0 || (size_t)n >= sizeof(o->public_dir)) {
    lua_pushliteral(L, "option 'public': path too long");
    return -1;
  }
  lua_pop(L, 2); /* public, options */
  rt->dispatch_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_settop(L, 0);
  /* The app is loaded: from here its handlers live within its limit. */
  rt->mem_limit = o->memory_limit;
  return 0;
}

/* The VM's allocator: counts what the VM holds and refuses to grow past
 * its memory_limit, so a handler allocating without bound gets a Lua
 * "not enough memory" error (a 500) and the worker carries on. */
static void *rt_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  runtime_t *rt = ud;
  size_t old = ptr ? osize : 0;
  if (nsize == 0) {
    free(ptr);
    rt->mem_used -= old;
    return NULL;
  }
  if (rt->mem_limit && nsize > old && rt->mem_used + (nsize - old) > rt->mem_limit) return NULL;
  void *p = realloc(ptr, nsize);
  if (p != NULL) rt->mem_used = rt->mem_used - old + nsize;
  return p;
}

/* Lua's warnings (errors in __gc among them) go to the log: they are
 * never fatal, and never silent. */
static void rt_warn(void *ud, const char *msg, int tocont) {
  runtime_t *rt = ud;
  size_t n = strlen(msg);
  if (rt->warning_len + n >= sizeof(rt->warning)) n = sizeof(rt->warning) - 1 - rt->warning_len;
  memcpy(rt->warning + rt->warning_len, msg, n);
  rt->warning_len += n;
  rt->warning[rt->warning_len] = '\0';
  if (tocont) return;
  if (rt->warning[0] != '@') log_warn("lua: %s", rt->warning); /* "@..." are control messages */
  rt->warning_len = 0;
}

runtime_t *rt_new(worker_t *w, char *err, size_t errlen) {
  runtime_t *rt = calloc(1, sizeof(*rt));
  if (rt == NULL) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  rt->w = w;
  list_init(&rt->tasks);
  list_init(&rt->spare);
  list_init(&rt->timers);
  list_init(&rt->retired_node);
  lua_State *L = lua_newstate(rt_alloc, rt);
  if (L == NULL) {
    snprintf(err, errlen, "cannot create a Lua state");
    free(rt);
    return NULL;
  }
  rt->L = L;
  *(runtime_t **)lua_getextraspace(L) = rt;
  lua_setwarnf(L, rt_warn, rt);
  luaL_openlibs(L);

  /* package.path: the project's lua/ first, then the app's folder. */
  const server_config_t *cfg = w->cfg;
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "path");
  lua_pushfstring(L, "%s/?.lua;%s/?/init.lua;%s/?.lua;%s/?/init.lua;%s", cfg->lua_dir,
                  cfg->lua_dir, cfg->app_dir, cfg->app_dir, lua_tostring(L, -1));
  lua_setfield(L, -3, "path");
  lua_pop(L, 1);
  lua_getfield(L, -1, "preload");
  lua_pushcfunction(L, luaopen_sluice_core);
  lua_setfield(L, -2, "sluice.core");
  lua_pop(L, 2);

  if (load_app(rt) != 0) {
    snprintf(err, errlen, "%s", lua_tostring(L, -1) ? lua_tostring(L, -1) : "app failed to load");
    rt_free(rt);
    return NULL;
  }
  return rt;
}

const app_opts_t *rt_opts(const runtime_t *rt) { return &rt->opts; }

int rt_describe(runtime_t *rt, char **text) {
  lua_State *L = rt->L;
  int top = lua_gettop(L);
  lua_pushcfunction(L, traceback);
  lua_getglobal(L, "require");
  lua_pushliteral(L, "sluice.check");
  int status = lua_pcall(L, 1, 1, top + 1);
  if (status == LUA_OK) {
    lua_getfield(L, -1, "describe");
    lua_rawgeti(L, LUA_REGISTRYINDEX, rt->dispatch_ref);
    lua_pushstring(L, rt->w->cfg->app_dir);
    status = lua_pcall(L, 2, 1, top + 1);
  }
  const char *s = lua_tostring(L, -1);
  *text = strdup(s ? s : "sluice.check gave no report");
  lua_settop(L, top);
  if (*text == NULL) return -ENOMEM;
  return status == LUA_OK && s ? 0 : -EINVAL;
}

void rt_retire(runtime_t *rt) {
  rt->retired = 1;
  rt_stop(rt);
  list_push_back(&rt->w->retired, &rt->retired_node);
  rt_reap(rt->w, 0);
}

void rt_reap(worker_t *w, int all) {
  list_node_t *n = w->retired.next;
  while (n != &w->retired) {
    runtime_t *rt = list_entry(n, runtime_t, retired_node);
    n = n->next;
    if (all || list_empty(&rt->tasks)) {
      list_remove(&rt->retired_node);
      rt_free(rt);
    }
  }
}

void rt_stop(runtime_t *rt) {
  rt->stopping = 1;
  bind_timers_stop(rt);
  drop_spares(rt);
  list_node_t *n = rt->tasks.next;
  while (n != &rt->tasks) {
    task_t *t = list_entry(n, task_t, node);
    n = n->next;
    if (t->req == NULL && !t->running) rt_kill(t);
  }
}

void rt_free(runtime_t *rt) {
  if (rt == NULL) return;
  bind_timers_stop(rt);
  while (!list_empty(&rt->tasks)) rt_kill(list_entry(rt->tasks.next, task_t, node));
  drop_spares(rt);
  lua_close(rt->L); /* responses' __gc free their transfers */
  fetch_multi_close(rt->fetch);
  free(rt);
}
