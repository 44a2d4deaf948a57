//! Cluster-wide room member counts (pure; the bridge carries it out). Each node keeps its own
//! rooms' member counts (raw and envelope, every shard) in the hash `{prefix}:members:{node}`
//! (field: room, value: count), written from the bridge's copy once per canary tick (only
//! what changed; everything again after a reconnect) with the TTL `presence_ttl`, so a dead
//! node's counts vanish with its liveness key. `GET /api/rooms` on any node reads every node's
//! hash and adds them up: other nodes' counts are at most one `canary_interval` old, this
//! node's are current.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

/// This node's room counts and what changed since they were last written.
#[derive(Debug, Default)]
pub struct Counts {
    rooms: HashMap<Arc<str>, u64>,
    dirty: HashSet<Arc<str>>,
    /// Everything must be written again (after a connect): delete the hash first.
    full: bool,
}

/// What to write to this node's hash.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Write {
    /// Delete the hash first (a full rewrite).
    pub clear: bool,
    /// `HSET` these.
    pub set: Vec<(Arc<str>, u64)>,
    /// `HDEL` these (no member left).
    pub del: Vec<Arc<str>>,
}

impl Counts {
    /// `room` now has `members` members on this node.
    pub fn update(&mut self, room: Arc<str>, members: u64) {
        if members == 0 {
            if self.rooms.remove(&room).is_none() {
                return;
            }
        } else if self.rooms.insert(room.clone(), members) == Some(members) {
            return;
        }
        self.dirty.insert(room);
    }

    /// A new connection: the hash may be gone (Redis restarted) or stale.
    pub fn reconnected(&mut self) {
        self.full = true;
    }

    /// What to write now (`None`: nothing changed).
    pub fn take(&mut self) -> Option<Write> {
        if self.full {
            self.full = false;
            self.dirty.clear();
            let set = self.rooms.iter().map(|(r, n)| (r.clone(), *n)).collect();
            return Some(Write {
                clear: true,
                set,
                del: Vec::new(),
            });
        }
        if self.dirty.is_empty() {
            return None;
        }
        let mut w = Write::default();
        for r in self.dirty.drain() {
            match self.rooms.get(&r) {
                Some(&n) => w.set.push((r, n)),
                None => w.del.push(r),
            }
        }
        Some(w)
    }

    /// This node's counts.
    pub fn mine(&self) -> impl Iterator<Item = (&Arc<str>, u64)> {
        self.rooms.iter().map(|(r, n)| (r, *n))
    }
}

/// Every room with members anywhere, sorted by name: this node's counts plus the other nodes'
/// hashes (unreadable counts are skipped).
pub fn merge<'a>(
    mine: impl Iterator<Item = (&'a Arc<str>, u64)>,
    others: &[Vec<(String, String)>],
) -> Vec<(Arc<str>, u64)> {
    let mut all: BTreeMap<Arc<str>, u64> = BTreeMap::new();
    for (r, n) in mine {
        *all.entry(r.clone()).or_default() += n;
    }
    for node in others {
        for (r, n) in node {
            if let Ok(n) = n.parse::<u64>() {
                *all.entry(Arc::from(r.as_str())).or_default() += n;
            }
        }
    }
    all.into_iter().filter(|(_, n)| *n > 0).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_write_only_changes_and_everything_after_a_reconnect() {
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        let mut c = Counts::default();
        assert_eq!(c.take(), None);
        c.update(a.clone(), 2);
        c.update(b.clone(), 1);
        let mut w = c.take().unwrap();
        w.set.sort();
        assert_eq!(w.set, vec![(a.clone(), 2), (b.clone(), 1)]);
        assert!(!w.clear && w.del.is_empty());
        c.update(a.clone(), 2);
        assert_eq!(c.take(), None, "no change, nothing written");
        c.update(b.clone(), 0);
        c.update(Arc::from("never"), 0);
        assert_eq!(
            c.take(),
            Some(Write {
                clear: false,
                set: vec![],
                del: vec![b.clone()]
            })
        );
        c.reconnected();
        c.update(a.clone(), 3);
        assert_eq!(
            c.take(),
            Some(Write {
                clear: true,
                set: vec![(a.clone(), 3)],
                del: vec![]
            })
        );
    }

    #[test]
    fn merge_adds_up_every_node_and_sorts() {
        let mine = [(Arc::from("b"), 2u64), (Arc::from("a"), 1)];
        let others = vec![
            vec![("b".into(), "3".into()), ("c".into(), "1".into())],
            vec![("a".into(), "x".into()), ("d".into(), "0".into())],
        ];
        let got = merge(mine.iter().map(|(r, n)| (r, *n)), &others);
        let want: Vec<(Arc<str>, u64)> = vec![
            (Arc::from("a"), 1),
            (Arc::from("b"), 5),
            (Arc::from("c"), 1),
        ];
        assert_eq!(got, want);
    }
}
