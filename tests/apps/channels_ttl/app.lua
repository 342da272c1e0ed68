-- Test app for tests/spec/channels_spec.lua: events leave history two
-- seconds after they were published.
local sluice = require "sluice"

-- The shared routes live next door, in tests/apps/channels/.
local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
local routes = dofile(here .. "/../channels/routes.lua")

return routes(sluice.app { heartbeat = 0, history_ttl = 2 })
