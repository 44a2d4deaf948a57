//! permessage-deflate (RFC 7692): offer negotiation, a raw-deflate compressor and a bounded
//! inflater.
//!
//! Sans-io like the rest of [`protocol`](super): header strings and byte slices in, strings and
//! bytes out. The backend is flate2 over zlib-rs, the only zlib-family backend in the build
//! (zlib-family backends are the ones that honour windows below 15 bits).
//!
//! # Framing (RFC 7692 §7.2)
//! A message is compressed with a sync flush and the trailing `00 00 ff ff` of the flush's empty
//! stored block is stripped; the receiver appends it back before inflating. Without context
//! takeover each message is an independent deflate stream.
//!
//! # Window bits and zlib's 8-bit window
//! zlib and zlib-rs refuse a raw-deflate window of 8 bits (`deflateInit2` returns
//! `Z_STREAM_ERROR`; with a zlib header they silently use 9), and flate2 asserts 9..=15 and
//! panics on 8 (`Compress::new_with_window_bits(level, false, 8)` panics with "window_bits must be
//! within 9 ..= 15"; so does `Decompress::new_with_window_bits`). A `server_max_window_bits=8`
//! offer is still accepted: zlib's deflate never emits a match farther back than
//! `window size - 262` bytes (`MAX_DIST`: the window minus the longest match and the minimum
//! lookahead), so a stream made with a 9-bit window holds no distance above 250 and is valid for
//! a receiver with a 256-byte window. zlib-rs keeps that rule in every strategy (quick, fast,
//! medium, slow, rle, stored); the unit tests decode the produced streams and check the largest
//! distance. The Autobahn suite needs this: its cases 13.3, 13.5 and 13.7 offer
//! `server_max_window_bits=8`, and a declined offer counts as UNIMPLEMENTED there.
//!
//! Inflating is the easy direction: a larger window decodes a stream made with a smaller one, so
//! the inflater never uses fewer than 9 bits.

use std::borrow::Cow;

use bytes::{Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::close::CloseCode;
use super::frame::{server_header_len, write_server_header, OpCode};

/// The extension's registered name.
pub const EXTENSION_NAME: &str = "permessage-deflate";

/// The largest LZ77 window (and the default when a window parameter is absent).
pub const MAX_WINDOW_BITS: u8 = 15;

/// The smallest window RFC 7692 allows in an offer or response.
pub const MIN_WINDOW_BITS: u8 = 8;

/// The smallest raw-deflate window zlib (and zlib-rs, and flate2) will build.
const MIN_ZLIB_WINDOW_BITS: u8 = 9;

/// The empty stored block a sync flush ends with; stripped by the sender, appended by the receiver.
const SYNC_TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Inflated output is produced at most this many bytes at a time.
pub const INFLATE_CHUNK: usize = 16 * 1024;

/// The first inflate chunk when the output buffer has no spare room: small messages stay small.
const INFLATE_FIRST_CHUNK: usize = 1024;

/// A `compress_frame` scratch buffer larger than this is released after use.
const SCRATCH_KEEP: usize = 256 * 1024;

/// Negotiated parameters (RFC 7692 §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeflateParams {
    /// The server resets its compressor before every message (each message is an independent
    /// deflate stream).
    pub server_no_context_takeover: bool,
    /// The client resets its compressor before every message, so the server resets its inflater
    /// after every message.
    pub client_no_context_takeover: bool,
    /// LZ77 window the server compresses with (what the response's server_max_window_bits says,
    /// 15 if absent). 8 is possible: see [`DeflateParams::compress_window_bits`].
    pub server_max_window_bits: u8,
    /// Window the client compresses with (what the response's client_max_window_bits says, 15 if
    /// absent).
    pub client_max_window_bits: u8,
}

impl DeflateParams {
    /// The zlib window a [`Compressor`] for this connection is built with:
    /// `server_max_window_bits`, with 8 raised to 9 (a 9-bit zlib stream never reaches back more
    /// than 250 bytes, so it is valid for an 8-bit receiver).
    ///
    /// A frame made by a `Compressor` whose [`Compressor::window_bits`] is `w` may be sent to this
    /// connection if and only if `w <= self.compress_window_bits()`. A shared (per-shard)
    /// compressor with the default 15 bits therefore serves only connections that negotiated 15;
    /// others need a compressor with their window, or get the uncompressed frame (sending a
    /// message uncompressed, RSV1 clear, is always allowed once the extension is negotiated).
    pub fn compress_window_bits(&self) -> u8 {
        self.server_max_window_bits
            .clamp(MIN_ZLIB_WINDOW_BITS, MAX_WINDOW_BITS)
    }

    /// The window an [`Inflater`] for this connection is built with: `client_max_window_bits`,
    /// at least 9.
    pub fn inflate_window_bits(&self) -> u8 {
        self.client_max_window_bits
            .clamp(MIN_ZLIB_WINDOW_BITS, MAX_WINDOW_BITS)
    }
}

/// How the server compresses what it sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeflateMode {
    /// Each broadcast is compressed once, as an independent deflate stream, and the same frame
    /// goes to every subscriber: the response always carries `server_no_context_takeover`
    /// (RFC 7692 §7.1.1.1 lets the server add it).
    Shared,
    /// A compressor per connection: `server_no_context_takeover` only if the client asked for it,
    /// otherwise the compressor keeps its context across messages (~256 KiB per connection).
    Dedicated,
}

/// Parse every `Sec-WebSocket-Extensions` header value (a request may carry several headers, each
/// a comma-separated list of extensions; each extension `name; p1; p2=v`, values may be
/// quoted-strings per RFC 7692 §7 / RFC 6455 §9.1), consider the permessage-deflate offers in
/// order, and accept the FIRST one the server can honour. Returns the params and the exact
/// response extension string (e.g. "permessage-deflate; server_no_context_takeover;
/// server_max_window_bits=10"). A malformed or unacceptable offer is skipped (declined); if none
/// is acceptable, None (the connection proceeds uncompressed).
///
/// An offer is declined for: an unknown parameter, a duplicated parameter, a value on
/// `server_no_context_takeover` or `client_no_context_takeover`, `server_max_window_bits` without
/// a value, a window value that is not decimal digits or (leading zeros ignored) is outside
/// 8..=15, a quoted value that is not a token once unescaped, or any other syntax error in the
/// offer (an empty parameter, an unterminated quoted-string). Other extensions in the list are
/// ignored. Names are matched exactly (they are lowercase in RFC 7692).
///
/// The response echoes `client_no_context_takeover` when offered, answers an offered
/// `server_max_window_bits=N` with the same `N` (the server then compresses with `N`; 8 works,
/// see the module docs), and never sends `client_max_window_bits` (the client may use up to 15;
/// the inflater always has room for that).
pub fn negotiate(header_values: &[String], mode: DeflateMode) -> Option<(DeflateParams, String)> {
    header_values
        .iter()
        .flat_map(|value| SplitQuoted::new(value, b','))
        .filter_map(parse_extension)
        .find_map(Result::ok)
        .map(|offer| accept(offer, mode))
}

/// A syntactically valid permessage-deflate offer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Offer {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    /// The value of `server_max_window_bits`, if present.
    server_max_window_bits: Option<u8>,
    /// `None`: absent; `Some(None)`: present without a value; `Some(Some(n))`: a hint.
    client_max_window_bits: Option<Option<u8>>,
}

/// Why an offer was declined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
enum OfferError {
    /// Not `name[=value]` with a token name and a token or quoted-string value.
    #[error("malformed extension parameter")]
    Syntax,
    /// A parameter RFC 7692 does not define.
    #[error("unknown parameter")]
    UnknownParam,
    /// A parameter given twice.
    #[error("duplicated parameter")]
    DuplicateParam,
    /// A value on a parameter that takes none.
    #[error("parameter takes no value")]
    UnexpectedValue,
    /// `server_max_window_bits` without a value.
    #[error("parameter needs a value")]
    MissingValue,
    /// A window size that is not a decimal in 8..=15.
    #[error("invalid window bits")]
    InvalidValue,
}

/// Build the response for an accepted offer.
fn accept(offer: Offer, mode: DeflateMode) -> (DeflateParams, String) {
    let server_no_context_takeover = match mode {
        DeflateMode::Shared => true,
        DeflateMode::Dedicated => offer.server_no_context_takeover,
    };
    let mut response = String::from(EXTENSION_NAME);
    if server_no_context_takeover {
        response.push_str("; server_no_context_takeover");
    }
    if offer.client_no_context_takeover {
        response.push_str("; client_no_context_takeover");
    }
    if let Some(bits) = offer.server_max_window_bits {
        response.push_str("; server_max_window_bits=");
        response.push_str(&bits.to_string());
    }
    let params = DeflateParams {
        server_no_context_takeover,
        client_no_context_takeover: offer.client_no_context_takeover,
        server_max_window_bits: offer.server_max_window_bits.unwrap_or(MAX_WINDOW_BITS),
        client_max_window_bits: MAX_WINDOW_BITS,
    };
    (params, response)
}

/// Parse one element of an extension list. `None` for an empty element or another extension.
fn parse_extension(element: &str) -> Option<Result<Offer, OfferError>> {
    let element = trim_ows(element);
    if element.is_empty() {
        return None;
    }
    let mut parts = SplitQuoted::new(element, b';');
    let name = trim_ows(parts.next()?);
    if name != EXTENSION_NAME {
        return None;
    }
    Some(parse_offer_params(parts))
}

fn parse_offer_params<'a>(params: impl Iterator<Item = &'a str>) -> Result<Offer, OfferError> {
    let mut offer = Offer::default();
    for raw in params {
        let (name, value) = parse_param(raw)?;
        match name {
            "server_no_context_takeover" | "client_no_context_takeover" => {
                if value.is_some() {
                    return Err(OfferError::UnexpectedValue);
                }
                let flag = if name == "server_no_context_takeover" {
                    &mut offer.server_no_context_takeover
                } else {
                    &mut offer.client_no_context_takeover
                };
                if *flag {
                    return Err(OfferError::DuplicateParam);
                }
                *flag = true;
            }
            "server_max_window_bits" => {
                if offer.server_max_window_bits.is_some() {
                    return Err(OfferError::DuplicateParam);
                }
                let value = value.ok_or(OfferError::MissingValue)?;
                offer.server_max_window_bits =
                    Some(parse_window_bits(&value).ok_or(OfferError::InvalidValue)?);
            }
            "client_max_window_bits" => {
                if offer.client_max_window_bits.is_some() {
                    return Err(OfferError::DuplicateParam);
                }
                offer.client_max_window_bits = Some(match value {
                    None => None,
                    Some(v) => Some(parse_window_bits(&v).ok_or(OfferError::InvalidValue)?),
                });
            }
            _ => return Err(OfferError::UnknownParam),
        }
    }
    Ok(offer)
}

/// Split `name[=value]` and unquote the value.
fn parse_param(raw: &str) -> Result<(&str, Option<Cow<'_, str>>), OfferError> {
    let raw = trim_ows(raw);
    // A token cannot hold '=' (nor '"'), so the first '=' separates name and value.
    let (name, value) = match raw.find('=') {
        Some(i) => (trim_ows(&raw[..i]), Some(trim_ows(&raw[i + 1..]))),
        None => (raw, None),
    };
    if !is_token(name) {
        return Err(OfferError::Syntax);
    }
    let value = match value {
        None => None,
        Some(v) => Some(parse_value(v)?),
    };
    Ok((name, value))
}

/// A token, or a quoted-string whose unescaped content is a token (RFC 6455 §9.1).
fn parse_value(v: &str) -> Result<Cow<'_, str>, OfferError> {
    let Some(quoted) = v.strip_prefix('"') else {
        return if is_token(v) {
            Ok(Cow::Borrowed(v))
        } else {
            Err(OfferError::Syntax)
        };
    };
    let mut out = String::with_capacity(quoted.len());
    let mut bytes = quoted.bytes();
    loop {
        match bytes.next() {
            None => return Err(OfferError::Syntax), // unterminated
            Some(b'"') => break,
            Some(b'\\') => match bytes.next() {
                Some(b) if b.is_ascii() => out.push(char::from(b)),
                _ => return Err(OfferError::Syntax),
            },
            Some(b) if b.is_ascii() => out.push(char::from(b)),
            Some(_) => return Err(OfferError::Syntax),
        }
    }
    if bytes.next().is_some() || !is_token(&out) {
        return Err(OfferError::Syntax);
    }
    Ok(Cow::Owned(out))
}

/// Decimal digits (leading zeros allowed) with a value in 8..=15.
fn parse_window_bits(v: &str) -> Option<u8> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let significant = v.trim_start_matches('0');
    if significant.len() > 2 {
        return None;
    }
    let n: u8 = significant.parse().ok()?;
    (MIN_WINDOW_BITS..=MAX_WINDOW_BITS)
        .contains(&n)
        .then_some(n)
}

/// RFC 7230 `token`: one or more tchar.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

/// Trim optional whitespace (spaces and tabs).
fn trim_ows(s: &str) -> &str {
    s.trim_matches(|c| c == ' ' || c == '\t')
}

/// Split on an ASCII separator outside quoted-strings (with `\` escapes inside them). An
/// unterminated quoted-string runs to the end of the input (and is then rejected as a value).
struct SplitQuoted<'a> {
    rest: Option<&'a str>,
    sep: u8,
}

impl<'a> SplitQuoted<'a> {
    fn new(s: &'a str, sep: u8) -> SplitQuoted<'a> {
        SplitQuoted { rest: Some(s), sep }
    }
}

impl<'a> Iterator for SplitQuoted<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let s = self.rest?;
        let (mut in_quotes, mut escaped) = (false, false);
        for (i, b) in s.bytes().enumerate() {
            if escaped {
                escaped = false;
            } else if in_quotes {
                match b {
                    b'\\' => escaped = true,
                    b'"' => in_quotes = false,
                    _ => {}
                }
            } else if b == b'"' {
                in_quotes = true;
            } else if b == self.sep {
                // `sep` is ASCII, so `i` and `i + 1` are char boundaries.
                self.rest = Some(&s[i + 1..]);
                return Some(&s[..i]);
            }
        }
        self.rest = None;
        Some(s)
    }
}

/// A raw-deflate compressor (flate2, FlushCompress::Sync, trailing 00 00 ff ff stripped).
#[derive(Debug)]
pub struct Compressor {
    inner: Compress,
    window_bits: u8,
    /// Reused by [`Compressor::compress_frame`].
    scratch: Vec<u8>,
    runs: u64,
}

impl Compressor {
    /// A compressor at `level` (0-9, higher values are clamped to 9) with an LZ77 window of
    /// `window_bits`. 8 is built as zlib's 9, whose streams never reach back more than 250 bytes,
    /// so they suit a receiver with a 256-byte window; values outside 8..=15 are clamped.
    pub fn new(level: u32, window_bits: u8) -> Compressor {
        let window_bits = window_bits.clamp(MIN_ZLIB_WINDOW_BITS, MAX_WINDOW_BITS);
        Compressor {
            inner: Compress::new_with_window_bits(
                Compression::new(level.min(9)),
                false,
                window_bits,
            ),
            window_bits,
            scratch: Vec::new(),
            runs: 0,
        }
    }

    /// The zlib window in use (9..=15); see [`DeflateParams::compress_window_bits`].
    pub fn window_bits(&self) -> u8 {
        self.window_bits
    }

    /// Compress one whole message. With `reset` (no context takeover) the stream is reset BEFORE
    /// compressing so the output is an independent deflate stream.
    ///
    /// Appends the message's compressed payload (sync-flushed, `00 00 ff ff` stripped) to `out`.
    /// An empty message gives the single byte `00` (RFC 7692 §7.2.3.6). Never fails: should zlib
    /// ever report an error, the compressor is reset and the message is sent as stored
    /// (uncompressed) deflate blocks, which every receiver decodes.
    pub fn compress(&mut self, payload: &[u8], reset: bool, out: &mut Vec<u8>) {
        self.runs += 1;
        if reset {
            self.inner.reset();
        }
        let start = out.len();
        let flushed = self.deflate_sync(payload, out);
        if flushed.is_ok() && out[start..].ends_with(&SYNC_TAIL) {
            out.truncate(out.len() - SYNC_TAIL.len());
        } else if flushed.is_ok() && out.len() == start && payload.is_empty() {
            // zlib emits nothing for a sync flush right after another one with no input. The
            // stream is byte-aligned at a block boundary: send the empty stored block's header
            // byte; the receiver appends its LEN/NLEN (`00 00 ff ff`).
            out.push(0x00);
        } else {
            out.truncate(start);
            self.inner.reset();
            write_stored(payload, out);
        }
    }

    /// Run deflate with a sync flush over the whole payload, growing `out` as needed.
    fn deflate_sync(&mut self, payload: &[u8], out: &mut Vec<u8>) -> Result<(), ()> {
        let in_start = self.inner.total_in();
        let mut consumed = 0usize;
        loop {
            let rest = payload.get(consumed..).ok_or(())?;
            if out.capacity() - out.len() < 64 {
                out.reserve(rest.len() / 2 + 256);
            }
            let len_before = out.len();
            self.inner
                .compress_vec(rest, out, FlushCompress::Sync)
                .map_err(|_| ())?;
            let now = usize::try_from(self.inner.total_in() - in_start).map_err(|_| ())?;
            let progressed = now != consumed || out.len() != len_before;
            consumed = now;
            // The flush is complete once all input is in and zlib left output space unused.
            if consumed >= payload.len() && out.len() < out.capacity() {
                return Ok(());
            }
            if !progressed {
                return Err(());
            }
        }
    }

    /// Convenience: a complete unmasked server frame (FIN, RSV1 set, opcode) holding the
    /// compressed payload, as one contiguous `Bytes` of exactly the frame's size. `opcode` must be
    /// `Text` or `Binary` (control frames are never compressed).
    pub fn compress_frame(&mut self, opcode: OpCode, payload: &[u8], reset: bool) -> Bytes {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        self.compress(payload, reset, &mut scratch);
        let hl = server_header_len(scratch.len());
        let mut frame = BytesMut::with_capacity(hl + scratch.len());
        frame.resize(hl, 0);
        write_server_header(&mut frame[..hl], true, true, opcode, scratch.len());
        frame.extend_from_slice(&scratch);
        if scratch.capacity() <= SCRATCH_KEEP {
            self.scratch = scratch;
        }
        frame.freeze()
    }

    /// How many times compress() ran (for a test that counts compressor runs).
    pub fn runs(&self) -> u64 {
        self.runs
    }
}

/// Append `payload` as stored (uncompressed) deflate blocks, ending like a stripped sync flush:
/// with the header byte of an empty stored block whose `00 00 ff ff` the receiver appends.
/// Valid wherever the receiver is at a byte-aligned block boundary (start of a stream, or after a
/// previous message).
fn write_stored(payload: &[u8], out: &mut Vec<u8>) {
    out.reserve(payload.len() + payload.len() / 65535 * 5 + 6);
    for block in payload.chunks(usize::from(u16::MAX)) {
        // chunks() of at most u16::MAX bytes: the length fits.
        let len = u16::try_from(block.len()).unwrap_or(u16::MAX);
        out.push(0x00); // BFINAL=0, BTYPE=00, padding
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(block);
    }
    out.push(0x00);
}

/// Why a compressed message could not be inflated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InflateError {
    /// The inflated message would exceed the limit (close with 1009).
    #[error("inflated message exceeds the message limit")]
    TooBig,
    /// The payload is not a valid deflate stream (close with 1007).
    #[error("corrupt deflate data")]
    Corrupt,
}

impl InflateError {
    /// The close code to send for this error.
    pub fn close_code(self) -> CloseCode {
        match self {
            InflateError::TooBig => CloseCode::TOO_BIG,
            InflateError::Corrupt => CloseCode::INVALID_PAYLOAD,
        }
    }

    /// Static label, usable as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            InflateError::TooBig => "inflate_too_big",
            InflateError::Corrupt => "inflate_corrupt",
        }
    }
}

/// A raw-deflate decompressor bounded while inflating.
#[derive(Debug)]
pub struct Inflater {
    inner: Decompress,
    window_bits: u8,
}

/// How far one pass over an input slice got.
enum Fed<'a> {
    /// All input consumed, all output written.
    Consumed,
    /// A block with BFINAL set ended the deflate stream; this input was left after it.
    StreamEnd(&'a [u8]),
}

impl Inflater {
    /// An inflater for a peer compressing with `window_bits` (8..=15). The window used is never
    /// below zlib's 9 bits (a bigger window always decodes a smaller one).
    pub fn new(window_bits: u8) -> Inflater {
        let window_bits = window_bits.clamp(MIN_ZLIB_WINDOW_BITS, MAX_WINDOW_BITS);
        Inflater {
            inner: Decompress::new_with_window_bits(false, window_bits),
            window_bits,
        }
    }

    /// The zlib window in use (9..=15).
    pub fn window_bits(&self) -> u8 {
        self.window_bits
    }

    /// Inflate one whole message (appending 00 00 ff ff), writing into `out` (appending) but never
    /// letting the inflated output grow beyond `max_len` bytes: it stops and returns `TooBig` as
    /// soon as the limit would be exceeded. Output is produced at most [`INFLATE_CHUNK`] bytes at
    /// a time and `out` is grown by this function to at most `out.len() + max_len + 1` bytes of
    /// capacity (never past what it already had, if that was more), so a deflate bomb never
    /// allocates beyond the limit. With `reset` (client_no_context_takeover) the stream is reset
    /// after the message.
    ///
    /// On error `out` is truncated back to its length on entry and the stream is reset (the
    /// connection is expected to close). A message whose deflate stream ends with a final block
    /// (BFINAL set, RFC 7692 §7.2.3.4) resets the stream; data after that block starts a new one.
    /// An empty payload inflates to nothing.
    pub fn inflate(
        &mut self,
        compressed: &[u8],
        max_len: usize,
        reset: bool,
        out: &mut BytesMut,
    ) -> Result<(), InflateError> {
        let start = out.len();
        let result = self.inflate_message(compressed, start.saturating_add(max_len), out);
        if result.is_err() {
            out.truncate(start);
            self.inner.reset(false);
        } else if reset {
            self.inner.reset(false);
        }
        result
    }

    fn inflate_message(
        &mut self,
        compressed: &[u8],
        limit: usize,
        out: &mut BytesMut,
    ) -> Result<(), InflateError> {
        if compressed.is_empty() {
            return Ok(());
        }
        let mut chunk = compressed
            .len()
            .saturating_mul(4)
            .clamp(INFLATE_FIRST_CHUNK, INFLATE_CHUNK);
        let mut input = compressed;
        loop {
            match self.feed(input, limit, &mut chunk, out)? {
                Fed::Consumed => break,
                Fed::StreamEnd(rest) => {
                    self.inner.reset(false);
                    if rest.is_empty() {
                        // Ended with a final block: there is no sync point to append.
                        return Ok(());
                    }
                    input = rest;
                }
            }
        }
        if let Fed::StreamEnd(_) = self.feed(&SYNC_TAIL, limit, &mut chunk, out)? {
            self.inner.reset(false);
        }
        Ok(())
    }

    /// Inflate all of `input` into `out`, keeping `out.len() <= limit`.
    fn feed<'a>(
        &mut self,
        mut input: &'a [u8],
        limit: usize,
        chunk: &mut usize,
        out: &mut BytesMut,
    ) -> Result<Fed<'a>, InflateError> {
        // One byte past the limit is room enough to notice that the limit would be exceeded.
        let cap_limit = limit.saturating_add(1);
        loop {
            let len = out.len();
            let spare = out.capacity() - len;
            let room = cap_limit.saturating_sub(len);
            let want = if spare >= INFLATE_FIRST_CHUNK {
                spare
            } else {
                *chunk
            }
            .min(INFLATE_CHUNK)
            .min(room);
            reserve_bounded(out, want, cap_limit);
            out.resize(len + want, 0);
            let (in_before, out_before) = (self.inner.total_in(), self.inner.total_out());
            let status = self
                .inner
                .decompress(input, &mut out[len..], FlushDecompress::Sync);
            let consumed = (self.inner.total_in() - in_before) as usize;
            let produced = (self.inner.total_out() - out_before) as usize;
            out.truncate(len + produced.min(want));
            let status = status.map_err(|_| InflateError::Corrupt)?;
            if out.len() > limit {
                return Err(InflateError::TooBig);
            }
            input = input.get(consumed..).ok_or(InflateError::Corrupt)?;
            if status == Status::StreamEnd {
                return Ok(Fed::StreamEnd(input));
            }
            if consumed == 0 && produced == 0 {
                // No progress: done if the input is used up, otherwise zlib is stuck.
                return if input.is_empty() {
                    Ok(Fed::Consumed)
                } else {
                    Err(InflateError::Corrupt)
                };
            }
            if produced == want {
                *chunk = INFLATE_CHUNK;
            } else if input.is_empty() {
                // All input in and output space left over: nothing is pending.
                return Ok(Fed::Consumed);
            }
        }
    }
}

/// Make room for `want` more bytes, growing geometrically but never past `cap_limit` bytes of
/// capacity (`BytesMut::reserve` may double past it). Requires `out.len() + want <= cap_limit`.
fn reserve_bounded(out: &mut BytesMut, want: usize, cap_limit: usize) {
    if out.capacity() - out.len() >= want {
        return;
    }
    let target = out
        .capacity()
        .saturating_mul(2)
        .max(out.len() + want)
        .min(cap_limit.max(out.len() + want));
    let mut bigger = BytesMut::with_capacity(target);
    bigger.extend_from_slice(out);
    *out = bigger;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hv(values: &[&str]) -> Vec<String> {
        values.iter().map(|s| s.to_string()).collect()
    }

    fn shared(values: &[&str]) -> Option<(DeflateParams, String)> {
        negotiate(&hv(values), DeflateMode::Shared)
    }

    fn dedicated(values: &[&str]) -> Option<(DeflateParams, String)> {
        negotiate(&hv(values), DeflateMode::Dedicated)
    }

    fn response(r: Option<(DeflateParams, String)>) -> Option<String> {
        r.map(|(_, s)| s)
    }

    fn params(snct: bool, cnct: bool, smwb: u8) -> DeflateParams {
        DeflateParams {
            server_no_context_takeover: snct,
            client_no_context_takeover: cnct,
            server_max_window_bits: smwb,
            client_max_window_bits: 15,
        }
    }

    fn offer_error(element: &str) -> Option<OfferError> {
        parse_extension(element).and_then(Result::err)
    }

    #[test]
    fn negotiate_plain_offers() {
        // RFC 7692 §7.1.3 / §5: the simplest offer.
        assert_eq!(
            shared(&["permessage-deflate"]),
            Some((
                params(true, false, 15),
                "permessage-deflate; server_no_context_takeover".to_string()
            ))
        );
        assert_eq!(
            dedicated(&["permessage-deflate"]),
            Some((params(false, false, 15), "permessage-deflate".to_string()))
        );
        // client_max_window_bits without a value: we leave it out (client may use 15).
        assert_eq!(
            response(dedicated(&["permessage-deflate; client_max_window_bits"])),
            Some("permessage-deflate".to_string())
        );
        // A client hint with a value is accepted; the response still leaves it out.
        let (p, r) = dedicated(&["permessage-deflate; client_max_window_bits=10"]).unwrap();
        assert_eq!(r, "permessage-deflate");
        assert_eq!(p.client_max_window_bits, 15);
    }

    #[test]
    fn negotiate_rfc_window_examples() {
        // RFC 7692 §7.1.3 / §8 examples.
        let (p, r) = dedicated(&[
            "permessage-deflate; client_max_window_bits; server_max_window_bits=10, \
             permessage-deflate; client_max_window_bits",
        ])
        .unwrap();
        assert_eq!(r, "permessage-deflate; server_max_window_bits=10");
        assert_eq!(p, params(false, false, 10));
        assert_eq!(p.compress_window_bits(), 10);

        let (p, r) =
            shared(&["permessage-deflate; server_max_window_bits=10, permessage-deflate"]).unwrap();
        assert_eq!(
            r,
            "permessage-deflate; server_no_context_takeover; server_max_window_bits=10"
        );
        assert_eq!(p, params(true, false, 10));

        // Both no-context-takeover flags requested and echoed.
        let (p, r) = dedicated(&[
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
        ])
        .unwrap();
        assert_eq!(
            r,
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
        assert_eq!(p, params(true, true, 15));
    }

    #[test]
    fn negotiate_window_8_and_leading_zeros() {
        let (p, r) = dedicated(&["permessage-deflate; server_max_window_bits=8"]).unwrap();
        assert_eq!(r, "permessage-deflate; server_max_window_bits=8");
        assert_eq!(p.server_max_window_bits, 8);
        assert_eq!(p.compress_window_bits(), 9);
        let (p, r) = dedicated(&["permessage-deflate; server_max_window_bits=010"]).unwrap();
        assert_eq!(r, "permessage-deflate; server_max_window_bits=10");
        assert_eq!(p.server_max_window_bits, 10);
        let (p, _) =
            dedicated(&["permessage-deflate; server_max_window_bits=0000000000000000009"]).unwrap();
        assert_eq!(p.server_max_window_bits, 9);
        // client_max_window_bits=8 (the client compresses with 256 bytes): fine, inflate with 9+.
        let (p, _) = dedicated(&["permessage-deflate; client_max_window_bits=8"]).unwrap();
        assert_eq!(p.inflate_window_bits(), 15);
    }

    #[test]
    fn negotiate_first_acceptable_offer() {
        // The first offer is invalid (16), the second is taken.
        assert_eq!(
            response(dedicated(&[
                "permessage-deflate; server_max_window_bits=16, \
                 permessage-deflate; client_no_context_takeover"
            ])),
            Some("permessage-deflate; client_no_context_takeover".to_string())
        );
        // Across several headers, in order.
        assert_eq!(
            response(dedicated(&[
                "x-foo",
                "permessage-deflate; foo",
                "permessage-deflate; server_max_window_bits=12",
                "permessage-deflate",
            ])),
            Some("permessage-deflate; server_max_window_bits=12".to_string())
        );
        // Two valid offers: the first wins.
        assert_eq!(
            response(dedicated(&[
                "permessage-deflate; server_no_context_takeover, permessage-deflate"
            ])),
            Some("permessage-deflate; server_no_context_takeover".to_string())
        );
    }

    #[test]
    fn other_extensions_ignored() {
        assert_eq!(
            response(dedicated(&[
                "foo; bar=1; baz=\"x,y\", permessage-deflate; client_max_window_bits, qux"
            ])),
            Some("permessage-deflate".to_string())
        );
        assert_eq!(dedicated(&["x-webkit-deflate-frame"]), None);
        assert_eq!(dedicated(&["deflate-frame, permessage-deflatex"]), None);
    }

    #[test]
    fn no_offer_is_none() {
        assert_eq!(dedicated(&[]), None);
        assert_eq!(dedicated(&[""]), None);
        assert_eq!(dedicated(&[" , ,"]), None);
        assert_eq!(shared(&["foo, bar"]), None);
    }

    #[test]
    fn declined_offers() {
        let cases: &[(&str, OfferError)] = &[
            (
                "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
                OfferError::DuplicateParam,
            ),
            (
                "permessage-deflate; client_max_window_bits; client_max_window_bits=10",
                OfferError::DuplicateParam,
            ),
            (
                "permessage-deflate; server_max_window_bits=10; server_max_window_bits=11",
                OfferError::DuplicateParam,
            ),
            (
                "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
                OfferError::DuplicateParam,
            ),
            ("permessage-deflate; foo", OfferError::UnknownParam),
            ("permessage-deflate; mem_level=8", OfferError::UnknownParam),
            (
                "permessage-deflate; server_no_context_takeover=1",
                OfferError::UnexpectedValue,
            ),
            (
                "permessage-deflate; client_no_context_takeover=\"x\"",
                OfferError::UnexpectedValue,
            ),
            (
                "permessage-deflate; server_max_window_bits",
                OfferError::MissingValue,
            ),
            (
                "permessage-deflate; server_max_window_bits=7",
                OfferError::InvalidValue,
            ),
            (
                "permessage-deflate; server_max_window_bits=16",
                OfferError::InvalidValue,
            ),
            (
                "permessage-deflate; server_max_window_bits=abc",
                OfferError::InvalidValue,
            ),
            (
                "permessage-deflate; server_max_window_bits=1a",
                OfferError::InvalidValue,
            ),
            (
                "permessage-deflate; server_max_window_bits=+9",
                OfferError::InvalidValue,
            ),
            (
                "permessage-deflate; server_max_window_bits=00",
                OfferError::InvalidValue,
            ),
            (
                "permessage-deflate; server_max_window_bits=-9",
                OfferError::InvalidValue,
            ),
            (
                "permessage-deflate; server_max_window_bits=99999999999999999999",
                OfferError::InvalidValue,
            ),
            (
                "permessage-deflate; client_max_window_bits=7",
                OfferError::InvalidValue,
            ),
            (
                "permessage-deflate; client_max_window_bits=16",
                OfferError::InvalidValue,
            ),
            (
                "permessage-deflate; client_max_window_bits=abc",
                OfferError::InvalidValue,
            ),
            (
                "permessage-deflate; client_max_window_bits=\"abc\"",
                OfferError::InvalidValue,
            ),
            (
                "permessage-deflate; server_max_window_bits=",
                OfferError::Syntax,
            ),
            ("permessage-deflate;", OfferError::Syntax),
            (
                "permessage-deflate; ; server_no_context_takeover",
                OfferError::Syntax,
            ),
            (
                "permessage-deflate; server_max_window_bits=\"10",
                OfferError::Syntax,
            ),
            (
                "permessage-deflate; server_max_window_bits=\"1 0\"",
                OfferError::Syntax,
            ),
            (
                "permessage-deflate; server_max_window_bits=\"10\"x",
                OfferError::Syntax,
            ),
            (
                "permessage-deflate; server_max_window_bits=\"\"",
                OfferError::Syntax,
            ),
            (
                "permessage-deflate; server_max_window_bits=1 0",
                OfferError::Syntax,
            ),
            (
                "permessage-deflate; server max_window_bits=10",
                OfferError::Syntax,
            ),
            (
                "permessage-deflate; \"server_max_window_bits\"=10",
                OfferError::Syntax,
            ),
        ];
        for (offer, want) in cases {
            assert_eq!(offer_error(offer), Some(*want), "{offer}");
            assert_eq!(dedicated(&[offer]), None, "{offer}");
            assert_eq!(shared(&[offer]), None, "{offer}");
            // A declined offer falls through to the next one (here in a second header: an
            // unterminated quoted-string swallows the rest of its own header value).
            let (p, _) = dedicated(&[offer, "permessage-deflate; client_no_context_takeover"])
                .unwrap_or_else(|| panic!("{offer}"));
            assert!(p.client_no_context_takeover, "{offer}");
        }
    }

    #[test]
    fn quoted_values() {
        let (p, r) = dedicated(&["permessage-deflate; client_max_window_bits=\"10\""]).unwrap();
        assert_eq!(r, "permessage-deflate");
        assert_eq!(p, params(false, false, 15));
        let (p, r) = dedicated(&["permessage-deflate; server_max_window_bits=\"10\""]).unwrap();
        assert_eq!(r, "permessage-deflate; server_max_window_bits=10");
        assert_eq!(p.server_max_window_bits, 10);
        // Backslash escapes inside the quoted-string.
        let (p, _) = dedicated(&["permessage-deflate; server_max_window_bits=\"1\\1\""]).unwrap();
        assert_eq!(p.server_max_window_bits, 11);
        // A comma or semicolon inside quotes does not split the list; the value is no token,
        // so the offer is declined and the next one taken.
        let (p, _) = dedicated(&["permessage-deflate; server_max_window_bits=\"1,0\", \
             permessage-deflate; server_max_window_bits=9"])
        .unwrap();
        assert_eq!(p.server_max_window_bits, 9);
        let (p, _) = dedicated(&["permessage-deflate; server_max_window_bits=\"1;0\", \
             permessage-deflate; server_max_window_bits=12"])
        .unwrap();
        assert_eq!(p.server_max_window_bits, 12);
        // Whitespace around separators.
        let (p, r) = dedicated(&[
            "  permessage-deflate ;\tserver_max_window_bits = 10 ; client_max_window_bits  ",
        ])
        .unwrap();
        assert_eq!(r, "permessage-deflate; server_max_window_bits=10");
        assert_eq!(p.server_max_window_bits, 10);
    }

    /// What the Autobahn fuzzingclient (autobahntestsuite 0.10.9 / 25.10.1) offers in cases 12.*
    /// and 13.*, and what we answer in each mode.
    #[test]
    fn autobahn_offers() {
        const BASE: &str = "permessage-deflate; client_no_context_takeover; client_max_window_bits";
        let cases: &[(&str, String, &str, &str)] = &[
            // 12.* and 13.1
            (
                "13.1",
                BASE.to_string(),
                "permessage-deflate; client_no_context_takeover",
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
            ),
            (
                "13.2",
                format!("{BASE}; server_no_context_takeover"),
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
            ),
            (
                "13.3",
                format!("{BASE}; server_max_window_bits=8"),
                "permessage-deflate; client_no_context_takeover; server_max_window_bits=8",
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
                 server_max_window_bits=8",
            ),
            (
                "13.4",
                format!("{BASE}; server_max_window_bits=15"),
                "permessage-deflate; client_no_context_takeover; server_max_window_bits=15",
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
                 server_max_window_bits=15",
            ),
            (
                "13.5",
                format!("{BASE}; server_no_context_takeover; server_max_window_bits=8"),
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
                 server_max_window_bits=8",
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
                 server_max_window_bits=8",
            ),
            (
                "13.6",
                format!("{BASE}; server_no_context_takeover; server_max_window_bits=15"),
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
                 server_max_window_bits=15",
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
                 server_max_window_bits=15",
            ),
            (
                "13.7",
                format!(
                    "{BASE}; server_no_context_takeover; server_max_window_bits=8, \
                     {BASE}; server_no_context_takeover, {BASE}"
                ),
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
                 server_max_window_bits=8",
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
                 server_max_window_bits=8",
            ),
        ];
        for (case, offer, want_dedicated, want_shared) in cases {
            assert_eq!(
                response(dedicated(&[offer])).as_deref(),
                Some(*want_dedicated),
                "{case}"
            );
            assert_eq!(
                response(shared(&[offer])).as_deref(),
                Some(*want_shared),
                "{case}"
            );
        }
    }

    // ---- compression ----

    /// xorshift64*: deterministic pseudo-random bytes.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next() as u8).collect()
        }
    }

    /// Text-like data: words from a small vocabulary, with some long repeated runs.
    fn texty(rng: &mut Rng, n: usize) -> Vec<u8> {
        let words: Vec<Vec<u8>> = (0..64)
            .map(|_| {
                let len = 2 + rng.below(10);
                (0..len).map(|_| b'a' + rng.below(26) as u8).collect()
            })
            .collect();
        let block = rng.bytes(700);
        let mut out = Vec::with_capacity(n + 700);
        while out.len() < n {
            match rng.below(20) {
                0 => out.extend_from_slice(&block),
                1 => out.extend_from_slice(br#"{"room":"lobby","seq":12345,"#),
                _ => {
                    out.extend_from_slice(&words[rng.below(words.len())]);
                    out.push(b' ');
                }
            }
        }
        out.truncate(n);
        out
    }

    fn inflate_all(inf: &mut Inflater, compressed: &[u8], reset: bool) -> Vec<u8> {
        let mut out = BytesMut::new();
        inf.inflate(compressed, usize::MAX, reset, &mut out)
            .expect("inflate");
        out.to_vec()
    }

    #[test]
    fn rfc7692_examples_inflate() {
        // §7.2.3.1: "Hello" compressed.
        let mut inf = Inflater::new(15);
        assert_eq!(
            inflate_all(&mut inf, &[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00], false),
            b"Hello"
        );
        // §7.2.3.2: the second "Hello" refers back into the first message.
        assert_eq!(
            inflate_all(&mut inf, &[0xf2, 0x00, 0x11, 0x00, 0x00], false),
            b"Hello"
        );
        // §7.2.3.3: a stored block.
        let mut inf = Inflater::new(15);
        let stored = [
            0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x00,
        ];
        assert_eq!(inflate_all(&mut inf, &stored, false), b"Hello");
        // §7.2.3.4: a final block (BFINAL=1), then a new stream; the inflater goes on working.
        let bfinal = [0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00, 0x00];
        assert_eq!(inflate_all(&mut inf, &bfinal, false), b"Hello");
        assert_eq!(
            inflate_all(&mut inf, &[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00], false),
            b"Hello"
        );
        // A message ending exactly with the final block.
        let bfinal_only = [0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        assert_eq!(inflate_all(&mut inf, &bfinal_only, false), b"Hello");
        assert_eq!(inflate_all(&mut inf, &stored, false), b"Hello");
        // §7.2.3.5: two deflate blocks in one message.
        let two_blocks = [
            0xf2, 0x48, 0x05, 0x00, 0x00, 0x00, 0xff, 0xff, 0xca, 0xc9, 0xc9, 0x07, 0x00,
        ];
        assert_eq!(inflate_all(&mut inf, &two_blocks, false), b"Hello");
        // §7.2.3.6: an empty message.
        assert_eq!(inflate_all(&mut inf, &[0x00], false), b"");
    }

    #[test]
    fn rfc7692_examples_compress() {
        let mut c = Compressor::new(6, 15);
        let mut out = Vec::new();
        c.compress(b"Hello", false, &mut out);
        assert_eq!(out, [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]);
        // With context takeover the second "Hello" is a back-reference (§7.2.3.2).
        out.clear();
        c.compress(b"Hello", false, &mut out);
        assert_eq!(out, [0xf2, 0x00, 0x11, 0x00, 0x00]);
        // Reset: an independent stream again.
        out.clear();
        c.compress(b"Hello", true, &mut out);
        assert_eq!(out, [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]);
        // Empty message (§7.2.3.6), fresh and after a previous message.
        for reset in [true, false, false] {
            out.clear();
            c.compress(b"", reset, &mut out);
            assert_eq!(out, [0x00], "reset={reset}");
        }
        assert_eq!(c.runs(), 6);
    }

    #[test]
    fn round_trip_sizes() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let sizes = [0usize, 1, 5, 100, 1000, 16_384, 65_535, 65_536, 150_000];
        for &(level, window) in &[(1u32, 15u8), (6, 15), (6, 8), (9, 12), (0, 15)] {
            for &takeover in &[false, true] {
                let mut c = Compressor::new(level, window);
                let mut inf = Inflater::new(window);
                for (i, &n) in sizes.iter().enumerate() {
                    let msg = if i % 2 == 0 {
                        texty(&mut rng, n)
                    } else {
                        rng.bytes(n)
                    };
                    let mut compressed = Vec::new();
                    c.compress(&msg, !takeover, &mut compressed);
                    let back = inflate_all(&mut inf, &compressed, !takeover);
                    assert!(
                        back == msg,
                        "level {level} window {window} takeover {takeover} size {n}"
                    );
                    // The same message again: with takeover it compresses against the first.
                    let mut again = Vec::new();
                    c.compress(&msg, !takeover, &mut again);
                    if takeover && (100..=16_384).contains(&n) && level > 0 && window == 15 {
                        assert!(again.len() < compressed.len().max(8), "size {n}");
                    }
                    assert!(inflate_all(&mut inf, &again, !takeover) == msg);
                }
            }
        }
    }

    #[test]
    fn reset_streams_are_independent() {
        // Messages compressed with reset inflate on a fresh inflater each, in any order.
        let mut rng = Rng(7);
        let mut c = Compressor::new(6, 15);
        let msgs: Vec<Vec<u8>> = (0..5).map(|_| texty(&mut rng, 3000)).collect();
        let compressed: Vec<Vec<u8>> = msgs
            .iter()
            .map(|m| {
                let mut out = Vec::new();
                c.compress(m, true, &mut out);
                out
            })
            .collect();
        for (m, z) in msgs.iter().zip(&compressed).rev() {
            let mut inf = Inflater::new(15);
            assert!(&inflate_all(&mut inf, z, true) == m);
        }
    }

    #[test]
    fn compress_frame_layout() {
        let mut c = Compressor::new(6, 15);
        let f = c.compress_frame(OpCode::Text, b"Hello", true);
        assert_eq!(
            &f[..],
            &[0xc1, 0x07, 0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]
        );
        let mut rng = Rng(3);
        for n in [300usize, 70_000, 300_000] {
            let msg = rng.bytes(n); // incompressible: the frame needs a 4- or 10-byte header
            let f = c.compress_frame(OpCode::Binary, &msg, true);
            let rules = super::super::frame::HeaderRules {
                allow_rsv1: true,
                require_mask: false,
                max_frame_bytes: u64::MAX >> 1,
            };
            let h = super::super::frame::decode_header(&f, &rules)
                .unwrap()
                .unwrap();
            assert!(h.fin && h.rsv1);
            assert_eq!(h.opcode, OpCode::Binary);
            assert_eq!(h.header_len + h.payload_len as usize, f.len());
            let mut inf = Inflater::new(15);
            assert!(inflate_all(&mut inf, &f[h.header_len..], true) == msg);
        }
        assert_eq!(c.runs(), 4);
    }

    #[test]
    fn stored_fallback_decodes() {
        let mut rng = Rng(11);
        let mut inf = Inflater::new(15);
        for n in [0usize, 5, 65_535, 65_536, 140_000] {
            let msg = rng.bytes(n);
            let mut out = Vec::new();
            write_stored(&msg, &mut out);
            assert!(inflate_all(&mut inf, &out, false) == msg, "size {n}");
        }
        // Mixed with compressed messages on one context.
        let mut c = Compressor::new(6, 15);
        let mut out = Vec::new();
        c.compress(b"Hello Hello", false, &mut out);
        assert_eq!(inflate_all(&mut inf, &out, false), b"Hello Hello");
    }

    #[test]
    #[should_panic(expected = "window_bits must be within 9 ..= 15")]
    fn flate2_panics_on_raw_window_8() {
        // Why Compressor::new raises 8 to 9: flate2 asserts before zlib-rs (which would refuse
        // a raw 8-bit window with Z_STREAM_ERROR, like zlib).
        let _ = Compress::new_with_window_bits(Compression::default(), false, 8);
    }

    #[test]
    fn inflate_limit_exact() {
        let mut rng = Rng(5);
        let msg = texty(&mut rng, 50_000);
        let mut c = Compressor::new(6, 15);
        let mut z = Vec::new();
        c.compress(&msg, true, &mut z);
        let mut inf = Inflater::new(15);
        // Exactly at the limit: fine, and the prefix already in `out` does not count.
        let mut out = BytesMut::from(&b"prefix"[..]);
        inf.inflate(&z, msg.len(), true, &mut out).unwrap();
        assert_eq!(&out[..6], b"prefix");
        assert!(out[6..] == msg[..]);
        // One byte less: TooBig, `out` back as it was.
        let mut out = BytesMut::from(&b"prefix"[..]);
        assert_eq!(
            inf.inflate(&z, msg.len() - 1, true, &mut out),
            Err(InflateError::TooBig)
        );
        assert_eq!(&out[..], b"prefix");
        // The inflater was reset and works again.
        assert!(inflate_all(&mut inf, &z, true) == msg);
        assert_eq!(InflateError::TooBig.close_code(), CloseCode::TOO_BIG);
    }

    /// LSB-first bit packing, as deflate wants.
    struct BitWriter {
        out: Vec<u8>,
        acc: u64,
        n: u32,
    }

    impl BitWriter {
        fn put(&mut self, value: u32, bits: u32) {
            self.acc |= u64::from(value) << self.n;
            self.n += bits;
            while self.n >= 8 {
                self.out.push(self.acc as u8);
                self.acc >>= 8;
                self.n -= 8;
            }
        }

        fn finish(mut self) -> Vec<u8> {
            if self.n > 0 {
                self.out.push(self.acc as u8);
            }
            self.out
        }
    }

    /// A hand-made deflate bomb: one dynamic block holding a literal zero and `matches` copies of
    /// (length 258, distance 1), two bits each, then the stripped sync flush. Inflates to
    /// `1 + 258 * matches` zeros at ~1032:1.
    fn zero_bomb(matches: usize) -> Vec<u8> {
        let mut w = BitWriter {
            out: Vec::with_capacity(matches / 4 + 64),
            acc: 0,
            n: 0,
        };
        w.put(0, 1); // BFINAL
        w.put(2, 2); // dynamic Huffman
        w.put(29, 5); // HLIT: 286 literal/length codes
        w.put(0, 5); // HDIST: 1 distance code
        w.put(14, 4); // HCLEN: 18 code length codes
                      // Code length code lengths in RFC 1951 order 16,17,18,0,8,7,9,6,10,5,11,4,12,3,13,2,14,1:
                      // symbol 18 gets 1 bit (code 0), symbols 1 and 2 get 2 bits (codes 10, 11).
        for len in [0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 2] {
            w.put(len, 3);
        }
        // Huffman codes go MSB first: 2-bit codes are written reversed.
        let (cl_18, cl_1, cl_2) = ((0, 1), (0b01, 2), (0b11, 2));
        let put_code = |w: &mut BitWriter, (code, len): (u32, u32)| w.put(code, len);
        put_code(&mut w, cl_2); // literal 0: 2 bits
        put_code(&mut w, cl_18);
        w.put(138 - 11, 7); // literals 1..=138: unused
        put_code(&mut w, cl_18);
        w.put(117 - 11, 7); // literals 139..=255: unused
        put_code(&mut w, cl_2); // 256 (end of block): 2 bits
        put_code(&mut w, cl_18);
        w.put(28 - 11, 7); // 257..=284: unused
        put_code(&mut w, cl_1); // 285 (length 258): 1 bit
        put_code(&mut w, cl_1); // distance code 0 (distance 1): 1 bit
                                // Literal/length codes: 285 -> 0, literal 0 -> 10, 256 -> 11. Distance 0 -> 0.
        w.put(0b01, 2); // literal 0
        for _ in 0..matches {
            w.put(0, 2); // length 258, distance 1
        }
        w.put(0b11, 2); // end of block
        w.put(0, 3); // sync flush: empty stored block header, then padding
        w.finish()
    }

    #[test]
    fn deflate_bomb_is_bounded() {
        // ~100 MiB of zeros in ~100 KiB.
        let matches = (100 << 20) / 258 + 1;
        let bomb = zero_bomb(matches);
        assert!(bomb.len() < 110 * 1024, "bomb is {} bytes", bomb.len());
        let total = 1 + 258 * matches;
        assert!(total >= 100 << 20);

        let max = 1 << 20;
        let mut inf = Inflater::new(15);
        let mut out = BytesMut::new();
        assert_eq!(
            inf.inflate(&bomb, max, false, &mut out),
            Err(InflateError::TooBig)
        );
        assert!(out.is_empty());
        assert!(
            out.capacity() <= max + 1,
            "output buffer grew to {} bytes",
            out.capacity()
        );
        // A pre-sized buffer is used as it is and not grown.
        let mut out = BytesMut::with_capacity(4 * max);
        let cap = out.capacity();
        assert_eq!(
            inf.inflate(&bomb, max, false, &mut out),
            Err(InflateError::TooBig)
        );
        assert_eq!(out.capacity(), cap);

        // The same shape made by zlib: 8 MiB of zeros streamed into a compressor in chunks.
        let mut c = Compress::new(Compression::new(6), false);
        let zeros = vec![0u8; 1 << 20];
        let mut made = Vec::with_capacity(16 * 1024);
        for i in 0..8 {
            let flush = if i == 7 {
                FlushCompress::Sync
            } else {
                FlushCompress::None
            };
            let mut done = 0;
            loop {
                if made.capacity() - made.len() < 1024 {
                    made.reserve(16 * 1024);
                }
                let before = c.total_in();
                c.compress_vec(&zeros[done..], &mut made, flush).unwrap();
                done += (c.total_in() - before) as usize;
                if done == zeros.len() && made.len() < made.capacity() {
                    break;
                }
            }
        }
        assert!(made.ends_with(&SYNC_TAIL));
        made.truncate(made.len() - 4);
        assert!(made.len() < 10 * 1024, "zlib bomb is {} bytes", made.len());
        let mut out = BytesMut::new();
        assert_eq!(
            inf.inflate(&made, max, true, &mut out),
            Err(InflateError::TooBig)
        );
        assert!(out.capacity() <= max + 1);
        // With a large enough limit it inflates completely.
        inf.inflate(&made, 8 << 20, true, &mut out).unwrap();
        assert_eq!(out.len(), 8 << 20);
        assert!(out.iter().all(|&b| b == 0));
    }

    #[test]
    fn corrupt_input() {
        let mut out = BytesMut::new();
        // BTYPE=11 is reserved.
        let mut inf = Inflater::new(15);
        assert_eq!(
            inf.inflate(&[0x06, 0x00], 1024, false, &mut out),
            Err(InflateError::Corrupt)
        );
        assert!(out.is_empty());
        // A back-reference with no history (the second RFC "Hello" on a fresh inflater).
        let mut inf = Inflater::new(15);
        assert_eq!(
            inf.inflate(&[0xf2, 0x00, 0x11, 0x00, 0x00], 1024, false, &mut out),
            Err(InflateError::Corrupt)
        );
        // Stored block whose NLEN is not the complement of LEN.
        let mut inf = Inflater::new(15);
        assert_eq!(
            inf.inflate(&[0x00, 0x05, 0x00, 0x00, 0x00, b'H'], 1024, false, &mut out),
            Err(InflateError::Corrupt)
        );
        assert!(out.is_empty());
        assert_eq!(
            InflateError::Corrupt.close_code(),
            CloseCode::INVALID_PAYLOAD
        );
        // After an error the inflater was reset and decodes a fresh stream.
        assert_eq!(
            inflate_all(&mut inf, &[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00], false),
            b"Hello"
        );
    }

    #[test]
    fn random_and_truncated_input_never_panics() {
        let mut rng = Rng(0xDEAD_BEEF);
        let mut inf = Inflater::new(15);
        let mut small = Inflater::new(8);
        for i in 0..3000 {
            let n = rng.below(80);
            let input = rng.bytes(n);
            let max = 1 + rng.below(8192);
            let mut out = BytesMut::from(&b"xy"[..]);
            let _ = inf.inflate(&input, max, i % 3 == 0, &mut out);
            assert!(out.len() <= 2 + max);
            assert_eq!(&out[..2], b"xy");
            let _ = small.inflate(&input, max, i % 2 == 0, &mut out);
        }
        let msg = texty(&mut rng, 20_000);
        let mut c = Compressor::new(6, 15);
        let mut z = Vec::new();
        c.compress(&msg, true, &mut z);
        for cut in 0..z.len() {
            let mut inf = Inflater::new(15);
            let mut out = BytesMut::new();
            let _ = inf.inflate(&z[..cut], msg.len(), true, &mut out);
            assert!(out.len() <= msg.len());
            // Flipped bits.
            let mut bad = z.clone();
            bad[cut] ^= 1 << (cut % 8);
            let _ = inf.inflate(&bad, msg.len(), false, &mut out);
        }
    }

    // ---- window check: a minimal deflate decoder that records back-reference distances ----

    struct Bits<'a> {
        data: &'a [u8],
        pos: usize,
        bit: u32,
    }

    impl Bits<'_> {
        fn bit(&mut self) -> Option<u32> {
            let byte = *self.data.get(self.pos)?;
            let v = (byte >> self.bit) & 1;
            self.bit += 1;
            if self.bit == 8 {
                self.bit = 0;
                self.pos += 1;
            }
            Some(u32::from(v))
        }

        fn bits(&mut self, n: u32) -> Option<u32> {
            let mut v = 0;
            for i in 0..n {
                v |= self.bit()? << i;
            }
            Some(v)
        }

        fn align(&mut self) {
            if self.bit != 0 {
                self.bit = 0;
                self.pos += 1;
            }
        }
    }

    struct Huffman {
        count: [u16; 16],
        symbol: Vec<u16>,
    }

    impl Huffman {
        fn new(lengths: &[u8]) -> Huffman {
            let mut count = [0u16; 16];
            for &l in lengths {
                count[usize::from(l)] += 1;
            }
            let mut offs = [0u16; 16];
            for len in 1..15 {
                offs[len + 1] = offs[len] + count[len];
            }
            let mut symbol = vec![0u16; lengths.len()];
            for (s, &l) in lengths.iter().enumerate() {
                if l != 0 {
                    symbol[usize::from(offs[usize::from(l)])] = s as u16;
                    offs[usize::from(l)] += 1;
                }
            }
            Huffman { count, symbol }
        }

        fn decode(&self, b: &mut Bits<'_>) -> Option<usize> {
            let (mut code, mut first, mut index) = (0i32, 0i32, 0i32);
            for len in 1..16 {
                code |= b.bit()? as i32;
                let count = i32::from(self.count[len]);
                if code - count < first {
                    return Some(usize::from(self.symbol[(index + code - first) as usize]));
                }
                index += count;
                first = (first + count) << 1;
                code <<= 1;
            }
            None
        }
    }

    const LEN_EXTRA: [u32; 29] = [
        0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0,
    ];
    const DIST_BASE: [usize; 30] = [
        1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537,
        2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577,
    ];
    const DIST_EXTRA: [u32; 30] = [
        0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12,
        13, 13,
    ];

    fn dynamic_tables(b: &mut Bits<'_>) -> Option<(Huffman, Huffman)> {
        const ORDER: [usize; 19] = [
            16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15,
        ];
        let nlen = b.bits(5)? as usize + 257;
        let ndist = b.bits(5)? as usize + 1;
        let ncode = b.bits(4)? as usize + 4;
        let mut code_lengths = [0u8; 19];
        for &i in &ORDER[..ncode] {
            code_lengths[i] = b.bits(3)? as u8;
        }
        let code = Huffman::new(&code_lengths);
        let mut lengths = Vec::with_capacity(nlen + ndist);
        while lengths.len() < nlen + ndist {
            match code.decode(b)? {
                sym @ 0..=15 => lengths.push(sym as u8),
                16 => {
                    let prev = *lengths.last()?;
                    for _ in 0..3 + b.bits(2)? {
                        lengths.push(prev);
                    }
                }
                17 => lengths.extend(std::iter::repeat_n(0, 3 + b.bits(3)? as usize)),
                _ => lengths.extend(std::iter::repeat_n(0, 11 + b.bits(7)? as usize)),
            }
        }
        if lengths.len() != nlen + ndist {
            return None;
        }
        Some((
            Huffman::new(&lengths[..nlen]),
            Huffman::new(&lengths[nlen..]),
        ))
    }

    /// The largest back-reference distance in a raw deflate stream that ends on a byte-aligned
    /// block boundary (sync-flushed messages with their tails restored). None if malformed.
    fn max_distance(data: &[u8]) -> Option<usize> {
        let mut b = Bits {
            data,
            pos: 0,
            bit: 0,
        };
        let mut max = 0;
        while b.pos < data.len() {
            let _final = b.bits(1)?;
            match b.bits(2)? {
                0 => {
                    b.align();
                    let len = b.bits(16)?;
                    if b.bits(16)? != !len & 0xffff {
                        return None;
                    }
                    b.pos += len as usize;
                }
                kind @ (1 | 2) => {
                    let (lit, dist) = if kind == 1 {
                        let mut l = [8u8; 288];
                        l[144..256].fill(9);
                        l[256..280].fill(7);
                        (Huffman::new(&l), Huffman::new(&[5u8; 30]))
                    } else {
                        dynamic_tables(&mut b)?
                    };
                    loop {
                        let sym = lit.decode(&mut b)?;
                        if sym < 256 {
                            continue;
                        }
                        if sym == 256 {
                            break;
                        }
                        b.bits(*LEN_EXTRA.get(sym - 257)?)?;
                        let ds = dist.decode(&mut b)?;
                        let d = DIST_BASE.get(ds)? + b.bits(DIST_EXTRA[ds])? as usize;
                        max = max.max(d);
                    }
                }
                _ => return None,
            }
        }
        (b.pos == data.len()).then_some(max)
    }

    /// A conversation's worth of messages through one compressor: each message's payload, and
    /// the stream as the receiver sees it (tails restored). With `takeover`, later messages may
    /// refer to earlier ones.
    fn stream_of(c: &mut Compressor, msgs: &[Vec<u8>], takeover: bool) -> (Vec<Vec<u8>>, Vec<u8>) {
        let mut stream = Vec::new();
        let mut payloads = Vec::new();
        for m in msgs {
            let mut z = Vec::new();
            c.compress(m, !takeover, &mut z);
            stream.extend_from_slice(&z);
            stream.extend_from_slice(&SYNC_TAIL);
            payloads.push(z);
        }
        (payloads, stream)
    }

    fn window_test_messages() -> Vec<Vec<u8>> {
        let mut rng = Rng(0x5EED);
        let mut msgs = vec![texty(&mut rng, 6000)];
        // Random blocks repeated at distances around 256 and far beyond.
        for period in [200usize, 255, 256, 257, 300, 600, 2000] {
            let block = rng.bytes(period);
            msgs.push(block.repeat(2500 / period + 2));
        }
        msgs.push(vec![0u8; 2000]);
        msgs
    }

    /// Every zlib-rs strategy (level 0 stored, 1 quick, 2-3 fast, 4-6 medium, 7-9 slow) keeps
    /// back-references within the window, and within 250 bytes for the 8-bit window.
    #[test]
    fn window_bits_bound_back_references() {
        let msgs = window_test_messages();
        // The checker sees long distances when the window allows them.
        let mut c = Compressor::new(6, 15);
        let far = max_distance(&stream_of(&mut c, &msgs, true).1).unwrap();
        assert!(far > 1024, "max distance {far}");
        for window in [8u8, 9, 10, 15] {
            for level in 0..=9 {
                for takeover in [false, true] {
                    let mut c = Compressor::new(level, window);
                    let (payloads, stream) = stream_of(&mut c, &msgs, takeover);
                    let max = max_distance(&stream).expect("valid deflate");
                    // zlib's MAX_DIST: the window minus 262 (250 for the 9 bits used for 8),
                    // within what a receiver with `window` bits can take.
                    let max_dist = (1usize << window.max(9)) - 262;
                    assert!(max_dist <= 1 << window);
                    assert!(max <= max_dist, "window {window} level {level}: {max}");
                    // And the messages decode.
                    let mut inf = Inflater::new(window);
                    for (m, z) in msgs.iter().zip(&payloads) {
                        assert!(inflate_all(&mut inf, z, !takeover) == *m);
                    }
                }
            }
        }
    }
}
