--- A streaming chat endpoint in front of OpenAI or Anthropic: the browser
--- (or any OpenAI SDK) POSTs a chat request and reads the reply as it is
--- written, in OpenAI's chat.completion.chunk events, whichever the model.
---
---     LLM_BASE_URL=https://api.openai.com/v1 LLM_API_KEY=sk-... sluice .
---     LLM_PROVIDER=anthropic LLM_BASE_URL=https://api.anthropic.com/v1 LLM_API_KEY=... sluice .
---
---     POST /v1/chat/completions {"model","messages"} -> text/event-stream
local sluice = require "sluice"
local openai = require "sluice.openai"

local PROVIDER = os.getenv("LLM_PROVIDER") or "openai" -- or "anthropic"
local BASE = assert(os.getenv("LLM_BASE_URL"), "set LLM_BASE_URL"):gsub("/+$", "")
local KEY = os.getenv("LLM_API_KEY") or ""

-- ": ping" every 5 s while a model thinks keeps proxies from timing out.
local app = sluice.app { heartbeat = 5, heartbeat_comment = "ping" }

--- POSTs the request upstream. Returns the response when it is a 200, or
--- what to answer instead (nothing was sent to the browser yet).
---@param path string
---@param body table
---@param headers table<string, string>
---@return table? res the upstream's response
---@return sluice.Response? answer
local function post(path, body, headers)
  local res, err = sluice.fetch(BASE .. path, { method = "POST", body = body, headers = headers, read_timeout = 300 })
  if not res then return nil, { status = 502, json = openai.error_body(502, "upstream: " .. err) } end
  if res.status ~= 200 then
    return nil, { status = res.status, body = res:text() or "", headers = { ["content-type"] = res.headers["content-type"] } }
  end
  return res
end

--- OpenAI-compatible upstream: its events go through as they are, in C.
---@param req sluice.Request
---@param body table
---@return sluice.Response?
local function from_openai(req, body)
  local res, answer = post("/chat/completions", body, { authorization = "Bearer " .. KEY })
  if not res then return answer end
  local stream = req:sse()
  local ok, err = stream:relay(res)
  if not ok and err ~= "closed" then stream:send { data = openai.error_body(502, "upstream: " .. err) } end
end

--- Anthropic upstream: each Messages event becomes OpenAI chunks.
---@param req sluice.Request
---@param body table
---@return sluice.Response?
local function from_anthropic(req, body)
  local up = openai.to_anthropic_request(body)
  local res, answer = post("/messages", up, { ["x-api-key"] = KEY, ["anthropic-version"] = "2023-06-01" })
  if not res then return answer end
  local conv = openai.from_anthropic { model = body.model }
  local stream = req:sse()
  local chunks, err
  for ev in res:events() do
    chunks, err = conv:event(ev)
    if not chunks then break end
    for _, chunk in ipairs(chunks) do
      if not stream:send { data = chunk } then return end -- the browser left
    end
  end
  if not conv.done then
    stream:send { data = err or openai.error_body(502, "upstream: " .. (res.err or "the stream ended early")) }
  end
  stream:send "[DONE]"
end

app:post("/v1/chat/completions", function(req)
  local body = req:json()
  if type(body) ~= "table" or type(body.messages) ~= "table" then sluice.abort(400, "messages expected") end
  body.stream = true -- this endpoint always streams
  if PROVIDER == "anthropic" then return from_anthropic(req, body) end
  return from_openai(req, body)
end)

return app
