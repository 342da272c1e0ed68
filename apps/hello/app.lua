--- The smallest sluice app: a route with a parameter and a JSON echo.
---
---     build/sluice apps/hello
---     curl http://127.0.0.1:8080/hello/world
---     curl -d '{"a": 1}' http://127.0.0.1:8080/echo
local sluice = require "sluice"

local app = sluice.app {}

--- GET /hello/:name → "hello NAME" as text/plain.
---@param req sluice.Request
---@return string
local function hello(req)
  return "hello " .. req.params.name
end

--- POST /echo → the request's JSON, echoed back as JSON. Invalid JSON never
--- gets past req:json(), which answers 400 with a JSON error itself.
---@param req sluice.Request
---@return sluice.Response
local function echo(req)
  return { json = req:json() }
end

app:get("/hello/:name", hello)
app:post("/echo", echo)

return app
