--- The fan-out benchmark's app: the same two endpoints the peers serve.
---
---     GET  /sub?ch=NAME       an event stream subscribed to channel NAME
---     POST /publish?ch=NAME   publishes the request body as one event's data;
---                             202 with the event's id, or 503 when it failed
---                             (with --redis: Redis was unreachable)
---     GET  /hello/:name       "hello NAME" (the Lua route scenario)
---     GET  /stats             sluice.stats() as JSON (the nodes scenario)
local sluice = require "sluice"

local app = sluice.app { heartbeat = 0 }

---@param req sluice.Request
app:get("/sub", function(req)
  req:sse():subscribe(req.query.ch or "bench")
end)

---@param req sluice.Request
---@return sluice.Response
app:post("/publish", function(req)
  local id, err = sluice.publish(req.query.ch or "bench", { data = req:body() })
  if not id then return { status = 503, body = tostring(err) } end
  return { status = 202, body = tostring(id) }
end)

---@param req sluice.Request
---@return string
app:get("/hello/:name", function(req)
  return "hello " .. req.params.name
end)

---@return sluice.Response
app:get("/stats", function()
  return { json = sluice.stats() }
end)

return app
