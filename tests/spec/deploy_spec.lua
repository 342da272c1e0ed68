-- docs/deployment.md, run: its nginx site (Debian's nginx, as this user,
-- under a temporary prefix, on test ports, plain HTTP) and its Caddyfile
-- (when caddy is installed) in front of apps/chat, and its systemd unit
-- (systemd-analyze verify when it works here, and sluice started, reloaded
-- and stopped the way the unit says).
local testing = require "sluice.testing"
local markdown = require "markdown"
local redis = require "redis"
local socket = require "socket"

local json = testing.json
local root = testing.root
local shell_quote, read_file = testing.shell_quote, testing.read_file

local DOC = root .. "/docs/deployment.md"
local NGINX = "/usr/sbin/nginx"
local CHAT = root .. "/apps/chat"
local CLOCK = root .. "/apps/clock"

--- `text` with every match of `pattern` replaced, which must match exactly
--- `n` times: a changed document fails here instead of testing another thing.
local function rewrite(text, pattern, repl, n)
  local out, count = text:gsub(pattern, repl)
  assert(count == n, ("expected %d of %q in the document's block, found %d"):format(n, pattern, count))
  return out
end

--- Seconds in an nginx or systemd time value ("120s", "2m", "1h", "10").
local function seconds(value)
  local n, unit = value:match("^(%d+)(%a*)$")
  local scale = ({ [""] = 1, s = 1, m = 60, h = 3600 })[unit]
  return assert(n and scale, "not a time: " .. tostring(value)) and tonumber(n) * scale
end

-- The app option `heartbeat` of an app.lua (the default, 15, when unset).
local function heartbeat_of(app_dir)
  local src = assert(read_file(app_dir .. "/app.lua"))
  return tonumber(src:match("heartbeat%s*=%s*([%d.]+)")) or 15
end

---------------------------------------------------------------------- nginx

-- The http block around the document's site: paths in the prefix, and gzip
-- on for event streams, as a site-wide config may have it (so the site's
-- own `gzip off` is what keeps streams uncompressed).
local NGINX_CONF = [[
pid %s/pid;
error_log %s/error.log info;
worker_processes 1;
events { worker_connections 256; }
http {
    access_log %s/access.log;
    client_body_temp_path %s/body;
    proxy_temp_path %s/proxy;
    fastcgi_temp_path %s/fastcgi;
    uwsgi_temp_path %s/uwsgi;
    scgi_temp_path %s/scgi;
    gzip on;
    gzip_min_length 1;
    gzip_types text/event-stream application/json;
    include %s/site.conf;
}
]]

local function gone(pid)
  local stat = read_file("/proc/" .. pid .. "/stat")
  return not stat or stat:match("^%d+ %b() (%a)") == "Z"
end

--- A proxy daemon (nginx or Caddy) started for a test, with its files in
--- a temporary folder.
---@class Proxy
---@field dir string
---@field port integer  where it serves the site
---@field pid? integer
local Proxy = {}
Proxy.__index = Proxy

-- Daemons a failing spec left running die with the test process.
local started = {}
Proxy._reaper = setmetatable({}, { __gc = function()
  for _, p in ipairs(started) do p:stop() end
end })

--- Stops the daemon (SIGTERM, then SIGKILL) and removes its folder. Safe twice.
function Proxy:stop()
  if not self.pid then return end
  os.execute(("kill -TERM %d 2>/dev/null"):format(self.pid))
  if not testing.wait_for(function() return gone(self.pid) end, 5) then
    os.execute(("kill -KILL %d 2>/dev/null"):format(self.pid))
  end
  self.pid = nil
  testing.remove_tempdir(self.dir)
end

--- What the daemon said on starting, and nginx's error log.
function Proxy:log() return read_file(self.dir .. "/error.log") or "" end

--- Starts a daemon: `prepare(proxy)` writes its configuration (ports
--- chosen) and returns the command that starts it in the background and
--- exits, writing the daemon's pid to `dir/pid`. Tries again when a port
--- was taken meanwhile.
---@param what string
---@param prepare fun(p: Proxy): string
---@return Proxy
local function start_proxy(what, prepare)
  for _ = 1, 3 do
    local dir = testing.tempdir()
    -- As root, nginx's workers run as nobody: they must reach the folder.
    os.execute("chmod 755 " .. shell_quote(dir))
    local p = setmetatable({ dir = dir, port = testing.free_port() }, Proxy)
    local cmd = prepare(p)
    local ok = os.execute(("%s >>%s 2>&1"):format(cmd, shell_quote(dir .. "/error.log")))
    local pid = ok and testing.wait_for(function() return tonumber(read_file(dir .. "/pid") or "") end, 5)
    if pid then
      p.pid = math.tointeger(pid)
      started[#started + 1] = p
      return p
    end
    local log = p:log()
    testing.remove_tempdir(dir)
    if not log:find("in use", 1, true) then error(what .. " did not start:\n" .. log, 2) end
  end
  error(what .. " did not start: no free port", 2)
end

--- The document's nginx site for test use: its upstream is 127.0.0.1:`upstream_port`,
--- the TLS server listens on plain HTTP at 127.0.0.1:`port` and the
--- redirecting one at 127.0.0.1:`http_port`; nothing else changes.
local function test_site(site, upstream_port, port, http_port)
  site = rewrite(site, "server 127%.0%.0%.1:8080;", ("server 127.0.0.1:%d;"):format(upstream_port), 1)
  site = rewrite(site, "listen 443 ssl http2;", ("listen 127.0.0.1:%d;"):format(port), 1)
  site = rewrite(site, "listen 80;", ("listen 127.0.0.1:%d;"):format(http_port), 1)
  site = rewrite(site, "\n[ \t]*listen %[::%]:%d+[^\n]*", "", 2)
  site = rewrite(site, "\n[ \t]*ssl_certificate[^\n]*", "", 2)
  return site
end

--- Debian's nginx with the document's site in front of `upstream_port`.
---@param site string the nginx block of docs/deployment.md
---@param upstream_port integer
---@return Proxy
local function start_nginx(site, upstream_port)
  return start_proxy("nginx", function(p)
    p.http_port = testing.free_port()
    testing.write_file(p.dir .. "/site.conf", test_site(site, upstream_port, p.port, p.http_port))
    testing.write_file(p.dir .. "/nginx.conf", (NGINX_CONF:gsub("%%s", p.dir)))
    return ("%s -e %s -p %s -c %s"):format(NGINX, shell_quote(p.dir .. "/error.log"),
                                          shell_quote(p.dir .. "/"), shell_quote(p.dir .. "/nginx.conf"))
  end)
end

--- Caddy with the document's Caddyfile in front of `upstream_port`: the
--- site on plain HTTP at 127.0.0.1:`port`, and no admin endpoint.
---@param caddyfile string
---@param upstream_port integer
---@return Proxy
local function start_caddy(caddyfile, upstream_port)
  return start_proxy("caddy", function(p)
    local site = rewrite(caddyfile, "events%.example%.com {", ("{\n\tadmin off\n}\nhttp://127.0.0.1:%d {"):format(p.port), 1)
    site = rewrite(site, "reverse_proxy 127%.0%.0%.1:8080 ", ("reverse_proxy 127.0.0.1:%d "):format(upstream_port), 1)
    testing.write_file(p.dir .. "/Caddyfile", site)
    return ("env HOME=%s XDG_DATA_HOME=%s XDG_CONFIG_HOME=%s caddy start --adapter caddyfile --config %s --pidfile %s"):format(
      shell_quote(p.dir), shell_quote(p.dir .. "/data"), shell_quote(p.dir .. "/config"),
      shell_quote(p.dir .. "/Caddyfile"), shell_quote(p.dir .. "/pid"))
  end)
end

--- Stops or closes each of its arguments that is there (proxies, servers,
--- sockets), in order: for teardowns.
local function shut(...)
  for i = 1, select("#", ...) do
    local x = select(i, ...)
    if x and x.stop then x:stop() elseif x then x:close() end
  end
end

--- A listener of our own on a free port standing in for sluice, and the
--- proxy `start(port)` puts in front of it.
local function proxy_before_listener(start)
  local listener = assert(socket.bind("127.0.0.1", 0))
  return listener, start(select(2, listener:getsockname()))
end

--- Sends a request through the proxy at `port` to `listener` (a bound
--- LuaSocket server standing in for sluice), answers it with a small
--- event stream, and returns the request line, the headers the proxy sent
--- (lower-case names) and what the client got.
local function upstream_view(port, listener, headers)
  local conn = assert(testing.connect(port))
  assert(conn:send(testing.request_bytes("GET", "/events", { headers = headers })))
  listener:settimeout(5)
  local up = assert(listener:accept())
  up:settimeout(5)
  local request_line = assert(up:receive("*l"))
  local seen = {}
  while true do
    local line = assert(up:receive("*l"))
    if line == "" then break end
    local name, value = line:match("^([^:]+):%s*(.*)$")
    seen[name:lower()] = value
  end
  up:send("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\ndata: hi\n\n")
  up:close()
  local res = assert(conn:receive_response())
  conn:close()
  return request_line, seen, res
end

-- Posts a chat message through a proxy; returns its id.
local function publish_through(client, text)
  local res = assert(client:post("/messages", { user = "ops", text = text }))
  assert.are.equal(202, res.status, res.body)
  return res:json().id
end

--- Opens apps/chat's stream through a proxy (asking for gzip), and checks
--- that five events published 0.2 s apart each arrive within a second,
--- uncompressed, and that the stream stays open. Returns the stream.
local function live_stream(client, what)
  local stream = assert(client:sse("/events", { headers = { ["Accept-Encoding"] = "gzip" } }))
  assert.are.equal(200, stream.status)
  assert.matches("^text/event%-stream", stream.headers["content-type"])
  assert.is_nil(stream.headers["content-encoding"], "the stream was compressed")
  local worst = 0
  for i = 1, 5 do
    testing.sleep(0.2)
    local t0 = testing.now()
    local id = publish_through(client, "event " .. i)
    local ev = assert(stream:next_event(1), "event " .. i .. " did not arrive within 1 s")
    worst = math.max(worst, testing.now() - t0)
    assert.are.same({ "message", id, "event " .. i }, { ev.event, ev.id, json.decode(ev.data).text })
  end
  print(("\n  publish -> event through %s: at most %.1f ms"):format(what, worst * 1000))
  assert.are.equal(2000, stream.retry) -- the app's retry: line came through too
  assert.are.equal("timeout", select(2, stream:next_event(0.3)), "the stream ended")
  return stream
end

-- /_sluice/metrics, and spellings of it that reach the same route.
local METRICS_PATHS = { "/_sluice/metrics", "/_sluice/metrics?format=text", "//_sluice/metrics", "/_sluice/%6Detrics" }

--- Checks that /_sluice/metrics is refused by the proxy (403, and sluice
--- never saw the request) while /_sluice/health goes through.
local function metrics_refused(client, server)
  for _, path in ipairs(METRICS_PATHS) do
    assert.are.equal(403, assert(client:get(path)).status, path)
  end
  assert.is_nil(server:log():find("_sluice/[%%m]"), "a metrics request reached sluice")
  local health = assert(client:get("/_sluice/health"))
  assert.are.equal(200, health.status)
  assert.are.equal("ok", health:json().status)
  assert.are.equal(200, assert(testing.client(server):get("/_sluice/metrics")).status) -- on the host itself
end

-- Whether an answer is one of nginx's own error pages.
local function from_nginx(res) return res.body:find("<center>nginx", 1, true) ~= nil end

describe("docs/deployment.md: the nginx site", function()
  local doc = markdown.load(DOC)
  local site = doc:fence_after("## Behind nginx", "nginx").text

  it("has every directive an event stream needs", function()
    for _, directive in ipairs {
      "listen 443 ssl http2;", "proxy_http_version 1.1;", 'proxy_set_header Connection "";',
      "proxy_buffering off;", "proxy_cache off;", "gzip off;",
      "proxy_set_header X-Real-IP $remote_addr;",
      "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
      "location = /_sluice/metrics", "keepalive_timeout",
    } do
      assert.is_truthy(site:find(directive, 1, true), "the site lacks " .. directive)
    end
    local timeout = seconds(site:match("proxy_read_timeout (%w+);"))
    for _, app in ipairs { CHAT, CLOCK } do
      assert.is_true(timeout > 2 * heartbeat_of(app), "proxy_read_timeout is not well above the heartbeat")
    end
    -- The upstream's keep-alive ends before sluice's --idle-timeout (60 s).
    assert.is_true(seconds(site:match("keepalive_timeout (%w+);")) < 60)
  end)

  describe("in front of apps/chat", function()
    local server, nginx, proxied

    setup(function()
      server = testing.start(CHAT)
      nginx = start_nginx(site, server.port)
      proxied = testing.client(nginx.port)
    end)
    teardown(function() shut(nginx, server) end)

    local function publish(text) return publish_through(proxied, text) end

    it("delivers each event through nginx as it is published, on a stream that stays open", function()
      local stream = live_stream(proxied, "nginx")
      assert.is_nil(stream.headers["x-accel-buffering"], "nginx passed X-Accel-Buffering on")
      stream:close()
      -- sluice saw nginx, not the client: the address is in X-Real-IP.
      assert.is_truthy(testing.wait_for(function()
        return server:log():find('access %[w1%] 127%.0%.0%.1 "GET /events" 200 %d+ [%d.]+ms stream\n')
      end, 3), server:log())
    end)

    it("passes Last-Event-ID, so a stream reconnecting through nginx resumes", function()
      local ids = { publish("a"), publish("b"), publish("c") }
      local stream = assert(proxied:sse("/events", { last_event_id = ids[1] }))
      for i = 2, 3 do
        assert.are.equal(ids[i], assert(stream:next_event(2)).id)
      end
      assert.are.equal("timeout", select(2, stream:next_event(0.3)))
      stream:close()
    end)

    it("refuses /_sluice/metrics at the proxy, and lets /_sluice/health through", function()
      metrics_refused(proxied, server)
      for _, path in ipairs(METRICS_PATHS) do
        assert.is_true(from_nginx(assert(proxied:get(path))), path .. " was not refused by nginx")
      end
    end)

    it("redirects plain HTTP to HTTPS", function()
      local res = assert(testing.client(nginx.http_port):get("/events?x=1", { headers = { Host = "events.example.com" } }))
      assert.are.equal(301, res.status)
      assert.are.equal("https://events.example.com/events?x=1", res.headers.location)
    end)

    it("while sluice is down, tells a reconnecting EventSource to retry instead of ending it", function()
      local before = publish("before the restart")
      local port = server.port
      server:stop()
      local conn = assert(proxied:connect())
      assert(conn:send(testing.request_bytes("GET", "/events", { headers = {
        Accept = "text/event-stream", ["Last-Event-ID"] = before } })))
      local res = assert(conn:receive_response())
      conn:close()
      assert.are.equal(200, res.status)
      assert.matches("^text/event%-stream", res.headers["content-type"])
      assert.are.equal("retry: 2000\n\n", res.body)
      -- Other requests learn the truth.
      local post = assert(proxied:post("/messages", { user = "ops", text = "lost" }))
      assert.are.equal(502, post.status)
      assert.are.equal(502, assert(proxied:get("/index.html", { headers = { Accept = "text/html" } })).status)

      server = testing.start(CHAT, { port = port })
      local after = publish("after the restart")
      local stream = assert(proxied:sse("/events", { last_event_id = before }))
      assert.are.equal(200, stream.status)
      assert.are.equal(after, assert(stream:next_event(2)).id)
      stream:close()
    end)
  end)

  describe("its request to sluice", function()
    local listener, nginx

    setup(function()
      listener, nginx = proxy_before_listener(function(port) return start_nginx(site, port) end)
    end)
    teardown(function() shut(nginx, listener) end)

    it("is HTTP/1.1 with the client's address, the Host and Last-Event-ID", function()
      local request_line, headers, res = upstream_view(nginx.port, listener, {
        Host = "events.example.com", Accept = "text/event-stream", ["Last-Event-ID"] = "42",
        ["X-Forwarded-For"] = "203.0.113.7" })
      assert.are.equal("GET /events HTTP/1.1", request_line)
      assert.are.equal("events.example.com", headers.host)
      assert.are.equal("127.0.0.1", headers["x-real-ip"])
      assert.are.equal("203.0.113.7, 127.0.0.1", headers["x-forwarded-for"])
      assert.are.equal("http", headers["x-forwarded-proto"])
      assert.are.equal("42", headers["last-event-id"])
      assert.is_nil(headers.connection, "nginx sent Connection: " .. tostring(headers.connection))
      assert.are.equal("data: hi\n\n", res.body)
    end)
  end)
end)

--------------------------------------------------------------------- Caddy

describe("docs/deployment.md: the Caddyfile", function()
  local doc = markdown.load(DOC)
  local caddyfile = doc:fence_after("## Behind Caddy", "caddyfile").text
  local have_caddy = os.execute("command -v caddy >/dev/null 2>&1")
  -- true when the test cannot run here (and says so).
  local function no_caddy()
    if not have_caddy then pending("caddy is not installed (Debian's caddy package)") end
    return not have_caddy
  end

  describe("in front of apps/chat", function()
    local server, caddy, proxied

    setup(function()
      if not have_caddy then return end
      server = testing.start(CHAT)
      caddy = start_caddy(caddyfile, server.port)
      proxied = testing.client(caddy.port)
    end)
    teardown(function() shut(caddy, server) end)

    it("delivers each event through Caddy as it is published, on a stream that stays open", function()
      if no_caddy() then return end
      live_stream(proxied, "Caddy"):close()
    end)

    it("refuses /_sluice/metrics at the proxy, and lets /_sluice/health through", function()
      if no_caddy() then return end
      metrics_refused(proxied, server)
    end)

    it("holds a request that finds sluice restarting until it is back", function()
      if no_caddy() then return end
      local before = publish_through(proxied, "before the restart")
      local port = server.port
      server:stop()
      local conn = assert(proxied:connect())
      assert(conn:send(testing.request_bytes("GET", "/events", { headers = {
        Accept = "text/event-stream", ["Last-Event-ID"] = before } })))
      testing.sleep(0.5)
      server = testing.start(CHAT, { port = port })
      local after = publish_through(proxied, "after the restart")
      local head = assert(conn:receive_until("\r\n\r\n", 5))
      assert.matches("^HTTP/1.1 200", head)
      assert.matches("content%-type: text/event%-stream", head:lower())
      assert(conn:receive_until("id: " .. after .. "\n", 5)) -- replayed after Last-Event-ID
      conn:close()
    end)
  end)

  describe("its request to sluice", function()
    local listener, caddy

    setup(function()
      if not have_caddy then return end
      listener, caddy = proxy_before_listener(function(port) return start_caddy(caddyfile, port) end)
    end)
    teardown(function() shut(caddy, listener) end)

    it("is HTTP/1.1 with the client's address in X-Real-IP and X-Forwarded-For, and Last-Event-ID", function()
      if no_caddy() then return end
      local request_line, headers, res = upstream_view(caddy.port, listener, {
        Accept = "text/event-stream", ["Last-Event-ID"] = "42", ["X-Forwarded-For"] = "203.0.113.7" })
      assert.are.equal("GET /events HTTP/1.1", request_line)
      assert.are.equal("127.0.0.1", headers["x-real-ip"])
      assert.are.equal("127.0.0.1", headers["x-forwarded-for"]) -- a client's own claim is dropped
      assert.are.equal("http", headers["x-forwarded-proto"])
      assert.are.equal("42", headers["last-event-id"])
      assert.are.equal("data: hi\n\n", res.body)
    end)
  end)
end)

-------------------------------------------------------------------- systemd

--- The unit's settings: { Key = { value, ... } } (keys may repeat).
local function unit_settings(text)
  local s = {}
  for key, value in text:gmatch("\n(%u%w+)=([^\n]*)") do
    s[key] = s[key] or {}
    table.insert(s[key], value)
  end
  return s
end

--- Runs `systemd-analyze verify` on a unit text; returns whether it passed
--- and what it said.
local function verify(dir, text)
  local path = dir .. "/sluice.service"
  testing.write_file(path, text)
  local p = assert(io.popen(("systemd-analyze verify %s 2>&1"):format(shell_quote(path))))
  local out = p:read("a")
  return p:close() == true, out
end

describe("docs/deployment.md: the systemd unit", function()
  local doc = markdown.load(DOC)
  local unit = doc:fence_after("## A systemd service", "ini").text
  local p = assert(io.popen("realpath " .. shell_quote(os.getenv("SLUICE_BIN") or "build/sluice")))
  local bin = p:read("l")
  p:close()
  -- The installed path becomes the binary under test; nothing else changes.
  local test_unit = rewrite(unit, "ExecStart=/usr/local/bin/sluice ", "ExecStart=" .. bin .. " ", 1)

  it("passes systemd-analyze verify", function()
    if not os.execute("command -v systemd-analyze >/dev/null 2>&1") then
      pending("systemd-analyze is not installed")
      return
    end
    local dir = testing.tempdir()
    -- Only a tool that catches a bad unit here can vouch for a good one.
    local _, said = verify(dir, (test_unit:gsub("Restart=on%-failure", "Restart=sometimes")))
    if not said:find("sometimes", 1, true) then
      pending("systemd-analyze verify does not work here: " .. said)
      return
    end
    local ok, out = verify(dir, test_unit)
    assert.is_true(ok, out)
    assert.are.equal("", out)
  end)

  it("starts sluice as ExecStart says, reloads on ExecReload and stops on KillSignal in TimeoutStopSec", function()
    local s = unit_settings(unit)
    assert.are.same({ "simple" }, s.Type)
    assert.are.same({ "on-failure" }, s.Restart)
    assert.is_true(tonumber(s.LimitNOFILE[1]) >= 65536)
    local stop_within = seconds(s.TimeoutStopSec[1])
    assert.is_true(stop_within > 2)

    -- ExecStart's options, less --host and --port (the test's own), and
    -- apps/clock for the app folder.
    local words = {}
    for w in s.ExecStart[1]:gmatch("%S+") do words[#words + 1] = w end
    assert.are.equal("/usr/local/bin/sluice", table.remove(words, 1))
    table.remove(words) -- the app folder
    local args, i = {}, 1
    while words[i] do
      if words[i] == "--host" or words[i] == "--port" then i = i + 2 else
        args[#args + 1] = words[i]
        i = i + 1
      end
    end
    -- Environment=, with the test's own Redis in SLUICE_REDIS.
    local r = redis.start()
    local env = {}
    for _, e in ipairs(s.Environment) do
      local k, v = e:match("^([%w_]+)=(.*)$")
      env[k] = k == "SLUICE_REDIS" and rewrite(v, ":6379", ":" .. r.port, 1) or v
    end
    assert.is_truthy(env.SLUICE_REDIS, "the unit sets no SLUICE_REDIS")

    local server = testing.start(CLOCK, { args = args, env = env })
    local client = testing.client(server)
    local health = testing.wait_for(function()
      local h = assert(client:get("/_sluice/health")):json()
      return h.redis == "up" and h
    end, 5)
    assert(health, "Redis is not up for sluice:\n" .. server:log())
    assert.is_true(health.workers >= 1)
    local function reloads()
      local m = assert(client:get("/_sluice/metrics")).body
      return tonumber(m:match('\nsluice_reloads_total{result="ok"} (%d+)'))
    end
    local before = reloads()
    local stream = assert(client:sse("/clock"))
    assert.are.equal("tick", assert(stream:next_event(3)).event)

    local reload = s.ExecReload[1]:match("^/bin/kill %-(%u+) %$MAINPID$")
    assert(reload, "ExecReload: " .. s.ExecReload[1])
    server:signal(reload)
    assert.is_truthy(testing.wait_for(function() return reloads() > before end, 5), server:log())
    assert.is_truthy(stream:next_event(3), "the stream did not survive the reload")

    assert.are.same({ "SIGTERM" }, s.KillSignal)
    local status, elapsed = server:stop(stop_within) -- SIGTERM
    assert.are.equal(0, status)
    assert.is_true(elapsed < 2.5, ("stopping took %.2f s"):format(elapsed))
    local _, err = stream:read_all(3)
    assert.is_nil(err, "the stream was not ended")
    stream:close()
    r:stop()
  end)
end)
