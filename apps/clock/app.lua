--- A clock over Server-Sent Events: GET /clock sends a "tick" event with the
--- UTC time once a second; public/index.html shows it live.
---
---     build/sluice apps/clock      # then open http://127.0.0.1:8080/
local sluice = require "sluice"

local app = sluice.app { heartbeat = 15 }

--- GET / → the page in public/.
---@return sluice.Response
local function home()
  return { status = 302, headers = { location = "/index.html" } }
end

--- GET /clock → `event: tick`, an increasing `id` and the time as data.
--- A browser reconnecting with Last-Event-ID carries on from its last id.
--- send returns nil once the client has gone, which ends the loop.
---@param req sluice.Request
local function clock(req)
  local stream = req:sse { retry = 2000 }
  local id = math.tointeger(tonumber(req.last_event_id or "")) or 0
  repeat
    id = id + 1
    local sent = stream:send { event = "tick", id = tostring(id), data = os.date("!%H:%M:%S") }
    if sent then sluice.sleep(1) end
  until not sent
end

app:get("/", home)
-- The page names its icon (inline), but a browser may still ask for
-- /favicon.ico: an empty answer keeps a 404 out of its console.
app:get("/favicon.ico", function() return { status = 204 } end)
app:get("/clock", clock)

return app
