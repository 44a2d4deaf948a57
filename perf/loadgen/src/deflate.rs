//! The client side of permessage-deflate (RFC 7692), receive direction only: loadgen offers the
//! extension, reads the server's answer and inflates frames with RSV1 set. It never compresses
//! what it sends (uncompressed frames are always valid under the extension), which keeps its own
//! CPU low.

use flate2::{Decompress, FlushDecompress, Status};

/// What loadgen offers with `--deflate`.
pub const OFFER: &str = "permessage-deflate; client_max_window_bits";

/// Appended to every compressed message before inflating (RFC 7692 §7.2.2).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// A compressed message that inflates past this is treated as a protocol error.
const MAX_INFLATED: usize = 64 << 20;

/// Negotiated state of one connection.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mode {
    /// Not negotiated: a frame with RSV1 is a protocol error.
    Off,
    /// `server_no_context_takeover`: every message is an independent deflate stream (one
    /// inflater reset after each message; loadgen shares one between all such connections).
    Reset,
    /// Context takeover: each connection's inflater keeps its window across messages.
    Takeover,
}

/// The server's Sec-WebSocket-Extensions value(s), comma-joined (empty when absent).
pub fn negotiate(ext: &str, offered: bool) -> Result<Mode, &'static str> {
    let mut mode = Mode::Off;
    for element in ext.split(',') {
        let mut parts = element.split(';').map(str::trim);
        let name = parts.next().unwrap_or("");
        if name.is_empty() {
            continue;
        }
        if name != "permessage-deflate" {
            return Err("unknown extension");
        }
        if !offered {
            return Err("unrequested extension");
        }
        if mode != Mode::Off {
            return Err("extension twice");
        }
        let mut reset = false;
        for p in parts {
            let (k, v) = match p.split_once('=') {
                Some((k, v)) => (k.trim(), Some(v.trim().trim_matches('"'))),
                None => (p, None),
            };
            match (k, v) {
                ("server_no_context_takeover", None) => reset = true,
                ("client_no_context_takeover", None) => {}
                ("server_max_window_bits" | "client_max_window_bits", Some(v))
                    if v.parse::<u8>().is_ok_and(|b| (8..=15).contains(&b)) => {}
                _ => return Err("bad extension parameter"),
            }
        }
        mode = if reset { Mode::Reset } else { Mode::Takeover };
    }
    Ok(mode)
}

/// Sets of the shared inflater's memo (a power of two), two slots each: with --max's 16
/// messages in flight, two of them sharing a set (and evicting each other on every delivery)
/// is rare. At most 2 x 512 x (compressed + inflated size) bytes.
const MEMO_SETS: usize = 512;

struct Slot {
    key: u64,
    valid: bool,
    /// Last use (for replacement within a set).
    used: u64,
    input: Vec<u8>,
    out: Vec<u8>,
}

/// The inflater of every `server_no_context_takeover` connection: each message is an
/// independent deflate stream, so its inflated bytes depend on its compressed bytes alone, and a
/// shared-mode broadcast reaches every subscriber as the very same frame. With the memo on, the
/// result of each distinct compressed message is kept in a small direct-mapped table (keyed by a
/// hash, confirmed by comparing the whole input; two-way set-associative) and reused for the identical frames the other
/// subscribers receive: the same bytes as inflating again, at a fraction of the CPU, so loadgen
/// stays far from being the limit. Any frame that differs (a corrupt one included) is inflated.
pub struct SharedInflater {
    d: Decompress,
    scratch: Vec<u8>,
    /// Empty: no memo (inflate every frame).
    memo: Vec<Slot>,
    pub hits: u64,
    clock: u64,
}

impl SharedInflater {
    pub fn new(memo: bool) -> Self {
        SharedInflater {
            d: inflater(),
            scratch: Vec::with_capacity(64 * 1024),
            memo: if memo {
                (0..2 * MEMO_SETS)
                    .map(|_| Slot {
                        key: 0,
                        valid: false,
                        used: 0,
                        input: Vec::new(),
                        out: Vec::new(),
                    })
                    .collect()
            } else {
                Vec::new()
            },
            hits: 0,
            clock: 0,
        }
    }

    /// Inflate one independent message; returns its bytes.
    pub fn inflate(&mut self, payload: &[u8]) -> Result<&[u8], ()> {
        if self.memo.is_empty() {
            let r = inflate(&mut self.d, payload, &mut self.scratch);
            self.d.reset(false);
            r?;
            return Ok(&self.scratch);
        }
        let key = hash(payload);
        self.clock += 1;
        let set = 2 * ((key >> 40) as usize % MEMO_SETS);
        for s in set..set + 2 {
            let slot = &mut self.memo[s];
            if slot.valid && slot.key == key && slot.input == payload {
                slot.used = self.clock;
                self.hits += 1;
                return Ok(&self.memo[s].out);
            }
        }
        // Miss: replace the least recently used slot of the set.
        let s = if self.memo[set].used <= self.memo[set + 1].used {
            set
        } else {
            set + 1
        };
        let slot = &mut self.memo[s];
        slot.valid = false;
        slot.used = self.clock;
        let r = inflate(&mut self.d, payload, &mut slot.out);
        self.d.reset(false);
        r?;
        slot.key = key;
        slot.input.clear();
        slot.input.extend_from_slice(payload);
        slot.valid = true;
        Ok(&slot.out)
    }
}

/// A fast non-cryptographic hash (FxHash-style, 8 bytes at a time).
fn hash(p: &[u8]) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let mut h = (p.len() as u64).wrapping_mul(K);
    let mut words = p.chunks_exact(8);
    for w in &mut words {
        h = (h.rotate_left(5) ^ u64::from_le_bytes(w.try_into().unwrap())).wrapping_mul(K);
    }
    for &b in words.remainder() {
        h = (h.rotate_left(5) ^ b as u64).wrapping_mul(K);
    }
    h
}

/// A raw-deflate inflater (window 15: decodes any smaller window too).
pub fn inflater() -> Decompress {
    Decompress::new(false)
}

/// Inflate one message (`payload` + the sync-flush tail) into `out` (cleared first).
/// Returns Ok(true) if the stream ended (a final block: the caller must reset the inflater).
pub fn inflate(d: &mut Decompress, payload: &[u8], out: &mut Vec<u8>) -> Result<bool, ()> {
    out.clear();
    for chunk in [payload, &TAIL[..]] {
        let mut src = chunk;
        loop {
            if out.capacity() - out.len() < 1024 {
                if out.len() >= MAX_INFLATED {
                    return Err(());
                }
                out.reserve(out.capacity().max(16 * 1024));
            }
            let (in0, out0) = (d.total_in(), d.total_out());
            let st = d
                .decompress_vec(src, out, FlushDecompress::Sync)
                .map_err(|_| ())?;
            let used = (d.total_in() - in0) as usize;
            let produced = d.total_out() - out0;
            src = &src[used..];
            if st == Status::StreamEnd {
                return Ok(true);
            }
            if src.is_empty() && out.len() < out.capacity() {
                break;
            }
            if used == 0 && produced == 0 {
                if src.is_empty() {
                    break;
                }
                return Err(());
            }
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Compress, Compression, FlushCompress};

    fn compress(c: &mut Compress, msg: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(msg.len() + 64);
        c.compress_vec(msg, &mut out, FlushCompress::Sync).unwrap();
        assert!(out.ends_with(&TAIL));
        out.truncate(out.len() - 4);
        out
    }

    #[test]
    fn negotiation() {
        assert_eq!(negotiate("", true), Ok(Mode::Off));
        assert_eq!(negotiate("", false), Ok(Mode::Off));
        assert_eq!(
            negotiate("permessage-deflate; server_no_context_takeover", true),
            Ok(Mode::Reset)
        );
        assert_eq!(negotiate("permessage-deflate", true), Ok(Mode::Takeover));
        assert_eq!(
            negotiate(
                "permessage-deflate; client_max_window_bits=15; server_max_window_bits=10",
                true
            ),
            Ok(Mode::Takeover)
        );
        assert!(negotiate("permessage-deflate", false).is_err());
        assert!(negotiate("x-foo", true).is_err());
        assert!(negotiate("permessage-deflate; bogus", true).is_err());
    }

    #[test]
    fn inflate_with_and_without_takeover() {
        let msgs: Vec<Vec<u8>> = (0..5)
            .map(|i| format!("{{\"i\":{i},\"pad\":\"{}\"}}", "abc".repeat(3000)).into_bytes())
            .collect();
        // Context takeover: one compressor, one inflater, both kept.
        let mut c = Compress::new(Compression::new(1), false);
        let mut d = inflater();
        let mut out = Vec::new();
        for m in &msgs {
            let z = compress(&mut c, m);
            assert!(!inflate(&mut d, &z, &mut out).unwrap());
            assert_eq!(&out, m);
        }
        // No context takeover: reset both after every message.
        let mut d = inflater();
        for m in &msgs {
            let mut c = Compress::new(Compression::new(1), false);
            let z = compress(&mut c, m);
            inflate(&mut d, &z, &mut out).unwrap();
            assert_eq!(&out, m);
            d.reset(false);
        }
        assert!(inflate(&mut d, &[0xff, 0xff, 0xff], &mut out).is_err());
    }

    #[test]
    fn shared_inflater_memo_is_exact() {
        let msgs: Vec<Vec<u8>> = (0..300)
            .map(|i| format!("{{\"i\":{i},\"pad\":\"{}\"}}", "xyz".repeat(100 + i)).into_bytes())
            .collect();
        let frames: Vec<Vec<u8>> = msgs
            .iter()
            .map(|m| compress(&mut Compress::new(Compression::new(1), false), m))
            .collect();
        let mut memo = SharedInflater::new(true);
        let mut plain = SharedInflater::new(false);
        // Every frame three times, interleaved (as many subscribers read them).
        for round in 0..3 {
            for (f, m) in frames.iter().zip(&msgs) {
                assert_eq!(memo.inflate(f).unwrap(), &m[..], "round {round}");
                assert_eq!(plain.inflate(f).unwrap(), &m[..]);
            }
        }
        assert!(memo.hits > 0);
        assert_eq!(plain.hits, 0);
        // A corrupted copy of a memoized frame is inflated (and fails), not served from the memo.
        let mut bad = frames[0].clone();
        bad[0] ^= 0xff;
        assert!(memo
            .inflate(&bad)
            .map(|o| o != &msgs[0][..])
            .unwrap_or(true));
        assert_eq!(memo.inflate(&frames[0]).unwrap(), &msgs[0][..]);
    }
}
