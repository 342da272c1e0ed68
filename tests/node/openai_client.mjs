#!/usr/bin/env node
// One chat completion through the official openai SDK, for the end-to-end
// specs (tests/spec/llm_sdk_spec.lua): the spec runs
//
//   node tests/node/openai_client.mjs '<json request>'
//
// and checks the one JSON line this prints on stdout.  The request:
//   baseURL        the OpenAI-style base, e.g. http://127.0.0.1:8080/v1
//   model, messages, stream, stream_options, max_tokens   passed to the SDK
//   abort_after    (stream) abort with an AbortController once this many
//                  chunks arrived
// The result:
//   { ok, text (the content the SDK assembled), chunks, usage_chunks (chunks
//     carrying usage), usage, finish_reason, id, aborted_at (Date.now() just
//     before abort()), error: { name, status, message, type, code } }
// The client never retries (maxRetries: 0) and gives up after 20 s.
import OpenAI from 'openai';

const req = JSON.parse(process.argv[2] ?? '{}');
const client = new OpenAI({
  baseURL: req.baseURL,
  apiKey: req.apiKey ?? 'sk-test',
  maxRetries: 0,
  timeout: req.timeout ?? 20000,
});

const out = { ok: false, text: '', chunks: 0, usage_chunks: 0, usage: null, finish_reason: null, id: null };

function describe(err) {
  return {
    name: err?.constructor?.name ?? 'Error',
    status: err?.status ?? null,
    message: String(err?.message ?? err),
    type: err?.type ?? err?.error?.type ?? null,
    code: err?.code ?? null,
  };
}

try {
  const params = { model: req.model ?? 'mock-model', messages: req.messages };
  if (req.max_tokens !== undefined) params.max_tokens = req.max_tokens;
  if (req.stream) {
    params.stream = true;
    if (req.stream_options) params.stream_options = req.stream_options;
    const controller = new AbortController();
    const stream = await client.chat.completions.create(params, { signal: controller.signal });
    try {
      for await (const chunk of stream) {
        out.chunks++;
        out.id ??= chunk.id;
        if (chunk.usage) {
          out.usage_chunks++;
          out.usage = chunk.usage;
        }
        const choice = chunk.choices?.[0];
        if (choice?.delta?.content) out.text += choice.delta.content;
        if (choice?.finish_reason) out.finish_reason = choice.finish_reason;
        if (req.abort_after !== undefined && out.chunks >= req.abort_after) {
          out.aborted_at = Date.now();
          controller.abort();
        }
      }
      // After abort() the SDK's iterator just ends (or throws an abort error).
      out.ok = true;
      if (out.aborted_at !== undefined) out.aborted = true;
    } catch (err) {
      if (out.aborted_at !== undefined && err instanceof OpenAI.APIUserAbortError) out.aborted = true;
      else throw err;
    }
  } else {
    const completion = await client.chat.completions.create(params);
    out.id = completion.id;
    out.text = completion.choices?.[0]?.message?.content ?? '';
    out.finish_reason = completion.choices?.[0]?.finish_reason ?? null;
    out.usage = completion.usage ?? null;
    out.ok = true;
  }
} catch (err) {
  out.error = describe(err);
}
process.stdout.write(JSON.stringify(out) + '\n');
