//! `matchplane demo`: a control plane, a game server hosting hero-defense and a crowd of
//! bots, all in this process, so one command shows the whole journey working.

mod bot;
mod fill;
mod planes;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use matchplane_client::MatchmakingClient;
use matchplane_control_plane::auth::ADMIN_TOKEN_FILE;
use matchplane_hero_defense::HeroDefenseConfig;
use tokio::time::Instant;

use self::bot::{Bot, SharedBoard};
use self::planes::{EmbeddedPlanes, PlaneOptions};
use crate::duration::parse_duration;
use crate::logging::{self, LogFormat};

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Number of bot players (the default fills two 3v3 matches).
    #[arg(long, default_value_t = 12)]
    pub bots: usize,

    /// Queue the bots join; its land type must be `hero-defense`.
    #[arg(long, default_value = "hero-defense:3v3")]
    pub queue: String,

    /// Keep forming new rounds until this much time has passed (`90s`, `5m`);
    /// without it the bots play one round.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// After the bots finish, leave both planes running and print their URLs (Ctrl-C stops).
    #[arg(long)]
    pub keep_running: bool,

    /// hero-defense tunables: `quick` (a short game), `standard`, or a JSON object of
    /// overrides such as `{"waves":2}` (applied to `standard`).
    #[arg(long, default_value = "quick")]
    pub game_config: String,

    /// Keep the control plane's store here instead of a temporary directory.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,

    /// Control plane port (0 picks a free one).
    #[arg(long, default_value_t = 0)]
    pub control_plane_port: u16,

    /// Game server port (0 picks a free one).
    #[arg(long, default_value_t = 0)]
    pub game_port: u16,

    /// A round that has not ended after this long fails the demo.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub round_timeout: Duration,

    /// Show the planes' logs here instead of writing them to `demo.log` in the data dir.
    #[arg(long, env = "MATCHPLANE_DEMO_VERBOSE")]
    pub verbose: bool,
}

/// The planes' log in the data dir, unless `--verbose`.
const LOG_FILE: &str = "demo.log";

/// Where the demo keeps its store, credentials and log: `--data-dir`, or a
/// temporary directory removed after a clean run.
struct DemoDir {
    path: PathBuf,
    temp: Option<tempfile::TempDir>,
}

impl DemoDir {
    fn new(given: Option<PathBuf>) -> anyhow::Result<Self> {
        match given {
            Some(path) => {
                std::fs::create_dir_all(&path)
                    .with_context(|| format!("cannot create the data dir {}", path.display()))?;
                Ok(Self { path, temp: None })
            }
            None => {
                let temp = tempfile::Builder::new()
                    .prefix("matchplane-demo-")
                    .tempdir()
                    .context("cannot create a temporary data directory")?;
                Ok(Self {
                    path: temp.path().to_path_buf(),
                    temp: Some(temp),
                })
            }
        }
    }

    /// A failed run keeps even a temporary directory: its log says what went wrong.
    fn keep(self) {
        if let Some(temp) = self.temp {
            let kept = temp.keep();
            println!("the data dir and its log are kept: {}", kept.display());
        }
    }
}

fn hero_defense_config(raw: &str) -> anyhow::Result<HeroDefenseConfig> {
    if let Some(preset) = HeroDefenseConfig::preset(raw) {
        return Ok(preset);
    }
    serde_json::from_str(raw).with_context(|| {
        format!("--game-config must be `quick`, `standard` or a JSON object, got {raw:?}")
    })
}

/// Players per match of `queue` under default queue semantics (`3v3` → 6).
fn match_size(queue: &str) -> usize {
    matchplane_matchmaker::default_teams_for_key(queue)
        .map_or(1, |teams| teams.iter().map(|&size| size as usize).sum())
}

fn validate(args: &DemoArgs) -> anyhow::Result<usize> {
    let land_type = args.queue.split(':').next().unwrap_or_default();
    if land_type != "hero-defense" {
        bail!(
            "the demo bots play hero-defense; --queue must start with `hero-defense` (got {:?})",
            args.queue
        );
    }
    let size = match_size(&args.queue).max(1);
    if !args.bots.is_multiple_of(size) {
        bail!(
            "--bots {} does not fill whole matches of {:?} ({size} players each); use a multiple of {size}",
            args.bots,
            args.queue
        );
    }
    Ok(size)
}

pub async fn run(args: DemoArgs, log_format: LogFormat) -> anyhow::Result<()> {
    let match_size = validate(&args)?;
    let hero_defense = hero_defense_config(&args.game_config)?;
    let dir = DemoDir::new(args.data_dir.clone())?;
    // The terminal is for the progress view and the summary; the planes talk into a file.
    let log_file = if args.verbose {
        logging::init(log_format);
        None
    } else {
        let path = dir.path.join(LOG_FILE);
        logging::init_to_file(log_format, &path)?;
        Some(path)
    };
    let outcome = play(&args, match_size, hero_defense, &dir, log_file.as_deref()).await;
    if outcome.is_err() {
        dir.keep();
    }
    outcome
}

async fn play(
    args: &DemoArgs,
    match_size: usize,
    hero_defense: HeroDefenseConfig,
    dir: &DemoDir,
    log_file: Option<&Path>,
) -> anyhow::Result<()> {
    let data_dir = dir.path.as_path();
    let started = Instant::now();
    println!("matchplane demo");
    match log_file {
        Some(log_file) => println!(
            "  logs           {} (--verbose shows them here)",
            log_file.display()
        ),
        None => println!("  logs           on stderr (--verbose)"),
    }
    let planes = EmbeddedPlanes::start(PlaneOptions {
        control_plane_port: args.control_plane_port,
        game_port: args.game_port,
        data_dir: data_dir.to_path_buf(),
        hero_defense,
        server_id: "demo-game-1".to_owned(),
    })
    .await?;
    println!("  control plane  {}", planes.control_plane_url());
    println!(
        "  dashboard      {}/dashboard (admin token in {})",
        planes.control_plane_url(),
        data_dir.join(ADMIN_TOKEN_FILE).display()
    );
    println!("  play           {}/play", planes.control_plane_url());
    println!(
        "  game server    {} (hero-defense, counter; registered as demo-game-1)",
        planes.game_url()
    );
    println!(
        "  data dir       {}{}",
        planes.data_dir.display(),
        if dir.temp.is_some() {
            " (temporary: removed after a clean run; --data-dir keeps it)"
        } else {
            ""
        }
    );
    println!(
        "  bots           {} on {} ({} per match)",
        args.bots, args.queue, match_size
    );

    let board = SharedBoard::default();
    let progress = tokio::spawn(report_progress(board.clone(), started, args.bots));
    let client = MatchmakingClient::new(planes.control_plane_url());
    let mut rounds = 0u32;
    let mut failed = false;
    while args.bots > 0 && !failed {
        rounds += 1;
        let mut bots = tokio::task::JoinSet::new();
        for index in 0..args.bots {
            let bot = Bot {
                id: format!("bot-{:02}", index + 1),
                slot: index % match_size.max(1),
                client: client.clone(),
                queue: args.queue.clone(),
                board: board.clone(),
                patience: None,
            };
            let timeout = args.round_timeout;
            bots.spawn(async move { bot.play_round(timeout).await });
        }
        while let Some(finished) = bots.join_next().await {
            match finished {
                Ok(Ok(())) => {}
                Ok(Err(_)) => failed = true,
                Err(err) => {
                    failed = true;
                    board
                        .lock()
                        .failures
                        .push(format!("a bot task died: {err}"));
                }
            }
        }
        let more = args
            .duration
            .is_some_and(|duration| started.elapsed() < duration);
        if failed || !more {
            break;
        }
    }
    progress.abort();
    let lands_left = wait_for_lands_to_finish(&planes).await;
    let (summary, ok) = summary(&board, args.bots, rounds, lands_left);
    println!("{summary}");

    if args.keep_running {
        print_try_it(&planes, &args.queue);
        let filler = tokio::spawn(fill::fill_human_matches(
            std::sync::Arc::clone(&planes.control_plane.state().store),
            client.clone(),
            args.round_timeout,
        ));
        crate::signals::Shutdown::listen().received().await;
        filler.abort();
    }
    planes.shutdown().await;
    if !ok || failed {
        bail!("the demo did not complete cleanly (see the summary above)");
    }
    Ok(())
}

/// Closed lands leave the game server right after their goodbye; give them a moment.
async fn wait_for_lands_to_finish(planes: &EmbeddedPlanes) -> usize {
    let manager = planes.game.manager();
    if manager.wait_until_empty(Duration::from_secs(5)).await {
        0
    } else {
        manager.load().lands
    }
}

async fn report_progress(board: SharedBoard, started: Instant, bots: usize) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.tick().await;
    loop {
        every.tick().await;
        let line = {
            let board = board.lock();
            let running: Vec<String> = board
                .lands
                .values()
                .filter(|land| land.closed.is_none())
                .map(|land| {
                    if land.wave == 0 {
                        "preparing".to_owned()
                    } else {
                        format!("wave {}/{}", land.wave, land.waves)
                    }
                })
                .collect();
            let finished = board.lands.len() - running.len();
            let mut waves = running
                .iter()
                .take(4)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ");
            if running.len() > 4 {
                let _ = write!(waves, ", …");
            }
            format!(
                "[{:>5.1}s] tickets queued {} · matched {}/{} · bots in lands {}/{} · lands running {}{} · finished {}",
                started.elapsed().as_secs_f64(),
                board.waiting,
                board.matched,
                board.enqueued,
                board.in_land,
                bots,
                running.len(),
                if waves.is_empty() {
                    String::new()
                } else {
                    format!(" ({waves})")
                },
                finished,
            )
        };
        println!("{line}");
    }
}

/// Lands listed one per line in the summary; long `--duration` runs only count the rest.
const MAX_LISTED_LANDS: usize = 20;

/// The final report, and whether every bot reached a land and every land closed properly.
fn summary(board: &SharedBoard, bots: usize, rounds: u32, lands_left: usize) -> (String, bool) {
    let board = board.lock();
    let mut out = String::new();
    let ttm = board.time_to_match.summary();
    let matches: std::collections::BTreeSet<&str> = board
        .lands
        .values()
        .filter_map(|land| land.match_id.as_deref())
        .collect();
    let expected_joins = bots as u64 * u64::from(rounds);
    let joined: u64 = board
        .lands
        .values()
        .map(|land| land.players.len() as u64)
        .sum();
    let _ = writeln!(out, "\nsummary");
    let _ = writeln!(out, "  rounds             {rounds}");
    let _ = writeln!(
        out,
        "  bots               {bots} ({joined}/{expected_joins} joins reached a land)"
    );
    let _ = writeln!(
        out,
        "  matches formed     {}",
        matches.len().max(board.lands.len())
    );
    let _ = writeln!(
        out,
        "  time to match      p50 {:.1} ms · p99 {:.1} ms · max {:.1} ms ({} tickets)",
        ttm.p50, ttm.p99, ttm.max, ttm.count
    );
    let _ = writeln!(out, "  lands played       {}", board.lands.len());
    let mut proper = 0usize;
    for (shown, (land_id, land)) in board.lands.iter().enumerate() {
        let listed = shown < MAX_LISTED_LANDS;
        if shown == MAX_LISTED_LANDS {
            let _ = writeln!(
                out,
                "    … {} more (all counted below)",
                board.lands.len() - MAX_LISTED_LANDS
            );
        }
        let short = land_id.get(..land_id.len().min(26)).unwrap_or(land_id);
        match &land.closed {
            Some((closed, at)) => {
                let result = closed.result.clone().unwrap_or_default();
                let properly = matches!(closed.reason.as_str(), "victory" | "defeat");
                proper += usize::from(properly);
                if !listed && properly {
                    continue;
                }
                let _ = writeln!(
                    out,
                    "    {short:<26} {:<8} wave {}/{} · kills {} · base hp {} · {} players · {:.1}s",
                    closed.reason,
                    result["wave"],
                    result["waves"],
                    result["kills"],
                    result["baseHp"],
                    land.players.len(),
                    at.duration_since(land.opened).as_secs_f64(),
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "    {short:<26} NOT CLOSED (last seen {}, wave {}/{})",
                    land.phase, land.wave, land.waves
                );
            }
        }
    }
    for failure in &board.failures {
        let _ = writeln!(out, "  failure: {failure}");
    }
    let ok = board.failures.is_empty()
        && joined == expected_joins
        && proper == board.lands.len()
        && lands_left == 0;
    if lands_left > 0 {
        let _ = writeln!(
            out,
            "  {lands_left} land(s) still running on the game server"
        );
    }
    let _ = writeln!(
        out,
        "  result             {}",
        if ok {
            "OK: every bot reached a land and every land closed properly"
        } else {
            "FAILED"
        }
    );
    (out, ok)
}

fn print_try_it(planes: &EmbeddedPlanes, queue: &str) {
    let cp = planes.control_plane_url();
    println!("\nthe planes keep running; press Ctrl-C to stop");
    println!("  control plane  {cp}");
    println!("  dashboard      {cp}/dashboard");
    println!(
        "  play           {cp}/play   (open it in a browser: solo, or with bots filling {})",
        fill::PLAY_WITH_BOTS_QUEUE
    );
    println!("  game server    {}", planes.game_url());
    println!("  try:");
    println!("    curl -s {cp}/health");
    println!(
        "    curl -s -X POST {cp}/v1/matchmaking/enqueue -H 'content-type: application/json' -d '{{\"queueKey\":\"{queue}\",\"members\":[\"you\"]}}'"
    );
    println!("    curl -s {cp}/v1/matchmaking/status/TICKET_ID");
    println!(
        "    curl -s {}/admin/lands   # from this host; a game server with --admin-token needs -H 'authorization: Bearer <admin token>'",
        planes.game_url()
    );
}
