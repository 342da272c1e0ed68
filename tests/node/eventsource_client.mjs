#!/usr/bin/env node
// An event stream read with the `eventsource` npm package (the WHATWG
// EventSource for Node), for tests/spec/e2e_clients_spec.lua:
//
//   node tests/node/eventsource_client.mjs '{"url":"http://127.0.0.1:PORT/count","event":"count","count":12}'
//
// It listens for events of type `event` (default "message") until `count`
// arrived, or one whose data is `until_data` (so a stream with a gap ends
// as soon as its last event, not at the timeout), or `timeout` ms passed
// (default 15000); then it closes the EventSource
// and prints one JSON line:
//   { events: [{ id, data, t }], opens (how many times the connection
//     opened), errors (error events: the stream ended or failed; the client
//     reconnects by itself after each), timed_out, last_event_id }
// Reconnecting, and sending Last-Event-ID when it does, is the package's own
// doing: this script only listens.
import { EventSource } from 'eventsource';

const args = JSON.parse(process.argv[2] ?? '{}');
const want = args.count ?? 10;
const out = { events: [], opens: 0, errors: 0, timed_out: false, last_event_id: null };

const es = new EventSource(args.url);
await new Promise((resolve) => {
  const timer = setTimeout(() => { out.timed_out = true; resolve(); }, args.timeout ?? 15000);
  es.addEventListener('open', () => { out.opens++; });
  es.addEventListener('error', () => { out.errors++; });
  es.addEventListener(args.event ?? 'message', (e) => {
    out.events.push({ id: e.lastEventId, data: e.data, t: Date.now() });
    if (out.events.length >= want || (args.until_data !== undefined && e.data === args.until_data)) {
      clearTimeout(timer);
      resolve();
    }
  });
});
out.last_event_id = out.events.at(-1)?.id ?? null;
es.close();
process.stdout.write(JSON.stringify(out) + '\n');
process.exit(0);
