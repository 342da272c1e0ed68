-- Routes shared by the channel test apps (tests/spec/channels_spec.lua).
-- Each app.lua in tests/apps/channels*/ makes an app with its own options
-- and adds these routes:
--
--   GET  /sub?ch=a[,b...][&pre=N]   subscribe with replay from req.last_event_id,
--                              then a comment ": subscribed worker=W replayed=N ok=B";
--                              pre=N first publishes "pre-1".."pre-N" to the first
--                              channel in the same turn (they are in the history
--                              and still on their way to this worker's subscribers)
--   POST /publish?ch=C[&event=E][&retry=R][&json=1]   the body as data -> { id, worker }
--   POST /burst?ch=C&n=N[&tag=T][&pause=S][&per=K]    n events "T-1".."T-n", sleeping S s
--                              after every K of them -> { ids, worker }
--   POST /spawn?ch=C&n=N[&tag=T][&pause=S][&per=K]    the same in a background task -> 202
--   POST /big?ch=C&i=I&size=S  one event of S bytes: I as 8 digits, then "x"s -> { id }
--   POST /misuse               what sluice.publish says to an event with an id
--   GET  /history?ch=C[&since=ID][&limit=N]           sluice.history as JSON
--   GET  /stats                sluice.stats()
local sluice = require "sluice"

local json = sluice.json

--- The channels named in ?ch= (comma-separated); one name stays a string,
--- so both forms of stream:subscribe are exercised.
---@param req sluice.Request
---@return string|string[]
local function channels(req)
  local list = {}
  for name in (req.query.ch or "main"):gmatch("[^,]+") do list[#list + 1] = name end
  if #list == 1 then return list[1] end
  return list
end

---@param req sluice.Request
---@param name string
---@param default? number
---@return number?
local function number(req, name, default)
  return tonumber(req.query[name] or "") or default
end

--- Publishes the n events of a burst, pausing between groups of `per`.
---@return string[] ids
local function burst(ch, n, tag, pause, per)
  local ids = json.array {}
  for i = 1, n do
    ids[i] = sluice.publish(ch, tag .. "-" .. i)
    if pause > 0 and i % per == 0 and i < n then sluice.sleep(pause) end
  end
  return ids
end

---@param app sluice.App
---@return sluice.App
return function(app)
  app:get("/sub", function(req)
    local stream = req:sse()
    local chs = channels(req)
    for i = 1, number(req, "pre", 0) do
      sluice.publish(type(chs) == "table" and chs[1] or chs, "pre-" .. i)
    end
    local replayed, ok = stream:subscribe(chs, { since = req.last_event_id })
    stream:comment(("subscribed worker=%d replayed=%s ok=%s"):format(
      sluice.stats().worker, tostring(replayed), tostring(ok)))
  end)

  -- Subscribes and keeps the request, whose head the server releases once
  -- the stream is set up; GET /kept reads what must stay readable.
  local kept = {}
  app:get("/sub-kept", function(req)
    req:sse():subscribe(channels(req))
    kept[#kept + 1] = req
  end)
  app:get("/kept", function()
    local list = json.array {}
    for i, req in ipairs(kept) do
      list[i] = { method = req.method, path = req.path, ch = req.query.ch }
    end
    return { json = list }
  end)

  app:post("/publish", function(req)
    local data = req:body()
    if req.query.json then data = json.decode(data) end
    local ev = { data = data, event = req.query.event, retry = number(req, "retry") }
    return { json = { id = sluice.publish(req.query.ch or "main", ev), worker = sluice.stats().worker } }
  end)

  app:post("/burst", function(req)
    local ids = burst(req.query.ch or "main", number(req, "n", 1), req.query.tag or "e",
                      number(req, "pause", 0), number(req, "per", 1))
    return { json = { ids = ids, worker = sluice.stats().worker } }
  end)

  app:post("/spawn", function(req)
    local ch, n, tag = req.query.ch or "main", number(req, "n", 1), req.query.tag or "e"
    local pause, per = number(req, "pause", 0), number(req, "per", 1)
    sluice.spawn(function() burst(ch, n, tag, pause, per) end)
    return { status = 202, json = { worker = sluice.stats().worker } }
  end)

  app:post("/big", function(req)
    local i, size = number(req, "i", 0), number(req, "size", 65536)
    local data = ("%08d"):format(i) .. ("x"):rep(size - 8)
    return { json = { id = sluice.publish(req.query.ch or "big", data) } }
  end)

  app:post("/misuse", function()
    local ok, err = pcall(sluice.publish, "main", { id = "7", data = "x" })
    return { json = { ok = ok, err = tostring(err) } }
  end)

  app:get("/history", function(req)
    local opts = { since = req.query.since, limit = number(req, "limit") }
    return { json = json.array(sluice.history(req.query.ch or "main", opts)) }
  end)

  app:get("/stats", function() return { json = sluice.stats() } end)

  return app
end
