#!/usr/bin/env node
// Reads one whole event stream and parses it with the `eventsource-parser`
// npm package, for tests/spec/e2e_clients_spec.lua:
//
//   node tests/node/sse_parse.mjs '{"url":"http://127.0.0.1:PORT/shapes"}'
//
// The body is read to its end, then parsed four ways, which must agree:
//   network  the chunks as they came off the socket, through TextDecoderStream
//            and the package's own EventSourceParserStream;
//   whole    the body decoded at once, fed in one piece;
//   bytes    one byte at a time through a streaming TextDecoder, so pieces
//            end between CR and LF and inside multi-byte characters;
//   random   pieces of 1..64 bytes (a fixed seed), likewise.
// Prints one JSON line: { status, content_type, raw (the body, base64),
//   parses: { <way>: { events: [{ event, id, data }], comments, retries, errors } } }
// (event and id are null when the frame had none).
import { createParser } from 'eventsource-parser';
import { EventSourceParserStream } from 'eventsource-parser/stream';

const args = JSON.parse(process.argv[2] ?? '{}');

function collector() {
  const r = { events: [], comments: [], retries: [], errors: [] };
  const parser = createParser({
    onEvent: (e) => r.events.push({ event: e.event ?? null, id: e.id ?? null, data: e.data }),
    onComment: (c) => r.comments.push(c),
    onRetry: (ms) => r.retries.push(ms),
    onError: (err) => r.errors.push(String(err?.message ?? err)),
  });
  return { r, parser };
}

function pieces(bytes, sizeOf) {
  const { r, parser } = collector();
  const dec = new TextDecoder('utf-8');
  for (let i = 0; i < bytes.length;) {
    const n = Math.min(sizeOf(), bytes.length - i);
    const text = dec.decode(bytes.subarray(i, i + n), { stream: true });
    if (text) parser.feed(text);
    i += n;
  }
  const rest = dec.decode();
  if (rest) parser.feed(rest);
  return r;
}

let seed = 12345;
const random = () => { seed = (seed * 1103515245 + 12345) % 2147483648; return 1 + (seed % 64); };

const res = await fetch(args.url, { headers: { accept: 'text/event-stream' } });
const [live, copy] = res.body.tee();
const network = { events: [], comments: [], retries: [], errors: [] };
const parsing = (async () => {
  const reader = live.pipeThrough(new TextDecoderStream())
    .pipeThrough(new EventSourceParserStream({ onComment: (c) => network.comments.push(c),
      onRetry: (ms) => network.retries.push(ms), onError: 'terminate' }))
    .getReader();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    network.events.push({ event: value.event ?? null, id: value.id ?? null, data: value.data });
  }
})().catch((e) => network.errors.push(String(e?.message ?? e)));
const chunks = [];
for await (const c of copy) chunks.push(c);
await parsing;
const bytes = Buffer.concat(chunks);

const out = {
  status: res.status,
  content_type: res.headers.get('content-type'),
  raw: bytes.toString('base64'),
  parses: {
    network,
    whole: pieces(bytes, () => bytes.length || 1),
    bytes: pieces(bytes, () => 1),
    random: pieces(bytes, random),
  },
};
process.stdout.write(JSON.stringify(out) + '\n');
