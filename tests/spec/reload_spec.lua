-- Hot reload (--reload and SIGHUP): a save is live at once, a broken save
-- keeps the old version serving and says where it broke, streams and
-- subscriptions survive reloads, old VMs run their handlers out and are
-- freed, their timers stop, and a thousand reloads leak nothing.
--
-- Every test copies tests/apps/reload into a temp dir and edits it there.
-- Saves that must map to exactly one reload are written beside the app and
-- renamed into it (one inotify event, so one reload and one event on
-- /_sluice/reload); the plain in-place write+close is used where a test
-- only polls for the new code.
local socket = require "socket"
local testing = require "sluice.testing"

local json = testing.json
local now = testing.now

local TEMPLATE = testing.root .. "/tests/apps/reload"

local function quote(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

local function sh(cmd)
  local ok = os.execute(cmd)
  assert(ok, "command failed: " .. cmd)
end

local function realpath(path)
  local p = assert(io.popen("realpath " .. quote(path)))
  local out = p:read("l")
  p:close()
  return assert(out)
end

local function lines_of(text)
  local t = {}
  for line in text:gmatch("([^\n]*)\n") do t[#t + 1] = line end
  return t
end

-- ----------------------------------------------------------- workspaces

---@class Workspace
---@field base string   the temp dir holding everything below
---@field dir string    the app's folder (real path), what the server runs
---@field stage string  a sibling folder, not watched, where saves are written first
---@field freed string  the log the app's VMs append "freed VM" to when closed
local Workspace = {}
Workspace.__index = Workspace

--- A fresh copy of the test app; `dirname` names the app's folder.
local function workspace(dirname)
  local tmp = testing.tempdir()
  local base = realpath(tmp)
  local ws = setmetatable({ tmp = tmp, base = base, saves = 0 }, Workspace)
  ws.dir = base .. "/" .. (dirname or "app")
  ws.stage = base .. "/stage"
  ws.freed = base .. "/freed.log"
  testing.copy_tree(TEMPLATE, ws.dir)
  sh("mkdir -p " .. quote(ws.stage))
  ws.template = assert(testing.read_file(ws.dir .. "/app.lua"))
  for i, line in ipairs(lines_of(ws.template)) do
    if line == "-- @break" then ws.break_line = i end
  end
  assert(ws.break_line, "the template has no @break line")
  return ws
end

--- The template as version `tag`: opts.broken replaces the @break line
--- (one line, so line numbers stay), opts.extra the @extra line.
function Workspace:render(tag, opts)
  opts = opts or {}
  local out = {}
  for _, line in ipairs(lines_of(self.template)) do
    if line:find("-- @version", 1, true) then
      line = ('local VERSION = "%s" -- @version'):format(tag)
    elseif line == "-- @break" and opts.broken then
      assert(not opts.broken:find("\n"), "broken code must be one line")
      line = opts.broken
    elseif line == "-- @extra" and opts.extra then
      line = opts.extra
    end
    out[#out + 1] = line
  end
  return table.concat(out, "\n") .. "\n"
end

function Workspace:path(rel) return self.dir .. "/" .. rel end

--- Saves a file of the app in one filesystem event: written in the
--- unwatched stage folder, then renamed over the app's file.
function Workspace:save(rel, content)
  self.saves = self.saves + 1
  local tmp = ("%s/%d.tmp"):format(self.stage, self.saves)
  testing.write_file(tmp, content)
  assert(os.rename(tmp, self:path(rel)))
end

--- Saves the way an editor's plain write does: truncate, write, close.
function Workspace:write(rel, content)
  testing.write_file(self:path(rel), content)
end

--- The VMs that logged their end so far: set of names, and the count.
function Workspace:freed_vms()
  local set, n = {}, 0
  for name in (testing.read_file(self.freed) or ""):gmatch("freed ([^\n]+)\n") do
    set[name] = true
    n = n + 1
  end
  return set, n
end

function Workspace:remove() testing.remove_tempdir(self.tmp) end

-- Broken code for the @break line, each with the message it must cause.
local BROKEN = {
  syntax = { code = "local broken = = 1", message = "unexpected symbol" },
  boom = { code = 'error("boom")', message = "boom" },
  missing = { code = 'require "no_such_module_here"', message = "no_such_module_here" },
}

-- ----------------------------------------------------------- servers

-- Reload events caused by the probes below, which tests skip.
local function is_probe(name, data)
  return name == "reload" and type(data.path) == "string" and data.path:match("/probe%-%d+%.txt$") ~= nil
end

-- The server accepts connections a moment before its watcher is on (a
-- save in between is missed: see the report), so a test under --reload
-- first saves probe files until one causes a reload.
local function await_watcher(server, ws)
  local client = testing.client(server)
  local stream = assert(client:sse("/_sluice/reload"))
  local deadline = now() + 10
  local n = 0
  while true do
    n = n + 1
    testing.write_file(ws:path(("probe-%d.txt"):format(n)), "probe\n")
    local ev = stream:next_event(1)
    if ev then
      assert.are.equal("reload", ev.event, ev.data)
      break
    end
    assert(now() < deadline, "no reload 10 s after the start: is the watcher on?\n" .. server:log())
  end
  stream:close()
end

local function start(ws, opts)
  opts = opts or {}
  local args = {}
  if opts.reload ~= false then args[#args + 1] = "--reload" end
  if opts.workers then
    args[#args + 1] = "--workers"
    args[#args + 1] = tostring(opts.workers)
  end
  local env = { RELOAD_FREED = ws.freed }
  for k, v in pairs(opts.env or {}) do env[k] = v end
  local server = testing.start(ws.dir, { args = args, env = env })
  if opts.reload ~= false then await_watcher(server, ws) end
  return server
end

-- The body of GET path on a new connection (asserts a 200).
local function get(client, path)
  local res, err = client:get(path, { timeout = 5 })
  assert(res, ("GET %s: %s"):format(path, tostring(err)))
  assert.are.equal(200, res.status, ("GET %s: %d %s"):format(path, res.status, res.body))
  return res.body
end

-- The /_sluice/reload stream, open and subscribed.
local function monitor(client)
  local stream = assert(client:sse("/_sluice/reload"))
  assert.are.equal(200, stream.status)
  assert.matches("^text/event%-stream", stream.headers["content-type"])
  return stream
end

-- The next reload outcome: event name, its decoded data, the event.
-- (A late reload from a startup probe is skipped, and counted.)
local skipped_probes = 0
local function outcome(stream, timeout)
  local deadline = now() + (timeout or 5)
  while true do
    local ev, err = stream:next_event(math.max(0, deadline - now()))
    assert(ev, "no event on /_sluice/reload: " .. tostring(err))
    local data = json.decode(ev.data)
    assert(type(data) == "table", "event data is not a JSON object: " .. ev.data)
    if not is_probe(ev.event, data) then return ev.event, data, ev end
    skipped_probes = skipped_probes + 1
  end
end

local function expect_reload(stream)
  local name, data = outcome(stream)
  assert.are.equal("reload", name, "expected a reload, got: " .. json.encode(data))
  return data
end

local function expect_error(stream)
  local name, data = outcome(stream)
  assert.are.equal("error", name, "expected an error, got: " .. json.encode(data))
  return data
end

-- Reads stream events until fn(ev) returns true; fails after timeout.
local function until_event(stream, fn, timeout, what)
  local deadline = now() + (timeout or 3)
  while true do
    local left = deadline - now()
    local ev, err = stream:next_event(math.max(left, 0))
    assert(ev, ("waiting for %s: %s"):format(what or "an event", tostring(err)))
    if fn(ev) then return ev end
  end
end

local function id_of(ev) return assert(math.tointeger(tonumber(ev.id)), "event id: " .. tostring(ev.id)) end

-- Ends the server and removes the app's copy.
local function cleanup(server, ws)
  if server then server:stop() end
  if ws then ws:remove() end
end

-- -------------------------------------------------------------- the mux
-- Many keep-alive request loops and event streams read together with
-- select(), for the test under load: every response and event goes through
-- callbacks, and every anomaly is recorded as a failure.

local Mux = {}
Mux.__index = Mux

local function new_mux(port)
  return setmetatable({ port = port, members = {}, by_sock = {}, failures = {}, nfail = 0 }, Mux)
end

function Mux:fail(fmt, ...)
  self.nfail = self.nfail + 1
  if #self.failures < 20 then self.failures[#self.failures + 1] = fmt:format(...) end
end

function Mux:_add(m)
  local conn, err = testing.connect(self.port)
  assert(conn, "connect: " .. tostring(err))
  m.conn, m.sock, m.buf = conn, conn.sock, ""
  self.members[#self.members + 1] = m
  self.by_sock[m.sock] = m
  return m
end

--- A keep-alive connection requesting paths[1], paths[2], ... in turn, the
--- next as soon as the last was answered. on_send(m) before each request,
--- on_response(m, status, body) after.
function Mux:requests(name, paths, on_send, on_response)
  local m = self:_add { kind = "http", name = name, paths = paths, n = 0, on_send = on_send,
                        on_response = on_response }
  self:_send_next(m)
  return m
end

function Mux:_send_next(m)
  m.n = m.n + 1
  m.path = m.paths[(m.n - 1) % #m.paths + 1]
  if m.on_send then m.on_send(m) end
  local ok, err = m.conn:send(testing.request_bytes("GET", m.path), 5)
  if not ok then
    self:fail("%s: sending GET %s: %s", m.name, m.path, tostring(err))
    self:_drop(m, err)
  end
end

--- An event stream on GET path; on_event(m, ev) for every event
--- ({ event, data, id }), in order.
function Mux:stream(name, path, on_event)
  local m = self:_add { kind = "sse", name = name, path = path, on_event = on_event, events = 0 }
  local ok, err = m.conn:send(testing.request_bytes("GET", path, { headers = { Accept = "text/event-stream" } }), 5)
  assert(ok, "sending GET " .. path .. ": " .. tostring(err))
  return m
end

function Mux:_drop(m, why)
  if m.eof then return end
  m.eof = why or "closed"
  m.sock:close()
end

--- Closes a member on purpose (the client goes away).
function Mux:close(m)
  self:_drop(m, "closed by the test")
end

function Mux:close_all()
  for _, m in ipairs(self.members) do self:_drop(m, "closed by the test") end
end

local function parse_head(head)
  local status = math.tointeger(tonumber(head:match("^HTTP/1%.1 (%d%d%d)")))
  local lower = head:lower()
  return status, math.tointeger(tonumber(lower:match("\r\ncontent%-length:%s*(%d+)"))),
    lower:find("\r\nconnection:%s*close") ~= nil, lower:match("\r\ncontent%-type:%s*([^\r]*)")
end

function Mux:_http_input(m)
  while not m.eof do
    if not m.head then
      local s = m.buf:find("\r\n\r\n", 1, true)
      if not s then return end
      local status, len, close = parse_head(m.buf:sub(1, s - 1))
      m.buf = m.buf:sub(s + 4)
      if not status or not len then
        self:fail("%s: GET %s: bad response head", m.name, m.path)
        return self:_drop(m, "bad head")
      end
      if close then self:fail("%s: GET %s: the server closes the connection", m.name, m.path) end
      m.head = { status = status, len = len }
    end
    if #m.buf < m.head.len then return end
    local body = m.buf:sub(1, m.head.len)
    m.buf = m.buf:sub(m.head.len + 1)
    local status = m.head.status
    m.head = nil
    m.on_response(m, status, body)
    self:_send_next(m)
  end
end

function Mux:_sse_input(m)
  if not m.status then
    local s = m.buf:find("\r\n\r\n", 1, true)
    if not s then return end
    local status, _, _, ctype = parse_head(m.buf:sub(1, s - 1))
    m.buf = m.buf:sub(s + 4)
    m.status = status
    if status ~= 200 or not (ctype or ""):find("^text/event%-stream") then
      self:fail("%s: GET %s answered %s (%s)", m.name, m.path, tostring(status), tostring(ctype))
      return self:_drop(m, "not a stream")
    end
  end
  while true do
    local s, e = m.buf:find("\r?\n\r?\n")
    if not s then return end
    local block = m.buf:sub(1, s - 1)
    m.buf = m.buf:sub(e + 1)
    local ev = { event = "message" }
    local data
    for line in block:gmatch("[^\r\n]+") do
      local field, value = line:match("^([^:]+): ?(.*)$")
      if field == "event" then ev.event = value
      elseif field == "id" then ev.id = value
      elseif field == "data" then data = data and (data .. "\n" .. value) or value end
    end
    if data then
      ev.data = data
      m.events = m.events + 1
      m.last_at = now()
      m.on_event(m, ev)
    end
  end
end

function Mux:_read(m)
  while not m.eof do
    local data, err, partial = m.sock:receive(65536)
    local chunk = data or partial
    if chunk and #chunk > 0 then
      m.buf = m.buf .. chunk
      if m.kind == "http" then self:_http_input(m) else self:_sse_input(m) end
    end
    if err and err ~= "timeout" then
      if not m.eof then
        self:fail("%s (GET %s): connection lost: %s", m.name, m.path, err)
        self:_drop(m, err)
      end
      return
    end
    if not data then return end
  end
end

--- Reads whatever arrives within `wait` seconds (at most).
function Mux:pump(wait)
  local socks = {}
  for _, m in ipairs(self.members) do
    if not m.eof then socks[#socks + 1] = m.sock end
  end
  if #socks == 0 then
    socket.sleep(wait or 0)
    return
  end
  local readable = socket.select(socks, nil, wait or 0)
  for _, sock in ipairs(readable) do self:_read(self.by_sock[sock]) end
end

--- Pumps until cond() is true; false after `timeout` seconds.
function Mux:wait(cond, timeout)
  local deadline = now() + timeout
  while not cond() do
    if now() >= deadline then return false end
    self:pump(math.min(0.01, math.max(0, deadline - now())))
  end
  return true
end

function Mux:run_for(seconds)
  self:wait(function() return false end, seconds)
end

-- ================================================================= specs

describe("hot reload", function()
  it("makes a plain save answer with the new code within 2 s", function()
    local ws = workspace()
    local server = start(ws)
    finally(function() cleanup(server, ws) end)
    local client = testing.client(server)
    assert.are.equal("v1", get(client, "/version"))
    for k = 2, 4 do
      local tag = "v" .. k
      ws:write("app.lua", ws:render(tag))
      local live = testing.wait_for(function() return get(client, "/version") == tag end, 2, 0.01)
      assert.is_truthy(live, tag .. " not answering 2 s after the save")
    end
    assert.is_nil(server:exit_status(), "server died:\n" .. server:log())
  end)

  describe("/_sluice/reload", function()
    local ws, server, client, stream

    before_each(function()
      ws = workspace()
      server = start(ws)
      client = testing.client(server)
      stream = monitor(client)
    end)

    after_each(function()
      if stream then stream:close() end
      cleanup(server, ws)
    end)

    -- Makes the folder of `path` (a module file under the app, e.g.
    -- "lib/x.lua") after the start, the module returning `value`, then an
    -- app version serving it at "/<module name>"; checks every step
    -- reloads and the value is served. Returns the route.
    local function serve_new_module(path, value)
      local dir, name = path:match("^(.*)/([^/]+)%.lua$")
      sh("mkdir -p " .. quote(ws:path(dir)))
      expect_reload(stream) -- the new folder itself
      ws:save(path, ("return %q\n"):format(value))
      expect_reload(stream)
      local module, route = (dir .. "/" .. name):gsub("/", "."), "/" .. name
      ws:save("app.lua", ws:render("v2", {
        extra = ("local m = require %q\napp:get(%q, function() return m end)"):format(module, route),
      }))
      expect_reload(stream)
      assert.are.equal(value, get(client, route))
      return route
    end

    it("sends event: reload after a good save, and new requests get the new code at once", function()
      assert.are.equal("v1", get(client, "/version"))
      ws:save("app.lua", ws:render("v2"))
      local data = expect_reload(stream)
      assert.are.equal(ws:path("app.lua"), data.path)
      -- The event leaves once every worker swapped: no request after it may
      -- reach the old version.
      assert.are.equal("v2", get(client, "/version"))
      ws:save("app.lua", ws:render("v3"))
      expect_reload(stream)
      assert.are.equal("v3", get(client, "/version"))
    end)

    for _, kind in ipairs { "syntax", "boom", "missing" } do
      it(("reports a %s error with message, file and line; the old version keeps serving; a fix recovers")
        :format(kind), function()
        local broken = BROKEN[kind]
        ws:save("app.lua", ws:render("v2"))
        expect_reload(stream)
        assert.are.equal("v2", get(client, "/version"))

        ws:save("app.lua", ws:render("v3", { broken = broken.code }))
        local err = expect_error(stream)
        assert.are.equal(ws:path("app.lua"), err.file)
        assert.are.equal(ws.break_line, err.line)
        assert.is_string(err.message)
        assert.is_truthy(err.message:find(broken.message, 1, true), "message: " .. tostring(err.message))
        -- The old version answers, and keeps doing so.
        for _ = 1, 5 do assert.are.equal("v2", get(client, "/version")) end
        -- The log says where, too.
        assert.is_truthy(testing.wait_for(function()
          return server:log():find(ws:path("app.lua") .. ":" .. ws.break_line .. ":", 1, true)
        end, 2), "no log line with file:line:\n" .. server:log())

        -- A second broken save: still the old version.
        ws:save("app.lua", ws:render("v4", { broken = BROKEN.syntax.code }))
        expect_error(stream)
        assert.are.equal("v2", get(client, "/version"))

        -- The fix recovers.
        ws:save("app.lua", ws:render("v5"))
        expect_reload(stream)
        assert.are.equal("v5", get(client, "/version"))
        assert.is_nil(server:exit_status(), "server died:\n" .. server:log())
      end)
    end

    it("reports an error raised in a required module at that module's file and line", function()
      ws:save("helper.lua", "local t = {}\n\nerror('helper failed')\nreturn t\n")
      expect_reload(stream) -- nothing requires it yet
      ws:save("app.lua", ws:render("v2", { broken = 'local helper = require "helper"' }))
      local err = expect_error(stream)
      assert.are.equal(ws:path("helper.lua"), err.file)
      assert.are.equal(3, err.line)
      assert.is_truthy(tostring(err.message):find("helper failed", 1, true), "message: " .. tostring(err.message))
      assert.are.equal("v1", get(client, "/version"))
    end)

    it("reports a syntax error in a required module at that module's file and line", function()
      ws:save("helper.lua", "local t = {}\nt.x = = 1\nreturn t\n")
      expect_reload(stream)
      ws:save("app.lua", ws:render("v2", { broken = 'local helper = require "helper"' }))
      local err = expect_error(stream)
      assert.are.equal(ws:path("helper.lua"), err.file, "error event: " .. json.encode(err))
      assert.are.equal(2, err.line, "error event: " .. json.encode(err))
      assert.are.equal("v1", get(client, "/version"))
      -- fixing the module recovers
      ws:save("helper.lua", "local t = {}\nt.x = 1\nreturn t\n")
      expect_reload(stream)
      assert.are.equal("v2", get(client, "/version"))
    end)

    it("reloads when a file in a folder made after the start changes", function()
      serve_new_module("lib/x.lua", "x1")
      -- Only the module in the new folder changes.
      ws:save("lib/x.lua", 'return "x2"\n')
      local data = expect_reload(stream)
      assert.are.equal(ws:path("lib/x.lua"), data.path)
      assert.are.equal("x2", get(client, "/x"))
      -- A plain save there too, polled.
      ws:write("lib/x.lua", 'return "x3"\n')
      assert.is_truthy(testing.wait_for(function() return get(client, "/x") == "x3" end, 2, 0.01),
        "an edit in lib/ was not picked up within 2 s")
    end)

    it("watches folders two levels deep made at once, and errors there name the file", function()
      serve_new_module("lib2/deep/y.lua", "y1")
      ws:save("lib2/deep/y.lua", 'return "y2"\n')
      expect_reload(stream)
      assert.are.equal("y2", get(client, "/y"))
      ws:save("lib2/deep/y.lua", 'local y = "y3"\nerror("deep failure")\nreturn y\n')
      local err = expect_error(stream)
      assert.are.equal(ws:path("lib2/deep/y.lua"), err.file)
      assert.are.equal(2, err.line)
      assert.are.equal("y2", get(client, "/y"))
      ws:save("lib2/deep/y.lua", 'return "y4"\n')
      expect_reload(stream)
      assert.are.equal("y4", get(client, "/y"))
    end)

    it("keeps watching a folder that is removed and made again (a checkout)", function()
      serve_new_module("lib/x.lua", "x1")
      -- What a checkout does to a folder: gone, then back with new files.
      sh(("rm -rf %s && mkdir %s && printf 'return \"x2\"\\n' > %s"):format(
        quote(ws:path("lib")), quote(ws:path("lib")), quote(ws:path("lib/x.lua"))))
      assert.is_truthy(testing.wait_for(function() return get(client, "/x") == "x2" end, 2, 0.01),
        "the checkout was not picked up within 2 s")
      -- Later edits in the new folder must be seen as well.
      ws:write("lib/x.lua", 'return "x3"\n')
      assert.is_truthy(testing.wait_for(function() return get(client, "/x") == "x3" end, 2, 0.01),
        "an edit in the re-made lib/ was not picked up within 2 s")
    end)

    it("serves the live-reload script", function()
      local res = assert(client:get("/_sluice/reload.js"))
      assert.are.equal(200, res.status)
      assert.matches("javascript", res.headers["content-type"])
      assert.is_truthy(res.body:find('EventSource("/_sluice/reload")', 1, true))
    end)
  end)

  it("reports the whole path of a file deep in a long folder name", function()
    local ws = workspace("a-project-folder-with-a-rather-long-name/and-another-level/my-app")
    local server = start(ws)
    finally(function() cleanup(server, ws) end)
    local client = testing.client(server)
    local stream = monitor(client)
    ws:save("app.lua", ws:render("v2", { broken = BROKEN.syntax.code }))
    local err = expect_error(stream)
    stream:close()
    assert.are.equal(ws:path("app.lua"), err.file, "error event: " .. json.encode(err))
    assert.are.equal(ws.break_line, err.line)
  end)

  it("watches the project's lua/ folder", function()
    local ws = workspace()
    local lua_dir = ws.base .. "/lua"
    testing.copy_tree(testing.root .. "/lua", lua_dir)
    testing.write_file(lua_dir .. "/reload_helper.lua", 'return "h1"\n')
    local server = start(ws, { env = { SLUICE_LUA_DIR = lua_dir } })
    finally(function() cleanup(server, ws) end)
    local client = testing.client(server)
    local stream = monitor(client)
    assert.are.equal("h1", get(client, "/helper"))
    local tmp = ws.stage .. "/helper.tmp"
    testing.write_file(tmp, 'return "h2"\n')
    assert(os.rename(tmp, lua_dir .. "/reload_helper.lua"))
    local data = expect_reload(stream)
    assert.are.equal(lua_dir .. "/reload_helper.lua", data.path)
    assert.are.equal("h2", get(client, "/helper"))
    stream:close()
  end)

  it("runs an open stream's handler on in the old VM, then frees that VM when the stream ends", function()
    local ws = workspace()
    local server = start(ws)
    finally(function() cleanup(server, ws) end)
    local client = testing.client(server)
    local mon = monitor(client)
    local vm1 = get(client, "/vm")
    assert.matches("^v1/", vm1)

    local old = assert(client:sse("/tick"))
    local first = assert(old:next_event(3))
    assert.are.equal(vm1 .. " 0", first.data)

    ws:save("app.lua", ws:render("v2"))
    expect_reload(mon)
    assert.are.equal("v2", get(client, "/version"))
    local vm2 = get(client, "/vm")
    assert.matches("^v2/", vm2)

    -- The old stream goes on with the old code, numbering without a gap,
    -- for longer than a reap period (250 ms).
    local t0 = now()
    local n = 0
    while now() - t0 < 0.6 do
      local ev = assert(old:next_event(2))
      n = n + 1
      assert.are.equal(vm1 .. " " .. n, ev.data)
    end
    local freed = ws:freed_vms()
    assert.is_nil(freed[vm1], "v1's VM was freed while its stream was open")

    -- A new stream runs the new code, beside it.
    local new = assert(client:sse("/tick"))
    assert.are.equal(vm2 .. " 0", assert(new:next_event(3)).data)
    assert.matches("^" .. vm1:gsub("%p", "%%%0") .. " %d+$", assert(old:next_event(3)).data)

    -- The old stream ends: its VM goes.
    old:close()
    assert.is_truthy(testing.wait_for(function() return ws:freed_vms()[vm1] end, 2),
      "v1's VM not freed 2 s after its last stream ended")
    assert.is_nil(ws:freed_vms()[vm2])
    local ev = assert(new:next_event(3))
    assert.matches("^" .. vm2:gsub("%p", "%%%0") .. " %d+$", ev.data)
    new:close()
    mon:close()
    assert.are.equal("v2", get(client, "/version"))
  end)

  it("frees the old VM at once when nothing runs in it, and frees VMs that failed to load", function()
    local ws = workspace()
    local server = start(ws)
    finally(function() cleanup(server, ws) end)
    local client = testing.client(server)
    local mon = monitor(client)
    local vm1 = get(client, "/vm")
    -- A subscribed stream opened under v1: its handler has returned, the
    -- hub feeds it, so it holds nothing in the VM.
    local sub = assert(client:sse("/sub/news"))
    ws:save("app.lua", ws:render("v2"))
    expect_reload(mon)
    assert.is_truthy(testing.wait_for(function() return ws:freed_vms()[vm1] end, 2),
      "v1's VM not freed 2 s after the reload")
    -- The subscription outlived its VM.
    assert.are.equal("v2", get(client, "/pub"))
    local ev = assert(sub:next_event(3))
    assert.are.same({ "news", "v2" }, { ev.event, ev.data })
    -- A load that fails after the VM made its sentinel: that VM is closed too.
    ws:save("app.lua", ws:render("v3", { broken = BROKEN.boom.code }))
    expect_error(mon)
    assert.is_truthy(testing.wait_for(function()
      for name in pairs(ws:freed_vms()) do
        if name:match("^v3/") then return true end
      end
    end, 2), "the VM that failed to load was not closed")
    sub:close()
    mon:close()
  end)

  it("stops the old VM's every/after timers and spawned tasks; a failed reload keeps them", function()
    local ws = workspace()
    local server = start(ws, { env = { RELOAD_TIMERS = "1" } })
    finally(function() cleanup(server, ws) end)
    local client = testing.client(server)
    local mon = monitor(client)
    local timers = assert(client:sse("/sub/timers"))
    -- Reads timer events, each { key = "event version", id }, until
    -- done(list) is true (5 s at most).
    local function read_until(done, what)
      local list = {}
      local deadline = now() + 5
      while not done(list) do
        local ev, err = timers:next_event(math.max(0, deadline - now()))
        assert(ev, ("waiting for %s: %s"):format(what, tostring(err)))
        list[#list + 1] = { key = ev.event .. " " .. ev.data, id = id_of(ev) }
      end
      return list
    end
    -- How many of list are `key` and came after id `after`.
    local function count(list, key, after)
      local n = 0
      for _, e in ipairs(list) do
        if e.key == key and e.id > after then n = n + 1 end
      end
      return n
    end
    local function reload_id(want)
      local name, data, ev = outcome(mon)
      assert.are.equal(want, name, json.encode(data))
      return id_of(ev)
    end

    -- Generators keep each old VM alive (not freed at once with its
    -- timers): its timers must stop all the same.
    local holds = {}
    local function hold(tag)
      local stream = assert(client:sse("/tick"))
      assert.matches("^" .. tag .. "/", assert(stream:next_event(3)).data)
      holds[#holds + 1] = stream
    end
    finally(function()
      for _, stream in ipairs(holds) do stream:close() end
    end)

    until_event(timers, function(ev) return ev.event == "every" and ev.data == "v1" end, 3, "every v1")
    until_event(timers, function(ev) return ev.event == "spawn" and ev.data == "v1" end, 3, "spawn v1")
    hold("v1")

    -- A broken save: v1 keeps its timers and tasks.
    ws:save("app.lua", ws:render("v2", { broken = BROKEN.boom.code }))
    local err_id = reload_id("error")
    local list = read_until(function(l)
      return count(l, "every v1", err_id) >= 3 and count(l, "spawn v1", err_id) >= 3
    end, "v1's timer and task ticking on after the failed reload")
    for _, e in ipairs(list) do assert.matches(" v1$", e.key) end

    -- v3, then v4 soon after: from v4's reload event on, only v4 publishes.
    -- v3's after(0.8) would fire before v4's (same delay, earlier start):
    -- reading until v4's has fired gives it every chance to show up.
    ws:save("app.lua", ws:render("v3"))
    reload_id("reload")
    until_event(timers, function(ev) return ev.event == "every" and ev.data == "v3" end, 3, "every v3")
    hold("v3")
    ws:save("app.lua", ws:render("v4"))
    local v4_id = reload_id("reload")
    list = read_until(function(l)
      return count(l, "after v4", v4_id) >= 1 and count(l, "every v4", v4_id) >= 10
        and count(l, "spawn v4", v4_id) >= 10
    end, "v4's after, every and spawn")
    for _, e in ipairs(list) do
      if e.id > v4_id then
        assert.is_truthy(e.key:match(" v4$"), ("%s (id %d) was published after v4's reload event (id %d)")
          :format(e.key, e.id, v4_id))
      end
    end
    assert.are.equal(1, count(list, "after v4", v4_id), "v4's after(0.8) fired more than once")
    -- The old generators ran all along, in their own VMs.
    for i, tag in ipairs { "v1", "v3" } do
      assert.matches("^" .. tag .. "/", assert(holds[i]:next_event(3)).data)
    end
    -- A shutdown with handlers still running in retired VMs is clean.
    local status, took = server:stop(5)
    assert.are.equal(0, status, "exit status; log:\n" .. server:log())
    assert.is_true(took < 3, ("the stop took %.1f s"):format(took))
    for _, stream in ipairs(holds) do
      local _, err = stream:read_all(2)
      assert.is_nil(err, "a stream was not ended by the shutdown")
    end
    timers:close()
    mon:close()
  end)

  it("survives 50 reloads, every 5th broken, under load: no failed request, no dropped stream", function()
    local ws = workspace()
    local server = start(ws, { workers = 2 })
    local mux = new_mux(server.port)
    finally(function()
      mux:close_all()
      cleanup(server, ws)
    end)

    -- Versions: "vK" for K = 1..51; K is good when its reload succeeded or
    -- is expected to.
    local good = { [1] = true }
    local live = 1          -- the newest version whose reload event arrived
    local seen = {}         -- version -> responses it gave
    local responses = 0
    local function version_of(body) return math.tointeger(tonumber(body:match("^v(%d+)$"))) end

    local function on_send(m) m.min = live end
    local function on_response(m, status, body)
      responses = responses + 1
      m.last_at = now()
      if status ~= 200 then return mux:fail("%s: GET %s: status %d: %s", m.name, m.path, status, body) end
      local k = version_of(body)
      if not k or not good[k] then return mux:fail("%s: GET %s: body %q is no good version", m.name, m.path, body) end
      if k < m.min then
        mux:fail("%s: GET %s sent after v%d's reload event was answered by v%d", m.name, m.path, m.min, k)
      end
      if m.last and k < m.last then
        mux:fail("%s: GET %s answered by v%d after v%d on the same connection", m.name, m.path, k, m.last)
      end
      m.last = k
      seen[k] = (seen[k] or 0) + 1
    end

    -- Streams: generators in the VM that took them, and subscribers.
    local ticks, subs = {}, {}
    local function on_tick(m, ev)
      local vm, n = ev.data:match("^(%S+) (%d+)$")
      n = math.tointeger(tonumber(n))
      if ev.event ~= "tick" or not vm then return mux:fail("%s: odd event %s %q", m.name, ev.event, ev.data) end
      m.vm = m.vm or vm
      if vm ~= m.vm then mux:fail("%s: stream moved from %s to %s", m.name, m.vm, vm) end
      if n ~= (m.n or -1) + 1 then mux:fail("%s: tick %d after %s", m.name, n, tostring(m.n)) end
      m.n = n
    end
    local function on_news(m, ev)
      local k = version_of(ev.data)
      if ev.event ~= "news" or not k or not good[k] then
        return mux:fail("%s: odd event %s %q", m.name, ev.event, ev.data)
      end
      local id = math.tointeger(tonumber(ev.id))
      if not id or (m.id and id <= m.id) then mux:fail("%s: id %s after %s", m.name, ev.id, tostring(m.id)) end
      m.id = id
      m.news = k
    end
    local function open_ticks(n)
      for _ = 1, n do
        ticks[#ticks + 1] = mux:stream("tick" .. (#ticks + 1), "/tick", on_tick)
      end
    end
    open_ticks(10)
    for i = 1, 10 do subs[i] = mux:stream("sub" .. i, "/sub/news", on_news) end
    local outcomes = {}
    local mon = mux:stream("monitor", "/_sluice/reload", function(_, ev)
      local data = json.decode(ev.data)
      if not is_probe(ev.event, data) then outcomes[#outcomes + 1] = { event = ev.event, data = data } end
    end)
    assert(mux:wait(function()
      for _, m in ipairs(mux.members) do
        if not m.status and not m.eof then return false end
      end
      return true
    end, 5), "streams did not open")
    assert(mux:wait(function()
      for _, m in ipairs(ticks) do
        if not m.vm then return false end
      end
      return true
    end, 3), "tick streams did not start")

    -- Load: four keep-alive connections, requesting without pause.
    local loaders = {
      mux:requests("fast1", { "/version" }, on_send, on_response),
      mux:requests("fast2", { "/version", "/version", "/version" }, on_send, on_response),
      mux:requests("slow+pub", { "/slow", "/pub" }, on_send, on_response),
      mux:requests("fast3", { "/version" }, on_send, on_response),
    }
    mux:run_for(0.2)

    local t_start = now()
    local kinds = { "syntax", "boom", "missing" }
    local kind_of = {}
    local nbroken = 0
    for r = 1, 50 do
      local k = r + 1
      local broken = r % 5 == 0
      local opts
      if broken then
        nbroken = nbroken + 1
        kind_of[k] = kinds[(nbroken - 1) % #kinds + 1]
        opts = { broken = BROKEN[kind_of[k]].code }
      else
        good[k] = true
      end
      local before = #outcomes
      ws:save("app.lua", ws:render("v" .. k, opts))
      assert(mux:wait(function() return #outcomes > before end, 5), ("no reload outcome for v%d"):format(k))
      local got = outcomes[before + 1]
      if broken then
        assert.are.equal("error", got.event, ("v%d: %s"):format(k, json.encode(got.data)))
        assert.are.equal(ws.break_line, got.data.line)
        assert.are.equal(ws:path("app.lua"), got.data.file)
      else
        assert.are.equal("reload", got.event, ("v%d: %s"):format(k, json.encode(got.data)))
        live = k
        assert(mux:wait(function() return (seen[k] or 0) > 0 end, 2), ("v%d never answered"):format(k))
      end
      if r % 10 == 0 then open_ticks(2) end -- generators in later VMs too
      mux:run_for(0.02)
      assert.are.equal(0, mux.nfail, table.concat(mux.failures, "\n"))
    end
    local t_reloads = now() - t_start

    -- After the last reload every stream still delivers: generators tick
    -- on (each in its own VM), subscribers get news from the last version,
    -- and every request loop still gets answers.
    local t_last = now()
    local ticks_at = {}
    for i, m in ipairs(ticks) do ticks_at[i] = m.n end
    local final = live
    local function stalled()
      local names = {}
      for i, m in ipairs(ticks) do
        if not m.n or m.n < (ticks_at[i] or 0) + 3 or (m.last_at or 0) <= t_last then names[#names + 1] = m.name end
      end
      for _, m in ipairs(subs) do
        if m.news ~= final or (m.last_at or 0) <= t_last then names[#names + 1] = m.name end
      end
      for _, m in ipairs(loaders) do
        if (m.last_at or 0) <= t_last then names[#names + 1] = m.name end
      end
      return names
    end
    mux:wait(function() return #stalled() == 0 end, 3)
    assert.are.equal(0, mux.nfail, table.concat(mux.failures, "\n"))
    assert.are.equal("", table.concat(stalled(), " "), "stopped delivering after the last reload")
    for _, m in ipairs(mux.members) do
      assert.is_nil(m.eof, m.name .. " was dropped: " .. tostring(m.eof))
    end
    assert.is_nil(mon.eof)
    assert.matches("^v1/", ticks[1].vm) -- the first streams still run v1's code

    local versions = 0
    for _ in pairs(seen) do versions = versions + 1 end
    print(("\n  50 reloads (%d broken) in %.2f s under load: %d responses from %d versions, 0 failed; "
      .. "%d streams kept (%d generators, %d subscribers)"):format(
      nbroken, t_reloads, responses, versions, #ticks + #subs + 1, #ticks, #subs))

    -- Every VM but the last version's is freed once the generators end.
    local vms = {}
    for _, m in ipairs(ticks) do
      if not m.vm:match("^v" .. final .. "/") then vms[m.vm] = true end
      mux:close(m)
    end
    assert.is_truthy(testing.wait_for(function()
      local freed = ws:freed_vms()
      for vm in pairs(vms) do
        if not freed[vm] then return false end
      end
      return true
    end, 3), "VMs of ended generators not freed")
    local freed = ws:freed_vms()
    local per = {}
    for name in pairs(freed) do
      local k = version_of(name:match("^(v%d+)/"))
      per[k] = (per[k] or 0) + 1
    end
    for k = 1, 51 do
      -- Good versions before the last: both workers' VMs freed; the last
      -- version's live on; a syntax error never ran the chunk, so never
      -- made a sentinel; the other broken loads made one per worker, and
      -- closed it at once.
      local want = 2
      if k == final or kind_of[k] == "syntax" then want = nil end
      if k == 1 then
        -- the startup probes reloaded v1 too: two VMs per load
        assert.is_true(per[1] >= 2 and per[1] % 2 == 0, ("v1: %s VMs freed"):format(tostring(per[1])))
      else
        assert.are.equal(want, per[k], ("v%d (%s): VMs freed"):format(k, kind_of[k] or "good"))
      end
    end
    assert.is_nil(server:exit_status(), "server died:\n" .. server:log())
  end)

  it("keeps memory flat over 1000 reloads (SIGHUP), freeing every old VM", function()
    local ws = workspace()
    local server = start(ws)
    finally(function() cleanup(server, ws) end)
    local client = testing.client(server)
    local mon = monitor(client)
    -- Under the sanitizers (make test-asan) freed memory waits in ASan's
    -- quarantine until it is full: measure from after it filled.
    local sanitized = os.getenv("SLUICE_SANITIZED") == "1"
    local N, BASE = 1000, sanitized and 200 or 20
    local _, freed0 = ws:freed_vms()
    local skipped0 = skipped_probes
    local t0 = now()
    local base_rss
    local samples = {}
    for i = 1, N do
      server:signal("HUP")
      local name, data = outcome(mon, 10)
      assert.are.equal("reload", name, ("reload %d: %s"):format(i, json.encode(data)))
      if i == BASE then base_rss = server:rss_kb() end
      if i % 100 == 0 or i == BASE then samples[#samples + 1] = ("%d:%d"):format(i, server:rss_kb()) end
      assert.is_true(now() - t0 < 120, ("only %d reloads in 120 s"):format(i))
    end
    local elapsed = now() - t0
    assert.are.equal("v1", get(client, "/version"))
    local end_rss = server:rss_kb()
    local growth = end_rss - base_rss
    print(("\n  %d reloads in %.1f s (%.2f ms each); VmRSS KiB after reload %s; growth after reload %d: %d KiB")
      :format(N, elapsed, elapsed * 1000 / N, table.concat(samples, " "), BASE, growth))
    -- An app's VM holds about 100 KiB: leaking one per reload would add
    -- about 100 MiB here.
    assert.is_true(growth < 8 * 1024, ("VmRSS grew %d KiB over %d reloads"):format(growth, N - BASE))
    -- Every replaced VM was closed: one per reload.
    local reloads = N + skipped_probes - skipped0
    assert.is_truthy(testing.wait_for(function()
      local _, n = ws:freed_vms()
      return n - freed0 == reloads
    end, 2), ("%d VMs closed over %d reloads"):format(select(2, ws:freed_vms()) - freed0, reloads))
    mon:close()
  end)
end)

describe("SIGHUP without --reload", function()
  it("reloads the app; /_sluice/reload is 404 and reload.js is a harmless script", function()
    local ws = workspace()
    local server = start(ws, { reload = false })
    finally(function() cleanup(server, ws) end)
    local client = testing.client(server)
    assert.are.equal("v1", get(client, "/version"))

    local res = assert(client:get("/_sluice/reload", { headers = { Accept = "text/event-stream" } }))
    assert.are.equal(404, res.status)
    local js = assert(client:get("/_sluice/reload.js"))
    assert.are.equal(200, js.status)
    assert.matches("javascript", js.headers["content-type"])
    -- Only a comment: nothing that runs, no EventSource.
    local code = js.body:gsub("/%*.-%*/", ""):gsub("//[^\n]*", "")
    assert.are.equal("", (code:gsub("%s", "")), "reload.js without --reload: " .. js.body)

    -- A save alone does nothing...
    ws:save("app.lua", ws:render("v2"))
    socket.sleep(0.3)
    assert.are.equal("v1", get(client, "/version"))
    -- ...SIGHUP loads it.
    server:signal("HUP")
    assert.is_truthy(testing.wait_for(function() return get(client, "/version") == "v2" end, 2, 0.01),
      "v2 not answering 2 s after SIGHUP")

    -- A broken version on SIGHUP: logged with file:line, v2 keeps serving.
    ws:save("app.lua", ws:render("v3", { broken = BROKEN.syntax.code }))
    server:signal("HUP")
    local where = ws:path("app.lua") .. ":" .. ws.break_line .. ":"
    assert.is_truthy(testing.wait_for(function() return server:log():find(where, 1, true) end, 2),
      "no log line naming " .. where .. ":\n" .. server:log())
    assert.are.equal("v2", get(client, "/version"))

    -- Fixed, and SIGHUP again.
    ws:save("app.lua", ws:render("v4"))
    server:signal("HUP")
    assert.is_truthy(testing.wait_for(function() return get(client, "/version") == "v4" end, 2, 0.01),
      "v4 not answering 2 s after SIGHUP")
    assert.is_nil(server:exit_status(), "server died:\n" .. server:log())
    assert.are.equal(0, (server:stop()))
  end)
end)
