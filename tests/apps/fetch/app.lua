-- Test app for tests/spec/fetch_spec.lua: routes that run sluice.fetch as a
-- JSON request describes and report what it saw, and relay routes.
--
-- POST /fetch {url, opts, read}   runs sluice.fetch(url, opts), then reads
--     the body as `read` says: "text", "json", "chunks", "lines", "events"
--     or "none"; answers { status, ok, headers, result, err, complete,
--     elapsed } or { failed = message, elapsed } when fetch returned nil.
-- POST /relay {url, opts, transform, tag}   an SSE stream relaying the
--     upstream's events (stream:relay in C, or through a Lua transform:
--     "tokens" sends each content delta as `event: token`, `[DONE]` as
--     `event: done`, and drops everything else); the outcome is kept for
--     GET /relays under `tag`.
local sluice = require "sluice"

local json = sluice.json
local app = sluice.app { heartbeat = 0 }

local relays = {} -- tag -> { state, ok, err, ended_at }

app:post("/fetch", function(req)
  local spec = req:json()
  local t0 = sluice.now()
  local res, err = sluice.fetch(spec.url, spec.opts)
  if not res then return { json = { failed = err, elapsed = sluice.now() - t0 } } end
  local out = { status = res.status, ok = res.ok, headers = res.headers }
  local read = spec.read or "text"
  if read == "text" then
    local text, terr = res:text()
    out.result, out.err = text, terr
  elseif read == "json" then
    local v, jerr = res:json()
    out.result, out.err = v, jerr
  elseif read == "chunks" or read == "lines" or read == "events" then
    local list = json.array {}
    for item in res[read](res) do list[#list + 1] = item end
    out.result, out.err = list, res.err
  else
    out.err = res.err
  end
  out.complete = res.complete
  out.elapsed = sluice.now() - t0
  return { json = out }
end)

local function tokens(ev)
  if ev.data == "[DONE]" then return { event = "done", data = "." } end
  local chunk = json.decode(ev.data)
  local choice = type(chunk) == "table" and type(chunk.choices) == "table" and chunk.choices[1]
  local content = type(choice) == "table" and type(choice.delta) == "table" and choice.delta.content
  if type(content) == "string" and content ~= "" then return { event = "token", data = content } end
  return nil
end

app:post("/relay", function(req)
  local spec = req:json()
  local tag = spec.tag or "relay"
  local state = { state = "fetching" }
  relays[tag] = state
  -- Runs however the handler ends, also when it is ended where it waits.
  local _ <close> = setmetatable({}, { __close = function()
    if state.state ~= "ended" then state.state = "cancelled" end
  end })
  local res, err = sluice.fetch(spec.url, spec.opts)
  if not res then
    state.state, state.err = "failed", err
    return { status = 502, json = { error = err } }
  end
  local stream = req:sse()
  state.state = "relaying"
  local ok, rerr = stream:relay(res, spec.transform == "tokens" and tokens or nil)
  state.state, state.ok, state.err, state.ended_at = "ended", ok or false, rerr, sluice.now()
  state.complete = res.complete
end)

app:get("/relays", function() return { json = relays } end)

return app
