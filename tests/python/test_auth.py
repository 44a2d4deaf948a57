"""Authentication and authorization end to end (the auth spec: [auth], [[rooms.class]], origins),
against real daemons started by this script, with tokens signed by an independent library (PyJWT
with `cryptography`).

At start a temp dir gets freshly generated key material: an RSA key (RS256), an EC P-256 key
(ES256), an Ed25519 key (EdDSA), an HS256 secret and a JWKS of two RSA keys (kids k1, k2). Only
public keys and the secret are written there (private keys stay in this process); the dir is
removed at exit. The daemon configs are tests/python/auth-*.toml with @KEYS@ (and @HS256_SECRET@)
filled in; each daemon runs with --shards 2 on a free port, `config check`ed first. The token
refusal and acceptance tests run against one daemon per I/O driver (io_uring and epoll).

Usage: python tests/python/test_auth.py [TEST_NAME_SUBSTRING ...]
  SHARDCAST_BIN   daemon binary (default: target/release/shardcast of this repository)
Prints one line per check, a summary line per test and a closing 'auth: N passed, N failed';
exits non-zero on any failure. Daemon logs: target/python-auth-<config>-<driver>.log.
"""

import base64
import hashlib
import hmac
import http.client
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.parse

import cbor2
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
BIN = os.environ.get("SHARDCAST_BIN") or os.path.join(REPO, "target", "release", "shardcast")
TIMEOUT = 5.0  # every recv is bounded: a daemon bug fails a check instead of hanging
JSON_PROTO, CBOR_PROTO = "shardcast.v1.json", "shardcast.v1.cbor"
API_KEY = "test-key"
AUD, ISS = "shardcast-tests", "https://issuer.shardcast.test"  # auth-jwt.toml
LEEWAY = 1.0  # auth-jwt.toml leeway
DRIVERS = ("io_uring", "epoll")

passed = failed = 0
OPEN = []  # connections of the running test, closed after it


# ---------------------------------------------------------------------------------------- checks

def check(name, cond, detail=""):
    global passed, failed
    if cond:
        passed += 1
        print(f"ok   {name}", flush=True)
    else:
        failed += 1
        text = detail if isinstance(detail, str) else repr(detail)
        print(f"FAIL {name} {text[:700]}{'...' if len(text) > 700 else ''}", flush=True)
    return bool(cond)


def room(prefix):
    return f"{prefix}-{random.getrandbits(32):08x}"


def is_int(x):
    return type(x) is int


# ----------------------------------------------------------------------------------- key material

class Keys:
    """Keys generated for this run. Private keys are kept in memory only."""

    def __init__(self, d):
        self.dir = d
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.rsa_other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.ec_other = ec.generate_private_key(ec.SECP256R1())
        self.ed = ed25519.Ed25519PrivateKey.generate()
        self.ed_other = ed25519.Ed25519PrivateKey.generate()
        self.k1 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.k2 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.hs = secrets.token_hex(32)  # 64 characters, TOML-safe
        self.hs_other = secrets.token_hex(32)
        self.rsa_pub_pem = pub_pem(self.rsa)
        self.write("rsa.pub.pem", self.rsa_pub_pem)
        self.write("ec.pub.pem", pub_pem(self.ec))
        self.write("ed.pub.pem", pub_pem(self.ed))
        self.write("hs256.secret", (self.hs + "\n").encode())  # the trailing newline is trimmed
        jwks = {"keys": [jwk(self.k1, "k1"), jwk(self.k2, "k2")]}
        self.write("jwks.json", json.dumps(jwks, indent=1).encode())

    def write(self, name, data):
        with open(os.path.join(self.dir, name), "wb") as f:
            f.write(data)


def pub_pem(key):
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def jwk(key, kid):
    d = jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return {"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": d["n"], "e": d["e"]}


def b64url(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def b64json(obj):
    return b64url(json.dumps(obj, separators=(",", ":")).encode())


def sign(payload, key, alg, kid=None):
    return jwt.encode(payload, key, algorithm=alg, headers={"kid": kid} if kid else None)


def unsigned_none(payload):
    """alg "none", crafted by hand: header.payload. with an empty signature."""
    return f"{b64json({'alg': 'none', 'typ': 'JWT'})}.{b64json(payload)}."


def hs256_over(signing_input, secret_bytes):
    """header.payload.signature with a correct HS256 signature over any (even broken) parts."""
    mac = hmac.new(secret_bytes, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(mac)}"


def hs256_by_hand(payload, secret_bytes, kid=None):
    """HS256 with any bytes as the HMAC secret (PyJWT refuses a PEM there, on purpose)."""
    header = {"alg": "HS256", "typ": "JWT", **({"kid": kid} if kid else {})}
    return hs256_over(f"{b64json(header)}.{b64json(payload)}", secret_bytes)


# ---------------------------------------------------------------------------------------- daemons

class Daemon:
    def __init__(self, config, driver, claim_defaults):
        self.config, self.driver, self.claim_defaults = config, driver, claim_defaults
        self.proc = None
        self.error = None
        self.port = None

    @property
    def name(self):
        return f"{self.config}[{self.driver or 'auto'}]"

    @property
    def addr(self):
        return f"127.0.0.1:{self.port}"

    def start(self, keys):
        with open(os.path.join(HERE, f"{self.config}.toml")) as f:
            text = f.read().replace("@KEYS@", keys.dir).replace("@HS256_SECRET@", keys.hs)
        path = os.path.join(keys.dir, f"{self.config}.toml")
        with open(path, "w") as f:
            f.write(text)
        chk = subprocess.run([BIN, "config", "check", "--config", path], capture_output=True, text=True,
                             timeout=30)
        if not check(f"{self.name}: `config check` accepts {self.config}.toml", chk.returncode == 0,
                     (chk.returncode, chk.stdout[-400:], chk.stderr[-400:])):
            self.error = f"config check failed: {chk.stderr.strip()[-300:]}"
            return
        self.port = free_port()
        args = [BIN, "--config", path, "--listen", self.addr, "--shards", "2"]
        if self.driver:
            args += ["--io-driver", self.driver]
        log = os.path.join(REPO, "target", f"python-auth-{self.config}-{self.driver or 'auto'}.log")
        self.log = open(log, "wb")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)
        end = time.monotonic() + 15
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                break
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        self.error = f"daemon did not come up (exit {self.proc.poll()}); see {log}"
        check(f"{self.name}: daemon listening", False, self.error)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc:
            self.log.close()

    def claims(self, sub="ada", ttl=120, **extra):
        """A claim set valid for this daemon (aud/iss when it requires them); extra=None drops one."""
        now = int(time.time())
        c = {"sub": sub, "iat": now, "exp": now + ttl, **self.claim_defaults, **extra}
        return {k: v for k, v in c.items() if v is not None}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


KEYS = None
DAEMONS = {}
CLAIMS_FOR = {"auth-jwt": {"aud": AUD, "iss": ISS}}


def daemon(config, driver=None):
    """The running daemon for config (started on first use, kept until the end)."""
    key = (config, driver)
    if key not in DAEMONS:
        d = Daemon(config, driver, CLAIMS_FOR.get(config, {}))
        DAEMONS[key] = d
        d.start(KEYS)
    d = DAEMONS[key]
    if d.error:
        raise AssertionError(f"{d.name} unavailable: {d.error}")
    return d


# ---------------------------------------------------------------------------------------- clients

def upgrade(d, path, headers=None, envelope=None, source=None):
    """A hand-written WebSocket upgrade: (status, lower-case headers, body text).

    envelope: offer shardcast.v1.json (default: when the path is /ws or /ws?...)."""
    if envelope is None:
        envelope = path == "/ws" or path.startswith("/ws?")
    lines = [f"GET {path} HTTP/1.1", f"Host: {d.addr}", "Upgrade: websocket", "Connection: Upgrade",
             "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version: 13"]
    if envelope:
        lines.append(f"Sec-WebSocket-Protocol: {JSON_PROTO}")
    for k, v in (headers or {}).items():
        lines.append(f"{k}: {v}")
    req = "\r\n".join(lines) + "\r\n\r\n"
    src = (source, 0) if source else None
    with socket.create_connection(("127.0.0.1", d.port), timeout=TIMEOUT, source_address=src) as s:
        s.sendall(req.encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        hl = head.decode("latin-1").split("\r\n")
        try:
            status = int(hl[0].split()[1])
        except (IndexError, ValueError):
            return None, {}, f"no HTTP status line: {data[:200]!r}"
        hdrs = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in hl[1:])}
        if status != 101:
            want = int(hdrs.get("content-length", "-1"))
            try:
                while want < 0 or len(body) < want:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    body += chunk
            except socket.timeout:
                pass
    return status, hdrs, body.decode("utf-8", "replace")


def one_line(body, text):
    return body in (text, text + "\n")


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def ws_connect(url, **kw):
    kw = {"proxy": None, "open_timeout": TIMEOUT, "close_timeout": 2, "max_queue": None,
          "ping_interval": None, "legacy": True, **kw}
    ws = connect(url, **kw)
    OPEN.append(ws)
    return ws


def raw_client(d, r, token=None, **kw):
    headers = bearer(token) if token else None
    return ws_connect(f"ws://{d.addr}/ws/{r}", additional_headers=headers, **kw)


class Client:
    """An envelope connection (JSON by default): send(dict) / recv() -> dict."""

    def __init__(self, d, token=None, fmt="json", query="", **kw):
        self.fmt = fmt
        url = f"ws://{d.addr}/ws" + (f"?{query}" if query else "")
        self.ws = ws_connect(url, subprotocols=[JSON_PROTO if fmt == "json" else CBOR_PROTO],
                             additional_headers=bearer(token) if token else None, **kw)
        self.welcome = self.recv()
        self.conn = self.welcome.get("conn") if isinstance(self.welcome, dict) else None

    @property
    def shard(self):
        return self.conn & 1023 if is_int(self.conn) else None

    def send(self, frame):
        self.ws.send(json.dumps(frame) if self.fmt == "json" else cbor2.dumps(frame))

    def recv(self, timeout=TIMEOUT):
        msg = self.ws.recv(timeout)
        return json.loads(msg) if self.fmt == "json" else cbor2.loads(msg)

    def request(self, frame, timeout=TIMEOUT):
        self.send(frame)
        return self.recv(timeout)

    def drain(self, secs):
        out, end = [], time.monotonic() + secs
        while (left := end - time.monotonic()) > 0:
            try:
                out.append(self.recv(left))
            except TimeoutError:
                break
        return out

    def until(self, pred, timeout=TIMEOUT):
        """Read until pred(frame): (frame, frames before it); (None, frames) on timeout."""
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


def open_on_shard(d, token, want, tries=40, **kw):
    """An envelope client on shard `want` (conn & 1023)."""
    spare = []
    for _ in range(tries):
        c = Client(d, token, **kw)
        if c.shard == want:
            break
        spare.append(c)
    else:
        raise AssertionError(f"no connection landed on shard {want} in {tries} tries")
    for s in spare:
        s.close()
    return c


def close_quietly(ws):
    t = threading.Thread(target=ws.close, daemon=True)
    t.start()
    t.join(3)


def close_all():
    while OPEN:
        close_quietly(OPEN.pop())


def await_close(ws_recv, timeout):
    """Read until the server closes: (code, reason, wall-clock time of the close, frames before)."""
    frames, end = [], time.monotonic() + timeout
    try:
        while (left := end - time.monotonic()) > 0:
            frames.append(ws_recv(left))
        return "no close", None, None, frames
    except ConnectionClosed as e:
        at = time.time()
        return (e.rcvd.code if e.rcvd else None), (e.rcvd.reason if e.rcvd else None), at, frames
    except TimeoutError:
        return "no close", None, None, frames


def sync_ping(ws):
    """Wait for a pong: the server has read every frame sent before it on this connection."""
    return ws.ping().wait(TIMEOUT)


def api(d, method, path, body=None, token=None):
    """(status, lower-case headers, parsed JSON or None, raw body) of an HTTP API request."""
    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=TIMEOUT)
    headers = {}
    data = None if body is None else json.dumps(body).encode()
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if data is not None:
        headers["Content-Type"] = "application/json"
    try:
        conn.request(method, path, body=data, headers=headers)
        r = conn.getresponse()
        raw = r.read()
        hdrs = {k.lower(): v for k, v in r.getheaders()}
        status = r.status
    finally:
        conn.close()
    try:
        parsed = json.loads(raw)
    except ValueError:
        parsed = None
    return status, hdrs, parsed, raw.decode("utf-8", "replace")


def error_frame(code, reason, id_):
    return {"op": "error", "code": code, "reason": reason, "id": id_}


def forbidden(action, id_):
    return error_frame("forbidden", f"not allowed to {action} in this room", id_)


# ------------------------------------------------------------------------------- 401: the refusals

def refusal_cases(d):
    """(label, token or None, expected 401 body) for the main jwt daemon."""
    k = KEYS
    c = d.claims
    now = int(time.time())
    big_info = {"x": "a" * 1100}
    good = sign(c(), k.hs, "HS256")
    h, p, s = good.split(".")
    other_payload = b64json(c(sub="mallory"))
    return [
        ("malformed: one part 'abc'", "abc", "token malformed"),
        ("malformed: 'a.b.c' garbage", "a.b.c", "token malformed"),
        ("malformed: four parts", f"{h}.{p}.{s}.{s}", "token malformed"),
        ("malformed: header not JSON", f"{b64url(b'not json')}.{p}.{s}", "token malformed"),
        ("malformed: header without alg", f"{b64json({'typ': 'JWT'})}.{p}.{s}", "token malformed"),
        # Correctly signed over the broken part, so that only the shape is wrong:
        ("malformed: payload not base64url (signed)", hs256_over(f"{h}.@@@", k.hs.encode()), "token malformed"),
        ("malformed: payload not JSON (signed)", hs256_over(f"{h}.{b64url(b'not json')}", k.hs.encode()),
         "token malformed"),
        ("malformed: payload a JSON array (signed)", hs256_over(f"{h}.{b64url(b'[1]')}", k.hs.encode()),
         "token malformed"),
        ("expired (60 s ago)", sign(c(exp=now - 60), k.hs, "HS256"), "token expired"),
        ("nbf in the future (+60 s)", sign(c(nbf=now + 60), k.rsa, "RS256"), "token not yet valid"),
        ("wrong aud", sign(c(aud="other-app"), k.hs, "HS256"), "wrong audience"),
        ("aud list without ours", sign(c(aud=["a", "b"]), k.ec, "ES256"), "wrong audience"),
        ("aud missing", sign(c(aud=None), k.hs, "HS256"), "wrong audience"),
        ("wrong iss", sign(c(iss="https://evil.test"), k.hs, "HS256"), "wrong issuer"),
        ("iss missing", sign(c(iss=None), k.ed, "EdDSA"), "wrong issuer"),
        ("alg none (crafted)", unsigned_none(c()), "algorithm not allowed"),
        ("bad signature: HS256 with another secret", sign(c(), k.hs_other, "HS256"), "bad signature"),
        ("bad signature: RS256 with another key", sign(c(), k.rsa_other, "RS256"), "bad signature"),
        ("bad signature: ES256 with another key", sign(c(), k.ec_other, "ES256"), "bad signature"),
        ("bad signature: EdDSA with another key", sign(c(), k.ed_other, "EdDSA"), "bad signature"),
        ("bad signature: payload swapped", f"{h}.{other_payload}.{s}", "bad signature"),
        ("missing sub", sign(c(sub=None), k.hs, "HS256"), "missing claim: sub"),
        ("empty sub", sign(c(sub=""), k.rsa, "RS256"), "missing claim: sub"),
        ("missing exp", sign(c(exp=None), k.hs, "HS256"), "missing claim: exp"),
        ("info > 1 KiB", sign(c(info=big_info), k.hs, "HS256"), "info too large"),
    ]


def expect_401(label, d, path, headers, reason):
    status, hdrs, body = upgrade(d, path, headers)
    check(f"{d.name} {path} {label}: 401 + WWW-Authenticate + text/plain + body {reason!r}",
          status == 401 and hdrs.get("www-authenticate") == 'Bearer error="invalid_token"'
          and hdrs.get("content-type") == "text/plain; charset=utf-8" and one_line(body, reason),
          (status, hdrs.get("www-authenticate"), hdrs.get("content-type"), body))


def expect_101(label, d, path, headers):
    status, hdrs, body = upgrade(d, path, headers)
    check(f"{d.name} {path} {label}: 101", status == 101, (status, body[:200]))


PATHS = ("/ws/lobby", "/ws")


def test_401_reasons(driver):
    d = daemon("auth-jwt", driver)
    for path in PATHS:
        expect_401("no token at all", d, path, {}, "token missing")
        for label, token, reason in refusal_cases(d):
            expect_401(label, d, path, bearer(token), reason)


def test_401_algorithm_confusion(driver):
    d = daemon("auth-rsa-only", driver)
    forged = hs256_by_hand(d.claims(), KEYS.rsa_pub_pem)
    forged_trimmed = hs256_by_hand(d.claims(), KEYS.rsa_pub_pem.strip())
    for path in PATHS:
        expect_401("HS256 signed with the RSA public key PEM as secret", d, path, bearer(forged),
                   "algorithm not allowed")
        expect_401("HS256 signed with the trimmed PEM", d, path, bearer(forged_trimmed), "algorithm not allowed")
        expect_401("alg none (crafted)", d, path, bearer(unsigned_none(d.claims())), "algorithm not allowed")
        expect_401("ES256 (no EC key configured)", d, path, bearer(sign(d.claims(), KEYS.ec, "ES256")),
                   "algorithm not allowed")
        expect_101("RS256 with the configured key (sanity)", d, path, bearer(sign(d.claims(), KEYS.rsa, "RS256")))
        expect_101("a token with aud/iss, none configured: not checked", d, path,
                   bearer(sign(d.claims(aud="any", iss="anyone"), KEYS.rsa, "RS256")))


def test_401_jwks_kid(driver):
    d = daemon("auth-jwks", driver)
    for path in PATHS:
        expect_401("unknown kid k3", d, path, bearer(sign(d.claims(), KEYS.rsa_other, "RS256", kid="k3")),
                   "unknown key id")
        expect_401("no kid (only a JWKS configured)", d, path, bearer(sign(d.claims(), KEYS.k1, "RS256")),
                   "unknown key id")
        expect_401("kid k1 but signed by k2", d, path, bearer(sign(d.claims(), KEYS.k2, "RS256", kid="k1")),
                   "bad signature")
        forged = hs256_by_hand(d.claims(), pub_pem(KEYS.k1), kid="k1")
        expect_401("HS256 with kid k1, k1's PEM as secret (no secret configured)", d, path, bearer(forged),
                   "algorithm not allowed")


def test_401_token_sources(driver):
    d = daemon("auth-jwt", driver)
    good = sign(d.claims(), KEYS.hs, "HS256")
    expired = sign(d.claims(exp=int(time.time()) - 60), KEYS.hs, "HS256")
    dotted = good.replace(".", "%2E")  # the query value is percent-decoded
    for path in PATHS:
        sep = "&" if "?" in path else "?"
        expect_101("token in the Authorization header", d, path, bearer(good))
        expect_101("token in ?token=", d, f"{path}{sep}token={urllib.parse.quote(good, safe='')}", {})
        expect_101("token in ?token= percent-encoded", d, f"{path}{sep}token={dotted}", {})
        expect_101("token in the sc_token cookie", d, path, {"Cookie": f"theme=dark; sc_token={good}"})
        expect_401("expired token in ?token=", d, f"{path}{sep}token={expired}", {}, "token expired")
        expect_401("expired token in the cookie", d, path, {"Cookie": f"sc_token={expired}"}, "token expired")
        expect_401("garbage in ?token=", d, f"{path}{sep}token=abc", {}, "token malformed")
        expect_401("only an unrelated cookie", d, path, {"Cookie": f"session={good}"}, "token missing")
        expect_401("only ?access_token= (not the configured name)", d, f"{path}{sep}access_token={good}", {},
                   "token missing")
        expect_401("bad header + good query: header wins", d, f"{path}{sep}token={good}", bearer("abc"),
                   "token malformed")
        expect_401("expired header + good cookie: header wins", d, path,
                   {**bearer(expired), "Cookie": f"sc_token={good}"}, "token expired")
        expect_101("good header + garbage query: header wins", d, f"{path}{sep}token=abc", bearer(good))
        expect_401("bad query + good cookie: query before cookie", d, f"{path}{sep}token=abc",
                   {"Cookie": f"sc_token={good}"}, "token malformed")


# ---------------------------------------------------------------------------------- accepted tokens

def expect_welcome(label, d, token, sub, exp):
    c = Client(d, token)
    check(f"{d.name} {label}: welcome carries user and exp",
          c.welcome == {"op": "welcome", "conn": c.conn, "user": sub, "exp": exp} and is_int(c.conn), c.welcome)
    x = raw_client(d, room("acc"), token)
    x.send("ping")
    got = x.recv(TIMEOUT)
    check(f"{d.name} {label}: raw room upgrade works (echo)", got == "ping", got)
    c.close()
    close_quietly(x)


def test_accepted_algorithms(driver):
    d = daemon("auth-jwt", driver)
    for alg, key in (("HS256", KEYS.hs), ("RS256", KEYS.rsa), ("ES256", KEYS.ec), ("EdDSA", KEYS.ed)):
        cl = d.claims(sub=f"user-{alg.lower()}")
        expect_welcome(alg, d, sign(cl, key, alg), cl["sub"], cl["exp"])
    cl = d.claims(aud=["other", AUD])
    expect_welcome("aud as a list containing ours", d, sign(cl, KEYS.rsa, "RS256"), "ada", cl["exp"])
    if time.time() % 1 > 0.5:  # align, so that exp = now - at most 0.5 s (inside the 1 s leeway)
        time.sleep(1.01 - time.time() % 1)
    cl = d.claims(exp=int(time.time()))
    status, _, body = upgrade(d, "/ws", bearer(sign(cl, KEYS.hs, "HS256")))
    check(f"{d.name} exp == now is within the leeway: 101", status == 101, (status, body))
    cl = d.claims(nbf=int(time.time()) - 10)
    expect_welcome("nbf in the past", d, sign(cl, KEYS.ed, "EdDSA"), "ada", cl["exp"])


def test_accepted_jwks(driver):
    d = daemon("auth-jwks", driver)
    for kid, key in (("k1", KEYS.k1), ("k2", KEYS.k2)):
        cl = d.claims(sub=f"jwks-{kid}")
        expect_welcome(f"JWKS kid {kid}", d, sign(cl, key, "RS256", kid=kid), cl["sub"], cl["exp"])


# ------------------------------------------------------------------------------------ permissions

ADA_ROOMS = {"subscribe": ["chat:*", "user:{sub}"], "publish": ["chat:*"], "presence": ["chat:*"]}


def tok(d, sub="ada", ttl=120, key=None, alg="HS256", **extra):
    return sign(d.claims(sub=sub, ttl=ttl, **extra), key or KEYS.hs, alg)


def test_permissions_raw():
    d = daemon("auth-jwt")
    ada = tok(d, rooms=ADA_ROOMS)
    for r, label in ((room("news:raw"), "news:* not in subscribe"), ("user:bob", "user:bob ({sub} is ada)")):
        status, _, body = upgrade(d, f"/ws/{r}", bearer(ada))
        check(f"raw {label} -> 403 room not allowed", status == 403 and one_line(body, "room not allowed"),
              (status, body))
    status, _, body = upgrade(d, "/ws/user:ada", bearer(ada))
    check("raw user:ada for sub ada ({sub} expansion) -> 101", status == 101, (status, body))

    # Publish allowed (chat:*): an envelope observer sees the raw message numbered.
    r = room("chat:raw")
    obs = Client(d, tok(d, sub="obs"))
    obs.request({"op": "subscribe", "room": r})
    x = raw_client(d, r, ada)
    x.send("from ada")
    f = obs.recv()
    check("raw publish in chat:* reaches the envelope observer",
          f == {"op": "message", "room": r, "seq": 1, "from": None, "data": "from ada"}, f)

    # Subscribe-only room: first data message closes with 1008 "publish not allowed".
    r = f"user:ada-{random.getrandbits(32):08x}"
    ro = {"subscribe": ["user:{sub}-*"], "publish": ["chat:*"]}
    obs2 = Client(d, tok(d, sub="obs"))
    obs2.request({"op": "subscribe", "room": r})
    y = raw_client(d, r, tok(d, rooms=ro))
    y.send("not allowed")
    code, reason, _, frames = await_close(y.recv, TIMEOUT)
    check("raw subscribe-only: first message -> close 1008 'publish not allowed'",
          code == 1008 and reason == "publish not allowed", (code, reason, frames))
    f = obs2.request({"op": "publish", "room": r, "data": "marker", "id": "m"})
    check("raw subscribe-only: the refused message was not numbered (marker gets seq 1)",
          f == {"op": "ack", "id": "m", "seq": 1} or f == {"op": "message", "room": r, "seq": 1, "from": obs2.conn,
                                                           "data": "marker"}, f)
    rest = obs2.drain(0.3)
    check("raw subscribe-only: observer got nothing from the refused client",
          all(fr.get("data") != "not allowed" for fr in rest + [f]), rest)


def test_permissions_raw_drop():
    d = daemon("auth-drop")
    r = f"user:ada-{random.getrandbits(32):08x}"
    ro = {"subscribe": ["user:{sub}-*"], "publish": []}
    obs = Client(d, tok(d, sub="obs"))
    s = obs.request({"op": "subscribe", "room": r})
    check("drop: observer subscribed", isinstance(s, dict) and s.get("op") == "subscribed", s)
    raw_obs = raw_client(d, r, tok(d, sub="obs"))
    x = raw_client(d, r, tok(d, rooms=ro))
    for i in range(3):
        x.send(f"dropped {i}")
    x.send(b"\x00dropped")
    check("drop: the server read the readonly client's messages (pong after them)", sync_ping(x))
    # A raw client joins at the upgrade and its shard tells the room's home afterwards: wait
    # until the home counts all three members, so the marker is sent to every member's shard.
    admin = tok(d, sub="backend", api=True)
    end, members = time.monotonic() + TIMEOUT, None
    while members != 3 and time.monotonic() < end:
        st, _, body, _ = api(d, "GET", "/api/rooms", token=admin)
        members = next((x["members"] for x in (body or {}).get("rooms", []) if x["room"] == r), None)
    check("drop: the room's home counts the three members", members == 3, members)
    f = obs.request({"op": "publish", "room": r, "data": "marker", "id": "m"})
    rest = obs.drain(0.3)
    msgs = [fr for fr in [f] + rest if fr.get("op") == "message"]
    acks = [fr for fr in [f] + rest if fr.get("op") == "ack"]
    check("drop: the marker is seq 1 (nothing of the readonly client was numbered)",
          acks == [{"op": "ack", "id": "m", "seq": 1}], [f] + rest)
    check("drop: envelope member received only the marker",
          msgs == [{"op": "message", "room": r, "seq": 1, "from": obs.conn, "data": "marker"}], msgs)
    got = raw_obs.recv(TIMEOUT)
    check("drop: raw member's first message is the marker (nothing dropped reached it)", got == "marker", got)
    try:
        more = raw_obs.recv(0.3)
    except TimeoutError:
        more = None
    check("drop: raw member received nothing else", more is None, more)
    try:
        got = x.recv(TIMEOUT)
        check("drop: readonly client still open and receiving (gets the marker)", got == "marker", got)
    except ConnectionClosed as e:
        check("drop: readonly client still open and receiving (gets the marker)", False, repr(e))
    x.send("still dropped")
    check("drop: readonly client still answers pings after more messages", sync_ping(x))


def test_permissions_envelope():
    d = daemon("auth-jwt")
    ada = Client(d, tok(d, rooms=ADA_ROOMS))
    chat, news = room("chat:env"), room("news:env")
    cases = [
        ("subscribe news:*", {"op": "subscribe", "room": news, "id": "s1"}, forbidden("subscribe", "s1")),
        ("subscribe user:bob", {"op": "subscribe", "room": "user:bob", "id": 2}, forbidden("subscribe", 2)),
        ("publish user:ada (subscribe-only)", {"op": "publish", "room": "user:ada", "data": 1, "id": "p"},
         forbidden("publish", "p")),
        ("publish news:*", {"op": "publish", "room": news, "data": "x", "id": ["a", 1]},
         forbidden("publish", ["a", 1])),
        ("presence user:ada (not in presence)", {"op": "presence", "room": "user:ada", "id": "pr"},
         forbidden("presence", "pr")),
        ("history news:*", {"op": "history", "room": news, "id": "h"}, forbidden("history", "h")),
    ]
    for label, frame, want in cases:
        f = ada.request(frame)
        check(f"envelope {label} -> error forbidden with the id", f == want, f)
    f = ada.request({"op": "subscribe", "room": chat})
    check("envelope: connection still open, subscribe chat:* works",
          isinstance(f, dict) and f.get("op") == "subscribed" and f.get("room") == chat, f)
    f = ada.request({"op": "subscribe", "room": "user:ada"})
    check("envelope: subscribe user:ada works ({sub} expansion)",
          isinstance(f, dict) and f.get("op") == "subscribed" and f.get("room") == "user:ada", f)
    ada.send({"op": "publish", "room": chat, "data": "hi", "id": 9})
    got = [ada.recv(), ada.recv()]
    check("envelope: publish chat:* acked and echoed",
          {"op": "ack", "id": 9, "seq": 1} in got and
          {"op": "message", "room": chat, "seq": 1, "from": ada.conn, "data": "hi"} in got, got)
    f = ada.request({"op": "presence", "room": chat})
    check("envelope: presence chat:* answered", isinstance(f, dict) and f.get("op") == "presence", f)
    f = ada.request({"op": "history", "room": chat})
    check("envelope: history chat:* answered",
          isinstance(f, dict) and f.get("op") == "history" and len(f.get("messages", [])) == 1, f)
    f = ada.request({"op": "history", "room": "user:ada", "limit": 0})
    check("envelope: history user:ada (needs subscribe) answered", isinstance(f, dict) and f.get("op") == "history", f)

    # `presence` missing from `rooms` = the subscribe list; a missing `publish` list = nothing.
    rd = Client(d, tok(d, sub="reader", rooms={"subscribe": ["feed:*"]}))
    feed = room("feed:x")
    f = rd.request({"op": "presence", "room": feed})
    check("rooms without presence list: presence follows subscribe (feed:* allowed)",
          isinstance(f, dict) and f.get("op") == "presence", f)
    f = rd.request({"op": "publish", "room": feed, "data": 1, "id": 1})
    check("rooms without publish list: publish forbidden", f == forbidden("publish", 1), f)
    f = rd.request({"op": "presence", "room": chat, "id": 3})
    check("rooms without presence list: presence outside subscribe forbidden", f == forbidden("presence", 3), f)

    # No `rooms` claim, no class: the defaults allow everything.
    anyone = Client(d, tok(d, sub="free"))
    f = anyone.request({"op": "publish", "room": news, "data": 1, "id": "n"})
    check("no rooms claim: publish anywhere (class defaults)", f == {"op": "ack", "id": "n", "seq": 1}, f)

    # CBOR: the same refusal, id as a byte string.
    cb = Client(d, tok(d, rooms=ADA_ROOMS), fmt="cbor")
    f = cb.request({"op": "subscribe", "room": news, "id": b"\x01"})
    check("cbor: subscribe refused -> forbidden with the byte-string id", f == forbidden("subscribe", b"\x01"), f)
    f = cb.request({"op": "history", "room": chat, "limit": 0})
    check("cbor: still open afterwards", isinstance(f, dict) and f.get("op") == "history", f)


def test_mode_none_room_classes():
    d = daemon("auth-none")
    c = Client(d)
    check("mode none: welcome without user/exp", c.welcome == {"op": "welcome", "conn": c.conn}, c.welcome)
    news = room("news:n")
    f = c.request({"op": "subscribe", "room": news})
    check("mode none: news:* subscribe works (anonymous_subscribe)",
          isinstance(f, dict) and f.get("op") == "subscribed", f)
    f = c.request({"op": "publish", "room": news, "data": "x", "id": "np"})
    check("mode none: news:* publish forbidden (anonymous_publish = false)", f == forbidden("publish", "np"), f)
    f = c.request({"op": "history", "room": news, "limit": 0})
    check("mode none: still open after the refusal; history news:* allowed",
          isinstance(f, dict) and f.get("op") == "history", f)
    st, _, body, raw = api(d, "POST", "/api/publish", {"room": news, "data": "from api"}, API_KEY)
    check("mode none: HTTP API publish to news:* is not subject to the class", st == 200, (st, raw))
    f = c.recv()
    check("mode none: ... and reaches the subscriber",
          f == {"op": "message", "room": news, "seq": 1, "from": None, "data": "from api"}, f)

    chat = room("chat:n")
    f = c.request({"op": "subscribe", "room": chat})
    check("mode none: default room subscribe", isinstance(f, dict) and f.get("op") == "subscribed", f)
    c.send({"op": "publish", "room": chat, "data": "open", "id": 1})
    got = [c.recv(), c.recv()]
    check("mode none: default room publish acked and echoed", {"op": "ack", "id": 1, "seq": 1} in got, got)

    x = raw_client(d, news)
    x.send("raw to news")
    code, reason, _, _ = await_close(x.recv, TIMEOUT)
    check("mode none: raw news:* -> first message closes 1008 'publish not allowed'",
          code == 1008 and reason == "publish not allowed", (code, reason))
    y = raw_client(d, room("lobby"))
    y.send("hello")
    got = y.recv(TIMEOUT)
    check("mode none: raw default room still open (echo)", got == "hello", got)

    closed = room("closed:n")
    status, _, body = upgrade(d, f"/ws/{closed}")
    check("mode none: raw closed:* (anonymous_subscribe = false) -> 403 room not allowed",
          status == 403 and one_line(body, "room not allowed"), (status, body))
    for op in ("subscribe", "history", "presence"):
        f = c.request({"op": op, "room": closed, "id": op})
        check(f"mode none: {op} closed:* forbidden", f == forbidden(op, op), f)
    f = c.request({"op": "publish", "room": closed, "data": 1, "id": "cp"})
    check("mode none: publish closed:* forbidden", f == forbidden("publish", "cp"), f)

    quiet = room("quiet:n")
    q1 = Client(d)
    f = q1.request({"op": "subscribe", "room": quiet, "presence": True})
    check("mode none: quiet:* (presence = false) subscribe with presence: true works",
          isinstance(f, dict) and f.get("op") == "subscribed", f)
    f = q1.request({"op": "presence", "room": quiet, "id": "q"})
    check("mode none: presence request in quiet:* forbidden", f == forbidden("presence", "q"), f)
    q2 = Client(d)
    f = q2.request({"op": "subscribe", "room": quiet, "presence": True})
    check("mode none: second quiet:* subscriber", isinstance(f, dict) and f.get("op") == "subscribed", f)
    st, _, _, raw = api(d, "POST", "/api/publish", {"room": quiet, "data": "after"}, API_KEY)
    m, before = q1.until(lambda fr: fr.get("op") == "message")
    check("mode none: no join/leave events in quiet:* (nothing before the next message)",
          m is not None and m.get("data") == "after" and before == [], (m, before))

    noecho = room("noecho:n")
    e = Client(d)
    e.request({"op": "subscribe", "room": noecho})
    f = e.request({"op": "publish", "room": noecho, "data": "mine", "id": "e"})
    check("mode none: noecho:* publish acked", f == {"op": "ack", "id": "e", "seq": 1}, f)
    api(d, "POST", "/api/publish", {"room": noecho, "data": "theirs"}, API_KEY)
    m, before = e.until(lambda fr: fr.get("op") == "message")
    check("mode none: noecho:* (echo_to_sender = false): own message not echoed",
          m == {"op": "message", "room": noecho, "seq": 2, "from": None, "data": "theirs"} and before == [],
          (m, before))
    z = raw_client(d, noecho)
    z.send("raw mine")
    f = e.recv()
    check("mode none: noecho:* raw message reaches the envelope subscriber",
          isinstance(f, dict) and f.get("data") == "raw mine", f)
    api(d, "POST", "/api/publish", {"room": noecho, "data": "after raw"}, API_KEY)
    got = z.recv(TIMEOUT)
    check("mode none: noecho:* (echo_to_sender = false): raw sender's next message is the API's, not its own",
          got == "after raw", got)

    f = c.request({"op": "refresh", "token": "abc", "id": "r"})
    check("mode none: refresh -> bad_refresh 'auth is off'", f == error_frame("bad_refresh", "auth is off", "r"), f)


def test_class_max_subscribers():
    d = daemon("auth-classes")
    full = room("full:m")
    a, b = Client(d), Client(d)
    for name, c in (("first", a), ("second", b)):
        f = c.request({"op": "subscribe", "room": full})
        check(f"max_subscribers 2: {name} subscriber accepted", isinstance(f, dict) and f.get("op") == "subscribed", f)
    c = Client(d)
    f = c.request({"op": "subscribe", "room": full})
    check("max_subscribers 2: third subscribe -> error room_full, connection stays open",
          f == {"op": "error", "code": "room_full", "reason": "room is full"}, f)
    f = c.request({"op": "subscribe", "room": full, "id": 41})
    check("max_subscribers 2: room_full (found by the room's home) echoes the subscribe's id",
          f == {"op": "error", "code": "room_full", "reason": "room is full", "id": 41}, f)
    # A bare socket: the close can come in the same segment as the 101, which the `websockets`
    # sync client does not read.
    with socket.create_connection(("127.0.0.1", d.port), timeout=TIMEOUT) as sk:
        sk.sendall((f"GET /ws/{full} HTTP/1.1\r\nHost: {d.addr}\r\nUpgrade: websocket\r\n"
                    "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                    "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        data = b""
        while len(data.partition(b"\r\n\r\n")[2]) < 13 and (chunk := sk.recv(4096)):
            data += chunk
    head, _, frame = data.partition(b"\r\n\r\n")
    code = int.from_bytes(frame[2:4], "big") if frame[:1] == b"\x88" else None
    check("max_subscribers 2: raw client over the cap: 101, then close 1013 'room full'",
          head.startswith(b"HTTP/1.1 101") and code == 1013 and frame[4:] == b"room full", data[-40:])
    f = c.request({"op": "subscribe", "room": room("lobby")})
    check("max_subscribers: other rooms unaffected", isinstance(f, dict) and f.get("op") == "subscribed", f)
    # A refused raw join is not counted out when it leaves: still exactly two members.
    f = c.request({"op": "subscribe", "room": full})
    check("max_subscribers: still full after the refused raw client left",
          isinstance(f, dict) and f.get("code") == "room_full", f)
    a.request({"op": "unsubscribe", "room": full})
    f = c.request({"op": "subscribe", "room": full})
    check("max_subscribers: a member leaves -> the next subscribe is accepted",
          isinstance(f, dict) and f.get("op") == "subscribed", f)


class StalledClient:
    """An envelope JSON subscriber on a bare socket with a tiny receive buffer: it stops reading
    after subscribing (so the daemon queues for it and the room's policy applies), then reads
    every frame when told to."""

    def __init__(self, d, r):
        self.s = socket.socket()
        self.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.s.settimeout(TIMEOUT)
        self.s.connect(("127.0.0.1", d.port))
        self.s.sendall((f"GET /ws HTTP/1.1\r\nHost: {d.addr}\r\nUpgrade: websocket\r\n"
                        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                        f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: {JSON_PROTO}\r\n\r\n").encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            self.buf += self.s.recv(4096)
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        self.frames = []
        self.welcome = self.next()
        text = json.dumps({"op": "subscribe", "room": r}).encode()
        mask = os.urandom(4)
        self.s.sendall(bytes([0x81, 0x80 | len(text)]) + mask + bytes(c ^ mask[i % 4] for i, c in enumerate(text)))
        self.subscribed = self.next()

    def next(self):
        """The next whole server frame's JSON."""
        while True:
            if len(self.buf) >= 2:
                n, hl = self.buf[1] & 0x7F, 2
                if n == 126:
                    n, hl = int.from_bytes(self.buf[2:4], "big"), 4
                elif n == 127:
                    n, hl = int.from_bytes(self.buf[2:10], "big"), 10
                if len(self.buf) >= hl + n:
                    payload, self.buf = self.buf[hl:hl + n], self.buf[hl + n:]
                    return json.loads(payload)
            chunk = self.s.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk

    def read_until(self, data, timeout=30):
        """Read messages until one carries `data`: the list of messages up to and including it."""
        out, end = [], time.monotonic() + timeout
        while time.monotonic() < end:
            f = self.next()
            if f.get("op") != "message":
                continue
            out.append(f)
            if f.get("data") == data:
                return out
        raise TimeoutError(f"no message {data!r} within {timeout} s")


def test_gap_marker(policy):
    """A stalled client in a busy room loses frames to the class's policy; once it reads again,
    the first message after each loss (and only those) carries gap: true."""
    d = daemon("auth-classes")
    r = room(f"{policy}:g")
    slow = StalledClient(d, r)
    check(f"gap {policy}: stalled client subscribed", slow.subscribed.get("op") == "subscribed", slow.subscribed)
    pub = Client(d)
    blob = "x" * 2000
    for i in range(5000):  # 10 MB: far past 128 KiB queued + what the kernel buffers
        pub.send({"op": "publish", "room": r, "data": {"i": i, "pad": blob}})
    f = pub.request({"op": "publish", "room": r, "data": "flushed", "id": "last"})
    check(f"gap {policy}: publisher done", isinstance(f, dict), f)
    done = threading.Event()
    got = {}

    def reader():
        try:
            got["msgs"] = slow.read_until("end")
        except Exception as e:  # noqa: BLE001
            got["error"] = repr(e)
        done.set()

    threading.Thread(target=reader, daemon=True).start()
    # Published until the reader has it: the queue drains once it reads, then nothing is lost.
    while not done.wait(0.2):
        pub.send({"op": "publish", "room": r, "data": "end"})
    msgs = got.get("msgs")
    check(f"gap {policy}: stalled client reads to the end", msgs is not None, got.get("error"))
    if msgs is None:
        return
    # The last message ("end") counts too: when every frame after the queued ones was lost, the
    # first message after the loss is the "end" that stopped the reader.
    prev, wrong, gaps = slow.subscribed.get("seq", 0), [], 0
    for m in msgs:
        jumped = m["seq"] != prev + 1
        gaps += jumped
        if m["seq"] <= prev or bool(m.get("gap")) != jumped:
            wrong.append((prev, m["seq"], m.get("gap")))
        prev = m["seq"]
    check(f"gap {policy}: frames were lost ({gaps} gaps in {len(msgs)} messages)", gaps > 0, len(msgs))
    check(f"gap {policy}: seq increasing, gap: true exactly on the first message after each loss",
          not wrong, wrong[:5])


# --------------------------------------------------------------------------------------- presence

def test_presence_users():
    d = daemon("auth-jwt")
    r = room("chat:pres")
    ada_info, bob_info = {"name": "Ada L."}, {"name": "Bob"}
    # The token's info replaces ?info=.
    fake = "info=" + urllib.parse.quote(json.dumps({"name": "fake"}), safe="")
    a1 = Client(d, tok(d, info=ada_info), query=fake)
    a2 = open_on_shard(d, tok(d, info=ada_info), 1 - a1.shard)
    b = Client(d, tok(d, sub="bob", info=bob_info))
    n = Client(d, tok(d, sub="nobody"))  # no info claim: info null

    a1.send({"op": "subscribe", "room": r, "presence": True})
    s, j = a1.recv(), a1.recv()
    check("presence: own join carries user and the token's info (not ?info=)",
          s.get("op") == "subscribed" and j == {"op": "join", "room": r, "conn": a1.conn, "user": "ada",
                                                "info": ada_info}, (s, j))
    for who, sub, info in ((a2, "ada", ada_info), (b, "bob", bob_info), (n, "nobody", None)):
        f = who.request({"op": "subscribe", "room": r})
        j = a1.recv()
        check(f"presence: join of {sub} (conn {who.conn}) carries user",
              f.get("op") == "subscribed" and j == {"op": "join", "room": r, "conn": who.conn, "user": sub,
                                                    "info": info}, (f, j))
    f = a1.request({"op": "presence", "room": r})
    want = sorted([{"conn": a1.conn, "user": "ada", "info": ada_info},
                   {"conn": a2.conn, "user": "ada", "info": ada_info},
                   {"conn": b.conn, "user": "bob", "info": bob_info},
                   {"conn": n.conn, "user": "nobody", "info": None}], key=lambda m: m["conn"])
    got = sorted(f.get("members", []), key=lambda m: m.get("conn", 0)) if isinstance(f, dict) else f
    check("presence: members carry user (both shards)", got == want, f)

    f = b.request({"op": "presence", "room": r, "by": "user", "id": "pu"})
    want_u = [{"user": "ada", "connections": 2, "info": ada_info}, {"user": "bob", "connections": 1, "info": bob_info},
              {"user": "nobody", "connections": 1, "info": None}]
    got_u = sorted(f.get("members", []), key=lambda m: str(m.get("user"))) if isinstance(f, dict) else f
    check("presence by user: ada's two connections are one entry with connections 2",
          isinstance(f, dict) and f.get("op") == "presence" and f.get("room") == r and f.get("by") == "user"
          and got_u == want_u, f)
    check("presence by user: the answer echoes the request's id", isinstance(f, dict) and f.get("id") == "pu", f)

    b.request({"op": "unsubscribe", "room": r})
    f = a1.recv()
    check("presence: leave carries user", f == {"op": "leave", "room": r, "conn": b.conn, "user": "bob",
                                                "info": bob_info}, f)
    a2.close()
    f = a1.recv()
    check("presence: leave of ada's second connection carries user",
          f == {"op": "leave", "room": r, "conn": a2.conn, "user": "ada", "info": ada_info}, f)
    f = a1.request({"op": "presence", "room": r, "by": "user"})
    got_u = sorted(f.get("members", []), key=lambda m: str(m.get("user"))) if isinstance(f, dict) else f
    check("presence by user after the leave: ada connections 1",
          got_u == [{"user": "ada", "connections": 1, "info": ada_info},
                    {"user": "nobody", "connections": 1, "info": None}], f)
    st, _, body, raw = api(d, "GET", f"/api/rooms/{r}/presence", token=API_KEY)
    got = sorted((body or {}).get("members", []), key=lambda m: m.get("conn", 0))
    check("presence: the HTTP API's members carry user too",
          st == 200 and got == sorted([{"conn": a1.conn, "user": "ada", "info": ada_info},
                                       {"conn": n.conn, "user": "nobody", "info": None}], key=lambda m: m["conn"]),
          (st, raw[:300]))


def test_presence_anonymous_by_user():
    d = daemon("auth-none")
    r = room("pres-anon")
    cs = [Client(d) for _ in range(2)]
    for c in cs:
        c.request({"op": "subscribe", "room": r})
    f = cs[0].request({"op": "presence", "room": r, "by": "user"})
    got = f.get("members") if isinstance(f, dict) else f
    check("presence by user, anonymous connections: each its own entry with user null",
          isinstance(got, list) and len(got) == 2 and all(m.get("user", "absent") is None for m in got), f)
    f = cs[0].request({"op": "presence", "room": r})
    got = f.get("members") if isinstance(f, dict) else f
    check("presence, anonymous connections: no user key (user only when known)",
          isinstance(got, list) and len(got) == 2 and all("user" not in m for m in got), f)


# ---------------------------------------------------------------------------------------- refresh

def close_within(label, ws_recv, exp, extra=4.0):
    """The connection closes 4001 'token expired', not before exp, by exp + leeway + 1.5 s."""
    code, reason, at, frames = await_close(ws_recv, exp + LEEWAY + extra - time.time())
    check(f"{label}: close 4001 'token expired'", code == 4001 and reason == "token expired",
          (code, reason, frames[-3:]))
    if at is not None:
        check(f"{label}: closed not before exp, by exp + leeway + 1.5 s (at exp{at - exp:+.2f} s)",
              exp <= at <= exp + LEEWAY + 1.5, f"exp {exp}, closed at {at:.2f} (exp{at - exp:+.2f} s)")
    return frames


def test_refresh_keeps_connection():
    d = daemon("auth-jwt")
    r = room("chat:refresh")
    rights = {"subscribe": ["chat:*"], "publish": ["chat:*"]}
    exp = int(time.time()) + 3
    c = Client(d, tok(d, rooms=rights, exp=exp))
    check("refresh: welcome exp is the token's", c.welcome.get("exp") == exp, c.welcome)
    s = c.request({"op": "subscribe", "room": r})
    check("refresh: subscribed", isinstance(s, dict) and s.get("op") == "subscribed", s)
    pub = Client(d, tok(d, sub="pub"))
    stop = threading.Event()
    sent = []

    def publisher():
        i = 0
        while not stop.is_set():
            i += 1
            pub.send({"op": "publish", "room": r, "data": i, "id": i})
            sent.append(i)
            stop.wait(0.1)

    t = threading.Thread(target=publisher, daemon=True)
    start = time.monotonic()
    t.start()
    seqs, answers, other, closed = [], {}, [], None
    refreshes = []  # (id, new exp)
    try:
        while time.monotonic() - start < 10.0:
            if len(refreshes) < 3 and time.time() >= exp - 1.5:
                new_exp = exp + 3
                rid = f"r{len(refreshes) + 1}"
                c.send({"op": "refresh", "token": tok(d, rooms=rights, exp=new_exp), "id": rid})
                refreshes.append((rid, new_exp))
                exp = new_exp
            try:
                f = c.recv(0.2)
            except TimeoutError:
                continue
            if f.get("op") == "message":
                seqs.append(f.get("seq"))
            elif f.get("op") in ("refreshed", "error"):
                answers[f.get("id")] = f
            else:
                other.append(f)
    except ConnectionClosed as e:
        closed = f"closed after {time.monotonic() - start:.1f} s: {e!r}"
    stop.set()
    t.join(5)
    check("refresh: three refreshes sent within the 10 s", len(refreshes) == 3, refreshes)
    check("refresh: stayed connected ~10 s (past the first token's exp + leeway)", closed is None, closed)
    for rid, new_exp in refreshes:
        check(f"refresh: {rid} answered by refreshed with the new exp",
              answers.get(rid) == {"op": "refreshed", "exp": new_exp, "id": rid}, answers.get(rid))
    # Every message published reached the refreshed subscriber, in order, without a gap.
    last_ack, end = None, time.monotonic() + TIMEOUT
    while sent and time.monotonic() < end:
        try:
            f = pub.recv(max(0.01, end - time.monotonic()))
        except TimeoutError:
            break
        if f.get("op") == "ack" and f.get("id") == sent[-1]:
            last_ack = f.get("seq")
            break
    if closed is None:
        try:
            while last_ack and (not seqs or seqs[-1] < last_ack):
                f = c.recv()
                if f.get("op") == "message":
                    seqs.append(f.get("seq"))
        except (TimeoutError, ConnectionClosed) as e:
            other.append(repr(e))
    check(f"refresh: every seq 1..{last_ack} received, no gap ({len(sent)} published every 100 ms)",
          last_ack is not None and last_ack >= 50 and seqs == list(range(1, last_ack + 1)),
          (last_ack, len(seqs), seqs[:5], seqs[-5:], other[:3]))
    check("refresh: nothing unexpected arrived", other == [], other[:3])


def test_refresh_not_refreshed_expires():
    d = daemon("auth-jwt")
    exp = int(time.time()) + 3
    c = Client(d, tok(d, exp=exp))
    c.request({"op": "subscribe", "room": room("chat:exp")})
    close_within("no refresh", c.recv, exp)


def test_refresh_bad():
    d = daemon("auth-jwt")
    exp = int(time.time()) + 3
    c = Client(d, tok(d, exp=exp))
    f = c.request({"op": "refresh", "token": "abc", "id": "m"})
    check("bad refresh: malformed token -> bad_refresh 'token malformed'",
          f == error_frame("bad_refresh", "token malformed", "m"), f)
    f = c.request({"op": "refresh", "token": tok(d, exp=int(time.time()) - 60), "id": "x"})
    check("bad refresh: expired token -> bad_refresh 'token expired'",
          f == error_frame("bad_refresh", "token expired", "x"), f)
    f = c.request({"op": "refresh", "token": tok(d, aud="other"), "id": "a"})
    check("bad refresh: wrong audience -> bad_refresh 'wrong audience'",
          f == error_frame("bad_refresh", "wrong audience", "a"), f)
    f = c.request({"op": "refresh", "token": tok(d, sub="bob", ttl=600), "id": "b1"})
    check("bad refresh: another sub -> bad_refresh 'token is for another user'",
          f == error_frame("bad_refresh", "token is for another user", "b1"), f)
    f = c.request({"op": "history", "room": room("chat:b"), "limit": 0})
    check("bad refresh: connection still open", isinstance(f, dict) and f.get("op") == "history", f)
    close_within("bad refresh: the old expiry stands", c.recv, exp)


def test_refresh_drops_forbidden_room():
    d = daemon("auth-jwt")
    chat = room("chat:rf")
    old = {"subscribe": ["chat:*", "user:{sub}"], "publish": ["chat:*"]}
    new = {"subscribe": ["user:{sub}"], "publish": ["user:{sub}"]}
    c = Client(d, tok(d, rooms=old))
    for r in (chat, "user:ada"):
        f = c.request({"op": "subscribe", "room": r})
        check(f"refresh rights: subscribed to {r}", isinstance(f, dict) and f.get("op") == "subscribed", f)
    exp = int(time.time()) + 300
    c.send({"op": "refresh", "token": tok(d, rooms=new, exp=exp), "id": "rr"})
    got = [c.recv(), c.recv()]
    check("refresh rights: refreshed with the new exp", {"op": "refreshed", "exp": exp, "id": "rr"} in got, got)
    check("refresh rights: the room no longer allowed ends with unsubscribed reason forbidden",
          {"op": "unsubscribed", "room": chat, "reason": "forbidden"} in got, got)
    api(d, "POST", "/api/publish", {"room": chat, "data": "gone"}, API_KEY)
    api(d, "POST", "/api/publish", {"room": "user:ada", "data": "kept"}, API_KEY)
    m, before = c.until(lambda fr: fr.get("op") == "message")
    check("refresh rights: messages of the dropped room no longer arrive; the kept room's do",
          m is not None and m.get("room") == "user:ada" and m.get("data") == "kept" and before == [], (m, before))
    f = c.request({"op": "subscribe", "room": chat, "id": "s"})
    check("refresh rights: the new permissions apply (subscribe chat:* forbidden)",
          f == forbidden("subscribe", "s"), f)
    f = c.request({"op": "publish", "room": "user:ada", "data": 1, "id": "p"})
    check("refresh rights: ... and publish user:ada now allowed",
          isinstance(f, dict) and f.get("op") in ("ack", "message"), f)


def test_refresh_raw_expires():
    d = daemon("auth-jwt")
    exp = int(time.time()) + 3
    x = raw_client(d, room("lobby"), tok(d, exp=exp))
    x.send("before")
    got = x.recv(TIMEOUT)
    check("raw short token: works before expiry (echo)", got == "before", got)
    close_within("raw short token", x.recv, exp)


# ---------------------------------------------------------------------------------------- origins

def test_origins():
    d = daemon("auth-origins")
    for origin, want, body in (
            ("https://app.example.com", 101, None),
            ("HTTPS://APP.Example.COM", 101, None),
            ("https://a.b.example.com", 101, None),
            ("https://x.example.com", 101, None),
            (None, 101, None),
            ("https://example.com", 403, "origin not allowed"),
            ("http://app.example.com", 403, "origin not allowed"),
            ("https://evilexample.com", 403, "origin not allowed"),
            ("https://example.com.evil.test", 403, "origin not allowed"),
            ("null", 403, "origin not allowed")):
        for path in PATHS:
            status, _, got = upgrade(d, path, {"Origin": origin} if origin else {})
            check(f"origins {path} Origin {origin or '(none)'} -> {want}" + (f" {body!r}" if body else ""),
                  status == want and (body is None or one_line(got, body)), (status, got))
    ws = ws_connect(f"ws://{d.addr}/ws/{room('o')}", origin="https://app.example.com")
    ws.send("hi")
    got = ws.recv(TIMEOUT)
    check("origins: a websockets client with an allowed Origin works", got == "hi", got)
    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=TIMEOUT)
    conn.request("GET", "/healthz", headers={"Origin": "https://evil.test"})
    r = conn.getresponse()
    check("origins: only upgrades are checked (GET /healthz with a foreign Origin -> 200)", r.status == 200, r.status)
    conn.close()


def test_require_origin():
    d = daemon("auth-require-origin")
    for path in PATHS:
        status, _, body = upgrade(d, path, {})
        check(f"require_origin {path} without Origin -> 403 'origin required'",
              status == 403 and one_line(body, "origin required"), (status, body))
        status, _, body = upgrade(d, path, {"Origin": "https://anything.test"})
        check(f"require_origin {path} with any Origin (no allowlist) -> 101", status == 101, (status, body))


# --------------------------------------------------------------------------------------- HTTP API

def test_api():
    d = daemon("auth-jwt")
    r = room("chat:api")
    sub = Client(d, tok(d, sub="watcher"))
    sub.request({"op": "subscribe", "room": r})
    st, _, body, raw = api(d, "POST", "/api/publish", {"room": r, "data": "by key"}, API_KEY)
    check("api: the [api] key works in mode jwt", st == 200 and body == {"room": r, "seq": 1}, (st, raw))
    api_jwt = tok(d, sub="backend", api=True, rooms={"subscribe": [], "publish": []})
    st, _, body, raw = api(d, "POST", "/api/publish", {"room": r, "data": "by jwt"}, api_jwt)
    check("api: a JWT with api: true may POST /api/publish (room permissions do not apply)",
          st == 200 and body == {"room": r, "seq": 2}, (st, raw))
    got = [sub.recv(), sub.recv()]
    check("api: both publishes reach the subscriber", [f.get("data") for f in got] == ["by key", "by jwt"], got)
    st, _, body, raw = api(d, "GET", "/api/rooms", token=tok(d, sub="backend", api=True, key=KEYS.ec, alg="ES256"))
    check("api: a JWT with api: true (ES256) may GET /api/rooms", st == 200 and isinstance(body, dict), (st, raw))
    for label, t in (("without api", tok(d, sub="user")), ("with api: false", tok(d, sub="user", api=False))):
        st, _, body, raw = api(d, "POST", "/api/publish", {"room": r, "data": "no"}, t)
        check(f"api: a valid JWT {label} -> 403 forbidden",
              st == 403 and isinstance(body, dict) and body.get("error") == "forbidden", (st, raw))
    for label, t in (("garbage", "abc"), ("an expired api JWT", tok(d, api=True, exp=int(time.time()) - 60)),
                     ("an api JWT signed with another key", tok(d, api=True, key=KEYS.hs_other)),
                     ("no Authorization", None)):
        st, hdrs, body, raw = api(d, "POST", "/api/publish", {"room": r, "data": "no"}, t)
        check(f"api: {label} -> 401 with the JSON API error body",
              st == 401 and isinstance(body, dict) and body.get("error") == "unauthorized"
              and hdrs.get("www-authenticate", "").startswith("Bearer"), (st, hdrs.get("www-authenticate"), raw))
    f = sub.drain(0.3)
    check("api: refused calls published nothing", f == [], f)


# ----------------------------------------------------------------------------------- config check

def test_config_check():
    rsa_pem = os.path.join(KEYS.dir, "rsa.pub.pem")
    secret = os.path.join(KEYS.dir, "hs256.secret")
    cases = [
        ("unknown mode", '[auth]\nmode = "ldap"\n', "auth.mode"),
        ("both hs256_secret and hs256_secret_file",
         f'[auth]\nmode = "jwt"\nhs256_secret = "x"\nhs256_secret_file = "{secret}"\n', "auth.hs256_secret"),
        ("unreadable key file", f'[auth]\nmode = "jwt"\npublic_key_files = ["{KEYS.dir}/missing.pem"]\n',
         "auth.public_key_files"),
        ("key file not a PEM key", f'[auth]\nmode = "jwt"\npublic_key_files = ["{secret}"]\n',
         "auth.public_key_files"),
        ("JWKS not JSON", f'[auth]\nmode = "jwt"\njwks_file = "{secret}"\n', "auth.jwks_file"),
        ("mode jwt without any key", '[auth]\nmode = "jwt"\n', "auth."),  # which auth.* key: not specified
        ("\"none\" in algorithms",
         f'[auth]\nmode = "jwt"\npublic_key_files = ["{rsa_pem}"]\nalgorithms = ["RS256", "none"]\n',
         "auth.algorithms"),
        ("algorithm no configured key verifies",
         f'[auth]\nmode = "jwt"\npublic_key_files = ["{rsa_pem}"]\nalgorithms = ["ES256"]\n', "auth.algorithms"),
        ("unknown algorithm name",
         f'[auth]\nmode = "jwt"\npublic_key_files = ["{rsa_pem}"]\nalgorithms = ["RS999"]\n', "auth.algorithms"),
        ("bad origin pattern", '[server]\nallowed_origins = ["app.example.com"]\n', "server.allowed_origins"),
    ]
    for label, text, key in cases:
        path = os.path.join(KEYS.dir, "bad.toml")
        with open(path, "w") as f:
            f.write(text)
        r = subprocess.run([BIN, "config", "check", "--config", path], capture_output=True, text=True, timeout=30)
        out = r.stdout + r.stderr
        check(f"config check: {label} -> non-zero exit naming `{key}`", r.returncode != 0 and key in out,
              (r.returncode, out[-300:]))


# ------------------------------------------------------------------------------------------- main

TESTS = [(f, drv) for drv in DRIVERS for f in (test_401_reasons, test_401_algorithm_confusion, test_401_jwks_kid,
                                                test_401_token_sources, test_accepted_algorithms,
                                                test_accepted_jwks)] + [
    (test_permissions_raw, None), (test_permissions_raw_drop, None), (test_permissions_envelope, None),
    (test_mode_none_room_classes, None), (test_class_max_subscribers, None),
    (test_gap_marker, "drop"), (test_gap_marker, "oldest"), (test_gap_marker, "conflate"),
    (test_presence_users, None), (test_presence_anonymous_by_user, None),
    (test_refresh_keeps_connection, None), (test_refresh_not_refreshed_expires, None), (test_refresh_bad, None),
    (test_refresh_drops_forbidden_room, None), (test_refresh_raw_expires, None),
    (test_origins, None), (test_require_origin, None), (test_api, None), (test_config_check, None),
]


def main(tests=None, label="auth"):
    global KEYS
    if not os.access(BIN, os.X_OK):
        print(f"FAIL daemon binary {BIN} not found (build it: cargo build --release, or set SHARDCAST_BIN)")
        sys.exit(1)
    want = sys.argv[1:]
    keydir = tempfile.mkdtemp(prefix="shardcast-auth-")
    results = []
    start = time.monotonic()
    try:
        KEYS = Keys(keydir)
        for fn, drv in (tests or TESTS):
            name = fn.__name__ + (f"[{drv}]" if drv else "")
            if want and not any(w in name for w in want):
                continue
            p0, f0 = passed, failed
            t0 = time.monotonic()
            print(f"--- {name}", flush=True)
            try:
                fn(drv) if drv else fn()
            except Exception as e:  # noqa: BLE001 - a daemon bug fails the test, the suite goes on
                where = [fr for fr in traceback.extract_tb(e.__traceback__) if fr.filename == __file__]
                line = f" (line {where[-1].lineno}: {where[-1].line})" if where else ""
                check(f"{name} ran to completion", False, f"{type(e).__name__}: {e}{line}")
            finally:
                close_all()
            np, nf = passed - p0, failed - f0
            verdict = "PASS" if nf == 0 else "FAIL"
            results.append((name, verdict))
            print(f"=== {verdict} {name}: {np} passed, {nf} failed ({time.monotonic() - t0:.1f} s)", flush=True)
    finally:
        for d in DAEMONS.values():
            d.stop()
        shutil.rmtree(keydir, ignore_errors=True)
    print(f"\ntook {time.monotonic() - start:.1f} s")
    for name, verdict in results:
        print(f"{verdict} {name}")
    print(f"{label}: {passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
