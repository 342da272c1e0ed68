--- The proxy benchmark's app: POST /v1/chat/completions relays the upstream
--- (UPSTREAM, an OpenAI-style base URL) in C, without Lua per event.
local sluice = require "sluice"

local UPSTREAM = assert(os.getenv("UPSTREAM"), "set UPSTREAM")
local app = sluice.app { heartbeat = 0 }

---@param req sluice.Request
app:post("/v1/chat/completions", function(req)
  local res, err = sluice.fetch(UPSTREAM .. "/v1/chat/completions", {
    method = "POST", body = req:body(), headers = { ["content-type"] = "application/json" },
  })
  if not res then return { status = 502, body = err } end
  return req:sse():relay(res) and nil
end)

return app
