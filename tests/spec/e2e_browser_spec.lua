-- The demo apps in a real browser: headless Debian Chromium driven by
-- playwright-core (tests/node/browser.mjs, through tests/lib/browser.lua),
-- with the browser's own EventSource and fetch.
--
--   * clock: ticks arrive live;
--   * chat: two pages in two browser contexts (on one server, and on two
--     nodes sharing a Redis of the test's own) see each other's messages in
--     the same order; a page outlives a SIGKILL of the server and its
--     restart on the same port, reconnects by itself with Last-Event-ID and
--     shows every message exactly once;
--   * llm: the mock model's tokens stream onto the page; Stop ends the
--     upstream request;
--   * --reload: saving app.lua reloads an open page; a broken save shows the
--     error overlay with file and line.
--
-- No page may log a console error or throw (the one expected error is the
-- refused reconnect while the chat server is down). Screenshots of each
-- page, wide and 390 px narrow, go to <build>/screenshots/.
local testing = require "sluice.testing"
local redis = require "redis"
local browser = require "browser"
local upstream = require "upstream"

local json = testing.json
local root = testing.root

-- <build>/screenshots, <build> being where the binary under test lives.
local SHOTS = ((os.getenv("SLUICE_BIN") or "build/sluice"):match("^(.*)/[^/]*$") or ".") .. "/screenshots"

local function now_ms() return math.floor(testing.now() * 1000) end

-- JavaScript run in the pages: small functions, each given one argument.
local JS = {
  state = "() => document.querySelector('#state')?.dataset.state",
  state_is = "(s) => document.querySelector('#state')?.dataset.state === s",
  count = "(sel) => document.querySelectorAll(sel).length",
  count_at_least = "([sel, n]) => document.querySelectorAll(sel).length >= n",
  -- the chat's messages as {user, text, mine}
  messages = [[() => [...document.querySelectorAll('#messages li')].map((li) => ({
      user: li.querySelector('.user').textContent,
      text: li.childNodes[1] ? li.childNodes[1].textContent : '',
      mine: li.classList.contains('mine') }))]],
  -- records every text an element shows, in window.__seen[sel]
  record = [[(sel) => {
      window.__seen = window.__seen || {};
      const el = document.querySelector(sel);
      const seen = window.__seen[sel] = [el.textContent];
      new MutationObserver(() => { if (seen.at(-1) !== el.textContent) seen.push(el.textContent); })
        .observe(el, { childList: true, characterData: true, subtree: true });
      return true;
    }]],
  seen = "(sel) => (window.__seen || {})[sel] || []",
  seen_at_least = "([sel, n]) => ((window.__seen || {})[sel] || []).length >= n",
}

describe("the demo pages in Chromium", function()
  local b
  local servers = {}

  local function start(app, opts)
    local srv = testing.start(app, opts)
    servers[#servers + 1] = srv
    return srv
  end

  setup(function()
    browser.ensure()
    b = browser.start()
  end)

  teardown(function()
    for _, srv in ipairs(servers) do srv:stop() end
    if b then b:stop() end
  end)

  -- Fails on any console error or uncaught exception since the last check,
  -- but those `allowed(e)` says are expected.
  local function no_console_errors(allowed)
    local unexpected = {}
    for _, e in ipairs(b:errors()) do
      if not (allowed and allowed(e)) then unexpected[#unexpected + 1] = e end
    end
    assert.are.same({}, unexpected, "the page logged errors")
  end

  before_each(function() b:errors() end) -- a failed test's leftovers are its own

  -- Pages first (a page left open by a failed test would log its
  -- server's end into the next test), then the test's servers.
  after_each(function()
    if b then b:close_all() end
    for _, srv in ipairs(servers) do srv:stop() end
    servers = {}
  end)

  local function shoot(page, name)
    page:viewport(1280, 800)
    page:screenshot(SHOTS .. "/" .. name .. ".png")
    page:viewport(390, 844)
    page:screenshot(SHOTS .. "/" .. name .. "-390.png")
    page:viewport(1280, 800)
  end

  ---------------------------------------------------------------- clock

  describe("apps/clock", function()
    it("shows ticks arriving live", function()
      local srv = start(root .. "/apps/clock")
      local page = b:open(srv:url("/"), { context = "clock" })
      page:wait(JS.state_is, "live", 10, "the clock never went live")
      page:wait("() => /^\\d\\d:\\d\\d:\\d\\d$/.test(document.querySelector('#time').textContent)", nil, 10,
                "no tick shown")
      page:eval(JS.record, "#time")
      page:eval(JS.record, "#meta")
      -- the first value, then two changes: ticks keep arriving
      page:wait(JS.seen_at_least, { "#time", 3 }, 10, "the time did not change twice")
      local times = page:eval(JS.seen, "#time")
      for i, t in ipairs(times) do
        assert.matches("^%d%d:%d%d:%d%d$", t)
        if i > 1 then assert.is_true(t > times[i - 1] or times[i - 1] > "23:59:5", "time went back: " .. json.encode(times)) end
      end
      local metas = page:eval(JS.seen, "#meta")
      local ids = {}
      for _, m in ipairs(metas) do ids[#ids + 1] = tonumber(m:match("tick #(%d+)")) end
      assert.is_true(#ids >= 3, "tick ids: " .. json.encode(metas))
      for i = 2, #ids do assert.are.equal(ids[i - 1] + 1, ids[i], json.encode(metas)) end
      assert.are.equal("live", page:eval(JS.state))
      -- the browser's EventSource received them as `tick` events with ids,
      -- all on the one stream it opened: live, not through reconnects
      local log = page:log()
      local ticks, streams = {}, 0
      for _, m in ipairs(log.sse) do
        if m.url == "/clock" then ticks[#ticks + 1] = m end
      end
      for _, r in ipairs(log.requests) do
        if r.url == "/clock" then streams = streams + 1 end
      end
      assert.are.equal(1, streams, "the page opened /clock more than once")
      assert.is_true(#ticks >= 3)
      for _, m in ipairs(ticks) do assert.are.equal("tick", m.event) end
      shoot(page, "clock")
      page:close()
      no_console_errors()
    end)
  end)

  ----------------------------------------------------------------- chat

  describe("apps/chat", function()
    --- Ann on ann_srv and Bob on bob_srv (the same server, or two nodes
    --- sharing Redis) chat; both pages must show every message, in the
    --- order the server's history has them.
    local function converse(ann_srv, bob_srv, shot)
      local ann = b:open(ann_srv:url("/"), { context = "ann" })
      local bob = b:open(bob_srv:url("/"), { context = "bob" })
      for _, p in ipairs { ann, bob } do p:wait(JS.state_is, "live", 10, "chat never went live") end
      ann:fill("#name", "Ann")
      bob:fill("#name", "Bob")
      local lines = {
        { ann, "Hi Bob! Is the stream live on your side?" },
        { bob, "Yes: your message arrived before I could blink." },
        { ann, "Unicode too? Grüße aus Köln 🌍" },
        { bob, "Grüße received. <b>Tags</b> stay text." },
        { ann, "Then let's ship it." },
        { bob, "👍" },
      }
      -- typed and sent as a person would, each page sending while the
      -- other's messages arrive (a page sends its next line once its last
      -- one went out: Send is disabled meanwhile)
      for _, l in ipairs(lines) do
        l[1]:wait("() => !document.querySelector('#send').disabled", nil, 10, "Send stayed disabled")
        l[1]:fill("#text", l[2])
        l[1]:press("#text", "Enter")
      end
      for _, p in ipairs { ann, bob } do
        p:wait(JS.count_at_least, { "#messages li", #lines }, 10, "not every message arrived")
      end
      local a, bb = ann:eval(JS.messages), bob:eval(JS.messages)
      assert.are.equal(#lines, #a)
      -- the same messages in the same order on both, the order the server gave them
      local order = json.decode(assert(testing.client(bob_srv):get("/history")).body)
      assert.are.equal(#lines, #order)
      for i = 1, #lines do
        assert.are.same({ user = order[i].user, text = order[i].text }, { user = a[i].user, text = a[i].text })
        assert.are.same({ user = a[i].user, text = a[i].text }, { user = bb[i].user, text = bb[i].text })
        assert.are.equal(a[i].user == "Ann", a[i].mine, "Ann's page marks her own messages")
        assert.are.equal(bb[i].user == "Bob", bb[i].mine, "Bob's page marks his own messages")
      end
      -- each page's sends are in its own order
      local sent = { Ann = {}, Bob = {} }
      for _, m in ipairs(a) do table.insert(sent[m.user], m.text) end
      assert.are.same({ lines[1][2], lines[3][2], lines[5][2] }, sent.Ann)
      assert.are.same({ lines[2][2], lines[4][2], lines[6][2] }, sent.Bob)
      assert.are.equal("", ann:eval("() => document.querySelector('#text').value"), "the input was not cleared")
      if shot then shoot(ann, shot) end
      b:close_context("ann")
      b:close_context("bob")
      no_console_errors()
    end

    it("two pages in two browser contexts see each other's messages in the same order", function()
      local srv = start(root .. "/apps/chat")
      converse(srv, srv, "chat")
    end)

    it("two pages on two nodes sharing Redis see the same conversation", function()
      local r = redis.start()
      local opts = { args = { "--redis", r:url() } }
      local ok, err = pcall(converse, start(root .. "/apps/chat", opts), start(root .. "/apps/chat", opts))
      for _, srv in ipairs(servers) do srv:stop() end
      servers = {}
      r:stop()
      testing.remove_tempdir(r.dir)
      assert(ok, err)
    end)

    it("reconnects after the server is killed and restarted, and shows every message exactly once", function()
      local srv = start(root .. "/apps/chat")
      local port = srv.port
      local client = testing.client(port)
      local function post(text)
        local res = assert(client:post("/messages", { user = "server", text = text }))
        assert.are.equal(202, res.status, res.body)
        return json.decode(res.body).id
      end
      local page = b:open(srv:url("/"), { context = "restart" })
      page:wait(JS.state_is, "live", 10, "chat never went live")
      local ids = {}
      for i = 1, 3 do ids[i] = post("before the kill " .. i) end
      page:wait(JS.count_at_least, { "#messages li", 3 }, 10, "the first messages did not arrive")

      local t_kill = b:now()
      srv:kill() -- SIGKILL: no goodbye, the history goes with the process
      assert.is_not_nil(srv:exit_status())
      page:wait(JS.state_is, "reconnecting", 10, "the page did not notice the server was gone")
      page:screenshot(SHOTS .. "/chat-reconnecting.png")
      -- Restart just after a reconnect attempt failed, so the page is
      -- waiting out its retry (2 s) while the new server takes messages.
      local failed, after = nil, t_kill
      for _ = 1, 5 do -- a failure seen late leaves too little of the wait: take the next one
        failed = page:wait_request("/events", { after = after, failed = true, timeout = 15 })
        if b:now() - failed.ended_at < 300 then break end
        after, failed = failed.t + 1, nil
      end
      assert(failed, "could not catch the page between two reconnect attempts")
      local srv2 = start(root .. "/apps/chat", { port = port })
      for i = 4, 6 do ids[i] = post("while the page was away " .. (i - 3)) end
      local t_published = now_ms()
      page:wait(JS.count_at_least, { "#messages li", 6 }, 15, "the page did not catch up")
      page:wait(JS.state_is, "live", 10, "the page did not go live again")
      ids[7] = post("live after the reconnect")
      page:wait(JS.count_at_least, { "#messages li", 7 }, 10, "the live message did not arrive")
      testing.sleep(0.3) -- room for a duplicate to show up, were there one

      local want = {
        "before the kill 1", "before the kill 2", "before the kill 3",
        "while the page was away 1", "while the page was away 2", "while the page was away 3",
        "live after the reconnect",
      }
      local shown = {}
      for i, m in ipairs(page:eval(JS.messages)) do shown[i] = m.text end
      assert.are.same(want, shown)

      -- What the browser's EventSource itself received: every id once.
      local log = page:log()
      local got = {}
      for _, m in ipairs(log.sse) do
        if m.url:find("^/events") then got[#got + 1] = m.id end
      end
      assert.are.same(ids, got, "the EventSource received duplicates or gaps")

      -- The reconnect that worked sent the last id it had, and was made
      -- after the new messages were published: they came from the replay.
      local reconnect
      for _, r in ipairs(log.requests) do
        if r.url:find("^/events") and r.t > failed.t and r.status == 200 then reconnect = r break end
      end
      assert(reconnect, "no successful reconnect: " .. json.encode(log.requests))
      assert.are.equal(ids[3], reconnect.headers["last-event-id"])
      assert.is_true(reconnect.t >= t_published,
        ("the page reconnected %d ms before the messages were published"):format(t_published - reconnect.t))
      assert.is_nil(srv2:exit_status())
      page:close()
      -- While the server was down the browser logs each refused attempt.
      no_console_errors(function(e)
        return e.url:find("/events", 1, true) and e.text:find("ERR_CONNECTION_REFUSED", 1, true)
      end)
    end)
  end)

  ------------------------------------------------------------------ llm

  describe("apps/llm", function()
    local function ask(page, question)
      page:eval(JS.record, "#state")
      page:fill("#input", question)
      page:press("#input", "Enter")
      page:wait("() => document.querySelector('.msg.assistant') !== null", nil, 5, "no answer bubble")
      page:eval(JS.record, ".msg.assistant .text")
    end

    it("streams the mock model's tokens onto the page", function()
      local srv = start(root .. "/apps/llm", { env = { LLM_BASE_URL = false, LLM_PROVIDER = false,
                                                      LLM_MOCK_RATE = 20, LLM_MOCK_DELAY = 0.3 } })
      local page = b:open(srv:url("/"), { context = "llm" })
      ask(page, "Hello from Chromium")
      page:wait(JS.state_is, "idle", 20, "the answer never finished")
      local text = page:eval("() => document.querySelector('.msg.assistant .text').textContent")
      assert.matches("^You said: Hello from Chromium%. This reply streams from sluice's built%-in mock model", text)
      -- it grew token by token: many distinct lengths, each a prefix of the next
      local steps = page:eval(JS.seen, ".msg.assistant .text")
      assert.is_true(#steps >= 20, ("the answer arrived in %d steps"):format(#steps))
      for i = 2, #steps do
        assert.are.equal(steps[i - 1], steps[i]:sub(1, #steps[i - 1]), "a step was not a prefix of the next")
      end
      assert.are.equal(text, steps[#steps])
      assert.are.same({ "idle", "waiting: for the first token", "streaming", "idle" }, page:eval(JS.seen, "#state"))
      assert.matches("^stop · first token after %d+ ms", page:eval("() => document.querySelector('.msg.assistant .note').textContent"))
      -- a second question goes with the conversation so far
      ask(page, "And again")
      page:wait(JS.state_is, "idle", 20, "the second answer never finished")
      assert.are.equal(4, page:eval(JS.count, ".msg"))
      shoot(page, "llm")
      page:close()
      no_console_errors()
    end)

    it("Stop ends the request, and sluice ends the upstream request with it", function()
      local mock = upstream.mock()
      local ok, err = pcall(function()
        mock:config { tokens = 400, ["token-delay"] = 25 }
        local srv = start(root .. "/apps/llm", { env = { LLM_BASE_URL = mock:url("/v1"), LLM_API_KEY = "sk-e2e",
                                                        LLM_PROVIDER = "openai" } })
        local page = b:open(srv:url("/"), { context = "llm-stop" })
        ask(page, "Tell me a long story")
        page:wait("() => document.querySelector('.msg.assistant .text').textContent.length >= 40", nil, 10,
                  "the answer did not start streaming")
        assert.are.equal("streaming", page:eval(JS.state))
        page:screenshot(SHOTS .. "/llm-streaming.png")
        local clicked = page:click("#stop")
        page:wait(JS.state_is, "stopped", 5, "the page did not stop")
        assert.are.equal("stopped", page:eval("() => document.querySelector('.msg.assistant .note').textContent"))
        assert.is_false(page:eval("() => document.querySelector('#send').hidden"), "Send is not back")
        local entry, last = mock:wait_last(function(e) return e.closed_at ~= nil and e.closed_at ~= json.null end, 5)
        assert(entry, "the upstream request is still open: " .. json.encode(last))
        assert.are.equal("client_closed", entry.outcome)
        assert.is_true(entry.tokens_sent < 400, "the upstream ran to its end")
        local after = entry.closed_at - clicked
        assert.is_true(after >= 0 and after < 1000, ("upstream closed %d ms after Stop"):format(after))
        assert.truthy(testing.wait_for(function() return srv:log():find("outcome=client_closed", 1, true) end, 5),
                      "sluice did not log the client leaving:\n" .. srv:log())
        page:close()
      end)
      mock:stop()
      assert(ok, err)
      no_console_errors()
    end)
  end)

  --------------------------------------------------------------- reload

  describe("--reload", function()
    it("reloads an open page when app.lua is saved, and shows a broken save over the page", function()
      local base = testing.tempdir()
      local dir = base .. "/clock"
      testing.copy_tree(root .. "/apps/clock", dir)
      local path = dir .. "/app.lua"
      -- a save as editors make it: written beside the app, renamed over
      -- app.lua (one change, never a half-written file)
      local function save(content)
        testing.write_file(base .. "/app.lua.new", content)
        assert(os.rename(base .. "/app.lua.new", path))
      end
      local original = assert(testing.read_file(path))
      local TIME = 'data = os.date("!%H:%M:%S")'
      assert(original:find(TIME, 1, true), "apps/clock/app.lua changed: update this test")
      -- the new code sends the time with dots instead of colons
      local edited = original:gsub(TIME:gsub("%p", "%%%0"), 'data = os.date("!%%H.%%M.%%S")')
      assert(edited ~= original)
      local srv = start(dir, { args = { "--reload" } })
      local page = b:open(srv:url("/"), { context = "reload" })
      page:wait(JS.state_is, "live", 10, "the clock never went live")
      page:eval("() => { window.__before_reload = true; return true; }")
      local navigations = page:log().navigations

      -- a save: the page reloads itself and shows what the new code sends
      save(edited)
      assert(testing.wait_for(function() return page:log().navigations > navigations end, 10, 0.05),
             "the page did not reload after the save")
      page:wait("() => window.__before_reload === undefined && /^\\d\\d\\.\\d\\d\\.\\d\\d$/.test(document.querySelector('#time').textContent)",
                nil, 10, "the reloaded page does not show the new code's ticks")
      navigations = page:log().navigations

      -- a broken save: the overlay names the file and the line; the page
      -- stays, and the previous version keeps serving it
      local lines = {}
      for line in (edited .. "\n"):gmatch("([^\n]*)\n") do lines[#lines + 1] = line end
      local bad_line = #lines - 2
      lines[bad_line] = "local broken = = 1 -- a syntax error"
      save(table.concat(lines, "\n"))
      local where = "/clock/app.lua:" .. bad_line
      local alert = page:wait([[(where) => { const a = document.querySelector('div[role=alert]');
                                             return a && a.offsetHeight > 0 && a.textContent.includes(where) &&
                                                    a.textContent; }]], where, 10,
                              "no error overlay naming " .. where)
      assert.matches("did not reload", alert)
      assert.matches("unexpected symbol", alert)
      page:eval(JS.record, "#time")
      page:wait(JS.seen_at_least, { "#time", 2 }, 10, "the old version stopped serving")
      assert.matches("^%d%d%.%d%d%.%d%d$", page:eval("() => document.querySelector('#time').textContent"))
      page:screenshot(SHOTS .. "/reload-error.png")
      assert.are.equal(navigations, page:log().navigations, "a broken save reloaded the page")

      -- fixed: the page reloads and the overlay is gone
      save(original)
      assert(testing.wait_for(function() return page:log().navigations > navigations end, 10, 0.05),
             "the page did not reload after the fix")
      page:wait("() => /^\\d\\d:\\d\\d:\\d\\d$/.test(document.querySelector('#time').textContent)", nil, 10,
                "the fixed code's ticks are not shown")
      assert.are.equal(0, page:eval(JS.count, "div[role=alert]"))
      page:close()
      no_console_errors()
      srv:stop()
      testing.remove_tempdir(base)
    end)
  end)
end)
