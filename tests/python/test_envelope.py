"""The envelope protocol (docs/protocol.md) end to end, against a daemon started with
tests/python/envelope.toml (2 shards, heartbeat 1s + 1s, history 1500 messages, API key
`test-key`, max_bad_frames 5): every client and server frame in JSON and in CBOR (CBOR decoded and
built with `cbor2`, independently of the daemon), resume after a dropped connection, presence
across shards and heartbeat pruning, the HTTP API, raw <-> envelope interop, handshake refusals
and error handling.

Usage: python test_envelope.py HOST:PORT
Prints one line per check and a closing 'N passed, N failed'; exits non-zero on any failure.
"""

import base64
import io
import json
import os
import random
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request

import cbor2
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

ADDR = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:9012"
HOST, PORT = ADDR.rsplit(":", 1)[0], int(ADDR.rsplit(":", 1)[1])
KEY = "test-key"
JSON, CBOR = "json", "cbor"
SUBPROTOCOL = {JSON: "shardcast.v1.json", CBOR: "shardcast.v1.cbor"}
TIMEOUT = 5.0  # every recv is bounded: a daemon bug fails a check instead of hanging
HISTORY_SIZE = 1500  # [history] size in envelope.toml
passed = failed = 0
OPEN = []  # connections of the running test, closed after it
MISORDERED = []  # server frames whose first key is not "op"


# ---------------------------------------------------------------------------------------- helpers

def check(name, cond, detail=""):
    global passed, failed
    if cond:
        passed += 1
        print(f"ok   {name}", flush=True)
    else:
        failed += 1
        text = detail if isinstance(detail, str) else repr(detail)
        print(f"FAIL {name} {text[:600]}{'...' if len(text) > 600 else ''}", flush=True)
    return bool(cond)


def room(prefix):
    return f"{prefix}-{random.getrandbits(32):08x}"


def is_int(x):
    return type(x) is int  # bool is an int subclass in Python: exclude it


def valid_epoch(e):
    return is_int(e) and 0 <= e < 2**53


def shard(conn):
    return conn & 1023


def b64(b):
    return base64.b64encode(b).decode()


def wire(fmt, value):
    """The payload fields a server frame carries for `value` (bytes: base64 + enc in JSON)."""
    if isinstance(value, bytes) and fmt == JSON:
        return {"data": b64(value), "enc": "base64"}
    return {"data": value}


def publish(fmt, r, value, **extra):
    """A publish frame for `value` (bytes as base64 + enc in JSON, native in CBOR)."""
    return {"op": "publish", "room": r, **wire(fmt, value), **extra}


def message(r, seq, frm, fmt, value):
    return {"op": "message", "room": r, "seq": seq, "from": frm, **wire(fmt, value)}


def entry(seq, frm, fmt, value):
    return {"seq": seq, "from": frm, **wire(fmt, value)}


def subscribed(r, seq, epoch, recovered):
    return {"op": "subscribed", "room": r, "seq": seq, "epoch": epoch, "recovered": recovered}


def members(lst):
    return sorted(lst, key=lambda m: m.get("conn") if isinstance(m, dict) and is_int(m.get("conn")) else -1) \
        if isinstance(lst, list) else lst


def by_op(frames):
    return {f.get("op"): f for f in frames if isinstance(f, dict)}


def seq_summary(seqs):
    """Compact description of where a list of seqs departs from 1, 2, 3, ..."""
    for i, s in enumerate(seqs):
        if s != i + 1:
            return f"{len(seqs)} seqs; first departure at index {i}: {seqs[max(0, i - 3):i + 4]}"
    return f"{len(seqs)} seqs, ends at {seqs[-1] if seqs else None}"


def cbor_decode(payload):
    fp = io.BytesIO(payload)
    obj = cbor2.CBORDecoder(fp).decode()
    if fp.tell() != len(payload):
        raise AssertionError(f"{len(payload) - fp.tell()} bytes follow the CBOR item in a server frame")
    return obj


def ws_connect(url, **kw):
    kw = {"proxy": None, "open_timeout": TIMEOUT, "close_timeout": 2, "max_size": 8 << 20,
          "max_queue": None, "legacy": True, **kw}  # max_queue None: the reader never stops answering pings
    ws = connect(url, **kw)
    OPEN.append(ws)
    return ws


class Client:
    """An envelope connection: send(dict) / recv() -> dict, encoded per format."""

    def __init__(self, fmt, info=None, **kw):
        self.fmt = fmt
        url = f"ws://{ADDR}/ws"
        if info is not None:
            url += "?info=" + urllib.parse.quote(json.dumps(info, separators=(",", ":")), safe="")
        self.ws = ws_connect(url, subprotocols=[SUBPROTOCOL[fmt]], **kw)
        upgraded = time.monotonic()
        self.welcome = self.recv()
        self.welcome_delay = time.monotonic() - upgraded
        self.conn = self.welcome.get("conn") if isinstance(self.welcome, dict) else None

    @property
    def shard(self):
        return shard(self.conn)

    def send(self, frame):
        self.ws.send(json.dumps(frame) if self.fmt == JSON else cbor2.dumps(frame))

    def send_raw(self, payload):
        self.ws.send(payload)

    def recv(self, timeout=TIMEOUT):
        msg = self.ws.recv(timeout)
        if self.fmt == JSON:
            if not isinstance(msg, str):
                raise AssertionError(f"JSON connection got a binary message {msg[:80]!r}")
            frame = json.loads(msg)
        else:
            if not isinstance(msg, bytes):
                raise AssertionError(f"CBOR connection got a text message {msg[:80]!r}")
            frame = cbor_decode(msg)
        if not isinstance(frame, dict) or next(iter(frame), None) != "op":
            MISORDERED.append(frame)
        return frame

    def recv_n(self, n, timeout=TIMEOUT):
        return [self.recv(timeout) for _ in range(n)]

    def request(self, frame, timeout=TIMEOUT):
        self.send(frame)
        return self.recv(timeout)

    def drain(self, secs):
        """Every frame that arrives within `secs` (to see that nothing more comes)."""
        out, end = [], time.monotonic() + secs
        while (left := end - time.monotonic()) > 0:
            try:
                out.append(self.recv(left))
            except TimeoutError:
                break
        return out

    def until(self, pred, timeout=TIMEOUT):
        """Read until pred(frame): (frame, frames skipped before it); (None, skipped) on timeout."""
        skipped, end = [], time.monotonic() + timeout
        while (left := end - time.monotonic()) > 0:
            try:
                f = self.recv(left)
            except TimeoutError:
                break
            if pred(f):
                return f, skipped
            skipped.append(f)
        return None, skipped

    def close(self):
        close_quietly(self.ws)


def close_quietly(ws):
    t = threading.Thread(target=lambda: ws.close(), daemon=True)  # never hang on a stuck socket
    t.start()
    t.join(3)


def close_all():
    while OPEN:
        close_quietly(OPEN.pop())


def open_on_shard(fmt, want, info=None, tries=40):
    """An envelope client whose conn id says it is on shard `want` (SO_REUSEPORT spreads by port)."""
    spare = []
    for _ in range(tries):
        c = Client(fmt, info)
        if is_int(c.conn) and shard(c.conn) == want:
            break
        spare.append(c)
    else:
        raise AssertionError(f"no connection landed on shard {want} in {tries} tries")
    for s in spare:
        s.close()
    return c


def drop(client, rst):
    """Lose the connection abruptly: no close frame (FIN, or RST with rst=True)."""
    sock = client.ws.socket
    if rst:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    try:
        sock.shutdown(socket.SHUT_RDWR)  # also wakes websockets' reader thread
    except OSError:
        pass
    sock.close()


def await_close(client, timeout=TIMEOUT):
    """Read until the server closes: (close code or None if no close frame, frames before it)."""
    frames, end = [], time.monotonic() + timeout
    try:
        while (left := end - time.monotonic()) > 0:
            frames.append(client.recv(left))
        return "no close", frames
    except ConnectionClosed as e:
        return (e.rcvd.code if e.rcvd else None), frames
    except TimeoutError:
        return "no close", frames


OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http(method, path, body=None, key=KEY, raw=None):
    """(status, parsed JSON body or None, raw body) of an HTTP API request."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(f"http://{ADDR}{path}", data=data, method=method)
    if key is not None:
        req.add_header("Authorization", f"Bearer {key}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with OPENER.open(req, timeout=TIMEOUT) as r:
            status, payload = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, payload = e.code, e.read()
    try:
        parsed = json.loads(payload)
    except ValueError:
        parsed = None
    return status, parsed, payload


def upgrade(path, extra_headers=""):
    """A hand-written WebSocket upgrade request: (status, headers, body text)."""
    req = (f"GET {path} HTTP/1.1\r\nHost: {ADDR}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
           f"{extra_headers}\r\n")
    with socket.create_connection((HOST, PORT), timeout=TIMEOUT) as s:
        s.sendall(req.encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
        want = int(headers.get("content-length", "-1"))
        try:
            while want < 0 or len(body) < want:
                chunk = s.recv(65536)
                if not chunk:
                    break
                body += chunk
        except socket.timeout:
            pass
    return status, headers, body.decode("utf-8", "replace")


# ------------------------------------------------------------------------------------------ tests

def test_handshake():
    for extra, label in (("", "no Sec-WebSocket-Protocol"),
                         ("Sec-WebSocket-Protocol: chat, Shardcast.v1.json\r\n", "only unknown subprotocols")):
        status, _, body = upgrade("/ws", extra)
        check(f"handshake: /ws with {label} -> 400", status == 400, status)
        check(f"handshake: that 400's body names both subprotocols ({label})",
              "shardcast.v1.json" in body and "shardcast.v1.cbor" in body, body)
    try:
        ws_connect(f"ws://{ADDR}/ws")
        got = "upgraded"
    except InvalidStatus as e:
        got = (e.response.status_code, bytes(e.response.body or b"").decode("utf-8", "replace"))
    check("handshake: websockets client without subprotocol gets InvalidStatus 400",
          isinstance(got, tuple) and got[0] == 400 and "shardcast.v1.cbor" in got[1], got)

    ws = ws_connect(f"ws://{ADDR}/ws", subprotocols=["chat", SUBPROTOCOL[CBOR], SUBPROTOCOL[JSON]])
    check("handshake: the client's first known offer is selected", ws.subprotocol == SUBPROTOCOL[CBOR],
          ws.subprotocol)
    first = ws.recv(TIMEOUT)
    check("handshake: cbor welcome is a binary CBOR map",
          isinstance(first, bytes) and cbor_decode(first).get("op") == "welcome", first)

    proto = f"Sec-WebSocket-Protocol: {SUBPROTOCOL[JSON]}\r\n"
    for label, query in (("truncated JSON", urllib.parse.quote('{"name":', safe="")),
                         ("not JSON", "hello"),
                         ("1100 bytes of JSON", urllib.parse.quote(json.dumps({"x": "a" * 1100}), safe=""))):
        status, _, body = upgrade(f"/ws?info={query}", proto)
        check(f"handshake: info {label} -> 400", status == 400, (status, body[:200]))

    info = {"x": "a" * (1000 - len('{"x":""}'))}  # 1000 bytes of JSON: under the limit either way
    c = Client(JSON, info)
    check("handshake: 1000-byte info accepted", c.welcome.get("op") == "welcome", c.welcome)
    r = room("hs")
    c.send({"op": "subscribe", "room": r})
    c.recv()
    pres = c.request({"op": "presence", "room": r})
    check("handshake: info appears in presence", pres == {"op": "presence", "room": r,
                                                          "members": [{"conn": c.conn, "info": info}]}, pres)


def test_welcome_and_shards():
    cs = [Client(JSON if i % 2 else CBOR) for i in range(8)]
    conns = [c.conn for c in cs]
    check("welcome: exactly {op: welcome, conn} in both formats",
          all(c.welcome == {"op": "welcome", "conn": c.conn} for c in cs), [c.welcome for c in cs])
    check("welcome: conn ids are integers", all(is_int(x) for x in conns), conns)
    check("welcome: conn ids are unique", len(set(conns)) == len(conns), conns)
    if all(is_int(x) for x in conns):
        check("welcome: conn & 1023 is a shard index (0 or 1)", all(shard(x) in (0, 1) for x in conns), conns)
        check("welcome: 8 connections span both shards", {shard(x) for x in conns} == {0, 1}, conns)
    delays = [round(c.welcome_delay * 1000) for c in cs]
    check("welcome: sent right after the upgrade (each within 150 ms)", max(delays) < 150, f"delays in ms: {delays}")


def test_ops(fmt):
    p = f"{fmt} ops: "
    r = room(f"ops-{fmt}")
    info = {"name": f"ada-{fmt}", "n": 1}
    a = Client(fmt, info)
    b = open_on_shard(fmt, 1 - a.shard)
    check(p + "welcome", a.welcome == {"op": "welcome", "conn": a.conn} and is_int(a.conn), a.welcome)

    a.send({"op": "subscribe", "room": r, "presence": True})
    sub, join = a.recv_n(2)
    epoch = sub.get("epoch")
    check(p + "subscribed to a fresh room: seq 0, recovered false",
          sub == subscribed(r, 0, epoch, False) and sub["recovered"] is False and valid_epoch(epoch), sub)
    check(p + "own join follows subscribed", join == {"op": "join", "room": r, "conn": a.conn, "info": info}, join)
    s = b.request({"op": "subscribe", "room": r})
    check(p + "second subscriber (other shard) subscribed", s == subscribed(r, 0, epoch, False), s)
    f = a.recv()
    check(p + "join for a later subscriber, info null", f == {"op": "join", "room": r, "conn": b.conn, "info": None}, f)

    a.send({"op": "publish", "room": r, "data": {"text": "hi"}, "id": 7})
    got = a.recv_n(2)
    m1 = message(r, 1, a.conn, fmt, {"text": "hi"})
    check(p + "publish with id: publisher gets an ack and its own copy",
          sorted(f.get("op") for f in got) == ["ack", "message"], got)
    check(p + "ack echoes id with seq 1", by_op(got).get("ack") == {"op": "ack", "id": 7, "seq": 1}, got)
    check(p + "echo to the publisher", by_op(got).get("message") == m1, got)
    f = b.recv()
    check(p + "message reaches the subscriber on the other shard", f == m1, f)

    b.send({"op": "publish", "room": r, "data": 42})
    m2 = message(r, 2, b.conn, fmt, 42)
    f = a.recv()
    check(p + "publish without id reaches subscribers", f == m2, f)
    rest = b.drain(0.3)
    check(p + "publish without id: own copy and no ack", rest == [m2], rest)

    blob = bytes([0, 1, 2, 255])
    a.send(publish(fmt, r, blob, id="bin"))
    got = a.recv_n(2)
    m3 = message(r, 3, a.conn, fmt, blob)
    check(p + "binary publish acked", by_op(got).get("ack") == {"op": "ack", "id": "bin", "seq": 3}, got)
    f = b.recv()
    check(p + "binary data delivered (" + ("base64 + enc" if fmt == JSON else "byte string") + ")", f == m3, f)
    if fmt == CBOR:
        check(p + "binary data decodes as Python bytes", type(f.get("data")) is bytes, f)
    else:
        check(p + "enc is the last key", list(f)[-1:] == ["enc"], f)

    a.send({"op": "publish", "room": r, "data": "plain", "id": [1, "x"]})
    got = a.recv_n(2)
    check(p + "any id is echoed (an array)", by_op(got).get("ack") == {"op": "ack", "id": [1, "x"], "seq": 4}, got)
    b.recv()

    pres = a.request({"op": "presence", "room": r})
    want = [{"conn": a.conn, "info": info}, {"conn": b.conn, "info": None}]
    check(p + "presence lists both subscribers (both shards)", isinstance(pres, dict) and
          set(pres) == {"op", "room", "members"} and pres["op"] == "presence" and pres["room"] == r and
          members(pres["members"]) == members(want), pres)

    entries = [entry(1, a.conn, fmt, {"text": "hi"}), entry(2, b.conn, fmt, 42), entry(3, a.conn, fmt, blob),
               entry(4, a.conn, fmt, "plain")]
    h = a.request({"op": "history", "room": r})
    check(p + "history without options", h == {"op": "history", "room": r, "epoch": epoch,
                                               "messages": entries, "complete": True}, h)
    h = b.request({"op": "history", "room": r, "since": 1, "limit": 2})
    check(p + "history since 1 limit 2", h == {"op": "history", "room": r, "epoch": epoch,
                                               "messages": entries[1:3], "complete": True}, h)
    h = b.request({"op": "history", "room": r, "since": 4})
    check(p + "history since the last seq is empty and complete",
          h == {"op": "history", "room": r, "epoch": epoch, "messages": [], "complete": True}, h)

    f = b.request({"op": "unsubscribe", "room": r})
    check(p + "unsubscribe answered by unsubscribed", f == {"op": "unsubscribed", "room": r}, f)
    f = a.recv()
    check(p + "leave after unsubscribe", f == {"op": "leave", "room": r, "conn": b.conn, "info": None}, f)
    a.send({"op": "publish", "room": r, "data": "after", "id": 9})
    got = a.recv_n(2)
    check(p + "publish after the other left", by_op(got).get("ack") == {"op": "ack", "id": 9, "seq": 5}, got)
    f = b.drain(0.4)
    check(p + "no message after unsubscribed", f == [], f)

    f = b.request({"op": "publish", "room": r, "data": "outside", "id": "o"})
    check(p + "publish without being subscribed is acked", f == {"op": "ack", "id": "o", "seq": 6}, f)
    f = a.recv()
    check(p + "... and delivered", f == message(r, 6, b.conn, fmt, "outside"), f)

    f = b.request({"op": "unsubscribe", "room": r})
    check(p + "unsubscribe when not subscribed -> not_subscribed",
          f.get("op") == "error" and f.get("code") == "not_subscribed" and isinstance(f.get("reason"), str), f)
    f = a.request({"op": "subscribe", "room": r, "id": "dup"})
    check(p + "second subscribe -> already_subscribed",
          f.get("op") == "error" and f.get("code") == "already_subscribed" and isinstance(f.get("reason"), str), f)
    check(p + "already_subscribed echoes the request's id (docs: any rejected frame with an id)",
          f.get("id") == "dup", f)
    f = a.drain(0.3)
    check(p + "no extra frames after the refused subscribe", f == [], f)


def test_cross_format():
    p = "cross-format: "
    r = room("xfmt")
    j = Client(JSON)
    c = open_on_shard(CBOR, 1 - j.shard)
    epoch = j.request({"op": "subscribe", "room": r}).get("epoch")
    c.request({"op": "subscribe", "room": r})
    tag = cbor2.CBORTag(40000, "tagged")
    cases = [  # (label, sender, publish data, data JSON subscribers see, data CBOR subscribers see)
        ("json base64 -> cbor bytes", j, {"data": b64(b"\x00\x01\x02"), "enc": "base64"},
         {"data": "AAEC", "enc": "base64"}, {"data": b"\x00\x01\x02"}),
        ("cbor bytes -> json base64", c, {"data": b"\x00\xff"}, {"data": "AP8=", "enc": "base64"},
         {"data": b"\x00\xff"}),
        ("nested bytes: base64 without enc in json", c, {"data": {"k": b"\x01", "n": [1, 2.5, None, True]}},
         {"data": {"k": "AQ==", "n": [1, 2.5, None, True]}}, {"data": {"k": b"\x01", "n": [1, 2.5, None, True]}}),
        ("cbor tag kept for cbor, dropped for json", c, {"data": tag}, {"data": "tagged"}, {"data": tag}),
        ("json unicode text", j, {"data": "é ✓"}, {"data": "é ✓"}, {"data": "é ✓"}),
        ("json u64 max", j, {"data": 2**64 - 1}, {"data": 2**64 - 1}, {"data": 2**64 - 1}),
        ("json null is a message", j, {"data": None}, {"data": None}, {"data": None}),
    ]
    hist_j, hist_c = [], []
    for seq, (label, sender, data, jd, cd) in enumerate(cases, 1):
        sender.send({"op": "publish", "room": r, **data})
        fj, fc = j.recv(), c.recv()
        check(p + label + " (json subscriber)", fj == {"op": "message", "room": r, "seq": seq,
                                                        "from": sender.conn, **jd}, fj)
        check(p + label + " (cbor subscriber)", fc == {"op": "message", "room": r, "seq": seq,
                                                        "from": sender.conn, **cd}, fc)
        hist_j.append({"seq": seq, "from": sender.conn, **jd})
        hist_c.append({"seq": seq, "from": sender.conn, **cd})
    h = j.request({"op": "history", "room": r})
    check(p + "json history", h == {"op": "history", "room": r, "epoch": epoch, "messages": hist_j,
                                     "complete": True}, h)
    h = c.request({"op": "history", "room": r})
    check(p + "cbor history", h == {"op": "history", "room": r, "epoch": epoch, "messages": hist_c,
                                     "complete": True}, h)
    j.send({"op": "publish", "room": r, "data": "x", "id": {"k": [1]}})
    f = by_op(j.recv_n(2)).get("ack")
    check(p + "json map id echoed in ack", f == {"op": "ack", "id": {"k": [1]}, "seq": len(cases) + 1}, f)
    c.recv()
    c.send({"op": "publish", "room": r, "data": "y", "id": b"\x07"})
    f = by_op(c.recv_n(2)).get("ack")
    check(p + "cbor byte-string id echoed as bytes", f == {"op": "ack", "id": b"\x07", "seq": len(cases) + 2}, f)
    f = j.recv()
    check(p + "... and the json subscriber got that message", f == message(r, len(cases) + 2, c.conn, JSON, "y"), f)


def test_resume(fmt, n=1000, drop_after=300):
    p = f"{fmt} resume: "
    r = room(f"resume-{fmt}")

    def payload(i):
        return {"i": i, "b": bytes([i % 256]) * 3} if fmt == CBOR else {"i": i, "s": f"m{i}"}

    sub = Client(fmt)
    s = sub.request({"op": "subscribe", "room": r})
    epoch = s.get("epoch")
    check(p + "fresh subscribe", s == subscribed(r, 0, epoch, False) and valid_epoch(epoch), s)
    pub = Client(fmt)
    acks, pub_other = {}, []

    def publisher():
        try:
            for i in range(1, n + 1):
                pub.send({"op": "publish", "room": r, "data": payload(i), "id": i})
                time.sleep(0.002)
            while len(acks) < n:
                f = pub.recv()
                if f.get("op") == "ack":
                    acks[f.get("id")] = f.get("seq")
                else:
                    pub_other.append(f)
        except Exception as e:  # noqa: BLE001 - reported by the checks below
            pub_other.append(repr(e))

    t = threading.Thread(target=publisher, daemon=True)
    t.start()
    got, other = [], []
    try:
        while len(got) < drop_after:
            f = sub.recv()
            (got if f.get("op") == "message" else other).append(f)
    finally:
        drop(sub, rst=fmt == JSON)
    last = got[-1]["seq"] if got else 0

    sub2 = Client(fmt)
    s = sub2.request({"op": "subscribe", "room": r, "since": last, "epoch": epoch})
    check(p + f"resubscribe since={last} with the epoch: recovered true",
          isinstance(s, dict) and s.get("op") == "subscribed" and s.get("room") == r and s.get("recovered") is True
          and s.get("epoch") == epoch and is_int(s.get("seq")) and last <= s["seq"] <= n, s)
    try:
        while not got or got[-1].get("seq", 0) < n:
            f = sub2.recv()
            (got if f.get("op") == "message" else other).append(f)
    except TimeoutError:
        pass
    t.join(30)
    seqs = [f.get("seq") for f in got]
    check(p + f"every seq 1..{n} exactly once, in order, across the drop", seqs == list(range(1, n + 1)),
          seq_summary(seqs))
    bad = [f for f in got if f != message(r, f.get("seq"), pub.conn, fmt, payload(f.get("seq")))]
    check(p + "every message intact (room, from, data)", not bad, bad[:2])
    check(p + "nothing but messages after subscribed", not other, other[:3])
    check(p + f"publisher got {n} acks, seq == id", not pub_other and acks == {i: i for i in range(1, n + 1)},
          (len(acks), pub_other[:3], [(k, v) for k, v in acks.items() if k != v][:3]))


def sub_cycle(c, r, expect_seq, room_epoch, recovered, replay, label, p, payloads, frm, **kw):
    """subscribe with kw, check subscribed + replayed messages (and nothing else), unsubscribe."""
    fmt = c.fmt
    s = c.request({"op": "subscribe", "room": r, **kw})
    check(p + f"{label}: recovered {str(recovered).lower()}", s == subscribed(r, expect_seq, room_epoch, recovered)
          and s.get("recovered") is recovered, s)
    frames = c.recv_n(len(replay)) if replay else []
    frames += c.drain(0.4)
    want = [message(r, q, frm, fmt, payloads(q)) for q in replay]
    seqs = [f.get("seq") for f in frames]
    check(p + f"{label}: " + (f"replays {replay[0]}..{replay[-1]}" if replay else "no replay"),
          frames == want, seq_summary(seqs) if len(frames) > 10 else frames)
    c.request({"op": "unsubscribe", "room": r})


def test_recovery_rules(fmt):
    p = f"{fmt} recovery: "
    r = room(f"rules-{fmt}")
    pub = Client(fmt)
    for i in range(1, 21):
        pub.send({"op": "publish", "room": r, "data": f"m{i}", **({"id": "last"} if i == 20 else {})})
    f = pub.recv()
    check(p + "20 messages published", f == {"op": "ack", "id": "last", "seq": 20}, f)
    c = Client(fmt)
    epoch = c.request({"op": "history", "room": r, "limit": 0}).get("epoch")

    def payloads(q):
        return f"m{q}"

    def cycle(label, recovered, replay, **kw):
        sub_cycle(c, r, 20, epoch, recovered, replay, label, p, payloads, pub.conn, **kw)

    cycle("fresh subscription (no since)", False, [])
    cycle("wrong epoch", False, [], since=10, epoch=epoch + 1)
    cycle("since without epoch", False, [], since=10)
    cycle("since beyond the last seq", False, [], since=25, epoch=epoch)
    cycle("since == last seq", True, [], since=20, epoch=epoch)
    cycle("since 15", True, list(range(16, 21)), since=15, epoch=epoch)
    cycle("since 0", True, list(range(1, 21)), since=0, epoch=epoch)

    s = c.request({"op": "subscribe", "room": r, "since": 10, "epoch": epoch + 1})
    check(p + "after recovered false ...", s.get("recovered") is False, s)
    pub.send({"op": "publish", "room": r, "data": "m21", "id": "live"})
    f = c.recv()
    check(p + "... live messages continue at seq + 1", f == message(r, 21, pub.conn, fmt, "m21"), f)


def test_too_old(fmt):
    p = f"{fmt} too old: "
    r = room(f"old-{fmt}")
    n = HISTORY_SIZE + 100
    pub = Client(fmt)
    for i in range(1, n + 1):
        pub.send({"op": "publish", "room": r, "data": i, **({"id": "end"} if i == n else {})})
    f = pub.recv(15)
    check(p + f"{n} messages published", f == {"op": "ack", "id": "end", "seq": n}, f)
    c = Client(fmt)
    h = c.request({"op": "history", "room": r, "limit": 1})
    epoch = h.get("epoch")
    first = n - HISTORY_SIZE + 1  # oldest kept seq: 101
    check(p + "history: oldest kept message, complete false",
          h == {"op": "history", "room": r, "epoch": epoch, "messages": [entry(first, pub.conn, fmt, first)],
                "complete": False} and valid_epoch(epoch), h)

    def cycle(label, recovered, replay, **kw):
        sub_cycle(c, r, n, epoch, recovered, replay, label, p, lambda q: q, pub.conn, **kw)

    cycle("since=1, right epoch, messages no longer kept", False, [], since=1, epoch=epoch)
    cycle(f"since={first - 2} (boundary: {first - 1} is gone)", False, [], since=first - 2, epoch=epoch)
    cycle(f"since={first - 1} (boundary: all after it kept)", True, list(range(first, n + 1)),
          since=first - 1, epoch=epoch)

    h = c.request({"op": "history", "room": r, "limit": 5000})
    msgs = h.get("messages") if isinstance(h, dict) else None
    check(p + "history limit is capped at 1000",
          isinstance(msgs, list) and [m.get("seq") for m in msgs] == list(range(first, first + 1000)) and
          h.get("complete") is False, seq_summary([m.get("seq") for m in msgs]) if msgs else h)
    h = c.request({"op": "history", "room": r, "since": n - 10})
    check(p + "history since n-10: 10 messages, complete",
          h == {"op": "history", "room": r, "epoch": epoch, "complete": True,
                "messages": [entry(q, pub.conn, fmt, q) for q in range(n - 9, n + 1)]}, h)


CHILD = r"""
import json, sys, time
from websockets.sync.client import connect
addr, room, want = sys.argv[1], sys.argv[2], int(sys.argv[3])
url = f"ws://{addr}/ws?info=%7B%22name%22%3A%22frozen%22%7D"
ws, spare = None, []
for _ in range(40):
    c = connect(url, subprotocols=["shardcast.v1.json"], proxy=None, max_queue=None, legacy=True)
    conn = json.loads(c.recv(timeout=5))["conn"]
    if conn & 1023 == want:
        ws = c
        break
    spare.append(c)
for c in spare:
    c.close()
if ws is None:
    print("none", flush=True)
    sys.exit(1)
ws.send(json.dumps({"op": "subscribe", "room": room, "presence": True}))
print(conn, flush=True)
while True:  # stay active (one frame every 0.2 s) until frozen; frames received are buffered
    ws.send(json.dumps({"op": "presence", "room": room}))
    time.sleep(0.2)
"""


def test_presence(exit_stack):
    p = "presence: "
    r = room("pres")
    o = Client(JSON, {"name": "obs"})
    m = open_on_shard(CBOR, 1 - o.shard, {"name": "mem"})
    o.send({"op": "subscribe", "room": r, "presence": True})
    f = o.recv_n(2)
    check(p + "observer subscribed + own join",
          [x.get("op") for x in f] == ["subscribed", "join"] and f[1].get("conn") == o.conn, f)
    m.send({"op": "subscribe", "room": r, "presence": True})
    f = m.recv_n(2)
    check(p + "cbor member (other shard) subscribed + own join",
          f[0].get("op") == "subscribed" and f[1] == {"op": "join", "room": r, "conn": m.conn, "info": {"name": "mem"}},
          f)
    f = o.recv()
    check(p + "observer gets the cross-shard join with info", f == {"op": "join", "room": r, "conn": m.conn,
                                                                    "info": {"name": "mem"}}, f)
    f = m.drain(0.3)
    check(p + "no join for connections that subscribed earlier", f == [], f)

    x = ws_connect(f"ws://{ADDR}/ws/{r}")  # raw clients are members but not listed
    want = members([{"conn": o.conn, "info": {"name": "obs"}}, {"conn": m.conn, "info": {"name": "mem"}}])
    for who in (o, m):
        f = who.request({"op": "presence", "room": r})
        check(p + f"presence request ({who.fmt}) lists both shards, not the raw client",
              isinstance(f, dict) and f.get("op") == "presence" and members(f.get("members")) == want, f)
    status, body, raw = http("GET", f"/api/rooms/{r}/presence")
    check(p + "GET /api/rooms/{room}/presence", status == 200 and isinstance(body, dict) and
          body.get("room") == r and members(body.get("members")) == want, (status, raw[:300]))
    status, body, raw = http("GET", "/api/rooms")
    entries = [e for e in (body or {}).get("rooms", []) if isinstance(e, dict) and e.get("room") == r]
    check(p + "GET /api/rooms counts raw + envelope members (3)",
          status == 200 and entries == [{"room": r, "members": 3}], (status, entries or raw[:300]))
    f = o.drain(0.2)
    check(p + "raw client causes no join", f == [], f)

    n = open_on_shard(JSON, o.shard)
    n.request({"op": "subscribe", "room": r})
    jn = {"op": "join", "room": r, "conn": n.conn, "info": None}
    f1, f2 = o.recv(), m.recv()
    check(p + "join of a non-presence subscriber reaches both presence subscribers", f1 == jn and f2 == jn, (f1, f2))
    n.request({"op": "unsubscribe", "room": r})
    ln = {**jn, "op": "leave"}
    f1, f2 = o.drain(0.6), m.drain(0.6)
    check(p + "unsubscribe: exactly one leave (json observer)", f1 == [ln], f1)
    check(p + "unsubscribe: exactly one leave (cbor observer)", f2 == [ln], f2)

    m.close()
    f = o.drain(0.8)
    check(p + "normal close: exactly one leave", f == [{"op": "leave", "room": r, "conn": m.conn,
                                                        "info": {"name": "mem"}}], f)

    # Heartbeat prune: a child process subscribes with presence on the other shard, then freezes.
    err = tempfile.TemporaryFile()
    proc = subprocess.Popen([sys.executable, "-c", CHILD, ADDR, r, str(1 - o.shard)],
                            stdout=subprocess.PIPE, stderr=err, text=True)
    exit_stack.append(proc)
    ready, _, _ = select.select([proc.stdout], [], [], 15)
    line = proc.stdout.readline().strip() if ready else ""
    if not check(p + "frozen-client child connected on the other shard", line.isdigit(),
                 (line, err.seek(0) or err.read()[-500:])):
        return
    cc = int(line)
    jc = {"op": "join", "room": r, "conn": cc, "info": {"name": "frozen"}}
    f = o.drain(1.0)
    check(p + "child's join arrives once", f == [jc], f)
    os.kill(proc.pid, signal.SIGSTOP)
    t0 = time.monotonic()
    early = o.drain(1.0)
    check(p + "no leave within 1 s of freezing", early == [], early)
    lv, skipped = o.until(lambda fr: fr.get("op") == "leave", timeout=6 - (time.monotonic() - t0))
    dt = time.monotonic() - t0
    check(p + f"frozen client pruned by the heartbeat: one leave within 6 s (after {dt:.1f} s)",
          lv == {**jc, "op": "leave"} and not skipped, (lv, skipped))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(5)
    f = o.drain(0.7)
    check(p + "no second leave when the frozen process dies", f == [], f)

    f = o.request({"op": "presence", "room": r})
    check(p + "presence afterwards: only the observer",
          f == {"op": "presence", "room": r, "members": [{"conn": o.conn, "info": {"name": "obs"}}]}, f)
    status, body, raw = http("GET", "/api/rooms")
    entries = [e for e in (body or {}).get("rooms", []) if isinstance(e, dict) and e.get("room") == r]
    check(p + "GET /api/rooms afterwards: observer + raw client",
          entries == [{"room": r, "members": 2}], (status, entries or raw[:300]))
    close_quietly(x)


def test_api_and_interop():
    p = "api/interop: "
    r = room("interop")
    for label, key in (("no Authorization", None), ("a wrong key", "nope")):
        status, _, raw = http("POST", "/api/publish", {"room": r, "data": 1}, key=key)
        check(p + f"POST /api/publish with {label} -> 401", status == 401, (status, raw[:200]))
    status, _, raw = http("GET", "/api/rooms", key=None)
    check(p + "GET /api/rooms without key -> 401 (docs: every request needs the key)", status == 401,
          (status, raw[:200]))
    for label, raw_body in (("not JSON", b"{nope"), ("missing room", b'{"data":1}'),
                            ("bad room name", b'{"room":"bad room","data":1}')):
        status, _, raw = http("POST", "/api/publish", raw=raw_body)
        check(p + f"POST /api/publish {label} -> 400", status == 400, (status, raw[:200]))

    x = ws_connect(f"ws://{ADDR}/ws/{r}")
    j = Client(JSON)
    c = open_on_shard(CBOR, 1 - j.shard)
    for who in (j, c):
        s = who.request({"op": "subscribe", "room": r})
        check(p + f"{who.fmt} subscribed, room empty (refused API calls published nothing)",
              isinstance(s, dict) and s.get("seq") == 0, s)
    seq = 0

    def envelope_got(label, frm, value):
        nonlocal seq
        seq += 1
        fj, fc = j.recv(), c.recv()
        check(p + f"{label} reaches json subscriber", fj == message(r, seq, frm, JSON, value), fj)
        check(p + f"{label} reaches cbor subscriber", fc == message(r, seq, frm, CBOR, value), fc)

    def raw_got(label, want, as_json=False):
        got = x.recv(TIMEOUT)
        if as_json:
            ok = isinstance(got, str) and json.loads(got) == want
        else:
            ok = type(got) is type(want) and got == want
        check(p + f"{label} reaches raw client as {'JSON text' if as_json else type(want).__name__}", ok, got)

    x.send("hello from raw")
    envelope_got("raw text", None, "hello from raw")
    raw_got("raw text (echo)", "hello from raw")
    x.send(b"\x00\x01\x02")
    envelope_got("raw binary", None, b"\x00\x01\x02")
    raw_got("raw binary (echo)", b"\x00\x01\x02")

    j.send({"op": "publish", "room": r, "data": "text from json"})
    envelope_got("json text publish", j.conn, "text from json")
    raw_got("json text publish", "text from json")
    c.send({"op": "publish", "room": r, "data": b"\xde\xad"})
    envelope_got("cbor bytes publish", c.conn, b"\xde\xad")
    raw_got("cbor bytes publish", b"\xde\xad")
    j.send({"op": "publish", "room": r, "data": b64(b"\xbe\xef"), "enc": "base64"})
    envelope_got("json base64 publish", j.conn, b"\xbe\xef")
    raw_got("json base64 publish", b"\xbe\xef")
    obj = {"a": 1, "b": [True, None, 2.5], "s": "é"}
    j.send({"op": "publish", "room": r, "data": obj})
    envelope_got("json object publish", j.conn, obj)
    raw_got("json object publish", obj, as_json=True)
    c.send({"op": "publish", "room": r, "data": 42})
    envelope_got("cbor integer publish", c.conn, 42)
    raw_got("cbor integer publish", 42, as_json=True)
    j.send({"op": "publish", "room": r, "data": None})
    envelope_got("json null publish", j.conn, None)
    raw_got("json null publish", None, as_json=True)

    status, body, raw = http("POST", "/api/publish", {"room": r, "data": {"api": True}})
    check(p + "POST /api/publish -> 200 {room, seq}", status == 200 and body == {"room": r, "seq": seq + 1},
          (status, raw[:200]))
    envelope_got("API object publish (from null)", None, {"api": True})
    raw_got("API object publish", {"api": True}, as_json=True)
    status, body, raw = http("POST", "/api/publish", {"room": r, "data": "api text"})
    check(p + "POST /api/publish text -> 200", status == 200 and body == {"room": r, "seq": seq + 1},
          (status, raw[:200]))
    envelope_got("API text publish", None, "api text")
    raw_got("API text publish", "api text")

    h = j.request({"op": "history", "room": r})
    hs = [(e.get("seq"), e.get("from")) for e in (h.get("messages") or [])] if isinstance(h, dict) else h
    check(p + "history numbers raw, envelope and API messages in one sequence",
          hs == [(1, None), (2, None), (3, j.conn), (4, c.conn), (5, j.conn), (6, j.conn), (7, c.conn),
                 (8, j.conn), (9, None), (10, None)], hs)
    status, body, raw = http("GET", "/api/rooms")
    entries = [e for e in (body or {}).get("rooms", []) if isinstance(e, dict) and e.get("room") == r]
    check(p + "GET /api/rooms: 3 members (1 raw + 2 envelope)", status == 200 and
          entries == [{"room": r, "members": 3}], (status, entries or raw[:300]))
    try:
        extra = x.recv(0.3)
    except TimeoutError:
        extra = None
    check(p + "raw client got nothing else (no envelope frames)", extra is None, extra)


def error_ok(f, code, id_):
    return (isinstance(f, dict) and f.get("op") == "error" and f.get("code") == code and
            isinstance(f.get("reason"), str) and f["reason"] != "" and set(f) <= {"op", "code", "reason", "id"} and
            (("id" not in f) if id_ is None else f.get("id") == id_))


def test_errors(fmt):
    """Every decoder error code; never more than 4 bad frames in a row (max_bad_frames is 5)."""
    p = f"{fmt} errors: "
    r = room(f"err-{fmt}")
    c = Client(fmt)

    def exchange(send):
        nonlocal c
        try:
            send()
            return c.recv()
        except ConnectionClosed as e:
            c = Client(fmt)  # go on with a new connection so the next checks still say something
            return f"connection closed: {e!r}"
        except Exception as e:  # noqa: BLE001
            return repr(e)

    def bad(label, frame, code, id_=None):
        f = exchange(lambda: c.send(frame) if isinstance(frame, dict) else c.send_raw(frame))
        check(p + f"{label} -> {code}" + (f" with id {id_!r}" if id_ is not None else ""), error_ok(f, code, id_), f)

    def good(label, frame=None, raw=None):
        f = exchange(lambda: c.send_raw(raw) if raw is not None else
                     c.send(frame or {"op": "history", "room": r, "limit": 0}))
        check(p + f"connection still open, good frame answered ({label})",
              isinstance(f, dict) and f.get("op") == "history", f)

    if fmt == JSON:
        bad("not JSON", "not json", "bad_frame")
        bad("an array, not a map", "[1,2]", "bad_frame")
        bad("garbage after the object", '{"op":"history","room":"a"} x', "bad_frame")
        bad("no op", {"room": r}, "missing_field")
        good("after 4 bad frames")
        bad("subscribe without room", {"op": "subscribe"}, "missing_field")
        bad("publish without data", {"op": "publish", "room": r}, "missing_field")
        bad("op not text", {"op": 1, "room": r}, "bad_field")
        bad("since as a string", {"op": "subscribe", "room": r, "since": "5"}, "bad_field")
        good("unknown keys are ignored", {"op": "history", "room": r, "limit": 0, "x-app": [1, {"y": 2}]})
        bad("since as a float", '{"op":"subscribe","room":"%s","since":5.0}' % r, "bad_field")
        bad("presence not a boolean", {"op": "subscribe", "room": r, "presence": "yes"}, "bad_field")
        bad("negative limit", {"op": "history", "room": r, "limit": -1}, "bad_field")
        bad("unknown enc", {"op": "publish", "room": r, "data": "AAEC", "enc": "hex"}, "bad_field")
        good("null optional fields are absent", {"op": "history", "room": r, "since": None, "limit": None})
        bad("invalid base64", {"op": "publish", "room": r, "data": "@@@", "enc": "base64"}, "bad_field")
        bad("duplicate key", '{"op":"history","room":"a","room":"b"}', "bad_field")
        bad("unknown op", {"op": "shout", "room": r, "id": "e1"}, "unknown_op", "e1")
        bad("op in upper case", {"op": "Subscribe", "room": r}, "unknown_op")
        good("after 4 more")
        bad("room with a space", {"op": "subscribe", "room": "bad room"}, "bad_room")
        bad("empty room", {"op": "subscribe", "room": ""}, "bad_room")
        bad("129-byte room", {"op": "subscribe", "room": "x" * 129}, "bad_room")
        bad("publish to a bad room", {"op": "publish", "room": "a/b", "data": 1, "id": 7}, "bad_room", 7)
        good("after bad rooms")
        s = c.request({"op": "subscribe", "room": "Az09_.:-" + "x" * 120})
        check(p + "a 128-byte room of every allowed character class is fine",
              isinstance(s, dict) and s.get("op") == "subscribed", s)
    else:
        op_history = cbor2.dumps("op") + cbor2.dumps("history") + cbor2.dumps("room") + cbor2.dumps(r)
        bad("not well-formed CBOR", b"\xff", "bad_frame")
        bad("bytes after the item", cbor2.dumps({"op": "history", "room": r}) + b"\x00", "bad_frame")
        bad("an array, not a map", cbor2.dumps([1, 2]), "bad_frame")
        bad("truncated map", b"\xa1", "bad_frame")
        good("indefinite-length map", raw=b"\xbf" + op_history + b"\xff")
        bad("no op", {"room": r}, "missing_field")
        bad("history without room", {"op": "history"}, "missing_field")
        bad("publish without data", {"op": "publish", "room": r}, "missing_field")
        bad("op as a byte string", {"op": b"subscribe", "room": r}, "bad_field")
        good("non-text keys are ignored", {"op": "history", "room": r, "limit": 0, 7: "x", b"k": 1})
        bad("negative since", {"op": "subscribe", "room": r, "since": -1}, "bad_field")
        bad("float epoch", {"op": "subscribe", "room": r, "epoch": 1.5}, "bad_field")
        bad("enc with byte-string data", {"op": "publish", "room": r, "data": b"x", "enc": "base64"}, "bad_field")
        bad("duplicate key", b"\xa3" + op_history + cbor2.dumps("room") + cbor2.dumps("b"), "bad_field")
        good("after 4 more")
        bad("limit 2^32", {"op": "history", "room": r, "limit": 2**32}, "bad_field")
        bad("unknown op, byte-string id", {"op": "shout", "room": r, "id": b"\x01"}, "unknown_op", b"\x01")
        bad("room with a space", {"op": "presence", "room": "no spaces"}, "bad_room")
        bad("non-ASCII room", {"op": "subscribe", "room": "é", "id": 3}, "bad_room", 3)
        good("after bad rooms")


def test_bad_frame_limit(fmt):
    p = f"{fmt} limits: "
    c = Client(fmt)
    junk = "not json" if fmt == JSON else b"\xff"
    good = {"op": "history", "room": room("lim"), "limit": 0}
    answers = []
    for _ in range(4):
        c.send_raw(junk)
        answers.append(c.recv())
    answers.append(c.request(good))
    for _ in range(4):
        c.send_raw(junk)
        answers.append(c.recv())
    check(p + "4 bad, 1 good, 4 bad: every bad frame answered by an error, connection open",
          all(error_ok(f, "bad_frame", None) for f in answers[:4] + answers[5:]) and
          answers[4].get("op") == "history", answers)
    c.send_raw(junk)
    code, frames = await_close(c)
    check(p + "5th consecutive bad frame closes with 1008", code == 1008, code)
    check(p + "... instead of an error frame", frames == [], frames)


def test_oversize(fmt):
    p = f"{fmt} limits: "
    r = room("big")
    c = Client(fmt, compression=None)
    half = "y" * (512 * 1024) if fmt == JSON else bytes(512 * 1024)
    f = c.request({"op": "publish", "room": r, "data": half, "id": "half"})
    check(p + "512 KiB publish acked", f == {"op": "ack", "id": "half", "seq": 1}, f)
    big = "x" * (1 << 20) if fmt == JSON else bytes(1 << 20)
    frame = {"op": "publish", "room": r, "data": big, "id": "big"}
    # Send from a thread: a daemon that stops reading must not hang the suite.
    threading.Thread(target=lambda: _try(c.send, frame), daemon=True).start()
    code, frames = await_close(c)
    check(p + "message over max_message_bytes closes with 1009", code == 1009, (code, frames[:2]))


def _try(fn, *args):
    try:
        fn(*args)
    except Exception:  # noqa: BLE001
        pass


# ------------------------------------------------------------------------------------------- main

def main():
    children = []
    tests = [(test_handshake,), (test_welcome_and_shards,),
             (test_ops, JSON), (test_ops, CBOR), (test_cross_format,),
             (test_resume, JSON), (test_resume, CBOR),
             (test_recovery_rules, JSON), (test_recovery_rules, CBOR),
             (test_too_old, JSON), (test_too_old, CBOR),
             (test_presence, children), (test_api_and_interop,),
             (test_errors, JSON), (test_errors, CBOR),
             (test_bad_frame_limit, JSON), (test_bad_frame_limit, CBOR),
             (test_oversize, JSON), (test_oversize, CBOR)]
    start = time.monotonic()
    for fn, *args in tests:
        name = fn.__name__ + (f"[{args[0]}]" if args and isinstance(args[0], str) else "")
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001 - a daemon bug fails the test, the suite goes on
            where = [fr for fr in traceback.extract_tb(e.__traceback__) if fr.filename == __file__]
            line = f" (line {where[-1].lineno}: {where[-1].line})" if where else ""
            check(f"{name} ran to completion", False, f"{type(e).__name__}: {e}{line}")
        finally:
            close_all()
            for proc in children:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    check("every server frame is a map whose first key is op", not MISORDERED, MISORDERED[:3])
    print(f"took {time.monotonic() - start:.1f} s")
    print(f"envelope: {passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
