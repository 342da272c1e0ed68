#!/usr/bin/env lua5.4
--- Regenerates docs/hardening.md from a test run: every attack and fault the
--- integration specs try, the answer expected, and what this run got (with
--- the figures the tests printed: memory, CPU, times).
---
---     lua5.4 scripts/hardening-report.lua [options]
---
---   --bin PATH     the server binary (default $SLUICE_BIN, else build/sluice);
---                  sluice-loadgen must be next to it (cmake builds both)
---   --out PATH     where to write the report (default docs/hardening.md)
---   --e2e          also run the kill-and-restart test in Chromium
---                  (tests/spec/e2e_browser_spec.lua; needs make deps-e2e)
---   --only SPECS   comma-separated spec names (e.g. hardening,http) for a
---                  quick partial run; the report then says so
---
--- Runs from the repository root (or anywhere: paths are resolved from this
--- script). Under `make test-asan`'s environment (SLUICE_SANITIZED=1, an
--- ASan build's binary in --bin) it reports the sanitized run. Exits 0 when
--- every selected test passed, 1 otherwise; the report is written either way.
---
--- Needs Lua 5.4, busted, LuaSocket and dkjson (make deps installs them; the
--- script uses lua/sluice/testing.lua's helpers), Node for the fetch specs'
--- mock upstream.

-- ------------------------------------------------------------------ setup

local script_dir = (arg[0]:match("^(.*)/[^/]*$") or ".")
local function run_capture(cmd)
  local p = assert(io.popen(cmd))
  local out = p:read("a")
  p:close()
  return out
end
local ROOT = run_capture("cd " .. script_dir .. "/.. && pwd"):gsub("%s+$", "")

package.path = ROOT .. "/lua/?.lua;" .. package.path
local testing = require "sluice.testing"
local json = testing.json
local quote, read_file = testing.shell_quote, testing.read_file

local opts = { bin = os.getenv("SLUICE_BIN") or "build/sluice", out = "docs/hardening.md" }
do
  local i = 1
  while i <= #arg do
    local a = arg[i]
    if a == "--bin" then opts.bin = arg[i + 1]; i = i + 1
    elseif a == "--out" then opts.out = arg[i + 1]; i = i + 1
    elseif a == "--e2e" then opts.e2e = true
    elseif a == "--only" then
      opts.only = {}
      for s in arg[i + 1]:gmatch("[^,]+") do opts.only[s:gsub("_spec$", "")] = true end
      i = i + 1
    elseif a == "-h" or a == "--help" then
      print("usage: lua5.4 scripts/hardening-report.lua [--bin PATH] [--out PATH] [--e2e] [--only SPECS]")
      os.exit(0)
    else
      io.stderr:write("hardening-report: unknown argument " .. a .. "\n")
      os.exit(2)
    end
    i = i + 1
  end
end

local function abs(path)
  if path:sub(1, 1) == "/" then return path end
  return ROOT .. "/" .. path
end
opts.bin = abs(opts.bin)
opts.out = abs(opts.out)

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() end
  return f ~= nil
end

if not exists(opts.bin) then
  io.stderr:write(("hardening-report: no server binary at %s: build first (make build)\n"):format(opts.bin))
  os.exit(2)
end
local loadgen = (opts.bin:match("^(.*)/[^/]*$") or ".") .. "/sluice-loadgen"
if not exists(loadgen) then
  io.stderr:write(("hardening-report: no %s: build it (it is part of the default build)\n"):format(loadgen))
  os.exit(2)
end

local SANITIZED = os.getenv("SLUICE_SANITIZED") == "1"
local BUSTED = run_capture("command -v busted"):gsub("%s+$", "")
if BUSTED == "" then
  io.stderr:write("hardening-report: busted not found (make deps installs lua-busted)\n")
  os.exit(2)
end

-- ---------------------------------------------------------- what to run

-- Sections of the report, in order.
local SECTIONS = {
  "Hostile clients: connections and request heads",
  "Hostile clients: smuggling shapes and invalid requests",
  "Hostile clients: static paths",
  "Slow consumers and floods",
  "Faults in app code",
  "Faults in upstreams (sluice.fetch)",
  "Process faults",
}

-- The specs to run. `all = true` reports every test of the file, taking
-- the describe blocks as the attack and the `it` as the expected answer
-- (the spec is written that way); `section` then picks the section by the
-- attack's first words. Otherwise `tests` lists the tests to run and
-- report, by full name, with the attack and expected answer spelled out;
-- `figure` is a Lua pattern for the lines the test prints on stderr.
local SPECS = {
  {
    spec = "hardening", all = true,
    section = function(attack)
      if attack:find("^300 connections") then return SECTIONS[1] end
      if attack:find("^request smuggling") or attack:find("^invalid request") then return SECTIONS[2] end
      if attack:find("^encoded traversal") then return SECTIONS[3] end
      if attack:find("^descriptor exhaustion") then return SECTIONS[1] end
      if attack:find("^a flood of publishes") then return SECTIONS[4] end
      return SECTIONS[7]
    end,
  },
  {
    spec = "http",
    tests = {
      { "HTTP timeouts answer headers not complete in time with 408 and close", SECTIONS[1],
        "slowloris: a request head left incomplete", "408 at the header timeout, connection closed" },
      { "HTTP timeouts answer headers trickling in byte by byte with 408 too", SECTIONS[1],
        "slowloris: a head sent one byte at a time", "408 at the header timeout (not reset by each byte)" },
      { "HTTP timeouts give a second request on a keep-alive connection the header timeout too", SECTIONS[1],
        "slowloris on the second request of a keep-alive connection", "408 at the header timeout" },
      { "HTTP timeouts close an idle keep-alive connection", SECTIONS[1],
        "a keep-alive connection left idle", "closed at the idle timeout" },
      { "HTTP timeouts leave a quiet event stream open", SECTIONS[1],
        "(control) a quiet event stream past both timeouts", "left open" },
      { "HTTP limits answer headers over 16 KiB with 431", SECTIONS[1],
        "a 17 KiB header", "431" },
      { "HTTP limits answer more than 100 header fields with 431", SECTIONS[1],
        "150 header fields", "431" },
      { "HTTP limits answer a Content-Length body over max_body with 413", SECTIONS[1],
        "a Content-Length body over max_body", "413" },
      { "HTTP limits let a client send its whole oversized body and still read the 413", SECTIONS[1],
        "a 3 MiB body over max_body, sent whole", "413 read by the client (lingering close, no reset)" },
      { "HTTP limits answer an Expect: 100-continue body over max_body with 413", SECTIONS[1],
        "Expect: 100-continue with a Content-Length over max_body", "413 instead of 100" },
      { "HTTP limits answer a chunked body over max_body with 413", SECTIONS[1],
        "a chunked body growing over max_body", "413" },
      { "HTTP connection cap answers the connection over the cap with 503, and serves again once one closes",
        SECTIONS[1], "connections over --max-conns", "503 (logged once a second at most); served again once one closes" },
      { "HTTP connections answer a malformed request with 400 and close", SECTIONS[2],
        "not HTTP; a header line without a colon; Content-Length with Transfer-Encoding", "400 and close" },
      { "HTTP handler failures answer an error with 500, log it, and keep serving", SECTIONS[5],
        "an error raised in a handler", "500 (no traceback in the body), logged, server carries on" },
      { "HTTP handler failures stop a handler that never yields after its CPU budget with 500, and keep serving",
        SECTIONS[5], "a handler in an endless loop", "stopped at the CPU budget: 500, server carries on" },
    },
  },
  {
    spec = "static",
    tests = {
      { "static files refuse every path escaping public/", SECTIONS[3],
        "../, %2e%2e, %2f, %5c, mixed, sub/../../, NUL bytes (12 paths)", "400, 403 or 404; never a file outside public/" },
    },
  },
  {
    spec = "channels",
    tests = {
      { "a subscriber that stops reading is dropped while the others get everything, and memory stays bounded",
        SECTIONS[4], "one subscriber stops reading while 128 MiB are published",
        "dropped at its queue cap; the others get everything; RSS bounded; its reconnect replays the history",
        figure = "slow subscriber" },
      { "a thousand subscribers are all freed when they disconnect", SECTIONS[4],
        "1,000 subscribers disconnect at once", "every subscription and connection freed; still serving" },
    },
  },
  { spec = "faults", all = true, section = function() return SECTIONS[5] end },
  {
    spec = "fetch",
    tests = {
      { "sluice.fetch failures name their cause connection refused", SECTIONS[6],
        "upstream refuses the connection", "nil, message naming the cause" },
      { "sluice.fetch failures name their cause DNS failure", SECTIONS[6],
        "upstream name does not resolve", "nil, message naming the cause" },
      { "sluice.fetch failures name their cause timeout while waiting for the head", SECTIONS[6],
        "upstream stalls before its head", "nil, timeout message" },
      { "sluice.fetch failures name their cause timeout in the middle of the body", SECTIONS[6],
        "upstream stalls mid-body", "the body ends with a timeout error" },
      { "sluice.fetch failures name their cause read_timeout: a stalled body fails after that many seconds without a byte",
        SECTIONS[6], "upstream goes silent mid-stream", "read_timeout ends it" },
      { "sluice.fetch failures name their cause a reset mid-stream ends the iteration with res.err set", SECTIONS[6],
        "upstream resets mid-stream", "a clean end of the iteration with res.err set" },
      { "stream:relay ends the upstream request within 100 ms of the client leaving", SECTIONS[6],
        "the browser leaves during a relayed stream", "upstream request closed within 100 ms" },
      { "stream:relay does not buffer the upstream for a client that stops reading", SECTIONS[6],
        "the browser stops reading a relayed stream", "upstream paused, nothing buffered without bound" },
    },
  },
  {
    spec = "fetch_tls",
    tests = {
      { "fetch over https refuses a certificate it cannot verify, naming TLS as the cause", SECTIONS[6],
        "upstream with an unverifiable certificate", "nil, message naming TLS" },
    },
  },
  {
    spec = "cli",
    tests = {
      { "SIGTERM ends open streams cleanly and exits 0 within 2 s", SECTIONS[7],
        "SIGTERM with a stream open", "whole frames, then an orderly close; exit 0 within 2 s" },
    },
  },
  {
    spec = "e2e_browser", optional = "e2e",
    tests = {
      { "the demo pages in Chromium apps/chat reconnects after the server is killed and restarted, and shows every message exactly once",
        SECTIONS[7], "kill -9 under an open chat page, restart on the same port",
        "the browser's EventSource reconnects by itself with Last-Event-ID; every message shown once" },
    },
  },
}

-- ------------------------------------------------------------ running

local function escape_pattern(s) return (s:gsub("[%^%$%(%)%%%.%[%]%*%+%-%?]", "%%%0")) end

local function tmpname()
  local p = os.tmpname()
  return p
end

--- The full names of a spec file's tests in the order they are defined.
local function list_tests(spec_path)
  local cmd = ("cd %s && env SLUICE_BIN=%s SLUICE_ROOT=%s lua5.4 %s --helper=%s --list %s 2>/dev/null"):format(
    quote(ROOT), quote(opts.bin), quote(ROOT), quote(BUSTED), quote(ROOT .. "/tests/lib/helper.lua"),
    quote(spec_path))
  local order, n = {}, 0
  for line in run_capture(cmd):gmatch("[^\n]+") do
    local name = line:match("^[^:]*:%d+: (.*)$")
    if name and not order[name] then n = n + 1; order[name] = n end
  end
  return order
end

--- Runs one spec file through busted with the JSON output handler;
--- returns its results by full test name, its stderr, and its duration.
local function run_spec(entry)
  local spec_path = ROOT .. "/tests/spec/" .. entry.spec .. "_spec.lua"
  local order = entry.all and list_tests(spec_path) or {}
  local figures_path, err_path = tmpname(), tmpname()
  local args = { "lua5.4", BUSTED, "--helper=" .. ROOT .. "/tests/lib/helper.lua", "-o", "json" }
  if not entry.all then
    for _, t in ipairs(entry.tests) do args[#args + 1] = "--filter=^" .. escape_pattern(t[1]) .. "$" end
  end
  args[#args + 1] = spec_path
  local cmd = ("cd %s && env SLUICE_BIN=%s SLUICE_ROOT=%s SLUICE_HARDENING_FIGURES=%s %s 2>%s"):format(
    quote(ROOT), quote(opts.bin), quote(ROOT), quote(figures_path), testing.command_line(args), quote(err_path))
  io.stderr:write(("hardening-report: running %s_spec%s\n"):format(entry.spec,
    entry.all and "" or (" (" .. #entry.tests .. " tests)")))
  local out = run_capture(cmd)
  local stderr = read_file(err_path) or ""
  local figures = {}
  for line in (read_file(figures_path) or ""):gmatch("[^\n]+") do
    local f = json.decode(line)
    if f and f.test then
      figures[f.test] = figures[f.test] or {}
      table.insert(figures[f.test], f.text)
    end
  end
  os.remove(figures_path); os.remove(err_path)
  local line = out:match("(%b{})%s*$")
  local data = line and json.decode(line)
  if not data then
    return nil, ("busted gave no JSON for %s_spec:\n%s\n%s"):format(entry.spec, out:sub(-2000), stderr:sub(-2000))
  end
  local results = {}
  local function add(list, status)
    for _, r in ipairs(list or {}) do
      results[r.name] = {
        status = status, name = r.name, it = r.element and r.element.name or r.name,
        message = r.message, figures = figures[r.name] or {},
        order = order[r.name] or math.huge,
      }
    end
  end
  add(data.successes, "pass")
  add(data.failures, "fail")
  add(data.errors, "error")
  add(data.pendings, "pending")
  return { results = results, stderr = stderr, duration = data.duration or 0 }
end

-- ------------------------------------------------------------- the rows

local rows = {}        -- section -> list of rows
for _, s in ipairs(SECTIONS) do rows[s] = {} end
local totals = { pass = 0, fail = 0, error = 0, pending = 0, ["not run"] = 0 }
local ran, problems, durations = {}, {}, {}

local function first_line(s)
  s = tostring(s or ""):gsub("^%s+", "")
  -- busted messages start with "file:line: "
  s = s:gsub("^[^\n]-%.lua:%d+: ", "")
  return (s:match("^[^\n]*") or s)
end

for _, entry in ipairs(SPECS) do
  local selected = (not opts.only or opts.only[entry.spec]) and (not entry.optional or opts[entry.optional])
  local run, err
  if selected then
    run, err = run_spec(entry)
    if not run then problems[#problems + 1] = err else
      ran[#ran + 1] = entry.spec
      durations[#durations + 1] = ("%s_spec %.0f s"):format(entry.spec, run.duration)
    end
  end
  local function row(section, attack, expected, r, figure_pattern)
    local status = r and r.status or "not run"
    totals[status] = totals[status] + 1
    local figs = {}
    if r then
      for _, f in ipairs(r.figures) do figs[#figs + 1] = f end
      if figure_pattern and run then
        for line in run.stderr:gmatch("[^\n]+") do
          local text = line:match("^%s*%[%w+%]%s*(.*)$")
          if text and line:find(figure_pattern) then figs[#figs + 1] = text end
        end
      end
    end
    table.insert(rows[section], {
      attack = attack, expected = expected, status = status, figures = figs,
      message = r and r.status ~= "pass" and first_line(r.message) or nil,
      spec = entry.spec .. "_spec",
      why = not r and (not selected and (entry.optional and ("needs --" .. entry.optional) or "not selected")
                        or (err and "spec did not run" or "test not found")) or nil,
    })
  end
  if entry.all then
    if run then
      local list = {}
      for _, r in pairs(run.results) do list[#list + 1] = r end
      table.sort(list, function(a, b)
        if a.order ~= b.order then return a.order < b.order end
        return a.name < b.name
      end)
      for _, r in ipairs(list) do
        local attack = r.name:sub(1, #r.name - #r.it):gsub("%s+$", "")
        if attack == "" then attack = r.name end
        row(entry.section(attack), attack, r.it, r)
      end
    end
  else
    for _, t in ipairs(entry.tests) do
      row(t[2], t[3], t[4], run and run.results[t[1]], t.figure)
    end
  end
end

-- ------------------------------------------------------------- the doc

local function cell(s)
  return (tostring(s):gsub("|", "\\|"):gsub("\n", " "))
end

local function result_cell(r)
  local out
  if r.status == "pass" then out = "pass"
  elseif r.status == "not run" then out = "not run (" .. r.why .. ")"
  else out = ("**%s**: %s"):format(r.status:upper(), r.message or "") end
  if #r.figures > 0 then out = out .. "<br>" .. table.concat(r.figures, "<br>") end
  return cell(out)
end

local commit = run_capture("cd " .. quote(ROOT) .. " && git rev-parse --short HEAD 2>/dev/null"):gsub("%s+$", "")
local dirty = run_capture("cd " .. quote(ROOT) .. " && git status --porcelain --untracked-files=no 2>/dev/null") ~= ""
local kernel = run_capture("uname -sr"):gsub("%s+$", "")
local ncpu = run_capture("nproc"):gsub("%s+$", "")

local function count_files(dir, pattern)
  local n = 0
  local p = io.popen("ls -1 " .. quote(dir) .. " 2>/dev/null")
  for name in p:lines() do if not pattern or name:find(pattern) then n = n + 1 end end
  p:close()
  return n
end

local doc = {}
local function w(fmt, ...) doc[#doc + 1] = select("#", ...) > 0 and fmt:format(...) or fmt end

w("# Hardening report")
w("")
w("<!-- Generated by scripts/hardening-report.lua from a test run: do not edit by hand. -->")
w("")
w("Regenerate with: `lua5.4 scripts/hardening-report.lua` (after `make build`; about a minute;")
w("`--e2e` adds the browser test, `--only hardening,http` a partial run, `--help` the rest).")
w("")
w("Every attack and fault below is an integration test on loopback against the built server:")
w("the spec and test named in each row are what ran. Figures are what the tests measured in")
w("this run.")
w("")
w("| run | |")
w("|---|---|")
w("| date (UTC) | %s |", os.date("!%Y-%m-%d %H:%M"))
w("| commit | %s%s |", commit ~= "" and commit or "unknown", dirty and " (with uncommitted changes)" or "")
w("| server | `%s`%s |", opts.bin:sub(#ROOT + 2), SANITIZED and " (ASan + UBSan build, SLUICE_SANITIZED=1)" or "")
w("| machine | %s, %s CPUs |", kernel, ncpu)
w("| specs run | %s |", #ran > 0 and table.concat(durations, ", ") or "none")
w("| results | %d pass, %d fail, %d error, %d not run |", totals.pass, totals.fail, totals.error,
  totals["not run"] + totals.pending)
w("")
local failing = {}
for _, section in ipairs(SECTIONS) do
  for _, r in ipairs(rows[section]) do
    if r.status == "fail" or r.status == "error" then failing[#failing + 1] = r end
  end
end
if #failing > 0 then
  w("**Failing in this run** (details in the tables below):")
  w("")
  for _, r in ipairs(failing) do
    w("- %s: %s (%s): %s", r.attack, r.expected, r.spec, r.message or r.status)
  end
  w("")
end
if #problems > 0 then
  w("**Specs that did not run:**")
  w("")
  for _, p in ipairs(problems) do w("```\n%s\n```", p) end
  w("")
end

for _, section in ipairs(SECTIONS) do
  if #rows[section] > 0 then
    w("## %s", section)
    w("")
    w("| attack or fault | expected answer | result | spec |")
    w("|---|---|---|---|")
    for _, r in ipairs(rows[section]) do
      w("| %s | %s | %s | %s |", cell(r.attack), cell(r.expected), result_cell(r), r.spec)
    end
    w("")
  end
end

w("## Below the socket: unit tests")
w("")
w("The same hostile input, fed to the C modules directly (`ctest -R unit/`): `tests/unit/test_http.c`")
w("refuses malformed requests and smuggling shapes (both lengths, two lengths, bad chunk sizes,")
w("codings other than chunked, names that are not tokens, bare LF) with 400 however the input is")
w("split, byte by byte included, and holds the head and body limits; `tests/unit/test_static.c`")
w("checks the static path rules; `tests/unit/test_sse_parse.c` and `test_sse_encode.c` the")
w("upstream parser's bound and the encoder's refusals.")
w("")
w("## Fuzzing")
w("")
w("libFuzzer targets (clang, `-fsanitize=fuzzer,address,undefined`) for the four places where")
w("outside bytes reach C. `make test` runs each for about 15 s over its committed corpus (every")
w("crash found so far is kept there as a regression input); `make fuzz` runs each for")
w("`FUZZ_TIME` seconds (default 60) and keeps what it finds in `build-fuzz/`. Details:")
w("[tests/fuzz/README.md](../tests/fuzz/README.md).")
w("")
w("| target | code under test | checks beyond ASan/UBSan | corpus (regressions) |")
w("|---|---|---|---|")
local FUZZ = {
  { "fuzz_http", "`src/http.c` (the llhttp glue), driven as `conn.c` drives it",
    "whole input = byte by byte = random cuts; http.h's contract for every event; limits held; error statuses", "http" },
  { "fuzz_sse_encode", "`src/sse_encode.c`",
    "refuses exactly what it must; bytes equal a reference encoder's; parse back to the same event", "sse_encode" },
  { "fuzz_sse_parse", "`src/sse_parse.c` (upstream event streams)",
    "whole = byte by byte = random cuts; agrees with a reference WHATWG parser; the size bound", "sse_parse" },
  { "fuzz_json", "`src/bind_json.c` (the Lua/JSON bridge)",
    "decode never raises; encode of decode is stable and means the same; Lua values encode or fail cleanly", "json" },
}
for _, f in ipairs(FUZZ) do
  local dir = ROOT .. "/tests/fuzz/corpus/" .. f[4]
  w("| `%s` | %s | %s | %d inputs (%d) |", f[1], f[2], f[3], count_files(dir), count_files(dir, "^crash%-"))
end
w("")
w("## Sanitizers")
w("")
w("`make test-asan` builds the server, the unit tests and the load client with AddressSanitizer")
w("and UndefinedBehaviorSanitizer (`-DSLUICE_SANITIZE=ON`, Debug, in `build-asan/`) and runs the")
w("whole suite, these specs included, with `SLUICE_SANITIZED=1`: any memory error or undefined")
w("behaviour aborts the server, LeakSanitizer checks every clean shutdown (the tests assert exit")
w("status 0, so a leak fails them), and a 16 MiB quarantine keeps the memory-bound tests")
w("meaningful. Under it, the churn test runs 30,000 cycles instead of 100,000 (after a longer")
w("warm-up that fills the quarantine) and the time bounds are doubled; it says so in its figures.")
w("CI runs it. This report comes from a %s run; for a sanitized one:", SANITIZED and "sanitized" or "normal")
w("")
w("```sh")
w("make test-asan   # builds build-asan/ and runs the suite")
w("SLUICE_SANITIZED=1 ASAN_OPTIONS=quarantine_size_mb=16:detect_leaks=1 \\")
w("  lua5.4 scripts/hardening-report.lua --bin build-asan/sluice --out build-asan/hardening.md")
w("```")
w("")

local f = assert(io.open(opts.out, "wb"))
f:write(table.concat(doc, "\n"))
f:close()
io.stderr:write(("hardening-report: %d pass, %d fail, %d error, %d not run -> %s\n"):format(
  totals.pass, totals.fail, totals.error, totals["not run"] + totals.pending, opts.out))
os.exit((totals.fail + totals.error == 0 and #problems == 0) and 0 or 1)
