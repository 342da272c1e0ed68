-- docs/cookbook.md: every recipe's app.lua is shown in the document exactly
-- as tests/apps/cookbook/<name>/app.lua holds it, and each runs here under a
-- real server: sign-in with a cookie or a stream token, CORS with
-- credentials, per-user channels, and the LLM proxy in front of the mock
-- OpenAI and Anthropic APIs (tests/mock/upstream.mjs).
local testing = require "sluice.testing"
local markdown = require "markdown"
local upstream = require "upstream"
local openai = require "sluice.openai"

local json = testing.json
local root = testing.root
local DOC = root .. "/docs/cookbook.md"
local RECIPES = { "auth", "cors", "per_user", "llm" }

local function app_dir(name) return root .. "/tests/apps/cookbook/" .. name end

describe("docs/cookbook.md", function()
  it("shows each recipe's app.lua exactly as the tested file", function()
    local doc = markdown.load(DOC)
    local shown = {}
    for _, f in ipairs(doc.fences) do
      if f.lang == "lua" then
        local path = f.caption:match("`(tests/apps/cookbook/[%w_]+/app%.lua)`")
        assert(path, ("%s:%d: a lua block that is not a recipe's app.lua (caption %q)"):format(DOC, f.line, f.caption))
        assert.are.equal(testing.read_file(root .. "/" .. path), f.text, path .. " differs from the document")
        shown[path] = (shown[path] or 0) + 1
      end
    end
    for _, name in ipairs(RECIPES) do
      assert.are.equal(1, shown["tests/apps/cookbook/" .. name .. "/app.lua"], name .. " is not shown once")
    end
  end)
end)

-- The JSON of a non-2xx answer's body, with its status checked.
local function refused(res, status)
  assert.are.equal(status, res.status, res.body)
  assert.are_not.equal("text/event-stream", (res.headers["content-type"] or ""):match("^[^;]*"))
  return res:json()
end

-- Opens a stream that should be refused, and returns the refusal's JSON.
local function stream_refused(client, path, status, opts)
  local stream = assert(client:sse(path, opts))
  local body = assert(stream:read_all(3))
  stream:close()
  assert.are.equal(status, stream.status, body)
  assert.are_not.equal("text/event-stream", (stream.headers["content-type"] or ""):match("^[^;]*"))
  return json.decode(body)
end

-- The next event of a stream, which must come within 3 s.
local function next_event(stream)
  local ev, err = stream:next_event(3)
  assert(ev, "no event: " .. tostring(err))
  return ev, json.decode(ev.data)
end

-- Asserts that nothing arrives on the stream for a moment.
local function quiet(stream)
  local ev, err = stream:next_event(0.3)
  assert.is_nil(ev, ev and ("unexpected event: " .. ev.data))
  assert.are.equal("timeout", err)
end

describe("recipe: signed-in streams (auth)", function()
  local server, client

  setup(function()
    -- Two workers: sessions must hold whichever worker a request lands on.
    server = testing.start(app_dir("auth"), { args = { "--workers", "2" } })
    client = testing.client(server)
  end)
  teardown(function() if server then server:stop() end end)

  -- Signs in; returns the session cookie's value and the Set-Cookie line.
  local function login(user, password)
    local res = assert(client:post("/login", { user = user, password = password }))
    assert.are.equal(204, res.status, res.body)
    local set = res.headers["set-cookie"]
    return assert(set:match("^session=(%x+);"), set), set
  end

  local function cookie(session) return { Cookie = "theme=dark; session=" .. session } end

  local function say(session, room, text)
    local res = assert(client:post("/rooms/" .. room .. "/messages", { text = text }, { headers = cookie(session) }))
    assert.are.equal(202, res.status, res.body)
    return res:json().id
  end

  it("answers 401 before opening a stream without a session", function()
    assert.are.equal("sign in first", stream_refused(client, "/rooms/lobby/events", 401).error)
    stream_refused(client, "/rooms/lobby/events", 401, { headers = cookie(("0"):rep(32)) })
    stream_refused(client, "/rooms/lobby/events?token=nope", 401)
  end)

  it("refuses a wrong password and sets no cookie", function()
    local res = assert(client:post("/login", { user = "ann", password = "battery staple" }))
    refused(res, 401)
    assert.is_nil(res.headers["set-cookie"])
    refused(assert(client:post("/login", "not json")), 400)
  end)

  it("sets an HttpOnly, Secure, SameSite session cookie that opens the stream on every worker", function()
    local session, set = login("ann", "correct horse")
    assert.are.equal(32, #session)
    for _, attr in ipairs { "; HttpOnly", "; Secure", "; SameSite=Lax", "; Path=/", "; Max-Age=86400" } do
      assert.is_truthy(set:find(attr, 1, true), set)
    end
    assert.are_not.equal(session, (login("ann", "correct horse")))
    -- Streams until both workers have served one: each gets the room live.
    local function served_by()
      local workers, n = {}, 0
      for w in server:log():gmatch('access %[w(%d)%] [^\n]*"GET /rooms/lobby/events" 200 [^\n]* stream\n') do
        workers[w], n = true, n + 1
      end
      return workers, n
    end
    local workers, streams = served_by()
    for i = 1, 60 do
      local stream = assert(client:sse("/rooms/lobby/events", { headers = cookie(session) }))
      assert.are.equal(200, stream.status)
      testing.sleep(0.02) -- subscribed by now
      local id = say(session, "lobby", "hello " .. i)
      local ev, msg = next_event(stream)
      assert.are.same({ "message", id, { user = "ann", text = "hello " .. i } }, { ev.event, ev.id, msg })
      stream:close()
      assert.is_truthy(testing.wait_for(function() return select(2, served_by()) > streams end, 3))
      workers, streams = served_by()
      if workers["1"] and workers["2"] then break end
    end
    assert.is_true(workers["1"] and workers["2"], "one worker served every stream")
  end)

  it("answers 403 to a signed-in user outside the room", function()
    local bob = login("bob", "battery staple")
    assert.are.equal("not a member of staff",
                     stream_refused(client, "/rooms/staff/events", 403, { headers = cookie(bob) }).error)
    refused(assert(client:post("/rooms/staff/messages", { text = "hi" }, { headers = cookie(bob) })), 403)
    local ann = login("ann", "correct horse")
    local stream = assert(client:sse("/rooms/staff/events", { headers = cookie(ann) }))
    assert.are.equal(200, stream.status)
    stream:close()
  end)

  it("opens the stream with a ?token= from /stream-token, and only within its rights", function()
    refused(assert(client:post("/stream-token", "")), 401)
    local res = assert(client:post("/stream-token", "", { headers = cookie(login("bob", "battery staple")) }))
    assert.are.equal(200, res.status, res.body)
    local token = res:json().token
    assert.are.equal(600, res:json().expires_in)
    assert.matches("^%x+$", token)
    local stream = assert(client:sse("/rooms/lobby/events?token=" .. token))
    assert.are.equal(200, stream.status)
    testing.sleep(0.05)
    local id = say(login("ann", "correct horse"), "lobby", "token works")
    local ev, msg = next_event(stream)
    assert.are.equal(id, ev.id)
    assert.are.equal("token works", msg.text)
    stream:close()
    stream_refused(client, "/rooms/staff/events?token=" .. token, 403)
    stream_refused(client, "/rooms/lobby/events?token=" .. token:sub(2) .. "0", 401)
    -- It opens streams and nothing else: no posting, no token for a new one.
    refused(assert(client:post("/rooms/lobby/messages?token=" .. token, { text = "x" })), 401)
    refused(assert(client:post("/stream-token?token=" .. token, "")), 401)
  end)

  it("keeps sessions across a reload and ends them at logout", function()
    local session = login("ann", "correct horse")
    local reloads = select(2, server:log():gsub("reloaded in", ""))
    server:signal("HUP")
    assert.is_truthy(testing.wait_for(function()
      return select(2, server:log():gsub("reloaded in", "")) >= reloads + 2 -- both workers
    end, 5), server:log())
    local stream = assert(client:sse("/rooms/lobby/events", { headers = cookie(session) }))
    assert.are.equal(200, stream.status)
    stream:close()
    local res = assert(client:post("/logout", "", { headers = cookie(session) }))
    assert.are.equal(204, res.status)
    assert.matches("^session=; .*Max%-Age=0", res.headers["set-cookie"])
    stream_refused(client, "/rooms/lobby/events", 401, { headers = cookie(session) })
  end)
end)

describe("recipe: CORS with credentials (cors)", function()
  local server, client
  local ORIGIN = "https://app.example.com"

  setup(function()
    server = testing.start(app_dir("cors"))
    client = testing.client(server)
  end)
  teardown(function() if server then server:stop() end end)

  it("lets a listed origin read the stream with its cookies", function()
    local stream = assert(client:sse("/events", { headers = { Origin = ORIGIN, Cookie = "visitor=v-42" } }))
    assert.are.equal(200, stream.status)
    assert.are.equal(ORIGIN, stream.headers["access-control-allow-origin"])
    assert.are.equal("true", stream.headers["access-control-allow-credentials"])
    assert.are.equal("Origin", stream.headers["vary"])
    local ev, hello = next_event(stream)
    assert.are.equal("hello", ev.event)
    assert.are.same({ visitor = "v-42" }, hello)
    stream:close()
  end)

  it("gives any other origin no Access-Control-Allow-Origin, so its page cannot read", function()
    for _, origin in ipairs { "https://evil.example", "null", "https://app.example.com.evil.example" } do
      local stream = assert(client:sse("/events", { headers = { Origin = origin } }))
      assert.is_nil(stream.headers["access-control-allow-origin"], origin)
      assert.is_nil(stream.headers["access-control-allow-credentials"], origin)
      stream:close()
    end
  end)

  it("answers the preflight of a JSON POST, and streams what it publishes", function()
    local pre = assert(client:request("OPTIONS", "/news", { headers = {
      Origin = "https://admin.example.com", ["Access-Control-Request-Method"] = "POST",
      ["Access-Control-Request-Headers"] = "content-type" } }))
    assert.are.equal(204, pre.status)
    assert.are.equal("https://admin.example.com", pre.headers["access-control-allow-origin"])
    assert.are.equal("true", pre.headers["access-control-allow-credentials"])
    assert.is_truthy(pre.headers["access-control-allow-methods"]:find("POST", 1, true))
    assert.is_truthy(pre.headers["access-control-allow-headers"]:lower():find("content-type", 1, true))

    local stream = assert(client:sse("/events", { headers = { Origin = ORIGIN } }))
    next_event(stream) -- hello
    testing.sleep(0.05)
    local ids = {}
    for i = 1, 3 do
      local res = assert(client:post("/news", { seq = i }, { headers = { Origin = "https://admin.example.com" } }))
      assert.are.equal(202, res.status)
      assert.are.equal("https://admin.example.com", res.headers["access-control-allow-origin"])
      ids[i] = res:json().id
    end
    local ev, news = next_event(stream)
    assert.are.same({ "news", ids[1], { seq = 1 } }, { ev.event, ev.id, news })
    -- The browser reconnects with Last-Event-ID: hello again, then what followed.
    stream = assert(stream:reconnect())
    assert.are.equal(ORIGIN, stream.headers["access-control-allow-origin"])
    assert.are.equal("hello", next_event(stream).event)
    for i = 2, 3 do
      ev, news = next_event(stream)
      assert.are.same({ ids[i], { seq = i } }, { ev.id, news })
    end
    quiet(stream)
    stream:close()
  end)
end)

describe("recipe: a channel per user (per_user)", function()
  local server, client
  local KEY = "k-" .. tostring(os.time())

  setup(function()
    server = testing.start(app_dir("per_user"), { env = { NOTIFY_KEY = KEY } })
    client = testing.client(server)
  end)
  teardown(function() if server then server:stop() end end)

  local function notify(user, data, key)
    local res = assert(client:post("/users/" .. user .. "/notifications", data,
                                   { headers = { Authorization = "Bearer " .. (key or KEY) } }))
    return res
  end

  local function notified(user, data)
    local res = notify(user, data)
    assert.are.equal(202, res.status, res.body)
    return res:json().id
  end

  local function open(token, last_id)
    local stream = assert(client:sse("/notifications?token=" .. token, { last_event_id = last_id }))
    assert.are.equal(200, stream.status)
    return stream
  end

  it("refuses a stream without a known user, and publishing without the backend's key", function()
    stream_refused(client, "/notifications", 401)
    stream_refused(client, "/notifications?token=token-eve", 401)
    refused(notify("ann", { text = "x" }, "wrong"), 403)
  end)

  it("delivers a user's notifications to that user's tabs only", function()
    local ann1, ann2, bob = open("token-ann"), open("token-ann"), open("token-bob")
    testing.sleep(0.05)
    local a1 = notified("ann", { text = "for ann" })
    local b1 = notified("bob", { text = "for bob" })
    local a2 = notified("ann", { text = "ann again" })
    for _, tab in ipairs { ann1, ann2 } do
      local ev, n = next_event(tab)
      assert.are.same({ "notification", a1, "for ann" }, { ev.event, ev.id, n.text })
      ev, n = next_event(tab)
      assert.are.same({ a2, "ann again" }, { ev.id, n.text })
      quiet(tab)
    end
    local ev, n = next_event(bob)
    assert.are.same({ b1, "for bob" }, { ev.id, n.text })
    quiet(bob)
    for _, s in ipairs { ann1, ann2, bob } do s:close() end
  end)

  it("resumes after Last-Event-ID with what was missed, in order, once", function()
    local stream = open("token-ann")
    testing.sleep(0.05)
    local first = notified("ann", { seq = 1 })
    assert.are.equal(first, next_event(stream).id)
    stream:close()
    local missed = { notified("ann", { seq = 2 }), notified("bob", { seq = 0 }), notified("ann", { seq = 3 }) }
    stream = open("token-ann", first)
    local ev, n = next_event(stream)
    assert.are.same({ missed[1], 2 }, { ev.id, n.seq })
    ev, n = next_event(stream)
    assert.are.same({ missed[3], 3 }, { ev.id, n.seq })
    local live = notified("ann", { seq = 4 })
    assert.are.equal(live, next_event(stream).id)
    quiet(stream)
    stream:close()
  end)
end)

describe("recipe: an LLM proxy for OpenAI and Anthropic (llm)", function()
  local mock, servers
  local TEXT = "Streams — token by token, déjà vu 🌍 done."

  setup(function()
    mock = upstream.mock()
    servers = {}
    for _, provider in ipairs { "openai", "anthropic" } do
      servers[provider] = testing.start(app_dir("llm"), { env = {
        LLM_PROVIDER = provider, LLM_BASE_URL = mock:url("/v1/"), LLM_API_KEY = "key-" .. provider } })
    end
  end)
  teardown(function()
    for _, s in pairs(servers or {}) do s:stop() end
    if mock then mock:stop() end
  end)
  before_each(function() mock:reset() end)

  -- POSTs a chat request; returns the stream (checked 200 text/event-stream).
  local function ask(provider, extra)
    local body = { model = "m-1", messages = { { role = "user", content = "say it" } } }
    for k, v in pairs(extra or {}) do body[k] = v end
    return assert(testing.client(servers[provider]):sse("/v1/chat/completions", { method = "POST", body = body }))
  end

  -- Reads chunks up to [DONE] or the stream's end: the accumulated reply,
  -- each content chunk's arrival time, and whether [DONE] came.
  local function read_reply(stream)
    local acc, times = openai.accumulate { json = json }, {}
    while true do
      local ev, err = stream:next_event(5)
      if not ev then
        assert.are.equal("closed", err)
        return acc, times, false
      end
      if ev.data == "[DONE]" then return acc, times, true end
      local chunk = assert(json.decode(ev.data))
      acc:add(chunk)
      local choice = chunk.choices and chunk.choices[1]
      if choice and choice.delta.content then times[#times + 1] = testing.now() end
    end
  end

  for _, provider in ipairs { "openai", "anthropic" } do
    describe(provider, function()
      it("streams the upstream's reply as OpenAI chunks, token by token", function()
        mock:config { text = TEXT, ["token-delay"] = 120 }
        local stream = ask(provider)
        assert.are.equal(200, stream.status)
        assert.matches("^text/event%-stream", stream.headers["content-type"])
        local acc, times, done = read_reply(stream)
        assert.is_true(done)
        assert.are.equal(TEXT, acc:text())
        assert.are.equal("stop", acc.finish_reason)
        assert.is_nil(acc.error)
        -- Eight tokens 120 ms apart: they reached us spread out, not at the end.
        assert.is_true(times[#times] - times[2] > 0.6, ("tokens arrived within %.3f s"):format(times[#times] - times[2]))
        assert.are.equal("closed", select(2, stream:next_event(2)))

        local entry = mock:last()
        assert.is_true(entry.completed)
        assert.is_true(entry.body.stream)
        if provider == "openai" then
          assert.are.equal("/v1/chat/completions", entry.path)
          assert.are.equal("Bearer key-openai", entry.headers.authorization)
          assert.are.same({ { role = "user", content = "say it" } }, entry.body.messages)
        else
          assert.are.equal("/v1/messages", entry.path)
          assert.are.equal("key-anthropic", entry.headers["x-api-key"])
          assert.are.equal("2023-06-01", entry.headers["anthropic-version"])
          assert.are.equal(1024, entry.body.max_tokens)
          assert.are.equal("m-1", acc.model)
        end
      end)

      it("passes an upstream error on before the stream opens", function()
        mock:config { status = 429 }
        local stream = ask(provider)
        local body = assert(stream:read_all(5))
        assert.are.equal(429, stream.status, body)
        assert.matches("^application/json", stream.headers["content-type"])
        assert.is_table(json.decode(body))
      end)

      it("ends a stream that failed midway with an error chunk", function()
        mock:config { text = TEXT, ["fail-after"] = 2 }
        local acc = read_reply(ask(provider))
        assert.is_table(acc.error)
        assert.matches("upstream", acc.error.message)
        assert.are.equal(table.concat { TEXT:match("^(%s*%S+)(%s*%S+)") }, acc:text())
      end)

      it("ends the upstream request when the browser leaves", function()
        mock:config { tokens = 200, ["token-delay"] = 20 }
        local stream = ask(provider)
        next_event(stream)
        stream:close()
        local entry, seen = mock:wait_last(function(e) return e.closed_at ~= nil end, 5)
        assert(entry, "the upstream request is still open: " .. json.encode(seen))
        assert.are.equal("client_closed", entry.outcome)
        assert.is_true(entry.tokens_sent < 200)
      end)
    end)
  end

  it("refuses a request without messages", function()
    refused(assert(testing.client(servers.openai):post("/v1/chat/completions", { model = "m" })), 400)
    assert.are.equal(0, #mock:log())
  end)
end)
