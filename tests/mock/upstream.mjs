#!/usr/bin/env node
// A mock LLM API for the integration tests: the upstream that sluice proxies
// to.  Plain node:http, no packages, no code shared with apps/llm's Lua mock.
//
//   node tests/mock/upstream.mjs [--port N] [--host H] [--exit-with-parent]
//
// --port (or PORT; default 0 = any free port), --host (default 127.0.0.1);
// --exit-with-parent: exit when the process that started it is gone (so a
// crashed test run leaves no mock behind).
// When listening it prints one line on stdout, {"port":N,"pid":P}, and
// nothing else ever goes to stdout (diagnostics go to stderr).
//
// Routes
//   POST /v1/chat/completions   OpenAI Chat Completions.  `stream: true`:
//       text/event-stream of chat.completion.chunk events: a role chunk
//       (delta {role:"assistant", content:""}), one chunk per token
//       (delta {content}), a chunk with finish_reason, then, when
//       stream_options.include_usage is true, a usage chunk (choices: [];
//       every earlier chunk then carries "usage": null), then `data: [DONE]`.
//       Otherwise one chat.completion JSON with the whole text and usage.
//   POST /v1/messages           Anthropic Messages.  `stream: true`:
//       message_start, content_block_start, ping, content_block_delta (one
//       text_delta per token), content_block_stop, message_delta (stop_reason,
//       usage.output_tokens), message_stop.  Otherwise one `message` JSON.
//   anything else               404 with an OpenAI-style error body.
//
// The reply is deterministic.  Its tokens are the text cut before each run
// of whitespace (/\s*\S+/u, so the tokens concatenate back to the text
// exactly); the default text is DEFAULT_TEXT below.  finish_reason is "stop"
// ("end_turn"), or "length" ("max_tokens") when the body's max_tokens /
// max_completion_tokens cut the reply short.  Usage: prompt_tokens is the
// number of whitespace-separated words in the request's messages (and
// system), at least 1; completion_tokens is the number of tokens sent.
// Ids: chatcmpl-mock-<n> / msg_mock_<n>, n = the request's log id.
//
// Knobs: a request header X-Mock-<Name>, or else the default set with
// POST /_mock/config {"<name>": value, ...} (for when the proxy in between
// does not forward X-Mock-* headers).  Names are case-insensitive.
//   X-Mock-Text: str              reply text (percent-decoded, so UTF-8 can be
//                                 sent as %C3%A9; left as is when malformed)
//   X-Mock-Tokens: N              reply exactly N tokens, cycling through the
//                                 text's tokens (more) or cutting them (fewer)
//   X-Mock-Split: none|every-byte|random
//                                 how the response bytes are cut into writes:
//                                 none = one write per event (default);
//                                 every-byte = one write per byte; random =
//                                 pieces of 1..16 bytes.  Cuts ignore UTF-8
//                                 and line boundaries.  Applies to JSON
//                                 bodies too.  Each write is its own HTTP
//                                 chunk and leaves at once (no Nagle).
//   X-Mock-Split-Delay: ms        pause between the pieces (default: one
//                                 setImmediate turn)
//   X-Mock-Seed: N                seed for `random` (default: random; the
//                                 seed used is in the log entry)
//   X-Mock-Newline: lf|crlf|cr    line ending of every SSE line (default lf)
//   X-Mock-Comments: 1            (0 = off) open the stream with a `: ping` block, put a
//                                 `: ping` block between events and a
//                                 `: comment` line inside each event
//   X-Mock-First-Token-Delay: ms  wait after the headers, before the first
//                                 event (non-stream: before the body)
//   X-Mock-Token-Delay: ms        wait before each token after the first
//   X-Mock-Status: code           answer that status (>= 400) with the
//                                 provider's error JSON; 429, 503 and 529
//                                 carry retry-after: 1
//   X-Mock-Fail-After: N          stream: destroy the socket once N tokens
//                                 went out (0 = right after the role chunk /
//                                 the opening events); non-stream: destroy it
//                                 halfway through the body
//   X-Mock-Error-Event: N         stream: after N tokens send an in-band error
//                                 and end the response cleanly.  Anthropic:
//                                 `event: error` with {"type":"error","error":
//                                 {"type":"overloaded_error",...}}; OpenAI:
//                                 `data: {"error":{...}}` (no [DONE])
//
// Observability
//   GET  /_mock/log     JSON array, one entry per request seen (not /_mock/*):
//        { id, method, path, query, headers (lower-case), body (parsed JSON,
//          else the raw string, else null), knobs (the knobs in effect, by
//          name), seed (random split only, else null), stream (bool),
//          status (null until the response starts), started_at (ms since
//          epoch, Date.now(), when the request arrived), first_byte_at
//          (when the first body byte was written), tokens_sent, bytes_sent
//          (body bytes handed to the socket, so far), closed_at (when the
//          exchange ended, null while open), completed (the response was
//          written in full), outcome: null | "completed" | "client_closed"
//          (the client went away first) | "mock_failed" (Fail-After) }
//   POST /_mock/reset   forget the log and the config defaults; ids restart at 1
//   GET|POST /_mock/config   read | replace the knob defaults (JSON object)
//
// The writer respects backpressure: a client that stops reading stalls the
// mock (watch tokens_sent) rather than filling memory.

import http from 'node:http';
import { setTimeout as sleep, setImmediate as nextTurn } from 'node:timers/promises';

const DEFAULT_TEXT =
  'Hello! I am the mock model, streaming one token at a time — déjà vu, 100% deterministic.';
const KNOBS = ['text', 'tokens', 'split', 'split-delay', 'seed', 'newline', 'comments',
  'first-token-delay', 'token-delay', 'status', 'fail-after', 'error-event'];
const NEWLINES = { lf: '\n', crlf: '\r\n', cr: '\r' };
const MAX_PIECE = 16;

let log = [];
let config = {};
let seq = 0;

// ---------------------------------------------------------------- helpers

function knobsOf(req) {
  const k = {};
  const lower = Object.fromEntries(Object.entries(config).map(([n, v]) => [n.toLowerCase(), v]));
  for (const name of KNOBS) {
    let v = req.headers['x-mock-' + name];
    if (v !== undefined && name === 'text') {
      try { v = decodeURIComponent(v); } catch { /* keep as is */ }
    }
    if (v === undefined) v = lower[name];
    if (v !== undefined && v !== null && v !== '') k[name] = String(v);
  }
  return k;
}

function int(k, name, dflt = null) {
  const n = Number.parseInt(k[name], 10);
  return Number.isFinite(n) ? n : dflt;
}

function mulberry32(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function tokenize(text) {
  return text.match(/\s*\S+|\s+$/gu) ?? [];
}

function reply(k, body) {
  const base = tokenize(k.text ?? DEFAULT_TEXT);
  const n = base.length === 0 ? 0 : Math.max(0, int(k, 'tokens', base.length));
  const tokens = Array.from({ length: n }, (_, i) => base[i % base.length]);
  const max = body?.max_completion_tokens ?? body?.max_tokens;
  let truncated = false;
  if (Number.isInteger(max) && max >= 0 && max < tokens.length) {
    tokens.length = max;
    truncated = true;
  }
  return { tokens, truncated };
}

function words(v) {
  if (typeof v === 'string') return v.split(/\s+/u).filter(Boolean).length;
  if (Array.isArray(v)) return v.reduce((n, part) => n + words(part?.text ?? part?.content ?? part), 0);
  if (v && typeof v === 'object') return words(v.content ?? v.text);
  return 0;
}

function promptTokens(body) {
  const msgs = Array.isArray(body?.messages) ? body.messages : [];
  return Math.max(1, msgs.reduce((n, m) => n + words(m?.content), 0) + words(body?.system));
}

class Closed extends Error {}

// One response: cuts bytes per the split knob, waits for drain, notices the
// client leaving, and keeps the log entry's counters.
class Out {
  constructor(res, k, entry) {
    this.res = res;
    this.entry = entry;
    this.split = k.split ?? 'none';
    this.gapMs = int(k, 'split-delay', 0);
    this.nl = NEWLINES[k.newline] ?? '\n';
    this.comments = k.comments !== undefined && k.comments !== '0';
    this.events = 0;
    this.closed = false;
    this.flushed = Promise.resolve(); // settles once the last write reached the socket
    this.abort = new AbortController();
    if (this.split === 'random') {
      entry.seed = int(k, 'seed', Math.floor(Math.random() * 2 ** 31));
      this.rng = mulberry32(entry.seed);
    }
  }

  async wait(ms) {
    if (ms > 0) {
      await sleep(ms, undefined, { signal: this.abort.signal }).catch(() => {});
    }
    if (this.closed) throw new Closed();
  }

  async gap() {
    if (this.gapMs > 0) await this.wait(this.gapMs);
    else await nextTurn();
    if (this.closed) throw new Closed();
  }

  async put(buf) {
    if (this.closed) throw new Closed();
    if (this.entry.first_byte_at === null) this.entry.first_byte_at = Date.now();
    let ok;
    this.flushed = new Promise((resolve) => { ok = this.res.write(buf, resolve); });
    this.entry.bytes_sent += buf.length;
    if (!ok) {
      await new Promise((resolve) => {
        const done = () => {
          this.res.off('drain', done);
          this.res.off('close', done);
          resolve();
        };
        this.res.on('drain', done);
        this.res.on('close', done);
      });
    }
    if (this.closed) throw new Closed();
  }

  async write(data) {
    const buf = Buffer.isBuffer(data) ? data : Buffer.from(data, 'utf8');
    if (this.split === 'none') return this.put(buf);
    for (let off = 0; off < buf.length;) {
      const n = this.split === 'every-byte' ? 1 : 1 + Math.floor(this.rng() * MAX_PIECE);
      await this.put(buf.subarray(off, off + n));
      off += n;
      if (off < buf.length) await this.gap();
    }
  }

  // One SSE event from [field, value] pairs, with the comment knobs applied.
  async event(fields) {
    const nl = this.nl;
    let s = '';
    if (this.comments && this.events > 0) s += ': ping' + nl + nl;
    if (this.comments) s += ': comment' + nl;
    for (const [name, value] of fields) s += name + ': ' + value + nl;
    this.events++;
    await this.write(s + nl);
  }

  async ping() {
    await this.write(': ping' + this.nl + this.nl);
  }

  startStream(status, headers) {
    this.entry.status = status;
    this.res.writeHead(status, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-cache',
      ...headers,
    });
    this.res.flushHeaders();
  }

  async json(status, value, headers = {}) {
    const buf = Buffer.from(JSON.stringify(value), 'utf8');
    this.entry.status = status;
    this.res.writeHead(status, {
      'content-type': 'application/json',
      'content-length': buf.length,
      ...headers,
    });
    await this.write(buf);
    this.res.end();
  }

  // X-Mock-Fail-After: cut the connection without finishing the response,
  // once what was written so far has reached the socket.
  async fail() {
    await this.flushed;
    if (this.closed) throw new Closed();
    this.entry.outcome = 'mock_failed';
    this.entry.closed_at = Date.now();
    this.closed = true;
    this.res.socket?.destroy();
    throw new Closed();
  }

  end() {
    this.res.end();
  }
}

// ----------------------------------------------------------------- OpenAI

const OPENAI_ERRORS = {
  400: ['invalid_request_error', null, 'Invalid request (mock).'],
  401: ['invalid_request_error', 'invalid_api_key', 'Incorrect API key provided (mock).'],
  403: ['invalid_request_error', 'permission_denied', 'You are not allowed to use this model (mock).'],
  404: ['invalid_request_error', 'model_not_found', 'The model does not exist or you do not have access to it (mock).'],
  429: ['requests', 'rate_limit_exceeded', 'Rate limit reached for requests (mock).'],
  500: ['server_error', null, 'The server had an error while processing your request (mock).'],
  503: ['server_error', null, 'The engine is currently overloaded, please try again later (mock).'],
};

function openaiError(status, message) {
  const [type, code, text] = OPENAI_ERRORS[status] ??
    [status >= 500 ? 'server_error' : 'invalid_request_error', null, `Mock error ${status}.`];
  return { error: { message: message ?? text, type, param: null, code } };
}

function retryHeaders(status) {
  return status === 429 || status === 503 || status === 529 ? { 'retry-after': '1' } : {};
}

async function openai(out, k, entry, body) {
  const status = int(k, 'status');
  if (status >= 400) {
    const h = { ...retryHeaders(status), 'x-request-id': `req_mock_${entry.id}` };
    if (status === 429) {
      Object.assign(h, { 'x-ratelimit-limit-requests': '60', 'x-ratelimit-remaining-requests': '0',
        'x-ratelimit-reset-requests': '1s' });
    }
    return out.json(status, openaiError(status), h);
  }
  const { tokens, truncated } = reply(k, body);
  const finish = truncated ? 'length' : 'stop';
  const model = typeof body?.model === 'string' ? body.model : 'mock-model';
  const id = `chatcmpl-mock-${entry.id}`;
  const created = Math.floor(entry.started_at / 1000);
  const usage = { prompt_tokens: promptTokens(body), completion_tokens: tokens.length,
    total_tokens: promptTokens(body) + tokens.length };
  const failAfter = int(k, 'fail-after');
  const errorAfter = int(k, 'error-event');
  const headers = { 'x-request-id': `req_mock_${entry.id}`, 'openai-processing-ms': '1' };

  if (body?.stream !== true) {
    await out.wait(int(k, 'first-token-delay', 0));
    const value = {
      id, object: 'chat.completion', created, model, system_fingerprint: 'fp_mock',
      choices: [{ index: 0, message: { role: 'assistant', content: tokens.join(''), refusal: null },
        logprobs: null, finish_reason: finish }],
      usage,
    };
    if (failAfter === null) return out.json(200, value, headers);
    const buf = Buffer.from(JSON.stringify(value), 'utf8');
    entry.status = 200;
    out.res.writeHead(200, { 'content-type': 'application/json', 'content-length': buf.length, ...headers });
    await out.write(buf.subarray(0, buf.length >> 1));
    return await out.fail();
  }

  entry.stream = true;
  const includeUsage = body?.stream_options?.include_usage === true;
  const chunk = (delta, finishReason = null) => {
    const c = { id, object: 'chat.completion.chunk', created, model, system_fingerprint: 'fp_mock',
      choices: [{ index: 0, delta, logprobs: null, finish_reason: finishReason }] };
    if (includeUsage) c.usage = null;
    return c;
  };
  const send = (value) => out.event([['data', JSON.stringify(value)]]);

  out.startStream(200, headers);
  if (out.comments) await out.ping();
  await out.wait(int(k, 'first-token-delay', 0));
  await send(chunk({ role: 'assistant', content: '', refusal: null }));
  for (let i = 0; ; i++) {
    if (failAfter === i) await out.fail();
    if (errorAfter === i) {
      await send(openaiError(500, 'The server had an error while processing your request (mock, mid-stream).'));
      return out.end();
    }
    if (i === tokens.length) break;
    if (i > 0) await out.wait(int(k, 'token-delay', 0));
    await send(chunk({ content: tokens[i] }));
    entry.tokens_sent++;
  }
  await send(chunk({}, finish));
  if (includeUsage) await send({ id, object: 'chat.completion.chunk', created, model,
    system_fingerprint: 'fp_mock', choices: [], usage });
  await out.event([['data', '[DONE]']]);
  out.end();
}

// -------------------------------------------------------------- Anthropic

const ANTHROPIC_ERRORS = {
  400: 'invalid_request_error', 401: 'authentication_error', 403: 'permission_error',
  404: 'not_found_error', 413: 'request_too_large', 429: 'rate_limit_error',
  500: 'api_error', 529: 'overloaded_error',
};

function anthropicError(status) {
  const type = ANTHROPIC_ERRORS[status] ?? (status >= 500 ? 'api_error' : 'invalid_request_error');
  return { type: 'error', error: { type, message: `Mock ${type} (${status}).` } };
}

async function anthropic(out, k, entry, body) {
  const status = int(k, 'status');
  const headers = { 'request-id': `req_mock_${entry.id}` };
  if (status >= 400) return out.json(status, anthropicError(status), { ...retryHeaders(status), ...headers });
  const { tokens, truncated } = reply(k, body);
  const stop = truncated ? 'max_tokens' : 'end_turn';
  const model = typeof body?.model === 'string' ? body.model : 'mock-model';
  const id = `msg_mock_${entry.id}`;
  const input = promptTokens(body);
  const failAfter = int(k, 'fail-after');
  const errorAfter = int(k, 'error-event');

  if (body?.stream !== true) {
    await out.wait(int(k, 'first-token-delay', 0));
    return out.json(200, {
      id, type: 'message', role: 'assistant', model,
      content: [{ type: 'text', text: tokens.join('') }],
      stop_reason: stop, stop_sequence: null,
      usage: { input_tokens: input, output_tokens: tokens.length },
    }, headers);
  }

  entry.stream = true;
  const send = (type, value) => out.event([['event', type], ['data', JSON.stringify({ type, ...value })]]);
  out.startStream(200, headers);
  if (out.comments) await out.ping();
  await out.wait(int(k, 'first-token-delay', 0));
  await send('message_start', { message: { id, type: 'message', role: 'assistant', model, content: [],
    stop_reason: null, stop_sequence: null, usage: { input_tokens: input, output_tokens: 1 } } });
  await send('content_block_start', { index: 0, content_block: { type: 'text', text: '' } });
  await send('ping', {});
  for (let i = 0; ; i++) {
    if (failAfter === i) await out.fail();
    if (errorAfter === i) {
      await send('error', { error: { type: 'overloaded_error', message: 'Overloaded (mock).' } });
      return out.end();
    }
    if (i === tokens.length) break;
    if (i > 0) await out.wait(int(k, 'token-delay', 0));
    await send('content_block_delta', { index: 0, delta: { type: 'text_delta', text: tokens[i] } });
    entry.tokens_sent++;
  }
  await send('content_block_stop', { index: 0 });
  await send('message_delta', { delta: { stop_reason: stop, stop_sequence: null },
    usage: { output_tokens: tokens.length } });
  await send('message_stop', {});
  out.end();
}

// ----------------------------------------------------------------- server

function readBody(req) {
  return new Promise((resolve, reject) => {
    const parts = [];
    req.on('data', (b) => parts.push(b));
    req.on('end', () => resolve(Buffer.concat(parts).toString('utf8')));
    req.on('error', reject);
  });
}

function parse(raw) {
  if (raw === '') return null;
  try { return JSON.parse(raw); } catch { return raw; }
}

function plainJson(res, status, value) {
  const buf = Buffer.from(JSON.stringify(value), 'utf8');
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': buf.length });
  res.end(buf);
}

async function control(req, res, path) {
  const raw = await readBody(req);
  if (path === '/_mock/log' && req.method === 'GET') return plainJson(res, 200, log);
  if (path === '/_mock/reset' && req.method === 'POST') {
    log = [];
    config = {};
    seq = 0;
    return plainJson(res, 200, { ok: true });
  }
  if (path === '/_mock/config' && req.method === 'GET') return plainJson(res, 200, config);
  if (path === '/_mock/config' && req.method === 'POST') {
    const v = parse(raw);
    if (!v || typeof v !== 'object' || Array.isArray(v)) {
      return plainJson(res, 400, { error: 'expected a JSON object of knobs' });
    }
    config = v;
    return plainJson(res, 200, config);
  }
  return plainJson(res, 404, { error: `no such control endpoint: ${req.method} ${path}` });
}

async function handle(req, res) {
  const started = Date.now();
  const url = new URL(req.url, 'http://mock');
  if (url.pathname.startsWith('/_mock/')) return control(req, res, url.pathname);

  const k = knobsOf(req);
  const entry = {
    id: ++seq, method: req.method, path: url.pathname,
    query: Object.fromEntries(url.searchParams), headers: req.headers, body: null,
    knobs: k, seed: null, stream: false, status: null,
    started_at: started, first_byte_at: null, tokens_sent: 0, bytes_sent: 0,
    closed_at: null, completed: false, outcome: null,
  };
  log.push(entry);
  const out = new Out(res, k, entry);
  res.on('finish', () => {
    if (entry.outcome === null) {
      entry.completed = true;
      entry.outcome = 'completed';
      entry.closed_at = Date.now();
    }
  });
  res.on('close', () => {
    out.closed = true;
    out.abort.abort();
    if (entry.outcome === null) {
      entry.outcome = 'client_closed';
      entry.closed_at = Date.now();
    }
  });

  try {
    const raw = await readBody(req);
    entry.body = parse(raw);
    const body = entry.body && typeof entry.body === 'object' ? entry.body : null;
    if (req.method === 'POST' && url.pathname === '/v1/chat/completions') {
      if (raw !== '' && body === null) return await out.json(400, openaiError(400, 'Invalid JSON body (mock).'));
      return await openai(out, k, entry, body);
    }
    if (req.method === 'POST' && url.pathname === '/v1/messages') {
      if (raw !== '' && body === null) return await out.json(400, anthropicError(400));
      return await anthropic(out, k, entry, body);
    }
    return await out.json(404, openaiError(404, `Unknown request URL: ${req.method} ${url.pathname} (mock).`));
  } catch (err) {
    if (err instanceof Closed || out.closed) return;
    console.error('mock upstream:', err);
    if (!res.headersSent) plainJson(res, 500, openaiError(500));
    else res.socket?.destroy();
  }
}

function option(name) {
  const i = process.argv.indexOf('--' + name);
  return i > 0 ? process.argv[i + 1] : undefined;
}

const server = http.createServer({ noDelay: true, requestTimeout: 0 }, (req, res) => {
  handle(req, res).catch((err) => console.error('mock upstream:', err));
});
server.listen(Number(option('port') ?? process.env.PORT ?? 0), option('host') ?? '127.0.0.1', () => {
  process.stdout.write(JSON.stringify({ port: server.address().port, pid: process.pid }) + '\n');
});
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => process.exit(0));
if (process.argv.includes('--exit-with-parent')) {
  const parent = process.ppid;
  setInterval(() => { if (process.ppid !== parent) process.exit(0); }, 250).unref();
}
