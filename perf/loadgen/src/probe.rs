//! What the storm, flood and stalled scenarios read about the server and the machine: open file
//! descriptors of a process, and the kernel's TCP socket memory from /proc/net/sockstat.

/// Open file descriptors of a process: the entries of /proc/PID/fd.
pub fn fds(pid: &str) -> Option<u64> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    Some(dir.count() as u64)
}

/// The `TCP:` line of /proc/net/sockstat: sockets in use, orphans, TIME_WAIT, allocated, and
/// `mem`, the pages (4 KiB) all TCP sockets of the machine hold in send and receive queues.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpSockstat {
    pub inuse: u64,
    pub orphan: u64,
    pub tw: u64,
    pub alloc: u64,
    pub mem_pages: u64,
}

pub fn sockstat() -> Option<TcpSockstat> {
    parse_sockstat(&std::fs::read_to_string("/proc/net/sockstat").ok()?)
}

fn parse_sockstat(text: &str) -> Option<TcpSockstat> {
    let line = text.lines().find(|l| l.starts_with("TCP:"))?;
    let mut s = TcpSockstat::default();
    let mut it = line["TCP:".len()..].split_whitespace();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        let v: u64 = v.parse().ok()?;
        match k {
            "inuse" => s.inuse = v,
            "orphan" => s.orphan = v,
            "tw" => s.tw = v,
            "alloc" => s.alloc = v,
            "mem" => s.mem_pages = v,
            _ => {}
        }
    }
    Some(s)
}

/// Page size used by /proc/net/sockstat's `mem` (the kernel's PAGE_SIZE).
pub fn page_size() -> u64 {
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as u64
    } else {
        4096
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_tcp_line() {
        let t =
            "sockets: used 11\nTCP: inuse 5 orphan 1 tw 7 alloc 9 mem 161\nUDP: inuse 0 mem 3\n";
        assert_eq!(
            parse_sockstat(t),
            Some(TcpSockstat {
                inuse: 5,
                orphan: 1,
                tw: 7,
                alloc: 9,
                mem_pages: 161
            })
        );
        assert_eq!(parse_sockstat("UDP: inuse 0 mem 3\n"), None);
    }

    #[test]
    fn this_process_has_fds() {
        assert!(fds("self").is_some_and(|n| n >= 3));
        assert!(sockstat().is_some());
    }
}
