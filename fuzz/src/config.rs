//! `config`: the configuration file → validated `Config` (`FileConfig::parse` then
//! `FileConfig::validate`, what `shardcast config check` and the daemon's start run).
//!
//! Input: the file's text (non-UTF-8 input is skipped: the daemon refuses it before parsing).
//! The key-file paths of `[auth]` (`hs256_secret_file`, `public_key_files`, `jwks_file`) are
//! cleared before validation: a fuzzer must not open paths it invents (`/dev/zero` would never
//! end); inline `hs256_secret` still builds a real verifier.
//!
//! Properties: no panic, and a configuration that passes validation can be used: the arithmetic
//! the daemon does with it at run time (deadlines `now + timeout`, the heartbeat's
//! `interval + timeout`, the sweep period) does not overflow, and the gate decides a plain raw
//! upgrade and an envelope upgrade under it without panicking. Without key-file paths,
//! `Config::from_toml` gives the same verdict.

use std::time::{Duration, Instant};

use shardcast::config::{Config, FileConfig};
use shardcast::gate::{self, Policy};

const RAW_UPGRADE: &str = "GET /ws/chat:42 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
Origin: https://app.example.com\r\nSec-WebSocket-Extensions: permessage-deflate; \
client_max_window_bits\r\n\r\n";

const ENVELOPE_UPGRADE: &str = "GET /ws?info=%7B%22n%22%3A1%7D HTTP/1.1\r\nHost: x\r\n\
Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: shardcast.v1.cbor\r\n\r\n";

/// The `config` target.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(mut file) = FileConfig::parse(text) else {
        return;
    };
    let a = &mut file.auth;
    let had_paths = a.hs256_secret_file.take().is_some()
        | a.public_key_files.take().is_some()
        | a.jwks_file.take().is_some();
    let validated = file.validate();
    if !had_paths {
        let direct = Config::from_toml(text);
        assert_eq!(
            validated.is_ok(),
            direct.is_ok(),
            "{validated:?} / {direct:?}"
        );
    }
    match validated {
        Ok(cfg) => usable(&cfg),
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

/// What the daemon computes from a validated configuration.
fn usable(cfg: &Config) {
    let now = Instant::now();
    // src/shard/membership.rs (handshake deadline), src/shard/sweep.rs and replies.rs (close
    // deadline), src/shard/sweep.rs (drain deadline).
    for (key, d) in [
        ("limits.handshake_timeout", cfg.handshake_timeout),
        ("limits.close_timeout", cfg.close_timeout),
        ("shutdown.drain_timeout", cfg.drain_timeout),
    ] {
        assert!(
            now.checked_add(d).is_some(),
            "{key} = {d:?}: now + it overflows"
        );
    }
    // src/heartbeat.rs: `quiet >= interval + timeout`.
    assert!(
        cfg.heartbeat_interval
            .checked_add(cfg.heartbeat_timeout)
            .is_some(),
        "heartbeat interval + timeout overflows"
    );
    let sweep = cfg.sweep_period();
    assert!(sweep >= Duration::from_millis(5) && sweep <= Duration::from_secs(1));
    assert!(cfg.max_frame_bytes <= cfg.max_message_bytes);
    for room in ["chat:42", "news:1", "a", &"x".repeat(128)] {
        let _ = (
            cfg.class_rights(room),
            cfg.echo_in(room),
            cfg.history_in(room),
            cfg.slow_consumer_in(room),
            cfg.max_subscribers_in(room),
        );
    }
    let policy = Policy {
        cfg,
        open_connections: 0,
        draining: false,
        client: None,
    };
    for head in [RAW_UPGRADE, ENVELOPE_UPGRADE] {
        if let Ok(Some((req, _))) = gate::parse_head(head.as_bytes(), &policy) {
            let _ = gate::plan_upgrade(&req, &policy);
        }
    }
}
