// Unit tests of the client's pure parts: backoff, resume bookkeeping, discontinuity rules,
// publish queue, SSE parsing, URLs. No daemon needed.

import test from "node:test";
import assert from "node:assert/strict";
import {
  Backoff,
  backoffDelay,
  seededRandom,
  RoomPosition,
  PublishQueue,
  parseRetryAfter,
  sseParser,
  sseQuery,
  endpoints,
  randomSession,
} from "../shardcast.js";

test("backoff: full jitter within [0, min(cap, first * 2^n)), doubling to the cap", () => {
  const random = seededRandom(42);
  const opts = { first: 500, cap: 20000 };
  for (let attempt = 0; attempt < 12; attempt++) {
    const ceiling = Math.min(20000, 500 * 2 ** attempt);
    let max = 0;
    let min = Infinity;
    for (let i = 0; i < 2000; i++) {
      const d = backoffDelay(attempt, opts, random);
      assert.ok(Number.isInteger(d), `integer delay, got ${d}`);
      assert.ok(d >= 0 && d < ceiling, `attempt ${attempt}: ${d} not in [0, ${ceiling})`);
      max = Math.max(max, d);
      min = Math.min(min, d);
    }
    // Full jitter: the whole range is used, not just its top (2000 draws).
    assert.ok(max > ceiling * 0.95, `attempt ${attempt}: max ${max} near ${ceiling}`);
    assert.ok(min < ceiling * 0.05, `attempt ${attempt}: min ${min} near 0`);
  }
  // The extremes of random() stay inside the bounds.
  assert.equal(backoffDelay(0, opts, () => 0), 0);
  assert.equal(backoffDelay(0, opts, () => 0.9999999999), 499);
  assert.equal(backoffDelay(50, opts, () => 0.9999999999), 19999);
});

test("backoff: jitter is spread (mean near half the ceiling) and seeded runs repeat", () => {
  const a = seededRandom(7);
  const b = seededRandom(7);
  let sum = 0;
  for (let i = 0; i < 5000; i++) {
    const x = backoffDelay(3, {}, a);
    assert.equal(x, backoffDelay(3, {}, b));
    sum += x;
  }
  const mean = sum / 5000;
  assert.ok(Math.abs(mean - 2000) < 100, `mean ${mean} of [0, 4000)`);
  const c = seededRandom(8);
  const same = Array.from({ length: 20 }, () => backoffDelay(3, {}, c));
  const d = seededRandom(7);
  assert.notDeepEqual(same, Array.from({ length: 20 }, () => backoffDelay(3, {}, d)));
});

test("Backoff: counts attempts, resets after resetAfter connected, not after a short connection", () => {
  const bo = new Backoff({ first: 500, cap: 20000, resetAfter: 10000 }, () => 0.9999999);
  const seq = [];
  let now = 0;
  for (let i = 0; i < 8; i++) seq.push(bo.next({ now }));
  assert.deepEqual(seq, [499, 999, 1999, 3999, 7999, 15999, 19999, 19999]);
  // Connected 9.9 s: no reset, the count goes on.
  bo.connected(now);
  now += 9900;
  assert.equal(bo.next({ now }), 19999);
  // Connected 10 s: back to the first retry's range.
  bo.connected(now);
  now += 10000;
  assert.equal(bo.next({ now }), 499);
  assert.equal(bo.next({ now }), 999);
});

test("Backoff: the server's reconnect hint sets the next delay without counting an attempt", () => {
  const bo = new Backoff({}, () => 0.9999999);
  bo.next({ now: 0 });
  bo.next({ now: 0 });
  bo.connected(1000);
  bo.hint(3250, 2000); // reconnect in about 3250 ms from t = 2000
  assert.equal(bo.next({ now: 4000 }), 1250, "the rest of the hint");
  assert.equal(bo.next({ now: 4000 }), 1999, "then the count resumes where it was (attempt 2)");
  bo.hint(100, 5000);
  assert.equal(bo.next({ now: 9000 }), 0, "a hint already passed: at once");
});

test("Backoff: Retry-After is a lower bound on the delay", () => {
  const bo = new Backoff({}, () => 0.5);
  assert.equal(bo.next({ now: 0, retryAfterMs: 3000 }), 3000);
  assert.equal(bo.next({ now: 0, retryAfterMs: 0 }), 500); // attempt 1: 0.5 * 1000
  assert.equal(parseRetryAfter("7"), 7000);
  assert.equal(parseRetryAfter(null), 0);
  assert.equal(parseRetryAfter("soon"), 0);
  const now = Date.parse("Wed, 21 Oct 2026 07:28:00 GMT");
  assert.equal(parseRetryAfter("Wed, 21 Oct 2026 07:28:05 GMT", now), 5000);
});

test("resume bookkeeping: fresh subscribe, then resume with the last seq and epoch", () => {
  const p = new RoomPosition("r");
  assert.deepEqual(p.request(), {}, "fresh: no since, no epoch");
  assert.equal(p.subscribed({ seq: 20, epoch: 3, recovered: false }), null, "fresh: no discontinuity");
  assert.equal(p.seq, 20);
  assert.equal(p.epoch, 3);
  for (const seq of [21, 22, 23]) assert.deepEqual(p.message({ seq }), { deliver: true, discontinuity: null });
  assert.deepEqual(p.request(), { since: 23, epoch: 3 }, "resume from the last delivered");
  assert.equal(p.subscribed({ seq: 30, epoch: 3, recovered: true }), null);
  assert.equal(p.seq, 23, "recovered: the replay (24..30) follows, position unchanged");
  for (const seq of [24, 25]) assert.equal(p.message({ seq }).deliver, true);
  assert.equal(p.seq, 25);
});

test("resume bookkeeping: since/epoch given by the app; since without epoch is still a resume", () => {
  const a = new RoomPosition("r", { since: 17, epoch: 5 });
  assert.deepEqual(a.request(), { since: 17, epoch: 5 });
  const b = new RoomPosition("r", { since: 17 });
  assert.deepEqual(b.request(), { since: 17 });
  assert.deepEqual(b.subscribed({ seq: 40, epoch: 9, recovered: false }), {
    room: "r",
    lastSeq: 17,
    epoch: 9,
    reason: "not_recovered",
  });
  assert.equal(b.seq, 40);
  const c = new RoomPosition("r", { since: 0, epoch: 2 });
  assert.deepEqual(c.request(), { since: 0, epoch: 2 }, "since 0 is a known seq");
});

test("discontinuity: exactly on recovered:false after a resume, with the last seq known", () => {
  const p = new RoomPosition("room:1");
  p.request();
  p.subscribed({ seq: 0, epoch: 100, recovered: false });
  for (const seq of [1, 2, 3, 4, 5]) p.message({ seq });
  p.request();
  const d = p.subscribed({ seq: 0, epoch: 200, recovered: false });
  assert.deepEqual(d, { room: "room:1", lastSeq: 5, epoch: 200, reason: "not_recovered" });
  assert.equal(p.seq, 0, "live messages continue after the new subscribed.seq");
  assert.equal(p.epoch, 200);
  assert.deepEqual(p.message({ seq: 1 }), { deliver: true, discontinuity: null }, "seq 1 of the new epoch is not a duplicate");
  // A resume that recovers gives none; a fresh one that is not recovered gives none.
  p.request();
  assert.equal(p.subscribed({ seq: 1, epoch: 200, recovered: true }), null);
  const q = new RoomPosition("x");
  q.request();
  assert.equal(q.subscribed({ seq: 9, epoch: 1, recovered: false }), null);
});

test("discontinuity: a gap:true message gives one with the last seq before it, and is delivered", () => {
  const p = new RoomPosition("g");
  p.request();
  p.subscribed({ seq: 10, epoch: 4, recovered: false });
  p.message({ seq: 11 });
  const r = p.message({ seq: 15, gap: true });
  assert.deepEqual(r, { deliver: true, discontinuity: { room: "g", lastSeq: 11, epoch: 4, reason: "gap" } });
  assert.equal(p.seq, 15);
  // A jump in seq without gap:true is not a discontinuity (the server flags its own drops).
  assert.deepEqual(p.message({ seq: 17 }), { deliver: true, discontinuity: null });
});

test("duplicates: seq at or below the last delivered is dropped, across a resume", () => {
  const p = new RoomPosition("d");
  p.request();
  p.subscribed({ seq: 0, epoch: 1, recovered: false });
  const delivered = [];
  const feed = (seq) => p.message({ seq }).deliver && delivered.push(seq);
  [1, 2, 3, 3, 2, 4].forEach(feed);
  p.request();
  p.subscribed({ seq: 6, epoch: 1, recovered: true });
  [4, 5, 6, 5, 7].forEach(feed);
  assert.deepEqual(delivered, [1, 2, 3, 4, 5, 6, 7]);
});

test("publish queue: bounded, oldest pushed out first, drained in order", () => {
  const q = new PublishQueue(3);
  assert.deepEqual(q.push("a"), []);
  assert.deepEqual(q.push("b"), []);
  assert.deepEqual(q.push("c"), []);
  assert.deepEqual(q.push("d"), ["a"], "the oldest goes");
  assert.deepEqual(q.push("e"), ["b"]);
  assert.equal(q.length, 3);
  assert.ok(q.remove("d"));
  assert.ok(!q.remove("zz"));
  assert.deepEqual(q.drain(), ["c", "e"]);
  assert.equal(q.length, 0);
  const none = new PublishQueue(0);
  assert.deepEqual(none.push("x"), ["x"], "maxQueued 0: nothing is kept");
});

test("SSE parser: events, ids, comments, CRLF and chunks split anywhere", () => {
  const text = ': ping\r\n\r\nid: r:1\r\ndata: {"op":"message","seq":1}\r\n\r\ndata: a\ndata: b\n\nevent: x\ndata:c\r\r: end\n';
  for (let cut = 1; cut < text.length; cut++) {
    const events = [];
    const comments = [];
    const feed = sseParser((e) => events.push(e), (c) => comments.push(c));
    feed(text.slice(0, cut));
    feed(text.slice(cut));
    assert.deepEqual(
      events,
      [
        { data: '{"op":"message","seq":1}', id: "r:1", event: null },
        { data: "a\nb", id: "r:1", event: null },
        { data: "c", id: "r:1", event: "x" },
      ],
      `cut at ${cut}`,
    );
    assert.deepEqual(comments, ["ping", "end"], `cut at ${cut}`);
  }
});

test("SSE query and endpoints", () => {
  assert.equal(
    sseQuery([
      { room: "a", since: 17, epoch: 5, presence: true },
      { room: "b:1", since: 3, epoch: 5, presence: false },
      { room: "c" },
    ]),
    "rooms=a,b:1,c&since=a:17,b:1:3&epoch=a:5,b:1:5&presence=a",
  );
  assert.deepEqual(endpoints("ws://h:1/ws"), { ws: "ws://h:1/ws", sse: "http://h:1/sse" });
  assert.deepEqual(endpoints("https://h"), { ws: "wss://h/ws", sse: "https://h/sse" });
  assert.deepEqual(endpoints("http://h:8/app/ws?x=1"), { ws: "ws://h:8/app/ws?x=1", sse: "http://h:8/app/sse?x=1" });
  assert.deepEqual(endpoints("/ws", "http://page:3/chat"), { ws: "ws://page:3/ws", sse: "http://page:3/sse" });
  assert.throws(() => endpoints("ftp://h"));
  const s = randomSession();
  assert.match(s, /^[A-Za-z0-9_-]{22}$/);
  assert.notEqual(s, randomSession());
});
