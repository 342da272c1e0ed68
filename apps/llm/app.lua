--- An OpenAI-compatible streaming proxy: point any OpenAI SDK at
--- http://127.0.0.1:8080/v1 and its requests go to the upstream model, with
--- tokens reaching the client the moment they arrive.
---
---     LLM_BASE_URL=https://api.openai.com/v1 LLM_API_KEY=sk-... build/sluice apps/llm
---     LLM_PROVIDER=anthropic LLM_BASE_URL=https://api.anthropic.com/v1 LLM_API_KEY=... build/sluice apps/llm
---     build/sluice apps/llm      # no upstream: a built-in mock model streams
---
--- Environment: LLM_BASE_URL (an OpenAI-style base; "/chat/completions" is
--- appended), LLM_API_KEY, LLM_PROVIDER (openai | anthropic), LLM_PING_INTERVAL
--- (seconds of silence before a ": ping" comment, default 5), and for the
--- mock LLM_MOCK_RATE (tokens/s, default 40) and LLM_MOCK_DELAY (seconds
--- before the first token, default 0.3).
local sluice = require "sluice"
local openai = require "sluice.openai"

local json = sluice.json
local BASE = os.getenv("LLM_BASE_URL")
local KEY = os.getenv("LLM_API_KEY") or ""
local PROVIDER = os.getenv("LLM_PROVIDER") or "openai"
local MOCK_RATE = tonumber(os.getenv("LLM_MOCK_RATE")) or 40
local MOCK_DELAY = tonumber(os.getenv("LLM_MOCK_DELAY")) or 0.3
local PING_INTERVAL = tonumber(os.getenv("LLM_PING_INTERVAL")) or 5

if BASE then BASE = BASE:gsub("/+$", "") end

-- A quiet stream gets ": ping" every 5 s: idle proxies and load balancers
-- keep the connection while a model thinks before its first token.
local app = sluice.app { heartbeat = PING_INTERVAL, heartbeat_comment = "ping", max_body = 4 * 1024 * 1024 }

---@param status integer
---@param message string
---@return sluice.Response
local function fail(status, message)
  return { status = status, json = openai.error_body(status, message) }
end

--- One line per request: model, status, time to first token, duration, usage.
---@class LlmLog
---@field model string
---@field status integer|string
---@field started number
---@field first? number
---@field usage? table
---@field outcome? string "ok", "error" or "client_closed"
local function write_log(l)
  local now = sluice.now()
  local u = l.usage or {}
  sluice.log.info(("llm model=%s provider=%s status=%s outcome=%s ttft_ms=%s duration_ms=%.0f prompt_tokens=%s completion_tokens=%s")
    :format(tostring(l.model), l.provider, tostring(l.status), l.outcome,
            l.first and ("%.0f"):format((l.first - l.started) * 1000) or "-",
            (now - l.started) * 1000, tostring(u.prompt_tokens or "-"), tostring(u.completion_tokens or "-")))
end

--- Ends a stream that failed after it began, the way OpenAI clients expect:
--- an error chunk, then [DONE].
---@param stream sluice.Stream
---@param message string
local function stream_error(stream, message)
  stream:send { data = { error = { message = message, type = "upstream_error" } } }
  stream:send "[DONE]"
end

--- Whether a streaming client asked for the usage chunk itself.
---@param body table
---@return boolean
local function wants_usage(body)
  return body.stream == true and type(body.stream_options) == "table" and body.stream_options.include_usage == true
end

--- POSTs `up` to BASE .. path and notes the status for the log.
---@return sluice.Response|nil res, sluice.Response? failure the 502 to answer when the upstream is unreachable
local function post_upstream(path, up, headers, l)
  local res, err = sluice.fetch(BASE .. path, { method = "POST", body = up, read_timeout = 600, headers = headers })
  l.status = res and res.status or 502
  if not res then return nil, fail(502, "upstream: " .. err) end
  return res
end

-------------------------------------------------------------- OpenAI upstream

---@param req sluice.Request
---@param body table the client's request
---@param l LlmLog
local function from_openai(req, body, l)
  local client_usage = wants_usage(body)
  local up = body
  if body.stream and not client_usage then
    -- Ask for usage for our log; the extra chunk is kept from the client.
    up = {}
    for k, v in pairs(body) do up[k] = v end
    up.stream_options = { include_usage = true }
  end
  local res, failure = post_upstream("/chat/completions", up,
    { authorization = "Bearer " .. KEY, accept = body.stream and "text/event-stream" or "application/json" }, l)
  if not res then return failure end
  if res.status ~= 200 then
    -- Nothing went to the client yet: it gets the upstream's own answer.
    local text = res:text() or ""
    return { status = res.status, body = text, headers = {
      ["content-type"] = res.headers["content-type"] or "application/json",
      ["retry-after"] = res.headers["retry-after"],
    } }
  end
  if not body.stream then
    local text, terr = res:text()
    if not text then return fail(502, "upstream: " .. terr) end
    local parsed = json.decode(text)
    l.usage = type(parsed) == "table" and type(parsed.usage) == "table" and parsed.usage or nil
    return { status = 200, body = text, headers = { ["content-type"] = "application/json" } }
  end

  local stream = req:sse()
  local done, errored = false, false
  local ok, rerr = stream:relay(res, function(ev)
    l.first = l.first or sluice.now()
    local data = ev.data
    if data == "[DONE]" then
      done = true
    elseif data:find('"usage":{', 1, true) then
      local chunk = json.decode(data)
      if type(chunk) == "table" and type(chunk.usage) == "table" then
        l.usage = chunk.usage
        if not client_usage and type(chunk.choices) == "table" and #chunk.choices == 0 then return nil end
      end
    elseif data:find('"error":', 1, true) and data:sub(1, 9) == '{"error":' then
      errored = true
    end
    return ev
  end)
  if rerr == "closed" then return end
  if not ok then
    stream_error(stream, "upstream: " .. tostring(rerr))
  elseif not done then
    if errored then stream:send "[DONE]" else stream_error(stream, "upstream ended the stream early") end
  end
end

----------------------------------------------------------- Anthropic upstream

---@param req sluice.Request
---@param body table
---@param l LlmLog
local function from_anthropic(req, body, l)
  local client_usage = wants_usage(body)
  local up = openai.to_anthropic_request(body)
  up.stream = true -- streamed either way: a non-stream answer is assembled here
  local res, failure = post_upstream("/messages", up,
    { ["x-api-key"] = KEY, ["anthropic-version"] = "2023-06-01", accept = "text/event-stream" }, l)
  if not res then return failure end
  if res.status ~= 200 then
    local text = res:text() or ""
    local e = json.decode(text)
    local msg = type(e) == "table" and type(e.error) == "table" and e.error.message or text
    return { status = res.status, json = openai.error_body(res.status, msg),
             headers = { ["retry-after"] = res.headers["retry-after"] } }
  end
  local conv = openai.from_anthropic { model = body.model, usage_chunk = client_usage }
  if not body.stream then
    local acc = openai.accumulate()
    for ev in res:events() do
      local chunks, cerr = conv:event(ev)
      if not chunks then return { status = 502, json = cerr } end
      for _, c in ipairs(chunks) do acc:add(c) end
    end
    l.usage = conv.usage
    if not conv.done then return fail(502, "upstream: " .. (res.err or "stream ended early")) end
    return { json = acc:completion() }
  end
  local stream = req:sse()
  for ev in res:events() do
    l.first = l.first or sluice.now()
    local chunks, cerr = conv:event(ev)
    if not chunks then
      stream:send { data = cerr }
      stream:send "[DONE]"
      return
    end
    for _, c in ipairs(chunks) do
      if not stream:send { data = c } then return end
    end
  end
  l.usage = conv.usage
  if conv.done then
    stream:send "[DONE]"
  else
    stream_error(stream, "upstream: " .. (res.err or "stream ended early"))
  end
end

------------------------------------------------------------------ mock model

local MOCK_TEXT = "This reply streams from sluice's built-in mock model, one token at a time, "
  .. "so the proxy, its pings and the stop button can be tried without an API key. "
  .. "Set LLM_BASE_URL and LLM_API_KEY to talk to a real model."

--- The mock's reply: an echo of the last user message, then the fixed text.
---@param body table
---@return string[] tokens
local function mock_tokens(body)
  local last = ""
  for _, m in ipairs(body.messages) do
    if type(m) == "table" and m.role == "user" and type(m.content) == "string" then last = m.content end
  end
  local text = (last ~= "" and ("You said: " .. last:sub(1, 200) .. ". ") or "") .. MOCK_TEXT
  local tokens = {}
  for tok in text:gmatch("%s*%S+") do tokens[#tokens + 1] = tok end
  local max = math.tointeger(body.max_completion_tokens or body.max_tokens)
  if max and max > 0 and max < #tokens then
    for i = #tokens, max + 1, -1 do tokens[i] = nil end
  end
  return tokens
end

---@param req sluice.Request
---@param body table
---@param l LlmLog
local function from_mock(req, body, l)
  local tokens = mock_tokens(body)
  local id = ("chatcmpl-sluice-%d"):format(math.floor(sluice.now() * 1000))
  local created = os.time()
  local model = body.model or "sluice-mock"
  local usage = { prompt_tokens = #body.messages, completion_tokens = #tokens,
                  total_tokens = #body.messages + #tokens }
  l.status = 200
  if not body.stream then
    sluice.sleep(MOCK_DELAY)
    l.first, l.usage = sluice.now(), usage
    return { json = { id = id, object = "chat.completion", created = created, model = model,
      choices = { { index = 0, finish_reason = "stop",
                    message = { role = "assistant", content = table.concat(tokens) } } },
      usage = usage } }
  end
  local function chunk(delta, finish)
    return { data = { id = id, object = "chat.completion.chunk", created = created, model = model,
      choices = { { index = 0, delta = delta, finish_reason = finish or json.null } } } }
  end
  local stream = req:sse()
  sluice.sleep(MOCK_DELAY)
  l.first = sluice.now()
  if not stream:send(chunk { role = "assistant", content = "" }) then return end
  for _, tok in ipairs(tokens) do
    if not stream:send(chunk { content = tok }) then return end
    sluice.sleep(1 / MOCK_RATE)
  end
  stream:send(chunk({}, "stop")) -- an empty table encodes as {}
  if type(body.stream_options) == "table" and body.stream_options.include_usage then
    stream:send { data = { id = id, object = "chat.completion.chunk", created = created, model = model,
                           choices = json.array {}, usage = usage } }
  end
  l.usage = usage
  stream:send "[DONE]"
end

---------------------------------------------------------------------- routes

--- POST /v1/chat/completions: the OpenAI Chat Completions API.
---@param req sluice.Request
local function completions(req)
  local body = req:json()
  if type(body) ~= "table" or type(body.messages) ~= "table" or #body.messages == 0 then
    return fail(400, "'messages' must be a non-empty array")
  end
  local provider = BASE and PROVIDER or "mock"
  local l = { model = body.model, provider = provider, status = "-", started = sluice.now() }
  -- Logged however the request ends: also when the client leaves mid-stream
  -- and the handler is ended where it waits (then no outcome was set).
  local _ <close> = setmetatable({}, { __close = function(_, err)
    l.outcome = l.outcome or (err and "error") or "client_closed"
    write_log(l)
  end })
  local handle = provider == "mock" and from_mock or provider == "anthropic" and from_anthropic or from_openai
  local res = handle(req, body, l)
  l.outcome = "ok"
  return res
end

--- GET /v1/models: what the proxy fronts (OpenAI SDKs ask for it).
local function models()
  return { json = { object = "list", data = { { id = BASE and "upstream" or "sluice-mock",
                                                 object = "model", owned_by = PROVIDER } } } }
end

app:post("/v1/chat/completions", completions)
app:get("/v1/models", models)
app:get("/", function() return { status = 302, headers = { location = "/index.html" } } end)
-- The page names its icon (inline), but a browser may still ask for
-- /favicon.ico: an empty answer keeps a 404 out of its console.
app:get("/favicon.ico", function() return { status = 204 } end)

return app
