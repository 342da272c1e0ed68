--- sluice.testing: start a sluice server on a free port and talk raw HTTP and
--- Server-Sent Events to it, for integration tests of sluice apps.
---
---     local testing = require "sluice.testing"
---     local server = testing.start("apps/hello")
---     local client = testing.client(server)
---     local res = assert(client:get("/hello/world"))
---     assert(res.status == 200 and res.body == "hello world")
---     local stream = assert(client:sse("/clock"))
---     local ev = assert(stream:next_event(3))    -- { event = "tick", data = ..., id = ... }
---     stream = assert(stream:reconnect())         -- again, with the last id seen as Last-Event-ID
---     stream:close()
---     server:stop()
---
--- docs/testing.md walks through it for app authors.
---
--- For many subscribers at once, `testing.crowd(server, n, opts)` opens n
--- event streams and reads them together without blocking (see Crowd).
---
--- Everything that waits takes a timeout in seconds (default 5) and never
--- blocks longer. Runtime failures return `nil, err` ("timeout", "closed" or
--- a socket error); misuse raises an error.
---
--- Needs LuaSocket and dkjson.
local socket = require "socket"
local json = require "dkjson"

local testing = {}

--- The JSON codec used by the helpers (dkjson): `encode(value)`, `decode(text)`.
testing.json = json

--- The repository root: `$SLUICE_ROOT`, or "." when unset.
testing.root = os.getenv("SLUICE_ROOT") or "."

local HOST = "127.0.0.1"
local DEFAULT_TIMEOUT = 5

local now = socket.gettime

--- Seconds since an arbitrary epoch, with sub-millisecond resolution.
---@return number
function testing.now() return now() end

--- Sleeps for `s` seconds.
---@param s number
function testing.sleep(s) socket.sleep(s) end

--- Calls `fn` every `interval` seconds (default 0.02) until it returns a true
--- value, and returns what it returned; `nil, "timeout"` after `timeout`
--- seconds (default 5). `fn` is always called at least once.
---@param fn fun(): any
---@param timeout? number
---@param interval? number
---@return any ...
function testing.wait_for(fn, timeout, interval)
  local deadline = now() + (timeout or DEFAULT_TIMEOUT)
  while true do
    local r = table.pack(fn())
    if r[1] then return table.unpack(r, 1, r.n) end
    if now() >= deadline then return nil, "timeout" end
    socket.sleep(interval or 0.02)
  end
end

-- ------------------------------------------------------------ small helpers

local function shell_quote(s)
  return "'" .. (tostring(s):gsub("'", "'\\''")) .. "'"
end

--- `s` (a string, or anything tostring takes) quoted as one word of a
--- POSIX shell command line: `it's` becomes `'it'\''s'`.
---@param s any
---@return string
function testing.shell_quote(s) return shell_quote(s) end

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

-- "env -u 'K' 'K=V' ..." prefix for a command, or "" when env is empty; a
-- false value removes the variable from the inherited environment.
local function env_prefix(env)
  local unset, parts = {}, {}
  for k, v in pairs(env or {}) do
    if v == false then
      unset[#unset + 1] = "-u " .. shell_quote(k)
    else
      parts[#parts + 1] = shell_quote(k .. "=" .. tostring(v))
    end
  end
  if #parts + #unset == 0 then return "" end
  table.sort(unset)
  table.sort(parts)
  table.move(parts, 1, #parts, #unset + 1, unset)
  return "env " .. table.concat(unset, " ") .. " "
end

local function command_line(argv)
  local parts = {}
  for i, a in ipairs(argv) do parts[i] = shell_quote(a) end
  return table.concat(parts, " ")
end

--- `argv` as one shell command line, each word quoted by testing.shell_quote.
---@param argv any[]
---@return string
function testing.command_line(argv) return command_line(argv) end

local function default_bin()
  return os.getenv("SLUICE_BIN") or "build/sluice"
end

-- ------------------------------------------------------------------- files

--- The whole content of a file, or nil when it cannot be read.
---@param path string
---@return string?
function testing.read_file(path) return read_file(path) end

--- Writes `content` to `path` (created or truncated) in one write, then
--- closes it: what an editor's plain save does. Raises on failure.
---@param path string
---@param content string
function testing.write_file(path, content)
  local f = assert(io.open(path, "wb"))
  assert(f:write(content))
  assert(f:close())
end

-- Temporary directories made by testing.tempdir(), removed at exit.
local tempdirs = {}

--- A new empty directory under $TMPDIR (or /tmp), removed with everything
--- in it when the test process exits (or by testing.remove_tempdir).
---@return string path
function testing.tempdir()
  local p = assert(io.popen("mktemp -d -t sluice-test." .. ("X"):rep(8) .. " 2>/dev/null"))
  local path = p:read("l")
  p:close()
  if not path or path == "" then error("sluice.testing: mktemp -d failed") end
  tempdirs[path] = true
  return path
end

--- Removes a directory made by testing.tempdir() and everything in it.
---@param path string
function testing.remove_tempdir(path)
  if not tempdirs[path] then error("sluice.testing: not a directory made by testing.tempdir: " .. tostring(path), 2) end
  os.execute("rm -rf " .. shell_quote(path))
  tempdirs[path] = nil
end

--- Copies the contents of directory `src` into directory `dst` (created
--- when missing). Raises on failure.
---@param src string
---@param dst string
function testing.copy_tree(src, dst)
  local ok = os.execute(("mkdir -p %s && cp -R %s/. %s"):format(shell_quote(dst), shell_quote(src),
                                                               shell_quote(dst)))
  if not ok then error(("sluice.testing: cannot copy %s to %s"):format(src, dst), 2) end
end

--- A port on 127.0.0.1 that was free a moment ago.
---@return integer
function testing.free_port()
  local s = assert(socket.bind(HOST, 0))
  local _, port = s:getsockname()
  s:close()
  return assert(math.tointeger(tonumber(port)))
end

-- ------------------------------------------------------------------ servers

---@class sluice.testing.Server
---@field port integer        the port the server listens on (127.0.0.1)
---@field pid integer         the server's process id
---@field app_dir string
---@field log_path string     file receiving the server's stdout and stderr
local Server = {}
Server.__index = Server

--- The methods of the servers testing.start returns, for helpers that run
--- other background processes the same way: exit_status, wait_exit,
--- signal, kill and stop need only the fields `pid` and `_status_path` (a
--- file that receives the exit status followed by a newline once the
--- process has ended; `_status` caches it).
testing.Server = Server

-- Servers still running when the test process exits are killed, and every
-- temporary file is removed (Lua runs this finalizer when it closes).
local started = {}
testing._reaper = setmetatable({}, {
  __gc = function()
    for _, srv in ipairs(started) do
      if srv.pid and not srv:exit_status() then srv:kill() end
      for _, p in ipairs { srv.log_path, srv._pid_path, srv._status_path, srv._base } do
        os.remove(p)
      end
    end
    for path in pairs(tempdirs) do os.execute("rm -rf " .. shell_quote(path)) end
  end,
})

---@class sluice.testing.StartOptions
---@field args? string[]             extra command-line arguments, e.g. {"--workers", "2"}
---@field env? table<string, any>    extra environment variables (false: remove it)
---@field bin? string                the binary (default $SLUICE_BIN or "build/sluice")
---@field port? integer              listen on this port instead of a free one
---@field port_via? "flag"|"env"     pass the port as --port (default) or as $PORT
---@field startup_timeout? number    seconds to wait for the port to accept (default 5)

local function launch(app_dir, opts, port)
  local base = os.tmpname()
  local srv = setmetatable({
    port = port, app_dir = app_dir, bin = opts.bin or default_bin(),
    log_path = base .. ".log", _pid_path = base .. ".pid",
    _status_path = base .. ".status", _base = base,
  }, Server)
  started[#started + 1] = srv

  local argv = { srv.bin, "--host", HOST }
  local env = {}
  for k, v in pairs(opts.env or {}) do env[k] = v end
  if (opts.port_via or "flag") == "env" then
    env.PORT = port
  else
    argv[#argv + 1] = "--port"
    argv[#argv + 1] = tostring(port)
  end
  for _, a in ipairs(opts.args or {}) do argv[#argv + 1] = a end
  argv[#argv + 1] = app_dir

  -- The wrapper shell records the pid, waits, and records the exit status;
  -- it owns none of our stdio, so a leaked server cannot hold a pipe open.
  local inner = ("%s%s </dev/null >%s 2>&1 & echo $! >%s; wait $!; echo $? >%s"):format(
    env_prefix(env), command_line(argv), shell_quote(srv.log_path),
    shell_quote(srv._pid_path), shell_quote(srv._status_path))
  os.execute("sh -c " .. shell_quote(inner) .. " </dev/null >/dev/null 2>&1 &")

  local pid = testing.wait_for(function()
    local s = read_file(srv._pid_path)
    return s and tonumber(s:match("^(%d+)\n"))
  end, 5)
  if not pid then error("sluice.testing: could not launch " .. srv.bin) end
  srv.pid = math.tointeger(pid)
  return srv
end

local function can_connect(port)
  local c = socket.tcp()
  c:settimeout(0.25)
  local ok = c:connect(HOST, port)
  c:close()
  return ok ~= nil
end

--- Starts `sluice --host 127.0.0.1 --port PORT [args] APP_DIR` in the
--- background, on a free port unless `opts.port` is given, and waits until
--- the port accepts connections. Raises an error carrying the server's log
--- when it exits or does not listen in time.
---@param app_dir string
---@param opts? sluice.testing.StartOptions
---@return sluice.testing.Server
function testing.start(app_dir, opts)
  opts = opts or {}
  local attempts = opts.port and 1 or 3
  local last_log, srv
  for _ = 1, attempts do
    srv = launch(app_dir, opts, opts.port or testing.free_port())
    local state = testing.wait_for(function()
      if srv:exit_status() then return "exited" end
      if can_connect(srv.port) then
        -- a port taken by someone else also accepts: make sure we are alive
        return srv:exit_status() and "exited" or "up"
      end
    end, opts.startup_timeout or 5)
    if state == "up" then return srv end
    srv:stop(1)
    last_log = srv:log()
    -- Another test process may have taken the free port in between: retry,
    -- unless the failure was something else.
    if state ~= "exited" or not last_log:lower():find("in use", 1, true) then break end
  end
  error(("sluice did not start (%s on port %d, exit status %s)\n--- server log ---\n%s"):format(
    app_dir, srv.port, tostring(srv:exit_status()), last_log), 2)
end

--- "http://127.0.0.1:PORT" .. path.
---@param path? string
---@return string
function Server:url(path)
  return ("http://%s:%d%s"):format(HOST, self.port, path or "/")
end

--- Everything the server wrote to stdout and stderr so far.
---@return string
function Server:log()
  return read_file(self.log_path) or ""
end

--- Sends a signal, by name without "SIG": "TERM", "INT", "HUP", "KILL".
---@param name string
function Server:signal(name)
  if not self:exit_status() then
    os.execute(("kill -%s %d 2>/dev/null"):format(name, self.pid))
  end
end

--- The server's resident memory now, in KiB (VmRSS in /proc/PID/status);
--- nil once the process is gone.
---@return integer?
function Server:rss_kb()
  local status = read_file(("/proc/%d/status"):format(self.pid))
  local kb = status and status:match("\nVmRSS:%s*(%d+) kB")
  return kb and math.tointeger(tonumber(kb))
end

--- The exit status once the process has ended (128 + n when killed by
--- signal n), nil while it runs.
---@return integer?
function Server:exit_status()
  if self._status then return self._status end
  local s = read_file(self._status_path)
  local n = s and s:match("^(%d+)\n")
  if n then self._status = math.tointeger(tonumber(n)) end
  return self._status
end

--- Waits up to `timeout` seconds (default 5) for the process to end.
---@param timeout? number
---@return integer? status  nil when still running
function Server:wait_exit(timeout)
  return (testing.wait_for(function() return self:exit_status() end, timeout or DEFAULT_TIMEOUT, 0.01))
end

--- SIGTERM, then waits up to `timeout` seconds (default 5) for the exit; a
--- server still running then is killed with SIGKILL. Returns the exit status
--- and the seconds it took to exit after SIGTERM. Safe to call twice.
---@param timeout? number
---@return integer? status
---@return number elapsed
function Server:stop(timeout)
  if self:exit_status() then return self._status, 0 end
  local t0 = now()
  self:signal("TERM")
  local status = self:wait_exit(timeout or DEFAULT_TIMEOUT)
  local elapsed = now() - t0
  if not status then
    self:kill()
    status = self:wait_exit(5)
  end
  return status, elapsed
end

--- SIGKILL, and waits (up to 5 s) for the process to be gone.
function Server:kill()
  self:signal("KILL")
  self:wait_exit(5)
end

---@class sluice.testing.RunResult
---@field status integer     exit status (124 when the timeout stopped it)
---@field stdout string
---@field stderr string

--- Runs the binary to completion (at most `opts.timeout` seconds, default
--- 10) and returns its exit status and output. For CLI tests.
---@param args string[]
---@param opts? { bin?: string, env?: table<string, any>, timeout?: number }
---@return sluice.testing.RunResult
function testing.run(args, opts)
  opts = opts or {}
  local argv = { opts.bin or default_bin() }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  local base = os.tmpname()
  local cmd = ("%stimeout -k 2 %s %s </dev/null >%s 2>%s"):format(
    env_prefix(opts.env), tostring(opts.timeout or 10), command_line(argv),
    shell_quote(base .. ".out"), shell_quote(base .. ".err"))
  local _, how, code = os.execute(cmd)
  local result = {
    status = how == "exit" and code or 128 + code,
    stdout = read_file(base .. ".out") or "",
    stderr = read_file(base .. ".err") or "",
  }
  os.remove(base .. ".out"); os.remove(base .. ".err"); os.remove(base)
  return result
end

-- ------------------------------------------------------------- raw requests

---@class sluice.testing.RequestOptions
---@field headers? table<string, string|string[]>  a list value repeats the header
---@field body? string
---@field timeout? number

local function find_header(headers, name)
  for k, v in pairs(headers or {}) do
    if k:lower() == name then return v end
  end
end

--- The bytes of one HTTP/1.1 request: a Host header unless given, and a
--- Content-Length for `body` unless Content-Length or Transfer-Encoding is
--- given. Concatenate several to pipeline them.
---@param method string
---@param path string
---@param opts? sluice.testing.RequestOptions
---@return string
function testing.request_bytes(method, path, opts)
  opts = opts or {}
  local headers = opts.headers or {}
  local out = { ("%s %s HTTP/1.1\r\n"):format(method, path) }
  if not find_header(headers, "host") then out[#out + 1] = "Host: " .. HOST .. "\r\n" end
  local names = {}
  for k in pairs(headers) do names[#names + 1] = k end
  table.sort(names)
  for _, k in ipairs(names) do
    local v = headers[k]
    for _, one in ipairs(type(v) == "table" and v or { v }) do
      out[#out + 1] = ("%s: %s\r\n"):format(k, tostring(one))
    end
  end
  if opts.body and not find_header(headers, "content-length")
     and not find_header(headers, "transfer-encoding") then
    out[#out + 1] = ("Content-Length: %d\r\n"):format(#opts.body)
  end
  out[#out + 1] = "\r\n"
  out[#out + 1] = opts.body or ""
  return table.concat(out)
end

---@class sluice.testing.Response
---@field status integer
---@field reason string
---@field version string                 "HTTP/1.1"
---@field headers table<string, string>  lower-case names; repeated headers joined with ", "
---@field header_list string[][]         every header line in order, as { name, value }
---@field body string
---@field raw_head string                the head bytes exactly as received, blank line included
local Response = {}
Response.__index = Response

--- The body decoded as JSON (nil and an error message when it is not JSON).
---@return any
function Response:json()
  local value, _, err = json.decode(self.body, 1, nil)
  if err then return nil, err end
  return value
end

local function parse_head(raw)
  local status_line, rest = raw:match("^([^\r\n]*)\r\n(.*)$")
  if not status_line then status_line, rest = raw, "" end
  local version, status, reason = status_line:match("^(HTTP/%d%.%d) (%d%d%d) ?(.*)$")
  if not version then return nil end
  local res = setmetatable({
    version = version, status = math.tointeger(tonumber(status)), reason = reason,
    headers = {}, header_list = {}, raw_head = raw .. "\r\n\r\n",
  }, Response)
  for line in (rest .. "\r\n"):gmatch("(.-)\r\n") do
    if line ~= "" then
      local name, value = line:match("^([^:%s]+):[ \t]*(.-)[ \t]*$")
      if not name then return nil end
      name = name:lower()
      res.header_list[#res.header_list + 1] = { name, value }
      res.headers[name] = res.headers[name] and (res.headers[name] .. ", " .. value) or value
    end
  end
  return res
end

-- -------------------------------------------------------------- connections

---@class sluice.testing.Connection
---@field port integer
---@field eof? string  why reading ended: "closed" (the peer closed) or a socket error
local Conn = {}
Conn.__index = Conn

--- Opens a TCP connection to 127.0.0.1:port (a port number or a server).
---@param target integer|sluice.testing.Server
---@param timeout? number
---@return sluice.testing.Connection? conn
---@return string? err
function testing.connect(target, timeout)
  local port = type(target) == "table" and target.port or target
  local sock = socket.tcp()
  sock:settimeout(timeout or DEFAULT_TIMEOUT)
  local ok, err = sock:connect(HOST, port)
  if not ok then
    sock:close()
    return nil, err
  end
  sock:setoption("tcp-nodelay", true)
  sock:settimeout(0)
  return setmetatable({ sock = sock, port = port, buf = "" }, Conn)
end

--- Sends all of `data`. Returns true, or nil and an error.
---@param data string
---@param timeout? number
---@return true? ok
---@return string? err
function Conn:send(data, timeout)
  local deadline = now() + (timeout or DEFAULT_TIMEOUT)
  local i = 1
  while i <= #data do
    local last, err, partial = self.sock:send(data, i)
    if last then
      i = last + 1
    else
      i = (partial or i - 1) + 1
      if err ~= "timeout" then return nil, err end
      local left = deadline - now()
      if left <= 0 then return nil, "timeout" end
      socket.select(nil, { self.sock }, math.min(left, 0.5))
    end
  end
  return true
end

-- Reads whatever arrives next into self.buf. true, or nil and
-- "timeout" / "closed" / a socket error.
function Conn:_fill(deadline)
  if self.eof then return nil, self.eof end
  while true do
    local data, err, partial = self.sock:receive(65536)
    local chunk = data or partial
    if err and err ~= "timeout" then self.eof = err end
    if chunk and #chunk > 0 then
      self.buf = self.buf .. chunk
      return true
    end
    if self.eof then return nil, self.eof end
    local left = deadline - now()
    if left <= 0 then return nil, "timeout" end
    socket.select({ self.sock }, nil, math.min(left, 0.5))
  end
end

--- Reads exactly `n` bytes. On failure returns nil, the error, and leaves
--- what did arrive buffered.
---@param n integer
---@param timeout? number
---@return string? bytes
---@return string? err
function Conn:receive_bytes(n, timeout)
  local deadline = now() + (timeout or DEFAULT_TIMEOUT)
  while #self.buf < n do
    local ok, err = self:_fill(deadline)
    if not ok then return nil, err end
  end
  local out = self.buf:sub(1, n)
  self.buf = self.buf:sub(n + 1)
  return out
end

--- Reads up to and including the first occurrence of `needle` (a plain
--- string, or a Lua pattern when `is_pattern` is true).
---@param needle string
---@param timeout? number
---@param is_pattern? boolean
---@return string? bytes
---@return string? err
function Conn:receive_until(needle, timeout, is_pattern)
  local deadline = now() + (timeout or DEFAULT_TIMEOUT)
  while true do
    local _, e = self.buf:find(needle, 1, not is_pattern)
    if e then
      local out = self.buf:sub(1, e)
      self.buf = self.buf:sub(e + 1)
      return out
    end
    local ok, err = self:_fill(deadline)
    if not ok then return nil, err end
  end
end

--- Returns the bytes already received or, when there are none, the next
--- bytes to arrive.
---@param timeout? number
---@return string? bytes
---@return string? err
function Conn:read_raw(timeout)
  if #self.buf == 0 then
    local ok, err = self:_fill(now() + (timeout or DEFAULT_TIMEOUT))
    if not ok then return nil, err end
  end
  local out = self.buf
  self.buf = ""
  return out
end

--- True once the peer has closed the connection (bytes arriving meanwhile
--- are kept for the next read); false after `timeout` seconds.
---@param timeout? number
---@return boolean closed
---@return string? how  "closed" for an orderly close, else the socket error
function Conn:closed(timeout)
  local deadline = now() + (timeout or DEFAULT_TIMEOUT)
  while true do
    local ok, err = self:_fill(deadline)
    if not ok then
      if err == "timeout" then return false end
      return true, err
    end
  end
end

--- Closes the connection.
function Conn:close()
  self.sock:close()
  self.eof = self.eof or "closed"
end

-- Body decoding: Content-Length, chunked, or until the connection closes.
local Body = {}
Body.__index = Body

local function body_reader(conn, res, method)
  local st = res.status
  local mode, remaining = "close", nil
  local te, cl = res.headers["transfer-encoding"], res.headers["content-length"]
  if method == "HEAD" or (st >= 100 and st < 200) or st == 204 or st == 304 then
    mode = "none"
  elseif te and te:lower():find("chunked", 1, true) then
    mode = "chunked"
  elseif cl then
    mode, remaining = "length", tonumber(cl)
    if not remaining then mode = "bad" end
  end
  return setmetatable({ conn = conn, mode = mode, remaining = remaining, state = "size" }, Body)
end

-- Takes whatever body bytes the connection's buffer holds.
function Body:_decode()
  local c = self.conn
  if self.mode == "none" then
    self.done = true
    return ""
  elseif self.mode == "bad" then
    self.err = "bad Content-Length"
    return ""
  elseif self.mode == "close" then
    local b = c.buf
    c.buf = ""
    return b
  elseif self.mode == "length" then
    local b = c.buf:sub(1, self.remaining)
    c.buf = c.buf:sub(#b + 1)
    self.remaining = self.remaining - #b
    if self.remaining == 0 then self.done = true end
    return b
  end
  local out = {}
  while not self.done do
    if self.state == "size" or self.state == "trailer" then
      local e = c.buf:find("\r\n", 1, true)
      if not e then break end
      local line = c.buf:sub(1, e - 1)
      c.buf = c.buf:sub(e + 2)
      if self.state == "trailer" then
        if line == "" then self.done = true end
      else
        local n = tonumber(line:match("^%s*(%x+)") or "", 16)
        if not n then
          self.err = "malformed chunk size: " .. line
          break
        end
        if n == 0 then self.state = "trailer" else self.state, self.remaining = "data", n end
      end
    elseif self.state == "data" then
      if #c.buf == 0 then break end
      local b = c.buf:sub(1, self.remaining)
      c.buf = c.buf:sub(#b + 1)
      self.remaining = self.remaining - #b
      out[#out + 1] = b
      if self.remaining == 0 then self.state = "crlf" end
    else -- "crlf" after a chunk's data
      if #c.buf < 2 then break end
      if c.buf:sub(1, 2) ~= "\r\n" then
        self.err = "chunk not followed by CRLF"
        break
      end
      c.buf = c.buf:sub(3)
      self.state = "size"
    end
  end
  return table.concat(out)
end

-- The next body bytes; nil and "end" when the body is complete (for a
-- close-delimited body: the peer closed), else nil and "timeout",
-- "closed" (cut short) or a socket error.
function Body:next(deadline)
  while true do
    if self.done then return nil, "end" end
    local b = self:_decode()
    if self.err then return nil, self.err end
    if #b > 0 then return b end
    if self.done then return nil, "end" end
    local ok, err = self.conn:_fill(deadline)
    if not ok then
      if err == "closed" and self.mode == "close" then
        self.done = true
        return nil, "end"
      end
      return nil, err
    end
  end
end

function Body:read_all(deadline)
  local parts = {}
  while true do
    local b, err = self:next(deadline)
    if not b then
      if err == "end" then return table.concat(parts) end
      return nil, err, table.concat(parts)
    end
    parts[#parts + 1] = b
  end
end

function Conn:_read_head(deadline)
  while true do
    local s = self.buf:find("\r\n\r\n", 1, true)
    if s then
      local head = self.buf:sub(1, s - 1)
      self.buf = self.buf:sub(s + 4)
      local res = parse_head(head)
      if not res then return nil, "malformed response head: " .. head end
      return res
    end
    local ok, err = self:_fill(deadline)
    if not ok then return nil, err end
  end
end

--- Reads exactly one response: head and body (Content-Length, chunked, or
--- until close; none for HEAD, 1xx, 204 and 304). Pass the request's method
--- as `opts.method` when it was HEAD. A 1xx response is returned as it is.
---@param opts? { method?: string, timeout?: number }
---@return sluice.testing.Response? res
---@return string? err
function Conn:receive_response(opts)
  opts = opts or {}
  local deadline = now() + (opts.timeout or DEFAULT_TIMEOUT)
  local res, err = self:_read_head(deadline)
  if not res then return nil, err end
  local body, berr = body_reader(self, res, opts.method):read_all(deadline)
  if not body then return nil, "body: " .. tostring(berr) end
  res.body = body
  return res
end

--- Sends one request on this connection and reads its response (interim
--- 1xx responses are skipped). Use it for keep-alive.
---@param method string
---@param path string
---@param opts? sluice.testing.RequestOptions
---@return sluice.testing.Response? res
---@return string? err
function Conn:request(method, path, opts)
  opts = opts or {}
  local sent, serr = self:send(testing.request_bytes(method, path, opts), opts.timeout)
  -- When sending failed the server may still have answered (413, 431...).
  while true do
    local res, err = self:receive_response { method = method, timeout = opts.timeout }
    if not res then return nil, sent and err or (serr .. "; " .. tostring(err)) end
    if res.status >= 200 or res.status == 101 then return res end
  end
end

-- ------------------------------------------------------------------ clients

---@class sluice.testing.Client
---@field port integer
local Client = {}
Client.__index = Client

--- A client for the server (or port) on 127.0.0.1.
---@param target integer|sluice.testing.Server
---@return sluice.testing.Client
function testing.client(target)
  local port = type(target) == "table" and target.port or target
  return setmetatable({ port = assert(math.tointeger(port), "port expected") }, Client)
end

--- A new raw connection to the server (see testing.connect).
---@param timeout? number
---@return sluice.testing.Connection? conn
---@return string? err
function Client:connect(timeout)
  return testing.connect(self.port, timeout)
end

--- One request on a new connection, closed afterwards.
---@param method string
---@param path string
---@param opts? sluice.testing.RequestOptions
---@return sluice.testing.Response? res
---@return string? err
function Client:request(method, path, opts)
  opts = opts or {}
  local conn, err = testing.connect(self.port, opts.timeout)
  if not conn then return nil, err end
  local res, rerr = conn:request(method, path, opts)
  conn:close()
  return res, rerr
end

---@param path string
---@param opts? sluice.testing.RequestOptions
---@return sluice.testing.Response? res
---@return string? err
function Client:get(path, opts) return self:request("GET", path, opts) end

---@param path string
---@param opts? sluice.testing.RequestOptions
---@return sluice.testing.Response? res
---@return string? err
function Client:head(path, opts) return self:request("HEAD", path, opts) end

--- POST; a table body is sent as JSON (Content-Type: application/json).
---@param path string
---@param body string|table
---@param opts? sluice.testing.RequestOptions
---@return sluice.testing.Response? res
---@return string? err
function Client:post(path, body, opts)
  opts = opts or {}
  local o = { timeout = opts.timeout, headers = {}, body = body }
  for k, v in pairs(opts.headers or {}) do o.headers[k] = v end
  if type(body) == "table" then
    o.body = json.encode(body)
    if not find_header(o.headers, "content-type") then
      o.headers["Content-Type"] = "application/json"
    end
  end
  return self:request("POST", path, o)
end

-- ------------------------------------------------------------------ streams

---@class sluice.testing.Event
---@field event string   the event type ("message" when the stream gave none)
---@field data string    data lines joined with "\n"
---@field id string      the last event ID after this event ("" when none yet)
---@field retry? integer a retry given in this event's block

---@class sluice.testing.Stream
---@field status integer
---@field reason string
---@field headers table<string, string>
---@field raw_head string
---@field retry? integer      the last valid retry field seen
---@field comments integer    comment lines seen by next_event (heartbeats included)
---@field ended boolean       the body has ended
---@field end_reason? string  "closed" when the server ended it cleanly, else the error
local Stream = {}
Stream.__index = Stream

---@class sluice.testing.SseOptions
---@field method? string                 default GET
---@field body? string|table             a table is sent as JSON
---@field headers? table<string, string>
---@field last_event_id? string          sent as Last-Event-ID (when not "")
---@field timeout? number                seconds to connect and to read the head (default 5)

--- Opens an event stream: GET (or `opts.method`) with `Accept:
--- text/event-stream`, and reads the response head. `opts.body` is sent as
--- the request body; a table body as JSON (Content-Type: application/json),
--- for streams opened by a POST such as OpenAI's chat completions.
--- `opts.last_event_id` resumes a stream as a reconnecting browser does
--- (see also Stream:reconnect). Non-2xx answers are returned as streams
--- too: check `stream.status` (their body is read as it is delimited:
--- Content-Length, chunked, or the connection's end).
---@param path string
---@param opts? sluice.testing.SseOptions
---@return sluice.testing.Stream? stream
---@return string? err
function Client:sse(path, opts)
  opts = opts or {}
  local method = opts.method or "GET"
  local conn, err = testing.connect(self.port, opts.timeout)
  if not conn then return nil, err end
  local headers = { Accept = "text/event-stream" }
  for k, v in pairs(opts.headers or {}) do
    if k:lower() == "accept" then headers.Accept = nil end
    headers[k] = v
  end
  if opts.last_event_id and opts.last_event_id ~= "" then
    for k in pairs(headers) do
      if k:lower() == "last-event-id" then headers[k] = nil end
    end
    headers["Last-Event-ID"] = opts.last_event_id
  end
  local body = opts.body
  if type(body) == "table" then
    body = json.encode(body)
    if not find_header(headers, "content-type") then headers["Content-Type"] = "application/json" end
  end
  local ok, serr = conn:send(testing.request_bytes(method, path, { headers = headers, body = body }),
                             opts.timeout)
  if not ok then conn:close(); return nil, serr end
  local res, herr = conn:_read_head(now() + (opts.timeout or DEFAULT_TIMEOUT))
  if not res then conn:close(); return nil, herr end
  return setmetatable({
    conn = conn, status = res.status, reason = res.reason, headers = res.headers,
    raw_head = res.raw_head, comments = 0, ended = false,
    _body_reader = body_reader(conn, res, method), _buf = "", _data = {}, _last_id = "",
    _client = self, _path = path, _opts = opts,
  }, Stream)
end

-- Appends the next body bytes to self._buf. true, or nil and "closed"
-- (the body ended) / "timeout" / an error.
function Stream:_pump(deadline)
  if self.ended then return nil, "closed" end
  local b, err = self._body_reader:next(deadline)
  if b then
    self._buf = self._buf .. b
    return true
  end
  if err == "timeout" then return nil, "timeout" end
  self.ended = true
  self.end_reason = (err == "end") and "closed" or err
  return nil, "closed"
end

--- The body bytes already received or, when there are none, the next bytes
--- to arrive (byte-exact, for checking frames).
---@param timeout? number
---@return string? bytes
---@return string? err "timeout" or "closed"
function Stream:read_raw(timeout)
  if #self._buf == 0 then
    local ok, err = self:_pump(now() + (timeout or DEFAULT_TIMEOUT))
    if not ok then return nil, err end
  end
  local out = self._buf
  self._buf = ""
  return out
end

--- Body bytes up to and including the first occurrence of `str`.
---@param str string
---@param timeout? number
---@return string? bytes
---@return string? err "timeout" or "closed" (what arrived stays buffered)
function Stream:raw_until(str, timeout)
  local deadline = now() + (timeout or DEFAULT_TIMEOUT)
  while true do
    local _, e = self._buf:find(str, 1, true)
    if e then
      local out = self._buf:sub(1, e)
      self._buf = self._buf:sub(e + 1)
      return out
    end
    local ok, err = self:_pump(deadline)
    if not ok then return nil, err end
  end
end

--- Every body byte until the server ends the stream.
---@param timeout? number
---@return string? bytes
---@return string? err "timeout" (what arrived stays buffered)
function Stream:read_all(timeout)
  local deadline = now() + (timeout or DEFAULT_TIMEOUT)
  while true do
    local ok, err = self:_pump(deadline)
    if not ok then
      if err ~= "closed" then return nil, err end
      local out = self._buf
      self._buf = ""
      return out
    end
  end
end

-- One line of the event stream; returns an event when the line dispatches one.
function Stream:_line(line)
  if line == "" then
    local data, event, retry = self._data, self._event, self._retry
    self._data, self._event, self._retry = {}, nil, nil
    if #data == 0 then return nil end
    return {
      event = (event and event ~= "") and event or "message",
      data = table.concat(data, "\n"), id = self._last_id, retry = retry,
    }
  end
  if line:byte(1) == 58 then -- ":"
    self.comments = self.comments + 1
    return nil
  end
  local field, value = line:match("^([^:]*):(.*)$")
  if not field then
    field, value = line, ""
  elseif value:byte(1) == 32 then
    value = value:sub(2)
  end
  if field == "event" then
    self._event = value
  elseif field == "data" then
    self._data[#self._data + 1] = value
  elseif field == "id" then
    if not value:find("\0", 1, true) then
      self._last_id = value
      self._id_seen = true
    end
  elseif field == "retry" then
    if value:match("^%d+$") then
      self.retry = math.tointeger(tonumber(value))
      self._retry = self.retry
    end
  end
  return nil
end

-- Parses complete lines from the buffer (lines end in CRLF, LF or CR).
function Stream:_parse()
  while true do
    local buf = self._buf
    if self._skip_lf and #buf > 0 then
      if buf:byte(1) == 10 then buf = buf:sub(2) end
      self._skip_lf = false
    end
    local s = buf:find("[\r\n]")
    if not s then
      self._buf = buf
      return nil
    end
    local e = s
    if buf:byte(s) == 13 then
      if s == #buf then self._skip_lf = true
      elseif buf:byte(s + 1) == 10 then e = s + 1 end
    end
    local line = buf:sub(1, s - 1)
    self._buf = buf:sub(e + 1)
    if not self._started then
      self._started = true
      line = line:gsub("^\239\187\191", "") -- a leading BOM is ignored
    end
    local ev = self:_line(line)
    if ev then return ev end
  end
end

--- The next dispatched event, parsed by the WHATWG rules (comments skipped,
--- events without data not dispatched).
---@param timeout? number
---@return sluice.testing.Event? event
---@return string? err "timeout" or "closed"
function Stream:next_event(timeout)
  local deadline = now() + (timeout or DEFAULT_TIMEOUT)
  while true do
    local ev = self:_parse()
    if ev then return ev end
    local ok, err = self:_pump(deadline)
    if not ok then return nil, err end
  end
end

--- The last event ID seen, as a browser would send it in Last-Event-ID.
---@return string
function Stream:last_event_id() return self._last_id end

--- Closes the connection (the client goes away).
function Stream:close()
  self.conn:close()
end

--- Opens the stream again as a browser's EventSource does after a drop:
--- this one is closed, and a new request for the same path, with the same
--- options, sends the last event ID seen as Last-Event-ID (when no event
--- carried an id, the one this stream was opened with, if any; after an
--- empty `id:`, none, as a browser does).
---@param timeout? number seconds to connect and to read the head (default 5)
---@return sluice.testing.Stream? stream
---@return string? err
function Stream:reconnect(timeout)
  self:close()
  local opts = {}
  for k, v in pairs(self._opts) do opts[k] = v end
  if self._id_seen then opts.last_event_id = self._last_id ~= "" and self._last_id or nil end
  opts.timeout = timeout or opts.timeout
  return self._client:sse(self._path, opts)
end

-- ------------------------------------------------------------------- crowds

--- select() cannot watch descriptors at or above FD_SETSIZE.
local SELECT_FD_LIMIT = 1024

---@class sluice.testing.CrowdMember
---@field index integer                  position in the crowd, from 1
---@field sock table                     the non-blocking LuaSocket TCP socket
---@field status? integer                the response status, once its head arrived
---@field headers? table<string, string> lower-case names, once the head arrived
---@field body string                    body bytes received and not handed to `on_data`
---@field received integer               body bytes received in total
---@field eof? string                    why reading ended: "closed" or a socket error
---@field [string] any                   free for the test's own bookkeeping

---@class sluice.testing.CrowdOptions
---@field path? string|fun(i: integer): string   the request path (default "/")
---@field headers? table<string, string>|fun(i: integer): table<string, string>?
---@field batch? integer     connections opened before waiting for their heads (default 100)
---@field timeout? number    seconds for opening them all (default 30)
---@field on_data? fun(member: sluice.testing.CrowdMember, bytes: string)  called with body bytes as they arrive, instead of appending them to `member.body`

--- Many event streams read together without blocking, for tests with
--- hundreds of subscribers: one process, non-blocking sockets and select().
--- Bodies are taken as delimited by the connection's end (as SSE bodies are).
---@class sluice.testing.Crowd
---@field members sluice.testing.CrowdMember[]
---@field ended integer      how many members' reading has ended
---@field on_data? fun(member: sluice.testing.CrowdMember, bytes: string)
local Crowd = {}
Crowd.__index = Crowd

-- Hands body bytes to on_data, or keeps them.
function Crowd:_deliver(m, bytes)
  if #bytes == 0 then return end
  m.received = m.received + #bytes
  if self.on_data then self.on_data(m, bytes) else m.body = m.body .. bytes end
end

-- Reads whatever the member's socket holds now.
function Crowd:_read(m)
  while not m.eof do
    local data, err, partial = m.sock:receive(65536)
    local chunk = data or partial
    if err and err ~= "timeout" then
      m.eof = err
      self.ended = self.ended + 1
    end
    if not chunk or #chunk == 0 then return end
    if m.status then
      self:_deliver(m, chunk)
    else
      m._head = m._head .. chunk
      local s = m._head:find("\r\n\r\n", 1, true)
      if s then
        local res = parse_head(m._head:sub(1, s - 1))
        if not res then
          m.eof = "malformed response head"
          self.ended = self.ended + 1
          return
        end
        m.status, m.headers = res.status, res.headers
        local rest = m._head:sub(s + 4)
        m._head = nil
        self:_deliver(m, rest)
      end
    end
    if data == nil then return end -- a partial read: the socket is empty
  end
end

--- Waits up to `wait` seconds (default 0) for any member to have bytes or
--- to end, and reads every member that has. Returns how many were read.
---@param wait? number
---@return integer
function Crowd:poll(wait)
  local socks = {}
  for _, m in ipairs(self.members) do
    if not m.eof then socks[#socks + 1] = m.sock end
  end
  if #socks == 0 then return 0 end
  local readable = socket.select(socks, nil, wait or 0)
  local n = 0
  for _, sock in ipairs(readable) do
    self:_read(self._by_sock[sock])
    n = n + 1
  end
  return n
end

--- Reads until `done(crowd)` returns true (checked before every round), and
--- returns true; nil and "timeout" after `timeout` seconds (default 5), or
--- nil and "closed" once every member's reading has ended first.
---@param done fun(crowd: sluice.testing.Crowd): boolean?
---@param timeout? number
---@return true? ok
---@return string? err
function Crowd:wait(done, timeout)
  local deadline = now() + (timeout or DEFAULT_TIMEOUT)
  while true do
    if done(self) then return true end
    if self.ended == #self.members then return nil, "closed" end
    local left = deadline - now()
    if left <= 0 then return nil, "timeout" end
    self:poll(math.min(left, 0.05))
  end
end

--- Closes every member's connection (the clients go away).
function Crowd:close()
  for _, m in ipairs(self.members) do
    if not m.eof then
      m.eof = "closed"
      self.ended = self.ended + 1
    end
    m.sock:close()
  end
end

--- Opens `n` connections to the server (or port) on 127.0.0.1, sends each
--- a GET with `Accept: text/event-stream`, and reads their response heads;
--- `opts.batch` connections at a time, so the listen backlog never
--- overflows. Every descriptor must stay below 1024 (select's limit): open
--- at most about a thousand, and close other sockets first. Returns the
--- crowd, or nil and an error (what was opened is closed again).
---@param target integer|sluice.testing.Server
---@param n integer
---@param opts? sluice.testing.CrowdOptions
---@return sluice.testing.Crowd? crowd
---@return string? err
function testing.crowd(target, n, opts)
  opts = opts or {}
  local port = type(target) == "table" and target.port or target
  local crowd = setmetatable({ members = {}, ended = 0, on_data = opts.on_data, _by_sock = {} }, Crowd)
  local deadline = now() + (opts.timeout or 30)
  local batch = opts.batch or 100
  local function fail(err)
    crowd:close()
    return nil, err
  end
  local first = 1
  while first <= n do
    local last = math.min(n, first + batch - 1)
    for i = first, last do
      local conn, err = testing.connect(port, math.max(0.1, deadline - now()))
      if not conn then return fail(("connection %d: %s"):format(i, tostring(err))) end
      local m = { index = i, sock = conn.sock, body = "", received = 0, _head = "" }
      crowd.members[i] = m
      crowd._by_sock[m.sock] = m
      if m.sock:getfd() >= SELECT_FD_LIMIT then
        return fail(("connection %d: descriptor %d is beyond select()'s limit of %d"):format(
          i, m.sock:getfd(), SELECT_FD_LIMIT))
      end
      local path = opts.path or "/"
      if type(path) == "function" then path = path(i) end
      local headers = { Accept = "text/event-stream" }
      local extra = opts.headers
      if type(extra) == "function" then extra = extra(i) end
      for k, v in pairs(extra or {}) do headers[k] = v end
      local ok, serr = conn:send(testing.request_bytes("GET", path, { headers = headers }),
                                 math.max(0.1, deadline - now()))
      if not ok then return fail(("connection %d: %s"):format(i, tostring(serr))) end
    end
    local ok, err = crowd:wait(function()
      for i = first, last do
        local m = crowd.members[i]
        if not m.status then
          if m.eof then return true end
          return false
        end
      end
      return true
    end, math.max(0, deadline - now()))
    for i = first, last do
      local m = crowd.members[i]
      if not m.status then
        return fail(("connection %d: no response head (%s)"):format(i, tostring(m.eof or err)))
      end
    end
    if not ok and err ~= "closed" then return fail(err) end
    first = last + 1
  end
  return crowd
end

return testing
