-- Server-Sent Events: response head, frames byte for byte, generators that
-- end with their client, heartbeats, and Lua coroutines inside handlers.
local testing = require "sluice.testing"

local function app(name) return testing.root .. "/tests/apps/" .. name end

describe("SSE", function()
  local server, client

  setup(function()
    server = testing.start(app("sse"))
    client = testing.client(server)
  end)

  teardown(function() if server then server:stop() end end)

  -- The whole body of a stream the route closes itself.
  local function body_of(path)
    local stream = assert(client:sse(path))
    assert.are.equal(200, stream.status)
    local body, err = stream:read_all(3)
    stream:close()
    assert(body, "stream did not end: " .. tostring(err))
    return body, stream
  end

  local function count()
    return assert(assert(client:get("/count")):json())
  end

  describe("response head", function()
    it("has the event-stream headers and no length", function()
      local stream = assert(client:sse("/frame"))
      assert.are.equal(200, stream.status)
      assert.matches("^HTTP/1.1 200 OK\r\n", stream.raw_head)
      assert.are.equal("text/event-stream; charset=utf-8", stream.headers["content-type"])
      assert.are.equal("no-cache", stream.headers["cache-control"])
      assert.are.equal("no", stream.headers["x-accel-buffering"])
      assert.is_nil(stream.headers["content-length"])
      assert.is_nil(stream.headers["content-encoding"])
      stream:close()
    end)

    it("is flushed before the first event", function()
      -- /silent opens a stream and never writes (heartbeat 60 s here)
      local stream = assert(client:sse("/silent", { timeout = 3 }))
      assert.are.equal(200, stream.status)
      local bytes, err = stream:read_raw(0.3)
      assert.is_nil(bytes)
      assert.are.equal("timeout", err)
      stream:close()
    end)
  end)

  describe("frames", function()
    it("encode event, id and multi-line data exactly", function()
      assert.are.equal("event: tick\nid: 1\ndata: a\ndata: b\n\n", (body_of("/frame")))
    end)

    it("split data on CRLF, CR and LF, keep empty lines, and send strings as data", function()
      assert.are.equal(
        "data: x\ndata: y\ndata: z\n\n"
          .. "data: a\ndata:\ndata: b\n\n"
          .. "data:\n\n"
          .. "data: plain\n\n",
        (body_of("/lines")))
    end)

    it("put event, id, retry and data in that order", function()
      assert.are.equal("event: e\nid: 7\nretry: 500\ndata: d\n\n", (body_of("/fields")))
    end)

    it("encode table data as JSON on one line", function()
      local body = body_of("/json")
      assert.matches("^event: obj\ndata: [^\n]*\n\n$", body)
      local json = body:match("^event: obj\ndata: ([^\n]*)\n\n$")
      assert.are.same({ n = 1 }, testing.json.decode(json))
    end)

    it("send the retry option first", function()
      assert.are.equal("retry: 2000\n\ndata: x\n\n", (body_of("/retry")))
    end)

    it("write comments", function()
      assert.are.equal(": hello\n\ndata: x\n\n", (body_of("/comment")))
    end)

    it("refuse event or id holding a line break or NUL with an error naming the field", function()
      local stream = assert(client:sse("/bad-fields"))
      local ev1 = assert(stream:next_event(3))
      local ev2 = assert(stream:next_event(3))
      stream:close()
      assert.are.equal("result", ev1.event)
      assert.matches("%f[%a]event%f[%A]", ev1.data)
      assert.are_not.equal("true", ev1.data)
      assert.are.equal("result", ev2.event)
      assert.matches("%f[%a]id%f[%A]", ev2.data)
      assert.are_not.equal("true", ev2.data)
    end)

    it("parse as the events that were sent", function()
      local stream = assert(client:sse("/frame"))
      local ev = assert(stream:next_event(3))
      assert.are.same({ event = "tick", id = "1", data = "a\nb" }, ev)
      local none, err = stream:next_event(3)
      assert.is_nil(none)
      assert.are.equal("closed", err)
    end)
  end)

  describe("stream:close()", function()
    it("ends the response: the server closes the connection cleanly", function()
      local _, stream = body_of("/frame")
      assert.is_true(stream.ended)
      assert.are.equal("closed", stream.end_reason)
    end)
  end)

  describe("client disconnect", function()
    it("ends the generator", function()
      assert.are.equal(0, count().gen)
      local stream = assert(client:sse("/gen"))
      assert.are.equal("0", assert(stream:next_event(3)).data)
      assert.are.equal("1", assert(stream:next_event(3)).data)
      assert.are.equal(1, count().gen)
      stream:close()
      local gone = testing.wait_for(function() return count().gen == 0 end, 2, 0.05)
      assert.is_truthy(gone, "generator still running 2 s after the client left")
    end)

    it("cancels a sleeping generator and closes its to-be-closed variables", function()
      assert.are.equal(0, count().sleeper)
      local stream = assert(client:sse("/sleeper"))
      assert.are.equal("started", assert(stream:next_event(3)).data)
      assert.are.equal(1, count().sleeper)
      stream:close()
      local gone = testing.wait_for(function() return count().sleeper == 0 end, 2, 0.05)
      assert.is_truthy(gone, "sleeping generator still alive 2 s after the client left")
      assert.is_false(count().after_sleep, "code after the cancelled sleep ran")
    end)

    it("sets stream.closed, and send no longer succeeds", function()
      local stream = assert(client:sse("/watch"))
      assert.are.equal("watching", assert(stream:next_event(3)).data)
      local state = assert(assert(client:get("/watch-state")):json())
      assert.is_false(state.closed)
      stream:close()
      local final = testing.wait_for(function()
        local s = assert(assert(client:get("/watch-state")):json())
        return s.closed and s
      end, 2, 0.05)
      assert.is_truthy(final, "stream.closed still false 2 s after the client left")
      assert.is_false(final.send_succeeded)
    end)

    it("leaves the server serving many short-lived streams", function()
      for _ = 1, 20 do
        local stream = assert(client:sse("/gen"))
        assert(stream:next_event(3))
        stream:close()
      end
      local gone = testing.wait_for(function() return count().gen == 0 end, 3, 0.05)
      assert.is_truthy(gone, "generators left running: " .. tostring(count().gen))
    end)
  end)

  describe("backpressure", function()
    it("delivers every event in order to a client that reads late", function()
      local n = 3000 -- about 3 MB
      local stream = assert(client:sse("/bulk/" .. n))
      testing.sleep(0.5) -- let the server fill the socket buffers
      for i = 1, n do
        local ev, err = stream:next_event(5)
        assert(ev, ("event %d: %s"):format(i, tostring(err)))
        assert.are.equal(tostring(i), ev.id)
        assert.are.equal(tostring(i), ev.data:match("^(%d+) "))
        assert.are.equal(1000 + #tostring(i) + 1, #ev.data)
      end
      local none, err = stream:next_event(3)
      assert.is_nil(none)
      assert.are.equal("closed", err)
      stream:close()
    end)
  end)

  describe("a generator error after the stream opened", function()
    it("ends the stream after what was sent, is logged, and the server carries on", function()
      local stream = assert(client:sse("/fail-after-open"))
      assert.are.equal(200, stream.status)
      assert.are.equal("before", assert(stream:next_event(3)).data)
      local none, err = stream:next_event(3)
      assert.is_nil(none)
      assert.are.equal("closed", err)
      stream:close()
      assert.is_truthy(testing.wait_for(function()
        return server:log():find("generator failed on purpose", 1, true)
      end, 3), "the error was not logged")
      assert.are.equal("1,2,3", assert(client:get("/coro")).body)
    end)
  end)

  describe("Lua coroutines in handlers", function()
    it("coroutine.wrap and coroutine.yield work as Lua's own", function()
      local res = assert(client:get("/coro"))
      assert.are.equal(200, res.status)
      assert.are.equal("1,2,3", res.body)
    end)

    it("sluice.sleep works inside a user coroutine", function()
      local t0 = testing.now()
      local res = assert(client:get("/coro-sleep"))
      assert.are.equal(200, res.status)
      assert.are.equal("a,b", res.body)
      assert.is_true(testing.now() - t0 >= 0.09, "the sleeps did not sleep")
    end)
  end)

  it("server is still running", function()
    assert.is_nil(server:exit_status(), "server died:\n" .. server:log())
    assert.are.equal(0, (server:stop()))
  end)
end)

describe("SSE heartbeat", function()
  local server, client

  setup(function()
    server = testing.start(app("heartbeat"))
    client = testing.client(server)
  end)

  teardown(function() if server then server:stop() end end)

  it("arrives as ':\\n\\n' on a silent stream", function()
    local stream = assert(client:sse("/silent"))
    assert.are.equal(200, stream.status)
    local t0 = testing.now()
    local bytes, err = stream:raw_until("\n\n", 2.5)
    local elapsed = testing.now() - t0
    stream:close()
    assert(bytes, "no heartbeat within 2.5 s: " .. tostring(err))
    assert.are.equal(":\n\n", bytes)
    assert.is_true(elapsed >= 0.5, "heartbeat after only " .. elapsed .. " s")
  end)

  it("keeps coming", function()
    local stream = assert(client:sse("/silent"))
    for _ = 1, 2 do
      assert.are.equal(":\n\n", assert(stream:raw_until("\n\n", 2.5)))
    end
    stream:close()
  end)
end)

describe("the clock demo app", function()
  local server, client

  setup(function()
    server = testing.start(testing.root .. "/apps/clock")
    client = testing.client(server)
  end)

  teardown(function() if server then server:stop() end end)

  it("redirects / to /index.html", function()
    local res = assert(client:get("/"))
    assert.are.equal(302, res.status)
    assert.are.equal("/index.html", res.headers["location"])
  end)

  it("serves its page", function()
    local res = assert(client:get("/index.html"))
    assert.are.equal(200, res.status)
    assert.matches("^text/html", res.headers["content-type"])
    assert.matches("EventSource", res.body)
  end)

  it("streams tick events with increasing ids and the UTC time", function()
    local stream = assert(client:sse("/clock"))
    assert.are.equal(200, stream.status)
    local first = assert(stream:next_event(3))
    local second = assert(stream:next_event(3))
    stream:close()
    for _, ev in ipairs { first, second } do
      assert.are.equal("tick", ev.event)
      assert.matches("^%d%d:%d%d:%d%d$", ev.data)
    end
    assert.is_true(tonumber(second.id) > tonumber(first.id))
  end)
end)
