-- The fenced code blocks of a Markdown file, for specs that keep a
-- document's code true (tests/spec/deploy_spec.lua, cookbook_spec.lua).
--
--     local markdown = require "markdown"
--     local doc = markdown.load(testing.root .. "/docs/cookbook.md")
--     local block = doc:fence_after("## Behind nginx", "nginx")  -- its text
local testing = require "sluice.testing"

local markdown = {}

---@class markdown.Fence
---@field lang string    the info string's first word ("" when none)
---@field text string    the lines inside the fence, each ended by "\n"
---@field line integer   the line of the opening fence
---@field heading? string the last heading above it ("## Behind nginx")
---@field caption string  the last non-blank line above it (a closing fence counts)

---@class markdown.Doc
---@field path string
---@field fences markdown.Fence[]
local Doc = {}
Doc.__index = Doc

--- Parses a Markdown file (``` fences only; no nesting).
---@param path string
---@return markdown.Doc
function markdown.load(path)
  local text = assert(testing.read_file(path), "cannot read " .. path)
  local fences, open, heading, caption = {}, nil, nil, ""
  local n = 0
  for line in (text .. "\n"):gmatch("(.-)\n") do
    n = n + 1
    if open then
      if line:match("^```%s*$") then
        fences[#fences + 1] = open
        open, caption = nil, line
      else
        open.text = open.text .. line .. "\n"
      end
    elseif line:match("^```") then
      open = { lang = line:match("^```%s*([%w_-]*)"), text = "", line = n, heading = heading, caption = caption }
    elseif line:match("^#+ ") then
      heading = line
    elseif line:find("%S") then
      caption = line
    end
  end
  assert(not open, path .. ": a fence opened at line " .. (open and open.line or 0) .. " is never closed")
  return setmetatable({ path = path, fences = fences }, Doc)
end

--- The first fence of language `lang` under the heading `heading` (the
--- heading's exact line); raises when there is none.
---@param heading string
---@param lang string
---@return markdown.Fence
function Doc:fence_after(heading, lang)
  for _, f in ipairs(self.fences) do
    if f.heading == heading and f.lang == lang then return f end
  end
  error(("%s: no ```%s block under %q"):format(self.path, lang, heading), 2)
end

return markdown
