--- Processes for the benchmark driver: start a server pinned to a CPU, wait
--- for its port, and read what the kernel accounts to it (CPU time from
--- /proc/PID/stat, proportional memory from /proc/PID/smaps_rollup), summed
--- over the process and its descendants (nginx's master and worker).
local socket = require "socket"
local testing = require "sluice.testing"

local proc = {}

--- Quotes one word for sh.
---@param s any
---@return string
function proc.quote(s)
  return "'" .. (tostring(s):gsub("'", "'\\''")) .. "'"
end

--- The whole content of a file, or nil when it cannot be read.
---@type fun(path: string): string?
proc.read = testing.read_file

--- Writes `content` to `path`, raising on failure.
---@type fun(path: string, content: string)
proc.write = testing.write_file

--- Runs a shell command and returns its standard output (without the final
--- newline) and whether it exited 0.
---@param cmd string
---@return string out
---@return boolean ok
function proc.run(cmd)
  local p = assert(io.popen(cmd, "r"))
  local out = p:read("a")
  local ok = p:close()
  return (out:gsub("\n$", "")), ok == true
end

--- Whether a command is on PATH.
---@param name string
---@return boolean
function proc.have(name)
  local _, ok = proc.run("command -v " .. proc.quote(name) .. " >/dev/null 2>&1")
  return ok
end

--- Seconds since an arbitrary epoch.
---@return number
function proc.now() return socket.gettime() end

--- Sleeps `s` seconds.
---@param s number
function proc.sleep(s) socket.sleep(s) end

--- A TCP port on 127.0.0.1 that was free a moment ago, below the
--- ephemeral range (32768 and up), so no client connection can hold it.
---@return integer
function proc.free_port()
  for _ = 1, 100 do
    local port = math.random(20000, 32000)
    local s = socket.bind("127.0.0.1", port)
    if s then
      s:close()
      return port
    end
  end
  error("no free port between 20000 and 32000")
end

--- Whether something accepts connections on 127.0.0.1:port.
---@param port integer
---@return boolean
function proc.listening(port)
  local c = socket.tcp()
  c:settimeout(0.25)
  local ok = c:connect("127.0.0.1", port)
  c:close()
  return ok ~= nil
end

---@class bench.Proc
---@field pid integer
---@field name string
---@field log string      path of the file receiving its stdout and stderr
local Proc = {}
Proc.__index = Proc

---@class bench.SpawnOptions
---@field name string            what it is, for messages
---@field argv string[]
---@field env? table<string,string>
---@field cpu? string            CPU list for taskset, e.g. "0" or "0,1"
---@field cwd? string
---@field port? integer          wait until this port accepts (10 s at most)

--- Starts a process in the background, its output in a temporary log file,
--- pinned with taskset when `opts.cpu` is set. `exec` keeps the pid the
--- program's own. Raises (with the log) when it does not listen in time.
---@param opts bench.SpawnOptions
---@return bench.Proc
function proc.spawn(opts)
  local log = os.tmpname()
  local words = {}
  for k, v in pairs(opts.env or {}) do words[#words + 1] = proc.quote(k .. "=" .. v) end
  table.sort(words)
  if #words > 0 then table.insert(words, 1, "env") end
  if opts.cpu then
    words[#words + 1] = "taskset -c " .. opts.cpu
  end
  for _, a in ipairs(opts.argv) do words[#words + 1] = proc.quote(a) end
  local cd = opts.cwd and ("cd " .. proc.quote(opts.cwd) .. " && ") or ""
  local inner = ("%sexec %s </dev/null >%s 2>&1"):format(cd, table.concat(words, " "), proc.quote(log))
  local out = proc.run("sh -c " .. proc.quote(inner) .. " >/dev/null 2>&1 & echo $!")
  local self = setmetatable({ pid = math.tointeger(tonumber(out)), name = opts.name, log = log }, Proc)
  if opts.port then
    local deadline = proc.now() + 10
    while not proc.listening(opts.port) do
      if not self:alive() or proc.now() > deadline then
        local text = proc.read(log) or ""
        self:stop()
        error(("%s did not listen on port %d:\n%s"):format(opts.name, opts.port, text), 2)
      end
      proc.sleep(0.02)
    end
  end
  return self
end

--- Whether the process still runs (and is not a zombie).
---@return boolean
function Proc:alive()
  local stat = proc.read(("/proc/%d/stat"):format(self.pid))
  return stat ~= nil and not stat:match("^%d+ %b() Z")
end

--- The pids of the process and all its descendants.
---@return integer[]
function Proc:tree()
  local pids, i = { self.pid }, 1
  while pids[i] do
    local kids = proc.read(("/proc/%d/task/%d/children"):format(pids[i], pids[i])) or ""
    for k in kids:gmatch("%d+") do pids[#pids + 1] = math.tointeger(tonumber(k)) end
    i = i + 1
  end
  return pids
end

local TICK = tonumber((proc.run("getconf CLK_TCK"))) or 100

--- Clock ticks per second, the unit of CPU times in /proc.
proc.tick = TICK

--- CPU seconds (user + system) the kernel accounts to the process and its
--- descendants so far, all threads included.
---@return number
function Proc:cpu()
  local total = 0
  for _, pid in ipairs(self:tree()) do
    local stat = proc.read(("/proc/%d/stat"):format(pid))
    if stat then
      local fields = {}
      for x in stat:match("%) (.*)$"):gmatch("%S+") do fields[#fields + 1] = x end
      total = total + (tonumber(fields[12]) + tonumber(fields[13])) / TICK
    end
  end
  return total
end

--- Memory of the process tree in KiB: `pss` counts each shared page once
--- (shared memory zones, libraries), `rss` every resident page of each,
--- `hwm` the peak resident size of each, summed.
---@return { pss: integer, rss: integer, hwm: integer }
function Proc:memory()
  local m = { pss = 0, rss = 0, hwm = 0 }
  for _, pid in ipairs(self:tree()) do
    local rollup = proc.read(("/proc/%d/smaps_rollup"):format(pid)) or ""
    local status = proc.read(("/proc/%d/status"):format(pid)) or ""
    m.pss = m.pss + (tonumber(rollup:match("\nPss:%s*(%d+) kB")) or 0)
    m.rss = m.rss + (tonumber(status:match("\nVmRSS:%s*(%d+) kB")) or 0)
    m.hwm = m.hwm + (tonumber(status:match("\nVmHWM:%s*(%d+) kB")) or 0)
  end
  return m
end

--- What the process wrote so far (after :stop, all it wrote).
---@return string
function Proc:output() return proc.read(self.log) or self.final_output or "" end

--- Stops the process: SIGTERM, then SIGKILL after `grace` seconds (default
--- 3), waiting until it is gone; removes its log, keeping its content for
--- :output(). Safe to call twice.
---@param grace? number
function Proc:stop(grace)
  if not self.pid then return end
  os.execute(("kill -TERM %d 2>/dev/null"):format(self.pid))
  local deadline = proc.now() + (grace or 3)
  while self:alive() and proc.now() < deadline do proc.sleep(0.02) end
  if self:alive() then
    for _, pid in ipairs(self:tree()) do os.execute(("kill -KILL %d 2>/dev/null"):format(pid)) end
    while self:alive() do proc.sleep(0.02) end
  end
  self.final_output = proc.read(self.log)
  os.remove(self.log)
  self.pid = nil
end

---@class bench.Member
---@field name string     what it is, for messages ("node A")
---@field proc bench.Proc
---@field port? integer   its HTTP port, when it is a sluice node

---@class bench.Group
---@field members bench.Member[]
local Group = {}
Group.__index = Group

--- Several processes measured as one server (sluice nodes and their Redis):
--- :cpu() is the sum of theirs, :stop() stops them in the order given.
---@param members bench.Member[]
---@return bench.Group
function proc.group(members)
  return setmetatable({ members = members }, Group)
end

--- CPU seconds of every member together (see Proc:cpu).
---@return number
function Group:cpu()
  local total = 0
  for _, m in ipairs(self.members) do total = total + m.proc:cpu() end
  return total
end

--- Stops every member, in the order given. Safe to call twice.
function Group:stop()
  for _, m in ipairs(self.members) do m.proc:stop() end
end

return proc
