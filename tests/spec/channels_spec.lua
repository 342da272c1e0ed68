-- Channels through real servers on loopback: frames every subscriber shares
-- byte for byte, Last-Event-ID replay (header and query parameter), gaps in
-- history, bad ids, several channels per stream, publishes racing replays,
-- delivery across workers, slow subscribers, a thousand subscribers, and
-- the chat demo app.
--
-- The test apps are in tests/apps/channels*/ (routes.lua lists their
-- routes). Their /sub route writes a comment after subscribing,
--   ": subscribed worker=W replayed=N ok=true|false\n\n",
-- so everything before it on the stream is the replay and everything after
-- it is live.
local testing = require "sluice.testing"

local json = testing.json

local function app(name) return testing.root .. "/tests/apps/" .. name end

-- ------------------------------------------------------------------ helpers

--- Raises `what: err` when v is nil; returns v.
local function must(v, err, what)
  if v == nil then error((what or "failed") .. ": " .. tostring(err), 2) end
  return v
end

--- An id as an integer (ids are strings of digits).
local function num(id)
  return must(math.tointeger(tonumber(id)), id, "not an id")
end

--- The frame the hub writes for an event: event, id, retry, data lines.
local function frame(id, data, event, retry)
  local out = {}
  if event then out[#out + 1] = "event: " .. event .. "\n" end
  out[#out + 1] = "id: " .. id .. "\n"
  if retry then out[#out + 1] = "retry: " .. retry .. "\n" end
  for line in (data .. "\n"):gmatch("(.-)\n") do
    out[#out + 1] = line == "" and "data:\n" or ("data: " .. line .. "\n")
  end
  return table.concat(out) .. "\n"
end

-- Streams opened by the current test, closed after it whatever happened,
-- so that a failing test leaves no subscriber behind for the next ones.
local opened = {}
local function track(stream)
  opened[#opened + 1] = stream
  return stream
end
local function close_opened()
  for _, s in ipairs(opened) do s:close() end
  opened = {}
end

--- Opens GET /sub?QUERY and reads up to its marker comment. Returns the
--- stream, the marker's fields { worker, replayed, ok } and the list of
--- frames that came before it (the replay).
---@return sluice.testing.Stream, {worker: integer, replayed: integer, ok: boolean}, string[]
local function subscribe(client, query, headers)
  local stream = track(must(client:sse("/sub?" .. query, { headers = headers, timeout = 10 })))
  assert.are.equal(200, stream.status)
  local replay = {}
  while true do
    local f = must(stream:raw_until("\n\n", 10), "no marker", "subscribe " .. query)
    local w, n, ok = f:match("^: subscribed worker=(%d+) replayed=(%d+) ok=(%a+)\n\n$")
    if w then
      return stream, { worker = num(w), replayed = num(n), ok = ok == "true" }, replay
    end
    replay[#replay + 1] = f
  end
end

--- The next n frames of a stream, raw.
local function frames(stream, n, timeout)
  local out = {}
  for i = 1, n do
    out[i] = must(stream:raw_until("\n\n", timeout or 5), "stream", ("frame %d of %d"):format(i, n))
  end
  return out
end

--- Asserts that nothing more arrives on the stream for a moment.
local function assert_quiet(stream)
  local bytes, err = stream:read_raw(0.2)
  assert.is_nil(bytes, "unexpected bytes: " .. tostring(bytes))
  assert.are.equal("timeout", err)
end

--- POST /publish: data as the body, extra query (e.g. "&event=x"). Returns the id.
local function publish(client, ch, data, extra)
  local res = must(client:post("/publish?ch=" .. ch .. (extra or ""), data), nil, "publish")
  assert.are.equal(200, res.status, res.body)
  local id = must(res:json()).id
  assert.matches("^%d+$", id)
  return id
end

local function get_json(client, path)
  local res = must(client:get(path, { timeout = 10 }), nil, "GET " .. path)
  assert.are.equal(200, res.status, res.body)
  return must(res:json())
end

local function history(client, ch, query)
  return get_json(client, "/history?ch=" .. ch .. (query or ""))
end

local function stats(client) return get_json(client, "/stats") end

--- VmRSS of a process, in bytes.
local function rss(pid)
  local f = must(io.open("/proc/" .. pid .. "/status"))
  local s = f:read("a")
  f:close()
  return num(s:match("VmRSS:%s*(%d+) kB")) * 1024
end

-- Strictly increasing ids in a list of raw frames; returns the ids.
local function frame_ids(list)
  local ids = {}
  for i, f in ipairs(list) do
    ids[i] = num(must(f:match("\nid: (%d+)\n") or f:match("^id: (%d+)\n"), f, "frame without id"))
    if i > 1 then
      assert(ids[i] > ids[i - 1], ("ids out of order at frame %d: %d after %d"):format(i, ids[i], ids[i - 1]))
    end
  end
  return ids
end

-- ------------------------------------------------------------ a thousand

-- First in the file, while few descriptors are open (select() watches
-- descriptors below 1024 only).
describe("a thousand subscribers", function()
  local N_SUBS, N_EVENTS = 1000, 1000
  local server, client, crowd

  setup(function()
    server = testing.start(app("channels"))
    client = testing.client(server)
  end)

  after_each(close_opened)
  teardown(function()
    if crowd then crowd:close() end
    if server then server:stop() end
  end)

  it("each receive all of a thousand events, in order, within two minutes", function()
    collectgarbage() -- sockets leaked by earlier code would hold low descriptors
    local t0 = testing.now()
    local marked, complete, failed = 0, 0, 0

    -- Parses each member's body as it arrives: the marker, then frames
    -- "id: N\ndata: L-k\n\n" with k = 1, 2, ... and increasing ids.
    local function on_data(m, bytes)
      if m.failed then return end
      local buf = (m.rest or "") .. bytes
      local pos = 1
      if not m.marked then
        local after = buf:match("^: subscribed worker=%d+ replayed=0 ok=true\n\n()")
        if not after then
          if #buf > 64 or buf:find("\n\n", 1, true) then
            m.failed = "bad start: " .. buf:sub(1, 80)
            failed = failed + 1
          end
          m.rest = buf
          return
        end
        m.marked, m.count, m.last, m.idsum = true, 0, 0, 0
        marked = marked + 1
        pos = after
      end
      while true do
        local id, k, nxt = buf:match("^id: (%d+)\ndata: L%-(%d+)\n\n()", pos)
        if not id then break end
        id, k = math.tointeger(tonumber(id)), math.tointeger(tonumber(k))
        if k ~= m.count + 1 or id <= m.last then
          m.failed = ("member %d: event L-%d (id %d) after L-%d (id %d)"):format(
            m.index, k, id, m.count, m.last)
          failed = failed + 1
          return
        end
        m.count, m.last, m.idsum = k, id, m.idsum + id
        if k == N_EVENTS then complete = complete + 1 end
        pos = nxt
      end
      if buf:find("\n\n", pos, true) then
        m.failed = ("member %d: malformed frame after L-%d: %q"):format(m.index, m.count, buf:sub(pos, pos + 80))
        failed = failed + 1
        return
      end
      m.rest = buf:sub(pos)
    end

    local rss0 = rss(server.pid)
    crowd = must(testing.crowd(server, N_SUBS, { path = "/sub?ch=load", on_data = on_data, timeout = 60 }))
    for _, m in ipairs(crowd.members) do assert.are.equal(200, m.status) end
    must(crowd:wait(function() return marked + failed == N_SUBS end, 30), nil, "markers")
    local per_sub = (rss(server.pid) - rss0) / N_SUBS
    assert.are.equal(0, failed)
    assert.are.equal(N_SUBS, stats(client).subscribers)
    local t_open = testing.now() - t0

    -- A background task publishes the events, ten per loop iteration,
    -- while the crowd reads.
    local res = must(client:post(("/spawn?ch=load&n=%d&tag=L&pause=0.001&per=10"):format(N_EVENTS), ""))
    assert.are.equal(202, res.status)
    local ok, err = crowd:wait(function() return complete + failed == N_SUBS end,
                               math.max(1, 120 - (testing.now() - t0)))
    local elapsed = testing.now() - t0
    if not ok or failed > 0 then
      local counts, first_failure = {}, nil
      for _, m in ipairs(crowd.members) do
        counts[#counts + 1] = m.count or -1
        first_failure = first_failure or m.failed
      end
      table.sort(counts)
      error(("%s after %.1f s: %d of %d complete, %d failed (%s); fewest events %d, most %d"):format(
        tostring(err or "failures"), elapsed, complete, N_SUBS, failed, tostring(first_failure),
        counts[1], counts[#counts]))
    end

    -- Every member has exactly the published events: same count, same
    -- order, and the same ids (their sum) as the channel's history.
    local all = history(client, "load")
    assert.are.equal(N_EVENTS, #all)
    local idsum = 0
    for k, ev in ipairs(all) do
      assert.are.equal("L-" .. k, ev.data)
      idsum = idsum + num(ev.id)
    end
    for _, m in ipairs(crowd.members) do
      assert.are.equal(N_EVENTS, m.count)
      assert.are.equal(num(all[N_EVENTS].id), m.last)
      assert.are.equal(idsum, m.idsum)
      assert.are.equal("", m.rest)
    end
    io.stderr:write(("\n  [channels] %d subscribers x %d events: opened in %.1f s (server RSS +%.1f KiB each), all delivered in %.1f s\n"):format(
      N_SUBS, N_EVENTS, t_open, per_sub / 1024, elapsed))
    assert.is_true(elapsed < 120)
  end)

  it("are all freed when they disconnect", function()
    if not crowd then -- the previous test did not get that far
      crowd = must(testing.crowd(server, N_SUBS, { path = "/sub?ch=load", timeout = 60 }))
    end
    assert.are.equal(N_SUBS, stats(client).subscribers)
    crowd:close()
    local st = testing.wait_for(function()
      local s = stats(client)
      return s.subscribers == 0 and s.connections == 1 and s
    end, 10, 0.1)
    assert.is_truthy(st, "still held: " .. json.encode(stats(client)))
    assert.are.equal(0, st.slow_drops)
    -- the server still serves subscribers
    local stream, info = subscribe(client, "ch=load")
    assert.are.equal(0, info.replayed)
    local id = publish(client, "load", "after")
    assert.are.equal(frame(id, "after"), frames(stream, 1)[1])
    stream:close()
  end)

  it("server is still running", function()
    assert.is_nil(server:exit_status(), "server died:\n" .. server:log())
  end)
end)

-- ---------------------------------------------------------------- channels

describe("channels", function()
  local server, client

  setup(function()
    server = testing.start(app("channels"))
    client = testing.client(server)
  end)

  after_each(close_opened)
  teardown(function() if server then server:stop() end end)

  it("deliver byte-identical frames, numbered by the hub, to every subscriber", function()
    local a, ia, ra = subscribe(client, "ch=pair")
    local b, ib, rb = subscribe(client, "ch=pair")
    assert.are.same({ 0, 0, true, true }, { ia.replayed, ib.replayed, ia.ok, ib.ok })
    assert.are.same({}, ra)
    assert.are.same({}, rb)

    local expected = {}
    local function send(data, extra, event, retry, wire_data)
      local id = publish(client, "pair", data, extra)
      expected[#expected + 1] = frame(id, wire_data or data, event, retry)
    end
    send("plain")
    send("two\nlines", "&event=note", "note")
    send("", "&event=empty", "empty")
    send("with retry", "&event=r&retry=1500", "r", 1500)
    send("ünïcödé ✓ <b>&amp;</b>")
    send('{"b":[1,2],"a":"x"}', "&json=1", nil, nil, '{"a":"x","b":[1,2]}')
    for i = 1, 30 do send("n" .. i) end

    local got_a, got_b = frames(a, #expected), frames(b, #expected)
    assert.are.same(expected, got_a)
    assert.are.same(expected, got_b)
    frame_ids(got_a) -- strictly increasing
    assert_quiet(a)
    assert_quiet(b)
    a:close()
    b:close()
  end)

  it("keep a subscriber's method, path and query readable after its head is released", function()
    local s = must(client:sse("/sub-kept?ch=kept&x=1"))
    local kept = testing.wait_for(function()
      local list = json.decode(must(client:get("/kept")).body)
      return #list > 0 and list
    end)
    assert.are.same({ { method = "GET", path = "/sub-kept", ch = "kept" } }, kept)
    local id = publish(client, "kept", "still live")
    assert.are.same(frame(id, "still live"), frames(s, 1)[1])
    s:close()
  end)

  it("number events with one increasing sequence across channels", function()
    local ids = {}
    for i = 1, 10 do ids[i] = num(publish(client, "seq" .. (i % 3), "x")) end
    for i = 2, 10 do assert(ids[i] > ids[i - 1], "ids not increasing across channels") end
  end)

  it("refuse a published event that carries its own id", function()
    local res = must(client:post("/misuse", ""))
    local body = must(res:json())
    assert.is_false(body.ok)
    assert.matches("id", body.err)
  end)

  it("keep a subscriber that just started from seeing older events", function()
    publish(client, "fresh", "before")
    local s, info, replay = subscribe(client, "ch=fresh")
    assert.are.same({ 0, true }, { info.replayed, info.ok })
    assert.are.same({}, replay)
    local id = publish(client, "fresh", "after")
    assert.are.same({ frame(id, "after") }, frames(s, 1))
    assert_quiet(s)
    s:close()
  end)

  it("replay events published just before the subscribe once, and never repeat them live", function()
    -- /sub?pre=3 publishes three events and subscribes in the same turn:
    -- they are in the history and still on their way to the worker's
    -- subscribers, the seam between replay and live.
    local ch = "seam"
    local since = publish(client, ch, "first")
    local s1, i1, r1 = subscribe(client, "ch=" .. ch .. "&pre=3", { ["Last-Event-ID"] = since })
    assert.are.same({ 3, true }, { i1.replayed, i1.ok })
    assert.are.equal(3, #r1)
    for i, f in ipairs(r1) do assert.matches("^id: %d+\ndata: pre%-" .. i .. "\n\n$", f) end
    local s2, i2, r2 = subscribe(client, "ch=" .. ch .. "&pre=2")
    assert.are.same({ 0, true, {} }, { i2.replayed, i2.ok, r2 })
    local id = publish(client, ch, "live")
    -- s1 gets s2's two events and the live one; s2 only the live one
    local got1 = frames(s1, 3)
    frame_ids({ r1[3], got1[1], got1[2], got1[3] })
    assert.matches("^id: %d+\ndata: pre%-1\n\n$", got1[1])
    assert.matches("^id: %d+\ndata: pre%-2\n\n$", got1[2])
    assert.are.equal(frame(id, "live"), got1[3])
    assert.are.same({ frame(id, "live") }, frames(s2, 1))
    assert_quiet(s1)
    assert_quiet(s2)
  end)

  describe("reconnecting", function()
    -- A browser reads three events, goes away, four more are published,
    -- and it comes back with the last id it saw; `how` puts that id in the
    -- request.
    local function reconnect(ch, how)
      local s1 = subscribe(client, "ch=" .. ch)
      local ids, expected = {}, {}
      local function send(i)
        ids[i] = publish(client, ch, "m" .. i, "&event=msg")
        expected[i] = frame(ids[i], "m" .. i, "msg")
      end
      for i = 1, 3 do send(i) end
      for i = 1, 3 do
        local ev = must(s1:next_event(5))
        assert.are.same({ event = "msg", data = "m" .. i, id = ids[i] }, ev)
      end
      local last = s1:last_event_id()
      assert.are.equal(ids[3], last)
      s1:close()
      for i = 4, 7 do send(i) end

      local query, headers = how(last)
      local s2, info, replay = subscribe(client, "ch=" .. ch .. query, headers)
      assert.are.same({ expected[4], expected[5], expected[6], expected[7] }, replay)
      assert.are.same({ 4, true }, { info.replayed, info.ok })
      send(8)
      assert.are.same({ expected[8] }, frames(s2, 1))
      assert_quiet(s2)
      s2:close()
      return ids
    end

    it("with the Last-Event-ID header get exactly the missed events, then live ones", function()
      reconnect("resume-header", function(last) return "", { ["Last-Event-ID"] = last } end)
    end)

    it("with the lastEventId query parameter get exactly the missed events, then live ones", function()
      reconnect("resume-query", function(last) return "&lastEventId=" .. last, nil end)
    end)

    it("prefer the header to the query parameter", function()
      local ch = "resume-both"
      local ids = {}
      for i = 1, 5 do ids[i] = publish(client, ch, "m" .. i) end
      local s, info, replay = subscribe(client, "ch=" .. ch .. "&lastEventId=" .. ids[1],
                                        { ["Last-Event-ID"] = ids[3] })
      assert.are.same({ frame(ids[4], "m4"), frame(ids[5], "m5") }, replay)
      assert.are.equal(2, info.replayed)
      s:close()
    end)
  end)

  describe("bad ids", function()
    -- Each is taken as no id at all: nothing replayed, no gap, and the
    -- stream carries on live.
    local cases = {
      { "header abc", "", { ["Last-Event-ID"] = "abc" } },
      { "empty header", "", { ["Last-Event-ID"] = "" } },
      { "header -5", "", { ["Last-Event-ID"] = "-5" } },
      { "header 12abc", "", { ["Last-Event-ID"] = "12abc" } },
      { "header 1.5", "", { ["Last-Event-ID"] = "1.5" } },
      { "header beyond 64 bits", "", { ["Last-Event-ID"] = "18446744073709551616" } },
      { "header of 30 digits", "", { ["Last-Event-ID"] = ("9"):rep(30) } },
      { "query abc", "&lastEventId=abc" },
      { "empty query", "&lastEventId=" },
      { "query with spaces", "&lastEventId=%2012%20" },
      { "an id from the future", "", { ["Last-Event-ID"] = "18446744073709551615" } },
    }

    it("replay nothing, are no error, and the stream still works", function()
      local ch = "junk"
      for i = 1, 3 do publish(client, ch, "old" .. i) end
      local streams = {}
      for i, c in ipairs(cases) do
        local s, info, replay = subscribe(client, "ch=" .. ch .. c[2], c[3])
        assert.are.same({ c[1], 0, true, {} }, { c[1], info.replayed, info.ok, replay })
        streams[i] = s
      end
      local id = publish(client, ch, "live")
      for i, s in ipairs(streams) do
        assert.are.same({ cases[i][1], frame(id, "live") }, { cases[i][1], frames(s, 1)[1] })
        s:close()
      end
    end)
  end)

  describe("several channels in one subscribe", function()
    it("replay merged in id order, then deliver only their live events", function()
      local evs = {}
      local function send(ch, data)
        local id = publish(client, ch, data)
        evs[#evs + 1] = { ch = ch, data = data, frame = frame(id, data) }
        return id
      end
      local since = send("m1", "a1")
      send("m2", "b1"); send("m3", "c1"); send("m1", "a2"); send("m2", "b2")
      send("m1", "a3"); send("m3", "c2"); send("m2", "b3"); send("m4", "d1")

      local s, info, replay = subscribe(client, "ch=m1,m2", { ["Last-Event-ID"] = since })
      local expected = {}
      for i = 2, #evs do
        if evs[i].ch == "m1" or evs[i].ch == "m2" then expected[#expected + 1] = evs[i].frame end
      end
      assert.are.equal(5, #expected)
      assert.are.same(expected, replay)
      assert.are.same({ 5, true }, { info.replayed, info.ok })

      local live = {}
      send("m3", "c3")
      live[#live + 1] = frame(send("m2", "b4"), "b4")
      send("m4", "d2")
      live[#live + 1] = frame(send("m1", "a4"), "a4")
      assert.are.same(live, frames(s, 2))
      assert_quiet(s)
      s:close()
    end)

    it("deliver a channel named twice once", function()
      local ids = {}
      for i = 1, 3 do ids[i] = publish(client, "twice", "t" .. i) end
      local s, info, replay = subscribe(client, "ch=twice,twice", { ["Last-Event-ID"] = ids[1] })
      assert.are.same({ frame(ids[2], "t2"), frame(ids[3], "t3") }, replay)
      assert.are.equal(2, info.replayed)
      local id = publish(client, "twice", "t4")
      assert.are.same({ frame(id, "t4") }, frames(s, 1))
      assert_quiet(s)
      s:close()
    end)
  end)

  it("server is still running", function()
    assert.is_nil(server:exit_status(), "server died:\n" .. server:log())
    local st = stats(client)
    assert.are.equal(0, st.subscribers)
    assert.are.equal(0, st.slow_drops)
    assert.are.equal(0, (server:stop()))
  end)
end)

-- ------------------------------------------------------------------ gaps

describe("channels with a history of 5", function()
  local server, client
  local ids = {}

  setup(function()
    server = testing.start(app("channels_history"))
    client = testing.client(server)
    for i = 1, 12 do ids[i] = publish(client, "small", "s" .. i) end
  end)

  after_each(close_opened)
  teardown(function() if server then server:stop() end end)

  -- frames of events i..j
  local function range(i, j)
    local out = {}
    for k = i, j do out[#out + 1] = frame(ids[k], "s" .. k) end
    return out
  end

  it("keep the last 5 events", function()
    local h = history(client, "small")
    assert.are.equal(5, #h)
    for k, ev in ipairs(h) do
      assert.are.same({ id = ids[7 + k], data = "s" .. (7 + k) }, ev)
    end
    assert.are.equal(5, stats(client).retained)
  end)

  it("serve history after an id, and at most limit events", function()
    local function list(query)
      local out = {}
      for _, ev in ipairs(history(client, "small", query)) do out[#out + 1] = ev.data end
      return out
    end
    assert.are.same({ "s11", "s12" }, list("&since=" .. ids[10]))
    assert.are.same({ "s8", "s9" }, list("&limit=2"))
    assert.are.same({ "s10" }, list("&since=" .. ids[9] .. "&limit=1"))
    assert.are.same({}, list("&since=" .. ids[12]))
    assert.are.same({}, list("&since=abc"))
    assert.are.same({ "s8", "s9", "s10", "s11", "s12" }, list("&since=" .. ids[2]))
  end)

  it("replay what is retained and report the gap when since is older", function()
    local s, info, replay = subscribe(client, "ch=small", { ["Last-Event-ID"] = ids[2] })
    assert.are.same(range(8, 12), replay)
    assert.are.same({ 5, false }, { info.replayed, info.ok })
    s:close()
  end)

  it("report a gap of a single event", function()
    -- since = the 6th: the 7th was dropped from history
    local s, info, replay = subscribe(client, "ch=small", { ["Last-Event-ID"] = ids[6] })
    assert.are.same({ 5, false }, { info.replayed, info.ok })
    assert.are.same(range(8, 12), replay)
    s:close()
  end)

  it("report no gap when since is the newest dropped event or later", function()
    local s, info, replay = subscribe(client, "ch=small", { ["Last-Event-ID"] = ids[7] })
    assert.are.same({ 5, true }, { info.replayed, info.ok })
    assert.are.same(range(8, 12), replay)
    s:close()
    s, info, replay = subscribe(client, "ch=small&lastEventId=" .. ids[10])
    assert.are.same({ 2, true }, { info.replayed, info.ok })
    assert.are.same(range(11, 12), replay)
    s:close()
  end)

  it("report a gap for an id older than the server", function()
    local s, info, replay = subscribe(client, "ch=small", { ["Last-Event-ID"] = "1" })
    assert.are.same({ 5, false }, { info.replayed, info.ok })
    assert.are.equal(5, #replay)
    s:close()
  end)

  -- (last: it adds to the history the tests above rely on)
  it("go on live after a replay with a gap", function()
    local s, info, replay = subscribe(client, "ch=small", { ["Last-Event-ID"] = ids[3] })
    assert.are.same({ 5, false }, { info.replayed, info.ok })
    assert.are.same(range(8, 12), replay)
    local id = publish(client, "small", "s13")
    assert.are.same({ frame(id, "s13") }, frames(s, 1))
    assert_quiet(s)
    s:close()
  end)

  it("server is still running", function()
    assert.is_nil(server:exit_status(), "server died:\n" .. server:log())
  end)
end)

describe("channels with a history_ttl of 2 seconds", function()
  local server, client

  setup(function()
    server = testing.start(app("channels_ttl"))
    client = testing.client(server)
  end)

  after_each(close_opened)
  teardown(function() if server then server:stop() end end)

  it("forget events once they are older, and report what a replay missed", function()
    local e1 = publish(client, "brief", "e1")
    local e2 = publish(client, "brief", "e2")
    assert.are.equal(2, #history(client, "brief"))
    assert.is_truthy(testing.wait_for(function() return #history(client, "brief") == 0 end, 10, 0.05),
                     "events still in history 10 s after they were published")
    local e3 = publish(client, "brief", "e3")
    local s, info, replay = subscribe(client, "ch=brief", { ["Last-Event-ID"] = e1 })
    assert.are.same({ 1, false, { frame(e3, "e3") } }, { info.replayed, info.ok, replay })
    s, info, replay = subscribe(client, "ch=brief", { ["Last-Event-ID"] = e2 })
    assert.are.same({ 1, true, { frame(e3, "e3") } }, { info.replayed, info.ok, replay })
  end)
end)

-- ------------------------------------------------------- two workers

describe("channels with --workers 2", function()
  local server, client

  setup(function()
    server = testing.start(app("channels"), { args = { "--workers", "2" } })
    client = testing.client(server)
  end)

  after_each(close_opened)
  teardown(function() if server then server:stop() end end)

  -- A keep-alive connection to each worker (the kernel spreads new
  -- connections between their listeners).
  local function per_worker()
    local conns, n = {}, 0
    for _ = 1, 200 do
      local c = track(must(client:connect()))
      local res = must(c:request("GET", "/stats"))
      local w = must(res:json()).worker
      if conns[w] then c:close() else conns[w], n = c, n + 1 end
      if n == 2 then return conns end
    end
    error("200 connections all went to one worker")
  end

  it("publishes racing replays leave no gap and no duplicate", function()
    local N = 800
    -- A background task on one worker publishes r-1..r-800, one every 2 ms.
    local res = must(client:post(("/spawn?ch=race&n=%d&tag=r&pause=0.002"):format(N), ""))
    assert.are.equal(202, res.status)

    local known = {} -- ids published so far, in order
    local function refresh()
      local since = known[#known] and ("&since=" .. known[#known]) or ""
      for _, ev in ipairs(history(client, "race", since)) do known[#known + 1] = ev.id end
      return #known
    end

    -- Meanwhile subscribers arrive with all kinds of Last-Event-ID.
    local subs = {}
    local kinds = { "latest", "none", "back10", "back100", "first", "abc", "back1" }
    while #subs < 100 do
      local count = refresh()
      if count >= N then break end
      local kind = kinds[#subs % #kinds + 1]
      local since
      if count > 0 then
        if kind == "latest" then since = known[count]
        elseif kind == "back1" then since = known[math.max(1, count - 1)]
        elseif kind == "back10" then since = known[math.max(1, count - 10)]
        elseif kind == "back100" then since = known[math.max(1, count - 100)]
        elseif kind == "first" then since = known[1]
        elseif kind == "abc" then since = "abc" end
      end
      local s, info, replay = subscribe(client, "ch=race", since and { ["Last-Event-ID"] = since })
      subs[#subs + 1] = { stream = s, since = since, info = info, replay = replay,
                          published_before = count, published_after = refresh() }
    end
    assert(#subs >= 10, "the publisher finished before 10 subscribers arrived")

    assert.is_truthy(testing.wait_for(function() return refresh() >= N end, 30, 0.05),
                     "the publisher did not finish")
    -- one last event, which every subscriber reads up to
    publish(client, "race", "fin")
    local all = history(client, "race")
    assert.are.equal(N + 1, #all)
    local pos, wire = {}, {}
    for k, ev in ipairs(all) do
      assert.are.equal(k <= N and "r-" .. k or "fin", ev.data)
      pos[ev.id] = k
      wire[k] = frame(ev.id, ev.data)
    end

    for n, sub in ipairs(subs) do
      local what = ("subscriber %d (since %s)"):format(n, tostring(sub.since))
      -- read up to the final event
      local got = {}
      for _, f in ipairs(sub.replay) do got[#got + 1] = f end
      while #got == 0 or got[#got] ~= wire[N + 1] do
        got[#got + 1] = must(sub.stream:raw_until("\n\n", 10), nil, what)
      end
      sub.stream:close()
      frame_ids(got) -- strictly increasing: no duplicate
      assert.are.equal(#sub.replay, sub.info.replayed, what)
      local first
      if sub.since and pos[sub.since] then
        first = pos[sub.since] + 1
        assert.is_true(sub.info.ok, what)
      else
        assert.are.equal(0, sub.info.replayed, what)
        first = pos[got[1]:match("^id: (%d+)\n")]
        -- nothing published before it asked, nothing missed after it subscribed
        assert(first > sub.published_before and first <= sub.published_after + 1,
               ("%s: first event r-%d; %d were published before it asked, %d once it had subscribed"):format(
                 what, first, sub.published_before, sub.published_after))
      end
      -- exactly every event after since, byte for byte
      local received = table.concat(got)
      if received ~= table.concat(wire, "", first) then
        error(("%s: expected r-%d..r-%d and fin (%d frames), got %d frames: %q ... %q"):format(
          what, first, N, N + 2 - first, #got, got[1], got[#got]))
      end
    end
  end)

  it("deliver every event published through both workers in one order to subscribers on both", function()
    local conns = per_worker()
    local subs, on = {}, {}
    for _ = 1, 200 do
      local s, info = subscribe(client, "ch=xw,xw2")
      subs[#subs + 1] = s
      on[info.worker] = (on[info.worker] or 0) + 1
      local enough = 0
      for w in pairs(conns) do if (on[w] or 0) >= 3 then enough = enough + 1 end end
      if enough == 2 then break end
    end
    for w in pairs(conns) do
      assert(( on[w] or 0) >= 3, "fewer than 3 subscribers on worker " .. w)
    end

    -- both workers publish at once, 300 events each
    local M = 300
    for w, c in pairs(conns) do
      must(c:send(testing.request_bytes("POST", ("/burst?ch=xw&n=%d&tag=w%d&pause=0.001"):format(M, w),
                                        { body = "" })))
    end
    local published = {}
    for w, c in pairs(conns) do
      local res = must(c:receive_response { timeout = 30 })
      assert.are.equal(200, res.status)
      local body = must(res:json())
      assert.are.equal(w, body.worker)
      assert.are.equal(M, #body.ids)
      published[w] = body.ids
    end

    local all = history(client, "xw")
    assert.are.equal(2 * M, #all)
    local wire, by_tag = {}, {}
    for k, ev in ipairs(all) do
      wire[k] = frame(ev.id, ev.data)
      local tag, i = ev.data:match("^(w%d+)%-(%d+)$")
      by_tag[tag] = by_tag[tag] or {}
      table.insert(by_tag[tag], ev.id)
      assert.are.equal(#by_tag[tag], num(i)) -- each publisher's events in its order
    end
    for w, ids in pairs(published) do assert.are.same(ids, by_tag["w" .. w]) end
    local expected = table.concat(wire)

    for n, s in ipairs(subs) do
      local got = frames(s, 2 * M, 10)
      frame_ids(got)
      if table.concat(got) ~= expected then
        error(("subscriber %d: its %d frames differ from the history's order"):format(n, #got))
      end
      assert_quiet(s)
    end

    -- then as fast as they can, both at once: 3000 events each, in runs of 100
    local B = 3000
    for w, c in pairs(conns) do
      must(c:send(testing.request_bytes("POST", ("/burst?ch=xw2&n=%d&tag=w%d&per=100&pause=0.001"):format(B, w), { body = "" })))
    end
    local events = {}
    for w, c in pairs(conns) do
      local res = must(c:receive_response { timeout = 30 })
      assert.are.equal(200, res.status)
      local ids = must(res:json()).ids
      assert.are.equal(B, #ids)
      for i, id in ipairs(ids) do
        events[#events + 1] = { id = num(id), wire = frame(id, ("w%d-%d"):format(w, i)), w = w }
      end
    end
    table.sort(events, function(x, y) return x.id < y.id end)
    local switches = 0
    wire = {}
    for k, ev in ipairs(events) do
      wire[k] = ev.wire
      if k > 1 and ev.w ~= events[k - 1].w then switches = switches + 1 end
    end
    expected = table.concat(wire)
    for n, s in ipairs(subs) do
      local got = frames(s, 2 * B, 10)
      frame_ids(got)
      if table.concat(got) ~= expected then
        error(("subscriber %d: its %d frames of the race differ from the publishers' ids in order"):format(n, #got))
      end
      assert_quiet(s)
      s:close()
    end

    -- every worker lets go of its subscribers
    for w, c in pairs(conns) do
      local gone = testing.wait_for(function()
        local res = must(c:request("GET", "/stats"))
        return must(res:json()).subscribers == 0
      end, 10, 0.05)
      assert.is_truthy(gone, "worker " .. w .. " still holds subscribers")
      c:close()
    end
    io.stderr:write(("\n  [channels] --workers 2: %d subscribers (%s), %d events, %d alternations between the racing publishers\n"):format(
      #subs, (function()
        local parts = {}
        for w, k in pairs(on) do parts[#parts + 1] = ("worker %d: %d"):format(w, k) end
        table.sort(parts)
        return table.concat(parts, ", ")
      end)(), 2 * M + 2 * B, switches))
  end)

  it("server is still running", function()
    assert.is_nil(server:exit_status(), "server died:\n" .. server:log())
  end)
end)

-- ------------------------------------------------------------ slow ones

describe("a subscriber that stops reading", function()
  local server, client

  setup(function()
    server = testing.start(app("channels_slow")) -- max_queue 256 KiB, history 8
    client = testing.client(server)
  end)

  after_each(close_opened)
  teardown(function() if server then server:stop() end end)

  it("is dropped while the others get everything, and memory stays bounded", function()
    local N, SIZE = 2048, 65536 -- 128 MiB in all
    local good = subscribe(client, "ch=big")
    -- the slow one asks and never reads again
    local slow = track(must(client:connect()))
    must(slow:send(testing.request_bytes("GET", "/sub?ch=big",
                                          { headers = { Accept = "text/event-stream" } })))
    assert.is_truthy(testing.wait_for(function() return stats(client).subscribers == 2 end, 5))

    local rss0 = rss(server.pid)
    local peak = rss0
    local pub = track(must(client:connect()))
    local pad = ("x"):rep(SIZE - 8)
    local dropped_at
    for i = 1, N do
      local res = must(pub:request("POST", ("/big?ch=big&i=%d&size=%d"):format(i, SIZE), { body = "" }),
                       nil, "publish " .. i)
      assert.are.equal(200, res.status)
      local id = must(res:json()).id
      local f = must(good:raw_until("\n\n", 10), nil, "good subscriber, event " .. i)
      if f ~= "id: " .. id .. "\ndata: " .. ("%08d"):format(i) .. pad .. "\n\n" then
        error(("good subscriber: event %d is wrong (%d bytes: %q...)"):format(i, #f, f:sub(1, 40)))
      end
      if i % 64 == 0 then
        peak = math.max(peak, rss(server.pid))
        if not dropped_at and stats(client).slow_drops > 0 then dropped_at = i end
      end
    end
    peak = math.max(peak, rss(server.pid))
    pub:close()

    local st = stats(client)
    assert.are.equal(1, st.slow_drops)
    assert.are.equal(1, st.subscribers)
    assert(st.delivered >= N, "delivered " .. st.delivered)
    assert.matches("slow subscriber [^\n]* dropped", server:log())
    assert.is_truthy(dropped_at, "not dropped while publishing")

    -- the slow client finds its connection closed after what it was sent
    local total, tail = 0, ""
    while true do
      local bytes, err = slow:read_raw(10)
      if not bytes then
        assert(err ~= "timeout", "the slow subscriber's connection is still open")
        break
      end
      total = total + #bytes
      tail = (tail .. bytes):sub(-4 * SIZE)
    end
    slow:close()
    assert(total < N * SIZE / 2, ("the slow subscriber received %d bytes"):format(total))
    local last_id
    for id in tail:gmatch("id: (%d+)\ndata: %d+x+\n\n") do last_id = id end

    local growth = peak - rss0
    io.stderr:write(("\n  [channels] slow subscriber dropped by event %d; %d MiB published, RSS %d -> peak %d MiB\n"):format(
      dropped_at, N * SIZE // 2 ^ 20, rss0 // 2 ^ 20, peak // 2 ^ 20))
    assert(growth < 64 * 2 ^ 20, ("RSS grew by %.1f MiB"):format(growth / 2 ^ 20))

    -- when it comes back, it gets what history still holds, and the gap
    if last_id then
      local s, info, replay = subscribe(client, "ch=big", { ["Last-Event-ID"] = last_id })
      assert.are.same({ 8, false }, { info.replayed, info.ok })
      assert.are.equal(8, #replay)
      s:close()
    end
    good:close()
  end)

  it("server is still running", function()
    assert.is_nil(server:exit_status(), "server died:\n" .. server:log())
  end)
end)

-- ------------------------------------------------------------- chat app

describe("the chat demo app", function()
  local server, client

  setup(function()
    server = testing.start(testing.root .. "/apps/chat")
    client = testing.client(server)
  end)

  after_each(close_opened)
  teardown(function() if server then server:stop() end end)

  local function post(body, headers)
    return must(client:post("/messages", body, { headers = headers }))
  end

  it("redirects / to its page", function()
    local res = must(client:get("/"))
    assert.are.equal(302, res.status)
    assert.are.equal("/index.html", res.headers["location"])
    local page = must(client:get("/index.html"))
    assert.are.equal(200, page.status)
    assert.matches("^text/html", page.headers["content-type"])
    assert.matches("EventSource", page.body)
    assert.matches("/messages", page.body)
    assert.is_nil(page.body:find("innerHTML", 1, true), "the page uses innerHTML")
  end)

  it("refuses bad messages with 400 and a JSON error", function()
    local cases = {
      { "invalid JSON", "{not json" },
      { "empty body", "" },
      { "not an object", "[1,2]" },
      { "a string", '"hi"' },
      { "null", "null" },
      { "no user", { text = "hi" } },
      { "no text", { user = "ann" } },
      { "empty user", { user = "", text = "hi" } },
      { "blank user", { user = "   ", text = "hi" } },
      { "empty text", { user = "ann", text = "" } },
      { "number user", { user = 7, text = "hi" } },
      { "table text", { user = "ann", text = { "hi" } } },
      { "boolean text", { user = "ann", text = true } },
      { "user of 65 characters", { user = ("u"):rep(65), text = "hi" } },
      { "text of 2001 characters", { user = "ann", text = ("t"):rep(2001) } },
      { "user of 65 two-byte characters", { user = ("é"):rep(65), text = "hi" } },
    }
    for _, c in ipairs(cases) do
      local body = c[2]
      local res = post(body, type(body) == "string" and { ["Content-Type"] = "application/json" } or nil)
      assert.are.same({ c[1], 400 }, { c[1], res.status })
      assert(res.headers["content-type"]:match("^application/json"), c[1])
      local err = res:json()
      assert.are.equal("string", type(err and err.error), c[1] .. ": " .. res.body)
    end
    assert.are.same({}, get_json(client, "/history"))
  end)

  it("accepts the longest messages (64-character user, 2000-character text)", function()
    local res = post { user = ("é"):rep(64), text = ("t"):rep(2000) }
    assert.are.equal(202, res.status, res.body)
    assert.matches("^%d+$", must(res:json()).id)
  end)

  it("publishes a message to every open /events stream, byte for byte", function()
    local a = track(must(client:sse("/events")))
    local b = track(must(client:sse("/events")))
    assert.are.equal(200, a.status)
    assert.are.equal("text/event-stream; charset=utf-8", a.headers["content-type"])
    for _, s in ipairs { a, b } do
      assert.are.equal("retry: 2000\n\n", must(s:raw_until("\n\n", 5)))
    end
    local res = post { user = "ann", text = 'line one\nline "two" ✓', extra = "dropped" }
    assert.are.equal(202, res.status)
    assert.matches("^application/json", res.headers["content-type"])
    local id = must(res:json()).id
    assert.matches("^%d+$", id)
    local want = "event: message\nid: " .. id .. '\ndata: {"text":"line one\\nline \\"two\\" ✓","user":"ann"}\n\n'
    for _, s in ipairs { a, b } do
      assert.are.equal(want, must(s:raw_until("\n\n", 5)))
    end
    a:close()
    b:close()
  end)

  it("replays missed messages to a reconnecting stream", function()
    local first = must(post { user = "bob", text = "one" }:json()).id
    local second = must(post { user = "bob", text = "two" }:json()).id
    local s = track(must(client:sse("/events", { headers = { ["Last-Event-ID"] = first } })))
    must(s:raw_until("\n\n", 5)) -- retry
    local ev = must(s:next_event(5))
    assert.are.same({ event = "message", id = second, data = '{"text":"two","user":"bob"}' }, ev)
    s:close()
  end)

  it("replays everything retained from id 0 (how the page starts on an empty history)", function()
    local all = get_json(client, "/history")
    assert(#all > 0)
    local s = track(must(client:sse("/events?lastEventId=0")))
    must(s:raw_until("\n\n", 5)) -- retry
    for _, m in ipairs(all) do
      local ev = must(s:next_event(5))
      assert.are.equal(m.id, ev.id)
      assert.are.same({ user = m.user, text = m.text }, json.decode(ev.data))
    end
    assert_quiet(s)
  end)

  it("serves the history after an id as JSON", function()
    local ids = {}
    for i = 1, 3 do
      ids[i] = must(post { user = "cy", text = "h" .. i }:json()).id
    end
    local later = get_json(client, "/history?since=" .. ids[1])
    assert.are.same({ { id = ids[2], user = "cy", text = "h2" }, { id = ids[3], user = "cy", text = "h3" } }, later)
    local all = get_json(client, "/history")
    assert.are.same({ id = ids[3], user = "cy", text = "h3" }, all[#all])
    assert(#all >= 3)
    assert.are.same({}, get_json(client, "/history?since=" .. ids[3]))
    local bad = must(client:get("/history?since=abc"))
    assert.are.equal(400, bad.status)
  end)

  it("server is still running", function()
    assert.is_nil(server:exit_status(), "server died:\n" .. server:log())
  end)
end)

-- ------------------------------------------------------ channel lifetime

-- Apps name channels from requests (rooms, users): a channel is freed once
-- no subscriber on any worker follows it and its history holds nothing;
-- one that still holds events stays, and replays them, until they expire.
describe("channels freed once nothing needs them", function()
  local server, client -- history 1000, no age limit
  local ttl_server, ttl_client -- history_ttl 2 s

  setup(function()
    server = testing.start(app("channels"), { args = { "--workers", "2" } })
    client = testing.client(server)
    ttl_server = testing.start(app("channels_ttl"), { args = { "--workers", "2" } })
    ttl_client = testing.client(ttl_server)
  end)

  after_each(close_opened)
  teardown(function()
    if server then server:stop() end
    if ttl_server then ttl_server:stop() end
  end)

  --- Waits until the hub counts n channels; returns the last count seen.
  local function channels_become(c, n, timeout)
    local last
    testing.wait_for(function()
      last = stats(c).channels
      return last == n
    end, timeout or 10, 0.05)
    return last
  end

  it("2,000 channels subscribed to and left: the count returns to its baseline", function()
    local base = stats(client).channels
    -- 19 streams following 100 fresh channels each, over both workers ...
    local streams = {}
    for s = 1, 19 do
      local names = {}
      for i = 1, 100 do names[i] = ("room-%d-%d"):format(s, i) end
      local stream, info = subscribe(client, "ch=" .. table.concat(names, ","))
      assert.are.same({ 0, true }, { info.replayed, info.ok })
      streams[s] = stream
    end
    -- ... and 100 one-channel streams opened and closed in turn
    for i = 1, 100 do
      local stream = subscribe(client, "ch=user-" .. i)
      stream:close()
    end
    assert.are.equal(base + 1900, stats(client).channels)
    for _, stream in ipairs(streams) do stream:close() end
    local now = channels_become(client, base)
    assert.are.equal(base, now, "channels left behind")
    local st = stats(client)
    assert.are.equal(0, st.retained)
  end)

  it("a channel that holds events outlives its subscribers and replays them", function()
    local base = stats(client).channels
    local s = subscribe(client, "ch=kept")
    local ids = {}
    for i = 1, 3 do ids[i] = publish(client, "kept", "k" .. i) end
    assert.are.same({ frame(ids[1], "k1"), frame(ids[2], "k2"), frame(ids[3], "k3") }, frames(s, 3))
    s:close()
    testing.sleep(0.3) -- the server notices the close
    assert.are.equal(base + 1, stats(client).channels)
    local s2, info, replay = subscribe(client, "ch=kept", { ["Last-Event-ID"] = ids[1] })
    assert.are.same({ 2, true }, { info.replayed, info.ok })
    assert.are.same({ frame(ids[2], "k2"), frame(ids[3], "k3") }, replay)
    s2:close()
    assert.are.equal(3, #history(client, "kept"))
  end)

  it("events in flight and retained keep channels until they expire", function()
    local base = stats(ttl_client).channels
    -- Each stream gets one live event through its worker's inbox, then
    -- leaves: its channel holds that event for 2 s more.
    for i = 1, 50 do
      local s = subscribe(ttl_client, "ch=brief-" .. i)
      local id = publish(ttl_client, "brief-" .. i, "b" .. i)
      assert.are.same({ frame(id, "b" .. i) }, frames(s, 1))
      s:close()
    end
    -- (the first ones may have expired already if the machine is slow)
    assert(stats(ttl_client).channels > base, "channels freed before their events expired")
    local now = channels_become(ttl_client, base, 10)
    assert.are.equal(base, now, "channels left behind after their events expired")
    assert.are.equal(0, stats(ttl_client).retained)
  end)

  it("a channel made again still reports the events its former self dropped", function()
    local e1 = publish(ttl_client, "again", "e1")
    local e2 = publish(ttl_client, "again", "e2")
    local base = stats(ttl_client).channels
    -- both expire: the channel is freed
    assert.are.equal(base - 1, channels_become(ttl_client, base - 1, 10))
    assert.are.same({}, history(ttl_client, "again"))
    local s, info, replay = subscribe(ttl_client, "ch=again", { ["Last-Event-ID"] = e1 })
    assert.are.same({ 0, false, {} }, { info.replayed, info.ok, replay }) -- e2 is lost
    s:close()
    s, info, replay = subscribe(ttl_client, "ch=again", { ["Last-Event-ID"] = e2 })
    assert.are.same({ 0, true, {} }, { info.replayed, info.ok, replay }) -- nothing after e2 was
    local e3 = publish(ttl_client, "again", "e3")
    assert.are.same({ frame(e3, "e3") }, frames(s, 1))
    s:close()
  end)

  it("servers are still running", function()
    assert.is_nil(server:exit_status(), "server died:\n" .. server:log())
    assert.is_nil(ttl_server:exit_status(), "server died:\n" .. ttl_server:log())
  end)
end)

describe("a delivery round large enough to linger", function()
  -- 300 subscribers make a round of 300 frames, over the 256 at which the
  -- next round is held back for a millisecond after the writes.
  local N = 300
  local server, client, crowd

  setup(function()
    server = testing.start(app("channels"))
    client = testing.client(server)
  end)

  teardown(function()
    if crowd then crowd:close() end
    if server then server:stop() end
  end)

  it("still delivers what was published during the linger, in order, with nothing published after", function()
    collectgarbage()
    crowd = must(testing.crowd(server, N, { path = "/sub?ch=linger", timeout = 30 }))
    must(crowd:wait(function(c)
      for _, m in ipairs(c.members) do
        if not m.body:find("\n\n", 1, true) then return false end
      end
      return true
    end, 30), nil, "subscribed comments")
    -- One event, then two more a loop turn apart: they land in the linger
    -- that the first round started, and only its timer can send them.
    local res = must(client:post("/burst?ch=linger&n=3&tag=t&pause=0.0001&per=1", ""))
    assert.are.equal(200, res.status)
    local function complete(m)
      local a = m.body:find("data: t-1\n\n", 1, true)
      local b = a and m.body:find("data: t-2\n\n", a, true)
      return b and m.body:find("data: t-3\n\n", b, true) ~= nil
    end
    local ok = crowd:wait(function(c)
      for _, m in ipairs(c.members) do
        if not complete(m) then return false end
      end
      return true
    end, 10)
    local missing = 0
    for _, m in ipairs(crowd.members) do
      if not complete(m) then missing = missing + 1 end
    end
    assert(ok, ("%d of %d subscribers lack an event or have them out of order"):format(missing, N))
  end)
end)
