-- The cors app option: preflight OPTIONS and Access-Control-Allow-* headers.
local testing = require "sluice.testing"

local function app(name) return testing.root .. "/tests/apps/" .. name end

local function preflight(client, origin, method, extra)
  local headers = { Origin = origin, ["Access-Control-Request-Method"] = method }
  for k, v in pairs(extra or {}) do headers[k] = v end
  return assert(client:request("OPTIONS", "/data", { headers = headers }))
end

describe("cors with one origin", function()
  local server, client
  local ORIGIN = "https://example.com"

  setup(function()
    server = testing.start(app("cors"))
    client = testing.client(server)
  end)

  teardown(function() if server then server:stop() end end)

  it("answers a preflight with 204 and the allowed origin and methods", function()
    local res = preflight(client, ORIGIN, "POST")
    assert.are.equal(204, res.status)
    assert.are.equal("", res.body)
    assert.are.equal(ORIGIN, res.headers["access-control-allow-origin"])
    local methods = res.headers["access-control-allow-methods"]
    assert.is_string(methods, "no Access-Control-Allow-Methods")
    assert.is_truthy(methods:upper():find("POST", 1, true), "allow-methods: " .. methods)
    assert.is_nil(res.headers["access-control-allow-credentials"])
  end)

  it("allows the request headers a preflight asks for", function()
    local res = preflight(client, ORIGIN, "POST", { ["Access-Control-Request-Headers"] = "content-type" })
    assert.are.equal(204, res.status)
    local allowed = res.headers["access-control-allow-headers"] or ""
    assert.is_truthy(allowed:lower():find("content-type", 1, true), "allow-headers: " .. allowed)
  end)

  it("adds the allowed origin to a normal request from it", function()
    local res = assert(client:get("/data", { headers = { Origin = ORIGIN } }))
    assert.are.equal(200, res.status)
    assert.are.equal("data", res.body)
    assert.are.equal(ORIGIN, res.headers["access-control-allow-origin"])
  end)

  it("adds it to an event stream", function()
    local stream = assert(client:sse("/events", { headers = { Origin = ORIGIN } }))
    assert.are.equal(200, stream.status)
    assert.are.equal(ORIGIN, stream.headers["access-control-allow-origin"])
    assert.are.equal("hi", assert(stream:next_event(3)).data)
    stream:close()
  end)

  it("gives another origin no allow-origin header", function()
    local res = assert(client:get("/data", { headers = { Origin = "https://evil.test" } }))
    assert.is_nil(res.headers["access-control-allow-origin"])
    local pre = preflight(client, "https://evil.test", "POST")
    assert.is_nil(pre.headers["access-control-allow-origin"])
  end)

  it("leaves requests without Origin as they were", function()
    local res = assert(client:get("/data"))
    assert.are.equal(200, res.status)
    assert.are.equal("data", res.body)
  end)
end)

describe("cors with an origin list and credentials", function()
  local server, client

  setup(function()
    server = testing.start(app("cors_creds"))
    client = testing.client(server)
  end)

  teardown(function() if server then server:stop() end end)

  it("allows each listed origin with credentials", function()
    for _, origin in ipairs { "https://a.test", "https://b.test" } do
      local res = assert(client:get("/data", { headers = { Origin = origin } }))
      assert.are.equal(200, res.status)
      assert.are.equal(origin, res.headers["access-control-allow-origin"])
      assert.are.equal("true", res.headers["access-control-allow-credentials"])
    end
  end)

  it("answers a preflight with credentials allowed", function()
    local res = preflight(client, "https://a.test", "GET")
    assert.are.equal(204, res.status)
    assert.are.equal("https://a.test", res.headers["access-control-allow-origin"])
    assert.are.equal("true", res.headers["access-control-allow-credentials"])
  end)

  it("never answers a credentialed request with a wildcard or another origin", function()
    local res = assert(client:get("/data", { headers = { Origin = "https://c.test" } }))
    local allow = res.headers["access-control-allow-origin"]
    assert.is_nil(allow, "allow-origin for an unlisted origin: " .. tostring(allow))
  end)
end)
