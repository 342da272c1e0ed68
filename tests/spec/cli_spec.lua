-- The command line: --version, --help, clear one-line errors, PORT, clean
-- SIGTERM with a stream open, and several workers.
local socket = require "socket"
local testing = require "sluice.testing"

local APP = testing.root .. "/tests/apps/sse"

-- Non-empty lines of a text.
local function lines(text)
  local t = {}
  for line in text:gmatch("[^\n]+") do
    if line:match("%S") then t[#t + 1] = line end
  end
  return t
end

describe("command line", function()
  it("--version prints a version and exits 0", function()
    local r = testing.run { "--version" }
    assert.are.equal(0, r.status)
    assert.matches("%d+%.%d+", r.stdout .. r.stderr)
  end)

  it("--help exits 0 and documents --port", function()
    local r = testing.run { "--help" }
    assert.are.equal(0, r.status)
    assert.matches("%-%-port", r.stdout .. r.stderr)
  end)

  it("refuses a missing app dir with one line on stderr naming it", function()
    local dir = testing.root .. "/tests/apps/does-not-exist"
    local r = testing.run { "--host", "127.0.0.1", "--port", tostring(testing.free_port()), dir }
    assert.are_not.equal(0, r.status)
    assert.are_not.equal(124, r.status, "still running after 10 s")
    local errs = lines(r.stderr)
    assert.are.equal(1, #errs, "stderr:\n" .. r.stderr)
    assert.is_truthy(errs[1]:find("does-not-exist", 1, true), "stderr:\n" .. r.stderr)
  end)

  it("--port 0 serves every worker on the one port the kernel picked", function()
    local bin = os.getenv("SLUICE_BIN") or (testing.root .. "/build/sluice")
    local base = os.tmpname()
    local inner = ("%s --port 0 --workers 2 %s >%s 2>&1 & echo $! >%s"):format(
      testing.command_line { bin, testing.root .. "/tests/apps/channels" },
      "", testing.shell_quote(base .. ".log"), testing.shell_quote(base .. ".pid"))
    os.execute("sh -c " .. testing.shell_quote(inner) .. " </dev/null >/dev/null 2>&1")
    local port = testing.wait_for(function()
      local log = testing.read_file(base .. ".log")
      return log and math.tointeger(tonumber(log:match("on http://127%.0%.0%.1:(%d+)")))
    end, 5)
    local pid = testing.read_file(base .. ".pid")
    finally(function()
      if pid then os.execute("kill " .. pid:match("%d+") .. " 2>/dev/null") end
      for _, ext in ipairs { "", ".log", ".pid" } do os.remove(base .. ext) end
    end)
    assert.is_true(port ~= nil and port > 0, testing.read_file(base .. ".log"))
    -- Connections spread over both workers' listeners, all on that port.
    local seen = {}
    for _ = 1, 40 do
      local res = assert(testing.client(port):get("/stats"))
      seen[res:json().worker] = true
    end
    assert.are.same({ [1] = true, [2] = true }, seen)
  end)

  it("refuses an unknown flag with an error line", function()
    local r = testing.run { "--no-such-flag", APP }
    assert.are_not.equal(0, r.status)
    assert.are_not.equal(124, r.status, "still running after 10 s")
    assert.is_truthy(r.stderr:find("--no-such-flag", 1, true), "stderr:\n" .. r.stderr)
  end)

  it("refuses a flag missing its value", function()
    local r = testing.run { APP, "--port" }
    assert.are_not.equal(0, r.status)
    assert.are_not.equal(124, r.status, "still running after 10 s")
    assert.matches("%S", r.stderr)
  end)

  it("refuses a port another sluice is using, naming the port", function()
    local first = testing.start(APP)
    local port = tostring(first.port)
    local r = testing.run({ "--host", "127.0.0.1", "--port", port, APP }, { timeout = 5 })
    first:stop()
    assert.are_not.equal(124, r.status, "second server on the same port kept running")
    assert.are_not.equal(0, r.status)
    assert.is_truthy(r.stderr:find(port, 1, true), "stderr:\n" .. r.stderr)
  end)

  it("refuses a port another program is using, naming the port", function()
    local holder = assert(socket.bind("127.0.0.1", 0))
    local _, port = holder:getsockname()
    local r = testing.run({ "--host", "127.0.0.1", "--port", tostring(port), APP }, { timeout = 5 })
    holder:close()
    assert.are_not.equal(124, r.status, "server kept running on a taken port")
    assert.are_not.equal(0, r.status)
    assert.is_truthy(r.stderr:find(tostring(port), 1, true), "stderr:\n" .. r.stderr)
  end)

  it("honours PORT when --port is not given", function()
    local server = testing.start(APP, { port_via = "env" })
    local res = testing.client(server):get("/coro")
    server:stop()
    assert(res, "nothing listening on $PORT")
    assert.are.equal("1,2,3", res.body)
  end)

  it("serves with --workers 2", function()
    local server = testing.start(APP, { args = { "--workers", "2" } })
    local client = testing.client(server)
    for _ = 1, 20 do
      local res = assert(client:get("/coro"))
      assert.are.equal(200, res.status)
      assert.are.equal("1,2,3", res.body)
    end
    local stream = assert(client:sse("/frame"))
    assert.are.equal("tick", assert(stream:next_event(3)).event)
    stream:close()
    local status = server:stop()
    assert.are.equal(0, status)
  end)

  it("serves with --workers auto", function()
    local server = testing.start(APP, { args = { "--workers", "auto" } })
    local res = assert(testing.client(server):get("/coro"))
    server:stop()
    assert.are.equal("1,2,3", res.body)
  end)
end)

describe("SIGTERM", function()
  local server

  teardown(function() if server then server:stop() end end)

  it("ends open streams cleanly and exits 0 within 2 s", function()
    server = testing.start(APP)
    local client = testing.client(server)
    local stream = assert(client:sse("/gen"))
    assert(stream:next_event(3))
    local status, elapsed = server:stop()
    assert.are.equal(0, status, "exit status; log:\n" .. server:log())
    assert.is_true(elapsed <= 2.5, "exit took " .. elapsed .. " s")
    local rest, err = stream:read_all(2)
    assert(rest, "stream not ended: " .. tostring(err))
    assert.are.equal("closed", stream.end_reason, "the stream was not ended cleanly")
    -- what arrived is whole frames: nothing cut in the middle of an event
    assert.is_true(rest == "" or rest:sub(-2) == "\n\n", ("partial frame at the end: %q"):format(rest:sub(-40)))
    stream:close()
  end)

  it("and SIGINT too", function()
    server = testing.start(APP)
    local stream = assert(testing.client(server):sse("/sleeper"))
    assert(stream:next_event(3))
    local t0 = testing.now()
    server:signal("INT")
    local status = server:wait_exit(5)
    local elapsed = testing.now() - t0
    assert.are.equal(0, status)
    assert.is_true(elapsed <= 2.5, "exit took " .. elapsed .. " s")
    assert(stream:read_all(2))
    assert.are.equal("closed", stream.end_reason)
    stream:close()
  end)
end)
