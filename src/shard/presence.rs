//! Cluster-wide presence on the room's home shard ([`crate::cluster::presence`]): this node's
//! members are written to the room's Redis hash and announced on the room channel; the other
//! nodes' members are kept in [`Remote`] (loaded when the room is subscribed, kept current by
//! the announcements) and announced to this node's watchers once each; a node gone (its
//! liveness key expired) leaves with all its members. Nothing here runs without `[cluster]`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::ShardCore;
use crate::cluster::presence::{remote_conn, Announce, Change, Remote};
use crate::cluster::Command;
use crate::ids::Tick;
use crate::metrics::ClusterStats;
use crate::protocol::envelope::ServerOp;
use crate::protocol::envelope::{Data, Format};
use crate::room::home::{by_user as by_user_of, Member};
use crate::room::requests::{ApiAnswer, ConnRef, Reply};
use crate::wire::{envelope_frame, Bcast, Kind};

/// A `presence` request waiting for the room's hash (the room is not subscribed here).
#[derive(Debug)]
pub(crate) enum PresenceQuery {
    /// An envelope `presence`.
    Conn {
        conn: ConnRef,
        format: Format,
        id: Option<Data>,
        by_user: bool,
    },
    /// The HTTP API's presence.
    Api(flume::Sender<ApiAnswer>),
}

/// A member as it is stored in Redis: CBOR `[user or null, info]`.
fn member_cbor(m: &Member) -> Vec<u8> {
    let user = m
        .user
        .as_deref()
        .map_or(Data::Null, |u| Data::Text(u.to_owned()));
    let v = Data::Array(vec![user, Data::clone(&m.info)]);
    let mut out = Vec::new();
    // Writing a Value into a Vec cannot fail.
    let _ = ciborium::into_writer(&v, &mut out);
    out
}

/// Read a stored member back (`None`: not ours to read).
fn member_of(b: &Bytes) -> Option<Member> {
    let v: Data = ciborium::from_reader(&b[..]).ok()?;
    let Data::Array(mut parts) = v else {
        return None;
    };
    if parts.len() != 2 {
        return None;
    }
    let info = parts.pop()?;
    let user = match parts.pop()? {
        Data::Text(u) => Some(Arc::from(u.as_str())),
        _ => None,
    };
    Some(Member {
        user,
        info: Arc::new(info),
    })
}

/// The answer to `presence` (per connection or `by_user`) for these members.
pub(crate) fn presence_frame(
    room: &Arc<str>,
    presence: &BTreeMap<u64, Member>,
    by_user: bool,
    format: Format,
    id: Option<&Data>,
) -> Bytes {
    if !by_user {
        let members: Vec<(u64, Option<&str>, Data)> = presence
            .iter()
            .map(|(c, m)| (*c, m.user.as_deref(), Data::clone(&m.info)))
            .collect();
        let op = ServerOp::Presence {
            room,
            members: &members,
            id,
        };
        return envelope_frame(&op, format);
    }
    let grouped = by_user_of(presence);
    let users: Vec<(Option<&str>, u32, Data)> = grouped
        .iter()
        .map(|(u, n, info)| (u.as_deref(), *n, Data::clone(info)))
        .collect();
    let op = ServerOp::PresenceByUser {
        room,
        users: &users,
        id,
    };
    envelope_frame(&op, format)
}

impl ShardCore {
    /// A local member joined (`Some`) or left (`None`): write it to Redis and announce it.
    pub(crate) fn presence_out(&mut self, room: &Arc<str>, uid: u64, member: Option<&Member>) {
        let Some(c) = self.cluster.as_ref() else {
            return;
        };
        let cmd = Command::Presence {
            room: room.clone(),
            uid,
            member: member.map(member_cbor),
        };
        // Refused by a full bridge channel: counted; a join is announced again at the next
        // resync (a leave refused by Redis itself is kept by the bridge: `cluster::replay`).
        if c.link.send(cmd).is_err() {
            ClusterStats::add(&self.stats.cluster.refused, 1);
        }
    }

    /// The room is subscribed on this node: load the other nodes' members.
    pub(crate) fn presence_load(&mut self, room: &Arc<str>) {
        let shard = self.id.0;
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        c.remote.entry(room.clone()).or_default();
        let _ = c.link.send(Command::PresenceLoad {
            room: room.clone(),
            shard,
            token: 0,
        });
    }

    /// Every member of `room` cluster-wide: this node's and the others' (tagged ids).
    pub(crate) fn all_presence(&self, room: &Arc<str>) -> BTreeMap<u64, Member> {
        let mut all = self
            .home
            .rooms
            .get(room)
            .map(|r| r.presence.clone())
            .unwrap_or_default();
        let remote = self.cluster.as_ref().and_then(|c| c.remote.get(room));
        for (node, uid, m) in remote.into_iter().flat_map(Remote::iter) {
            if let Some(m) = member_of(m) {
                all.insert(remote_conn(node, uid), m);
            }
        }
        all
    }

    /// Announce a remote member's join or leave to this node's watchers.
    fn presence_event(&mut self, room: Arc<str>, conn: u64, m: Member, join: bool, now: Instant) {
        if !self.cfg.class_rights(&room).presence {
            return;
        }
        let (user, info) = (m.user, m.info);
        let ev = if join {
            Kind::Join { conn, user, info }
        } else {
            Kind::Leave { conn, user, info }
        };
        let b = Arc::new(Bcast::new(room, 0, Tick::at(now), ev, None));
        self.home_fanout(b, now);
    }

    /// A join or leave announced by a node (ours are ignored; each member once).
    pub(crate) fn presence_in(&mut self, a: Announce, now: Instant) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        let me = c.link.node.clone();
        let Some(r) = c.remote.get_mut(&a.room) else {
            return;
        };
        let conn = remote_conn(&a.node, a.uid);
        match r.apply(&me, &a) {
            Change::None => {}
            Change::Joined => {
                if let Some(m) = a.member.as_ref().and_then(member_of) {
                    self.presence_event(a.room, conn, m, true, now);
                }
            }
            Change::Left(b) => {
                if let Some(m) = member_of(&b) {
                    self.presence_event(a.room, conn, m, false, now);
                }
            }
        }
    }

    /// What the room's hash held: for its cache (`token` 0) or a waiting `presence` request.
    pub(crate) fn presence_loaded(
        &mut self,
        room: &Arc<str>,
        token: u64,
        entries: Vec<(Arc<str>, u64, Bytes)>,
        now: Instant,
    ) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        let me = c.link.node.clone();
        if token == 0 {
            if let Some(r) = c.remote.get_mut(room) {
                r.load(&me, entries);
            }
            return;
        }
        let Some(q) = c.queries.remove(&token) else {
            return;
        };
        let mut r = Remote::default();
        r.load(&me, entries);
        let mut all = self.all_presence(room);
        for (node, uid, m) in r.iter() {
            if let Some(m) = member_of(m) {
                all.insert(remote_conn(node, uid), m);
            }
        }
        self.presence_answer(room, q, &all, now);
    }

    /// Does this node keep `room`'s remote members (or need none: not in cluster mode)?
    pub(crate) fn presence_cached(&self, room: &Arc<str>) -> bool {
        self.cluster
            .as_ref()
            .is_none_or(|c| c.remote.contains_key(room))
    }

    /// `presence` for a room this node does not keep: read the room's hash first.
    pub(crate) fn presence_query(&mut self, room: Arc<str>, q: PresenceQuery, now: Instant) {
        let shard = self.id.0;
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        let token = c.token();
        let cmd = Command::PresenceLoad {
            room: room.clone(),
            shard,
            token,
        };
        if c.link.send(cmd).is_ok() {
            c.queries.insert(token, q);
            return;
        }
        // Refused: answer with what this node has.
        let all = self.all_presence(&room);
        self.presence_answer(&room, q, &all, now);
    }

    fn presence_answer(
        &mut self,
        room: &Arc<str>,
        q: PresenceQuery,
        all: &BTreeMap<u64, Member>,
        now: Instant,
    ) {
        match q {
            PresenceQuery::Api(tx) => {
                let members = all
                    .iter()
                    .map(|(c, m)| (*c, m.user.clone(), m.info.clone()))
                    .collect();
                let _ = tx.try_send(ApiAnswer::Members(members));
            }
            PresenceQuery::Conn {
                conn,
                format,
                id,
                by_user,
            } => {
                let frame = presence_frame(room, all, by_user, format, id.as_ref());
                self.reply(conn.shard, Reply::Frame { conn, frame }, now);
            }
        }
    }

    /// Node `node` is gone: each of its members leaves every room once; its entries are deleted.
    pub(crate) fn node_gone(&mut self, node: &Arc<str>, now: Instant) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        let mut left = Vec::new();
        for (room, r) in c.remote.iter_mut() {
            let gone = r.node_gone(node);
            if !gone.is_empty() {
                let uids = gone.iter().map(|g| g.0).collect();
                let _ = c.link.send(Command::PresenceForget {
                    room: room.clone(),
                    node: node.clone(),
                    uids,
                });
                left.push((room.clone(), gone));
            }
        }
        for (room, gone) in left {
            for (uid, b) in gone {
                if let Some(m) = member_of(&b) {
                    let conn = remote_conn(node, uid);
                    self.presence_event(room.clone(), conn, m, false, now);
                }
            }
        }
    }

    /// After a reconnect: announce this node's members again (the others may have taken this
    /// node for gone; a repeated join is no event for them).
    pub(crate) fn presence_reannounce(&mut self) {
        let Some(c) = self.cluster.as_ref() else {
            return;
        };
        let rooms: Vec<Arc<str>> = c.remote.keys().cloned().collect();
        for room in rooms {
            let members: Vec<(u64, Member)> = self
                .home
                .rooms
                .get(&room)
                .map(|r| r.presence.iter().map(|(u, m)| (*u, m.clone())).collect())
                .unwrap_or_default();
            for (uid, m) in members {
                self.presence_out(&room, uid, Some(&m));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_round_trip_through_cbor() {
        let m = Member {
            user: Some(Arc::from("ann")),
            info: Arc::new(Data::Text("x".into())),
        };
        let back = member_of(&Bytes::from(member_cbor(&m))).unwrap();
        assert_eq!(back.user.as_deref(), Some("ann"));
        assert_eq!(*back.info, Data::Text("x".into()));
        let anon = Member {
            user: None,
            info: Arc::new(Data::Null),
        };
        assert!(member_of(&Bytes::from(member_cbor(&anon)))
            .unwrap()
            .user
            .is_none());
        assert!(member_of(&Bytes::from_static(b"\x01")).is_none());
    }
}
