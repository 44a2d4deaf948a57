"""Cluster mode over TLS to Redis and over Redis Sentinel (issue 14), real processes on loopback.

(t) rediss://: a redis-server with `--tls-port` and a certificate made here by the openssl CLI
    (own CA, IP SAN 127.0.0.1); two daemons with `rediss://` + `cluster.tls_ca`: publish on one,
    subscribers on both get it; a third daemon given another CA is not ready, its publishes are
    answered `unavailable`, and its log says why;
(s) Sentinel: master + replica (`--replicaof`) + three sentinels (quorum 2); three daemons with
    `[cluster.sentinel]`, envelope subscribers on every node, a publisher on every node pacing
    messages; mid-stream `SENTINEL FAILOVER mymaster`: every node is ready again on the new
    master (no restart), every publish was answered (ack or `unavailable`), and per subscriber
    every message arrived at most once, seqs in order within an epoch except where marked
    `gap: true`, and every acknowledged message arrived or a gap covers it (silent losses: 0);
    then the same round with `kill -9` of the new master (once the old one is its replica).
Every wait is on an event (polling readyz / redis state, frames), bounded.

    SHARDCAST_BIN=target/release/shardcast python tests/python/test_sentinel.py
"""

import asyncio
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_cluster as tc  # noqa: E402  (harness: Client, check, messages, ...)
from test_cluster import Client, check, free_port, wait_port  # noqa: E402

BIN = tc.BIN
TMP = tc.TMP
TIMEOUT = 10.0


def cli(port, *args, tls=None):
    cmd = ["redis-cli", "-p", str(port)]
    if tls:
        cmd += ["--tls", "--cacert", tls]
    return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=10).stdout


def wait_for(pred, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.05)
    return False


class Proc:
    def __init__(self, name, args):
        self.log_path = os.path.join(TMP, f"{name}.log")
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def redis(name, port, *extra):
    # --dir: a replica writes the RDB it receives from its master there.
    p = Proc(name, ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                    "no", "--dir", TMP, *extra])
    if port:
        assert wait_port(port), f"{name} did not start"
    return p


class Node(tc.Node):
    """A daemon with its own [cluster] body (the harness's Node with another config)."""

    def __init__(self, name, cluster):
        self.name = name
        self.port, self.admin = free_port(), free_port()
        self.path = os.path.join(TMP, f"{name}.toml")
        with open(self.path, "w") as f:
            f.write(f"""[admin]
listen = "127.0.0.1:{self.admin}"
[history]
size = 5000
[cluster]
node_id = "{name}"
channel_prefix = "sc-sent"
canary_interval = "250ms"
canary_timeout = "1s"
presence_ttl = "2s"
{cluster}""")
        self.log_path = os.path.join(TMP, f"{name}.log")
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([BIN, "--config", self.path, "--listen", f"127.0.0.1:{self.port}",
                                      "--shards", "2"], stdout=self.log, stderr=subprocess.STDOUT)
        assert wait_port(self.port), f"{name} did not start"

    def logged(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")


def make_certs(d):
    def run(*a):
        subprocess.run(["openssl", *a], check=True, capture_output=True, cwd=d)
    for ca in ("ca", "other"):
        run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{ca}.key", "-out", f"{ca}.pem",
            "-days", "2", "-subj", f"/CN=shardcast test {ca}")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "redis.key", "-out", "redis.csr",
        "-subj", "/CN=127.0.0.1")
    with open(os.path.join(d, "san.ext"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")
    run("x509", "-req", "-in", "redis.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "redis.pem", "-days", "2", "-extfile", "san.ext")


async def test_tls():
    d = os.path.join(TMP, "tls")
    os.makedirs(d)
    make_certs(d)
    port = free_port()
    r = redis("redis-tls", 0, "--tls-port", str(port), "--tls-cert-file", f"{d}/redis.pem", "--tls-key-file",
              f"{d}/redis.key", "--tls-ca-cert-file", f"{d}/ca.pem", "--tls-auth-clients", "no")
    nodes, procs = [], []
    try:
        assert wait_port(port), "redis-server with TLS did not start"
        url = f'redis = "rediss://127.0.0.1:{port}/0"\n'
        nodes = [Node(f"t{i}", url + f'tls_ca = "{d}/ca.pem"\n') for i in range(2)]
        bad = Node("t-bad", url + f'tls_ca = "{d}/other.pem"\n')
        nodes.append(bad)
        for n in nodes[:2]:
            check(f"tls: {n.name} ready over rediss://", n.wait_ready(200, 15) is not None, n.readyz())
        subs = [await Client.open(n) for n in nodes[:2]]
        for c in subs:
            f = await c.subscribe("tr")
            assert f.get("op") == "subscribed", f
        pub = await Client.open(nodes[1])
        await pub.send({"op": "publish", "room": "tr", "data": {"x": 1}, "id": "p"})
        ack = await pub.until(lambda f: f.get("id") == "p")
        check("tls: publish acked", ack.get("op") == "ack", ack)
        for k, c in enumerate(subs):
            got = await tc.messages(c, "tr", 1, timeout=TIMEOUT)
            check(f"tls: subscriber on t{k} got it", [m.get("data") for m in got] == [{"x": 1}], got)
        check("tls: daemon with the wrong CA not ready", bad.readyz() == 503, bad.readyz())
        bc = await Client.open(bad)
        await bc.send({"op": "publish", "room": "tr", "data": {"x": 2}, "id": "b"})
        ans = await bc.until(lambda f: f.get("id") == "b")
        check("tls: its publish answered unavailable", ans.get("code") == "unavailable", ans)
        log = bad.logged()
        check("tls: its log says it cannot connect", "cannot connect to redis" in log and
              ("certificate" in log.lower() or "UnknownIssuer" in log), log[-600:])
        for c in subs + [pub, bc]:
            await c.close()
        # Sentinel over TLS (`sentinel_tls`): a sentinel on a tls-port only, monitoring the TLS
        # master; a daemon asking it over TLS is ready and carries a publish, one asking it over
        # plain TCP is not.
        sp = free_port()
        conf = os.path.join(TMP, "sentinel-tls.conf")
        with open(conf, "w") as f:
            f.write(f"""port 0
tls-port {sp}
tls-cert-file {d}/redis.pem
tls-key-file {d}/redis.key
tls-ca-cert-file {d}/ca.pem
tls-auth-clients no
tls-replication yes
bind 127.0.0.1
dir {TMP}
sentinel monitor mymaster 127.0.0.1 {port} 1
""")
        sentinel = Proc("sentinel-tls", ["redis-server", conf, "--sentinel"])
        procs.append(sentinel)
        assert wait_port(sp), "sentinel with TLS did not start"
        body = (f'tls_ca = "{d}/ca.pem"\n[cluster.sentinel]\nmaster = "mymaster"\n'
                f'nodes = ["127.0.0.1:{sp}"]\ntls = true\n')
        st = Node("t-sentinel", body + "sentinel_tls = true\n")
        plain = Node("t-sentinel-plain", body)
        nodes += [st, plain]
        check("tls: a daemon asking the sentinel over TLS (sentinel_tls) is ready",
              st.wait_ready(200, 15) is not None, st.readyz())
        c = await Client.open(st)
        f = await c.subscribe("ts")
        await c.send({"op": "publish", "room": "ts", "data": {"x": 3}, "id": "s"})
        ack = await c.until(lambda f: f.get("id") == "s")
        got = await tc.messages(c, "ts", 1, timeout=TIMEOUT)
        check("tls: through the TLS sentinel, publish acked and delivered",
              f.get("op") == "subscribed" and ack.get("op") == "ack"
              and [m.get("data") for m in got] == [{"x": 3}], (f, ack, got))
        await c.close()
        check("tls: a daemon asking the TLS sentinel over plain TCP is not ready",
              plain.readyz() == 503 and "sentinel gave no usable master" in plain.logged(),
              (plain.readyz(), plain.logged()[-400:]))
    finally:
        for n in nodes:
            n.stop()
        for p in procs:
            p.stop()
        r.stop()


def sentinel_conf(port, master_port):
    path = os.path.join(TMP, f"sentinel-{port}.conf")
    with open(path, "w") as f:
        f.write(f"""port {port}
bind 127.0.0.1
dir {TMP}
sentinel monitor mymaster 127.0.0.1 {master_port} 2
sentinel down-after-milliseconds mymaster 1000
sentinel failover-timeout mymaster 4000
sentinel parallel-syncs mymaster 1
""")
    return path


def master_of(sport):
    out = cli(sport, "SENTINEL", "get-master-addr-by-name", "mymaster").split()
    return int(out[1]) if len(out) == 2 else None


async def pace(c, room, prefix, n, answers, period=0.02):
    """Publish n messages paced, collecting every ack/error by id (the reader runs alongside)."""
    for i in range(n):
        await c.send({"op": "publish", "room": room, "data": {"id": f"{prefix}{i}"}, "id": f"{prefix}{i}"})
        await asyncio.sleep(period)


async def answers_of(c, prefix, n, answers, timeout):
    end = time.monotonic() + timeout
    while len(answers) < n and (left := end - time.monotonic()) > 0:
        try:
            f = await c.recv(left)
        except (TimeoutError, asyncio.TimeoutError, ConnectionError):
            break
        if f.get("op") in ("ack", "error") and str(f.get("id", "")).startswith(prefix):
            answers[f["id"]] = f


async def drain(c, room, done, quiet=2.0):
    """Every message of `room` until `done` is set and then `quiet` s pass without one."""
    out = []
    while True:
        try:
            f = await c.recv(quiet)
        except (TimeoutError, asyncio.TimeoutError):
            if done.is_set():
                return out
            continue
        except ConnectionError:
            return out
        if f.get("op") == "message" and f.get("room") == room:
            out.append(f)


def account(msgs, acked):
    """(order violations, duplicates, silent losses, gaps) of one subscriber's messages."""
    bad_order = dups = 0
    seen, prev = set(), None
    for m in msgs:
        key = (m.get("data") or {}).get("id")
        if key in seen:
            dups += 1
        seen.add(key)
        pos = (m.get("epoch"), m.get("seq"))
        if prev and pos[0] == prev[0] and pos[1] <= prev[1] and not m.get("gap"):
            bad_order += 1
        prev = pos
    gaps = sum(1 for m in msgs if m.get("gap"))
    missing = [k for k in acked if k not in seen]
    silent = 0 if gaps else len(missing)
    return bad_order, dups, silent, gaps, len(missing)


async def failover_round(nodes, sports, label, room, trigger, new_port):
    """Subscribers and paced publishers on every node; `trigger()` mid-stream; accounting."""
    clients = []
    try:
        per_node, n_msgs = 6, 250
        subs = []
        for n in nodes:
            for _ in range(per_node):
                c = await Client.open(n)
                f = await c.subscribe(room)
                assert f.get("op") == "subscribed", f
                subs.append(c)
        pubs = [await Client.open(n) for n in nodes]
        clients = subs + pubs
        answers = [dict() for _ in pubs]
        prefixes = [f"p{k}-" for k in range(len(pubs))]
        senders = [asyncio.create_task(pace(p, room, prefixes[k], n_msgs, answers[k]))
                   for k, p in enumerate(pubs)]
        readers = [asyncio.create_task(answers_of(p, prefixes[k], n_msgs, answers[k], 40))
                   for k, p in enumerate(pubs)]
        done = asyncio.Event()
        collect = [asyncio.create_task(drain(c, room, done)) for c in subs]
        await asyncio.sleep(1.5)
        marks = [len(n.logged()) for n in nodes]
        t0 = time.monotonic()
        out = trigger()
        check(f"{label}: failover triggered", "OK" in out, out)
        await asyncio.gather(*senders)
        promoted = wait_for(lambda: master_of(sports[1]) == new_port and
                            "role:master" in cli(new_port, "INFO", "replication"), 20)
        check(f"{label}: the replica is the new master", promoted, master_of(sports[1]))
        for n, mark in zip(nodes, marks):
            check(f"{label}: {n.name} logged the new master", wait_for(
                lambda: f"master=127.0.0.1:{new_port}" in n.logged()[mark:], 20))
        for n in nodes:
            check(f"{label}: {n.name} ready again on the new master",
                  n.wait_ready(200, 20) is not None, n.readyz())
        print(f"     {label}: failover to all ready: {time.monotonic() - t0:.1f} s", flush=True)
        await asyncio.gather(*readers)
        # After the failover: one more message from every node, all must arrive normally.
        for k, p in enumerate(pubs):
            await p.send({"op": "publish", "room": room, "data": {"id": f"after{k}"}, "id": f"after{k}"})
        after = {}
        for k, p in enumerate(pubs):
            one = {}
            await answers_of(p, f"after{k}", 1, one, TIMEOUT)
            after.update(one)
        check(f"{label}: publishes after the failover acked",
              len(after) == 3 and all(a.get("op") == "ack" for a in after.values()), after)
        all_answers = {k: v for a in answers for k, v in a.items()}
        acked = [k for k, a in all_answers.items() if a.get("op") == "ack"] + list(after)
        refused = [a for a in all_answers.values() if a.get("op") == "error"]
        check(f"{label}: every publish answered ({len(acked)} acked, {len(refused)} unavailable)",
              len(all_answers) == 3 * n_msgs and all(a.get("code") == "unavailable" for a in refused),
              (len(all_answers), refused[:3]))
        done.set()
        results = await asyncio.gather(*collect)
        totals = [0, 0, 0, 0, 0]
        for msgs in results:
            for i, v in enumerate(account(msgs, acked)):
                totals[i] += v
        print(f"     {label}: per subscriber totals: order violations {totals[0]}, duplicates {totals[1]}, "
              f"gap marks {totals[3]}, acked not received {totals[4]}", flush=True)
        check(f"{label}: seqs in order within an epoch (or marked gap)", totals[0] == 0, totals)
        check(f"{label}: no message twice", totals[1] == 0, totals)
        check(f"{label}: no silent loss (every acked message received or covered by a gap)",
              totals[2] == 0, totals)
        check(f"{label}: the post-failover messages reached everyone",
              all(all(any((m.get("data") or {}).get("id") == f"after{k}" for m in msgs) for k in range(3))
                  for msgs in results))
    finally:
        for c in clients:
            try:
                await c.close()
            except Exception:
                pass


async def test_sentinel():
    mport, rport = free_port(), free_port()
    procs = [redis("master", mport), redis("replica", rport, "--replicaof", "127.0.0.1", str(mport))]
    nodes, clients = [], []
    try:
        check("sentinel: replica in sync", wait_for(
            lambda: "master_link_status:up" in cli(rport, "INFO", "replication"), 15))
        sports = [free_port() for _ in range(3)]
        for sp in sports:
            procs.append(Proc(f"sentinel-{sp}", ["redis-server", sentinel_conf(sp, mport), "--sentinel"]))
        for sp in sports:
            assert wait_port(sp), "sentinel did not start"
        check("sentinel: sentinels see the replica and each other", wait_for(
            lambda: all(f"{rport}" in cli(sp, "SENTINEL", "replicas", "mymaster") and
                        "OK" in cli(sp, "SENTINEL", "ckquorum", "mymaster") and
                        cli(sp, "SENTINEL", "sentinels", "mymaster").count("runid") >= 2 for sp in sports), 20))
        nodes_list = ", ".join(f'"127.0.0.1:{sp}"' for sp in sports)
        body = f'[cluster.sentinel]\nmaster = "mymaster"\nnodes = [{nodes_list}]\n'
        # s2 waits for one replica after each publish batch (cluster.wait_replicas).
        nodes = [Node(f"s{i}", ("wait_replicas = 1\n" if i == 2 else "") + body) for i in range(3)]
        for n in nodes:
            check(f"sentinel: {n.name} ready on the master", n.wait_ready(200, 15) is not None, n.readyz())
        await failover_round(nodes, sports, "sentinel", "fo",
                             lambda: cli(sports[0], "SENTINEL", "FAILOVER", "mymaster"), rport)
        waits = sum(int(line.split("calls=")[1].split(",")[0]) for p in (mport, rport)
                    for line in cli(p, "INFO", "commandstats").splitlines() if line.startswith("cmdstat_wait:"))
        check(f"sentinel: s2 sent WAIT after its publish batches ({waits} WAITs)", waits > 0, waits)
        # The old master rejoins as a replica of the new one; then kill -9 of the new master.
        check("sentinel: the old master is now a replica in sync", wait_for(
            lambda: "master_link_status:up" in cli(mport, "INFO", "replication"), 30))

        def kill():
            procs[1].proc.kill()
            return "OK"
        await failover_round(nodes, sports, "kill -9", "fo2", kill, mport)
    finally:
        for c in clients:
            try:
                await c.close()
            except Exception:
                pass
        for n in nodes:
            n.stop()
        for p in procs:
            p.stop()


async def main():
    if not shutil.which("redis-server") or not shutil.which("openssl"):
        print("FAIL redis-server or openssl not installed (scripts/test.sh installs redis-server)")
        return 1
    t = time.monotonic()
    await test_tls()
    await test_sentinel()
    print(f"{tc.passed} passed, {tc.failed} failed in {time.monotonic() - t:.0f} s (logs in {TMP})")
    return 1 if tc.failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
