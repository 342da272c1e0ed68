--- Test app for faults in app code: runaway memory, errors in __gc and in
--- timers.  None of them may take the worker down.
local sluice = require "sluice"

local app = sluice.app { memory_limit = 32 * 1024 * 1024 }

--- Allocates without bound: the VM's cap turns it into a memory error.
app:get("/hog", function()
  local t = {}
  for i = 1, math.maxinteger do t[i] = ("x"):rep(100) .. i end
end)

--- A collected object whose __gc fails.
app:get("/gc-error", function()
  setmetatable({}, { __gc = function() error("gc failed on purpose") end })
  collectgarbage()
  collectgarbage()
  return "collected"
end)

--- A timer whose callback fails.
app:get("/timer-error", function()
  sluice.after(0, function() error("timer failed on purpose") end)
  return "armed"
end)

--- Leaves a debug hook on its own coroutine; coroutines are reused from one
--- request to the next, and the next request must not inherit it.
app:get("/hook", function()
  debug.sethook(function() end, "l")
  return "hooked"
end)

app:get("/hooked", function() return tostring(debug.gethook() ~= nil) end)

app:get("/ok", function() return "ok" end)

return app
