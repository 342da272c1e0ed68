-- Several nodes sharing channels through Redis (--redis): each test starts
-- its own redis-server on a loopback port and two or three sluice nodes on
-- it (tests/apps/redis), then checks what a subscriber sees: every event
-- published on any node, in id order, once; resuming on another node with
-- Last-Event-ID; publishes failing cleanly while Redis is gone; a node cut
-- off from Redis catching up on what the others published meanwhile.
local testing = require "sluice.testing"
local redis = require "redis"

local json = testing.json
local APP = testing.root .. "/tests/apps/redis"
local CHAT = testing.root .. "/apps/chat"

-- ------------------------------------------------------------------ helpers

local function must(v, err, what)
  if v == nil then error((what or "failed") .. ": " .. tostring(err), 2) end
  return v
end

--- { id, data } of a raw frame (the data's lines joined).
local function parse(frame)
  local data = {}
  for line in frame:gmatch("[^\n]+") do
    local v = line:match("^data: ?(.*)$")
    if v then data[#data + 1] = v end
  end
  return { id = frame:match("\nid: ([^\n]+)") or frame:match("^id: ([^\n]+)"), data = table.concat(data, "\n") }
end

--- Ids "MS-SEQ" compared as numbers.
local function id_less(a, b)
  local am, as = a:match("^(%d+)-(%d+)$")
  local bm, bs = b:match("^(%d+)-(%d+)$")
  assert(am and bm, ("not stream ids: %s, %s"):format(a, b))
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am < bm or (am == bm and as < bs)
end

local opened = {}
local function close_opened()
  for _, s in ipairs(opened) do s:close() end
  opened = {}
end

--- GET /sub?ch=CH on a node, read up to its marker. Returns the stream, the
--- marker ({ replayed, ok } or { failed = msg }) and the replayed events.
local function subscribe(srv, ch, last_id)
  local headers = last_id and { ["Last-Event-ID"] = last_id } or nil
  local stream = must(testing.client(srv):sse("/sub?ch=" .. ch, { headers = headers, timeout = 10 }))
  opened[#opened + 1] = stream
  assert.are.equal(200, stream.status)
  local replay = {}
  while true do
    local f = must(stream:raw_until("\n\n", 10), "no marker", "subscribe " .. ch)
    local n, ok = f:match("^: subscribed replayed=(%d+) ok=(%a+)\n\n$")
    if n then return stream, { replayed = tonumber(n), ok = ok == "true" }, replay end
    local failed = f:match("^: failed (.*)\n\n$")
    if failed then return stream, { failed = failed }, replay end
    replay[#replay + 1] = parse(f)
  end
end

--- The next n events of a stream.
local function events(stream, n, timeout)
  local out = {}
  for i = 1, n do
    local f = must(stream:raw_until("\n\n", timeout or 10), "stream", ("event %d of %d"):format(i, n))
    out[i] = parse(f)
  end
  return out
end

--- POST /publish?ch=CH with body data on a node: status and decoded JSON.
local function publish(srv, ch, data)
  local res = must(testing.client(srv):post("/publish?ch=" .. ch, data))
  return res.status, res:json()
end

local function publish_ok(srv, ch, data)
  local status, body = publish(srv, ch, data)
  assert.are.equal(200, status, json.encode(body))
  return body.id
end

--- Nothing more arrives on the stream within `wait` seconds.
local function assert_quiet(stream, wait)
  local extra, err = stream:read_raw(wait or 0.3)
  assert.is_nil(extra)
  assert.are.equal("timeout", err)
end

--- The ids (or, with field "data", the data) of a list of events.
local function ids_of(list, field)
  local out = {}
  for i, e in ipairs(list) do out[i] = e[field or "id"] end
  return out
end

local function data_of(list) return ids_of(list, "data") end

-- ------------------------------------------------------------------- specs

describe("with --redis", function()
  local r, a, b

  --- Starts a node of the test app (or of app_dir) on r.
  local function node(app_dir, args, env)
    local argv = { "--redis", r:url() }
    for _, x in ipairs(args or {}) do argv[#argv + 1] = x end
    local srv = testing.start(app_dir or APP, { args = argv, env = env })
    -- Up once each worker's link is.
    local workers = 1
    for i, x in ipairs(args or {}) do
      if x == "--workers" then workers = tonumber(args[i + 1]) end
    end
    assert.is_truthy(testing.wait_for(function()
      local _, n = srv:log():gsub("redis: connected to", "")
      return n >= workers
    end, 10), srv:log())
    return srv
  end

  before_each(function()
    r = redis.start()
  end)

  after_each(function()
    close_opened()
    -- Every node exits cleanly (under ASan, LeakSanitizer checks each exit).
    local statuses = {}
    for _, srv in ipairs { a, b } do statuses[#statuses + 1] = (srv:stop()) end
    local logs = (a and a:log() or "") .. (b and b:log() or "")
    a, b = nil, nil
    r:stop()
    testing.remove_tempdir(r.dir)
    for _, st in ipairs(statuses) do assert.are.equal(0, st, logs) end
  end)

  it("delivers to a subscriber on B, in order and once, what is published on A and on B", function()
    a, b = node(), node(nil, { "--workers", "2" })
    local on_b = subscribe(b, "room")
    local on_a = subscribe(a, "room")
    local ids, want = {}, {}
    for i = 1, 20 do
      local srv = i % 2 == 1 and a or b
      want[i] = ("%s-%d"):format(srv == a and "A" or "B", i)
      ids[i] = publish_ok(srv, "room", want[i])
    end
    for _, stream in ipairs { on_b, on_a } do
      local got = events(stream, 20)
      assert.are.same(want, data_of(got))
      assert.are.same(ids, ids_of(got))
      assert_quiet(stream)
    end
    for i = 2, 20 do assert.is_true(id_less(ids[i - 1], ids[i]), ids[i - 1] .. " < " .. ids[i]) end
  end)

  it("gives every subscriber of every worker one copy of each event", function()
    a, b = node(nil, { "--workers", "2" }), node(nil, { "--workers", "2" })
    local streams = {}
    for i = 1, 8 do streams[i] = subscribe(i % 2 == 0 and a or b, "many") end
    local res = must(testing.client(a):post("/burst?ch=many&n=50&tag=x", ""))
    assert.are.equal(200, res.status)
    local ids = res:json().ids
    local want = {}
    for i = 1, 50 do want[i] = "x-" .. i end
    for _, s in ipairs(streams) do
      local got = events(s, 50)
      assert.are.same(want, data_of(got))
      assert.are.same(ids, ids_of(got))
    end
    assert_quiet(streams[1])
  end)

  it("resumes on B, with Last-Event-ID, exactly where a stream on A was cut", function()
    a, b = node(), node()
    local on_a = subscribe(a, "resume")
    local ids = {}
    for i = 1, 5 do ids[i] = publish_ok(a, "resume", "e" .. i) end
    local seen = events(on_a, 3) -- the client is cut after the third
    on_a:close()
    for i = 6, 10 do ids[i] = publish_ok(i % 2 == 0 and b or a, "resume", "e" .. i) end

    local on_b, marker, replay = subscribe(b, "resume", seen[3].id)
    assert.are.same({ replayed = 7, ok = true }, marker)
    assert.are.same({ "e4", "e5", "e6", "e7", "e8", "e9", "e10" }, data_of(replay))
    assert.are.same({ table.unpack(ids, 4, 10) }, ids_of(replay))
    -- Then live, with nothing repeated at the seam.
    local live = publish_ok(a, "resume", "e11")
    local got = events(on_b, 1)
    assert.are.same({ { id = live, data = "e11" } }, got)
    assert_quiet(on_b)
  end)

  it("replays everything to a page that resumes from \"0\" (it had no history yet)", function()
    a, b = node(), node()
    local ids = {}
    for i = 1, 3 do ids[i] = publish_ok(a, "zero", "z" .. i) end
    local _, marker, replay = subscribe(b, "zero", "0")
    assert.are.same({ replayed = 3, ok = true }, marker)
    assert.are.same(ids, ids_of(replay))
  end)

  it("resumes several channels with one Last-Event-ID, in id order across nodes", function()
    a, b = node(), node()
    local first = publish_ok(a, "x", "x0")
    local want = {}
    for i = 1, 6 do
      local ch = i % 3 == 0 and "y" or "x"
      local id = publish_ok(i % 2 == 0 and b or a, ch, ch .. i)
      want[#want + 1] = { id = id, data = ch .. i }
    end
    local _, marker, replay = subscribe(b, "x,y", first)
    assert.are.same({ replayed = 6, ok = true }, marker)
    assert.are.same(want, replay)
  end)

  it("repeats and drops nothing at the seam while events race the subscribe", function()
    a, b = node(), node()
    -- A burst of publishes runs on A while subscribers join B with the id
    -- of the first event: each must see every event once, in order.
    local first = publish_ok(a, "race", "r0")
    local conn = must(testing.connect(a))
    assert(conn:send(testing.request_bytes("POST", "/burst?ch=race&n=300&tag=r", { body = "" })))
    local streams = {}
    for i = 1, 4 do
      local s, marker, replay = subscribe(b, "race", first)
      assert.is_true(marker.ok)
      streams[i] = { s = s, got = replay }
    end
    local res = must(conn:receive_response { timeout = 20 })
    conn:close()
    assert.are.equal(200, res.status)
    local all = json.decode(res.body).ids
    local partial = 0
    for _, st in ipairs(streams) do
      if #st.got < #all then partial = partial + 1 end
      for _, e in ipairs(events(st.s, #all - #st.got)) do st.got[#st.got + 1] = e end
      assert.are.same(all, ids_of(st.got))
      assert_quiet(st.s, 0.1)
    end
    -- At least one subscriber joined while the burst was still running.
    assert.is_true(partial > 0)
  end)

  it("reports a gap when history was trimmed past Last-Event-ID", function()
    a, b = node(nil, nil, { REDIS_TEST_HISTORY = 5 }), node(nil, nil, { REDIS_TEST_HISTORY = 5 })
    local first = publish_ok(a, "short", "s0")
    local res = must(testing.client(a):post("/burst?ch=short&n=400&tag=s", ""))
    local ids = res:json().ids
    -- MAXLEN ~ 5 keeps whole nodes of the stream: at least 5 events.
    local _, marker, replay = subscribe(b, "short", first)
    assert.is_false(marker.ok)
    assert.is_true(#replay >= 5 and #replay < 400, tostring(#replay))
    assert.are.same({ table.unpack(ids, 400 - #replay + 1, 400) }, ids_of(replay))
    -- From "0": everything kept, and the gap.
    local _, m0 = subscribe(b, "short", "0")
    assert.is_false(m0.ok)
    -- Resuming from a retained id: no gap.
    local _, m2, r2 = subscribe(b, "short", ids[399])
    assert.are.same({ replayed = 1, ok = true }, m2)
    assert.are.same({ ids[400] }, ids_of(r2))
  end)

  it("reads history from any node: since and limit", function()
    a, b = node(), node()
    local ids = {}
    for i = 1, 6 do ids[i] = publish_ok(i % 2 == 0 and b or a, "h", "h" .. i) end
    local res = must(testing.client(b):get("/history?ch=h&since=" .. ids[2] .. "&limit=3"))
    assert.are.equal(200, res.status)
    local got = res:json()
    assert.are.same({ ids[3], ids[4], ids[5] }, ids_of(got))
    assert.are.same({ "h3", "h4", "h5" }, data_of(got))
    assert.are.same(6, #must(testing.client(a):get("/history?ch=h")):json())
    assert.are.same({}, must(testing.client(a):get("/history?ch=nothing-here")):json())
  end)

  it("fails publishes cleanly while Redis is down, keeps streams open, and resumes after", function()
    a, b = node(CHAT), node(CHAT)
    local on_a = must(testing.client(a):sse("/events", { timeout = 10 }))
    opened[#opened + 1] = on_a
    local on_b = must(testing.client(b):sse("/events", { timeout = 10 }))
    opened[#opened + 1] = on_b
    testing.sleep(0.2) -- both subscribed
    local function post(srv, text)
      return must(testing.client(srv):post("/messages", json.encode { user = "u", text = text },
        { headers = { ["Content-Type"] = "application/json" } }))
    end
    local before = post(a, "before")
    assert.are.equal(202, before.status)
    for _, s in ipairs { on_a, on_b } do
      local ev = must(s:next_event(10))
      assert.are.equal(before:json().id, ev.id)
    end

    r:stop()
    for _, srv in ipairs { a, b } do
      local res = post(srv, "while down")
      assert.are.equal(503, res.status)
      assert.matches("^redis: ", res:json().error)
    end
    -- Open streams stay open while Redis is away.
    assert.is_nil(on_a:next_event(0.3))
    assert.is_false(on_a.ended)

    r:restart()
    local after
    assert.is_truthy(testing.wait_for(function()
      local res = post(b, "after")
      if res.status == 202 then after = res:json().id end
      return after
    end, 15, 0.1))
    for _, s in ipairs { on_a, on_b } do
      local ev = must(s:next_event(10))
      assert.are.equal(after, ev.id)
      assert.are.equal("after", json.decode(ev.data).text)
    end
    -- Nothing published was lost: the history has both, nothing else.
    local hist = must(testing.client(a):get("/history")):json()
    local texts = {}
    for i, m in ipairs(hist) do texts[i] = m.text end
    assert.are.same({ "before", "after" }, texts)
  end)

  it("catches up a node cut off from Redis on what other nodes published meanwhile", function()
    a, b = node(), node()
    local on_a = subscribe(a, "cut")
    local ids = { publish_ok(b, "cut", "c1") }
    assert.are.same({ ids[1] }, ids_of(events(on_a, 1)))

    -- A's connections are closed and it cannot log in again; B's stay.
    r:call("CONFIG", "SET", "requirepass", "sekrit")
    r.password = "sekrit"
    assert.is_true(r:kill_clients_of(a.pid) >= 1)
    for i = 2, 6 do ids[i] = publish_ok(b, "cut", "c" .. i) end
    local status, body = publish(a, "cut", "from A while cut off")
    assert.are.equal(503, status)
    assert.matches("^redis: ", body.error)

    r:call("CONFIG", "SET", "requirepass", "")
    r.password = nil
    local got = events(on_a, 5, 15)
    assert.are.same({ "c2", "c3", "c4", "c5", "c6" }, data_of(got))
    assert.are.same({ table.unpack(ids, 2, 6) }, ids_of(got))
    -- Live again, once each.
    local id7 = publish_ok(b, "cut", "c7")
    assert.are.same({ id7 }, ids_of(events(on_a, 1)))
    assert_quiet(on_a)
    assert.is_true(must(testing.client(a):get("/stats")):json().redis.reconnects >= 1)
    assert.matches("redis: connected again", a:log())
    local m = must(testing.client(a):get("/_sluice/metrics")).body
    assert.matches("\nsluice_redis_links_up 1\n", m)
    assert.matches("\nsluice_redis_reconnects_total [1-9]", m)
    assert.matches("\nsluice_redis_events_received_total [1-9]", m)
  end)

  it("keeps publishing when only the pub/sub connections are lost, and delivers all after", function()
    a, b = node(), node()
    local on_b = subscribe(b, "pubsub")
    local want, ids = {}, {}
    for i = 1, 40 do
      if i == 11 then
        -- Redis drops every pub/sub connection (as at its output limit);
        -- the command connections stay.
        assert.is_true(r:call("CLIENT", "KILL", "TYPE", "pubsub") >= 2)
      end
      want[i] = "p" .. i
      ids[i] = publish_ok(i % 2 == 0 and a or b, "pubsub", want[i])
    end
    local got = events(on_b, 40, 15)
    assert.are.same(want, data_of(got))
    assert.are.same(ids, ids_of(got))
    assert_quiet(on_b)
    assert.matches("sub connection to [%d.:]+ lost", b:log())
    assert.is_nil(b:log():find("cmd connection", 1, true))
  end)

  it("ends the streams of a channel that lost history while a node was cut off", function()
    a, b = node(nil, nil, { REDIS_TEST_HISTORY = 5 }), node(nil, nil, { REDIS_TEST_HISTORY = 5 })
    local on_a = subscribe(a, "lossy")
    local kept = subscribe(a, "calm")
    local seen = publish_ok(b, "lossy", "l0")
    assert.are.same({ seen }, ids_of(events(on_a, 1)))

    r:call("CONFIG", "SET", "requirepass", "sekrit")
    r.password = "sekrit"
    assert.is_true(r:kill_clients_of(a.pid) >= 1)
    local res = must(testing.client(b):post("/burst?ch=lossy&n=400&tag=l", ""))
    assert.are.equal(200, res.status)
    local calm = publish_ok(b, "calm", "c1")
    r:call("CONFIG", "SET", "requirepass", "")
    r.password = nil

    -- The lossy channel's stream ends (its client is to resume and learn
    -- of the gap); the other channel's stream gets what it missed.
    local _, err = on_a:read_all(15)
    assert.is_nil(err)
    assert.are.same({ calm }, ids_of(events(kept, 1, 15)))
    assert.matches("channel 'lossy' lost events from history", a:log())
    local _, marker, replay = subscribe(a, "lossy", seen)
    assert.is_false(marker.ok)
    assert.are.same(res:json().ids[400], replay[#replay].id)
  end)

  it("takes a Redis that stopped answering for lost, then fails publishes at once", function()
    a = node()
    publish_ok(a, "hung", "before")
    r:signal("STOP")
    finally(function() r:signal("CONT") end)
    local t0 = testing.now()
    local res = must(testing.client(a):post("/publish?ch=hung", "while hung", { timeout = 15 }))
    local waited = testing.now() - t0
    assert.are.equal(503, res.status)
    assert.matches("^redis: ", res:json().error)
    local status
    assert.is_true(waited >= 4 and waited < 8, ("the first publish waited %.1f s"):format(waited))
    t0 = testing.now()
    status = publish(a, "hung", "still hung")
    assert.are.equal(503, status)
    assert.is_true(testing.now() - t0 < 0.5, "later publishes fail at once")
    assert.matches("cmd connection to [%d.:]+ lost %(no answer for 5 s%)", a:log())
    r:signal("CONT")
    assert.is_truthy(testing.wait_for(function() return publish(a, "hung", "after") == 200 end, 10, 0.1))
  end)

  it("replays nothing to a stream that subscribes again to what it follows", function()
    a = node()
    publish_ok(a, "again", "x")
    local stream = must(testing.client(a):sse("/sub-twice?ch=again", { timeout = 10 }))
    opened[#opened + 1] = stream
    assert.are.equal(": twice replayed=0 ok=true\n\n", must(stream:raw_until("\n\n", 5)))
    local id = publish_ok(a, "again", "live")
    assert.are.same({ id }, ids_of(events(stream, 1)))
    assert_quiet(stream)
  end)

  it("recovers when the functions are removed from Redis", function()
    a, b = node(), node()
    local on_a = subscribe(a, "fn")
    assert(r:call("FUNCTION", "DELETE", "sluice_v1"))
    assert(r:call("CLIENT", "KILL", "TYPE", "pubsub"))
    -- A's catch-up reads fail meanwhile (no function) and are tried again.
    testing.sleep(0.5)
    assert.matches("catch%-up", a:log())
    -- B's next publish finds no function; its command connection starts
    -- over and loads them again, and A's catch-up goes through.
    local id
    assert.is_truthy(testing.wait_for(function()
      local status, body = publish(b, "fn", "after")
      if status == 200 then id = body.id end
      return id
    end, 15, 0.2))
    assert.are.same({ id }, ids_of(events(on_a, 1, 15)))
  end)

  it("answers a subscribe while Redis is down with nil, message", function()
    a = node()
    r:stop()
    testing.wait_for(function()
      return not must(testing.client(a):get("/stats")):json().redis.up
    end, 5)
    local stream, marker = subscribe(a, "down")
    assert.matches("^redis: ", marker.failed)
    local _, err = stream:read_all(5)
    assert.is_nil(err) -- the handler returned unsubscribed: the stream ended
  end)

  it("refuses a malformed --redis URL at startup", function()
    local res = testing.run { "--redis", "http://nope", APP }
    assert.are.equal(2, res.status)
    assert.matches("not a redis:// URL", res.stderr)
    res = testing.run { "--redis", "redis://127.0.0.1:99999", APP }
    assert.are.equal(2, res.status)
    assert.matches("bad port", res.stderr)
  end)
end)
