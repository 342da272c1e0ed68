--- sluice: the Lua API for sluice apps.
---
--- ```lua
--- local sluice = require "sluice"
--- local app = sluice.app{ heartbeat = 15 }
--- app:get("/hello/:name", function(req) return "hello " .. req.params.name end)
--- return app
--- ```
---
--- The C core provides `sluice.core`; this module turns it into the
--- documented API: apps and routes, the request object, responses, streams.
---@class sluicelib
local sluice = {}

local core = require "sluice.core"
local Router = require "sluice.router"

local json = core.json
local type, pairs, ipairs, select, tostring, error, setmetatable, getmetatable, rawset, xpcall =
  type, pairs, ipairs, select, tostring, error, setmetatable, getmetatable, rawset, xpcall
local concat = table.concat
local find = string.find

---@class sluice.HistoryOptions
---@field since? string|integer the last id seen: events after it
---@field limit? integer at most this many (the oldest first)

---@class sluice.FetchOptions
---@field method? string default GET, or POST with a body
---@field headers? table<string,string|string[]>
---@field body? string|table a table is sent as JSON
---@field timeout? number seconds for the whole transfer

---@class sluice.Stats
---@field worker integer
---@field connections integer
---@field subscribers integer
---@field delivered integer
---@field slow_drops integer
---@field published integer
---@field channels integer
---@field retained integer
---@field redis? {up: boolean, published: integer, received: integer, reconnects: integer} with --redis

--- The server's version string.
---@type string
sluice.version = core.version
sluice.json = json
--- Waits `s` seconds (the task yields to the loop).
---@type fun(s: number)
sluice.sleep = core.sleep
--- Seconds since the epoch, with a sub-millisecond part.
---@type fun(): number
sluice.now = core.now
--- Runs `fn(...)` as its own task from the next loop turn; it outlives the caller.
---@type fun(fn: function, ...: any): true
sluice.spawn = core.spawn
--- Calls `fn` every `s` seconds; returns a timer with `:cancel()`.
---@type fun(s: number, fn: function): table
sluice.every = core.every
--- Calls `fn` once after `s` seconds; returns a timer with `:cancel()`.
---@type fun(s: number, fn: function): table
sluice.after = core.after
--- An upstream HTTP request: the response once its head is in, or nil, err.
---@type fun(url: string, opts?: sluice.FetchOptions): table|nil, string?
sluice.fetch = core.fetch
--- Publishes an event on a channel: its id, or (with --redis, while Redis
--- is unavailable) nil and a message.
---@type fun(channel: string, ev: string|sluice.Event): string|nil, string?
sluice.publish = core.publish
--- The retained events of a channel after `since`, oldest first.
---@type fun(channel: string, opts?: sluice.HistoryOptions): sluice.Event[]|nil, string?
sluice.history = core.history
--- Counters of this worker and of the hub.
---@type fun(): sluice.Stats
sluice.stats = core.stats

-------------------------------------------------------------------- logging

--- Joins log arguments the way print does.
local function message(...)
  local n = select("#", ...)
  if n == 1 then return tostring((...)) end
  local parts = {}
  for i = 1, n do parts[i] = tostring((select(i, ...))) end
  return concat(parts, " ")
end

sluice.log = {
  debug = function(...) core.log("debug", message(...)) end,
  info = function(...) core.log("info", message(...)) end,
  warn = function(...) core.log("warn", message(...)) end,
  error = function(...) core.log("error", message(...)) end,
}

---------------------------------------------------------------- coroutines

-- sluice.sleep and friends yield the whole request task back to the loop.
-- Inside a coroutine the app made itself, that yield must travel up through
-- the app's coroutine.resume to the task, and the values the loop resumes
-- the task with must travel back down.  These wrappers do that and leave
-- every other yield to Lua's own semantics.
do
  local token = core.yield_token
  local create, resume, yield, status, close =
    coroutine.create, coroutine.resume, coroutine.yield, coroutine.status, coroutine.close

  local function pass(co, ok, ...)
    if ok and select("#", ...) == 1 and (...) == token and status(co) == "suspended" then
      return pass(co, resume(co, yield(token)))
    end
    return ok, ...
  end

  coroutine.resume = function(co, ...)
    return pass(co, resume(co, ...))
  end

  local function unwrap(co, ok, ...)
    if ok then return ... end
    close(co)
    error((...), 0)
  end

  coroutine.wrap = function(f)
    local co = create(f)
    return function(...)
      return unwrap(co, pass(co, resume(co, ...)))
    end
  end
end

------------------------------------------------------------------ streams

-- stream:relay(res, transform): without a transform the C core relays
-- (no Lua per event); with one, each parsed event goes through it here.
do
  local methods = debug.getregistry()["sluice.stream"].methods
  local relay_in_c = methods.relay

  ---@param stream sluice.Stream
  ---@param res sluice.Response
  ---@param transform? fun(ev: sluice.Event): sluice.Event|string|nil
  ---@return true|nil ok, string? err
  methods.relay = function(stream, res, transform)
    if transform == nil then return relay_in_c(stream, res) end
    if type(transform) ~= "function" then error("stream:relay: transform must be a function", 2) end
    for ev in res:events() do
      local out = transform(ev)
      if out ~= nil then
        local ok, err = stream:send(out)
        if not ok then
          res:close()
          return nil, err
        end
      end
    end
    if res.err then return nil, res.err end
    return true
  end
end

-- res:json(): the whole body decoded, or nil and why.
do
  local methods = debug.getregistry()["sluice.response"].methods

  ---@param res sluice.Response
  ---@return any|nil value, string? err
  methods.json = function(res)
    local text, err = res:text()
    if not text then return nil, err end
    local v, derr = json.decode(text)
    if v == nil and derr then return nil, "invalid JSON: " .. derr end
    return v
  end
end

-------------------------------------------------------------------- errors

--- An error that answers the request with a status instead of a 500.
---@class sluice.HttpError
---@field status integer
---@field message string
local HttpError = {}
HttpError.__index = HttpError
HttpError.__tostring = function(e) return ("HTTP %d: %s"):format(e.status, e.message) end

--- Stops the handler and answers with `status` and a JSON `{ "error": message }`.
---@param status integer 4xx or 5xx
---@param message? string
function sluice.abort(status, message)
  if type(status) ~= "number" or status < 400 or status > 599 then
    error("sluice.abort: status must be 400-599", 2)
  end
  error(setmetatable({ status = status, message = message or "error" }, HttpError), 0)
end

------------------------------------------------------------------ the app

---@class sluice.AppOptions
---@field history? integer events kept per channel (default 1000)
---@field history_ttl? number seconds events stay in history
---@field heartbeat? number seconds of silence before a ":" comment (default 15, 0 = off)
---@field heartbeat_comment? string text of that comment (default none: a bare ":")
---@field retry? integer reconnection delay in ms sent when a stream opens
---@field cors? string|string[]|{origins: string|string[], credentials?: boolean, headers?: string[], max_age?: integer}
---@field max_body? integer request body limit in bytes (default 1 MiB)
---@field max_queue? integer bytes queued for a slow subscriber before it is dropped (default 1 MiB)
---@field public? string folder of static files, relative to the app (default "public")
---@field cpu_budget? number seconds a handler may run without yielding (default 1)
---@field memory_limit? integer bytes the app's Lua VM may hold (default 256 MiB)

local OPTION_TYPES = {
  history = "number", history_ttl = "number", heartbeat = "number", heartbeat_comment = "string",
  retry = "number",
  cors = "any", max_body = "number", max_queue = "number", public = "string", cpu_budget = "number",
  memory_limit = "number",
}

---@class sluice.App
---@field settings sluice.AppOptions the options it was made with (a field named `options` would hide app:options)
---@field router sluice.Router
local App = {}
App.__index = App

--- Creates an app.  Unknown or mistyped options are an error.
---@param opts? sluice.AppOptions
---@return sluice.App
function sluice.app(opts)
  opts = opts or {}
  if type(opts) ~= "table" then error("sluice.app: options must be a table", 2) end
  local options = {}
  for k, v in pairs(opts) do
    local want = OPTION_TYPES[k]
    if not want then error("sluice.app: unknown option '" .. tostring(k) .. "'", 2) end
    if want ~= "any" and type(v) ~= want then
      error(("sluice.app: option '%s' must be a %s"):format(k, want), 2)
    end
    options[k] = v
  end
  if options.retry and (options.retry < 0 or options.retry % 1 ~= 0) then
    error("sluice.app: option 'retry' must be a non-negative integer (milliseconds)", 2)
  end
  return setmetatable({ settings = options, router = Router.new() }, App)
end

--- Adds a route for `method` (GET, POST, PUT, PATCH, DELETE, OPTIONS).
---@param method string
---@param path string "/literal", "/:param", "/rest/*"
---@param fn fun(req: sluice.Request): any
---@return sluice.App
function App:route(method, path, fn)
  self.router:add(type(method) == "string" and method:upper() or method, path, fn)
  return self
end

for _, m in ipairs { "get", "post", "put", "patch", "delete", "options" } do
  local METHOD = m:upper()
  App[m] = function(self, path, fn)
    self.router:add(METHOD, path, fn)
    return self
  end
end

--------------------------------------------------------------------- CORS

--- Normalises the cors option into { origins = set|"*", credentials, headers, max_age }.
local function cors_config(opt)
  if opt == nil then return nil end
  local c = type(opt) == "table" and opt.origins and opt or { origins = opt }
  local origins = c.origins
  local set
  if origins == "*" then
    set = "*"
  else
    set = {}
    if type(origins) == "string" then origins = { origins } end
    if type(origins) ~= "table" then error("sluice.app: option 'cors' must name origins") end
    for _, o in ipairs(origins) do set[o] = true end
  end
  return {
    origins = set,
    credentials = c.credentials and true or false,
    headers = c.headers and concat(c.headers, ", ") or nil,
    max_age = tostring(c.max_age or 600),
  }
end

--- Adds the CORS headers a response to `origin` carries (into hdrs).
local function cors_headers(cors, origin, hdrs)
  if not origin then return hdrs end
  local allowed = cors.origins == "*" or cors.origins[origin]
  if not allowed then return hdrs end
  if cors.origins == "*" and not cors.credentials then
    hdrs["Access-Control-Allow-Origin"] = "*"
  else
    hdrs["Access-Control-Allow-Origin"] = origin
    hdrs["Vary"] = "Origin"
  end
  if cors.credentials then hdrs["Access-Control-Allow-Credentials"] = "true" end
  return hdrs
end

------------------------------------------------------------- the request

---@class sluice.Request
---@field method string
---@field path string the path, still percent-encoded
---@field params table<string,string> route parameters, decoded
---@field query table<string,string> query parameters, decoded (the last of repeated keys wins)
---@field headers table<string,string> lower-case names; repeated fields joined with ", "
---@field cookies table<string,string>
---@field remote_addr string
---@field last_event_id string|nil Last-Event-ID header, else the lastEventId query parameter
local Request = {}

local function unescape_form(s)
  s = s:gsub("+", " ")
  return Router.unescape(s)
end

local lazy = {}

function lazy.headers(req) return core.req_headers(req._h) end

function lazy.query(req)
  local q = {}
  local raw = req._query
  if raw then
    for pair in raw:gmatch("[^&]+") do
      local k, v = pair:match("^([^=]*)=?(.*)$")
      q[unescape_form(k)] = unescape_form(v)
    end
  end
  return q
end

function lazy.cookies(req)
  local c = {}
  local raw = req.headers.cookie
  if raw then
    for pair in raw:gmatch("[^;]+") do
      local k, v = pair:match("^%s*([^=]-)%s*=%s*(.-)%s*$")
      if k and k ~= "" and c[k] == nil then
        if v:sub(1, 1) == '"' and v:sub(-1) == '"' then v = v:sub(2, -2) end
        c[k] = v
      end
    end
  end
  return c
end

function lazy.remote_addr(req) return (core.req_remote(req._h)) end

function lazy.last_event_id(req)
  local id = req.headers["last-event-id"]
  if id == nil or id == "" then id = req.query.lastEventId end
  if id == "" then return nil end
  return id
end

local req_mt = {
  __index = function(req, k)
    local get = lazy[k]
    if get then
      local v = get(req)
      rawset(req, k, v)
      return v
    end
    return Request[k]
  end,
}

--- The request body, read in full (waits for it to arrive).
---@return string|nil body, string? err "closed" when the client left
function Request:body()
  return core.req_body(self._h)
end

--- The body decoded as JSON.  Invalid JSON answers 400 with a JSON error and
--- ends the handler.
---@return any
function Request:json()
  local body, err = core.req_body(self._h)
  if not body then sluice.abort(400, "request body unavailable: " .. tostring(err)) end
  local v, derr = json.decode(body)
  if v == nil and derr then sluice.abort(400, "invalid JSON: " .. derr) end
  return v
end

---@class sluice.SseOptions
---@field retry? integer reconnection delay (ms) sent first
---@field headers? table<string,string|string[]> extra response headers

--- Opens the event stream: the 200 and its headers leave at once.
---@param opts? sluice.SseOptions
---@return sluice.Stream
function Request:sse(opts)
  opts = opts or {}
  local app = self._app
  local hdrs = {}
  if opts.headers then
    for k, v in pairs(opts.headers) do hdrs[k] = v end
  end
  if app.cors then cors_headers(app.cors, self.headers.origin, hdrs) end
  local retry = opts.retry or app.settings.retry
  local stream, err = core.sse(self._h, hdrs, retry)
  if not stream then return nil, err end
  self._stream = stream
  return stream
end

---------------------------------------------------------------- responses

---@class sluice.Response
---@field status? integer default 200
---@field headers? table<string,string|string[]> response headers (Content-Length, Connection, Date and Transfer-Encoding are the server's)
---@field body? string sent as is (text/plain unless a content-type is given)
---@field json? any encoded with sluice.json (application/json)

---@class sluice.Event
---@field data? string|table|number|boolean a table is JSON-encoded; lines split on CR, LF, CRLF
---@field event? string must not contain CR, LF or NUL
---@field id? string|number must not contain CR, LF or NUL
---@field retry? integer reconnection delay in ms

---@class sluice.Stream
---@field closed boolean true once the client left or the stream was closed
---@field send fun(self: sluice.Stream, ev: string|sluice.Event): true|nil, string? waits while the queue is full; nil, "closed" once gone
---@field comment fun(self: sluice.Stream, text?: string): true|nil, string?
---@field close fun(self: sluice.Stream)
---@field subscribe fun(self: sluice.Stream, channels: string|string[], opts?: {since?: string|integer}): integer|nil, boolean|string replayed count and false when events after since were no longer kept; nil, "closed" or (with --redis) nil, msg
---@field relay fun(self: sluice.Stream, res: table, transform?: fun(ev: sluice.Event): (sluice.Event|string|nil)): true|nil, string? relays an upstream event stream

local TEXT = "text/plain; charset=utf-8"
local JSON = "application/json"

-- The headers of a plain-text answer, rendered once for every response
-- that carries no others.
local TEXT_HEADERS = core.headers { ["Content-Type"] = TEXT }

--- Whether hdrs names field (any case).
local function has_header(hdrs, field)
  for k in pairs(hdrs) do
    if k:lower() == field then return true end
  end
  return false
end

--- Sends what a handler returned.
local function respond(req, res, cors)
  local h = req._h
  local kind = type(res)
  if kind == "string" then
    if not cors then return core.respond(h, 200, TEXT_HEADERS, res) end
    local hdrs = cors_headers(cors, req.headers.origin, { ["Content-Type"] = TEXT })
    return core.respond(h, 200, hdrs, res)
  elseif kind == "table" then
    local status = res.status or 200
    local hdrs = {}
    if res.headers then
      for k, v in pairs(res.headers) do hdrs[k] = v end
    end
    local body = res.body
    if res.json ~= nil then
      body = json.encode(res.json)
      if not has_header(hdrs, "content-type") then hdrs["Content-Type"] = JSON end
    elseif body ~= nil then
      body = tostring(body)
      if not has_header(hdrs, "content-type") then hdrs["Content-Type"] = TEXT end
    end
    if cors then cors_headers(cors, req.headers.origin, hdrs) end
    return core.respond(h, status, hdrs, body)
  elseif kind == "nil" then
    return -- a stream, or nothing: the core answers 500 for the latter
  end
  error("handler returned a " .. kind .. "; return a string, a table, or nothing after req:sse()", 0)
end

--- Error handler: keeps HttpErrors, adds a traceback to everything else.
local function on_error(e)
  if getmetatable(e) == HttpError then return e end
  return debug.traceback(tostring(e), 2)
end

--- Runs a handler and sends what it returned: one protected call for both.
local function run(req, fn, cors)
  return respond(req, fn(req), cors)
end

--- Answers an error that escaped a handler.
local function failed(req, e, cors)
  local started = req._stream ~= nil
  if getmetatable(e) == HttpError then
    if not started then respond(req, { status = e.status, json = { error = e.message } }, cors) end
    return
  end
  sluice.log.error(("%s %s: %s"):format(req.method, req.path, e))
  core.count_handler_error()
  if started then
    req._stream:close()
  else
    local body = core.reload and e or "internal server error"
    respond(req, { status = 500, body = body }, cors)
  end
end

------------------------------------------------------------------ reloads

-- The live-reload script, read once from beside this file.
local RELOAD_JS = "/* sluice: live reload is off (start with --reload) */\n"
if core.reload then
  local dir = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
  local f = io.open(dir .. "/reload.js")
  if f then
    RELOAD_JS = f:read("a")
    f:close()
  end
end

--- Whether a request may read the admin routes, and if not the status and
--- text to answer. With --admin-token it must bring the token as
--- `Authorization: Bearer TOKEN`; without one, metrics answer only clients
--- on the loopback interface that came directly, not through a proxy on
--- the same machine (which would make them public).
---@param h any the request handle
---@param open boolean whether anyone may ask when no token is set (health)
---@return boolean ok
---@return integer? status
---@return string? text
local function admin_allowed(h, open)
  local headers = core.req_headers(h)
  if core.admin_token then
    -- The scheme's name is case-insensitive (RFC 9110).
    local scheme, token = (headers.authorization or ""):match("^(%a+) +(%S+) *$")
    if not (scheme and scheme:lower() == "bearer") then token = nil end
    if token and core.admin_token_ok(token) then return true end
    return false, 401, "an admin token is needed: Authorization: Bearer TOKEN\n"
  end
  if open then return true end
  local addr = core.req_remote(h) or ""
  local loopback = addr:find("^127%.") or addr == "::1" or addr:find("^::ffff:127%.")
  if loopback and not (headers["x-forwarded-for"] or headers["forwarded"] or headers["x-real-ip"]) then
    return true
  end
  return false, 403, "metrics answer loopback clients only (or set --admin-token)\n"
end

--- Answers the server's own routes under /_sluice/; false when path is not one.
local function builtin(h, method, path)
  if (path == "/_sluice/metrics" or path == "/_sluice/health") and (method == "GET" or method == "HEAD") then
    local metrics = path == "/_sluice/metrics"
    local ok, status, text = admin_allowed(h, not metrics)
    if not ok then
      local hdrs = { ["Content-Type"] = TEXT, ["Cache-Control"] = "no-store" }
      if status == 401 then hdrs["WWW-Authenticate"] = 'Bearer realm="sluice"' end
      core.respond(h, status, hdrs, text)
    elseif metrics then
      core.respond(h, 200, { ["Content-Type"] = "text/plain; version=0.0.4; charset=utf-8",
                             ["Cache-Control"] = "no-store" }, core.metrics())
    else
      core.respond(h, 200, { ["Content-Type"] = "application/json",
                             ["Cache-Control"] = "no-store" }, json.encode(core.health()))
    end
    return true
  end
  if path == "/_sluice/reload.js" and (method == "GET" or method == "HEAD") then
    core.respond(h, 200, { ["Content-Type"] = "text/javascript; charset=utf-8",
                           ["Cache-Control"] = "no-cache" }, RELOAD_JS)
    return true
  end
  if path == "/_sluice/reload" and core.reload and method == "GET" then
    -- The hub holds the subscription, so it outlives every reload.
    local stream = core.sse(h, {}, nil)
    if stream then stream:subscribe("_sluice.reload") end
    return true
  end
  return false
end

--- Builds the function the core calls for every request.
local function make_dispatch(app)
  local router = app.router
  local match = router.match -- looked up once, not through the metatable per request
  local cors = cors_config(app.settings.cors)
  app.cors = cors

  return function(h, method, path, query)
    if find(path, "^/_sluice/") and builtin(h, method, path) then return end
    local fn, params = match(router, method, path)
    if not fn then
      if params then -- the path exists, under other methods
        if method == "OPTIONS" and cors then
          local origin = core.req_headers(h).origin
          local hdrs = cors_headers(cors, origin, {
            ["Access-Control-Allow-Methods"] = params,
            ["Access-Control-Max-Age"] = cors.max_age,
          })
          local want = core.req_headers(h)["access-control-request-headers"]
          if cors.headers or want then hdrs["Access-Control-Allow-Headers"] = cors.headers or want end
          return core.respond(h, 204, hdrs)
        end
        return core.respond(h, 405, { Allow = params, ["Content-Type"] = TEXT }, "method not allowed\n")
      end
      if (method == "GET" or method == "HEAD") and core.static(h, path) then return end
      return core.respond(h, 404, TEXT_HEADERS, "not found\n")
    end
    local req = setmetatable({ _h = h, _app = app, _query = query, method = method,
                               path = path, params = params }, req_mt)
    local ok, err = xpcall(run, on_error, req, fn, cors)
    if not ok then failed(req, err, cors) end
  end
end

-- The app of each dispatcher, for as long as the dispatcher lives.
local apps = setmetatable({}, { __mode = "k" })

--- Loads the app in `dir` and returns its dispatcher and options (the core
--- calls this once per worker VM).
---@param dir string
function sluice._boot(dir)
  local chunk, err = loadfile(dir .. "/app.lua")
  if not chunk then error(err, 0) end
  local app = chunk()
  if getmetatable(app) ~= App then
    error(dir .. "/app.lua must return the app made by sluice.app{...}", 0)
  end
  local dispatch = make_dispatch(app)
  apps[dispatch] = app
  return dispatch, app.settings
end

--- The app behind a dispatcher `_boot` made (for `sluice check`).
---@param dispatch function
---@return sluice.App?
function sluice._app_of(dispatch) return apps[dispatch] end

return sluice
