--- The fan-out benchmark's app: the same two endpoints the peers serve.
---
---     GET  /sub?ch=NAME       an event stream subscribed to channel NAME
---     POST /publish?ch=NAME   publishes the request body as one event's data
---     GET  /hello/:name       "hello NAME" (the Lua route scenario)
local sluice = require "sluice"

local app = sluice.app { heartbeat = 0 }

---@param req sluice.Request
app:get("/sub", function(req)
  req:sse():subscribe(req.query.ch or "bench")
end)

---@param req sluice.Request
---@return sluice.Response
app:post("/publish", function(req)
  local id = sluice.publish(req.query.ch or "bench", { data = req:body() })
  return { status = 202, body = id }
end)

---@param req sluice.Request
---@return string
app:get("/hello/:name", function(req)
  return "hello " .. req.params.name
end)

return app
