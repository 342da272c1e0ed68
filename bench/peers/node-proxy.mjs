// A streaming LLM proxy in plain Node.js: the Node peer of sluice's relay in
// the proxy benchmark.  It deliberately follows the way tutorials write it:
// read the request body, fetch() the upstream, copy status and content type,
// then write each chunk of the upstream body to the client as it arrives.
// Built-ins only (global fetch = undici, with its keep-alive pool), one process.
//
//   node bench/peers/node-proxy.mjs PORT UPSTREAM_URL
//   e.g. node bench/peers/node-proxy.mjs 8084 http://127.0.0.1:9000
//
//   POST /v1/chat/completions  ->  UPSTREAM_URL/v1/chat/completions
import http from 'node:http';

const port = Number(process.argv[2] ?? 8080);
const UPSTREAM = (process.argv[3] ?? 'http://127.0.0.1:9000').replace(/\/$/, '');

const server = http.createServer(async (req, res) => {
  if (req.method !== 'POST' || req.url !== '/v1/chat/completions') {
    res.writeHead(404).end();
    return;
  }
  let body = '';
  for await (const chunk of req) body += chunk;

  const controller = new AbortController();
  res.on('close', () => controller.abort()); // client gone: stop the upstream
  try {
    const upstream = await fetch(UPSTREAM + '/v1/chat/completions', {
      method: 'POST',
      body,
      headers: {
        'Content-Type': 'application/json',
        ...(req.headers.authorization && { Authorization: req.headers.authorization }),
      },
      signal: controller.signal,
    });
    res.writeHead(upstream.status, {
      'Content-Type': upstream.headers.get('content-type') ?? 'application/json',
      'Cache-Control': 'no-cache',
    });
    for await (const chunk of upstream.body) res.write(chunk);
    res.end();
  } catch (err) {
    if (!res.headersSent) res.writeHead(502, { 'Content-Type': 'text/plain' });
    res.end(controller.signal.aborted ? undefined : String(err));
  }
});

server.listen(port, '127.0.0.1', () => {
  console.log(`node-proxy listening on http://127.0.0.1:${port} -> ${UPSTREAM}`);
});
