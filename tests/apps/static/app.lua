-- Test app for tests/spec/static_spec.lua.  This file must never be served:
-- SECRET-APP-LUA-MARKER
local sluice = require "sluice"

local app = sluice.app {}

app:get("/api/ping", function() return "pong" end)

return app
