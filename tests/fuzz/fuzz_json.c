/*
 * fuzz_json.c - libFuzzer target for the Lua/JSON bridge (bind_json.c).
 *
 * A bare lua_State holds only the sluice.json functions (bind_json_open),
 * called as Lua calls them, through lua_pcall.
 *
 * Bytes to Lua (any input not starting with 0xFF): for the bytes s,
 *   - json.decode(s) either returns one value, or nil and a message string;
 *     it never raises (decode errors are runtime failures, not misuse);
 *   - when s decodes, json.encode(value) succeeds (a decoded value is always
 *     encodable) giving e1, e1 decodes, and encoding that gives e1 again:
 *     the round trip is stable;
 *   - and e1 means the same as s: jansson reads both to equal values
 *     (json_equal), so nothing was lost or changed on the way through Lua.
 *
 * Lua to bytes (input 0xFF, which no JSON text starts with, then a program
 * for build() below that makes a Lua value: scalars, strings that may not be
 * UTF-8, NaN, json.null, tables with any keys, arrays marked or not):
 *   - json.encode(value) either raises a "json.encode: ..." error (misuse) or
 *     gives e1;
 *   - e1 decodes, to a value that represents the original one under the
 *     mapping bind_json.c documents (nil -> null, integer keys written as
 *     strings, sequences and marked tables as arrays, ...) with every key
 *     and element accounted for; and encoding that again gives e1.
 */
#include <jansson.h>
#include <lauxlib.h>
#include <lua.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"

void bind_json_open(lua_State *L);

#define ARRAY_MT "sluice.json.array"

static lua_State *L;

/* Calls json[fname] on the nargs values at the top in protected mode;
 * leaves the results (or the error message) and returns the pcall status. */
static int call_json(const char *fname, int nargs) {
  lua_getglobal(L, "json");
  lua_getfield(L, -1, fname);
  lua_remove(L, -2);
  lua_insert(L, -1 - nargs);
  return lua_pcall(L, nargs, LUA_MULTRET, 0);
}

static void dump_start(const char *what, const char *s, size_t n) {
  buf_t o = BUF_INIT;
  fuzz_put_escaped(&o, s, n > 400 ? 400 : n);
  fprintf(stderr, "%s (%zu bytes): %.*s%s\n", what, n, (int)o.len, o.p ? o.p : "",
          n > 400 ? "..." : "");
  buf_free(&o);
}

/* Decodes the string at idx and encodes the result again; it must give the
 * same string.  Leaves the decoded value on the stack. */
static void check_stable(int idx) {
  int top = lua_gettop(L);
  size_t e1_len;
  const char *e1 = lua_tolstring(L, idx, &e1_len);
  lua_pushvalue(L, idx);
  int rc = call_json("decode", 1);
  if (rc != LUA_OK || lua_gettop(L) != top + 1 || lua_isnil(L, top + 1)) {
    dump_start("encoded", e1, e1_len);
    FUZZ_FAIL("json.decode refused what json.encode wrote: %s", lua_tostring(L, -1));
  }
  lua_pushvalue(L, top + 1);
  rc = call_json("encode", 1);
  FUZZ_ASSERT(rc == LUA_OK, "json.encode raised on the second pass: %s", lua_tostring(L, -1));
  size_t e2_len;
  const char *e2 = lua_tolstring(L, -1, &e2_len);
  if (e1_len != e2_len || memcmp(e1, e2, e1_len) != 0) {
    dump_start("first encoding", e1, e1_len);
    dump_start("second encoding", e2, e2_len);
    FUZZ_FAIL("the round trip is not stable");
  }
  lua_pop(L, 1);
}

/* ---------------------------------------------------- bytes to Lua */

static void from_bytes(const uint8_t *data, size_t size) {
  lua_pushlstring(L, (const char *)data, size);
  int rc = call_json("decode", 1);
  FUZZ_ASSERT(rc == LUA_OK, "json.decode raised: %s", lua_tostring(L, -1));
  int nres = lua_gettop(L);
  if (nres == 2 && lua_isnil(L, 1)) {
    FUZZ_ASSERT(lua_type(L, 2) == LUA_TSTRING, "decode failed without a message");
    return;
  }
  FUZZ_ASSERT(nres == 1, "json.decode returned %d values", nres);

  lua_pushvalue(L, 1);
  rc = call_json("encode", 1);
  if (rc != LUA_OK) {
    dump_start("input", (const char *)data, size);
    FUZZ_FAIL("json.encode refused a value json.decode returned: %s", lua_tostring(L, -1));
  }
  FUZZ_ASSERT(lua_gettop(L) == 2 && lua_type(L, 2) == LUA_TSTRING, "encode gave no string");
  check_stable(2);

  /* The encoding means what the input meant. */
  size_t e1_len;
  const char *e1 = lua_tolstring(L, 2, &e1_len);
  json_error_t err;
  json_t *a = json_loadb((const char *)data, size, JSON_DECODE_ANY | JSON_ALLOW_NUL, &err);
  FUZZ_ASSERT(a != NULL, "jansson refuses what json.decode accepted: %s", err.text);
  json_t *b = json_loadb(e1, e1_len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &err);
  FUZZ_ASSERT(b != NULL, "jansson refuses what json.encode wrote: %s", err.text);
  if (!json_equal(a, b)) {
    dump_start("input", (const char *)data, size);
    dump_start("encoded", e1, e1_len);
    FUZZ_FAIL("the encoding does not mean what the input meant");
  }
  json_decref(a);
  json_decref(b);
}

/* ---------------------------------------------------- Lua to bytes */

typedef struct cursor {
  const uint8_t *p, *end;
} cursor_t;

static int next_byte(cursor_t *c) { return c->p < c->end ? *c->p++ : -1; }

static uint64_t next_u64(cursor_t *c) {
  uint64_t v = 0;
  for (int i = 0; i < 8; i++) v |= (uint64_t)(c->p < c->end ? *c->p++ : 0) << (8 * i);
  return v;
}

/* Pushes one Lua value made from the program at c:
 *   op % 10:  0 nil  1 boolean  2 integer (8 bytes)  3 small integer (1 byte)
 *             4 float (8 bytes of bits)  5 small float (byte / 4)
 *             6 string (length byte % 32, bytes)  7 json.null
 *             8 table: count byte % 8, then key and value programs per entry
 *             9 array: count byte % 8, mark bit, then value programs
 * Nesting past 2100 (past both codecs' depth limits) pushes nil. */
static void build(cursor_t *c, int depth) {
  luaL_checkstack(L, 6, "build");
  int op = next_byte(c);
  if (op < 0 || depth > 2100) {
    lua_pushnil(L);
    return;
  }
  switch (op % 10) {
  case 0: lua_pushnil(L); break;
  case 1: lua_pushboolean(L, next_byte(c) & 1); break;
  case 2: lua_pushinteger(L, (lua_Integer)next_u64(c)); break;
  case 3: lua_pushinteger(L, (int8_t)next_byte(c)); break;
  case 4: {
    uint64_t bits = next_u64(c);
    double d;
    memcpy(&d, &bits, sizeof(d));
    lua_pushnumber(L, d);
    break;
  }
  case 5: lua_pushnumber(L, (double)(int8_t)next_byte(c) / 4.0); break;
  case 6: {
    int n = next_byte(c);
    size_t len = n < 0 ? 0 : (size_t)(n % 32);
    if (len > (size_t)(c->end - c->p)) len = (size_t)(c->end - c->p);
    lua_pushlstring(L, (const char *)c->p, len);
    c->p += len;
    break;
  }
  case 7: lua_pushlightuserdata(L, NULL); break;
  case 8: {
    int n = next_byte(c);
    n = n < 0 ? 0 : n % 8;
    lua_newtable(L);
    for (int i = 0; i < n; i++) {
      build(c, depth + 1); /* key */
      build(c, depth + 1); /* value */
      int kt = lua_type(L, -2);
      int bad_key = kt == LUA_TNIL || (kt == LUA_TNUMBER && lua_tonumber(L, -2) != lua_tonumber(L, -2));
      if (bad_key || lua_isnil(L, -1)) lua_pop(L, 2);
      else lua_rawset(L, -3);
    }
    break;
  }
  case 9: {
    int n = next_byte(c);
    int mark = n >= 0 && (n & 8);
    n = n < 0 ? 0 : n % 8;
    lua_createtable(L, n, 0);
    for (int i = 1; i <= n; i++) {
      build(c, depth + 1);
      if (lua_isnil(L, -1)) { /* no holes: a null is json.null */
        lua_pop(L, 1);
        lua_pushlightuserdata(L, NULL);
      }
      lua_rawseti(L, -2, i);
    }
    if (mark) luaL_setmetatable(L, ARRAY_MT);
    break;
  }
  }
}

static int is_marked(int idx) {
  if (!lua_getmetatable(L, idx)) return 0;
  luaL_getmetatable(L, ARRAY_MT);
  int yes = lua_rawequal(L, -1, -2);
  lua_pop(L, 2);
  return yes;
}

/* Whether the table at idx encodes as an array (bind_json.c's rule). */
static int encodes_as_array(int idx, lua_Integer *n) {
  lua_Integer len = (lua_Integer)lua_rawlen(L, idx);
  *n = len;
  if (is_marked(idx)) return 1;
  lua_Integer count = 0;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    lua_pop(L, 1);
    if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) < 1 || lua_tointeger(L, -1) > len) {
      lua_pop(L, 1);
      return 0;
    }
    count++;
  }
  return len > 0 && count == len;
}

/* Whether the decoded value at d represents the original at v; on a
 * mismatch, says where in *why. */
static int represents(int v, int d, int depth, const char **why) {
  luaL_checkstack(L, 8, "represents");
  v = lua_absindex(L, v);
  d = lua_absindex(L, d);
  switch (lua_type(L, v)) {
  case LUA_TNIL:
    if (lua_type(L, d) == LUA_TLIGHTUSERDATA && lua_touserdata(L, d) == NULL) return 1;
    return *why = "nil did not come back as null", 0;
  case LUA_TLIGHTUSERDATA:
    if (lua_type(L, d) == LUA_TLIGHTUSERDATA && lua_touserdata(L, d) == NULL) return 1;
    return *why = "json.null did not come back as null", 0;
  case LUA_TBOOLEAN:
    if (lua_type(L, d) == LUA_TBOOLEAN && lua_toboolean(L, d) == lua_toboolean(L, v)) return 1;
    return *why = "a boolean changed", 0;
  case LUA_TNUMBER:
    if (lua_isinteger(L, v)) {
      if (lua_isinteger(L, d) && lua_tointeger(L, d) == lua_tointeger(L, v)) return 1;
      return *why = "an integer changed", 0;
    }
    if (lua_type(L, d) == LUA_TNUMBER && !lua_isinteger(L, d) &&
        lua_tonumber(L, d) == lua_tonumber(L, v))
      return 1;
    return *why = "a float changed", 0;
  case LUA_TSTRING: {
    size_t a, b;
    const char *s = lua_tolstring(L, v, &a);
    if (lua_type(L, d) != LUA_TSTRING) return *why = "a string changed type", 0;
    const char *t = lua_tolstring(L, d, &b);
    if (a == b && memcmp(s, t, a) == 0) return 1;
    return *why = "a string changed", 0;
  }
  case LUA_TTABLE:
    break;
  default:
    return *why = "an unencodable type was encoded", 0;
  }
  if (lua_type(L, d) != LUA_TTABLE) return *why = "a table changed type", 0;
  lua_Integer n;
  if (encodes_as_array(v, &n)) {
    if (!is_marked(d)) return *why = "an array came back as an object", 0;
    if ((lua_Integer)lua_rawlen(L, d) != n) return *why = "an array changed length", 0;
    for (lua_Integer i = 1; i <= n; i++) {
      lua_rawgeti(L, v, i);
      lua_rawgeti(L, d, i);
      int ok = represents(-2, -1, depth + 1, why);
      lua_pop(L, 2);
      if (!ok) return 0;
    }
    return 1;
  }
  if (is_marked(d)) return *why = "an object came back as an array", 0;
  /* Every key of the original is in the copy (integer keys as strings),
   * and the copy has no other: nothing merged, nothing lost. */
  lua_Integer nv = 0, nd = 0;
  lua_pushnil(L);
  while (lua_next(L, v)) {
    nv++;
    if (lua_type(L, -2) == LUA_TSTRING) {
      lua_pushvalue(L, -2);
    } else if (lua_isinteger(L, -2)) {
      lua_pushfstring(L, "%I", (LUAI_UACINT)lua_tointeger(L, -2));
      lua_pushvalue(L, -1);
      if (lua_rawget(L, v) != LUA_TNIL) {
        lua_pop(L, 4);
        return *why = "an integer key and a string key were both written as one JSON key", 0;
      }
      lua_pop(L, 1);
    } else {
      lua_pop(L, 2);
      return *why = "a table with a non-string key was encoded", 0;
    }
    lua_rawget(L, d);
    int ok = represents(-2, -1, depth + 1, why);
    lua_pop(L, 2);
    if (!ok) {
      lua_pop(L, 1);
      return 0;
    }
  }
  lua_pushnil(L);
  while (lua_next(L, d)) {
    nd++;
    lua_pop(L, 1);
  }
  if (nv != nd) return *why = "an object came back with a different number of keys", 0;
  return 1;
}

static void from_value(const uint8_t *prog, size_t size) {
  cursor_t c = {prog, prog + size};
  build(&c, 0);
  FUZZ_ASSERT(lua_gettop(L) == 1, "build left %d values", lua_gettop(L));
  lua_pushvalue(L, 1);
  int rc = call_json("encode", 1);
  if (rc != LUA_OK) { /* misuse: a clear Lua error, nothing else */
    const char *msg = lua_tostring(L, -1);
    FUZZ_ASSERT(msg != NULL && strncmp(msg, "json.encode: ", 13) == 0, "odd error: %s",
                msg ? msg : "(not a string)");
    return;
  }
  FUZZ_ASSERT(lua_gettop(L) == 2 && lua_type(L, 2) == LUA_TSTRING, "encode gave no string");
  check_stable(2); /* leaves the decoded value at 3 */
  const char *why = NULL;
  if (!represents(1, 3, 0, &why)) {
    size_t n;
    const char *e1 = lua_tolstring(L, 2, &n);
    dump_start("encoded", e1, n);
    FUZZ_FAIL("json.encode lost or changed part of the value: %s", why);
  }
}

/* ------------------------------------------------------------ entry */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (L == NULL) {
    L = luaL_newstate();
    bind_json_open(L);
    lua_setglobal(L, "json");
  }
  lua_settop(L, 0);
  if (size > 0 && data[0] == 0xFF) from_value(data + 1, size - 1);
  else from_bytes(data, size);
  lua_settop(L, 0);
  /* Keep the heap small, and let ASan see freed Lua objects early. */
  static unsigned calls;
  if (++calls % 256 == 0) lua_gc(L, LUA_GCCOLLECT);
  return 0;
}
