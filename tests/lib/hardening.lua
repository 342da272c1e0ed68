--- Helpers for tests/spec/hardening_spec.lua: background processes (the C
--- load client), what /proc says about a process (CPU time, memory,
--- descriptors), a server binary under a low descriptor limit, and figures
--- a test reports (printed, and collected by scripts/hardening-report.lua).
---
---     local h = require "hardening"
---     local lg = h.spawn { h.loadgen_bin(), "idle", "-p", port, "-n", 5000, "--json" }
---     h.wait_for_line(lg, "^READY %d+", 30)
---     h.figure("server RSS %d KiB", rss)
---     lg:stop()
---
--- Needs LuaSocket and dkjson (through sluice.testing).
local testing = require "sluice.testing"

local json = testing.json
local hardening = {}

--- True under `make test-asan` (the server is built with ASan and UBSan, and
--- runs about three times slower).
hardening.sanitized = os.getenv("SLUICE_SANITIZED") == "1"

local shell_quote, read_file = testing.shell_quote, testing.read_file

--- The server binary: $SLUICE_BIN, or build/sluice.
---@return string
function hardening.server_bin()
  return os.getenv("SLUICE_BIN") or "build/sluice"
end

--- The load client (bench/loadgen.c), built next to the server binary;
--- raises an error naming the path when it is not there.
---@return string
function hardening.loadgen_bin()
  local dir = hardening.server_bin():match("^(.*)/[^/]*$") or "."
  local path = dir .. "/sluice-loadgen"
  local f = io.open(path, "rb")
  if not f then error("sluice-loadgen not found at " .. path .. " (it is built with the server)", 2) end
  f:close()
  return path
end

-- ---------------------------------------------------------------- processes

--- A background process: exit_status, signal and kill are those of the
--- servers sluice.testing starts (testing.Server), which this shares the
--- pid and status files' layout with.
---@class hardening.Proc : sluice.testing.Server
---@field pid integer
---@field argv string[]
local Proc = setmetatable({}, { __index = testing.Server })
Proc.__index = Proc

-- Processes still running when the test process exits are killed and
-- their files removed (Lua runs this finalizer when it closes).
local spawned = {}
hardening._reaper = setmetatable({}, {
  __gc = function()
    for _, p in ipairs(spawned) do
      if not p:exit_status() then p:kill() end
      for _, f in ipairs { p._out, p._err, p._pid_path, p._status_path, p._base } do os.remove(f) end
    end
  end,
})

--- Starts `argv` in the background (stdin from /dev/null, stdout and
--- stderr to files) and returns at once with its pid.
---@param argv any[]
---@return hardening.Proc
function hardening.spawn(argv)
  local base = os.tmpname()
  local p = setmetatable({
    argv = argv, _base = base, _out = base .. ".out", _err = base .. ".err",
    _pid_path = base .. ".pid", _status_path = base .. ".status",
  }, Proc)
  spawned[#spawned + 1] = p
  local inner = ("%s </dev/null >%s 2>%s & echo $! >%s; wait $!; echo $? >%s"):format(
    testing.command_line(argv), shell_quote(p._out), shell_quote(p._err),
    shell_quote(p._pid_path), shell_quote(p._status_path))
  os.execute("sh -c " .. shell_quote(inner) .. " </dev/null >/dev/null 2>&1 &")
  local pid = testing.wait_for(function()
    local s = read_file(p._pid_path)
    return s and tonumber(s:match("^(%d+)\n"))
  end, 5)
  if not pid then error("could not launch " .. tostring(argv[1]), 2) end
  p.pid = math.tointeger(pid)
  return p
end

--- Waits up to `timeout` seconds (default 5) for the process to end.
---@param timeout? number
---@return integer? status
function Proc:wait(timeout)
  return self:wait_exit(timeout)
end

--- SIGTERM, then SIGKILL when still running after `timeout` seconds
--- (default 5). Returns the exit status.
---@param timeout? number
---@return integer?
function Proc:stop(timeout)
  return (testing.Server.stop(self, timeout))
end

--- What the process wrote to stdout so far.
---@return string
function Proc:stdout() return read_file(self._out) or "" end

--- What the process wrote to stderr so far.
---@return string
function Proc:stderr() return read_file(self._err) or "" end

--- The JSON object on the last non-empty line of stdout (the load client's
--- --json summary), or nil and why.
---@return table? summary
---@return string? err
function Proc:json_summary()
  local last
  for line in self:stdout():gmatch("[^\n]+") do
    if line:match("^%s*{") then last = line end
  end
  if not last then return nil, "no JSON line on stdout; stderr:\n" .. self:stderr() end
  local v, _, err = json.decode(last, 1, nil)
  if err then return nil, err end
  return v
end

--- Waits until a line of stdout matches `pattern` and returns its captures
--- (or the line); nil and "exited" / "timeout" otherwise.
---@param p hardening.Proc
---@param pattern string
---@param timeout? number
---@return string? ...
function hardening.wait_for_line(p, pattern, timeout)
  local found
  local ok, err = testing.wait_for(function()
    for line in p:stdout():gmatch("[^\n]+") do
      local m = table.pack(line:match(pattern))
      if m[1] then found = m return true end
    end
    if p:exit_status() then return nil end
  end, timeout or 10, 0.02)
  if found then return table.unpack(found, 1, found.n) end
  if p:exit_status() then return nil, "exited" end
  return nil, err or "timeout"
end

-- ------------------------------------------------------------------ /proc

local clk_tck
local function ticks_per_second()
  if not clk_tck then
    local p = io.popen("getconf CLK_TCK 2>/dev/null")
    clk_tck = tonumber(p and p:read("l") or "") or 100
    if p then p:close() end
  end
  return clk_tck
end

--- CPU seconds (user + system, all threads) a live process has used; nil
--- once it is gone.
---@param pid integer
---@return number?
function hardening.cpu_seconds(pid)
  local s = read_file(("/proc/%d/stat"):format(pid))
  if not s then return nil end
  local fields = {}
  for f in s:match("%) (.*)$"):gmatch("%S+") do fields[#fields + 1] = f end
  -- after the command: state is field 1, utime 12, stime 13
  return (tonumber(fields[12]) + tonumber(fields[13])) / ticks_per_second()
end

--- The share of one CPU a process used over `seconds` (1.0 = one core busy).
---@param pid integer
---@param seconds number
---@return number? share
function hardening.cpu_share(pid, seconds)
  local c0, t0 = hardening.cpu_seconds(pid), testing.now()
  testing.sleep(seconds)
  local c1, t1 = hardening.cpu_seconds(pid), testing.now()
  if not c0 or not c1 then return nil end
  return (c1 - c0) / (t1 - t0)
end

--- Resident memory of a process in KiB (VmRSS); nil once it is gone.
---@param pid integer
---@return integer?
function hardening.rss_kb(pid)
  local s = read_file(("/proc/%d/status"):format(pid))
  local kb = s and s:match("\nVmRSS:%s*(%d+) kB")
  return kb and math.tointeger(tonumber(kb))
end

--- How many descriptors a process has open; nil once it is gone.
---@param pid integer
---@return integer?
function hardening.fd_count(pid)
  local p = io.popen(("ls /proc/%d/fd 2>/dev/null | wc -l"):format(pid))
  local n = p and tonumber(p:read("l") or "")
  if p then p:close() end
  return n and math.tointeger(n)
end

--- The size of a file in bytes (0 when missing).
---@param path string
---@return integer
function hardening.file_size(path)
  local f = io.open(path, "rb")
  if not f then return 0 end
  local n = f:seek("end")
  f:close()
  return n
end

--- Lines in a file, reading at most `max_bytes` of it (default 1 MiB): a
--- log being flooded is counted without being loaded whole. The second
--- value is true when the file was longer than that.
---@param path string
---@param max_bytes? integer
---@return integer lines
---@return boolean truncated
function hardening.count_lines(path, max_bytes)
  max_bytes = max_bytes or 1024 * 1024
  local f = io.open(path, "rb")
  if not f then return 0, false end
  local s = f:read(max_bytes) or ""
  local more = f:read(1) ~= nil
  f:close()
  local _, n = s:gsub("\n", "")
  return n, more
end

--- The first `max_bytes` (default 4 KiB) of a file.
---@param path string
---@param max_bytes? integer
---@return string
function hardening.head(path, max_bytes)
  local f = io.open(path, "rb")
  if not f then return "" end
  local s = f:read(max_bytes or 4096) or ""
  f:close()
  return s
end

--- A wrapper script that runs the server binary with its descriptor limit
--- (soft and hard, so the server cannot raise it) set to `nofile`. It
--- execs the server, so the pid it is started with is the server's.
---@param nofile integer
---@return string path
function hardening.limited_bin(nofile)
  local bin = hardening.server_bin()
  if bin:sub(1, 1) ~= "/" then
    local p = io.popen("pwd")
    bin = p:read("l") .. "/" .. bin
    p:close()
  end
  local dir = testing.tempdir()
  local path = dir .. "/sluice"
  testing.write_file(path, ("#!/bin/sh\nulimit -n %d || exit 97\nexec %s \"$@\"\n"):format(
    nofile, shell_quote(bin)))
  assert(os.execute("chmod +x " .. shell_quote(path)))
  return path
end

-- ----------------------------------------------------------------- figures

-- The running busted test, tracked through busted's events (its API has no
-- call for it); nil outside busted.
local running
do
  local ok, busted = pcall(require, "busted")
  if ok and type(busted) == "table" and type(busted.subscribe) == "function" then
    busted.subscribe({ "test", "start" }, function(element) running = element; return nil, true end)
    busted.subscribe({ "test", "end" }, function() running = nil; return nil, true end)
  end
end

-- The full name of the running test, as busted's output handlers write it
-- (describe names and the it name, space-separated).
local function current_test()
  if not running then return nil end
  local busted = require "busted"
  local names = { running.name or running.descriptor }
  local parent = busted.parent(running)
  while parent and (parent.name or parent.descriptor) and parent.descriptor ~= "file" do
    table.insert(names, 1, parent.name or parent.descriptor)
    parent = busted.parent(parent)
  end
  return table.concat(names, " ")
end

--- Reports a measured figure: prints it on stderr and, when
--- $SLUICE_HARDENING_FIGURES names a file, appends it there as a JSON line
--- { test = full test name, text = ... } for the hardening report.
---@param fmt string
---@param ... any
function hardening.figure(fmt, ...)
  local text = fmt:format(...)
  io.stderr:write("\n  [hardening] " .. text .. "\n")
  local path = os.getenv("SLUICE_HARDENING_FIGURES")
  if path and path ~= "" then
    local f = io.open(path, "ab")
    if f then
      f:write(json.encode { test = current_test(), text = text }, "\n")
      f:close()
    end
  end
end

return hardening
