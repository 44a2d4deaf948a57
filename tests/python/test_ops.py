"""Operations (issue #12) against a real daemon: Prometheus metrics parsed by an independent
parser, /readyz through start-up and drain, sd_notify on a real NOTIFY_SOCKET with the watchdog
and a stalled shard, SIGHUP reload with connected clients.

    SHARDCAST_BIN=target/release/shardcast python tests/python/test_ops.py [name-filter ...]
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import jwt
from prometheus_client.parser import text_string_to_metric_families

import test_auth as T
from test_auth import TIMEOUT, check, upgrade

BIN = os.environ.get("SHARDCAST_BIN", os.path.join(T.REPO, "target", "release", "shardcast"))
TMP = tempfile.mkdtemp(prefix="shardcast-ops-")


class Proc:
    """A daemon on free ports with its own config text and environment."""

    def __init__(self, name, config, env=None, wait=True):
        self.port, self.admin = T.free_port(), T.free_port()
        self.path = os.path.join(TMP, f"{name}.toml")
        self.write(config)
        self.log_path = os.path.join(TMP, f"{name}.log")
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([BIN, "--config", self.path, "--listen", f"127.0.0.1:{self.port}",
                                      "--shards", "2"], stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})})
        self.addr = f"127.0.0.1:{self.port}"
        if wait:
            self.wait_port(self.port)

    def write(self, config):
        with open(self.path, "w") as f:
            f.write(config.replace("@ADMIN@", f"127.0.0.1:{self.admin}"))

    def wait_port(self, port, timeout=15):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return True
            except OSError:
                time.sleep(0.02)
        return False

    def get(self, path, key=None):
        req = urllib.request.Request(f"http://127.0.0.1:{self.admin}{path}")
        if key:
            req.add_header("Authorization", f"Bearer {key}")
        try:
            with urllib.request.urlopen(req, timeout=TIMEOUT) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except OSError as e:
            return None, repr(e)

    def logtext(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stop(self, sig=signal.SIGINT):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def raw_socket(p, room="lobby", headers="", path=None):
    """An upgraded raw-room connection on a bare socket (cheap: many of them)."""
    s = socket.create_connection(("127.0.0.1", p.port), timeout=TIMEOUT)
    path = path or f"/ws/{room}"
    s.sendall((f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{headers}\r\n").encode())
    data = b""
    while not data.endswith(b"\r\n\r\n"):  # byte by byte: what follows belongs to the stream
        chunk = s.recv(1)
        if not chunk:
            break
        data += chunk
    return s, data.split(b"\r\n", 1)[0]


def masked(payload, op=0x1):
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([0x80 | op]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big"))
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def metrics(p):
    st, text = p.get("/metrics")
    fams = {f.name: f for f in text_string_to_metric_families(text)} if st == 200 else {}
    return st, fams


def total(fams, name, **labels):
    f = fams.get(name)
    if not f:
        return None
    return sum(s.value for s in f.samples if all(s.labels.get(k) == v for k, v in labels.items())
               and not s.name.endswith("_created"))


def test_metrics():
    p = Proc("metrics", "[admin]\nlisten = \"@ADMIN@\"\n")
    try:
        st, fams = metrics(p)
        check("metrics: /metrics parses with prometheus_client.parser", st == 200 and fams, st)
        expected = ["shardcast_connections", "shardcast_upgrades", "shardcast_messages_in", "shardcast_deliveries",
                    "shardcast_send_ops", "shardcast_http_rejected", "shardcast_dropped_frames",
                    "shardcast_slow_consumer_closes", "shardcast_heartbeat_timeouts", "shardcast_rooms",
                    "shardcast_auth_failures", "shardcast_admission_refusals", "shardcast_compressions",
                    "shardcast_envelope_encodings", "shardcast_rate_limited", "shardcast_room_full",
                    "shardcast_process_resident_memory_bytes", "shardcast_process_open_fds", "shardcast_io_driver",
                    "shardcast_build_info", "shardcast_received_bytes", "shardcast_broadcast_sent_bytes",
                    "shardcast_cross_shard_messages", "shardcast_cross_shard_overflow", "shardcast_resumes",
                    "shardcast_closes_sent", "shardcast_connection_queued_bytes"]
        missing = [n for n in expected if n not in fams]
        check("metrics: every listed metric is exported", not missing, missing)
        N, M, K = 20, 30, 3
        conns = [raw_socket(p, "m")[0] for _ in range(N)]
        for i in range(M):
            conns[0].sendall(masked(f"msg {i}".encode()))
        for s in conns:  # every member reads all M messages (its own echo included)
            s.settimeout(TIMEOUT)
            got = b""
            while got.count(b"msg ") < M:
                got += s.recv(65536)
        for _ in range(K):
            upgrade(p, "/ws/bad!room")
        end = time.monotonic() + TIMEOUT
        while time.monotonic() < end:
            st, fams = metrics(p)
            if total(fams, "shardcast_deliveries") >= N * M and total(fams, "shardcast_http_rejected") >= K:
                break
            time.sleep(0.1)
        vals = {k: total(fams, f"shardcast_{k}") for k in ("connections", "messages_in", "deliveries", "http_rejected", "upgrades")}
        check(f"metrics: counters follow a known load ({N} connections, {M} messages, {K} refusals)",
              vals["connections"] == N and vals["messages_in"] == M and vals["deliveries"] == N * M
              and vals["http_rejected"] == K and vals["upgrades"] == N, vals)
        rx = total(fams, "shardcast_received_bytes")
        check("metrics: received bytes count the client frames (30 frames of 11-12 bytes)",
              rx is not None and rx >= M * 11, rx)
        end, hc = time.monotonic() + TIMEOUT, []
        while time.monotonic() < end:  # sampled by the sweep, at most a second behind
            h = metrics(p)[1].get("shardcast_connection_queued_bytes")
            hc = [x.value for x in h.samples if x.name.endswith("_count")] if h else []
            if hc == [N]:
                break
            time.sleep(0.2)
        check("metrics: the queue-depth histogram samples every connection", hc == [N], hc)
        shards = {s.labels.get("shard") for s in fams["shardcast_deliveries"].samples}
        check("metrics: counters carry a shard label per shard", shards == {"0", "1"}, shards)
        drv = [s.labels.get("driver") for s in fams["shardcast_io_driver"].samples]
        check("metrics: io driver info", drv in (["io_uring"], ["epoll"]), drv)
        st, body = p.get("/")
        check("admin page: served from the admin listener", st == 200 and "/events" in body, st)
        st, _ = p.get("/nope")
        check("admin: unknown path 404", st == 404, st)
        for s in conns:
            s.close()
    finally:
        p.stop()


def test_metrics_policies_history_presence_deflate():
    """The metrics of slow-consumer policies, history, presence and compression move with a
    known load."""
    p = Proc("metrics2", "[admin]\nlisten = \"@ADMIN@\"\n[limits]\nmax_buffered_bytes = \"64KiB\"\n"
             "[[rooms.class]]\nmatch = \"drop:*\"\nslow_consumer = \"drop\"\necho_to_sender = false\n"
             "[[rooms.class]]\nmatch = \"hist:*\"\nhistory_size = 5\n")
    try:
        st, fams = metrics(p)
        for name in ("shardcast_slow_consumer_actions", "shardcast_deflate_input_bytes",
                     "shardcast_deflate_output_bytes", "shardcast_dedicated_compressions",
                     "shardcast_history_messages", "shardcast_history_bytes", "shardcast_history_evictions",
                     "shardcast_presence_members"):
            check(f"metrics: {name} exported", name in fams, sorted(fams)[:5])
        pols = {s.labels.get("policy") for s in fams["shardcast_slow_consumer_actions"].samples
                if not s.name.endswith("_created")} if "shardcast_slow_consumer_actions" in fams else set()
        check("metrics: slow-consumer actions by policy", pols == {"close", "drop", "drop_oldest", "conflate"}, pols)

        # History: 8 messages into a room that keeps 5 -> 5 kept, 3 evicted; 3 presence entries.
        subs = [T.Client(p) for _ in range(3)]
        for c in subs:
            f = c.request({"op": "subscribe", "room": "hist:a", "id": 1})
            check("metrics: subscribed", isinstance(f, dict) and f.get("op") == "subscribed", f)
        for i in range(8):
            f = subs[0].request({"op": "publish", "room": "hist:a", "data": {"i": i, "pad": "p" * 200}, "id": i})
        want = {"history_messages": 5, "history_evictions": 3, "presence_members": 3}
        end, got = time.monotonic() + TIMEOUT, {}
        while time.monotonic() < end:  # gauges are set by the sweep, once a second
            fams = metrics(p)[1]
            got = {k: total(fams, f"shardcast_{k}") for k in want}
            if got == want:
                break
            time.sleep(0.2)
        check("metrics: history kept 5 of 8, evicted 3; 3 presence entries", got == want, got)
        hb = total(fams, "shardcast_history_bytes")
        check("metrics: history bytes count the kept payloads", hb is not None and hb >= 5 * 200, hb)

        # Join/leave events are encoded only for rooms with a presence watcher: 10 joins of
        # members that did not ask for presence encode nothing; with one watcher, each later
        # join is encoded once.
        enc = lambda: total(metrics(p)[1], "shardcast_envelope_encodings")  # noqa: E731
        before = enc()
        quiet = [T.Client(p) for _ in range(10)]
        for c in quiet:
            c.request({"op": "subscribe", "room": "quiet", "id": 1})
        mid = enc()
        watcher = T.Client(p)
        watcher.request({"op": "subscribe", "room": "quiet", "presence": True, "id": 1})
        late = [T.Client(p) for _ in range(3)]
        for c in late:
            c.request({"op": "subscribe", "room": "quiet", "id": 1})
        joins, end = [], time.monotonic() + TIMEOUT
        while len(joins) < 4 and time.monotonic() < end:
            joins += [f for f in watcher.drain(0.05) if f.get("op") == "join"]
        after = enc()
        # The watcher sees its own join and the 3 later ones: 4 events, each encoded once.
        check("metrics: joins nobody watches are not encoded; watched ones are, once each",
              mid == before and len(joins) == 4 and after - mid == 4, (before, mid, after, len(joins)))
        for c in quiet + late + [watcher]:
            c.close()

        # Compression: a deflate client of a raw room gets a 4 KiB broadcast compressed once.
        before = total(metrics(p)[1], "shardcast_deflate_input_bytes")
        z = T.ws_connect(f"ws://{p.addr}/ws/z", compression="deflate")
        pub = T.ws_connect(f"ws://{p.addr}/ws/z", compression=None)
        pub.send("a" * 4096)
        got_z = z.recv(TIMEOUT)
        fams = metrics(p)[1]
        zin, zout = total(fams, "shardcast_deflate_input_bytes"), total(fams, "shardcast_deflate_output_bytes")
        check("metrics: deflate input and output bytes (ratio well under 1 for a repetitive message)",
              got_z == "a" * 4096 and zin is not None and zin - before >= 4096 and zout is not None
              and 0 < zout < zin / 4, (zin, zout, before))
        z.close()
        pub.close()

        # Slow consumers: a stalled client in a drop room loses frames, counted under "drop".
        slow = T.StalledClient(p, "drop:s")
        pub = T.Client(p)
        for i in range(400):
            pub.send({"op": "publish", "room": "drop:s", "data": {"i": i, "pad": "x" * 2000}})
        pub.request({"op": "publish", "room": "drop:s", "data": "last", "id": "last"})
        end, drops = time.monotonic() + TIMEOUT, 0
        while time.monotonic() < end:
            fams = metrics(p)[1]
            drops = total(fams, "shardcast_slow_consumer_actions", policy="drop")
            if drops:
                break
            time.sleep(0.1)
        check("metrics: a stalled client in a drop room counts drop actions", drops and drops > 0
              and total(fams, "shardcast_dropped_frames") >= drops, (drops, total(fams, "shardcast_dropped_frames")))
        slow.s.close()
        # ... and one in a close room is closed, counted under "close".
        slow = T.StalledClient(p, "close-room")
        for i in range(400):
            pub.send({"op": "publish", "room": "close-room", "data": {"i": i, "pad": "x" * 2000}})
        pub.request({"op": "publish", "room": "close-room", "data": "last", "id": "last2"})
        end, closes = time.monotonic() + TIMEOUT, 0
        while time.monotonic() < end:
            fams = metrics(p)[1]
            closes = total(fams, "shardcast_slow_consumer_actions", policy="close")
            if closes:
                break
            time.sleep(0.1)
        check("metrics: a stalled client in a close room counts one close action",
              closes == 1 and total(fams, "shardcast_slow_consumer_closes") == 1, closes)
        slow.s.close()
        for c in subs:
            c.ws.close()
        pub.ws.close()
    finally:
        p.stop()


def test_admin_key():
    p = Proc("key", "[admin]\nlisten = \"@ADMIN@\"\nkey = \"adm-secret\"\n")
    try:
        st, _ = p.get("/metrics")
        check("admin key: /metrics without the key -> 401", st == 401, st)
        st, _ = p.get("/metrics", key="adm-secret")
        check("admin key: with the key -> 200", st == 200, st)
        st, _ = p.get("/readyz")
        check("admin key: /readyz stays open (probes carry no key)", st == 200, st)
    finally:
        p.stop()


def test_readyz():
    p = Proc("ready", "[admin]\nlisten = \"@ADMIN@\"\n[shutdown]\ndrain_timeout = \"4s\"\n",
             env={"SHARDCAST_TEST_HOOKS": "1", "SHARDCAST_TEST_START_DELAY_MS": "1500"}, wait=False)
    try:
        p.wait_port(p.admin)
        st, body = p.get("/readyz")
        check("readyz: 503 while starting (shards not accepting yet)", st == 503 and "starting" in body, (st, body))
        p.wait_port(p.port)
        end, st = time.monotonic() + TIMEOUT, None
        while time.monotonic() < end:
            st, body = p.get("/readyz")
            if st == 200:
                break
            time.sleep(0.05)
        check("readyz: 200 once every shard accepts", st == 200, (st, body))
        # A client keeps the drain going; readyz says draining meanwhile.
        s, _ = raw_socket(p)
        p.proc.send_signal(signal.SIGTERM)
        end, st = time.monotonic() + TIMEOUT, None
        while time.monotonic() < end and p.proc.poll() is None:
            st, body = p.get("/readyz")
            if st == 503:
                break
            time.sleep(0.05)
        check("readyz: 503 'draining' during the drain", st == 503 and "draining" in body, (st, body))
        s.close()
    finally:
        p.stop()


class NotifySocket:
    """A NOTIFY_SOCKET datagram socket held by the test: every message with its arrival time."""

    def __init__(self):
        self.path = os.path.join(TMP, f"notify-{os.getpid()}.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.msgs, self.stop = [], False
        threading.Thread(target=self.run, daemon=True).start()

    def run(self):
        while not self.stop:
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            for line in data.decode().split("\n"):
                if line:
                    self.msgs.append((time.monotonic(), line))

    def wait_for(self, prefix, timeout=TIMEOUT, after=0.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for t, m in list(self.msgs):
                if t >= after and m.startswith(prefix):
                    return t
            time.sleep(0.02)
        return None

    def times(self, prefix, start, end):
        return [t for t, m in list(self.msgs) if m.startswith(prefix) and start <= t <= end]


def test_sd_notify():
    n = NotifySocket()
    env = {"NOTIFY_SOCKET": n.path, "WATCHDOG_USEC": "1000000", "SHARDCAST_TEST_HOOKS": "1"}
    env.pop("WATCHDOG_PID", None)
    p = Proc("notify", "[admin]\nlisten = \"@ADMIN@\"\n[heartbeat]\ninterval = \"1s\"\ntimeout = \"1s\"\n", env=env,
             wait=False)
    try:
        t_ready = n.wait_for("READY=1")
        check("sd_notify: READY=1 sent", t_ready is not None, n.msgs[:5])
        st, _, _ = upgrade(p, "/ws/x")
        check("sd_notify: the listener accepts once READY=1 was sent", st == 101, st)
        check("sd_notify: STATUS= with a summary", any(m.startswith("STATUS=") and "connections" in m for _, m in n.msgs),
              n.msgs[:5])
        time.sleep(2.2)
        now = time.monotonic()
        pings = n.times("WATCHDOG=1", now - 2.0, now)
        check("sd_notify: WATCHDOG=1 about every 0.5 s (WatchdogSec 1 s): 3-5 pings in 2 s", 3 <= len(pings) <= 5, len(pings))
        req = urllib.request.Request(f"http://127.0.0.1:{p.admin}/test/stall?shard=1&ms=3000", method="POST")
        with urllib.request.urlopen(req, timeout=TIMEOUT) as r:
            check("sd_notify: test hook stalls shard 1 for 3 s", r.status == 200, r.status)
        t0 = time.monotonic()
        time.sleep(3.0)
        during = n.times("WATCHDOG=1", t0 + 1.1, t0 + 2.9)
        check("sd_notify: no WATCHDOG=1 while a shard's loop is stuck", during == [], during)
        after = n.wait_for("WATCHDOG=1", timeout=4, after=t0 + 3.0)
        check("sd_notify: pings resume once the shard turns again", after is not None)
        p.proc.send_signal(signal.SIGTERM)
        check("sd_notify: STOPPING=1 on SIGTERM", n.wait_for("STOPPING=1") is not None, n.msgs[-5:])
        check("sd_notify: a stuck shard is logged", "shard loop not turning" in p.logtext())
    finally:
        p.stop()
        n.stop = True


RELOAD_BASE = """[admin]
listen = "@ADMIN@"
[server]
allowed_origins = ["https://a.example"]
[limits]
max_message_bytes = "{maxmsg}"
max_frame_bytes = "{maxmsg}"
[auth]
mode = "jwt"
hs256_secret_file = "{secret}"
[[rooms.class]]
match = "ro:*"
anonymous_publish = {ro_publish}
"""


def test_sighup_reload():
    sec1, sec2 = os.path.join(TMP, "s1"), os.path.join(TMP, "s2")
    for path, v in ((sec1, "first-secret-0123456789abcdef0123"), (sec2, "second-secret-0123456789abcdef012")):
        with open(path, "w") as f:
            f.write(v + "\n")
    tok = lambda secret, sub="ada": jwt.encode({"sub": sub, "exp": int(time.time()) + 600},  # noqa: E731
                                               open(secret).read().strip(), "HS256")
    cfg = lambda **kw: RELOAD_BASE.format(**{"maxmsg": "64KiB", "secret": sec1, "ro_publish": "true", **kw})  # noqa: E731
    p = Proc("reload", cfg())
    try:
        t1 = tok(sec1)
        hdr = f"Authorization: Bearer {t1}\r\n"
        N = 1000
        clients = []
        for i in range(N):
            s, status = raw_socket(p, f"r{i % 50}", hdr)
            clients.append(s)
        check(f"reload: {N} clients connected", all(True for _ in clients) and len(clients) == N)
        _, fams = metrics(p)
        check("reload: the daemon counts them", total(fams, "shardcast_connections") == N, total(fams, "shardcast_connections"))
        origin = {"Origin": "https://b.example", "Authorization": f"Bearer {t1}"}
        st, _, _ = upgrade(p, "/ws/x", headers=origin)
        check("reload: before, Origin b.example is refused (403)", st == 403, st)
        # The new file: another key, another origin list, a smaller limit, a class change.
        p.write(cfg(maxmsg="1KiB", secret=sec2, ro_publish="false").replace("https://a.example", "https://b.example"))
        p.proc.send_signal(signal.SIGHUP)
        end = time.monotonic() + TIMEOUT
        while time.monotonic() < end and "reloaded" not in p.logtext():
            time.sleep(0.05)
        check("reload: SIGHUP logged 'reloaded'", "reloaded" in p.logtext(), p.logtext()[-300:])
        st, _, body = upgrade(p, "/ws/x", headers={"Authorization": f"Bearer {t1}"})
        check("reload: new handshakes with the old key's token -> 401 bad signature", st == 401 and "bad signature" in body, (st, body))
        t2 = tok(sec2)
        st, _, _ = upgrade(p, "/ws/x", headers={"Origin": "https://b.example", "Authorization": f"Bearer {t2}"})
        check("reload: the new key and the new origin list apply to new handshakes", st == 101, st)
        y, _ = raw_socket(p, "big", f"Authorization: Bearer {t2}\r\n")
        y.sendall(masked(b"x" * 2000))
        y.settimeout(TIMEOUT)
        data = y.recv(64)
        check("reload: the new max_message_bytes (1 KiB) applies: 2000 bytes -> close 1009",
              data[:1] == b"\x88" and int.from_bytes(data[2:4], "big") == 1009, data[:8])
        z, _ = raw_socket(p, "ro:1", f"Authorization: Bearer {t2}\r\n")
        z.sendall(masked(b"hello"))
        z.settimeout(TIMEOUT)
        data = z.recv(64)
        check("reload: the room class change applies (ro:* publish -> 1008)",
              data[:1] == b"\x88" and int.from_bytes(data[2:4], "big") == 1008, data[:30])
        # Nobody was dropped: every old client still answers a ping with a pong.
        for s in clients:
            s.sendall(masked(b"p", op=0x9))
        alive = 0
        for s in clients:
            try:
                s.settimeout(TIMEOUT)
                if s.recv(16)[:1] == b"\x8a":
                    alive += 1
            except OSError:
                pass
        check(f"reload: none of the {N} connected clients was dropped (each answers a ping)", alive == N, alive)
        # An invalid file changes nothing and is logged with its key.
        p.write(cfg(secret=sec1).replace("max_message_bytes = \"64KiB\"", "max_message_bytes = \"lots\""))
        p.proc.send_signal(signal.SIGHUP)
        end = time.monotonic() + TIMEOUT
        while time.monotonic() < end and "reload refused" not in p.logtext():
            time.sleep(0.05)
        log = p.logtext()
        check("reload: an invalid file is refused and the log names the key",
              "reload refused" in log and "limits.max_message_bytes" in log, log[-400:])
        st, _, _ = upgrade(p, "/ws/x", headers={"Origin": "https://b.example", "Authorization": f"Bearer {t2}"})
        check("reload: after the refused file the running config still applies (new key, new origins)", st == 101, st)
        out = subprocess.run([BIN, "config", "check", "--config", p.path], capture_output=True, text=True)
        check("reload: `config check` says the same before the signal", out.returncode != 0
              and "limits.max_message_bytes" in out.stderr, (out.returncode, out.stderr[-200:]))
        for s in clients:
            s.close()
    finally:
        p.stop()


def envelope_socket(p, sub_room=None):
    """An envelope JSON connection on a bare socket (welcome read), optionally subscribed."""
    s, status = raw_socket(p, headers=f"Sec-WebSocket-Protocol: {T.JSON_PROTO}\r\n", path="/ws")
    if sub_room:
        s.sendall(masked(('{"op":"subscribe","room":"%s"}' % sub_room).encode()))
    return s, status


def read_frames(buf):
    """Whole server frames at the front of buf: ([(opcode, payload)], rest)."""
    out = []
    while len(buf) >= 2:
        n, hl = buf[1] & 0x7F, 2
        if n == 126:
            if len(buf) < 4:
                break
            n, hl = int.from_bytes(buf[2:4], "big"), 4
        elif n == 127:
            if len(buf) < 10:
                break
            n, hl = int.from_bytes(buf[2:10], "big"), 10
        if len(buf) < hl + n:
            break
        out.append((buf[0] & 0x0F, bytes(buf[hl:hl + n])))
        buf = buf[hl + n:]
    return out, buf


def watch_closes(socks, timeout):
    """Read every socket until it gets a close frame: per socket (hint time, after_ms, close
    time, close code), times relative to the call."""
    import selectors
    import json as J
    sel = selectors.DefaultSelector()
    t0 = time.monotonic()
    state = {}
    for i, s in enumerate(socks):
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, i)
        state[i] = {"buf": b"", "hint": None, "after": None, "close": None, "code": None}
    left = len(socks)
    while left and time.monotonic() - t0 < timeout:
        for key, _ in sel.select(0.5):
            i, st = key.data, state[key.data]
            try:
                data = key.fileobj.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                sel.unregister(key.fileobj)
                left -= st["close"] is None
                continue
            frames, st["buf"] = read_frames(st["buf"] + data)
            for op, payload in frames:
                if op == 1:
                    msg = J.loads(payload)
                    if msg.get("op") == "reconnect" and st["hint"] is None:
                        st["hint"], st["after"] = time.monotonic() - t0, msg.get("after_ms")
                elif op == 8 and st["close"] is None:
                    st["close"], st["code"] = time.monotonic() - t0, int.from_bytes(payload[:2], "big")
                    sel.unregister(key.fileobj)
                    left -= 1
                    break
    return [state[i] for i in range(len(socks))]


def test_rolling_drain():
    p = Proc("drain", "[admin]\nlisten = \"@ADMIN@\"\n[shutdown]\ndrain_timeout = \"5s\"\n[limits]\nmax_connections = 5000\n")
    try:
        N = 2000
        socks = [envelope_socket(p)[0] for _ in range(N)]
        raw = [raw_socket(p, "drain-raw")[0] for _ in range(50)]
        _, fams = metrics(p)
        check(f"drain: {N} envelope + 50 raw clients connected", total(fams, "shardcast_connections") == N + 50,
              total(fams, "shardcast_connections"))
        p.proc.send_signal(signal.SIGTERM)
        res = watch_closes(socks + raw, timeout=15)
        env, rw = res[:N], res[N:]
        hinted = [r for r in env if r["hint"] is not None]
        check("drain: every envelope client got {op: reconnect, after_ms} first", len(hinted) == N, N - len(hinted))
        check("drain: after_ms within the spread (0 .. 80 % of 5 s)",
              all(0 <= (r["after"] or 0) <= 4000 for r in hinted), max((r["after"] or 0) for r in hinted))
        codes = {r["code"] for r in res}
        check("drain: every client closed with 1012 (service restart)", codes == {1012}, codes)
        closes = sorted(r["close"] for r in res if r["close"] is not None)
        edges = [i * 0.5 for i in range(11)]
        hist = [sum(1 for t in closes if lo <= t < lo + 0.5) for lo in edges[:-1]]
        print("    close times, 0.5 s buckets from SIGTERM:", hist, flush=True)
        mean = len(closes) / 8
        check("drain: closes spread evenly over the first 4 s (each 0.5 s bucket within 0.5x-1.6x of the mean)",
              len(closes) == N + 50 and all(0.5 * mean <= h <= 1.6 * mean for h in hist[:8]) and sum(hist[8:]) <= 0.05 * N,
              hist)
        late = [abs(r["close"] - (r["hint"] + r["after"] / 1000)) for r in hinted if r["close"] is not None]
        check("drain: each close comes when its hint said (within 0.5 s)", late and max(late) < 0.5, max(late or [0]))
        check("drain: the daemon exits 0 after the drain", p.proc.wait(10) == 0, p.proc.poll())
        for s in socks + raw:
            s.close()
    finally:
        p.stop()


def test_second_instance_and_takeover():
    cfg = "[admin]\nlisten = \"\"\n[shutdown]\ndrain_timeout = \"3s\"\n"
    a = Proc("first", cfg)
    try:
        out = subprocess.run([BIN, "--config", a.path, "--listen", a.addr], capture_output=True, text=True, timeout=10)
        check("second instance: refuses to start on a served address (exit 1)", out.returncode == 1, out.returncode)
        check("second instance: the error names the address and the running pid",
              a.addr in out.stderr and f"pid {a.proc.pid}" in out.stderr and "--takeover" in out.stderr, out.stderr[-300:])
        N = 200
        room = "switch"
        clients = [envelope_socket(a, room)[0] for _ in range(N)]
        epochs = set()
        for c in clients:
            c.settimeout(TIMEOUT)
            buf, sub = b"", None
            while sub is None:
                buf += c.recv(4096)
                frames, _ = read_frames(buf)
                sub = next((json.loads(pl) for op, pl in frames if op == 1 and b'"subscribed"' in pl), None)
            epochs.add(sub["epoch"])
        args = [BIN, "--config", a.path, "--listen", a.addr, "--takeover"]
        blog = open(os.path.join(TMP, "takeover.log"), "wb")
        bp = subprocess.Popen(args, stdout=blog, stderr=subprocess.STDOUT)
        try:
            res = watch_closes(clients, timeout=10)
            codes = {r["code"] for r in res}
            check("takeover: the old daemon's clients are closed 1012 after a reconnect hint",
                  codes == {1012} and all(r["hint"] is not None for r in res), codes)
            check("takeover: the old daemon exits after its drain", a.proc.wait(10) == 0, a.proc.poll())
            # Everyone reconnects to the new daemon and resubscribes with since/epoch.
            again = []
            (epoch,) = epochs
            for _ in range(N):
                s, status = envelope_socket(a)
                s.sendall(masked(json.dumps({"op": "subscribe", "room": room, "since": 0, "epoch": epoch}).encode()))
                again.append((s, status))
            ok = sum(1 for _, st in again if st.startswith(b"HTTP/1.1 101"))
            check(f"takeover: all {N} clients reconnect to the new daemon", ok == N, ok)
            answers = []
            for s, _ in again:
                buf, sub = b"", None
                while sub is None:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    buf += chunk
                    frames, _ = read_frames(buf)
                    sub = next((json.loads(pl) for op, pl in frames if op == 1 and b'"subscribed"' in pl), None)
                answers.append(sub)
            explicit = sum(1 for x in answers if x and x.get("recovered") is False and x.get("epoch") != epoch)
            check("takeover: resuming with since/epoch on the new process says recovered: false (a new epoch: "
                  "nothing is lost silently)", explicit == N, explicit)
            with open(os.path.join(TMP, "takeover.log"), "rb") as f:
                log = f.read().decode()
            check("takeover: the new daemon logged the takeover", "took the address over" in log, log[-300:])
            for s, _ in again:
                s.close()
        finally:
            bp.send_signal(signal.SIGINT)
            bp.wait(10)
            blog.close()
        for c in clients:
            c.close()
    finally:
        a.stop()


TESTS = [(f, None) for f in (test_metrics, test_metrics_policies_history_presence_deflate, test_admin_key, test_readyz, test_sd_notify, test_sighup_reload,
                             test_rolling_drain, test_second_instance_and_takeover)]

if __name__ == "__main__":
    try:
        T.main(TESTS, "ops")
    finally:
        shutil.rmtree(TMP, ignore_errors=True)
