-- Static files from an app's public/ folder: index, MIME types, ETag and
-- 304, HEAD, and paths that try to escape the folder.
local testing = require "sluice.testing"

local APP = testing.root .. "/tests/apps/static"

local function file(path)
  local f = assert(io.open(APP .. "/" .. path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

describe("static files", function()
  local server, client

  setup(function()
    server = testing.start(APP)
    client = testing.client(server)
  end)

  teardown(function() if server then server:stop() end end)

  it("serve index.html for /", function()
    local res = assert(client:get("/"))
    assert.are.equal(200, res.status)
    assert.matches("^text/html", res.headers["content-type"])
    assert.are.equal(file("public/index.html"), res.body)
    assert.are.equal(tostring(#res.body), res.headers["content-length"])
  end)

  it("serve index.html for a directory", function()
    local res = assert(client:get("/sub/"))
    assert.are.equal(200, res.status)
    assert.are.equal(file("public/sub/index.html"), res.body)
  end)

  it("serve files with their MIME types", function()
    local js = assert(client:get("/app.js"))
    assert.are.equal(200, js.status)
    assert.matches("^[a-z]+/javascript", js.headers["content-type"])
    assert.are.equal(file("public/app.js"), js.body)

    local css = assert(client:get("/style.css"))
    assert.are.equal(200, css.status)
    assert.matches("^text/css", css.headers["content-type"])
    assert.are.equal(file("public/style.css"), css.body)
  end)

  it("ignore the query string", function()
    local res = assert(client:get("/app.js?v=123"))
    assert.are.equal(200, res.status)
    assert.are.equal(file("public/app.js"), res.body)
  end)

  it("leave routes working next to them", function()
    local res = assert(client:get("/api/ping"))
    assert.are.equal("pong", res.body)
  end)

  it("answer a matching If-None-Match with 304 and no body", function()
    local first = assert(client:get("/app.js"))
    local etag = first.headers["etag"]
    assert.is_string(etag, "no ETag")
    local conn = assert(client:connect())
    local res = assert(conn:request("GET", "/app.js", { headers = { ["If-None-Match"] = etag } }))
    assert.are.equal(304, res.status)
    assert.are.equal("", res.body)
    assert.are.equal(etag, res.headers["etag"])
    -- no stray body bytes: the connection carries on with the next response
    local next_res = assert(conn:request("GET", "/style.css"))
    assert.are.equal(200, next_res.status)
    assert.are.equal(file("public/style.css"), next_res.body)
    conn:close()
  end)

  it("answer a stale If-None-Match with 200", function()
    local res = assert(client:get("/app.js", { headers = { ["If-None-Match"] = '"not-the-etag"' } }))
    assert.are.equal(200, res.status)
    assert.are.equal(file("public/app.js"), res.body)
  end)

  it("answer HEAD with the length and no body", function()
    local conn = assert(client:connect())
    local res = assert(conn:request("HEAD", "/index.html"))
    assert.are.equal(200, res.status)
    assert.are.equal(tostring(#file("public/index.html")), res.headers["content-length"])
    assert.are.equal("", res.body)
    local extra, err = conn:read_raw(0.3)
    assert.is_nil(extra, "HEAD response had body bytes")
    assert.are.equal("timeout", err)
    conn:close()
  end)

  it("answer a missing file with 404", function()
    local res = assert(client:get("/nope.txt"))
    assert.are.equal(404, res.status)
  end)

  it("refuse every path escaping public/", function()
    for _, path in ipairs {
      "/../app.lua",
      "/%2e%2e/app.lua",
      "/%2E%2E/app.lua",
      "/..%2fapp.lua",
      "/%2e%2e%2fapp.lua",
      "/sub/../../app.lua",
      "/sub/%2e%2e/%2e%2e/app.lua",
      "/..%5capp.lua",
      "/../secret.txt",
      "/%2e%2e/secret.txt",
      "/index.html%00.js",
      "/sub%00/index.html",
    } do
      local conn = assert(client:connect())
      assert(conn:send(("GET %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"):format(path)))
      local res, err = conn:receive_response()
      conn:close()
      assert(res, path .. ": " .. tostring(err))
      assert.is_true(res.status == 400 or res.status == 403 or res.status == 404,
        path .. " answered " .. res.status)
      assert.is_nil(res.body:find("SECRET", 1, true), path .. " served a file outside public/")
    end
    assert.is_nil(server:exit_status(), "server died:\n" .. server:log())
  end)
end)
