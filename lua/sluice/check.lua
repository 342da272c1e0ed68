--- sluice.check: the report of `sluice check APP_DIR`, made inside the VM
--- a worker would serve the app from, once the app has loaded there.
local json = require("sluice").json

local check = {}

--- `k=v` for every option the app set, sorted by name, values as JSON.
---@param options table
---@return string
local function option_list(options)
  local names = {}
  for k in pairs(options) do names[#names + 1] = k end
  table.sort(names)
  for i, k in ipairs(names) do
    local ok, v = pcall(json.encode, options[k])
    names[i] = k .. "=" .. (ok and v or tostring(options[k]))
  end
  return table.concat(names, " ")
end

--- The report: each route on a line (`GET     /events`, in the order the
--- app added them), then a summary line naming the app's folder, how many
--- routes it has and the options it sets. Raises when the dispatcher is not
--- one sluice made.
---@param dispatch function the dispatcher `sluice._boot` returned
---@param dir string the app's folder
---@return string
function check.describe(dispatch, dir)
  local app = require("sluice")._app_of(dispatch)
  if not app then error("sluice check: cannot find the app behind its dispatcher", 0) end
  local lines = {}
  for i, r in ipairs(app.router:list()) do lines[i] = ("%-7s %s"):format(r.method, r.path) end
  local n = #lines
  local opts = option_list(app.settings)
  lines[n + 1] = ("ok: %s: %d route%s, %s"):format(dir, n, n == 1 and "" or "s",
    opts == "" and "default options" or "options " .. opts)
  return table.concat(lines, "\n") .. "\n"
end

return check
