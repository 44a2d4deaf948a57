// Tests of server features of issue #13 not on main yet (helpers/spec-13.md, "Server
// additions"): reply ids on every answer, publish dedup per (user, session, id), and the SSE
// transport. scripts/test-js.sh runs this file only with SHARDCAST_JS_PENDING=1; run alone
// (node --test) it skips itself unless that is set.

import test from "node:test";
import assert from "node:assert/strict";
import { connect } from "../shardcast.js";
import { NodeWebSocket, trackedWebSocket } from "./ws-node.mjs";
import { sharedDaemonUrl, startDaemon, baseConfig } from "./daemon.mjs";
import { room, once, state, collect, states, jwt, withTimeout } from "./util.mjs";

const pending = process.env.SHARDCAST_JS_PENDING === "1";
const skip = pending ? false : "server features not landed yet (SHARDCAST_JS_PENDING=1 runs them)";
const url = pending ? await sharedDaemonUrl() : null;
const clients = [];
function client(opts = {}) {
  const sc = connect(url, { WebSocket: NodeWebSocket, transports: ["websocket"], ...opts });
  clients.push(sc);
  return sc;
}
test.after(() => clients.forEach((c) => c.close()));
const range = (a, b) => Array.from({ length: b - a + 1 }, (_, i) => a + i);

/** A fetch whose SSE streams the test can cut (`cut()`) and whose GETs it can count. */
function trackedFetch() {
  const streams = [];
  const gets = [];
  const f = async (u, init = {}) => {
    const res = await fetch(u, init);
    if ((init.method ?? "GET") !== "GET") return res;
    gets.push({ url: u, status: res.status, headers: res.headers });
    if (!res.body || res.status !== 200) return res;
    const reader = res.body.getReader();
    let ctl;
    const body = new ReadableStream({
      start(c) {
        ctl = c;
      },
      async pull(c) {
        try {
          const { done, value } = await reader.read();
          if (done) c.close();
          else c.enqueue(value);
        } catch (e) {
          c.error(e);
        }
      },
      cancel(reason) {
        return reader.cancel(reason);
      },
    });
    streams.push({
      url: u,
      cut() {
        ctl.error(new Error("cut by the test"));
        reader.cancel().catch(() => {});
      },
    });
    return new Response(body, { status: res.status, headers: res.headers });
  };
  return { fetch: f, streams, gets, last: () => streams[streams.length - 1] };
}

/** A WebSocket that never opens (blocked by a proxy, say). */
class BlockedWebSocket extends NodeWebSocket {
  static before = () => Promise.reject(new Error("blocked by the test"));
}

function sse(opts = {}) {
  const tf = opts.tracked ?? trackedFetch();
  const sc = connect(opts.url ?? url, { transports: ["sse"], fetch: tf.fetch, ...opts });
  clients.push(sc);
  return { sc, tf };
}

// -- reply ids ---------------------------------------------------------------------------------

test("every reply echoes the request's id", { skip }, async () => {
  const tw = trackedWebSocket({ record: true });
  const sc = client({ WebSocket: tw.WebSocket });
  const r = room();
  const sub = sc.subscribe(r, { presence: true });
  await once(sub, "subscribed");
  await sc.publish(r, 1);
  await sc.presence(r);
  await sc.history(r);
  await sub.unsubscribe();
  await assert.rejects(sc.history("bad room!"), { code: "bad_room" });
  const replies = tw
    .last()
    .frames.map((t) => JSON.parse(t))
    .filter((f) => ["subscribed", "unsubscribed", "presence", "history", "ack", "error"].includes(f.op));
  assert.deepEqual(replies.map((f) => f.op), ["subscribed", "ack", "presence", "history", "unsubscribed", "error"]);
  for (const f of replies) assert.ok(Number.isInteger(f.id), `${f.op} has an id: ${JSON.stringify(f)}`);
  assert.equal(new Set(replies.map((f) => f.id)).size, replies.length, "distinct ids");
});

// -- sessions and publish dedup ----------------------------------------------------------------

test("publishes sent again after a cut with lost acks are not delivered twice (session dedup)", { skip }, async () => {
  const r = room("dedup");
  const tw = trackedWebSocket({ record: true });
  const pub = client({ WebSocket: tw.WebSocket });
  const watcher = client();
  const sub = watcher.subscribe(r);
  const got = collect(sub);
  await once(sub, "subscribed");
  await state(pub, "connected");
  await Promise.all(range(1, 100).map((n) => pub.publish(r, { n })));
  // The acks of 101..200 are lost: the server delivered them, the client does not know.
  tw.last().dropIncoming = (t) => JSON.parse(t).op === "ack";
  const lost = range(101, 200).map((n) => pub.publish(r, { n }));
  await got.until(200);
  const firstSeqs = got.got.slice(100, 200).map((m) => m.seq);
  const up = once(pub, "state", (s) => s === "connected");
  tw.last().destroySocket();
  await up;
  // Sent again with the same ids in the same session: acked with the first seqs, not delivered.
  assert.deepEqual(await Promise.all(lost), firstSeqs);
  const acks = tw
    .last()
    .frames.map((t) => JSON.parse(t))
    .filter((f) => f.op === "ack");
  assert.equal(acks.filter((f) => f.duplicate === true).length, 100);
  await Promise.all(range(201, 300).map((n) => pub.publish(r, { n })));
  await got.until(300);
  assert.deepEqual(got.got.map((m) => m.data.n), range(1, 300));
  const { messages } = await watcher.history(r, { since: 0 });
  assert.equal(messages.length, 300, "history holds each once");
});

test("resume across a cut on both ends: 500 messages exactly once, in order", { skip }, async () => {
  const r = room("both");
  const twSub = trackedWebSocket();
  const twPub = trackedWebSocket();
  const subC = client({ WebSocket: twSub.WebSocket });
  const pubC = client({ WebSocket: twPub.WebSocket });
  const sub = subC.subscribe(r);
  const got = collect(sub);
  const disc = [];
  sub.on("discontinuity", (d) => disc.push(d));
  await once(sub, "subscribed");
  await state(pubC, "connected");
  const all = range(1, 500).map((n) => pubC.publish(r, { n }));
  await got.until(100);
  twPub.last().destroySocket(); // publishes in flight: sent again, deduplicated
  await got.until(200);
  twSub.last().destroySocket();
  await got.until(500);
  await Promise.all(all);
  assert.deepEqual(got.got.map((m) => m.data.n), range(1, 500));
  assert.deepEqual(disc, []);
});

// -- SSE ---------------------------------------------------------------------------------------

test("SSE forced: connect, subscribe, publish/ack, presence, history, unsubscribe", { skip }, async () => {
  const { sc, tf } = sse({ info: { name: "eve" } });
  const r = room("sse");
  const sub = sc.subscribe(r, { presence: true });
  const got = collect(sub);
  const [own] = await once(sub, "join");
  await state(sc, "connected");
  assert.equal(sc.transport, "sse");
  assert.deepEqual(own, { room: r, conn: sc.conn, info: { name: "eve" } });
  assert.equal(await sc.publish(r, { n: 1 }), 1);
  await got.until(1);
  assert.equal(got.got[0].from, sc.conn);
  assert.deepEqual(await sc.presence(r), [{ conn: sc.conn, info: { name: "eve" } }]);
  const h = await sc.history(r);
  assert.deepEqual(h.messages.map((m) => m.data), [{ n: 1 }]);
  await sub.unsubscribe();
  assert.deepEqual(await sc.presence(r), []);
  assert.equal(tf.gets.length, 1);
  assert.equal(new URL(tf.gets[0].url).searchParams.get("session"), sc.session);
});

test("SSE: a WebSocket client's and an SSE client's messages meet in one room", { skip }, async () => {
  const r = room("mix");
  const ws = client();
  const { sc } = sse();
  const a = ws.subscribe(r);
  const b = sc.subscribe(r);
  const ga = collect(a);
  const gb = collect(b);
  await Promise.all([once(a, "subscribed"), once(b, "subscribed")]);
  await ws.publish(r, "from ws");
  await sc.publish(r, "from sse");
  await ga.until(2);
  await gb.until(2);
  assert.deepEqual(ga.got.map((m) => m.data), ["from ws", "from sse"]);
  assert.deepEqual(gb.got.map((m) => m.data), ["from ws", "from sse"]);
});

test("WebSocket blocked: falls back to SSE and keeps it for reconnects", { skip }, async () => {
  const tf = trackedFetch();
  let wsTries = 0;
  class Counting extends BlockedWebSocket {
    constructor(...a) {
      super(...a);
      wsTries += 1;
    }
  }
  const sc = connect(url, { WebSocket: Counting, fetch: tf.fetch });
  clients.push(sc);
  const list = states(sc);
  const r = room("fallback");
  const sub = sc.subscribe(r);
  const got = collect(sub);
  await once(sub, "subscribed");
  assert.equal(sc.transport, "sse");
  assert.equal(wsTries, 1);
  assert.deepEqual(list.map(([s]) => s), ["connecting", "connected"], "the fallback is part of connecting");
  await sc.publish(r, 1);
  await got.until(1);
  const up = once(sc, "state", (s) => s === "connected");
  tf.last().cut();
  await up;
  assert.equal(wsTries, 1, "no WebSocket tried again once SSE worked");
  assert.equal(sc.transport, "sse");
  await sc.publish(r, 2);
  await got.until(2);
  assert.deepEqual(got.got.map((m) => m.seq), [1, 2]);
});

test("SSE resume across a cut stream: 500 numbered messages exactly once, in order", { skip }, async () => {
  const r = room("sse-resume");
  const { sc: subC, tf } = sse();
  const pubC = client();
  const sub = subC.subscribe(r);
  const got = collect(sub);
  const disc = [];
  sub.on("discontinuity", (d) => disc.push(d));
  const subscribed = [];
  sub.on("subscribed", (s) => subscribed.push(s));
  await once(sub, "subscribed");
  const p1 = range(1, 250).map((n) => pubC.publish(r, { n }));
  await got.until(50);
  const down = once(subC, "state", (s) => s === "disconnected");
  tf.last().cut();
  await down;
  await Promise.all(p1);
  const p2 = range(251, 500).map((n) => pubC.publish(r, { n }));
  await got.until(500);
  await Promise.all(p2);
  assert.deepEqual(got.got.map((m) => m.data.n), range(1, 500));
  assert.deepEqual(subscribed.map((s) => s.recovered), [false, true]);
  assert.deepEqual(disc, []);
  // The resume went in the query: since and epoch of the room.
  const q = new URL(tf.gets.at(-1).url).searchParams;
  assert.equal(q.get("rooms"), r);
  assert.match(q.get("since"), new RegExp(`^${r.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}:\\d+$`));
  assert.equal(q.get("epoch"), `${r}:${subscribed[0].epoch}`);
});

test("SSE: daemon restart gives a discontinuity; a drain sends close 1012 on the stream", { skip }, async (t) => {
  const config = baseConfig('[shutdown]\ndrain_timeout = "2s"\n');
  let d = await startDaemon({ config });
  t.after(() => d.kill("SIGKILL"));
  const dUrl = `http://${d.addr}`;
  const { sc } = sse({ url: dUrl });
  const r = room();
  const sub = sc.subscribe(r);
  const got = collect(sub);
  const [first] = await once(sub, "subscribed");
  await sc.publish(r, 1);
  await got.until(1);
  const disc = once(sub, "discontinuity");
  await d.kill("SIGKILL");
  await once(sc, "state", (s) => s === "disconnected");
  d = await d.restart();
  const [x] = await disc;
  assert.equal(x.lastSeq, 1);
  assert.notEqual(x.epoch, first.epoch);
  // Takeover: the old process sends a reconnect hint and {"op":"close","code":1012}.
  const hint = once(sc, "reconnect");
  const down = once(sc, "state", (s) => s === "disconnected");
  const b = await startDaemon({ config, port: d.port, args: ["--takeover"] });
  t.after(() => b.kill("SIGKILL"));
  await hint;
  const [, detail] = await down;
  assert.equal(detail.code, 1012);
  await state(sc, "connected");
  assert.equal(sc.transport, "sse");
});

test("SSE with a token: Authorization header, user in welcome", { skip }, async (t) => {
  const secret = "js-client-test-secret-0123456789abcdef";
  const d = await startDaemon({ config: baseConfig(`[auth]\nmode = "jwt"\nhs256_secret = "${secret}"\n`) });
  t.after(() => d.kill("SIGKILL"));
  const token = jwt({ sub: "eve", exp: Math.floor(Date.now() / 1000) + 600 }, secret);
  const { sc, tf } = sse({ url: d.url, token });
  await state(sc, "connected");
  assert.equal(sc.user, "eve");
  assert.equal(sc.transport, "sse");
  const r = room();
  assert.equal(await sc.publish(r, 1), 1);
  assert.ok(!tf.gets[0].url.includes(token), "the token is not in the URL");
  // Without a token: refused with 401; no getToken, so the client ends.
  const { sc: anon } = sse({ url: d.url });
  const [, detail] = await state(anon, "closed");
  assert.equal(detail.status, 401);
});

test("SSE: Retry-After of a 429 is honoured", { skip }, async (t) => {
  // Assumes [admission] applies to GET /sse as to the WebSocket upgrade.
  const d = await startDaemon({
    config: baseConfig("[admission]\nhandshakes_per_ip_per_second = 1\nhandshake_ip_burst = 1\n"),
  });
  t.after(() => d.kill("SIGKILL"));
  const first = sse({ url: d.url });
  await state(first.sc, "connected");
  const { sc, tf } = sse({ url: d.url });
  const [, detail] = await withTimeout(once(sc, "state", (s) => s === "disconnected"));
  assert.equal(detail.status, 429);
  const retryAfter = Number(tf.gets[0].headers.get("retry-after"));
  assert.ok(retryAfter >= 1);
  assert.ok(detail.delay >= retryAfter * 1000, `delay ${detail.delay} >= Retry-After ${retryAfter} s`);
  await state(sc, "connected");
});
