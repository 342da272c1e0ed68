-- Test app for tests/spec/channels_spec.lua: subscribers are dropped once
-- 256 KiB wait for them, and history is short, so that memory stays small
-- while large events stream through.
local sluice = require "sluice"

-- The shared routes live next door, in tests/apps/channels/.
local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
local routes = dofile(here .. "/../channels/routes.lua")

return routes(sluice.app { heartbeat = 0, history = 8, max_queue = 256 * 1024 })
