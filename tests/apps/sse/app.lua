-- Test app for tests/spec/sse_spec.lua.  Routes that write a fixed set of
-- frames close their stream, so a test can read the whole body and compare
-- it byte for byte.
local sluice = require "sluice"

local app = sluice.app { heartbeat = 60 }

---@param req sluice.Request
---@param events (string|table)[]
local function send_all(req, events, opts)
  local stream = req:sse(opts)
  for _, ev in ipairs(events) do assert(stream:send(ev)) end
  stream:close()
end

app:get("/frame", function(req)
  send_all(req, { { event = "tick", id = "1", data = "a\nb" } })
end)

app:get("/lines", function(req)
  send_all(req, { { data = "x\r\ny\rz" }, { data = "a\n\nb" }, { data = "" }, "plain" })
end)

app:get("/fields", function(req)
  send_all(req, { { event = "e", id = "7", retry = 500, data = "d" } })
end)

app:get("/json", function(req)
  send_all(req, { { event = "obj", data = { n = 1 } } })
end)

app:get("/retry", function(req)
  send_all(req, { "x" }, { retry = 2000 })
end)

app:get("/comment", function(req)
  local stream = req:sse()
  stream:comment("hello")
  stream:send("x")
  stream:close()
end)

-- :n numbered events of 1 KiB each, then the end: far more than a socket
-- buffer holds, so send must wait for a client that reads slowly.
app:get("/bulk/:n", function(req)
  local stream = req:sse()
  local pad = ("x"):rep(1000)
  for i = 1, tonumber(req.params.n) do
    assert(stream:send { id = tostring(i), data = i .. " " .. pad })
  end
  stream:close()
end)

-- An error after the stream is open: too late for a 500.
app:get("/fail-after-open", function(req)
  local stream = req:sse()
  stream:send "before"
  error("generator failed on purpose")
end)

-- Opens a stream and never writes to it.
app:get("/silent", function(req)
  req:sse()
  sluice.sleep(3600)
end)

-- Misuse is an error naming the field; the route reports what it caught.
app:get("/bad-fields", function(req)
  local stream = req:sse()
  local _, err1 = pcall(stream.send, stream, { event = "a\nb", data = "x" })
  stream:send { event = "result", data = tostring(err1) }
  local _, err2 = pcall(stream.send, stream, { id = "1\0" .. "2", data = "x" })
  stream:send { event = "result", data = tostring(err2) }
  stream:close()
end)

-- Generators that count themselves while they live.
local live = { gen = 0, sleeper = 0 }
local after_sleep = false

app:get("/count", function()
  return { json = { gen = live.gen, sleeper = live.sleeper, after_sleep = after_sleep } }
end)

app:get("/gen", function(req)
  local stream = req:sse()
  live.gen = live.gen + 1
  local _ <close> = setmetatable({}, { __close = function() live.gen = live.gen - 1 end })
  local i = 0
  while stream:send { data = tostring(i) } do
    i = i + 1
    sluice.sleep(0.05)
  end
end)

app:get("/sleeper", function(req)
  local stream = req:sse()
  live.sleeper = live.sleeper + 1
  local _ <close> = setmetatable({}, { __close = function() live.sleeper = live.sleeper - 1 end })
  stream:send "started"
  sluice.sleep(3600)
  after_sleep = true
end)

-- A stream kept at module level so another request can look at it.
local watched
app:get("/watch", function(req)
  watched = req:sse()
  watched:send "watching"
  while not watched.closed do sluice.sleep(0.05) end
end)

app:get("/watch-state", function()
  if not watched then return { status = 404, body = "no stream yet" } end
  local ok, sent = pcall(watched.send, watched, "probe")
  return { json = { closed = watched.closed, send_succeeded = (ok and sent == true) } }
end)

-- Lua's own coroutines still work inside handlers.
app:get("/coro", function()
  local gen = coroutine.wrap(function()
    for i = 1, 3 do coroutine.yield(i) end
  end)
  return table.concat({ gen(), gen(), gen() }, ",")
end)

app:get("/coro-sleep", function()
  local gen = coroutine.wrap(function()
    sluice.sleep(0.05)
    coroutine.yield "a"
    sluice.sleep(0.05)
    coroutine.yield "b"
  end)
  return gen() .. "," .. gen()
end)

return app
