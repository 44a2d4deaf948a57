//! The server entry: starts one thread per shard, each running its own monoio runtime with its
//! own listener, and returns a handle to stop it. Tests start a whole daemon in-process on port 0.

use std::cell::RefCell;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::AtomicUsize;
use std::sync::{mpsc, Arc};
use std::task::Poll;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use monoio::{FusionDriver, IoUringDriver, LegacyDriver, RuntimeBuilder};

use crate::admission::Admission;
use crate::config::{Config, IoDriver};
use crate::health::Health;
use crate::ids::ShardId;
use crate::listener::bind_reuseport;
use crate::metrics::Stats;
use crate::room::requests::{ApiAnswer, ApiReq};
use crate::shard::broadcast::run_flusher;
use crate::shard::bus::{run_inbox, ShardMsg};
use crate::shard::sweep::run_sweeper;
use crate::shard::{ShardCore, ShardRef, ShutdownMode};
use crate::transport::ws::serve;

/// io_uring submission queue size per shard.
const URING_ENTRIES: u32 = 16384;

/// Errors starting or running the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Another process serves the address (start with `--takeover` to hand it over).
    #[error(
        "{addr} is already served by {owner}; a second instance would silently split clients \
         between the two. Stop it first, or start this one with --takeover to take the address \
         over while the running one drains"
    )]
    InUse {
        /// Address.
        addr: SocketAddr,
        /// Who holds it (pid and command line, as far as /proc tells).
        owner: String,
    },
    /// Binding the listen address failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// Building a shard's runtime failed (e.g. io_uring unavailable with `io_driver = "io_uring"`).
    #[error("shard {shard}: cannot start the {driver} runtime: {source}")]
    Runtime {
        /// Shard index.
        shard: usize,
        /// Requested driver.
        driver: &'static str,
        /// Cause.
        source: std::io::Error,
    },
    /// A shard thread could not be spawned or died.
    #[error("shard {0} thread failed")]
    Thread(usize),
    /// Cluster mode: the Redis bridge could not start (bad URL, no thread).
    #[error("cannot start the cluster bridge: {0}")]
    Cluster(std::io::Error),
}

/// A running server.
#[derive(Debug)]
pub struct ServerHandle {
    addr: SocketAddr,
    health: Arc<Health>,
    stats: Stats,
    inboxes: Vec<flume::Sender<ShardMsg>>,
    threads: Vec<JoinHandle<()>>,
    driver: &'static str,
}

impl ServerHandle {
    /// Shard pulses and readiness (`/readyz`, the systemd watchdog).
    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    /// A cloneable handle to send the shards configurations and test hooks.
    pub fn control(&self) -> Control {
        Control {
            inboxes: self.inboxes.clone(),
        }
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The I/O driver actually in use: `"io_uring"` or `"epoll"`.
    pub fn driver(&self) -> &'static str {
        self.driver
    }

    /// Put a new configuration in force on every shard (see `ShardCore::reconfigure` for what
    /// follows at once and what applies to new connections only) and wait, up to
    /// [`RECONFIGURE_WAIT`], until every shard has: `false` if one has not yet (it will when
    /// it gets to its inbox). The listen address, shard count and I/O driver cannot change
    /// without a restart.
    pub fn reconfigure(&self, cfg: Config) -> bool {
        reconfigure_all(&self.inboxes, cfg)
    }

    /// Ask every shard to stop. Returns at once; use [`ServerHandle::join`] to wait.
    pub fn shutdown(&self, mode: ShutdownMode) {
        for tx in &self.inboxes {
            let _ = tx.send(ShardMsg::Shutdown(mode));
        }
    }

    /// Wait until every shard has stopped.
    pub fn join(self) -> Result<(), ServerError> {
        let ServerHandle {
            inboxes, threads, ..
        } = self;
        drop(inboxes);
        for (i, t) in threads.into_iter().enumerate() {
            t.join().map_err(|_| ServerError::Thread(i))?;
        }
        Ok(())
    }

    /// Stop (graceful) and wait.
    pub fn stop(self) -> Result<(), ServerError> {
        self.shutdown(ShutdownMode::Graceful);
        self.join()
    }
}

/// Start the server described by `cfg` ([`bind`], then [`Bound::run`]).
pub fn start(cfg: Config) -> Result<ServerHandle, ServerError> {
    bind(cfg, false)?.run()
}

/// A server whose listeners are bound and whose shared state (counters, health, inboxes)
/// exists, before any shard runs: the admin listener can start first and report "starting".
pub struct Bound {
    cfg: Config,
    listeners: Vec<std::net::TcpListener>,
    addr: SocketAddr,
    stats: Stats,
    health: Arc<Health>,
    senders: Vec<flume::Sender<ShardMsg>>,
    receivers: Vec<flume::Receiver<ShardMsg>>,
}

/// Bind the listeners of `cfg` and make the shared state. An address another process
/// listens on is refused ([`ServerError::InUse`]) unless `takeover`: then this process joins
/// its SO_REUSEPORT group (the caller tells the old one to drain once this one accepts).
pub fn bind(cfg: Config, takeover: bool) -> Result<Bound, ServerError> {
    if !takeover && crate::listener::in_use(cfg.listen) {
        let owner = crate::listener::owner(cfg.listen).map_or_else(
            || "another process".to_string(),
            |(pid, cmd)| format!("pid {pid} ({cmd})"),
        );
        return Err(ServerError::InUse {
            addr: cfg.listen,
            owner,
        });
    }
    let n = cfg.shards.get();
    let bind_err = |source| ServerError::Bind {
        addr: cfg.listen,
        source,
    };
    let listeners = bind_reuseport(cfg.listen, n, cfg.backlog).map_err(bind_err)?;
    let addr = listeners[0].local_addr().map_err(bind_err)?;
    let (senders, receivers) = (0..n).map(|_| flume::bounded(cfg.inbox_capacity)).unzip();
    Ok(Bound {
        stats: Stats::new(n),
        health: Arc::new(Health::new(n)),
        cfg,
        listeners,
        addr,
        senders,
        receivers,
    })
}

impl Bound {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Shard pulses and readiness.
    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    /// A handle to the shards (messages wait in their inboxes until they run).
    pub fn control(&self) -> Control {
        Control {
            inboxes: self.senders.clone(),
        }
    }

    /// Start the shards; returns once every one runs (or the first error).
    pub fn run(self) -> Result<ServerHandle, ServerError> {
        let Bound {
            cfg,
            listeners,
            addr,
            stats,
            health,
            senders,
            receivers,
        } = self;
        let n = listeners.len();
        let open = Arc::new(AtomicUsize::new(0));
        let admission = Arc::new(Admission::default());
        let peers: Arc<[flume::Sender<ShardMsg>]> = senders.clone().into();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<&'static str, ServerError>>();
        let mut bridge: Vec<Option<_>> = match cfg.cluster.clone() {
            Some(c) => {
                let started = crate::cluster::bridge::start(
                    c,
                    n,
                    cfg.inbox_capacity,
                    health.clone(),
                    stats.cluster.clone(),
                )
                .map_err(ServerError::Cluster)?;
                started
                    .events
                    .into_iter()
                    .map(|rx| Some((started.link.clone(), rx)))
                    .collect()
            }
            None => (0..n).map(|_| None).collect(),
        };
        let mut threads = Vec::with_capacity(n);
        for (i, (listener, inbox)) in listeners.into_iter().zip(receivers).enumerate() {
            let shard = ShardStart {
                id: ShardId(i),
                cfg: cfg.clone(),
                listener,
                inbox,
                peers: peers.clone(),
                stats: stats.clone(),
                open: open.clone(),
                admission: admission.clone(),
                health: health.clone(),
                ready: ready_tx.clone(),
                cluster: bridge[i].take(),
            };
            let t = std::thread::Builder::new()
                .name(format!("shard-{i}"))
                .spawn(move || shard_thread(shard))
                .map_err(|_| ServerError::Thread(i))?;
            threads.push(t);
        }
        drop(ready_tx);
        let driver = match wait_ready(&ready_rx, n) {
            Ok(d) => d,
            Err(e) => {
                for tx in &senders {
                    let _ = tx.send(ShardMsg::Shutdown(ShutdownMode::Fast));
                }
                return Err(e);
            }
        };
        Ok(ServerHandle {
            addr,
            health,
            stats,
            inboxes: senders,
            threads,
            driver,
        })
    }
}

/// A cloneable handle to the running shards (for the admin listener and signal handlers).
#[derive(Clone)]
pub struct Control {
    inboxes: Vec<flume::Sender<ShardMsg>>,
}

/// How long a reload waits for the shards to put the new configuration in force (a shard
/// busy longer gets to it later; the reload then says so).
pub const RECONFIGURE_WAIT: Duration = Duration::from_secs(2);

/// Send `cfg` to every shard and wait for each to have it in force (up to
/// [`RECONFIGURE_WAIT`]): after a reload has answered, new connections get the new settings
/// (the TLS certificate) on every shard.
fn reconfigure_all(inboxes: &[flume::Sender<ShardMsg>], cfg: Config) -> bool {
    let cfg = Arc::new(cfg);
    let (done, applied) = flume::bounded(inboxes.len());
    let sent = inboxes
        .iter()
        .filter(|tx| {
            tx.send(ShardMsg::Reconfigure(cfg.clone(), done.clone()))
                .is_ok()
        })
        .count();
    drop(done);
    let deadline = Instant::now() + RECONFIGURE_WAIT;
    (0..sent).all(|_| applied.recv_deadline(deadline).is_ok())
}

impl Control {
    /// See [`ServerHandle::reconfigure`].
    pub fn reconfigure(&self, cfg: Config) -> bool {
        reconfigure_all(&self.inboxes, cfg)
    }

    /// Every room with members: (name, members, seq), asked of every shard (each answers for
    /// the rooms it is home to) with `timeout` per shard.
    pub fn room_stats(&self, timeout: Duration) -> Vec<(Arc<str>, u64, u64)> {
        let mut all = Vec::new();
        for tx in &self.inboxes {
            let (atx, arx) = flume::bounded(1);
            if tx.send(ShardMsg::Api(ApiReq::RoomStats, atx)).is_err() {
                continue;
            }
            if let Ok(ApiAnswer::RoomStats(r)) = arx.recv_timeout(timeout) {
                all.extend(r);
            }
        }
        all
    }

    /// Test hook: block shard `shard`'s thread for `dur` (its loop stops turning).
    pub fn stall(&self, shard: usize, dur: Duration) -> bool {
        self.inboxes
            .get(shard)
            .is_some_and(|tx| tx.send(ShardMsg::Stall(dur)).is_ok())
    }
}

/// Wait until all `n` shards report their runtime running; the driver in use ("epoll" if any
/// shard fell back to it).
fn wait_ready(
    ready: &mpsc::Receiver<Result<&'static str, ServerError>>,
    n: usize,
) -> Result<&'static str, ServerError> {
    let mut driver = "io_uring";
    for _ in 0..n {
        match ready.recv() {
            Ok(Ok("epoll")) => driver = "epoll",
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(runtime_failure()),
        }
    }
    Ok(driver)
}

/// What one shard thread starts with.
struct ShardStart {
    id: ShardId,
    cfg: Config,
    listener: std::net::TcpListener,
    inbox: flume::Receiver<ShardMsg>,
    peers: Arc<[flume::Sender<ShardMsg>]>,
    stats: Stats,
    open: Arc<AtomicUsize>,
    admission: Arc<Admission>,
    health: Arc<Health>,
    ready: mpsc::Sender<Result<&'static str, ServerError>>,
    /// Cluster mode: this shard's end of the Redis bridge.
    cluster: Option<(crate::cluster::Link, flume::Receiver<crate::cluster::Event>)>,
}

/// A shard thread: pin it if asked, build its runtime, run the shard until it has drained.
fn shard_thread(shard: ShardStart) {
    let i = shard.id.0;
    if shard.cfg.pin_cores {
        let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
        if let Err(e) = monoio::utils::bind_to_cpu_set([i % cores]) {
            tracing::warn!(shard = i, error = ?e, "cannot pin shard to a core");
        }
    }
    let driver = shard.cfg.io_driver;
    let ready_fail = shard.ready.clone();
    let run = move || shard_main(shard);
    let res = match driver {
        // Cooperative task running first (no inter-processor interrupt per completion, which is
        // costly, above all in VMs); then a plain ring for kernels without it; then (auto only)
        // epoll.
        IoDriver::Auto => uring_runtime!(FusionDriver).map(|mut rt| rt.block_on(run())),
        IoDriver::IoUring => uring_runtime!(IoUringDriver).map(|mut rt| rt.block_on(run())),
        IoDriver::Epoll => RuntimeBuilder::<LegacyDriver>::new()
            .with_entries(URING_ENTRIES)
            .enable_timer()
            .build()
            .map(|mut rt| rt.block_on(run())),
    };
    if let Err(source) = res {
        let _ = ready_fail.send(Err(ServerError::Runtime {
            shard: i,
            driver: driver.as_str(),
            source,
        }));
    }
}

/// Build a runtime on an io_uring-capable driver: a cooperative ring first, then a plain one (for
/// kernels before 5.19). The driver types differ in their runtime type, hence a macro.
macro_rules! uring_runtime {
    ($driver:ty) => {
        RuntimeBuilder::<$driver>::new()
            .with_entries(URING_ENTRIES)
            .uring_builder(coop_ring())
            .enable_timer()
            .build()
            .or_else(|_| {
                RuntimeBuilder::<$driver>::new()
                    .with_entries(URING_ENTRIES)
                    .enable_timer()
                    .build()
            })
    };
}
use uring_runtime;

/// io_uring setup with IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG (Linux 5.19+):
/// completions are processed when the shard next enters the kernel instead of interrupting it.
fn coop_ring() -> io_uring::Builder {
    let mut b = io_uring::IoUring::builder();
    b.setup_coop_taskrun().setup_taskrun_flag();
    b
}

fn runtime_failure() -> ServerError {
    ServerError::Runtime {
        shard: 0,
        driver: "requested",
        source: std::io::Error::other(
            "a shard failed to start its runtime (io_uring unavailable?)",
        ),
    }
}

async fn shard_main(shard: ShardStart) {
    let ShardStart {
        id,
        cfg,
        listener,
        inbox,
        peers,
        stats,
        open,
        admission,
        health,
        ready,
        cluster,
    } = shard;
    let driver = if monoio::utils::is_legacy() {
        "epoll"
    } else {
        "io_uring"
    };
    let listener = match monoio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(source) => {
            let _ = ready.send(Err(ServerError::Runtime {
                shard: id.0,
                driver,
                source,
            }));
            return;
        }
    };
    let core: ShardRef = Rc::new(RefCell::new(ShardCore::new(
        id,
        Rc::new(cfg),
        peers,
        stats,
        open,
        admission,
        health.clone(),
    )));
    core.borrow_mut().me = Rc::downgrade(&core);
    if let Some((link, events)) = cluster {
        core.borrow_mut().cluster = Some(crate::shard::cluster::ClusterHome::new(link));
        monoio::spawn(crate::shard::bus::run_cluster_inbox(core.clone(), events));
    }
    monoio::spawn(run_inbox(core.clone(), inbox));
    monoio::spawn(run_sweeper(core.clone()));
    monoio::spawn(run_flusher(core.clone()));
    let _ = ready.send(Ok(driver));
    drop(ready);
    health.set_accepting(id.0, true);

    accept_loop(&core, &listener).await;
    // Stop listening now: a cancelled io_uring accept can keep the socket alive in the kernel
    // for a while after close, and new clients must be refused during the drain.
    // SAFETY: shutdown(2) on our own listening fd; no memory is involved.
    unsafe {
        libc::shutdown(std::os::fd::AsRawFd::as_raw_fd(&listener), libc::SHUT_RDWR);
    }
    drop(listener);

    // Drain: wait until every connection is gone; the sweep kills what outlives the deadline.
    while !core.borrow().drained() {
        monoio::time::sleep(Duration::from_millis(5)).await;
        core.borrow_mut().sweep(Instant::now());
    }
}

async fn accept_loop(core: &ShardRef, listener: &monoio::net::TcpListener) {
    loop {
        let stop = poll_fn(|cx| {
            let mut s = core.borrow_mut();
            if s.life.shutdown.is_some() {
                Poll::Ready(())
            } else {
                s.life.accept_waker = Some(cx.waker().clone());
                Poll::Pending
            }
        });
        monoio::select! {
            _ = stop => return,
            res = listener.accept() => match res {
                Ok((stream, _peer)) => {
                    monoio::spawn(serve(core.clone(), stream));
                }
                Err(e) => {
                    // EMFILE/ENFILE: back off instead of spinning; connections already open
                    // keep working.
                    tracing::warn!(error = %e, "accept failed");
                    monoio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}
