//! `INFO commandstats` of a Redis server over a plain blocking RESP connection: how many
//! commands a cluster ran per broadcast (`--redis-addr`).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Calls per command (`cmdstat_<name>:calls=N,...`).
pub type Calls = BTreeMap<String, u64>;

/// One `INFO commandstats` from `addr` (HOST:PORT, no AUTH).
pub fn commandstats(addr: &str) -> Result<Calls, String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("redis {addr}: {e}"))?;
    let t = Some(Duration::from_secs(2));
    s.set_read_timeout(t).map_err(|e| e.to_string())?;
    s.write_all(b"*2\r\n$4\r\nINFO\r\n$12\r\ncommandstats\r\n")
        .map_err(|e| format!("redis {addr}: {e}"))?;
    let mut r = BufReader::new(s);
    let mut head = String::new();
    r.read_line(&mut head)
        .map_err(|e| format!("redis {addr}: {e}"))?;
    let len: usize = head
        .strip_prefix('$')
        .and_then(|x| x.trim().parse().ok())
        .ok_or_else(|| format!("redis {addr}: unexpected reply {:?}", head.trim()))?;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)
        .map_err(|e| format!("redis {addr}: {e}"))?;
    Ok(parse(&String::from_utf8_lossy(&body)))
}

fn parse(text: &str) -> Calls {
    let mut out = Calls::new();
    for line in text.lines() {
        let Some((name, rest)) = line
            .trim()
            .strip_prefix("cmdstat_")
            .and_then(|l| l.split_once(':'))
        else {
            continue;
        };
        let calls = rest
            .split(',')
            .find_map(|kv| kv.strip_prefix("calls="))
            .and_then(|v| v.parse().ok());
        if let Some(c) = calls {
            out.insert(name.to_string(), c);
        }
    }
    out
}

/// Calls made between two snapshots, per command (commands with no new call left out).
pub fn delta(a: &Calls, b: &Calls) -> Calls {
    b.iter()
        .map(|(k, v)| (k.clone(), v.saturating_sub(a.get(k).copied().unwrap_or(0))))
        .filter(|(_, v)| *v > 0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_subtracts() {
        let a = parse("# Commandstats\r\ncmdstat_evalsha:calls=3,usec=9,usec_per_call=3.00\r\n");
        let b = parse(
            "# Commandstats\r\ncmdstat_evalsha:calls=10,usec=9\r\ncmdstat_publish:calls=4,usec=1\r\n",
        );
        let d = delta(&a, &b);
        assert_eq!(d.get("evalsha"), Some(&7));
        assert_eq!(d.get("publish"), Some(&4));
        assert_eq!(d.len(), 2);
    }
}
