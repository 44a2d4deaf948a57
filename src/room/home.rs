//! Home shards: every room has one (a hash of its name), which numbers the room's messages
//! (`seq`), owns its epoch, keeps its history ring and its presence list, and counts its members
//! on every shard per wire format (its census). Requests reach the home through the shards'
//! FIFO inboxes ([`super::requests::HomeMsg`]); answers to one connection go back as
//! [`super::requests::Reply`].
//!
//! Why this gives resume without gap or duplicate: a `subscribe` reaches the home, which answers
//! with the room's current seq and the kept messages after `since`, and from then on sends the
//! room's messages to the subscriber's shard too. The answer and those messages travel the same
//! FIFO channel, so the subscriber's shard sees every message up to `seq` before the answer (they
//! are not delivered to the new member: it is not a member yet) and every later one after it.
//!
//! This file is the state and its rules, tested without a runtime; `shard::home` applies them
//! (sends, deliveries, replies).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::ids::{ShardId, Tick};
use crate::protocol::envelope::Data;
use crate::wire::{Bcast, Wire, WIRES};

/// A new epoch: microseconds since the Unix epoch at creation (below 2^53, so JavaScript
/// numbers hold it exactly), strictly increasing within the process. A restarted daemon or a
/// forgotten and recreated room gets a different one.
fn new_epoch() -> u64 {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_micros() as u64);
    let mut prev = LAST.load(Ordering::Relaxed);
    loop {
        let next = now.max(prev + 1);
        match LAST.compare_exchange_weak(prev, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(p) => prev = p,
        }
    }
}

/// One envelope subscriber in a room's presence list.
#[derive(Debug, Clone)]
pub(crate) struct Member {
    /// The token's `sub` (authenticated connections only).
    pub(crate) user: Option<Arc<str>>,
    /// Its `info`.
    pub(crate) info: Arc<Data>,
}

/// Presence grouped by user: one entry per user with its connection count (anonymous
/// connections one entry each, with no user), in order of each user's first connection.
pub(crate) fn by_user(presence: &BTreeMap<u64, Member>) -> Vec<(Option<Arc<str>>, u32, Arc<Data>)> {
    let mut out: Vec<(Option<Arc<str>>, u32, Arc<Data>)> = Vec::new();
    let mut index: HashMap<Arc<str>, usize> = HashMap::new();
    for m in presence.values() {
        match &m.user {
            Some(u) => match index.get(u) {
                Some(&i) => out[i].1 += 1,
                None => {
                    index.insert(u.clone(), out.len());
                    out.push((Some(u.clone()), 1, m.info.clone()));
                }
            },
            None => out.push((None, 1, m.info.clone())),
        }
    }
    out
}

/// The state a home shard keeps for one room.
#[derive(Debug)]
pub(crate) struct HomeRoom {
    pub(crate) seq: u64,
    pub(crate) epoch: u64,
    pub(crate) history: VecDeque<Arc<Bcast>>,
    /// Payload bytes of the kept messages.
    pub(crate) history_bytes: usize,
    /// Envelope subscribers: conn id → who (sorted, so `presence` lists are stable).
    pub(crate) presence: BTreeMap<u64, Member>,
    /// The envelope subscribers that asked for join/leave events (`presence: true`): with
    /// none, an event is not encoded nor walked over the members (`HomeRoom::watched`).
    pub(crate) watching: HashSet<u64>,
    /// Members per shard and wire format.
    pub(crate) per_shard: Vec<[u32; WIRES]>,
    /// Members per wire format, all shards.
    pub(crate) total: [u32; WIRES],
    /// Last time the room had an envelope member (raw messages are kept only around then).
    pub(crate) envelope_seen: Option<Tick>,
    /// Raw connections refused by `max_subscribers` whose `Leave` is still to come (they joined
    /// on their shard before the refusal reached it; their leave must not be counted).
    refused: Vec<u64>,
    /// Publish ids of sessions seen lately (publish dedup).
    pub(crate) recent: Recent,
}

/// The publish ids a room remembers (`[envelope] publish_dedup_window` and `_max`): key (user,
/// session, id) → the seq it got. Bounded in time and count, oldest forgotten first.
#[derive(Debug, Default)]
pub(crate) struct Recent {
    order: VecDeque<(Tick, Arc<[u8]>)>,
    seqs: HashMap<Arc<[u8]>, u64>,
}

impl Recent {
    /// The seq `key` got, if it was published within `window` of `now`.
    pub(crate) fn seen(&mut self, key: &[u8], now: Tick, window: Duration) -> Option<u64> {
        self.expire(now, window);
        self.seqs.get(key).copied()
    }

    /// Remember that `key` got `seq`, forgetting the oldest beyond `max`.
    pub(crate) fn remember(&mut self, key: &[u8], seq: u64, now: Tick, max: usize) {
        while self.order.len() >= max.max(1) {
            if let Some((_, k)) = self.order.pop_front() {
                self.seqs.remove(&k);
            }
        }
        let key: Arc<[u8]> = Arc::from(key);
        self.seqs.insert(key.clone(), seq);
        self.order.push_back((now, key));
    }

    fn expire(&mut self, now: Tick, window: Duration) {
        while let Some((at, k)) = self.order.front() {
            if now.since(*at) < window {
                break;
            }
            self.seqs.remove(k);
            self.order.pop_front();
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

impl HomeRoom {
    pub(crate) fn new(shards: usize) -> HomeRoom {
        HomeRoom {
            seq: 0,
            epoch: new_epoch(),
            history: VecDeque::new(),
            history_bytes: 0,
            presence: BTreeMap::new(),
            watching: HashSet::new(),
            per_shard: vec![[0; WIRES]; shards],
            total: [0; WIRES],
            envelope_seen: None,
            refused: Vec::new(),
            recent: Recent::default(),
        }
    }

    /// Does anyone in the room want join/leave events?
    pub(crate) fn watched(&self) -> bool {
        !self.watching.is_empty()
    }

    /// May `uid` join with `wire` under a cap of `max` members (all shards, every format)? A
    /// refused raw connection is remembered until its leave comes (see [`HomeRoom::leaves`]).
    pub(crate) fn admit(&mut self, max: Option<u64>, uid: u64, wire: Wire) -> bool {
        if max.is_none_or(|m| self.members() < m) {
            return true;
        }
        if wire.is_raw() {
            self.refused.push(uid);
        }
        false
    }

    /// `uid` left with `wire`: count it out, unless it was a refused raw join (never counted).
    pub(crate) fn leaves(&mut self, shard: ShardId, wire: Wire, uid: Option<u64>) {
        if let Some(i) = uid.and_then(|u| self.refused.iter().position(|&x| x == u)) {
            self.refused.swap_remove(i);
            return;
        }
        self.count(shard, wire, false);
    }

    pub(crate) fn count(&mut self, shard: ShardId, wire: Wire, add: bool) {
        let (Some(c), t) = (
            self.per_shard
                .get_mut(shard.0)
                .map(|s| &mut s[wire as usize]),
            &mut self.total[wire as usize],
        ) else {
            return;
        };
        if add {
            *c += 1;
            *t += 1;
        } else {
            *c = c.saturating_sub(1);
            *t = t.saturating_sub(1);
        }
    }

    /// Envelope members on any shard?
    pub(crate) fn has_envelope_members(&self) -> bool {
        Wire::ALL
            .iter()
            .any(|w| !w.is_raw() && self.total[*w as usize] > 0)
    }

    /// Members on all shards, every format.
    pub(crate) fn members(&self) -> u64 {
        self.total.iter().map(|&n| u64::from(n)).sum()
    }

    /// Drop kept messages older than `ttl`; returns how many.
    pub(crate) fn expire(&mut self, now: Tick, ttl: Duration) -> u64 {
        let mut n = 0;
        while let Some(b) = self.history.front() {
            if now.since(b.at) >= ttl {
                self.drop_oldest();
                n += 1;
            } else {
                break;
            }
        }
        n
    }

    fn drop_oldest(&mut self) {
        if let Some(b) = self.history.pop_front() {
            self.history_bytes = self.history_bytes.saturating_sub(b.weight());
        }
    }

    /// Keep `b`, dropping the oldest messages beyond `size` messages or `max_bytes` of payload;
    /// returns how many were dropped.
    pub(crate) fn keep(&mut self, b: Arc<Bcast>, size: usize, max_bytes: usize) -> u64 {
        let w = b.weight();
        if size == 0 || w > max_bytes {
            return 0;
        }
        let mut n = 0;
        while !self.history.is_empty()
            && (self.history.len() >= size || self.history_bytes + w > max_bytes)
        {
            self.drop_oldest();
            n += 1;
        }
        self.history_bytes += w;
        self.history.push_back(b);
        n
    }

    /// Can every message after `since` still be given (none expired or evicted)?
    pub(crate) fn covers(&self, since: u64) -> bool {
        if since >= self.seq {
            return true;
        }
        self.history.front().is_some_and(|b| b.seq <= since + 1)
    }

    /// The answer to a resume request: `(recovered, messages to replay)`.
    pub(crate) fn resume(&self, since: Option<u64>, epoch: Option<u64>) -> (bool, Vec<Arc<Bcast>>) {
        let (Some(since), Some(epoch)) = (since, epoch) else {
            return (false, Vec::new());
        };
        if epoch != self.epoch || since > self.seq || !self.covers(since) {
            return (false, Vec::new());
        }
        let replay = self
            .history
            .iter()
            .filter(|b| b.seq > since)
            .cloned()
            .collect();
        (true, replay)
    }

    /// Kept messages after `since`, oldest first, at most `limit`; and whether none is missing.
    pub(crate) fn page(&self, since: Option<u64>, limit: usize) -> (Vec<Arc<Bcast>>, bool) {
        let since = since.unwrap_or(0);
        let msgs = self
            .history
            .iter()
            .filter(|b| b.seq > since)
            .take(limit)
            .cloned()
            .collect();
        (msgs, self.covers(since))
    }

    pub(crate) fn idle(&self) -> bool {
        self.history.is_empty()
            && self.presence.is_empty()
            && self.members() == 0
            && self.recent.is_empty()
    }
}

/// Every room this shard is home for.
#[derive(Debug, Default)]
pub(crate) struct HomeRooms {
    pub(crate) rooms: HashMap<Arc<str>, HomeRoom>,
    last_sweep: Option<Instant>,
}

impl HomeRooms {
    pub(crate) fn get_or_create(&mut self, room: &Arc<str>, shards: usize) -> &mut HomeRoom {
        if !self.rooms.contains_key(room) {
            self.rooms.insert(room.clone(), HomeRoom::new(shards));
        }
        // Just inserted if it was missing.
        self.rooms
            .get_mut(room)
            .unwrap_or_else(|| unreachable!("room inserted above"))
    }

    /// Expire history and forget idle rooms (at most once a second: `None` otherwise); what is
    /// kept after.
    pub(crate) fn sweep(
        &mut self,
        now: Instant,
        ttl_of: impl Fn(&str) -> Duration,
        dedup_window: Duration,
    ) -> Option<HomeTotals> {
        if self
            .last_sweep
            .is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(1))
        {
            return None;
        }
        self.last_sweep = Some(now);
        let tick = Tick::at(now);
        let mut t = HomeTotals::default();
        self.rooms.retain(|name, r| {
            t.expired += r.expire(tick, ttl_of(name));
            r.recent.expire(tick, dedup_window);
            t.messages += r.history.len() as u64;
            t.bytes += r.history_bytes as u64;
            t.presence += r.presence.len() as u64;
            !r.idle()
        });
        Some(t)
    }
}

/// What a shard's home rooms keep, summed by [`HomeRooms::sweep`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HomeTotals {
    /// Kept messages.
    pub(crate) messages: u64,
    /// Their payload bytes.
    pub(crate) bytes: u64,
    /// Presence entries.
    pub(crate) presence: u64,
    /// Messages expired by this sweep.
    pub(crate) expired: u64,
}

/// The home shard of `room` among `shards` (FNV-1a of the name).
pub fn home_index(room: &str, shards: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in room.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % shards.max(1) as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Body, Kind};

    fn msg(seq: u64, at: Tick) -> Arc<Bcast> {
        Arc::new(Bcast::new(
            Arc::from("r"),
            seq,
            at,
            Kind::Message {
                from: None,
                body: Body::Data(Data::Null),
            },
            None,
        ))
    }

    #[test]
    fn recent_publish_ids_are_bounded_in_time_and_count() {
        let t0 = Tick::at(Instant::now());
        let later = Tick::at(Instant::now() + Duration::from_secs(61));
        let w = Duration::from_secs(60);
        let mut r = Recent::default();
        assert_eq!(r.seen(b"a", t0, w), None);
        r.remember(b"a", 7, t0, 2);
        assert_eq!(r.seen(b"a", t0, w), Some(7));
        r.remember(b"b", 8, t0, 2);
        r.remember(b"c", 9, t0, 2); // over the count: "a" is forgotten
        assert_eq!(r.seen(b"a", t0, w), None);
        assert_eq!(r.seen(b"c", t0, w), Some(9));
        assert_eq!(r.seen(b"b", later, w), None, "past the window");
        assert!(r.is_empty());
    }

    fn room_with(n: u64, size: usize) -> HomeRoom {
        let mut r = HomeRoom::new(2);
        let t = Tick::at(Instant::now());
        for _ in 0..n {
            r.seq += 1;
            r.keep(msg(r.seq, t), size, usize::MAX);
        }
        r
    }

    fn seqs(v: &[Arc<Bcast>]) -> Vec<u64> {
        v.iter().map(|b| b.seq).collect()
    }

    #[test]
    fn max_subscribers_caps_members_across_shards_and_formats() {
        let mut r = HomeRoom::new(2);
        for (uid, shard, wire) in [(1, 0, Wire::Json), (2, 1, Wire::Raw)] {
            assert!(r.admit(Some(2), uid, wire));
            r.count(ShardId(shard), wire, true);
        }
        assert!(!r.admit(Some(2), 3, Wire::Cbor));
        assert!(!r.admit(Some(2), 4, Wire::Raw));
        assert!(r.admit(None, 5, Wire::Raw), "no cap");
        assert_eq!(r.members(), 2);
        // The refused raw connection's leave is not counted out; a real member's is.
        r.leaves(ShardId(1), Wire::Raw, Some(4));
        assert_eq!(r.members(), 2);
        r.leaves(ShardId(1), Wire::Raw, Some(2));
        assert_eq!(r.members(), 1);
        assert!(r.admit(Some(2), 6, Wire::Raw), "room again below the cap");
        // A refused envelope subscribe sends no leave: nothing is remembered for it.
        assert!(r.refused.is_empty());
    }

    #[test]
    fn resume_replays_exactly_what_follows_since() {
        let r = room_with(10, 100);
        let (ok, replay) = r.resume(Some(7), Some(r.epoch));
        assert!(ok);
        assert_eq!(seqs(&replay), vec![8, 9, 10]);
        let (ok, replay) = r.resume(Some(10), Some(r.epoch));
        assert!(ok && replay.is_empty());
        let (ok, replay) = r.resume(Some(0), Some(r.epoch));
        assert!(ok);
        assert_eq!(replay.len(), 10);
    }

    #[test]
    fn resume_refuses_lost_positions() {
        let r = room_with(10, 4); // keeps 7..=10
        assert!(r.resume(Some(6), Some(r.epoch)).0);
        assert!(!r.resume(Some(5), Some(r.epoch)).0, "seq 6 is gone");
        assert!(!r.resume(Some(8), Some(r.epoch + 1)).0, "other epoch");
        assert!(!r.resume(Some(8), None).0, "no epoch");
        assert!(!r.resume(None, Some(r.epoch)).0, "fresh subscription");
        assert!(!r.resume(Some(11), Some(r.epoch)).0, "from the future");
        let empty = room_with(3, 0);
        assert!(empty.resume(Some(3), Some(empty.epoch)).0, "nothing missed");
        assert!(!empty.resume(Some(2), Some(empty.epoch)).0);
    }

    #[test]
    fn byte_cap_drops_the_oldest() {
        let mut r = HomeRoom::new(1);
        let t = Tick::at(Instant::now());
        let big = |seq| {
            Arc::new(Bcast::new(
                Arc::from("r"),
                seq,
                t,
                Kind::Message {
                    from: None,
                    body: Body::Data(Data::Bytes(vec![0; 100])),
                },
                None,
            ))
        };
        for seq in 1..=10 {
            r.seq = seq;
            r.keep(big(seq), 1000, 500); // 164 bytes each: three fit
        }
        assert_eq!(seqs(&Vec::from(r.history.clone())), vec![8, 9, 10]);
        assert!(r.history_bytes <= 500);
        assert!(!r.resume(Some(6), Some(r.epoch)).0);
        assert!(r.resume(Some(7), Some(r.epoch)).0);
    }

    #[test]
    fn page_and_completeness() {
        let r = room_with(10, 4);
        let (m, complete) = r.page(None, 2);
        assert_eq!(seqs(&m), vec![7, 8]);
        assert!(!complete, "1..=6 are gone");
        let (m, complete) = r.page(Some(8), 100);
        assert_eq!(seqs(&m), vec![9, 10]);
        assert!(complete);
    }

    #[test]
    fn ttl_expires_and_idle_rooms_go() {
        let mut r = HomeRoom::new(1);
        let t0 = Tick::at(Instant::now());
        r.seq = 1;
        r.keep(msg(1, t0), 10, usize::MAX);
        r.expire(t0, Duration::from_secs(1));
        assert_eq!(r.history.len(), 1);
        let later = Tick::at(Instant::now() + Duration::from_secs(2));
        r.expire(later, Duration::from_secs(1));
        assert!(r.history.is_empty());
        assert!(r.idle());
        r.count(ShardId(0), Wire::Json, true);
        assert!(!r.idle());
        r.count(ShardId(0), Wire::Json, false);
        assert!(r.idle());
    }

    #[test]
    fn presence_by_user_groups_connections() {
        let m = |u: Option<&str>| Member {
            user: u.map(Arc::from),
            info: Arc::new(Data::Null),
        };
        let mut p = BTreeMap::new();
        p.insert(1, m(Some("ada")));
        p.insert(2, m(None));
        p.insert(3, m(Some("bob")));
        p.insert(4, m(Some("ada")));
        p.insert(5, m(None));
        let grouped = by_user(&p);
        let g: Vec<(Option<&str>, u32)> =
            grouped.iter().map(|(u, n, _)| (u.as_deref(), *n)).collect();
        assert_eq!(
            g,
            vec![(Some("ada"), 2), (None, 1), (Some("bob"), 1), (None, 1)]
        );
    }

    #[test]
    fn epochs_increase() {
        let a = new_epoch();
        let b = new_epoch();
        assert!(b > a);
        assert!(b < 1 << 53);
    }

    #[test]
    fn homes_spread() {
        let hits: Vec<usize> = (0..100)
            .map(|i| home_index(&format!("room-{i}"), 2))
            .collect();
        assert!(hits.contains(&0) && hits.contains(&1));
        assert_eq!(home_index("x", 1), 0);
    }
}
