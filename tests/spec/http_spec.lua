-- HTTP/1.1 behaviour of the server: routes, bodies, keep-alive, pipelining,
-- and every error status with its trigger.
local testing = require "sluice.testing"

local function app(name) return testing.root .. "/tests/apps/" .. name end

-- The methods in an Allow header, as a sorted list.
local function allow_set(value)
  local t = {}
  for m in (value or ""):gmatch("[^,%s]+") do t[#t + 1] = m end
  table.sort(t)
  return t
end

local function elapsed_since(t0) return testing.now() - t0 end

describe("the hello demo app", function()
  local server, client

  setup(function()
    server = testing.start(testing.root .. "/apps/hello")
    client = testing.client(server)
  end)

  teardown(function() if server then server:stop() end end)

  it("greets by name in text/plain", function()
    local res = assert(client:get("/hello/world"))
    assert.are.equal(200, res.status)
    assert.are.equal("text/plain; charset=utf-8", res.headers["content-type"])
    assert.are.equal("hello world", res.body)
  end)

  it("echoes JSON", function()
    local payload = { name = "sluice", list = { 1, 2, 3 }, nested = { ok = true } }
    local res = assert(client:post("/echo", payload))
    assert.are.equal(200, res.status)
    assert.matches("^application/json", res.headers["content-type"])
    assert.are.same(payload, res:json())
  end)

  it("answers invalid JSON with 400 and a JSON error", function()
    local res = assert(client:post("/echo", "{not json", { headers = { ["Content-Type"] = "application/json" } }))
    assert.are.equal(400, res.status)
    assert.matches("^application/json", res.headers["content-type"])
    local body = assert(res:json(), "400 body is not JSON: " .. res.body)
    assert.is_string(body.error)
  end)
end)

describe("HTTP", function()
  local server, client

  setup(function()
    server = testing.start(app("http"))
    client = testing.client(server)
  end)

  teardown(function() if server then server:stop() end end)

  describe("routes", function()
    it("answer a returned string with 200 text/plain and a Content-Length", function()
      local res = assert(client:get("/hello/world"))
      assert.are.equal(200, res.status)
      assert.are.equal("HTTP/1.1", res.version)
      assert.are.equal("text/plain; charset=utf-8", res.headers["content-type"])
      assert.are.equal("11", res.headers["content-length"])
      assert.are.equal("hello world", res.body)
    end)

    it("pass a trailing * and the query string", function()
      local res = assert(client:get("/files/a/b/c.txt?x=1&y=two%20words"))
      assert.are.equal(200, res.status)
      local body = assert(res:json(), res.body)
      assert.are.equal("a/b/c.txt", body.rest)
      assert.are.same({ x = "1", y = "two words" }, body.query)
    end)

    it("answer a returned table with its status, headers and body", function()
      local res = assert(client:get("/status/418"))
      assert.are.equal(418, res.status)
      assert.are.equal("yes", res.headers["x-test"])
      assert.are.equal("custom", res.body)
    end)

    it("round-trip JSON", function()
      local payload = { s = "h\195\169llo \"quoted\"", n = 42, a = { 1, 2, 3 }, o = { t = true } }
      local res = assert(client:post("/echo", payload))
      assert.are.equal(200, res.status)
      assert.matches("^application/json", res.headers["content-type"])
      assert.are.same(payload, res:json())
    end)

    it("answer invalid JSON with 400 and a JSON error", function()
      local res = assert(client:post("/echo", "[1, 2", { headers = { ["Content-Type"] = "application/json" } }))
      assert.are.equal(400, res.status)
      assert.matches("^application/json", res.headers["content-type"])
      local body = assert(res:json(), "400 body is not JSON: " .. res.body)
      assert.is_string(body.error)
    end)

    it("answer an unknown path with 404 text/plain", function()
      local res = assert(client:get("/no/such/route"))
      assert.are.equal(404, res.status)
      assert.matches("^text/plain", res.headers["content-type"])
      assert.is_not_nil(res.headers["content-length"])
    end)

    it("answer a wrong method with 405 and Allow (HEAD implied by GET)", function()
      local res = assert(client:request("DELETE", "/hello/x"))
      assert.are.equal(405, res.status)
      assert.are.same({ "GET", "HEAD" }, allow_set(res.headers["allow"]))

      res = assert(client:request("PUT", "/thing", { body = "x" }))
      assert.are.equal(405, res.status)
      assert.are.same({ "GET", "HEAD", "POST" }, allow_set(res.headers["allow"]))
    end)
  end)

  describe("connections", function()
    it("keep a connection alive across requests", function()
      local conn = assert(client:connect())
      local r1 = assert(conn:request("GET", "/hello/one"))
      assert.are.equal("hello one", r1.body)
      assert.are_not.equal("close", (r1.headers["connection"] or ""):lower())
      local r2 = assert(conn:request("GET", "/hello/two"))
      assert.are.equal("hello two", r2.body)
      conn:close()
    end)

    it("answer pipelined requests in order, even when the first is slower", function()
      local conn = assert(client:connect())
      assert(conn:send(testing.request_bytes("GET", "/slow")
        .. testing.request_bytes("GET", "/hello/a")
        .. testing.request_bytes("GET", "/hello/b")))
      local bodies = {}
      for i = 1, 3 do
        local res = assert(conn:receive_response())
        assert.are.equal(200, res.status)
        bodies[i] = res.body
      end
      assert.are.same({ "slow", "hello a", "hello b" }, bodies)
      conn:close()
    end)

    it("answer HEAD with the headers of GET and no body", function()
      local conn = assert(client:connect())
      -- A GET pipelined behind the HEAD would not parse if HEAD had a body.
      assert(conn:send(testing.request_bytes("HEAD", "/hello/world") .. testing.request_bytes("GET", "/hello/next")))
      local head = assert(conn:receive_response { method = "HEAD" })
      assert.are.equal(200, head.status)
      assert.are.equal("11", head.headers["content-length"])
      assert.are.equal("text/plain; charset=utf-8", head.headers["content-type"])
      local get = assert(conn:receive_response())
      assert.are.equal("hello next", get.body)
      local extra, err = conn:read_raw(0.3)
      assert.is_nil(extra, "unexpected bytes after the responses")
      assert.are.equal("timeout", err)
      conn:close()
    end)

    it("read a chunked request body sent in pieces", function()
      local conn = assert(client:connect())
      assert(conn:send("POST /raw HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"))
      for _, piece in ipairs { "5\r\nhe", "llo\r\n", "6\r\n world\r\n", "0\r\n", "\r\n" } do
        testing.sleep(0.02)
        assert(conn:send(piece))
      end
      local res = assert(conn:receive_response())
      assert.are.equal(200, res.status)
      assert.are.equal("hello world", res.body)
      conn:close()
    end)

    it("send 100 Continue before the body of an Expect: 100-continue request", function()
      local conn = assert(client:connect())
      assert(conn:send("POST /raw HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"))
      local interim = assert(conn:receive_response { timeout = 3 })
      assert.are.equal(100, interim.status)
      assert.matches("^HTTP/1.1 100 Continue\r\n", interim.raw_head)
      assert(conn:send("hello"))
      local res = assert(conn:receive_response())
      assert.are.equal(200, res.status)
      assert.are.equal("hello", res.body)
      conn:close()
    end)

    it("close after the response when the request says Connection: close", function()
      local conn = assert(client:connect())
      local res = assert(conn:request("GET", "/hello/x", { headers = { Connection = "close" } }))
      assert.are.equal("hello x", res.body)
      assert.is_true((conn:closed(3)), "connection left open")
      conn:close()
    end)

    it("close after answering an HTTP/1.0 request without keep-alive", function()
      local conn = assert(client:connect())
      assert(conn:send("GET /hello/old HTTP/1.0\r\n\r\n"))
      local res = assert(conn:receive_response())
      assert.are.equal(200, res.status)
      assert.are.equal("hello old", res.body)
      assert.is_true((conn:closed(3)), "connection left open")
      conn:close()
    end)

    it("stay usable after 404 and 405 answers", function()
      local conn = assert(client:connect())
      assert.are.equal(404, assert(conn:request("GET", "/nope")).status)
      assert.are.equal(405, assert(conn:request("DELETE", "/hello/x")).status)
      assert.are.equal("hello y", assert(conn:request("GET", "/hello/y")).body)
      conn:close()
    end)

    it("answer a malformed request with 400 and close", function()
      for _, bad in ipairs {
        "THIS IS NOT HTTP\r\n\r\n",
        "GET /hello/x HTTP/1.1\r\nHost: t\r\nno colon here\r\n\r\n",
        -- a request smuggling shape: both lengths
        "POST /raw HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
      } do
        local conn = assert(client:connect())
        assert(conn:send(bad))
        local res = assert(conn:receive_response())
        assert.are.equal(400, res.status)
        assert.is_true((conn:closed(3)), "connection left open after 400")
        conn:close()
      end
    end)
  end)

  describe("limits", function()
    it("answer headers over 16 KiB with 431", function()
      local conn = assert(client:connect())
      conn:send("GET /hello/x HTTP/1.1\r\nHost: t\r\nX-Big: " .. ("a"):rep(17 * 1024) .. "\r\n\r\n")
      local res = assert(conn:receive_response())
      assert.are.equal(431, res.status)
      conn:close()
    end)

    it("answer more than 100 header fields with 431", function()
      local lines = {}
      for i = 1, 150 do lines[i] = ("X-H%d: v\r\n"):format(i) end
      local conn = assert(client:connect())
      conn:send("GET /hello/x HTTP/1.1\r\nHost: t\r\n" .. table.concat(lines) .. "\r\n")
      local res = assert(conn:receive_response())
      assert.are.equal(431, res.status)
      conn:close()
    end)

    it("accept a body up to max_body", function()
      local body = ("b"):rep(1000)
      local res = assert(client:request("POST", "/raw", { body = body }))
      assert.are.equal(200, res.status)
      assert.are.equal(body, res.body)
    end)

    it("answer a Content-Length body over max_body with 413", function()
      local res = assert(client:request("POST", "/raw", { body = ("b"):rep(2048) }))
      assert.are.equal(413, res.status)
    end)

    it("let a client send its whole oversized body and still read the 413", function()
      -- Closing at once would leave the body's bytes unread and turn the
      -- close into a reset: the client would lose the answer mid-send.
      local body = ("b"):rep(3 * 1024 * 1024)
      local conn = assert(client:connect())
      assert(conn:send("POST /raw HTTP/1.1\r\nHost: t\r\nContent-Length: " .. #body .. "\r\n\r\n"))
      assert(conn:send(body), "the server reset the connection while the body was being sent")
      local res = assert(conn:receive_response { timeout = 5 })
      assert.are.equal(413, res.status)
      assert.is_true(conn:closed(5))
      conn:close()
    end)

    it("answer an Expect: 100-continue body over max_body with 413", function()
      local conn = assert(client:connect())
      assert(conn:send("POST /raw HTTP/1.1\r\nHost: t\r\nContent-Length: 4096\r\nExpect: 100-continue\r\n\r\n"))
      local res = assert(conn:receive_response { timeout = 3 })
      if res.status == 100 then res = assert(conn:receive_response { timeout = 3 }) end
      assert.are.equal(413, res.status)
      conn:close()
    end)

    it("answer a chunked body over max_body with 413", function()
      local chunk = ("c"):rep(600)
      local body = ("%x\r\n%s\r\n"):format(#chunk, chunk):rep(3) .. "0\r\n\r\n"
      local res = assert(client:request("POST", "/raw", {
        headers = { ["Transfer-Encoding"] = "chunked" }, body = body,
      }))
      assert.are.equal(413, res.status)
    end)
  end)

  describe("handler failures", function()
    it("answer an error with 500, log it, and keep serving", function()
      local res = assert(client:get("/boom"))
      assert.are.equal(500, res.status)
      assert.is_nil(res.body:find("boom on purpose", 1, true), "error text leaked into the body without --reload")
      assert.is_truthy(testing.wait_for(function() return server:log():find("boom on purpose", 1, true) end, 3),
        "the error was not logged")
      local ok = assert(client:get("/hello/after"))
      assert.are.equal(200, ok.status)
      assert.are.equal("hello after", ok.body)
    end)

    it("stop a handler that never yields after its CPU budget with 500, and keep serving", function()
      local t0 = testing.now()
      local res = assert(client:get("/spin", { timeout = 10 }))
      assert.are.equal(500, res.status)
      assert.is_true(elapsed_since(t0) < 5, "took " .. elapsed_since(t0) .. " s")
      local ok = assert(client:get("/hello/alive"))
      assert.are.equal("hello alive", ok.body)
    end)
  end)

  it("is still running and exits 0 on SIGTERM", function()
    assert.is_nil(server:exit_status(), "server died:\n" .. server:log())
    local status, elapsed = server:stop()
    assert.are.equal(0, status)
    assert.is_true(elapsed < 2.5, "took " .. elapsed .. " s")
  end)
end)

describe("HTTP timeouts", function()
  local server, client

  setup(function()
    server = testing.start(app("http"), { args = { "--header-timeout", "1", "--idle-timeout", "1" } })
    client = testing.client(server)
  end)

  teardown(function() if server then server:stop() end end)

  it("answer headers not complete in time with 408 and close", function()
    local conn = assert(client:connect())
    local t0 = testing.now()
    assert(conn:send("GET /hello/x HTTP/1.1\r\nHost: t\r\n"))
    local res = assert(conn:receive_response { timeout = 5 })
    local elapsed = elapsed_since(t0)
    assert.are.equal(408, res.status)
    assert.is_true(elapsed >= 0.8 and elapsed <= 3, "408 after " .. elapsed .. " s")
    assert.is_true((conn:closed(3)), "connection left open after 408")
    conn:close()
  end)

  it("close an idle keep-alive connection", function()
    local conn = assert(client:connect())
    assert.are.equal(200, assert(conn:request("GET", "/hello/x")).status)
    local t0 = testing.now()
    local closed = conn:closed(5)
    local elapsed = elapsed_since(t0)
    assert.is_true(closed, "idle connection still open after 5 s")
    assert.is_true(elapsed >= 0.5 and elapsed <= 3, "closed after " .. elapsed .. " s")
    conn:close()
  end)

  it("answer headers trickling in byte by byte with 408 too", function()
    local conn = assert(client:connect())
    local t0 = testing.now()
    local head = "GET /hello/x HTTP/1.1\r\nHost: t\r\nX-Slow: " .. ("s"):rep(100)
    local res
    for i = 1, #head do
      if not conn:send(head:sub(i, i)) then break end
      res = conn:receive_response { timeout = 0.1 }
      if res or testing.now() - t0 > 4 then break end
    end
    res = res or conn:receive_response { timeout = 2 }
    local elapsed = elapsed_since(t0)
    assert(res, "no answer to a head still incomplete after " .. elapsed .. " s")
    assert.are.equal(408, res.status)
    assert.is_true(elapsed >= 0.8 and elapsed <= 3, "408 after " .. elapsed .. " s")
    conn:close()
  end)

  it("give a second request on a keep-alive connection the header timeout too", function()
    local conn = assert(client:connect())
    assert.are.equal(200, assert(conn:request("GET", "/hello/x")).status)
    assert(conn:send("GET /hello/y HTTP/1.1\r\n"))
    local res = assert(conn:receive_response { timeout = 5 })
    assert.are.equal(408, res.status)
    conn:close()
  end)

  it("do not cut a handler that takes longer than the timeouts", function()
    local res = assert(client:get("/sleep/1.5", { timeout = 5 }))
    assert.are.equal(200, res.status)
    assert.are.equal("slept", res.body)
  end)

  it("leave a quiet event stream open", function()
    local stream = assert(client:sse("/stream"))
    assert.are.equal("open", assert(stream:next_event(3)).data)
    local bytes, err = stream:read_raw(2.5)
    assert.is_nil(bytes)
    assert.are.equal("timeout", err, "the stream was closed by a timeout")
    stream:close()
  end)

  it("let a slow but steady client finish a body", function()
    -- the header timeout is for the head only
    local conn = assert(client:connect())
    assert(conn:send("POST /raw HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\n"))
    testing.sleep(0.4)
    assert(conn:send("abc"))
    local res = assert(conn:receive_response())
    assert.are.equal(200, res.status)
    assert.are.equal("abc", res.body)
    conn:close()
  end)
end)

describe("HTTP connection cap", function()
  local server, client

  setup(function()
    server = testing.start(app("http"), { args = { "--max-conns", "3" } })
    client = testing.client(server)
  end)

  teardown(function() if server then server:stop() end end)

  it("answers the connection over the cap with 503, and serves again once one closes", function()
    -- Three keep-alive connections, each proven accepted by a response.
    local held = {}
    for i = 1, 3 do
      held[i] = assert(client:connect())
      local res = testing.wait_for(function()
        -- the startup probe may still count for a moment
        local r = held[i]:request("GET", "/hello/" .. i)
        if r and r.status == 200 then return r end
        held[i]:close()
        held[i] = assert(client:connect())
      end, 3, 0.1)
      assert.is_truthy(res, "could not open connection " .. i)
    end

    local res = assert(client:get("/hello/four"))
    assert.are.equal(503, res.status)

    held[1]:close()
    local again = testing.wait_for(function()
      local r = client:get("/hello/again")
      return r and r.status == 200 and r
    end, 3, 0.05)
    assert.is_truthy(again, "no connection accepted after one of three closed")
    for i = 2, 3 do held[i]:close() end
  end)
end)
