//! systemd integration over `$NOTIFY_SOCKET` (the `sd-notify` crate; nothing happens when the
//! daemon is not run by systemd): `READY=1` once every shard accepts, `STATUS=` with a one-line
//! summary, `STOPPING=1` on drain, and `WATCHDOG=1` only while every shard's loop is turning
//! ([`crate::health::all_turned`]), so a stuck shard stops the pings and systemd restarts the
//! service (`WatchdogSec=` in the unit).

use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;

use crate::health::{all_turned, Health};
use crate::metrics::Stats;

fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}

/// The one-line status systemd shows.
pub fn summary(stats: &Stats) -> String {
    let s = stats.snapshot();
    format!(
        "{} connections, {} messages in, {} deliveries, {} refused",
        s.connections,
        s.messages_in,
        s.deliveries,
        s.http_rejected + s.auth_failures + s.admission_refusals
    )
}

/// Startup is finished: every shard accepts.
pub fn ready(stats: &Stats) {
    notify(&[NotifyState::Ready, NotifyState::Status(&summary(stats))]);
}

/// Reloading the configuration (`RELOADING=1`), then ready again.
pub fn reloading(done: bool, stats: &Stats) {
    if done {
        notify(&[NotifyState::Ready, NotifyState::Status(&summary(stats))]);
    } else {
        notify(&[NotifyState::Reloading]);
    }
}

/// Draining: no new connections.
pub fn stopping() {
    notify(&[NotifyState::Stopping, NotifyState::Status("draining")]);
}

/// When systemd asks for a watchdog (`WATCHDOG_USEC`), check the shards' pulses every half
/// period and ping only if every shard turned since the last check.
pub fn spawn_watchdog(health: Arc<Health>, stats: Stats) {
    let Some(period) = sd_notify::watchdog_enabled() else {
        return;
    };
    let every = (period / 2).max(Duration::from_millis(100));
    let spawned = std::thread::Builder::new()
        .name("watchdog".into())
        .spawn(move || {
            let mut before = health.pulses();
            loop {
                std::thread::sleep(every);
                let now = health.pulses();
                match all_turned(&before, &now) {
                    Ok(()) => {
                        notify(&[NotifyState::Watchdog, NotifyState::Status(&summary(&stats))])
                    }
                    Err(shard) => {
                        tracing::error!(shard, "shard loop not turning: no watchdog ping")
                    }
                }
                before = now;
            }
        });
    if spawned.is_err() {
        tracing::error!("could not start the watchdog thread");
    }
}
