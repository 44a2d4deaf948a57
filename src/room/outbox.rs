//! Coalescing: frames broadcast to a room during one turn of the shard's loop are appended to
//! the room's [`Outbox`] (one buffer per wire format) and handed to the members once, at the end
//! of the turn. A subscriber then gets everything of that turn in one buffer segment: the
//! kernel's send op, not the syscall, is the unit of cost.

use bytes::BytesMut;

use crate::ids::ConnId;
use crate::wire::{Frames, WIRES};

/// Frames larger than this are never copied into an outbox; they go out as they are.
pub(crate) const COALESCE_FRAME_MAX: usize = 4096;
/// An outbox is flushed early once it holds this much.
pub(crate) const OUTBOX_MAX: usize = 64 * 1024;

/// How a batch of frames is handed to a room's members.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct How {
    /// Leave this member out (`echo_to_sender = false`).
    pub(crate) skip: Option<ConnId>,
    /// Only members that asked for presence events.
    pub(crate) events_only: bool,
    /// Members with nothing queued get the frame written at once (see `Conn::send_direct`).
    pub(crate) direct: bool,
}

/// Frames waiting to be handed to a room's members at the end of the loop turn.
// `One` is the common case (a room's only broadcast of the turn) and must not allocate; the
// rooms hold one `Outbox` each, so its size (one `Frames`) is not worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Default)]
pub(crate) enum Outbox {
    /// Nothing pending.
    #[default]
    Empty,
    /// One broadcast: handed over as it is, no copy.
    One(Frames),
    /// Several broadcasts concatenated once per wire format, and how many.
    Many {
        /// One buffer per wire format.
        bufs: Box<[Option<BytesMut>; WIRES]>,
        /// Messages.
        n: u64,
    },
}

impl Outbox {
    /// Take the pending frames and the number of messages in them.
    pub(crate) fn take(&mut self) -> Option<(Frames, u64)> {
        match std::mem::take(self) {
            Outbox::Empty => None,
            Outbox::One(f) => Some((f, 1)),
            Outbox::Many { bufs, n } => {
                let mut f = Frames::default();
                for (slot, b) in f.0.iter_mut().zip(*bufs) {
                    *slot = b.map(BytesMut::freeze);
                }
                Some((f, n))
            }
        }
    }

    pub(crate) fn append(bufs: &mut [Option<BytesMut>; WIRES], f: &Frames) {
        for (b, x) in bufs.iter_mut().zip(&f.0) {
            if let Some(x) = x {
                b.get_or_insert_with(|| BytesMut::with_capacity(2048))
                    .extend_from_slice(x);
            }
        }
    }

    pub(crate) fn len(bufs: &[Option<BytesMut>; WIRES]) -> usize {
        bufs.iter().flatten().map(BytesMut::len).max().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn many_broadcasts_become_one_buffer_per_format() {
        let a = Frames::plain(Bytes::from_static(b"ab"));
        let b = Frames::plain(Bytes::from_static(b"cd"));
        let mut bufs: Box<[Option<BytesMut>; WIRES]> = Box::default();
        Outbox::append(&mut bufs, &a);
        Outbox::append(&mut bufs, &b);
        assert_eq!(Outbox::len(&bufs), 4);
        let mut o = Outbox::Many { bufs, n: 2 };
        let (f, n) = o.take().unwrap();
        assert_eq!(n, 2);
        assert_eq!(f.0[0].as_deref(), Some(&b"abcd"[..]));
        assert!(matches!(o, Outbox::Empty));
        assert!(o.take().is_none());
    }
}
