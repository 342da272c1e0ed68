/*
 * lrt.h - runtime internals shared by runtime.c and the bind_*.c bindings.
 * Only these files include Lua's headers.
 */
#ifndef SLUICE_LRT_H
#define SLUICE_LRT_H

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <uv.h>

#include "frame.h"
#include "list.h"
#include "runtime.h"
#include "sse_encode.h"
#include "worker.h"

struct worker;
struct req;

/* Pushes the results of a completed wait onto the task's coroutine and
 * returns how many; status is what rt_wake() was given. */
typedef int (*lrt_push_fn)(lua_State *co, task_t *t, int status);

struct task {
  uv_timer_t timer;       /* sleep and deferred start; the task's memory is
                             freed in this handle's close callback */
  runtime_t *rt;
  lua_State *co;
  int co_ref;             /* registry reference anchoring the coroutine */
  struct req *req;        /* the request this task handles, or NULL */
  struct req *wait_req;   /* the request whose body or drain it waits on */
  void *wait_ctx;         /* what else it waits on (a response), or NULL */
  /* An operation it waits on that must be told when the task ends first
   * (a Redis command): wait_cancel(t) forgets the task there. */
  void *wait_op;
  void (*wait_cancel)(struct task *t);
  const void *wait_result; /* for the push function, during rt_wake */
  list_node_t fetches;    /* upstream responses it started (bind_fetch.c) */
  lrt_push_fn push;       /* set while waiting */
  list_node_t node;       /* on rt->tasks, or on rt->spare once ended */
  int nargs;              /* arguments waiting for a deferred start */
  unsigned running : 1;
  unsigned waiting : 1;
  unsigned ended : 1;
};

/* The worker's upstream client, made on first use. */
struct fetch_multi *lrt_fetch_multi(runtime_t *rt);

/* Aborts the task's upstream transfers (it ended), except those that asked
 * to be drained. */
void bind_fetch_task_end(task_t *t);

/* Whether the task has a transfer that asked to run on after its client
 * left (drain_on_disconnect). */
int bind_fetch_draining(task_t *t);

void bind_fetch_open(lua_State *L);

struct runtime {
  lua_State *L;
  size_t mem_used;           /* bytes the VM holds (its allocator counts) */
  size_t mem_limit;          /* refuse allocations past this; 0: none */
  char warning[512];         /* a warning being assembled (lua_warning parts) */
  size_t warning_len;
  app_opts_t opts;           /* what this VM's app asked for */
  list_node_t retired_node;  /* on w->retired once replaced by a reload */
  unsigned retired : 1;
  struct fetch_multi *fetch; /* NULL until the first sluice.fetch */
  struct worker *w;
  task_t *current;        /* the task being resumed, if any */
  int dispatch_ref;       /* the app's dispatcher function */
  list_node_t tasks;      /* live tasks */
  list_node_t spare;      /* ended tasks kept for reuse, coroutine and timer
                             included (at most RT_SPARE_TASKS) */
  unsigned nspare;
  list_node_t timers;     /* sluice.every/after timers */
  unsigned stopping : 1;
};

/* The runtime that owns L (any of its coroutines). */
static inline runtime_t *lrt_get(lua_State *L) { return *(runtime_t **)lua_getextraspace(L); }

/* The running task; raises a Lua error naming fname when called outside
 * one (at load time, from a __gc). */
task_t *lrt_current(lua_State *L, const char *fname);

/* Yields the running task until rt_wake(); push gives the values the
 * yielding function returns.  Use as `return lrt_yield(L, t, push);`. */
int lrt_yield(lua_State *L, task_t *t, lrt_push_fn push);

/* Like lrt_yield, but when woken the continuation k runs (with the
 * yielding function's stack) instead of a push function: for operations
 * that re-check their state after each wake-up. */
int lrt_yieldk(lua_State *L, task_t *t, lua_KContext ctx, lua_KFunction k);

/* The running task, or NULL when the caller cannot yield (load time,
 * a __gc or __close, a C boundary). */
task_t *lrt_try_current(lua_State *L);

/* Encodes the value at idx as JSON and pushes the string; a Lua error for
 * values JSON cannot hold. */
void lrt_json_encode(lua_State *L, int idx);

/* Reads an event argument (a string, or { data, event, id, retry }) into
 * ev; its strings stay valid while the stack slots above idx stay.  Bad
 * fields are misuse: a Lua error naming fname. */
void lrt_check_event(lua_State *L, int idx, sse_event_t *ev, const char *fname);

/* Encodes ev into a new frame, or raises the encoder's refusal. */
frame_t *lrt_encode_event(lua_State *L, const sse_event_t *ev, const char *fname);

/* A request or stream handle (userdata): NULL once the request is gone. */
typedef struct rhandle {
  struct req *r;
} rhandle_t;

#define REQ_MT "sluice.request"
#define STREAM_MT "sluice.stream"

/* Creates a task running the function at the top of L's stack with nargs
 * arguments below... (see runtime.c); start deferred to the next loop turn. */
int lrt_spawn(runtime_t *rt, lua_State *L, int nargs);

/* Registers the "sluice.core" module (bindings). */
int luaopen_sluice_core(lua_State *L);

/* Bindings' entry points used by the runtime. */
void bind_push_request(lua_State *L, struct req *r);
void bind_detach(struct req *r);
void bind_json_open(lua_State *L);
void bind_http_open(lua_State *L);
void bind_hub_open(lua_State *L);
void bind_admin_open(lua_State *L);
void bind_timer_open(lua_State *L);
void bind_timers_stop(runtime_t *rt);

/* The marker our yields carry, to tell them from a user's coroutine.yield. */
extern char lrt_yield_token;

#endif
