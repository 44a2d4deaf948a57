//! Tests against the real `shardcast` binary in a child process: CLI, config check, signals, and
//! the 10,000-connection broadcast (the client side alone needs 10,000 descriptors, so the daemon
//! runs in its own process to stay under the 20,000 per-process limit).

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Client;

const BIN: &str = env!("CARGO_BIN_EXE_shardcast");

struct Daemon {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start the binary on an ephemeral port and read the bound address from its start-up log line.
fn spawn(args: &[&str]) -> Daemon {
    let mut child = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn shardcast");
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("daemon exited before start-up line")
            .unwrap();
        let line = strip_ansi(&line);
        if line.contains("shardcast started") {
            assert!(line.contains("io_driver="), "{line}");
            let a = line
                .split("listen=")
                .nth(1)
                .unwrap()
                .split_whitespace()
                .next()
                .unwrap();
            break a.parse().unwrap();
        }
    };
    // Keep draining stderr so the daemon never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Daemon { child, addr }
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut esc = false;
    for c in s.chars() {
        match (esc, c) {
            (false, '\u{1b}') => esc = true,
            (true, 'm') => esc = false,
            (true, _) => {}
            (false, c) => out.push(c),
        }
    }
    out
}

#[test]
fn ten_thousand_connections_all_receive_a_broadcast() {
    let limit = common::raise_nofile();
    assert!(
        limit >= 10_100,
        "RLIMIT_NOFILE is {limit}: need 10,100 descriptors"
    );
    let d = spawn(&["--shards", "2"]);
    const N: usize = 10_000;
    let t0 = Instant::now();
    let mut clients: Vec<Client> = (0..N)
        .map(|_| Client::connect(d.addr, "/ws/big-room"))
        .collect();
    let connect_time = t0.elapsed();
    let mut publisher = Client::connect(d.addr, "/ws/big-room");
    // Wait until the daemon has registered all of them (the status page counts connections).
    common::wait_until(Duration::from_secs(30), "10,001 connections", || {
        common::http_raw(d.addr, b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
            .contains("<td>10001</td>")
    });
    let t1 = Instant::now();
    publisher.send_text("to everyone");
    for (i, c) in clients.iter_mut().enumerate() {
        let f = c.recv().unwrap_or_else(|e| panic!("client {i}: {e}"));
        assert_eq!(
            (f.opcode, f.payload.as_slice()),
            (0x1, &b"to everyone"[..]),
            "client {i}"
        );
    }
    assert_eq!(publisher.recv().unwrap().payload, b"to everyone");
    eprintln!(
        "connected {N} in {connect_time:?}; broadcast received by all in {:?}",
        t1.elapsed()
    );
}

#[test]
fn sigterm_closes_clients_with_1012_and_exits_0() {
    // The rolling drain spreads the closes over 80 % of drain_timeout (10 s by default).
    let mut d = spawn(&["--shards", "2"]);
    let mut clients: Vec<Client> = (0..10).map(|_| Client::connect(d.addr, "/ws/x")).collect();
    std::thread::sleep(Duration::from_millis(100));
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(d.child.id() as i32, libc::SIGTERM);
    }
    for c in clients.iter_mut() {
        assert_eq!(c.expect_close(), 1012);
        c.send_frame(
            true,
            shardcast::protocol::frame::OpCode::Close,
            &[0x03, 0xf4],
        );
    }
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = d.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(12),
            "daemon did not exit"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "{status:?}");
}

#[test]
fn sigint_does_not_wait_for_slow_clients() {
    let mut d = spawn(&["--shards", "1"]);
    // A client that never reads or answers: SIGINT must not wait drain_timeout (10 s) for it.
    let _stuck = Client::connect(d.addr, "/ws/x");
    std::thread::sleep(Duration::from_millis(100));
    let t0 = Instant::now();
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(d.child.id() as i32, libc::SIGINT);
    }
    let status = loop {
        if let Some(s) = d.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(3),
            "SIGINT waited for a slow client"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "{status:?}");
}

#[test]
fn config_check_accepts_example_and_names_bad_keys() {
    let manifest = env!("CARGO_MANIFEST_DIR");
    let out = Command::new(BIN)
        .args([
            "config",
            "check",
            "--config",
            &format!("{manifest}/config.example.toml"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let dir = std::env::temp_dir().join(format!("shardcast-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (text, needle) in [
        ("[limits]\nmax_conections = 5\n", "max_conections"),
        (
            "[limits]\nslow_consumer = \"later\"\n",
            "limits.slow_consumer",
        ),
        ("[heartbeat]\ninterval = \"often\"\n", "heartbeat.interval"),
        ("[server]\nshards = -2\n", "server.shards"),
        (
            "[tls]\ncert_file = \"/nonexistent/cert.pem\"\nkey_file = \"/nonexistent/key.pem\"\n",
            "tls.cert_file",
        ),
        (
            "[tls]\ncert_file = \"/nonexistent/cert.pem\"\n",
            "tls.key_file",
        ),
    ] {
        let path = dir.join("bad.toml");
        std::fs::write(&path, text).unwrap();
        let out = Command::new(BIN)
            .args(["config", "check", "--config", path.to_str().unwrap()])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{text} was accepted");
        assert!(err.contains(needle), "{text}: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_config_refuses_to_start() {
    let out = Command::new(BIN)
        .args(["--config", "/nonexistent/shardcast.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/shardcast.toml"));
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn deflate_bomb_gets_1009_and_memory_stays_bounded() {
    use shardcast::protocol::deflate::Compressor;
    use shardcast::protocol::frame::OpCode;
    let dir = std::env::temp_dir().join(format!("shardcast-bomb-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("bomb.toml");
    std::fs::write(
        &cfg,
        "[limits]\nmax_message_bytes = \"1MiB\"\nmax_frame_bytes = \"1MiB\"\n",
    )
    .unwrap();
    let d = spawn(&["--shards", "1", "--config", cfg.to_str().unwrap()]);
    // 100 MiB of zeros, compressed to about 100 KiB.
    let zeros = vec![0u8; 100 << 20];
    let mut bomb = Vec::new();
    Compressor::new(9, 15).compress(&zeros, true, &mut bomb);
    drop(zeros);
    assert!(bomb.len() < 200 << 10, "bomb is {} bytes", bomb.len());
    let offer = "Sec-WebSocket-Extensions: permessage-deflate\r\n";
    let (mut c, head) = Client::connect_with(d.addr, "/ws/bomb", offer);
    assert!(head.contains("permessage-deflate"), "{head}");
    let before = rss_kib(d.child.id());
    c.send_compressed(OpCode::Binary, &bomb);
    assert_eq!(c.expect_close(), 1009);
    let after = rss_kib(d.child.id());
    eprintln!("daemon RSS {before} KiB before, {after} KiB after the bomb");
    assert!(
        after < before + 8 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
    // The daemon is fine and serves others.
    let mut other = Client::connect(d.addr, "/ws/bomb");
    other.send_text("still up");
    assert_eq!(other.recv().unwrap().payload, b"still up");
    let _ = std::fs::remove_dir_all(&dir);
}
