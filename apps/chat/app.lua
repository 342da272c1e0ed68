--- A chat room over one channel: messages are published to "chat", every
--- open page receives them live, and a page that reconnects catches up on
--- what it missed from the channel's history. public/index.html is the page.
---
---     build/sluice apps/chat       # then open http://127.0.0.1:8080/ in two tabs
---     curl -N http://127.0.0.1:8080/events
---     curl -d '{"user":"ann","text":"hi"}' http://127.0.0.1:8080/messages
---
--- Unchanged, it runs on several nodes sharing one Redis: start each with
--- `--redis redis://HOST:6379`, and a message posted to any node reaches
--- the pages open on every node.
local sluice = require "sluice"

local app = sluice.app { history = 1000, heartbeat = 15, retry = 2000 }

local CHANNEL = "chat"
local MAX_USER, MAX_TEXT = 64, 2000

---@class chat.Message
---@field user string
---@field text string

--- The reason `value` is not an acceptable `field` of at most `max`
--- characters, or nil when it is one.
---@param field string
---@param value any
---@param max integer
---@return string?
local function invalid(field, value, max)
  if value == nil then return field .. " is missing" end
  if type(value) ~= "string" then return field .. " must be a string" end
  if not value:find("%S") then return field .. " must not be empty" end
  if (utf8.len(value) or #value) > max then
    return ("%s is longer than %d characters"):format(field, max)
  end
end

--- GET / → the page in public/.
---@return sluice.Response
local function home()
  return { status = 302, headers = { location = "/index.html" } }
end

--- GET /events → the room as Server-Sent Events: `event: message` with the
--- message's JSON as data. A reconnecting EventSource sends Last-Event-ID
--- (or a page passes ?lastEventId=) and first gets every message it missed.
---@param req sluice.Request
local function events(req)
  req:sse():subscribe(CHANNEL, { since = req.last_event_id })
end -- returning keeps the subscribed stream open until the client leaves

--- POST /messages with `{ "user": "...", "text": "..." }` → 202 `{ "id" }`
--- once published; 400 with a JSON error for anything else; 503 when the
--- hub cannot take it (with `--redis`, while Redis is unavailable).
---@param req sluice.Request
---@return sluice.Response
local function post_message(req)
  local msg = req:json() -- invalid JSON: 400 before we get here
  if type(msg) ~= "table" then sluice.abort(400, "expected a JSON object") end
  local err = invalid("user", msg.user, MAX_USER) or invalid("text", msg.text, MAX_TEXT)
  if err then sluice.abort(400, err) end
  ---@type chat.Message
  local clean = { user = msg.user, text = msg.text }
  local id, err = sluice.publish(CHANNEL, { event = "message", data = clean })
  if not id then return { status = 503, headers = { ["retry-after"] = "1" }, json = { error = err } } end
  return { status = 202, json = { id = id } }
end

--- GET /history[?since=ID] → the retained messages after ID (all when it is
--- absent), oldest first: `[{ "id", "user", "text" }]`; 400 when ID is not
--- an event id.
---@param req sluice.Request
---@return sluice.Response
local function history(req)
  local since = req.query.since
  if since == "" then since = nil end
  -- Ids are numbers, or Redis stream ids ("1700000000000-0") with --redis.
  if since and not (since:match("^%d+$") or since:match("^%d+%-%d+$")) then
    sluice.abort(400, "since must be an event id")
  end
  local list = sluice.json.array {}
  for _, ev in ipairs(sluice.history(CHANNEL, { since = since })) do
    local msg = sluice.json.decode(ev.data)
    list[#list + 1] = { id = ev.id, user = msg.user, text = msg.text }
  end
  return { json = list }
end

app:get("/", home)
-- The page names its icon (inline), but a browser may still ask for
-- /favicon.ico: an empty answer keeps a 404 out of its console.
app:get("/favicon.ico", function() return { status = 204 } end)
app:get("/events", events)
app:post("/messages", post_message)
app:get("/history", history)

return app
