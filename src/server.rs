//! The server entry: starts one thread per shard, each running its own monoio runtime with its
//! own listener, and returns a handle to stop it. Tests start a whole daemon in-process on port 0.

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::AtomicUsize;
use std::sync::{mpsc, Arc};
use std::task::Poll;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use monoio::{FusionDriver, IoUringDriver, LegacyDriver, RuntimeBuilder};

use crate::config::{Config, IoDriver};
use crate::connection::serve;
use crate::fanout::{run_flusher, run_inbox, ShardMsg};
use crate::heartbeat::run_sweeper;
use crate::listener::bind_reuseport;
use crate::metrics::Stats;
use crate::shard::{ShardCore, ShardId, ShardRef, ShutdownMode};

/// io_uring submission queue size per shard.
const URING_ENTRIES: u32 = 16384;

/// Errors starting or running the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
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
}

/// A running server.
#[derive(Debug)]
pub struct ServerHandle {
    addr: SocketAddr,
    stats: Stats,
    inboxes: Vec<flume::Sender<ShardMsg>>,
    threads: Vec<JoinHandle<()>>,
    driver: &'static str,
}

impl ServerHandle {
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

/// Start the server described by `cfg`.
pub fn start(cfg: Config) -> Result<ServerHandle, ServerError> {
    let n = cfg.shards.get();
    let listeners =
        bind_reuseport(cfg.listen, n, cfg.backlog).map_err(|source| ServerError::Bind {
            addr: cfg.listen,
            source,
        })?;
    let addr = listeners[0]
        .local_addr()
        .map_err(|source| ServerError::Bind {
            addr: cfg.listen,
            source,
        })?;
    let stats = Stats::new(n);
    let open = Arc::new(AtomicUsize::new(0));
    let (senders, receivers): (Vec<_>, Vec<_>) =
        (0..n).map(|_| flume::bounded(cfg.inbox_capacity)).unzip();
    let peers: Arc<[flume::Sender<ShardMsg>]> = senders.clone().into();
    let (ready_tx, ready_rx) = mpsc::channel::<Result<&'static str, ServerError>>();
    let mut threads = Vec::with_capacity(n);
    for (i, (listener, inbox)) in listeners.into_iter().zip(receivers).enumerate() {
        let cfg = cfg.clone();
        let peers = peers.clone();
        let stats = stats.clone();
        let open = open.clone();
        let ready = ready_tx.clone();
        let ready_fail = ready_tx.clone();
        let t = std::thread::Builder::new()
            .name(format!("shard-{i}"))
            .spawn(move || {
                if cfg.pin_cores {
                    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
                    if let Err(e) = monoio::utils::bind_to_cpu_set([i % cores]) {
                        tracing::warn!(shard = i, error = ?e, "cannot pin shard to a core");
                    }
                }
                let driver = cfg.io_driver;
                let run =
                    move || shard_main(ShardId(i), cfg, listener, inbox, peers, stats, open, ready);
                let res = match driver {
                    // Cooperative task running first (no inter-processor interrupt per completion,
                    // which is costly, above all in VMs); then a plain ring for kernels without it;
                    // then (auto only) epoll.
                    IoDriver::Auto => uring_runtime!(FusionDriver).map(|mut rt| rt.block_on(run())),
                    IoDriver::IoUring => {
                        uring_runtime!(IoUringDriver).map(|mut rt| rt.block_on(run()))
                    }
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
            })
            .map_err(|_| ServerError::Thread(i))?;
        threads.push(t);
    }
    drop(ready_tx);
    let mut driver = "io_uring";
    for _ in 0..n {
        match ready_rx.recv() {
            Ok(Ok(d)) => {
                if d == "epoll" {
                    driver = "epoll";
                }
            }
            Ok(Err(e)) => {
                for tx in &senders {
                    let _ = tx.send(ShardMsg::Shutdown(ShutdownMode::Fast));
                }
                return Err(e);
            }
            Err(_) => {
                for tx in &senders {
                    let _ = tx.send(ShardMsg::Shutdown(ShutdownMode::Fast));
                }
                return Err(runtime_failure());
            }
        }
    }
    Ok(ServerHandle {
        addr,
        stats,
        inboxes: senders,
        threads,
        driver,
    })
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

#[allow(clippy::too_many_arguments)]
async fn shard_main(
    id: ShardId,
    cfg: Config,
    listener: std::net::TcpListener,
    inbox: flume::Receiver<ShardMsg>,
    peers: Arc<[flume::Sender<ShardMsg>]>,
    stats: Stats,
    open: Arc<AtomicUsize>,
    ready: mpsc::Sender<Result<&'static str, ServerError>>,
) {
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
    )));
    core.borrow_mut().me = Rc::downgrade(&core);
    monoio::spawn(run_inbox(core.clone(), inbox));
    monoio::spawn(run_sweeper(core.clone()));
    monoio::spawn(run_flusher(core.clone()));
    let _ = ready.send(Ok(driver));
    drop(ready);

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
            if s.shutdown.is_some() {
                Poll::Ready(())
            } else {
                s.accept_waker = Some(cx.waker().clone());
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

/// Run a server until `shutdown` resolves, then stop it in the mode the future returns.
pub fn run_until<F: Future<Output = ShutdownMode>>(
    cfg: Config,
    shutdown: F,
) -> Result<(), ServerError> {
    let handle = start(cfg)?;
    let mode = futures_lite_block_on(shutdown);
    handle.shutdown(mode);
    handle.join()
}

/// Minimal blocking executor for the shutdown future (runs on the calling thread).
fn futures_lite_block_on<F: Future>(f: F) -> F::Output {
    use std::task::{Context, Wake, Waker};
    struct ThreadWaker(std::thread::Thread);
    impl Wake for ThreadWaker {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}
