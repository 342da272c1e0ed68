--- Runs build/sluice-loadgen (bench/loadgen.c) and returns its JSON summary.
local proc = require "proc"
local json = require "dkjson"

local loadgen = {}

--- The binary: $SLUICE_LOADGEN, or sluice-loadgen beside the server binary.
---@param server_bin string
---@return string
function loadgen.bin(server_bin)
  return os.getenv("SLUICE_LOADGEN") or (server_bin:gsub("[^/]*$", "") .. "sluice-loadgen")
end

-- argv for a run: the mode, then `--key value` pairs from `opts` in a fixed
-- order (true: a bare flag), always --json and --quiet.
local function command(bin, mode, opts, cpu)
  local words = { "taskset", "-c", cpu, bin, mode }
  local keys = {}
  for k in pairs(opts) do keys[#keys + 1] = k end
  table.sort(keys)
  for _, k in ipairs(keys) do
    local v = opts[k]
    if v == true then
      words[#words + 1] = "--" .. k
    elseif v then
      words[#words + 1] = "--" .. k
      words[#words + 1] = tostring(v)
    end
  end
  words[#words + 1] = "--json"
  words[#words + 1] = "--quiet"
  for i, w in ipairs(words) do words[i] = proc.quote(w) end
  return table.concat(words, " ")
end

-- The JSON object on the last line of `out`, or raises with the output.
local function summary(out, what)
  local last = out:match("([^\n]*)\n?$")
  local obj = last and json.decode(last)
  if type(obj) ~= "table" then error(what .. ": no summary from the load client:\n" .. out, 3) end
  return obj
end

--- Runs a fanout/latency run to its end and returns the summary object.
---@param bin string
---@param mode "fanout"|"latency"
---@param opts table   loadgen options without dashes, e.g. { port = 8080, subs = 1000 }
---@param cpu string   CPU list the client is pinned to
---@return table
function loadgen.run(bin, mode, opts, cpu)
  local out = proc.run(command(bin, mode, opts, cpu) .. " 2>&1")
  return summary(out, mode)
end

--- Opens `opts.subs` subscribers in idle mode, calls `while_held(n)` once
--- they are all open (n = how many are), then lets them go and returns
--- what `while_held` returned and the loadgen summary.
---@param bin string
---@param opts table
---@param cpu string
---@param while_held fun(n: integer): any
---@return any held_result
---@return table summary
function loadgen.hold(bin, opts, cpu, while_held)
  local err = os.tmpname()
  -- `echo $$` then exec: the pid printed is the load client's own.
  local p = assert(io.popen("sh -c " .. proc.quote("echo $$; exec " .. command(bin, "idle", opts, cpu))
    .. " 2>" .. proc.quote(err), "r"))
  local pid = math.tointeger(tonumber(p:read("l")))
  local line = p:read("l") or ""
  local n = math.tointeger(tonumber(line:match("^READY (%d+)")))
  local ok, result = true, nil
  if n then ok, result = pcall(while_held, n) end
  os.execute(("kill -USR1 %d 2>/dev/null"):format(pid))
  local rest = (n and "" or line .. "\n") .. p:read("a")
  p:close()
  local stderr = proc.read(err) or ""
  os.remove(err)
  if not ok then error(result, 0) end
  if not n then error("idle: the load client did not get ready:\n" .. rest .. stderr, 2) end
  return result, summary(rest, "idle")
end

return loadgen
