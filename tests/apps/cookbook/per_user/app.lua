--- A channel per user: each user's stream follows "user:ID" alone, so a
--- notification published to one user reaches that user's tabs, on every
--- worker and node, and nobody else's. A reconnecting EventSource resumes
--- after its Last-Event-ID with nothing lost.
---
---     GET  /notifications?token=T        -> the signed-in user's stream
---     POST /users/:id/notifications      -> publish to one user -> 202 {"id"}
---          (Authorization: Bearer $NOTIFY_KEY: for your backend only)
local sluice = require "sluice"

-- A week of notifications to replay; a channel nobody follows is freed
-- once its events are that old.
local app = sluice.app { heartbeat = 15, history = 100, history_ttl = 7 * 24 * 3600 }

local NOTIFY_KEY = os.getenv("NOTIFY_KEY")

-- Demo tokens: authenticate as in the recipe above (session cookie or
-- stream token) in a real app.
local USERS = { ["token-ann"] = "ann", ["token-bob"] = "bob" }

---@param user string
---@return string
local function channel(user) return "user:" .. user end

app:get("/notifications", function(req)
  local user = USERS[req.query.token or ""]
  if not user then sluice.abort(401, "sign in first") end
  req:sse():subscribe(channel(user), { since = req.last_event_id })
end)

app:post("/users/:id/notifications", function(req)
  if not NOTIFY_KEY or req.headers.authorization ~= "Bearer " .. NOTIFY_KEY then
    sluice.abort(403, "publishing is for the backend")
  end
  local id, err = sluice.publish(channel(req.params.id), { event = "notification", data = req:json() })
  if not id then sluice.abort(503, err) end
  return { status = 202, json = { id = id } }
end)

return app
