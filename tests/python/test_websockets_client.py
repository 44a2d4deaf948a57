"""A real third-party client (Python `websockets`, which offers permessage-deflate by default)
exchanging compressed messages in both directions through a shardcast room.

Usage: python test_websockets_client.py HOST:PORT
Prints one line per check and a closing 'N passed, N failed'; exits non-zero on any failure.
"""

import json
import re
import sys
import urllib.request

from websockets.extensions.permessage_deflate import PerMessageDeflate
from websockets.sync.client import connect

ADDR = sys.argv[1]
URL = f"ws://{ADDR}/ws/py-room"
passed = failed = 0


def check(name, cond, detail=""):
    global passed, failed
    if cond:
        passed += 1
        print(f"ok   {name}")
    else:
        failed += 1
        print(f"FAIL {name} {detail}")


def counter(name):
    page = urllib.request.urlopen(f"http://{ADDR}/status").read().decode()
    m = re.search(rf"<td>{name}</td><td>(\d+)</td>", page)
    return int(m.group(1)) if m else -1


doc = json.dumps([{"user": f"user-{i}", "x": i * 3, "y": i * 7, "color": "#ff8800"} for i in range(50)])
blob = bytes(range(256)) * 16

comp_before, infl_before = counter("compressions"), counter("inflations")
with connect(URL) as a, connect(URL, compression=None) as plain, connect(URL) as b:
    exts = [type(e).__name__ for e in a.protocol.extensions]
    check("permessage-deflate negotiated", any(isinstance(e, PerMessageDeflate) for e in a.protocol.extensions), exts)
    check("client without compression gets no extension", plain.protocol.extensions == [])

    # a -> room (compressed by the client), b <- room (compressed by the daemon)
    a.send(doc)
    for who, ws in (("a", a), ("b", b), ("plain", plain)):
        got = ws.recv(timeout=5)
        check(f"text reaches {who} intact", got == doc, len(got) if isinstance(got, str) else type(got))
    b.send(blob)
    for who, ws in (("a", a), ("b", b), ("plain", plain)):
        got = ws.recv(timeout=5)
        check(f"binary reaches {who} as binary", got == blob, type(got))
    # A plain client's message reaches deflate clients too.
    plain.send("from plain " + "x" * 300)
    for who, ws in (("a", a), ("b", b), ("plain", plain)):
        got = ws.recv(timeout=5)
        check(f"plain client's text reaches {who}", got == "from plain " + "x" * 300)

check("daemon inflated the client's compressed messages", counter("inflations") - infl_before >= 2)
check("daemon compressed once per broadcast", counter("compressions") - comp_before == 3,
      counter("compressions") - comp_before)
print(f"python websockets: {passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
