--- Signed-in streams: a session cookie for pages on this origin, and a
--- short-lived ?token= for clients that cannot send it. Both are refused
--- (401, 403) before the stream opens.
---
---     POST /login {"user","password"}  -> 204 + Set-Cookie: session=...; HttpOnly
---     POST /logout                     -> 204, the session ends
---     POST /stream-token               -> {"token"} for ?token=, valid 10 minutes
---     GET  /rooms/:room/events         -> the room's events (cookie or ?token=)
---     POST /rooms/:room/messages {"text"} -> 202 {"id"}
local sluice = require "sluice"

local SESSION_TTL, TOKEN_TTL = 24 * 3600, 600

-- history_ttl lets the hub forget expired sessions (and day-old messages).
local app = sluice.app { heartbeat = 15, history_ttl = SESSION_TTL }

-- Demo accounts and rooms: look users up (and check password hashes) in
-- your own database instead.
local PASSWORDS = { ann = "correct horse", bob = "battery staple" }
local MEMBERS = { lobby = { ann = true, bob = true }, staff = { ann = true } }

--- 32 hex digits from the kernel's random source.
---@return string
local function random_id()
  local f = assert(io.open("/dev/urandom", "rb"))
  local bytes = f:read(16)
  f:close()
  return (bytes:gsub(".", function(c) return ("%02x"):format(c:byte()) end))
end

-- Sessions and tokens live in the hub, not in this Lua VM: each is a channel
-- ("session:ID", "token:ID") whose last event says who it belongs to and
-- until when. So every worker and, with --redis, every node sees them, and
-- a reload (SIGHUP) signs nobody out.

--- Records that `id` of `kind` stands for `user` for `ttl` seconds (0: ends it).
---@param kind "session"|"token"
---@param id string
---@param user? string
---@param ttl number
local function grant(kind, id, user, ttl)
  local published, err = sluice.publish(kind .. ":" .. id, { data = { user = user, expires = sluice.now() + ttl } })
  if not published then sluice.abort(503, err) end
end

--- The user that `id` of `kind` stands for, or nil.
---@param kind "session"|"token"
---@param id? string
---@return string?
local function holder(kind, id)
  if type(id) ~= "string" or #id ~= 32 or not id:match("^%x+$") then return nil end
  local events, err = sluice.history(kind .. ":" .. id)
  if not events then sluice.abort(503, err) end
  local last = events[#events]
  local entry = last and sluice.json.decode(last.data)
  if entry and entry.user and entry.expires > sluice.now() then return entry.user end
end

--- The signed-in user: the session cookie, else (where `token_ok`) the
--- ?token=. Ends the request with 401 when there is neither.
---@param req sluice.Request
---@param token_ok? boolean
---@return string
local function user_of(req, token_ok)
  local user = holder("session", req.cookies.session) or (token_ok and holder("token", req.query.token))
  if not user then sluice.abort(401, "sign in first") end
  return user
end

--- The room named in the path, once the user may use it (else 403).
---@param req sluice.Request
---@param token_ok? boolean
---@return string room, string user
local function room_of(req, token_ok)
  local user = user_of(req, token_ok)
  local room = req.params.room
  if not (MEMBERS[room] and MEMBERS[room][user]) then sluice.abort(403, "not a member of " .. room) end
  return room, user
end

app:post("/login", function(req)
  local body = req:json()
  local user = type(body) == "table" and body.user
  if type(user) ~= "string" or not PASSWORDS[user] or PASSWORDS[user] ~= body.password then
    sluice.abort(401, "wrong user or password")
  end
  local id = random_id()
  grant("session", id, user, SESSION_TTL)
  return { status = 204, headers = {
    ["set-cookie"] = ("session=%s; Path=/; Max-Age=%d; HttpOnly; Secure; SameSite=Lax"):format(id, SESSION_TTL),
  } }
end)

app:post("/logout", function(req)
  if holder("session", req.cookies.session) then grant("session", req.cookies.session, nil, 0) end
  return { status = 204, headers = { ["set-cookie"] = "session=; Path=/; Max-Age=0; HttpOnly; Secure; SameSite=Lax" } }
end)

-- A token rides in the URL, so it lands in access logs: it is short-lived,
-- opens streams and does nothing else (it cannot get a new token).
app:post("/stream-token", function(req)
  local token = random_id()
  grant("token", token, user_of(req), TOKEN_TTL)
  return { json = { token = token, expires_in = TOKEN_TTL } }
end)

app:get("/rooms/:room/events", function(req)
  local room = room_of(req, true) -- 401 or 403 here: nothing was sent yet
  req:sse():subscribe("room:" .. room, { since = req.last_event_id })
end)

app:post("/rooms/:room/messages", function(req)
  local room, user = room_of(req)
  local body = req:json()
  if type(body) ~= "table" or type(body.text) ~= "string" then sluice.abort(400, "text expected") end
  local id, err = sluice.publish("room:" .. room, { event = "message", data = { user = user, text = body.text } })
  if not id then sluice.abort(503, err) end
  return { status = 202, json = { id = id } }
end)

return app
