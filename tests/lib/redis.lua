-- A redis-server of the test's own, on a free loopback port, with its data
-- in a temporary folder (append-only file, fsync on every write, so that a
-- restart keeps everything), and a small RESP client to drive it.
--
--     local redis = require "redis"
--     local r = redis.start()
--     r:call("CONFIG", "SET", "requirepass", "x")   -- the parsed reply
--     r:restart()                                    -- same port, same data
--     r:stop()
local socket = require "socket"
local testing = require "sluice.testing"

local redis = {}

local Redis = setmetatable({}, { __index = testing.Server })
Redis.__index = Redis

local running = {}
-- Servers a failing spec left running die with the test process.
redis._reaper = setmetatable({}, {
  __gc = function()
    for _, r in ipairs(running) do
      if not r:exit_status() then r:kill() end
      testing.remove_tempdir(r.dir)
    end
  end,
})

-- Starts redis-server in the foreground under a shell that records its pid
-- and exit status (as sluice.testing does for servers).
local function launch(r)
  local base = os.tmpname()
  r._pid_path, r._status_path, r.log_path, r._status = base .. ".pid", base .. ".status", base .. ".log", nil
  os.remove(base)
  local argv = { "redis-server", "--port", tostring(r.port), "--bind", "127.0.0.1",
                 "--dir", r.dir, "--save", "", "--appendonly", "yes", "--appendfsync", "always",
                 "--daemonize", "no", "--protected-mode", "yes" }
  local inner = ("%s </dev/null >%s 2>&1 & echo $! >%s; wait $!; echo $? >%s"):format(
    testing.command_line(argv), testing.shell_quote(r.log_path),
    testing.shell_quote(r._pid_path), testing.shell_quote(r._status_path))
  os.execute("sh -c " .. testing.shell_quote(inner) .. " </dev/null >/dev/null 2>&1 &")
  local pid = testing.wait_for(function()
    local s = testing.read_file(r._pid_path)
    return s and tonumber(s:match("^(%d+)\n"))
  end, 5)
  if not pid then error("redis-server could not be launched") end
  r.pid = math.tointeger(pid)
  local up = testing.wait_for(function()
    if r:exit_status() then return "exited" end
    local ok, reply = pcall(r.call, r, "PING")
    return ok and reply == "PONG" and "up" or nil
  end, 10)
  if up ~= "up" then
    error("redis-server did not start:\n" .. (testing.read_file(r.log_path) or ""))
  end
end

--- Starts a redis-server; raises with its log when it does not come up.
---@return table
function redis.start()
  local r = setmetatable({ port = testing.free_port(), dir = testing.tempdir() }, Redis)
  running[#running + 1] = r
  launch(r)
  return r
end

--- "redis://127.0.0.1:PORT".
function Redis:url() return ("redis://127.0.0.1:%d"):format(self.port) end

--- Stops the server (SIGTERM: it writes its data and exits).
function Redis:stop(timeout)
  testing.Server.stop(self, timeout or 10)
end

--- Starts it again on the same port, with the data it had.
function Redis:restart()
  launch(self)
end

-- Reads one RESP reply from a socket.
local function read_reply(c)
  local line, err = c:receive("*l")
  if not line then error("redis: " .. tostring(err)) end
  local kind, rest = line:sub(1, 1), line:sub(2)
  if kind == "+" then return rest end
  if kind == "-" then return nil, rest end
  if kind == ":" then return math.tointeger(tonumber(rest)) end
  if kind == "$" then
    local n = tonumber(rest)
    if n < 0 then return false end
    local data = assert(c:receive(n + 2))
    return data:sub(1, n)
  end
  if kind == "*" then
    local n = tonumber(rest)
    if n < 0 then return false end
    local list = {}
    for i = 1, n do list[i] = (read_reply(c)) end
    return list
  end
  error("redis: unreadable reply " .. line)
end

--- Runs one command on a fresh connection: its reply (a string, integer,
--- list, or false for nil), or nil and the error reply. `self.password`
--- is sent first when set.
function Redis:call(...)
  local c = assert(socket.connect("127.0.0.1", self.port))
  c:settimeout(5)
  local function send(args)
    local parts = { "*" .. #args .. "\r\n" }
    for _, a in ipairs(args) do
      a = tostring(a)
      parts[#parts + 1] = "$" .. #a .. "\r\n" .. a .. "\r\n"
    end
    assert(c:send(table.concat(parts)))
  end
  if self.password then
    send { "AUTH", self.password }
    read_reply(c)
  end
  send { ... }
  local reply, err = read_reply(c)
  c:close()
  return reply, err
end

--- Closes the Redis connections of the sluice process with this pid (its
--- workers name them "sluice-PID-wN-cmd|sub"); returns how many.
function Redis:kill_clients_of(pid)
  local list = assert(self:call("CLIENT", "LIST"))
  local n = 0
  for line in list:gmatch("[^\n]+") do
    local id = line:match("^id=(%d+)")
    if id and line:find(" name=sluice%-" .. pid .. "%-") then
      n = n + (self:call("CLIENT", "KILL", "ID", id) or 0)
    end
  end
  return n
end

return redis
