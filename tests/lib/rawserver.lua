#!/usr/bin/env lua5.4
-- A misbehaving HTTP/1.1 server for the fetch specs: each path is a script
-- of writes and pauses that a well-behaved server would never produce
-- (line endings cut across reads, stalls, redirects).  LuaSocket only; many
-- connections at once (a coroutine each, select() between them).
--
--   lua5.4 tests/lib/rawserver.lua      prints {"port":N,"pid":P} and serves
--                                        127.0.0.1:N until killed, or until
--                                        its parent process is gone
-- Paths
--   /lines        close-delimited body in pieces 100 ms apart:
--                 "alpha\r" | "\nbeta\n" | "gamma\r" | "delta\r\n\r\n" |
--                 "zeta\r" | "\r" | "eta\n" | "eps" | "ilon"   (then close)
--   /chunks       close-delimited "a" | "bb" | "ccc", 150 ms apart
--   /stall-head   reads the request and never answers
--   /stall-body   Content-Length: 1000, sends "partial", then nothing
--   /drip         Content-Length: 8, one byte every 300 ms
--   /redirect     302 to /target;  /target: 200 "arrived"
--   /redirect-drop  302 to /target (keep-alive), then closes the connection
--                 100 ms later without reading what came meanwhile
--   anything else 404
local socket = require "socket"

local server = assert(socket.bind("127.0.0.1", 0))
server:settimeout(0)
local _, port = server:getsockname()

local function stat()
  local f = io.open("/proc/self/stat")
  local s = f and f:read("l") or ""
  if f then f:close() end
  local pid, ppid = s:match("^(%d+) %b() %a (%d+)")
  return tonumber(pid), tonumber(ppid)
end
local pid, parent = stat()
io.stdout:write(('{"port":%d,"pid":%d}\n'):format(port, pid))
io.stdout:flush()

local tasks = {} -- coroutine -> { sock, wake, read }

-- Waits s seconds (inside a connection's coroutine).
local function sleep(s) coroutine.yield("sleep", socket.gettime() + s) end

local function send(sock, data)
  sock:settimeout(5)
  local ok = sock:send(data)
  sock:settimeout(0)
  if not ok then error("peer gone", 0) end
end

-- Reads the request head (and a Content-Length body) off sock.
local function read_request(sock)
  local buf = ""
  while true do
    local data, err, partial = sock:receive(8192)
    buf = buf .. (data or partial or "")
    local e = buf:find("\r\n\r\n", 1, true)
    if e then
      local head = buf:sub(1, e - 1)
      local len = tonumber(head:lower():match("\ncontent%-length:%s*(%d+)")) or 0
      while #buf - (e + 3) < len do
        local d, er, p = sock:receive(8192)
        buf = buf .. (d or p or "")
        if er and er ~= "timeout" then error("peer gone", 0) end
        if not d then coroutine.yield("read") end
      end
      return head:match("^%u+ (%S+)")
    end
    if err and err ~= "timeout" then error("peer gone", 0) end
    if not data then coroutine.yield("read") end
  end
end

local HEAD_CLOSE = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n"

local routes = {}

routes["/lines"] = function(sock)
  send(sock, HEAD_CLOSE)
  for _, piece in ipairs { "alpha\r", "\nbeta\n", "gamma\r", "delta\r\n\r\n", "zeta\r", "\r",
                           "eta\n", "eps", "ilon" } do
    send(sock, piece)
    sleep(0.1)
  end
end

routes["/chunks"] = function(sock)
  send(sock, HEAD_CLOSE)
  for _, piece in ipairs { "a", "bb", "ccc" } do
    sleep(0.15)
    send(sock, piece)
  end
end

routes["/stall-head"] = function() sleep(60) end

routes["/stall-body"] = function(sock)
  send(sock, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1000\r\n\r\npartial")
  sleep(60)
end

routes["/drip"] = function(sock)
  send(sock, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 8\r\n\r\n")
  for c in ("dripdrip"):gmatch(".") do
    sleep(0.3)
    send(sock, c)
  end
end

routes["/redirect"] = function(sock)
  send(sock, "HTTP/1.1 302 Found\r\nLocation: /target\r\nContent-Length: 0\r\n\r\n")
end

-- A keep-alive 302 whose connection the server then drops (an idle close
-- racing the client's next request on it): a client must retry elsewhere.
routes["/redirect-drop"] = function(sock)
  send(sock, "HTTP/1.1 302 Found\r\nLocation: /target\r\nContent-Length: 0\r\n\r\n")
  sleep(0.1)
end

routes["/target"] = function(sock)
  send(sock, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 7\r\n\r\narrived")
end

local function serve(sock)
  local path = read_request(sock)
  local route = routes[path]
  if route then
    route(sock)
  else
    send(sock, "HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found")
  end
end

local function resume(co)
  local t = tasks[co]
  local ok, what, arg = coroutine.resume(co, t.sock)
  if not ok or coroutine.status(co) == "dead" then
    t.sock:close()
    tasks[co] = nil
  elseif what == "sleep" then
    t.wake, t.read = arg, false
  else
    t.wake, t.read = nil, true
  end
end

local next_check = 0
while true do
  local now = socket.gettime()
  if now >= next_check then
    local _, ppid = stat()
    if ppid ~= parent then os.exit(0) end
    next_check = now + 0.25
  end
  local readers, by_sock, wait = { server }, {}, 0.25
  for co, t in pairs(tasks) do
    if t.read then
      readers[#readers + 1] = t.sock
      by_sock[t.sock] = co
    elseif t.wake then
      wait = math.max(0, math.min(wait, t.wake - now))
    end
  end
  local ready = socket.select(readers, nil, wait)
  for _, s in ipairs(ready) do
    if s == server then
      local c = server:accept()
      if c then
        c:settimeout(0)
        c:setoption("tcp-nodelay", true)
        local co = coroutine.create(serve)
        tasks[co] = { sock = c, read = false }
        resume(co)
      end
    elseif by_sock[s] then
      resume(by_sock[s])
    end
  end
  now = socket.gettime()
  for co, t in pairs(tasks) do
    if t.wake and t.wake <= now then resume(co) end
  end
end
