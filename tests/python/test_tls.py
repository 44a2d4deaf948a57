"""TLS end to end ([tls] cert_file, key_file): wss:// and HTTPS on the daemon's one listener.

At start a temp dir gets a fresh test CA and a server certificate for localhost / 127.0.0.1
signed by it (Python `cryptography`), plus a second, unrelated key. A daemon is started with
[tls] on each I/O driver (io_uring and epoll; --shards 2, a free port, `config check`ed first)
and checked with independent clients that trust only the test CA:
  - Python `websockets` over wss://: a raw room (two clients, echo to both, a 200 kB message,
    permessage-deflate negotiated over TLS), the envelope protocol (welcome, subscribe,
    publish, ack, message);
  - `curl --cacert` on /healthz, / and the HTTP API (GET /api/rooms, POST /api/publish received
    by a wss:// subscriber);
  - Python `ssl`: TLS 1.3 and TLS 1.2 each negotiate ALPN http/1.1; a client that does not
    trust the CA fails its handshake; after the close handshake the server's close_notify
    arrives (a clean TLS EOF, not a ragged one);
  - a plain HTTP request on the TLS port gets a plain-text 400, garbage gets the connection
    closed, and the daemon keeps serving (no panic);
and start-up refusals: a missing certificate file, a certificate whose key does not match, a
[tls] without key_file: `config check` and the daemon exit non-zero naming the key; and SIGHUP
re-reads the certificate files (new connections get the new certificate, open ones stay).

Usage: python tests/python/test_tls.py
  SHARDCAST_BIN   daemon binary (default: target/release/shardcast of this repository)
Prints one line per check and a closing 'tls: N passed, N failed'; exits non-zero on any
failure. Daemon logs: target/python-tls-<driver>.log, target/python-tls-reload.log.
"""

import datetime
import ipaddress
import json
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import traceback

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from websockets.sync.client import connect

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
BIN = os.environ.get("SHARDCAST_BIN") or os.path.join(REPO, "target", "release", "shardcast")
TIMEOUT = 5.0
API_KEY = "tls-test-key"
DRIVERS = ("io_uring", "epoll")

passed = failed = 0


def check(name, cond, detail=""):
    global passed, failed
    if cond:
        passed += 1
        print(f"ok   {name}", flush=True)
    else:
        failed += 1
        text = detail if isinstance(detail, str) else repr(detail)
        print(f"FAIL {name} {text[:700]}", flush=True)
    return bool(cond)


def room(prefix):
    return f"{prefix}-{random.getrandbits(32):08x}"


# ------------------------------------------------------------------------------ test PKI

def pem_key(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_pki(d):
    """A CA, a server certificate it signs (localhost, 127.0.0.1), and an unrelated key."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "shardcast test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key, cert = leaf(ca_key, ca_name, now)
    key2, cert2 = leaf(ca_key, ca_name, now)
    files = {
        "ca": ca.public_bytes(serialization.Encoding.PEM),
        "cert": cert.public_bytes(serialization.Encoding.PEM),
        "key": pem_key(key),
        "cert2": cert2.public_bytes(serialization.Encoding.PEM),
        "key2": pem_key(key2),
        "other_key": pem_key(ec.generate_private_key(ec.SECP256R1())),
    }
    paths = {}
    for name, data in files.items():
        paths[name] = os.path.join(d, f"{name}.pem")
        with open(paths[name], "wb") as f:
            f.write(data)
    return paths


def leaf(ca_key, ca_name, now):
    """A server certificate for localhost / 127.0.0.1 signed by the CA, and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    return key, cert


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(d, name, port, tls_lines):
    path = os.path.join(d, f"{name}.toml")
    with open(path, "w") as f:
        f.write(f'[server]\nlisten = "127.0.0.1:{port}"\nshards = 2\n'
                f'[api]\nkey = "{API_KEY}"\n[admin]\nlisten = ""\n[tls]\n{tls_lines}')
    return path


class Daemon:
    def __init__(self, d, pki, driver, tag=None):
        self.driver, self.port, self.proc = driver, free_port(), None
        self.tag = tag or driver
        self.path = write_config(d, f"tls-{driver}", self.port,
                                 f'cert_file = "{pki["cert"]}"\nkey_file = "{pki["key"]}"\n')

    def start(self):
        chk = subprocess.run([BIN, "config", "check", "--config", self.path], capture_output=True,
                             text=True, timeout=30)
        if not check(f"[{self.driver}] config check accepts [tls]", chk.returncode == 0, chk.stderr):
            return False
        self.log = open(os.path.join(REPO, "target", f"python-tls-{self.tag}.log"), "wb")
        self.proc = subprocess.Popen([BIN, "--config", self.path, "--io-driver", self.driver],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        end = time.monotonic() + 15
        while time.monotonic() < end and self.proc.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return True
            except OSError:
                time.sleep(0.05)
        return check(f"[{self.driver}] daemon listening", False, f"exit {self.proc.poll()}")

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        if self.alive():
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc:
            self.log.close()


# ------------------------------------------------------------------------------------- tests

def client_ctx(pki, version=None):
    ctx = ssl.create_default_context(cafile=pki["ca"])
    if version:
        ctx.minimum_version = ctx.maximum_version = version
    return ctx


def test_raw_room(d, pki):
    ctx = client_ctx(pki)
    url = f"wss://localhost:{d.port}/ws/{room('tls')}"
    with connect(url, ssl=ctx, open_timeout=TIMEOUT) as a, \
            connect(url, ssl=ctx, open_timeout=TIMEOUT) as b:
        a.send("hello over tls")
        got = (a.recv(timeout=TIMEOUT), b.recv(timeout=TIMEOUT))
        check(f"[{d.driver}] wss raw room: echo to sender and member", got == ("hello over tls",) * 2, got)
        big = os.urandom(200_000)
        b.send(big)
        got = (a.recv(timeout=TIMEOUT), b.recv(timeout=TIMEOUT))
        check(f"[{d.driver}] wss raw room: 200 kB binary message both ways", got == (big, big),
              [len(x) for x in got])
        ext = a.response.headers.get("Sec-WebSocket-Extensions", "")
        check(f"[{d.driver}] permessage-deflate negotiated over TLS", "permessage-deflate" in ext, ext)


def test_envelope(d, pki):
    ctx = client_ctx(pki)
    r = room("tls-env")
    with connect(f"wss://localhost:{d.port}/ws", ssl=ctx, subprotocols=["shardcast.v1.json"],
                 open_timeout=TIMEOUT) as e:
        welcome = json.loads(e.recv(timeout=TIMEOUT))
        check(f"[{d.driver}] wss envelope: welcome", welcome.get("op") == "welcome", welcome)
        e.send(json.dumps({"op": "subscribe", "room": r}))
        sub = json.loads(e.recv(timeout=TIMEOUT))
        check(f"[{d.driver}] wss envelope: subscribed", sub.get("op") == "subscribed", sub)
        e.send(json.dumps({"op": "publish", "room": r, "data": {"n": 1}, "id": 7}))
        frames = [json.loads(e.recv(timeout=TIMEOUT)) for _ in range(2)]
        ops = sorted(f["op"] for f in frames)
        msg = next((f for f in frames if f["op"] == "message"), {})
        check(f"[{d.driver}] wss envelope: ack and message", ops == ["ack", "message"]
              and msg.get("data") == {"n": 1} and msg.get("seq") == 1, frames)
        # The HTTP API over HTTPS publishes into the same room.
        body = json.dumps({"room": r, "data": {"from": "curl"}})
        out = curl(d, pki, "/api/publish", "-X", "POST", "-H", f"Authorization: Bearer {API_KEY}",
                   "-H", "Content-Type: application/json", "--data-binary", body)
        check(f"[{d.driver}] curl POST https /api/publish", out.returncode == 0
              and json.loads(out.stdout or "{}").get("seq") == 2, (out.returncode, out.stdout, out.stderr))
        got = json.loads(e.recv(timeout=TIMEOUT))
        check(f"[{d.driver}] the wss subscriber gets the API's message",
              got.get("data") == {"from": "curl"} and got.get("seq") == 2, got)


def curl(d, pki, path, *extra):
    return subprocess.run(["curl", "-sS", "--max-time", "5", "--cacert", pki["ca"], *extra,
                           f"https://localhost:{d.port}{path}"], capture_output=True, text=True,
                          timeout=20)


def test_https(d, pki):
    out = curl(d, pki, "/healthz")
    check(f"[{d.driver}] curl --cacert https /healthz", out.returncode == 0 and out.stdout == "ok\n",
          (out.returncode, out.stdout, out.stderr))
    out = curl(d, pki, "/status")
    check(f"[{d.driver}] curl https /status (status page)", out.returncode == 0 and "shardcast" in out.stdout,
          (out.returncode, out.stdout[:200], out.stderr))
    out = curl(d, pki, "/api/rooms", "-H", f"Authorization: Bearer {API_KEY}")
    check(f"[{d.driver}] curl https /api/rooms", out.returncode == 0 and "rooms" in json.loads(out.stdout),
          (out.returncode, out.stdout, out.stderr))
    out = curl(d, pki, "/api/rooms")
    check(f"[{d.driver}] https /api/rooms without the key: 401", '"unauthorized"' in out.stdout, out.stdout)
    out = subprocess.run(["curl", "-sS", "--max-time", "5", f"https://localhost:{d.port}/healthz"],
                         capture_output=True, text=True, timeout=20)
    check(f"[{d.driver}] curl without the test CA refuses the certificate", out.returncode == 60,
          (out.returncode, out.stderr))


def tls_socket(d, ctx, **kw):
    raw = socket.create_connection(("127.0.0.1", d.port), timeout=TIMEOUT)
    return ctx.wrap_socket(raw, server_hostname="localhost", **kw)


def test_versions_and_alpn(d, pki):
    for v in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
        ctx = client_ctx(pki, v)
        ctx.set_alpn_protocols(["h2", "http/1.1"])
        with tls_socket(d, ctx) as s:
            check(f"[{d.driver}] {v.name}: handshake, ALPN http/1.1",
                  s.version() == v.name.replace("v1_", "v1.") and s.selected_alpn_protocol() == "http/1.1",
                  (s.version(), s.selected_alpn_protocol()))
    try:
        with tls_socket(d, ssl.create_default_context()):
            ok = False
    except ssl.SSLCertVerificationError:
        ok = True
    check(f"[{d.driver}] a client without the test CA fails verification", ok)


def test_close_notify(d, pki):
    """Close handshake on a raw TLS socket, then read to the end: a clean EOF is close_notify."""
    s = tls_socket(d, client_ctx(pki), suppress_ragged_eofs=False)
    s.sendall(f"GET /ws/{room('tls-close')} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
              "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
              "Sec-WebSocket-Version: 13\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(4096)
    check(f"[{d.driver}] raw TLS upgrade: 101", head.startswith(b"HTTP/1.1 101"), head[:80])
    # A masked close frame, code 1000.
    mask = os.urandom(4)
    payload = bytes(b ^ mask[i % 4] for i, b in enumerate((1000).to_bytes(2, "big")))
    s.sendall(bytes([0x88, 0x80 | 2]) + mask + payload)
    rest, clean = head.split(b"\r\n\r\n", 1)[1], None
    try:
        while True:
            chunk = s.recv(4096)
            if not chunk:
                clean = True
                break
            rest += chunk
    except ssl.SSLEOFError:
        clean = False
    except OSError as e:
        clean = repr(e)
    s.close()
    check(f"[{d.driver}] close frame 1000 echoed", rest[:4] == b"\x88\x02\x03\xe8", rest[:8])
    check(f"[{d.driver}] the server ends with close_notify (clean TLS EOF)", clean is True, clean)


def test_plain_on_tls_port(d, pki):
    with socket.create_connection(("127.0.0.1", d.port), timeout=TIMEOUT) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    check(f"[{d.driver}] plain HTTP on the TLS port: 400 in plain text",
          data.startswith(b"HTTP/1.1 400") and b"TLS" in data, data[:120])
    out = subprocess.run(["curl", "-sS", "--max-time", "5", "-o", "/dev/null", "-w", "%{http_code}",
                          f"http://127.0.0.1:{d.port}/healthz"], capture_output=True, text=True, timeout=20)
    check(f"[{d.driver}] curl http:// on the TLS port: 400", out.stdout == "400", (out.stdout, out.stderr))
    with socket.create_connection(("127.0.0.1", d.port), timeout=TIMEOUT) as s:
        s.sendall(b"\x16\x03\x01\x00\x05garbage-that-is-not-a-client-hello" * 3)
        try:
            data = s.recv(4096)
            while s.recv(4096):
                pass
            closed = True
        except ConnectionResetError:
            data, closed = b"", True
    check(f"[{d.driver}] garbage TLS: an alert (or nothing), then closed",
          closed and (data == b"" or data[:1] == b"\x15"), data[:16])
    out = curl(d, pki, "/healthz")
    check(f"[{d.driver}] daemon still serving after bad clients", d.alive() and out.stdout == "ok\n",
          (d.alive(), out.stdout, out.stderr))


def served_cert(d, pki):
    with tls_socket(d, client_ctx(pki)) as s:
        return s.getpeercert(binary_form=True)


def pem_der(path):
    with open(path, "rb") as f:
        return x509.load_pem_x509_certificate(f.read()).public_bytes(serialization.Encoding.DER)


def wait_log(d, needle, timeout=10):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with open(d.log.name, "rb") as f:
            if needle in f.read():
                return True
        time.sleep(0.05)
    return False


def test_reload(tmp, pki):
    """SIGHUP re-reads the certificate files: new connections get the new certificate, open
    ones stay up."""
    d = Daemon(tmp, pki, "io_uring", tag="reload")
    cert, key = os.path.join(tmp, "live-cert.pem"), os.path.join(tmp, "live-key.pem")
    shutil.copy(pki["cert"], cert)
    shutil.copy(pki["key"], key)
    d.path = write_config(tmp, "tls-reload", d.port, f'cert_file = "{cert}"\nkey_file = "{key}"\n')
    if not d.start():
        return
    try:
        check("[io_uring] reload: serves the first certificate", served_cert(d, pki) == pem_der(pki["cert"]))
        url = f"wss://localhost:{d.port}/ws/{room('tls-reload')}"
        with connect(url, ssl=client_ctx(pki), open_timeout=TIMEOUT) as ws:
            shutil.copy(pki["cert2"], cert)
            shutil.copy(pki["key2"], key)
            d.proc.send_signal(signal.SIGHUP)
            check("[io_uring] reload: SIGHUP: the daemon says it reloaded", wait_log(d, b"reloaded"))
            check("[io_uring] reload: new connections get the new certificate",
                  served_cert(d, pki) == pem_der(pki["cert2"]))
            ws.send("still here")
            check("[io_uring] reload: an open wss connection is kept", ws.recv(timeout=TIMEOUT) == "still here")
            # A bad file on reload: refused, the certificate in force stays.
            with open(cert, "w") as f:
                f.write("not a certificate\n")
            d.proc.send_signal(signal.SIGHUP)
            check("[io_uring] reload: a bad cert_file is refused, naming tls.cert_file",
                  wait_log(d, b"reload refused") and wait_log(d, b"tls.cert_file"))
            check("[io_uring] reload: the previous certificate stays in force",
                  d.alive() and served_cert(d, pki) == pem_der(pki["cert2"]))
    finally:
        d.stop()


def test_refusals(tmp, pki):
    port = free_port()
    cases = [
        ("missing-cert", f'cert_file = "{tmp}/nope.pem"\nkey_file = "{pki["key"]}"\n', "tls.cert_file"),
        ("wrong-key", f'cert_file = "{pki["cert"]}"\nkey_file = "{pki["other_key"]}"\n', "tls.key_file"),
        ("no-key", f'cert_file = "{pki["cert"]}"\n', "tls.key_file"),
        ("key-as-cert", f'cert_file = "{pki["key"]}"\nkey_file = "{pki["key"]}"\n', "tls.cert_file"),
    ]
    for name, lines, key in cases:
        path = write_config(tmp, name, port, lines)
        chk = subprocess.run([BIN, "config", "check", "--config", path], capture_output=True, text=True,
                             timeout=30)
        check(f"config check refuses {name}, naming {key}", chk.returncode != 0 and key in chk.stderr,
              (chk.returncode, chk.stderr))
        run = subprocess.run([BIN, "--config", path], capture_output=True, text=True, timeout=30)
        check(f"the daemon refuses to start with {name} (exit {run.returncode})",
              run.returncode != 0 and key in run.stderr and "panick" not in run.stderr,
              (run.returncode, run.stderr[-300:]))


def main():
    if not os.access(BIN, os.X_OK):
        print(f"FAIL daemon binary {BIN} not found (build it: cargo build --release, or set SHARDCAST_BIN)")
        sys.exit(1)
    tmp = tempfile.mkdtemp(prefix="shardcast-tls-")
    daemons = []
    try:
        pki = make_pki(tmp)
        run("refusals", lambda: test_refusals(tmp, pki))
        run("certificate reload (SIGHUP)", lambda: test_reload(tmp, pki))
        for drv in DRIVERS:
            d = Daemon(tmp, pki, drv)
            daemons.append(d)
            if not d.start():
                continue
            for name, fn in [("https", lambda: test_https(d, pki)),
                             ("raw room", lambda: test_raw_room(d, pki)),
                             ("envelope", lambda: test_envelope(d, pki)),
                             ("versions and ALPN", lambda: test_versions_and_alpn(d, pki)),
                             ("close_notify", lambda: test_close_notify(d, pki)),
                             ("plain HTTP and garbage", lambda: test_plain_on_tls_port(d, pki))]:
                run(f"{name} [{drv}]", fn)
            check(f"[{drv}] daemon alive at the end", d.alive())
    finally:
        for d in daemons:
            d.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"tls: {passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


def run(name, fn):
    print(f"--- {name}", flush=True)
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - a daemon bug fails the test, the suite goes on
        check(f"{name}: no exception", False, f"{e!r}\n{traceback.format_exc()[-600:]}")


if __name__ == "__main__":
    main()
