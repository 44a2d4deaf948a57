//! `loadgen storm`: a reconnect storm. N raw-room clients connect, the server is cut from all of
//! them at once by an external command (a restart: `--cut-cmd`), and every client comes back
//! on its own with full-jitter backoff that honours `Retry-After` (fleet.rs). Reported: time
//! until every client is back, per-client reconnect time, failed attempts by kind, the server's
//! RSS and open FDs idle, before the cut, at the peak, after everyone is back and after they
//! all leave; then one broadcast per room must reach every client.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::engine::now_ns;
use crate::fleet::{Fleet, FleetCfg};
use crate::probe::{fds, sockstat};
use crate::procstat::rss_kib;
use crate::{Args, Report};

pub const HELP: &str =
    "  storm   --clients N (10000) --cut-cmd CMD [--room-size K (0 = one room)] [--cuts C (1)]
          [--base-ms 500] [--cap-ms 20000] [--handshake-timeout S (10)] [--deadline S (120)]
          [--settle S (2)] [--seed X]
          N raw-room clients connect; then `sh -c CMD` cuts them all, C times: a restart (CMD
          prints the new server's PID as its last output word and exits, the server's own
          output sent elsewhere; see tests/storm/restart.sh) or a cut of the connections only
          (`ss -K state established '( sport = :PORT )' >/dev/null`: the same process). Fields
          of cut k >= 2 end in _k. Every client reconnects on its own: first retry after
          uniform [0, base), then uniform [0, min(cap, base*2^k)); a 429/503 with Retry-After N
          waits N s + uniform [0, 1 s). Reports time until all are back, per-client reconnect
          p50/p99, failed attempts by kind (apart for attempts begun while CMD ran), server
          RSS/FDs (idle, before the cut, peak, after all are back, after they leave), and checks
          that one message per room reaches every client. Exit 2 if not all came back or an
          attempt after the cut failed other than \"refused\" (nothing listening) or 429/503
          with Retry-After.
";

const KNOWN: &[&str] = &[
    "url",
    "server-pid",
    "clients",
    "room-size",
    "cut-cmd",
    "base-ms",
    "cap-ms",
    "handshake-timeout",
    "deadline",
    "settle",
    "cuts",
    "seed",
    "sources",
    "handshake-inflight",
    "label",
];

/// Server state read from /proc.
#[derive(Clone, Copy, Default)]
struct Probe {
    fds: Option<u64>,
    rss: Option<u64>,
}

fn probe(pid: Option<&str>) -> Probe {
    Probe {
        fds: pid.and_then(fds),
        rss: pid.and_then(rss_kib),
    }
}

fn put(r: &mut Report, what: &str, p: Probe) {
    r.oi(&format!("server_fds_{what}"), p.fds);
    r.oi(&format!("server_rss_{what}_kib"), p.rss);
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

fn pct(v: &mut [u64], q: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    let k = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[k - 1]
}

/// Wait for the cut command; its last output word is the new server's PID.
fn cut_done(child: &mut Child) -> Result<Option<Option<String>>, String> {
    match child.try_wait() {
        Ok(None) => Ok(None),
        Ok(Some(st)) if !st.success() => Err(format!("--cut-cmd exited with {st}")),
        Ok(Some(_)) => {
            let mut out = String::new();
            if let Some(mut so) = child.stdout.take() {
                // The command has exited; read what it printed without waiting on any
                // descendant that might still hold the pipe.
                unsafe {
                    let fd = so.as_raw_fd();
                    let fl = libc::fcntl(fd, libc::F_GETFL);
                    libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
                }
                let mut buf = Vec::new();
                let _ = so.read_to_end(&mut buf);
                out = String::from_utf8_lossy(&buf).into_owned();
            }
            let pid = out
                .split_whitespace()
                .last()
                .filter(|w| w.parse::<u32>().is_ok())
                .map(str::to_string);
            Ok(Some(pid))
        }
        Err(e) => Err(format!("--cut-cmd: {e}")),
    }
}

pub fn main(a: &Args) -> Result<u8, String> {
    a.take_known(KNOWN)?;
    let c = crate::common(a, crate::payload::Kind::Binary)?;
    if c.tls.is_some() {
        return Err("storm: ws:// only (its clients speak plain TCP)".into());
    }
    let n: usize = a.get("clients", 10_000)?;
    let k: usize = a.get("room-size", 0)?;
    let cut = a
        .flags
        .get("cut-cmd")
        .cloned()
        .ok_or("storm needs --cut-cmd CMD")?;
    let deadline = Duration::from_secs_f64(a.get("deadline", 120.0)?);
    let settle = Duration::from_secs_f64(a.get("settle", 2.0)?);
    let cuts: usize = a.get("cuts", 1)?;
    let cfg = FleetCfg {
        dst: c.dst,
        host: c.host_header.clone(),
        sources: c.sources,
        base: Duration::from_millis(a.get("base-ms", 500)?),
        cap: Duration::from_millis(a.get("cap-ms", 20_000)?),
        handshake_timeout: Duration::from_secs_f64(a.get("handshake-timeout", 10.0)?),
        initial_inflight: c.inflight,
        rcvbuf: None,
        seed: a.get("seed", 0x5eed_u64)?,
    };
    let mut r = Report::default();
    r.s("scenario", "storm");
    r.s("label", &c.label);
    r.s("url", &c.url);
    r.i("clients", n);
    r.i("room_size", k);
    r.s("cut_cmd", &cut);
    r.f("backoff_base_ms", cfg.base.as_secs_f64() * 1e3);
    r.f("backoff_cap_ms", cfg.cap.as_secs_f64() * 1e3);
    r.f("handshake_timeout_s", cfg.handshake_timeout.as_secs_f64());
    let mut pid = c.server_pid.clone();
    r.oi(
        "server_pid_before",
        pid.as_deref().and_then(|p| p.parse().ok()),
    );
    put(&mut r, "idle", probe(pid.as_deref()));

    let mut f = Fleet::new(cfg).map_err(|e| format!("poll: {e}"))?;
    let room = |i: usize| match i.checked_div(k) {
        None => "storm".to_string(),
        Some(q) => format!("storm{q}"),
    };
    f.add((0..n).map(room));
    let t = Instant::now();
    if !f.run_until(deadline, |f| f.open == n) {
        return Err(format!("only {} of {n} clients connected", f.open));
    }
    r.f("connect_s", t.elapsed().as_secs_f64());
    let initial = std::mem::take(&mut f.failures);
    r.obj("initial_failures_by_kind", obj(&initial));
    f.run_until(settle, |_| false);

    let mut ok = true;
    for k in 1..=cuts {
        // Fields of the second and later cuts carry a suffix: time_to_all_back_s_2, ...
        let sfx = if k == 1 {
            String::new()
        } else {
            format!("_{k}")
        };
        let s = Storm {
            n,
            deadline,
            settle,
            cut: &cut,
            sfx: &sfx,
        };
        let (back, clean) = s.run(&mut f, &mut r, &mut pid)?;
        ok &= back && clean;
        if !back {
            break;
        }
    }
    let losses_at_back: u64 = f.losses.values().sum();

    // One message per room (from its first client) must reach every member.
    f.counting = true;
    let mut sent_rooms = std::collections::BTreeSet::new();
    for i in 0..n {
        if sent_rooms.insert(room(i)) {
            f.send_text(i, b"storm-check");
        }
    }
    f.run_until(Duration::from_secs(30), |f| {
        f.clients.iter().all(|c| c.got > 0)
    });
    let got = f.clients.iter().filter(|c| c.got > 0).count();
    r.i("check_received", got);
    let drops: u64 = f.losses.values().sum::<u64>() - losses_at_back;
    r.i("drops_after_back", drops);

    let unfinished = f.close_all(Duration::from_secs(10));
    r.i("close_unfinished", unfinished);
    // The server's FDs should come back to its idle count; wait for it (at most 10 s).
    let idle_fds = r.get_i("server_fds_idle");
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(10) {
        match (pid.as_deref().and_then(fds), idle_fds) {
            (Some(now), Some(idle)) if now as i64 <= idle + 4 => break,
            (None, _) | (_, None) => break,
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    put(&mut r, "after_close", probe(pid.as_deref()));
    r.i("pings_answered", f.pings);
    r.i("protocol_errors", f.protocol_errors);

    let bad = !ok || got < n || drops > 0 || f.protocol_errors > 0;
    crate::finish(&r, "storm", &c);
    Ok(if bad { 2 } else { 0 })
}

fn obj(m: &std::collections::BTreeMap<String, u64>) -> Vec<(String, i64)> {
    m.iter().map(|(k, v)| (k.clone(), *v as i64)).collect()
}

/// One cut and everyone's return.
struct Storm<'a> {
    n: usize,
    deadline: Duration,
    settle: Duration,
    cut: &'a str,
    sfx: &'a str,
}

impl Storm<'_> {
    fn key(&self, name: &str) -> String {
        format!("{name}{}", self.sfx)
    }

    /// Run the cut command and wait until every client was cut and is back; report it, then
    /// let the server settle and read it again. Returns (everyone came back, no attempt failed
    /// in a way a well-behaved server avoids).
    fn run(
        &self,
        f: &mut Fleet,
        r: &mut Report,
        pid: &mut Option<String>,
    ) -> Result<(bool, bool), String> {
        let n = self.n;
        put(r, &self.key("before_cut"), probe(pid.as_deref()));
        r.oi(
            &self.key("tcp_mem_pages_before_cut"),
            sockstat().map(|s| s.mem_pages),
        );
        f.failures.clear();
        f.failures_during_cut.clear();
        f.losses.clear();
        f.reconnect_ns.clear();
        f.back_at.clear();
        f.refusals_with_retry_after = 0;
        f.ok_refusals = 0;
        f.unexpected = 0;
        f.unexpected_during_cut = 0;
        let attempts0: Vec<u32> = f.clients.iter().map(|c| c.attempts_total).collect();
        // The cut: from here every client is on its own.
        let t0 = now_ns();
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(self.cut)
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("--cut-cmd: {e}"))?;
        let mut cut_exited = false;
        f.cut_running = true;
        f.cut_end = None;
        let mut peak = Probe::default();
        let mut last_probe = 0u64;
        let all_lost = |f: &Fleet| f.clients.iter().all(|c| c.lost_at >= t0);
        let end = t0 + self.deadline.as_nanos() as u64;
        while now_ns() < end && !(cut_exited && f.open == n && all_lost(f)) {
            f.step(Duration::from_millis(20));
            if !cut_exited {
                if let Some(new_pid) = cut_done(&mut child)? {
                    cut_exited = true;
                    f.cut_running = false;
                    f.cut_end = Some(now_ns());
                    r.f(&self.key("cut_cmd_s"), ms(now_ns() - t0) / 1e3);
                    if new_pid.is_some() {
                        *pid = new_pid;
                    }
                }
            }
            if now_ns() - last_probe > 250_000_000 {
                last_probe = now_ns();
                let p = probe(pid.as_deref());
                peak.fds = peak.fds.max(p.fds);
                peak.rss = peak.rss.max(p.rss);
            }
        }
        f.cut_running = false;
        let all_back = cut_exited && f.open == n && all_lost(f);
        let last_loss = f.clients.iter().map(|c| c.lost_at).max().unwrap_or(t0);
        let secs = |t: u64| ms(t.saturating_sub(t0)) / 1e3;
        r.oi(
            &self.key("server_pid_after"),
            pid.as_deref().and_then(|p| p.parse().ok()),
        );
        r.i(&self.key("all_back"), all_back as u8);
        r.i(&self.key("back"), f.open);
        r.f(&self.key("all_cut_s"), secs(last_loss));
        r.f(
            &self.key("first_back_s"),
            secs(f.back_at.iter().min().copied().unwrap_or(t0)),
        );
        r.f(
            &self.key("time_to_all_back_s"),
            secs(f.back_at.iter().max().copied().unwrap_or(t0)),
        );
        let mut rt = f.reconnect_ns.clone();
        r.f(&self.key("reconnect_p50_ms"), ms(pct(&mut rt, 0.50)));
        r.f(&self.key("reconnect_p99_ms"), ms(pct(&mut rt, 0.99)));
        r.f(&self.key("reconnect_max_ms"), ms(pct(&mut rt, 1.0)));
        // Attempts per client in this cut beyond the one that succeeded.
        let extra: Vec<u64> = f
            .clients
            .iter()
            .zip(&attempts0)
            .map(|(c, &a0)| (c.attempts_total - a0).saturating_sub(1) as u64)
            .collect();
        r.f(
            &self.key("retries_per_client_mean"),
            extra.iter().sum::<u64>() as f64 / n.max(1) as f64,
        );
        r.i(
            &self.key("retries_per_client_max"),
            extra.iter().max().copied().unwrap_or(0),
        );
        r.obj(&self.key("cut_by_kind"), obj(&f.losses));
        let failed: u64 = f.failures.values().sum();
        r.i(&self.key("attempt_failures"), failed);
        r.obj(&self.key("attempt_failures_by_kind"), obj(&f.failures));
        r.obj(
            &self.key("attempt_failures_during_cut_by_kind"),
            obj(&f.failures_during_cut),
        );
        let refusals: u64 = f
            .failures
            .iter()
            .filter(|(k, _)| k.starts_with("HTTP "))
            .map(|(_, v)| v)
            .sum();
        r.i(&self.key("refusals"), refusals);
        r.i(
            &self.key("refusals_with_retry_after"),
            f.refusals_with_retry_after,
        );
        // Allowed: a TCP connect refused while nothing listens (the restart's gap), and 429/503
        // answers that carry Retry-After. Anything else is unexpected.
        r.i(
            &self.key("refusals_429_503_with_retry_after"),
            f.ok_refusals,
        );
        let unexpected = f.unexpected;
        r.i(&self.key("unexpected_during_cut"), f.unexpected_during_cut);
        r.i(
            &self.key("handshake_timeouts"),
            f.failures.get("timeout").copied().unwrap_or(0),
        );
        r.i(&self.key("unexpected_failures"), unexpected);
        put(r, &self.key("peak"), peak);
        // Everyone back: let the server settle, then read it again.
        f.run_until(self.settle, |_| false);
        put(r, &self.key("after_back"), probe(pid.as_deref()));
        r.oi(
            &self.key("tcp_mem_pages_after_back"),
            sockstat().map(|s| s.mem_pages),
        );
        Ok((all_back, unexpected == 0))
    }
}
