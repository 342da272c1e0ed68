/*
 * bind_json.c - sluice.json: Lua values to JSON and back, through jansson.
 *
 * Mapping: nil/json.null <-> null; booleans; integers <-> integers; floats
 * <-> reals (NaN and infinities refused); strings (valid UTF-8 only); tables
 * with keys 1..n, or marked with json.array(), <-> arrays; other tables <->
 * objects (string keys; integer keys are written as strings).  An empty
 * unmarked table is an object.  Decoded arrays carry the array mark, so
 * they encode back as arrays even when empty.  Objects are written with
 * sorted keys, so the same table always gives the same bytes.
 */
#include <jansson.h>
#include <math.h>
#include <string.h>

#include "lrt.h"

/* As deep as jansson decodes (its JSON_PARSER_MAX_DEPTH), so that whatever
 * decode returns encodes again; deeper means a cycle. */
#define JSON_MAX_DEPTH 2048
#define ARRAY_MT "sluice.json.array"

static json_t *to_json(lua_State *L, int idx, int depth, const char **err);

/* Whether the table at idx is a sequence 1..n (n > 0) with no other keys. */
static int is_sequence(lua_State *L, int idx, lua_Integer *n) {
  lua_Integer len = (lua_Integer)lua_rawlen(L, idx);
  lua_Integer count = 0;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    lua_pop(L, 1);
    if (!lua_isinteger(L, -1)) {
      lua_pop(L, 1);
      return 0;
    }
    lua_Integer k = lua_tointeger(L, -1);
    if (k < 1 || k > len) {
      lua_pop(L, 1);
      return 0;
    }
    count++;
  }
  *n = len;
  return count == len && len > 0;
}

static int has_array_mark(lua_State *L, int idx) {
  if (!lua_getmetatable(L, idx)) return 0;
  luaL_getmetatable(L, ARRAY_MT);
  int yes = lua_rawequal(L, -1, -2);
  lua_pop(L, 2);
  return yes;
}

static json_t *table_to_json(lua_State *L, int idx, int depth, const char **err) {
  luaL_checkstack(L, 4, "json");
  lua_Integer n = 0;
  int marked = has_array_mark(L, idx);
  if (marked || is_sequence(L, idx, &n)) {
    if (marked) n = (lua_Integer)lua_rawlen(L, idx);
    json_t *a = json_array();
    for (lua_Integer i = 1; i <= n; i++) {
      lua_rawgeti(L, idx, i);
      json_t *v = to_json(L, lua_gettop(L), depth + 1, err);
      lua_pop(L, 1);
      if (v == NULL || json_array_append_new(a, v)) {
        json_decref(a);
        return NULL;
      }
    }
    return a;
  }
  json_t *o = json_object();
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    char numkey[32];
    const char *key;
    size_t klen;
    if (lua_type(L, -2) == LUA_TSTRING) {
      key = lua_tolstring(L, -2, &klen);
    } else if (lua_isinteger(L, -2)) {
      klen = (size_t)snprintf(numkey, sizeof(numkey), "%lld", (long long)lua_tointeger(L, -2));
      key = numkey;
    } else {
      *err = "object keys must be strings";
      lua_pop(L, 2);
      json_decref(o);
      return NULL;
    }
    /* Keys JSON could not give back: a NUL (jansson refuses it when
     * decoding), or the same key twice (1 and "1" both become "1"). */
    if (memchr(key, '\0', klen) != NULL || json_object_getn(o, key, klen) != NULL) {
      *err = memchr(key, '\0', klen) ? "object keys must not contain NUL"
                                     : "an integer key and a string key would both be written as one JSON key";
      lua_pop(L, 2);
      json_decref(o);
      return NULL;
    }
    json_t *v = to_json(L, lua_gettop(L), depth + 1, err);
    if (v == NULL || json_object_setn_new(o, key, klen, v)) {
      if (v != NULL && *err == NULL) *err = "object key is not valid UTF-8";
      lua_pop(L, 2);
      json_decref(o);
      return NULL;
    }
    lua_pop(L, 1);
  }
  return o;
}

static json_t *to_json(lua_State *L, int idx, int depth, const char **err) {
  /* The top value is at depth 0; jansson refuses any value at depth
   * JSON_MAX_DEPTH, so encode refuses it too. */
  if (depth >= JSON_MAX_DEPTH) {
    *err = "nesting too deep (or a cycle)";
    return NULL;
  }
  switch (lua_type(L, idx)) {
  case LUA_TNIL:
    return json_null();
  case LUA_TBOOLEAN:
    return json_boolean(lua_toboolean(L, idx));
  case LUA_TNUMBER:
    if (lua_isinteger(L, idx)) return json_integer((json_int_t)lua_tointeger(L, idx));
    {
      double d = lua_tonumber(L, idx);
      if (!isfinite(d)) {
        *err = "cannot encode NaN or infinity";
        return NULL;
      }
      return json_real(d);
    }
  case LUA_TSTRING: {
    size_t len;
    const char *s = lua_tolstring(L, idx, &len);
    json_t *j = json_stringn(s, len);
    if (j == NULL) *err = "string is not valid UTF-8";
    return j;
  }
  case LUA_TTABLE:
    return table_to_json(L, idx, depth, err);
  case LUA_TLIGHTUSERDATA:
    if (lua_touserdata(L, idx) == NULL) return json_null();
    /* fallthrough */
  case LUA_TFUNCTION:
    *err = "cannot encode a function value";
    return NULL;
  case LUA_TTHREAD:
    *err = "cannot encode a thread value";
    return NULL;
  default:
    *err = "cannot encode a userdata value";
    return NULL;
  }
}

static void push_json(lua_State *L, json_t *j, int depth) {
  luaL_checkstack(L, 4, "json");
  switch (json_typeof(j)) {
  case JSON_OBJECT: {
    const char *key;
    json_t *v;
    lua_createtable(L, 0, (int)json_object_size(j));
    json_object_foreach(j, key, v) {
      push_json(L, v, depth + 1);
      lua_setfield(L, -2, key);
    }
    break;
  }
  case JSON_ARRAY: {
    size_t i;
    json_t *v;
    lua_createtable(L, (int)json_array_size(j), 0);
    json_array_foreach(j, i, v) {
      push_json(L, v, depth + 1);
      lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    luaL_setmetatable(L, ARRAY_MT);
    break;
  }
  case JSON_STRING:
    lua_pushlstring(L, json_string_value(j), json_string_length(j));
    break;
  case JSON_INTEGER:
    lua_pushinteger(L, (lua_Integer)json_integer_value(j));
    break;
  case JSON_REAL:
    lua_pushnumber(L, json_real_value(j));
    break;
  case JSON_TRUE:
    lua_pushboolean(L, 1);
    break;
  case JSON_FALSE:
    lua_pushboolean(L, 0);
    break;
  case JSON_NULL:
    lua_pushlightuserdata(L, NULL);
    break;
  }
}

/* Writes jansson output into a Lua buffer. */
static int dump_cb(const char *buffer, size_t size, void *data) {
  luaL_addlstring((luaL_Buffer *)data, buffer, size);
  return 0;
}

void lrt_json_encode(lua_State *L, int idx) {
  idx = lua_absindex(L, idx);
  const char *err = NULL;
  json_t *j = to_json(L, idx, 0, &err);
  if (j == NULL) {
    luaL_error(L, "json.encode: %s", err ? err : "cannot encode");
    return;
  }
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  int rc = json_dump_callback(j, dump_cb, &b, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY);
  json_decref(j);
  if (rc != 0) {
    luaL_error(L, "json.encode: cannot encode");
    return;
  }
  luaL_pushresult(&b);
}

/* json.encode(v) -> string.  Unencodable values are misuse: a Lua error. */
static int l_encode(lua_State *L) {
  luaL_checkany(L, 1);
  lrt_json_encode(L, 1);
  return 1;
}

/* json.decode(s) -> value, or nil, message for invalid JSON. */
static int l_decode(lua_State *L) {
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  json_error_t e;
  json_t *j = json_loadb(s, len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &e);
  if (j == NULL) {
    luaL_pushfail(L);
    lua_pushfstring(L, "%s at line %d, column %d", e.text, e.line, e.column);
    return 2;
  }
  push_json(L, j, 0);
  json_decref(j);
  return 1;
}

/* json.array(t) -> t, marked to encode as an array even when empty. */
static int l_array(lua_State *L) {
  if (lua_isnoneornil(L, 1)) lua_newtable(L);
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  luaL_setmetatable(L, ARRAY_MT);
  return 1;
}

/* Leaves the json table on the stack. */
void bind_json_open(lua_State *L) {
  static const luaL_Reg fns[] = {
      {"encode", l_encode}, {"decode", l_decode}, {"array", l_array}, {NULL, NULL}};
  luaL_newmetatable(L, ARRAY_MT);
  lua_pushliteral(L, "array");
  lua_setfield(L, -2, "__name");
  lua_pop(L, 1);
  luaL_newlib(L, fns);
  lua_pushlightuserdata(L, NULL);
  lua_setfield(L, -2, "null");
}
