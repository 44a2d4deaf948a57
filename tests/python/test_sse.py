"""The Server-Sent Events transport (issue #13) against a real daemon: GET /sse streams with
their first subscriptions, client operations over POST /sse/{stream}, ids on message events,
resume by since/epoch and by Last-Event-ID, token checks on both, heartbeat comments, the
drain's close event, and fan-out encoded once for all streams (a counter on /metrics).

    SHARDCAST_BIN=target/release/shardcast python tests/python/test_sse.py [name-filter ...]
"""

import http.client
import json
import signal
import socket
import time
import urllib.parse

import test_auth as T
import test_ops as O
from test_auth import TIMEOUT, Client, check, tok


class Sse:
    """An event-stream client on a bare socket: events() yields (id, data dict | comment)."""

    def __init__(self, d, query="", headers=None):
        self.d = d
        self.s = socket.create_connection(("127.0.0.1", d.port), timeout=TIMEOUT)
        hdrs = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self.s.sendall(f"GET /sse{('?' + query) if query else ''} HTTP/1.1\r\nHost: x\r\n"
                       f"Accept: text/event-stream\r\n{hdrs}\r\n".encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            chunk = self.s.recv(4096)
            if not chunk:
                break
            self.buf += chunk
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        self.head = head.decode("latin-1")
        self.status = int(self.head.split(" ", 2)[1]) if self.head.startswith("HTTP/1.1 ") else None
        self.body = self.buf.decode("latin-1", "replace")
        self.welcome = self.next() if self.status == 200 else None
        self.stream = self.welcome.get("stream") if isinstance(self.welcome, dict) else None

    def raw_event(self, timeout=TIMEOUT):
        """The next event as (id or None, data text or None, comment or None); None at EOF."""
        end = time.monotonic() + timeout
        while b"\n\n" not in self.buf:
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError("no event")
            self.s.settimeout(left)
            chunk = self.s.recv(65536)
            if not chunk:
                return None
            self.buf += chunk
        ev, _, self.buf = self.buf.partition(b"\n\n")
        eid = data = comment = None
        for line in ev.decode().split("\n"):
            if line.startswith("id: "):
                eid = line[4:]
            elif line.startswith("data: "):
                data = line[6:]
            elif line.startswith(":"):
                comment = line[1:].strip()
        return eid, data, comment

    def next(self, timeout=TIMEOUT, with_id=False):
        """The next data event's JSON (comments skipped); with_id: (id, json)."""
        while True:
            ev = self.raw_event(timeout)
            if ev is None:
                return None
            eid, data, _ = ev
            if data is not None:
                j = json.loads(data)
                return (eid, j) if with_id else j

    def post(self, frame, token=None, stream=None, raw=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.d.port, timeout=TIMEOUT)
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        body = raw if raw is not None else json.dumps(frame).encode()
        conn.request("POST", f"/sse/{stream or self.stream}", body=body, headers=headers)
        r = conn.getresponse()
        out = (r.status, r.read().decode())
        conn.close()
        return out

    def close(self):
        self.s.close()


def test_sse_stream_and_posts():
    d = T.daemon("auth-none")
    r1, r2, r3 = T.room("sse1"), T.room("sse2"), T.room("sse3")
    s = Sse(d, f"rooms={r1},{r2}&presence={r1}")
    check("sse: 200 text/event-stream, no length", s.status == 200 and "text/event-stream" in s.head
          and "Content-Length" not in s.head, s.head)
    check("sse: welcome carries conn and the stream id", isinstance(s.welcome, dict) and s.welcome.get("op") == "welcome"
          and isinstance(s.stream, str) and s.stream.startswith(f"{s.welcome.get('conn')}-"), s.welcome)
    got = [s.next() for _ in range(3)]  # subscribed r1, r2 (either order), own join in r1
    subs = {f.get("room"): f for f in got if f.get("op") == "subscribed"}
    check("sse: one subscribed per room of the query", set(subs) == {r1, r2}
          and all(f.get("seq") == 0 and f.get("recovered") is False for f in subs.values()), got)
    check("sse: presence=r1 -> its own join", any(f.get("op") == "join" and f.get("room") == r1
                                                  and f.get("conn") == s.welcome["conn"] for f in got), got)
    ws = Client(d)
    ws.request({"op": "subscribe", "room": r1, "presence": True})
    f = ws.recv()
    check("sse: (the WebSocket subscriber's own join)", f.get("op") == "join" and f.get("conn") == ws.conn, f)
    j = s.next()
    check("sse: a WebSocket subscriber's join reaches the stream", j.get("op") == "join" and j.get("conn") == ws.conn, j)
    ws.send({"op": "publish", "room": r1, "data": {"n": 1}})
    eid, m = s.next(with_id=True)
    check("sse: a message event with id room:seq", eid == f"{r1}:1" and m == {"op": "message", "room": r1, "seq": 1,
                                                                              "from": ws.conn, "data": {"n": 1}}, (eid, m))
    f = ws.recv()
    check("sse: (the publisher's own echo)", f.get("op") == "message", f)
    st, body = s.post({"op": "publish", "room": r1, "data": "from sse", "id": "p1"})
    check("sse post: publish -> 202, empty body", (st, body) == (202, ""), (st, body))
    evs = [s.next(with_id=True) for _ in range(2)]
    ack = [e for _, e in evs if e.get("op") == "ack"]
    msg = [(i, e) for i, e in evs if e.get("op") == "message"]
    check("sse post: the ack comes on the stream, echoing the id", ack == [{"op": "ack", "id": "p1", "seq": 2}], evs)
    check("sse post: ... and the message", msg == [(f"{r1}:2", {"op": "message", "room": r1, "seq": 2,
                                                               "from": s.welcome["conn"], "data": "from sse"})], evs)
    f = ws.recv()
    check("sse post: a WebSocket subscriber gets the stream's publish", f.get("data") == "from sse", f)
    st, _ = s.post({"op": "presence", "room": r1, "id": "q"})
    f = s.next()
    check("sse post: presence, answered on the stream with its id", st == 202 and f.get("op") == "presence"
          and f.get("id") == "q" and len(f.get("members", [])) == 2, (st, f))
    st, _ = s.post({"op": "subscribe", "room": r3, "id": 3})
    f = s.next()
    check("sse post: subscribe on the open stream", st == 202 and f.get("op") == "subscribed" and f.get("room") == r3
          and f.get("id") == 3, f)
    st, _ = s.post({"op": "unsubscribe", "room": r2, "id": 4})
    f = s.next()
    check("sse post: unsubscribe", f == {"op": "unsubscribed", "room": r2, "id": 4}, f)
    st, _ = s.post({"op": "publish", "room": "bad!room", "data": 1, "id": 9})
    f = s.next()
    check("sse post: a bad frame gets an error event (the stream stays)", st == 202 and f.get("op") == "error"
          and f.get("id") == 9, (st, f))
    st, body = s.post(None, raw=b"[1,2]")
    check("sse post: a body that is not one JSON object -> 400", st == 400, (st, body))
    st, body = s.post(None, raw=b"{nope")
    check("sse post: not JSON -> 400", st == 400, (st, body))
    conn_id, secret = s.stream.split("-")
    wrong = f"{conn_id}-{int(secret, 16) ^ 1:016x}"
    st, body = s.post({"op": "publish", "room": r1, "data": 1}, stream=wrong)
    check("sse post: the right connection with a wrong secret -> 404", st == 404, (st, body))
    for bad in ("nope", "99999-0000000000000001", f"{int(conn_id) + 1024}-{secret}"):
        st, body = s.post({"op": "publish", "room": r1, "data": 1}, stream=bad)
        check(f"sse post: unknown stream {bad!r} -> 404", st == 404, (st, body))
    s.close()
    f = ws.recv()
    check("sse: the stream's socket closed -> its leave reaches the room", f.get("op") == "leave"
          and f.get("conn") == s.welcome["conn"], f)
    st, body = s.post({"op": "publish", "room": r1, "data": 1})
    check("sse post: the stream is gone -> 404", st == 404, (st, body))
    bad = Sse(d, "rooms=a,bad!room")
    check("sse: a bad room in the query -> 400 with the reason", bad.status == 400 and "bad room name" in bad.body,
          (bad.status, bad.body))
    bad = Sse(d, "rooms=a&since=a:x")
    check("sse: a bad since -> 400", bad.status == 400 and "since" in bad.body, (bad.status, bad.body))


def test_sse_resume():
    d = T.daemon("auth-none")
    r = T.room("sseres")
    pub = Client(d)
    acks = [pub.request({"op": "publish", "room": r, "data": i, "id": i}) for i in range(1, 6)]
    check("sse resume: 5 published", [a.get("seq") for a in acks] == [1, 2, 3, 4, 5], acks)
    h = pub.request({"op": "history", "room": r, "limit": 0})
    epoch = h.get("epoch")
    s = Sse(d, f"rooms={r}&since={r}:2&epoch={r}:{epoch}")
    f = s.next()
    got = [s.next(with_id=True) for _ in range(3)]
    check("sse resume: since/epoch -> recovered true", f.get("op") == "subscribed" and f.get("recovered") is True
          and f.get("seq") == 5, f)
    check("sse resume: the missed messages replayed with their ids",
          [(i, m.get("seq")) for i, m in got] == [(f"{r}:3", 3), (f"{r}:4", 4), (f"{r}:5", 5)], got)
    s.close()
    s = Sse(d, f"rooms={r}&epoch={r}:{epoch}", headers={"Last-Event-ID": f"{r}:4"})
    f = s.next()
    i, m = s.next(with_id=True)
    check("sse resume: Last-Event-ID (an EventSource reconnecting) resumes its room",
          f.get("recovered") is True and (i, m.get("seq")) == (f"{r}:5", 5), (f, i, m))
    s.close()
    s = Sse(d, f"rooms={r}&since={r}:2&epoch={r}:{epoch + 1}")
    f = s.next()
    check("sse resume: another epoch -> recovered false", f.get("recovered") is False, f)
    s.close()


def test_sse_tokens():
    d = T.daemon("auth-jwt")
    r = T.room("chat:sse")
    s = Sse(d, f"rooms={r}")
    check("sse jwt: no token -> 401", s.status == 401 and "token missing" in s.body, (s.status, s.body))
    ada = tok(d)
    s = Sse(d, f"rooms={r}&token={urllib.parse.quote(ada)}")
    f = s.next()
    check("sse jwt: token in the query -> stream, user in welcome", s.status == 200 and s.welcome.get("user") == "ada"
          and f.get("op") == "subscribed", (s.status, s.welcome, f))
    st, body = s.post({"op": "publish", "room": r, "data": 1})
    check("sse jwt: a post without a token -> 401", st == 401, (st, body))
    st, body = s.post({"op": "publish", "room": r, "data": 1}, token=tok(d, sub="bob"))
    check("sse jwt: a post with another user's token -> 403", st == 403, (st, body))
    st, body = s.post({"op": "publish", "room": r, "data": 1}, token="x.y.z")
    check("sse jwt: a post with a bad token -> 401", st == 401, (st, body))
    st, _ = s.post({"op": "publish", "room": r, "data": "ok", "id": 1}, token=ada)
    evs = [s.next() for _ in range(2)]
    check("sse jwt: a post with the stream user's token -> 202 and carried out", st == 202
          and {e.get("op") for e in evs} == {"ack", "message"}, (st, evs))
    only_chat = tok(d, rooms={"subscribe": ["chat:*"], "publish": ["chat:*"]})
    s2 = Sse(d, f"rooms={T.room('news:x')}", headers={"Authorization": f"Bearer {only_chat}"})
    f = s2.next()
    check("sse jwt: a room the token may not subscribe to -> error forbidden on the stream",
          s2.status == 200 and f.get("op") == "error" and f.get("code") == "forbidden", (s2.status, f))


def test_sse_heartbeat_drain_and_encoded_once():
    p = O.Proc("sse", "[admin]\nlisten = \"@ADMIN@\"\n[heartbeat]\ninterval = \"300ms\"\ntimeout = \"300ms\"\n"
               "[shutdown]\ndrain_timeout = \"1s\"\n")
    try:
        r = T.room("sseonce")
        streams = [Sse(p, f"rooms={r}") for _ in range(10)]
        for s in streams:
            s.next()  # subscribed
        check("sse: 10 streams open", all(s.status == 200 for s in streams), [s.status for s in streams])
        shards = {s.welcome["conn"] & 1023 for s in streams}
        before = O.total(O.metrics(p)[1], "shardcast_sse_encodings")
        ws = Client(p)
        ws.request({"op": "publish", "room": r, "data": "once", "id": 1})
        got = [s.next(with_id=True) for s in streams]
        check("sse: every stream gets the message", all(m.get("data") == "once" for _, m in got), got)
        after = O.total(O.metrics(p)[1], "shardcast_sse_encodings")
        check(f"sse: encoded once for 10 streams on shards {sorted(shards)} (sse_encodings +1)",
              before is not None and after - before == 1, (before, after))
        end, by = time.monotonic() + TIMEOUT, None
        while time.monotonic() < end:  # sampled by the sweep
            fams = O.metrics(p)[1]
            by = (O.total(fams, "shardcast_connections_by_wire", transport="sse"),
                  O.total(fams, "shardcast_connections_by_wire", transport="websocket", wire="json_deflate"))
            if by == (10, 1):
                break
            time.sleep(0.1)
        check("metrics: connections_by_wire{transport, wire}: 10 sse, 1 websocket json (deflate, as websockets offers it)", by == (10, 1), by)
        # Heartbeat: a comment line every interval, and the stream is not dropped for silence.
        comments, end = 0, time.monotonic() + 3
        while time.monotonic() < end and comments < 3:
            ev = streams[0].raw_event(3)
            comments += bool(ev and ev[2] == "ping")
        check("sse: heartbeat comments (': ping') keep coming past interval + timeout", comments >= 3, comments)
        p.proc.send_signal(signal.SIGTERM)
        ev = streams[1].next(timeout=TIMEOUT)
        check("sse drain: a reconnect hint first", isinstance(ev, dict) and ev.get("op") == "reconnect", ev)
        ev = streams[1].next(timeout=TIMEOUT)
        check("sse drain: then the close event with 1012", isinstance(ev, dict) and ev.get("op") == "close"
              and ev.get("code") == 1012, ev)
        check("sse drain: then the stream ends", streams[1].raw_event(TIMEOUT) is None)
    finally:
        p.stop()


def test_publish_dedup():
    d = T.daemon("auth-none")
    r = T.room("dedup")
    sub = Client(d)
    sub.request({"op": "subscribe", "room": r})
    a = Client(d, query="session=sess-A")
    f1 = a.request({"op": "publish", "room": r, "data": "one", "id": "p-1"})
    check("dedup: first publish acked", f1 == {"op": "ack", "id": "p-1", "seq": 1}, f1)
    # The same session after a reconnect sends it again (it never saw the ack, say).
    a.ws.close()
    a = Client(d, query="session=sess-A")
    f2 = a.request({"op": "publish", "room": r, "data": "one", "id": "p-1"})
    check("dedup: the repeat on a new connection of the session -> the first seq, duplicate: true",
          f2 == {"op": "ack", "id": "p-1", "seq": 1, "duplicate": True}, f2)
    f3 = a.request({"op": "publish", "room": r, "data": "two", "id": "p-2"})
    check("dedup: a new id is published", f3 == {"op": "ack", "id": "p-2", "seq": 2}, f3)
    b = Client(d, query="session=sess-B")
    f4 = b.request({"op": "publish", "room": r, "data": "b", "id": "p-1"})
    check("dedup: another session's same id is its own publish", f4 == {"op": "ack", "id": "p-1", "seq": 3}, f4)
    n = Client(d)
    f5 = [n.request({"op": "publish", "room": r, "data": "n", "id": 1}) for _ in range(2)]
    check("dedup: without a session ids are only correlation ids (both published)",
          [f.get("seq") for f in f5] == [4, 5] and not any(f.get("duplicate") for f in f5), f5)
    got = [sub.recv().get("data") for _ in range(5)]
    check("dedup: the subscriber got each publish once", got == ["one", "two", "b", "n", "n"], got)
    rest = sub.drain(0.3)
    check("dedup: and nothing more", rest == [], rest)
    s = Sse(d, f"rooms={r}&session=sess-A")
    s.next()
    s.post({"op": "publish", "room": r, "data": "two", "id": "p-2"})
    f = s.next()
    check("dedup: an SSE stream of the session repeats p-2 -> duplicate", f == {"op": "ack", "id": "p-2", "seq": 2,
                                                                               "duplicate": True}, f)
    bad = T.upgrade(d, "/ws?session=bad%20one")
    check("dedup: a bad session -> 400", bad[0] == 400 and "session" in bad[2], bad)


TESTS = [(f, None) for f in (test_sse_stream_and_posts, test_publish_dedup, test_sse_resume, test_sse_tokens,
                             test_sse_heartbeat_drain_and_encoded_once)]

if __name__ == "__main__":
    T.main(TESTS, "sse")
