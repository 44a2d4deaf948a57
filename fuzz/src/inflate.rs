//! `inflate`: the permessage-deflate inflater with its size bound
//! (`protocol::deflate::Inflater::inflate`), and the compressor it must agree with.
//!
//! Input: `[params][max_len lo][max_len hi][prefix len][compressed...]`. `params` picks the
//! window (8-15), `client_no_context_takeover` (reset after each message), a ×16 scale on the
//! 16-bit `max_len` (so limits reach ~1 MiB), and the compressor level for the round trip. The
//! compressed bytes are cut into messages at each `00 00 ff ff` (the sync-flush tail a sender
//! strips, so a stream of several context-takeover messages is exactly what a client sends) and
//! inflated in order by one inflater, each appended after a `prefix len`-byte prefix already in
//! the buffer (the bound counts from the buffer's length on entry).
//!
//! Properties: no panic; on success a message inflates to at most `max_len` bytes; on error the
//! buffer is back to its length on entry; the buffer's capacity never grows past what it had or
//! `entry length + max_len + 1`, whichever is larger (a deflate bomb never allocates beyond the
//! limit). Round trip: the same input bytes (their first 8 KiB), compressed by `Compressor` (any
//! level and window, with and without reset) and inflated with a bound of exactly their length,
//! come back unchanged; with a bound one byte smaller they are refused as too big.

use bytes::BytesMut;
use shardcast::protocol::deflate::{Compressor, InflateError, Inflater};

/// The sync-flush tail a sender strips from each message.
const SYNC_TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// The `inflate` target.
pub fn inflate(data: &[u8]) {
    let [params, lo, hi, prefix, rest @ ..] = data else {
        return;
    };
    let window = 8 + (params & 7);
    let reset = params & 8 != 0;
    let scale = if params & 0x10 != 0 { 16 } else { 1 };
    let max_len = usize::from(u16::from_le_bytes([*lo, *hi])) * scale;
    let level = u32::from(params >> 5);
    bounded(window, reset, max_len, usize::from(*prefix), rest);
    // The first 8 KiB are plenty for the round trip (its cost grows with the level and size).
    round_trip(window, reset, level, &rest[..rest.len().min(8192)]);
}

/// Every message of `stream` through one inflater, each checked against the bound.
fn bounded(window: u8, reset: bool, max_len: usize, prefix: usize, stream: &[u8]) {
    let mut inflater = Inflater::new(window);
    assert!((9..=15).contains(&inflater.window_bits()));
    for message in split_messages(stream) {
        let mut out = BytesMut::with_capacity(prefix);
        out.resize(prefix, 0xAA);
        let (len, cap) = (out.len(), out.capacity());
        match inflater.inflate(message, max_len, reset, &mut out) {
            Ok(()) => assert!(
                out.len() - len <= max_len,
                "{} > {max_len}",
                out.len() - len
            ),
            Err(e) => {
                assert_eq!(out.len(), len, "buffer not restored after {e:?}");
                let _ = (e.close_code(), e.as_str());
            }
        }
        let allowed = cap.max(len + max_len + 1);
        assert!(
            out.capacity() <= allowed,
            "capacity {} > {allowed}",
            out.capacity()
        );
        assert!(out[..len].iter().all(|&b| b == 0xAA), "prefix overwritten");
    }
}

/// Messages of a stream: cut after each `00 00 ff ff` (the tail dropped, as the sender does).
fn split_messages(stream: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = stream;
    while let Some(at) = rest.windows(4).position(|w| w == SYNC_TAIL) {
        out.push(&rest[..at]);
        rest = &rest[at + 4..];
    }
    out.push(rest);
    out
}

/// Compress then inflate `plain` (as one message, then as two with context kept): unchanged;
/// and `plain` with a bound one byte short is refused.
fn round_trip(window: u8, reset: bool, level: u32, plain: &[u8]) {
    let mut compressor = Compressor::new(level, window);
    let mut inflater = Inflater::new(window);
    let half = plain.len() / 2;
    for message in [plain, &plain[..half], &plain[half..]] {
        let mut compressed = Vec::new();
        compressor.compress(message, reset, &mut compressed);
        let mut out = BytesMut::new();
        inflater
            .inflate(&compressed, message.len(), reset, &mut out)
            .expect("our own compressed message inflates");
        assert_eq!(&out[..], message, "round trip changed the message");
        if !message.is_empty() && message.len() == plain.len() {
            // A bound one byte short refuses it (a fresh inflater: this one would be reset).
            let mut fresh = Compressor::new(level, window);
            let mut c = Vec::new();
            fresh.compress(message, true, &mut c);
            let mut out = BytesMut::new();
            let short = Inflater::new(window).inflate(&c, message.len() - 1, true, &mut out);
            assert_eq!(short, Err(InflateError::TooBig));
        }
    }
}
