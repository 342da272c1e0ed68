--- sluice.openai: helpers for proxying OpenAI-style chat streams.
---
--- ```lua
--- local openai = require "sluice.openai"
--- local acc = openai.accumulate()
--- for ev in res:events() do
---   if ev.data == "[DONE]" then break end
---   acc:add(sluice.json.decode(ev.data))
--- end
--- print(acc:text(), acc.finish_reason, acc.usage and acc.usage.total_tokens)
--- ```
---
--- and, to front an Anthropic Messages API with the OpenAI wire format:
---
--- ```lua
--- local conv = openai.from_anthropic()
--- for ev in res:events() do
---   local chunks, err = conv:event(ev)
---   if not chunks then sse:send{ data = err } break end
---   for _, c in ipairs(chunks) do sse:send{ data = c } end
--- end
--- ```
---
--- Pure Lua: the JSON codec comes from `opts.json` (any table with
--- `decode`/`encode`, optionally `null` and `array`), else from the C core's
--- `sluice.json` when it is loaded.  Decoded JSON nulls (nil or a `null`
--- sentinel) are treated as absent.
local openai = {}

local type, ipairs, pairs, tostring, error, setmetatable, pcall, os_time =
  type, ipairs, pairs, tostring, error, setmetatable, pcall, os.time
local concat, sort = table.concat, table.sort

---@class sluice.openai.Codec
---@field decode fun(s: string): any, string?
---@field encode fun(v: any): string
---@field null? any the value encoded as JSON null
---@field array? fun(t: table): table marks a table to encode as an array

--- The codec in `opts.json`, else the C core's, else nil.
---@param opts? {json?: sluice.openai.Codec}
---@return sluice.openai.Codec?
local function codec(opts)
  if opts and opts.json then return opts.json end
  local ok, core = pcall(require, "sluice.core")
  if ok and type(core) == "table" then return core.json end
  return nil
end

--- JSON null for a codec that has one; nil (absent) otherwise.
local function null(J) return J and J.null end

--- `t`, marked as a JSON array when the codec can mark it.
local function array(J, t)
  if J and J.array then return J.array(t) end
  return t
end

local function str(v) return type(v) == "string" and v or nil end
local function tab(v) return type(v) == "table" and v or nil end
local function num(v) return type(v) == "number" and v or nil end

---------------------------------------------------------------- errors

local ERROR_TYPES = {
  [400] = "invalid_request_error", [401] = "authentication_error", [403] = "permission_error",
  [404] = "not_found_error", [408] = "timeout_error", [413] = "invalid_request_error",
  [429] = "rate_limit_error",
}

---@param J? sluice.openai.Codec
local function error_table(J, status, message, type_, code)
  if type_ == nil then
    type_ = ERROR_TYPES[status] or (status >= 500 and "server_error") or "invalid_request_error"
  end
  return { error = {
    message = message or ("upstream answered " .. tostring(status)),
    type = type_,
    param = null(J),
    code = code == nil and null(J) or code,
  } }
end

--- An OpenAI-style error body: `{ error = { message, type, param, code } }`.
--- `type` defaults from the status (`server_error` for 5xx,
--- `rate_limit_error` for 429, `invalid_request_error` for other 4xx...);
--- `param` and `code` are JSON null when the codec has one, else absent.
---@param status integer
---@param message? string
---@param type_? string
---@param code? string
---@return {error: {message: string, type: string, param: any, code: any}}
function openai.error_body(status, message, type_, code)
  return error_table(codec(), status, message, type_, code)
end

----------------------------------------------------------- accumulating

---@class sluice.openai.Choice
---@field index integer
---@field role? string
---@field parts string[] content pieces, in order
---@field refusal_parts string[]
---@field finish_reason? string
---@field tools table<integer, {index: integer, id?: string, type?: string, name: string[], arguments: string[]}>

---@class sluice.openai.Accumulator
---@field choices table<integer, sluice.openai.Choice> by choice index (0-based)
---@field id? string
---@field model? string
---@field created? integer
---@field system_fingerprint? string
---@field usage? table the last usage object seen (prompt_tokens, completion_tokens, total_tokens)
---@field finish_reason? string choice 0's finish_reason
---@field error? table the `error` object of an in-band error chunk
---@field chunks integer chunks added
---@field private json? sluice.openai.Codec
local Accumulator = {}
Accumulator.__index = Accumulator

--- A new accumulator for the chunks of one streamed chat completion.
---@param opts? {json?: sluice.openai.Codec} codec used for nulls and arrays in `completion()`
---@return sluice.openai.Accumulator
function openai.accumulate(opts)
  return setmetatable({ choices = {}, chunks = 0, json = codec(opts) }, Accumulator)
end

---@param self sluice.openai.Accumulator
---@param index integer
---@return sluice.openai.Choice
local function choice(self, index)
  local c = self.choices[index]
  if not c then
    c = { index = index, parts = {}, refusal_parts = {}, tools = {} }
    self.choices[index] = c
  end
  return c
end

--- Adds one decoded `chat.completion.chunk`.  An in-band error chunk
--- (`{ error = {...} }`) is kept in `acc.error` and returned as `nil, error`.
---@param chunk table
---@return true|nil ok
---@return table? err the chunk's error object
function Accumulator:add(chunk)
  if type(chunk) ~= "table" then error("accumulate: chunk must be a table", 2) end
  self.chunks = self.chunks + 1
  if tab(chunk.error) then
    self.error = chunk.error
    return nil, chunk.error
  end
  self.id = self.id or str(chunk.id)
  self.model = self.model or str(chunk.model)
  self.created = self.created or num(chunk.created)
  self.system_fingerprint = self.system_fingerprint or str(chunk.system_fingerprint)
  if tab(chunk.usage) then self.usage = chunk.usage end
  for pos, ch in ipairs(tab(chunk.choices) or {}) do
    local c = choice(self, num(ch.index) or pos - 1)
    local delta = tab(ch.delta) or {}
    c.role = c.role or str(delta.role)
    local content = str(delta.content)
    if content and content ~= "" then c.parts[#c.parts + 1] = content end
    local refusal = str(delta.refusal)
    if refusal and refusal ~= "" then c.refusal_parts[#c.refusal_parts + 1] = refusal end
    for tpos, tc in ipairs(tab(delta.tool_calls) or {}) do
      local k = num(tc.index) or tpos - 1
      local t = c.tools[k]
      if not t then
        t = { index = k, name = {}, arguments = {} }
        c.tools[k] = t
      end
      t.id = t.id or str(tc.id)
      t.type = t.type or str(tc.type)
      local fn = tab(tc["function"]) or {}
      if str(fn.name) then t.name[#t.name + 1] = fn.name end
      if str(fn.arguments) then t.arguments[#t.arguments + 1] = fn.arguments end
    end
    local finish = str(ch.finish_reason)
    if finish then
      c.finish_reason = finish
      if c.index == 0 then self.finish_reason = finish end
    end
  end
  return true
end

--- The text of a choice so far.
---@param index? integer choice index (default 0)
---@return string
function Accumulator:text(index)
  local c = self.choices[index or 0]
  return c and concat(c.parts) or ""
end

--- The tool calls of a choice so far, in index order, each
--- `{ id, type, ["function"] = { name, arguments } }`.
---@param index? integer choice index (default 0)
---@return table[]
function Accumulator:tool_calls(index)
  local c = self.choices[index or 0]
  local list = {}
  if not c then return list end
  for _, t in pairs(c.tools) do list[#list + 1] = t end
  sort(list, function(a, b) return a.index < b.index end)
  for i, t in ipairs(list) do
    list[i] = { id = t.id, type = t.type or "function",
                ["function"] = { name = concat(t.name), arguments = concat(t.arguments) } }
  end
  return list
end

--- A non-streamed `chat.completion` built from what was accumulated.
---@return table
function Accumulator:completion()
  local J = self.json
  local indexes = {}
  for i in pairs(self.choices) do indexes[#indexes + 1] = i end
  sort(indexes)
  local choices = {}
  for n, i in ipairs(indexes) do
    local c = self.choices[i]
    local tools = self:tool_calls(i)
    local message = { role = c.role or "assistant", content = concat(c.parts) }
    if #tools > 0 then
      message.tool_calls = tools
      if message.content == "" then message.content = null(J) end
    end
    message.refusal = #c.refusal_parts > 0 and concat(c.refusal_parts) or null(J)
    choices[n] = { index = i, message = message, logprobs = null(J),
                   finish_reason = c.finish_reason or null(J) }
  end
  return {
    id = self.id, object = "chat.completion", created = self.created or os_time(),
    model = self.model, system_fingerprint = self.system_fingerprint,
    choices = array(J, choices), usage = self.usage,
  }
end

------------------------------------------------------- Anthropic streams

local FINISH = {
  end_turn = "stop", stop_sequence = "stop", max_tokens = "length",
  tool_use = "tool_calls", pause_turn = "stop", refusal = "content_filter",
}

---@class sluice.openai.FromAnthropic
---@field id? string from message_start
---@field model? string from message_start (or opts.model until then)
---@field created integer
---@field input_tokens integer prompt tokens, cache reads and writes included
---@field cached_tokens? integer cache reads, from message_start
---@field output_tokens integer
---@field usage? {prompt_tokens: integer, completion_tokens: integer, total_tokens: integer} set by message_delta
---@field finish_reason? string
---@field done boolean true once message_stop arrived
---@field private json sluice.openai.Codec
---@field private usage_chunk boolean
---@field private tools table<integer, integer> content block index -> tool call index
---@field private ntools integer
local FromAnthropic = {}
FromAnthropic.__index = FromAnthropic

--- A converter from one Anthropic Messages event stream to OpenAI
--- `chat.completion.chunk` tables.
--- Options: `json` (codec; default the C core's `sluice.json`), `model`
--- (reported until message_start names one), `created` (default now),
--- `usage_chunk` (true: usage travels in a separate trailing chunk with
--- `choices = []`, the `stream_options.include_usage` shape; default: on the
--- finish chunk).
---@param opts? {json?: sluice.openai.Codec, model?: string, created?: integer, usage_chunk?: boolean}
---@return sluice.openai.FromAnthropic
function openai.from_anthropic(opts)
  opts = opts or {}
  local J = codec(opts)
  if not J then error("from_anthropic: a JSON codec is needed (opts.json)", 2) end
  return setmetatable({
    json = J, model = opts.model, created = opts.created or os_time(),
    usage_chunk = opts.usage_chunk == true,
    input_tokens = 0, output_tokens = 0, done = false, tools = {}, ntools = 0,
  }, FromAnthropic)
end

---@param self sluice.openai.FromAnthropic
---@param delta table
---@param finish? string
local function chunk(self, delta, finish)
  local J = self.json
  return {
    id = self.id, object = "chat.completion.chunk", created = self.created, model = self.model,
    choices = array(J, { { index = 0, delta = delta, logprobs = null(J),
                           finish_reason = finish or null(J) } }),
  }
end

--- Converts one parsed SSE event `{ event = name, data = string }` (data may
--- also be an already decoded table).  Returns the list of chunks to send
--- (often empty), or `nil, err` for an `error` event or an undecodable one,
--- with `err` an OpenAI-style error body.
---@param ev {event?: string, data?: string|table}
---@return table[]|nil chunks
---@return table? err
function FromAnthropic:event(ev)
  local J = self.json
  local data = ev.data
  if type(data) == "string" then
    local v, derr = J.decode(data)
    if type(v) ~= "table" then
      return nil, error_table(J, 502, "bad upstream event: " .. tostring(derr or data), "upstream_error")
    end
    data = v
  elseif type(data) ~= "table" then
    return {}
  end
  local kind = str(ev.event) or str(data.type)

  if kind == "message_start" then
    local m = tab(data.message) or {}
    self.id = str(m.id) or self.id
    self.model = str(m.model) or self.model
    local u = tab(m.usage) or {}
    self.input_tokens = (num(u.input_tokens) or 0) + (num(u.cache_read_input_tokens) or 0)
                        + (num(u.cache_creation_input_tokens) or 0)
    self.cached_tokens = num(u.cache_read_input_tokens)
    self.output_tokens = num(u.output_tokens) or 0
    return { chunk(self, { role = "assistant", content = "" }) }

  elseif kind == "content_block_start" then
    local block = tab(data.content_block) or {}
    if block.type == "tool_use" then
      local k = self.ntools
      self.ntools = k + 1
      self.tools[num(data.index) or 0] = k
      return { chunk(self, { tool_calls = array(J, { {
        index = k, id = str(block.id), type = "function",
        ["function"] = { name = str(block.name) or "", arguments = "" } } }) }) }
    elseif block.type == "text" and str(block.text) and block.text ~= "" then
      return { chunk(self, { content = block.text }) }
    end
    return {}

  elseif kind == "content_block_delta" then
    local d = tab(data.delta) or {}
    if d.type == "text_delta" and str(d.text) then
      return { chunk(self, { content = d.text }) }
    elseif d.type == "input_json_delta" and str(d.partial_json) then
      local k = self.tools[num(data.index) or 0]
      if k == nil then return {} end
      return { chunk(self, { tool_calls = array(J, { {
        index = k, ["function"] = { arguments = d.partial_json } } }) }) }
    end
    return {} -- thinking, signatures, citations: not part of the OpenAI shape

  elseif kind == "message_delta" then
    local d = tab(data.delta) or {}
    local u = tab(data.usage) or {}
    if num(u.input_tokens) then
      self.input_tokens = u.input_tokens + (num(u.cache_read_input_tokens) or 0)
                          + (num(u.cache_creation_input_tokens) or 0)
    end
    self.output_tokens = num(u.output_tokens) or self.output_tokens
    self.usage = { prompt_tokens = self.input_tokens, completion_tokens = self.output_tokens,
                   total_tokens = self.input_tokens + self.output_tokens }
    if (self.cached_tokens or 0) > 0 then
      self.usage.prompt_tokens_details = { cached_tokens = self.cached_tokens }
    end
    local reason = str(d.stop_reason)
    self.finish_reason = reason and (FINISH[reason] or "stop") or nil
    local fin = chunk(self, {}, self.finish_reason or "stop")
    if not self.usage_chunk then
      fin.usage = self.usage
      return { fin }
    end
    local usage = chunk(self, {})
    usage.choices = array(J, {})
    usage.usage = self.usage
    return { fin, usage }

  elseif kind == "message_stop" then
    self.done = true
    return {}

  elseif kind == "error" then
    local e = tab(data.error) or {}
    return nil, error_table(J, 500, str(e.message) or "upstream error", str(e.type) or "api_error")
  end
  return {} -- ping, content_block_stop, and event types yet to come
end

------------------------------------------------------ Anthropic requests

--- The text of an OpenAI message content (a string or a list of parts).
local function text_of(content)
  if type(content) == "string" then return content end
  local out = {}
  for _, part in ipairs(tab(content) or {}) do
    if type(part) == "string" then out[#out + 1] = part
    elseif tab(part) and str(part.text) then out[#out + 1] = part.text end
  end
  return concat(out)
end

--- OpenAI content parts as Anthropic content blocks.
local function blocks_of(content)
  if type(content) == "string" then return { { type = "text", text = content } } end
  local out = {}
  for _, part in ipairs(tab(content) or {}) do
    if type(part) ~= "table" then part = { type = "text", text = str(part) } end
    if part.type == "text" and str(part.text) then
      out[#out + 1] = { type = "text", text = part.text }
    elseif part.type == "image_url" then
      local url = tab(part.image_url) and str(part.image_url.url) or str(part.image_url)
      if url then
        local media, b64 = url:match("^data:([^;,]+);base64,(.*)$")
        out[#out + 1] = { type = "image", source = media
          and { type = "base64", media_type = media, data = b64 }
          or { type = "url", url = url } }
      end
    end
  end
  return out
end

local TOOL_CHOICE = { auto = "auto", required = "any", none = "none" }

--- The Anthropic Messages request for an OpenAI chat completions request:
--- system and developer messages become `system`, tool calls and tool
--- results become tool_use / tool_result blocks, `max_tokens` (or
--- `max_completion_tokens`) defaults to `opts.max_tokens` or 1024; `model`,
--- `stream`, `temperature`, `top_p`, `stop`, `tools`, `tool_choice` and
--- `user` carry over.
---@param body table a decoded OpenAI chat completions request
---@param opts? {json?: sluice.openai.Codec, max_tokens?: integer}
---@return table
function openai.to_anthropic_request(body, opts)
  opts = opts or {}
  local J = codec(opts)
  local system, messages = {}, {}
  for _, m in ipairs(tab(body.messages) or {}) do
    local role = tab(m) and m.role
    if role == "system" or role == "developer" then
      system[#system + 1] = text_of(m.content)
    elseif role == "tool" then
      local result = { type = "tool_result", tool_use_id = str(m.tool_call_id), content = text_of(m.content) }
      local last = messages[#messages]
      if last and last.role == "user" and type(last.content) == "table"
         and last.content[1] and last.content[1].type == "tool_result" then
        last.content[#last.content + 1] = result
      else
        messages[#messages + 1] = { role = "user", content = { result } }
      end
    elseif role == "assistant" and tab(m.tool_calls) and #m.tool_calls > 0 then
      local content = {}
      local text = text_of(m.content)
      if text ~= "" then content[1] = { type = "text", text = text } end
      for _, tc in ipairs(m.tool_calls) do
        local fn = tab(tc["function"]) or {}
        local input = setmetatable({}, { __jsontype = "object" }) -- {} for every codec
        if str(fn.arguments) and fn.arguments ~= "" then
          if not J then error("to_anthropic_request: a JSON codec is needed for tool calls (opts.json)", 2) end
          input = tab((J.decode(fn.arguments))) or {}
        end
        content[#content + 1] = { type = "tool_use", id = str(tc.id), name = str(fn.name), input = input }
      end
      messages[#messages + 1] = { role = "assistant", content = content }
    elseif role == "user" or role == "assistant" then
      local content = m.content
      if type(content) ~= "string" then content = blocks_of(content) end
      messages[#messages + 1] = { role = role, content = content }
    end
  end

  local req = {
    model = body.model,
    messages = array(J, messages),
    max_tokens = num(body.max_completion_tokens) or num(body.max_tokens) or opts.max_tokens or 1024,
    temperature = num(body.temperature),
    top_p = num(body.top_p),
  }
  if type(body.stream) == "boolean" then req.stream = body.stream end
  if #system > 0 then req.system = concat(system, "\n\n") end
  if str(body.stop) then req.stop_sequences = { body.stop }
  elseif tab(body.stop) and #body.stop > 0 then req.stop_sequences = body.stop end
  if str(body.user) then req.metadata = { user_id = body.user } end
  if tab(body.tools) and #body.tools > 0 then
    local tools = {}
    for i, t in ipairs(body.tools) do
      local fn = tab(t["function"]) or {}
      tools[i] = { name = fn.name, description = fn.description, input_schema = fn.parameters or { type = "object" } }
    end
    req.tools = tools
  end
  local tc = body.tool_choice
  if str(tc) and TOOL_CHOICE[tc] then req.tool_choice = { type = TOOL_CHOICE[tc] }
  elseif tab(tc) and tab(tc["function"]) then req.tool_choice = { type = "tool", name = tc["function"].name } end
  return req
end

return openai
