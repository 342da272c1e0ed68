#!/usr/bin/env node
// A remote control for one headless Chromium, for the browser specs
// (tests/spec/e2e_browser_spec.lua through tests/lib/browser.lua): the spec
// starts the servers, kills and restarts them, edits files, and tells this
// process what to do in the pages.
//
//   node tests/node/browser.mjs [--exit-with-parent]
//
// It launches Debian's /usr/bin/chromium through playwright-core (never a
// downloaded browser) with a fresh profile in a temporary directory (under
// $TMPDIR, which the spec points at a directory it removes), listens on a
// free port of 127.0.0.1 and prints one line on stdout, {"port":N,"pid":P}.
// --exit-with-parent: close the browser and exit once the process that
// started this one is gone, so a crashed test run leaves no browser behind.
// SIGTERM and SIGINT close the browser too.
//
// Every request is POST / with a JSON command {op, ...}; the answer is
// {"ok":true,"value":...} or {"ok":false,"error":"..."}.  Commands:
//
//   open {context, url, width?, height?, color_scheme?}  -> page id
//        A new page in the named browser context (made on first use; each
//        context has its own storage, like a separate browser profile),
//        loaded until its `load` event.
//   eval {page, fn, arg}          -> the value of (fn)(arg) in the page;
//                                    fn is a function's source, may be async
//   wait {page, fn, arg, timeout} -> the first truthy value of (fn)(arg),
//                                    polled every 50 ms; error after timeout
//                                    seconds (default 10)
//   fill {page, selector, value}, press {page, selector, key},
//   click {page, selector}        -> Date.now() just before the action
//   viewport {page, width, height}
//   screenshot {page, path, full_page?}   (directories made as needed)
//   wait_request {page, prefix, after?, failed?, timeout?}  -> the first
//                request whose path starts with prefix, sent at or after
//                `after` (Date.now()), that failed (failed: true) or was
//                answered; error after timeout seconds (default 10)
//   log {page}   what the page did:
//        { console: [{type, text, url, t}] (warnings and errors),
//          pageerrors: [{message, t}],
//          requests: [{url, method, headers, t, failure?, status?}],
//          sse: [{url, event, id, data, t}] every EventSource message as
//               Chromium received it (DevTools Network.eventSourceMessageReceived),
//          navigations (main-frame navigations, the first load included) }
//   errors {}    console errors and uncaught exceptions of every page, ever
//                opened, as [{page, url, text, t}], and forgets them
//   close {page} / close_context {context} / close_all {} (every context)
//   now {}       Date.now()
//   quit {}      closes the browser and exits
import http from 'node:http';
import { chromium } from 'playwright-core';

const CHROMIUM = process.env.SLUICE_CHROMIUM || '/usr/bin/chromium';
const ARGS = ['--no-sandbox', '--disable-gpu', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--disable-quic', '--no-first-run',
  '--disable-default-apps', '--disable-extensions', '--no-default-browser-check',
  '--disable-dev-shm-usage'];

const browser = await chromium.launch({ executablePath: CHROMIUM, args: ARGS, headless: true, timeout: 60000 });
const contexts = new Map();
const pages = new Map();
let nextPage = 1;
let errors = [];

async function context(name, opts) {
  if (!contexts.has(name)) {
    contexts.set(name, await browser.newContext({
      viewport: { width: opts.width ?? 1280, height: opts.height ?? 800 },
      colorScheme: opts.color_scheme ?? 'light',
      deviceScaleFactor: 1,
    }));
  }
  return contexts.get(name);
}

function lower(headers) {
  const out = {};
  for (const [k, v] of Object.entries(headers ?? {})) out[k.toLowerCase()] = v;
  return out;
}

function urlOf(s) {
  try { return new URL(s).pathname + new URL(s).search; } catch { return s; }
}

async function open(cmd) {
  const ctx = await context(cmd.context ?? 'default', cmd);
  const page = await ctx.newPage();
  if (cmd.width) await page.setViewportSize({ width: cmd.width, height: cmd.height ?? 800 });
  const id = nextPage++;
  const log = { console: [], pageerrors: [], requests: [], sse: [], navigations: 0 };
  pages.set(id, { page, log });
  page.on('console', (m) => {
    const type = m.type();
    if (type !== 'error' && type !== 'warning') return;
    const entry = { type, text: m.text(), url: m.location()?.url ?? '', t: Date.now() };
    log.console.push(entry);
    if (type === 'error') errors.push({ page: id, url: entry.url, text: entry.text, t: entry.t });
  });
  page.on('pageerror', (e) => {
    const entry = { message: String(e?.stack ?? e), t: Date.now() };
    log.pageerrors.push(entry);
    errors.push({ page: id, url: page.url(), text: 'uncaught: ' + entry.message, t: entry.t });
  });
  page.on('framenavigated', (f) => { if (f === page.mainFrame()) log.navigations++; });
  // Requests and EventSource messages as Chromium's network stack saw
  // them (DevTools protocol): the headers it really sent (Last-Event-ID
  // included) and every message each EventSource received. Nothing in the
  // page is wrapped or replaced.
  const cdp = await ctx.newCDPSession(page);
  const byId = new Map();
  cdp.on('Network.requestWillBeSent', (e) => {
    const entry = { url: urlOf(e.request.url), method: e.request.method, headers: lower(e.request.headers), t: Date.now() };
    const early = byId.get(e.requestId)?.pendingHeaders; // extra info may come first
    if (early) Object.assign(entry.headers, early);
    byId.set(e.requestId, entry);
    log.requests.push(entry);
  });
  cdp.on('Network.requestWillBeSentExtraInfo', (e) => {
    const entry = byId.get(e.requestId);
    if (entry) Object.assign(entry.headers, lower(e.headers));
    else byId.set(e.requestId, { pendingHeaders: lower(e.headers) });
  });
  cdp.on('Network.responseReceived', (e) => { const r = byId.get(e.requestId); if (r) { r.status = e.response.status; r.response_at = Date.now(); } });
  cdp.on('Network.loadingFailed', (e) => {
    const r = byId.get(e.requestId);
    if (r) { r.failure = e.errorText; r.ended_at = Date.now(); }
  });
  cdp.on('Network.loadingFinished', (e) => { const r = byId.get(e.requestId); if (r) r.ended_at = Date.now(); });
  cdp.on('Network.eventSourceMessageReceived', (e) => {
    log.sse.push({ url: byId.get(e.requestId)?.url ?? '', event: e.eventName, id: e.eventId, data: e.data, t: Date.now() });
  });
  await cdp.send('Network.enable');
  await page.goto(cmd.url, { waitUntil: 'load', timeout: 20000 });
  return id;
}

function pageOf(cmd) {
  const p = pages.get(cmd.page);
  if (!p) throw new Error(`no page ${cmd.page}`);
  return p;
}

// Runs a function given as source text in the page.
const inPage = ([src, arg]) => (0, eval)(`(${src})`)(arg);

const ops = {
  open,
  async eval(cmd) { return pageOf(cmd).page.evaluate(inPage, [cmd.fn, cmd.arg ?? null]); },
  async wait(cmd) {
    const h = await pageOf(cmd).page.waitForFunction(inPage, [cmd.fn, cmd.arg ?? null],
      { timeout: (cmd.timeout ?? 10) * 1000, polling: 50 });
    return h.jsonValue();
  },
  async wait_request(cmd) {
    const { log } = pageOf(cmd);
    const deadline = Date.now() + (cmd.timeout ?? 10) * 1000;
    for (;;) {
      const r = log.requests.find((e) => e.url.startsWith(cmd.prefix) && e.t >= (cmd.after ?? 0) &&
        (cmd.failed ? e.failure !== undefined : e.status !== undefined));
      if (r) return r;
      if (Date.now() > deadline) throw new Error(`no ${cmd.failed ? 'failed' : 'answered'} request to ${cmd.prefix}`);
      await new Promise((ok) => setTimeout(ok, 5));
    }
  },
  async fill(cmd) { const t = Date.now(); await pageOf(cmd).page.fill(cmd.selector, cmd.value, { timeout: 5000 }); return t; },
  async press(cmd) { const t = Date.now(); await pageOf(cmd).page.press(cmd.selector, cmd.key, { timeout: 5000 }); return t; },
  async click(cmd) {
    const { page } = pageOf(cmd);
    const el = await page.waitForSelector(cmd.selector, { state: 'visible', timeout: 5000 });
    const t = Date.now();
    await el.click({ timeout: 5000 });
    return t;
  },
  async viewport(cmd) { await pageOf(cmd).page.setViewportSize({ width: cmd.width, height: cmd.height }); },
  async screenshot(cmd) {
    const fs = await import('node:fs');
    const path = await import('node:path');
    fs.mkdirSync(path.dirname(cmd.path), { recursive: true });
    await pageOf(cmd).page.screenshot({ path: cmd.path, fullPage: !!cmd.full_page, animations: 'disabled', caret: 'hide' });
    return cmd.path;
  },
  async log(cmd) { return pageOf(cmd).log; },
  async errors() { const e = errors; errors = []; return e; },
  async close(cmd) { const p = pageOf(cmd); await p.page.close(); pages.delete(cmd.page); },
  async close_context(cmd) {
    const ctx = contexts.get(cmd.context);
    if (!ctx) return;
    contexts.delete(cmd.context);
    for (const [id, p] of pages) if (p.page.context() === ctx) pages.delete(id);
    await ctx.close();
  },
  async close_all() {
    const all = [...contexts.values()];
    contexts.clear();
    pages.clear();
    await Promise.all(all.map((ctx) => ctx.close()));
  },
  async now() { return Date.now(); },
  async quit() { setImmediate(shutdown); },
};

let closing = false;
async function shutdown() {
  if (closing) return;
  closing = true;
  const force = setTimeout(() => process.exit(1), 10000);
  force.unref();
  try { await browser.close(); } catch { /* already gone */ }
  process.exit(0);
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
browser.on('disconnected', () => { if (!closing) { process.stderr.write('browser: chromium went away\n'); process.exit(2); } });

const server = http.createServer((req, res) => {
  let body = '';
  req.setEncoding('utf8');
  req.on('data', (c) => { body += c; });
  req.on('end', async () => {
    let out;
    try {
      const cmd = JSON.parse(body || '{}');
      const fn = ops[cmd.op];
      if (!fn) throw new Error(`unknown op ${cmd.op}`);
      const value = await fn(cmd);
      out = { ok: true, value: value ?? null };
    } catch (e) {
      out = { ok: false, error: String(e?.message ?? e) };
    }
    const text = JSON.stringify(out);
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
    res.end(text);
  });
});
server.keepAliveTimeout = 1000;
server.listen(0, '127.0.0.1', () => {
  process.stdout.write(JSON.stringify({ port: server.address().port, pid: process.pid }) + '\n');
});

if (process.argv.includes('--exit-with-parent')) {
  const parent = process.ppid;
  setInterval(() => {
    try { process.kill(parent, 0); } catch { shutdown(); }
    if (process.ppid !== parent) shutdown();
  }, 500).unref();
}
