// shardcast JavaScript client: an ES module with no dependencies, for browsers and Node 20+.
//
//   import { connect } from "/client/shardcast.js";
//   const sc = connect("ws://127.0.0.1:8080/ws", { info: { name: "ada" } });
//   const sub = sc.subscribe("chat:42", { presence: true });
//   sub.on("message", (m) => console.log(m.seq, m.data));
//   await sc.publish("chat:42", { text: "hi" });
//
// The envelope protocol is docs/protocol.md (subprotocol shardcast.v1.json). The client keeps
// every subscription's last seq and epoch, resubscribes with them after a reconnect, drops
// duplicates, reports what could not be recovered as a `discontinuity`, and queues publishes
// made while disconnected. Transports: WebSocket, and Server-Sent Events (GET /sse and
// POST /sse/<stream>) where WebSocket cannot open.
//
// The pure parts (backoff, resume bookkeeping, publish queue, SSE parsing) are exported for
// tests; they touch no timer, socket or clock of their own.

export const VERSION = "0.1.0";

export const DEFAULT_BACKOFF = Object.freeze({ first: 500, cap: 20000, resetAfter: 10000 });

const SUBPROTOCOL = "shardcast.v1.json";

// ---------------------------------------------------------------------------------------------
// Pure parts
// ---------------------------------------------------------------------------------------------

/** A deterministic random() in [0, 1) from a 32-bit seed (mulberry32), for tests. */
export function seededRandom(seed) {
  let a = seed >>> 0;
  return function random() {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * Full-jitter exponential backoff: a delay in [0, min(cap, first * 2^attempt)) milliseconds,
 * an integer. attempt 0 is the first retry.
 */
export function backoffDelay(attempt, { first = DEFAULT_BACKOFF.first, cap = DEFAULT_BACKOFF.cap } = {}, random = Math.random) {
  const ceiling = Math.min(cap, first * 2 ** Math.min(Math.max(attempt, 0), 40));
  const r = random();
  const x = Math.floor((r >= 0 && r < 1 ? r : 0) * ceiling);
  return Math.min(x, Math.max(ceiling - 1, 0));
}

/**
 * Reconnect timing. `next({now, retryAfterMs})` gives the delay before the next attempt and
 * counts the attempt; `connected(now)` marks a connection up (the count restarts from the first
 * retry when it stayed up `resetAfter` ms); `hint(afterMs, now)` records the server's
 * `{"op":"reconnect","after_ms":N}`: the next retry is made when the hint says (the server
 * already spread its clients over the drain window), without counting an attempt. A
 * `retryAfterMs` (Retry-After of a 429/503) is a lower bound on the delay.
 */
export class Backoff {
  constructor(opts = {}, random = Math.random) {
    this.first = opts.first ?? DEFAULT_BACKOFF.first;
    this.cap = opts.cap ?? DEFAULT_BACKOFF.cap;
    this.resetAfter = opts.resetAfter ?? DEFAULT_BACKOFF.resetAfter;
    this.random = random;
    this.attempt = 0;
    this.connectedAt = null;
    this.hintAt = null;
  }

  connected(now) {
    this.connectedAt = now;
  }

  hint(afterMs, now) {
    this.hintAt = now + Math.max(0, Number(afterMs) || 0);
  }

  next({ now = Date.now(), retryAfterMs = 0 } = {}) {
    if (this.connectedAt !== null) {
      if (now - this.connectedAt >= this.resetAfter) this.attempt = 0;
      this.connectedAt = null;
    }
    let delay;
    if (this.hintAt !== null) {
      delay = Math.max(0, this.hintAt - now);
      this.hintAt = null;
    } else {
      delay = backoffDelay(this.attempt, this, this.random);
      this.attempt += 1;
    }
    return Math.max(delay, retryAfterMs || 0);
  }
}

/** Retry-After (seconds, or an HTTP date) in milliseconds; 0 when absent or unreadable. */
export function parseRetryAfter(value, now = Date.now()) {
  if (value === null || value === undefined) return 0;
  const s = String(value).trim();
  if (/^\d+$/.test(s)) return Number(s) * 1000;
  const t = Date.parse(s);
  return Number.isNaN(t) ? 0 : Math.max(0, t - now);
}

/**
 * Resume bookkeeping of one subscription: the last seq delivered and its epoch.
 *
 * - `request()`: the `since`/`epoch` to put in a subscribe (both known: a resume), and
 *   remembers what was asked.
 * - `subscribed(frame)`: applies the answer; returns a discontinuity `{room, lastSeq, epoch,
 *   reason: "not_recovered"}` when the subscribe was a resume (a known seq was sent) and the
 *   server said `recovered: false`, else null. After a fresh subscribe or a failed resume the
 *   position moves to `frame.seq` (live messages continue at seq + 1).
 * - `message(m)`: `{deliver, discontinuity}`: messages at or below the last seq are duplicates
 *   (deliver false); a message with `gap: true` gives a discontinuity `{reason: "gap"}` with
 *   the last seq delivered before it.
 */
export class RoomPosition {
  constructor(room, { since = null, epoch = null } = {}) {
    this.room = room;
    this.seq = since ?? null;
    this.epoch = epoch ?? null;
    this.asked = null;
  }

  request() {
    const f = {};
    if (this.seq !== null) f.since = this.seq;
    if (this.epoch !== null) f.epoch = this.epoch;
    this.asked = this.seq;
    return f;
  }

  subscribed(frame) {
    const resumed = this.asked !== null;
    let d = null;
    if (resumed && frame.recovered !== true) {
      d = { room: this.room, lastSeq: this.asked, epoch: frame.epoch, reason: "not_recovered" };
    }
    if (!resumed || frame.recovered !== true) this.seq = frame.seq;
    this.epoch = frame.epoch;
    this.asked = null;
    return d;
  }

  message(m) {
    if (this.seq !== null && m.seq <= this.seq) return { deliver: false, discontinuity: null };
    const d = m.gap === true ? { room: this.room, lastSeq: this.seq, epoch: this.epoch, reason: "gap" } : null;
    this.seq = m.seq;
    return { deliver: true, discontinuity: d };
  }
}

/**
 * Publishes made while disconnected, oldest first, at most `max`: `push` returns the entries
 * pushed out (the oldest) to make room, which the caller rejects with "queue_full".
 */
export class PublishQueue {
  constructor(max = 1000) {
    this.max = Math.max(0, max);
    this.items = [];
  }

  get length() {
    return this.items.length;
  }

  push(item) {
    this.items.push(item);
    const over = this.items.length - this.max;
    return over > 0 ? this.items.splice(0, over) : [];
  }

  remove(item) {
    const i = this.items.indexOf(item);
    if (i >= 0) this.items.splice(i, 1);
    return i >= 0;
  }

  drain() {
    const all = this.items;
    this.items = [];
    return all;
  }
}

/**
 * An SSE (text/event-stream) parser: feed it decoded text in any chunks; it calls
 * `onEvent({data, id, event})` per event with data, and `onComment(text)` per comment line.
 */
export function sseParser(onEvent, onComment = () => {}) {
  let buf = "";
  let data = [];
  let id = null;
  let event = null;
  const line = (l) => {
    if (l === "") {
      if (data.length) onEvent({ data: data.join("\n"), id, event });
      data = [];
      event = null;
      return;
    }
    if (l[0] === ":") {
      onComment(l.slice(1).replace(/^ /, ""));
      return;
    }
    const c = l.indexOf(":");
    const field = c < 0 ? l : l.slice(0, c);
    let value = c < 0 ? "" : l.slice(c + 1);
    if (value[0] === " ") value = value.slice(1);
    if (field === "data") data.push(value);
    else if (field === "id") id = value;
    else if (field === "event") event = value;
  };
  return function feed(chunk) {
    buf += chunk;
    let start = 0;
    for (let i = 0; i < buf.length; i++) {
      const ch = buf[i];
      if (ch === "\n") {
        line(buf.slice(start, i));
        start = i + 1;
      } else if (ch === "\r") {
        if (i + 1 === buf.length) break; // a \r\n may be split across chunks
        line(buf.slice(start, i));
        if (buf[i + 1] === "\n") i++;
        start = i + 1;
      }
    }
    buf = buf.slice(start);
  };
}

/** The WebSocket and SSE endpoints for a `ws(s)://host/ws` or `http(s)://host` URL. */
export function endpoints(url, base = globalThis.location?.href) {
  const u = new URL(url, base);
  const secure = u.protocol === "wss:" || u.protocol === "https:";
  if (!["ws:", "wss:", "http:", "https:"].includes(u.protocol)) {
    throw new Error(`shardcast: unsupported URL scheme ${u.protocol}`);
  }
  let path = u.pathname;
  if (path === "" || path === "/") path = "/ws";
  const ws = new URL(u.href);
  ws.protocol = secure ? "wss:" : "ws:";
  ws.pathname = path;
  ws.hash = "";
  const sse = new URL(u.href);
  sse.protocol = secure ? "https:" : "http:";
  sse.pathname = path.endsWith("/ws") ? path.slice(0, -3) + "/sse" : path.replace(/\/$/, "") + "/sse";
  sse.hash = "";
  return { ws: ws.href, sse: sse.href };
}

/** Query text for GET /sse from subscriptions [{room, since?, epoch?, presence}]. */
export function sseQuery(subs) {
  const rooms = [];
  const since = [];
  const epoch = [];
  const presence = [];
  for (const s of subs) {
    rooms.push(s.room);
    if (s.since !== undefined && s.since !== null) since.push(`${s.room}:${s.since}`);
    if (s.epoch !== undefined && s.epoch !== null) epoch.push(`${s.room}:${s.epoch}`);
    if (s.presence) presence.push(s.room);
  }
  const parts = [];
  // Room names are A-Z a-z 0-9 _ . : - only: ":" and "," need no escaping in a query.
  if (rooms.length) parts.push(`rooms=${rooms.join(",")}`);
  if (since.length) parts.push(`since=${since.join(",")}`);
  if (epoch.length) parts.push(`epoch=${epoch.join(",")}`);
  if (presence.length) parts.push(`presence=${presence.join(",")}`);
  return parts.join("&");
}

/** A random session name: `n` characters of A-Z a-z 0-9 _ -. */
export function randomSession(n = 22) {
  const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";
  const bytes = new Uint8Array(n);
  if (globalThis.crypto?.getRandomValues) globalThis.crypto.getRandomValues(bytes);
  else for (let i = 0; i < n; i++) bytes[i] = Math.floor(Math.random() * 256);
  let s = "";
  for (const b of bytes) s += alphabet[b & 63];
  return s;
}

function toBase64(bytes) {
  let bin = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    bin += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(bin);
}

function fromBase64(text) {
  const bin = atob(text);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

/** The payload of a server map: bytes (Uint8Array) when it says "enc":"base64". */
function payload(map, key) {
  const v = map[key];
  return map.enc === "base64" && typeof v === "string" ? fromBase64(v) : v;
}

function scError(code, reason, extra) {
  const e = new Error(reason ? `${code}: ${reason}` : code);
  e.code = code;
  if (reason !== undefined) e.reason = reason;
  if (extra) Object.assign(e, extra);
  return e;
}

function report(e) {
  if (typeof globalThis.reportError === "function") globalThis.reportError(e);
  else setTimeout(() => { throw e; });
}

class Emitter {
  constructor() {
    this._handlers = new Map();
  }

  on(event, fn) {
    if (!this._handlers.has(event)) this._handlers.set(event, new Set());
    this._handlers.get(event).add(fn);
    return this;
  }

  off(event, fn) {
    this._handlers.get(event)?.delete(fn);
    return this;
  }

  once(event, fn) {
    const w = (...a) => {
      this.off(event, w);
      fn(...a);
    };
    return this.on(event, w);
  }

  _emit(event, ...args) {
    const set = this._handlers.get(event);
    if (!set) return;
    for (const fn of [...set]) {
      try {
        fn(...args);
      } catch (e) {
        report(e); // an application handler's exception never breaks the client
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Transports. Each calls onFrame(frame) per server frame and onClose({code, reason, status,
// retryAfterMs}) once; close() ends it silently.
// ---------------------------------------------------------------------------------------------

class WsTransport {
  constructor(url, WS, handlers) {
    this.kind = "websocket";
    this.h = handlers;
    this.done = false;
    try {
      this.ws = new WS(url, SUBPROTOCOL);
    } catch (e) {
      this.ws = null;
      setTimeout(() => this._end({ code: 1006, reason: String(e?.message ?? e) }), 0);
      return;
    }
    this.ws.onmessage = (ev) => {
      if (this.done || typeof ev.data !== "string") return;
      let f;
      try {
        f = JSON.parse(ev.data);
      } catch {
        return;
      }
      if (f && typeof f === "object") this.h.onFrame(f);
    };
    this.ws.onclose = (ev) => this._end({ code: ev.code ?? 1006, reason: ev.reason ?? "" });
    this.ws.onerror = () => {};
  }

  _end(info) {
    if (this.done) return;
    this.done = true;
    this.h.onClose(info);
  }

  send(frame) {
    if (this.done || !this.ws || this.ws.readyState !== 1) return;
    this.ws.send(JSON.stringify(frame));
  }

  close() {
    this.done = true;
    if (!this.ws) return;
    this.ws.onmessage = this.ws.onclose = this.ws.onerror = null;
    try {
      this.ws.close(1000);
    } catch {
      // already closed
    }
  }
}

class SseTransport {
  constructor(url, postBase, token, fetchFn, idleMs, handlers) {
    this.kind = "sse";
    this.idleMs = idleMs;
    this.idle = null;
    this.h = handlers;
    this.done = false;
    this.postBase = postBase;
    this.token = token;
    this.fetch = fetchFn;
    this.stream = null;
    this.outbox = [];
    this.posting = false;
    this.ac = new AbortController();
    this._run(url);
  }

  _headers(extra) {
    const h = { ...extra };
    if (this.token) h.Authorization = `Bearer ${this.token}`;
    return h;
  }

  async _run(url) {
    let res;
    try {
      res = await this.fetch(url, {
        headers: this._headers({ Accept: "text/event-stream" }),
        signal: this.ac.signal,
        cache: "no-store",
        credentials: "same-origin",
      });
    } catch (e) {
      this._end({ code: 1006, reason: String(e?.message ?? e) });
      return;
    }
    const type = res.headers.get("content-type") ?? "";
    if (res.status !== 200 || !type.startsWith("text/event-stream") || !res.body) {
      const retryAfterMs = res.status === 429 || res.status === 503 ? parseRetryAfter(res.headers.get("retry-after")) : 0;
      try {
        await res.body?.cancel();
      } catch {
        // ignore
      }
      this._end({ code: 1006, reason: `HTTP ${res.status}`, status: res.status, retryAfterMs });
      return;
    }
    const feed = sseParser((ev) => {
      if (this.done) return;
      let f;
      try {
        f = JSON.parse(ev.data);
      } catch {
        return;
      }
      if (!f || typeof f !== "object") return;
      if (f.op === "welcome") this.stream = f.stream;
      if (f.op === "close") {
        this._end({ code: f.code ?? 1006, reason: f.reason ?? "" });
        this.ac.abort();
        return;
      }
      this.h.onFrame(f);
    });
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    // The server sends ": ping" every heartbeat interval: a stream silent for much longer is
    // dead (a network that vanished without closing the connection).
    const arm = () => {
      clearTimeout(this.idle);
      if (this.idleMs > 0) this.idle = setTimeout(() => this._end({ code: 1006, reason: "SSE stream idle" }), this.idleMs);
    };
    arm();
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done || this.done) break;
        arm();
        feed(decoder.decode(value, { stream: true }));
      }
    } catch (e) {
      this._end({ code: 1006, reason: String(e?.message ?? e) });
      return;
    }
    this._end({ code: 1006, reason: "stream ended" });
  }

  _end(info) {
    if (this.done) return;
    this.done = true;
    clearTimeout(this.idle);
    this.ac.abort();
    this.h.onClose(info);
  }

  // Posts go one at a time, in order: separate requests could overtake each other.
  send(frame) {
    if (this.done) return;
    this.outbox.push(frame);
    if (!this.posting) this._pump();
  }

  async _pump() {
    this.posting = true;
    while (this.outbox.length && !this.done) {
      const frame = this.outbox.shift();
      let res;
      try {
        res = await this.fetch(`${this.postBase}/${encodeURIComponent(this.stream)}`, {
          method: "POST",
          headers: this._headers({ "Content-Type": "application/json" }),
          body: JSON.stringify(frame),
          signal: this.ac.signal,
          credentials: "same-origin",
        });
      } catch (e) {
        this._end({ code: 1006, reason: `POST failed: ${e?.message ?? e}` });
        break;
      }
      try {
        await res.body?.cancel();
      } catch {
        // ignore
      }
      if (res.status === 202 || res.status === 200 || res.status === 204) continue;
      if (res.status === 404) {
        this._end({ code: 1006, reason: "SSE stream gone (404)" });
        break;
      }
      this.h.onSendError(frame, res.status);
    }
    this.posting = false;
  }

  close() {
    this.done = true;
    clearTimeout(this.idle);
    this.ac.abort();
  }
}

// ---------------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------------

/** One room on a client. Events: message, join, leave, subscribed, discontinuity, unsubscribed, error. */
export class Subscription extends Emitter {
  constructor(client, room, opts) {
    super();
    this._client = client;
    this.room = room;
    this.presence = !!opts.presence;
    this._pos = new RoomPosition(room, { since: opts.since, epoch: opts.epoch });
    /** "subscribing" | "subscribed" | "unsubscribed" */
    this.state = "subscribing";
    this._gen = -1; // the connection it was requested on
  }

  get seq() {
    return this._pos.seq;
  }

  get epoch() {
    return this._pos.epoch;
  }

  unsubscribe() {
    return this._client._unsubscribe(this);
  }
}

const RESENT = new Set(["publish", "presence", "history"]);

export class Client extends Emitter {
  constructor(url, opts = {}) {
    super();
    this._ends = endpoints(url);
    this._opts = opts;
    this._token = opts.token ?? null;
    this._getToken = opts.getToken ?? null;
    this._WS = opts.WebSocket ?? globalThis.WebSocket;
    this._fetch = opts.fetch ?? globalThis.fetch?.bind(globalThis);
    const transports = opts.transports ?? ["websocket", "sse"];
    this._transports = transports.filter((t) => (t === "websocket" && this._WS) || (t === "sse" && this._fetch));
    if (!this._transports.length) throw new Error("shardcast: no usable transport (no WebSocket or fetch)");
    this.session = opts.session ?? randomSession();
    this._random = opts.random ?? Math.random;
    this._backoff = new Backoff(opts.backoff ?? {}, this._random);
    this._timeout = opts.timeout ?? 10000;
    this._idle = opts.sseIdleTimeout ?? 75000;
    this._queue = new PublishQueue(opts.maxQueued ?? 1000);
    /** "connecting" | "connected" | "disconnected" | "closed" */
    this.state = "connecting";
    this.conn = null;
    this.user = null;
    this.exp = null;
    this.transport = null;
    this._sticky = null; // the transport that worked
    this._cycle = [];
    this._subs = new Map();
    this._pending = new Map(); // key (id, or a string for id-less SSE subscribes) -> request
    this._nextId = 1;
    this._gen = 0;
    this._t = null; // current transport
    this._welcomed = false;
    this._timers = { retry: null, open: null, refresh: null };
    this._lastClose = null;
    setTimeout(() => this._start(), 0); // let the caller attach handlers first
  }

  // -- public API ------------------------------------------------------------------------------

  subscribe(room, opts = {}) {
    if (this.state === "closed") throw scError("closed", "the client is closed");
    if (this._subs.has(room)) throw scError("already_subscribed", `already subscribed to ${room}`);
    const sub = new Subscription(this, room, opts);
    this._subs.set(room, sub);
    if (this._welcomed) this._sendSubscribe(sub);
    return sub;
  }

  publish(room, data) {
    return new Promise((resolve, reject) => {
      if (this.state === "closed") return reject(scError("closed", "the client is closed"));
      const frame = { op: "publish", room, data: data === undefined ? null : data, id: this._nextId++ };
      if (data instanceof ArrayBuffer || ArrayBuffer.isView(data)) {
        const bytes = data instanceof ArrayBuffer ? new Uint8Array(data) : new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
        frame.data = toBase64(bytes);
        frame.enc = "base64";
      }
      const req = { key: frame.id, op: "publish", room, frame, resolve, reject, sent: -1 };
      if (this._welcomed) {
        this._pending.set(req.key, req);
        this._send(req);
      } else {
        for (const old of this._queue.push(req)) {
          old.reject(scError("queue_full", `more than ${this._queue.max} publishes queued while disconnected`));
        }
      }
    });
  }

  presence(room, { by } = {}) {
    const frame = { op: "presence", room };
    if (by) frame.by = by;
    return this._request(frame).then((f) =>
      f.members.map((m) => {
        if (m.enc !== "base64") return m;
        const { enc, ...rest } = m;
        return { ...rest, info: payload(m, "info") };
      }),
    );
  }

  history(room, { since, limit } = {}) {
    const frame = { op: "history", room };
    if (since !== undefined && since !== null) frame.since = since;
    if (limit !== undefined && limit !== null) frame.limit = limit;
    return this._request(frame).then((f) => ({
      room: f.room,
      epoch: f.epoch,
      complete: f.complete,
      messages: f.messages.map((m) => ({ room: f.room, seq: m.seq, from: m.from, data: payload(m, "data") })),
    }));
  }

  close() {
    if (this.state === "closed") return;
    this._terminate({ code: 1000, reason: "closed by the client" });
  }

  // -- requests --------------------------------------------------------------------------------

  _request(frame) {
    return new Promise((resolve, reject) => {
      if (this.state === "closed") return reject(scError("closed", "the client is closed"));
      frame.id = this._nextId++;
      const req = { key: frame.id, op: frame.op, room: frame.room, frame, resolve, reject, sent: -1 };
      this._pending.set(req.key, req);
      if (this._welcomed) this._send(req); // otherwise sent once connected
    });
  }

  _send(req) {
    req.sent = this._gen;
    this._t.send(req.frame);
  }

  _sendSubscribe(sub) {
    const frame = { op: "subscribe", room: sub.room, ...sub._pos.request() };
    if (sub.presence) frame.presence = true;
    frame.id = this._nextId++;
    sub._gen = this._gen;
    sub.state = "subscribing";
    const req = { key: frame.id, op: "subscribe", room: sub.room, frame, sub, resolve() {}, reject() {}, sent: -1 };
    this._pending.set(req.key, req);
    this._send(req);
  }

  _unsubscribe(sub) {
    if (this._subs.get(sub.room) !== sub) return Promise.resolve();
    this._subs.delete(sub.room);
    sub.state = "unsubscribed";
    for (const [k, r] of this._pending) if (r.op === "subscribe" && r.sub === sub) this._pending.delete(k);
    if (!this._welcomed || sub._gen !== this._gen) return Promise.resolve();
    return this._request({ op: "unsubscribe", room: sub.room }).then(
      () => {},
      (e) => {
        if (e.code !== "not_subscribed" && e.code !== "closed") throw e;
      },
    );
  }

  // The request a reply answers: by id, or (replies without one) the oldest request sent on
  // this connection with the reply's op and room.
  _match(op, f) {
    if (f.id !== undefined && f.id !== null) {
      const r = this._pending.get(f.id);
      if (r) this._pending.delete(f.id);
      return r ?? null;
    }
    for (const [k, r] of this._pending) {
      if (r.op === op && r.room === f.room && r.sent === this._gen) {
        this._pending.delete(k);
        return r;
      }
    }
    return null;
  }

  // -- connection ------------------------------------------------------------------------------

  _setState(state, detail = {}) {
    this.state = state;
    this._emit("state", state, detail);
  }

  async _start() {
    if (this.state === "closed") return;
    this._cycle = this._sticky ? [this._sticky] : [...this._transports];
    await this._attempt();
  }

  async _attempt() {
    if (this.state === "closed") return;
    const kind = this._cycle.shift();
    const gen = ++this._gen;
    this._welcomed = false;
    if (this.state !== "connecting") this._setState("connecting", { transport: kind });
    else if (gen === 1) this._emit("state", "connecting", { transport: kind });
    if (this._getToken && (!this._token || (this.exp && this.exp * 1000 <= Date.now()))) {
      try {
        this._token = await this._getToken({ reason: "connect" });
      } catch (e) {
        if (gen !== this._gen || this.state === "closed") return;
        this._failed({ code: 1006, reason: `getToken failed: ${e?.message ?? e}` }, gen);
        return;
      }
      if (gen !== this._gen || this.state === "closed") return;
    }
    const handlers = {
      onFrame: (f) => gen === this._gen && this._onFrame(f),
      onClose: (info) => gen === this._gen && this._failed(info, gen),
      onSendError: (frame, status) => gen === this._gen && this._onSendError(frame, status),
    };
    const info = this._opts.info;
    if (kind === "websocket") {
      const u = new URL(this._ends.ws);
      u.searchParams.set("session", this.session);
      if (info !== undefined) u.searchParams.set("info", JSON.stringify(info));
      if (this._token) u.searchParams.set("token", this._token);
      this._t = new WsTransport(u.href, this._WS, handlers);
    } else {
      // The subscriptions go in the query; the stream answers each with `subscribed`.
      const subs = [];
      for (const sub of this._subs.values()) {
        const s = { room: sub.room, presence: sub.presence, ...sub._pos.request() };
        subs.push(s);
        sub._gen = gen;
        sub.state = "subscribing";
        const key = `sse:${gen}:${sub.room}`;
        this._pending.set(key, { key, op: "subscribe", room: sub.room, sub, resolve() {}, reject() {}, sent: gen });
      }
      const params = [sseQuery(subs), `session=${encodeURIComponent(this.session)}`];
      if (info !== undefined) params.push(`info=${encodeURIComponent(JSON.stringify(info))}`);
      const u = new URL(this._ends.sse);
      const q = u.search ? u.search.slice(1) + "&" : "";
      u.search = q + params.filter(Boolean).join("&");
      const post = new URL(this._ends.sse);
      post.search = "";
      this._t = new SseTransport(u.href, post.href.replace(/\/$/, ""), this._token, this._fetch, this._idle, handlers);
    }
    clearTimeout(this._timers.open);
    this._timers.open = setTimeout(() => {
      if (gen !== this._gen || this._welcomed) return;
      this._t.close();
      this._failed({ code: 1006, reason: `no welcome within ${this._timeout} ms` }, gen);
    }, this._timeout);
  }

  _onWelcome(f) {
    clearTimeout(this._timers.open);
    this._welcomed = true;
    this.conn = f.conn;
    this.user = f.user ?? null;
    this.exp = f.exp ?? null;
    this.transport = this._t.kind;
    this._sticky = this._t.kind;
    this._backoff.connected(Date.now());
    // Resubscribe (subscriptions not already in an SSE query), then the requests that wait for
    // an answer, then the publishes queued while disconnected, all in the order they were made.
    for (const sub of this._subs.values()) if (sub._gen !== this._gen) this._sendSubscribe(sub);
    for (const r of [...this._pending.values()]) if (RESENT.has(r.op) && r.sent !== this._gen) this._send(r);
    for (const r of this._queue.drain()) {
      this._pending.set(r.key, r);
      this._send(r);
    }
    this._scheduleRefresh();
    this._setState("connected", { conn: this.conn, transport: this.transport });
  }

  _failed(info, gen) {
    if (gen !== this._gen || this.state === "closed") return;
    clearTimeout(this._timers.open);
    clearTimeout(this._timers.refresh);
    this._t?.close();
    const wasWelcomed = this._welcomed;
    this._welcomed = false;
    this._lastClose = info;
    this.conn = null;
    // Requests tied to the connection go; the others are sent again on the next one.
    for (const [k, r] of this._pending) {
      if (r.op === "subscribe") this._pending.delete(k);
      else if (r.op === "refresh") {
        this._pending.delete(k);
        r.reject(scError("disconnected", "the connection closed before the answer"));
      } else if (r.op === "unsubscribe") {
        this._pending.delete(k);
        r.resolve();
      } else r.sent = -1;
    }
    for (const sub of this._subs.values()) sub.state = "subscribing";
    if (info.code === 1008 && /replaced by a newer connection/.test(info.reason ?? "")) {
      this._terminate(info);
      return;
    }
    if (info.code === 4001 || info.status === 401) {
      this._renewAndRetry(info, gen);
      return;
    }
    if (!wasWelcomed && this._cycle.length) {
      this._attempt(); // this transport did not open: try the next one now
      return;
    }
    this._retryLater(info);
  }

  _retryLater(info) {
    const delay = this._backoff.next({ now: Date.now(), retryAfterMs: info.retryAfterMs ?? 0 });
    this._setState("disconnected", { code: info.code, reason: info.reason, status: info.status, delay });
    clearTimeout(this._timers.retry);
    this._timers.retry = setTimeout(() => this._start(), delay);
  }

  // After 4001 (or a 401): reconnect only with a new token from getToken.
  async _renewAndRetry(info, gen) {
    const old = this._token;
    let token = null;
    if (this._getToken) {
      this.state = "disconnected"; // announced below, with the delay or as closed
      try {
        token = await this._getToken({ reason: "expired" });
      } catch {
        token = null;
      }
      if (gen !== this._gen || this.state === "closed") return;
    }
    if (!token || token === old) {
      this._terminate(info);
      return;
    }
    this._token = token;
    this.exp = null;
    this._cycle = [];
    this._retryLater(info);
  }

  _terminate(info) {
    this._gen++;
    this._welcomed = false;
    for (const t of Object.values(this._timers)) clearTimeout(t);
    this._t?.close();
    this._t = null;
    this.conn = null;
    const err = scError("closed", "the client is closed");
    for (const r of this._pending.values()) r.reject(err);
    this._pending.clear();
    for (const r of this._queue.drain()) r.reject(err);
    for (const sub of this._subs.values()) sub.state = "unsubscribed";
    this._subs.clear();
    this._setState("closed", { code: info.code, reason: info.reason, status: info.status });
  }

  // -- token refresh ---------------------------------------------------------------------------

  _scheduleRefresh() {
    clearTimeout(this._timers.refresh);
    if (!this._getToken || !this.exp) return;
    const remaining = this.exp * 1000 - Date.now();
    const delay = remaining > 60000 ? remaining - 30000 : Math.max(0, remaining / 2);
    const gen = this._gen;
    this._timers.refresh = setTimeout(() => this._refresh(gen), delay);
  }

  async _refresh(gen) {
    let token;
    try {
      token = await this._getToken({ reason: "refresh" });
    } catch (e) {
      this._emit("error", scError("get_token_failed", String(e?.message ?? e)));
      return;
    }
    if (gen !== this._gen || !this._welcomed || !token || token === this._token) return;
    this._token = token;
    try {
      const f = await this._request({ op: "refresh", token });
      this.exp = f.exp ?? null;
      if (gen === this._gen && this._t?.kind === "sse") this._t.token = token; // posts carry the new one
      this._emit("refreshed", { exp: this.exp });
      if (gen === this._gen) this._scheduleRefresh();
    } catch (e) {
      if (e.code !== "closed" && e.code !== "disconnected") this._emit("error", e);
    }
  }

  // -- frames ----------------------------------------------------------------------------------

  _onSendError(frame, status) {
    const r = frame.id !== undefined ? this._pending.get(frame.id) : null;
    if (!r) return;
    this._pending.delete(frame.id);
    const code = status === 403 ? "forbidden" : status === 401 ? "unauthorized" : "bad_request";
    r.reject(scError(code, `HTTP ${status}`));
    if (r.sub) this._subscribeFailed(r.sub, scError(code, `HTTP ${status}`));
  }

  _subscribeFailed(sub, err) {
    if (this._subs.get(sub.room) === sub) this._subs.delete(sub.room);
    sub.state = "unsubscribed";
    sub._emit("error", err);
  }

  _onFrame(f) {
    switch (f.op) {
      case "welcome":
        this._onWelcome(f);
        return;
      case "message": {
        const sub = this._subs.get(f.room);
        if (!sub || sub.state !== "subscribed") return;
        const { deliver, discontinuity } = sub._pos.message(f);
        if (discontinuity) sub._emit("discontinuity", discontinuity);
        if (!deliver) return;
        const m = { room: f.room, seq: f.seq, from: f.from ?? null, data: payload(f, "data") };
        if (f.gap) m.gap = true;
        sub._emit("message", m);
        return;
      }
      case "subscribed": {
        const r = this._match("subscribe", f);
        const sub = this._subs.get(f.room);
        if (!sub && !r) {
          // A room left while its subscribe was on the way (an SSE query): leave it again.
          this._request({ op: "unsubscribe", room: f.room }).catch(() => {});
          return;
        }
        if (!sub || (r && r.sub !== sub) || (!r && sub.state === "subscribed")) return;
        const d = sub._pos.subscribed(f);
        sub.state = "subscribed";
        sub._emit("subscribed", { room: f.room, seq: f.seq, epoch: f.epoch, recovered: f.recovered === true });
        if (d) sub._emit("discontinuity", d);
        return;
      }
      case "unsubscribed": {
        if (f.reason) {
          const sub = this._subs.get(f.room);
          if (sub) {
            this._subs.delete(f.room);
            sub.state = "unsubscribed";
            sub._emit("unsubscribed", { room: f.room, reason: f.reason });
          }
          return;
        }
        this._match("unsubscribe", f)?.resolve(f);
        return;
      }
      case "join":
      case "leave": {
        const sub = this._subs.get(f.room);
        if (!sub || sub.state !== "subscribed") return;
        const p = { room: f.room, conn: f.conn, info: payload(f, "info") };
        if (f.user !== undefined) p.user = f.user;
        sub._emit(f.op, p);
        return;
      }
      case "presence":
      case "history":
        this._match(f.op, f)?.resolve(f);
        return;
      case "ack":
        this._match("publish", f)?.resolve(f.seq);
        return;
      case "refreshed":
        this._match("refresh", f)?.resolve(f);
        return;
      case "reconnect":
        this._backoff.hint(f.after_ms, Date.now());
        this._emit("reconnect", { afterMs: f.after_ms });
        return;
      case "error":
        this._onError(f);
        return;
      default:
        return;
    }
  }

  _onError(f) {
    const extra = f.retry_after_ms !== undefined ? { retryAfterMs: f.retry_after_ms } : undefined;
    const err = scError(f.code, f.reason, extra);
    let r = null;
    if (f.id !== undefined && f.id !== null) {
      r = this._pending.get(f.id) ?? null;
      if (r) this._pending.delete(f.id);
    } else if (f.code === "room_full" || f.code === "too_many_rooms") {
      // These come without id from the room's home: the subscribe they answer is the only one
      // in flight, if only one is.
      const subs = [...this._pending.values()].filter((x) => x.op === "subscribe" && x.sent === this._gen);
      if (subs.length === 1) {
        r = subs[0];
        this._pending.delete(r.key);
      }
    }
    if (!r) {
      this._emit("error", err);
      return;
    }
    if (r.op === "subscribe") {
      this._subscribeFailed(r.sub, err);
      return;
    }
    r.reject(err);
  }
}

/** Open a client: `connect(url, {token, getToken, info, transports, session, maxQueued, backoff})`. */
export function connect(url, opts = {}) {
  return new Client(url, opts);
}

export default connect;
