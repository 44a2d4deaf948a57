"""Admission control and rate limits (issue #11) against real daemons.

Each scenario has its own config (tests/python/abuse-*.toml) and daemon, started by the
machinery of test_auth.py (2 shards, a free port, `config check` first). Clients come from
several loopback addresses (127.0.0.2, 127.0.0.3, ...), all of which reach the daemon on
127.0.0.1; tokens are signed by PyJWT.

    SHARDCAST_BIN=target/release/shardcast python tests/python/test_abuse.py [name-filter ...]
"""

import json
import select
import socket
import time

from websockets.exceptions import ConnectionClosed

import test_auth as T
from test_auth import TIMEOUT, Client, await_close, check, tok, upgrade


def raw_from(d, source, room="lobby", token=None, **kw):
    """A raw-room client connected from `source` (a loopback address), kept open."""
    headers = T.bearer(token) if token else None
    return T.ws_connect(f"ws://{d.addr}/ws/{room}", additional_headers=headers,
                        source_address=(source, 0), **kw)


def eventually(attempt, want=101, timeout=TIMEOUT, pause=0.05):
    """Call attempt() until it returns `want` (a close or a refill reaches the daemon
    asynchronously), at most `timeout` seconds: the last result."""
    end, got = time.monotonic() + timeout, None
    while time.monotonic() < end:
        got = attempt()
        if got == want:
            break
        time.sleep(pause)
    return got


def refused(label, status, hdrs, body, want_status, want_text):
    ra = hdrs.get("retry-after", "")
    check(f"{label}: {want_status} '{want_text}' with Retry-After",
          status == want_status and want_text in body and ra.isdigit() and int(ra) >= 1,
          (status, ra, body))
    return int(ra) if ra.isdigit() else None


def test_ip_cap():
    d = T.daemon("abuse-cap")
    a, b = raw_from(d, "127.0.0.2"), raw_from(d, "127.0.0.2")
    st, hdrs, body = upgrade(d, "/ws/lobby", source="127.0.0.2")
    refused("per-IP cap 2: third from 127.0.0.2", st, hdrs, body, 429, "too many connections from this address")
    st, _, _ = upgrade(d, "/ws/lobby", source="127.0.0.3")
    check("per-IP cap: 127.0.0.3 has its own count", st == 101, st)
    st, _, body = upgrade(d, "/healthz", source="127.0.0.2")
    check("per-IP cap: plain HTTP from a capped address is not limited", st == 200, (st, body))
    T.close_quietly(a.ws if hasattr(a, "ws") else a)
    st = eventually(lambda: upgrade(d, "/ws/lobby", source="127.0.0.2")[0])
    check("per-IP cap: a connection closes -> the address may connect again", st == 101, st)
    b.send("still here")
    check("per-IP cap: the open connection was not affected", b.recv(TIMEOUT) == "still here")


def test_trusted_proxy():
    d = T.daemon("abuse-cap")
    xff = lambda ip: {"X-Forwarded-For": f"9.9.9.9, {ip}"}  # noqa: E731 - first hop forged by the client
    kept = [T.ws_connect(f"ws://{d.addr}/ws/p", additional_headers=xff(ip), source_address=("127.0.0.9", 0))
            for ip in ("198.51.100.1", "198.51.100.1", "198.51.100.2", "198.51.100.2")]
    check("trusted proxy 127.0.0.9: two clients behind it get two connections each", len(kept) == 4)
    st, hdrs, body = upgrade(d, "/ws/p", headers=xff("198.51.100.1"), source="127.0.0.9")
    refused("trusted proxy: a third for 198.51.100.1 (the address the proxy appended)", st, hdrs, body,
            429, "too many connections from this address")
    st, _, _ = upgrade(d, "/ws/p", headers=xff("198.51.100.3"), source="127.0.0.9")
    check("trusted proxy: another forwarded client is admitted", st == 101, st)
    st, _, _ = upgrade(d, "/ws/p", headers={"Forwarded": 'for="198.51.100.4:1234"'}, source="127.0.0.9")
    check("trusted proxy: Forwarded (RFC 7239) is read too", st == 101, st)
    # From an untrusted peer the header is ignored: the peer is the client.
    u1 = T.ws_connect(f"ws://{d.addr}/ws/p", additional_headers=xff("203.0.113.1"), source_address=("127.0.0.8", 0))
    u2 = T.ws_connect(f"ws://{d.addr}/ws/p", additional_headers=xff("203.0.113.2"), source_address=("127.0.0.8", 0))
    st, hdrs, body = upgrade(d, "/ws/p", headers=xff("203.0.113.3"), source="127.0.0.8")
    refused("untrusted peer 127.0.0.8: X-Forwarded-For ignored, its own cap applies", st, hdrs, body,
            429, "too many connections from this address")
    del u1, u2, kept


def test_handshake_rates():
    d = T.daemon("abuse-rate")
    got = [upgrade(d, "/ws/r", source="127.0.0.2")[0] for _ in range(3)]
    check("per-IP rate: burst of 3 from 127.0.0.2 admitted", got == [101, 101, 101], got)
    st, hdrs, body = upgrade(d, "/ws/r", source="127.0.0.2")
    ra = refused("per-IP rate: the 4th at once", st, hdrs, body, 429, "too many handshakes from this address")
    check("per-IP rate: Retry-After within [1, 2] s (1 s wait, jittered up to twice)", ra in (1, 2), ra)
    got = [upgrade(d, "/ws/r", source=src)[0] for src in ("127.0.0.3",) * 3 + ("127.0.0.4",) * 2]
    check("global rate: burst 8 in all (3 + 3 + 2) admitted", got == [101] * 5, got)
    st, hdrs, body = upgrade(d, "/ws/r", source="127.0.0.5")
    refused("global rate: the 9th, from a fresh address", st, hdrs, body, 503, "too many handshakes, try again later")
    spread = set()
    for _ in range(20):
        spread.add(upgrade(d, "/ws/r", source="127.0.0.6")[1].get("retry-after"))
    check("global rate: Retry-After values are spread (jitter)", len(spread) >= 2, spread)
    # Once the wait has passed, one more is admitted.
    st = eventually(lambda: upgrade(d, "/ws/r", source="127.0.0.7")[0], timeout=10, pause=0.25)
    check("global rate: admitted again after the wait", st == 101, st)


def test_pending_handshakes():
    d = T.daemon("abuse-pending")
    idle = [socket.create_connection(("127.0.0.1", d.port), timeout=TIMEOUT) for _ in range(3)]
    # The 3 idle sockets are counted once the daemon has accepted them: wait for the refusal.
    end, data = time.monotonic() + TIMEOUT, b""
    while time.monotonic() < end:
        # The daemon accepts in any order: a probe accepted before the last idle socket takes its
        # slot, and that idle socket is the one refused. Replace any idle socket the daemon has
        # answered (or closed) so that the 3 slots end up held by idle sockets.
        for i, s in enumerate(idle):
            if select.select([s], [], [], 0)[0]:
                s.close()
                idle[i] = socket.create_connection(("127.0.0.1", d.port), timeout=TIMEOUT)
        with socket.create_connection(("127.0.0.1", d.port), timeout=TIMEOUT) as s:
            # Refused at once, without sending anything. Before the daemon has accepted the 3
            # idle sockets this one is admitted as a pending handshake instead and nothing comes:
            # give up on it after a short wait and try again.
            s.settimeout(0.5)
            data = b""
            try:
                while chunk := s.recv(4096):
                    data += chunk
            except TimeoutError:
                pass
        if data.startswith(b"HTTP/1.1 503"):
            break
        time.sleep(0.05)
    head = data.decode("latin-1")
    check("max_pending_handshakes 3: a 4th connection gets 503 without sending a request",
          head.startswith("HTTP/1.1 503") and "Retry-After: " in head and "too many handshakes in progress" in head,
          head[:300])
    for s in idle:
        s.close()
    st = eventually(lambda: upgrade(d, "/ws/x")[0])
    check("max_pending_handshakes: the idle sockets close -> upgrades work again", st == 101, st)


def sends_until_closed(send, n):
    """send(i) for i in 0..n, stopping when the server has closed the connection already."""
    for i in range(n):
        try:
            send(i)
        except ConnectionClosed:
            return


def test_message_rate_envelope():
    d = T.daemon("abuse-messages")
    sub, pub = Client(d), Client(d)
    r = T.room("rate")
    sub.request({"op": "subscribe", "room": r})
    for i in range(6):
        pub.send({"op": "publish", "room": r, "data": i, "id": i})
    frames = [pub.recv() for _ in range(6)]  # 5 acks and 1 refusal, in some order
    acks = sorted(f["id"] for f in frames if f.get("op") == "ack")
    limited = [f for f in frames if f.get("code") == "rate_limited"]
    check("message rate: burst of 5 acked", acks == [0, 1, 2, 3, 4], frames)
    ok = (len(limited) == 1 and limited[0].get("id") == 5 and limited[0].get("op") == "error"
          and 0 < limited[0].get("retry_after_ms", 0) <= 500)
    check("message rate: the 6th -> error rate_limited with its id and retry_after_ms in (0, 500]", ok, limited)
    got = [sub.recv()["data"] for _ in range(5)]
    check("message rate: subscriber got the 5 admitted messages", got == [0, 1, 2, 3, 4], got)
    rest = sub.drain(0.7)
    check("message rate: the refused one was not delivered", rest == [], rest)
    # After the wait one more goes through.
    time.sleep(limited[0]["retry_after_ms"] / 1000 if limited else 0.5)
    f = pub.request({"op": "publish", "room": r, "data": "later", "id": "later"})
    check("message rate: admitted again after retry_after_ms", f == {"op": "ack", "id": "later", "seq": 6}, f)
    # The close may come before the last of these are sent (a loaded machine): sending stops there.
    sends_until_closed(lambda i: pub.send({"op": "publish", "room": r, "data": i}), 20)
    code, reason, _, _ = await_close(pub.ws.recv, TIMEOUT)
    check("message rate: a client that keeps going is closed 1008 after max_bad_frames refusals",
          code == 1008 and reason == "rate limit exceeded", (code, reason))


def test_message_rate_raw():
    d = T.daemon("abuse-messages")
    x = T.raw_client(d, T.room("rawrate"))
    sends_until_closed(lambda i: x.send(f"m{i}"), 8)
    code, reason, _, frames = await_close(x.recv, TIMEOUT)
    check("message rate raw: over the rate -> close 1008 'rate limit exceeded'",
          code == 1008 and reason == "rate limit exceeded", (code, reason))
    check("message rate raw: the burst was delivered first", frames[:5] == [f"m{i}" for i in range(5)], frames)


def test_user_cap():
    d = T.daemon("abuse-user")
    t = tok(d, sub="ada")
    a, b = Client(d, t), Client(d, t)
    st, hdrs, body = upgrade(d, "/ws/u", headers=T.bearer(t))
    refused("max_connections_per_user 2: ada's third", st, hdrs, body, 429, "too many connections for this user")
    st, _, _ = upgrade(d, "/ws/u", headers=T.bearer(tok(d, sub="bob")))
    check("max_connections_per_user: another user is admitted", st == 101, st)
    a.close()
    st = eventually(lambda: upgrade(d, "/ws/u", headers=T.bearer(t))[0])
    check("max_connections_per_user: one closes -> ada may connect again", st == 101, st)
    del b


def test_user_close_oldest():
    d = T.daemon("abuse-user-oldest")
    t = tok(d, sub="ada")
    a = Client(d, t)
    b = Client(d, t)
    c = Client(d, t)
    check("close_oldest: the third connection is admitted", isinstance(c.welcome, dict) and c.welcome.get("op") == "welcome",
          c.welcome)
    code, reason, _, _ = await_close(a.ws.recv, TIMEOUT)
    check("close_oldest: the oldest is closed 1008 'replaced by a newer connection'",
          code == 1008 and reason == "replaced by a newer connection", (code, reason))
    f = b.request({"op": "subscribe", "room": "u"})
    check("close_oldest: the second stays open", isinstance(f, dict) and f.get("op") == "subscribed", f)


TESTS = [(f, None) for f in (test_ip_cap, test_trusted_proxy, test_handshake_rates, test_pending_handshakes,
                             test_message_rate_envelope, test_message_rate_raw, test_user_cap,
                             test_user_close_oldest)]

if __name__ == "__main__":
    T.main(TESTS, "abuse")
