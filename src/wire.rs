//! What goes on the wire for a room message: the six wire formats ([`Wire`]: raw frames,
//! envelope JSON, envelope CBOR, each plain or permessage-deflate compressed), a message's
//! encodings ([`Frames`]), and the sequenced broadcast ([`Bcast`]) whose encodings are made at
//! most once, by whichever shard needs one first, in lock-free once-cells shared by every shard.
//!
//! Recipients share each encoding (`Bytes`) by refcount: nothing here is copied per recipient.
//! The [`Encoder`] is the one place a shard serializes and compresses broadcasts.

use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use crate::config::Compression;
use crate::ids::{ConnId, ShardId, Tick};
use crate::metrics::ShardStats;
use crate::protocol::deflate::{Compressor, DeflateMode, Inflater};
use crate::protocol::envelope::{self, Data, Format, GapMark, ServerOp};
use crate::protocol::frame::{encode_server_frame, OpCode};
use crate::protocol::sse;

/// The wire formats a room message can be sent in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Wire {
    /// Raw client, plain frames.
    Raw = 0,
    /// Raw client with permessage-deflate (shared mode).
    RawZ = 1,
    /// Envelope JSON, plain.
    Json = 2,
    /// Envelope JSON, compressed.
    JsonZ = 3,
    /// Envelope CBOR, plain.
    Cbor = 4,
    /// Envelope CBOR, compressed.
    CborZ = 5,
    /// Envelope JSON as Server-Sent Events (`GET /sse`).
    Sse = 6,
}

/// Number of wire formats.
pub const WIRES: usize = 7;

impl Wire {
    /// All formats, by index.
    pub const ALL: [Wire; WIRES] = [
        Wire::Raw,
        Wire::RawZ,
        Wire::Json,
        Wire::JsonZ,
        Wire::Cbor,
        Wire::CborZ,
        Wire::Sse,
    ];

    /// The wire of a connection: raw or an envelope format, compressed or not.
    pub fn of(format: Option<Format>, compressed: bool) -> Wire {
        match (format, compressed) {
            (None, false) => Wire::Raw,
            (None, true) => Wire::RawZ,
            (Some(Format::Json), false) => Wire::Json,
            (Some(Format::Json), true) => Wire::JsonZ,
            (Some(Format::Cbor), false) => Wire::Cbor,
            (Some(Format::Cbor), true) => Wire::CborZ,
        }
    }

    /// Raw frames (`/ws/{room}`)?
    pub fn is_raw(self) -> bool {
        matches!(self, Wire::Raw | Wire::RawZ)
    }

    /// Compressed variant?
    pub fn is_compressed(self) -> bool {
        matches!(self, Wire::RawZ | Wire::JsonZ | Wire::CborZ)
    }

    /// The envelope format, if any.
    pub fn format(self) -> Option<Format> {
        match self {
            Wire::Raw | Wire::RawZ => None,
            Wire::Json | Wire::JsonZ | Wire::Sse => Some(Format::Json),
            Wire::Cbor | Wire::CborZ => Some(Format::Cbor),
        }
    }

    /// The uncompressed variant.
    pub(crate) fn plain(self) -> Wire {
        match self {
            Wire::RawZ => Wire::Raw,
            Wire::JsonZ => Wire::Json,
            Wire::CborZ => Wire::Cbor,
            w => w,
        }
    }
}

/// One room message (or event) encoded per wire format: `None` where nobody on this shard takes
/// that format (or it does not apply, e.g. presence events for raw clients).
#[derive(Debug, Clone, Default)]
pub struct Frames(pub [Option<Bytes>; WIRES]);

impl Frames {
    /// A raw message: plain frame, and the shared compressed frame when there is one.
    pub fn raw(plain: Bytes, deflate: Option<Bytes>) -> Frames {
        let z = deflate.unwrap_or_else(|| plain.clone());
        Frames([Some(plain), Some(z), None, None, None, None, None])
    }

    /// Plain frames only (raw and raw-deflate members get the same bytes).
    pub fn plain(plain: Bytes) -> Frames {
        Frames::raw(plain, None)
    }

    /// The largest encoding.
    pub(crate) fn max_len(&self) -> usize {
        self.0.iter().flatten().map(Bytes::len).max().unwrap_or(0)
    }
}

/// A once-set slot for one encoding, shared between shards without a lock: the first shard to
/// need an encoding makes it; if two race, one keeps its own and the other's is dropped.
#[derive(Debug, Default)]
struct RaceCell(AtomicPtr<Bytes>);

impl RaceCell {
    fn get(&self) -> Option<&Bytes> {
        // SAFETY: a non-null pointer was made by `Box::into_raw` in `set` and is freed only in
        // `drop`, which has `&mut self`.
        unsafe { self.0.load(Ordering::Acquire).as_ref() }
    }

    fn set(&self, b: Bytes) -> &Bytes {
        let new = Box::into_raw(Box::new(b));
        match self
            .0
            .compare_exchange(ptr::null_mut(), new, Ordering::AcqRel, Ordering::Acquire)
        {
            // SAFETY: we just published `new`; it lives until `drop`.
            Ok(_) => unsafe { &*new },
            Err(current) => {
                // SAFETY: `new` was never shared; `current` is the published one (see `get`).
                unsafe {
                    drop(Box::from_raw(new));
                    &*current
                }
            }
        }
    }
}

impl Drop for RaceCell {
    fn drop(&mut self) {
        let p = *self.0.get_mut();
        if !p.is_null() {
            // SAFETY: made by `Box::into_raw` in `set`; nobody else can hold it any more.
            unsafe { drop(Box::from_raw(p)) }
        }
    }
}

/// What a room message carries.
#[derive(Debug)]
pub enum Body {
    /// A raw client's message, as the server frame it became.
    Raw {
        /// The unmasked server frame.
        frame: Bytes,
    },
    /// An envelope or API publish.
    Data(Data),
}

/// What a sequenced broadcast is.
#[derive(Debug)]
pub enum Kind {
    /// A room message.
    Message {
        /// Publishing envelope connection (`None`: raw client or HTTP API).
        from: Option<u64>,
        /// The content.
        body: Body,
    },
    /// A presence event: `conn` subscribed.
    Join {
        /// The connection.
        conn: u64,
        /// Its user (authenticated connections).
        user: Option<Arc<str>>,
        /// Its info.
        info: Arc<Data>,
    },
    /// A presence event: `conn` left.
    Leave {
        /// The connection.
        conn: u64,
        /// Its user (authenticated connections).
        user: Option<Arc<str>>,
        /// Its info.
        info: Arc<Data>,
    },
}

/// A sequenced room message or presence event, shared by every shard (and kept in the room's
/// history), with each wire encoding made at most once.
#[derive(Debug)]
pub struct Bcast {
    /// Room name.
    pub room: Arc<str>,
    /// Seq in the room (0 for presence events).
    pub seq: u64,
    /// When it was sequenced (history ttl).
    pub(crate) at: Tick,
    /// Message or event.
    pub kind: Kind,
    /// The publishing connection (shard, slot), for `echo_to_sender = false`.
    pub origin: Option<(ShardId, ConnId)>,
    /// Raw members already got it on the direct path: only envelope formats go out.
    pub raw_done: bool,
    /// Cluster mode: messages before this one were lost and could not be recovered; every
    /// envelope member gets it marked `"gap": true`.
    pub(crate) gap: bool,
    cells: [RaceCell; WIRES],
}

impl Bcast {
    pub(crate) fn new(
        room: Arc<str>,
        seq: u64,
        at: Tick,
        kind: Kind,
        origin: Option<(ShardId, ConnId)>,
    ) -> Bcast {
        Bcast {
            room,
            seq,
            at,
            kind,
            origin,
            raw_done: false,
            gap: false,
            cells: Default::default(),
        }
    }

    /// A raw message sequenced after its direct delivery (raw members have it already).
    pub(crate) fn raw_sequenced(room: Arc<str>, seq: u64, at: Tick, frames: &Frames) -> Bcast {
        let plain = frames.0[Wire::Raw as usize].clone().unwrap_or_default();
        Bcast {
            room,
            seq,
            at,
            kind: Kind::Message {
                from: None,
                body: Body::Raw {
                    frame: plain.clone(),
                },
            },
            origin: None,
            raw_done: true,
            gap: false,
            cells: Default::default(),
        }
    }

    /// Approximate payload bytes, for the history's byte cap.
    pub fn weight(&self) -> usize {
        fn data(d: &Data) -> usize {
            match d {
                Data::Bytes(b) => b.len(),
                Data::Text(t) => t.len(),
                Data::Array(a) => 8 + a.iter().map(data).sum::<usize>(),
                Data::Map(m) => 8 + m.iter().map(|(k, v)| data(k) + data(v)).sum::<usize>(),
                Data::Tag(_, v) => 8 + data(v),
                _ => 8,
            }
        }
        64 + match &self.kind {
            Kind::Message {
                body: Body::Raw { frame },
                ..
            } => frame.len(),
            Kind::Message {
                body: Body::Data(d),
                ..
            } => data(d),
            Kind::Join { info, .. } | Kind::Leave { info, .. } => data(info),
        }
    }

    /// Presence events only go to members that asked for them.
    pub fn is_event(&self) -> bool {
        !matches!(self.kind, Kind::Message { .. })
    }

    /// The message's data as envelope clients see it.
    pub fn data(&self) -> Option<std::borrow::Cow<'_, Data>> {
        match &self.kind {
            Kind::Message {
                body: Body::Data(d),
                ..
            } => Some(std::borrow::Cow::Borrowed(d)),
            Kind::Message {
                body: Body::Raw { frame },
                ..
            } => {
                let (op, payload) = split_frame(frame);
                Some(std::borrow::Cow::Owned(envelope::raw_frame_data(
                    op == OpCode::Text,
                    payload,
                )))
            }
            _ => None,
        }
    }

    /// `from` of a message.
    pub fn from(&self) -> Option<u64> {
        match &self.kind {
            Kind::Message { from, .. } => *from,
            _ => None,
        }
    }
}

/// Opcode and payload of one of our own (complete, unmasked, single) server frames.
pub(crate) fn split_frame(frame: &[u8]) -> (OpCode, &[u8]) {
    let op = match frame.first().map(|b| b & 0x0f) {
        Some(1) => OpCode::Text,
        _ => OpCode::Binary,
    };
    let hl = match frame.get(1).map(|b| b & 0x7f) {
        Some(126) => 4,
        Some(127) => 10,
        _ => 2,
    };
    (op, frame.get(hl..).unwrap_or(&[]))
}

/// Header length, payload length and first byte of the first of our own server frames in `buf`.
fn frame_bounds(buf: &[u8]) -> Option<(usize, usize, u8)> {
    let (&b0, rest) = buf.split_first()?;
    let (hl, len) = match rest.first()? & 0x7f {
        126 => (
            4,
            u64::from(u16::from_be_bytes(rest.get(1..3)?.try_into().ok()?)),
        ),
        127 => (10, u64::from_be_bytes(rest.get(1..9)?.try_into().ok()?)),
        n => (2, u64::from(n)),
    };
    Some((hl, usize::try_from(len).ok()?, b0))
}

/// `batch` (one or more of our envelope frames for one room, as queued for a connection on
/// `wire`) with its first message marked `"gap": true` ([`envelope::mark_gap`]). A compressed
/// message (shared mode: no context) is inflated and goes out uncompressed. `None` when the
/// batch holds no message (only presence events), its first message is marked already, or the
/// wire is raw (raw clients have no seq). A batch whose first message is marked already comes
/// back as it is.
#[cold]
pub(crate) fn gap_frame(batch: &Bytes, wire: Wire) -> Option<Bytes> {
    let format = wire.format()?;
    if wire == Wire::Sse {
        let marked =
            sse::replace_first_data(batch, |json| match envelope::mark_gap(json, format) {
                GapMark::Marked(m) => Some(m),
                GapMark::AlreadyMarked => Some(json.to_vec()),
                GapMark::NotAMessage => None,
            });
        return marked.map(Bytes::from);
    }
    let mut at = 0;
    while at < batch.len() {
        let (hl, len, b0) = frame_bounds(&batch[at..])?;
        let end = at.checked_add(hl + len)?;
        let payload = batch.get(at + hl..end)?;
        let op = if b0 & 0x0f == 1 {
            OpCode::Text
        } else {
            OpCode::Binary
        };
        let marked = if b0 & 0x40 != 0 {
            let mut plain = bytes::BytesMut::new();
            let mut inflater = Inflater::new(15);
            inflater
                .inflate(payload, usize::MAX, true, &mut plain)
                .ok()?;
            envelope::mark_gap(&plain, format)
        } else {
            envelope::mark_gap(payload, format)
        };
        match marked {
            GapMark::Marked(m) => {
                let frame = encode_server_frame(op, false, &m);
                let mut out = Vec::with_capacity(batch.len() + frame.len());
                out.extend_from_slice(&batch[..at]);
                out.extend_from_slice(&frame);
                out.extend_from_slice(&batch[end..]);
                return Some(Bytes::from(out));
            }
            GapMark::AlreadyMarked => return Some(batch.clone()),
            GapMark::NotAMessage => at = end,
        }
    }
    None
}

/// Frame an envelope payload: text messages for JSON, binary for CBOR.
pub(crate) fn envelope_frame(op: &ServerOp<'_>, format: Format) -> Bytes {
    let payload = envelope::encode_server(op, format);
    let opcode = if format.is_text() {
        OpCode::Text
    } else {
        OpCode::Binary
    };
    encode_server_frame(opcode, false, &payload)
}

/// A shard's encoder for broadcasts: fills a [`Bcast`]'s cells and compresses shared-mode frames
/// with the shard's one compressor (created on first use).
#[derive(Default)]
pub(crate) struct Encoder {
    compressor: Option<Box<Compressor>>,
}

impl Encoder {
    /// The shared-mode compressed frame of one message (15-bit window, no context kept), or
    /// `None` when shared compression is off or the message is under the threshold.
    pub(crate) fn compress_shared(
        &mut self,
        z: &Compression,
        stats: &ShardStats,
        op: OpCode,
        payload: &[u8],
    ) -> Option<Bytes> {
        if !(z.enabled && z.mode == DeflateMode::Shared && payload.len() >= z.threshold_bytes) {
            return None;
        }
        let level = z.level;
        let c = self
            .compressor
            .get_or_insert_with(|| Box::new(Compressor::new(level, 15)));
        ShardStats::add(&stats.compressions, 1);
        let frame = c.compress_frame(op, payload, true);
        ShardStats::add(&stats.deflate_in_bytes, payload.len() as u64);
        ShardStats::add(&stats.deflate_out_bytes, frame.len() as u64);
        Some(frame)
    }

    /// The encoding of `b` for `wire` (made now if nobody made it yet); `None` when it does not
    /// apply (presence events to raw clients).
    pub(crate) fn frame(
        &mut self,
        z: &Compression,
        stats: &ShardStats,
        b: &Bcast,
        wire: Wire,
    ) -> Option<Bytes> {
        let cell = &b.cells[wire as usize];
        if let Some(f) = cell.get() {
            return Some(f.clone());
        }
        let frame = if wire == Wire::Sse {
            // The JSON frame (made once, shared with the WebSocket clients) as an event.
            let json = self.frame(z, stats, b, Wire::Json)?;
            let (_, payload) = split_frame(&json);
            ShardStats::add(&stats.sse_encodings, 1);
            let id = (!b.is_event()).then_some((&*b.room, b.seq));
            Bytes::from(sse::event(id, payload))
        } else if wire.is_compressed() {
            let base = self.frame(z, stats, b, wire.plain())?;
            let (op, payload) = split_frame(&base);
            self.compress_shared(z, stats, op, payload).unwrap_or(base)
        } else {
            plain_frame(stats, b, wire.format())?
        };
        Some(cell.set(frame).clone())
    }
}

/// The uncompressed encoding of `b`: a raw frame (`format` `None`) or an envelope frame.
fn plain_frame(stats: &ShardStats, b: &Bcast, format: Option<Format>) -> Option<Bytes> {
    let Some(format) = format else {
        return match &b.kind {
            Kind::Message {
                body: Body::Raw { frame },
                ..
            } => Some(frame.clone()),
            Kind::Message {
                body: Body::Data(d),
                ..
            } => {
                let (text, payload) = envelope::data_to_raw(d);
                let op = if text { OpCode::Text } else { OpCode::Binary };
                Some(encode_server_frame(op, false, &payload))
            }
            _ => None,
        };
    };
    ShardStats::add(&stats.envelope_encodings, 1);
    let room = &*b.room;
    let op = match &b.kind {
        Kind::Message { from, .. } => {
            let data = b.data()?;
            return Some(envelope_frame(
                &ServerOp::Message {
                    room,
                    seq: b.seq,
                    from: *from,
                    data: &data,
                },
                format,
            ));
        }
        Kind::Join { conn, user, info } => ServerOp::Join {
            room,
            conn: *conn,
            user: user.as_deref(),
            info,
        },
        Kind::Leave { conn, user, info } => ServerOp::Leave {
            room,
            conn: *conn,
            user: user.as_deref(),
            info,
        },
    };
    Some(envelope_frame(&op, format))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_wire_has_its_metric_labels() {
        assert_eq!(crate::metrics::WIRE_LABELS.len(), WIRES);
        for w in Wire::ALL {
            assert_eq!(Wire::ALL[w as usize], w);
        }
        assert_eq!(
            crate::metrics::WIRE_LABELS[Wire::Sse as usize],
            ("sse", "json")
        );
        assert_eq!(
            crate::metrics::WIRE_LABELS[Wire::CborZ as usize],
            ("websocket", "cbor_deflate")
        );
    }
}
