//! `shardcast`: parse the command line, load the config, set up logging, start the shards, and
//! translate signals into shutdown modes. Everything else lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use shardcast::admin::{self, Admin, Reloader};
use shardcast::config::{parse_io_driver, parse_listen, parse_shards, Config};
use shardcast::server::{self, Bound, Control};
use shardcast::service;
use shardcast::shard::ShutdownMode;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use std::sync::{Arc, Mutex, OnceLock};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

#[derive(Parser)]
#[command(
    name = "shardcast",
    version,
    about = "Thread-per-core WebSocket gateway"
)]
struct Cli {
    /// TOML configuration file (see config.example.toml). Without it, built-in defaults are used.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Listen address, overrides `server.listen`.
    #[arg(long)]
    listen: Option<String>,
    /// Number of shards ("auto" or N), overrides `server.shards`.
    #[arg(long)]
    shards: Option<String>,
    /// I/O driver ("auto", "io_uring" or "epoll"), overrides `server.io_driver`.
    #[arg(long)]
    io_driver: Option<String>,
    /// Zero-downtime upgrade: take the listen address over from the shardcast already serving
    /// it (both share it through SO_REUSEPORT until the old one has drained: once this one
    /// accepts, the old one gets SIGTERM and closes its clients with 1012 over its
    /// drain_timeout, and they reconnect here). Without it, a served address is refused.
    #[arg(long)]
    takeover: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Ask the running daemon (through its admin listener, `[admin] listen` and `key` of the
    /// same --config) to re-read its config file, as SIGHUP does; prints what it said.
    Reload,
    /// Ask the running daemon (same way) to stop accepting and close its clients with 1012
    /// spread over the window, as SIGTERM does over `[shutdown] drain_timeout`.
    Drain {
        /// The window, e.g. "30s" (default: drain_timeout).
        #[arg(long)]
        over: Option<String>,
    },
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Validate a config file (or, without --config, the built-in defaults): exit 0 if valid,
    /// non-zero with the offending key otherwise.
    Check,
}

fn main() -> ExitCode {
    // One rustls crypto provider (ring) for the process: the listener's TLS and the redis
    // crate's rediss:// (which builds its rustls config with the process default).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shardcast: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(cli: &Cli) -> anyhow::Result<Config> {
    let mut cfg = match &cli.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(l) = &cli.listen {
        cfg.listen = parse_listen(l).context("--listen")?;
    }
    if let Some(s) = &cli.shards {
        cfg.shards = parse_shards(s).context("--shards")?;
    }
    if let Some(d) = &cli.io_driver {
        cfg.io_driver = parse_io_driver(d).context("--io-driver")?;
    }
    Ok(cfg)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if cli.command.is_some() {
        return tool_command(&cli);
    }
    serve(cli)
}

/// `config check`, `reload`, `drain`.
fn tool_command(cli: &Cli) -> anyhow::Result<()> {
    match &cli.command {
        Some(Command::Config {
            action: ConfigAction::Check,
        }) => {
            load(cli)?;
            match &cli.config {
                Some(path) => println!("{}: OK", path.display()),
                None => println!("built-in defaults: OK"),
            }
            return Ok(());
        }
        Some(Command::Reload) => return admin_post(cli, "/reload"),
        Some(Command::Drain { over }) => {
            let q = over
                .as_deref()
                .map(|o| format!("?over={o}"))
                .unwrap_or_default();
            return admin_post(cli, &format!("/drain{q}"));
        }
        None => {}
    }
    Ok(())
}

/// Run the daemon until a stop signal and the drain are over.
fn serve(cli: Cli) -> anyhow::Result<()> {
    let cfg = load(&cli)?;
    let log = logging(&cfg);

    let mut signals =
        Signals::new([SIGTERM, SIGINT, SIGHUP]).context("installing signal handlers")?;
    let shards = cfg.shards.get();
    let old = if cli.takeover {
        shardcast::listener::owner(cfg.listen)
    } else {
        None
    };
    let takeover = cli.takeover;
    let bound = server::bind(cfg.clone(), takeover).context("starting server")?;
    let running = Arc::new(Mutex::new(cfg.clone()));
    let reload = reloader(cli, running, bound.control(), log, bound.stats().clone());
    let driver = Arc::new(OnceLock::new());
    let drain_over: Arc<Mutex<Option<std::time::Duration>>> = Arc::default();
    let admin = admin_config(
        &cfg,
        &bound,
        driver.clone(),
        reload.clone(),
        drain_over.clone(),
    );
    start_admin(&cfg, admin, takeover)?;
    if let Some(ms) = test_hook("SHARDCAST_TEST_START_DELAY_MS") {
        // Test hook: hold the shards back so that /readyz can be seen saying "starting".
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
    let handle = bound.run().context("starting server")?;
    let _ = driver.set(handle.driver());
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        shards,
        io_driver = handle.driver(),
        listen = %handle.local_addr(),
        "shardcast started"
    );
    service::ready(handle.stats());
    if let Some((pid, cmd)) = old {
        // Our shards accept: the old process may stop accepting and drain.
        tracing::info!(pid, %cmd, "took the address over; the running daemon drains");
        // SAFETY: kill(2) on a pid read from /proc; no memory is involved.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
        }
    }
    service::spawn_watchdog(handle.health().clone(), handle.stats().clone());
    let mode = wait_for_stop(&mut signals, &reload, &drain_over);
    tracing::info!(?mode, drain_timeout = ?cfg.drain_timeout, "shutting down");
    service::stopping();
    handle.shutdown(mode);
    // A second signal while draining stops at once.
    std::thread::spawn(move || {
        if signals.forever().next().is_some() {
            std::process::exit(1);
        }
    });
    handle.join().context("waiting for shards")?;
    tracing::info!("stopped");
    Ok(())
}

/// Serve signals until one stops the daemon: SIGHUP reloads; SIGINT is a fast stop; SIGTERM
/// (or `POST /drain`, which raises it with a window) a rolling drain.
fn wait_for_stop(
    signals: &mut Signals,
    reload: &Arc<Reloader>,
    drain_over: &Mutex<Option<std::time::Duration>>,
) -> ShutdownMode {
    loop {
        match signals.forever().next() {
            Some(SIGHUP) => {
                if let Err(e) = reload() {
                    tracing::error!("reload refused, the running config stays: {e}");
                }
            }
            Some(SIGINT) => return ShutdownMode::Fast,
            _ => {
                let over = drain_over.lock().unwrap_or_else(|e| e.into_inner()).take();
                return over.map_or(ShutdownMode::Graceful, ShutdownMode::Over);
            }
        }
    }
}

/// Set up logging; the handle changes the level on reload (unless `RUST_LOG` decides).
fn logging(cfg: &Config) -> Option<reload::Handle<EnvFilter, Registry>> {
    use std::io::IsTerminal;
    let from_env = EnvFilter::try_from_default_env().ok();
    let fixed = from_env.is_some();
    let filter = from_env.unwrap_or_else(|| EnvFilter::new(&cfg.log_level));
    let (filter, handle) = reload::Layer::new(filter);
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(filter);
    if cfg.log_json {
        registry.with(fmt.json().flatten_event(true)).init();
    } else {
        registry
            .with(fmt.with_ansi(std::io::stderr().is_terminal()))
            .init();
    }
    (!fixed).then_some(handle)
}

/// Re-read the config file and put it in force (SIGHUP, `shardcast reload`, `POST /reload`).
/// An invalid file changes nothing; keys that need a restart keep their running value.
fn reloader(
    cli: Cli,
    running: Arc<Mutex<Config>>,
    control: Control,
    log: Option<reload::Handle<EnvFilter, Registry>>,
    stats: shardcast::metrics::Stats,
) -> Arc<Reloader> {
    Arc::new(move || {
        service::reloading(false, &stats);
        let result = (|| {
            let mut new = load(&cli).map_err(|e| format!("{e:#}"))?;
            let mut cur = running.lock().unwrap_or_else(|e| e.into_inner());
            let kept = new.keep_fixed(&cur);
            if let Some(h) = &log {
                if new.log_level != cur.log_level {
                    h.modify(|f| *f = EnvFilter::new(&new.log_level))
                        .map_err(|e| format!("log.level: {e}"))?;
                }
            }
            let applied = control.reconfigure(new.clone());
            *cur = new;
            let mut msg = "reloaded".to_string();
            if !applied {
                msg = format!(
                    "{msg}; a shard busy for over {:?} puts it in force when it gets to it",
                    shardcast::server::RECONFIGURE_WAIT
                );
                tracing::warn!("a shard has not put the new configuration in force yet (busy)");
            }
            if !kept.is_empty() {
                msg = format!(
                    "{msg}; kept the running value of {} (restart to change)",
                    kept.join(", ")
                );
                tracing::warn!(keys = %kept.join(", "), "these keys cannot change without a restart");
            }
            tracing::info!("{msg}");
            Ok(msg)
        })();
        service::reloading(true, &stats);
        result
    })
}

/// What the admin listener serves from.
fn admin_config(
    cfg: &Config,
    bound: &Bound,
    io_driver: Arc<OnceLock<&'static str>>,
    reload: Arc<Reloader>,
    drain_over: Arc<Mutex<Option<std::time::Duration>>>,
) -> Admin {
    Admin {
        stats: bound.stats().clone(),
        health: bound.health().clone(),
        io_driver,
        key: cfg.admin.key.clone(),
        reload: Box::new(move || reload()),
        // `POST /drain`: the same path as SIGTERM, with its window.
        drain: Box::new(move |over| {
            if !over.is_zero() {
                *drain_over.lock().unwrap_or_else(|e| e.into_inner()) = Some(over);
            }
            let _ = signal_hook::low_level::raise(SIGTERM);
        }),
        control: bound.control(),
        test_hooks: test_hooks(),
    }
}

/// Start the admin listener. The default address in use is a warning (another daemon on this
/// machine has it); an address set in the file that cannot be bound is an error; during a
/// takeover the old process holds it until it exits, so it is taken when free.
fn start_admin(cfg: &Config, admin: Admin, takeover: bool) -> anyhow::Result<()> {
    let Some(addr) = cfg.admin.listen else {
        return Ok(());
    };
    if takeover && shardcast::listener::in_use(addr) {
        admin::spawn_when_free(addr, admin).context("admin listener thread")?;
        return Ok(());
    }
    match admin::spawn(addr, admin) {
        Ok(local) => {
            tracing::info!(admin = %local, "admin listener (metrics, readyz, admin page)");
            Ok(())
        }
        Err(e) if !cfg.admin.explicit => {
            tracing::warn!(admin = %addr, error = %e, "admin listener not started (set [admin] listen)");
            Ok(())
        }
        Err(e) => Err(e).with_context(|| format!("admin.listen: cannot bind {addr}")),
    }
}

/// `shardcast reload` / `drain`: POST `path` to the admin listener of the same config.
fn admin_post(cli: &Cli, path: &str) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let cfg = load(cli)?;
    let addr = cfg
        .admin
        .listen
        .context("admin.listen is off: send SIGHUP (systemctl reload shardcast) instead")?;
    let mut s = std::net::TcpStream::connect(addr)
        .with_context(|| format!("no daemon answers on the admin listener {addr}"))?;
    let auth = cfg
        .admin
        .key
        .as_ref()
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\n{auth}\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    println!("{}", body.trim_end());
    if !head.starts_with("HTTP/1.1 200") {
        anyhow::bail!("refused");
    }
    Ok(())
}

/// `SHARDCAST_TEST_HOOKS=1`: the test-only hooks are on.
fn test_hooks() -> bool {
    std::env::var("SHARDCAST_TEST_HOOKS").is_ok_and(|v| v == "1")
}

/// A numeric test-hook variable, read only when the hooks are on.
fn test_hook(name: &str) -> Option<u64> {
    test_hooks()
        .then(|| std::env::var(name).ok()?.parse().ok())
        .flatten()
}
