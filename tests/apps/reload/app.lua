-- Test app for tests/spec/reload_spec.lua.  The spec copies this folder to a
-- temp dir and makes new versions by rewriting the lines marked "@": the
-- VERSION line, the @break line (broken code goes there) and the @extra
-- line (more routes go there).  Every response body is exactly VERSION, so
-- a test can tell which version answered.
local sluice = require "sluice"

local VERSION = "v1" -- @version

-- This VM's own name: its version, its worker, and the time it loaded
-- (microseconds; one worker loads one VM at a time).
local VM = ("%s/w%d/%.6f"):format(VERSION, sluice.stats().worker, sluice.now())

-- With RELOAD_FREED set, this VM appends "freed VM" to that file when it is
-- closed: the sentinel stays reachable (a global) until lua_close finalizes
-- it, so the line says the VM was really freed.
local freed_log = os.getenv("RELOAD_FREED")
if freed_log then
  RELOAD_SENTINEL = setmetatable({}, {
    __gc = function()
      local f = io.open(freed_log, "a")
      if f then
        f:write("freed ", VM, "\n")
        f:close()
      end
    end,
  })
end

-- @break

local app = sluice.app { heartbeat = 0 }

app:get("/version", function() return VERSION end)
app:get("/vm", function() return VM end)

-- A handler that spans a moment: it may start in one VM as another loads.
app:get("/slow", function()
  sluice.sleep(0.05)
  return VERSION
end)

-- Publishes this version on channel "news".
app:get("/pub", function()
  sluice.publish("news", { event = "news", data = VERSION })
  return VERSION
end)

-- A generator whose loop lives in the VM that took the request: "VM n".
app:get("/tick", function(req)
  local stream = req:sse()
  local n = 0
  while stream:send { event = "tick", data = VM .. " " .. n } do
    n = n + 1
    sluice.sleep(0.05)
  end
end)

-- A subscribed stream: the hub feeds it, whatever VM is current.
app:get("/sub/:channel", function(req)
  req:sse():subscribe(req.params.channel)
end)

-- A module from the project's lua/ folder (SLUICE_LUA_DIR), when there is one.
local has_helper, helper = pcall(require, "reload_helper")
app:get("/helper", function() return has_helper and tostring(helper) or "none" end)

-- With RELOAD_TIMERS set: timers and a spawned task that publish this
-- version on channel "timers"; a reload must stop the old VM's.
if os.getenv("RELOAD_TIMERS") then
  sluice.every(0.05, function()
    sluice.publish("timers", { event = "every", data = VERSION })
  end)
  sluice.after(0.8, function()
    sluice.publish("timers", { event = "after", data = VERSION })
  end)
  sluice.spawn(function()
    while true do
      sluice.sleep(0.05)
      sluice.publish("timers", { event = "spawn", data = VERSION })
    end
  end)
end

-- @extra

return app
