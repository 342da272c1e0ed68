-- sluice.fetch and stream:relay against real upstreams: the Node mock LLM
-- API (tests/mock/upstream.mjs) and a scripted misbehaving server
-- (tests/lib/rawserver.lua). The app under test (tests/apps/fetch) runs a
-- fetch as each test describes and reports what it saw.
local testing = require "sluice.testing"
local upstream = require "upstream"

local json = testing.json
local normalize = upstream.normalize

local CHAT = "/v1/chat/completions"
local MESSAGES = "/v1/messages"
local PROMPT = { { role = "user", content = "Say something." } }

local APP = testing.root .. "/tests/apps/fetch"

-- A server that died in an earlier test (a crash is that test's failure)
-- is started afresh, so one crash does not fail every later test.
local function revive(server)
  if server:exit_status() == nil then return server end
  return testing.start(APP)
end

-- Why the server did not answer: its exit status and log, when it died.
local function died(server, err)
  testing.wait_for(function() return server:exit_status() end, 0.5)
  return ("no answer (%s); sluice exit status %s\n%s"):format(tostring(err), tostring(server:exit_status()),
                                                               server:log():sub(-3000))
end

describe("sluice.fetch", function()
  local mock, raw, server, client

  setup(function()
    mock = upstream.mock()
    raw = upstream.raw()
    server = testing.start(APP)
    client = testing.client(server)
  end)

  teardown(function()
    if server then server:stop() end
    if mock then mock:stop() end
    if raw then raw:stop() end
  end)

  before_each(function()
    mock:reset()
    server = revive(server)
    client = testing.client(server)
  end)

  -- Runs one fetch in the app (POST /fetch) and returns its report.
  local function fetch(url, opts, read, timeout)
    local res, err = client:post("/fetch", { url = url, opts = opts, read = read },
                                 { timeout = timeout or 10 })
    if not res then error("POST /fetch: " .. died(server, err)) end
    assert.are.equal(200, res.status, res.body)
    return assert(res:json())
  end

  -- A streaming request body for the mock.
  local function stream_body(extra)
    local b = { model = "mock-model", messages = PROMPT, stream = true }
    for k, v in pairs(extra or {}) do b[k] = v end
    return b
  end

  -- The mock's knobs as request headers.
  local function knobs(t)
    local h = {}
    for k, v in pairs(t or {}) do h["X-Mock-" .. k] = tostring(v) end
    return h
  end

  describe("requests and responses", function()
    it("GET sends its headers; status and lower-case headers come back", function()
      local r = fetch(mock:url("/v1/models"), { headers = { ["X-Test"] = "get" } })
      assert.are.equal(404, r.status)
      assert.is_false(r.ok)
      assert.are.equal("application/json", r.headers["content-type"])
      assert.matches("Unknown request URL: GET /v1/models", r.result, 1, true)
      local entry = mock:last()
      assert.are.equal("GET", entry.method)
      assert.are.equal("get", entry.headers["x-test"])
      assert.is_nil(entry.body)
    end)

    it("POST sends a table body as JSON with its content type", function()
      local body = { model = "m-1", messages = { { role = "user", content = "héllo wörld" } }, max_tokens = 3 }
      local r = fetch(mock:url(CHAT), { body = body, headers = { ["X-Test"] = "post" } })
      assert.are.equal(200, r.status)
      assert.is_true(r.ok)
      assert.is_true(r.complete)
      assert.are.equal("req_mock_1", r.headers["x-request-id"])
      local reply = assert(json.decode(r.result))
      assert.are.equal("Hello! I am", reply.choices[1].message.content)
      assert.are.equal("length", reply.choices[1].finish_reason)
      local entry = mock:last()
      assert.are.equal("POST", entry.method)
      assert.are.equal("application/json", entry.headers["content-type"])
      assert.are.equal("post", entry.headers["x-test"])
      assert.are.same(body, entry.body)
    end)

    it("res:json() decodes the whole body", function()
      local r = fetch(mock:url(CHAT), { body = { messages = PROMPT, max_tokens = 1 } }, "json")
      assert.is_nil(r.err)
      assert.are.equal("table", type(r.result))
      assert.are.equal("Hello!", r.result.choices[1].message.content)
    end)

    it("res:text() past max_body fails with a message naming the limit", function()
      local r = fetch(mock:url(CHAT), { body = { messages = PROMPT }, max_body = 100 })
      assert.are.equal(200, r.status)
      assert.is_nil(r.result)
      assert.matches("max_body", r.err, 1, true)
      -- and a body within the limit is read whole
      local ok = fetch(mock:url(CHAT), { body = { messages = PROMPT }, max_body = 100000 })
      assert.are.equal("chat.completion", assert(json.decode(ok.result)).object)
    end)
  end)

  describe("iterators", function()
    it("res:chunks() yields the bytes as they arrive", function()
      local r = fetch(raw:url("/chunks"), nil, "chunks")
      assert.is_true(r.complete)
      assert.is_nil(r.err)
      assert.are.equal("abbccc", table.concat(r.result))
      assert.is_true(#r.result >= 2, "the pieces 150 ms apart came as one chunk")
    end)

    it("res:lines() splits on CR, LF and CRLF, also when CRLF is cut across reads", function()
      local r = fetch(raw:url("/lines"), nil, "lines")
      assert.is_true(r.complete)
      assert.are.same({ "alpha", "beta", "gamma", "delta", "", "zeta", "", "eta", "epsilon" }, r.result)
    end)

    it("res:lines() of a body cut at every byte, in CR and CRLF, equal the LF lines", function()
      local base = fetch(mock:url(CHAT), { body = stream_body() }, "lines")
      assert.is_true(#base.result > 10)
      for _, k in ipairs { { split = "every-byte", newline = "cr" }, { split = "every-byte", newline = "crlf" },
                            { split = "random", newline = "crlf" } } do
        local r = fetch(mock:url(CHAT), { body = stream_body(), headers = knobs(k) }, "lines")
        assert.is_true(r.complete)
        assert.are.equal(normalize(json.encode(base.result)), normalize(json.encode(r.result)),
                         json.encode(k) .. " seed " .. tostring(mock:last().seed))
      end
    end)

    for _, path in ipairs { CHAT, MESSAGES } do
      it("res:events() of " .. path .. " split anywhere, in CRLF or CR, with comments, equal the plain events",
         function()
        local base = fetch(mock:url(path), { body = stream_body() }, "events")
        assert.is_true(base.complete)
        assert.is_true(#base.result >= 10, "too few events")
        local want = normalize(json.encode(base.result))
        local cases = {
          { split = "every-byte", newline = "crlf", comments = 1 },
          { split = "every-byte", newline = "cr", comments = 1 },
          { split = "random", newline = "crlf", comments = 1 },
          { split = "random", newline = "cr" },
          { split = "random", newline = "lf", comments = 1 },
        }
        for _, k in ipairs(cases) do
          local r = fetch(mock:url(path), { body = stream_body(), headers = knobs(k) }, "events")
          assert.is_true(r.complete)
          assert.are.equal(want, normalize(json.encode(r.result)),
                           json.encode(k) .. " seed " .. tostring(mock:last().seed))
        end
      end)
    end
  end)

  describe("failures name their cause", function()
    it("connection refused", function()
      local r = fetch(("http://127.0.0.1:%d/"):format(upstream.dead_port()))
      assert.matches("^connection refused", r.failed)
    end)

    it("DNS failure", function()
      local r = fetch("http://no-such-host.invalid/")
      assert.matches("^DNS", r.failed)
    end)

    it("timeout while waiting for the head", function()
      local r = fetch(raw:url("/stall-head"), { timeout = 0.5 })
      assert.matches("^timeout", r.failed)
      assert.is_true(r.elapsed >= 0.45 and r.elapsed < 3, "took " .. r.elapsed .. " s")
    end)

    it("timeout in the middle of the body", function()
      local r = fetch(raw:url("/stall-body"), { timeout = 0.5 }, "text")
      assert.are.equal(200, r.status)
      assert.is_nil(r.result)
      assert.matches("^timeout", r.err)
      assert.is_false(r.complete)
      assert.is_true(r.elapsed < 3, "took " .. r.elapsed .. " s")
    end)

    it("read_timeout: a stalled body fails after that many seconds without a byte", function()
      local r = fetch(raw:url("/stall-body"), { read_timeout = 1 }, "chunks", 15)
      assert.are.same({ "partial" }, r.result)
      assert.matches("^timeout", r.err)
      assert.is_false(r.complete)
      assert.is_true(r.elapsed >= 0.9 and r.elapsed < 2.5,
                     ("read_timeout = 1 fired after %.2f s of silence"):format(r.elapsed))
    end)

    it("read_timeout: a slow body that never stalls that long completes", function()
      local r = fetch(raw:url("/drip"), { read_timeout = 1 }, "chunks")
      assert.is_nil(r.err)
      assert.is_true(r.complete)
      assert.are.equal("dripdrip", table.concat(r.result))
    end)

    it("a reset mid-stream ends the iteration with res.err set", function()
      local r = fetch(mock:url(CHAT), { body = stream_body(), headers = knobs { ["Fail-After"] = 3 } }, "events")
      assert.are.equal(200, r.status)
      assert.are.equal(4, #r.result) -- the role chunk and three tokens
      assert.matches("^connection reset", r.err)
      assert.is_false(r.complete)
    end)
  end)

  describe("redirects", function()
    it("are the answer by default", function()
      local r = fetch(raw:url("/redirect"))
      assert.are.equal(302, r.status)
      assert.are.equal("/target", r.headers.location)
      assert.are.equal("", r.result)
    end)

    it("are followed with redirects = true: the final status, headers and body", function()
      local r = fetch(raw:url("/redirect"), { redirects = true })
      assert.are.equal("arrived", r.result)
      assert.are.equal(200, r.status)
      assert.are.equal("7", r.headers["content-length"])
      assert.is_nil(r.headers.location)
    end)

    it("reach the target when the upstream drops the kept-alive connection", function()
      -- curl reuses the connection for the second hop; the server closes it
      -- unread (a reset): a fresh connection must be tried, as curl does
      -- when it sees the error itself.
      local r = fetch(raw:url("/redirect-drop"), { redirects = true })
      assert.is_nil(r.err)
      assert.are.equal("arrived", r.result)
    end)
  end)
end)

describe("stream:relay", function()
  local mock, server, client

  setup(function()
    mock = upstream.mock()
    server = testing.start(APP)
    client = testing.client(server)
  end)

  teardown(function()
    if server then server:stop() end
    if mock then mock:stop() end
  end)

  before_each(function()
    mock:reset()
    server = revive(server)
    client = testing.client(server)
  end)

  local function knobs(t)
    local h = {}
    for k, v in pairs(t or {}) do h["X-Mock-" .. k] = tostring(v) end
    return h
  end

  local function spec(path, k, extra)
    local s = { url = mock:url(path), opts = {
      body = { model = "mock-model", messages = PROMPT, stream = true }, headers = knobs(k) } }
    for key, v in pairs(extra or {}) do s[key] = v end
    return s
  end

  -- Opens the relayed stream (POST /relay).
  local function open(s, timeout)
    local stream, err = client:sse("/relay", { method = "POST", body = s, timeout = timeout or 5 })
    if not stream then error("POST /relay: " .. died(server, err)) end
    assert.are.equal(200, stream.status)
    assert.are.equal("text/event-stream; charset=utf-8", stream.headers["content-type"])
    return stream
  end

  local function relays()
    return assert(assert(client:get("/relays")):json())
  end

  -- The upstream body straight from the mock (no knobs: LF, one write per event).
  local function direct(path)
    local res = assert(mock:post(path, { model = "mock-model", messages = PROMPT, stream = true }))
    assert.are.equal(200, res.status)
    return res.body
  end

  -- Each event of an LF-only, comment-free SSE body, written the way sluice
  -- encodes events: event, then data lines, then a blank line.
  local function canonical(body)
    local out = {}
    for block in body:gmatch("(.-)\n\n") do
      local event, data = nil, {}
      for line in (block .. "\n"):gmatch("(.-)\n") do
        local field, value = line:match("^(%w+): ?(.*)$")
        if field == "event" then event = value elseif field == "data" then data[#data + 1] = value end
      end
      if #data > 0 then
        if event then out[#out + 1] = "event: " .. event .. "\n" end
        for _, d in ipairs(data) do out[#out + 1] = "data: " .. d .. "\n" end
        out[#out + 1] = "\n"
      end
    end
    return table.concat(out)
  end

  for _, path in ipairs { CHAT, MESSAGES } do
    it("without a transform re-encodes " .. path .. " byte for byte, however the upstream cut it", function()
      local want = normalize(canonical(direct(path)))
      assert.is_true(#want > 1000)
      for _, k in ipairs { {}, { split = "every-byte", newline = "crlf", comments = 1 },
                           { split = "random", newline = "cr", comments = 1 } } do
        local stream = open(spec(path, k, { tag = "exact" }))
        local body = assert(stream:read_all(15))
        stream:close()
        assert.are.equal(want, normalize(body), json.encode(k))
        local state = relays().exact
        assert.are.equal("ended", state.state)
        assert.is_true(state.ok)
      end
    end)
  end

  it("with a transform sends what it returns and drops what it does not", function()
    local reply = assert(assert(mock:post(CHAT, { messages = PROMPT })):json())
    local text = reply.choices[1].message.content
    local want = {}
    for tok in text:gmatch("%s*%S+") do want[#want + 1] = "event: token\ndata: " .. tok .. "\n\n" end
    want[#want + 1] = "event: done\ndata: .\n\n"
    local stream = open(spec(CHAT, { split = "random" }, { transform = "tokens", tag = "t" }))
    local body = assert(stream:read_all(15))
    stream:close()
    assert.are.equal(table.concat(want), body)
    assert.is_true(relays().t.ok)
  end)

  it("ends the upstream request within 100 ms of the client leaving", function()
    local stream = open(spec(CHAT, { tokens = 200, ["token-delay"] = 50 }, { tag = "gone" }))
    assert(stream:next_event(5))
    assert(stream:next_event(5))
    local closed_ms = testing.now() * 1000 -- the mock's clock counts whole ms
    stream:close()
    local entry, seen = mock:wait_last(function(e) return e.closed_at ~= nil end, 5)
    assert(entry, "the mock's request is still open: " .. json.encode(seen))
    assert.are.equal("client_closed", entry.outcome)
    assert.is_false(entry.completed)
    local latency = entry.closed_at - closed_ms
    print(("\n  relay: client gone -> upstream closed in %.1f ms"):format(latency))
    assert.is_true(latency < 100, ("the upstream saw the close %.1f ms after the client left"):format(latency))
    assert.is_true(entry.tokens_sent < 200)
    assert.is_truthy(testing.wait_for(function() return relays().gone.state == "cancelled" end, 2),
                     "the relaying handler was not ended")
  end)

  it("with drain_on_disconnect reads the upstream to its end after the client left", function()
    local s = spec(CHAT, { tokens = 40, ["token-delay"] = 20 }, { tag = "drain" })
    s.opts.drain_on_disconnect = true
    local stream = open(s)
    assert(stream:next_event(5))
    stream:close()
    local entry, seen = mock:wait_last(function(e) return e.closed_at ~= nil end, 5)
    assert(entry, "the mock's request did not end: " .. json.encode(seen))
    assert.are.equal("completed", entry.outcome)
    assert.is_true(entry.completed)
    assert.are.equal(40, entry.tokens_sent)
  end)

  it("does not buffer the upstream for a client that stops reading", function()
    -- A reply of >= 150 MB (each chunk is over 150 bytes); TCP buffers
    -- between the mock, sluice and the client hold some MB of it.
    local TOKENS = 1000000
    local rss_before = assert(upstream.rss_kib(server.pid))
    -- A client that sends its request, reads the head, and never reads again.
    local conn = assert(testing.connect(server))
    local body = json.encode(spec(CHAT, { tokens = TOKENS }, { tag = "paused" }))
    assert(conn:send(testing.request_bytes("POST", "/relay", {
      headers = { ["Content-Type"] = "application/json", Accept = "text/event-stream" }, body = body })))
    assert(conn:receive_until("\r\n\r\n", 5))
    -- Wait for the upstream to stall: bytes_sent unchanged for a second.
    local last, stable_since, entry = -1, nil, nil
    local stalled = testing.wait_for(function()
      entry = mock:last()
      if entry and entry.bytes_sent == last then
        stable_since = stable_since or testing.now()
        return testing.now() - stable_since >= 1
      end
      last, stable_since = entry and entry.bytes_sent or -1, nil
      return false
    end, 30, 0.1)
    local rss_after = assert(upstream.rss_kib(server.pid))
    local reply_bytes = TOKENS * 150
    print(("\n  paused client: upstream stalled after %.1f MB of a >= %.0f MB reply; sluice RSS %.1f -> %.1f MB (+%.1f MB)")
      :format(entry.bytes_sent / 1e6, reply_bytes / 1e6, rss_before / 1024, rss_after / 1024,
              (rss_after - rss_before) / 1024))
    assert.is_truthy(stalled, "the upstream never stalled: bytes_sent " .. tostring(entry and entry.bytes_sent))
    assert.is_nil(entry.closed_at)
    assert.is_true(entry.bytes_sent < reply_bytes / 4,
                   ("the upstream sent %d bytes before stalling"):format(entry.bytes_sent))
    assert.is_true(rss_after - rss_before < 16 * 1024,
                   ("sluice grew by %d KiB"):format(rss_after - rss_before))
    -- and when the paused client finally leaves, the upstream request ends
    conn:close()
    local closed = mock:wait_last(function(e) return e.closed_at ~= nil end, 5)
    assert(closed, "the upstream request outlived its client")
    assert.are.equal("client_closed", closed.outcome)
  end)
end)
