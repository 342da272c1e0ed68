-- Test app for tests/spec/channels_spec.lua: a history of 5 events per
-- channel, so old ids fall out of it.
local sluice = require "sluice"

-- The shared routes live next door, in tests/apps/channels/.
local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
local routes = dofile(here .. "/../channels/routes.lua")

return routes(sluice.app { heartbeat = 0, history = 5 })
