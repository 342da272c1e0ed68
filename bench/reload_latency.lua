-- Reload latency: the time from a save of app.lua (its write and close) to
-- the new code answering, under `sluice --reload`.
--
--     SLUICE_BIN=build/sluice lua5.4 bench/reload_latency.lua [N] [WORKERS]
--
-- Runs a copy of a small app in a temp dir, saves a new version N times
-- (default 50) and polls GET /version on one keep-alive connection about
-- every millisecond until the new version answers.  Prints p50/p90/max in
-- ms, the server's own reload time (the `ms` of each `event: reload`: from
-- the watcher's debounced call to every worker swapped), and a one-line
-- summary.  Stops by itself; the server and the temp dir are cleaned up.
local script_dir = (arg and arg[0] or ""):match("^(.*)/[^/]*$") or "."
local root = os.getenv("SLUICE_ROOT") or (script_dir .. "/..")
package.path = root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;" .. package.path

local testing = require "sluice.testing"

local N = math.tointeger(tonumber(arg[1] or "50"))
local WORKERS = math.tointeger(tonumber(arg[2] or "1"))
if not N or N < 1 or not WORKERS or WORKERS < 1 then
  io.stderr:write("usage: lua5.4 bench/reload_latency.lua [N] [WORKERS]\n")
  os.exit(2)
end
local BIN = os.getenv("SLUICE_BIN") or (root .. "/build/sluice")
local POLL = 0.001    -- seconds between polls
local TIMEOUT = 5     -- seconds one reload may take before the bench gives up

local APP = [[
local sluice = require "sluice"
local app = sluice.app { heartbeat = 0 }
local VERSION = "%s"
app:get("/version", function() return VERSION end)
app:get("/hello/:name", function(req) return "hello " .. req.params.name end)
app:get("/events", function(req) req:sse():subscribe("events") end)
return app
]]

local function percentile(sorted, p)
  local i = math.max(1, math.ceil(p * #sorted))
  return sorted[i]
end

local function summary(list)
  local s = {}
  for i, v in ipairs(list) do s[i] = v end
  table.sort(s)
  local sum = 0
  for _, v in ipairs(s) do sum = sum + v end
  return { min = s[1], p50 = percentile(s, 0.5), p90 = percentile(s, 0.9), max = s[#s], mean = sum / #s }
end

local function run(dir)
  testing.write_file(dir .. "/app.lua", APP:format("v0"))
  local server = testing.start(dir, { bin = BIN, args = { "--reload", "--workers", tostring(WORKERS) } })
  local ok, err = pcall(function()
    local client = testing.client(server)
    local monitor = assert(client:sse("/_sluice/reload"))
    local conn = assert(client:connect())
    local function version()
      local res, rerr = conn:request("GET", "/version", { timeout = TIMEOUT })
      if not res then -- reconnect once; a second failure is fatal
        conn:close()
        conn = assert(client:connect())
        res = assert(conn:request("GET", "/version", { timeout = TIMEOUT }), rerr)
      end
      assert(res.status == 200, "GET /version: " .. res.status)
      return res.body
    end
    assert(version() == "v0", "the app did not start as v0")

    local latencies, server_ms, polls = {}, {}, 0
    for i = 1, N do
      local tag = "v" .. i
      local f = assert(io.open(dir .. "/app.lua", "wb"))
      assert(f:write(APP:format(tag)))
      assert(f:close())
      local saved = testing.now()
      while true do
        polls = polls + 1
        if version() == tag then break end
        if testing.now() - saved > TIMEOUT then error(("%s not answering %d s after the save"):format(tag, TIMEOUT)) end
        testing.sleep(POLL)
      end
      latencies[i] = (testing.now() - saved) * 1000
      -- The server's own figure, from the event that announced this reload.
      local ev = assert(monitor:next_event(TIMEOUT))
      assert(ev.event == "reload", "reload failed: " .. ev.data)
      local data = testing.json.decode(ev.data)
      server_ms[i] = tonumber(data.ms) or 0
      testing.sleep(0.01) -- let the next save start a fresh debounce
    end
    conn:close()
    monitor:close()

    local l, s = summary(latencies), summary(server_ms)
    print(("save -> new code answering, %d reloads, %d worker%s (polling every %.0f ms, %d polls):")
      :format(N, WORKERS, WORKERS == 1 and "" or "s", POLL * 1000, polls))
    print(("  min %.1f  p50 %.1f  p90 %.1f  max %.1f  mean %.1f ms"):format(l.min, l.p50, l.p90, l.max, l.mean))
    print(("server reload time (event ms: debounced change -> all workers swapped):"))
    print(("  min %.2f  p50 %.2f  p90 %.2f  max %.2f ms"):format(s.min, s.p50, s.p90, s.max))
    print(("reload latency: p50 %.1f ms, p90 %.1f ms, max %.1f ms over %d saves (target p50 < 100 ms: %s)")
      :format(l.p50, l.p90, l.max, N, l.p50 < 100 and "met" or "MISSED"))
  end)
  local status = server:stop()
  if status ~= 0 then io.stderr:write(("server exited with %s\n%s"):format(tostring(status), server:log())) end
  return ok, err
end

local dir = testing.tempdir()
local ok, err = run(dir)
testing.remove_tempdir(dir)
if not ok then
  io.stderr:write("reload_latency: " .. tostring(err) .. "\n")
  os.exit(1)
end
