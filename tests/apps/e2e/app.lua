-- Test app for the end-to-end specs with npm clients
-- (tests/spec/e2e_clients_spec.lua): streams that the server closes, so a
-- client must reconnect with Last-Event-ID, and every frame shape the
-- encoder produces, for an independent parser to read.
local sluice = require "sluice"
local shapes = require "shapes" -- this folder is on package.path

local app = sluice.app { heartbeat = 0, history = 1000 }

-- The Last-Event-ID header (false when absent) of every request to /count
-- and /feed, in arrival order.
local seen = { count = {}, feed = {} }

--- GET /count?per=N&total=T: events numbered after Last-Event-ID (ids 1,
--- 2, ...; data "event <id>"), at most N on one connection, then the server
--- closes the stream; once T were sent, the stream stays open and quiet.
app:get("/count", function(req)
  seen.count[#seen.count + 1] = req.headers["last-event-id"] or false
  local per = math.tointeger(tonumber(req.query.per)) or 3
  local total = math.tointeger(tonumber(req.query.total)) or 12
  local stream = req:sse { retry = 50 }
  local last = math.tointeger(tonumber(req.last_event_id or "")) or 0
  for id = last + 1, math.min(last + per, total) do
    if not stream:send { event = "count", id = tostring(id), data = "event " .. id } then return end
    sluice.sleep(0.01)
  end
  if last + per < total then return stream:close() end
  while stream:comment("done") do sluice.sleep(1) end
end)

--- GET /feed: the "feed" channel, replayed after Last-Event-ID; the server
--- closes each stream after `hold` seconds (default 0.25), while events keep
--- being published, so a reconnecting client depends on the replay.
app:get("/feed", function(req)
  seen.feed[#seen.feed + 1] = req.headers["last-event-id"] or false
  local hold = tonumber(req.query.hold) or 0.25
  local stream = req:sse { retry = 50 }
  stream:subscribe("feed", { since = req.last_event_id })
  sluice.sleep(hold)
  stream:close()
end)

--- POST /feed/publish?n=N&every=S: publishes N events on "feed" (data
--- "<k>", k = 1..N), one every S seconds (default 0.02), in the background.
app:post("/feed/publish", function(req)
  local n = math.tointeger(tonumber(req.query.n)) or 50
  local every = tonumber(req.query.every) or 0.02
  sluice.spawn(function()
    for k = 1, n do
      sluice.publish("feed", { event = "feed", data = tostring(k) })
      sluice.sleep(every)
    end
  end)
  return { status = 202, json = { n = n } }
end)

--- GET /seen/:route → the Last-Event-ID headers that route received, in
--- order ("none" for a request without one).
app:get("/seen/:route", function(req)
  local list = seen[req.params.route] or {}
  local out = sluice.json.array {}
  for i, v in ipairs(list) do out[i] = v == false and "none" or v end
  return { json = out }
end)

--- GET /shapes: every frame of shapes.lua, then the end of the stream.
app:get("/shapes", function(req)
  local stream = req:sse()
  for _, item in ipairs(shapes) do
    if item.comment then
      assert(stream:comment(item.comment))
    else
      assert(stream:send(item.send))
    end
  end
  stream:close()
end)

return app
