// The demo pages (/cursor, /chat) in headless Chromium against a real daemon (issue #13).
//
// Usage: node tests/browser/demos.mjs [SCENARIO...]    (default: all, in this order)
//   cursor   two cursor pages: A's mouse moves A's cursor in B (p50/p99 over 200 moves, p99 <= 100 ms);
//            A closed -> its cursor leaves B; screenshot docs/demo-cursor.png
//   chat     two chat pages: a line typed in A shows in B with the name and time; join/leave lines;
//            several rooms on one connection; history for a third page; screenshot docs/demo-chat.png
//   sse      cursor and chat again with page B's WebSocket made to fail (B falls back to SSE);
//            the cut below with pages on SSE; ?transport=sse forces SSE without trying a WebSocket
//   cut      connections cut twice (TCP reset by a proxy in front of the daemon) while 500
//            numbered messages are published over the HTTP API: each page received exactly 1..500
//   restart  the daemon SIGKILLed and restarted: cursor and chat pages show the disconnect,
//            reconnect within the backoff bound, show a discontinuity (epoch changed), work again
//
// The daemon (target/release/shardcast, or $SHARDCAST_BIN) is started here on a free port with
// its own config. Chromium: $CHROMIUM or /usr/bin/chromium (Playwright gives it a new, empty
// user-data-dir). For working on the pages without rebuilding the daemon: DEMO_FILES=1 serves
// web/*.html and clients/js/shardcast.js from this checkout instead of the embedded copies, and
// SHARDCAST_CLIENT=FILE serves FILE as /client/shardcast.js. SHOTS=0 skips the screenshots.
// VERBOSE=1 prints the pages' console.
import { chromium } from "playwright-core";
import { spawn } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const BIN = process.env.SHARDCAST_BIN || path.join(REPO, "target/release/shardcast");
const API_KEY = "demo-test-key";
const SHOTS = process.env.SHOTS !== "0";
const VERBOSE = !!process.env.VERBOSE;
const VIEWPORT = { width: 1000, height: 640 };
const WAIT = 15000;            // ms for anything that should happen "at once" (a loaded 2-core box)
const BACKOFF = { first: 500, cap: 20000 };   // the client's defaults (spec)
const SLACK = 1500;            // ms on top of a backoff delay: connecting, handshake, subscribe

// ---------------------------------------------------------------- results
let failed = 0, passed = 0;
function check(name, ok, detail) {
  console.log(`${ok ? "ok  " : "FAIL"} ${name}${ok || detail === undefined ? "" : " " + JSON.stringify(detail)}`);
  if (ok) passed++; else failed++;
  return ok;
}
class Abort extends Error {}
function must(name, ok, detail) { if (!check(name, ok, detail)) throw new Abort(name); }

// Wait (on the page's own state, polled) for fn(arg) to be truthy; record a check; abort the
// scenario when it never happens.
async function until(page, name, fn, arg, timeout = WAIT) {
  try {
    const h = await page.waitForFunction(fn, arg, { timeout, polling: 20 });
    const v = await h.jsonValue();
    check(name, true);
    return v;
  } catch (e) {
    if (e instanceof Abort) throw e;
    check(name, false, String(e.message).split("\n")[0]);
    throw new Abort(name);
  }
}
// The same without a check line (for steps inside loops).
const quietly = (page, fn, arg, timeout = WAIT) =>
  page.waitForFunction(fn, arg, { timeout, polling: 20 }).then((h) => h.jsonValue());

// Polls fn (Node side, e.g. the HTTP API) until it gives a truthy value; null after timeout.
async function eventually(fn, timeout = WAIT) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) return null;
    await new Promise((r) => setTimeout(r, 20));
  }
}

const percentile = (sorted, p) => sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];

// ---------------------------------------------------------------- daemon
function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => { const { port } = s.address(); s.close(() => resolve(port)); });
  });
}

class Daemon {
  constructor(port, adminPort, dir) {
    this.port = port;
    this.cfg = path.join(dir, "shardcast.toml");
    // A room class for the cursor room as the demo recommends: a slow viewer keeps only the
    // newest position. The HTTP API publishes the numbered messages of the cut scenario.
    fs.writeFileSync(this.cfg, [
      "[api]", `key = "${API_KEY}"`, "",
      "[admin]", `listen = "127.0.0.1:${adminPort}"`, "",
      "[[rooms.class]]", 'match = "cursor:*"', 'slow_consumer = "conflate"', "",
    ].join("\n"));
    this.log = path.join(REPO, "target/browser-demos-daemon.log");
    this.proc = null;
  }
  get url() { return `http://127.0.0.1:${this.port}`; }
  async start() {
    const out = fs.openSync(this.log, "a");
    const proc = this.proc = spawn(BIN, ["--config", this.cfg, "--listen", `127.0.0.1:${this.port}`, "--shards", "2"],
      { stdio: ["ignore", out, out] });
    fs.closeSync(out);
    this.exited = new Promise((resolve) => proc.once("exit", (code, signal) => resolve({ code, signal })));
    let gone = null;
    this.exited.then((x) => { gone = x; });
    const deadline = Date.now() + WAIT;
    for (;;) {
      if (gone) throw new Error(`daemon exited at start: ${JSON.stringify(gone)} (see ${this.log})`);
      try {
        const r = await fetch(`${this.url}/healthz`);
        if (r.ok) return Date.now();
      } catch { /* not listening yet */ }
      if (Date.now() > deadline) throw new Error(`daemon not healthy within ${WAIT} ms (see ${this.log})`);
      await new Promise((r) => setTimeout(r, 25));
    }
  }
  async kill(signal = "SIGKILL") {
    if (!this.proc || this.proc.exitCode !== null || this.proc.signalCode !== null) return;
    this.proc.kill(signal);
    await this.exited;
  }
  async api(method, p, body) {
    const r = await fetch(`${this.url}${p}`, {
      method, headers: { authorization: `Bearer ${API_KEY}`, "content-type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await r.text();
    if (!r.ok) throw new Error(`${method} ${p}: ${r.status} ${text}`);
    return JSON.parse(text);
  }
  publish(room, data) { return this.api("POST", "/api/publish", { room, data }); }
  async presence(room) { return (await this.api("GET", `/api/rooms/${room}/presence`)).members.map((m) => m.conn); }
}

// A TCP proxy in front of the daemon whose connections the test can cut (reset) at once.
function startProxy(targetPort) {
  const socks = new Set();
  const server = net.createServer((client) => {
    const upstream = net.connect(targetPort, "127.0.0.1");
    const pair = [client, upstream];
    for (const s of pair) { socks.add(s); s.on("error", () => {}); s.on("close", () => { for (const t of pair) { socks.delete(t); t.destroy(); } }); }
    client.pipe(upstream);
    upstream.pipe(client);
  });
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve({
    port: server.address().port,
    cut() { const n = socks.size; for (const s of [...socks]) s.resetAndDestroy(); return n / 2; },
    close() { for (const s of socks) s.destroy(); return new Promise((r) => server.close(r)); },
  })));
}

// ---------------------------------------------------------------- pages
// Replaces the page's WebSocket with one that never opens (error, then close 1006), as when a
// proxy refuses the upgrade. Counts the attempts in window.__wsAttempts.
function blockWebSocket() {
  window.__wsAttempts = 0;
  class BlockedWebSocket extends EventTarget {
    constructor(url, protocols) {
      super();
      window.__wsAttempts++;
      Object.assign(this, { url: String(url), protocol: "", extensions: "", readyState: 0, bufferedAmount: 0,
        binaryType: "blob", onopen: null, onmessage: null, onerror: null, onclose: null });
      void protocols;
      setTimeout(() => {
        this.readyState = 3;
        const err = new Event("error");
        if (typeof this.onerror === "function") this.onerror(err);
        this.dispatchEvent(err);
        const close = new CloseEvent("close", { code: 1006, reason: "", wasClean: false });
        if (typeof this.onclose === "function") this.onclose(close);
        this.dispatchEvent(close);
      }, 20);
    }
    send() { throw new DOMException("WebSocket is not open", "InvalidStateError"); }
    close() {}
  }
  for (const [k, v] of Object.entries({ CONNECTING: 0, OPEN: 1, CLOSING: 2, CLOSED: 3 })) {
    Object.defineProperty(BlockedWebSocket, k, { value: v });
    Object.defineProperty(BlockedWebSocket.prototype, k, { value: v });
  }
  window.WebSocket = BlockedWebSocket;
}
// Leaves WebSocket working but counts the attempts.
function countWebSocket() {
  window.__wsAttempts = 0;
  const Real = window.WebSocket;
  window.WebSocket = new Proxy(Real, { construct(target, args) { window.__wsAttempts++; return new target(...args); } });
}

async function newContext(browser) {
  const ctx = await browser.newContext({ viewport: VIEWPORT });
  await ctx.addInitScript(paneMsgsInit);
  const client = process.env.SHARDCAST_CLIENT || (process.env.DEMO_FILES ? path.join(REPO, "clients/js/shardcast.js") : null);
  if (client) {
    await ctx.route((u) => u.pathname === "/client/shardcast.js",
      (route) => route.fulfill({ path: client, contentType: "text/javascript; charset=utf-8" }));
  }
  if (process.env.DEMO_FILES) {
    const pages = { "/": "index.html", "/cursor": "cursor.html", "/chat": "chat.html" };
    await ctx.route((u) => Object.hasOwn(pages, u.pathname),
      (route) => route.fulfill({ path: path.join(REPO, "web", pages[new URL(route.request().url()).pathname]),
        contentType: "text/html; charset=utf-8" }));
  }
  return ctx;
}

// Opens a demo page and waits until it says connected.
async function open(ctx, base, pathq, { label, block = false, count = false } = {}) {
  const page = await ctx.newPage();
  page.label = label;
  page.errors = [];
  page.on("pageerror", (e) => page.errors.push(String(e)));
  if (VERBOSE) page.on("console", (m) => console.log(`  [${label}] ${m.text()}`));
  if (block) await page.addInitScript(blockWebSocket);
  else if (count) await page.addInitScript(countWebSocket);
  await page.goto(base + pathq);
  await until(page, `${label}: page shows connected`, () => document.getElementById("state")?.dataset.state === "connected");
  return page;
}

const transportOf = (page) => page.evaluate(() => window.demo.sc.transport);
const connOf = (page) => page.evaluate(() => window.demo.sc.conn);

function noErrors(tag, pages) {
  const errors = pages.flatMap((p) => p.errors.map((e) => `${p.label}: ${e}`));
  check(`${tag}: no script errors`, errors.length === 0, errors);
}

// ---------------------------------------------------------------- 1. cursors
async function cursorScenario(ctx, d, { sse }) {
  const tag = sse ? "cursor, B over SSE" : "cursor";
  const A = await open(ctx, d.url, "/cursor?name=alice", { label: `${tag}: A` });
  const B = await open(ctx, d.url, "/cursor?name=bob", { label: `${tag}: B`, block: sse });
  const pages = [A, B];
  if (sse) {
    const [t, tries] = [await transportOf(B), await B.evaluate(() => window.__wsAttempts)];
    must(`${tag}: B fell back to SSE after its WebSocket failed`, t === "sse" && tries >= 1, { transport: t, wsAttempts: tries });
    must(`${tag}: A uses a WebSocket`, (await transportOf(A)) === "websocket", await transportOf(A));
  }
  for (const p of pages) await until(p, `${p.label}: subscribed to cursor:main`, () => window.demo.subscribed === true);
  const connA = await connOf(A), connB = await connOf(B);

  // Probes: A stamps each mousemove as the browser dispatches it; B stamps each change of A's
  // cursor in its DOM. Both pages are in one browser: timeOrigin + now() is one clock.
  await A.evaluate(() => {
    window.__moves = [];
    window.addEventListener("mousemove", (e) => window.__moves.push({ x: Math.round(e.pageX), y: Math.round(e.pageY),
      t: performance.timeOrigin + performance.now() }), { capture: true });
  });
  const observe = (conn) => {
    window.__seen = [];
    let last = "";
    const note = () => {
      const el = document.querySelector(`[data-conn="${conn}"]`);
      if (!el || el.hidden) return;
      const k = `${el.style.left},${el.style.top}`;
      if (k === last) return;
      last = k;
      window.__seen.push({ left: el.style.left, top: el.style.top, t: performance.timeOrigin + performance.now() });
    };
    new MutationObserver(note).observe(document.body, { subtree: true, childList: true, attributes: true,
      attributeFilter: ["style", "hidden"] });
  };
  await B.evaluate(observe, connA);
  const at = (conn, x, y) => {
    const el = document.querySelector(`[data-conn="${conn}"]`);
    return !!el && !el.hidden && el.style.left === `${x}px` && el.style.top === `${y}px`;
  };

  // Warm-up move (not counted): the path works end to end.
  await A.mouse.move(30, 600);
  await until(B, `${tag}: A's first move shows A's cursor in B`, ([c, x, y]) => {
    const el = document.querySelector(`[data-conn="${c}"]`);
    return !!el && !el.hidden && el.style.left === `${x}px` && el.style.top === `${y}px`;
  }, [connA, 30, 600]);
  const label = await B.evaluate((c) => document.querySelector(`[data-conn="${c}"]`)?.textContent, connA);
  check(`${tag}: A's cursor in B carries A's name from info`, label?.includes("alice"), label);
  const hues = [await B.evaluate((c) => document.querySelector(`[data-conn="${c}"]`)?.dataset.hue, connA),
    await A.evaluate((c) => String(window.demo.hue(c)), connA)];
  check(`${tag}: A's colour in B is the hue of A's connection id`, hues[0] !== undefined && hues[0] === hues[1], hues);

  // 200 moves, each to a new spot; the next one after B shows the last.
  const targets = [];
  for (let i = 0; i < 200; i++) targets.push([60 + (i % 20) * 44, 110 + Math.floor(i / 20) * 44]);
  let lost = null;
  for (const [x, y] of targets) {
    await A.mouse.move(x, y);
    try { await quietly(B, ([c, x, y]) => {
      const el = document.querySelector(`[data-conn="${c}"]`);
      return !!el && !el.hidden && el.style.left === `${x}px` && el.style.top === `${y}px`;
    }, [connA, x, y], 5000); } catch { lost = [x, y]; break; }
  }
  must(`${tag}: all 200 moves of A reached B`, lost === null, { lost });
  const moves = await A.evaluate(() => window.__moves);
  const seen = await B.evaluate(() => window.__seen);
  const lat = [];
  for (const [x, y] of targets) {
    const m = moves.find((v) => v.x === x && v.y === y);
    const s = m && seen.find((v) => v.left === `${x}px` && v.top === `${y}px` && v.t >= m.t - 5);
    lat.push(m && s ? s.t - m.t : Infinity);
  }
  lat.sort((a, b) => a - b);
  const [p50, p99, max] = [percentile(lat, 50), percentile(lat, 99), lat[lat.length - 1]];
  console.log(`     ${tag}: move in A -> A's cursor moved in B, 200 moves: p50 ${p50.toFixed(1)} ms, p99 ${p99.toFixed(1)} ms, max ${max.toFixed(1)} ms`);
  check(`${tag}: every move timed (dispatch in A, DOM change in B)`, Number.isFinite(max), { unmatched: lat.filter((v) => !Number.isFinite(v)).length });
  check(`${tag}: p99 move-to-B latency <= 100 ms`, p99 <= 100, { p50, p99, max });

  // The other way: B's moves reach A (over SSE in the SSE run: publish by POST).
  let back = null;
  for (let i = 0; i < 20; i++) {
    const [x, y] = [500 + i * 9, 420 - i * 7];
    await B.mouse.move(x, y);
    try { await quietly(A, ([c, x, y]) => {
      const el = document.querySelector(`[data-conn="${c}"]`);
      return !!el && !el.hidden && el.style.left === `${x}px` && el.style.top === `${y}px`;
    }, [connB, x, y], 5000); } catch { back = [x, y]; break; }
  }
  check(`${tag}: 20 moves of B reached A`, back === null, { lost: back });

  if (!sse) {
    // A third visitor for the picture: B sees two cursors, and its own.
    const C = await open(ctx, d.url, "/cursor?name=carol", { label: `${tag}: C` });
    pages.push(C);
    await until(C, `${C.label}: subscribed`, () => window.demo.subscribed === true);
    const connC = await connOf(C);
    await C.mouse.move(700, 330);
    await A.mouse.move(250, 240);
    await B.mouse.move(470, 450);
    await until(B, `${tag}: B shows A's and C's cursors where they are`, ([a, c]) => {
      const ok = (conn, x, y) => {
        const el = document.querySelector(`[data-conn="${conn}"]`);
        return !!el && !el.hidden && el.style.left === `${x}px` && el.style.top === `${y}px`;
      };
      return ok(a, 250, 240) && ok(c, 700, 330);
    }, [connA, connC]);
    const shown = await B.evaluate(() => document.querySelectorAll("[data-conn]:not([hidden])").length);
    check(`${tag}: B shows exactly the two other cursors`, shown === 2, shown);
    if (SHOTS) {
      await B.screenshot({ path: path.join(REPO, "docs/demo-cursor.png") });
      console.log("     screenshot docs/demo-cursor.png");
    }
  }

  await A.close();
  pages.splice(pages.indexOf(A), 1);
  await until(B, `${tag}: A closed -> A's cursor left B`, (c) => !document.querySelector(`[data-conn="${c}"]`), connA);
  noErrors(tag, [A, ...pages]);
  for (const p of pages) await p.close();
}

// ---------------------------------------------------------------- 2. chat
// In every page: the numbered (not pending) messages of a chat room's pane, as shown.
function paneMsgsInit() {
  window.__paneMsgs = (room) => [...document.querySelectorAll(`.pane[data-room="${room}"] .msg:not(.pending)`)].map((m) => ({
    name: m.querySelector(".name")?.textContent, text: m.querySelector(".text")?.textContent,
    time: m.querySelector("time")?.textContent, seq: m.dataset.seq }));
}

async function chatScenario(ctx, d, { sse }) {
  const tag = sse ? "chat, B over SSE" : "chat";
  const [rg, rr] = sse ? ["chat:sse-general", "chat:sse-random"] : ["chat:general", "chat:random"];
  const q = `rooms=${rg},${rr}`;
  const subscribedAll = (rooms) => rooms.every((r) => window.demo.rooms.get(r)?.subscribed);
  const A = await open(ctx, d.url, `/chat?name=alice&${q}`, { label: `${tag}: A` });
  await until(A, `${A.label}: subscribed to both rooms`, subscribedAll, [rg, rr]);
  const B = await open(ctx, d.url, `/chat?name=bob&${q}`, { label: `${tag}: B`, block: sse });
  const pages = [A, B];
  if (sse) {
    const [t, tries] = [await transportOf(B), await B.evaluate(() => window.__wsAttempts)];
    must(`${tag}: B fell back to SSE after its WebSocket failed`, t === "sse" && tries >= 1, { transport: t, wsAttempts: tries });
  }
  await until(B, `${B.label}: subscribed to both rooms`, subscribedAll, [rg, rr]);
  const [connA, connB] = [await connOf(A), await connOf(B)];

  await until(A, `${tag}: A shows "bob joined"`, (r) =>
    [...document.querySelectorAll(`.pane[data-room="${r}"] .sys[data-kind="join"]`)].some((e) => e.dataset.name === "bob" && /bob joined/.test(e.textContent)), rg);
  await until(B, `${tag}: B shows its own join`, (r) =>
    !!document.querySelector(`.pane[data-room="${r}"] .sys[data-kind="join"][data-self="true"]`), rg);

  await A.fill("#text", "hello from alice");
  await A.press("#text", "Enter");
  const got = await until(B, `${tag}: A's line appears in B`, (r) =>
    window.__paneMsgs(r).find((m) => m.text === "hello from alice") || null, rg);
  check(`${tag}: with A's name and a time`, got.name === "alice" && /^\d\d:\d\d:\d\d$/.test(got.time || ""), got);
  await B.fill("#text", "hi alice, bob here");
  await B.press("#text", "Enter");
  const back = await until(A, `${tag}: B's line appears in A`, (r) =>
    window.__paneMsgs(r).find((m) => m.text === "hi alice, bob here") || null, rg);
  check(`${tag}: with B's name`, back.name === "bob", back);

  // Another room on the same connection.
  await A.click(`#rooms li[data-room="${rr}"]`);
  await A.fill("#text", "over in random");
  await A.press("#text", "Enter");
  await until(B, `${tag}: a line in the second room reaches B (on the same connection)`, (r) =>
    window.__paneMsgs(r).some((m) => m.text === "over in random" && m.name === "alice"), rr);
  const badge = await B.evaluate((r) => document.querySelector(`#rooms li[data-room="${r}"] .badge`)?.textContent, rr);
  check(`${tag}: B counts it unread in the room list`, badge === "1", badge);
  const inRooms = [await d.presence(rg), await d.presence(rr)];
  check(`${tag}: B's one connection is a member of both rooms (HTTP API presence)`,
    inRooms.every((m) => m.includes(connB) && m.includes(connA)), { connA, connB, inRooms });
  // The box adds a room.
  const extra = sse ? "sse-extra" : "extra";
  await A.fill("#new-room", extra);
  await A.press("#new-room", "Enter");
  await until(A, `${tag}: the add-room box joins chat:${extra}`, (r) =>
    document.querySelector(`#rooms li[data-room="${r}"]`)?.dataset.subscribed === "true", `chat:${extra}`);
  check(`${tag}: A's connection is in chat:${extra}`, (await d.presence(`chat:${extra}`)).includes(connA));
  await A.hover(`#rooms li[data-room="chat:${extra}"]`);
  await A.click(`#rooms li[data-room="chat:${extra}"] .leave`);
  await until(A, `${tag}: its × leaves chat:${extra} again`, (r) => !document.querySelector(`#rooms li[data-room="${r}"]`), `chat:${extra}`);
  const left = await eventually(async () => { const m = await d.presence(`chat:${extra}`); return m.includes(connA) ? null : m; });
  check(`${tag}: A's connection is no longer in chat:${extra} (HTTP API presence)`, left !== null);

  // A later visitor gets the history, above its own join line.
  const C = await open(ctx, d.url, `/chat?name=carol&${q}`, { label: `${tag}: C` });
  pages.push(C);
  const hist = await until(C, `${tag}: C (joining later) shows the history`, (r) => {
    const ms = window.__paneMsgs(r);
    return ms.length >= 2 ? ms : null;
  }, rg);
  check(`${tag}: history is both lines, in order, with names`, JSON.stringify(hist.map((m) => [m.name, m.text])) ===
    JSON.stringify([["alice", "hello from alice"], ["bob", "hi alice, bob here"]]), hist);
  const above = await C.evaluate((r) => {
    const all = [...document.querySelectorAll(`.pane[data-room="${r}"] > *`)];
    const self = all.findIndex((e) => e.matches('.sys[data-kind="join"][data-self="true"]'));
    const msgs = all.map((e, i) => (e.matches(".msg") ? i : -1)).filter((i) => i >= 0);
    return self >= 0 && msgs.length > 0 && msgs.every((i) => i < self);
  }, rg);
  check(`${tag}: C shows the history above its own join line`, above);
  await until(A, `${tag}: A shows "carol joined"`, (r) =>
    [...document.querySelectorAll(`.pane[data-room="${r}"] .sys[data-kind="join"]`)].some((e) => e.dataset.name === "carol"), rg);

  await C.fill("#text", "hey both, carol here");
  await C.press("#text", "Enter");
  await until(A, `${tag}: the later visitor's line reaches A`, (r) =>
    window.__paneMsgs(r).some((m) => m.text === "hey both, carol here" && m.name === "carol"), rg);

  await B.close();
  pages.splice(pages.indexOf(B), 1);
  for (const p of [A, C]) {
    await until(p, `${tag}: B closed -> "bob left" in ${p.label.split(": ")[1]}`, (r) =>
      [...document.querySelectorAll(`.pane[data-room="${r}"] .sys[data-kind="leave"]`)].some((e) => e.dataset.name === "bob" && /bob left/.test(e.textContent)), rg);
  }
  const members = await A.evaluate(() => [...document.querySelectorAll("#members li")].map((li) => li.textContent));
  if (!sse && SHOTS) {
    await A.click(`#rooms li[data-room="${rg}"]`);
    await until(A, `${tag}: A's member list shows alice and carol`, () => {
      const names = [...document.querySelectorAll("#members li")].map((li) => li.textContent).sort();
      return JSON.stringify(names) === JSON.stringify(["alice", "carol"]);
    });
    await A.mouse.move(700, 420);
    await A.screenshot({ path: path.join(REPO, "docs/demo-chat.png") });
    console.log("     screenshot docs/demo-chat.png");
  } else {
    void members;
  }
  noErrors(tag, [B, ...pages]);
  for (const p of pages) await p.close();
}

// ---------------------------------------------------------------- 3. SSE
async function sseScenario(ctx, d) {
  await cursorScenario(ctx, d, { sse: true });
  await chatScenario(ctx, d, { sse: true });
  await cutScenario(ctx, d, { sse: true });
  // ?transport=sse forces SSE: no WebSocket is even tried.
  const P = await open(ctx, d.url, "/chat?name=dora&transport=sse&rooms=chat:forced", { label: "chat ?transport=sse", count: true });
  const [t, tries] = [await transportOf(P), await P.evaluate(() => window.__wsAttempts)];
  check("chat ?transport=sse: connected over SSE without trying a WebSocket", t === "sse" && tries === 0, { transport: t, wsAttempts: tries });
  await until(P, "chat ?transport=sse: subscribed", () => window.demo.rooms.get("chat:forced")?.subscribed);
  await P.evaluate(() => window.demo.send("forced sse"));
  await until(P, "chat ?transport=sse: its own line comes back numbered", () =>
    [...document.querySelectorAll('.pane[data-room="chat:forced"] .msg[data-seq]')].some((m) => m.textContent.includes("forced sse")));
  noErrors("chat ?transport=sse", [P]);
  await P.close();
}

// ---------------------------------------------------------------- 4a. SIGKILL + restart
async function restartScenario(ctx, d) {
  const tag = "restart";
  const cA = await open(ctx, d.url, "/cursor?name=ann", { label: `${tag}: cursor A` });
  const cB = await open(ctx, d.url, "/cursor?name=ben", { label: `${tag}: cursor B` });
  const hA = await open(ctx, d.url, "/chat?name=ann&rooms=chat:restart", { label: `${tag}: chat A` });
  const hB = await open(ctx, d.url, "/chat?name=ben&rooms=chat:restart", { label: `${tag}: chat B` });
  const pages = [cA, cB, hA, hB];
  for (const p of [cA, cB]) await quietly(p, () => window.demo.subscribed === true);
  for (const p of [hA, hB]) await quietly(p, () => window.demo.rooms.get("chat:restart")?.subscribed);
  // Traffic before the kill, so every subscription has a seq to resume from.
  const before = await connOf(cA);
  await cA.mouse.move(120, 200);
  await until(cB, `${tag}: cursors work before the kill`, (c) => document.querySelector(`[data-conn="${c}"]`)?.style.left === "120px", before);
  await hA.evaluate(() => window.demo.send("before the restart"));
  await until(hB, `${tag}: chat works before the kill`, () =>
    [...document.querySelectorAll('.pane[data-room="chat:restart"] .msg[data-seq]')].some((m) => m.textContent.includes("before the restart")));
  await hB.evaluate(() => window.demo.send("ack"));
  await until(hA, `${tag}: chat works both ways before the kill`, () =>
    [...document.querySelectorAll('.pane[data-room="chat:restart"] .msg[data-seq]')].some((m) => m.textContent.includes("ack")));
  const epochOf = (p) => p.evaluate(() => (window.demo.sub ? window.demo.sub.epoch : window.demo.rooms.get("chat:restart").sub.epoch));
  const epochs = await Promise.all(pages.map(epochOf));
  const marks = await Promise.all(pages.map((p) => p.evaluate(() => window.demo.states.length)));

  await d.kill("SIGKILL");
  for (const [i, p] of pages.entries()) {
    await until(p, `${p.label}: shows disconnected after SIGKILL`, (n) =>
      window.demo.states.slice(n).some((s) => s.state === "disconnected") &&
      document.getElementById("state").dataset.state !== "connected", marks[i]);
  }
  const ready = await d.start();
  for (const [i, p] of pages.entries()) {
    await until(p, `${p.label}: reconnected after the restart`, (n) =>
      window.demo.states.slice(n).some((s) => s.state === "connected"), marks[i], BACKOFF.cap + 10000);
    const states = (await p.evaluate(() => window.demo.states)).slice(marks[i]);
    const up = states.find((s) => s.state === "connected").t;
    // Attempts: one "connecting" per try, or the client's own count in the state detail.
    const tries = Math.max(states.filter((s) => s.state === "connecting").length,
      ...states.map((s) => (s.detail && Number.isFinite(s.detail.attempt) ? s.detail.attempt : 0)));
    const bound = Math.min(BACKOFF.cap, BACKOFF.first * 2 ** Math.max(0, tries - 1)) + SLACK;
    console.log(`     ${p.label}: back ${up - ready} ms after the daemon (${tries} attempt(s); bound ${bound} ms)`);
    check(`${p.label}: reconnected within the backoff bound`, up - ready <= bound, { after: up - ready, tries, bound, states });
    // Each retry delay the client announces (detail.delay) stays under its full-jitter ceiling.
    const delays = states.filter((s) => s.state === "disconnected").map((s) => s.detail?.delay);
    const over = delays.filter((v, k) => Number.isFinite(v) && v > Math.min(BACKOFF.cap, BACKOFF.first * 2 ** k));
    check(`${p.label}: announced retry delays within full-jitter ceilings`, over.length === 0, { delays });
  }
  for (const [i, p] of pages.entries()) {
    const dis = await until(p, `${p.label}: discontinuity (not recovered)`, () =>
      window.demo.discontinuities.find((x) => x.reason === "not_recovered") || null);
    const now = await epochOf(p);
    check(`${p.label}: the discontinuity names the new epoch`, dis.epoch !== epochs[i] && dis.epoch === now, { before: epochs[i], dis, now });
  }
  await until(cB, `${tag}: cursor page shows the discontinuity`, () => !!document.querySelector('#log li[data-kind="discontinuity"]'));
  await until(hB, `${tag}: chat page shows the discontinuity`, () =>
    !!document.querySelector('.pane[data-room="chat:restart"] .sys[data-kind="discontinuity"]'));
  await until(hB, `${tag}: chat page shows the outage and the reconnect`, () =>
    ["disconnected", "connected"].every((s) => document.querySelector(`.pane[data-room="chat:restart"] .sys[data-kind="state"][data-state="${s}"]`)));

  // Working again.
  const after = await connOf(cA);
  await cA.mouse.move(333, 321);
  await until(cB, `${tag}: cursors work after the restart`, (c) => {
    const el = document.querySelector(`[data-conn="${c}"]`);
    return el?.style.left === "333px" && el?.style.top === "321px";
  }, after);
  check(`${tag}: cursor B shows only the one other cursor`, (await cB.evaluate(() => document.querySelectorAll("[data-conn]").length)) === 1);
  await hA.evaluate(() => window.demo.send("after the restart"));
  await until(hB, `${tag}: chat works after the restart`, () =>
    [...document.querySelectorAll('.pane[data-room="chat:restart"] .msg[data-seq]')].some((m) => m.textContent.includes("after the restart")));
  if (SHOTS) await hB.screenshot({ path: path.join(REPO, "target/browser-demos-restart.png") });
  noErrors(tag, pages);
  for (const p of pages) await p.close();
}

// ---------------------------------------------------------------- 4b. cut with history intact
async function cutScenario(ctx, d, { sse }) {
  const tag = sse ? "cut, SSE" : "cut";
  const ROOM = sse ? "chat:count-sse" : "chat:count";
  const proxy = await startProxy(d.port);
  try {
    const base = `http://127.0.0.1:${proxy.port}`;
    // Two pages, so that a cut of all connections at once is not one client's luck.
    const pages = [];
    for (const who of ["one", "two"]) {
      const p = await open(ctx, base, `/chat?name=counter-${who}&rooms=${ROOM}`, { label: `${tag}: page ${who}`, block: sse });
      pages.push(p);
      const t = await transportOf(p);
      must(`${p.label}: uses ${sse ? "SSE (its WebSocket fails)" : "a WebSocket"}`, t === (sse ? "sse" : "websocket"), t);
      await quietly(p, (r) => window.demo.rooms.get(r)?.subscribed, ROOM);
    }
    let n = 0;
    const publishTo = async (last) => { while (n < last) await d.publish(ROOM, ++n); };
    const cut = async (label) => {
      const marks = await Promise.all(pages.map((p) => p.evaluate(() => window.demo.states.length)));
      const conns = await Promise.all(pages.map(connOf));
      const had = await Promise.all(pages.map((p) => p.evaluate((r) => window.demo.received(r).length, ROOM)));
      const socks = proxy.cut();
      console.log(`     ${tag}, ${label}: cut ${socks} connection(s) after message ${n}; pages had ${had.join(", ")}`);
      return { marks, conns };
    };
    const reconnected = async (label, { marks, conns }) => {
      for (const [i, p] of pages.entries()) {
        await until(p, `${p.label}: ${label}: disconnected and connected again`, ([m, c]) => {
          const s = window.demo.states.slice(m);
          const down = s.findIndex((x) => x.state === "disconnected");
          return down >= 0 && s.slice(down).some((x) => x.state === "connected") && window.demo.sc.conn !== c;
        }, [marks[i], conns[i]], BACKOFF.cap + 10000);
      }
    };
    await publishTo(200);
    const c1 = await cut("cut 1");
    await publishTo(300);              // while the pages are away
    await reconnected("cut 1", c1);
    await publishTo(400);
    const c2 = await cut("cut 2");
    await publishTo(500);
    await reconnected("cut 2", c2);
    const want = JSON.stringify(Array.from({ length: 500 }, (_, i) => i + 1));
    for (const p of pages) {
      let list = null;
      try {
        list = await quietly(p, ([r, w]) => {
          const l = window.demo.received(r);
          return l.length >= 500 || JSON.stringify(l) === w ? l : null;
        }, [ROOM, want]);
      } catch { list = await p.evaluate((r) => window.demo.received(r), ROOM); }
      const seen = new Set(list);
      const detail = { length: list.length, duplicates: list.length - seen.size,
        missing: Array.from({ length: 500 }, (_, i) => i + 1).filter((i) => !seen.has(i)).slice(0, 20),
        firstOutOfOrder: list.findIndex((v, i) => i > 0 && v <= list[i - 1]) };
      check(`${p.label}: received exactly 1..500 across two cuts (none lost, none twice, in order)`, JSON.stringify(list) === want, detail);
      const dis = await p.evaluate(() => window.demo.discontinuities);
      check(`${p.label}: no discontinuity (history was intact)`, dis.length === 0, dis);
    }
    noErrors(tag, pages);
    for (const p of pages) await p.close();
  } finally {
    await proxy.close();
  }
}

// ---------------------------------------------------------------- main
const SCENARIOS = {
  cursor: (ctx, d) => cursorScenario(ctx, d, { sse: false }),
  chat: (ctx, d) => chatScenario(ctx, d, { sse: false }),
  sse: sseScenario,
  cut: (ctx, d) => cutScenario(ctx, d, { sse: false }),
  restart: restartScenario,
};
const wanted = process.argv.slice(2).length ? process.argv.slice(2) : Object.keys(SCENARIOS);
for (const w of wanted) if (!SCENARIOS[w]) { console.error(`unknown scenario ${w}; known: ${Object.keys(SCENARIOS).join(" ")}`); process.exit(2); }

const dir = fs.mkdtempSync(path.join(os.tmpdir(), "shardcast-demos-"));
const daemon = new Daemon(await freePort(), await freePort(), dir);
fs.mkdirSync(path.dirname(daemon.log), { recursive: true });
fs.writeFileSync(daemon.log, "");
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         // Pages fulfilled by the test (DEMO_FILES) have no address of their own, so Chromium's
         // local network access checks would refuse their connections to 127.0.0.1.
         ...(process.env.DEMO_FILES || process.env.SHARDCAST_CLIENT ? ["--disable-features=LocalNetworkAccessChecks"] : [])],
});
try {
  await daemon.start();
  for (const w of wanted) {
    console.log(`== ${w}`);
    const ctx = await newContext(browser);
    try {
      await SCENARIOS[w](ctx, daemon);
    } catch (e) {
      if (!(e instanceof Abort)) check(`${w}: ran to the end`, false, String(e && e.stack || e).split("\n").slice(0, 4).join(" | "));
    } finally {
      await ctx.close().catch(() => {});
    }
  }
} finally {
  await browser.close();
  await daemon.kill("SIGINT");
  fs.rmSync(dir, { recursive: true, force: true });
}
console.log(failed ? `demos: ${failed} failed, ${passed} passed` : `demos: all ${passed} passed`);
process.exit(failed ? 1 : 0);
