-- Test app for tests/spec/ops_spec.lua: routes that move each of the
-- server's metrics.
--
--   GET  /hello            200 text
--   GET  /boom             an error escapes the handler: 500
--   GET  /spin             runs past cpu_budget without yielding: 500
--   GET  /events           a stream subscribed to "ops"
--   POST /publish          the body published on "ops" -> { id }
--   GET  /fetch?url=U      sluice.fetch(U) -> { status } or 502 { error }
local sluice = require "sluice"

local app = sluice.app { heartbeat = 0, cpu_budget = 0.05 }

app:get("/hello", function() return "hello\n" end)

app:get("/boom", function() error("boom on purpose") end)

app:get("/spin", function()
  local x = 0
  while true do x = x + 1 end
end)

app:get("/events", function(req) req:sse():subscribe("ops") end)

app:post("/publish", function(req)
  return { json = { id = sluice.publish("ops", req:body()) } }
end)

app:get("/fetch", function(req)
  local res, err = sluice.fetch(req.query.url, { timeout = 5 })
  if not res then return { status = 502, json = { error = err } } end
  res:close()
  return { json = { status = res.status } }
end)

return app
