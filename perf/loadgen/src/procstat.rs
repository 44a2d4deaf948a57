//! CPU time and memory of a process from /proc.

use std::time::Instant;

/// utime + stime of a whole process (all threads), in seconds, from /proc/PID/stat.
/// Returns (user, system). `pid` may be a comma-separated list (a cluster's nodes): the sum,
/// None if any of them cannot be read.
pub fn cpu_times(pid: &str) -> Option<(f64, f64)> {
    let mut sum = (0.0, 0.0);
    for p in pid.split(',').map(str::trim) {
        let (u, s) = cpu_times_one(p)?;
        sum = (sum.0 + u, sum.1 + s);
    }
    Some(sum)
}

fn cpu_times_one(pid: &str) -> Option<(f64, f64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: fields start after the last ')'.
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state): utime is field 14, stime field 15.
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    let hz = clk_tck();
    Some((utime / hz, stime / hz))
}

/// CPU time of a whole process (all live threads) in seconds, at nanosecond resolution: the sum
/// of the first field (time on CPU) of /proc/PID/task/*/schedstat. The same clock utime + stime
/// are scaled to, without their 1/CLK_TCK granularity (10 ms here), which matters for short
/// phases such as one churn cycle's connects. Falls back to utime + stime when schedstat is
/// unavailable (no CONFIG_SCHED_INFO). Threads that exited are not counted.
pub fn cpu_s(pid: &str) -> Option<f64> {
    pid.split(',').map(|p| cpu_s_one(p.trim())).sum()
}

fn cpu_s_one(pid: &str) -> Option<f64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"));
    let sched = tasks.ok().and_then(|dir| {
        let mut ns = 0u64;
        for t in dir.flatten() {
            let s = std::fs::read_to_string(t.path().join("schedstat")).ok()?;
            ns += s.split_whitespace().next()?.parse::<u64>().ok()?;
        }
        Some(ns as f64 / 1e9)
    });
    sched.or_else(|| cpu_times(pid).map(|(u, s)| u + s))
}

fn clk_tck() -> f64 {
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// VmRSS of a process in KiB, from /proc/PID/status (a comma-separated list: the sum).
pub fn rss_kib(pid: &str) -> Option<u64> {
    pid.split(',').map(|p| rss_kib_one(p.trim())).sum()
}

fn rss_kib_one(pid: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    for line in s.lines() {
        if let Some(v) = line.strip_prefix("VmRSS:") {
            return v.trim().trim_end_matches("kB").trim().parse().ok();
        }
    }
    None
}

/// Whole-machine CPU time from the first line of /proc/stat, in seconds: (busy, softirq), where
/// busy is everything but idle, iowait and steal (softirq included).
pub fn host_times() -> Option<(f64, f64)> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    let line = s.lines().next()?;
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal guest guest_nice (guest is inside user)
    if v.len() < 8 {
        return None;
    }
    let hz = clk_tck();
    let busy = v[0] + v[1] + v[2] + v[5] + v[6];
    Some((busy / hz, v[6] / hz))
}

/// A point in time with the CPU counters of loadgen itself, of the server and of the machine.
#[derive(Clone, Copy)]
pub struct CpuSnap {
    pub at: Instant,
    pub me: Option<(f64, f64)>,
    pub server: Option<(f64, f64)>,
    pub host: Option<(f64, f64)>,
}

impl CpuSnap {
    pub fn take(server_pid: Option<&str>) -> Self {
        CpuSnap {
            at: Instant::now(),
            me: cpu_times("self"),
            server: server_pid.and_then(cpu_times),
            host: host_times(),
        }
    }
}

/// CPU shares (in cores: 1.0 = one core busy) between two snapshots.
pub struct CpuShare {
    pub wall: f64,
    pub me: Option<f64>,
    pub server: Option<f64>,
    pub server_user: Option<f64>,
    pub server_sys: Option<f64>,
    /// Whole machine, in cores: busy (softirq included) and softirq alone.
    pub host_busy: Option<f64>,
    pub host_softirq: Option<f64>,
    /// Busy time of everything that is neither loadgen nor the server: other processes (and
    /// ksoftirqd) competing for the cores (a noisy-run indicator).
    pub host_other: Option<f64>,
}

pub fn share(a: &CpuSnap, b: &CpuSnap) -> CpuShare {
    let wall = b.at.duration_since(a.at).as_secs_f64().max(1e-9);
    let d = |x: Option<(f64, f64)>, y: Option<(f64, f64)>| match (x, y) {
        (Some(x), Some(y)) => Some(((y.0 - x.0) / wall, (y.1 - x.1) / wall)),
        _ => None,
    };
    let me = d(a.me, b.me);
    let sv = d(a.server, b.server);
    let host = d(a.host, b.host);
    // Tick-based accounting (no CONFIG_IRQ_TIME_ACCOUNTING, as here) charges softirq time to the
    // task it interrupted, so loadgen's and the server's times already hold most of it.
    let other = host.map(|(busy, _)| {
        (busy - me.map_or(0.0, |(u, s)| u + s) - sv.map_or(0.0, |(u, s)| u + s)).max(0.0)
    });
    CpuShare {
        host_busy: host.map(|h| h.0),
        host_softirq: host.map(|h| h.1),
        host_other: other,
        wall,
        me: me.map(|(u, s)| u + s),
        server: sv.map(|(u, s)| u + s),
        server_user: sv.map(|(u, _)| u),
        server_sys: sv.map(|(_, s)| s),
    }
}
