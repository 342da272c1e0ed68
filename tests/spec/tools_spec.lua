-- The subcommands beside serving (`sluice check`, `sluice new`) and the
-- installed tree (`cmake --install`): what an app author meets first.
local testing = require "sluice.testing"

local BIN = os.getenv("SLUICE_BIN") or "build/sluice"
local APPS = testing.root .. "/apps"

--- A new app folder holding `source` as its app.lua.
---@param source string
---@return string dir
local function app_with(source)
  local dir = testing.tempdir()
  testing.write_file(dir .. "/app.lua", source)
  return dir
end

--- Runs a shell command line to completion (at most `timeout` seconds) and
--- returns its exit status and output, as testing.run does for sluice.
---@param line string
---@param opts? { env?: table<string, any>, timeout?: number }
---@return sluice.testing.RunResult
local function sh(line, opts)
  opts = opts or {}
  return testing.run({ "-c", line }, { bin = "sh", env = opts.env, timeout = opts.timeout })
end

describe("sluice check", function()
  it("lists an app's routes in the order it added them and exits 0", function()
    local r = testing.run { "check", APPS .. "/chat" }
    assert.are.equal(0, r.status, r.stderr)
    local routes, summary = r.stdout:match("^(.-)(ok: [^\n]*)\n$")
    assert.are.equal("GET     /\n"
                  .. "GET     /favicon.ico\n"
                  .. "GET     /events\n"
                  .. "POST    /messages\n"
                  .. "GET     /history\n", routes)
    assert.matches("apps/chat: 5 routes", summary, 1, true)
    assert.matches("history=1000", summary, 1, true)
    assert.matches("retry=2000", summary, 1, true)
    assert.are.equal("", r.stderr)
  end)

  it("pads every method to one column and counts one route in the singular", function()
    local dir = app_with [[
local app = require("sluice").app()
app:route("OPTIONS", "/x", function() return "" end)
return app
]]
    local r = testing.run { "check", dir }
    assert.are.equal(0, r.status, r.stderr)
    assert.matches("^OPTIONS /x\nok: [^\n]*: 1 route, default options\n$", r.stdout)
  end)

  it("neither listens nor connects to Redis: a taken PORT and a dead Redis do not matter", function()
    local socket = require "socket"
    local holder = assert(socket.bind("127.0.0.1", 0))
    local _, port = holder:getsockname()
    local r = testing.run({ "check", APPS .. "/clock" }, {
      env = { PORT = port, SLUICE_REDIS = "redis://127.0.0.1:1" }, timeout = 5,
    })
    holder:close()
    assert.are.equal(0, r.status, r.stderr)
    assert.matches("GET     /clock", r.stdout, 1, true)
  end)

  it("reports a syntax error as file:line and exits 1", function()
    local dir = app_with [[
local app = require("sluice").app()
app:get("/", function() return "hi" end
return app
]]
    local r = testing.run { "check", dir }
    assert.are.equal(1, r.status)
    assert.matches("app.lua:3: ')' expected", r.stderr, 1, true)
    assert.are.equal("", r.stdout)
  end)

  it("reports an error raised while app.lua runs as file:line, with a traceback", function()
    local dir = app_with [[
local sluice = require "sluice"
local app = sluice.app()
local function routes() error("no database configured") end
routes()
return app
]]
    local r = testing.run { "check", dir }
    assert.are.equal(1, r.status)
    assert.are.equal(dir .. "/app.lua:3: no database configured", r.stderr:match("^[^\n]*"))
    assert.matches("stack traceback:", r.stderr, 1, true)
    assert.matches("app.lua:4:", r.stderr, 1, true)
  end)

  it("checks the app's options as a worker does", function()
    local dir = app_with [[
local app = require("sluice").app { heartbeat = "often" }
return app
]]
    local r = testing.run { "check", dir }
    assert.are.equal(1, r.status)
    assert.matches("app.lua:1: sluice.app: option 'heartbeat' must be a number", r.stderr, 1, true)
  end)

  it("exits 1 for an app that returns no app, naming app.lua", function()
    local r = testing.run { "check", app_with "return 42\n" }
    assert.are.equal(1, r.status)
    assert.matches("app.lua must return the app", r.stderr, 1, true)
  end)

  it("exits 2 with its usage for a missing or nonexistent folder", function()
    local r = testing.run { "check" }
    assert.are.equal(2, r.status)
    assert.matches("usage: sluice check APP_DIR", r.stderr, 1, true)
    r = testing.run { "check", testing.root .. "/tests/apps/does-not-exist" }
    assert.are.equal(2, r.status)
    assert.matches("does-not-exist", r.stderr, 1, true)
    assert.matches("usage: sluice check APP_DIR", r.stderr, 1, true)
  end)

  it("exits 1 for a folder without app.lua", function()
    local r = testing.run { "check", testing.tempdir() }
    assert.are.equal(1, r.status)
    assert.matches("has no app.lua", r.stderr, 1, true)
  end)
end)

describe("sluice new", function()
  local FILES = { ".busted", "app.lua", "public/index.html", "spec/app_spec.lua" }

  it("quotes the paths it prints as a shell needs them", function()
    local parent = testing.tempdir() .. "/a b'c"
    assert(os.execute("mkdir " .. testing.shell_quote(parent)))
    local r = testing.run { "new", parent .. "/demo" }
    assert.are.equal(0, r.status, r.stderr)
    local quoted = "'" .. parent:gsub("'", "'\\''") .. "/demo'"
    assert.matches("cd " .. quoted .. " && busted", r.stdout, 1, true)
  end)

  it("makes an app from the templates and says how to run it", function()
    local dir = testing.tempdir() .. "/demo"
    local r = testing.run { "new", dir }
    assert.are.equal(0, r.status, r.stderr)
    for _, f in ipairs(FILES) do
      assert.matches("created " .. dir .. "/" .. f, r.stdout, 1, true)
      local text = assert(testing.read_file(dir .. "/" .. f), f .. " missing")
      assert.is_nil(text:find("{{", 1, true), f .. " still has a placeholder")
    end
    -- as a shell takes them: quoted
    assert.matches(BIN .. " '" .. dir .. "'", r.stdout, 1, true)
    assert.matches("cd '" .. dir .. "' && busted", r.stdout, 1, true)
    assert.matches("<title>demo</title>", testing.read_file(dir .. "/public/index.html"), 1, true)

    local check = testing.run { "check", dir }
    assert.are.equal(0, check.status, check.stderr)
    assert.matches("^GET     /\nPOST    /messages\nGET     /events\nok: ", check.stdout)
  end)

  it("refuses a folder that exists and leaves it alone", function()
    local dir = testing.tempdir()
    testing.write_file(dir .. "/app.lua", "-- mine\n")
    local r = testing.run { "new", dir }
    assert.are.equal(1, r.status)
    assert.matches("already exists", r.stderr, 1, true)
    assert.are.equal("-- mine\n", testing.read_file(dir .. "/app.lua"))
    assert.is_nil(testing.read_file(dir .. "/.busted"))
  end)

  it("refuses a name it could not write into the templates, and no name", function()
    local r = testing.run { "new", testing.tempdir() .. "/<b>" }
    assert.are.equal(2, r.status)
    assert.matches("cannot name an app", r.stderr, 1, true)
    r = testing.run { "new" }
    assert.are.equal(2, r.status)
    assert.matches("usage: sluice new NAME", r.stderr, 1, true)
  end)

  it("makes an app whose own spec passes under busted", function()
    local dir = testing.tempdir() .. "/scaffold"
    assert.are.equal(0, testing.run({ "new", dir }).status)
    local r = sh("cd " .. testing.shell_quote(dir) .. " && busted -o plainTerminal",
                 { env = { SLUICE_BIN = BIN }, timeout = 120 })
    assert.are.equal(0, r.status, r.stdout .. r.stderr)
    assert.matches("4 success", r.stdout, 1, true)
  end)
end)

describe("an installed sluice", function()
  local prefix, bin

  setup(function()
    prefix = testing.tempdir()
    bin = prefix .. "/bin/sluice"
    local build = BIN:match("^(.*)/[^/]+$") or "."
    local r = testing.run({ "--install", build, "--prefix", prefix }, { bin = "cmake", timeout = 60 })
    assert(r.status == 0, r.stdout .. r.stderr)
  end)

  it("holds the binary, the Lua library with its templates, and the apps", function()
    for _, f in ipairs { "bin/sluice", "share/sluice/lua/sluice/init.lua",
                         "share/sluice/lua/sluice/testing.lua",
                         "share/sluice/lua/sluice/templates/app/.busted",
                         "share/sluice/apps/clock/app.lua", "share/sluice/apps/chat/app.lua" } do
      assert.is_not_nil(testing.read_file(prefix .. "/" .. f), f .. " not installed")
    end
  end)

  it("serves an installed app with its own Lua library", function()
    local server = testing.start(prefix .. "/share/sluice/apps/clock",
                                 { bin = bin, env = { SLUICE_LUA_DIR = false } })
    local client = testing.client(server)
    local res = assert(client:get("/index.html"))
    assert.are.equal(200, res.status)
    local stream = assert(client:sse("/clock"))
    assert.are.equal("tick", assert(stream:next_event(3)).event)
    stream:close()
    assert.are.equal(0, server:stop())
  end)

  it("checks an app and makes one that uses the installed library and binary", function()
    local env = { SLUICE_LUA_DIR = false }
    local r = testing.run({ "check", prefix .. "/share/sluice/apps/chat" }, { bin = bin, env = env })
    assert.are.equal(0, r.status, r.stderr)
    assert.matches("POST    /messages", r.stdout, 1, true)

    local dir = testing.tempdir() .. "/fresh"
    r = testing.run({ "new", dir }, { bin = bin, env = env })
    assert.are.equal(0, r.status, r.stderr)
    local p = assert(io.popen("realpath " .. testing.shell_quote(prefix)))
    local real = p:read("l")
    p:close()
    assert.matches('"' .. real .. '/share/sluice/lua"', testing.read_file(dir .. "/.busted"), 1, true)
    assert.matches('"' .. real .. '/bin/sluice"', testing.read_file(dir .. "/spec/app_spec.lua"), 1, true)

    -- Its spec finds the installed sluice by itself: no SLUICE_BIN.
    r = sh("cd " .. testing.shell_quote(dir) .. " && busted -o plainTerminal",
           { env = { SLUICE_BIN = false, SLUICE_LUA_DIR = false }, timeout = 120 })
    assert.are.equal(0, r.status, r.stdout .. r.stderr)
  end)
end)
