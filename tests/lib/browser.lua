-- Real clients for the end-to-end specs: a headless Chromium driven through
-- tests/node/browser.mjs (playwright-core and Debian's /usr/bin/chromium),
-- and the Node scripts of tests/node/ that use npm packages.
--
--     local browser = require "browser"
--     browser.ensure()                          -- chromium and tests/node's npm packages
--     local b = browser.start()                 -- one Chromium, until b:stop()
--     local page = b:open(server:url("/"), { context = "alice" })
--     page:wait("() => document.querySelector('#state').dataset.state === 'live'")
--     page:click("#send")
--     local errs = b:errors()                   -- console errors of every page, then forgets them
--     b:stop()
--
--     local out = browser.node("eventsource_client.mjs", { url = ... })  -- one JSON line back
--
-- Every call that waits is bounded: page:wait takes a timeout in seconds
-- (default 10), every command answers within that plus a margin, and a
-- driver that does not answer is an error, never a hang.
local testing = require "sluice.testing"

local json = testing.json
local root = testing.root

local browser = {}

browser.NODE_DIR = root .. "/tests/node"
browser.CHROMIUM = os.getenv("SLUICE_CHROMIUM") or "/usr/bin/chromium"

local shell_quote, read_file = testing.shell_quote, testing.read_file

local function exists(path)
  local f = io.open(path)
  if f then f:close() end
  return f ~= nil
end

local function run(cmd)
  local p = assert(io.popen(cmd .. " 2>&1"))
  local out = p:read("a")
  local ok = p:close()
  return ok, out
end

-- ---------------------------------------------------------------- set-up

--- True when every package pinned in tests/node/package.json is installed
--- at its pinned version.
local function packages_installed()
  local pkg = json.decode(assert(read_file(browser.NODE_DIR .. "/package.json")))
  for name, version in pairs(pkg.dependencies or {}) do
    local installed = read_file(("%s/node_modules/%s/package.json"):format(browser.NODE_DIR, name))
    local meta = installed and json.decode(installed)
    if type(meta) ~= "table" or meta.version ~= version then return false end
  end
  return true
end

--- Installs what the end-to-end specs need and the machine lacks: Debian's
--- chromium (through scripts/deps.sh, as `make deps-e2e` does) and the npm
--- packages of tests/node (npm ci from its package-lock.json, under a lock
--- so specs running side by side do not install over each other). Raises
--- with the installer's output when that fails.
function browser.ensure()
  if not exists(browser.CHROMIUM) then
    local ok, out = run(("%s/scripts/deps.sh chromium"):format(shell_quote(root)))
    assert(ok and exists(browser.CHROMIUM), "chromium is missing and could not be installed:\n" .. out)
  end
  if packages_installed() then return end
  -- Checked again under the lock: another spec may have installed them
  -- while this one waited for it.
  local check = [[node -e 'const p = require("./package.json"); for (const [n, v] of Object.entries(p.dependencies)) if (require("./node_modules/" + n + "/package.json").version !== v) process.exit(1)' 2>/dev/null]]
  local cmd = ("cd %s && flock /tmp/sluice-tests-npm.lock sh -c %s"):format(
    shell_quote(browser.NODE_DIR),
    shell_quote(check .. " || timeout 600 npm ci --no-audit --no-fund --loglevel=error"))
  local ok, out = run(cmd)
  assert(ok and packages_installed(), "npm ci in tests/node failed:\n" .. out)
end

-- ------------------------------------------------------------ node scripts

--- Runs `node tests/node/<script> '<json of args>'` (at most `timeout`
--- seconds, default 60) and returns the JSON value of the last line it
--- printed; raises with its whole output when there is none.
---@param script string
---@param args table
---@param timeout? number
---@return table
function browser.node(script, args, timeout)
  local cmd = ("timeout -k 2 %d node %s %s"):format(timeout or 60, shell_quote(browser.NODE_DIR .. "/" .. script),
                                                    shell_quote(json.encode(args)))
  local _, out = run(cmd)
  local line = out:match("([^\n]*)\n?$")
  local result = line and json.decode(line)
  assert(type(result) == "table", script .. " printed no result:\n" .. out)
  return result
end

-- ------------------------------------------------------------------ driver

---@class Browser
---@field port integer
---@field pid integer
local Browser = {}
Browser.__index = Browser

---@class Page
---@field id integer
---@field b Browser
local Page = {}
Page.__index = Page

--- Starts tests/node/browser.mjs: one headless Chromium, its profile in a
--- temporary directory removed when the test process exits.
---@return Browser
function browser.start()
  local tmp = testing.tempdir()
  local err_path = tmp .. "/driver.log"
  local argv = ("exec env TMPDIR=%s node %s --exit-with-parent 2>%s"):format(
    shell_quote(tmp), shell_quote(browser.NODE_DIR .. "/browser.mjs"), shell_quote(err_path))
  local pipe = assert(io.popen(argv, "r"))
  local line = pipe:read("l")
  local port = line and tonumber(line:match('"port"%s*:%s*(%d+)'))
  local pid = line and tonumber(line:match('"pid"%s*:%s*(%d+)'))
  if not port or not pid then
    pipe:close()
    error(("tests/node/browser.mjs did not start: %s\n%s"):format(tostring(line), read_file(err_path) or ""), 2)
  end
  return setmetatable({ port = math.tointeger(port), pid = math.tointeger(pid), pipe = pipe,
                        err_path = err_path, tmp = tmp }, Browser)
end

--- What the driver wrote on stderr so far.
function Browser:stderr() return read_file(self.err_path) or "" end

--- Sends one command; returns its value, raises with the driver's error.
---@param cmd table
---@param timeout? number seconds to wait for the answer (default 30)
function Browser:call(cmd, timeout)
  local res, err = testing.client(self.port):post("/", cmd, { timeout = timeout or 30 })
  if not res then error(("browser driver: %s did not answer (%s)\n%s"):format(cmd.op, tostring(err), self:stderr()), 2) end
  local out = json.decode(res.body)
  if type(out) ~= "table" then error("browser driver: bad answer " .. tostring(res.body), 2) end
  if not out.ok then error(("browser: %s failed: %s"):format(cmd.op, tostring(out.error)), 2) end
  return out.value
end

--- Opens `url` in a new page of browser context `opts.context` (default
--- "default"); `opts.width`/`opts.height` size its viewport.
---@param url string
---@param opts? { context?: string, width?: integer, height?: integer, color_scheme?: string }
---@return Page
function Browser:open(url, opts)
  opts = opts or {}
  local id = self:call({ op = "open", url = url, context = opts.context, width = opts.width, height = opts.height,
                         color_scheme = opts.color_scheme }, 40)
  return setmetatable({ id = id, b = self }, Page)
end

--- Console errors and uncaught exceptions of every page since the last call.
---@return table[]
function Browser:errors() return self:call { op = "errors" } end

--- Date.now() in the driver (the same clock as the mock's timestamps).
function Browser:now() return self:call { op = "now" } end

function Browser:close_context(name) return self:call { op = "close_context", context = name } end

--- Closes every page and context.
function Browser:close_all() return self:call { op = "close_all" } end

--- Closes the browser and the driver (SIGTERM, then SIGKILL). Safe to call twice.
function Browser:stop()
  if not self.pipe then return end
  pcall(self.call, self, { op = "quit" }, 5)
  local function gone()
    local stat = read_file("/proc/" .. self.pid .. "/stat")
    return not stat or stat:match("^%d+ %b() (%a)") == "Z"
  end
  if not testing.wait_for(gone, 10, 0.05) then
    os.execute(("kill -TERM %d 2>/dev/null"):format(self.pid))
    if not testing.wait_for(gone, 5, 0.05) then os.execute(("kill -KILL %d 2>/dev/null"):format(self.pid)) end
  end
  self.pipe:close()
  self.pipe = nil
end

-- ------------------------------------------------------------------- pages

--- The value of the JavaScript function `fn` (source text) called with `arg`.
function Page:eval(fn, arg) return self.b:call { op = "eval", page = self.id, fn = fn, arg = arg } end

--- Polls `fn(arg)` in the page until it returns a truthy value, which is
--- returned; raises after `timeout` seconds (default 10) with `what` and
--- the page's state text, so a failure says what the page showed.
---@param fn string
---@param arg any
---@param timeout? number
---@param what? string
function Page:wait(fn, arg, timeout, what)
  timeout = timeout or 10
  local ok, value = pcall(self.b.call, self.b, { op = "wait", page = self.id, fn = fn, arg = arg, timeout = timeout },
                          timeout + 20)
  if ok then return value end
  local okb, body = pcall(self.eval, self, "() => document.body.innerText")
  error(("%s: %s\n--- the page shows ---\n%s"):format(what or "page:wait", tostring(value),
                                                        okb and body or "(unreadable)"), 2)
end

--- Types `value` into the element `selector` (replacing its content).
function Page:fill(selector, value) return self.b:call { op = "fill", page = self.id, selector = selector, value = value } end

--- Presses `key` ("Enter") in the element `selector`; returns Date.now() before it.
function Page:press(selector, key) return self.b:call { op = "press", page = self.id, selector = selector, key = key } end

--- Clicks the element `selector` once it is visible; returns Date.now() just before the click.
function Page:click(selector) return self.b:call { op = "click", page = self.id, selector = selector } end

function Page:viewport(width, height) return self.b:call { op = "viewport", page = self.id, width = width, height = height } end

--- Saves a PNG of the viewport (or the whole page) at `path`.
function Page:screenshot(path, full_page)
  return self.b:call({ op = "screenshot", page = self.id, path = path, full_page = full_page }, 30)
end

--- The first request of the page to a path starting with `prefix`, sent
--- at or after `opts.after` (ms since the epoch), that failed
--- (`opts.failed`) or was answered; raises after `opts.timeout` seconds.
---@param prefix string
---@param opts? { after?: integer, failed?: boolean, timeout?: number }
function Page:wait_request(prefix, opts)
  opts = opts or {}
  return self.b:call({ op = "wait_request", page = self.id, prefix = prefix, after = opts.after,
                       failed = opts.failed, timeout = opts.timeout }, (opts.timeout or 10) + 20)
end

--- { console, pageerrors, requests, sse, navigations }: see tests/node/browser.mjs.
function Page:log() return self.b:call { op = "log", page = self.id } end

function Page:close() return self.b:call { op = "close", page = self.id } end

return browser
