// A Server-Sent Events pub/sub server in plain Node.js: the Node peer of
// sluice in the benchmarks.  It deliberately follows the way tutorials write
// SSE with node:http (a Map of channel -> Set of responses, res.write per
// subscriber, no batching or tuning), so the numbers show what a typical
// hand-written Node SSE server does.  Built-ins only, one process.
//
//   node bench/peers/node-sse.mjs PORT
//
//   GET  /sub?ch=X       event stream of channel X
//   POST /publish?ch=X   sends the body as one `data:` event to X's subscribers
//   GET  /hello/NAME     "hello NAME" as text/plain
import http from 'node:http';

const port = Number(process.argv[2] ?? 8080);
const channels = new Map(); // channel name -> Set of subscriber responses

const server = http.createServer(async (req, res) => {
  const url = new URL(req.url, 'http://localhost');
  const ch = url.searchParams.get('ch') ?? '';

  if (req.method === 'GET' && url.pathname === '/sub') {
    res.writeHead(200, {
      'Content-Type': 'text/event-stream',
      'Cache-Control': 'no-cache',
      'Connection': 'keep-alive',
    });
    res.flushHeaders();
    if (!channels.has(ch)) channels.set(ch, new Set());
    const subscribers = channels.get(ch);
    subscribers.add(res);
    req.on('close', () => {
      subscribers.delete(res);
      if (subscribers.size === 0) channels.delete(ch);
    });
  } else if (req.method === 'POST' && url.pathname === '/publish') {
    let body = '';
    for await (const chunk of req) body += chunk;
    const subscribers = channels.get(ch) ?? new Set();
    for (const sub of subscribers) sub.write(`data: ${body}\n\n`);
    res.writeHead(200, { 'Content-Type': 'application/json' });
    res.end(JSON.stringify({ subscribers: subscribers.size }));
  } else if (req.method === 'GET' && url.pathname.startsWith('/hello/')) {
    let name = url.pathname.slice('/hello/'.length);
    try { name = decodeURIComponent(name); } catch { /* keep it as sent */ }
    res.writeHead(200, { 'Content-Type': 'text/plain' });
    res.end('hello ' + name);
  } else {
    res.writeHead(404).end();
  }
});

server.listen(port, '127.0.0.1', () => {
  console.log(`node-sse listening on http://127.0.0.1:${port}`);
});
