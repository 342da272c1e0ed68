--- Proxy benchmark: what relaying an LLM token stream through sluice adds.
---
---     lua5.4 bench/proxy.lua [SAMPLES] [TOKENS]
---
--- Starts the mock LLM upstream (tests/mock/upstream.mjs) and sluice with
--- bench/apps/relay (stream:relay in C), then measures
---   * time to first byte of the stream, reached directly and through sluice
---     (SAMPLES requests each, default 300): p50/p99 and what sluice adds;
---   * sluice's CPU (utime+stime from /proc) per relayed chunk over one
---     stream of TOKENS tokens (default 20000) sent as fast as the upstream can.
--- Set SLUICE_BIN to choose the binary (default build/sluice).
package.path = "lua/?.lua;lua/?/init.lua;tests/lib/?.lua;" .. package.path
local testing = require "sluice.testing"
local upstream = require "upstream"
local socket = require "socket"

local SAMPLES = tonumber(arg[1]) or 300
local TOKENS = tonumber(arg[2]) or 20000
local BODY = '{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}'

local function request(port)
  return ("POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
    .. "Content-Length: %d\r\nConnection: close\r\n\r\n%s"):format(port, #BODY, BODY)
end

--- Seconds from sending the request to the first "data:" byte of the body.
local function ttfb(port)
  local s = assert(socket.connect("127.0.0.1", port))
  s:setoption("tcp-nodelay", true)
  s:settimeout(5)
  local t0 = socket.gettime()
  s:send(request(port))
  local buf = ""
  while not buf:find("\r\n\r\n[%x\r\n]*data:") do
    local data, err, partial = s:receive(4096)
    buf = buf .. (data or partial or "")
    if err and err ~= "timeout" and not (partial and #partial > 0) then break end
  end
  local t = socket.gettime() - t0
  s:close()
  return t
end

local function percentile(list, p)
  table.sort(list)
  return list[math.max(1, math.ceil(#list * p))]
end

local function cpu_seconds(pid)
  local f = assert(io.open("/proc/" .. pid .. "/stat"))
  local stat = f:read("l")
  f:close()
  local fields = {}
  for x in stat:match("%) (.*)$"):gmatch("%S+") do fields[#fields + 1] = x end
  -- fields[12], fields[13]: utime, stime (the 14th and 15th of stat)
  return (tonumber(fields[12]) + tonumber(fields[13])) / 100
end

local mock = upstream.mock()
mock:config { tokens = 8 }
local server = testing.start("bench/apps/relay", { env = { UPSTREAM = mock:url("") } })

io.stderr:write(("proxy bench: %d TTFB samples each way, one %d-token stream\n"):format(SAMPLES, TOKENS))
local direct, proxied = {}, {}
for i = 1, SAMPLES do
  direct[#direct + 1] = ttfb(mock.port)
  proxied[#proxied + 1] = ttfb(server.port)
  if i % 100 == 0 then io.stderr:write(("  %d/%d\n"):format(i, SAMPLES)) end
end
local d50, d99 = percentile(direct, 0.5), percentile(direct, 0.99)
local p50, p99 = percentile(proxied, 0.5), percentile(proxied, 0.99)

mock:config { tokens = TOKENS }
local before = cpu_seconds(server.pid)
local s = assert(socket.connect("127.0.0.1", server.port))
s:settimeout(60)
s:send(request(server.port))
local bytes = 0
while true do
  local data, err, partial = s:receive(65536)
  bytes = bytes + #(data or partial or "")
  if err == "closed" then break end
end
s:close()
local cpu = cpu_seconds(server.pid) - before
local chunks = TOKENS + 3 -- the role chunk, the tokens, the finish chunk, [DONE]

print(("TTFB direct   p50 %.3f ms  p99 %.3f ms"):format(d50 * 1e3, d99 * 1e3))
print(("TTFB proxied  p50 %.3f ms  p99 %.3f ms"):format(p50 * 1e3, p99 * 1e3))
print(("added by sluice: p50 %.3f ms  p99 %.3f ms"):format((p50 - d50) * 1e3, (p99 - d99) * 1e3))
print(("relay: %d chunks, %.1f MB, sluice CPU %.3f s = %.2f us per chunk"):format(
  chunks, bytes / 1e6, cpu, cpu * 1e6 / chunks))

server:stop()
mock:stop()
