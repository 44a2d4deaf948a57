//! Listening sockets: one SO_REUSEPORT listener per shard, all bound to the same address, so the
//! kernel spreads accepted connections across shards with no shared accept queue.

use std::net::{SocketAddr, TcpListener};

use socket2::{Domain, Protocol, Socket, Type};

/// Bind `n` SO_REUSEPORT listeners on `addr`. With port 0, the first one picks the port and the
/// others bind to the same one.
pub fn bind_reuseport(
    addr: SocketAddr,
    n: usize,
    backlog: u32,
) -> std::io::Result<Vec<TcpListener>> {
    let mut out = Vec::with_capacity(n);
    let mut addr = addr;
    for _ in 0..n {
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        s.set_reuse_address(true)?;
        s.set_reuse_port(true)?;
        s.set_nonblocking(true)?;
        s.bind(&addr.into())?;
        s.listen(backlog.min(i32::MAX as u32) as i32)?;
        let l: TcpListener = s.into();
        if addr.port() == 0 {
            addr = l.local_addr()?;
        }
        out.push(l);
    }
    Ok(out)
}

/// Is another socket listening on `addr` now? A plain bind (with `SO_REUSEADDR` only, so
/// connections in TIME_WAIT do not count) fails with `EADDRINUSE` exactly when one does.
pub fn in_use(addr: SocketAddr) -> bool {
    if addr.port() == 0 {
        return false;
    }
    let probe = || -> std::io::Result<()> {
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        s.set_reuse_address(true)?;
        s.bind(&addr.into())
    };
    matches!(probe(), Err(e) if e.kind() == std::io::ErrorKind::AddrInUse)
}

/// The process (pid, command line) listening on `addr`'s port, if /proc tells (another user's
/// process may be invisible).
pub fn owner(addr: SocketAddr) -> Option<(u32, String)> {
    let inodes = listening_inodes(addr.port());
    let me = std::process::id();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path()).ok().is_some_and(|l| {
                let l = l.to_string_lossy();
                l.strip_prefix("socket:[")
                    .and_then(|r| r.strip_suffix(']'))
                    .and_then(|i| i.parse::<u64>().ok())
                    .is_some_and(|i| inodes.contains(&i))
            })
        });
        if holds {
            let cmd = std::fs::read(entry.path().join("cmdline"))
                .map(|b| {
                    String::from_utf8_lossy(&b)
                        .replace('\0', " ")
                        .trim()
                        .to_string()
                })
                .unwrap_or_default();
            return Some((pid, cmd));
        }
    }
    None
}

/// Inodes of the sockets in LISTEN state on `port` (IPv4 and IPv6).
fn listening_inodes(port: u16) -> Vec<u64> {
    let mut out = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        out.extend(text.lines().skip(1).filter_map(|l| listen_inode(l, port)));
    }
    out
}

/// One /proc/net/tcp line: its inode if it is a listener on `port`.
fn listen_inode(line: &str, port: u16) -> Option<u64> {
    let f: Vec<&str> = line.split_whitespace().collect();
    let local_port = u16::from_str_radix(f.get(1)?.rsplit(':').next()?, 16).ok()?;
    (local_port == port && *f.get(3)? == "0A").then(|| f.get(9)?.parse().ok())?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_served_address_is_found_in_use_with_its_owner_line() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        assert!(in_use(addr));
        let line = format!(
            "   0: 0100007F:{:04X} 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1",
            addr.port()
        );
        assert_eq!(listen_inode(&line, addr.port()), Some(4242));
        assert_eq!(
            listen_inode(&line.replace(" 0A ", " 01 "), addr.port()),
            None
        );
        drop(l);
        assert!(!in_use(addr), "free again");
    }
}
