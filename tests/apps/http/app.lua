-- Test app for tests/spec/http_spec.lua: small bodies, a short CPU budget,
-- and routes that misbehave on purpose.
local sluice = require "sluice"

local app = sluice.app { max_body = 1024, cpu_budget = 0.2 }

app:get("/hello/:name", function(req)
  return "hello " .. req.params.name
end)

-- Echoes the request body as it arrived (after de-chunking).
app:post("/raw", function(req)
  return { headers = { ["content-type"] = "application/octet-stream" }, body = req:body() }
end)

app:post("/echo", function(req)
  return { json = req:json() }
end)

-- Answers later than the requests pipelined behind it.
app:get("/slow", function()
  sluice.sleep(0.05)
  return "slow"
end)

-- Answers after :s seconds (longer than the test server's idle timeout).
app:get("/sleep/:s", function(req)
  sluice.sleep(tonumber(req.params.s))
  return "slept"
end)

-- A quiet event stream (the default heartbeat is far away).
app:get("/stream", function(req)
  local stream = req:sse()
  stream:send "open"
  sluice.sleep(3600)
end)

-- Several methods on one path: 405 lists them all.
app:get("/thing", function() return "get" end)
app:post("/thing", function() return "post" end)

app:get("/files/*", function(req)
  return { json = { rest = req.params["*"], query = req.query } }
end)

app:get("/status/:code", function(req)
  return { status = tonumber(req.params.code), headers = { ["x-test"] = "yes" }, body = "custom" }
end)

app:get("/boom", function()
  error("boom on purpose")
end)

app:get("/spin", function()
  while true do end
end)

return app
