//! Presence leaves Redis could not take (unreachable, or a command failed): kept and written
//! again after the next connect, so a member that left during an outage does not stay listed on
//! the other nodes (pure; the bridge carries it out). Joins need no such list: after a
//! reconnect every home announces its current members again. A later join of the same
//! connection in the same room supersedes its kept leave. Bounded: beyond `max` entries a leave
//! is dropped and counted (its entry then lasts until this node is gone or restarts).
//!
//! The other nodes reconnect too, each at its own moment: an announcement published before a
//! node has subscribed the room channel again would be missed by it. So a written leave is
//! announced again on every canary tick for a while (`presence_ttl`); a leave of a member a
//! node no longer lists is no event there, so the repeats cost a few messages, never a
//! duplicate event.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

/// The leaves to write again.
#[derive(Debug)]
pub struct Leaves {
    kept: HashSet<(Arc<str>, u64)>,
    /// Written, announced again until then.
    repeat: HashMap<(Arc<str>, u64), Instant>,
    max: usize,
}

impl Leaves {
    /// At most `max` kept leaves.
    pub fn new(max: usize) -> Leaves {
        Leaves {
            kept: HashSet::new(),
            repeat: HashMap::new(),
            max,
        }
    }

    /// A presence write of connection `uid` in `room` was refused: keep it if it was a leave
    /// (`leave`). False: the list is full and the leave is lost (count it).
    pub fn refused(&mut self, room: Arc<str>, uid: u64, leave: bool) -> bool {
        if !leave {
            return true;
        }
        if self.kept.len() >= self.max && !self.kept.contains(&(room.clone(), uid)) {
            return false;
        }
        self.kept.insert((room, uid));
        true
    }

    /// Connection `uid` joined `room` again (written): its kept leave is stale.
    pub fn joined(&mut self, room: &Arc<str>, uid: u64) {
        if !self.kept.is_empty() || !self.repeat.is_empty() {
            let k = (room.clone(), uid);
            self.kept.remove(&k);
            self.repeat.remove(&k);
        }
    }

    /// The kept leaves, to write (they stay kept until [`Leaves::written`]).
    pub fn pending(&self) -> Vec<(Arc<str>, u64)> {
        self.kept.iter().cloned().collect()
    }

    /// These were written; announce them again until `until`.
    pub fn written(&mut self, done: &[(Arc<str>, u64)], until: Instant) {
        for d in done {
            self.kept.remove(d);
            self.repeat.insert(d.clone(), until);
        }
    }

    /// The written leaves to announce again now (those past their time are forgotten).
    pub fn repeats(&mut self, now: Instant) -> Vec<(Arc<str>, u64)> {
        if self.repeat.is_empty() {
            return Vec::new();
        }
        self.repeat.retain(|_, until| *until > now);
        self.repeat.keys().cloned().collect()
    }

    /// How many are kept.
    pub fn len(&self) -> usize {
        self.kept.len()
    }

    /// None kept.
    pub fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_leaves_are_kept_until_written_and_a_rejoin_supersedes_them() {
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        let mut l = Leaves::new(2);
        assert!(l.refused(a.clone(), 1, false));
        assert!(
            l.is_empty(),
            "a refused join is announced again by the homes"
        );
        assert!(l.refused(a.clone(), 1, true));
        assert!(l.refused(a.clone(), 1, true), "the same leave twice is one");
        assert!(l.refused(b.clone(), 1, true));
        assert!(
            !l.refused(b.clone(), 2, true),
            "full: lost, counted by the caller"
        );
        assert_eq!(l.len(), 2);
        l.joined(&b, 1);
        assert_eq!(l.pending(), vec![(a.clone(), 1)]);
        let t0 = Instant::now();
        let until = t0 + std::time::Duration::from_secs(2);
        l.written(&l.pending(), until);
        assert!(l.is_empty());
        assert_eq!(
            l.repeats(t0),
            vec![(a.clone(), 1)],
            "announced again for a while"
        );
        assert!(l.repeats(until).is_empty(), "then forgotten");
        assert!(l.refused(a.clone(), 2, true));
        l.written(&l.pending(), until);
        l.joined(&a, 2);
        assert!(l.repeats(t0).is_empty(), "a rejoin stops the repeats");
    }
}
