//! What a room's home shard knows of the room's channel (pure state machine, no I/O): whether
//! the node is subscribed, the last seq it delivered, the room's epoch, and the messages held
//! back while a catch-up from the history stream is on its way. `shard::home` feeds it what the
//! bridge reports and carries out what it answers.

use std::collections::BTreeMap;

use super::{judge_seq, Fetched, Incoming, SeqVerdict};

/// Messages held back at most while catching up (beyond: the oldest go, and a gap is reported).
pub const MAX_PENDING: usize = 4096;

/// Where the node stands with a room's channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Phase {
    /// Not subscribed (no local members).
    #[default]
    Idle,
    /// Subscribed; the room's seq and epoch are being read.
    Syncing,
    /// Subscribed and numbered: messages are delivered.
    Live,
}

/// One room's channel as its home sees it.
#[derive(Debug, Default)]
pub struct Track {
    /// Subscription state.
    pub phase: Phase,
    /// Last seq delivered to local members.
    pub last: u64,
    /// The room's epoch in Redis (0: not known yet).
    pub epoch: u64,
    /// A catch-up fetch is on its way.
    pub fetching: bool,
    /// The next delivered message must say `"gap": true`.
    pub gap: bool,
    /// Held back while syncing or catching up, by seq.
    pending: BTreeMap<u64, Incoming>,
    /// The epoch this track left last and the seq it had delivered in it.
    prev: Option<(u64, u64)>,
}

/// What to do after an input.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Steps {
    /// Deliver these, in order; `true`: mark it as following a gap.
    pub deliver: Vec<(Incoming, bool)>,
    /// Ask the bridge for the stream after this seq.
    pub fetch_after: Option<u64>,
    /// The epoch changed (Redis lost the room): local history is stale.
    pub reset: bool,
    /// Redis's seq went backwards in this epoch (a failover lost writes): ask the bridge to
    /// give the room a new epoch if it still has (epoch, this seq seen).
    pub bump: Option<(u64, u64)>,
}

impl Track {
    /// The node subscribes (first local member).
    pub fn subscribe(&mut self) {
        *self = Track {
            phase: Phase::Syncing,
            ..Track::default()
        };
    }

    /// The node unsubscribed (last local member left).
    pub fn unsubscribe(&mut self) {
        *self = Track::default();
    }

    /// A message arrived on the channel.
    pub fn on_message(&mut self, m: Incoming) -> Steps {
        let mut s = Steps::default();
        match self.phase {
            Phase::Idle => return s,
            Phase::Syncing => {
                self.hold(m);
                return s;
            }
            Phase::Live => {}
        }
        if self.epoch != m.epoch {
            // Redis lost the room (restarted empty, keys deleted): its numbering began again.
            s.reset = self.epoch != 0;
            self.gap |= self.epoch != 0;
            if self.epoch != 0 {
                self.prev = Some((self.epoch, self.last));
            }
            self.epoch = m.epoch;
            self.last = m.seq.saturating_sub(1);
            self.pending.clear();
            self.fetching = false;
        }
        if self.fetching {
            self.hold(m);
            return s;
        }
        match judge_seq(self.last, m.seq) {
            SeqVerdict::Duplicate => {}
            SeqVerdict::Next => self.deliver(m, &mut s),
            SeqVerdict::Jump { .. } => {
                self.hold(m);
                self.fetching = true;
                s.fetch_after = Some(self.last);
            }
        }
        s
    }

    fn hold(&mut self, m: Incoming) {
        if self.pending.len() >= MAX_PENDING {
            self.pending.pop_first();
            self.gap = true;
        }
        self.pending.insert(m.seq, m);
    }

    fn deliver(&mut self, m: Incoming, s: &mut Steps) {
        self.last = m.seq;
        let gap = std::mem::take(&mut self.gap);
        s.deliver.push((m, gap));
    }

    /// The bridge answered a fetch for this room (a catch-up, or any subscriber's read while
    /// syncing, which numbers the room).
    pub fn on_fetched(&mut self, f: Result<&Fetched, ()>, catch_up: bool) -> Steps {
        let mut s = Steps::default();
        match (self.phase, f) {
            (Phase::Idle, _) => return s,
            (Phase::Syncing, Ok(f)) => {
                self.phase = Phase::Live;
                self.epoch = f.epoch;
                self.last = f.seq;
            }
            (Phase::Syncing, Err(())) => {
                // Numbering unknown: the first message that comes sets it.
                self.phase = Phase::Live;
                self.epoch = 0;
            }
            (Phase::Live, Ok(f))
                if catch_up && super::regressed(self.epoch, self.last, f.epoch, f.seq) =>
            {
                // The new master lacks the last writes: what it numbers from now on reuses
                // seqs this node delivered. Follow its counter (the next message says gap) and
                // have the room renumbered in a new epoch (resumes then say recovered: false).
                s.bump = Some((self.epoch, self.last));
                s.reset = true;
                self.gap = true;
                self.last = f.seq;
                self.fetching = false;
            }
            (Phase::Live, Ok(f)) if catch_up && self.epoch != 0 && self.resumes(f.epoch) => {
                // Redis numbers the room in another epoch now (restarted empty, renumbered by
                // the failover guard, or back at the epoch this track left: a failover lost
                // the renumbering) and this node missed its first messages: what it asked
                // (after its last seq in the old numbering) is not where they are. Adopt the
                // epoch and ask again: after what this track delivered in it, or from up to
                // MAX_PENDING before Redis's seq for an epoch new to it; only that epoch's
                // entries are delivered (the first marked gap).
                let after = match self.prev {
                    Some((e, last)) if e == f.epoch => last,
                    _ => f.seq.saturating_sub(MAX_PENDING as u64),
                };
                s.reset = true;
                self.gap = true;
                self.prev = Some((self.epoch, self.last));
                (self.epoch, self.last) = (f.epoch, after);
                self.pending.retain(|_, m| m.epoch == f.epoch);
                s.fetch_after = Some(after);
                return s;
            }
            (Phase::Live, Ok(f)) if catch_up && f.epoch == self.epoch => {
                for e in &f.entries {
                    // An older epoch's entries (kept in the stream below a renumbering) are
                    // not this numbering's.
                    if e.seq > self.last && e.epoch == self.epoch {
                        self.gap |= e.seq != self.last + 1;
                        let e = e.clone();
                        self.deliver(e, &mut s);
                    }
                }
                self.gap |= f.seq > self.last && f.entries.is_empty();
                self.fetching = false;
            }
            (Phase::Live, _) if catch_up => {
                // The stream could not be read (or belongs to a new epoch): what was missed is
                // reported as a gap on the next message.
                self.gap = true;
                self.fetching = false;
            }
            (Phase::Live, _) => return s,
        }
        self.drain(&mut s);
        s
    }

    /// Deliver what was held back, in order; a hole becomes a gap (already fetched once).
    fn drain(&mut self, s: &mut Steps) {
        while let Some((_, m)) = self.pending.pop_first() {
            if self.epoch == 0 {
                self.epoch = m.epoch;
                self.last = m.seq.saturating_sub(1);
            }
            match judge_seq(self.last, m.seq) {
                SeqVerdict::Duplicate => {}
                SeqVerdict::Next => self.deliver(m, s),
                SeqVerdict::Jump { .. } => {
                    self.gap = true;
                    self.deliver(m, s);
                }
            }
        }
    }

    /// Whether a catch-up answering `epoch` (not this track's) is followed into it: the epoch
    /// this track left last, or a newer one (epochs are start times); an older one it never
    /// delivered in is not (its entries could be ones delivered before: reported as a gap).
    fn resumes(&self, epoch: u64) -> bool {
        epoch != self.epoch && (self.prev.is_some_and(|(e, _)| e == epoch) || epoch > self.epoch)
    }

    /// A reconnect or deafness: messages may have been missed; catch up from the stream.
    pub fn resync(&mut self) -> Option<u64> {
        if self.phase != Phase::Live || self.fetching {
            return None;
        }
        self.fetching = true;
        Some(self.last)
    }
}

/// How a subscribe with `since`/`epoch` is answered on a node at `last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// Not asked, or not possible (other epoch, lost): `recovered: false` at `last`.
    Fresh,
    /// Replay `since+1 ..= last` (none when equal).
    Replay,
    /// The client is ahead of this node: answer once the node has delivered up to `since`.
    Wait,
}

/// The resume decision (pure): `kept` is the oldest seq the replay sources hold after `since`
/// (stream or local ring; `None`: nothing after `since` is kept).
pub fn plan_resume(
    since: Option<u64>,
    asked_epoch: Option<u64>,
    epoch: u64,
    last: u64,
    kept: Option<u64>,
) -> Resume {
    let (Some(since), Some(asked)) = (since, asked_epoch) else {
        return Resume::Fresh;
    };
    if asked != epoch || epoch == 0 {
        return Resume::Fresh;
    }
    if since > last {
        return Resume::Wait;
    }
    if since == last || kept.is_some_and(|k| k <= since + 1) {
        Resume::Replay
    } else {
        Resume::Fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::sync::Arc;

    fn m(seq: u64, epoch: u64) -> Incoming {
        Incoming {
            room: Arc::from("r"),
            seq,
            epoch,
            node: Arc::from("n"),
            from: None,
            payload: Bytes::new(),
        }
    }

    fn fetched(seq: u64, epoch: u64, entries: Vec<Incoming>) -> Fetched {
        Fetched {
            seq,
            epoch,
            entries,
        }
    }

    fn seqs(s: &Steps) -> Vec<(u64, bool)> {
        s.deliver.iter().map(|(m, g)| (m.seq, *g)).collect()
    }

    fn live(last: u64) -> Track {
        let mut t = Track::default();
        t.subscribe();
        let f = Fetched {
            seq: last,
            epoch: 7,
            entries: vec![],
        };
        t.on_fetched(Ok(&f), false);
        t
    }

    #[test]
    fn syncing_holds_then_delivers_only_what_follows() {
        let mut t = Track::default();
        assert_eq!(
            t.on_message(m(1, 7)),
            Steps::default(),
            "idle: not subscribed"
        );
        t.subscribe();
        assert!(t.on_message(m(5, 7)).deliver.is_empty());
        assert!(t.on_message(m(6, 7)).deliver.is_empty());
        let f = Fetched {
            seq: 5,
            epoch: 7,
            entries: vec![],
        };
        let s = t.on_fetched(Ok(&f), false);
        assert_eq!(
            seqs(&s),
            vec![(6, false)],
            "5 was before the subscription point"
        );
        assert_eq!(seqs(&t.on_message(m(7, 7))), vec![(7, false)]);
        assert!(t.on_message(m(7, 7)).deliver.is_empty(), "duplicate");
    }

    #[test]
    fn a_jump_catches_up_from_the_stream() {
        let mut t = live(10);
        let s = t.on_message(m(13, 7));
        assert_eq!(s.fetch_after, Some(10));
        assert!(s.deliver.is_empty());
        assert!(
            t.on_message(m(14, 7)).deliver.is_empty(),
            "held while fetching"
        );
        let f = Fetched {
            seq: 14,
            epoch: 7,
            entries: vec![m(11, 7), m(12, 7), m(13, 7), m(14, 7)],
        };
        let s = t.on_fetched(Ok(&f), true);
        assert_eq!(
            seqs(&s),
            vec![(11, false), (12, false), (13, false), (14, false)]
        );
        assert_eq!(t.last, 14);
    }

    #[test]
    fn a_catch_up_finding_another_epoch_asks_again_and_delivers_only_its_entries() {
        // Delivered up to 20 in epoch 7; Redis was renumbered (epoch 9, counter set back to 10
        // by a failover) and published 11 and 12 there while this node did not hear.
        let mut t = live(20);
        assert_eq!(t.resync(), Some(20));
        let f = fetched(12, 9, vec![]);
        let s = t.on_fetched(Ok(&f), true);
        assert!(s.reset && s.deliver.is_empty());
        assert_eq!(
            s.fetch_after,
            Some(0),
            "asked again from before the new epoch's start"
        );
        assert!(
            t.on_message(m(13, 9)).deliver.is_empty(),
            "held while fetching"
        );
        let mut entries: Vec<Incoming> = (1..=10).map(|q| m(q, 7)).collect();
        entries.extend([m(11, 9), m(12, 9)]);
        let f = fetched(12, 9, entries);
        let s = t.on_fetched(Ok(&f), true);
        assert_eq!(seqs(&s), vec![(11, true), (12, false), (13, false)]);
        assert_eq!((t.epoch, t.last), (9, 13));
        // Back at epoch 7 (a failover lost the renumbering): from where this track left it.
        assert_eq!(t.resync(), Some(13));
        let f = fetched(21, 7, vec![]);
        let s = t.on_fetched(Ok(&f), true);
        assert_eq!(
            s.fetch_after,
            Some(20),
            "after what it delivered in epoch 7"
        );
        let entries: Vec<Incoming> = (1..=21).map(|q| m(q, 7)).collect();
        let f = fetched(21, 7, entries);
        assert_eq!(seqs(&t.on_fetched(Ok(&f), true)), vec![(21, true)]);
        // An older epoch it never delivered in: not followed (a gap on the next message).
        let mut t = live(20);
        t.resync();
        let f = fetched(30, 3, vec![]);
        let s = t.on_fetched(Ok(&f), true);
        assert!(s.fetch_after.is_none() && s.deliver.is_empty() && t.gap);
    }

    #[test]
    fn a_trimmed_stream_or_an_error_is_a_gap() {
        let mut t = live(10);
        t.on_message(m(20, 7));
        let f = Fetched {
            seq: 20,
            epoch: 7,
            entries: vec![m(18, 7), m(19, 7), m(20, 7)],
        };
        let s = t.on_fetched(Ok(&f), true);
        assert_eq!(seqs(&s), vec![(18, true), (19, false), (20, false)]);
        let mut t = live(10);
        t.on_message(m(12, 7));
        let s = t.on_fetched(Err(()), true);
        assert_eq!(seqs(&s), vec![(12, true)]);
    }

    #[test]
    fn a_new_epoch_restarts_numbering_with_a_gap() {
        let mut t = live(10);
        let s = t.on_message(m(1, 8));
        assert!(s.reset);
        assert_eq!(seqs(&s), vec![(1, true)]);
        assert_eq!(t.epoch, 8);
    }

    #[test]
    fn a_seq_regression_after_failover_is_a_gap_and_asks_a_new_epoch() {
        let mut t = live(10);
        assert_eq!(t.resync(), Some(10));
        // Published on the new master meanwhile, numbered from its lower counter.
        assert!(
            t.on_message(m(8, 7)).deliver.is_empty(),
            "held while fetching"
        );
        let f = Fetched {
            seq: 7,
            epoch: 7,
            entries: vec![],
        };
        let s = t.on_fetched(Ok(&f), true);
        assert_eq!(s.bump, Some((7, 10)));
        assert!(s.reset);
        assert_eq!(seqs(&s), vec![(8, true)], "not dropped as a duplicate");
        assert_eq!(seqs(&t.on_message(m(9, 7))), vec![(9, false)]);
        // The new epoch then restarts the numbering with a gap.
        assert_eq!(seqs(&t.on_message(m(10, 9))), vec![(10, true)]);
    }

    #[test]
    fn resync_asks_once() {
        let mut t = live(3);
        assert_eq!(t.resync(), Some(3));
        assert_eq!(t.resync(), None);
        let f = Fetched {
            seq: 3,
            epoch: 7,
            entries: vec![],
        };
        assert!(t.on_fetched(Ok(&f), true).deliver.is_empty());
        assert!(!t.gap && !t.fetching);
    }

    #[test]
    fn resume_plans() {
        use Resume::*;
        assert_eq!(plan_resume(None, None, 7, 10, None), Fresh);
        assert_eq!(plan_resume(Some(5), Some(6), 7, 10, Some(6)), Fresh);
        assert_eq!(plan_resume(Some(5), Some(7), 7, 10, Some(6)), Replay);
        assert_eq!(plan_resume(Some(5), Some(7), 7, 10, Some(7)), Fresh);
        assert_eq!(plan_resume(Some(10), Some(7), 7, 10, None), Replay);
        assert_eq!(plan_resume(Some(12), Some(7), 7, 10, None), Wait);
    }
}
