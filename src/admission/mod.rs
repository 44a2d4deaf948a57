//! Admission control: which new connections the daemon takes, decided before any WebSocket
//! state exists. Limits ([`AdmissionLimits`], `[admission]` in the config): handshakes in
//! progress, a global handshake rate, per client IP (IPv6 per /64, behind `trusted_proxies` the
//! forwarded address) a handshake rate and a connection cap, and per authenticated user a
//! connection cap. Refusals carry the wait until a retry can succeed, which the gate turns into
//! `429`/`503` with a jittered `Retry-After`.
//!
//! The state is shared by every shard: the global rate is one atomic ([`rate::SharedBucket`]);
//! per-IP and per-user entries sit in striped maps whose short critical sections are taken once
//! per handshake and once per closed connection — never per message. Every decision on the
//! state is a pure function ([`rate::gcra`], [`ip_verdict`]) tested on its own.

pub mod ip;
pub mod rate;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use ipnet::IpNet;

pub use ip::{client_ip, IpKey};
pub use rate::{retry_after_secs, Jitter, Rate};

use crate::ids::{ConnId, ShardId};

/// Stripes of the per-IP and per-user maps (shards rarely contend on one).
const STRIPES: usize = 64;

/// What to do when a user opens more than `max_connections_per_user`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserLimit {
    /// Refuse the new connection (429).
    RefuseNew,
    /// Admit it and close the user's oldest connection (1008 "replaced by a newer connection").
    CloseOldest,
}

/// `[admission]`: every limit off (`None`) unless configured, except `max_pending_handshakes`.
#[derive(Debug, Clone, PartialEq)]
pub struct AdmissionLimits {
    /// Open WebSocket connections per client IP (IPv6: per /64).
    pub max_connections_per_ip: Option<u32>,
    /// Upgrades per second for the whole daemon, with their burst.
    pub handshakes: Option<Rate>,
    /// Upgrades per second per client IP, with their burst.
    pub handshakes_per_ip: Option<Rate>,
    /// Connections accepted but not yet upgraded (or answered), daemon-wide.
    pub max_pending_handshakes: usize,
    /// Peers whose `Forwarded` / `X-Forwarded-For` headers name the client.
    pub trusted_proxies: Arc<[IpNet]>,
    /// Open connections per authenticated user (`sub`), daemon-wide.
    pub max_connections_per_user: Option<u32>,
    /// Which connection goes when a user is over its cap.
    pub user_limit: UserLimit,
}

impl Default for AdmissionLimits {
    fn default() -> Self {
        AdmissionLimits {
            max_connections_per_ip: None,
            handshakes: None,
            handshakes_per_ip: None,
            max_pending_handshakes: 4096,
            trusted_proxies: Arc::from(Vec::new()),
            max_connections_per_user: None,
            user_limit: UserLimit::RefuseNew,
        }
    }
}

/// Why a connection was not admitted, and when trying again may succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// `max_pending_handshakes` reached (503).
    #[error("too many handshakes in progress")]
    Pending,
    /// The global handshake rate (503).
    #[error("too many handshakes, try again later")]
    Rate {
        /// Nanoseconds until the bucket allows one more.
        wait_ns: u64,
    },
    /// The client IP's handshake rate (429).
    #[error("too many handshakes from this address")]
    IpRate {
        /// Nanoseconds until the bucket allows one more.
        wait_ns: u64,
    },
    /// `max_connections_per_ip` (429).
    #[error("too many connections from this address")]
    IpConnections,
    /// `max_connections_per_user` with `user_limit = "refuse_new"` (429).
    #[error("too many connections for this user")]
    UserConnections,
}

/// The labels of [`Refusal`], in the order of [`Refusal::index`].
pub const REFUSAL_REASONS: [&str; 5] = [
    "pending_handshakes",
    "handshake_rate",
    "ip_handshake_rate",
    "ip_connections",
    "user_connections",
];

impl Refusal {
    /// 503 for daemon-wide limits, 429 for one client's.
    pub fn status(&self) -> u16 {
        match self {
            Refusal::Pending | Refusal::Rate { .. } => 503,
            _ => 429,
        }
    }

    /// Index into [`REFUSAL_REASONS`].
    pub fn index(&self) -> usize {
        match self {
            Refusal::Pending => 0,
            Refusal::Rate { .. } => 1,
            Refusal::IpRate { .. } => 2,
            Refusal::IpConnections => 3,
            Refusal::UserConnections => 4,
        }
    }

    /// Metric label.
    pub fn as_str(&self) -> &'static str {
        REFUSAL_REASONS[self.index()]
    }

    /// How long until a retry may succeed (connection caps: a second, then it depends on
    /// others leaving).
    pub fn wait_ns(&self) -> u64 {
        match self {
            Refusal::Rate { wait_ns } | Refusal::IpRate { wait_ns } => *wait_ns,
            _ => 1_000_000_000,
        }
    }
}

/// A connection somewhere on the node, as the per-user list keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holder {
    /// Its shard.
    pub shard: ShardId,
    /// Its slot there.
    pub id: ConnId,
    /// Node-unique id.
    pub uid: u64,
}

/// One client IP's state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IpEntry {
    /// Open (admitted) connections.
    pub conns: u32,
    /// GCRA state of its handshake rate.
    pub tat: u64,
}

/// The per-IP decision: may one more connection from this IP be admitted at `now`? Returns
/// the entry as it becomes when it is.
pub fn ip_verdict(e: IpEntry, now: u64, l: &AdmissionLimits) -> Result<IpEntry, Refusal> {
    if l.max_connections_per_ip.is_some_and(|max| e.conns >= max) {
        return Err(Refusal::IpConnections);
    }
    let tat = match &l.handshakes_per_ip {
        Some(rate) => {
            rate::gcra(e.tat, now, rate).map_err(|wait_ns| Refusal::IpRate { wait_ns })?
        }
        None => e.tat,
    };
    Ok(IpEntry {
        conns: e.conns + 1,
        tat,
    })
}

/// The daemon-wide admission state (see the module doc).
#[derive(Debug)]
pub struct Admission {
    clock: Instant,
    global: rate::SharedBucket,
    pending: AtomicUsize,
    ips: Box<[Mutex<HashMap<IpKey, IpEntry>>]>,
    users: Box<[Mutex<UserMap>]>,
}

/// Each user's open connections, oldest first.
type UserMap = HashMap<Arc<str>, VecDeque<Holder>>;

impl Default for Admission {
    fn default() -> Self {
        Admission {
            clock: Instant::now(),
            global: rate::SharedBucket::default(),
            pending: AtomicUsize::new(0),
            ips: (0..STRIPES).map(|_| Mutex::default()).collect(),
            users: (0..STRIPES).map(|_| Mutex::default()).collect(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The daemon aborts on panic, so a lock is never poisoned; take it anyway if it were.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn user_stripe(user: &str) -> usize {
    let h = user.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    (h % STRIPES as u64) as usize
}

impl Admission {
    /// Nanoseconds on the admission clock.
    pub fn now_ns(&self) -> u64 {
        self.clock.elapsed().as_nanos() as u64
    }

    /// A connection starts its handshake: refused over `max_pending_handshakes`.
    pub fn begin_handshake(self: &Arc<Self>, l: &AdmissionLimits) -> Result<Pending, Refusal> {
        let before = self.pending.fetch_add(1, Ordering::AcqRel);
        let guard = Pending(self.clone());
        if before >= l.max_pending_handshakes {
            return Err(Refusal::Pending);
        }
        Ok(guard)
    }

    /// Handshakes in progress.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }

    /// Admit one upgrade from `client`: its IP's cap and rate, then the global rate. The
    /// ticket keeps the IP's connection counted until it drops.
    pub fn admit_ip(
        self: &Arc<Self>,
        l: &AdmissionLimits,
        client: IpKey,
    ) -> Result<IpTicket, Refusal> {
        let now = self.now_ns();
        let tracked = l.max_connections_per_ip.is_some() || l.handshakes_per_ip.is_some();
        if tracked {
            let mut map = lock(&self.ips[(client.hash() % STRIPES as u64) as usize]);
            let e = map.get(&client).copied().unwrap_or_default();
            let next = ip_verdict(e, now, l)?;
            if let Some(rate) = &l.handshakes {
                self.global
                    .take(now, rate)
                    .map_err(|wait_ns| Refusal::Rate { wait_ns })?;
            }
            map.insert(client, next);
        } else if let Some(rate) = &l.handshakes {
            self.global
                .take(now, rate)
                .map_err(|wait_ns| Refusal::Rate { wait_ns })?;
        }
        Ok(IpTicket {
            adm: self.clone(),
            key: tracked.then_some(client),
        })
    }

    /// Admit `me` as a connection of `user`. Over `max_connections_per_user`: refused, or
    /// admitted with the user's oldest connection returned for the caller to close.
    pub fn admit_user(
        self: &Arc<Self>,
        l: &AdmissionLimits,
        user: &Arc<str>,
        me: Holder,
    ) -> Result<(UserTicket, Option<Holder>), Refusal> {
        let Some(max) = l.max_connections_per_user else {
            return Ok((UserTicket(None), None));
        };
        let mut map = lock(&self.users[user_stripe(user)]);
        let list = map.entry(user.clone()).or_default();
        let mut evict = None;
        if list.len() >= max as usize {
            match l.user_limit {
                UserLimit::RefuseNew => {
                    if list.is_empty() {
                        map.remove(user);
                    }
                    return Err(Refusal::UserConnections);
                }
                UserLimit::CloseOldest => evict = list.pop_front(),
            }
        }
        list.push_back(me);
        Ok((UserTicket(Some((self.clone(), user.clone(), me))), evict))
    }

    /// Forget per-IP entries with no connection whose rate state has run out (called by a
    /// sweep; entries of IPs with connections go when their last connection does).
    pub fn purge(&self) {
        let now = self.now_ns();
        for stripe in self.ips.iter() {
            lock(stripe).retain(|_, e| e.conns > 0 || e.tat > now);
        }
    }

    /// Per-IP entries held (for tests and the status page).
    pub fn tracked_ips(&self) -> usize {
        self.ips.iter().map(|s| lock(s).len()).sum()
    }

    /// Open connections counted for `client`.
    pub fn connections_of(&self, client: IpKey) -> u32 {
        lock(&self.ips[(client.hash() % STRIPES as u64) as usize])
            .get(&client)
            .map_or(0, |e| e.conns)
    }

    fn release_ip(&self, key: IpKey) {
        let now = self.now_ns();
        let mut map = lock(&self.ips[(key.hash() % STRIPES as u64) as usize]);
        if let Some(e) = map.get_mut(&key) {
            e.conns = e.conns.saturating_sub(1);
            if e.conns == 0 && e.tat <= now {
                map.remove(&key);
            }
        }
    }

    fn release_user(&self, user: &Arc<str>, me: Holder) {
        let mut map = lock(&self.users[user_stripe(user)]);
        if let Some(list) = map.get_mut(user) {
            list.retain(|h| *h != me);
            if list.is_empty() {
                map.remove(user);
            }
        }
    }
}

/// A handshake in progress (counted until dropped).
#[derive(Debug)]
pub struct Pending(Arc<Admission>);

impl Drop for Pending {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An admitted connection's place in its IP's count (released on drop).
#[derive(Debug)]
pub struct IpTicket {
    adm: Arc<Admission>,
    key: Option<IpKey>,
}

impl Drop for IpTicket {
    fn drop(&mut self) {
        if let Some(k) = self.key {
            self.adm.release_ip(k);
        }
    }
}

/// An admitted connection's place in its user's list (released on drop).
#[derive(Debug)]
pub struct UserTicket(Option<(Arc<Admission>, Arc<str>, Holder)>);

impl Drop for UserTicket {
    fn drop(&mut self) {
        if let Some((adm, user, me)) = self.0.take() {
            adm.release_user(&user, me);
        }
    }
}

/// What an admitted connection holds until it closes.
#[derive(Debug, Default)]
pub struct Tickets {
    /// Its IP's count.
    pub ip: Option<IpTicket>,
    /// Its user's list.
    pub user: Option<UserTicket>,
}

impl PartialEq for Tickets {
    /// Tickets are bookkeeping, not part of what an upgrade decides.
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests;
