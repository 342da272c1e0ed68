-- Unit specs for lua/sluice/openai.lua: pure Lua, dkjson as the codec.
local openai = require "sluice.openai"
local json = require "dkjson"

-- A decoder that keeps JSON nulls as dkjson.null, the way a codec with a
-- null sentinel (sluice.json) hands them over.
local function decode_nulls(s) return json.decode(s, 1, json.null) end

-- Cuts a string into pieces of 1..max bytes (deterministic).
local function cut(s, seed, max)
  local pieces, i, x = {}, 1, seed
  while i <= #s do
    x = (x * 1103515245 + 12345) % 2147483648
    local n = 1 + x % max
    pieces[#pieces + 1] = s:sub(i, i + n - 1)
    i = i + n
  end
  return pieces
end

-- The data of every event in an SSE text (LF only; enough for fixtures).
local function sse_events(text)
  local events, ev = {}, {}
  for line in (text .. "\n"):gmatch("(.-)\n") do
    if line == "" then
      if ev.data then events[#events + 1] = ev end
      ev = {}
    elseif line:sub(1, 1) ~= ":" then
      local field, value = line:match("^([^:]*):? ?(.*)$")
      if field == "data" then ev.data = ev.data and (ev.data .. "\n" .. value) or value
      elseif field == "event" then ev.event = value end
    end
  end
  return events
end

local function chunk_json(id, choices, extra)
  local t = { id = id, object = "chat.completion.chunk", created = 1700000000, model = "gpt-test",
              choices = setmetatable(choices, { __jsontype = "array" }) }
  for k, v in pairs(extra or {}) do t[k] = v end
  return json.encode(t)
end

describe("openai.accumulate", function()
  local TEXT = "Hello, wörld! Tokens arrive in pieces — some of them tiny, some not. 😀 Done."

  it("reassembles content split arbitrarily, with usage and nulls", function()
    for seed = 1, 20 do
      local acc = openai.accumulate{ json = json }
      local stream = {
        '{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1700000000,"model":"gpt-test",'
          .. '"system_fingerprint":"fp_1","choices":[{"index":0,"delta":{"role":"assistant","content":"",'
          .. '"refusal":null},"logprobs":null,"finish_reason":null}],"usage":null}',
      }
      for _, piece in ipairs(cut(TEXT, seed, 1 + seed % 9)) do
        stream[#stream + 1] = chunk_json("chatcmpl-1", {
          { index = 0, delta = { content = piece }, logprobs = json.null, finish_reason = json.null } },
          { usage = json.null })
      end
      stream[#stream + 1] = chunk_json("chatcmpl-1",
        { { index = 0, delta = {}, finish_reason = "stop" } }, { usage = json.null })
      stream[#stream + 1] = chunk_json("chatcmpl-1", {},
        { usage = { prompt_tokens = 12, completion_tokens = 30, total_tokens = 42 } })
      for _, s in ipairs(stream) do
        assert.is_true(acc:add(decode_nulls(s)))
      end
      assert.equal(TEXT, acc:text())
      assert.equal(TEXT, acc:text(0))
      assert.equal("", acc:text(1))
      assert.equal("stop", acc.finish_reason)
      assert.same({ prompt_tokens = 12, completion_tokens = 30, total_tokens = 42 }, acc.usage)
      assert.equal("chatcmpl-1", acc.id)
      assert.equal("gpt-test", acc.model)
      assert.equal(1700000000, acc.created)
      assert.equal("fp_1", acc.system_fingerprint)
      assert.equal("assistant", acc.choices[0].role)
      assert.equal(#stream, acc.chunks)
    end
  end)

  it("accepts chunks decoded with nulls as nil", function()
    local acc = openai.accumulate()
    acc:add(json.decode('{"choices":[{"index":0,"delta":{"role":"assistant","content":null},"finish_reason":null}],"usage":null}'))
    acc:add(json.decode('{"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}]}'))
    acc:add(json.decode('{"choices":[{"index":0,"delta":{},"finish_reason":"length"}]}'))
    assert.equal("hi", acc:text())
    assert.equal("length", acc.finish_reason)
    assert.is_nil(acc.usage)
  end)

  it("keeps several choices apart, by index, interleaved", function()
    local acc = openai.accumulate{ json = json }
    local a, b = cut("first answer, in many bits", 3, 4), cut("second — answer", 5, 3)
    acc:add{ choices = { { index = 0, delta = { role = "assistant", content = "" } },
                         { index = 1, delta = { role = "assistant", content = "" } } } }
    for i = 1, math.max(#a, #b) do
      -- sometimes both in one chunk, sometimes one per chunk, order varies
      if a[i] and b[i] and i % 2 == 0 then
        acc:add{ choices = { { index = 1, delta = { content = b[i] } }, { index = 0, delta = { content = a[i] } } } }
      else
        if b[i] then acc:add{ choices = { { index = 1, delta = { content = b[i] } } } } end
        if a[i] then acc:add{ choices = { { index = 0, delta = { content = a[i] } } } } end
      end
    end
    acc:add{ choices = { { index = 1, delta = {}, finish_reason = "length" } } }
    acc:add{ choices = { { index = 0, delta = {}, finish_reason = "stop" } } }
    assert.equal("first answer, in many bits", acc:text(0))
    assert.equal("second — answer", acc:text(1))
    assert.equal("stop", acc.finish_reason)
    assert.equal("length", acc.choices[1].finish_reason)

    local c = acc:completion()
    assert.equal(2, #c.choices)
    assert.equal(0, c.choices[1].index)
    assert.equal("second — answer", c.choices[2].message.content)
    assert.equal("length", c.choices[2].finish_reason)
  end)

  it("concatenates tool call deltas by index", function()
    local acc = openai.accumulate{ json = json }
    acc:add{ choices = { { index = 0, delta = { role = "assistant", content = json.null } } } }
    acc:add{ choices = { { index = 0, delta = { tool_calls = {
      { index = 0, id = "call_a", type = "function", ["function"] = { name = "get_weather", arguments = "" } } } } } } }
    acc:add{ choices = { { index = 0, delta = { tool_calls = {
      { index = 1, id = "call_b", type = "function", ["function"] = { name = "get_time", arguments = '{"tz"' } } } } } } }
    acc:add{ choices = { { index = 0, delta = { tool_calls = { { index = 0, ["function"] = { arguments = '{"city":' } } } } } } }
    acc:add{ choices = { { index = 0, delta = { tool_calls = { { index = 1, ["function"] = { arguments = ':"UTC"}' } } } } } } }
    acc:add{ choices = { { index = 0, delta = { tool_calls = { { index = 0, ["function"] = { arguments = '"Paris"}' } } } } } } }
    acc:add{ choices = { { index = 0, delta = {}, finish_reason = "tool_calls" } } }

    assert.same({
      { id = "call_a", type = "function", ["function"] = { name = "get_weather", arguments = '{"city":"Paris"}' } },
      { id = "call_b", type = "function", ["function"] = { name = "get_time", arguments = '{"tz":"UTC"}' } },
    }, acc:tool_calls())
    assert.same({}, acc:tool_calls(3))
    local c = acc:completion()
    assert.equal(json.null, c.choices[1].message.content)
    assert.equal("tool_calls", c.choices[1].finish_reason)
    assert.equal(2, #c.choices[1].message.tool_calls)
  end)

  it("builds a chat.completion that encodes like OpenAI's", function()
    local acc = openai.accumulate{ json = json }
    for _, ev in ipairs(sse_events(table.concat({
      'data: {"id":"chatcmpl-9","object":"chat.completion.chunk","created":1700000001,"model":"gpt-x","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}',
      "",
      ": keepalive",
      "",
      'data: {"id":"chatcmpl-9","object":"chat.completion.chunk","created":1700000001,"model":"gpt-x","choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}',
      "",
      'data: {"id":"chatcmpl-9","object":"chat.completion.chunk","created":1700000001,"model":"gpt-x","choices":[{"index":0,"delta":{"content":" there"},"finish_reason":null}]}',
      "",
      'data: {"id":"chatcmpl-9","object":"chat.completion.chunk","created":1700000001,"model":"gpt-x","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}',
      "",
      'data: {"id":"chatcmpl-9","object":"chat.completion.chunk","created":1700000001,"model":"gpt-x","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}',
      "",
      "data: [DONE]",
      "",
    }, "\n"))) do
      if ev.data ~= "[DONE]" then acc:add(decode_nulls(ev.data)) end
    end
    local c = acc:completion()
    assert.same({
      id = "chatcmpl-9", object = "chat.completion", created = 1700000001, model = "gpt-x",
      choices = { { index = 0, message = { role = "assistant", content = "Hi there", refusal = json.null },
                    logprobs = json.null, finish_reason = "stop" } },
      usage = { prompt_tokens = 3, completion_tokens = 2, total_tokens = 5 },
    }, c)
    local back = json.decode(json.encode(c))
    assert.equal("Hi there", back.choices[1].message.content)
    assert.truthy(json.encode(c):find('"refusal":null', 1, true))
  end)

  it("reports an in-band error chunk", function()
    local acc = openai.accumulate()
    acc:add{ choices = { { index = 0, delta = { content = "par" } } } }
    local ok, err = acc:add(json.decode('{"error":{"message":"boom","type":"server_error","code":null}}'))
    assert.is_nil(ok)
    assert.same({ message = "boom", type = "server_error" }, err)
    assert.equal(err, acc.error)
    assert.equal("par", acc:text())
  end)

  it("raises on misuse", function()
    local acc = openai.accumulate()
    assert.has_error(function() acc:add("data: {}") end, "accumulate: chunk must be a table")
  end)
end)

describe("openai.from_anthropic", function()
  -- A Messages stream as the API sends it, ping and all.
  local STREAM = {
    { event = "message_start", data = '{"type":"message_start","message":{"id":"msg_01XYZ","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":25,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":1}}}' },
    { event = "content_block_start", data = '{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}' },
    { event = "ping", data = '{"type": "ping"}' },
    { event = "content_block_delta", data = '{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}' },
    { event = "content_block_delta", data = '{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":", wörld"}}' },
    { event = "ping", data = '{"type": "ping"}' },
    { event = "content_block_delta", data = '{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"!\\nBye."}}' },
    { event = "content_block_stop", data = '{"type":"content_block_stop","index":0}' },
    { event = "message_delta", data = '{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":15}}' },
    { event = "message_stop", data = '{"type":"message_stop"}' },
  }

  local function run(conv, events)
    local all, per = {}, {}
    for i, ev in ipairs(events) do
      local chunks, err = conv:event(ev)
      assert.is_nil(err)
      per[i] = #chunks
      for _, c in ipairs(chunks) do all[#all + 1] = c end
    end
    return all, per
  end

  it("presents a full Messages stream as chat.completion chunks", function()
    local conv = openai.from_anthropic{ json = json, created = 1700000002 }
    local chunks, per = run(conv, STREAM)
    -- role, three contents, finish; nothing for block start/stop, pings, message_stop
    assert.same({ 1, 0, 0, 1, 1, 0, 1, 0, 1, 0 }, per)
    assert.equal(5, #chunks)
    for _, c in ipairs(chunks) do
      assert.equal("msg_01XYZ", c.id)
      assert.equal("chat.completion.chunk", c.object)
      assert.equal("claude-sonnet-4-5", c.model)
      assert.equal(1700000002, c.created)
      assert.equal(1, #c.choices)
      assert.equal(0, c.choices[1].index)
    end
    assert.same({ role = "assistant", content = "" }, chunks[1].choices[1].delta)
    assert.equal(json.null, chunks[1].choices[1].finish_reason)
    assert.same({ content = "Hello" }, chunks[2].choices[1].delta)
    assert.same({ content = "!\nBye." }, chunks[4].choices[1].delta)
    assert.same({}, chunks[5].choices[1].delta)
    assert.equal("stop", chunks[5].choices[1].finish_reason)
    assert.same({ prompt_tokens = 25, completion_tokens = 15, total_tokens = 40 }, chunks[5].usage)
    assert.same(chunks[5].usage, conv.usage)
    assert.equal("stop", conv.finish_reason)
    assert.is_true(conv.done)

    -- what a client receives reassembles with the accumulator
    local acc = openai.accumulate{ json = json }
    for _, c in ipairs(chunks) do
      local wire = json.encode(c)
      assert.truthy(wire:find('"choices":[', 1, true))
      acc:add(decode_nulls(wire))
    end
    assert.equal("Hello, wörld!\nBye.", acc:text())
    assert.equal("stop", acc.finish_reason)
    assert.equal(40, acc.usage.total_tokens)
    assert.equal("msg_01XYZ", acc:completion().id)
  end)

  it("is done only at message_stop, and ignores what follows", function()
    local conv = openai.from_anthropic{ json = json }
    for i = 1, #STREAM - 1 do conv:event(STREAM[i]) end
    assert.is_false(conv.done)
    assert.same({}, conv:event(STREAM[#STREAM]))
    assert.is_true(conv.done)
  end)

  it("maps stop reasons to finish reasons", function()
    for reason, finish in pairs{ end_turn = "stop", max_tokens = "length", stop_sequence = "stop",
                                 tool_use = "tool_calls", something_new = "stop" } do
      local conv = openai.from_anthropic{ json = json }
      conv:event(STREAM[1])
      local chunks = conv:event{ event = "message_delta", data = json.encode{
        type = "message_delta", delta = { stop_reason = reason }, usage = { output_tokens = 3 } } }
      assert.equal(finish, chunks[1].choices[1].finish_reason)
      assert.equal(finish, conv.finish_reason)
    end
  end)

  it("puts usage in a trailing chunk when asked, the include_usage shape", function()
    local conv = openai.from_anthropic{ json = json, usage_chunk = true }
    local chunks = run(conv, STREAM)
    assert.equal(6, #chunks)
    assert.equal("stop", chunks[5].choices[1].finish_reason)
    assert.is_nil(chunks[5].usage)
    assert.same({}, chunks[6].choices)
    assert.truthy(json.encode(chunks[6]):find('"choices":[]', 1, true))
    assert.same({ prompt_tokens = 25, completion_tokens = 15, total_tokens = 40 }, chunks[6].usage)
  end)

  it("counts cached prompt tokens and a late input_tokens", function()
    local conv = openai.from_anthropic{ json = json }
    conv:event{ event = "message_start", data = '{"type":"message_start","message":{"id":"m","model":"c","usage":{"input_tokens":5,"cache_read_input_tokens":100,"cache_creation_input_tokens":20,"output_tokens":1}}}' }
    local chunks = conv:event{ event = "message_delta", data = '{"type":"message_delta","delta":{"stop_reason":"max_tokens"},"usage":{"output_tokens":7}}' }
    assert.same({ prompt_tokens = 125, completion_tokens = 7, total_tokens = 132,
                  prompt_tokens_details = { cached_tokens = 100 } }, chunks[1].usage)
    chunks = conv:event{ event = "message_delta", data = '{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"input_tokens":6,"output_tokens":8}}' }
    assert.equal(6, chunks[1].usage.prompt_tokens)
    assert.equal(14, chunks[1].usage.total_tokens)
  end)

  it("returns an OpenAI-shaped error for an error event", function()
    local conv = openai.from_anthropic{ json = json }
    run(conv, { STREAM[1], STREAM[2], STREAM[4] })
    local chunks, err = conv:event{ event = "error",
      data = '{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}' }
    assert.is_nil(chunks)
    assert.same({ error = { message = "Overloaded", type = "overloaded_error",
                            param = json.null, code = json.null } }, err)
    assert.equal('{"error":{"code":null,"message":"Overloaded","param":null,"type":"overloaded_error"}}',
                 json.encode(err, { keyorder = { "code", "message", "param", "type" } }))
    assert.is_false(conv.done)
  end)

  it("returns an error for an event that is not JSON", function()
    local conv = openai.from_anthropic{ json = json }
    local chunks, err = conv:event{ event = "content_block_delta", data = '{"type":' }
    assert.is_nil(chunks)
    assert.equal("upstream_error", err.error.type)
    assert.truthy(err.error.message:find("bad upstream event", 1, true))
  end)

  it("falls back on data.type, and takes decoded data", function()
    local conv = openai.from_anthropic{ json = json, model = "fallback" }
    local chunks = conv:event{ data = '{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"x"}}' }
    assert.equal("x", chunks[1].choices[1].delta.content)
    assert.equal("fallback", chunks[1].model)
    chunks = conv:event{ event = "content_block_delta",
      data = { type = "content_block_delta", index = 0, delta = { type = "text_delta", text = "y" } } }
    assert.equal("y", chunks[1].choices[1].delta.content)
    assert.same({}, conv:event{ event = "content_block_delta",
      data = '{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"hmm"}}' })
    assert.same({}, conv:event{ event = "something_new", data = '{"type":"something_new"}' })
    assert.same({}, conv:event{ event = "ping" })
  end)

  it("presents tool_use blocks as tool_calls deltas", function()
    local conv = openai.from_anthropic{ json = json }
    local acc = openai.accumulate{ json = json }
    for _, ev in ipairs{
      STREAM[1],
      { event = "content_block_start", data = '{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}' },
      { event = "content_block_delta", data = '{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Let me check."}}' },
      { event = "content_block_stop", data = '{"type":"content_block_stop","index":0}' },
      { event = "content_block_start", data = '{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_01","name":"get_weather","input":{}}}' },
      { event = "content_block_delta", data = '{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":""}}' },
      { event = "content_block_delta", data = '{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\\"city\\": "}}' },
      { event = "content_block_delta", data = '{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"\\"Paris\\"}"}}' },
      { event = "content_block_stop", data = '{"type":"content_block_stop","index":1}' },
      { event = "message_delta", data = '{"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"output_tokens":40}}' },
      { event = "message_stop", data = '{"type":"message_stop"}' },
    } do
      for _, c in ipairs(assert(conv:event(ev))) do acc:add(decode_nulls(json.encode(c))) end
    end
    assert.equal("Let me check.", acc:text())
    assert.same({ { id = "toolu_01", type = "function",
                    ["function"] = { name = "get_weather", arguments = '{"city": "Paris"}' } } }, acc:tool_calls())
    assert.equal("tool_calls", acc.finish_reason)
  end)

  it("needs a codec when the C core is absent", function()
    if pcall(require, "sluice.core") then return end
    assert.has_error(function() openai.from_anthropic() end,
                     "from_anthropic: a JSON codec is needed (opts.json)")
  end)
end)

describe("openai.to_anthropic_request", function()
  it("maps a chat request", function()
    local req = openai.to_anthropic_request{
      model = "claude-sonnet-4-5", stream = true, temperature = 0.2, top_p = 0.9, stop = "END",
      stream_options = { include_usage = true }, n = 1, user = "u-42",
      messages = {
        { role = "system", content = "You are terse." },
        { role = "user", content = "Hi" },
        { role = "assistant", content = "Hello." },
        { role = "developer", content = { { type = "text", text = "Answer in French." } } },
        { role = "user", content = "How are you?" },
      },
    }
    assert.same({
      model = "claude-sonnet-4-5", stream = true, max_tokens = 1024, temperature = 0.2, top_p = 0.9,
      system = "You are terse.\n\nAnswer in French.",
      stop_sequences = { "END" },
      metadata = { user_id = "u-42" },
      messages = {
        { role = "user", content = "Hi" },
        { role = "assistant", content = "Hello." },
        { role = "user", content = "How are you?" },
      },
    }, req)
  end)

  it("takes max_tokens from the request, or the default given", function()
    assert.equal(50, openai.to_anthropic_request{ max_tokens = 50, messages = {} }.max_tokens)
    assert.equal(60, openai.to_anthropic_request{ max_tokens = 50, max_completion_tokens = 60, messages = {} }.max_tokens)
    assert.equal(4096, openai.to_anthropic_request({ messages = {} }, { max_tokens = 4096 }).max_tokens)
    local plain = openai.to_anthropic_request{ model = "m", messages = { { role = "user", content = "x" } } }
    assert.is_nil(plain.stream)
    assert.is_nil(plain.system)
    assert.is_false(openai.to_anthropic_request{ stream = false, messages = {} }.stream)
  end)

  it("maps content parts and images", function()
    local req = openai.to_anthropic_request{ messages = { { role = "user", content = {
      { type = "text", text = "What is this?" },
      { type = "image_url", image_url = { url = "data:image/png;base64,iVBORw0KGgo=" } },
      { type = "image_url", image_url = { url = "https://example.com/cat.jpg" } },
    } } } }
    assert.same({
      { type = "text", text = "What is this?" },
      { type = "image", source = { type = "base64", media_type = "image/png", data = "iVBORw0KGgo=" } },
      { type = "image", source = { type = "url", url = "https://example.com/cat.jpg" } },
    }, req.messages[1].content)
  end)

  it("maps tools, tool calls and tool results", function()
    local req = openai.to_anthropic_request({
      messages = {
        { role = "user", content = "Weather in Paris and Rome?" },
        { role = "assistant", content = json.null, tool_calls = {
          { id = "call_1", type = "function", ["function"] = { name = "get_weather", arguments = '{"city":"Paris"}' } },
          { id = "call_2", type = "function", ["function"] = { name = "get_weather", arguments = "" } },
        } },
        { role = "tool", tool_call_id = "call_1", content = "18C" },
        { role = "tool", tool_call_id = "call_2", content = { { type = "text", text = "21C" } } },
      },
      tools = { { type = "function", ["function"] = { name = "get_weather", description = "Weather now",
        parameters = { type = "object", properties = { city = { type = "string" } } } } } },
      tool_choice = "required",
    }, { json = json })
    assert.same({ type = "tool_use", id = "call_1", name = "get_weather", input = { city = "Paris" } },
                req.messages[2].content[1])
    assert.equal(2, #req.messages[2].content)
    assert.equal(3, #req.messages)
    assert.same({ role = "user", content = {
      { type = "tool_result", tool_use_id = "call_1", content = "18C" },
      { type = "tool_result", tool_use_id = "call_2", content = "21C" },
    } }, req.messages[3])
    assert.same({ { name = "get_weather", description = "Weather now",
                    input_schema = { type = "object", properties = { city = { type = "string" } } } } }, req.tools)
    assert.same({ type = "any" }, req.tool_choice)
    -- an empty input is a JSON object, not an array
    assert.truthy(json.encode(req):find('"input":{}', 1, true))
    assert.same({ type = "tool", name = "f" }, openai.to_anthropic_request{ messages = {},
      tool_choice = { type = "function", ["function"] = { name = "f" } } }.tool_choice)
  end)
end)

describe("openai.error_body", function()
  it("shapes errors the OpenAI way", function()
    local cases = { [400] = "invalid_request_error", [401] = "authentication_error",
                    [404] = "not_found_error", [429] = "rate_limit_error",
                    [500] = "server_error", [502] = "server_error", [418] = "invalid_request_error" }
    for status, type_ in pairs(cases) do
      local e = openai.error_body(status, "nope")
      assert.equal("nope", e.error.message)
      assert.equal(type_, e.error.type)
    end
    assert.same({ error = { message = "upstream answered 503", type = "upstream_error", code = "x" } },
                openai.error_body(503, nil, "upstream_error", "x"))
  end)
end)
