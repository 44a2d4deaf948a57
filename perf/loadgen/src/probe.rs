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

/// The server's side of its established TCP connections on `port`, summed (from `ss -tmn`):
/// how many, bytes in their send queues (Send-Q: unsent + unacknowledged), and the kernel
/// memory their send queues hold (skmem `w`, wmem_queued, buffers included) and their
/// receive queues (`r`, rmem_alloc).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockSum {
    pub count: u64,
    pub send_q: u64,
    pub wmem_queued: u64,
    pub rmem: u64,
    /// Largest send buffer (skmem `tb`) seen: the cap socket_unsent_bytes sets.
    pub max_sndbuf: u64,
}

pub fn server_sockets(port: u16) -> Option<SockSum> {
    let out = std::process::Command::new("ss")
        .args([
            "-tmnH",
            "state",
            "established",
            &format!("( sport = :{port} )"),
        ])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| parse_ss(&String::from_utf8_lossy(&out.stdout)))
}

fn parse_ss(text: &str) -> SockSum {
    let mut s = SockSum::default();
    for line in text.lines() {
        let t = line.trim();
        if let Some(mem) = t.strip_prefix("skmem:(") {
            for kv in mem.trim_end_matches(')').split(',') {
                let (k, v) = kv.split_at(kv.find(|c: char| c.is_ascii_digit()).unwrap_or(kv.len()));
                let v: u64 = v.parse().unwrap_or(0);
                match k {
                    "w" => s.wmem_queued += v,
                    "r" => s.rmem += v,
                    "tb" => s.max_sndbuf = s.max_sndbuf.max(v),
                    _ => {}
                }
            }
        } else if let Some(q) = t.split_whitespace().nth(1) {
            // "Recv-Q Send-Q local peer" (no State column with a state filter).
            s.count += 1;
            s.send_q += q.parse::<u64>().unwrap_or(0);
        }
    }
    s
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
    fn sums_ss_output() {
        let t = "0      4096   127.0.0.1:9508 127.0.0.1:40870\n\t skmem:(r0,rb131072,t2304,tb262144,f0,w8448,o0,bl0,d0)\n\
                 12     0      127.0.0.1:9508 127.0.0.2:40871\n\t skmem:(r768,rb131072,t0,tb131072,f0,w0,o0,bl0,d0)\n";
        assert_eq!(
            parse_ss(t),
            SockSum {
                count: 2,
                send_q: 4096,
                wmem_queued: 8448,
                rmem: 768,
                max_sndbuf: 262144
            }
        );
    }

    #[test]
    fn this_process_has_fds() {
        assert!(fds("self").is_some_and(|n| n >= 3));
        assert!(sockstat().is_some());
    }
}
