-- Upstreams for the fetch and LLM specs: the Node mock LLM API
-- (tests/mock/upstream.mjs) and a scripted misbehaving HTTP server in Lua
-- (tests/lib/rawserver.lua), each started as a child process on a free port
-- and stopped by the spec's teardown (and, should the test process die, by
-- their own --exit-with-parent watch).
--
--     local upstream = require "upstream"
--     local mock = upstream.mock()            -- node tests/mock/upstream.mjs
--     mock:config { split = "every-byte" }    -- POST /_mock/config
--     local entry = mock:last()               -- the last entry of GET /_mock/log
--     mock:stop()
local testing = require "sluice.testing"

local upstream = {}

local shell_quote = testing.shell_quote

-- The file's content, or "" when it cannot be read.
local function read_file(path) return testing.read_file(path) or "" end

-- Starts `argv` with stdout on a pipe (its first line is {"port":N,...}) and
-- stderr in a temporary file. Returns { port, pid, pipe, err_path }.
local function spawn(argv, what)
  local err_path = os.tmpname()
  local parts = {}
  for i, a in ipairs(argv) do parts[i] = shell_quote(a) end
  -- exec: the child is our own child, so --exit-with-parent watches us.
  local pipe = assert(io.popen("exec " .. table.concat(parts, " ") .. " 2>" .. shell_quote(err_path), "r"))
  local line = pipe:read("l")
  local port = line and tonumber(line:match('"port"%s*:%s*(%d+)'))
  local pid = line and tonumber(line:match('"pid"%s*:%s*(%d+)'))
  if not port or not pid then
    pipe:close()
    local err = read_file(err_path)
    os.remove(err_path)
    error(("%s did not start: %s\n%s"):format(what, tostring(line), err), 3)
  end
  return { port = math.tointeger(port), pid = math.tointeger(pid), pipe = pipe, err_path = err_path }
end

local Proc = {}
Proc.__index = Proc

--- "http://127.0.0.1:PORT" .. path.
function Proc:url(path) return ("http://127.0.0.1:%d%s"):format(self.port, path or "") end

--- What the process wrote on stderr so far.
function Proc:stderr() return read_file(self.err_path) end

--- Stops the process (SIGTERM, then SIGKILL) and reaps it. Safe to call twice.
function Proc:stop()
  if not self.pipe then return end
  os.execute(("kill -TERM %d 2>/dev/null"):format(self.pid))
  local gone = testing.wait_for(function()
    return not io.open("/proc/" .. self.pid .. "/stat") or
      (read_file("/proc/" .. self.pid .. "/stat"):match("^%d+ %b() (%a)") == "Z")
  end, 3, 0.02)
  if not gone then os.execute(("kill -KILL %d 2>/dev/null"):format(self.pid)) end
  self.pipe:close() -- waits for the process
  self.pipe = nil
  os.remove(self.err_path)
end

------------------------------------------------------------------- the mock

local Mock = setmetatable({}, { __index = Proc })
Mock.__index = Mock

--- Starts the forward proxy (tests/mock/proxy.mjs) on a free port; its
--- `:log()` lists the requests it forwarded ({ method, target }).
function upstream.proxy()
  local log_path = os.tmpname()
  local p = spawn({ "node", testing.root .. "/tests/mock/proxy.mjs", "--log", log_path, "--exit-with-parent" },
                  "the proxy")
  p.log_path = log_path
  function p.log(self)
    local entries = {}
    for line in read_file(self.log_path):gmatch("[^\n]+") do entries[#entries + 1] = testing.json.decode(line) end
    return entries
  end
  return setmetatable(p, Proc)
end

--- Starts the Node mock LLM API on a free port.
function upstream.mock()
  local root = testing.root
  local p = spawn({ "node", root .. "/tests/mock/upstream.mjs", "--port", "0", "--exit-with-parent" },
                  "the mock upstream")
  p.client = testing.client(p.port)
  return setmetatable(p, Mock)
end

local function ok_json(res, err, what)
  assert(res, what .. ": " .. tostring(err))
  assert(res.status == 200, what .. ": HTTP " .. tostring(res.status) .. " " .. tostring(res.body))
  return assert(res:json())
end

--- Forgets the log and the knob defaults (ids restart at 1).
function Mock:reset()
  return ok_json(self.client:post("/_mock/reset", ""), nil, "mock reset")
end

--- Replaces the knob defaults: { split = "every-byte", newline = "crlf", ... }.
function Mock:config(knobs)
  local body = next(knobs or {}) and knobs or "{}"
  local res, err = self.client:post("/_mock/config", body)
  return ok_json(res, err, "mock config")
end

--- Every request the mock saw (GET /_mock/log).
function Mock:log()
  local res, err = self.client:get("/_mock/log")
  return ok_json(res, err, "mock log")
end

--- The last request the mock saw, or nil.
function Mock:last()
  local log = self:log()
  return log[#log]
end

--- Waits for the last log entry to satisfy `pred`; returns it, or nil and
--- the last entry seen.
function Mock:wait_last(pred, timeout)
  local seen
  local entry = testing.wait_for(function()
    seen = self:last()
    return seen and pred(seen) and seen
  end, timeout or 5, 0.005)
  if entry then return entry end
  return nil, seen
end

--- POSTs straight to the mock (not through sluice) and returns the response.
function Mock:post(path, body, headers)
  return self.client:post(path, body, { headers = headers, timeout = 10 })
end

------------------------------------------------------------- the raw server

--- Starts tests/lib/rawserver.lua: scripted misbehaving HTTP responses.
function upstream.raw()
  local p = spawn({ "lua5.4", testing.root .. "/tests/lib/rawserver.lua" }, "the raw test server")
  return setmetatable(p, Proc)
end

--- A port on 127.0.0.1 with nothing listening (bound, then released).
function upstream.dead_port()
  return testing.free_port()
end

------------------------------------------------------------------ helpers

--- Percent-encodes a string for a query parameter.
function upstream.urlencode(s)
  return (s:gsub("[^%w%-_%.~]", function(c) return ("%%%02X"):format(c:byte()) end))
end

--- The resident set size of a process in KiB (VmRSS), or nil.
function upstream.rss_kib(pid)
  local s = read_file("/proc/" .. pid .. "/status")
  return tonumber(s:match("VmRSS:%s*(%d+)"))
end

--- Replaces what differs between two runs of the same mock reply (ids that
--- count requests, creation times) so the runs compare equal.
function upstream.normalize(s)
  return (s:gsub("chatcmpl%-mock%-%d+", "chatcmpl-mock-N")
           :gsub("msg_mock_%d+", "msg_mock_N")
           :gsub("req_mock_%d+", "req_mock_N")
           :gsub('(created\\?":)%d+', '%10'))  -- also inside JSON-encoded JSON
end

return upstream
