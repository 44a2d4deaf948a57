//! Cluster-wide presence (pure): every node keeps its own members of a room in the Redis hash
//! `{prefix}:presence:{room}` (field `{node}:{uid}`, value the member's CBOR), refreshes its
//! liveness key `{prefix}:alive:{node}` (TTL `presence_ttl`) on every canary tick and announces
//! each join and leave on the room channel (a message starting with `P`, never a digit as the
//! numbered messages do). The room's home shard on every other node keeps a copy of the remote
//! members ([`Remote`]), loaded with `HGETALL` when it subscribes and kept current by those
//! announcements; a node whose liveness key expired is gone: its members leave.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;

/// A join or a leave announced on the room channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announce {
    /// Room name.
    pub room: Arc<str>,
    /// The member's node.
    pub node: Arc<str>,
    /// The member's connection id on its node.
    pub uid: u64,
    /// A join (with the member's CBOR) or a leave (`None`).
    pub member: Option<Bytes>,
}

/// Encode an announcement: `P j|l node_len node uid(le) member`.
pub fn encode(node: &str, uid: u64, member: Option<&[u8]>) -> Vec<u8> {
    let n = node.len().min(255);
    let mut out = Vec::with_capacity(12 + n + member.map_or(0, <[u8]>::len));
    out.push(b'P');
    out.push(if member.is_some() { b'j' } else { b'l' });
    out.push(n as u8);
    out.extend_from_slice(&node.as_bytes()[..n]);
    out.extend_from_slice(&uid.to_le_bytes());
    out.extend_from_slice(member.unwrap_or_default());
    out
}

/// Is this room-channel message an announcement?
pub fn is_announce(msg: &[u8]) -> bool {
    msg.first() == Some(&b'P')
}

/// Decode an announcement (`None`: malformed).
pub fn decode(room: Arc<str>, msg: &[u8]) -> Option<Announce> {
    let (&p, rest) = msg.split_first()?;
    let (&op, rest) = rest.split_first()?;
    let (&n, rest) = rest.split_first()?;
    let n = usize::from(n);
    if p != b'P' || rest.len() < n + 8 || !(op == b'j' || op == b'l') {
        return None;
    }
    let node: Arc<str> = Arc::from(std::str::from_utf8(&rest[..n]).ok()?);
    let mut uid = [0u8; 8];
    uid.copy_from_slice(&rest[n..n + 8]);
    let member = (op == b'j').then(|| Bytes::copy_from_slice(&rest[n + 8..]));
    Some(Announce {
        room,
        node,
        uid: u64::from_le_bytes(uid),
        member,
    })
}

/// The hash field of a member.
pub fn field(node: &str, uid: u64) -> String {
    format!("{node}:{uid}")
}

/// Split a hash field back into node and uid.
pub fn parse_field(f: &str) -> Option<(Arc<str>, u64)> {
    let (node, uid) = f.rsplit_once(':')?;
    Some((Arc::from(node), uid.parse().ok()?))
}

/// The id a remote member is shown with: its uid tagged with its node (uids are unique per
/// node only), kept below 2^53 so JSON clients read it exactly.
pub fn remote_conn(node: &str, uid: u64) -> u64 {
    // FNV-1a of the node id, 15 bits of it above the uid's 38 low bits.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in node.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    (uid & ((1 << 38) - 1)) | (((h & 0x7fff) | 1) << 38)
}

/// The remote members of one room as this node knows them.
#[derive(Debug, Default)]
pub struct Remote {
    members: HashMap<(Arc<str>, u64), Bytes>,
}

/// What an announcement changes for this node's watchers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Nothing (our own, a repeated join, a leave of someone unknown).
    None,
    /// A new remote member: announce its join.
    Joined,
    /// A known remote member left: announce its leave with what it joined with.
    Left(Bytes),
}

impl Remote {
    /// Apply an announcement from node `a.node` (`me`: this node, ignored). Each member yields
    /// one `Joined` and one `Left` at most, however often it is announced.
    pub fn apply(&mut self, me: &str, a: &Announce) -> Change {
        if &*a.node == me {
            return Change::None;
        }
        let key = (a.node.clone(), a.uid);
        match &a.member {
            Some(m) => {
                if self.members.contains_key(&key) {
                    return Change::None;
                }
                self.members.insert(key, m.clone());
                Change::Joined
            }
            None => self.members.remove(&key).map_or(Change::None, Change::Left),
        }
    }

    /// Load what `HGETALL` found (no events: nobody on this node watched before).
    pub fn load(&mut self, me: &str, entries: Vec<(Arc<str>, u64, Bytes)>) {
        for (node, uid, m) in entries {
            if &*node != me {
                self.members.entry((node, uid)).or_insert(m);
            }
        }
    }

    /// Node `node` is gone: remove its members and return them (uid, member), each once.
    pub fn node_gone(&mut self, node: &str) -> Vec<(u64, Bytes)> {
        let keys: Vec<(Arc<str>, u64)> = self
            .members
            .keys()
            .filter(|(n, _)| &**n == node)
            .cloned()
            .collect();
        let mut gone: Vec<(u64, Bytes)> = keys
            .into_iter()
            .filter_map(|k| self.members.remove(&k).map(|m| (k.1, m)))
            .collect();
        gone.sort_by_key(|g| g.0);
        gone
    }

    /// Every remote member: (node, uid, member).
    pub fn iter(&self) -> impl Iterator<Item = (&Arc<str>, u64, &Bytes)> {
        self.members.iter().map(|((n, u), m)| (n, *u, m))
    }

    /// How many remote members (O(1)).
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// No remote member.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }
}

/// Which known nodes are gone: those (not `me`) whose liveness key is missing, and not already
/// reported gone. `alive[i]` answers `known[i]`.
pub fn dead_nodes(
    me: &str,
    known: &[String],
    alive: &[bool],
    reported: &HashSet<String>,
) -> Vec<String> {
    known
        .iter()
        .zip(alive)
        .filter(|(n, &a)| !a && n.as_str() != me && !reported.contains(n.as_str()))
        .map(|(n, _)| n.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(node: &str, uid: u64, m: Option<&[u8]>) -> Announce {
        decode(Arc::from("r"), &encode(node, uid, m)).unwrap()
    }

    #[test]
    fn announcements_round_trip() {
        let a = ann("gw-1", 1025, Some(b"\x82\xf6\xf6"));
        assert_eq!((&*a.node, a.uid), ("gw-1", 1025));
        assert_eq!(a.member.as_deref(), Some(&b"\x82\xf6\xf6"[..]));
        assert_eq!(ann("gw-1", 7, None).member, None);
        assert!(is_announce(&encode("n", 1, None)));
        assert!(!is_announce(b"1:2:x"));
        assert!(decode(Arc::from("r"), b"Pj\x05ab").is_none());
        assert!(decode(Arc::from("r"), b"Px\x01a01234567").is_none());
        assert_eq!(parse_field(&field("gw:1", 9)), Some((Arc::from("gw:1"), 9)));
        assert_eq!(parse_field("nouid"), None);
    }

    #[test]
    fn joins_and_leaves_are_deduplicated() {
        let mut r = Remote::default();
        assert_eq!(r.apply("me", &ann("me", 1, Some(b"m"))), Change::None);
        assert_eq!(r.apply("me", &ann("b", 1, Some(b"m"))), Change::Joined);
        assert_eq!(r.apply("me", &ann("b", 1, Some(b"m"))), Change::None);
        assert_eq!(r.apply("me", &ann("c", 1, Some(b"n"))), Change::Joined);
        assert_eq!(r.len(), 2);
        let left = Change::Left(Bytes::from_static(b"m"));
        assert_eq!(r.apply("me", &ann("b", 1, None)), left);
        assert_eq!(r.apply("me", &ann("b", 1, None)), Change::None);
        assert_eq!(r.apply("me", &ann("x", 5, None)), Change::None);
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn a_gone_node_leaves_once() {
        let mut r = Remote::default();
        let e = |n: &str, u| (Arc::from(n), u, Bytes::from_static(b"m"));
        r.load("me", vec![e("b", 2), e("b", 1), e("c", 1), e("me", 3)]);
        assert_eq!(r.len(), 3);
        let gone = r.node_gone("b");
        assert_eq!(gone.iter().map(|g| g.0).collect::<Vec<_>>(), vec![1, 2]);
        assert!(r.node_gone("b").is_empty());
        assert_eq!(r.len(), 1);
        // A join announced again after a load is not a second join.
        assert_eq!(r.apply("me", &ann("c", 1, Some(b"m"))), Change::None);
    }

    #[test]
    fn dead_node_verdicts() {
        let known: Vec<String> = ["me", "b", "c"].iter().map(|s| s.to_string()).collect();
        let mut rep = HashSet::new();
        assert_eq!(
            dead_nodes("me", &known, &[false, false, true], &rep),
            vec!["b"]
        );
        rep.insert("b".to_string());
        assert!(dead_nodes("me", &known, &[false, false, true], &rep).is_empty());
        assert_eq!(
            dead_nodes("me", &known, &[true, true, false], &rep),
            vec!["c"]
        );
    }

    #[test]
    fn remote_ids_differ_per_node_and_fit_json() {
        let (a, b) = (remote_conn("gw-1", 1025), remote_conn("gw-2", 1025));
        assert_ne!(a, b);
        assert!(a < (1 << 53) && b < (1 << 53));
        assert_eq!(a, remote_conn("gw-1", 1025));
    }
}
