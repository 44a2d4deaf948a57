//! `shardcast`: parse the command line, load the config, set up logging, start the shards, and
//! translate signals into shutdown modes. Everything else lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use shardcast::config::{parse_io_driver, parse_listen, parse_shards, Config};
use shardcast::server;
use shardcast::shard::ShutdownMode;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

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
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Validate a config file: exit 0 if valid, non-zero with the offending key otherwise.
    Check,
}

fn main() -> ExitCode {
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
    if let Some(Command::Config {
        action: ConfigAction::Check,
    }) = &cli.command
    {
        let Some(path) = &cli.config else {
            anyhow::bail!("config check needs --config FILE");
        };
        load(&cli)?;
        println!("{}: OK", path.display());
        return Ok(());
    }
    let cfg = load(&cli)?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cfg.log_level));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    let mut signals = Signals::new([SIGTERM, SIGINT]).context("installing signal handlers")?;
    let shards = cfg.shards.get();
    let handle = server::start(cfg.clone()).context("starting server")?;
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        shards,
        io_driver = handle.driver(),
        listen = %handle.local_addr(),
        "shardcast started"
    );
    let mode = match signals.forever().next() {
        Some(SIGINT) => ShutdownMode::Fast,
        _ => ShutdownMode::Graceful,
    };
    tracing::info!(?mode, drain_timeout = ?cfg.drain_timeout, "shutting down");
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
