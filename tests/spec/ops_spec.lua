-- What an operator reads: GET /_sluice/metrics (Prometheus text) and
-- /_sluice/health, who may read them (loopback, --admin-token), the access
-- log (text, JSON, off) and JSON log records. The app is tests/apps/ops.
local testing = require "sluice.testing"

local json = testing.json
local APP = testing.root .. "/tests/apps/ops"

--- Parses Prometheus text: { [name or name{labels}] = value }, checking
--- that every sample belongs to a metric announced with HELP and TYPE.
local function parse_metrics(text)
  local samples, typed = {}, {}
  for line in text:gmatch("[^\n]+") do
    local tname = line:match("^# TYPE (%S+) %a+$")
    if tname then
      typed[tname] = true
    elseif not line:find("^# HELP %S+ .+$") then
      local key, value = line:match("^([%w_]+%b{}) (%S+)$")
      if not key then key, value = line:match("^([%w_]+) (%S+)$") end
      assert(key, "not a sample line: " .. line)
      local base = key:match("^[%w_]+")
      local family = base:gsub("_bucket$", ""):gsub("_sum$", ""):gsub("_count$", "")
      assert(typed[base] or typed[family], "sample without TYPE: " .. line)
      samples[key] = assert(tonumber(value), line)
    end
  end
  return samples
end

local function metrics(srv, headers)
  local res = assert(testing.client(srv):get("/_sluice/metrics", { headers = headers }))
  assert.are.equal(200, res.status, res.body)
  assert.matches("^text/plain; version=0.0.4", res.headers["content-type"])
  return parse_metrics(res.body)
end

describe("/_sluice/metrics", function()
  local srv, upstream

  setup(function()
    srv = testing.start(APP)
    upstream = testing.start(APP)
  end)
  teardown(function()
    srv:stop()
    upstream:stop()
  end)

  it("counts requests, streams, events, bytes, errors, budget kills and upstream requests", function()
    local before = metrics(srv)
    local c = testing.client(srv)
    for _ = 1, 3 do assert.are.equal(200, c:get("/hello").status) end
    local stream = assert(c:sse("/events"))
    testing.wait_for(function() return metrics(srv).sluice_subscribers == 1 end, 5)
    assert.are.equal(200, c:post("/publish", "one").status)
    assert.is_truthy(stream:next_event(5))
    assert.are.equal(500, c:get("/boom").status)
    assert.are.equal(500, c:get("/spin").status)
    assert.are.equal(200, c:get("/fetch?url=" .. upstream:url("/hello")).status)
    local closed = testing.free_port()
    assert.are.equal(502, c:get("/fetch?url=http://127.0.0.1:" .. closed .. "/").status)

    local m = metrics(srv)
    assert.are.equal(1, m.sluice_workers)
    assert.are.equal(1, m.sluice_streams)
    assert.are.equal(1, m.sluice_subscribers)
    assert.is_true(m.sluice_connections >= 1)
    assert.are.equal(1, m.sluice_events_published_total - before.sluice_events_published_total)
    assert.are.equal(1, m.sluice_events_delivered_total - before.sluice_events_delivered_total)
    -- hello x3, boom, spin, 2 fetches, publish, and the metrics read before
    assert.is_true(m.sluice_requests_total - before.sluice_requests_total >= 9)
    assert.is_true(m.sluice_bytes_sent_total > before.sluice_bytes_sent_total)
    assert.are.equal(2, m.sluice_handler_errors_total - before.sluice_handler_errors_total)
    assert.are.equal(1, m.sluice_budget_kills_total - before.sluice_budget_kills_total)
    assert.are.equal(2, m.sluice_upstream_requests_total - before.sluice_upstream_requests_total)
    assert.are.equal(1, m.sluice_upstream_errors_total - before.sluice_upstream_errors_total)
    assert.are.equal(1, m.sluice_upstream_ttfb_seconds_count)
    assert.are.equal(1, m['sluice_upstream_ttfb_seconds_bucket{le="+Inf"}'])
    assert.is_true(m.sluice_upstream_ttfb_seconds_sum > 0 and m.sluice_upstream_ttfb_seconds_sum < 5)
    -- Buckets are cumulative.
    local prev = 0
    for _, le in ipairs { "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "+Inf" } do
      local v = m[('sluice_upstream_ttfb_seconds_bucket{le="%s"}'):format(le)]
      assert.is_true(v >= prev, le)
      prev = v
    end
    assert.are.equal(0, m['sluice_reloads_total{result="ok"}'])

    stream:close()
    assert.is_truthy(testing.wait_for(function()
      local now = metrics(srv)
      return now.sluice_streams == 0 and now.sluice_subscribers == 0
    end, 5))
  end)

  it("answers only loopback clients that came directly", function()
    local res = testing.client(srv):get("/_sluice/metrics", { headers = { ["X-Forwarded-For"] = "203.0.113.9" } })
    assert.are.equal(403, res.status)
    res = testing.client(srv):get("/_sluice/metrics", { headers = { Forwarded = "for=203.0.113.9" } })
    assert.are.equal(403, res.status)
  end)
end)

describe("/_sluice/health", function()
  it("tells anyone the node serves", function()
    local srv = testing.start(APP, { args = { "--workers", "2" } })
    local res = testing.client(srv):get("/_sluice/health", { headers = { ["X-Forwarded-For"] = "203.0.113.9" } })
    assert.are.equal(200, res.status)
    local h = res:json()
    assert.are.equal("ok", h.status)
    assert.are.equal(2, h.workers)
    assert.is_true(h.uptime >= 0)
    assert.is_nil(h.redis)
    srv:stop()
  end)
end)

describe("--admin-token", function()
  it("guards metrics and health with a bearer token", function()
    local srv = testing.start(APP, { args = { "--admin-token", "s3cret" } })
    local c = testing.client(srv)
    for _, path in ipairs { "/_sluice/metrics", "/_sluice/health" } do
      local res = c:get(path)
      assert.are.equal(401, res.status)
      assert.matches("^Bearer", res.headers["www-authenticate"])
      assert.are.equal(401, c:get(path, { headers = { Authorization = "Bearer wrong" } }).status)
      assert.are.equal(401, c:get(path, { headers = { Authorization = "Bearer s3cre" } }).status)
      res = c:get(path, { headers = { Authorization = "Bearer s3cret", ["X-Forwarded-For"] = "203.0.113.9" } })
      assert.are.equal(200, res.status)
      -- the scheme's name in any case
      assert.are.equal(200, c:get(path, { headers = { Authorization = "BEARER s3cret" } }).status)
    end
    srv:stop()
  end)
end)

describe("SLUICE_ADMIN_TOKEN", function()
  it("sets the token from the environment", function()
    local srv = testing.start(APP, { env = { SLUICE_ADMIN_TOKEN = "from-env" } })
    local c = testing.client(srv)
    assert.are.equal(401, c:get("/_sluice/metrics").status)
    assert.are.equal(200, c:get("/_sluice/metrics", { headers = { Authorization = "Bearer from-env" } }).status)
    srv:stop()
  end)
end)

describe("the access log", function()
  it("has a line per request and per stream", function()
    local srv = testing.start(APP)
    local c = testing.client(srv)
    assert.are.equal(200, c:get("/hello?x=1").status)
    assert.are.equal(404, c:get("/missing").status)
    local stream = assert(c:sse("/events"))
    testing.sleep(0.1)
    stream:close()
    local line
    testing.wait_for(function()
      line = srv:log():match("[^\n]* \"GET /events\" [^\n]*")
      return line
    end, 5)
    local log = srv:log()
    assert.matches(' access %[w1%] 127%.0%.0%.1 "GET /hello%?x=1" 200 %d+ [%d.]+ms\n', log)
    assert.matches(' access %[w1%] 127%.0%.0%.1 "GET /missing" 404 %d+ [%d.]+ms\n', log)
    assert.matches('"GET /events" 200 %d+ [%d.]+ms stream$', line)
    -- The stream's duration covers its lifetime.
    assert.is_true(tonumber(line:match(" ([%d.]+)ms stream$")) >= 100)
    srv:stop()
  end)

  it("writes JSON records with --log-format json, the access log included", function()
    local srv = testing.start(APP, { args = { "--log-format", "json" } })
    local c = testing.client(srv)
    assert.are.equal(200, c:get("/hello").status)
    assert.are.equal(500, c:get("/boom").status)
    srv:stop()
    local access, errors = 0, 0
    for line in srv:log():gmatch("[^\n]+") do
      local rec = json.decode(line) -- every line is one JSON object
      assert.is_string(rec.time)
      if rec.type == "access" then
        access = access + 1
        assert.are.equal("GET", rec.method)
        assert.are.equal("127.0.0.1", rec.remote)
        assert.is_number(rec.bytes)
        assert.is_number(rec.duration_ms)
        assert.is_false(rec.stream)
      elseif rec.level == "error" then
        errors = errors + 1
        assert.matches("boom on purpose", rec.msg)
      end
    end
    assert.are.equal(2, access)
    assert.are.equal(1, errors)
  end)

  it("names the client of a stream that ended with a reset", function()
    local srv = testing.start(APP)
    local conn = assert(testing.connect(srv))
    assert(conn:send(testing.request_bytes("GET", "/events", { headers = { Accept = "text/event-stream" } })))
    assert(conn:receive_until("\r\n\r\n", 5))
    conn.sock:setoption("linger", { on = true, timeout = 0 }) -- close with RST
    conn:close()
    local line
    assert.is_truthy(testing.wait_for(function()
      line = srv:log():match("[^\n]* \"GET /events\" [^\n]*")
      return line
    end, 5))
    assert.matches(" access %[w1%] 127%.0%.0%.1 ", line)
    srv:stop()
  end)

  it("keeps JSON records valid whatever bytes a client sent", function()
    local srv = testing.start(APP, { args = { "--log-format", "json" } })
    local conn = assert(testing.connect(srv))
    assert(conn:send("GET /hello?\255\254\128a=\226\130\172 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
    assert(conn:receive_until("\r\n\r\n", 5))
    conn:close()
    srv:stop()
    local targets = {}
    for line in srv:log():gmatch("[^\n]+") do
      local rec = json.decode(line)
      assert.is_table(rec, line)
      if rec.type == "access" then targets[#targets + 1] = rec.target end
    end
    -- invalid bytes as U+FFFD, valid UTF-8 (the euro sign) as it is
    assert.are.same({ "/hello?\239\191\189\239\191\189\239\191\189a=\226\130\172" }, targets)
  end)

  it("is silent with --access-log off", function()
    local srv = testing.start(APP, { args = { "--access-log", "off" } })
    assert.are.equal(200, testing.client(srv):get("/hello").status)
    srv:stop()
    assert.is_nil(srv:log():find(" access ", 1, true))
  end)

  it("refuses bad values", function()
    local res = testing.run { "--access-log", "maybe", APP }
    assert.are.equal(2, res.status)
    res = testing.run { "--log-format", "xml", APP }
    assert.are.equal(2, res.status)
    assert.matches("text or json", res.stderr)
  end)
end)
