// The client against daemons the tests start, kill and replace: SIGKILL and restart
// (discontinuity), a --takeover drain (reconnect hint, 1012), token expiry and refresh (JWT).

import test from "node:test";
import assert from "node:assert/strict";
import { connect } from "../shardcast.js";
import { NodeWebSocket } from "./ws-node.mjs";
import { startDaemon, baseConfig } from "./daemon.mjs";
import { room, once, state, collect, states, jwt } from "./util.mjs";

const opts = { WebSocket: NodeWebSocket, transports: ["websocket"] };
const range = (a, b) => Array.from({ length: b - a + 1 }, (_, i) => a + i);

test("daemon SIGKILLed and restarted: reconnect within the backoff bounds, discontinuity, queued publish sent", async (t) => {
  let d = await startDaemon();
  t.after(() => d.kill("SIGKILL"));
  const r = room("restart");
  const sc = connect(d.url, opts);
  t.after(() => sc.close());
  const sub = sc.subscribe(r);
  const got = collect(sub);
  const [first] = await once(sub, "subscribed");
  for (const n of range(1, 5)) await sc.publish(r, n);
  await got.until(5);
  const list = states(sc);
  const discontinuity = once(sub, "discontinuity");
  const down = once(sc, "state", (s) => s === "disconnected");
  await d.kill("SIGKILL");
  await down;
  // Published while the daemon is down: queued, sent once connected again.
  const queued = sc.publish(r, "while down");
  // Let the client fail a few attempts against the dead port before the restart.
  while (list.filter(([s]) => s === "disconnected").length < 3) await once(sc, "state");
  d = await d.restart();
  const [disc] = await discontinuity;
  assert.equal(sc.state, "connected");
  assert.deepEqual(disc, { room: r, lastSeq: 5, epoch: disc.epoch, reason: "not_recovered" });
  assert.notEqual(disc.epoch, first.epoch, "the epoch changed");
  assert.equal(await queued, 1, "the queued publish is the first message of the new epoch");
  await got.until(6);
  assert.deepEqual(
    got.got.map((m) => [m.seq, m.data]),
    [...range(1, 5).map((n) => [n, n]), [1, "while down"]],
  );
  // Each retry waited within its full-jitter bound: the n-th consecutive failure's delay is
  // below min(20 s, 500 ms * 2^n).
  const delays = list.filter(([s]) => s === "disconnected").map(([, x]) => x.delay);
  assert.ok(delays.length >= 3);
  delays.forEach((ms, n) => assert.ok(ms >= 0 && ms < Math.min(20000, 500 * 2 ** n), `retry ${n}: ${ms} ms`));
  const after = list.map(([s]) => s);
  assert.equal(after[0], "disconnected");
  assert.equal(after.at(-1), "connected");
  assert.ok(!after.includes("closed"));
});

test("takeover drain: the reconnect hint is honoured, 1012, the client moves to the new process", async (t) => {
  const config = baseConfig('[shutdown]\ndrain_timeout = "2s"\n');
  const a = await startDaemon({ config });
  t.after(() => a.kill("SIGKILL"));
  const r = room("drain");
  // random() near 1: a backoff delay would be 499 ms for the first retry.
  const sc = connect(a.url, { ...opts, random: () => 0.999 });
  t.after(() => sc.close());
  const sub = sc.subscribe(r);
  const got = collect(sub);
  await once(sub, "subscribed");
  await sc.publish(r, "old");
  await got.until(1);
  let hintAt = 0;
  let downAt = 0;
  sc.on("reconnect", () => (hintAt ||= Date.now()));
  sc.on("state", (s) => s === "disconnected" && (downAt ||= Date.now()));
  const hint = once(sc, "reconnect");
  const down = once(sc, "state", (s) => s === "disconnected");
  const discontinuity = once(sub, "discontinuity");
  const b = await startDaemon({ config, port: a.port, args: ["--takeover"] });
  t.after(() => b.kill("SIGKILL"));
  const [h] = await hint;
  assert.ok(Number.isInteger(h.afterMs) && h.afterMs >= 0 && h.afterMs <= 2000, `after_ms ${h.afterMs}`);
  const [, detail] = await down;
  assert.equal(detail.code, 1012);
  // The server spread the clients already: the client reconnects when the hint said (the close
  // comes at about after_ms, so little or nothing is left), not after a backoff.
  const expected = Math.max(0, hintAt + h.afterMs - downAt);
  assert.ok(Math.abs(detail.delay - expected) <= 50, `delay ${detail.delay}, hint left ${expected} ms`);
  const [disc] = await discontinuity;
  assert.equal(disc.reason, "not_recovered");
  assert.equal(disc.lastSeq, 1);
  await state(sc, "connected");
  // (conn ids start again in a new process: the new epoch above tells the processes apart)
  assert.equal(await sc.publish(r, "new"), 1);
  await got.until(2);
  assert.deepEqual(got.got.map((m) => m.data), ["old", "new"]);
  const gone = await a.exit;
  assert.equal(gone.code, 0, "the old process drained and exited");
});

const SECRET = "js-client-test-secret-0123456789abcdef";
const jwtConfig = baseConfig(`[auth]\nmode = "jwt"\nhs256_secret = "${SECRET}"\nleeway = "1s"\n`);
const token = (ttl, sub = "ada") => jwt({ sub, exp: Math.floor(Date.now() / 1000) + ttl, info: { name: sub } }, SECRET);

test("token expiry without getToken: closed with 4001, no reconnect", async (t) => {
  const d = await startDaemon({ config: jwtConfig });
  t.after(() => d.kill("SIGKILL"));
  const sc = connect(d.url, { ...opts, token: token(2) });
  t.after(() => sc.close());
  const list = states(sc);
  await state(sc, "connected");
  assert.equal(sc.user, "ada");
  assert.ok(sc.exp > Date.now() / 1000);
  const [, detail] = await state(sc, "closed");
  assert.equal(detail.code, 4001);
  assert.deepEqual(
    list.map(([s]) => s),
    ["connecting", "connected", "closed"],
  );
  // The client stays closed.
  await assert.rejects(sc.publish("r", 1), { code: "closed" });
  assert.equal(sc.state, "closed");
});

test("getToken refreshes before exp: the connection outlives its first token", async (t) => {
  const d = await startDaemon({ config: jwtConfig });
  t.after(() => d.kill("SIGKILL"));
  const reasons = [];
  const first = token(3);
  const sc = connect(d.url, {
    ...opts,
    token: first,
    getToken: async ({ reason }) => {
      reasons.push(reason);
      return token(3);
    },
  });
  t.after(() => sc.close());
  const list = states(sc);
  await state(sc, "connected");
  const conn = sc.conn;
  const firstExp = sc.exp;
  // Refreshed until the first token's exp + leeway (1 s) is well past.
  while (Date.now() / 1000 < firstExp + 2) {
    const [x] = await once(sc, "refreshed");
    assert.ok(x.exp >= firstExp);
  }
  assert.equal(sc.state, "connected");
  assert.equal(sc.conn, conn, "same connection");
  const r = room();
  assert.equal(await sc.publish(r, "still here"), 1);
  assert.ok(reasons.length >= 1 && reasons.every((x) => x === "refresh"), reasons.join());
  assert.deepEqual(
    list.map(([s]) => s),
    ["connecting", "connected"],
  );
});

test("4001 with getToken giving a new token: reconnect and resume", async (t) => {
  const d = await startDaemon({ config: jwtConfig });
  t.after(() => d.kill("SIGKILL"));
  const initial = token(2);
  const reasons = [];
  const sc = connect(d.url, {
    ...opts,
    token: initial,
    // No new token for a refresh (so the first one expires), a new one after the 4001.
    getToken: async ({ reason }) => {
      reasons.push(reason);
      return reason === "expired" ? token(600) : initial;
    },
  });
  t.after(() => sc.close());
  const r = room();
  const sub = sc.subscribe(r);
  const got = collect(sub);
  await once(sub, "subscribed");
  const resubscribed = [];
  sub.on("subscribed", (x) => resubscribed.push(x));
  await state(sc, "connected");
  const conn = sc.conn;
  await sc.publish(r, 1);
  await got.until(1);
  const [, detail] = await once(sc, "state", (s) => s === "disconnected");
  assert.equal(detail.code, 4001);
  await state(sc, "connected");
  assert.notEqual(sc.conn, conn);
  assert.ok(reasons.includes("expired"));
  await sc.publish(r, 2);
  await got.until(2);
  assert.deepEqual(resubscribed.map((x) => x.recovered), [true]);
  assert.deepEqual(got.got.map((m) => m.data), [1, 2]);
});
