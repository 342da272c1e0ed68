--- Test app for https through sluice.fetch: GET /get?url=URL[&ca=FILE]
--- answers { status, err, body } as JSON.
local sluice = require "sluice"

local app = sluice.app {}

---@param req sluice.Request
app:get("/get", function(req)
  local res, err = sluice.fetch(req.query.url, { ca_file = req.query.ca, timeout = 5 })
  if not res then return { json = { err = err } } end
  local body, berr = res:text()
  return { json = { status = res.status, body = body and body:sub(1, 200), err = berr } }
end)

return app
