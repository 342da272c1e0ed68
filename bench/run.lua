--- The benchmark suite: sluice and its peers side by side, one scenario at a
--- time, on this machine, with the same load client.
---
---     lua5.4 bench/run.lua [--quick] [--only a,b] [--out DIR]    (or: make bench)
---
--- Servers run pinned to CPU 0, the load client (build/sluice-loadgen, wrk)
--- to CPU 1, so a server's cost is read from the kernel's own accounting of
--- its process (utime+stime, PSS) and holds on a noisy shared machine.
--- Scenarios: fanout, idle, latency, held, route, proxy, workers, nodes, reload.
--- Writes DIR/latest.json, DIR/latest.md (the tables README quotes) and,
--- when gnuplot is installed, DIR/latest.png; DIR defaults to bench/results.
--- Peers that are not installed are skipped and say so (`make bench`
--- installs them: nginx with nchan and Lua, Node, wrk, gnuplot; `make deps`
--- installs redis-server, which the nodes scenario needs).
local root = os.getenv("SLUICE_ROOT") or (((arg and arg[0] or ""):match("^(.*)/bench/[^/]*$")) or ".")
package.path = ("%s/bench/lib/?.lua;%s/lua/?.lua;%s/lua/?/init.lua;%s/tests/lib/?.lua;")
  :format(root, root, root, root) .. package.path

local proc = require "proc"
local peers = require "peers"
local loadgen = require "loadgen"
local report = require "report"
local json = require "dkjson"
local testing = require "sluice.testing"

-- ------------------------------------------------------------------ options

local USAGE = [[
usage: lua5.4 bench/run.lua [--quick] [--only SCENARIO,...] [--out DIR]
scenarios: fanout idle latency held route proxy workers nodes reload
]]

local opts = { quick = os.getenv("QUICK") == "1", out = root .. "/bench/results" }
do
  local i = 1
  while arg[i] do
    local a = arg[i]
    if a == "--quick" then opts.quick = true
    elseif a == "--only" and arg[i + 1] then opts.only = arg[i + 1]; i = i + 1
    elseif a == "--out" and arg[i + 1] then opts.out = arg[i + 1]; i = i + 1
    else io.stderr:write(USAGE); os.exit(2) end
    i = i + 1
  end
end

local Q = opts.quick
math.randomseed(os.time(), tonumber((tostring({}):match("0x(%x+)")), 16) or 0)
-- Sizes: the issue's scenarios, and smaller ones for a two-minute run.
local SIZE = {
  fanout  = { subs = 1000, pubs = 4, events = Q and 500 or 2000, repeats = Q and 1 or 3 },
  idle    = { subs = Q and 2000 or 10000 },
  latency = { subs = 100, rate = 200, events = Q and 400 or 2000 },
  held    = { subs = Q and 5000 or 19000 },
  route   = { seconds = Q and 2 or 5, connections = 50, repeats = Q and 1 or 3 },
  proxy   = { samples = Q and 100 or 300, tokens = Q and 50000 or 200000, streams = Q and 1 or 3 },
  workers = { subs = 1000, pubs = 8, events = Q and 500 or 2000 },
  nodes   = { subs = 1000, pubs = 4, events = Q and 500 or 2000, repeats = Q and 1 or 3,
              latency = { subs = 100, pubs = 1, rate = 200, events = Q and 400 or 2000 } },
  reload  = { saves = Q and 10 or 50 },
}

local SERVER_CPU, CLIENT_CPU = "0", "1"
local env = {
  root = root,
  bin = os.getenv("SLUICE_BIN") or (root .. "/build/sluice"),
  cpu = SERVER_CPU,
  tmp = (proc.run("mktemp -d /tmp/sluice-bench.XXXXXX")),
}
local LOADGEN = loadgen.bin(env.bin)

local function say(fmt, ...) io.stderr:write(fmt:format(...) .. "\n") end

local function median(list)
  local s = table.move(list, 1, #list, 1, {})
  table.sort(s)
  return s[(#s + 1) // 2]
end

local function percentile(list, p)
  local s = table.move(list, 1, #list, 1, {})
  table.sort(s)
  return s[math.max(1, math.ceil(#s * p))]
end

-- Starts a server with `start(port)` and runs `fn(server, port)`; the
-- server is stopped whatever happens. Returns fn's result, or nil and why
-- the peer could not run.
local function with_server(what, start, fn)
  local port = proc.free_port()
  local started, server, why = pcall(start, port)
  if not started then server, why = nil, server end
  if not server then
    say("  %-12s skipped: %s", what, tostring(why):match("^[^\n]*"))
    return nil, why
  end
  local ok, result = pcall(fn, server, port)
  server:stop()
  if not ok then
    say("  %-12s failed: %s", what, tostring(result))
    return nil, tostring(result)
  end
  return result
end

-- Runs `fn(server, port, name)` against each peer of `list` in turn, each
-- on a fresh server; returns { [name] = what fn returned }.
local function each_peer(list, fn)
  local result = {}
  for _, peer in ipairs(list) do
    result[peer.name] = with_server(peer.name, peer.start, function(server, port)
      return fn(server, port, peer.name)
    end)
  end
  return result
end

-- Starts every peer of `list`, each on a port of its own; returns the
-- ones that started as { name, server, port }, saying why of the others.
local function start_all(list)
  local running = {}
  for _, peer in ipairs(list) do
    local port = proc.free_port()
    local started, server, why = pcall(peer.start, port)
    if not started then server, why = nil, server end
    if server then
      running[#running + 1] = { name = peer.name, server = server, port = port }
    else
      say("  %-12s skipped: %s", peer.name, tostring(why):match("^[^\n]*"))
    end
  end
  return running
end

-- Starts every peer of `list` at once (idle servers cost nothing), then
-- runs `run(server, port, name)` in `rounds` rounds, each peer once per
-- round, so drift in a shared machine's load hits all of them alike.
-- Prints each run with `show(name, round, r)`; a peer's result is its run
-- with the median `key` (lower sorts first; nil last), with `runs` set.
-- Returns { [name] = result }.
local function interleaved(list, rounds, run, key, show)
  local running = start_all(list)
  for _, p in ipairs(running) do p.runs = {} end
  local ok, err = pcall(function()
    for round = 1, rounds do
      for _, p in ipairs(running) do
        local fine, r = pcall(run, p.server, p.port, p.name)
        if fine then
          p.runs[#p.runs + 1] = r
          show(p.name, round, r)
        else
          say("  %-12s round %d failed: %s", p.name, round, tostring(r))
        end
      end
    end
  end)
  for _, p in ipairs(running) do p.server:stop() end
  if not ok then error(err, 0) end
  local result = {}
  for _, p in ipairs(running) do
    table.sort(p.runs, function(a, b) return (a[key] or math.huge) < (b[key] or math.huge) end)
    local r = p.runs[(#p.runs + 1) // 2]
    if r then
      r.runs = #p.runs
      result[p.name] = r
    end
  end
  return result
end

-- The servers of the channel scenarios: the fan-out app and the peers
-- serving the same /sub and /publish.
local CHANNEL_PEERS = {
  { name = "sluice", start = function(port) return peers.sluice(env, port, "bench/apps/fanout") end },
  { name = "nchan", start = function(port) return peers.nchan(env, port) end },
  { name = "node", start = function(port) return peers.node_sse(env, port) end },
}

-- ---------------------------------------------------------------- scenarios

local scenarios = {}

-- One fan-out run against a server: deliveries, server CPU per delivery
-- and publish-to-receive latency.
local function fanout_run(server, port, size, extra)
  local cpu0 = server:cpu()
  local lg = { port = port, subs = size.subs, pubs = size.pubs, events = size.events }
  for k, v in pairs(extra or {}) do lg[k] = v end
  local r = loadgen.run(LOADGEN, "fanout", lg, CLIENT_CPU)
  local cpu = server:cpu() - cpu0
  return {
    received = r.received, expected = r.expected, complete = r.complete, subs = r.subs, pubs = r.pubs,
    published = r.published, publish_per_s = r.publish_per_s, extra = r.extra, stopped_by = r.stopped_by,
    failed = r.subs_failed + r.pub_errors + r.pub_http_errors + r.protocol_errors,
    deliveries_per_s = r.deliveries_per_s,
    server_cpu_s = cpu,
    us_per_delivery = r.received > 0 and cpu * 1e6 / r.received or nil,
    p50_ms = (r.latency_us.p50 or 0) / 1e3, p99_ms = (r.latency_us.p99 or 0) / 1e3,
    max_ms = (r.latency_us.max or 0) / 1e3,
  }
end

--- Fan-out: 1,000 subscribers on one channel, 4 keep-alive publishers
--- posting 2,000 events as fast as they are answered.
function scenarios.fanout()
  local size = SIZE.fanout
  say("fanout: %d subscribers x %d events, %d publishers, %d interleaved rounds",
    size.subs, size.events, size.pubs, size.repeats)
  return interleaved(CHANNEL_PEERS, size.repeats, function(server, port)
    return fanout_run(server, port, size)
  end, "us_per_delivery", function(name, i, r)
    say("  %-12s run %d: %d/%d delivered, %.0f/s, %.2f us CPU per delivery, p99 %.1f ms",
      name, i, r.received, r.expected, r.deliveries_per_s, r.us_per_delivery or 0, r.p99_ms)
  end)
end

-- Holds `n` idle subscribers against a server and returns the memory they
-- cost: PSS growth over the server's baseline, per subscriber.
local function hold_run(server, port, n, sources)
  proc.sleep(0.3)
  local base = server:memory()
  local held, summary = loadgen.hold(LOADGEN, {
    port = port, subs = n, sources = sources, timeout = 300,
  }, CLIENT_CPU, function(count)
    proc.sleep(1) -- let the server finish what the connects started
    return { count = count, mem = server:memory() }
  end)
  return {
    subs = n, held = held.count, failed = summary.subs_failed,
    base_kib = base.pss, held_kib = held.mem.pss,
    bytes_per_sub = held.count > 0 and (held.mem.pss - base.pss) * 1024 / held.count or nil,
  }
end

-- Holds `n` subscribers (connecting from `sources` addresses) against each
-- channel peer in turn.
local function hold_scenario(what, n, sources)
  say("%s: %d subscribers held open, memory per subscriber", what, n)
  return each_peer(CHANNEL_PEERS, function(server, port, name)
    local r = hold_run(server, port, n, sources)
    say("  %-12s %d of %d held, %d failed, %.0f bytes per subscriber",
      name, r.held, n, r.failed, r.bytes_per_sub or 0)
    return r
  end)
end

--- Idle memory: 10,000 subscribers held open, nothing published.
function scenarios.idle() return hold_scenario("idle", SIZE.idle.subs, 4) end

--- Connections held: 19,000 subscribers (the descriptor limit is 20,000).
function scenarios.held() return hold_scenario("held", SIZE.held.subs, 8) end

--- Latency: 100 subscribers, 200 events/s from one publisher.
function scenarios.latency()
  local size = SIZE.latency
  say("latency: %d subscribers, %d events/s, %d events", size.subs, size.rate, size.events)
  return each_peer(CHANNEL_PEERS, function(server, port, name)
    local cpu0 = server:cpu()
    local r = loadgen.run(LOADGEN, "latency", {
      port = port, subs = size.subs, pubs = 1, events = size.events, rate = size.rate,
    }, CLIENT_CPU)
    local out = {
      received = r.received, expected = r.expected,
      p50_ms = (r.latency_us.p50 or 0) / 1e3, p99_ms = (r.latency_us.p99 or 0) / 1e3,
      max_ms = (r.latency_us.max or 0) / 1e3,
      server_cpu_s = server:cpu() - cpu0,
    }
    say("  %-12s %d/%d delivered, p50 %.2f ms, p99 %.2f ms, max %.1f ms",
      name, out.received, out.expected, out.p50_ms, out.p99_ms, out.max_ms)
    return out
  end)
end


-- One wrk run: requests, errors, and the server CPU they took.
local function wrk_run(server, port, size)
  local cpu0 = server:cpu()
  local out = proc.run(("taskset -c %s wrk -t1 -c%d -d%ds http://127.0.0.1:%d/hello/world 2>&1")
    :format(CLIENT_CPU, size.connections, size.seconds, port))
  local cpu = server:cpu() - cpu0
  local requests = tonumber(out:match("(%d+) requests in"))
  if not requests then error("wrk: " .. out) end
  local errors = 0
  for n in out:gmatch("Non%-2xx or 3xx responses: (%d+)") do errors = errors + tonumber(n) end
  for _, what in ipairs { "connect", "read", "write", "timeout" } do
    errors = errors + (tonumber(out:match(what .. " (%d+)")) or 0)
  end
  return {
    requests = requests, errors = errors,
    requests_per_s = tonumber(out:match("Requests/sec:%s*([%d.]+)")),
    server_cpu_s = cpu, requests_per_cpu_s = cpu > 0 and requests / cpu or nil,
  }
end

--- Lua routes: GET /hello/world with wrk, one worker each.
function scenarios.route()
  local size = SIZE.route
  if not proc.have("wrk") then say("route: skipped, wrk is not installed"); return {} end
  say("route: GET /hello/:name, wrk -c%d for %d s, %d interleaved rounds", size.connections, size.seconds, size.repeats)
  local list = {
    { name = "sluice", start = function(port) return peers.sluice(env, port, "apps/hello") end },
    { name = "nginx+lua", start = function(port) return peers.nginx_lua(env, port) end },
    { name = "node", start = function(port) return peers.node_sse(env, port) end },
  }
  -- the median of requests per CPU-second: negated, as lower sorts first
  return interleaved(list, size.repeats, function(server, port)
    local r = wrk_run(server, port, size)
    r.sort_key = -(r.requests_per_cpu_s or 0)
    return r
  end, "sort_key", function(name, i, r)
    say("  %-12s run %d: %.0f req/s, %.0f req per server CPU-second, %d errors",
      name, i, r.requests_per_s or 0, r.requests_per_cpu_s or 0, r.errors)
  end)
end

local BODY = '{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}'

-- A streaming chat completion request to 127.0.0.1:port, closing after.
local function completion_request(port)
  return ("POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
    .. "Content-Length: %d\r\nConnection: close\r\n\r\n%s"):format(port, #BODY, BODY)
end

-- Seconds from sending a streaming completion request to the first "data:"
-- byte of the answer's body.
local function ttfb(port)
  local socket = require "socket"
  local s = assert(socket.connect("127.0.0.1", port))
  s:setoption("tcp-nodelay", true)
  s:settimeout(5)
  local t0 = socket.gettime()
  s:send(completion_request(port))
  local buf = ""
  while not buf:find("\r\n\r\n[%x\r\n]*data:") do
    local data, err, partial = s:receive(4096)
    buf = buf .. (data or partial or "")
    if err and err ~= "timeout" and not (partial and #partial > 0) then
      s:close()
      error(("no stream from port %d: %s"):format(port, err))
    end
  end
  local t = socket.gettime() - t0
  s:close()
  return t
end

-- Reads one streamed completion of `tokens` tokens through `port` to its
-- end; returns the bytes read.
local function drain(port)
  local socket = require "socket"
  local s = assert(socket.connect("127.0.0.1", port))
  s:settimeout(120)
  s:send(completion_request(port))
  local bytes = 0
  while true do
    local data, err, partial = s:receive(65536)
    bytes = bytes + #(data or partial or "")
    if err == "closed" then break end
    if err and err ~= "timeout" then error("relay read: " .. err) end
  end
  s:close()
  return bytes
end

--- Proxy: an OpenAI-style token stream relayed from the mock upstream, to
--- the same upstream reached directly.
function scenarios.proxy()
  local size = SIZE.proxy
  if not proc.have("node") then say("proxy: skipped, node is not installed"); return {} end
  say("proxy: %d time-to-first-byte samples each, %d streams of %d tokens each", size.samples, size.streams, size.tokens)
  local upstream = require "upstream"
  local mock = upstream.mock()
  os.execute(("taskset -pc %s %d >/dev/null"):format(CLIENT_CPU, mock.pid))
  local url = mock:url("")
  local list = {
    { name = "sluice", start = function(port)
        return peers.sluice(env, port, "bench/apps/relay", { env = { UPSTREAM = url } }) end },
    { name = "nginx", start = function(port) return peers.nginx_proxy(env, port, mock.port) end },
    { name = "node", start = function(port) return peers.node_proxy(env, port, url) end },
  }
  local running = start_all(list)
  for _, r in ipairs(running) do r.samples = {} end
  local result = {}
  local ok, err = pcall(function()
    mock:config { tokens = 8 }
    local direct = {}
    for i = 1, size.samples do -- interleaved, so drift in the machine hits all alike
      direct[i] = ttfb(mock.port)
      for _, r in ipairs(running) do r.samples[i] = ttfb(r.port) end
    end
    local d50, d99 = percentile(direct, 0.5), percentile(direct, 0.99)
    result.direct = { ttfb_p50_ms = d50 * 1e3, ttfb_p99_ms = d99 * 1e3 }
    say("  %-12s TTFB p50 %.3f ms, p99 %.3f ms", "direct", d50 * 1e3, d99 * 1e3)
    mock:config { tokens = size.tokens }
    for _, r in ipairs(running) do r.cpu, r.bytes = 0, 0 end
    for _ = 1, size.streams do -- interleaved, as above
      for _, r in ipairs(running) do
        local cpu0 = r.server:cpu()
        r.bytes = r.bytes + drain(r.port)
        r.cpu = r.cpu + r.server:cpu() - cpu0
      end
    end
    -- per stream: the role chunk, the tokens, the finish chunk, [DONE]
    local chunks = (size.tokens + 3) * size.streams
    for _, r in ipairs(running) do
      local p50, p99 = percentile(r.samples, 0.5), percentile(r.samples, 0.99)
      result[r.name] = {
        ttfb_p50_ms = p50 * 1e3, ttfb_p99_ms = p99 * 1e3,
        added_p50_ms = (p50 - d50) * 1e3, added_p99_ms = (p99 - d99) * 1e3,
        chunks = chunks, bytes = r.bytes, server_cpu_s = r.cpu, us_per_chunk = r.cpu * 1e6 / chunks,
      }
      say("  %-12s TTFB p50 %.3f ms (+%.3f), p99 %.3f ms (+%.3f); %.2f us CPU per chunk (%d bytes)",
        r.name, p50 * 1e3, (p50 - d50) * 1e3, p99 * 1e3, (p99 - d99) * 1e3, r.cpu * 1e6 / chunks, r.bytes)
    end
  end)
  for _, r in ipairs(running) do r.server:stop() end
  mock:stop()
  if not ok then say("  failed: %s", tostring(err)) end
  return result
end

-- CPU seconds of each worker thread of a sluice process (named
-- sluice-wN): { [tid] = seconds }.
local function worker_cpu(pid)
  local out = {}
  for tid in proc.run(("ls /proc/%d/task 2>/dev/null"):format(pid)):gmatch("%d+") do
    local comm = proc.read(("/proc/%d/task/%s/comm"):format(pid, tid)) or ""
    local stat = proc.read(("/proc/%d/task/%s/stat"):format(pid, tid))
    if stat and comm:match("^sluice%-w") then
      local f = {}
      for x in stat:match("%) (.*)$"):gmatch("%S+") do f[#f + 1] = x end
      out[tid] = (tonumber(f[12]) + tonumber(f[13])) / proc.tick
    end
  end
  return out
end

--- Workers: the fan-out run with one worker and with two. On a machine with
--- two cores the load client needs one of them, so throughput itself cannot
--- double; what shows whether the second worker scales is the work's split:
--- capacity = deliveries per CPU-second of the busiest thread.
function scenarios.workers()
  local size = SIZE.workers
  say("workers: fan-out %d x %d, %d publishers, --workers 1 and 2", size.subs, size.events, size.pubs)
  local result = {}
  for _, w in ipairs { 1, 2 } do
    local name = "workers=" .. w
    result[name] = with_server(name, function(port)
      return peers.sluice(env, port, "bench/apps/fanout", { workers = w, cpu = w == 1 and "0" or "0,1" })
    end, function(server, port)
      local before = worker_cpu(server.pid)
      local r = fanout_run(server, port, size)
      local busiest, spent = 0, {}
      for tid, s in pairs(worker_cpu(server.pid)) do
        local d = s - (before[tid] or 0)
        spent[#spent + 1] = d
        if d > busiest then busiest = d end
      end
      table.sort(spent, function(a, b) return a > b end)
      r.busiest_thread_cpu_s = busiest
      r.capacity_per_s = busiest > 0 and r.received / busiest or nil
      r.worker_cpu_s = spent
      say("  %-12s %.0f deliveries/s, %.2f us CPU per delivery, busiest thread %.2f s: capacity %.0f/s",
        name, r.deliveries_per_s, r.us_per_delivery or 0, busiest, r.capacity_per_s or 0)
      return r
    end)
  end
  local one, two = result["workers=1"], result["workers=2"]
  if one and two and one.capacity_per_s and two.capacity_per_s then
    result.capacity_ratio = two.capacity_per_s / one.capacity_per_s
    result.throughput_ratio = two.deliveries_per_s / one.deliveries_per_s
  end
  return result
end

-- sluice.stats() of the node on `port` (the fan-out app's GET /stats), or
-- nil when it does not answer.
---@param port integer
---@return table?
local function node_stats(port)
  local res = testing.client(port):get("/stats", { timeout = 5 })
  if not res or res.status ~= 200 then return nil end
  return (res:json())
end

-- A free port that is none of `taken`.
---@param taken integer[]
---@return integer
local function other_port(taken)
  while true do
    local port, clash = proc.free_port(), false
    for _, t in ipairs(taken) do clash = clash or t == port end
    if not clash then return port end
  end
end

-- Starts a Redis of its own and two sluice nodes sharing channels through
-- it, the fan-out app on each, all pinned to the server CPU: node B on
-- `port` (the subscribers' side), node A on a port of its own (the
-- publishers'). Returns once both nodes' links to Redis are up, as a
-- bench.Group (stopping B, A, then Redis) with `pub_port` set to A's.
---@param port integer
---@return bench.Group
local function start_pair(port)
  local started = {} -- newest first, the order to stop them in
  local function start(name, member_port, fn)
    local p, why = fn()
    if not p then error(why, 0) end
    table.insert(started, 1, { name = name, proc = p, port = member_port })
  end
  local group = proc.group(started)
  local ok, err = pcall(function()
    local redis_port = other_port { port }
    start("redis-server", nil, function() return peers.redis(env, redis_port) end)
    local url = ("redis://127.0.0.1:%d"):format(redis_port)
    group.pub_port = other_port { port, redis_port }
    start("node A", group.pub_port, function()
      return peers.sluice(env, group.pub_port, "bench/apps/fanout", { redis = url, name = "sluice node A" })
    end)
    start("node B", port, function()
      return peers.sluice(env, port, "bench/apps/fanout", { redis = url, name = "sluice node B" })
    end)
    local deadline = proc.now() + 10
    for _, m in ipairs(started) do
      while m.port and not ((node_stats(m.port) or {}).redis or {}).up do
        if proc.now() > deadline then error(m.name .. ": no link to Redis after 10 s:\n" .. m.proc:output(), 0) end
        proc.sleep(0.05)
      end
    end
  end)
  if not ok then
    group:stop()
    error(err, 0)
  end
  return group
end

-- What a node counted between two sluice.stats() samples: its deliveries
-- and slow drops, and with Redis the events it published through it, those
-- it received from it and its reconnects.
---@param before table
---@param after table
---@return table
local function stats_delta(before, after)
  local rb, ra = before.redis or {}, after.redis or {}
  return {
    delivered = after.delivered - before.delivered,
    slow_drops = after.slow_drops - before.slow_drops,
    redis_published = ra.published and ra.published - rb.published,
    redis_received = ra.received and ra.received - rb.received,
    redis_reconnects = ra.reconnects and ra.reconnects - rb.reconnects,
    redis_up = ra.up,
  }
end

-- One run against a node pair (or a lone node, `server` a bench.Proc):
-- subscribers on `port`, publishers on the pair's node A. What fanout_run
-- measures, plus the CPU of each process, what each node counted
-- meanwhile, the deliveries lost (expected, not received) and `anomalies`:
-- counts that do not add up (events lost or duplicated on the way).
---@param server bench.Proc|bench.Group
---@param port integer
---@param size { subs: integer, pubs: integer, events: integer }
---@param extra? table   more loadgen options (rate)
---@return table
local function nodes_run(server, port, size, extra)
  local members = server.members or { { name = "node", proc = server, port = port } }
  local function sample()
    local s = {}
    for i, m in ipairs(members) do s[i] = { stats = m.port and node_stats(m.port), cpu = m.proc:cpu() } end
    return s
  end
  local lg = { ["pub-port"] = server.pub_port }
  for k, v in pairs(extra or {}) do lg[k] = v end
  local before = sample()
  local r = fanout_run(server, port, size, lg)
  local after = sample()
  r.rate, r.cpu_s, r.counted, r.anomalies = lg.rate, {}, {}, {}
  for i, m in ipairs(members) do
    r.cpu_s[m.name] = after[i].cpu - before[i].cpu
    if before[i].stats and after[i].stats then r.counted[m.name] = stats_delta(before[i].stats, after[i].stats) end
  end
  r.lost = r.expected - r.received + (r.extra or 0)
  local function expect(what, got, want)
    if got ~= want then r.anomalies[#r.anomalies + 1] = ("%s: %s, expected %s"):format(what, got, want) end
  end
  expect("deliveries lost", r.lost, 0)
  expect("deliveries duplicated", r.extra, 0)
  expect("subscribers complete", r.complete, r.subs)
  local a, b = r.counted["node A"], r.counted["node B"]
  if a and b then
    expect("node A published through Redis", a.redis_published, r.published)
    expect("node B received from Redis", b.redis_received, a.redis_published)
    expect("node A received from Redis", a.redis_received, 0)
    expect("node B deliveries", b.delivered, r.received)
    expect("reconnects to Redis", (a.redis_reconnects or 0) + (b.redis_reconnects or 0), 0)
  end
  local node = r.counted.node or b
  if node then expect("slow drops", node.slow_drops, 0) end
  return r
end

-- What redis-server logs as warnings at every start and stop.
local REDIS_ROUTINE = { "Redis is starting", "Redis version=", "Configuration loaded", "Server initialized",
  "overcommit", "Received SIGTERM", "User requested shutdown", "ready to exit" }

-- The lines worth reading in what a process of the scenario logged:
-- sluice's warnings and errors and its "redis:" lines but the first
-- connect; redis-server's warnings ("#") but the routine ones.
---@param name string   the member's name ("redis-server" or a node's)
---@param text string   what it logged
---@return string[]
local function notable(name, text)
  local out = {}
  for line in text:gmatch("[^\n]+") do
    local keep
    if name == "redis-server" then
      keep = line:match("^%d+:%a %d+ %a+ %d+ [%d:.]+ # ") ~= nil
      for _, routine in ipairs(REDIS_ROUTINE) do keep = keep and not line:find(routine, 1, true) end
    else
      keep = line:match("^%S+ warn ") or line:match("^%S+ error ")
        or (line:find(" redis: ", 1, true) and not line:find(" redis: connected to ", 1, true))
    end
    if keep then out[#out + 1] = line end
  end
  return out
end

-- Adds the notable lines of each of `members` to `log` (name -> lines),
-- at most 30 per process; a line that comes again but for its time stamp
-- is kept once, with how many times it came ("(x200)").
---@param log table<string, string[]>
---@param members bench.Member[]
local function collect_log(log, members)
  for _, m in ipairs(members) do
    local lines, seen, count = {}, {}, {}
    local stamp = m.name == "redis-server" and "^%d+:%a %d+ %a+ %d+ [%d:.]+ " or "^%S+ "
    for _, line in ipairs(notable(m.name, m.proc:output())) do
      local what = line:gsub(stamp, "")
      if not seen[what] and #lines < 30 then
        lines[#lines + 1] = line
        seen[what] = #lines
      end
      count[what] = (count[what] or 0) + 1
    end
    for what, i in pairs(seen) do
      if count[what] > 1 then lines[i] = ("%s (x%d)"):format(lines[i], count[what]) end
    end
    local all = log[m.name] or {}
    log[m.name] = table.move(lines, 1, #lines, #all + 1, all)
  end
end

-- Prints one run of the nodes scenario, with the CPU per delivery of each
-- process of a pair, and what did not add up.
local function show_nodes_run(name, i, r)
  local split = {}
  for _, who in ipairs { "node A", "node B", "redis-server" } do
    if r.cpu_s[who] then
      split[#split + 1] = ("%s %.2f"):format(who:gsub("^node ", ""), r.cpu_s[who] * 1e6 / math.max(r.received, 1))
    end
  end
  say("  %-12s run %d: %d/%d delivered, %.0f/s, %.2f us CPU per delivery%s, p50 %.2f ms, p99 %.2f ms, max %.1f ms",
    name, i, r.received, r.expected, r.deliveries_per_s, r.us_per_delivery or 0,
    #split > 0 and " (" .. table.concat(split, ", ") .. ")" or "", r.p50_ms, r.p99_ms, r.max_ms)
  for _, a in ipairs(r.anomalies) do say("  %-12s   ! %s", "", a) end
end

--- Nodes: two sluice nodes (one worker each) sharing channels through a
--- Redis of their own, all three on the server CPU; subscribers on node B,
--- publishers on node A. The fan-out and the latency runs across the pair,
--- interleaved with the same runs on one node with the in-memory hub.
function scenarios.nodes()
  local size, lat = SIZE.nodes, SIZE.nodes.latency
  say("nodes: fan-out %d subscribers x %d events, %d publishers, %d interleaved rounds; "
    .. "latency %d subscribers, %d events/s, %d events; subscribers on node B, publishers on node A",
    size.subs, size.events, size.pubs, size.repeats, lat.subs, lat.rate, lat.events)
  local members = {} -- every process started, for their logs
  local list = {
    { name = "one node", start = function(port)
        local node = peers.sluice(env, port, "bench/apps/fanout")
        members[#members + 1] = { name = "one node", proc = node }
        return node
      end },
    { name = "two nodes", start = function(port)
        local pair = start_pair(port)
        table.move(pair.members, 1, #pair.members, #members + 1, members)
        return pair
      end },
  }
  local result = { log = {} }
  result.fanout = interleaved(list, size.repeats, function(server, port)
    return nodes_run(server, port, size)
  end, "us_per_delivery", show_nodes_run)
  collect_log(result.log, members)
  members = {}
  say("  latency: %d subscribers, %d events/s", lat.subs, lat.rate)
  result.latency = interleaved(list, 1, function(server, port)
    return nodes_run(server, port, lat, { rate = lat.rate })
  end, "p99_ms", show_nodes_run)
  collect_log(result.log, members)
  for _, name in ipairs { "one node", "node A", "node B", "redis-server" } do
    local lines = result.log[name] or {}
    if #lines > 0 then say("  %s logged:", name) end
    for _, line in ipairs(lines) do say("    %s", line) end
  end
  return result
end

--- Reload: save -> new code answering, with bench/reload_latency.lua.
function scenarios.reload()
  local n = SIZE.reload.saves
  say("reload: %d saves", n)
  local out, ok = proc.run(("cd %s && SLUICE_BIN=%s lua5.4 bench/reload_latency.lua %d 2>&1")
    :format(proc.quote(root), proc.quote(env.bin), n))
  local p50, p90, max = out:match("reload latency: p50 ([%d.]+) ms, p90 ([%d.]+) ms, max ([%d.]+) ms")
  if not ok or not p50 then say("  failed:\n%s", out); return {} end
  say("  sluice       p50 %s ms, p90 %s ms, max %s ms", p50, p90, max)
  return { sluice = { saves = n, p50_ms = tonumber(p50), p90_ms = tonumber(p90), max_ms = tonumber(max) } }
end

-- ---------------------------------------------------------------------- run

local ORDER = { "fanout", "idle", "latency", "held", "route", "proxy", "workers", "nodes", "reload" }
local wanted = {}
if opts.only then
  for name in opts.only:gmatch("[^,%s]+") do
    if not scenarios[name] then io.stderr:write("unknown scenario: " .. name .. "\n" .. USAGE); os.exit(2) end
    wanted[name] = true
  end
end

if not proc.read(env.bin) then say("no server binary at %s (make build)", env.bin); os.exit(2) end
if not proc.read(LOADGEN) then say("no load client at %s (make bench builds it)", LOADGEN); os.exit(2) end

local results = {
  machine = report.machine(),
  quick = Q,
  started = os.date("!%Y-%m-%dT%H:%M:%SZ"),
  scenarios = {},
}
say("sluice bench%s on %s, %d cores; servers on CPU %s, clients on CPU %s",
  Q and " (quick)" or "", results.machine.cpu, results.machine.cores, SERVER_CPU, CLIENT_CPU)
local t0 = proc.now()
for _, name in ipairs(ORDER) do
  if not opts.only or wanted[name] then
    local t = proc.now()
    local ok, r = pcall(scenarios[name])
    if not ok then say("%s failed: %s", name, tostring(r)); r = { error = tostring(r) } end
    results.scenarios[name] = r
    say("  (%s: %.0f s)", name, proc.now() - t)
  end
end
results.seconds = proc.now() - t0
os.execute("rm -rf " .. proc.quote(env.tmp))

os.execute("mkdir -p " .. proc.quote(opts.out))
proc.write(opts.out .. "/latest.json", json.encode(results, { indent = true }) .. "\n")
local md = report.markdown(results)
proc.write(opts.out .. "/latest.md", md)
local png, why = report.chart(results, opts.out .. "/latest.png")
io.stdout:write(md)
say("wrote %s/latest.json, latest.md%s in %.0f s", opts.out, png and ", latest.png" or
  (" (no chart: " .. tostring(why) .. ")"), results.seconds)
