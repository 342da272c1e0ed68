-- sluice with the SSE clients people use, from npm (tests/node/):
--
--   * `eventsource` (the WHATWG EventSource for Node) reconnects by itself
--     after the server closes a stream, sends Last-Event-ID, and gets every
--     event once, in order: from a route that numbers its own events and
--     from a channel whose history fills the gaps;
--   * `eventsource-parser` reads, byte for byte, every shape of frame the
--     encoder writes (tests/apps/e2e/shapes.lua), however the bytes are cut.
--
-- The packages come from tests/node/package-lock.json (npm ci on first run).
local testing = require "sluice.testing"
local browser = require "browser"

local json = testing.json
local root = testing.root
local APP = root .. "/tests/apps/e2e"

-- Lines of `s` as the encoder splits them: on CRLF, CR or LF; k breaks
-- make k + 1 lines.
local function split_lines(s)
  local lines, start, i = {}, 1, 1
  while i <= #s do
    local c = s:sub(i, i)
    if c == "\r" or c == "\n" then
      lines[#lines + 1] = s:sub(start, i - 1)
      if c == "\r" and s:sub(i + 1, i + 1) == "\n" then i = i + 1 end
      start = i + 1
    end
    i = i + 1
  end
  lines[#lines + 1] = s:sub(start)
  return lines
end

local function field(name, value)
  return value == "" and (name .. ":\n") or (name .. ": " .. value .. "\n")
end

local function b64decode(s)
  local alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
  local map = {}
  for i = 1, #alphabet do map[alphabet:sub(i, i)] = i - 1 end
  local out, bits, n = {}, 0, 0
  for c in s:gmatch("[^=]") do
    bits = (bits << 6) | assert(map[c], "bad base64")
    n = n + 6
    if n >= 8 then
      n = n - 8
      out[#out + 1] = string.char((bits >> n) & 0xff)
    end
  end
  return table.concat(out)
end

local function ids_of(events)
  local t = {}
  for i, e in ipairs(events) do t[i] = e.id end
  return t
end

describe("npm SSE clients against sluice", function()
  local server

  setup(function()
    browser.ensure()
    server = testing.start(APP)
  end)

  teardown(function()
    if server then server:stop() end
  end)

  local function seen(route)
    local res = assert(testing.client(server):get("/seen/" .. route))
    assert.are.equal(200, res.status)
    return json.decode(res.body)
  end

  describe("eventsource", function()
    it("reconnects after each server-side close with Last-Event-ID and gets no gap", function()
      local out = browser.node("eventsource_client.mjs",
        { url = server:url("/count?per=3&total=12"), event = "count", count = 12, until_data = "event 12" })
      assert.is_false(out.timed_out, "timed out: " .. json.encode(out))
      local want, got = {}, {}
      for i = 1, 12 do want[i] = { id = tostring(i), data = "event " .. i } end
      for i, e in ipairs(out.events) do got[i] = { id = e.id, data = e.data } end
      assert.are.same(want, got)
      assert.are.equal(4, out.opens, "one connection per 3 events")
      -- The server saw no Last-Event-ID first, then the last id of each
      -- closed stream, exactly once each.
      assert.are.same({ "none", "3", "6", "9" }, seen("count"))
    end)

    it("resumes a channel through its history while the publisher keeps going", function()
      -- The publisher starts in the background; ?lastEventId=0 makes the
      -- first connection replay whatever it missed before it connected.
      -- It runs for 3 s: a client that starts slowly (Node under a loaded
      -- or sanitized run) still meets it live for several holds.
      local res = assert(testing.client(server):post("/feed/publish?n=60&every=0.05", ""))
      assert.are.equal(202, res.status)
      local out = browser.node("eventsource_client.mjs",
        { url = server:url("/feed?lastEventId=0&hold=0.25"), event = "feed", count = 60, until_data = "60" })
      assert.is_false(out.timed_out, "timed out: " .. json.encode(out))
      local first = math.tointeger(tonumber(out.events[1].id))
      for k, e in ipairs(out.events) do
        assert.are.equal(tostring(k), e.data, "event " .. k .. " of " .. json.encode(ids_of(out.events)))
        -- one id sequence, one publisher: ids go up by exactly one
        assert.are.equal(tostring(first + k - 1), e.id)
      end
      assert.is_true(out.opens >= 4, ("only %d connections: the server did not close them"):format(out.opens))
      local headers = seen("feed")
      assert.are.equal(out.opens, #headers)
      assert.are.equal("none", headers[1])
      local received = {}
      for _, e in ipairs(out.events) do received[e.id] = true end
      for i = 2, #headers do
        assert(received[headers[i]], ("reconnect %d sent Last-Event-ID %s, an id it never got"):format(i, tostring(headers[i])))
        if i > 2 then
          assert.is_true(tonumber(headers[i]) > tonumber(headers[i - 1]), "Last-Event-ID went back")
        end
      end
    end)
  end)

  describe("eventsource-parser", function()
    it("reads every frame shape the encoder writes, byte for byte, however the bytes are cut", function()
      local shapes = dofile(APP .. "/shapes.lua")
      local out = browser.node("sse_parse.mjs", { url = server:url("/shapes") })
      assert.are.equal(200, out.status)
      assert.are.equal("text/event-stream; charset=utf-8", out.content_type)

      -- What a WHATWG parser must report for the list, and the exact bytes.
      local events, comments, retries, bytes = {}, {}, {}, {}
      local json_data -- the encoding of the one table `data`, as parsed
      for _, e in ipairs(out.parses.whole.events) do
        if e.event == nil then
          local ok, v = pcall(json.decode, e.data)
          if ok and type(v) == "table" and v.text == "table data is JSON" then json_data = e.data end
        end
      end
      assert(json_data, "the JSON event was not parsed")
      for _, item in ipairs(shapes) do
        if item.comment then
          local frame = {}
          for _, line in ipairs(split_lines(item.comment)) do
            comments[#comments + 1] = line
            frame[#frame + 1] = line == "" and ":\n" or (": " .. line .. "\n")
          end
          bytes[#bytes + 1] = table.concat(frame) .. "\n"
        else
          local ev = type(item.send) == "string" and { data = item.send } or item.send
          local data = ev.data
          if type(data) == "table" then
            assert.are.same(data, json.decode(json_data))
            data = json_data
          end
          local frame = {}
          if ev.event then frame[#frame + 1] = field("event", ev.event) end
          if ev.id then frame[#frame + 1] = field("id", ev.id) end
          if ev.retry then
            frame[#frame + 1] = field("retry", tostring(ev.retry))
            retries[#retries + 1] = ev.retry
          end
          if data then
            local lines = split_lines(data)
            for _, line in ipairs(lines) do frame[#frame + 1] = field("data", line) end
            events[#events + 1] = { event = ev.event, id = ev.id, data = table.concat(lines, "\n") }
          end
          bytes[#bytes + 1] = table.concat(frame) .. "\n"
        end
      end

      local raw = b64decode(out.raw)
      if raw ~= table.concat(bytes) then
        -- Name the first frame that differs rather than dumping 60 KiB.
        local pos = 1
        for i, frame in ipairs(bytes) do
          local got = raw:sub(pos, pos + #frame - 1)
          assert.are.equal(frame, got, ("frame %d (%s) differs"):format(i, json.encode(shapes[i])))
          pos = pos + #frame
        end
        assert.are.equal(#table.concat(bytes), #raw, "trailing bytes")
      end

      for _, way in ipairs { "network", "whole", "bytes", "random" } do
        local p = out.parses[way]
        assert.are.same({}, p.errors, way .. ": parse errors")
        assert.are.equal(#events, #p.events, way .. ": event count")
        for i, want in ipairs(events) do
          assert.are.same(want, p.events[i], ("%s: event %d"):format(way, i))
        end
        assert.are.same(comments, p.comments, way .. ": comments")
        assert.are.same(retries, p.retries, way .. ": retries")
      end
    end)
  end)
end)
