-- Test app for tests/spec/sse_spec.lua: a one-second heartbeat.
local sluice = require "sluice"

local app = sluice.app { heartbeat = 1 }

-- Opens a stream and never writes to it.
app:get("/silent", function(req)
  req:sse()
  sluice.sleep(3600)
end)

return app
