//! `matchplane loadtest`: drives the real player journey against running planes and
//! reports how fast it is.
//!
//! Arrivals are open-loop: ticket `i` is due at `start + i / rate` whatever happened to
//! earlier ones, and every latency is measured from that due time, so a slow server
//! shows up as latency instead of silently lowering the offered rate (no coordinated
//! omission).

mod heartbeat;
mod pool;
pub mod stats;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use matchplane_client::contracts::matchmaking::{Assignment, EnqueueRequest};
use matchplane_client::{
    ActionError, ConnectOptions, JoinError, LandConnection, LandError, MatchmakingClient,
    MatchmakingError, RecoveryPolicy,
};
use rand::Rng as _;
use serde::Serialize;
use serde_json::json;
use tokio::sync::oneshot;
use tokio::time::Instant;

use self::heartbeat::{ProcessProbe, ProcessSample, round};
use self::pool::{PushPool, Pushed};
use self::stats::{Latency, LatencySummary};
use crate::duration::parse_duration;

#[derive(Debug, Args)]
pub struct LoadtestArgs {
    /// Control plane base URL (an LB prefix such as `http://lb/match` works too). Several
    /// replicas: comma-separated and/or the flag repeated; ticket `i` is then enqueued on
    /// replica `i % N` and watched on replica `(i + 1) % N`, so every assignment crosses
    /// replicas.
    #[arg(
        long,
        env = "MATCHPLANE_CONTROL_PLANE_URL",
        default_value = "http://127.0.0.1:3000"
    )]
    pub control_plane: Vec<String>,

    /// Players to send through the journey.
    #[arg(long, default_value_t = 1000)]
    pub players: u64,

    /// Tickets per second, open-loop.
    #[arg(long, default_value_t = 500.0)]
    pub rate: f64,

    /// Players per ticket (a party shares one ticket and one team).
    #[arg(long, default_value_t = 1)]
    pub party_size: u32,

    #[arg(long, default_value = "hero-defense:3v3")]
    pub queue: String,

    /// Width of the uniform skill distribution around 1500 (`skill` attribute); 0 sends none.
    #[arg(long, default_value_t = 0.0)]
    pub skill_spread: f64,

    /// Seconds each player stays in its land after `join.ok`, moving once a second;
    /// 0 leaves right after `join.ok`.
    #[arg(long, default_value_t = 0.0)]
    pub play_seconds: f64,

    /// Matchmaking only: do not connect to game servers.
    #[arg(long)]
    pub no_join: bool,

    /// Also write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,

    /// A ticket not assigned this long after its due time counts as `match_timeout`.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub match_timeout: Duration,

    /// Connect + `join.ok` limit per player.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub join_timeout: Duration,

    /// Prefix of generated player ids (default: random per run, so runs never collide).
    #[arg(long)]
    pub player_prefix: Option<String>,

    /// Heartbeat mode instead of the player journey: register this many fake game
    /// servers and heartbeat each every `--heartbeat-interval` for `--duration`
    /// (0: just watch the control plane idle, a baseline for `--pid-cp`).
    #[arg(long, env = "MATCHPLANE_LOADTEST_HEARTBEAT_SERVERS")]
    pub heartbeat_servers: Option<u32>,

    /// Heartbeat mode: each fake server's heartbeat period (beats are spread evenly over it).
    #[arg(long, env = "MATCHPLANE_LOADTEST_HEARTBEAT_INTERVAL", default_value = "2s",
        value_parser = parse_duration)]
    pub heartbeat_interval: Duration,

    /// Heartbeat mode: how long to heartbeat.
    #[arg(long, env = "MATCHPLANE_LOADTEST_DURATION", default_value = "60s",
        value_parser = parse_duration)]
    pub duration: Duration,

    /// Heartbeat mode: also hold this many `/realtime` sockets open, idle, through the
    /// window: what players waiting in the queue with a socket open cost the control
    /// plane. Its memory per socket is the RSS of `--pid-cp` against a run without.
    #[arg(long, env = "MATCHPLANE_LOADTEST_IDLE_SOCKETS", default_value_t = 0)]
    pub idle_sockets: u32,

    /// Heartbeat mode: keep-alive HTTP connections the fake servers share.
    #[arg(
        long,
        env = "MATCHPLANE_LOADTEST_HEARTBEAT_CONNECTIONS",
        default_value_t = 16
    )]
    pub heartbeat_connections: u32,

    /// Heartbeat mode: the control plane's registration token (`Authorization: Bearer`).
    #[arg(long, env = "MATCHPLANE_REGISTRATION_TOKEN", hide_env_values = true,
        value_parser = crate::game_server::parse_registration_token)]
    pub registration_token: Option<matchplane_edge::secret::Secret>,

    /// Heartbeat mode: file whose first line is the registration token; wins over
    /// --registration-token.
    #[arg(long, env = "MATCHPLANE_REGISTRATION_TOKEN_FILE")]
    pub registration_token_file: Option<PathBuf>,

    /// Pid of the control plane, to report its CPU time and memory (from /proc) over the
    /// run (heartbeat mode: over the heartbeat window).
    #[arg(long, env = "MATCHPLANE_LOADTEST_PID_CP")]
    pub pid_cp: Option<u32>,

    /// Pid of the game server (same box), to report its CPU time over the run and its peak
    /// RSS, also per player at the peak of players in lands.
    #[arg(long, env = "MATCHPLANE_LOADTEST_PID_GS")]
    pub pid_gs: Option<u32>,

    /// Threads the load generator runs on (default: one per core). On the same box as
    /// the planes, `1` keeps it off the second core and saves the hand-offs between
    /// threads, so the planes' figures are less disturbed by the tool measuring them.
    #[arg(long, env = "MATCHPLANE_LOADTEST_WORKER_THREADS",
        value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub worker_threads: Option<u16>,

    /// Most enqueue requests in flight per control plane, each on its own HTTP
    /// connection. Past it a ticket waits for a slot, and the wait counts in its
    /// enqueue latency (latencies run from the ticket's due time). Without a cap,
    /// a stalled plane made the generator open a connection per due ticket until
    /// it ran out of file descriptors.
    #[arg(long, env = "MATCHPLANE_LOADTEST_MAX_CONNECTIONS", default_value_t = 1024,
        value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_connections: u32,

    /// How the players' lands send state changes: `patch` (RFC 6902 `state.patch`,
    /// the protocol's default), `merge` (RFC 7386 `state.merge`, fewer bytes) or
    /// `binary` (the merge patches in binary frames, the fewest bytes).
    #[arg(long, value_enum, default_value_t = SyncArg::Patch)]
    pub sync: SyncArg,

    /// How tickets are enqueued: `rest` (`POST /v1/tickets`, then a `subscribe` on a
    /// pooled `/realtime` socket) or `realtime` (the `enqueue` action on the pooled
    /// socket, which then watches the ticket: one message instead of an HTTP request).
    /// With several replicas, `realtime` enqueues and watches on the same one.
    #[arg(long, value_enum, default_value_t = EnqueueArg::Rest)]
    pub enqueue: EnqueueArg,

    /// Tickets due within this long of the start are sent and counted like the others,
    /// but their latencies stay out of the histograms: the first ~100–200 ms of a run
    /// pay for opening connections and sockets, which is not the steady state.
    #[arg(long, env = "MATCHPLANE_LOADTEST_WARMUP", default_value = "0s",
        value_parser = parse_duration)]
    pub warmup: Duration,
}

/// Counters and histograms shared by every simulated player.
#[derive(Debug)]
pub struct Recorder {
    start: Instant,
    /// Latencies of tickets due before this are not recorded (`--warmup`).
    measure_from: Instant,
    enqueue: Mutex<Latency>,
    time_to_match: Mutex<Latency>,
    assigned_to_join: Mutex<Latency>,
    /// A `move` sent → the first patch showing its `moves` count.
    action_to_patch: Mutex<Latency>,
    /// Moves answered without their patch having been seen (replaced by a snapshot).
    actions_without_patch: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
    issued: AtomicU64,
    enqueued: AtomicU64,
    matched: AtomicU64,
    joined: AtomicU64,
    in_land: AtomicI64,
    peak_in_land: AtomicI64,
    /// Payload bytes the players received after `join.ok`, and the player-time over which
    /// they did (both counted when a player leaves its land).
    land_bytes: AtomicU64,
    land_micros: AtomicU64,
    done: AtomicU64,
    closed_early: AtomicU64,
    polled: AtomicU64,
    /// `ticket.requeued` pushes seen (the ticket's server was lost before anyone joined).
    pub requeued: AtomicU64,
    /// Matches left because their land's server was lost (pushed `match.lost`, or a
    /// dropped land followed by a new assignment).
    pub matches_lost: AtomicU64,
    /// Players who followed a new assignment after their land could not be reached.
    recovered: AtomicU64,
    /// Nanoseconds since `start` of the last event of each kind (throughput windows).
    last_enqueue_ns: AtomicU64,
    last_match_ns: AtomicU64,
    last_join_ns: AtomicU64,
}

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Recorder {
    fn new(start: Instant, warmup: Duration) -> Self {
        Self {
            start,
            measure_from: start + warmup,
            enqueue: Mutex::default(),
            time_to_match: Mutex::default(),
            assigned_to_join: Mutex::default(),
            action_to_patch: Mutex::default(),
            actions_without_patch: AtomicU64::new(0),
            errors: Mutex::default(),
            issued: AtomicU64::new(0),
            enqueued: AtomicU64::new(0),
            matched: AtomicU64::new(0),
            joined: AtomicU64::new(0),
            in_land: AtomicI64::new(0),
            peak_in_land: AtomicI64::new(0),
            land_bytes: AtomicU64::new(0),
            land_micros: AtomicU64::new(0),
            done: AtomicU64::new(0),
            closed_early: AtomicU64::new(0),
            polled: AtomicU64::new(0),
            requeued: AtomicU64::new(0),
            matches_lost: AtomicU64::new(0),
            recovered: AtomicU64::new(0),
            last_enqueue_ns: AtomicU64::new(0),
            last_match_ns: AtomicU64::new(0),
            last_join_ns: AtomicU64::new(0),
        }
    }

    pub fn error(&self, kind: &str) {
        *locked(&self.errors).entry(kind.to_owned()).or_default() += 1;
    }

    /// Counts a failed call of the journey and logs the first of each kind
    /// with its message: a count alone does not say why thousands failed.
    fn matchmaking_error(&self, stage: &str, err: &MatchmakingError) {
        let kind = matchmaking_error_kind(stage, err);
        let first = {
            let mut errors = locked(&self.errors);
            let count = errors.entry(kind.clone()).or_default();
            *count += 1;
            *count == 1
        };
        if first {
            tracing::warn!(kind = %kind, error = %err, "first error of this kind");
        }
    }

    fn mark(&self, last: &AtomicU64, at: Instant) {
        let nanos =
            u64::try_from(at.saturating_duration_since(self.start).as_nanos()).unwrap_or(u64::MAX);
        last.fetch_max(nanos, Ordering::Relaxed);
    }

    fn errors_total(&self) -> u64 {
        locked(&self.errors).values().sum()
    }
}

pub(crate) fn matchmaking_error_kind(stage: &str, err: &MatchmakingError) -> String {
    match err {
        MatchmakingError::Transport { .. } => format!("{stage}_transport"),
        MatchmakingError::Api {
            code: Some(code), ..
        } => format!("{stage}_{code}"),
        MatchmakingError::Api { status, .. } => format!("{stage}_http_{status}"),
        MatchmakingError::Decode(_) => format!("{stage}_decode"),
        MatchmakingError::Timeout { .. } => "match_timeout".to_owned(),
        MatchmakingError::Cancelled { .. } => "ticket_cancelled".to_owned(),
        MatchmakingError::Expired { .. } => "ticket_expired".to_owned(),
        MatchmakingError::Failed { .. } => "ticket_failed".to_owned(),
        MatchmakingError::Realtime { code, .. } => format!("realtime_{code}"),
        MatchmakingError::RealtimeClosed => "realtime_closed".to_owned(),
        MatchmakingError::Unauthenticated { .. }
        | MatchmakingError::Forbidden { .. }
        | MatchmakingError::PlayerAlreadyQueued { .. }
        | MatchmakingError::RateLimited { .. } => match err.code() {
            Some(code) => format!("{stage}_{code}"),
            None => format!("{stage}_refused"),
        },
    }
}

fn land_error_kind(err: &LandError) -> String {
    match err {
        LandError::NoToken { .. } => "join_no_token".to_owned(),
        LandError::Connect { .. } => "join_connect".to_owned(),
        LandError::Rejected { code, .. } => format!("join_rejected_{code}"),
        LandError::JoinTimeout(_) => "join_timeout".to_owned(),
        LandError::Protocol(_) => "join_protocol".to_owned(),
        LandError::Disconnected => "join_disconnected".to_owned(),
        LandError::Closed(_) => "join_land_closed".to_owned(),
        LandError::StateTimeout(_) => "join_state_timeout".to_owned(),
    }
}

/// One control-plane replica: the client that talks to it and the push sockets open on it.
struct Replica {
    client: MatchmakingClient,
    pool: PushPool,
    enqueue_slots: tokio::sync::Semaphore,
}

/// `--enqueue`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EnqueueArg {
    Rest,
    Realtime,
}

/// `--sync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SyncArg {
    Patch,
    Merge,
    Binary,
}

struct Plan {
    sync: matchplane_client::StateSync,
    enqueue: EnqueueArg,
    replicas: Vec<Replica>,
    recorder: Arc<Recorder>,
    queue: String,
    party_size: u32,
    skill_spread: f64,
    play: Duration,
    join: bool,
    match_timeout: Duration,
    join_timeout: Duration,
    prefix: String,
}

impl Plan {
    async fn ticket(self: Arc<Self>, index: u64, due: Instant) {
        self.journey(index, due).await;
        self.recorder.done.fetch_add(1, Ordering::Relaxed);
    }

    async fn journey(&self, index: u64, due: Instant) {
        let recorder = &self.recorder;
        recorder.issued.fetch_add(1, Ordering::Relaxed);
        let (enqueue_on, watch_on) = replicas_of(index, self.replicas.len());
        let (Some(home), Some(watcher)) =
            (self.replicas.get(enqueue_on), self.replicas.get(watch_on))
        else {
            return recorder.error("no_control_plane");
        };
        let members: Vec<String> = if self.party_size == 1 {
            vec![format!("{}-{index}", self.prefix)]
        } else {
            (0..self.party_size)
                .map(|member| format!("{}-{index}-{member}", self.prefix))
                .collect()
        };
        let mut request = EnqueueRequest {
            queue_key: Some(self.queue.clone()),
            members: Some(members.clone()),
            ..EnqueueRequest::default()
        };
        if self.skill_spread > 0.0 {
            let offset = rand::thread_rng().gen_range(-0.5..=0.5) * self.skill_spread;
            request
                .attributes
                .insert("skill".to_owned(), 1500.0 + offset);
        }
        let (ticket_id, push) = match self.enqueue {
            EnqueueArg::Rest => {
                let enqueued = {
                    // Never closed, so acquiring fails only if that changes.
                    let Ok(_slot) = home.enqueue_slots.acquire().await else {
                        return recorder.error("enqueue_slots_closed");
                    };
                    home.client.enqueue(&request).await
                };
                let ticket_id = match enqueued {
                    Ok(ticket) => ticket.ticket_id,
                    Err(err) => return recorder.matchmaking_error("enqueue", &err),
                };
                self.record_enqueued(due);
                let push = watcher.pool.watch(&ticket_id).await;
                (ticket_id, push)
            }
            EnqueueArg::Realtime => {
                let pending = match home.pool.enqueue(request).await {
                    Ok(pending) => pending,
                    Err(err) => return recorder.matchmaking_error("enqueue", &err),
                };
                let answer =
                    tokio::time::timeout_at(due + self.match_timeout, pending.answer).await;
                let ticket_id = match answer {
                    Ok(Ok(Ok(ticket_id))) => ticket_id,
                    Ok(Ok(Err(code))) => return recorder.error(&format!("enqueue_{code}")),
                    Ok(Err(_)) => return recorder.error("enqueue_realtime_closed"),
                    Err(_) => return recorder.error("enqueue_timeout"),
                };
                self.record_enqueued(due);
                (ticket_id, Ok(pending.push))
            }
        };
        let measured = due >= recorder.measure_from;

        let Some((assignment, assigned_at)) =
            self.await_assignment(watcher, &ticket_id, push, due).await
        else {
            return;
        };
        if measured {
            locked(&recorder.time_to_match).record(assigned_at.saturating_duration_since(due));
        }
        recorder.matched.fetch_add(1, Ordering::Relaxed);
        recorder.mark(&recorder.last_match_ns, assigned_at);
        if !self.join {
            return;
        }
        let joins = members.iter().map(|member| {
            self.join_and_play(
                &home.client,
                &ticket_id,
                &assignment,
                member,
                assigned_at,
                measured,
            )
        });
        futures_util::future::join_all(joins).await;
    }

    fn record_enqueued(&self, due: Instant) {
        let recorder = &self.recorder;
        let enqueued_at = Instant::now();
        if due >= recorder.measure_from {
            locked(&recorder.enqueue).record(enqueued_at - due);
        }
        recorder.enqueued.fetch_add(1, Ordering::Relaxed);
        recorder.mark(&recorder.last_enqueue_ns, enqueued_at);
    }

    /// Waits for the ticket's push on `watcher`'s socket; polls `watcher` if the
    /// socket fails.
    async fn await_assignment(
        &self,
        watcher: &Replica,
        ticket_id: &str,
        push: Result<oneshot::Receiver<Pushed>, MatchmakingError>,
        due: Instant,
    ) -> Option<(Assignment, Instant)> {
        let recorder = &self.recorder;
        let deadline = due + self.match_timeout;
        let pushed = match push {
            Ok(receiver) => match tokio::time::timeout_at(deadline, receiver).await {
                Ok(Ok(pushed)) => Some(pushed),
                // The socket died: poll instead.
                Ok(Err(_)) => None,
                Err(_) => {
                    watcher.pool.forget(ticket_id).await;
                    recorder.error("match_timeout");
                    return None;
                }
            },
            Err(err) => {
                recorder.matchmaking_error("realtime", &err);
                None
            }
        };
        match pushed {
            Some(Pushed::Assigned(assignment, at)) => Some((*assignment, at)),
            Some(Pushed::Cancelled) => {
                recorder.error("ticket_cancelled");
                None
            }
            Some(Pushed::Expired) => {
                recorder.error("ticket_expired");
                None
            }
            Some(Pushed::Failed) => {
                recorder.error("ticket_failed");
                None
            }
            None => {
                recorder.polled.fetch_add(1, Ordering::Relaxed);
                let remaining = deadline.saturating_duration_since(Instant::now());
                match watcher
                    .client
                    .clone()
                    .with_push(false)
                    .wait_for_assignment(ticket_id, remaining)
                    .await
                {
                    Ok(assignment) => Some((assignment, Instant::now())),
                    Err(err) => {
                        recorder.matchmaking_error("status", &err);
                        None
                    }
                }
            }
        }
    }

    /// Joins (re-checking the ticket and following a new assignment when the land cannot
    /// be reached) and plays; a land lost while playing is left for the ticket's next one.
    async fn join_and_play(
        &self,
        client: &MatchmakingClient,
        ticket_id: &str,
        assignment: &Assignment,
        player: &str,
        assigned_at: Instant,
        measured: bool,
    ) {
        let recorder = &self.recorder;
        let options = ConnectOptions {
            join_timeout: self.join_timeout,
            sync: self.sync,
            ..ConnectOptions::lightweight()
        };
        let policy = RecoveryPolicy::default();
        let joined = client
            .join_land(
                ticket_id,
                assignment.clone(),
                player,
                options.clone(),
                &policy,
            )
            .await;
        let mut joined = match joined {
            Ok(joined) => joined,
            Err(JoinError::Land(err)) => return recorder.error(&land_error_kind(&err)),
            Err(JoinError::Matchmaking(err)) => {
                return recorder.matchmaking_error("recheck", &err);
            }
        };
        let joined_at = Instant::now();
        if measured {
            locked(&recorder.assigned_to_join).record(joined_at - assigned_at);
        }
        recorder.joined.fetch_add(1, Ordering::Relaxed);
        recorder.mark(&recorder.last_join_ns, joined_at);
        let until = joined_at + self.play;
        loop {
            recorder
                .recovered
                .fetch_add(u64::from(joined.reassignments), Ordering::Relaxed);
            let in_land = recorder.in_land.fetch_add(1, Ordering::Relaxed) + 1;
            recorder.peak_in_land.fetch_max(in_land, Ordering::Relaxed);
            let entered = Instant::now();
            let played = if self.play.is_zero() {
                Played::Done
            } else {
                self.play(&joined.connection, until, measured).await
            };
            recorder.in_land.fetch_sub(1, Ordering::Relaxed);
            let stayed = u64::try_from(entered.elapsed().as_micros()).unwrap_or(u64::MAX);
            recorder.land_micros.fetch_add(stayed, Ordering::Relaxed);
            recorder
                .land_bytes
                .fetch_add(joined.connection.stats().bytes_received, Ordering::Relaxed);
            joined.connection.leave().await;
            if !matches!(played, Played::Lost) {
                return;
            }
            // The land dropped mid-play: if its server was lost, the ticket is matched
            // again; follow it (a server that merely hiccuped leaves the ticket as it was).
            let waited = tokio::time::timeout(
                policy.reassignment_timeout,
                client.wait_for_reassignment(ticket_id, &joined.assignment, &policy),
            )
            .await;
            let next = match waited {
                Ok(Ok(next)) => next,
                Ok(Err(err)) => return recorder.matchmaking_error("recheck", &err),
                Err(_) => return recorder.error("play_disconnected"),
            };
            recorder.matches_lost.fetch_add(1, Ordering::Relaxed);
            recorder.recovered.fetch_add(1, Ordering::Relaxed);
            joined = match client
                .join_land(ticket_id, next, player, options.clone(), &policy)
                .await
            {
                Ok(joined) => joined,
                Err(JoinError::Land(err)) => return recorder.error(&land_error_kind(&err)),
                Err(JoinError::Matchmaking(err)) => {
                    return recorder.matchmaking_error("recheck", &err);
                }
            };
        }
    }

    /// Moves once a second until `until` or the land ends, timing each move to the patch
    /// that shows it: hero-defense counts a hero's move orders in its `moves`.
    async fn play(&self, land: &LandConnection, until: Instant, measured: bool) -> Played {
        let moves_pointer = format!("/heroes/{}/moves", json_pointer_token(&land.player_id()));
        let mut moves = 0u64;
        let mut every = tokio::time::interval(Duration::from_secs(1));
        while Instant::now() < until {
            tokio::select! {
                _ = every.tick() => {}
                () = tokio::time::sleep_until(until) => break,
            }
            let (x, y) = {
                let mut rng = rand::thread_rng();
                (rng.gen_range(30.0..70.0_f64), rng.gen_range(30.0..70.0_f64))
            };
            let mut patch_seen = land.watch_patch(&moves_pointer, json!(moves + 1));
            let sent_at = Instant::now();
            let moved = land
                .action(
                    "move",
                    json!({"x": (x * 10.0).round() / 10.0, "y": (y * 10.0).round() / 10.0}),
                )
                .await;
            match moved {
                Ok(_) => {
                    moves += 1;
                    // The runtime sends the patch before the result, so it is in by now
                    // unless a snapshot replaced it.
                    match patch_seen.try_recv() {
                        Ok(seen_at) if measured => locked(&self.recorder.action_to_patch)
                            .record(seen_at.saturating_duration_since(sent_at)),
                        Ok(_) => {}
                        Err(_) => {
                            self.recorder
                                .actions_without_patch
                                .fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                Err(ActionError::LandClosed) => {
                    self.recorder.closed_early.fetch_add(1, Ordering::Relaxed);
                    return Played::Done;
                }
                Err(ActionError::Failed { code, .. }) => {
                    self.recorder.error(&format!("action_{code}"));
                }
                Err(ActionError::Timeout(_)) => self.recorder.error("action_timeout"),
                Err(ActionError::Disconnected) => {
                    if land.closed().is_some() {
                        self.recorder.closed_early.fetch_add(1, Ordering::Relaxed);
                        return Played::Done;
                    }
                    return Played::Lost;
                }
            }
        }
        Played::Done
    }
}

/// RFC 6901: `~` is written `~0` and `/` is written `~1`.
fn json_pointer_token(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// How a player's time in a land ended.
enum Played {
    /// Play time over, or the land closed.
    Done,
    /// The connection dropped without `land.closed`: the land may be lost with its server.
    Lost,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_whole_matches_are_sent() {
        assert_eq!(whole_matches("hero-defense:3v3", 1, 10_000).unwrap(), 9_996);
        assert_eq!(whole_matches("hero-defense:3v3", 3, 10_000).unwrap(), 3_332);
        assert_eq!(whole_matches("hero-defense:1v1", 1, 301).unwrap(), 300);
        assert_eq!(whole_matches("counter", 1, 7).unwrap(), 7);
        assert!(whole_matches("hero-defense:3v3", 1, 5).is_err());
    }

    #[test]
    fn control_planes_come_comma_separated_or_repeated() {
        let given = |values: &[&str]| {
            control_plane_urls(&values.iter().map(|v| (*v).to_owned()).collect::<Vec<_>>())
        };
        assert_eq!(
            given(&["http://127.0.0.1:3000"]).unwrap(),
            ["http://127.0.0.1:3000"]
        );
        assert_eq!(
            given(&["http://a:1, http://b:2,", "http://c:3/match"]).unwrap(),
            ["http://a:1", "http://b:2", "http://c:3/match"]
        );
        assert!(given(&[" , "]).is_err());
        assert!(given(&[]).is_err());
    }

    #[test]
    fn with_several_replicas_a_ticket_is_watched_on_the_next_one() {
        assert_eq!(replicas_of(0, 1), (0, 0));
        assert_eq!(replicas_of(7, 1), (0, 0));
        let two: Vec<_> = (0..4).map(|i| replicas_of(i, 2)).collect();
        assert_eq!(two, [(0, 1), (1, 0), (0, 1), (1, 0)]);
        let three: Vec<_> = (0..4).map(|i| replicas_of(i, 3)).collect();
        assert_eq!(three, [(0, 1), (1, 2), (2, 0), (0, 1)]);
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// `--control-plane` as given: the URLs comma-separated.
    pub control_plane: String,
    /// Every replica driven, in round-robin order.
    pub control_planes: Vec<String>,
    pub queue: String,
    /// `--enqueue`: `rest` or `realtime`.
    pub enqueue: EnqueueArg,
    pub players: u64,
    pub tickets: u64,
    pub party_size: u32,
    pub rate: f64,
    pub play_seconds: f64,
    pub join: bool,
    pub duration_secs: f64,
    /// Latencies leave out the tickets due in the first this many seconds (`--warmup`).
    pub warmup_secs: f64,
    pub enqueued: u64,
    /// Tickets assigned (one assignment per ticket).
    pub matched: u64,
    /// Players that received `join.ok`.
    pub joined: u64,
    /// Tickets whose status was found by polling because the push socket failed.
    pub polled: u64,
    /// Players whose land closed before their play time was over.
    pub closed_early: u64,
    /// `ticket.requeued` pushes: tickets whose server was lost before anyone joined.
    pub requeued: u64,
    /// Matches players left because their land's server was lost mid-play.
    pub matches_lost: u64,
    /// Times a player followed a new assignment after its land could not be reached.
    pub recovered: u64,
    pub throughput: Throughput,
    pub latency_ms: Latencies,
    pub state_sync: StateSync,
    pub processes: Processes,
    pub errors: BTreeMap<String, u64>,
    pub errors_total: u64,
    /// Every ticket was enqueued, assigned and (unless `--no-join`) every player joined.
    pub complete: bool,
    /// Ctrl-C or SIGTERM ended the run early: the figures cover it until then.
    pub interrupted: bool,
}

/// What the players received from their lands.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StateSync {
    /// `patch` or `merge` (`--sync`).
    pub encoding: &'static str,
    /// Most players in lands at the same time.
    pub peak_players_in_lands: u64,
    /// Payload bytes of the frames after `join.ok`, all players together.
    pub bytes_received: u64,
    /// Sum over players of the time each spent in its land.
    pub player_seconds: f64,
    /// `bytesReceived / playerSeconds`: the bandwidth one player costs.
    pub bytes_per_player_second: f64,
    /// `bytesPerPlayerSecond × peakPlayersInLands`: the server's outgoing state-sync
    /// bandwidth with every player of the peak in its land.
    pub bytes_per_second_at_peak: f64,
    /// Moves answered before any patch with their `moves` count arrived (a snapshot
    /// replaced it, or the land is not hero-defense).
    pub actions_without_patch: u64,
}

/// CPU and memory of the processes involved, over the run (`--pid-cp`, `--pid-gs`; the
/// load generator always).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Processes {
    pub control_plane: Option<ProcessUse>,
    pub game_server: Option<ProcessUse>,
    pub load_generator: Option<ProcessUse>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessUse {
    /// From the first due time to the end of the run.
    #[serde(flatten)]
    pub usage: heartbeat::ProcessUsage,
    /// Control plane: `cpuSeconds / assignments`, in µs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_us_per_assignment: Option<f64>,
    /// Game server: `peakRssKib / peakPlayersInLands` (the process's whole footprint,
    /// lands and connections included, per connected player).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_rss_kib_per_player: Option<f64>,
}

/// A process whose CPU time is measured over the run.
struct Measured {
    probe: ProcessProbe,
    before: ProcessSample,
}

impl Measured {
    fn start(pid: Option<u32>, flag: &str) -> anyhow::Result<Option<Self>> {
        let Some(pid) = pid else {
            return Ok(None);
        };
        let probe = ProcessProbe::new(pid).with_context(|| format!("{flag} {pid}"))?;
        let before = probe.sample()?;
        Ok(Some(Self { probe, before }))
    }

    fn finish(&self) -> Option<ProcessUse> {
        let after = self.probe.sample().ok()?;
        Some(ProcessUse {
            usage: self.probe.usage(&self.before, &after),
            cpu_us_per_assignment: None,
            peak_rss_kib_per_player: None,
        })
    }
}

/// Per second, each over the window from the first due time to the last such event.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Throughput {
    pub offered_tickets: f64,
    pub enqueued_tickets: f64,
    pub assignments: f64,
    pub joins: f64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Latencies {
    /// Due time → 201 of `enqueue`.
    pub enqueue: LatencySummary,
    /// Due time → `match.assigned` push (includes the enqueue itself).
    pub time_to_match: LatencySummary,
    /// `match.assigned` → `join.ok`.
    pub assigned_to_join: LatencySummary,
    /// A `move` sent → the first `state.patch` showing it (hero-defense's `moves`).
    pub action_to_patch: LatencySummary,
}

fn per_second(count: u64, window_ns: u64) -> f64 {
    if window_ns == 0 {
        return 0.0;
    }
    let rate = count as f64 / (window_ns as f64 / 1e9);
    (rate * 10.0).round() / 10.0
}

pub async fn run(args: LoadtestArgs) -> anyhow::Result<()> {
    // Listening before any work starts: a Ctrl-C during start-up is answered
    // like one during the run, not with the default kill.
    let shutdown = crate::signals::Shutdown::listen();
    if let Some(servers) = args.heartbeat_servers {
        return heartbeat::run(&args, servers, shutdown).await;
    }
    if !(args.rate.is_finite() && args.rate > 0.0) {
        bail!("--rate must be a positive number of tickets per second");
    }
    if args.party_size == 0 {
        bail!("--party-size must be at least 1");
    }
    if !(args.play_seconds.is_finite() && args.play_seconds >= 0.0) {
        bail!("--play-seconds must be 0 or more");
    }
    let tickets = whole_matches(&args.queue, args.party_size, args.players)?;
    let urls = control_plane_urls(&args.control_plane)?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .timeout(Duration::from_secs(30))
        .build()
        .context("cannot build the HTTP client")?;
    let prefix = args
        .player_prefix
        .clone()
        .unwrap_or_else(|| format!("lt{:06x}", rand::thread_rng().gen_range(0..0x100_0000u32)));
    let clients: Vec<MatchmakingClient> = urls
        .iter()
        .map(|url| MatchmakingClient::with_http_client(http.clone(), url))
        .collect();
    // Fail fast with a clear message when nothing listens at one of them.
    for (client, url) in clients.iter().zip(&urls) {
        let health = format!("{}/health", client.base_url());
        reqwest::get(&health)
            .await
            .with_context(|| format!("no control plane at {url}"))?;
    }

    println!(
        "loadtest: {} players ({tickets} tickets of {}) at {}/s on {} → {}{}",
        tickets * u64::from(args.party_size),
        args.party_size,
        args.rate,
        args.queue,
        urls.join(", "),
        if args.no_join {
            " (matchmaking only)".to_owned()
        } else {
            format!(", play {}s", args.play_seconds)
        }
    );
    // A short lead so the first tickets are not late because of start-up work.
    let start = Instant::now() + Duration::from_millis(50);
    let recorder = Arc::new(Recorder::new(start, args.warmup));
    let replicas = clients
        .into_iter()
        .map(|client| Replica {
            pool: PushPool::new(client.clone(), Arc::clone(&recorder)),
            client,
            enqueue_slots: tokio::sync::Semaphore::new(args.max_connections as usize),
        })
        .collect();
    let plan = Arc::new(Plan {
        enqueue: args.enqueue,
        sync: match args.sync {
            SyncArg::Patch => matchplane_client::StateSync::Patch,
            SyncArg::Merge => matchplane_client::StateSync::Merge,
            SyncArg::Binary => matchplane_client::StateSync::Binary,
        },
        replicas,
        recorder: Arc::clone(&recorder),
        queue: args.queue.clone(),
        party_size: args.party_size,
        skill_spread: args.skill_spread,
        play: Duration::from_secs_f64(args.play_seconds),
        join: !args.no_join,
        match_timeout: args.match_timeout,
        join_timeout: args.join_timeout,
        prefix,
    });
    let control_plane_process = Measured::start(args.pid_cp, "--pid-cp")?;
    let game_server_process = Measured::start(args.pid_gs, "--pid-gs")?;
    let load_generator_process = Measured::start(Some(std::process::id()), "loadtest")?;
    let progress = tokio::spawn(report_progress(Arc::clone(&plan), tickets));
    let mut tasks = tokio::task::JoinSet::new();
    let drive = async {
        for index in 0..tickets {
            let due = start + Duration::from_secs_f64(index as f64 / args.rate);
            tokio::time::sleep_until(due).await;
            tasks.spawn(Arc::clone(&plan).ticket(index, due));
            // Reap finished tasks as we go so the set stays small.
            while tasks.try_join_next().is_some() {}
        }
        while tasks.join_next().await.is_some() {}
    };
    // Ctrl-C ends a long run early with the report of what it did so far.
    let interrupted = tokio::select! {
        () = drive => false,
        () = shutdown.received() => true,
    };
    if interrupted {
        eprintln!("interrupted: no more tickets; the report covers the run until now");
        tasks.shutdown().await;
    }
    progress.abort();
    let elapsed = start.elapsed();
    let processes = Processes {
        control_plane: control_plane_process.as_ref().and_then(Measured::finish),
        game_server: game_server_process.as_ref().and_then(Measured::finish),
        load_generator: load_generator_process.as_ref().and_then(Measured::finish),
    };

    let mut report = build_report(&args, &urls, tickets, &recorder, elapsed, processes);
    if interrupted {
        report.interrupted = true;
        report.complete = false;
    }
    println!("{}", render(&report));
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!("report written to {}", path.display());
    }
    if report.interrupted {
        bail!("interrupted before every ticket was done; see the report");
    }
    if report.errors_total > 0 || !report.complete {
        bail!("{} errors; see the report", report.errors_total);
    }
    Ok(())
}

/// The control planes named by `--control-plane`: each value may list several,
/// comma-separated.
fn control_plane_urls(values: &[String]) -> anyhow::Result<Vec<String>> {
    let urls: Vec<String> = values
        .iter()
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(str::to_owned)
        .collect();
    if urls.is_empty() {
        bail!("--control-plane needs at least one URL");
    }
    Ok(urls)
}

/// Where ticket `index` is enqueued and where it is watched. With several replicas they
/// always differ, so an assignment reaches its watcher only through the shared store,
/// as behind a load balancer that sends a player's calls to any replica.
fn replicas_of(index: u64, replicas: usize) -> (usize, usize) {
    let count = u64::try_from(replicas.max(1)).unwrap_or(u64::MAX);
    let enqueue = index % count;
    let watch = (enqueue + 1) % count;
    let as_index = |value: u64| usize::try_from(value).unwrap_or(0);
    (as_index(enqueue), as_index(watch))
}

/// Tickets to send: only as many as fill whole matches of `queue` (default queue
/// semantics, e.g. `3v3` = 6 players), since leftovers could never be matched.
fn whole_matches(queue: &str, party_size: u32, players: u64) -> anyhow::Result<u64> {
    let party = u64::from(party_size);
    let tickets = players / party;
    if tickets == 0 {
        bail!("--players must be at least --party-size");
    }
    let Some(teams) = matchplane_matchmaker::default_teams_for_key(queue) else {
        return Ok(tickets);
    };
    if teams.iter().any(|&size| u64::from(size) % party != 0) {
        eprintln!(
            "note: parties of {party} cannot fill the teams of {queue} exactly; tickets may stay unmatched"
        );
        return Ok(tickets);
    }
    let per_match: u64 = teams.iter().map(|&size| u64::from(size) / party).sum();
    let whole = tickets / per_match * per_match;
    if whole == 0 {
        bail!(
            "{queue} needs at least {} players per match",
            per_match * party
        );
    }
    if whole != tickets {
        eprintln!(
            "note: sending {} players ({whole} tickets) so that every match of {queue} is full",
            whole * party
        );
    }
    Ok(whole)
}

fn build_report(
    args: &LoadtestArgs,
    urls: &[String],
    tickets: u64,
    recorder: &Recorder,
    elapsed: Duration,
    mut processes: Processes,
) -> Report {
    let enqueued = recorder.enqueued.load(Ordering::Relaxed);
    let matched = recorder.matched.load(Ordering::Relaxed);
    let joined = recorder.joined.load(Ordering::Relaxed);
    let players = tickets * u64::from(args.party_size);
    let errors = locked(&recorder.errors).clone();
    let errors_total = errors.values().sum();
    let offered_window = ((tickets.saturating_sub(1)) as f64 / args.rate * 1e9) as u64;
    let peak_players = u64::try_from(recorder.peak_in_land.load(Ordering::Relaxed)).unwrap_or(0);
    let land_bytes = recorder.land_bytes.load(Ordering::Relaxed);
    let player_seconds = recorder.land_micros.load(Ordering::Relaxed) as f64 / 1e6;
    let bytes_per_player_second = if player_seconds > 0.0 {
        land_bytes as f64 / player_seconds
    } else {
        0.0
    };
    if let Some(control_plane) = &mut processes.control_plane
        && matched > 0
    {
        control_plane.cpu_us_per_assignment = Some(round(
            control_plane.usage.cpu_seconds * 1e6 / matched as f64,
            1,
        ));
    }
    if let Some(game_server) = &mut processes.game_server
        && peak_players > 0
    {
        game_server.peak_rss_kib_per_player = game_server
            .usage
            .peak_rss_kib
            .map(|kib| round(kib as f64 / peak_players as f64, 1));
    }
    Report {
        control_plane: urls.join(","),
        control_planes: urls.to_vec(),
        queue: args.queue.clone(),
        enqueue: args.enqueue,
        players,
        tickets,
        party_size: args.party_size,
        rate: args.rate,
        play_seconds: args.play_seconds,
        join: !args.no_join,
        duration_secs: (elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
        warmup_secs: args.warmup.as_secs_f64(),
        enqueued,
        matched,
        joined,
        polled: recorder.polled.load(Ordering::Relaxed),
        closed_early: recorder.closed_early.load(Ordering::Relaxed),
        requeued: recorder.requeued.load(Ordering::Relaxed),
        matches_lost: recorder.matches_lost.load(Ordering::Relaxed),
        recovered: recorder.recovered.load(Ordering::Relaxed),
        throughput: Throughput {
            offered_tickets: per_second(tickets.saturating_sub(1), offered_window),
            enqueued_tickets: per_second(
                enqueued,
                recorder.last_enqueue_ns.load(Ordering::Relaxed),
            ),
            assignments: per_second(matched, recorder.last_match_ns.load(Ordering::Relaxed)),
            joins: per_second(joined, recorder.last_join_ns.load(Ordering::Relaxed)),
        },
        latency_ms: Latencies {
            enqueue: locked(&recorder.enqueue).summary(),
            time_to_match: locked(&recorder.time_to_match).summary(),
            assigned_to_join: locked(&recorder.assigned_to_join).summary(),
            action_to_patch: locked(&recorder.action_to_patch).summary(),
        },
        state_sync: StateSync {
            encoding: match args.sync {
                SyncArg::Patch => "patch",
                SyncArg::Merge => "merge",
                SyncArg::Binary => "binary",
            },
            peak_players_in_lands: peak_players,
            bytes_received: land_bytes,
            player_seconds: round(player_seconds, 3),
            bytes_per_player_second: round(bytes_per_player_second, 1),
            bytes_per_second_at_peak: round(bytes_per_player_second * peak_players as f64, 0),
            actions_without_patch: recorder.actions_without_patch.load(Ordering::Relaxed),
        },
        processes,
        errors,
        errors_total,
        complete: errors_total == 0
            && enqueued == tickets
            && matched == tickets
            && (args.no_join || joined == players),
        interrupted: false,
    }
}

fn render(report: &Report) -> String {
    let mut lines = vec![String::new()];
    if report.control_planes.len() > 1 {
        lines.push(format!(
            "control planes ({}): {}",
            report.control_planes.len(),
            report.control_planes.join(", ")
        ));
    }
    lines.extend([
        format!(
            "{} {:.1}s: {} enqueued · {} assigned · {} joined{}{}",
            if report.interrupted {
                "interrupted after"
            } else {
                "done in"
            },
            report.duration_secs,
            report.enqueued,
            report.matched,
            report.joined,
            match report.enqueue {
                EnqueueArg::Realtime => " (enqueued over /realtime)",
                EnqueueArg::Rest => "",
            },
            if report.polled > 0 {
                format!(" · {} found by polling", report.polled)
            } else {
                String::new()
            }
        ),
        format!(
            "throughput (per s): offered {} · enqueued {} · assignments {} · joins {}",
            report.throughput.offered_tickets,
            report.throughput.enqueued_tickets,
            report.throughput.assignments,
            report.throughput.joins
        ),
    ]);
    if report.warmup_secs > 0.0 {
        lines.push(format!(
            "latencies of the tickets due after a {}s warm-up:",
            report.warmup_secs
        ));
    }
    lines.extend([
        LatencySummary::header(),
        report.latency_ms.enqueue.row("enqueue"),
        report.latency_ms.time_to_match.row("time to match"),
        report.latency_ms.assigned_to_join.row("assigned → join.ok"),
    ]);
    if report.latency_ms.action_to_patch.count > 0 {
        lines.push(report.latency_ms.action_to_patch.row("action → patch"));
    }
    let sync = &report.state_sync;
    if sync.player_seconds > 0.0 {
        lines.push(format!(
            "state sync ({}): {} players in lands at the peak · {:.0} B/s per player · {:.2} MB/s at the peak · {} moves answered without their patch",
            sync.encoding,
            sync.peak_players_in_lands,
            sync.bytes_per_player_second,
            sync.bytes_per_second_at_peak / 1e6,
            sync.actions_without_patch,
        ));
    }
    let processes = [
        ("control plane", &report.processes.control_plane),
        ("game server", &report.processes.game_server),
        ("load generator", &report.processes.load_generator),
    ];
    for (name, process) in processes {
        let Some(process) = process else { continue };
        let mut line = format!(
            "{name} (pid {}): {:.2} s CPU in {:.1} s = {:.1}% of a core · peak RSS {}",
            process.usage.pid,
            process.usage.cpu_seconds,
            process.usage.wall_seconds,
            process.usage.cpu_percent_of_core,
            mib(process.usage.peak_rss_kib),
        );
        if let Some(us) = process.cpu_us_per_assignment {
            line.push_str(&format!(" · {us:.1} µs CPU per assignment"));
        }
        if let Some(kib) = process.peak_rss_kib_per_player {
            line.push_str(&format!(" · {kib:.1} KiB per player at the peak"));
        }
        lines.push(line);
    }
    if report.errors.is_empty() {
        lines.push("errors: none".to_owned());
    } else {
        lines.push(format!("errors: {}", report.errors_total));
        for (kind, count) in &report.errors {
            lines.push(format!("  {kind:<32} {count}"));
        }
    }
    lines.join("\n")
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or_else(
        || "?".to_owned(),
        |kib| format!("{:.1} MiB", kib as f64 / 1024.0),
    )
}

async fn open_sockets(replicas: &[Replica]) -> usize {
    let mut open = 0;
    for replica in replicas {
        open += replica.pool.open_sockets().await;
    }
    open
}

async fn report_progress(plan: Arc<Plan>, tickets: u64) {
    let recorder = &plan.recorder;
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.tick().await;
    let mut previous = 0u64;
    loop {
        every.tick().await;
        let issued = recorder.issued.load(Ordering::Relaxed);
        let enqueued = recorder.enqueued.load(Ordering::Relaxed);
        let matched = recorder.matched.load(Ordering::Relaxed);
        eprintln!(
            "[{:>4.0}s] issued {issued}/{tickets} ({}/s) · enqueued {enqueued} · waiting {} · assigned {matched} · joined {} · in lands {} · done {} · sockets {} · errors {}",
            recorder.start.elapsed().as_secs_f64(),
            issued - previous,
            enqueued.saturating_sub(matched),
            recorder.joined.load(Ordering::Relaxed),
            recorder.in_land.load(Ordering::Relaxed),
            recorder.done.load(Ordering::Relaxed),
            open_sockets(&plan.replicas).await,
            recorder.errors_total(),
        );
        previous = issued;
    }
}
