// A small RFC 6455 WebSocket client for the tests (Node 20 has no global WebSocket), with the
// browser API the shardcast client uses: new WebSocket(url, protocols), readyState, protocol,
// onopen / onmessage / onclose / onerror, send(text), close(code, reason).
//
// Test extras: `destroySocket()` cuts the TCP connection without a close frame (the client
// sees 1006, as after a network failure); `status` is the HTTP status of a refused upgrade;
// `frames` (when `record` is set on the class) keeps every text message received; a subclass
// may set `static before = async (ws) => {}` to hold the connection until a test releases it;
// `dropIncoming = (data) => bool` hides received messages from the application (lost replies).

import net from "node:net";
import tls from "node:tls";
import crypto from "node:crypto";

const GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

export class NodeWebSocket {
  static CONNECTING = 0;
  static OPEN = 1;
  static CLOSING = 2;
  static CLOSED = 3;
  static before = null;
  static record = false;

  constructor(url, protocols = []) {
    this.url = url;
    this.readyState = 0;
    this.protocol = "";
    this.extensions = "";
    this.status = null;
    this.dropIncoming = null; // test hook: (data) => true hides a received message
    this.frames = this.constructor.record ? [] : null;
    this.onopen = this.onmessage = this.onclose = this.onerror = null;
    this._listeners = { open: [], message: [], close: [], error: [] };
    this._protocols = Array.isArray(protocols) ? protocols : [protocols];
    this._buf = Buffer.alloc(0);
    this._parts = [];
    this._partOp = 0;
    this._closeSent = false;
    this._closeInfo = null;
    this._closed = false;
    this._socket = null;
    const before = this.constructor.before;
    Promise.resolve(before ? before(this) : undefined).then(
      () => this._connect(),
      (e) => this._fail(String(e)),
    );
  }

  addEventListener(type, fn) {
    this._listeners[type]?.push(fn);
  }

  removeEventListener(type, fn) {
    const l = this._listeners[type];
    if (l && l.includes(fn)) l.splice(l.indexOf(fn), 1);
  }

  _dispatch(type, ev) {
    ev.type = type;
    ev.target = this;
    try {
      this[`on${type}`]?.(ev);
    } finally {
      for (const fn of [...this._listeners[type]]) fn(ev);
    }
  }

  _connect() {
    if (this._closed) return;
    const u = new URL(this.url);
    const secure = u.protocol === "wss:";
    const port = Number(u.port || (secure ? 443 : 80));
    const host = u.hostname.replace(/^\[|\]$/g, "");
    this._key = crypto.randomBytes(16).toString("base64");
    const s = secure ? tls.connect({ host, port, servername: host }) : net.connect({ host, port });
    this._socket = s;
    s.setNoDelay(true);
    s.once(secure ? "secureConnect" : "connect", () => {
      const lines = [
        `GET ${u.pathname}${u.search} HTTP/1.1`,
        `Host: ${u.host}`,
        "Upgrade: websocket",
        "Connection: Upgrade",
        `Sec-WebSocket-Key: ${this._key}`,
        "Sec-WebSocket-Version: 13",
      ];
      if (this._protocols.length) lines.push(`Sec-WebSocket-Protocol: ${this._protocols.join(", ")}`);
      s.write(lines.join("\r\n") + "\r\n\r\n");
    });
    s.on("data", (d) => this._data(d));
    s.on("error", () => {
      if (!this._errored) {
        this._errored = true;
        this._dispatch("error", {});
      }
    });
    s.on("close", () => this._finish());
  }

  _fail(reason) {
    this._closeInfo ??= { code: 1006, reason };
    this._socket?.destroy();
    if (!this._socket) this._finish();
  }

  _finish() {
    if (this._closed) return;
    this._closed = true;
    this.readyState = 3;
    clearTimeout(this._closeTimer);
    const info = this._closeInfo ?? { code: 1006, reason: "" };
    const clean = !!this._closeInfo && info.code !== 1006;
    this._dispatch("close", { code: info.code, reason: info.reason, wasClean: clean });
  }

  _data(d) {
    this._buf = this._buf.length ? Buffer.concat([this._buf, d]) : d;
    if (this.readyState === 0) {
      const end = this._buf.indexOf("\r\n\r\n");
      if (end < 0) return;
      const head = this._buf.subarray(0, end).toString("latin1").split("\r\n");
      this._buf = this._buf.subarray(end + 4);
      const m = /^HTTP\/1\.1 (\d{3})/.exec(head[0]);
      this.status = m ? Number(m[1]) : null;
      const headers = {};
      for (const l of head.slice(1)) {
        const c = l.indexOf(":");
        if (c > 0) headers[l.slice(0, c).trim().toLowerCase()] = l.slice(c + 1).trim();
      }
      this.headers = headers;
      const accept = crypto.createHash("sha1").update(this._key + GUID).digest("base64");
      if (this.status !== 101 || headers["sec-websocket-accept"] !== accept) {
        this._fail(`upgrade refused: HTTP ${this.status}`);
        return;
      }
      this.protocol = headers["sec-websocket-protocol"] ?? "";
      this.readyState = 1;
      this._dispatch("open", {});
    }
    this._frames();
  }

  _frames() {
    while (!this._closed) {
      const b = this._buf;
      if (b.length < 2) return;
      const fin = (b[0] & 0x80) !== 0;
      const op = b[0] & 0x0f;
      if ((b[0] & 0x70) !== 0 || (b[1] & 0x80) !== 0) return this._protocolError("bad frame header");
      let len = b[1] & 0x7f;
      let off = 2;
      if (len === 126) {
        if (b.length < 4) return;
        len = b.readUInt16BE(2);
        off = 4;
      } else if (len === 127) {
        if (b.length < 10) return;
        len = Number(b.readBigUInt64BE(2));
        off = 10;
      }
      if (b.length < off + len) return;
      const body = b.subarray(off, off + len);
      this._buf = b.subarray(off + len);
      if (op === 0x8) {
        const code = body.length >= 2 ? body.readUInt16BE(0) : 1005;
        const reason = body.length > 2 ? body.subarray(2).toString("utf8") : "";
        this._closeInfo ??= { code, reason };
        if (!this._closeSent) this._writeFrame(0x8, body.length >= 2 ? body.subarray(0, 2) : Buffer.alloc(0));
        this.readyState = 2;
        this._socket.end();
        this._closeTimer = setTimeout(() => this._socket.destroy(), 2000);
        return;
      }
      if (op === 0x9) {
        this._writeFrame(0xa, body);
        continue;
      }
      if (op === 0xa) continue;
      if (op === 0x0 || op === 0x1 || op === 0x2) {
        if (op !== 0) this._partOp = op;
        this._parts.push(Buffer.from(body));
        if (!fin) continue;
        const all = Buffer.concat(this._parts);
        this._parts = [];
        const data = this._partOp === 1 ? all.toString("utf8") : all;
        if (this.frames && typeof data === "string") this.frames.push(data);
        if (this.dropIncoming && this.dropIncoming(data)) continue;
        if (this.readyState === 1) this._dispatch("message", { data });
        continue;
      }
      return this._protocolError(`unknown opcode ${op}`);
    }
  }

  _protocolError(reason) {
    this._closeInfo ??= { code: 1002, reason };
    this._socket.destroy();
  }

  _writeFrame(op, payload) {
    if (!this._socket || this._socket.destroyed) return;
    const mask = crypto.randomBytes(4);
    const len = payload.length;
    let head;
    if (len < 126) {
      head = Buffer.from([0x80 | op, 0x80 | len]);
    } else if (len < 65536) {
      head = Buffer.alloc(4);
      head[0] = 0x80 | op;
      head[1] = 0x80 | 126;
      head.writeUInt16BE(len, 2);
    } else {
      head = Buffer.alloc(10);
      head[0] = 0x80 | op;
      head[1] = 0x80 | 127;
      head.writeBigUInt64BE(BigInt(len), 2);
    }
    const masked = Buffer.alloc(len);
    for (let i = 0; i < len; i++) masked[i] = payload[i] ^ mask[i & 3];
    this._socket.write(Buffer.concat([head, mask, masked]));
    if (op === 0x8) this._closeSent = true;
  }

  send(data) {
    if (this.readyState === 0) throw new Error("InvalidStateError: still connecting");
    if (this.readyState !== 1) return;
    if (typeof data === "string") this._writeFrame(0x1, Buffer.from(data, "utf8"));
    else this._writeFrame(0x2, Buffer.from(data));
  }

  close(code = 1000, reason = "") {
    if (this.readyState >= 2) return;
    if (this.readyState === 0) {
      this.readyState = 2;
      this._fail("closed before open");
      return;
    }
    this.readyState = 2;
    const r = Buffer.from(reason, "utf8");
    const body = Buffer.alloc(2 + r.length);
    body.writeUInt16BE(code, 0);
    r.copy(body, 2);
    this._writeFrame(0x8, body);
    this._closeInfo ??= { code, reason };
    this._closeTimer = setTimeout(() => this._socket?.destroy(), 2000);
  }

  /** Test helper: cut the TCP connection, no close frame (the peer and we see 1006). */
  destroySocket() {
    this._closeInfo = { code: 1006, reason: "cut by the test" };
    this._socket?.destroy();
    if (!this._socket) this._finish();
  }
}

/**
 * A WebSocket class for one client that keeps every instance (`list`), optionally holds new
 * connections until `release()` (after `hold()`), and records received frames.
 */
export function trackedWebSocket({ record = false } = {}) {
  const list = [];
  let gate = null;
  let open = null;
  class Tracked extends NodeWebSocket {
    static record = record;
    static before = () => gate;
    constructor(url, protocols) {
      super(url, protocols);
      list.push(this);
      for (const w of waiters.splice(0)) w(this);
    }
  }
  const waiters = [];
  return {
    WebSocket: Tracked,
    list,
    last: () => list[list.length - 1],
    /** Resolves with the next WebSocket created. */
    next: () => new Promise((r) => waiters.push(r)),
    hold() {
      gate = new Promise((r) => (open = r));
    },
    release() {
      gate = null;
      open?.();
    },
  };
}
