--- What the benchmark driver writes: the machine it ran on, the markdown
--- table (peers side by side, with the ratio and the target), and a chart.
local proc = require "proc"

local report = {}

--- The machine and the versions of what ran.
---@return table
function report.machine()
  local cpuinfo = proc.read("/proc/cpuinfo") or ""
  local meminfo = proc.read("/proc/meminfo") or ""
  local function version(cmd) return ((proc.run(cmd .. " 2>&1"))):match("^[^\n]*") end
  local function package(name)
    local v = proc.run("dpkg-query -W -f='${Version}' " .. name .. " 2>/dev/null")
    return v ~= "" and v or nil
  end
  return {
    cpu = cpuinfo:match("model name%s*:%s*([^\n]+)") or "unknown",
    cores = math.tointeger(tonumber((proc.run("nproc")))) or 0,
    mem_gib = math.floor((tonumber(meminfo:match("MemTotal:%s*(%d+)")) or 0) / 1048576 + 0.5),
    kernel = (proc.run("uname -r")),
    os = ((proc.read("/etc/os-release") or ""):match('PRETTY_NAME="([^"]+)"')) or "unknown",
    sluice = ((proc.run("git -C " .. proc.quote(os.getenv("SLUICE_ROOT") or ".") .. " describe --always --dirty 2>/dev/null"))),
    nginx = package("nginx-light") or package("nginx-core") or package("nginx"),
    nchan = package("libnginx-mod-nchan"),
    nginx_lua = package("libnginx-mod-http-lua"),
    node = proc.have("node") and version("node --version") or nil,
    wrk = package("wrk"),
    redis = package("redis-server"),
  }
end

-- ---------------------------------------------------------------- markdown

local function fmt(v, digits)
  if v == nil then return "–" end
  if math.type(v) == "integer" or digits == 0 then
    local s, n = ("%d"):format(math.floor(v + 0.5)), 1
    while n > 0 do s, n = s:gsub("^(-?%d+)(%d%d%d)", "%1,%2") end
    return s
  end
  return ("%." .. (digits or 2) .. "f"):format(v)
end

-- How many times better sluice is than the best peer ("2.4×"); below 1
-- it is worse. `lower`: smaller is better.
local function ratio(mine, others, lower)
  local best
  for _, v in ipairs(others) do
    if v and v > 0 and (not best or (lower and v < best) or (not lower and v > best)) then best = v end
  end
  if not mine or mine <= 0 or not best then return "–" end
  return ("%.1f×"):format(lower and best / mine or mine / best)
end

local function get(t, ...)
  for _, k in ipairs { ... } do
    if type(t) ~= "table" then return nil end
    t = t[k]
  end
  return t
end

-- The rows: scenario, measure, the three values (sluice, the nginx peer,
-- Node), whether lower is better, digits, and the target with its check.
local function rows(r)
  local s = r.scenarios
  local list = {}
  local function row(t) list[#list + 1] = t end
  local fan, idle, lat, held = s.fanout, s.idle, s.latency, s.held
  local route, proxy, workers, reload = s.route, s.proxy, s.workers, s.reload
  if fan then
    local subs, events = get(fan, "sluice", "subs"), get(fan, "sluice", "expected")
    local pubs = get(fan, "sluice", "pubs") or 0
    local title = subs and events and ("Fan-out %s subs × %s events, %d publishers")
      :format(fmt(subs, 0), fmt(events // subs, 0), pubs)
      or "Fan-out"
    row { title, "server CPU µs per delivery", peer = "nchan",
      get(fan, "sluice", "us_per_delivery"), get(fan, "nchan", "us_per_delivery"), get(fan, "node", "us_per_delivery"),
      lower = true, target = "≤ 1.0", met = function(v) return v <= 1.0 end }
    row { "", "deliveries per second",
      get(fan, "sluice", "deliveries_per_s"), get(fan, "nchan", "deliveries_per_s"), get(fan, "node", "deliveries_per_s"),
      digits = 0, peer = "nchan" }
  end
  if idle then
    row { ("Idle memory, %s subscribers"):format(fmt(get(idle, "sluice", "subs") or 0, 0)), "bytes per subscriber (PSS)", peer = "nchan",
      get(idle, "sluice", "bytes_per_sub"), get(idle, "nchan", "bytes_per_sub"), get(idle, "node", "bytes_per_sub"),
      lower = true, digits = 0, target = "≤ 1,024", met = function(v) return v <= 1024 end }
  end
  if lat then
    row { "Latency, 100 subs at 200 events/s", "publish→receive p50 ms", peer = "nchan",
      get(lat, "sluice", "p50_ms"), get(lat, "nchan", "p50_ms"), get(lat, "node", "p50_ms"), lower = true }
    row { "", "publish→receive p99 ms", peer = "nchan",
      get(lat, "sluice", "p99_ms"), get(lat, "nchan", "p99_ms"), get(lat, "node", "p99_ms"),
      lower = true, target = "≤ 1.0", met = function(v) return v <= 1.0 end }
  end
  if held then
    local n = get(held, "sluice", "subs")
    row { ("Connections held, %s subscribers"):format(fmt(n or 0, 0)), "held open", peer = "nchan",
      get(held, "sluice", "held"), get(held, "nchan", "held"), get(held, "node", "held"), digits = 0,
      target = ("all, 0 failed"), met = function(v) return v == n and get(held, "sluice", "failed") == 0 end }
  end
  if route then
    local nginx = get(route, "nginx+lua", "requests_per_cpu_s")
    row { "Lua route GET /hello/:name (wrk)", "requests per server CPU-second", peer = "nginx+Lua",
      get(route, "sluice", "requests_per_cpu_s"), nginx, get(route, "node", "requests_per_cpu_s"), digits = 0,
      target = "≥ 1.2× nginx+Lua", met = function(v) return nginx and v >= 1.2 * nginx end }
  end
  if proxy then
    local nginx = get(proxy, "nginx", "us_per_chunk")
    row { "LLM stream proxy", "added time to first byte p50 ms", peer = "nginx proxy_pass", noratio = true,
      get(proxy, "sluice", "added_p50_ms"), get(proxy, "nginx", "added_p50_ms"), get(proxy, "node", "added_p50_ms"),
      lower = true, digits = 3, target = "≤ 0.2", met = function(v) return v <= 0.2 end }
    row { "", "added time to first byte p99 ms", peer = "nginx proxy_pass", noratio = true,
      get(proxy, "sluice", "added_p99_ms"), get(proxy, "nginx", "added_p99_ms"), get(proxy, "node", "added_p99_ms"),
      lower = true, digits = 3 }
    row { "", "server CPU µs per relayed chunk", peer = "nginx proxy_pass",
      get(proxy, "sluice", "us_per_chunk"), nginx, get(proxy, "node", "us_per_chunk"),
      lower = true, target = "≤ nginx", met = function(v) return nginx and v <= nginx end }
  end
  if workers and workers.capacity_ratio then
    row { "Fan-out with --workers 2", "capacity vs --workers 1 (busiest thread)",
      workers.capacity_ratio, nil, nil, target = "scales (≥ 1.8×)", met = function(v) return v >= 1.8 end }
  end
  if reload and reload.sluice then
    row { "Hot reload", "save → new code answering, p50 ms", reload.sluice.p50_ms, nil, nil, digits = 1 }
  end
  return list
end

-- The section of the nodes scenario: two sluice nodes sharing channels
-- through Redis next to one node with the in-memory hub, as lines of
-- markdown (none when the scenario did not run).
local function nodes_section(r)
  local n = r.scenarios.nodes
  if type(n) ~= "table" or not (n.fanout or n.latency) then return {} end
  local m = r.machine
  local one, two = "one node", "two nodes"
  local fan, lat = n.fanout or {}, n.latency or {}
  local out = {
    "",
    ("Two nodes sharing channels through Redis (`--redis`, redis-server %s, no persistence): node A and node B, "
      .. "one worker each, and Redis all pinned to the server core; subscribers on node B, publishers on node A. "
      .. "Next to it, the same runs on one node with the in-memory hub. Server CPU is that of every process "
      .. "(A + B + Redis). Node A answers a publish once Redis has it, whatever B's backlog, so in the "
      .. "fan-out B delivers events queued up ahead of it: see its publish→receive time."):format(m.redis or "–"),
    "",
    "| Scenario | Measure | one node (in-memory hub) | two nodes via Redis | two nodes vs one |",
    "|---|---|---:|---:|---:|",
  }
  -- one row: the two values and their ratio (two / one)
  local function row(scenario, measure, a, b, digits)
    local times = a and b and a > 0 and ("%.2f×"):format(b / a) or "–"
    out[#out + 1] = ("| %s | %s | %s | %s | %s |"):format(scenario, measure, fmt(a, digits), fmt(b, digits), times)
  end
  local subs, events = get(fan, two, "subs") or get(fan, one, "subs"), get(fan, two, "expected") or get(fan, one, "expected")
  local title = subs and events and subs > 0 and ("Fan-out %s subs × %s events, %d publishers"):format(
    fmt(subs, 0), fmt(events // subs, 0), get(fan, two, "pubs") or get(fan, one, "pubs") or 0) or "Fan-out"
  row(title, "events published per second", get(fan, one, "publish_per_s"), get(fan, two, "publish_per_s"), 0)
  row("", "deliveries per second", get(fan, one, "deliveries_per_s"), get(fan, two, "deliveries_per_s"), 0)
  row("", "server CPU µs per delivery", get(fan, one, "us_per_delivery"), get(fan, two, "us_per_delivery"))
  row("", "publish→receive p99 ms", get(fan, one, "p99_ms"), get(fan, two, "p99_ms"))
  row("", "deliveries lost + duplicated", get(fan, one, "lost") and get(fan, one, "lost") + (get(fan, one, "extra") or 0),
    get(fan, two, "lost") and get(fan, two, "lost") + (get(fan, two, "extra") or 0), 0)
  local lsubs, rate = get(lat, two, "subs") or get(lat, one, "subs"), get(lat, two, "rate") or get(lat, one, "rate")
  local ltitle = lsubs and rate and ("Latency, %s subs at %s events/s"):format(fmt(lsubs, 0), fmt(rate, 0)) or "Latency"
  row(ltitle, "publish→receive p50 ms", get(lat, one, "p50_ms"), get(lat, two, "p50_ms"))
  row("", "publish→receive p99 ms", get(lat, one, "p99_ms"), get(lat, two, "p99_ms"))
  local cpu, received = get(fan, two, "cpu_s"), get(fan, two, "received")
  if cpu and received and received > 0 then
    local parts = {}
    for _, who in ipairs { "node A", "node B", "redis-server" } do
      if cpu[who] then parts[#parts + 1] = ("%s %s"):format(who, fmt(cpu[who] * 1e6 / received)) end
    end
    out[#out + 1] = ""
    out[#out + 1] = "Server CPU µs per delivery of the two-node fan-out, by process: " .. table.concat(parts, ", ") .. "."
  end
  return out
end

--- The results as markdown: the machine, the table of sluice and its peers,
--- then the nodes scenario's own table when it ran.
---@param r table
---@return string
function report.markdown(r)
  local m = r.machine
  local out = {
    ("Measured %s on %s (%d cores, %d GiB, %s, Linux %s)%s; servers pinned to one core, the load client to the other."):format(
      r.started:sub(1, 10), m.cpu, m.cores, m.mem_gib, m.os, m.kernel, r.quick and ", quick sizes" or ""),
    ("Peers: nginx %s with nchan %s / Lua module %s / proxy_pass; Node %s (node:http, the tutorial style)."):format(
      m.nginx or "–", m.nchan or "–", m.nginx_lua or "–", m.node or "–"),
    "",
  }
  local list = rows(r)
  if #list > 0 then
    out[#out + 1] = "| Scenario | Measure | sluice | nginx (nchan, Lua, proxy_pass) | Node | sluice vs best peer | Target | Met |"
    out[#out + 1] = "|---|---|---:|---:|---:|---:|---|---|"
  end
  for _, row in ipairs(list) do
    local mine = row[3]
    local met = ""
    if row.met and mine then met = row.met(mine) and "yes" or "**no**" end
    out[#out + 1] = ("| %s | %s | %s | %s | %s | %s | %s | %s |"):format(row[1], row[2],
      fmt(mine, row.digits), fmt(row[4], row.digits), fmt(row[5], row.digits),
      row.noratio and "–" or ratio(mine, { row[4], row[5] }, row.lower), row.target or "", met)
  end
  local nodes = nodes_section(r)
  table.move(nodes, 1, #nodes, #out + 1, out)
  return table.concat(out, "\n") .. "\n"
end

-- ------------------------------------------------------------------- chart

--- Draws the measures where lower or higher is plainly better as bars, one
--- panel each, with gnuplot into `path`. Returns path, or nil and why not.
---@param r table
---@param path string
---@return string? path
---@return string? why
function report.chart(r, path)
  if not proc.have("gnuplot") then return nil, "gnuplot is not installed" end
  local panels, title = {}, ""
  for _, row in ipairs(rows(r)) do
    if row[1] ~= "" then title = row[1] end
    row.title = title
    if row[3] and (row[4] or row[5]) and not row.noratio then
      panels[#panels + 1] = row
    end
  end
  if #panels == 0 then return nil, "nothing to draw" end
  local dir = (proc.run("mktemp -d /tmp/sluice-chart.XXXXXX"))
  local cols = 3
  local lines = {
    "set terminal pngcairo size 1500," .. (330 * math.ceil(#panels / cols)) .. " font 'sans,10'",
    "set output '" .. path .. "'",
    ("set multiplot layout %d,%d title 'sluice and its peers (%s)'"):format(math.ceil(#panels / cols), cols,
      r.machine.cpu:gsub("'", "")),
    "set termoption noenhanced", "set style fill solid 0.8 border -1", "set boxwidth 0.6", "set yrange [0:*]", "unset key",
    "set grid ytics", "set xtics nomirror", "set tics font 'sans,9'",
  }
  for i, row in ipairs(panels) do
    local data = ("%s/%d.dat"):format(dir, i)
    local names = { "sluice", row.peer or "nginx", "Node" }
    local body = {}
    for j = 1, 3 do
      local v = row[j + 2]
      if v then
        body[#body + 1] = ("%d \"%s\" %.6g %s \"%s\""):format(j - 1, names[j], v,
          j == 1 and "0x1f77b4" or "0x999999", fmt(v, v >= 100 and 0 or (v >= 10 and 1 or 2)))
      end
    end
    proc.write(data, table.concat(body, "\n") .. "\n")
    lines[#lines + 1] = ("set title \"%s\\n%s%s\""):format(row.title:gsub('"', ''), row[2]:gsub('"', ''),
      row.lower and " (lower is better)" or " (higher is better)")
    lines[#lines + 1] = ("plot '%s' using 1:3:4:xtic(2) with boxes lc rgb variable, '' using 1:3:5 with labels offset 0,0.7")
      :format(data)
  end
  lines[#lines + 1] = "unset multiplot"
  proc.write(dir .. "/chart.gp", table.concat(lines, "\n") .. "\n")
  local out, ok = proc.run("gnuplot " .. proc.quote(dir .. "/chart.gp") .. " 2>&1")
  os.execute("rm -rf " .. proc.quote(dir))
  if not ok then return nil, "gnuplot: " .. out end
  return path
end

return report
