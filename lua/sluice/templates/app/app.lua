--- {{name}}: a sluice app. Messages posted as JSON are published to one
--- channel; every open event stream receives them live, and a stream that
--- reconnects first gets what it missed. public/index.html is the page.
---
---     sluice {{name}}                       # then open http://127.0.0.1:8080/
---     curl -N http://127.0.0.1:8080/events
---     curl -d '{"text":"hi"}' http://127.0.0.1:8080/messages
---
--- spec/app_spec.lua tests it: `busted` in this folder.
local sluice = require "sluice"

-- history: events each channel keeps for clients that reconnect.
local app = sluice.app { history = 100, heartbeat = 15 }

local CHANNEL = "messages"
local MAX_TEXT = 1000

---@class app.Message
---@field text string

--- GET / → the page in public/ (files there are served as they are).
---@return sluice.Response
local function home()
  return { status = 302, headers = { location = "/index.html" } }
end

--- POST /messages with `{ "text": "..." }` → 202 `{ "id": "..." }` once the
--- message is published; 400 with `{ "error": "..." }` for anything else.
---@param req sluice.Request
---@return sluice.Response
local function post_message(req)
  local body = req:json() -- invalid JSON is answered 400 before this returns
  local text = type(body) == "table" and body.text
  if type(text) ~= "string" or not text:find("%S") or #text > MAX_TEXT then
    sluice.abort(400, ("expected { \"text\": \"...\" }, 1 to %d bytes"):format(MAX_TEXT))
  end
  ---@type app.Message
  local msg = { text = text }
  local id, err = sluice.publish(CHANNEL, { event = "message", data = msg })
  if not id then return { status = 503, json = { error = err } } end
  return { status = 202, json = { id = id } }
end

--- GET /events → the channel as Server-Sent Events (`event: message`, the
--- message as JSON data). A reconnecting EventSource sends Last-Event-ID,
--- and the subscription first replays every retained event after it.
---@param req sluice.Request
local function events(req)
  req:sse():subscribe(CHANNEL, { since = req.last_event_id })
end -- returning keeps the subscribed stream open until the client leaves

app:get("/", home)
app:post("/messages", post_message)
app:get("/events", events)

return app
