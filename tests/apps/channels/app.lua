-- Test app for tests/spec/channels_spec.lua: default history (1000 events
-- per channel) and queue cap; no heartbeat, so streams hold only events.
local sluice = require "sluice"
local routes = require "routes" -- this folder is on package.path

return routes(sluice.app { heartbeat = 0 })
