#!/usr/bin/env node
'use strict';
// Contract smoke test for a shardcast-compatible broadcast server.
//
//   node perf/ref/smoke.js ws://127.0.0.1:PORT [--big]
//
// 3 clients in room "a", 1 in room "b":
//   - a binary message from a0 reaches a0, a1, a2 (sender included) as binary, byte-exact
//   - a text message from a1 reaches all three as text, string-exact
//   - a 512 KiB binary message (fits shardcast's 1 MiB default) reaches all three
//   - with --big: a 16 MiB binary message reaches all three (reference servers only;
//     shardcast's default limits.max_message_bytes is 1 MiB)
//   - nothing of that reaches room "b"; b0's own message reaches b0 only
//   - GET /healthz -> 200, and an invalid room name is refused with HTTP 400
// Exits 0 when every check passes, 1 otherwise. Uses the `ws` client from node-ws/.
const path = require('path');
const http = require('http');
const crypto = require('crypto');
const { createRequire } = require('module');

let WebSocket;
try {
  WebSocket = createRequire(path.join(__dirname, 'node-ws', 'package.json'))('ws');
} catch {
  console.error('smoke.js: `ws` not installed: run perf/ref/install.sh first');
  process.exit(1);
}

const base = (process.argv[2] || '').replace(/\/+$/, '');
const big = process.argv.includes('--big');
if (!/^ws:\/\/[^/]+$/.test(base)) {
  console.error('usage: node smoke.js ws://HOST:PORT [--big]');
  process.exit(2);
}

let passed = 0, failed = 0;
const ok = (name) => { passed++; console.log(`ok   - ${name}`); };
const bad = (name, why) => { failed++; console.log(`FAIL - ${name}: ${why}`); };
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function connect(room) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`${base}/ws/${room}`, { perMessageDeflate: false, maxPayload: 64 << 20 });
    ws.inbox = [];
    ws.on('message', (data, isBinary) => ws.inbox.push({ data, isBinary }));
    ws.once('open', () => resolve(ws));
    ws.once('error', reject);
    ws.once('unexpected-response', (req, res) => reject(new Error(`HTTP ${res.statusCode}`)));
  });
}

async function waitFor(pred, ms) {
  const end = Date.now() + ms;
  while (Date.now() < end) { if (pred()) return true; await sleep(5); }
  return pred();
}

// Send `payload` from `from`; expect exactly one new message, same opcode and bytes, on each of `to`.
async function broadcastCheck(name, from, to, payload, isBinary, ms = 5000) {
  const before = to.map((c) => c.inbox.length);
  from.send(payload, { binary: isBinary });
  await waitFor(() => to.every((c, i) => c.inbox.length > before[i]), ms);
  const expect = Buffer.isBuffer(payload) ? payload : Buffer.from(payload, 'utf8');
  for (let i = 0; i < to.length; i++) {
    const got = to[i].inbox.slice(before[i]);
    const who = `${name} -> ${to[i].label}`;
    if (got.length !== 1) { bad(who, `expected 1 message, got ${got.length}`); continue; }
    if (got[0].isBinary !== isBinary) { bad(who, `opcode: got ${got[0].isBinary ? 'binary' : 'text'}`); continue; }
    if (!Buffer.from(got[0].data).equals(expect)) { bad(who, `payload differs (${got[0].data.length} vs ${expect.length} bytes)`); continue; }
    ok(who);
  }
}

function httpGet(urlPath) {
  const u = new URL(base.replace(/^ws/, 'http') + urlPath);
  return new Promise((resolve, reject) => {
    http.get(u, (res) => { res.resume(); resolve(res.statusCode); }).on('error', reject);
  });
}

async function main() {
  const a = [];
  for (let i = 0; i < 3; i++) { const c = await connect('a'); c.label = `a${i}`; a.push(c); }
  const b0 = await connect('b'); b0.label = 'b0';
  await sleep(100); // let the server finish subscribing everyone

  await broadcastCheck('binary from a0', a[0], a, crypto.randomBytes(1000), true);
  await broadcastCheck('text from a1', a[1], a, 'hello room a \u2713 \u{1F600}', false);
  await broadcastCheck('512KiB binary from a2', a[2], a, crypto.randomBytes(512 * 1024), true);
  if (big) await broadcastCheck('16MiB binary from a0', a[0], a, crypto.randomBytes(16 * 1024 * 1024), true, 30000);

  await sleep(300);
  if (b0.inbox.length === 0) ok('room b received nothing from room a');
  else bad('room b received nothing from room a', `b0 got ${b0.inbox.length} message(s)`);

  const aBefore = a.map((c) => c.inbox.length);
  await broadcastCheck('text from b0', b0, [b0], 'only for b', false);
  await sleep(300);
  if (a.every((c, i) => c.inbox.length === aBefore[i])) ok('room a received nothing from room b');
  else bad('room a received nothing from room b', 'a client in room a got b0\'s message');

  try {
    const s = await httpGet('/healthz');
    if (s === 200) ok('GET /healthz -> 200'); else bad('GET /healthz -> 200', `HTTP ${s}`);
  } catch (e) { bad('GET /healthz -> 200', e.message); }

  try {
    const c = await connect('bad%20room');
    c.terminate();
    bad('invalid room name refused', 'upgrade accepted');
  } catch (e) {
    if (/HTTP 400/.test(e.message)) ok('invalid room name refused with 400');
    else bad('invalid room name refused with 400', e.message);
  }

  for (const c of [...a, b0]) c.close();
  await sleep(50);
}

const timer = setTimeout(() => { bad('overall', 'timed out after 60 s'); finish(); }, 60000);
function finish() {
  clearTimeout(timer);
  console.log(`${passed} passed, ${failed} failed`);
  process.exit(failed === 0 && passed > 0 ? 0 : 1);
}
main().then(finish, (e) => { bad('setup', e.message); finish(); });
