"""Cluster mode (issue 14) against a real redis-server and three real daemons on loopback.

Starts its own `redis-server --port <free> --save "" --appendonly no` and three shardcast
processes with `[cluster]` (2 shards each, free ports), then checks:
  (a) fan-out: CLUSTER_SUBS (default 3,000) envelope subscribers spread over the nodes, a
      publisher on every node: every subscriber gets every message exactly once, all in one seq
      order; Redis `INFO commandstats` shows one `evalsha` per broadcast;
  (b) resume across nodes: a subscriber leaves node A mid-stream of 1,000 messages and resumes
      on node B with since/epoch: every seq exactly once, in order;
  (c) Redis stopped: publish -> `unavailable` (envelope) and 503 (HTTP API), daemons stay up,
      /readyz 503; Redis started again: ready again, publishing works, and every subscriber got
      every acknowledged message or an explicit gap (silent losses counted, must be 0);
  (c2) Redis restarted while publishes flow: every publish acked or `unavailable`, every node
      ready again, every acked message received or covered by a gap mark (zero silent losses);
  (d) deafness: `CLIENT PAUSE` stalls Redis -> /readyz 503 within canary_timeout + 1 s, then 200;
  (e) `CLIENT KILL TYPE pubsub` mid-stream of 600 messages: every node resubscribes and catches up
      from the history stream; every subscriber gets every seq once, in order, or an explicit gap;
  (f) `DEBUG SLEEP 2` stalls Redis mid-stream (publishes paced over 3 s): publishes are acked or
      answered `unavailable`, every node turns ready again, every acked message reaches every
      subscriber (or an explicit gap): zero silent losses;
  (g) presence across nodes: members on every node; `presence` on any node lists all of them;
      watchers on two nodes see each join and leave exactly once; `kill -9` of a node: its
      members leave on the others within presence_ttl + 1 s, exactly once each, and its entries
      are deleted from Redis;
  (h) raw clients across nodes: text and binary raw messages from every node reach every raw
      member once, one order everywhere, numbered for envelope members; GET /api/rooms on any
      node counts every node's members;
  (i) a presence leave made while Redis is down is written after the reconnect: seen once on
      the other nodes, no longer listed;
  (j) publish dedup across nodes: a publish retried (same session and id) on another node is
      a duplicate of the first, delivered once.
Every wait is on an event (readyz polling, frames), bounded.

    SHARDCAST_BIN=target/release/shardcast python tests/python/test_cluster.py
"""

import asyncio
import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

from websockets.asyncio.client import connect

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("SHARDCAST_BIN", os.path.join(REPO, "target", "release", "shardcast"))
SUBS = int(os.environ.get("CLUSTER_SUBS", "3000"))
TMP = tempfile.mkdtemp(prefix="shardcast-cluster-")
CANARY_TIMEOUT = 1.0
PRESENCE_TTL = 2.0
TIMEOUT = 10.0
passed = failed = 0


def check(name, cond, detail=""):
    global passed, failed
    if cond:
        passed += 1
        print(f"ok   {name}", flush=True)
    else:
        failed += 1
        text = detail if isinstance(detail, str) else repr(detail)
        print(f"FAIL {name} {text[:800]}", flush=True)
    return bool(cond)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=15):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            time.sleep(0.02)
    return False


class Redis:
    def __init__(self):
        self.port = free_port()
        self.proc = None
        self.start()

    def start(self):
        self.log = open(os.path.join(TMP, "redis.log"), "ab")
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--save", "", "--appendonly", "no",
                                      "--bind", "127.0.0.1", "--enable-debug-command", "local"], stdout=self.log, stderr=subprocess.STDOUT)
        assert wait_port(self.port), "redis-server did not start"

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def cli(self, *args):
        return subprocess.run(["redis-cli", "-p", str(self.port), *args], capture_output=True, text=True,
                              timeout=10).stdout

    def commandstats(self):
        out = {}
        for line in self.cli("INFO", "commandstats").splitlines():
            if line.startswith("cmdstat_"):
                name, rest = line[len("cmdstat_"):].split(":", 1)
                fields = dict(kv.split("=") for kv in rest.split(","))
                out[name] = int(fields["calls"])
        return out


class Node:
    def __init__(self, name, redis_port, redis_line=None):
        """`redis_line`: the `[cluster]` line naming Redis (default: the test's redis-server)."""
        redis_line = redis_line or f'redis = "redis://127.0.0.1:{redis_port}/0"'
        self.name = name
        self.port, self.admin = free_port(), free_port()
        self.path = os.path.join(TMP, f"{name}.toml")
        with open(self.path, "w") as f:
            f.write(f"""[admin]
listen = "127.0.0.1:{self.admin}"
[api]
key = "k"
[history]
size = 5000
[limits]
max_buffered_bytes = "8MiB"
[cluster]
{redis_line}
node_id = "{name}"
channel_prefix = "sc-test"
canary_interval = "250ms"
canary_timeout = "{CANARY_TIMEOUT}s"
presence_ttl = "{PRESENCE_TTL}s"
""")
        self.log = open(os.path.join(TMP, f"{name}.log"), "wb")
        self.proc = subprocess.Popen([BIN, "--config", self.path, "--listen", f"127.0.0.1:{self.port}",
                                      "--shards", "2"], stdout=self.log, stderr=subprocess.STDOUT)
        assert wait_port(self.port), f"{name} did not start"

    def metric(self, name):
        """The value of `shardcast_{name}` on /metrics (0 when not exported yet)."""
        body = urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/metrics", timeout=5).read().decode()
        rows = [ln for ln in body.splitlines() if ln.startswith(f"shardcast_{name} ")]
        return float(rows[0].split()[-1]) if rows else 0.0

    def metric_sum(self, name):
        """The sum of the series of `shardcast_{name}` on /metrics (per-shard gauges)."""
        body = urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/metrics", timeout=5).read().decode()
        return sum(float(ln.split()[-1]) for ln in body.splitlines()
                   if ln.startswith((f"shardcast_{name} ", f"shardcast_{name}{{")))

    def readyz(self):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/readyz", timeout=2) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
        except OSError:
            return None

    def wait_ready(self, want=200, timeout=TIMEOUT):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.readyz() == want:
                return time.monotonic()
            time.sleep(0.05)
        return None

    def api_publish(self, room, data):
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/api/publish", method="POST",
                                     data=json.dumps({"room": room, "data": data}).encode(),
                                     headers={"Authorization": "Bearer k", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=TIMEOUT) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def api_get(self, path):
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}",
                                     headers={"Authorization": "Bearer k"})
        try:
            with urllib.request.urlopen(req, timeout=TIMEOUT) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class Client:
    """An envelope JSON connection; frames go to `frames` (a reader task), or are awaited."""

    def __init__(self, ws):
        self.ws = ws
        self.queue = asyncio.Queue()
        self.task = asyncio.create_task(self.read())

    @classmethod
    async def open(cls, node, info=None, session=None):
        params = {} if info is None else {"info": json.dumps(info)}
        if session is not None:
            params["session"] = session
        q = "?" + urllib.parse.urlencode(params) if params else ""
        ws = await connect(f"ws://127.0.0.1:{node.port}/ws{q}", subprotocols=["shardcast.v1.json"],
                           open_timeout=TIMEOUT, max_queue=None, proxy=None)
        c = cls(ws)
        welcome = await c.recv()
        assert welcome.get("op") == "welcome", welcome
        return c

    async def read(self):
        try:
            async for msg in self.ws:
                self.queue.put_nowait(json.loads(msg))
        except Exception:
            pass
        self.queue.put_nowait(None)

    async def send(self, frame):
        await self.ws.send(json.dumps(frame))

    async def recv(self, timeout=TIMEOUT):
        f = await asyncio.wait_for(self.queue.get(), timeout)
        if f is None:
            raise ConnectionError("closed")
        return f

    async def until(self, pred, timeout=TIMEOUT):
        end = time.monotonic() + timeout
        while (left := end - time.monotonic()) > 0:
            f = await self.recv(left)
            if pred(f):
                return f
        raise TimeoutError

    async def subscribe(self, room, **extra):
        await self.send({"op": "subscribe", "room": room, **extra})
        return await self.until(lambda f: f.get("op") in ("subscribed", "error"))

    async def close(self):
        await self.ws.close()
        self.task.cancel()


def silent_losses(want, got, key):
    """Messages of `want` (keys, in publish order) a subscriber neither received nor was told it
    lost: a missing message is told only when the first message it did receive after it carries
    `"gap": true` (the loss is reported where it happened, not somewhere else in the stream)."""
    pos = {k: i for i, k in enumerate(want)}
    seen = [(pos[key(m)], m) for m in got if key(m) in pos]
    have = {p for p, _ in seen}
    silent = 0
    for i, k in enumerate(want):
        if i in have:
            continue
        after = next((m for p, m in seen if p > i), None)
        if after is None or after.get("gap") is not True:
            silent += 1
    return silent


async def messages(c, room, n, timeout=TIMEOUT * 3):
    """The next `n` messages of `room` on `c` (fewer on timeout)."""
    out, end = [], time.monotonic() + timeout
    while len(out) < n and (left := end - time.monotonic()) > 0:
        try:
            f = await c.recv(left)
        except (TimeoutError, asyncio.TimeoutError, ConnectionError):
            break
        if f.get("op") == "message" and f.get("room") == room:
            out.append(f)
    return out


async def publish_all(c, room, items, prefix):
    """Publish every item with an id; the acks (or errors) by id."""
    for i, data in enumerate(items):
        await c.send({"op": "publish", "room": room, "data": data, "id": f"{prefix}{i}"})
    answers = {}
    end = time.monotonic() + TIMEOUT * 3
    while len(answers) < len(items) and time.monotonic() < end:
        f = await c.recv(end - time.monotonic())
        if f.get("op") in ("ack", "error") and str(f.get("id", "")).startswith(prefix):
            answers[f["id"]] = f
    return answers


async def test_fanout(nodes, redis):
    room = "fanout"
    per_node_msgs = 20
    sem = asyncio.Semaphore(200)

    async def one(i):
        async with sem:
            c = await Client.open(nodes[i % 3])
            f = await c.subscribe(room)
            assert f.get("op") == "subscribed", f
            return c

    t0 = time.monotonic()
    subs = await asyncio.gather(*(one(i) for i in range(SUBS)))
    print(f"     {SUBS} subscribers on 3 nodes in {time.monotonic() - t0:.1f}s", flush=True)
    pubs = [await Client.open(n) for n in nodes]
    before = redis.commandstats()
    answers = await asyncio.gather(*(publish_all(p, room, [{"node": j, "i": i} for i in range(per_node_msgs)],
                                                  f"p{j}-") for j, p in enumerate(pubs)))
    total = 3 * per_node_msgs
    acks = [a for ans in answers for a in ans.values() if a.get("op") == "ack"]
    check("fanout: every publish acked with a Redis seq", len(acks) == total and
          sorted(a["seq"] for a in acks) == list(range(1, total + 1)), [a for a in acks[:5]])
    got = await asyncio.gather(*(messages(s, room, total) for s in subs))
    after = redis.commandstats()
    order = {}
    bad = []
    for k, msgs in enumerate(got):
        seqs = [m["seq"] for m in msgs]
        if seqs != list(range(1, total + 1)):
            bad.append((k, len(seqs), seqs[:5]))
        for m in msgs:
            key = (m["data"]["node"], m["data"]["i"])
            if order.setdefault(m["seq"], key) != key:
                bad.append(("different message at seq", m["seq"]))
    check(f"fanout: {SUBS} subscribers on 3 nodes each got all {total} messages exactly once, in seq order",
          not bad, bad[:5])
    check("fanout: one seq order everywhere (each seq is the same message on every node)",
          len(order) == total, len(order))
    evalsha = after.get("evalsha", 0) - before.get("evalsha", 0)
    eval_ = after.get("eval", 0) - before.get("eval", 0)
    check("fanout: Redis ran one evalsha per broadcast (INFO commandstats)", evalsha == total and eval_ == 0,
          (evalsha, eval_, total))
    delta = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    print(f"     Redis commands for {total} broadcasts (incl. canaries): {delta}", flush=True)
    xadd = after.get("xadd", 0) - before.get("xadd", 0)
    check("fanout: and one XADD per broadcast (history stream)", xadd == total, xadd)
    for c in subs + pubs:
        await c.close()


async def test_resume(nodes):
    room, n = "resume", 1000
    a = await Client.open(nodes[0])
    keep_b = await Client.open(nodes[1])  # node B is subscribed too (a live room there)
    pub = await Client.open(nodes[2])
    sa = await a.subscribe(room)
    await keep_b.subscribe(room)
    epoch = sa["epoch"]
    task = asyncio.create_task(publish_all(pub, room, [{"i": i} for i in range(n)], "r"))
    first = await messages(a, room, 300)
    await a.close()
    since = first[-1]["seq"]
    b = await Client.open(nodes[1])
    sb = await b.subscribe(room, since=since, epoch=epoch)
    check("resume: subscribed on node B with recovered: true", sb.get("recovered") is True and
          sb.get("epoch") == epoch, sb)
    rest = await messages(b, room, n - since)
    await task
    seqs = [m["seq"] for m in first] + [m["seq"] for m in rest]
    check("resume: every seq exactly once, in order, across nodes A and B", seqs == list(range(1, n + 1)),
          (len(seqs), since, [s for i, s in enumerate(seqs) if s != i + 1][:5]))
    gaps = [m for m in rest if m.get("gap")]
    check("resume: no gap reported", not gaps, gaps[:2])
    for c in (b, keep_b, pub):
        await c.close()
    # `history` on a node with no member in the room: read from the stream, not the local ring.
    h = await Client.open(nodes[0])
    await h.send({"op": "history", "room": room, "since": n - 10, "id": "h1"})
    f = await h.until(lambda f: f.get("id") == "h1")
    check("history: from the Redis stream on a node without members",
          f.get("op") == "history" and [m["seq"] for m in f.get("messages", [])] == list(range(n - 9, n + 1))
          and f.get("complete") is True and f.get("epoch") == epoch, f)
    await h.send({"op": "history", "room": room, "limit": 3, "id": "h2"})
    f = await h.until(lambda f: f.get("id") == "h2")
    check("history: a page from the start", [m["seq"] for m in f.get("messages", [])] == [1, 2, 3]
          and f["messages"][0]["data"] == {"i": 0}, f)
    # Resume onto a node with no member in the room: the replay comes from the stream.
    sub = await h.subscribe(room, since=n - 25, epoch=epoch)
    replay = await messages(h, room, 25)
    check("resume: onto a node without members, replayed from the stream, recovered: true",
          sub.get("recovered") is True and sub.get("seq") == n
          and [m["seq"] for m in replay] == list(range(n - 24, n + 1)),
          (sub, len(replay), [m["seq"] for m in replay], [m for m in replay if m.get("gap")][:1]))
    other = await Client.open(nodes[2])
    sub = await other.subscribe(room, since=10, epoch=epoch + 1)
    check("resume: another epoch answers recovered: false", sub.get("recovered") is False
          and sub.get("epoch") == epoch, sub)
    await other.close()
    await h.close()
    # A node that stopped listening to a room keeps none of it: a resume there later must not
    # take what it kept from before for the whole story (it would stop short of the newest).
    room, (node, pub) = "resume-left", (nodes[1], await Client.open(nodes[2]))
    a = await Client.open(node)
    sa = await a.subscribe(room)
    await publish_all(pub, room, [{"i": i} for i in range(20)], "rl")
    await messages(a, room, 20)
    await a.close()
    end = time.monotonic() + TIMEOUT
    while time.monotonic() < end and node.metric_sum("history_messages") > 0:
        await asyncio.sleep(0.05)
    check("resume: a node that stopped listening to a room drops what it kept of it",
          node.metric_sum("history_messages") == 0, node.metric_sum("history_messages"))
    await publish_all(pub, room, [{"i": i} for i in range(20, 40)], "rl2")
    b = await Client.open(node)
    sb = await b.subscribe(room, since=15, epoch=sa["epoch"])
    replay = await messages(b, room, 25, timeout=TIMEOUT)
    check("resume: back on that node later, the replay reaches the newest (16..40), recovered: true",
          sb.get("recovered") is True and [m["seq"] for m in replay] == list(range(16, 41)),
          (sb, [m["seq"] for m in replay]))
    for c in (b, pub):
        await c.close()


async def test_redis_down(nodes, redis):
    room = "outage"
    for n in nodes:
        n.wait_ready(200, 20)
    subs = [await Client.open(n) for n in nodes]
    for s in subs:
        f = await s.subscribe(room)
        assert f.get("op") == "subscribed", f
    pub = await Client.open(nodes[0])
    raw = await connect(f"ws://127.0.0.1:{nodes[1].port}/ws/{room}", open_timeout=TIMEOUT, max_size=None)
    ans = await publish_all(pub, room, [{"phase": 1, "i": i} for i in range(10)], "o1-")
    acked = [a for a in ans.values() if a.get("op") == "ack"]
    check("outage: publishes before the outage acked", len(acked) == 10, ans)
    redis.stop()
    for n in nodes:
        check(f"outage: {n.name} /readyz 503 while Redis is down", n.wait_ready(503) is not None, n.readyz())
    ans = await publish_all(pub, room, [{"phase": 2}], "o2-")
    err = list(ans.values())
    check("outage: publish answered error 'unavailable' with its id",
          len(err) == 1 and err[0].get("op") == "error" and err[0].get("code") == "unavailable"
          and err[0].get("id") == "o2-0", err)
    st, body = nodes[1].api_publish(room, {"phase": 2})
    check("outage: HTTP API publish 503 unavailable", st == 503 and "unavailable" in str(body), (st, body))
    st, body = nodes[1].api_get("/api/rooms")
    check("outage: GET /api/rooms 503 unavailable (it cannot count the other nodes)",
          st == 503 and "unavailable" in str(body), (st, body))
    # A raw client has no error frame: its refused message is counted, and never delivered.
    before = nodes[1].metric("cluster_unavailable_total")
    await raw.send("raw in the outage")
    end = time.monotonic() + TIMEOUT
    while (now := nodes[1].metric("cluster_unavailable_total")) <= before and time.monotonic() < end:
        await asyncio.sleep(0.05)
    check("outage: a raw client's message refused and counted (cluster_unavailable_total)", now == before + 1,
          (before, now))
    check("outage: every daemon is still running", all(n.proc.poll() is None for n in nodes))
    redis.start()
    for n in nodes:
        check(f"outage: {n.name} ready again after Redis came back", n.wait_ready(200, 20) is not None, n.readyz())
    ans = await publish_all(pub, room, [{"phase": 3, "i": i} for i in range(10)], "o3-")
    acked3 = [a for a in ans.values() if a.get("op") == "ack"]
    check("outage: publishing works again", len(acked3) == 10, ans)
    silent, leaked = 0, []
    want = [(1, i) for i in range(10)] + [(3, i) for i in range(10)]
    for s in subs:
        msgs = await messages(s, room, 20, timeout=TIMEOUT)
        leaked += [m for m in msgs if not isinstance(m.get("data"), dict)]
        msgs = [m for m in msgs if isinstance(m.get("data"), dict)]
        first3 = next((m for m in msgs if m["data"].get("phase") == 3), None)
        silent += silent_losses(want, msgs, lambda m: (m["data"].get("phase"), m["data"].get("i")))
        # Redis restarted empty: numbering began again in a new epoch, which must be said.
        explicit = first3 is not None and first3.get("gap") is True
        check("outage: subscriber told of the new numbering with gap: true", explicit, msgs[-11:-9])
    check("outage: no silent loss (acked messages missing without an explicit gap)", silent == 0, silent)
    check("outage: the refused raw message was not delivered later", not leaked, leaked)
    await raw.close()
    for c in subs + [pub]:
        await c.close()


async def test_restart_midstream(nodes, redis):
    """(c2) Redis restarted while publishes flow (paced over ~3 s): every publish is acked or
    answered `unavailable`, every node turns ready again, and every subscriber got every acked
    message or a gap mark where it lost some (the restart empties Redis: a new epoch)."""
    room, n = "restart", 300
    for nd in nodes:
        nd.wait_ready(200, 20)
    subs = [await Client.open(nd) for nd in nodes]
    for c in subs:
        f = await c.subscribe(room)
        assert f.get("op") == "subscribed", f
    pub = await Client.open(nodes[1])

    async def paced():
        for i in range(n):
            await pub.send({"op": "publish", "room": room, "data": {"i": i}, "id": f"r{i}"})
            await asyncio.sleep(0.01)  # pacing the traffic over the restart, not waiting for it

    sender = asyncio.create_task(paced())
    await messages(subs[0], room, 1, timeout=TIMEOUT)  # the stream is flowing
    redis.stop()
    await asyncio.sleep(0.3)  # Redis stays down a moment while publishes keep coming
    redis.start()
    await sender
    answers = {}
    end = time.monotonic() + TIMEOUT * 2
    while len(answers) < n and time.monotonic() < end:
        f = await pub.recv(end - time.monotonic())
        if f.get("op") in ("ack", "error") and str(f.get("id", "")).startswith("r"):
            answers[f["id"]] = f
    acked = sorted(int(k[1:]) for k, a in answers.items() if a.get("op") == "ack")
    refused = [a for a in answers.values() if a.get("op") == "error"]
    check(f"restart: every publish answered ({len(acked)} acked, {len(refused)} unavailable)",
          len(answers) == n and all(a.get("code") == "unavailable" for a in refused), len(answers))
    for nd in nodes:
        check(f"restart: {nd.name} ready again without a restart of the daemon",
              nd.wait_ready(200, 20) is not None and nd.proc.poll() is None, nd.readyz())
    silent = 0
    for k, c in enumerate(subs):
        msgs = []
        while acked and (not msgs or msgs[-1]["data"].get("i") != acked[-1]):
            more = await messages(c, room, 1, timeout=TIMEOUT)
            if not more:
                break
            msgs += more
        # The first message was read above on node 0.
        want = acked[1:] if k == 0 else acked
        lost = silent_losses(want, msgs, lambda m: m["data"].get("i"))
        silent += lost
        check(f"restart: node n{k}: every acked message or a gap where it lost some "
              f"({len(msgs)} delivered, {sum(1 for m in msgs if m.get('gap'))} gap marks)", lost == 0, lost)
    check("restart: no silent loss", silent == 0, silent)
    for c in subs + [pub]:
        await c.close()


def test_deafness(nodes, redis):
    for n in nodes:
        n.wait_ready(200, 20)
    t0 = time.monotonic()
    redis.cli("CLIENT", "PAUSE", "4000", "ALL")
    t503 = nodes[0].wait_ready(503, CANARY_TIMEOUT + 3)
    check("deaf: /readyz 503 within canary_timeout + 1 s of the pause",
          t503 is not None and t503 - t0 <= CANARY_TIMEOUT + 1.0, None if t503 is None else t503 - t0)
    t200 = nodes[0].wait_ready(200, 20)
    check("deaf: /readyz 200 again once Redis answers", t200 is not None)
    episodes = nodes[0].metric("cluster_deaf_episodes_total")
    check("deaf: cluster_deaf_episodes_total counted", episodes >= 1, episodes)


async def test_subscriber_killed(nodes, redis):
    room, n = "killed", 600
    subs = [await Client.open(nd) for nd in nodes]
    for c in subs:
        f = await c.subscribe(room)
        assert f.get("op") == "subscribed", f
    pub = await Client.open(nodes[1])
    task = asyncio.create_task(publish_all(pub, room, [{"i": i} for i in range(n)], "k"))
    await messages(subs[0], room, 1, timeout=TIMEOUT)  # the stream is flowing
    killed = redis.cli("CLIENT", "KILL", "TYPE", "pubsub").strip()
    answers = await task
    acked = sorted(a["seq"] for a in answers.values() if a.get("op") == "ack")
    check(f"kill: {killed} subscriber connections killed mid-stream, every publish acked",
          len(acked) == n, len(acked))
    silent, gaps = 0, 0
    for k, c in enumerate(subs):
        first = 1 if k == 0 else 0
        msgs = await messages(c, room, n - first, timeout=TIMEOUT * 2)
        seqs = list(range(1, first + 1)) + [m["seq"] for m in msgs]
        ordered = all(b > a for a, b in zip(seqs, seqs[1:]))
        gaps += sum(1 for m in msgs if m.get("gap"))
        missing = sorted(set(acked) - set(seqs))
        silent += silent_losses(acked[first:], msgs, lambda m: m["seq"])
        check(f"kill: node n{k}: every seq once, in order (caught up from the stream)",
              ordered and (not missing or gaps), (len(seqs), missing[:5]))
    check("kill: no silent loss", silent == 0, silent)
    for c in subs + [pub]:
        await c.close()


async def test_stall(nodes, redis):
    room, n = "stall", 300
    for nd in nodes:
        nd.wait_ready(200, 20)
    subs = [await Client.open(nd) for nd in nodes]
    for c in subs:
        f = await c.subscribe(room)
        assert f.get("op") == "subscribed", f
    pub = await Client.open(nodes[2])

    async def paced():
        for i in range(n):
            await pub.send({"op": "publish", "room": room, "data": {"i": i}, "id": f"s{i}"})
            await asyncio.sleep(0.01)  # pacing the traffic over the stall, not waiting for it

    sender = asyncio.create_task(paced())
    await asyncio.sleep(0.5)
    stall = subprocess.Popen(["redis-cli", "-p", str(redis.port), "DEBUG", "SLEEP", "2"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    await sender
    answers = {}
    end = time.monotonic() + TIMEOUT * 2
    while len(answers) < n and time.monotonic() < end:
        f = await pub.recv(end - time.monotonic())
        if f.get("op") in ("ack", "error") and str(f.get("id", "")).startswith("s"):
            answers[f["id"]] = f
    stall.wait(10)
    acked = sorted(a["seq"] for a in answers.values() if a.get("op") == "ack")
    refused = [a for a in answers.values() if a.get("op") == "error"]
    check(f"stall: every publish answered ({len(acked)} acked, {len(refused)} unavailable)",
          len(answers) == n and all(a.get("code") == "unavailable" for a in refused), len(answers))
    for nd in nodes:
        check(f"stall: {nd.name} ready again after the stall", nd.wait_ready(200, 20) is not None, nd.readyz())
    silent = 0
    for k, c in enumerate(subs):
        # Publishes answered `unavailable` may still have been numbered (a pipeline Redis ran
        # after the timeout): read up to the last acked seq, not a count.
        msgs = []
        while acked and (not msgs or msgs[-1]["seq"] < acked[-1]):
            more = await messages(c, room, 1, timeout=TIMEOUT)
            if not more:
                break
            msgs += more
        seqs = [m["seq"] for m in msgs]
        missing = sorted(set(acked) - set(seqs))
        silent += silent_losses(acked, msgs, lambda m: m["seq"])
        check(f"stall: node n{k}: every acked seq once, in order ({len(seqs)} delivered)",
              all(b > a for a, b in zip(seqs, seqs[1:])) and not missing, (len(seqs), missing[:5]))
    check("stall: no silent loss", silent == 0, silent)
    for c in subs + [pub]:
        await c.close()


async def events(c, room, wait):
    """Every join/leave of `room` arriving on `c` within `wait` seconds, as (op, info name)."""
    out, end = [], time.monotonic() + wait
    while (left := end - time.monotonic()) > 0:
        try:
            f = await c.recv(left)
        except (TimeoutError, asyncio.TimeoutError, ConnectionError):
            break
        if f.get("op") in ("join", "leave") and f.get("room") == room:
            out.append((f["op"], (f.get("info") or {}).get("name")))
    return out


async def presence_names(c, room, rid):
    await c.send({"op": "presence", "room": room, "id": rid})
    f = await c.until(lambda f: f.get("id") == rid)
    return sorted((m.get("info") or {}).get("name") for m in f.get("members", [])), f


async def test_presence(nodes, redis):
    room = "presence"
    w0 = await Client.open(nodes[0], {"name": "w0"})
    w1 = await Client.open(nodes[1], {"name": "w1"})
    for w in (w0, w1):
        await w.subscribe(room, presence=True)
    await asyncio.sleep(0.3)
    await events(w0, room, 0.1)
    await events(w1, room, 0.1)
    members = {}
    for i, n in enumerate(nodes):
        for k in range(2):
            name = f"m{i}{k}"
            c = await Client.open(n, {"name": name})
            members[name] = c
            await c.subscribe(room)
    ev0, ev1 = await events(w0, room, 1.5), await events(w1, room, 0.2)
    want = sorted(("join", m) for m in members)
    check("presence: watcher on node 0 sees every join on every node exactly once", sorted(ev0) == want, ev0)
    want1 = sorted([("join", m) for m in members] + [("join", "w0")]) if ("join", "w0") in ev1 else want
    check("presence: watcher on node 1 sees every join exactly once", sorted(ev1) == want1, ev1)
    everyone = sorted(list(members) + ["w0", "w1"])
    for i, n in enumerate(nodes):
        q = await Client.open(n)
        names, f = await presence_names(q, room, f"p{i}")
        check(f"presence: `presence` on node {i} lists every node's members", names == everyone, f)
        await q.close()
    conns = [m["conn"] for m in f.get("members", [])]
    check("presence: member ids distinct cluster-wide and below 2^53",
          len(set(conns)) == len(conns) and all(0 < c < 2 ** 53 for c in conns), conns)
    # A room with members on node 1 only, asked on node 0 (no copy there: read from the hash).
    only = [await Client.open(nodes[1], {"name": f"o{k}"}) for k in range(2)]
    for c in only:
        await c.subscribe("presence-b")
    q = await Client.open(nodes[0])
    names, f = await presence_names(q, "presence-b", "pb")
    check("presence: on a node without members, read from Redis", names == ["o0", "o1"], f)
    await q.close()
    status, body = nodes[0].api_get("/api/rooms/presence-b/presence")
    check("presence: HTTP API on a node without members lists node 1's members", status == 200 and
          sorted(m["info"]["name"] for m in body.get("members", [])) == ["o0", "o1"], (status, body))
    for c in only:
        await c.close()
    await members.pop("m10").close()
    ev0, ev1 = await events(w0, room, 1.0), await events(w1, room, 0.2)
    check("presence: a leave on node 1 seen exactly once on nodes 0 and 1",
          ev0 == [("leave", "m10")] and ev1 == [("leave", "m10")], (ev0, ev1))
    killed = time.monotonic()
    nodes[2].proc.send_signal(signal.SIGKILL)
    nodes[2].proc.wait()
    gone = sorted(("leave", m) for m in ("m20", "m21"))
    got0, end = [], killed + PRESENCE_TTL + 1.0
    while sorted(got0) != gone and time.monotonic() < end:
        got0 += await events(w0, room, min(0.1, max(0.0, end - time.monotonic())))
    took = time.monotonic() - killed
    check(f"presence: kill -9 of node 2: its members leave on node 0 within presence_ttl + 1 s ({took:.2f} s)",
          sorted(got0) == gone, got0)
    got0 += await events(w0, room, 1.0)
    got1 = await events(w1, room, 0.2)
    check("presence: each member of the dead node leaves exactly once (nodes 0 and 1)",
          sorted(got0) == gone and sorted(got1) == gone, (got0, got1))
    names, f = await presence_names(w0, room, "after")
    check("presence: the dead node's members are gone from `presence`",
          names == sorted(["m00", "m01", "m11", "w0", "w1"]), f)
    fields = redis.cli("HKEYS", f"sc-test:presence:{room}").split()
    check("presence: the dead node's entries are deleted from Redis",
          fields and not any(x.startswith("n2:") for x in fields), fields)
    for c in [w0, w1, *members.values()]:
        try:
            await c.close()
        except Exception:
            pass


async def test_presence_outage(nodes, redis):
    """(i) a member leaving while Redis is unreachable: its leave is kept by its node and
    written after the reconnect, so the other nodes see it exactly once and stop listing it."""
    room = "presence-out"
    for n in nodes:
        n.wait_ready(200, 20)
    w = await Client.open(nodes[0], {"name": "w"})
    await w.subscribe(room, presence=True)
    stay = await Client.open(nodes[1], {"name": "stay"})
    await stay.subscribe(room)
    go = await Client.open(nodes[1], {"name": "go"})
    await go.subscribe(room)
    joins, end = [], time.monotonic() + TIMEOUT
    while sorted(joins) != [("join", "go"), ("join", "stay")] and time.monotonic() < end:
        joins += [e for e in await events(w, room, 0.1) if e[1] != "w"]
    check("presence outage: the watcher on node 0 saw both joins on node 1", sorted(joins) ==
          [("join", "go"), ("join", "stay")], joins)
    redis.stop()
    for n in nodes:
        n.wait_ready(503)
    await go.close()
    redis.start()
    for n in nodes:
        check(f"presence outage: {n.name} ready again", n.wait_ready(200, 20) is not None, n.readyz())
    got, end = [], time.monotonic() + TIMEOUT
    while ("leave", "go") not in got and time.monotonic() < end:
        got += [e for e in await events(w, room, 0.1) if e[1] != "w"]
    got += [e for e in await events(w, room, 0.5) if e[1] != "w"]
    check("presence outage: the leave made while Redis was down is seen on node 0 exactly once",
          [e for e in got if e[0] == "leave"] == [("leave", "go")], got)
    names, f = await presence_names(w, room, "po")
    check("presence outage: `presence` on node 0 no longer lists it", names == ["stay", "w"], f)
    for c in (w, stay):
        await c.close()


async def test_raw(nodes):
    """(h) raw clients (/ws/{room}) across nodes: numbered by Redis like envelope publishes, so
    raw members on every node get every raw message (text and binary, opcode kept) in one order,
    and envelope members get them as numbered messages."""
    room, per = "raw-x", 50
    raws = []
    for n in nodes:
        for _ in range(2):
            raws.append(await connect(f"ws://127.0.0.1:{n.port}/ws/{room}", open_timeout=TIMEOUT,
                                      max_queue=None, proxy=None))
    env = await Client.open(nodes[2])
    sub = await env.subscribe(room)
    check("raw: envelope subscriber on node 2", sub.get("op") == "subscribed", sub)
    # A raw member hears the room from when its node's subscription is live (a node's first
    # join costs a Redis round trip: docs/cluster.md "Raw clients"). Warm-up rounds of one
    # hello per raw client until every raw member got a whole round (a round is numbered after
    # the earlier ones, so none of the warm-up is left in flight); then the counted stream.
    rounds, complete = 0, False
    while rounds < 5 and not complete:
        for i, w in enumerate(raws):
            await w.send(f"hello-{rounds}-{i}")
        want = {f"hello-{rounds}-{i}" for i in range(len(raws))}
        complete = True
        for w in raws:
            got = set()
            try:
                while not want <= got:
                    got.add(await asyncio.wait_for(w.recv(), TIMEOUT))
            except (TimeoutError, asyncio.TimeoutError):
                complete = False
        rounds += 1
    check(f"raw: every node's raw members are carried (a whole warm-up round, {rounds} sent)",
          complete, rounds)
    hellos = await messages(env, room, rounds * len(raws))
    check("raw: the envelope member got every warm-up hello",
          len(hellos) == rounds * len(raws), len(hellos))
    sent = []
    for k in range(per):
        for i, w in enumerate(raws):
            if k % 10 == 9:
                payload = bytes([i, k, 0xff, 0x00])
            else:
                payload = f"r{i}-{k}"
            sent.append(payload)
            await w.send(payload)
    total = len(sent)
    orders = []
    for w in raws:
        got = []
        try:
            while len(got) < total:
                got.append(await asyncio.wait_for(w.recv(), TIMEOUT))
        except (TimeoutError, asyncio.TimeoutError):
            pass
        orders.append(got)
    check("raw: every raw member on every node got every raw message exactly once",
          all(sorted(map(repr, o)) == sorted(map(repr, sent)) for o in orders),
          [len(o) for o in orders])
    check("raw: one order on every node", all(o == orders[0] for o in orders))
    check("raw: binary stays binary, text stays text",
          all(isinstance(m, bytes) == isinstance(x, bytes) for m, x in zip(sorted(orders[0], key=repr),
                                                                          sorted(sent, key=repr))))
    got = await messages(env, room, total)
    seqs = [f["seq"] for f in got]
    check("raw: envelope member got them numbered, gapless, in the raw members' order",
          len(got) == total and seqs == list(range(seqs[0], seqs[0] + total))
          and [f["data"] for f in got if f.get("enc") != "base64"]
          == [m for m in orders[0] if isinstance(m, str)]
          and [base64.b64decode(f["data"]) for f in got if f.get("enc") == "base64"]
          == [m for m in orders[0] if isinstance(m, bytes)], (len(got), seqs[:5], got[:2]))
    # GET /api/rooms counts every node's members (6 raw + 1 envelope), on any node.
    def counted(n):
        st, body = n.api_get("/api/rooms")
        return st, {r["room"]: r["members"] for r in body.get("rooms", [])} if st == 200 else body
    for n in nodes:
        end = time.monotonic() + TIMEOUT
        while (got := counted(n))[1].get(room) != len(raws) + 1 and time.monotonic() < end:
            await asyncio.sleep(0.05)
        check(f"rooms: GET /api/rooms on {n.name} counts every node's members", got[1].get(room) == len(raws) + 1, got)
    for w in raws:
        await w.close()
    await env.close()
    end = time.monotonic() + TIMEOUT
    while room in (got := counted(nodes[0]))[1] and time.monotonic() < end:
        await asyncio.sleep(0.05)
    check("rooms: a room whose members all left is no longer listed", room not in got[1], got)


async def test_dedup(nodes):
    """(j) publish dedup across nodes: a publish retried with the same session and id on another
    node is answered as a duplicate of the first (same seq) and delivered once."""
    room = "dedup"
    sub = await Client.open(nodes[2])
    await sub.subscribe(room)
    a = await Client.open(nodes[0], session="sess-1")
    first = await publish_all(a, room, ["once"], "d")
    await a.close()
    b = await Client.open(nodes[1], session="sess-1")
    again = await publish_all(b, room, ["once"], "d")
    other = await publish_all(b, room, ["next"], "e")
    f1, f2, f3 = first.get("d0", {}), again.get("d0", {}), other.get("e0", {})
    check("dedup: the retry on another node is acked as a duplicate with the first seq",
          f1.get("op") == "ack" and not f1.get("duplicate") and f2.get("op") == "ack"
          and f2.get("duplicate") is True and f2.get("seq") == f1.get("seq"), (f1, f2))
    got = await messages(sub, room, 2)
    check("dedup: the subscriber got the message once, then the next one",
          [m["data"] for m in got] == ["once", "next"] and f3.get("seq") == f1.get("seq", 0) + 1,
          (got, f3))
    for c in (sub, b):
        await c.close()


async def main():
    if not shutil.which("redis-server"):
        print("FAIL redis-server not installed (scripts/test.sh installs it)")
        return 1
    seq = lambda m: m["seq"]  # noqa: E731
    check("accounting: a hole with no gap mark is a silent loss, one marked where it happened is not",
          silent_losses([1, 2, 3, 4], [{"seq": 1}, {"seq": 3}, {"seq": 4, "gap": True}], seq) == 1
          and silent_losses([1, 2, 3], [{"seq": 1}, {"seq": 3, "gap": True}], seq) == 0
          and silent_losses([1, 2, 3], [{"seq": 1}, {"seq": 2}], seq) == 1)
    redis = Redis()
    nodes = []
    try:
        nodes = [Node(f"n{i}", redis.port) for i in range(3)]
        for n in nodes:
            check(f"start: {n.name} ready (connected to Redis, canary heard)", n.wait_ready(200) is not None,
                  n.readyz())
        await test_fanout(nodes, redis)
        await test_resume(nodes)
        await test_raw(nodes)
        await test_dedup(nodes)
        await test_subscriber_killed(nodes, redis)
        await test_stall(nodes, redis)
        await test_redis_down(nodes, redis)
        await test_restart_midstream(nodes, redis)
        test_deafness(nodes, redis)
        await test_presence(nodes, redis)
        await test_presence_outage(nodes[:2], redis)
    finally:
        for n in nodes:
            n.stop()
        redis.stop()
    print(f"{passed} passed, {failed} failed (logs in {TMP})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
