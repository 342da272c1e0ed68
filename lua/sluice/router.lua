--- sluice.router: maps a method and a path to a handler.
---
--- Paths are matched segment by segment in a trie: a literal segment beats a
--- `:param` segment, which beats a trailing `*`; when a branch fails the next
--- kind is tried.  Matching allocates only the params table.
---@class sluice.Router
---@field private root table
---@field private routes sluice.RouteInfo[] every route, in the order added
local Router = {}
Router.__index = Router

--- A route as the app added it (see Router:list).
---@class sluice.RouteInfo
---@field method string
---@field path string

local METHODS = { GET = true, HEAD = true, POST = true, PUT = true, PATCH = true,
                  DELETE = true, OPTIONS = true }

local function new_node()
  return { static = {}, param = nil, param_name = nil, wild = nil, methods = nil }
end

--- Creates an empty router.
---@return sluice.Router
function Router.new()
  return setmetatable({ root = new_node(), routes = {} }, Router)
end

local find, sub = string.find, string.sub

--- Splits a path into its segments ("/a/b" -> {"a", "b"}; "/" -> {}).
---@param path string
---@return string[]
local function segments(path)
  local segs, n = {}, 0
  if path == "/" then return segs end
  for seg in string.gmatch(path:sub(2), "([^/]*)") do
    n = n + 1
    segs[n] = seg
  end
  return segs
end

--- Decodes %XX escapes in a path parameter.
---@param s string
---@return string
local function unescape(s)
  if not s:find("%", 1, true) then return s end
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end
Router.unescape = unescape

--- Adds a route.  Misuse (bad method, bad path, a duplicate) is an error.
---@param method string upper-case HTTP method
---@param path string e.g. "/users/:id" or "/files/*"
---@param fn function handler
function Router:add(method, path, fn)
  if not METHODS[method] then error("unsupported method '" .. tostring(method) .. "'", 3) end
  if type(path) ~= "string" or path:sub(1, 1) ~= "/" then
    error("route path must be a string starting with '/'", 3)
  end
  if type(fn) ~= "function" then error("route handler must be a function", 3) end
  local node = self.root
  local segs = segments(path)
  for i, seg in ipairs(segs) do
    if seg == "*" then
      if i ~= #segs then error("'*' must be the last segment of " .. path, 3) end
      node.wild = node.wild or new_node()
      node = node.wild
    elseif seg:sub(1, 1) == ":" then
      local name = seg:sub(2)
      if name == "" then error("parameter without a name in " .. path, 3) end
      if node.param and node.param_name ~= name then
        error(("conflicting parameter names :%s and :%s in %s"):format(node.param_name, name, path), 3)
      end
      node.param = node.param or new_node()
      node.param_name = name
      node = node.param
    else
      local child = node.static[seg]
      if not child then
        child = new_node()
        node.static[seg] = child
      end
      node = child
    end
  end
  node.methods = node.methods or {}
  if node.methods[method] then error(("duplicate route %s %s"):format(method, path), 3) end
  node.methods[method] = fn
  -- The trie forgets the order routes came in; `sluice check` lists them in it.
  self.routes[#self.routes + 1] = { method = method, path = path }
end

--- Every route, in the order they were added.
---@return sluice.RouteInfo[]
function Router:list()
  return table.move(self.routes, 1, #self.routes, 1, {})
end

--- Finds the node for the path's segments from position `s` on (nil when
--- no segment is left), filling params; returns the first matching node
--- that accepts method, or (with method nil) the first with any route.
--- Segments are read off the path as the walk goes, so that matching makes
--- no table of them: the segment at `s` ends before the next "/", and the
--- one after it starts just past that "/" (an empty one when the path ends
--- there), as `segments` splits them.
local function walk(node, path, s, params, method)
  if s == nil then
    local m = node.methods
    if m and (method == nil or m[method] or (method == "HEAD" and m.GET)) then return node end
    -- a wildcard also matches an empty rest ("/files/*" matches "/files/")
  else
    local e = find(path, "/", s, true)
    local seg, rest
    if e then
      seg, rest = sub(path, s, e - 1), e + 1
    else
      seg = sub(path, s)
    end
    local child = node.static[seg]
    if child then
      local found = walk(child, path, rest, params, method)
      if found then return found end
    end
    if node.param and seg ~= "" then
      local found = walk(node.param, path, rest, params, method)
      if found then
        params[node.param_name] = unescape(seg)
        return found
      end
    end
  end
  local wild = node.wild
  if wild and wild.methods and s then
    local m = wild.methods
    if method == nil or m[method] or (method == "HEAD" and m.GET) then
      params["*"] = unescape(sub(path, s))
      return wild
    end
  end
  return nil
end

--- The methods a node answers, as an Allow header value.
local function allow_list(methods)
  local list = {}
  for m in pairs(methods) do list[#list + 1] = m end
  if methods.GET and not methods.HEAD then list[#list + 1] = "HEAD" end
  table.sort(list)
  return table.concat(list, ", ")
end

--- Matches a request.
---@param method string
---@param path string
---@return function|nil handler
---@return table|string|nil params, or when no handler: the Allow list if the path exists under other methods
function Router:match(method, path)
  local s = path ~= "/" and 2 or nil -- where the first segment starts
  local params = {}
  local node = walk(self.root, path, s, params, method)
  if node then
    local m = node.methods
    return m[method] or m.GET, params
  end
  node = walk(self.root, path, s, {}, nil)
  if node then return nil, allow_list(node.methods) end
  return nil, nil
end

return Router
