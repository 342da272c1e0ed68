/*
 * bind_http.c - the request and stream handles Lua sees.
 *
 * A handle is a userdata holding a pointer to its request.  The request
 * knows its handles (h_req, h_stream) and clears them when it goes, so a
 * handle outliving its request reads as closed and never touches freed
 * memory; a handle collected first unlinks itself.  The functions here are
 * the C half of the request API; lua/sluice/init.lua builds the friendly
 * `req` table and `stream` methods on top.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "conn.h"
#include "lrt.h"
#include "request.h"
#include "sse_encode.h"
#include "static.h"
#include "worker.h"


void bind_push_request(lua_State *L, req_t *r) {
  rhandle_t *h = lua_newuserdatauv(L, sizeof(*h), 0);
  h->r = r;
  r->h_req = h;
  luaL_setmetatable(L, REQ_MT);
}

void bind_detach(req_t *r) {
  if (r->h_req != NULL) ((rhandle_t *)r->h_req)->r = NULL;
  if (r->h_stream != NULL) ((rhandle_t *)r->h_stream)->r = NULL;
  r->h_req = r->h_stream = NULL;
}

/* __gc for both kinds: unlinks the handle from its request (idempotent). */
static int handle_gc(lua_State *L) {
  rhandle_t *h = lua_touserdata(L, 1);
  if (h != NULL && h->r != NULL) {
    if (h->r->h_req == h) h->r->h_req = NULL;
    if (h->r->h_stream == h) h->r->h_stream = NULL;
    h->r = NULL;
  }
  return 0;
}

/* Returns nil, "closed": the runtime-failure answer for a gone request. */
static int closed(lua_State *L) {
  luaL_pushfail(L);
  lua_pushliteral(L, "closed");
  return 2;
}

static req_t *check_req(lua_State *L, int idx) {
  return ((rhandle_t *)luaL_checkudata(L, idx, REQ_MT))->r;
}

/* ------------------------------------------------------------ request */

/* core.req_headers(h) -> table of lower-case names; repeated fields are
 * joined with ", " ("; " for cookie). */
static int l_req_headers(lua_State *L) {
  req_t *r = check_req(L, 1);
  lua_newtable(L);
  if (r == NULL) return 1;
  http_msg_t *m = &r->msg;
  for (uint32_t i = 0; i < m->nhdrs; i++) {
    http_hdr_t *h = &m->hdrs[i];
    lua_pushlstring(L, m->raw.p + h->name, h->name_len);
    lua_pushvalue(L, -1);
    if (lua_rawget(L, -3) == LUA_TSTRING) {
      int cookie = h->name_len == 6 && memcmp(m->raw.p + h->name, "cookie", 6) == 0;
      lua_pushstring(L, cookie ? "; " : ", ");
      lua_pushlstring(L, m->raw.p + h->value, h->value_len);
      lua_concat(L, 3);
    } else {
      lua_pop(L, 1);
      lua_pushlstring(L, m->raw.p + h->value, h->value_len);
    }
    lua_rawset(L, -3);
  }
  return 1;
}

/* core.req_remote(h) -> "ip" or nil, "closed". */
static int l_req_remote(lua_State *L) {
  req_t *r = check_req(L, 1);
  char addr[64];
  if (r == NULL || req_remote_addr(r, addr, sizeof(addr)) != 0) return closed(L);
  lua_pushstring(L, addr);
  return 1;
}

static int push_body(lua_State *co, task_t *t, int status) {
  req_t *r = t->wait_req;
  if (status != 0 || r == NULL) return closed(co);
  lua_pushlstring(co, r->msg.body.p ? r->msg.body.p : "", r->msg.body.len);
  return 1;
}

/* core.req_body(h) -> body string; waits for the body to arrive in full
 * (sending "100 Continue" first when the client asked for it). */
static int l_req_body(lua_State *L) {
  req_t *r = check_req(L, 1);
  if (r == NULL) return closed(L);
  if (r->body_dropped) return luaL_error(L, "req:body(): the body is gone: the response was sent before it was read");
  if (r->msg.complete) {
    lua_pushlstring(L, r->msg.body.p ? r->msg.body.p : "", r->msg.body.len);
    return 1;
  }
  task_t *t = lrt_current(L, "req:body()");
  if (r->waiter != NULL) return luaL_error(L, "req:body(): another task is already waiting on this request");
  if (r->responded) return luaL_error(L, "req:body(): the body cannot be read after the response was sent");
  req_continue(r);
  r->waiter = t;
  r->wait = REQ_WAIT_BODY;
  t->wait_req = r;
  return lrt_yield(L, t, push_body);
}

/* Headers the server writes itself (framing and connection management). */
static int reserved(const char *name, size_t n) {
  static const char *names[] = {"content-length", "transfer-encoding", "connection",
                                "keep-alive", "date", NULL};
  for (int i = 0; names[i]; i++)
    if (strlen(names[i]) == n && strncasecmp(names[i], name, n) == 0) return 1;
  return 0;
}

static void add_header(lua_State *L, luaL_Buffer *b, const char *name, size_t nlen, int vidx) {
  size_t vlen;
  const char *v = lua_tolstring(L, vidx, &vlen);
  if (v == NULL) luaL_error(L, "header '%s': value must be a string or number", name);
  for (size_t i = 0; i < vlen; i++)
    if (v[i] == '\r' || v[i] == '\n' || v[i] == '\0')
      luaL_error(L, "header '%s': value must not contain CR, LF or NUL", name);
  luaL_addlstring(b, name, nlen);
  luaL_addlstring(b, ": ", 2);
  luaL_addlstring(b, v, vlen);
  luaL_addlstring(b, "\r\n", 2);
}

/* Renders the header table at idx (name -> value or list of values) as
 * "Name: value\r\n" lines and pushes the string.  Invalid names or values
 * are misuse: a Lua error. */
static void render_headers(lua_State *L, int idx) {
  idx = lua_absindex(L, idx);
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  if (!lua_istable(L, idx)) {
    if (!lua_isnoneornil(L, idx)) luaL_error(L, "headers must be a table");
    luaL_pushresult(&b);
    return;
  }
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    /* keep the buffer box below what we push: work on copies above it */
    if (lua_type(L, -2) != LUA_TSTRING) luaL_error(L, "header names must be strings");
    size_t nlen;
    const char *name = lua_tolstring(L, -2, &nlen);
    if (nlen == 0) luaL_error(L, "header name must not be empty");
    for (size_t i = 0; i < nlen; i++)
      if (!http_token_char((unsigned char)name[i])) luaL_error(L, "invalid header name '%s'", name);
    if (!reserved(name, nlen)) {
      if (lua_istable(L, -1)) {
        lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
        for (lua_Integer i = 1; i <= n; i++) {
          lua_rawgeti(L, -1, i);
          add_header(L, &b, name, nlen, -1);
          lua_pop(L, 1);
        }
      } else {
        add_header(L, &b, name, nlen, -1);
      }
    }
    lua_pop(L, 1);
  }
  luaL_pushresult(&b);
}

/* Header lines rendered once by core.headers and sent as they are by every
 * response that names them: the validation and the rendering are paid for
 * once, not per response. */
typedef struct hlines {
  size_t len;
  char data[];
} hlines_t;

#define HEADERS_MT "sluice.headers"

/* core.headers(tbl) -> the header table rendered (and checked) once, for
 * core.respond and core.sse. */
static int l_headers(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  render_headers(L, 1);
  size_t n;
  const char *s = lua_tolstring(L, -1, &n);
  hlines_t *hl = lua_newuserdatauv(L, sizeof(*hl) + n, 0);
  hl->len = n;
  memcpy(hl->data, s, n);
  luaL_setmetatable(L, HEADERS_MT);
  return 1;
}

/* The header lines for the argument at idx: those of a core.headers value,
 * or the table (or nil) rendered now, pushed on the stack.  Either way the
 * bytes stay valid while the stack slots from idx up do. */
static const char *check_headers(lua_State *L, int idx, size_t *len) {
  hlines_t *hl = luaL_testudata(L, idx, HEADERS_MT);
  if (hl != NULL) {
    *len = hl->len;
    return hl->data;
  }
  render_headers(L, idx);
  return lua_tolstring(L, -1, len);
}

/* core.respond(h, status, headers, body) -> true, or nil, "closed".
 * headers: a table, nil, or a core.headers value. */
static int l_respond(lua_State *L) {
  req_t *r = check_req(L, 1);
  lua_Integer status = luaL_checkinteger(L, 2);
  if (status < 200 || status > 599) return luaL_error(L, "invalid status %d", (int)status);
  size_t blen = 0;
  const char *body = luaL_optlstring(L, 4, NULL, &blen);
  size_t hlen;
  const char *hdrs = check_headers(L, 3, &hlen);
  if (r == NULL) return closed(L);
  int rc = req_respond(r, (int)status, hdrs, hlen, body, blen);
  if (rc == -EALREADY) return luaL_error(L, "a response was already sent for this request");
  if (rc == -ENOMEM) return luaL_error(L, "not enough memory");
  if (rc) return closed(L);
  lua_pushboolean(L, 1);
  return 1;
}

/* core.static(h, path) -> true when a file (or a refusal) was sent, false
 * when public/ has no such file. */
static int l_static(lua_State *L) {
  req_t *r = check_req(L, 1);
  size_t plen;
  const char *path = luaL_checklstring(L, 2, &plen);
  if (r == NULL) return closed(L);
  const char *inm = http_msg_header(&r->msg, "if-none-match", NULL);
  char inm_buf[512];
  size_t inm_len = 0;
  if (inm != NULL) {
    http_msg_header(&r->msg, "if-none-match", &inm_len);
    if (inm_len >= sizeof(inm_buf)) inm_len = sizeof(inm_buf) - 1;
    memcpy(inm_buf, inm, inm_len);
    inm_buf[inm_len] = '\0';
  }
  static_file_t sf;
  int rc = static_lookup(r->w->app.public_dir, path, plen, inm ? inm_buf : NULL, r->head_only, &sf);
  if (rc == -ENOENT) {
    lua_pushboolean(L, 0);
    return 1;
  }
  if (rc == 0 && sf.status == 301) {
    /* Location: the same path and query, with the slash. */
    const http_msg_t *m = &r->msg;
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    luaL_addstring(&b, "Location: ");
    luaL_addlstring(&b, m->raw.p, r->path_len);
    luaL_addchar(&b, '/');
    luaL_addlstring(&b, m->raw.p + r->path_len, m->url_len - r->path_len);
    luaL_addstring(&b, "\r\nContent-Type: text/plain; charset=utf-8\r\n");
    luaL_pushresult(&b);
    size_t hlen;
    const char *hdrs = lua_tolstring(L, -1, &hlen);
    req_respond(r, 301, hdrs, hlen, "moved\n", 6);
  } else if (rc == -EACCES) {
    req_respond_error(r, 403, "forbidden");
  } else if (rc != 0) {
    req_respond_error(r, 500, "cannot read the file");
  } else {
    char hdrs[512];
    char date[64];
    time_t mt = (time_t)sf.mtime;
    struct tm tm;
    gmtime_r(&mt, &tm);
    strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S GMT", &tm);
    int n = snprintf(hdrs, sizeof(hdrs),
                     "Content-Type: %s\r\nETag: %s\r\nLast-Modified: %s\r\nCache-Control: no-cache\r\n",
                     sf.mime, sf.etag, date);
    req_respond_frame(r, sf.status, hdrs, (size_t)n, sf.body, sf.size);
    frame_unref(sf.body);
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* ------------------------------------------------------------- stream */

static req_t *check_stream(lua_State *L) {
  return ((rhandle_t *)luaL_checkudata(L, 1, STREAM_MT))->r;
}

/* core.sse(h, headers, retry) -> stream, or nil, "closed".  headers as
 * for core.respond. */
static int l_sse(lua_State *L) {
  req_t *r = check_req(L, 1);
  lua_Integer retry = luaL_optinteger(L, 3, -1);
  size_t hlen;
  const char *hdrs = check_headers(L, 2, &hlen);
  if (r == NULL) return closed(L);
  if (r->streaming || r->responded) return luaL_error(L, "req:sse(): a response was already started");
  int rc = req_sse_open(r, hdrs, hlen, (long)retry);
  if (rc == -ENOMEM) return luaL_error(L, "not enough memory");
  if (rc) return closed(L);
  rhandle_t *h = lua_newuserdatauv(L, sizeof(*h), 0);
  h->r = r;
  r->h_stream = h;
  luaL_setmetatable(L, STREAM_MT);
  return 1;
}

static int push_send(lua_State *co, task_t *t, int status) {
  (void)t;
  if (status != 0) return closed(co);
  lua_pushboolean(co, 1);
  return 1;
}

/* Reads string field name of the table at idx into (*s, *n); numbers are
 * turned into strings.  Absent: *s stays NULL.  The value is left on the
 * stack, which keeps a converted number alive. */
static void field_string(lua_State *L, int idx, const char *fname, const char *name,
                         const char **s, size_t *n) {
  int t = lua_getfield(L, idx, name);
  if (t == LUA_TSTRING || t == LUA_TNUMBER)
    *s = lua_tolstring(L, -1, n);
  else if (t != LUA_TNIL)
    luaL_error(L, "%s: field '%s' must be a string", fname, name);
}

void lrt_check_event(lua_State *L, int idx, sse_event_t *ev, const char *fname) {
  memset(ev, 0, sizeof(*ev));
  ev->retry = -1;
  idx = lua_absindex(L, idx);
  switch (lua_type(L, idx)) {
  case LUA_TSTRING:
  case LUA_TNUMBER:
    ev->data = lua_tolstring(L, idx, &ev->data_len);
    break;
  case LUA_TTABLE: {
    int t = lua_getfield(L, idx, "data");
    if (t == LUA_TSTRING || t == LUA_TNUMBER) {
      ev->data = lua_tolstring(L, -1, &ev->data_len);
    } else if (t == LUA_TTABLE || t == LUA_TBOOLEAN || t == LUA_TLIGHTUSERDATA) {
      lrt_json_encode(L, -1);
      ev->data = lua_tolstring(L, -1, &ev->data_len);
    } else if (t != LUA_TNIL) {
      luaL_error(L, "%s: field 'data' must be a string or a table", fname);
    }
    field_string(L, idx, fname, "event", &ev->event, &ev->event_len);
    field_string(L, idx, fname, "id", &ev->id, &ev->id_len);
    if (lua_getfield(L, idx, "retry") != LUA_TNIL) {
      if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) < 0)
        luaL_error(L, "%s: field 'retry' must be a non-negative integer", fname);
      ev->retry = lua_tointeger(L, -1);
    }
    break;
  }
  default:
    luaL_typeerror(L, idx, "string or table");
  }
}

frame_t *lrt_encode_event(lua_State *L, const sse_event_t *ev, const char *fname) {
  frame_t *f;
  enum sse_field bad;
  int rc = sse_encode(ev, &f, &bad);
  if (rc == -EINVAL) {
    if (bad == SSE_FIELD_EMPTY) luaL_error(L, "%s: the event has no data, event, id or retry", fname);
    luaL_error(L, "%s: field '%s' must not contain CR, LF or NUL", fname,
               bad == SSE_FIELD_EVENT ? "event" : "id");
  }
  if (rc) luaL_error(L, "not enough memory");
  return f;
}

/* stream:send(ev) -> true, or nil, "closed".  Waits while the connection's
 * queue is over its high-water mark. */
static int l_send(lua_State *L) {
  req_t *r = check_stream(L);
  sse_event_t ev;
  lrt_check_event(L, 2, &ev, "stream:send");
  frame_t *f = lrt_encode_event(L, &ev, "stream:send");
  if (r == NULL) {
    frame_unref(f);
    return closed(L);
  }
  int rc = req_stream_write(r, f);
  frame_unref(f);
  if (rc) return closed(L);
  if (req_queued(r) > CONN_HIGH_WATER && r->waiter == NULL) {
    task_t *t = lrt_try_current(L);
    if (t != NULL) {
      r->waiter = t;
      r->wait = REQ_WAIT_DRAIN;
      t->wait_req = r;
      return lrt_yield(L, t, push_send);
    }
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* stream:comment(text) -> true, or nil, "closed". */
static int l_comment(lua_State *L) {
  req_t *r = check_stream(L);
  size_t n = 0;
  const char *text = luaL_optlstring(L, 2, NULL, &n);
  if (r == NULL) return closed(L);
  frame_t *f = sse_encode_comment(text, n);
  if (f == NULL) return luaL_error(L, "not enough memory");
  int rc = req_stream_write(r, f);
  frame_unref(f);
  if (rc) return closed(L);
  lua_pushboolean(L, 1);
  return 1;
}

/* stream:close(): ends the stream once what is queued has been sent. */
static int l_close(lua_State *L) {
  req_t *r = check_stream(L);
  if (r != NULL) req_stream_end(r);
  return 0;
}

static int stream_index(lua_State *L) {
  req_t *r = check_stream(L);
  const char *key = luaL_checkstring(L, 2);
  if (strcmp(key, "closed") == 0) {
    lua_pushboolean(L, r == NULL || req_stream_closed(r));
    return 1;
  }
  lua_getmetatable(L, 1);
  lua_getfield(L, -1, "methods");
  lua_getfield(L, -1, key);
  return 1;
}

static int stream_tostring(lua_State *L) {
  req_t *r = check_stream(L);
  lua_pushfstring(L, "sluice.stream (%s)", r == NULL || req_stream_closed(r) ? "closed" : "open");
  return 1;
}

/* Adds the request/stream functions to the core table at the top. */
void bind_http_open(lua_State *L) {
  static const luaL_Reg core[] = {
      {"req_headers", l_req_headers}, {"req_remote", l_req_remote}, {"req_body", l_req_body},
      {"respond", l_respond},         {"static", l_static},         {"sse", l_sse},
      {"headers", l_headers},         {NULL, NULL}};
  static const luaL_Reg stream_methods[] = {
      {"send", l_send}, {"comment", l_comment}, {"close", l_close}, {NULL, NULL}};

  static const luaL_Reg req_meta[] = {{"__gc", handle_gc}, {NULL, NULL}};
  static const luaL_Reg stream_meta[] = {
      {"__gc", handle_gc}, {"__index", stream_index}, {"__tostring", stream_tostring}, {NULL, NULL}};

  luaL_newmetatable(L, REQ_MT);
  luaL_setfuncs(L, req_meta, 0);
  lua_pop(L, 1);

  luaL_newmetatable(L, HEADERS_MT);
  lua_pop(L, 1);

  luaL_newmetatable(L, STREAM_MT);
  luaL_setfuncs(L, stream_meta, 0);
  luaL_newlib(L, stream_methods);
  lua_setfield(L, -2, "methods");
  lua_pop(L, 1);

  luaL_setfuncs(L, core, 0);
}
