//! `matchplane`: one binary for every role.
#![forbid(unsafe_code)]

mod control_plane;
mod demo;
mod duration;
mod game_server;
mod listener;
mod loadtest;
mod logging;
mod signals;

use clap::{Parser, Subcommand};

// jemalloc instead of glibc's malloc: under matchmaking load glibc's
// consolidation and free-list walks were ~20 % of a control-plane replica's
// CPU (docs/benchmarks.md, "What limits the figures").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Debug, Parser)]
#[command(
    name = "matchplane",
    version,
    about = "Matchmaking and game-server platform"
)]
struct Cli {
    /// Log format: `text` for people, `json` for log pipelines.
    #[arg(
        long,
        global = true,
        env = "MATCHPLANE_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: logging::LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the control plane (queue, matchmaking, registry, tokens, JWKS).
    ControlPlane(Box<control_plane::ControlPlaneArgs>),
    /// Run a game server hosting the built-in lands.
    GameServer(Box<game_server::GameServerArgs>),
    /// Run a control plane, a game server and bots playing hero-defense, in one command.
    Demo(demo::DemoArgs),
    /// Drive the real journey against a running control plane and report latencies.
    Loadtest(Box<loadtest::LoadtestArgs>),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The demo decides itself: its logs go to a file in its data dir unless --verbose.
    if !matches!(cli.command, Command::Demo(_)) {
        logging::init(cli.log_format);
    }
    let log_format = cli.log_format;
    let runtime = match &cli.command {
        Command::Loadtest(args) if args.worker_threads == Some(1) => {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
        }
        Command::Loadtest(args) if args.worker_threads.is_some() => {
            let threads = args.worker_threads.map_or(1, usize::from);
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads)
                .enable_all()
                .build()?
        }
        _ => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?,
    };
    runtime.block_on(async move {
        match cli.command {
            Command::ControlPlane(args) => control_plane::run(*args).await,
            Command::GameServer(args) => game_server::run(*args).await,
            Command::Demo(args) => demo::run(args, log_format).await,
            Command::Loadtest(args) => loadtest::run(*args).await,
        }
    })
}
