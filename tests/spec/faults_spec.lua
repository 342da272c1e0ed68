-- Faults in app code: each is answered or logged, and the worker carries on.
local testing = require "sluice.testing"

describe("faults in app code", function()
  local server, client

  setup(function()
    server = testing.start(testing.root .. "/tests/apps/faults")
    client = testing.client(server)
  end)

  teardown(function() server:stop() end)

  local function still_serving()
    local res = assert(client:get("/ok"))
    assert.are.equal(200, res.status)
    assert.are.equal("ok", res.body)
  end

  it("stop a handler that allocates without bound at the VM's memory cap", function()
    local res = assert(client:get("/hog", { timeout = 30 }))
    assert.are.equal(500, res.status)
    assert.is_truthy(testing.wait_for(function() return server:log():find("not enough memory", 1, true) end, 3))
    still_serving()
    -- and the memory came back to the VM: a second runaway is stopped the same way
    res = assert(client:get("/hog", { timeout = 30 }))
    assert.are.equal(500, res.status)
    still_serving()
  end)

  it("log an error in __gc without failing the request", function()
    local res = assert(client:get("/gc-error"))
    assert.are.equal(200, res.status)
    assert.is_truthy(testing.wait_for(function()
      return server:log():find("error in __gc", 1, true) and server:log():find("gc failed on purpose", 1, true)
    end, 3), "the __gc error was not logged")
    still_serving()
  end)

  it("log an error in a timer callback", function()
    assert.are.equal(200, assert(client:get("/timer-error")).status)
    assert.is_truthy(testing.wait_for(function() return server:log():find("timer failed on purpose", 1, true) end, 3))
    still_serving()
  end)

  it("start every handler without a hook an earlier one left on its coroutine", function()
    for _ = 1, 3 do
      assert.are.equal("hooked", assert(client:get("/hook")).body)
      assert.are.equal("false", assert(client:get("/hooked")).body)
    end
    still_serving()
  end)

  it("exit cleanly afterwards", function()
    local status = server:stop()
    assert.are.equal(0, status)
  end)
end)
