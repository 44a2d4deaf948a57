#!/usr/bin/env python3
"""Write the seed corpora under fuzz/corpus/<target>/seed-* from what the tests send.

Sources: the envelope frames of tests/python/test_envelope.py (encoded with cbor2, the
third-party CBOR encoder the tests use) and the client examples of docs/protocol.md; a real
handshake captured from the Python `websockets` client the tests use (with its
permessage-deflate offer) plus the request shapes of src/gate/tests.rs and the Autobahn offers;
frames as the Rust tests build them; permessage-deflate payloads made with Python's zlib (the
RFC 7692 examples, context takeover, a deflate bomb); configs from config.example.toml and
tests/python/*.toml. Re-running it rewrites every seed-* file and leaves other files (inputs the
fuzzer found and we kept) alone.

    python3 -m venv /tmp/v && /tmp/v/bin/pip install cbor2==6.2.1 websockets==17.4
    /tmp/v/bin/python fuzz/make_corpus.py
"""

import base64
import hashlib
import hmac
import json
import os
import re
import socket
import struct
import threading
import zlib
from pathlib import Path

import cbor2
from websockets.sync.client import connect

FUZZ = Path(__file__).resolve().parent
REPO = FUZZ.parent
CORPUS = FUZZ / "corpus"
SECRET = b"shardcast-fuzz-secret"  # fuzz/src/http.rs SECRET
FAR = 4102444800  # 2100-01-01: tokens in the corpus do not expire


def write(target, name, data):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    (d / f"seed-{name}").write_bytes(data)


def clear_seeds():
    for d in CORPUS.glob("*"):
        for f in d.glob("seed-*"):
            f.unlink()


# ---- frames ------------------------------------------------------------------------------------

MASK = b"\x37\xfa\x21\x3d"


def frame(opcode, payload=b"", fin=True, rsv1=False, mask=MASK, long_len=False):
    b0 = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    n = len(payload)
    m = 0x80 if mask is not None else 0
    if n < 126 and not long_len:
        head = bytes([b0, m | n])
    elif n < 65536 and not long_len:
        head = bytes([b0, m | 126]) + struct.pack(">H", n)
    else:
        head = bytes([b0, m | 127]) + struct.pack(">Q", n)
    if mask is None:
        return head + payload
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def deflate_msg(data, wbits=15, comp=None):
    c = comp or zlib.compressobj(1, zlib.DEFLATED, -wbits)
    out = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


def frames():
    t = "frame_decoder"
    big = 0x1F  # RSV1 allowed, 1 MiB frames and messages
    plain = 0x1E  # RSV1 refused
    small = 0x00  # 125-byte frames and messages
    write(t, "text", bytes([big, 0]) + frame(1, b"Hello"))
    write(t, "binary", bytes([plain, 1]) + frame(2, bytes(range(256))))
    write(t, "empty-text", bytes([big, 2]) + frame(1, b""))
    write(t, "fragmented-with-ping", bytes([big, 3]) + frame(1, b"Hel", fin=False)
          + frame(9, b"ping") + frame(0, b"lo", fin=False) + frame(0, b"!"))
    write(t, "utf8-split", bytes([big, 4]) + frame(1, "h\u00e9".encode()[:2], fin=False)
          + frame(0, "h\u00e9".encode()[2:]))
    write(t, "invalid-utf8", bytes([big, 5]) + frame(1, b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80"))
    write(t, "ping-pong", bytes([big, 6]) + frame(9, b"x" * 125) + frame(10, b"pong"))
    write(t, "close-1000", bytes([big, 7]) + frame(8, struct.pack(">H", 1000) + b"bye"))
    write(t, "close-empty", bytes([big, 8]) + frame(8))
    write(t, "close-1-byte", bytes([big, 9]) + frame(8, b"\x03"))
    write(t, "close-1005", bytes([big, 10]) + frame(8, struct.pack(">H", 1005)))
    write(t, "len-126", bytes([big, 11]) + frame(2, b"\x5a" * 300))
    write(t, "len-127", bytes([big, 12]) + frame(2, b"\xa5" * 70000))
    write(t, "len-127-short", bytes([big, 13]) + frame(1, b"ok", long_len=True))
    write(t, "len-msb", bytes([big, 14]) + b"\x82\xff" + b"\x80" + b"\x00" * 7 + MASK)
    write(t, "too-big", bytes([small, 15]) + frame(2, b"z" * 126))
    write(t, "fragments-over-message", bytes([small, 16]) + frame(2, b"a" * 100, fin=False)
          + frame(0, b"b" * 100))
    write(t, "unmasked", bytes([big, 17]) + frame(1, b"hi", mask=None))
    write(t, "rsv2", bytes([big, 18]) + bytes([0xA1, 0x80]) + MASK)
    write(t, "opcode-3", bytes([big, 19]) + frame(3, b"x"))
    write(t, "control-fragmented", bytes([big, 20]) + frame(9, b"p", fin=False))
    write(t, "continuation-first", bytes([big, 21]) + frame(0, b"x"))
    write(t, "text-during-fragment", bytes([big, 22]) + frame(1, b"a", fin=False) + frame(1, b"b"))
    write(t, "compressed", bytes([big, 23]) + frame(1, deflate_msg(b"Hello"), rsv1=True))
    write(t, "compressed-refused", bytes([plain, 24]) + frame(1, deflate_msg(b"Hello"), rsv1=True))
    write(t, "compressed-fragmented", bytes([big, 25]) + frame(1, b"\xf2\x48\xcd", fin=False, rsv1=True)
          + frame(0, b"\xc9\xc9\x07\x00"))
    write(t, "rsv1-continuation", bytes([big, 26]) + frame(1, b"a", fin=False, rsv1=True)
          + frame(0, b"b", rsv1=True))
    stream = b"".join(frame(1, f"msg {i}".encode()) for i in range(20)) + frame(8, b"\x03\xe8")
    write(t, "many-then-close", bytes([big, 27]) + stream)
    write(t, "envelope-json", bytes([big, 28]) + frame(1, b'{"op":"subscribe","room":"chat:42"}'))


# ---- HTTP ---------------------------------------------------------------------------------------

KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def capture_websockets_handshake(path, **kw):
    """The request head the Python websockets client sends (the server never answers)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    got = {}

    def serve():
        c, _ = srv.accept()
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = c.recv(4096)
            if not chunk:
                break
            buf += chunk
        got["head"] = buf
        c.close()

    th = threading.Thread(target=serve)
    th.start()
    try:
        connect(f"ws://127.0.0.1:{srv.getsockname()[1]}{path}", open_timeout=2, **kw)
    except Exception:  # noqa: BLE001 (no answer: expected)
        pass
    th.join()
    srv.close()
    head = got["head"]
    # Make the capture stable: a fixed key and port.
    head = re.sub(rb"Sec-WebSocket-Key: [^\r]*", b"Sec-WebSocket-Key: " + KEY.encode(), head)
    head = re.sub(rb"Host: 127\.0\.0\.1:\d+", b"Host: 127.0.0.1:8080", head)
    return head


def upgrade(target, extra="", method="GET", version="HTTP/1.1"):
    return (f"{method} {target} {version}\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n")


def heads():
    """(name, head bytes) shared by the handshake and gate corpora."""
    ws_raw = capture_websockets_handshake("/ws/chat:42")
    ws_env = capture_websockets_handshake("/ws?info=%7B%22name%22%3A%22ada%22%7D",
                                          subprotocols=["shardcast.v1.cbor", "shardcast.v1.json"])
    out = [
        ("websockets-raw", ws_raw),
        ("websockets-envelope", ws_env),
        ("raw-room", upgrade("/ws/chat:42")),
        ("envelope-json", upgrade("/ws", "Sec-WebSocket-Protocol: shardcast.v1.json\r\n")),
        ("envelope-info", upgrade("/ws?x=1&info=%7B%22n%22%3A1%7D",
                                  "Sec-WebSocket-Protocol: chat, shardcast.v1.cbor\r\n")),
        ("envelope-no-subprotocol", upgrade("/ws")),
        ("bad-room", upgrade("/ws/bad%20room")),
        ("deflate-autobahn", upgrade("/ws/r", "Sec-WebSocket-Extensions: permessage-deflate; "
                                     "server_max_window_bits=8; client_max_window_bits\r\n")),
        ("deflate-quoted", upgrade("/ws/r", "Sec-WebSocket-Extensions: permessage-deflate; "
                                   "client_max_window_bits=\"10\"; server_no_context_takeover\r\n")),
        ("deflate-several", upgrade("/ws/r", "Sec-WebSocket-Extensions: x-webkit-deflate-frame, "
                                    "permessage-deflate; server_max_window_bits=16, permessage-deflate\r\n"
                                    "Sec-WebSocket-Extensions: permessage-deflate; "
                                    "client_no_context_takeover; server_max_window_bits=09\r\n")),
        ("browser", upgrade("/ws/chat:42", "Origin: https://app.shardcast.test\r\n"
                            "Cookie: theme=dark; sc_token=abc.def.ghi\r\nUser-Agent: Mozilla/5.0\r\n"
                            "Pragma: no-cache\r\nSec-WebSocket-Extensions: permessage-deflate; "
                            "client_max_window_bits\r\n")),
        ("version-8", upgrade("/ws/r").replace("Version: 13", "Version: 8")),
        ("no-key", upgrade("/ws/r").replace(f"Sec-WebSocket-Key: {KEY}\r\n", "")),
        ("short-key", upgrade("/ws/r").replace(KEY, "c2hvcnQ=")),
        ("http10", upgrade("/ws/r", version="HTTP/1.0")),
        ("post-upgrade", upgrade("/ws/r", method="POST")),
        ("lowercase", upgrade("/ws/r").lower().replace("get /ws/r http/1.1", "GET /ws/r HTTP/1.1")),
        ("healthz", "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("status", "HEAD / HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("not-found", "GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("delete", "DELETE /healthz HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("api-publish", "POST /api/rooms/chat:42/publish HTTP/1.1\r\nHost: x\r\n"
                        "Authorization: Bearer test-key\r\nContent-Length: 2\r\n\r\nhi"),
        ("content-length-twice", "POST /api/x HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
        ("bare-lf", "GET /ws/r HTTP/1.1\nHost: x\nUpgrade: websocket\nConnection: keep-alive, Upgrade\n"
                    f"Sec-WebSocket-Key: {KEY}\nSec-WebSocket-Version: 13\n\n"),
        ("then-a-frame", upgrade("/ws/r").encode() + frame(1, b"early")),
        ("non-utf8-header", upgrade("/ws/r").encode().replace(b"Host: x", b"Host: \xff\xfe")),
    ]
    return [(n, h.encode() if isinstance(h, str) else h) for n, h in out]


def b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def handshakes():
    for name, head in heads():
        write("handshake", name, head)


def gates():
    t = "gate"
    for i, (name, head) in enumerate(heads()):
        write(t, f"p{i % 2}-{name}", bytes([i % 2]) + head)
    write(t, "draining", b"\x80" + upgrade("/ws/chat:42").encode())
    write(t, "at-capacity", b"\x40" + upgrade("/ws/chat:42").encode())
    write(t, "p1-origin-news", b"\x01" + upgrade("/ws/news:1", "Origin: https://app.shardcast.test\r\n").encode())
    write(t, "p1-origin-wildcard", b"\x01" + upgrade("/ws/closed:1", "Origin: https://a.example.com\r\n").encode())
    write(t, "p1-no-origin", b"\x01" + upgrade("/ws/news:1").encode())

    def with_claims(policy, name, head, claims):
        write(t, name, bytes([policy]) + head.encode() + b"\x00" + json.dumps(claims).encode())

    grants = {"sub": "ada", "exp": FAR, "rooms": {"subscribe": ["chat:*", "user:{sub}"],
                                                  "publish": ["chat:{sub}"], "presence": []}}
    with_claims(2, "p2-bearer-room", upgrade("/ws/chat:42", "Authorization: Bearer @T\r\n"
                                             "Origin: https://app.shardcast.test\r\n"), grants)
    with_claims(2, "p2-bearer-forbidden", upgrade("/ws/news:1", "Authorization: bearer  @T \r\n"), grants)
    with_claims(2, "p2-cookie", upgrade("/ws/user:ada", "Cookie: a=b; sc_token=@T\r\n"
                                        "Origin: https://app.shardcast.test\r\n"), grants)
    with_claims(2, "p2-query-envelope", upgrade("/ws?token=@T&info=%7B%7D",
                                                "Sec-WebSocket-Protocol: shardcast.v1.json\r\n"),
                {"sub": "bob", "exp": FAR, "info": {"name": "bob"}, "api": True})
    with_claims(2, "p2-expired", upgrade("/ws/chat:1", "Authorization: Bearer @T\r\n"), {"sub": "a", "exp": 1})
    with_claims(2, "p2-no-sub", upgrade("/ws/chat:1", "Authorization: Bearer @T\r\n"), {"exp": FAR})
    with_claims(2, "p2-nbf", upgrade("/ws/chat:1", "Authorization: Bearer @T\r\n"),
                {"sub": "a", "exp": FAR, "nbf": FAR - 10})
    with_claims(2, "p2-big-info", upgrade("/ws", "Authorization: Bearer @T\r\n"
                                          "Sec-WebSocket-Protocol: shardcast.v1.cbor\r\n"),
                {"sub": "a", "exp": FAR, "info": {"x": "y" * 2000}})
    write(t, "p2-no-token", b"\x02" + upgrade("/ws/public:1").encode())
    write(t, "p2-bad-token", b"\x02" + upgrade("/ws/public:1", "Authorization: Bearer a.b.c\r\n").encode())
    # A token signed here (not by the target), with a "none" algorithm header.
    none_tok = b64u(b'{"alg":"none"}') + "." + b64u(json.dumps({"sub": "a", "exp": FAR}).encode()) + "."
    write(t, "p2-alg-none", b"\x02" + upgrade("/ws/chat:1", f"Authorization: Bearer {none_tok}\r\n").encode())
    msg = b64u(b'{"alg":"HS256","typ":"JWT"}') + "." + b64u(json.dumps({"sub": "a", "exp": FAR}).encode())
    sig = b64u(hmac.new(SECRET, msg.encode(), hashlib.sha256).digest())
    write(t, "p2-presigned", b"\x02" + upgrade("/ws/chat:1", f"Authorization: Bearer {msg}.{sig}\r\n").encode())
    aud = {"sub": "a", "exp": FAR, "aud": "shardcast-tests", "iss": "https://issuer.shardcast.test"}
    with_claims(3, "p3-query", upgrade("/ws/chat:1?access_token=@T"), aud)
    with_claims(3, "p3-wrong-aud", upgrade("/ws/chat:1?access_token=@T"), {**aud, "aud": ["other"]})
    with_claims(3, "p3-no-iss", upgrade("/ws/chat:1", "Authorization: Bearer @T\r\n"),
                {"sub": "a", "exp": FAR, "aud": "shardcast-tests"})
    with_claims(4, "p4-hs256-not-allowed", upgrade("/ws/chat:1", "Authorization: Bearer @T\r\n"),
                {"sub": "a", "exp": FAR})
    write(t, "p3-api", b"\x03GET /api/rooms HTTP/1.1\r\nAuthorization: Bearer k\r\n\r\n")
    # Admission (policy byte 0x20): the peer is a trusted proxy, the client IP comes from the
    # forwarding headers; max_connections_per_ip = 1, max_connections_per_user = 1.
    xff = "X-Forwarded-For: 203.0.113.9, 10.0.0.2\r\n"
    write(t, "a0-xff", b"\x20" + upgrade("/ws/chat:42", xff).encode())
    write(t, "a0-forwarded", b"\x20" + upgrade(
        "/ws/chat:42", 'Forwarded: for="[2001:db8::1]:80";proto=https, For=192.0.2.7\r\n').encode())
    write(t, "a0-other-ip", b"\x20" + upgrade("/ws/r", "X-Forwarded-For: 192.0.2.7\r\n").encode())
    write(t, "a0-hops", b"\x20" + upgrade(
        "/ws/r", "X-Forwarded-For: unknown, _hidden, 127.0.0.5, ::ffff:10.0.0.1\r\n"
                 "X-Forwarded-For: 2001:db8::5\r\n").encode())
    write(t, "a1-envelope", b"\x21" + upgrade(
        "/ws?info=%7B%7D", "Sec-WebSocket-Protocol: shardcast.v1.cbor\r\n"
                           "Origin: https://a.example.com\r\n" + xff).encode())
    with_claims(0x22, "a2-user", upgrade("/ws/chat:42", "Authorization: Bearer @T\r\n"
                                         "Origin: https://app.shardcast.test\r\n" + xff), grants)
    with_claims(0x23, "a3-close-oldest", upgrade("/ws/chat:1?access_token=@T",
                                                 "Forwarded: for=198.51.100.2\r\n"), aud)


# ---- permessage-deflate --------------------------------------------------------------------------

def inflates():
    t = "inflate"

    def seed(name, data, window=15, reset=False, max_len=65535, scale=False, prefix=0, level=1):
        params = (window - 8) | (8 if reset else 0) | (0x10 if scale else 0) | (level << 5 & 0xE0)
        write(t, name, bytes([params]) + struct.pack("<H", max_len) + bytes([prefix]) + data)

    seed("rfc7692-hello", b"\xf2\x48\xcd\xc9\xc9\x07\x00", max_len=5)
    seed("rfc7692-stored", b"\x00\x05\x00\xfa\xffHello\x00")
    seed("rfc7692-bfinal", b"\xf3\x48\xcd\xc9\xc9\x07\x00\x00", reset=True)
    seed("empty-message", b"\x00")
    seed("empty", b"")
    c = zlib.compressobj(1, zlib.DEFLATED, -15)
    parts = [deflate_msg(m, comp=c) for m in (b"Hello", b"Hello", b"Hello, Hello")]
    seed("context-takeover", b"\x00\x00\xff\xff".join(parts))
    c = zlib.compressobj(9, zlib.DEFLATED, -9)
    doc = json.dumps({"op": "publish", "room": "chat:42", "data": {"text": "hi " * 50}}).encode()
    seed("window-9-json", deflate_msg(doc, 9, comp=c), window=9, prefix=16)
    c = zlib.compressobj(6, zlib.DEFLATED, -9)  # zlib builds 8 as 9 (src/protocol/deflate.rs)
    seed("window-8", deflate_msg(b"abcabcabc" * 40, comp=c), window=8, reset=True)
    bomb = deflate_msg(b"\x00" * (1 << 20))
    seed("bomb-1MiB-limit-64KiB", bomb, max_len=65535)
    seed("bomb-1MiB-limit-64KiBx16", bomb, max_len=65536 // 16, scale=True)
    seed("bomb-limit-0", bomb, max_len=0)
    full = zlib.compressobj(1, zlib.DEFLATED, -15)
    stream = full.compress(b"final block then more") + full.flush(zlib.Z_FINISH)
    seed("bfinal-then-data", stream + deflate_msg(b"next"))
    seed("garbage", b"\xff\xff\xff\xff\x00\x01")
    seed("round-trip-text", "The quick brown fox \u00e9 ".encode() * 30, level=9)


# ---- envelope ------------------------------------------------------------------------------------

def envelope_frames(r="chat:42"):
    """(name, frame as a Python value) as test_envelope.py sends them."""
    return [
        ("subscribe", {"op": "subscribe", "room": r}),
        ("subscribe-resume", {"op": "subscribe", "room": r, "since": 17, "epoch": 3, "presence": True}),
        ("unsubscribe", {"op": "unsubscribe", "room": r}),
        ("publish-text", {"op": "publish", "room": r, "data": {"text": "hi"}, "id": 7}),
        ("publish-int", {"op": "publish", "room": r, "data": 42}),
        ("publish-null", {"op": "publish", "room": r, "data": None}),
        ("publish-id-array", {"op": "publish", "room": r, "data": "plain", "id": [1, "x"]}),
        ("publish-id-map", {"op": "publish", "room": r, "data": "x", "id": {"k": [1]}}),
        ("publish-base64", {"op": "publish", "room": r, "data": "AAEC", "enc": "base64"}),
        ("publish-nested", {"op": "publish", "room": r, "data": {"k": "AQ==", "n": [1, 2.5, None, True]}}),
        ("publish-unicode", {"op": "publish", "room": r, "data": "\u00e9 \u2713"}),
        ("publish-u64-max", {"op": "publish", "room": r, "data": 2**64 - 1}),
        ("publish-negative", {"op": "publish", "room": r, "data": -2**63}),
        ("presence", {"op": "presence", "room": r}),
        ("presence-by-user", {"op": "presence", "room": r, "by": "user"}),
        ("history", {"op": "history", "room": r, "since": 10, "limit": 50}),
        ("history-limit-0", {"op": "history", "room": r, "limit": 0, "x-app": [1, {"y": 2}]}),
        ("history-nulls", {"op": "history", "room": r, "since": None, "limit": None}),
        ("refresh", {"op": "refresh", "token": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhZGEifQ.c2ln"}),
        ("no-op", {"room": r}),
        ("subscribe-no-room", {"op": "subscribe"}),
        ("publish-no-data", {"op": "publish", "room": r}),
        ("op-not-text", {"op": 1, "room": r}),
        ("since-string", {"op": "subscribe", "room": r, "since": "5"}),
        ("presence-not-bool", {"op": "subscribe", "room": r, "presence": "yes"}),
        ("negative-limit", {"op": "history", "room": r, "limit": -1}),
        ("limit-2-32", {"op": "history", "room": r, "limit": 2**32}),
        ("unknown-enc", {"op": "publish", "room": r, "data": "AAEC", "enc": "hex"}),
        ("invalid-base64", {"op": "publish", "room": r, "data": "@@@", "enc": "base64"}),
        ("unknown-op", {"op": "shout", "room": r, "id": "e1"}),
        ("op-upper", {"op": "Subscribe", "room": r}),
        ("room-space", {"op": "subscribe", "room": "bad room"}),
        ("room-empty", {"op": "subscribe", "room": ""}),
        ("room-129", {"op": "subscribe", "room": "x" * 129}),
        ("room-128", {"op": "subscribe", "room": "Az09_.:-" + "x" * 120}),
        ("publish-bad-room", {"op": "publish", "room": "a/b", "data": 1, "id": 7}),
        ("deep", {"op": "publish", "room": r, "data": json.loads("[" * 120 + "]" * 120)}),
    ]


def envelopes():
    for name, f in envelope_frames():
        write("envelope_json", name, json.dumps(f, separators=(",", ":")))
        write("envelope_cbor", name, cbor2.dumps(f))
    # docs/protocol.md: every frame example (client ones decode, server ones are unknown ops).
    text = (REPO / "docs/protocol.md").read_text()
    for i, ex in enumerate(sorted(set(re.findall(r'\{"op":"[a-z]+"[^`\n]*\}', text)))):
        try:
            v = json.loads(ex)
        except ValueError:
            continue
        write("envelope_json", f"doc-{i:02d}-{v['op']}", ex)
        write("envelope_cbor", f"doc-{i:02d}-{v['op']}", cbor2.dumps(v))
    # test_errors: frames no encoder makes.
    j = "envelope_json"
    write(j, "not-json", "not json")
    write(j, "array", "[1,2]")
    write(j, "garbage-after", '{"op":"history","room":"a"} x')
    write(j, "since-float", '{"op":"subscribe","room":"a","since":5.0}')
    write(j, "duplicate-key", '{"op":"history","room":"a","room":"b"}')
    write(j, "whitespace", ' { "room" : "r", "op" : "subscribe", "since": 5, "epoch": null } ')
    write(j, "escapes", '{"op":"publish","room":"r","data":"\\u00e9\\ud83d\\ude00\\n","id":1e400}')
    c = "envelope_cbor"
    op_history = cbor2.dumps("op") + cbor2.dumps("history") + cbor2.dumps("room") + cbor2.dumps("r")
    write(c, "not-cbor", b"\xff")
    write(c, "trailing", cbor2.dumps({"op": "history", "room": "r"}) + b"\x00")
    write(c, "array", cbor2.dumps([1, 2]))
    write(c, "truncated-map", b"\xa1")
    write(c, "indefinite-map", b"\xbf" + op_history + b"\xff")
    write(c, "non-text-keys", cbor2.dumps({"op": "history", "room": "r", "limit": 0, 7: "x", b"k": 1}))
    write(c, "negative-since", cbor2.dumps({"op": "subscribe", "room": "r", "since": -1}))
    write(c, "float-epoch", cbor2.dumps({"op": "subscribe", "room": "r", "epoch": 1.5}))
    write(c, "enc-with-bytes", cbor2.dumps({"op": "publish", "room": "r", "data": b"x", "enc": "base64"}))
    write(c, "duplicate-key", b"\xa3" + op_history + cbor2.dumps("room") + cbor2.dumps("b"))
    write(c, "bytes-id", cbor2.dumps({"op": "shout", "room": "r", "id": b"\x01"}))
    write(c, "non-ascii-room", cbor2.dumps({"op": "subscribe", "room": "\u00e9", "id": 3}))
    write(c, "publish-bytes", cbor2.dumps({"op": "publish", "room": "r", "data": b"\x00\xff"}))
    write(c, "publish-tag", cbor2.dumps({"op": "publish", "room": "r", "data": cbor2.CBORTag(40000, "tagged")}))
    write(c, "tagged-op", cbor2.dumps({"op": cbor2.CBORTag(24, "publish"), "room": "r",
                                       "data": cbor2.CBORTag(1, 1700000000)}))
    write(c, "floats", cbor2.dumps({"op": "publish", "room": "r",
                                    "data": [float("nan"), float("inf"), -0.0, 1e300, 1.5]}))
    write(c, "bignum", cbor2.dumps({"op": "publish", "room": "r", "data": [2**64 - 1, -2**64, 2**70]}))
    write(c, "undefined-simple", cbor2.dumps({"op": "publish", "room": "r",
                                              "data": [cbor2.undefined, cbor2.CBORSimpleValue(99)]}))
    write(c, "map-keys-data", cbor2.dumps({"op": "publish", "room": "r",
                                           "data": {1: "a", "1": "b", b"\x01": "c", 2.5: "d"}}))
    write(c, "indefinite-strings", bytes.fromhex("a362") + b"op" + bytes.fromhex("7f6470756273636c697368ff")
          + cbor2.dumps("room") + cbor2.dumps("r") + cbor2.dumps("data") + bytes.fromhex("5f42010243030405ff"))


# ---- config --------------------------------------------------------------------------------------

def configs():
    t = "config"
    write(t, "example", (REPO / "config.example.toml").read_bytes())
    for p in sorted((REPO / "tests/python").glob("*.toml")):
        write(t, f"tests-{p.stem}", p.read_bytes())
    http = (FUZZ / "src/http.rs").read_text()
    for i, block in enumerate(re.findall(r'r#"(.*?)"#', http, re.S)):
        if "[" in block:
            write(t, f"gate-policy-{i}", block)
    write(t, "empty", "")
    write(t, "every-size", '[limits]\nmax_message_bytes = "16MiB"\nmax_frame_bytes = 65536\n'
                           'max_header_bytes = "1k"\nmax_buffered_bytes = "1GiB"\n'
                           '[history]\nmax_room_bytes = "1g"\nsize = 0\nttl = "1h 30m"\n')
    write(t, "durations", '[limits]\nhandshake_timeout = "250ms"\nclose_timeout = "1s"\n'
                          '[heartbeat]\ninterval = "2min"\ntimeout = "500ms"\n[shutdown]\ndrain_timeout = "1day"\n')
    write(t, "server", '[server]\nlisten = "localhost:0"\nshards = 1024\nio_driver = "epoll"\nbacklog = 1\n'
                       'inbox_capacity = 1\npin_cores = true\n[log]\nlevel = "shardcast=debug,warn"\n')
    write(t, "classes", '[[rooms.class]]\nmatch = "*"\nhistory_size = 10\nhistory_ttl = "10s"\n'
                        'slow_consumer = "conflate"\nmax_subscribers = 1\necho_to_sender = false\n')
    write(t, "bad-types", '[limits]\nmax_connections = "many"\n[compression]\nlevel = 10\nmode = "x"\n')


def main():
    clear_seeds()
    frames()
    handshakes()
    gates()
    inflates()
    envelopes()
    configs()
    total = sum(f.stat().st_size for f in CORPUS.rglob("*") if f.is_file())
    counts = {d.name: len(list(d.iterdir())) for d in sorted(CORPUS.iterdir())}
    print(f"corpus: {counts}, {total} bytes in all")


if __name__ == "__main__":
    main()
