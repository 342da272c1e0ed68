#!/usr/bin/env node
// A forward proxy for the fetch specs: CONNECT tunnels (what HTTPS_PROXY
// clients use) and absolute-form plain HTTP requests.  Node built-ins only.
//
//   node tests/mock/proxy.mjs --log FILE [--exit-with-parent]
//
// Prints {"port":N,"pid":P} on stdout when listening, and appends one JSON
// line per request it forwards to FILE:
// {"method":"CONNECT","target":"127.0.0.1:443"}.
import fs from "node:fs";
import http from "node:http";
import net from "node:net";

const logPath = process.argv[process.argv.indexOf("--log") + 1];
const record = (entry) => fs.appendFileSync(logPath, JSON.stringify(entry) + "\n");

const server = http.createServer((req, res) => {
  // absolute-form: GET http://host:port/path
  record({ method: req.method, target: req.url });
  const url = new URL(req.url);
  const up = http.request(
    { host: url.hostname, port: url.port || 80, path: url.pathname + url.search, method: req.method, headers: req.headers },
    (r) => { res.writeHead(r.statusCode, r.headers); r.pipe(res); });
  up.on("error", () => { res.writeHead(502); res.end(); });
  req.pipe(up);
});

server.on("connect", (req, client, head) => {
  record({ method: "CONNECT", target: req.url });
  const [host, port] = req.url.split(":");
  const up = net.connect(Number(port), host, () => {
    client.write("HTTP/1.1 200 Connection Established\r\n\r\n");
    if (head.length) up.write(head);
    up.pipe(client);
    client.pipe(up);
  });
  up.on("error", () => client.destroy());
  client.on("error", () => up.destroy());
});

server.listen(0, "127.0.0.1", () => {
  console.log(JSON.stringify({ port: server.address().port, pid: process.pid }));
});

if (process.argv.includes("--exit-with-parent")) {
  const parent = process.ppid;
  setInterval(() => { try { process.kill(parent, 0); } catch { process.exit(0); } }, 500).unref();
}
