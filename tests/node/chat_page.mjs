#!/usr/bin/env node
// Runs the script of apps/llm/public/index.html (the chat page) in Node
// against a live sluice, with a small stand-in for the few DOM calls it
// makes, for tests/spec/llm_sdk_spec.lua: no browser on the test machines.
//
//   node tests/node/chat_page.mjs '{"origin":"http://127.0.0.1:PORT","question":"hi","stop_after":3}'
//
// It types `question`, submits, optionally clicks Stop once `stop_after`
// characters of the answer are on the page, waits until the page is idle
// again, and prints one JSON line: { states: every text the status showed,
// bubbles: [{ role, classes, text, note }], stopped_at (Date.now() at the
// click), html_writes (innerHTML assignments: must be 0) }.
import fs from 'node:fs';

const args = JSON.parse(process.argv[2] ?? '{}');
const page = fs.readFileSync(new URL('../../apps/llm/public/index.html', import.meta.url), 'utf8');
const script = page.match(/<script>([\s\S]*?)<\/script>/)[1];

let htmlWrites = 0;

class ClassList {
  constructor(el) { this.el = el; this.set = new Set(); }
  add(...c) { c.forEach((x) => this.set.add(x)); }
  remove(...c) { c.forEach((x) => this.set.delete(x)); }
  replace(a, b) { if (!this.set.delete(a)) return false; this.set.add(b); return true; }
  contains(c) { return this.set.has(c); }
  toString() { return [...this.set].join(' '); }
}

class Text {
  constructor(s) { this.data = String(s); }
  get textContent() { return this.data; }
}

class El {
  constructor(tag) {
    this.tag = tag;
    this.children = [];
    this.dataset = {};
    this.style = {};
    this.classList = new ClassList(this);
    this.listeners = {};
    this.hidden = false;
    this.disabled = false;
    this.value = '';
    this.scrollTop = 0;
    this.scrollHeight = 0;
  }
  set className(s) { this.classList.set = new Set(String(s).split(/\s+/).filter(Boolean)); }
  get className() { return this.classList.toString(); }
  get textContent() { return this.children.map((c) => c.textContent).join(''); }
  set textContent(s) { this.children = s === '' ? [] : [new Text(s)]; this.onText?.(String(s)); }
  set innerHTML(s) { htmlWrites++; this.children = [new Text(s)]; }
  append(...nodes) { for (const n of nodes) this.children.push(typeof n === 'string' ? new Text(n) : n); }
  replaceChildren() { this.children = []; }
  querySelector(sel) {
    const cls = sel.replace(/^\./, '');
    for (const c of this.children) {
      if (c instanceof El && c.classList.contains(cls)) return c;
      const deep = c instanceof El && c.querySelector(sel);
      if (deep) return deep;
    }
    return null;
  }
  addEventListener(type, fn) { (this.listeners[type] ??= []).push(fn); }
  dispatch(type, ev = {}) {
    const e = { preventDefault() {}, ...ev };
    for (const fn of this.listeners[type] ?? []) fn(e);
  }
  requestSubmit() { this.dispatch('submit'); }
  focus() {}
}

const ids = {};
for (const id of ['log', 'state', 'form', 'input', 'send', 'stop', 'model', 'clear']) ids[id] = new El(id);
ids.stop.hidden = true;
ids.model.value = 'gpt-4o-mini';
const states = [];
ids.state.onText = (s) => states.push(s);

const document = {
  getElementById: (id) => ids[id],
  createElement: (tag) => new El(tag),
};
const store = new Map();
const localStorage = { getItem: (k) => store.get(k) ?? null, setItem: (k, v) => store.set(k, String(v)) };
const pageFetch = (url, opts) => fetch(new URL(url, args.origin), opts);

new Function('document', 'localStorage', 'fetch', script)(document, localStorage, pageFetch);

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const deadline = Date.now() + (args.timeout ?? 20000);
const out = { states, bubbles: [], html_writes: 0 };

ids.input.value = args.question ?? 'hello';
ids.form.dispatch('submit');
await sleep(0);
if (ids.stop.hidden) throw new Error('the page did not start a request');
while (!ids.stop.hidden && Date.now() < deadline) {
  if (args.stop_after !== undefined && out.stopped_at === undefined) {
    const last = ids.log.children.at(-1);
    const text = last?.querySelector('.text')?.textContent ?? '';
    if (text.length >= args.stop_after) {
      out.stopped_at = Date.now();
      ids.stop.dispatch('click');
    }
  }
  await sleep(5);
}
out.timed_out = !ids.stop.hidden;
for (const el of ids.log.children) {
  out.bubbles.push({
    role: el.classList.contains('user') ? 'user' : 'assistant',
    classes: el.className,
    text: el.querySelector('.text')?.textContent ?? '',
    note: el.querySelector('.note')?.textContent ?? null,
  });
}
out.html_writes = htmlWrites;
process.stdout.write(JSON.stringify(out) + '\n');
process.exit(0);
