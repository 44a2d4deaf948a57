//! Test support: a small blocking WebSocket client speaking raw bytes over std sockets, and
//! helpers to start a daemon in-process on port 0 with either I/O driver.
#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use shardcast::config::Config;
use shardcast::protocol::frame::{encode_client_frame, OpCode};
use shardcast::server::{start, ServerHandle};

/// Start a daemon from TOML text (listen on 127.0.0.1:0) with the given driver.
pub fn daemon(driver: &str, extra_toml: &str) -> ServerHandle {
    let mut text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nio_driver = \"{driver}\"\n{}",
        extra_toml.trim_start_matches("[server]\n")
    );
    // Tests stop the daemon with clients still connected that will not answer the 1001 close:
    // do not wait the default 10 s drain for them.
    if !text.contains("drain_timeout") {
        text.push_str("\n[shutdown]\ndrain_timeout = \"300ms\"\n");
    }
    let cfg = Config::from_toml(&text).unwrap_or_else(|e| panic!("bad test config: {e}\n{text}"));
    start(cfg).expect("server starts")
}

/// A received frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    pub rsv1: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode == 0x8 && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

pub const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

pub fn upgrade_request(path: &str) -> String {
    upgrade_request_with(path, "")
}

/// An upgrade request with extra header lines (each ending in \r\n).
pub fn upgrade_request_with(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// Send raw bytes and read the whole HTTP response (until the server closes).
pub fn http_raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

impl Client {
    /// Connect and upgrade; panics unless the server answers 101.
    pub fn connect(addr: SocketAddr, path: &str) -> Client {
        Self::try_connect(addr, path).unwrap_or_else(|e| panic!("connect {path}: {e}"))
    }

    /// Connect with a small kernel receive buffer (no autotuning), to play a slow consumer.
    pub fn connect_small_rcvbuf(addr: SocketAddr, path: &str, rcvbuf: usize) -> Client {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.set_recv_buffer_size(rcvbuf).unwrap();
        s.connect(&addr.into()).unwrap();
        Self::handshake(s.into(), path).unwrap()
    }

    pub fn try_connect(addr: SocketAddr, path: &str) -> io::Result<Client> {
        Self::handshake(TcpStream::connect(addr)?, path)
    }

    /// Connect with extra request headers; returns the client and the response head.
    pub fn connect_with(addr: SocketAddr, path: &str, extra: &str) -> (Client, String) {
        Self::handshake_with(TcpStream::connect(addr).unwrap(), path, extra).unwrap()
    }

    fn handshake(stream: TcpStream, path: &str) -> io::Result<Client> {
        Self::handshake_with(stream, path, "").map(|(c, _)| c)
    }

    fn handshake_with(
        mut stream: TcpStream,
        path: &str,
        extra: &str,
    ) -> io::Result<(Client, String)> {
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(20)))?;
        stream.write_all(upgrade_request_with(path, extra).as_bytes())?;
        let mut buf = Vec::new();
        let mut tmp = [0u8; 4096];
        let head_end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            let n = stream.read(&mut tmp)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed during handshake",
                ));
            }
            buf.extend_from_slice(&tmp[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        if !head.starts_with("HTTP/1.1 101") {
            return Err(io::Error::other(format!("not upgraded: {head}")));
        }
        assert!(
            head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            "{head}"
        );
        buf.drain(..head_end);
        Ok((Client { stream, buf }, head))
    }

    /// Wrap an already-upgraded stream (e.g. a `try_clone` used by a reader thread).
    pub fn from_stream(stream: TcpStream) -> Client {
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn send_frame(&mut self, fin: bool, opcode: OpCode, payload: &[u8]) {
        let f = encode_client_frame(fin, opcode, MASK, payload);
        self.stream.write_all(&f).unwrap();
    }

    /// Send an already-compressed payload as one frame with RSV1 set (permessage-deflate).
    pub fn send_compressed(&mut self, opcode: OpCode, compressed: &[u8]) {
        let mut f = encode_client_frame(true, opcode, MASK, compressed);
        f[0] |= 0x40;
        self.stream.write_all(&f).unwrap();
    }

    pub fn send_text(&mut self, s: &str) {
        self.send_frame(true, OpCode::Text, s.as_bytes());
    }

    pub fn send_binary(&mut self, b: &[u8]) {
        self.send_frame(true, OpCode::Binary, b);
    }

    pub fn set_timeout(&self, t: Duration) {
        self.stream.set_read_timeout(Some(t)).unwrap();
    }

    fn fill(&mut self, want: usize) -> io::Result<()> {
        let mut tmp = [0u8; 65536];
        while self.buf.len() < want {
            let n = self.stream.read(&mut tmp)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed",
                ));
            }
            self.buf.extend_from_slice(&tmp[..n]);
        }
        Ok(())
    }

    /// Read one frame (server frames are unmasked).
    pub fn recv_frame(&mut self) -> io::Result<Frame> {
        self.fill(2)?;
        let b0 = self.buf[0];
        let b1 = self.buf[1];
        assert_eq!(b1 & 0x80, 0, "server frames must not be masked");
        let (len, hl) = match b1 & 0x7f {
            126 => {
                self.fill(4)?;
                (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
            }
            127 => {
                self.fill(10)?;
                let mut b = [0u8; 8];
                b.copy_from_slice(&self.buf[2..10]);
                (u64::from_be_bytes(b) as usize, 10)
            }
            n => (n as usize, 2),
        };
        self.fill(hl + len)?;
        let payload = self.buf[hl..hl + len].to_vec();
        self.buf.drain(..hl + len);
        Ok(Frame {
            fin: b0 & 0x80 != 0,
            rsv1: b0 & 0x40 != 0,
            opcode: b0 & 0x0f,
            payload,
        })
    }

    /// Next data or close frame, answering pings on the way.
    pub fn recv(&mut self) -> io::Result<Frame> {
        loop {
            let f = self.recv_frame()?;
            match f.opcode {
                0x9 => self.send_frame(true, OpCode::Pong, &f.payload.clone()),
                0xA => {}
                _ => return Ok(f),
            }
        }
    }

    /// Read until a close frame arrives; return its code. Data frames before it are skipped.
    pub fn expect_close(&mut self) -> u16 {
        loop {
            match self.recv() {
                Ok(f) if f.opcode == 0x8 => return f.close_code().unwrap_or(1005),
                Ok(_) => {}
                Err(e) => panic!("expected a close frame, got {e}"),
            }
        }
    }

    /// Nothing arrives within `t`.
    pub fn assert_silent(&mut self, t: Duration) {
        self.set_timeout(t);
        match self.recv_frame() {
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            other => panic!("expected silence, got {other:?}"),
        }
        self.set_timeout(Duration::from_secs(20));
    }
}

/// Poll `cond` until true or panic after `limit`.
pub fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Define one test per I/O driver.
#[macro_export]
macro_rules! both_drivers {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[test]
                fn io_uring() {
                    super::$name("io_uring")
                }
                #[test]
                fn epoll() {
                    super::$name("epoll")
                }
            }
        )*
    };
}

/// Raise RLIMIT_NOFILE to the hard limit (20,000 here); returns the new soft limit.
pub fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on our own process.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
    }
    lim.rlim_cur
}

/// Like [`Client::connect_small_rcvbuf`], with extra request headers (e.g. a subprotocol);
/// returns the client and the response head.
pub fn connect_small_rcvbuf_with(
    addr: SocketAddr,
    path: &str,
    extra: &str,
    rcvbuf: usize,
) -> (Client, String) {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.set_recv_buffer_size(rcvbuf).unwrap();
    s.connect(&addr.into()).unwrap();
    Client::handshake_with(s.into(), path, extra).unwrap()
}

/// The real `shardcast` binary in a child process, started with a config file on an ephemeral
/// port: a panic (the release build aborts) kills the child, never the test binary. Killed and
/// reaped on drop.
pub struct ChildDaemon {
    pub child: std::process::Child,
    pub addr: SocketAddr,
    /// The daemon's last log lines (stderr), for failure messages.
    log: std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<String>>>,
    dir: std::path::PathBuf,
}

impl ChildDaemon {
    /// Start the binary with `config` (TOML text, written to a file) and extra arguments;
    /// `--listen 127.0.0.1:0` is added. Returns once the start-up line names the address.
    pub fn spawn(tag: &str, config: &str, args: &[&str]) -> ChildDaemon {
        use std::io::BufRead;
        use std::os::unix::process::CommandExt;
        use std::process::{Command, Stdio};
        let dir = std::env::temp_dir().join(format!("shardcast-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = dir.join("shardcast.toml");
        std::fs::write(&cfg, config).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_shardcast"));
        cmd.args(["--config", cfg.to_str().unwrap(), "--listen", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            // A panic's message, not a backtrace, in the log tail of failure messages.
            .env("RUST_BACKTRACE", "0")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // SAFETY: setrlimit is async-signal-safe; no core file when the daemon aborts.
        unsafe {
            cmd.pre_exec(|| {
                let zero = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                libc::setrlimit(libc::RLIMIT_CORE, &zero);
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("spawn shardcast");
        let stderr = child.stderr.take().unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(std::collections::VecDeque::new()));
        let (tx, rx) = std::sync::mpsc::channel::<SocketAddr>();
        let keep = log.clone();
        // Reads stderr to its end (the daemon never blocks on a full pipe), keeps the tail.
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains("shardcast started") {
                    if let Some(a) = line
                        .split("listen=")
                        .nth(1)
                        .and_then(|s| s.split_whitespace().next())
                        .and_then(|s| s.parse().ok())
                    {
                        let _ = tx.send(a);
                    }
                }
                let mut l = keep.lock().unwrap();
                if l.len() == 40 {
                    l.pop_front();
                }
                l.push_back(line);
            }
        });
        let mut d = ChildDaemon {
            child,
            addr: "127.0.0.1:0".parse().unwrap(),
            log,
            dir,
        };
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(a) => d.addr = a,
            Err(_) => panic!("daemon did not start: {}", d.describe()),
        }
        d
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status, waiting up to `wait` for the process to end (`None`: still running).
    pub fn exit_status(&mut self, wait: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            if start.elapsed() >= wait {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The process state and the last log lines, for failure messages.
    pub fn describe(&mut self) -> String {
        let state = match self.exit_status(Duration::from_secs(2)) {
            Some(s) => format!("daemon EXITED: {s}"),
            None => "daemon still running".to_string(),
        };
        let log: Vec<String> = self.log.lock().unwrap().iter().cloned().collect();
        format!("{state}; its last log lines:\n{}", log.join("\n"))
    }

    /// Resident set size of the daemon, in KiB (`VmRSS` in /proc/PID/status).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("daemon /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }
}

impl Drop for ChildDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One HTTP request on a fresh connection, with timeouts (a dead daemon gives an error or an
/// empty answer, never a hang): the status code and the body.
pub fn http_request(addr: SocketAddr, request: &str) -> io::Result<(u16, String)> {
    let t = Duration::from_secs(5);
    let mut s = TcpStream::connect_timeout(&addr, t)?;
    s.set_read_timeout(Some(t))?;
    s.set_write_timeout(Some(t))?;
    s.write_all(request.as_bytes())?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("no HTTP status line in {} bytes: {text:?}", out.len()),
            )
        })?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}
