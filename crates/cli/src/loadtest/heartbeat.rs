//! `matchplane loadtest --heartbeat-servers N`: what N game servers heartbeating cost the
//! control plane.
//!
//! N fake servers (they register an address nobody listens on, so they are never
//! allocated anything useful) register once, then each heartbeats every interval. Server
//! `i` beats at `start + i·interval/N + k·interval`, so the offered load is a steady
//! N/interval per second rather than N-request bursts, like a real fleet whose servers
//! started at different times. Requests share a bounded pool of keep-alive connections.
//! With `--pid-cp` the control plane's CPU time and memory are read from /proc around
//! the heartbeat window (registration and deregistration are outside it).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, bail};
use futures_util::StreamExt as _;
use matchplane_client::{MatchmakingClient, RealtimeWatch};
use matchplane_contracts::ProvisioningResponse;
use matchplane_contracts::provisioning::{Capacity, Load, RegisterRequest};
use matchplane_edge::secret::Secret;
use rand::Rng as _;
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::stats::{Latency, LatencySummary};
use super::{LoadtestArgs, locked};

/// A heartbeat that starts this much after its due time counts as `late` (the load
/// generator, not the control plane, fell behind).
const LATE_AFTER: Duration = Duration::from_millis(100);
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// The land type the fake servers claim: one the built-in game server hosts too.
const LAND_TYPE: &str = "counter";

pub async fn run(
    args: &LoadtestArgs,
    servers: u32,
    shutdown: crate::signals::Shutdown,
) -> anyhow::Result<()> {
    if args.heartbeat_interval.is_zero() {
        bail!("--heartbeat-interval must be more than 0");
    }
    if args.duration.is_zero() {
        bail!("--duration must be more than 0");
    }
    if args.heartbeat_connections == 0 {
        bail!("--heartbeat-connections must be at least 1");
    }
    let urls = super::control_plane_urls(&args.control_plane)?;
    let [control_plane] = urls.as_slice() else {
        bail!("heartbeat mode drives one control plane: give --control-plane a single URL");
    };
    let token = registration_token(args)?;
    if token.is_none() && servers > 0 {
        eprintln!(
            "note: no registration token (--registration-token, --registration-token-file or \
             MATCHPLANE_REGISTRATION_TOKEN); the control plane will refuse every register"
        );
    }
    let connections = args.heartbeat_connections;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(connections as usize)
        .timeout(Duration::from_secs(10))
        .build()
        .context("cannot build the HTTP client")?;
    let base = control_plane.trim_end_matches('/').to_owned();
    http.get(format!("{base}/health"))
        .send()
        .await
        .with_context(|| format!("no control plane at {control_plane}"))?;
    let probe = match args.pid_cp {
        Some(pid) => Some(ProcessProbe::new(pid).with_context(|| format!("--pid-cp {pid}"))?),
        None => None,
    };
    let prefix = format!("hb{:06x}", rand::thread_rng().gen_range(0..0x100_0000u32));
    let fleet = Arc::new(Fleet {
        control_plane: control_plane.clone(),
        http,
        base,
        token,
        prefix,
        permits: Semaphore::new(connections as usize),
        stats: Stats::default(),
    });
    println!(
        "loadtest: {servers} game servers heartbeating every {} for {} over {connections} connections → {}{}",
        humantime::format_duration(args.heartbeat_interval),
        humantime::format_duration(args.duration),
        control_plane,
        args.pid_cp
            .map(|pid| format!(" (measuring pid {pid})"))
            .unwrap_or_default(),
    );

    let registered = futures_util::stream::iter(0..servers)
        .map(|index| {
            let fleet = Arc::clone(&fleet);
            async move { fleet.send(index, Stage::Register).await }
        })
        .buffer_unordered(connections as usize)
        .filter(|ok| std::future::ready(*ok))
        .count()
        .await as u64;
    eprintln!("registered {registered}/{servers}");
    let idle_sockets = open_idle_sockets(&fleet, args.idle_sockets, connections).await;

    // A short lead so the first beats are not late because of the spawning below.
    let start = Instant::now() + Duration::from_millis(50);
    let end = start + args.duration;
    let mut beats = tokio::task::JoinSet::new();
    for index in 0..servers {
        let offset = args.heartbeat_interval * index / servers;
        beats.spawn(Arc::clone(&fleet).beat_until(
            index,
            start + offset,
            args.heartbeat_interval,
            end,
        ));
    }
    tokio::time::sleep_until(start).await;
    let before = probe.as_ref().map(ProcessProbe::sample).transpose()?;
    let progress = tokio::spawn(report_progress(
        Arc::clone(&fleet),
        probe.clone(),
        before.clone(),
    ));
    let beating = async {
        tokio::time::sleep_until(end).await;
        while beats.join_next().await.is_some() {}
    };
    // Ctrl-C stops the beats early; the fake servers are still deregistered
    // so the control plane is not left waiting for them to time out.
    let interrupted = tokio::select! {
        () = beating => false,
        () = shutdown.received() => true,
    };
    if interrupted {
        eprintln!(
            "interrupted: deregistering the fake servers; the report covers the run until now"
        );
        beats.shutdown().await;
    }
    let after = probe.as_ref().map(ProcessProbe::sample).transpose()?;
    progress.abort();
    let idle_sockets_held = idle_sockets
        .iter()
        .filter(|watch| watch.subscriber().is_open())
        .count() as u64;
    drop(idle_sockets);
    let window = start.elapsed();

    let deregistered = futures_util::stream::iter(0..servers)
        .map(|index| {
            let fleet = Arc::clone(&fleet);
            async move { fleet.send(index, Stage::Deregister).await }
        })
        .buffer_unordered(connections as usize)
        .filter(|ok| std::future::ready(*ok))
        .count()
        .await as u64;

    let cost = match (&probe, before, after) {
        (Some(probe), Some(before), Some(after)) => {
            Some(probe.cost(&before, &after, fleet.stats.ok.load(Ordering::Relaxed)))
        }
        _ => None,
    };
    let mut report = build_report(
        args,
        servers,
        &fleet,
        Held {
            registered,
            deregistered,
            idle_sockets: idle_sockets_held,
        },
        window,
        cost,
    );
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
        bail!("interrupted before the run's duration was over; see the report");
    }
    if !report.complete {
        bail!("{} errors; see the report", report.errors_total);
    }
    Ok(())
}

/// Opens `count` `/realtime` sockets, `connections` handshakes at a time; a refused
/// one counts as an `idle_socket_*` error.
async fn open_idle_sockets(fleet: &Fleet, count: u32, connections: u32) -> Vec<RealtimeWatch> {
    if count == 0 {
        return Vec::new();
    }
    let client = MatchmakingClient::with_http_client(fleet.http.clone(), &fleet.base);
    let opened: Vec<RealtimeWatch> = futures_util::stream::iter(0..count)
        .map(|_| client.watch())
        .buffer_unordered(connections as usize)
        .filter_map(|opened| {
            std::future::ready(match opened {
                Ok(watch) => Some(watch),
                Err(err) => {
                    fleet
                        .stats
                        .error(super::matchmaking_error_kind("idle_socket", &err));
                    None
                }
            })
        })
        .collect()
        .await;
    eprintln!("idle realtime sockets open: {}/{count}", opened.len());
    opened
}

fn registration_token(args: &LoadtestArgs) -> anyhow::Result<Option<Secret>> {
    crate::game_server::registration_token_from(
        args.registration_token.as_ref(),
        args.registration_token_file.as_deref(),
    )
}

#[derive(Debug, Clone, Copy)]
enum Stage {
    Register,
    Heartbeat,
    Deregister,
}

impl Stage {
    fn name(self) -> &'static str {
        match self {
            Self::Register => "register",
            Self::Heartbeat => "heartbeat",
            Self::Deregister => "deregister",
        }
    }
}

#[derive(Debug, Default)]
struct Stats {
    sent: AtomicU64,
    ok: AtomicU64,
    late: AtomicU64,
    /// Non-zero once a register answer named the control plane's expected interval.
    advertised_interval_ms: AtomicU64,
    latency: Mutex<Latency>,
    errors: Mutex<BTreeMap<String, u64>>,
}

impl Stats {
    fn error(&self, kind: String) {
        *locked(&self.errors).entry(kind).or_default() += 1;
    }

    fn errors_total(&self) -> u64 {
        locked(&self.errors).values().sum()
    }
}

struct Fleet {
    /// As given on the command line, for the report.
    control_plane: String,
    http: reqwest::Client,
    base: String,
    token: Option<Secret>,
    prefix: String,
    /// One per connection: at most this many requests are in flight, so the HTTP pool
    /// never opens more connections than that.
    permits: Semaphore,
    stats: Stats,
}

impl Fleet {
    fn server_id(&self, index: u32) -> String {
        format!("{}-{index}", self.prefix)
    }

    /// What a real game server sends on every register and heartbeat.
    fn report(&self, index: u32) -> RegisterRequest {
        RegisterRequest {
            server_id: Some(self.server_id(index)),
            instance_id: Some(format!("{}-{index}-instance", self.prefix)),
            host: Some("127.0.0.1".to_owned()),
            // Unused ports: nothing should ever connect to a fake server.
            port: Some(u16::try_from(10_000 + index % 50_000).unwrap_or(u16::MAX)),
            land_type: Some(LAND_TYPE.to_owned()),
            capacity: Some(Capacity {
                max_lands: Some(100),
                max_players: Some(1_000),
            }),
            load: Some(Load {
                lands: 0,
                players: 0,
                sync_stretch: None,
            }),
            land_ids: Some(Vec::new()),
            ..RegisterRequest::default()
        }
    }

    async fn beat_until(
        self: Arc<Self>,
        index: u32,
        first: Instant,
        every: Duration,
        end: Instant,
    ) {
        let mut due = first;
        while due < end {
            tokio::time::sleep_until(due).await;
            if Instant::now().saturating_duration_since(due) > LATE_AFTER {
                self.stats.late.fetch_add(1, Ordering::Relaxed);
            }
            self.send(index, Stage::Heartbeat).await;
            due += every;
        }
    }

    /// One request; `true` when the control plane accepted it.
    async fn send(&self, index: u32, stage: Stage) -> bool {
        let Ok(_permit) = self.permits.acquire().await else {
            return false;
        };
        let mut request = match stage {
            Stage::Register | Stage::Heartbeat => self
                .http
                .post(format!("{}/v1/provisioning/servers/register", self.base))
                .json(&self.report(index)),
            Stage::Deregister => self.http.delete(format!(
                "{}/v1/provisioning/servers/{}",
                self.base,
                self.server_id(index)
            )),
        };
        if let Some(token) = &self.token {
            request = request.bearer_auth(token.expose());
        }
        let heartbeat = matches!(stage, Stage::Heartbeat);
        if heartbeat {
            self.stats.sent.fetch_add(1, Ordering::Relaxed);
        }
        let started = Instant::now();
        let stage_name = stage.name();
        let response = match request.send().await {
            Ok(response) => response,
            Err(err) => {
                let kind = if err.is_timeout() {
                    "timeout"
                } else {
                    "transport"
                };
                self.stats.error(format!("{stage_name}_{kind}"));
                return false;
            }
        };
        let status = response.status();
        let body = response.bytes().await;
        let elapsed = started.elapsed();
        let answer = body
            .ok()
            .and_then(|bytes| serde_json::from_slice::<ProvisioningResponse>(&bytes).ok());
        if !status.is_success() {
            let kind = answer.and_then(|answer| answer.error).map_or_else(
                || format!("http_{}", status.as_u16()),
                |error| error.code.to_string(),
            );
            self.stats.error(format!("{stage_name}_{kind}"));
            return false;
        }
        if let Some(interval) = answer.and_then(|answer| answer.heartbeat_interval_ms) {
            self.stats
                .advertised_interval_ms
                .store(interval, Ordering::Relaxed);
        }
        if heartbeat {
            locked(&self.stats.latency).record(elapsed);
            self.stats.ok.fetch_add(1, Ordering::Relaxed);
        }
        true
    }
}

/// Reads another process's CPU time and memory from /proc.
#[derive(Debug, Clone)]
pub(super) struct ProcessProbe {
    pub(super) pid: u32,
    ticks_per_second: f64,
}

#[derive(Debug, Clone)]
pub(super) struct ProcessSample {
    pub(super) cpu_seconds: f64,
    pub(super) at: Instant,
}

impl ProcessProbe {
    pub(super) fn new(pid: u32) -> anyhow::Result<Self> {
        let probe = Self {
            pid,
            ticks_per_second: clock_ticks_per_second(),
        };
        probe
            .sample()
            .with_context(|| format!("pid {pid}: cannot read its CPU time"))?;
        Ok(probe)
    }

    /// `utime + stime` of /proc/PID/stat: every thread of the process, including threads
    /// that already exited (per-thread `schedstat` would lose those), at clock-tick
    /// resolution (10 ms), which is fine over a window of seconds.
    pub(super) fn sample(&self) -> anyhow::Result<ProcessSample> {
        let path = format!("/proc/{}/stat", self.pid);
        let stat = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
        let ticks = cpu_ticks(&stat).with_context(|| format!("unexpected format of {path}"))?;
        Ok(ProcessSample {
            cpu_seconds: ticks as f64 / self.ticks_per_second,
            at: Instant::now(),
        })
    }

    pub(super) fn status_kib(&self, key: &str) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        status_kib(&status, key)
    }

    /// CPU and memory of the process between two samples, memory as of now.
    pub(super) fn usage(&self, before: &ProcessSample, after: &ProcessSample) -> ProcessUsage {
        let cpu_seconds = (after.cpu_seconds - before.cpu_seconds).max(0.0);
        let wall = after.at.saturating_duration_since(before.at).as_secs_f64();
        ProcessUsage {
            pid: self.pid,
            cpu_seconds: round(cpu_seconds, 3),
            wall_seconds: round(wall, 3),
            cpu_percent_of_core: if wall > 0.0 {
                round(cpu_seconds / wall * 100.0, 2)
            } else {
                0.0
            },
            peak_rss_kib: self.status_kib("VmHWM:"),
            rss_kib: self.status_kib("VmRSS:"),
        }
    }

    fn cost(&self, before: &ProcessSample, after: &ProcessSample, heartbeats: u64) -> ProcessCost {
        let usage = self.usage(before, after);
        ProcessCost {
            cpu_us_per_heartbeat: (heartbeats > 0)
                .then(|| round(usage.cpu_seconds * 1e6 / heartbeats as f64, 1)),
            usage,
            clock_ticks_per_second: self.ticks_per_second,
        }
    }
}

/// `getconf CLK_TCK` (sysconf needs `unsafe` or a new dependency); Linux's USER_HZ is
/// 100 on every mainstream architecture, the fallback.
fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .filter(|output| output.status.success())
        .and_then(|output| String::from_utf8(output.stdout).ok())
        .and_then(|text| text.trim().parse::<f64>().ok())
        .filter(|ticks| *ticks > 0.0)
        .unwrap_or(100.0)
}

/// Fields 14 and 15 (`utime`, `stime`) of /proc/PID/stat. The command name (field 2)
/// may contain spaces and parentheses, so fields are counted after its last `)`.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

pub(super) fn round(value: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (value * scale).round() / scale
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessCost {
    #[serde(flatten)]
    pub usage: ProcessUsage,
    /// `cpuSeconds / ok heartbeats` in µs (includes whatever else the process did).
    pub cpu_us_per_heartbeat: Option<f64>,
    pub clock_ticks_per_second: f64,
}

/// What a process used over a window (both load-test modes report it).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessUsage {
    pub pid: u32,
    /// CPU time (user + system, all threads) the process used during the window.
    pub cpu_seconds: f64,
    pub wall_seconds: f64,
    /// `cpuSeconds / wallSeconds`, in % of one core.
    pub cpu_percent_of_core: f64,
    /// `VmHWM` at the end: the highest resident set since the process started.
    pub peak_rss_kib: Option<u64>,
    pub rss_kib: Option<u64>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatReport {
    pub control_plane: String,
    pub servers: u32,
    pub interval_ms: u64,
    pub connections: u32,
    /// The heartbeat window (registration and deregistration excluded).
    pub duration_secs: f64,
    pub registered: u64,
    pub deregistered: u64,
    /// `--idle-sockets` still open at the end of the window.
    pub idle_sockets: u64,
    pub heartbeats: HeartbeatCounts,
    pub heartbeats_per_second: f64,
    /// Request sent → answer read, successful heartbeats only.
    pub latency_ms: LatencySummary,
    /// `heartbeatIntervalMs` of the control plane's register answer, if it sent one.
    pub advertised_interval_ms: Option<u64>,
    pub control_plane_process: Option<ProcessCost>,
    pub errors: BTreeMap<String, u64>,
    pub errors_total: u64,
    /// Every server registered, every heartbeat accepted, every server deregistered,
    /// every idle socket held.
    pub complete: bool,
    /// Ctrl-C or SIGTERM ended the run early: the figures cover it until then.
    pub interrupted: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatCounts {
    pub sent: u64,
    pub ok: u64,
    pub errors: u64,
    /// Started more than 100 ms after their due time (the load generator fell behind).
    pub late: u64,
}

/// How many of the run's servers and sockets made it through each step.
struct Held {
    registered: u64,
    deregistered: u64,
    idle_sockets: u64,
}

fn build_report(
    args: &LoadtestArgs,
    servers: u32,
    fleet: &Fleet,
    held: Held,
    window: Duration,
    cost: Option<ProcessCost>,
) -> HeartbeatReport {
    let Held {
        registered,
        deregistered,
        idle_sockets,
    } = held;
    let stats = &fleet.stats;
    let sent = stats.sent.load(Ordering::Relaxed);
    let ok = stats.ok.load(Ordering::Relaxed);
    let errors = locked(&stats.errors).clone();
    let errors_total = errors.values().sum();
    let window_secs = window.as_secs_f64();
    HeartbeatReport {
        control_plane: fleet.control_plane.clone(),
        servers,
        interval_ms: u64::try_from(args.heartbeat_interval.as_millis()).unwrap_or(u64::MAX),
        connections: args.heartbeat_connections,
        duration_secs: round(window_secs, 3),
        registered,
        deregistered,
        idle_sockets,
        heartbeats: HeartbeatCounts {
            sent,
            ok,
            errors: sent - ok,
            late: stats.late.load(Ordering::Relaxed),
        },
        heartbeats_per_second: if window_secs > 0.0 {
            round(ok as f64 / window_secs, 1)
        } else {
            0.0
        },
        latency_ms: locked(&stats.latency).summary(),
        advertised_interval_ms: Some(stats.advertised_interval_ms.load(Ordering::Relaxed))
            .filter(|ms| *ms > 0),
        control_plane_process: cost,
        errors,
        errors_total,
        complete: errors_total == 0
            && registered == u64::from(servers)
            && ok == sent
            && deregistered == u64::from(servers)
            && idle_sockets == u64::from(args.idle_sockets),
        interrupted: false,
    }
}

fn render(report: &HeartbeatReport) -> String {
    let beats = &report.heartbeats;
    let mut lines = vec![
        String::new(),
        format!(
            "{} {:.1}s: {} servers registered · {} heartbeats sent · {} ok · {} errors · {} late · {} deregistered ({}/s)",
            if report.interrupted {
                "interrupted after"
            } else {
                "done in"
            },
            report.duration_secs,
            report.registered,
            beats.sent,
            beats.ok,
            beats.errors,
            beats.late,
            report.deregistered,
            report.heartbeats_per_second,
        ),
        LatencySummary::header(),
        report.latency_ms.row("heartbeat"),
    ];
    if let Some(interval) = report.advertised_interval_ms
        && interval != report.interval_ms
    {
        lines.push(format!(
            "note: the control plane asks for a heartbeat every {interval} ms; this run sent one every {} ms",
            report.interval_ms
        ));
    }
    if report.idle_sockets > 0 {
        lines.push(format!(
            "idle realtime sockets held through the window: {}",
            report.idle_sockets
        ));
    }
    if let Some(cost) = &report.control_plane_process {
        lines.push(format!(
            "control plane (pid {}): {:.3} s CPU in {:.1} s = {:.2}% of a core{} · peak RSS {} · RSS now {}",
            cost.usage.pid,
            cost.usage.cpu_seconds,
            cost.usage.wall_seconds,
            cost.usage.cpu_percent_of_core,
            cost.cpu_us_per_heartbeat
                .map(|us| format!(" · {us:.1} µs CPU per heartbeat"))
                .unwrap_or_default(),
            kib(cost.usage.peak_rss_kib),
            kib(cost.usage.rss_kib),
        ));
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

fn kib(value: Option<u64>) -> String {
    value.map_or_else(
        || "?".to_owned(),
        |kib| format!("{:.1} MiB", kib as f64 / 1024.0),
    )
}

async fn report_progress(
    fleet: Arc<Fleet>,
    probe: Option<ProcessProbe>,
    mut previous: Option<ProcessSample>,
) {
    let stats = &fleet.stats;
    let started = Instant::now();
    let mut every = tokio::time::interval(PROGRESS_EVERY);
    every.tick().await;
    loop {
        every.tick().await;
        let cpu = match (&probe, previous.take()) {
            (Some(probe), Some(last)) => match probe.sample() {
                Ok(now) => {
                    let wall = now.at.saturating_duration_since(last.at).as_secs_f64();
                    let percent = (now.cpu_seconds - last.cpu_seconds) / wall.max(1e-9) * 100.0;
                    previous = Some(now);
                    Some(format!(" · control plane CPU {percent:.1}% of a core"))
                }
                Err(_) => {
                    previous = Some(last);
                    None
                }
            },
            _ => None,
        };
        let p99 = locked(&stats.latency).quantile_ms(0.99);
        eprintln!(
            "[{:>4.0}s] heartbeats sent {} · ok {} · errors {} · late {} · p99 {p99:.2} ms{}",
            started.elapsed().as_secs_f64(),
            stats.sent.load(Ordering::Relaxed),
            stats.ok.load(Ordering::Relaxed),
            stats.errors_total(),
            stats.late.load(Ordering::Relaxed),
            cpu.unwrap_or_default(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_is_utime_plus_stime_even_with_odd_command_names() {
        let stat = "4242 (tokio (rt) x) S 1 4242 4242 0 -1 4194560 1000 0 0 0 \
                    250 70 0 0 20 0 9 0 123456 1000000 2000 18446744073709551615";
        assert_eq!(cpu_ticks(stat), Some(320));
        assert_eq!(cpu_ticks("garbage"), None);
    }

    #[test]
    fn memory_lines_are_read_in_kib() {
        let status = "Name:\tmatchplane\nVmHWM:\t   51234 kB\nVmRSS:\t   40000 kB\n";
        assert_eq!(status_kib(status, "VmHWM:"), Some(51_234));
        assert_eq!(status_kib(status, "VmRSS:"), Some(40_000));
        assert_eq!(status_kib(status, "VmSwap:"), None);
    }

    #[test]
    fn this_process_can_be_measured() {
        let probe = ProcessProbe::new(std::process::id()).unwrap();
        assert!(probe.sample().unwrap().cpu_seconds >= 0.0);
        assert!(probe.status_kib("VmHWM:").unwrap() > 0);
    }
}
