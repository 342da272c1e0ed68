-- Test app for tests/spec/cors_spec.lua: one allowed origin.
local sluice = require "sluice"

local app = sluice.app { cors = "https://example.com" }

app:get("/data", function() return "data" end)
app:post("/data", function(req) return { status = 201, body = req:body() } end)

app:get("/events", function(req)
  local stream = req:sse()
  stream:send "hi"
  stream:close()
end)

return app
