// The client against a real daemon (the run's daemon: SHARDCAST_URL from scripts/test-js.sh,
// or one started for this file). WebSocket transport, with the RFC 6455 client of ws-node.mjs.

import test from "node:test";
import assert from "node:assert/strict";
import { connect } from "../shardcast.js";
import { NodeWebSocket, trackedWebSocket } from "./ws-node.mjs";
import { sharedDaemonUrl } from "./daemon.mjs";
import { room, once, state, collect, states, LONG } from "./util.mjs";

const url = await sharedDaemonUrl();
const clients = [];
function client(opts = {}) {
  const sc = connect(url, { WebSocket: NodeWebSocket, transports: ["websocket"], ...opts });
  clients.push(sc);
  return sc;
}
test.after(() => clients.forEach((c) => c.close()));
const range = (a, b) => Array.from({ length: b - a + 1 }, (_, i) => a + i);

test("state machine: connecting, then connected with a conn id over the WebSocket", async () => {
  const sc = client();
  const list = states(sc);
  assert.equal(sc.state, "connecting");
  await state(sc, "connected");
  assert.ok(Number.isInteger(sc.conn) && sc.conn > 0);
  assert.equal(sc.transport, "websocket");
  assert.match(sc.session, /^[A-Za-z0-9_-]{1,64}$/);
  sc.close();
  assert.equal(sc.state, "closed");
  assert.deepEqual(
    list.map(([s]) => s),
    ["connecting", "connected", "closed"],
  );
  await assert.rejects(sc.publish("x", 1), { code: "closed" });
});

test("publish resolves with the ack's seq; the subscriber gets the messages in order", async () => {
  const r = room();
  const a = client();
  const b = client();
  const sub = b.subscribe(r);
  const [s] = await once(sub, "subscribed");
  assert.deepEqual(s, { room: r, seq: 0, epoch: s.epoch, recovered: false });
  assert.equal(sub.state, "subscribed");
  const got = collect(sub);
  const seqs = await Promise.all([a.publish(r, { n: 1 }), a.publish(r, "two"), a.publish(r, null)]);
  assert.deepEqual(seqs, [1, 2, 3]);
  await got.until(3);
  assert.deepEqual(
    got.got.map((m) => [m.seq, m.data, m.from === a.conn, m.room]),
    [
      [1, { n: 1 }, true, r],
      [2, "two", true, r],
      [3, null, true, r],
    ],
  );
  assert.equal(sub.seq, 3);
  assert.equal(sub.epoch, s.epoch);
});

test("binary data goes as base64 with enc and comes back as bytes", async () => {
  const r = room();
  const sc = client();
  const sub = sc.subscribe(r);
  const got = collect(sub);
  await once(sub, "subscribed");
  const seq = await sc.publish(r, new Uint8Array([0, 1, 2, 255]));
  assert.equal(seq, 1);
  const [m] = await got.until(1);
  assert.ok(m.data instanceof Uint8Array);
  assert.deepEqual([...m.data], [0, 1, 2, 255]);
  const h = await sc.history(r);
  assert.deepEqual([...h.messages[0].data], [0, 1, 2, 255]);
});

test("presence: own join, another's join and leave, presence lists by conn and by user", async () => {
  const r = room("chat");
  const a = client({ info: { name: "ada" } });
  const subA = a.subscribe(r, { presence: true });
  const [ownJoin] = await once(subA, "join");
  await state(a, "connected");
  assert.deepEqual(ownJoin, { room: r, conn: a.conn, info: { name: "ada" } });
  const joined = once(subA, "join", (p) => p.conn !== a.conn);
  const b = client({ info: { name: "bob" } });
  const subB = b.subscribe(r, { presence: true });
  const bSubscribed = once(subB, "subscribed");
  const [j] = await joined;
  await bSubscribed;
  assert.deepEqual(j, { room: r, conn: b.conn, info: { name: "bob" } });
  const members = await a.presence(r);
  const expected = [
    { conn: a.conn, info: { name: "ada" } },
    { conn: b.conn, info: { name: "bob" } },
  ].sort((x, y) => x.conn - y.conn);
  assert.deepEqual(members, expected);
  const byUser = await b.presence(r, { by: "user" });
  // Anonymous connections: user null. (docs/protocol.md says one entry for all of them; the
  // daemon gives one entry each: the sum is checked, not the grouping.)
  assert.ok(byUser.length >= 1 && byUser.every((e) => e.user === null), JSON.stringify(byUser));
  assert.equal(byUser.reduce((n, e) => n + e.connections, 0), 2);
  assert.deepEqual(byUser.map((e) => e.info.name).sort(), byUser.length === 2 ? ["ada", "bob"] : [byUser[0].info.name]);
  const left = once(subA, "leave");
  const bConn = b.conn;
  b.close();
  const [l] = await left;
  assert.deepEqual(l, { room: r, conn: bConn, info: { name: "bob" } });
  assert.deepEqual(await a.presence(r), [{ conn: a.conn, info: { name: "ada" } }]);
});

test("history: all, since and limit, with the room's epoch", async () => {
  const r = room();
  const sc = client();
  for (const n of range(1, 5)) assert.equal(await sc.publish(r, { n }), n);
  const all = await sc.history(r);
  assert.equal(all.room, r);
  assert.equal(all.complete, true);
  assert.deepEqual(
    all.messages.map((m) => [m.seq, m.data.n, m.from]),
    range(1, 5).map((n) => [n, n, sc.conn]),
  );
  const page = await sc.history(r, { since: 2, limit: 2 });
  assert.deepEqual(page.messages.map((m) => m.seq), [3, 4]);
  assert.equal(page.epoch, all.epoch);
  // presence and history in flight together on one room are told apart.
  const [p, h] = await Promise.all([sc.presence(r), sc.history(r, { limit: 1 })]);
  assert.deepEqual(p, []);
  assert.deepEqual(h.messages.map((m) => m.seq), [1]);
  const sub = sc.subscribe(r);
  const [s] = await once(sub, "subscribed");
  assert.equal(s.epoch, all.epoch);
  assert.equal(s.seq, 5);
});

test("answers for the same op and room in flight together are matched to their requests", async () => {
  const sc = client();
  const r = room();
  for (const n of range(1, 6)) await sc.publish(r, n);
  const pages = await Promise.all([
    sc.history(r, { since: 4 }),
    sc.history(r, { since: 0, limit: 2 }),
    sc.history(r, { since: 2, limit: 1 }),
  ]);
  assert.deepEqual(
    pages.map((p) => p.messages.map((m) => m.seq)),
    [[5, 6], [1, 2], [3]],
  );
});

test("server errors reject with the code; a refused subscribe emits error and ends", async () => {
  const sc = client();
  await assert.rejects(sc.publish("bad room!", 1), (e) => e.code === "bad_room" && typeof e.reason === "string");
  await assert.rejects(sc.history("bad room!"), { code: "bad_room" });
  const sub = sc.subscribe("bad room!");
  const [err] = await once(sub, "error");
  assert.equal(err.code, "bad_room");
  assert.equal(sub.state, "unsubscribed");
  // The room is free again for a new subscription, and the client goes on working.
  const r = room();
  const ok = sc.subscribe(r);
  await once(ok, "subscribed");
  assert.throws(() => sc.subscribe(r), { code: "already_subscribed" });
  assert.equal(await sc.publish(r, 1), 1);
});

test("unsubscribe: the answer comes, the member leaves, no more messages", async () => {
  const r = room();
  const a = client();
  const watch = a.subscribe(r, { presence: true });
  await once(watch, "subscribed");
  const b = client();
  const sub = b.subscribe(r);
  const got = collect(sub);
  await once(sub, "subscribed");
  await a.publish(r, 1);
  await got.until(1);
  const left = once(watch, "leave", (p) => p.conn === b.conn);
  await sub.unsubscribe();
  assert.equal(sub.state, "unsubscribed");
  await left;
  assert.deepEqual(await a.presence(r), [{ conn: a.conn, info: null }]);
  // A new subscription of b to the room sees seq 3 next; the old one saw nothing after 1.
  await a.publish(r, 2);
  const again = b.subscribe(r);
  const got2 = collect(again);
  const [s] = await once(again, "subscribed");
  assert.equal(s.seq, 2);
  await a.publish(r, 3);
  await got2.until(1);
  assert.deepEqual(got2.got.map((m) => m.seq), [3]);
  assert.deepEqual(got.got.map((m) => m.seq), [1]);
});

test("subscribe with since and epoch: replay when recovered, discontinuity when the epoch is wrong", async () => {
  const r = room();
  const a = client();
  for (const n of range(1, 3)) await a.publish(r, n);
  const { epoch } = await a.history(r, { limit: 0 });
  const b = client();
  const sub = b.subscribe(r, { since: 1, epoch });
  const got = collect(sub);
  const disc = [];
  sub.on("discontinuity", (d) => disc.push(d));
  const [s] = await once(sub, "subscribed");
  assert.deepEqual(s, { room: r, seq: 3, epoch, recovered: true });
  await got.until(2);
  assert.deepEqual(got.got.map((m) => m.data), [2, 3]);
  const c = client();
  const wrong = c.subscribe(r, { since: 1, epoch: epoch + 1 });
  const [d] = await once(wrong, "discontinuity");
  assert.deepEqual(d, { room: r, lastSeq: 1, epoch, reason: "not_recovered" });
  assert.equal(wrong.seq, 3);
  const got3 = collect(wrong);
  await a.publish(r, 4);
  await got3.until(1);
  assert.deepEqual(got3.got.map((m) => m.seq), [4]);
  assert.deepEqual(disc, []);
});

test("resume across a connection cut: 500 numbered messages arrive exactly once, in order", async () => {
  const r = room("resume");
  const tw = trackedWebSocket();
  const subC = client({ WebSocket: tw.WebSocket });
  const pubC = client();
  const sub = subC.subscribe(r);
  await once(sub, "subscribed");
  await state(subC, "connected");
  const firstConn = subC.conn;
  const list = states(subC);
  const got = collect(sub);
  const disc = [];
  sub.on("discontinuity", (d) => disc.push(d));
  const resubscribed = [];
  sub.on("subscribed", (s) => resubscribed.push(s));

  const p1 = range(1, 200).map((n) => pubC.publish(r, { n }));
  await got.until(50);
  // Cut the TCP connection (no close frame) while the first 200 are in flight, and hold the
  // reconnection until 201..400 have been published: those can only come by replay.
  tw.hold();
  const disconnected = once(subC, "state", (s) => s === "disconnected");
  const nextWs = tw.next();
  const cutAt = got.got.length;
  tw.last().destroySocket();
  const [, detail] = await disconnected;
  assert.equal(detail.code, 1006);
  assert.ok(detail.delay >= 0 && detail.delay < 500, `first retry within 0-500 ms, was ${detail.delay}`);
  await nextWs;
  assert.equal(subC.state, "connecting");
  await Promise.all(p1);
  await Promise.all(range(201, 400).map((n) => pubC.publish(r, { n })));
  const reconnected = state(subC, "connected");
  tw.release();
  const p3 = range(401, 500).map((n) => pubC.publish(r, { n }));
  await reconnected;
  await got.until(500);
  const seqs3 = await Promise.all(p3);

  assert.ok(cutAt < 400, `the cut came before the end (${cutAt} received)`);
  assert.deepEqual(
    got.got.map((m) => m.data.n),
    range(1, 500),
  );
  for (let i = 1; i < got.got.length; i++) assert.equal(got.got[i].seq, got.got[i - 1].seq + 1);
  assert.equal(got.got[499].seq, seqs3[99]);
  assert.deepEqual(resubscribed.map((s) => s.recovered), [true], "one resume, recovered");
  assert.deepEqual(disc, [], "no discontinuity");
  assert.notEqual(subC.conn, firstConn);
  assert.deepEqual(
    list.map(([s]) => s),
    ["disconnected", "connecting", "connected"],
  );
  assert.equal(sub.seq, got.got[499].seq);
  // The same session on every connection of the client.
  assert.equal(tw.list.length, 2);
  for (const w of tw.list) assert.equal(new URL(w.url).searchParams.get("session"), subC.session);
});

test("publishes made while disconnected are queued (bounded) and sent after the reconnect", async () => {
  const r = room("queue");
  const tw = trackedWebSocket();
  const pub = client({ WebSocket: tw.WebSocket, maxQueued: 2 });
  const watcher = client();
  const sub = watcher.subscribe(r);
  const got = collect(sub);
  await once(sub, "subscribed");
  await state(pub, "connected");
  assert.equal(await pub.publish(r, "before"), 1);
  tw.hold();
  const down = once(pub, "state", (s) => s === "disconnected");
  tw.last().destroySocket();
  await down;
  const a = pub.publish(r, "a");
  const b = pub.publish(r, "b");
  const c = pub.publish(r, "c");
  await assert.rejects(a, { code: "queue_full" });
  // The sent-again publishes go after the reconnect, in order, with the same ids.
  const up = state(pub, "connected");
  tw.release();
  await up;
  assert.deepEqual(await Promise.all([b, c]), [2, 3]);
  await got.until(3);
  assert.deepEqual(got.got.map((m) => m.data), ["before", "b", "c"]);
});

test("a thrown application handler does not stop the client", { timeout: LONG }, async () => {
  const r = room();
  const sc = client();
  const sub = sc.subscribe(r);
  const got = collect(sub);
  const errors = [];
  const saved = globalThis.reportError;
  globalThis.reportError = (e) => errors.push(e);
  try {
    sub.on("message", () => {
      throw new Error("app bug");
    });
    await once(sub, "subscribed");
    await sc.publish(r, 1);
    await sc.publish(r, 2);
    await got.until(2);
    assert.equal(errors.length, 2);
    assert.equal(errors[0].message, "app bug");
  } finally {
    globalThis.reportError = saved;
  }
});
