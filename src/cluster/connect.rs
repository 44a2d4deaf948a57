//! How the bridge obtains its `redis::Client` on every (re)connect: the configured URL
//! (`redis://`, or `rediss://` checked against `cluster.tls_ca` or the system roots), or the
//! master Redis Sentinel names now (`[cluster.sentinel]`: the sentinels asked in order, each
//! within the connect timeout; the answer checked with `ROLE` before it is used). Also the
//! failover guard: the seq counter of a room that went backwards gets a new epoch
//! ([`GUARD_LUA`], docs/cluster.md "Failover").

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use redis::{Client, RedisError, TlsCertificates};

use crate::config::{Cluster, Sentinel};

/// Why the Redis client cannot be set up at start.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The CA file could not be read.
    #[error("cannot read cluster.tls_ca {path}: {source}")]
    Ca {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The URL or TLS setup was refused by the client.
    #[error("cannot set up the redis client: {0}")]
    Client(#[from] RedisError),
}

/// Gives the bridge a client for the current master.
pub struct Connector {
    /// A fixed URL's client (`None` with Sentinel).
    fixed: Option<Client>,
    sentinel: Option<Sentinel>,
    ca: Option<Vec<u8>>,
    /// The master used last (Sentinel), to log a change.
    last: Option<String>,
    /// What the sentinels named at the last poll ([`Connector::poll`]).
    named: Arc<std::sync::Mutex<Option<String>>>,
}

/// A client for `url`, with the private CA if one is configured (`rediss://` only).
fn client(url: &str, ca: Option<&[u8]>) -> Result<Client, RedisError> {
    match ca {
        Some(pem) if url.starts_with("rediss://") => Client::build_with_tls(
            url,
            TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.to_vec()),
            },
        ),
        _ => Client::open(url),
    }
}

fn timed_out() -> RedisError {
    RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut))
}

/// `[:password@]` for a URL (percent-encoding the characters a URL cannot hold).
fn userinfo(password: Option<&str>) -> String {
    let Some(p) = password else {
        return String::new();
    };
    let mut out = String::from(":");
    for b in p.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out.push('@');
    out
}

impl Connector {
    /// Read the CA file (if any) and check the URL.
    pub fn new(cfg: &Cluster) -> Result<Connector, SetupError> {
        let ca = match &cfg.tls_ca {
            Some(p) => Some(std::fs::read(p).map_err(|source| SetupError::Ca {
                path: p.display().to_string(),
                source,
            })?),
            None => None,
        };
        // Redis Cluster connects through its own client (`bridge::sharded`): the first seed's
        // here is never used.
        let url = cfg.redis_cluster.first().unwrap_or(&cfg.redis);
        let fixed = match cfg.sentinel {
            Some(_) => None,
            None => Some(client(url, ca.as_deref())?),
        };
        Ok(Connector {
            fixed,
            sentinel: cfg.sentinel.clone(),
            ca,
            last: None,
            named: Arc::default(),
        })
    }

    /// Ask the first sentinel that answers which master it names now, in the background
    /// (Sentinel mode; every canary tick): the answer is read by [`Connector::moved`].
    pub fn poll(&self, t: Duration) {
        let Some(s) = self.sentinel.clone() else {
            return;
        };
        let (named, ca) = (self.named.clone(), self.ca.clone());
        tokio::spawn(async move {
            for node in &s.nodes {
                let Ok((host, port)) = ask_addr(&s, ca.as_deref(), node, t).await else {
                    continue;
                };
                if let Ok(mut n) = named.lock() {
                    *n = Some(format!("{host}:{port}"));
                }
                return;
            }
        });
    }

    /// The sentinels name another master than the one connected to (a failover happened):
    /// the connection is to be made again.
    pub fn moved(&self) -> Option<String> {
        let named = self.named.lock().ok()?.take()?;
        (self.last.as_deref() != Some(named.as_str())).then_some(named)
    }

    /// The client to connect with now (asks the sentinels; `t` bounds each request).
    pub async fn client(&mut self, t: Duration) -> Result<Client, RedisError> {
        if let Some(c) = &self.fixed {
            return Ok(c.clone());
        }
        let Some(s) = self.sentinel.clone() else {
            return Err(timed_out());
        };
        let mut last_err = None;
        for node in &s.nodes {
            match self.ask(&s, node, t).await {
                Ok((addr, c)) => {
                    if self.last.as_deref() != Some(addr.as_str()) {
                        tracing::warn!(master = %addr, previous = ?self.last, sentinel = %node,
                            name = %s.master, "cluster: redis master (from sentinel)");
                        self.last = Some(addr);
                    }
                    return Ok(c);
                }
                Err(e) => {
                    tracing::warn!(sentinel = %node, error = %e, "cluster: sentinel gave no usable master");
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.unwrap_or_else(timed_out))
    }

    /// Ask one sentinel for the master, and check it is one (`ROLE`).
    async fn ask(
        &self,
        s: &Sentinel,
        node: &str,
        t: Duration,
    ) -> Result<(String, Client), RedisError> {
        let (host, port) = ask_addr(s, self.ca.as_deref(), node, t).await?;
        let scheme = if s.tls { "rediss" } else { "redis" };
        let url = format!(
            "{scheme}://{}{host}:{port}/{}",
            userinfo(s.password.as_deref()),
            s.db
        );
        let c = client(&url, self.ca.as_deref())?;
        let role = async {
            let mut m = c.get_multiplexed_async_connection().await?;
            redis::cmd("ROLE").query_async::<redis::Value>(&mut m).await
        };
        let role = tokio::time::timeout(t, role)
            .await
            .map_err(|_| timed_out())??;
        let is_master = matches!(&role, redis::Value::Array(v)
            if matches!(v.first(), Some(redis::Value::BulkString(b)) if b == b"master"));
        if !is_master {
            return Err(RedisError::from((
                redis::ErrorKind::Client,
                "the address sentinel named is not a master (yet)",
            )));
        }
        Ok((format!("{host}:{port}"), c))
    }
}

/// The master sentinel `node` names (within `t`).
async fn ask_addr(
    s: &Sentinel,
    ca: Option<&[u8]>,
    node: &str,
    t: Duration,
) -> Result<(String, u16), RedisError> {
    let scheme = if s.sentinel_tls { "rediss" } else { "redis" };
    let url = format!(
        "{scheme}://{}{node}",
        userinfo(s.sentinel_password.as_deref())
    );
    let sc = client(&url, ca)?;
    let ask = async {
        let mut c = sc.get_multiplexed_async_connection().await?;
        redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(&s.master)
            .query_async::<Option<(String, u16)>>(&mut c)
            .await
    };
    let addr = tokio::time::timeout(t, ask)
        .await
        .map_err(|_| timed_out())??;
    addr.ok_or_else(|| {
        RedisError::from((
            redis::ErrorKind::Client,
            "sentinel does not know the master name",
        ))
    })
}

/// Gives a room a new epoch when its seq counter in Redis is below what a node has seen in the
/// same epoch (a failover lost the last writes). KEYS: seq, epoch; ARGV: the epoch seen, the
/// highest seq seen, a new epoch (µs). Returns 1 when it changed the epoch. Several nodes
/// asking agree on one new epoch: only the first still finds the old one.
pub const GUARD_LUA: &str = r"
local e = redis.call('GET', KEYS[2])
if e and e == ARGV[1] then
  local s = tonumber(redis.call('GET', KEYS[1]) or '0')
  if s < tonumber(ARGV[2]) then
    redis.call('SET', KEYS[2], ARGV[3])
    return 1
  end
end
return 0
";

/// What a node has seen of each subscribed room: (epoch, highest seq).
pub type Seen = HashMap<Arc<str>, (u64, u64)>;

/// Note a message numbered `seq` in `epoch` (a newer epoch replaces the entry).
pub fn note(seen: &mut Seen, room: &Arc<str>, epoch: u64, seq: u64) {
    let e = seen.entry(room.clone()).or_insert((epoch, seq));
    if e.0 != epoch {
        *e = (epoch, seq);
    } else if seq > e.1 {
        e.1 = seq;
    }
}

/// Run the guard for `rooms` (room, keys of seq and epoch, epoch seen, seq seen) before any
/// publish goes to a (possibly new) master; the rooms given a new epoch.
pub async fn guard<C: redis::aio::ConnectionLike + Send>(
    cmd: &mut C,
    rooms: Vec<(Arc<str>, [String; 2], u64, u64)>,
    new_epoch: u64,
) -> Result<Vec<Arc<str>>, RedisError> {
    if rooms.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for (_, [seq, epoch], e, s) in &rooms {
        pipe.cmd("EVAL")
            .arg(GUARD_LUA)
            .arg(2)
            .arg(seq)
            .arg(epoch)
            .arg(e)
            .arg(s)
            .arg(new_epoch);
    }
    let bumped: Vec<i64> = pipe.query_async(cmd).await?;
    Ok(rooms
        .into_iter()
        .zip(bumped)
        .filter(|(_, b)| *b == 1)
        .map(|(r, _)| r.0)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_keeps_the_highest_of_the_newest_epoch() {
        let mut s = Seen::new();
        let r: Arc<str> = Arc::from("r");
        note(&mut s, &r, 7, 10);
        note(&mut s, &r, 7, 9);
        assert_eq!(s[&r], (7, 10));
        note(&mut s, &r, 8, 1);
        assert_eq!(s[&r], (8, 1));
    }

    #[test]
    fn passwords_are_escaped() {
        assert_eq!(userinfo(None), "");
        assert_eq!(userinfo(Some("a b@c")), ":a%20b%40c@");
    }
}
