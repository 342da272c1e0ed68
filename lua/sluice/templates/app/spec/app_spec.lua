--- {{name}}'s tests: they start the app with sluice on a free port and talk
--- HTTP and Server-Sent Events to it through sluice.testing (see
--- docs/testing.md in sluice's source). Run them with `busted` in the app's
--- folder.
local testing = require "sluice.testing"

--- The app's folder, this file's parent's parent, wherever busted runs.
local APP_DIR = debug.getinfo(1, "S").source:match("^@(.+)/spec/[^/]+$") or "."

--- The sluice to test with. $SLUICE_BIN first; else the sluice that made
--- this app (`sluice new` wrote its absolute path in), as long as it is
--- still there; else `sluice` from PATH, an installed one. So the tests run
--- as made, keep running once that build is gone, and can be pointed at
--- any other sluice.
---@return string
local function sluice_bin()
  local env = os.getenv("SLUICE_BIN")
  if env and env ~= "" then return env end
  local maker = "{{sluice_bin}}"
  local f = io.open(maker, "rb")
  if f then
    f:close()
    return maker
  end
  return "sluice"
end

describe("{{name}}", function()
  local server ---@type sluice.testing.Server
  local client ---@type sluice.testing.Client

  setup(function()
    server = testing.start(APP_DIR, { bin = sluice_bin() })
    client = testing.client(server)
  end)

  teardown(function()
    server:stop()
  end)

  --- Posts a message and returns the id it was published under.
  ---@param text string
  ---@return string
  local function post(text)
    local res = assert(client:post("/messages", { text = text }))
    assert.are.equal(202, res.status, res.body)
    return res:json().id
  end

  --- The text of the next event on the stream (3 s at most).
  ---@param stream sluice.testing.Stream
  ---@return string
  local function next_text(stream)
    local ev = assert(stream:next_event(3))
    assert.are.equal("message", ev.event)
    return testing.json.decode(ev.data).text
  end

  it("serves the page", function()
    local res = assert(client:get("/"))
    assert.are.equal(302, res.status)
    res = assert(client:get(res.headers.location))
    assert.are.equal(200, res.status)
    assert.truthy(res.body:find("EventSource", 1, true))
  end)

  it("answers 400 to a message without text", function()
    local res = assert(client:post("/messages", { words = "none" }))
    assert.are.equal(400, res.status)
    assert.is_string(res:json().error)
    res = assert(client:post("/messages", "not JSON"))
    assert.are.equal(400, res.status)
  end)

  it("streams a posted message to every open stream", function()
    local a = assert(client:sse("/events"))
    local b = assert(client:sse("/events"))
    assert.are.equal(200, a.status)
    assert.matches("^text/event%-stream", a.headers["content-type"])
    local id = post("hello")
    assert.are.equal("hello", next_text(a))
    assert.are.equal(id, a:last_event_id())
    assert.are.equal("hello", next_text(b))
    a:close()
    b:close()
  end)

  it("replays what a reconnecting client missed", function()
    local stream = assert(client:sse("/events"))
    post("before the drop")
    assert.are.equal("before the drop", next_text(stream))
    stream:close() -- the connection drops...
    post("missed 1")
    post("missed 2")
    -- ...and the client comes back with Last-Event-ID, as EventSource does.
    stream = assert(stream:reconnect())
    assert.are.equal("missed 1", next_text(stream))
    assert.are.equal("missed 2", next_text(stream))
    local _, err = stream:next_event(0.3) -- nothing repeated after the replay
    assert.are.equal("timeout", err)
    post("live again")
    assert.are.equal("live again", next_text(stream))
    stream:close()
  end)
end)
