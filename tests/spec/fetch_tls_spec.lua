-- sluice.fetch over https: certificate verification on by default, a CA
-- bundle of the app's own, and HTTPS_PROXY / NO_PROXY from the environment.
-- The upstream is `openssl s_server` with a certificate made for the test.
local testing = require "sluice.testing"
local upstream = require "upstream"

local APP = testing.root .. "/tests/apps/fetch_tls"

--- Makes a self-signed certificate for 127.0.0.1 in dir; returns cert, key.
local function make_cert(dir)
  local cert, key = dir .. "/cert.pem", dir .. "/key.pem"
  local ok = os.execute(("openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=127.0.0.1 "
    .. "-addext subjectAltName=IP:127.0.0.1 -keyout %s -out %s >/dev/null 2>&1"):format(key, cert))
  assert(ok, "openssl could not make a certificate")
  return cert, key
end

describe("fetch over https", function()
  local dir, cert, tls_port, proxy

  setup(function()
    dir = testing.tempdir()
    cert, key = make_cert(dir)
    tls_port = testing.free_port()
    -- -www answers every request with a small HTTP page about the session.
    os.execute(("openssl s_server -quiet -accept 127.0.0.1:%d -cert %s -key %s -www "
      .. ">/dev/null 2>&1 & echo $! > %s/tls.pid"):format(tls_port, cert, key, dir))
    assert(testing.wait_for(function()
      local s = require("socket").connect("127.0.0.1", tls_port)
      if s then s:close() return true end
    end, 5), "openssl s_server did not start")
    proxy = upstream.proxy()
  end)

  teardown(function()
    if proxy then proxy:stop() end
    local pid = testing.read_file(dir .. "/tls.pid")
    if pid and pid:match("%d+") then os.execute("kill " .. pid:match("%d+") .. " 2>/dev/null") end
    testing.remove_tempdir(dir)
  end)

  local function get(server, ca)
    local url = ("https://127.0.0.1:%d/"):format(tls_port)
    local q = "/get?url=" .. upstream.urlencode(url) .. (ca and ("&ca=" .. upstream.urlencode(ca)) or "")
    local res = assert(testing.client(server):get(q, { timeout = 10 }))
    assert.are.equal(200, res.status)
    return testing.json.decode(res.body)
  end

  it("refuses a certificate it cannot verify, naming TLS as the cause", function()
    local server = testing.start(APP, { env = { HTTPS_PROXY = false, https_proxy = false } })
    finally(function() server:stop() end)
    local out = get(server)
    assert.is_nil(out.status)
    assert.matches("^TLS: ", out.err)
  end)

  it("verifies against a CA bundle given with ca_file", function()
    local server = testing.start(APP, { env = { HTTPS_PROXY = false, https_proxy = false } })
    finally(function() server:stop() end)
    local out = get(server, cert)
    assert.are.equal(200, out.status)
    assert.matches("s_server", out.body)
  end)

  it("goes through HTTPS_PROXY with a CONNECT tunnel", function()
    local server = testing.start(APP, { env = {
      HTTPS_PROXY = ("http://127.0.0.1:%d"):format(proxy.port), NO_PROXY = false, no_proxy = false } })
    finally(function() server:stop() end)
    local before = #proxy:log()
    local out = get(server, cert)
    assert.are.equal(200, out.status, out.err)
    local log = proxy:log()
    assert.are.equal(before + 1, #log)
    assert.are.same({ method = "CONNECT", target = ("127.0.0.1:%d"):format(tls_port) }, log[#log])
  end)

  it("leaves NO_PROXY hosts out of the proxy", function()
    local server = testing.start(APP, { env = {
      HTTPS_PROXY = ("http://127.0.0.1:%d"):format(proxy.port), NO_PROXY = "127.0.0.1" } })
    finally(function() server:stop() end)
    local before = #proxy:log()
    local out = get(server, cert)
    assert.are.equal(200, out.status)
    assert.are.equal(before, #proxy:log())
  end)
end)
