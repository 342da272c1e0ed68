-- apps/llm end to end, with the official openai npm package as the client
-- (tests/node/openai_client.mjs) and the Node mock LLM API
-- (tests/mock/upstream.mjs) as the upstream:
--
--   openai SDK ──▶ sluice apps/llm ──▶ mock upstream (OpenAI or Anthropic API)
--
-- The mock's knobs are set as defaults with POST /_mock/config, since
-- apps/llm does not forward X-Mock-* headers. The npm packages are installed
-- from tests/node/package-lock.json on first run (npm ci).
local testing = require "sluice.testing"
local upstream = require "upstream"

local json = testing.json
local root = testing.root
local NODE_DIR = root .. "/tests/node"

-- Multi-byte UTF-8 and odd whitespace, so a cut anywhere would show.
local TEXT = "Grüße aus dem Mock — 你好, мир! 🌍🚀 Tokens:\tone  two\nthree, déjà vu; 100% done."
local PROMPT = { { role = "user", content = "hello there" } }

local function shell_quote(s) return "'" .. (tostring(s):gsub("'", "'\\''")) .. "'" end

-- npm ci once (node_modules present: nothing to do).
local function ensure_packages()
  local f = io.open(NODE_DIR .. "/node_modules/openai/package.json")
  if f then f:close() return end
  local cmd = ("cd %s && timeout 300 npm ci --no-audit --no-fund --loglevel=error 2>&1"):format(shell_quote(NODE_DIR))
  local p = assert(io.popen(cmd))
  local out = p:read("a")
  local ok = p:close()
  assert(ok, "npm ci in tests/node failed:\n" .. out)
end

-- Runs one request through the SDK; returns the script's JSON result.
local function sdk(req)
  local cmd = ("timeout -k 2 40 node %s %s 2>&1"):format(shell_quote(NODE_DIR .. "/openai_client.mjs"),
                                                       shell_quote(json.encode(req)))
  local p = assert(io.popen(cmd))
  local out = p:read("a")
  p:close()
  local line = out:match("([^\n]*)\n?$")
  local result = line and json.decode(line)
  assert(type(result) == "table", "openai_client.mjs printed no result:\n" .. out)
  return result
end

local function base(server) return server:url("/v1") end

-- Runs the chat page's script against a server (tests/node/chat_page.mjs).
local function page(server, req)
  req.origin = server:url("")
  local cmd = ("timeout -k 2 40 node %s %s 2>&1"):format(shell_quote(NODE_DIR .. "/chat_page.mjs"),
                                                       shell_quote(json.encode(req)))
  local p = assert(io.popen(cmd))
  local out = p:read("a")
  p:close()
  local result = json.decode(out:match("([^\n]*)\n?$") or "")
  assert(type(result) == "table", "chat_page.mjs printed no result:\n" .. out)
  assert.is_false(result.timed_out, "the page never went idle: " .. out)
  assert.are.equal(0, result.html_writes, "the page wrote innerHTML")
  return result
end

-- apps/llm with these environment variables (false: unset).
local function start_llm(env)
  local srv = testing.start(root .. "/apps/llm", { env = env })
  srv.llm_env = env
  return srv
end

describe("apps/llm through the openai SDK", function()
  local mock, openai_srv, anthropic_srv

  local builtin

  setup(function()
    ensure_packages()
    mock = upstream.mock()
    builtin = start_llm { LLM_BASE_URL = false, LLM_PROVIDER = false, LLM_MOCK_RATE = 400, LLM_MOCK_DELAY = 0.05 }
    openai_srv = start_llm { LLM_BASE_URL = mock:url("/v1"), LLM_API_KEY = "sk-upstream",
                             LLM_PROVIDER = "openai", LLM_PING_INTERVAL = 0.5 }
    anthropic_srv = start_llm { LLM_BASE_URL = mock:url("/v1"), LLM_API_KEY = "sk-ant-upstream",
                                LLM_PROVIDER = "anthropic" }
  end)

  -- A server that died in an earlier test (that test's failure) is started
  -- afresh, so one crash does not fail every later test.
  local function revive(srv)
    if srv:exit_status() == nil then return srv end
    return start_llm(srv.llm_env)
  end

  teardown(function()
    if openai_srv then openai_srv:stop() end
    if anthropic_srv then anthropic_srv:stop() end
    if builtin then builtin:stop() end
    if mock then mock:stop() end
  end)

  before_each(function()
    mock:reset()
    builtin, openai_srv, anthropic_srv = revive(builtin), revive(openai_srv), revive(anthropic_srv)
  end)

  local function chat(server, extra)
    local req = { baseURL = base(server), messages = PROMPT }
    for k, v in pairs(extra or {}) do req[k] = v end
    return sdk(req)
  end

  local function ok(r)
    assert(r.ok, "the SDK failed: " .. json.encode(r.error))
    return r
  end

  describe("OpenAI upstream", function()
    it("assembles exactly the upstream's text, streaming and not, for every split and newline", function()
      for _, split in ipairs { "none", "every-byte", "random" } do
        for _, newline in ipairs { "lf", "crlf", "cr" } do
          local k = { text = TEXT, split = split, newline = newline, comments = split ~= "none" and "1" or "0" }
          local what = json.encode(k)
          mock:reset()
          mock:config(k)
          local s = ok(chat(openai_srv, { stream = true }))
          assert.are.equal(TEXT, s.text, what)
          assert.are.equal("stop", s.finish_reason, what)
          local entry = mock:last()
          assert.is_true(entry.completed, what)
          assert.is_true(entry.stream, what)
          local n = ok(chat(openai_srv, { stream = false }))
          assert.are.equal(TEXT, n.text, what)
          assert.are.equal("stop", n.finish_reason, what)
          assert.are.equal(entry.tokens_sent, n.usage.completion_tokens, what)
        end
      end
    end)

    it("keeps the usage chunk it asked for from a client that did not ask", function()
      mock:config { text = TEXT }
      local r = ok(chat(openai_srv, { stream = true }))
      assert.are.equal(TEXT, r.text)
      assert.are.equal(0, r.usage_chunks)
      local entry = mock:last()
      assert.are.same({ include_usage = true }, entry.body.stream_options)
      -- a client that asks gets it
      local u = ok(chat(openai_srv, { stream = true, stream_options = { include_usage = true } }))
      assert.are.equal(1, u.usage_chunks)
      assert.are.equal(mock:last().tokens_sent, u.usage.completion_tokens)
    end)

    it("ends the upstream request within 100 ms of the SDK aborting", function()
      mock:config { tokens = 400, ["token-delay"] = 25 }
      local r = chat(openai_srv, { stream = true, abort_after = 3 })
      assert.is_true(r.aborted, "the stream was not aborted: " .. json.encode(r))
      local entry, seen = mock:wait_last(function(e) return e.closed_at ~= nil end, 5)
      assert(entry, "the upstream request is still open: " .. json.encode(seen))
      assert.are.equal("client_closed", entry.outcome)
      local latency = entry.closed_at - r.aborted_at
      print(("\n  SDK abort -> upstream closed in %d ms"):format(latency))
      assert.is_true(latency < 100, ("the upstream saw the close %d ms after the abort"):format(latency))
      assert.is_true(entry.tokens_sent < 400)
    end)

    it("passes an upstream 429 on as a 429 APIError, streaming or not", function()
      mock:config { status = 429 }
      for _, stream in ipairs { false, true } do
        local r = chat(openai_srv, { stream = stream })
        assert.is_false(r.ok)
        assert.are.equal(429, r.error.status, json.encode(r.error))
        assert.are.equal("RateLimitError", r.error.name)
        assert.matches("Rate limit reached", r.error.message, 1, true)
      end
    end)

    it("reports a failure mid-stream as an error after the tokens that came", function()
      mock:config { text = TEXT, ["fail-after"] = 3 }
      local r = chat(openai_srv, { stream = true })
      assert.is_false(r.ok)
      assert(r.error, json.encode(r))
      assert.are.equal("APIError", r.error.name)
      assert.matches("upstream", r.error.message, 1, true)
      assert.are.equal(table.concat({ TEXT:match("^(%s*%S+)(%s*%S+)(%s*%S+)") }), r.text)
      -- not streaming: the upstream's cut body becomes a 502
      local n = chat(openai_srv, { stream = false })
      assert.is_false(n.ok)
      assert.are.equal(502, n.error.status, json.encode(n.error))
    end)

    it("reports an in-band error event as an error", function()
      mock:config { ["error-event"] = 2 }
      local r = chat(openai_srv, { stream = true })
      assert.is_false(r.ok)
      assert(r.error, json.encode(r))
      assert.matches("mid-stream", r.error.message, 1, true)
      assert.are.equal("Hello! I", r.text)
    end)

    it("sends ': ping' comments, never an empty data line, while the first token is late", function()
      mock:config { ["first-token-delay"] = 1600 }
      local client = testing.client(openai_srv)
      local stream = assert(client:sse("/v1/chat/completions", { method = "POST", timeout = 5,
        body = { model = "m", messages = PROMPT, stream = true } }))
      assert.are.equal(200, stream.status)
      local head = assert(stream:raw_until("data:", 5))
      local rest = assert(stream:read_all(5))
      stream:close()
      local pings = select(2, head:gsub(": ping\n\n", ""))
      assert.is_true(pings >= 2, ("%d pings before the first token: %q"):format(pings, head))
      assert.are.equal("", (head:gsub(": ping\n\n", ""):gsub("data:$", "")))
      local body = head .. rest
      assert.is_nil(body:find("data:\n", 1, true), "an empty data line was sent")
      assert.is_truthy(body:find("data: [DONE]\n\n", 1, true))
    end)
  end)

  describe("Anthropic upstream (LLM_PROVIDER=anthropic)", function()
    it("assembles exactly the mock's text, streaming and not", function()
      for _, k in ipairs { { text = TEXT }, { text = TEXT, split = "every-byte", newline = "crlf", comments = "1" },
                           { text = TEXT, split = "random", newline = "cr" } } do
        local what = json.encode(k)
        mock:reset()
        mock:config(k)
        local s = ok(chat(anthropic_srv, { stream = true }))
        assert.are.equal(TEXT, s.text, what)
        assert.are.equal("stop", s.finish_reason, what)
        local entry = mock:last()
        assert.are.equal("/v1/messages", entry.path)
        assert.are.equal("sk-ant-upstream", entry.headers["x-api-key"])
        assert.is_true(entry.completed, what)
        local n = ok(chat(anthropic_srv, { stream = false }))
        assert.are.equal(TEXT, n.text, what)
        assert.are.equal("stop", n.finish_reason, what)
      end
    end)

    it("passes a 429 on as a 429 and an error event as an error", function()
      mock:config { status = 429 }
      local r = chat(anthropic_srv, { stream = true })
      assert.are.equal(429, r.error and r.error.status, json.encode(r))
      mock:config { ["error-event"] = 2 }
      local e = chat(anthropic_srv, { stream = true })
      assert.is_false(e.ok)
      assert(e.error, json.encode(e))
      assert.matches("Overloaded", e.error.message, 1, true)
    end)
  end)

  describe("built-in mock model (LLM_BASE_URL unset)", function()
    it("streams through the SDK, and answers the same text not streaming", function()
      local s = ok(chat(builtin, { stream = true }))
      assert.matches("^You said: hello there%. This reply streams from sluice's built%-in mock model", s.text)
      assert.are.equal("stop", s.finish_reason)
      assert.is_true(s.chunks > 10)
      local n = ok(chat(builtin, { stream = false }))
      assert.are.equal(s.text, n.text)
      assert.are.equal(0, #mock:log(), "the built-in model called the upstream")
    end)
  end)
  describe("the chat page (apps/llm/public/index.html)", function()
    local function assistant(r) return r.bubbles[#r.bubbles] end

    it("streams the built-in model's answer as text, through waiting, streaming and idle", function()
      local r = page(builtin, { question = "hi <b>there</b>" })
      assert.are.same({ "waiting: for the first token", "streaming", "idle" }, r.states)
      assert.are.equal("hi <b>there</b>", r.bubbles[1].text)
      assert.matches("^You said: hi <b>there</b>%. This reply streams", assistant(r).text)
      assert.matches("^stop · first token after", assistant(r).note)
    end)

    it("shows the upstream's text exactly, and the pings while it waits", function()
      mock:config { text = TEXT, split = "every-byte", newline = "crlf", ["first-token-delay"] = 1300 }
      local r = page(openai_srv, { question = "hello" })
      assert.are.equal(TEXT, assistant(r).text)
      assert.are.equal("idle", r.states[#r.states])
      local pinged = false
      for _, st in ipairs(r.states) do pinged = pinged or st:find("keep-alive ping", 1, true) ~= nil end
      assert.is_true(pinged, "no ping shown: " .. json.encode(r.states))
    end)

    it("shows an HTTP error's message and an in-band error's message", function()
      mock:config { status = 429 }
      local r = page(openai_srv, { question = "hello" })
      assert.matches("^error: HTTP 429: Rate limit reached", r.states[#r.states])
      assert.matches("failed", assistant(r).classes)
      mock:config { ["error-event"] = 2 }
      local e = page(openai_srv, { question = "hello" })
      assert.matches("^error: .*mid%-stream", e.states[#e.states])
      assert.are.equal("Hello! I", assistant(e).text)
    end)

    it("Stop aborts: the page shows stopped and the upstream request ends", function()
      mock:config { tokens = 400, ["token-delay"] = 25 }
      local r = page(openai_srv, { question = "hello", stop_after = 10 })
      assert.are.equal("stopped", r.states[#r.states])
      assert.are.equal("stopped", assistant(r).note)
      local entry = mock:wait_last(function(e) return e.closed_at ~= nil end, 5)
      assert(entry, "the upstream request is still open")
      assert.are.equal("client_closed", entry.outcome)
      assert.is_true(entry.closed_at - r.stopped_at < 100,
                     ("closed %d ms after Stop"):format(entry.closed_at - r.stopped_at))
    end)
  end)
end)
