//! # shardcast-fuzz
//!
//! The bodies of shardcast's fuzz targets, one function each, shared by the libFuzzer entry
//! points (`fuzz_targets/*.rs`, run with `cargo +nightly fuzz run TARGET`) and the stable replay
//! (`src/bin/replay.rs`: every target over its committed corpus plus deterministic mutations).
//!
//! Each body takes arbitrary bytes and panics only on a bug: a panic inside shardcast, or one of
//! the properties it checks (written next to each body). Nothing here touches a socket or a
//! file: the targets cover the sans-io code every byte from a client goes through.
//!
//! # Layout
//! - [`frame`]: `frame_decoder` (RFC 6455 frame decoder and message reassembly).
//! - [`http`]: `handshake` (request head parser, upgrade validation, permessage-deflate and
//!   subprotocol negotiation) and `gate` (`gate::parse_head` + `gate::plan_upgrade` under auth
//!   modes none and jwt).
//! - [`inflate`]: `inflate` (permessage-deflate inflater and its size bound; compressor round trip).
//! - [`envelope`]: `envelope_json`, `envelope_cbor` (client frame decoders and the server encodings
//!   a decoded frame leads to).
//! - [`config`]: `config` (TOML → validated `Config`, the `shardcast config check` path).
//! - [`mutate`]: the replay's deterministic mutator.

pub mod config;
pub mod envelope;
pub mod frame;
pub mod http;
pub mod inflate;
pub mod mutate;

pub use config::config;
pub use envelope::{envelope_cbor, envelope_json};
pub use frame::frame_decoder;
pub use http::{gate, handshake};
pub use inflate::inflate;

/// One fuzz target: its name (also its `fuzz_targets/` file and `corpus/` directory), its body,
/// and the longest input worth trying.
#[derive(Clone, Copy)]
pub struct Target {
    /// Name, as `cargo fuzz run NAME` takes it.
    pub name: &'static str,
    /// The body.
    pub run: fn(&[u8]),
    /// `-max_len` for libFuzzer and the replay's mutator.
    pub max_len: usize,
}

/// Every target, in the order the scripts run them.
pub const TARGETS: &[Target] = &[
    Target {
        name: "frame_decoder",
        run: frame_decoder,
        max_len: 70_000,
    },
    Target {
        name: "handshake",
        run: handshake,
        max_len: 10_000,
    },
    Target {
        name: "inflate",
        run: inflate,
        // A deflate bomb of 1 MiB is ~1 KiB compressed: long inputs add cost, not reach.
        max_len: 20_000,
    },
    Target {
        name: "envelope_json",
        run: envelope_json,
        max_len: 16_384,
    },
    Target {
        name: "envelope_cbor",
        run: envelope_cbor,
        max_len: 16_384,
    },
    Target {
        name: "gate",
        run: gate,
        max_len: 10_000,
    },
    Target {
        name: "config",
        run: config,
        max_len: 32_768,
    },
];

/// A small deterministic generator (xorshift64*): chunk sizes, cut points, mutations.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from any seed (zero is fine).
    pub fn new(seed: u64) -> Rng {
        Rng((seed ^ 0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform-ish in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// FNV-1a of `data`: seeds derived from an input, so every check stays deterministic.
pub fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}
