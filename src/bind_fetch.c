/*
 * bind_fetch.c - sluice.fetch and its response object, and stream:relay.
 *
 * A response is a userdata that owns its transfer (fetch.h).  Waiting for the
 * head, for body bytes or for the end works like a cosocket: the function
 * records the waiting task on the response and yields with a continuation;
 * the transfer's callback wakes the task, and the continuation re-checks.
 * Transfers belong to the task that started them: when it ends (returns,
 * fails, or is ended because its client left) they are aborted, unless the
 * route asked to drain them.
 *
 * stream:relay(res) without a transform stays in C: upstream bytes go
 * through the incremental SSE parser, each event is re-encoded into one
 * frame and queued on the stream; the download pauses while the client's
 * queue is over its high-water mark and resumes when it drains.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "conn.h"
#include "fetch.h"
#include "lrt.h"
#include "request.h"
#include "sse_encode.h"
#include "sse_parse.h"
#include "worker.h"

#define RESPONSE_MT "sluice.response"
#define FETCH_BUFFER (256 * 1024)        /* unread bytes before pausing */
#define FETCH_MAX_TEXT (16 * 1024 * 1024) /* res:text() default limit */

enum lwait { LW_NONE, LW_HEAD, LW_DATA, LW_DONE };

typedef struct lfetch {
  fetch_t *f;                /* NULL once freed */
  runtime_t *rt;
  task_t *owner;             /* the task whose end aborts it */
  list_node_t node;          /* on owner->fetches */
  task_t *waiter;
  uint8_t wait;              /* enum lwait */
  unsigned drain : 1;        /* drain_on_disconnect */
  unsigned closed : 1;       /* res:close() or aborted with its task */
  unsigned events_on : 1;    /* the SSE parser is set up */
  unsigned lines_cr : 1;     /* lines(): the last line ended on CR */
  unsigned relaying : 1;
  size_t max_text;
  sse_parser_t parser;       /* for events() and relay */
  buf_t line;                /* lines(): a line split across reads */
  int queue_ref;             /* events(): parsed events not yet returned */
  lua_Integer queue_head, queue_tail;
  rhandle_t *relay_h;        /* relay: the stream it writes to (its handle
                                is on the relaying task's stack) */
  const char *relay_error;
  buf_t relay_out;           /* relay: the events of one read, encoded */
  char last_id[256];         /* relay: the id last written downstream */
  size_t last_id_len;
  int has_last_id;
  uint64_t t0;               /* uv_hrtime at the start, for time to first byte */
} lfetch_t;

/* ------------------------------------------------------------- plumbing */

static lfetch_t *check_res(lua_State *L, int idx) { return luaL_checkudata(L, idx, RESPONSE_MT); }

/* Ends the transfer (if it runs) and detaches from the owner task. */
static void lf_abort(lfetch_t *lf) {
  lf->closed = 1; /* first: an abort is not an upstream error (on_fetch) */
  if (lf->f != NULL && !fetch_done(lf->f)) fetch_abort(lf->f);
  list_remove(&lf->node);
  lf->owner = NULL;
  if (lf->relay_h != NULL && lf->relay_h->r != NULL) lf->relay_h->r->on_drain = NULL;
  lf->relay_h = NULL;
}

/* __gc and __close: abort and free (idempotent). */
static int res_gc(lua_State *L) {
  lfetch_t *lf = check_res(L, 1);
  if (lf->f == NULL) return 0;
  lf_abort(lf);
  fetch_free(lf->f);
  lf->f = NULL;
  if (lf->events_on) sse_parser_free(&lf->parser);
  lf->events_on = 0;
  buf_free(&lf->line);
  buf_free(&lf->relay_out);
  if (lf->queue_ref != LUA_NOREF) luaL_unref(L, LUA_REGISTRYINDEX, lf->queue_ref);
  lf->queue_ref = LUA_NOREF;
  return 0;
}

void bind_fetch_task_end(task_t *t) {
  lfetch_t *waited = t->wait_ctx; /* perhaps a response it does not own */
  if (waited != NULL && waited->waiter == t) waited->waiter = NULL;
  list_node_t *n = t->fetches.next;
  while (n != &t->fetches) {
    lfetch_t *lf = list_entry(n, lfetch_t, node);
    n = n->next;
    if (lf->drain && lf->f != NULL && !fetch_done(lf->f)) {
      /* Keep reading to the end, dropping the bytes. */
      list_remove(&lf->node);
      lf->owner = NULL;
      lf->waiter = NULL;
      lf->relaying = 0;
      if (lf->relay_h != NULL && lf->relay_h->r != NULL) lf->relay_h->r->on_drain = NULL;
      lf->relay_h = NULL;
      fetch_hold(lf->f, 0);
      fetch_set_limit(lf->f, 0);
      size_t unread;
      fetch_peek(lf->f, &unread);
      fetch_consume(lf->f, unread);
      continue;
    }
    lf_abort(lf);
  }
}

int bind_fetch_draining(task_t *t) {
  for (list_node_t *n = t->fetches.next; n != &t->fetches; n = n->next) {
    lfetch_t *lf = list_entry(n, lfetch_t, node);
    if (lf->drain && lf->f != NULL && !fetch_done(lf->f)) return 1;
  }
  return 0;
}

/* Wakes the task waiting on lf when what it waits for happened. */
static void wake(lfetch_t *lf, enum fetch_event ev) {
  task_t *t = lf->waiter;
  if (t == NULL) return;
  int ready = ev == FETCH_DONE || (lf->wait == LW_HEAD && ev == FETCH_HEADERS) ||
              (lf->wait == LW_DATA && ev == FETCH_DATA);
  if (!ready) return;
  lf->waiter = NULL;
  lf->wait = LW_NONE;
  rt_wake(t, 0);
}

static void relay_step(lfetch_t *lf);

/* Counts an upstream transfer's head arriving, or its failure, for the
 * metrics. */
static void count_fetch(lfetch_t *lf, fetch_t *f, enum fetch_event ev) {
  worker_t *w = lf->rt->w;
  if (ev == FETCH_HEADERS) {
    uint64_t us = (uv_hrtime() - lf->t0) / 1000;
    int i = 0;
    while (i < WORKER_TTFB_BUCKETS - 1 && (double)us / 1e6 > worker_ttfb_bounds[i]) i++;
    if ((double)us / 1e6 <= worker_ttfb_bounds[i]) STAT_ADD(w, ttfb_buckets[i], 1);
    STAT_ADD(w, ttfb_count, 1);
    STAT_ADD(w, ttfb_us, us);
  } else if (ev == FETCH_DONE && fetch_error(f) != NULL && !lf->closed) {
    STAT_ADD(w, upstream_errors, 1);
  }
}

static void on_fetch(fetch_t *f, enum fetch_event ev, void *ud) {
  lfetch_t *lf = ud;
  count_fetch(lf, f, ev);
  if (lf->relaying) relay_step(lf);
  if (ev == FETCH_DATA && lf->waiter == NULL && lf->owner == NULL && lf->drain) {
    size_t n;
    fetch_peek(lf->f, &n); /* draining after the client left: drop it */
    fetch_consume(lf->f, n);
  }
  wake(lf, ev);
}

/* Records the running task as waiting on lf, then yields with k. */
static int wait_on(lua_State *L, lfetch_t *lf, enum lwait what, lua_KFunction k, const char *fname) {
  task_t *t = lrt_current(L, fname);
  if (lf->waiter != NULL && lf->waiter != t)
    return luaL_error(L, "%s: another task is already reading this response", fname);
  lf->waiter = t;
  lf->wait = what;
  t->wait_ctx = lf;
  return lrt_yieldk(L, t, 0, k);
}

/* ---------------------------------------------------------------- fetch */

/* Reads fetch options from the table at idx (misuse raises). */
static void read_opts(lua_State *L, int idx, fetch_opts_t *o, int *drain, size_t *max_text) {
  o->buffer_limit = FETCH_BUFFER;
  *max_text = FETCH_MAX_TEXT;
  *drain = 0;
  if (lua_isnoneornil(L, idx)) return;
  luaL_checktype(L, idx, LUA_TTABLE);
  if (lua_getfield(L, idx, "method") != LUA_TNIL) {
    o->method = luaL_checkstring(L, -1);
    for (const char *p = o->method; *p; p++)
      if (!http_token_char((unsigned char)*p)) luaL_error(L, "sluice.fetch: invalid method");
  }
  if (lua_getfield(L, idx, "timeout") != LUA_TNIL) o->timeout = luaL_checknumber(L, -1);
  if (lua_getfield(L, idx, "connect_timeout") != LUA_TNIL) o->connect_timeout = luaL_checknumber(L, -1);
  if (lua_getfield(L, idx, "read_timeout") != LUA_TNIL) o->read_timeout = luaL_checknumber(L, -1);
  int t = lua_getfield(L, idx, "redirects");
  if (t == LUA_TBOOLEAN) o->max_redirects = lua_toboolean(L, -1) ? 10 : 0;
  else if (t != LUA_TNIL) o->max_redirects = (long)luaL_checkinteger(L, -1);
  if (lua_getfield(L, idx, "drain_on_disconnect") != LUA_TNIL) *drain = lua_toboolean(L, -1);
  if (lua_getfield(L, idx, "max_body") != LUA_TNIL) *max_text = (size_t)luaL_checkinteger(L, -1);
  if (lua_getfield(L, idx, "ca_file") != LUA_TNIL) o->ca_file = luaL_checkstring(L, -1);
  lua_pop(L, 8); /* ca_file stays referenced: the caller keeps opts alive */
}

/* Builds the header list ("Name: value" strings in a Lua table kept on the
 * stack) and the body; a table body is JSON with its content type. */
static const char **read_request(lua_State *L, int idx, fetch_opts_t *o) {
  int has_ct = 0;
  lua_newtable(L); /* the strings, anchored */
  int list = lua_gettop(L);
  int n = 0;
  if (!lua_isnoneornil(L, idx)) {
    if (lua_getfield(L, idx, "headers") == LUA_TTABLE) {
      lua_pushnil(L);
      while (lua_next(L, -2)) {
        size_t nl, vl;
        const char *name = lua_type(L, -2) == LUA_TSTRING ? lua_tolstring(L, -2, &nl) : NULL;
        const char *value = lua_tolstring(L, -1, &vl);
        if (name == NULL || value == NULL) luaL_error(L, "sluice.fetch: headers must map names to strings");
        for (size_t i = 0; i < nl; i++)
          if (!http_token_char((unsigned char)name[i])) luaL_error(L, "sluice.fetch: invalid header name '%s'", name);
        for (size_t i = 0; i < vl; i++)
          if (value[i] == '\r' || value[i] == '\n' || value[i] == '\0')
            luaL_error(L, "sluice.fetch: header '%s' must not contain CR, LF or NUL", name);
        if (nl == 12 && strncasecmp(name, "content-type", 12) == 0) has_ct = 1;
        lua_pushfstring(L, "%s: %s", name, value);
        lua_rawseti(L, list, ++n);
        lua_pop(L, 1);
      }
    } else if (!lua_isnil(L, -1)) {
      luaL_error(L, "sluice.fetch: headers must be a table");
    }
    lua_pop(L, 1);
    int bt = lua_getfield(L, idx, "body");
    if (bt == LUA_TTABLE) {
      lrt_json_encode(L, -1);
      lua_replace(L, -2);
      if (!has_ct) {
        lua_pushliteral(L, "Content-Type: application/json");
        lua_rawseti(L, list, ++n);
      }
    } else if (bt != LUA_TNIL && bt != LUA_TSTRING) {
      luaL_error(L, "sluice.fetch: body must be a string or a table");
    }
    if (bt != LUA_TNIL) {
      o->body = lua_tolstring(L, -1, &o->body_len);
      o->has_body = 1;
      lua_setfield(L, list, "body"); /* anchored while curl copies it */
    } else {
      lua_pop(L, 1);
    }
  }
  const char **hdrs = lua_newuserdatauv(L, (size_t)(n + 1) * sizeof(*hdrs), 0);
  for (int i = 0; i < n; i++) {
    lua_rawgeti(L, list, i + 1);
    hdrs[i] = lua_tostring(L, -1); /* anchored by the list */
    lua_pop(L, 1);
  }
  hdrs[n] = NULL;
  return hdrs;
}

static int fetch_k(lua_State *L, int status, lua_KContext ctx);

/* sluice.fetch(url, opts) -> response, or nil, message.  Yields until the
 * status and headers arrive. */
static int l_fetch(lua_State *L) {
  const char *url = luaL_checkstring(L, 1);
  fetch_opts_t o;
  memset(&o, 0, sizeof(o));
  o.url = url;
  int drain;
  size_t max_text;
  read_opts(L, 2, &o, &drain, &max_text);
  o.headers = read_request(L, 2, &o);
  task_t *t = lrt_current(L, "sluice.fetch");
  runtime_t *rt = lrt_get(L);
  struct fetch_multi *m = lrt_fetch_multi(rt);
  if (m == NULL) return luaL_error(L, "not enough memory");

  lfetch_t *lf = lua_newuserdatauv(L, sizeof(*lf), 1);
  memset(lf, 0, sizeof(*lf));
  lf->rt = rt;
  lf->queue_ref = LUA_NOREF;
  lf->drain = drain;
  lf->max_text = max_text;
  list_init(&lf->node);
  luaL_setmetatable(L, RESPONSE_MT);
  char err[256];
  lf->t0 = uv_hrtime();
  STAT_ADD(rt->w, upstream_requests, 1);
  if (fetch_start(m, &o, on_fetch, lf, &lf->f, err, sizeof(err)) != 0) {
    STAT_ADD(rt->w, upstream_errors, 1);
    luaL_pushfail(L);
    lua_pushstring(L, err);
    return 2;
  }
  lf->owner = t;
  list_push_back(&t->fetches, &lf->node);
  lua_replace(L, 1); /* the response sits at index 1 while we wait */
  lua_settop(L, 1);
  return wait_on(L, lf, LW_HEAD, fetch_k, "sluice.fetch");
}

static int fetch_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  lfetch_t *lf = check_res(L, 1);
  lua_settop(L, 1);
  if (fetch_status(lf->f) == 0 && fetch_done(lf->f)) {
    const char *e = fetch_error(lf->f);
    luaL_pushfail(L);
    lua_pushstring(L, e ? e : "upstream closed without a response");
    return 2;
  }
  if (fetch_status(lf->f) == 0) return wait_on(L, lf, LW_HEAD, fetch_k, "sluice.fetch");
  return 1;
}

/* ----------------------------------------------------------- the response */

static void push_headers(lua_State *L, lfetch_t *lf) {
  size_t len;
  const char *p = fetch_headers(lf->f, &len), *end = p + len;
  lua_newtable(L);
  while (p < end) {
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    if (nl == NULL) nl = end;
    const char *colon = memchr(p, ':', (size_t)(nl - p));
    if (colon != NULL && colon > p) {
      luaL_Buffer b;
      luaL_buffinit(L, &b);
      for (const char *c = p; c < colon; c++) luaL_addchar(&b, (char)((*c >= 'A' && *c <= 'Z') ? *c + 32 : *c));
      luaL_pushresult(&b);
      const char *v = colon + 1, *ve = nl;
      while (v < ve && (*v == ' ' || *v == '\t')) v++;
      while (ve > v && (ve[-1] == '\r' || ve[-1] == ' ' || ve[-1] == '\t')) ve--;
      lua_pushvalue(L, -1);
      if (lua_rawget(L, -3) == LUA_TSTRING) {
        lua_pushliteral(L, ", ");
        lua_pushlstring(L, v, (size_t)(ve - v));
        lua_concat(L, 3);
      } else {
        lua_pop(L, 1);
        lua_pushlstring(L, v, (size_t)(ve - v));
      }
      lua_rawset(L, -3);
    }
    p = nl + 1;
  }
}

static int res_index(lua_State *L) {
  lfetch_t *lf = check_res(L, 1);
  const char *key = luaL_checkstring(L, 2);
  if (strcmp(key, "status") == 0) {
    lua_pushinteger(L, lf->f ? fetch_status(lf->f) : 0);
  } else if (strcmp(key, "ok") == 0) {
    int s = lf->f ? fetch_status(lf->f) : 0;
    lua_pushboolean(L, s >= 200 && s < 300);
  } else if (strcmp(key, "headers") == 0) {
    /* Built once, then kept in the userdata's user value. */
    if (lua_getiuservalue(L, 1, 1) != LUA_TTABLE) {
      lua_pop(L, 1);
      if (lf->f == NULL) {
        lua_newtable(L);
      } else {
        push_headers(L, lf);
        lua_pushvalue(L, -1);
        lua_setiuservalue(L, 1, 1);
      }
    }
  } else if (strcmp(key, "err") == 0) {
    const char *e = lf->f ? fetch_error(lf->f) : NULL;
    if (e) lua_pushstring(L, e);
    else if (lf->closed && lf->f && !fetch_done(lf->f)) lua_pushliteral(L, "closed");
    else lua_pushnil(L);
  } else if (strcmp(key, "complete") == 0) {
    lua_pushboolean(L, lf->f && fetch_done(lf->f) && fetch_error(lf->f) == NULL);
  } else {
    lua_getmetatable(L, 1);
    lua_getfield(L, -1, "methods");
    lua_getfield(L, -1, key);
  }
  return 1;
}

/* Whether no more bytes will come. */
static int ended(lfetch_t *lf) { return lf->f == NULL || lf->closed || fetch_done(lf->f); }

/* chunks(): the next body bytes as they arrive; nil at the end (see res.err). */
static int chunks_step(lua_State *L);
static int chunks_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  return chunks_step(L);
}
static int chunks_step(lua_State *L) {
  lfetch_t *lf = check_res(L, lua_upvalueindex(1));
  size_t n = 0;
  const char *p = lf->f ? fetch_peek(lf->f, &n) : NULL;
  if (n > 0) {
    lua_pushlstring(L, p, n);
    fetch_consume(lf->f, n);
    return 1;
  }
  if (ended(lf)) return 0;
  return wait_on(L, lf, LW_DATA, chunks_k, "res:chunks()");
}

static int res_chunks(lua_State *L) {
  check_res(L, 1);
  lua_settop(L, 1);
  lua_pushcclosure(L, chunks_step, 1);
  return 1;
}

/* lines(): the next line (CR, LF or CRLF ended, without the ending); the
 * last line is returned even without an ending. */
static int lines_step(lua_State *L);
static int lines_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  return lines_step(L);
}
static int lines_step(lua_State *L) {
  lfetch_t *lf = check_res(L, lua_upvalueindex(1));
  for (;;) {
    size_t n = 0;
    const char *p = lf->f ? fetch_peek(lf->f, &n) : NULL;
    if (n > 0 && lf->lines_cr) { /* CRLF split across reads */
      lf->lines_cr = 0;
      if (p[0] == '\n') {
        fetch_consume(lf->f, 1);
        continue;
      }
    }
    size_t i = 0;
    while (i < n && p[i] != '\n' && p[i] != '\r') i++;
    if (i < n) {
      luaL_Buffer b;
      luaL_buffinit(L, &b);
      luaL_addlstring(&b, lf->line.p ? lf->line.p : "", lf->line.len);
      luaL_addlstring(&b, p, i);
      luaL_pushresult(&b);
      buf_clear(&lf->line);
      size_t used = i + 1;
      if (p[i] == '\r') {
        if (i + 1 < n && p[i + 1] == '\n') used++;
        else if (i + 1 == n) lf->lines_cr = 1;
      }
      fetch_consume(lf->f, used);
      return 1;
    }
    if (n > 0) {
      if (buf_append(&lf->line, p, n)) return luaL_error(L, "not enough memory");
      fetch_consume(lf->f, n);
      continue;
    }
    if (ended(lf)) {
      if (lf->line.len == 0) return 0;
      lua_pushlstring(L, lf->line.p, lf->line.len);
      buf_clear(&lf->line);
      return 1;
    }
    return wait_on(L, lf, LW_DATA, lines_k, "res:lines()");
  }
}

static int res_lines(lua_State *L) {
  check_res(L, 1);
  lua_settop(L, 1);
  lua_pushcclosure(L, lines_step, 1);
  return 1;
}

/* Pushes a parsed event as a table. */
static void push_event(lua_State *L, const sse_parsed_t *ev) {
  lua_createtable(L, 0, 4);
  /* Unnamed events (a browser's "message") have no event field, so that
   * sending one on unchanged writes the same bytes. */
  if (ev->event) {
    lua_pushlstring(L, ev->event, ev->event_len);
    lua_setfield(L, -2, "event");
  }
  lua_pushlstring(L, ev->data, ev->data_len);
  lua_setfield(L, -2, "data");
  if (ev->has_id) {
    lua_pushlstring(L, ev->id, ev->id_len);
    lua_setfield(L, -2, "id");
  }
  if (ev->retry >= 0) {
    lua_pushinteger(L, ev->retry);
    lua_setfield(L, -2, "retry");
  }
}

typedef struct { lua_State *L; lfetch_t *lf; } queue_ctx_t;

static int queue_event_cb(void *ctx, int kind, const sse_parsed_t *ev) {
  queue_ctx_t *q = ctx;
  if (kind != SSE_PARSED_EVENT) return 0;
  lua_State *L = q->L;
  lua_rawgeti(L, LUA_REGISTRYINDEX, q->lf->queue_ref);
  push_event(L, ev);
  lua_rawseti(L, -2, ++q->lf->queue_tail);
  lua_pop(L, 1);
  return 0;
}

/* events(): the next WHATWG-parsed event { event, data, id, retry }; nil
 * at the end (an incomplete last event is dropped). */
static int events_step(lua_State *L);
static int events_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  return events_step(L);
}
static int events_step(lua_State *L) {
  lfetch_t *lf = check_res(L, lua_upvalueindex(1));
  for (;;) {
    if (lf->queue_head < lf->queue_tail) {
      lua_rawgeti(L, LUA_REGISTRYINDEX, lf->queue_ref);
      lua_rawgeti(L, -1, ++lf->queue_head);
      lua_pushnil(L);
      lua_rawseti(L, -3, lf->queue_head);
      return 1;
    }
    lf->queue_head = lf->queue_tail = 0;
    size_t n = 0;
    const char *p = lf->f ? fetch_peek(lf->f, &n) : NULL;
    if (n > 0) {
      queue_ctx_t q = {L, lf};
      int rc = sse_parser_feed(&lf->parser, p, n, queue_event_cb, &q);
      fetch_consume(lf->f, n);
      if (rc < 0) { /* an event past the size limit, or no memory */
        lf_abort(lf);
        return 0;
      }
      continue;
    }
    if (ended(lf)) {
      sse_parser_finish(&lf->parser);
      return 0;
    }
    return wait_on(L, lf, LW_DATA, events_k, "res:events()");
  }
}

static int setup_events(lua_State *L, lfetch_t *lf) {
  if (lf->events_on) return 0;
  if (sse_parser_init(&lf->parser, SSE_PARSE_DEFAULT_MAX) != 0) return luaL_error(L, "not enough memory");
  lf->events_on = 1;
  lua_newtable(L);
  lf->queue_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  return 0;
}

static int res_events(lua_State *L) {
  lfetch_t *lf = check_res(L, 1);
  setup_events(L, lf);
  lua_settop(L, 1);
  lua_pushcclosure(L, events_step, 1);
  return 1;
}

/* text(): the whole body (waits for the end), or nil, message. */
static int text_k(lua_State *L, int status, lua_KContext ctx);
static int res_text(lua_State *L) {
  lfetch_t *lf = check_res(L, 1);
  lua_settop(L, 1);
  if (lf->f) fetch_set_limit(lf->f, lf->max_text + 1);
  return text_k(L, 0, 0);
}
static int text_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  lfetch_t *lf = check_res(L, 1);
  lua_settop(L, 1);
  size_t n = 0;
  const char *p = lf->f ? fetch_peek(lf->f, &n) : NULL;
  if (n > lf->max_text) {
    lf_abort(lf);
    luaL_pushfail(L);
    lua_pushfstring(L, "response body over %d bytes (max_body)", (int)lf->max_text);
    return 2;
  }
  if (!ended(lf)) return wait_on(L, lf, LW_DATA, text_k, "res:text()");
  const char *e = lf->f ? fetch_error(lf->f) : "closed";
  if (e == NULL && lf->closed && lf->f && !fetch_done(lf->f)) e = "closed";
  if (e != NULL) {
    luaL_pushfail(L);
    lua_pushstring(L, e);
    return 2;
  }
  lua_pushlstring(L, p ? p : "", n);
  if (n) fetch_consume(lf->f, n);
  return 1;
}

/* close(): aborts the transfer. */
static int res_close(lua_State *L) {
  lfetch_t *lf = check_res(L, 1);
  if (lf->f != NULL) lf_abort(lf);
  return 0;
}

static int res_tostring(lua_State *L) {
  lfetch_t *lf = check_res(L, 1);
  lua_pushfstring(L, "sluice.response (%d%s)", lf->f ? fetch_status(lf->f) : 0,
                  ended(lf) ? ", ended" : "");
  return 1;
}

/* ---------------------------------------------------------------- relay */

typedef struct { lfetch_t *lf; } relay_ctx_t;

/* Re-encodes one upstream event onto the relay's batch (relay_step writes
 * the batch as one frame: one allocation and one iovec per read, not per
 * event, which is what a token stream costs). */
static int relay_event(void *ctx, int kind, const sse_parsed_t *ev) {
  lfetch_t *lf = ((relay_ctx_t *)ctx)->lf;
  if (kind != SSE_PARSED_EVENT) return 0;
  sse_event_t out = {0};
  out.retry = ev->retry;
  out.data = ev->data;
  out.data_len = ev->data_len;
  out.event = ev->event;
  out.event_len = ev->event_len;
  /* The id persists between events on both sides: write it when it changed. */
  if (ev->has_id && ev->id_len < sizeof(lf->last_id) &&
      (!lf->has_last_id || ev->id_len != lf->last_id_len || memcmp(ev->id, lf->last_id, ev->id_len))) {
    out.id = ev->id;
    out.id_len = ev->id_len;
    memcpy(lf->last_id, ev->id, ev->id_len);
    lf->last_id_len = ev->id_len;
    lf->has_last_id = 1;
  }
  enum sse_field bad;
  /* The parser never hands over CR or LF in a field; an event type with a
   * NUL (which the grammar allows) cannot be written on: it is dropped. */
  int rc = sse_encode_append(&out, &lf->relay_out, &bad);
  return rc == -ENOMEM ? rc : 0;
}

static void relay_drained(void *arg) {
  lfetch_t *lf = arg;
  if (lf->f != NULL) fetch_hold(lf->f, 0);
}

/* Moves what the upstream sent to the client; holds the download while the
 * client's queue is full. */
static void relay_step(lfetch_t *lf) {
  req_t *r = lf->relay_h ? lf->relay_h->r : NULL;
  if (lf->f == NULL) return;
  size_t n;
  const char *p = fetch_peek(lf->f, &n);
  if (n > 0) {
    relay_ctx_t ctx = {lf};
    buf_clear(&lf->relay_out);
    int rc = sse_parser_feed(&lf->parser, p, n, relay_event, &ctx);
    if (rc < 0) {
      lf->relay_error = rc == -E2BIG ? "upstream event too large" : "not enough memory";
      lf_abort(lf);
      return;
    }
    fetch_consume(lf->f, n);
    if (lf->relay_out.len > 0 && r != NULL) {
      frame_t *f = frame_copy(lf->relay_out.p, lf->relay_out.len);
      if (f == NULL) {
        lf->relay_error = "not enough memory";
        lf_abort(lf);
        return;
      }
      req_stream_write(r, f);
      frame_unref(f);
    }
  }
  if (r != NULL && !req_stream_closed(r) && req_queued(r) > CONN_HIGH_WATER) fetch_hold(lf->f, 1);
  if (r == NULL || req_stream_closed(r)) {
    if (!lf->drain) lf_abort(lf); /* the client left: stop the upstream now */
  }
}

static int relay_k(lua_State *L, int status, lua_KContext ctx);

/* stream:relay(res) -> true when the upstream stream ended, or nil, message
 * ("closed" when the client left first).  The Lua wrapper handles the
 * transform variant. */
static int l_relay(lua_State *L) {
  rhandle_t *h = luaL_checkudata(L, 1, STREAM_MT);
  lfetch_t *lf = check_res(L, 2);
  lua_settop(L, 2);
  if (h->r == NULL || req_stream_closed(h->r)) {
    luaL_pushfail(L);
    lua_pushliteral(L, "closed");
    return 2;
  }
  if (lf->relaying) return luaL_error(L, "stream:relay: this response is already being relayed");
  if (lf->queue_tail > lf->queue_head) return luaL_error(L, "stream:relay: the response was partly read as events");
  setup_events(L, lf);
  lf->relaying = 1;
  lf->relay_h = h;
  h->r->on_drain = relay_drained;
  h->r->on_drain_arg = lf;
  relay_step(lf); /* what arrived before the relay began */
  return relay_k(L, 0, 0);
}

static int relay_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  rhandle_t *h = lua_touserdata(L, 1);
  lfetch_t *lf = check_res(L, 2);
  lua_settop(L, 2);
  const char *err = NULL;
  if (lf->relay_error) err = lf->relay_error;
  else if (h->r == NULL || req_stream_closed(h->r)) err = "closed";
  else if (lf->f == NULL || lf->closed) err = "closed";
  else if (fetch_done(lf->f)) err = fetch_error(lf->f);
  else return wait_on(L, lf, LW_DONE, relay_k, "stream:relay");
  if (lf->relay_h && lf->relay_h->r) lf->relay_h->r->on_drain = NULL;
  lf->relay_h = NULL;
  lf->relaying = 0;
  if (err != NULL) {
    luaL_pushfail(L);
    lua_pushstring(L, err);
    return 2;
  }
  sse_parser_finish(&lf->parser);
  lua_pushboolean(L, 1);
  return 1;
}

void bind_fetch_open(lua_State *L) {
  static const luaL_Reg methods[] = {{"chunks", res_chunks}, {"lines", res_lines},
                                     {"events", res_events}, {"text", res_text},
                                     {"close", res_close},   {NULL, NULL}};
  static const luaL_Reg meta[] = {{"__gc", res_gc},
                                  {"__close", res_gc},
                                  {"__index", res_index},
                                  {"__tostring", res_tostring},
                                  {NULL, NULL}};
  luaL_newmetatable(L, RESPONSE_MT);
  luaL_setfuncs(L, meta, 0);
  luaL_newlib(L, methods);
  lua_setfield(L, -2, "methods");
  lua_pop(L, 1);

  lua_pushcfunction(L, l_fetch);
  lua_setfield(L, -2, "fetch");

  luaL_getmetatable(L, STREAM_MT);
  lua_getfield(L, -1, "methods");
  lua_pushcfunction(L, l_relay);
  lua_setfield(L, -2, "relay");
  lua_pop(L, 2);
}
