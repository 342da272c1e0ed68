-- Unit specs for the Lua half of the API (lua/sluice/init.lua), against a
-- recording stand-in for the C core: what the dispatcher asks the core to
-- send is checked exactly, without a server.

-- The stand-in: records every response; request handles are plain tables
-- carrying what the C side would report.
local sent
local fake_core = {
  version = "test", reload = false, worker = 1, yield_token = {},
  json = {
    -- a tiny JSON for the stand-in: enough for flat tables and strings
    encode = function(v)
      if type(v) == "string" then return string.format("%q", v) end
      local keys = {}
      for k in pairs(v) do keys[#keys + 1] = k end
      table.sort(keys)
      local parts = {}
      for _, k in ipairs(keys) do
        local x = v[k]
        parts[#parts + 1] = string.format("%q:%s", k, type(x) == "string" and string.format("%q", x) or tostring(x))
      end
      return "{" .. table.concat(parts, ",") .. "}"
    end,
    decode = function(s)
      if s == '{"ok":true}' then return { ok = true } end
      return nil, "bad json"
    end,
  },
  sleep = function() end, now = function() return 0 end,
  spawn = function() end, every = function() end, after = function() end,
  log = function(level, msg) sent.logs[#sent.logs + 1] = level .. ": " .. msg end,
  count_handler_error = function() sent.errors = (sent.errors or 0) + 1 end,
  req_headers = function(h) return h.headers or {} end,
  req_remote = function() return "127.0.0.1" end,
  req_body = function(h) return h.body end,
  headers = function(t) return t end, -- pre-rendered headers: the table stands for them
  respond = function(h, status, headers, body)
    sent.status, sent.headers, sent.body = status, headers, body
    return true
  end,
  static = function(h, path) sent.static = path; return h.has_file or false end,
  sse = function(h, headers, retry)
    sent.sse = { headers = headers, retry = retry }
    return { close = function() sent.closed = true end }
  end,
}
package.loaded["sluice.core"] = fake_core
-- the core registers the stream metatable, whose methods the module extends
debug.getregistry()["sluice.stream"] = { methods = { relay = function() return true end } }
debug.getregistry()["sluice.response"] = { methods = {} }
package.loaded["sluice"] = nil
local sluice = require "sluice"

--- Builds an app from `build(app)`, boots it from a temp dir and returns the dispatcher.
local function boot(opts, build)
  local app = sluice.app(opts)
  build(app)
  local dir = os.tmpname()
  os.remove(dir)
  os.execute("mkdir -p " .. dir)
  local f = assert(io.open(dir .. "/app.lua", "w"))
  f:write("return ...")
  f:close()
  -- _boot loads app.lua; hand it our app through a global the chunk returns
  local real_loadfile = loadfile
  _G.loadfile = function() return function() return app end end
  local dispatch, options = sluice._boot(dir)
  _G.loadfile = real_loadfile
  os.execute("rm -rf " .. dir)
  return dispatch, options
end

local function header(name)
  for k, v in pairs(sent.headers or {}) do
    if k:lower() == name then return v end
  end
end

describe("the Lua API", function()
  before_each(function() sent = { logs = {} } end)

  it("refuses unknown and mistyped app options", function()
    assert.has_error(function() sluice.app { histroy = 10 } end, "sluice.app: unknown option 'histroy'")
    assert.has_error(function() sluice.app { heartbeat = "15" } end, "sluice.app: option 'heartbeat' must be a number")
    assert.has_error(function() sluice.app { retry = -1 } end)
  end)

  it("answers a string with 200 text/plain", function()
    local dispatch = boot({}, function(app)
      app:get("/hello/:name", function(req) return "hello " .. req.params.name end)
    end)
    dispatch({}, "GET", "/hello/bob", nil)
    assert.equal(200, sent.status)
    assert.equal("hello bob", sent.body)
    assert.equal("text/plain; charset=utf-8", header("content-type"))
  end)

  it("answers a table with status, headers and a json body", function()
    local dispatch = boot({}, function(app)
      app:post("/x", function() return { status = 201, headers = { ["X-Id"] = "7" }, json = { ok = "yes" } } end)
    end)
    dispatch({}, "POST", "/x", nil)
    assert.equal(201, sent.status)
    assert.equal("7", header("x-id"))
    assert.equal("application/json", header("content-type"))
    assert.equal('{"ok":"yes"}', sent.body)
  end)

  it("keeps a content-type the handler set", function()
    local dispatch = boot({}, function(app)
      app:get("/h", function() return { headers = { ["content-type"] = "text/html" }, body = "<p>" } end)
    end)
    dispatch({}, "GET", "/h", nil)
    assert.equal("text/html", header("content-type"))
  end)

  it("answers 405 with Allow, and 404 after trying static files", function()
    local dispatch = boot({}, function(app) app:get("/only-get", function() return "x" end) end)
    dispatch({}, "POST", "/only-get", nil)
    assert.equal(405, sent.status)
    assert.equal("GET, HEAD", header("allow"))
    dispatch({}, "GET", "/missing.txt", nil)
    assert.equal("/missing.txt", sent.static)
    assert.equal(404, sent.status)
    sent = { logs = {} }
    dispatch({ has_file = true }, "GET", "/present.txt", nil)
    assert.is_nil(sent.status) -- the core sent the file itself
  end)

  it("turns invalid JSON into a 400 with a JSON error", function()
    local reached = false
    local dispatch = boot({}, function(app)
      app:post("/echo", function(req) req:json(); reached = true end)
    end)
    dispatch({ body = "{nope" }, "POST", "/echo", nil)
    assert.equal(400, sent.status)
    assert.matches('"error":"invalid JSON: bad json"', sent.body, 1, true)
    assert.is_false(reached)
  end)

  it("answers 500 and logs the traceback when a handler fails", function()
    local dispatch = boot({}, function(app) app:get("/boom", function() error("kaput") end) end)
    dispatch({}, "GET", "/boom", nil)
    assert.equal(500, sent.status)
    assert.equal("internal server error", sent.body)
    assert.matches("kaput", sent.logs[1], 1, true)
    assert.matches("stack traceback", sent.logs[1], 1, true)
    assert.equal(1, sent.errors) -- counted for the metrics
  end)

  it("routes app:options like the other methods", function()
    local dispatch = boot({}, function(app)
      app:options("/x", function() return { status = 204 } end)
    end)
    dispatch({}, "OPTIONS", "/x", nil)
    assert.equal(204, sent.status)
  end)

  it("lets sluice.abort choose the status", function()
    local dispatch = boot({}, function(app) app:get("/no", function() sluice.abort(401, "who are you") end) end)
    dispatch({}, "GET", "/no", nil)
    assert.equal(401, sent.status)
    assert.matches("who are you", sent.body, 1, true)
  end)

  it("parses query, cookies and last_event_id lazily", function()
    local seen
    local dispatch = boot({}, function(app)
      app:get("/q", function(req)
        seen = { q = req.query, c = req.cookies, id = req.last_event_id, addr = req.remote_addr }
        return "ok"
      end)
    end)
    dispatch({ headers = { cookie = 'a=1; b="two"; a=3' } }, "GET", "/q", "x=1&y=a+b%21&lastEventId=42&flag")
    assert.same({ x = "1", y = "a b!", lastEventId = "42", flag = "" }, seen.q)
    assert.same({ a = "1", b = "two" }, seen.c)
    assert.equal("42", seen.id)
    assert.equal("127.0.0.1", seen.addr)
    dispatch({ headers = { ["last-event-id"] = "77" } }, "GET", "/q", "lastEventId=42")
    assert.equal("77", seen.id)
  end)

  it("opens streams with the app's retry and CORS headers", function()
    local dispatch = boot({ retry = 1500, cors = "https://a.test" }, function(app)
      app:get("/s", function(req) req:sse { headers = { ["X-Stream"] = "1" } } end)
    end)
    dispatch({ headers = { origin = "https://a.test" } }, "GET", "/s", nil)
    assert.equal(1500, sent.sse.retry)
    assert.equal("1", sent.sse.headers["X-Stream"])
    assert.equal("https://a.test", sent.sse.headers["Access-Control-Allow-Origin"])
    assert.is_nil(sent.status)
  end)

  it("answers CORS preflights for known paths only from allowed origins", function()
    local dispatch = boot({ cors = { origins = { "https://a.test" }, credentials = true } }, function(app)
      app:post("/m", function() return "x" end)
    end)
    dispatch({ headers = { origin = "https://a.test", ["access-control-request-method"] = "POST" } },
             "OPTIONS", "/m", nil)
    assert.equal(204, sent.status)
    assert.equal("https://a.test", header("access-control-allow-origin"))
    assert.equal("true", header("access-control-allow-credentials"))
    assert.equal("POST", header("access-control-allow-methods"))
    dispatch({ headers = { origin = "https://evil.test" } }, "POST", "/m", nil)
    assert.is_nil(header("access-control-allow-origin"))
  end)

  it("refuses a handler result of the wrong type", function()
    local dispatch = boot({}, function(app) app:get("/n", function() return 42 end) end)
    dispatch({}, "GET", "/n", nil)
    assert.equal(500, sent.status)
    assert.matches("handler returned a number", sent.logs[1], 1, true)
  end)

  it("logs like print", function()
    sluice.log.warn("a", 1, nil, true)
    assert.equal("warn: a 1 nil true", sent.logs[1])
  end)
end)
