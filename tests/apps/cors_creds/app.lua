-- Test app for tests/spec/cors_spec.lua: an origin list with credentials.
local sluice = require "sluice"

local app = sluice.app { cors = { origins = { "https://a.test", "https://b.test" }, credentials = true } }

app:get("/data", function() return "data" end)

return app
