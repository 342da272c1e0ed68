-- Test app for tests/spec/redis_spec.lua, run by several nodes sharing one
-- Redis (--redis). History is `REDIS_TEST_HISTORY` events per channel
-- (default 1000); no heartbeat, so streams hold only events.
--
--   GET  /sub?ch=a[,b...]        subscribe with replay from req.last_event_id,
--                                then ": subscribed replayed=N ok=B"; when the
--                                subscribe fails, ": failed MESSAGE" and the
--                                stream ends
--   POST /publish?ch=C           the body as data -> 200 { id }, or 503 { error }
--   POST /burst?ch=C&n=N&tag=T   n events "T-1".."T-n" -> { ids }, stopping at the
--                                first failure -> 503 { ids, error }
--   GET  /sub-twice?ch=C         subscribe twice, the second time from "0", then
--                                ": twice replayed=N ok=B"
--   GET  /history?ch=C[&since=ID][&limit=N]   sluice.history as JSON
--   GET  /stats                  sluice.stats()
local sluice = require "sluice"

local json = sluice.json
local app = sluice.app { heartbeat = 0, history = tonumber(os.getenv("REDIS_TEST_HISTORY") or "") or 1000 }

---@param req sluice.Request
---@return string|string[]
local function channels(req)
  local list = {}
  for name in (req.query.ch or "main"):gmatch("[^,]+") do list[#list + 1] = name end
  return #list == 1 and list[1] or list
end

app:get("/sub", function(req)
  local stream = req:sse()
  local replayed, ok = stream:subscribe(channels(req), { since = req.last_event_id })
  if not replayed then
    stream:comment("failed " .. tostring(ok))
    return
  end
  stream:comment(("subscribed replayed=%d ok=%s"):format(replayed, tostring(ok)))
end)

-- Subscribes twice to the same channels, the second time with a replay
-- from "0": the stream follows them already, so it replays nothing.
app:get("/sub-twice", function(req)
  local stream = req:sse()
  stream:subscribe(channels(req))
  local replayed, ok = stream:subscribe(channels(req), { since = "0" })
  stream:comment(("twice replayed=%s ok=%s"):format(tostring(replayed), tostring(ok)))
end)

app:post("/publish", function(req)
  local id, err = sluice.publish(req.query.ch or "main", req:body())
  if not id then return { status = 503, json = { error = err } } end
  return { json = { id = id } }
end)

app:post("/burst", function(req)
  local ids = json.array {}
  for i = 1, tonumber(req.query.n) or 1 do
    local id, err = sluice.publish(req.query.ch or "main", (req.query.tag or "e") .. "-" .. i)
    if not id then return { status = 503, json = { ids = ids, error = err } } end
    ids[i] = id
  end
  return { json = { ids = ids } }
end)

app:get("/history", function(req)
  local events, err = sluice.history(req.query.ch or "main",
    { since = req.query.since, limit = tonumber(req.query.limit or "") })
  if not events then return { status = 503, json = { error = err } } end
  return { json = json.array(events) }
end)

app:get("/stats", function() return { json = sluice.stats() } end)

return app
