/*
 * bind_hub.c - channels for Lua: sluice.publish, stream:subscribe,
 * sluice.history and sluice.stats.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fanout.h"
#include "hub.h"
#include "lrt.h"
#include "request.h"
#include "rhub.h"
#include "runtime.h"
#include "worker.h"

static hub_t *get_hub(lua_State *L) { return lrt_get(L)->w->srv->hub; }

/* The worker's link to Redis, or NULL when the hub is in memory. */
static rhub_t *get_rhub(lua_State *L) { return lrt_get(L)->w->rhub; }

/* Whether channels of this name go through Redis. */
static int via_redis(lua_State *L, const char *name, size_t len) {
  return get_rhub(L) != NULL && !rhub_local_channel(name, len);
}

/* ------------------------------------------------ waiting on Redis */

/* The task ended before Redis answered: the answer finds no one. */
static void cancel_redis_wait(task_t *t) { rhub_cancel(t->wait_op); }

/* Redis answered: the push function of the waiting task reads res. */
static void on_redis_done(void *ud, int status, const rhub_result_t *res) {
  task_t *t = ud;
  t->wait_op = NULL;
  t->wait_cancel = NULL;
  t->wait_result = res;
  rt_wake(t, status);
}

/* Yields the task until op ends; push gives the results. */
static int wait_redis(lua_State *L, task_t *t, rhub_op_t *op, lrt_push_fn push) {
  t->wait_op = op;
  t->wait_cancel = cancel_redis_wait;
  return lrt_yield(L, t, push);
}

/* Takes the result a wake-up brought; pushes nil, msg for a failure. */
static const rhub_result_t *take_result(lua_State *co, task_t *t, int status, int *pushed) {
  const rhub_result_t *res = t->wait_result;
  t->wait_result = NULL;
  *pushed = 0;
  if (status < 0) {
    luaL_pushfail(co);
    lua_pushstring(co, res != NULL && res->err != NULL ? res->err : "redis: failed");
    *pushed = 2;
  }
  return res;
}

/* Checks a channel name argument. */
static const char *check_channel(lua_State *L, int idx, size_t *len) {
  const char *name = luaL_checklstring(L, idx, len);
  luaL_argcheck(L, *len > 0, idx, "channel name must not be empty");
  return name;
}

/* Reads an id given as a string or an integer: 1 and *id when it is one
 * the hub could have made, 0 otherwise (nil, unknown, malformed).  With
 * Redis, ids are stream ids ("MS-SEQ"). */
static int opt_id(lua_State *L, int idx, uint64_t *id) {
  if (get_rhub(L) != NULL) {
    size_t n;
    const char *s = lua_type(L, idx) == LUA_TSTRING ? lua_tolstring(L, idx, &n) : NULL;
    return s != NULL && rhub_parse_id(s, n, id);
  }
  if (lua_isinteger(L, idx)) {
    lua_Integer v = lua_tointeger(L, idx);
    if (v < 0) return 0;
    *id = (uint64_t)v;
    return 1;
  }
  if (lua_type(L, idx) != LUA_TSTRING) return 0;
  size_t n;
  const char *s = lua_tolstring(L, idx, &n);
  return hub_parse_id(s, n, id);
}

static void push_id(lua_State *L, uint64_t id) {
  char buf[24];
  int n = snprintf(buf, sizeof(buf), "%llu", (unsigned long long)id);
  lua_pushlstring(L, buf, (size_t)n);
}

static int push_published(lua_State *co, task_t *t, int status) {
  int pushed;
  const rhub_result_t *res = take_result(co, t, status, &pushed);
  if (pushed) return pushed;
  lua_pushstring(co, res->id_text);
  return 1;
}

/* sluice.publish(channel, ev) -> id, or nil, msg when Redis cannot take
 * it.  Encodes the event once and hands it to the hub, which numbers it,
 * keeps it in history and posts it to every worker's subscribers; with
 * Redis, the task waits for Redis to number and keep it. */
static int l_publish(lua_State *L) {
  size_t clen;
  const char *cname = check_channel(L, 1, &clen);
  task_t *t = via_redis(L, cname, clen) ? lrt_current(L, "sluice.publish") : NULL;
  sse_event_t ev;
  lrt_check_event(L, 2, &ev, "sluice.publish");
  if (ev.id != NULL) return luaL_error(L, "sluice.publish: the hub numbers events; leave out field 'id'");
  frame_t *body = lrt_encode_event(L, &ev, "sluice.publish");
  /* The id field goes right after the event field, where the encoder would
   * have put it. */
  size_t id_at = 0;
  if (ev.event != NULL) id_at = (size_t)((char *)memchr(body->data, '\n', body->len) - body->data) + 1;
  if (t != NULL) {
    rhub_op_t *op;
    const char *err;
    int rc = rhub_publish(get_rhub(L), cname, clen, body, id_at, on_redis_done, t, &op, &err);
    frame_unref(body);
    if (rc < 0) {
      luaL_pushfail(L);
      lua_pushstring(L, err);
      return 2;
    }
    return wait_redis(L, t, op, push_published);
  }
  uint64_t id = 0;
  int rc = hub_publish_to(get_hub(L), cname, clen, body, id_at, &id);
  frame_unref(body);
  if (rc) return luaL_error(L, "not enough memory");
  push_id(L, id);
  return 1;
}

/* The i-th channel name (0-based) of subscribe's argument 2, a name or a
 * list of names, or NULL when it is not a non-empty string.  The string
 * stays referenced by argument 2, so it outlives the pop. */
static const char *channel_arg(lua_State *L, int i, size_t *len) {
  *len = 0;
  const char *name = NULL;
  if (lua_type(L, 2) != LUA_TTABLE) {
    if (lua_type(L, 2) == LUA_TSTRING) name = lua_tolstring(L, 2, len);
  } else {
    lua_rawgeti(L, 2, i + 1);
    if (lua_type(L, -1) == LUA_TSTRING) name = lua_tolstring(L, -1, len);
    lua_pop(L, 1);
  }
  return name != NULL && *len > 0 ? name : NULL;
}

static int push_subscribed(lua_State *co, task_t *t, int status) {
  int pushed;
  const rhub_result_t *res = take_result(co, t, status, &pushed);
  if (pushed) return pushed;
  lua_pushinteger(co, res->replayed);
  lua_pushboolean(co, !res->gap);
  return 2;
}

/* stream:subscribe(channel | {channels}, { since = id }) -> replayed count,
 * and true, or false when events after since were no longer retained;
 * nil, "closed" for a gone stream; with Redis, nil, msg when it is
 * unavailable. */
static int l_subscribe(lua_State *L) {
  rhandle_t *h = luaL_checkudata(L, 1, STREAM_MT);
  lua_settop(L, 3); /* the options slot stays 3 whatever we push */
  int n;
  size_t len;
  /* Everything that can raise comes first: once channel references are
   * taken below, nothing may jump past their release. */
  if (lua_type(L, 2) == LUA_TTABLE) {
    n = (int)luaL_len(L, 2);
    luaL_argcheck(L, n > 0, 2, "no channels given");
    for (int i = 0; i < n; i++)
      if (channel_arg(L, i, &len) == NULL)
        return luaL_argerror(L, 2, "channel names must be non-empty strings");
  } else {
    n = 1;
    check_channel(L, 2, &len);
  }
  /* With Redis, node-local channels ("_sluice.*") and shared ones cannot
   * share a replay. */
  int redis = 0;
  for (int i = 0; i < n; i++) {
    const char *name = channel_arg(L, i, &len);
    int r = via_redis(L, name, len);
    if (i > 0 && r != redis)
      return luaL_argerror(L, 2, "cannot mix _sluice.* channels with others in one subscribe");
    redis = r;
  }
  task_t *t = redis ? lrt_current(L, "stream:subscribe") : NULL;
  uint64_t since = 0;
  int has_since = 0;
  if (!lua_isnoneornil(L, 3)) {
    luaL_checktype(L, 3, LUA_TTABLE);
    lua_getfield(L, 3, "since");
    has_since = opt_id(L, -1, &since);
    lua_pop(L, 1);
  }
  req_t *r = h->r;
  if (r == NULL || req_stream_closed(r)) {
    luaL_pushfail(L);
    lua_pushliteral(L, "closed");
    return 2;
  }
  /* The pointer array lives in a userdata, freed by Lua whatever happens;
   * each pointer carries a reference of ours until the end of this call. */
  hub_channel_t **chs = lua_newuserdatauv(L, (size_t)n * sizeof(*chs), 0);
  hub_t *hub = get_hub(L);
  int held = 0, got = -ENOMEM, gap = 0;
  while (held < n) {
    const char *name = channel_arg(L, held, &len);
    if ((chs[held] = hub_channel(hub, name, len)) == NULL) break;
    held++;
  }
  if (held == n && t != NULL) {
    rhub_op_t *op;
    rhub_result_t res;
    const char *err;
    int rc = rhub_subscribe(get_rhub(L), r, chs, n, has_since, since, on_redis_done, t, &op, &res, &err);
    for (int i = 0; i < held; i++) hub_channel_release(hub, chs[i]);
    if (rc == 0) return wait_redis(L, t, op, push_subscribed);
    if (rc < 0) {
      luaL_pushfail(L);
      lua_pushstring(L, err);
      return 2;
    }
    lua_pushinteger(L, res.replayed);
    lua_pushboolean(L, !res.gap);
    return 2;
  }
  if (held == n) got = fanout_subscribe(r, chs, n, has_since, since, &gap);
  for (int i = 0; i < held; i++) hub_channel_release(hub, chs[i]);
  if (got < 0) return luaL_error(L, "not enough memory");
  lua_pushinteger(L, got);
  lua_pushboolean(L, !gap);
  return 2;
}

/* Pushes a table { id, event, data, retry } decoded from one of our own
 * frames (the encoder's exact format: "field: value" lines). */
static void push_frame_event(lua_State *L, const frame_t *f) {
  lua_createtable(L, 0, 4);
  luaL_Buffer data;
  int has_data = 0;
  const char *p = f->data, *end = f->data + f->len;
  luaL_buffinit(L, &data); /* the buffer sits above the table */
  while (p < end) {
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    if (nl == NULL || nl == p) break; /* the blank line ends the event */
    const char *colon = memchr(p, ':', (size_t)(nl - p));
    if (colon != NULL) {
      size_t nlen = (size_t)(colon - p);
      const char *v = colon + 1;
      if (v < nl && *v == ' ') v++;
      size_t vlen = (size_t)(nl - v);
      if (nlen == 4 && memcmp(p, "data", 4) == 0) {
        if (has_data) luaL_addchar(&data, '\n');
        luaL_addlstring(&data, v, vlen);
        has_data = 1;
      } else if (nlen == 5 && memcmp(p, "event", 5) == 0) {
        lua_pushlstring(L, v, vlen);
        lua_setfield(L, -3, "event");
      } else if (nlen == 2 && memcmp(p, "id", 2) == 0) {
        lua_pushlstring(L, v, vlen);
        lua_setfield(L, -3, "id");
      } else if (nlen == 5 && memcmp(p, "retry", 5) == 0) {
        lua_pushinteger(L, strtoll(v, NULL, 10));
        lua_setfield(L, -3, "retry");
      }
    }
    p = nl + 1;
  }
  luaL_pushresult(&data);
  if (has_data)
    lua_setfield(L, -2, "data");
  else
    lua_pop(L, 1);
}

static int push_history(lua_State *co, task_t *t, int status) {
  int pushed;
  const rhub_result_t *res = take_result(co, t, status, &pushed);
  if (pushed) return pushed;
  lua_createtable(co, (int)res->nevents, 0);
  for (size_t i = 0; i < res->nevents; i++) {
    push_frame_event(co, res->events[i].frame);
    lua_rawseti(co, -2, (lua_Integer)i + 1);
  }
  return 1;
}

/* sluice.history(channel, { since = id, limit = n }) -> list of events
 * ({ id, event, data }) retained after since (all when since is absent),
 * oldest first, at most limit of them. */
static int l_history(lua_State *L) {
  size_t clen;
  const char *cname = check_channel(L, 1, &clen);
  uint64_t since = 0;
  int has_since = 0, bad_since = 0;
  lua_Integer limit = 0;
  if (!lua_isnoneornil(L, 2)) {
    luaL_checktype(L, 2, LUA_TTABLE);
    if (lua_getfield(L, 2, "since") != LUA_TNIL) {
      has_since = opt_id(L, -1, &since);
      bad_since = !has_since;
    }
    if (lua_getfield(L, 2, "limit") != LUA_TNIL) {
      limit = luaL_checkinteger(L, -1);
      luaL_argcheck(L, limit >= 0, 2, "limit must not be negative");
    }
    lua_pop(L, 2);
  }
  task_t *t = via_redis(L, cname, clen) ? lrt_current(L, "sluice.history") : NULL;
  lua_newtable(L);
  if (bad_since) return 1; /* an id we never made: nothing to catch up on */
  if (limit == 0 && !lua_isnoneornil(L, 2)) {
    lua_getfield(L, 2, "limit");
    int asked = !lua_isnil(L, -1);
    lua_pop(L, 1);
    if (asked) return 1; /* limit = 0: none */
  }
  if (t != NULL) {
    rhub_op_t *op;
    const char *err;
    if (rhub_history(get_rhub(L), cname, clen, has_since, since, (size_t)limit, on_redis_done, t,
                     &op, &err) != 0) {
      luaL_pushfail(L);
      lua_pushstring(L, err);
      return 2;
    }
    return wait_redis(L, t, op, push_history);
  }
  /* Reading never creates a channel: names from clients cost nothing.  The
   * reference keeps the channel for the collect; the frames collected
   * carry their own. */
  hub_channel_t *ch = hub_channel_find(get_hub(L), cname, clen);
  if (ch == NULL) return 1;
  hub_msg_t *items;
  uint64_t watermark;
  int gap;
  int got = hub_collect(get_hub(L), &ch, 1, since, has_since, (size_t)limit, &items, &watermark, &gap);
  hub_channel_release(get_hub(L), ch);
  if (got < 0) return luaL_error(L, "not enough memory");
  for (int i = 0; i < got; i++) {
    push_frame_event(L, items[i].frame);
    lua_rawseti(L, -2, i + 1);
  }
  for (int i = 0; i < got; i++) frame_unref(items[i].frame);
  free(items);
  return 1;
}

/* Sets t[name] = v on the table at the top. */
static void set_count(lua_State *L, const char *name, uint64_t v) {
  lua_pushinteger(L, (lua_Integer)v);
  lua_setfield(L, -2, name);
}

/* sluice.stats() -> counters of this worker and of the hub; with Redis,
 * its link's in field redis. */
static int l_stats(lua_State *L) {
  worker_t *w = lrt_get(L)->w;
  hub_stats_t hs;
  hub_get_stats(get_hub(L), &hs);
  lua_createtable(L, 0, 9);
  set_count(L, "worker", (uint64_t)w->id);
  set_count(L, "connections", w->nconns);
  set_count(L, "subscribers", STAT_GET(w, subscribers));
  set_count(L, "delivered", STAT_GET(w, delivered));
  set_count(L, "slow_drops", STAT_GET(w, slow_drops));
  set_count(L, "published", hs.published);
  set_count(L, "channels", hs.channels);
  set_count(L, "retained", hs.retained);
  if (w->rhub != NULL) {
    lua_createtable(L, 0, 4);
    lua_pushboolean(L, STAT_GET(w, redis_up) != 0);
    lua_setfield(L, -2, "up");
    set_count(L, "published", STAT_GET(w, redis_published));
    set_count(L, "received", STAT_GET(w, redis_received));
    set_count(L, "reconnects", STAT_GET(w, redis_reconnects));
    lua_setfield(L, -2, "redis");
  }
  return 1;
}

/* Adds publish/history/stats to the core table at the top, and subscribe
 * to the stream methods. */
void bind_hub_open(lua_State *L) {
  static const luaL_Reg core[] = {
      {"publish", l_publish}, {"history", l_history}, {"stats", l_stats}, {NULL, NULL}};
  luaL_setfuncs(L, core, 0);
  luaL_getmetatable(L, STREAM_MT);
  lua_getfield(L, -1, "methods");
  lua_pushcfunction(L, l_subscribe);
  lua_setfield(L, -2, "subscribe");
  lua_pop(L, 2);
}
