-- Unit specs for lua/sluice/router.lua: pure Lua, no server.
local Router = require "sluice.router"

describe("router", function()
  local r
  local function h(name) return function() return name end end

  before_each(function()
    r = Router.new()
    r:add("GET", "/", h "root")
    r:add("GET", "/hello/:name", h "hello")
    r:add("POST", "/echo", h "echo")
    r:add("GET", "/users/me", h "me")
    r:add("GET", "/users/:id", h "user")
    r:add("DELETE", "/users/:id", h "delete")
    r:add("GET", "/files/*", h "files")
    r:add("GET", "/a/:x/c", h "axc")
    r:add("GET", "/a/b/d", h "abd")
  end)

  it("matches literal paths", function()
    local fn, params = r:match("GET", "/")
    assert.equal("root", fn())
    assert.same({}, params)
    assert.equal("echo", (r:match("POST", "/echo"))())
  end)

  it("captures and decodes :params", function()
    local fn, params = r:match("GET", "/hello/w%C3%B6rld%20x")
    assert.equal("hello", fn())
    assert.equal("wörld x", params.name)
  end)

  it("prefers a literal segment over a parameter", function()
    assert.equal("me", (r:match("GET", "/users/me"))())
    local fn, params = r:match("GET", "/users/42")
    assert.equal("user", fn())
    assert.equal("42", params.id)
  end)

  it("backtracks from a literal branch that does not finish the match", function()
    -- "/a/b/c": the literal "b" branch only knows "/a/b/d"; ":x" matches.
    local fn, params = r:match("GET", "/a/b/c")
    assert.equal("axc", fn())
    assert.equal("b", params.x)
  end)

  it("falls back to a parameter when the literal lacks the method", function()
    local fn, params = r:match("DELETE", "/users/me")
    assert.equal("delete", fn())
    assert.equal("me", params.id)
  end)

  it("matches a trailing * with the rest of the path", function()
    local fn, params = r:match("GET", "/files/a/b%20c.txt")
    assert.equal("files", fn())
    assert.equal("a/b c.txt", params["*"])
    local _, p2 = r:match("GET", "/files/")
    assert.equal("", p2["*"])
    assert.is_nil((r:match("GET", "/files")))
  end)

  it("answers HEAD with GET routes", function()
    assert.equal("hello", (r:match("HEAD", "/hello/x"))())
  end)

  it("reports the allowed methods when only the method is wrong", function()
    local fn, allow = r:match("POST", "/hello/x")
    assert.is_nil(fn)
    assert.equal("GET, HEAD", allow)
    local _, allow2 = r:match("PUT", "/users/7")
    assert.equal("DELETE, GET, HEAD", allow2)
  end)

  it("returns nothing for unknown paths", function()
    local fn, allow = r:match("GET", "/nope")
    assert.is_nil(fn)
    assert.is_nil(allow)
    assert.is_nil((r:match("GET", "/hello")))
    assert.is_nil((r:match("GET", "/hello/")))       -- an empty :param does not match
    assert.is_nil((r:match("GET", "/hello/x/y")))
  end)

  it("keeps a trailing slash significant", function()
    assert.is_nil((r:match("POST", "/echo/")))
  end)

  it("refuses misuse when adding routes", function()
    assert.has_error(function() r:add("FETCH", "/x", h "x") end)
    assert.has_error(function() r:add("GET", "x", h "x") end)
    assert.has_error(function() r:add("GET", "/x", "not a function") end)
    assert.has_error(function() r:add("GET", "/x/*/y", h "x") end)
    assert.has_error(function() r:add("GET", "/x/:", h "x") end)
    assert.has_error(function() r:add("GET", "/", h "again") end)
    assert.has_error(function() r:add("GET", "/users/:other/x", h "x") end)
  end)

  it("lists its routes in the order they were added, refused ones left out", function()
    pcall(r.add, r, "GET", "/", h "again")
    local list = r:list()
    assert.are.equal(9, #list)
    assert.are.same({ method = "GET", path = "/" }, list[1])
    assert.are.same({ method = "POST", path = "/echo" }, list[3])
    assert.are.same({ method = "GET", path = "/a/b/d" }, list[9])
    list[1] = nil -- a copy: the router's own list is untouched
    assert.are.equal("GET", r:list()[1].method)
  end)
end)
