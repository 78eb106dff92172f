//! `matchplane loadtest` against real planes: a control plane and a game server, each
//! its own `matchplane` process; and two control-plane replicas on one real Redis.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../control-plane/tests/common/redis_server.rs"]
mod redis_server;
mod support;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use serde_json::Value;

async fn loadtest(control_plane: &str, report: &Path, extra: &[&str]) -> Output {
    let run = tokio::process::Command::new(support::BIN)
        .args(["loadtest", "--control-plane", control_plane, "--json"])
        .arg(report)
        .args(extra)
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the loadtest finishes by itself")
        .expect("the loadtest runs")
}

fn read_report(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The text report of a run that must have exited 0 (both streams shown if not).
fn successful_stdout(output: &Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// The JSON report of a run that must have exited 0.
fn successful_report(output: &Output, path: &Path) -> Value {
    successful_stdout(output);
    read_report(path)
}

/// The JSON report of a run that must have exited non-zero.
fn failed_report(output: &Output, path: &Path) -> Value {
    assert!(!output.status.success());
    read_report(path)
}

fn assert_latency(report: &Value, name: &str, count: u64) {
    let summary = &report["latencyMs"][name];
    assert_eq!(summary["count"], count, "{name}: {summary}");
    let value = |key: &str| {
        summary[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{name}.{key}"))
    };
    assert!(value("p50") > 0.0, "{name}: {summary}");
    assert!(value("p50") <= value("p90"), "{name}: {summary}");
    assert!(value("p90") <= value("p99"), "{name}: {summary}");
    assert!(value("p99") <= value("max"), "{name}: {summary}");
}

/// A control plane and a hero-defense game server registered with it. A load
/// test offers hundreds of requests per second from one address: exactly what
/// the per-address limit refuses, so it is off here (as in the bench scripts).
async fn planes() -> (support::Proc, support::Proc) {
    let cp = support::control_plane(&["--rate-limit", "off"]).await;
    let game = support::game_server(
        &cp.http(),
        &[
            "--lands",
            "hero-defense",
            "--drain-timeout",
            "1s",
            "--rate-limit",
            "off",
        ],
    )
    .await;
    support::wait_servers(&cp.http(), Duration::from_secs(10), |servers| {
        servers.iter().any(|server| server["state"] == "live")
    })
    .await;
    (cp, game)
}

/// Players of hero-defense 3v3 arriving at 100/s, each staying 2.5 s (3 moves).
const PLAYING_3V3: [&str; 6] = [
    "--rate",
    "100",
    "--queue",
    "hero-defense:3v3",
    "--play-seconds",
    "2.5",
];

#[tokio::test]
async fn playing_players_time_their_moves_to_the_patch_and_the_planes_costs_are_reported() {
    let (mut cp, mut game) = planes().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("play.json");
    let cp_pid = cp.child.id().unwrap().to_string();
    let gs_pid = game.child.id().unwrap().to_string();
    let output = loadtest(
        &cp.http(),
        &path,
        &[
            &["--players", "12", "--pid-cp", &cp_pid, "--pid-gs", &gs_pid][..],
            &PLAYING_3V3,
        ]
        .concat(),
    )
    .await;
    let stdout = successful_stdout(&output);
    assert!(stdout.contains("action → patch"), "{stdout}");
    assert!(stdout.contains("KiB per player at the peak"), "{stdout}");
    let report = read_report(&path);
    assert_eq!(report["complete"], true, "{report}");
    // Each player moves at once and then every second while it stays 2.5 s: 3 moves.
    assert_latency(&report, "actionToPatch", 36);
    let sync = &report["stateSync"];
    assert_eq!(sync["actionsWithoutPatch"], 0, "{sync}");
    assert_eq!(sync["peakPlayersInLands"], 12, "{sync}");
    assert!(sync["bytesReceived"].as_u64().unwrap() > 0, "{sync}");
    assert!(
        sync["playerSeconds"].as_f64().unwrap() >= 12.0 * 2.5,
        "{sync}"
    );
    assert!(
        sync["bytesPerPlayerSecond"].as_f64().unwrap() > 0.0,
        "{sync}"
    );
    let processes = &report["processes"];
    let game_server = &processes["gameServer"];
    assert_eq!(game_server["pid"].as_u64().unwrap().to_string(), gs_pid);
    assert!(
        game_server["cpuSeconds"].as_f64().unwrap() >= 0.0,
        "{game_server}"
    );
    let peak = game_server["peakRssKib"].as_f64().unwrap();
    let per_player = game_server["peakRssKibPerPlayer"].as_f64().unwrap();
    assert!((per_player * 12.0 - peak).abs() <= 12.0, "{game_server}");
    let control_plane = &processes["controlPlane"];
    assert_eq!(control_plane["pid"].as_u64().unwrap().to_string(), cp_pid);
    // CPU time is counted in clock ticks (10 ms): a short run may round to 0.
    assert!(
        control_plane["cpuUsPerAssignment"].as_f64().unwrap() >= 0.0,
        "{control_plane}"
    );
    assert!(
        processes["loadGenerator"]["cpuSeconds"].as_f64().unwrap() >= 0.0,
        "{processes}"
    );
    assert_eq!(sync["encoding"], "patch", "{sync}");

    // The same journey with `state.merge` frames, then binary ones: every move is
    // still seen.
    for encoding in ["merge", "binary"] {
        let path = dir.path().join(format!("{encoding}.json"));
        let output = loadtest(
            &cp.http(),
            &path,
            &[&["--players", "6", "--sync", encoding][..], &PLAYING_3V3].concat(),
        )
        .await;
        let report = successful_report(&output, &path);
        assert_latency(&report, "actionToPatch", 18);
        let sync = &report["stateSync"];
        assert_eq!(sync["encoding"], encoding, "{sync}");
        assert_eq!(sync["actionsWithoutPatch"], 0, "{sync}");
    }

    game.sigterm();
    game.wait_exit(Duration::from_secs(10)).await;
    cp.sigterm();
    cp.wait_exit(Duration::from_secs(10)).await;
}

#[tokio::test]
async fn the_full_journey_and_matchmaking_only_report_complete_and_error_free() {
    let (mut cp, mut game) = planes().await;
    let dir = tempfile::tempdir().unwrap();

    let path = dir.path().join("journey.json");
    let output = loadtest(
        &cp.http(),
        &path,
        &[
            "--players",
            "300",
            "--rate",
            "400",
            "--queue",
            "hero-defense:3v3",
        ],
    )
    .await;
    let stdout = successful_stdout(&output);
    assert!(stdout.contains("assigned → join.ok"), "{stdout}");
    let report = read_report(&path);
    assert_eq!(report["players"], 300);
    assert_eq!(report["tickets"], 300);
    assert_eq!(report["enqueued"], 300);
    assert_eq!(report["matched"], 300);
    assert_eq!(report["joined"], 300);
    assert_eq!(report["errorsTotal"], 0, "{report}");
    assert_eq!(report["errors"], serde_json::json!({}));
    assert_eq!(report["complete"], true);
    assert_latency(&report, "enqueue", 300);
    assert_latency(&report, "timeToMatch", 300);
    assert_latency(&report, "assignedToJoin", 300);
    for key in ["offeredTickets", "enqueuedTickets", "assignments", "joins"] {
        assert!(
            report["throughput"][key].as_f64().unwrap() > 0.0,
            "{key}: {report}"
        );
    }

    // Parties of three fill a team each; no game server involved.
    let path = dir.path().join("matchmaking.json");
    let output = loadtest(
        &cp.http(),
        &path,
        &[
            "--players",
            "120",
            "--party-size",
            "3",
            "--rate",
            "200",
            "--queue",
            "hero-defense:3v3",
            "--skill-spread",
            "400",
            "--no-join",
        ],
    )
    .await;
    let report = successful_report(&output, &path);
    assert_eq!(report["tickets"], 40);
    assert_eq!(report["matched"], 40);
    assert_eq!(report["joined"], 0);
    assert_eq!(report["join"], false);
    assert_eq!(report["complete"], true);
    assert_latency(&report, "timeToMatch", 40);
    assert_eq!(report["latencyMs"]["assignedToJoin"]["count"], 0);

    // A warm-up: every ticket is sent and matched, but only those due after it
    // (40 tickets at 100/s, due every 10 ms: the last 20) have their latencies kept.
    let path = dir.path().join("warmup.json");
    let output = loadtest(
        &cp.http(),
        &path,
        &[
            "--players",
            "40",
            "--rate",
            "100",
            "--queue",
            "hero-defense:1v1",
            "--no-join",
            "--warmup",
            "200ms",
        ],
    )
    .await;
    let report = successful_report(&output, &path);
    assert_eq!(report["warmupSecs"], 0.2);
    assert_eq!(
        (&report["tickets"], &report["matched"]),
        (&40.into(), &40.into())
    );
    assert_eq!(report["complete"], true);
    assert_latency(&report, "enqueue", 20);
    assert_latency(&report, "timeToMatch", 20);

    game.sigterm();
    cp.sigterm();
    assert!(game.wait_exit(Duration::from_secs(20)).await.success());
    assert!(cp.wait_exit(Duration::from_secs(20)).await.success());
}

#[tokio::test]
async fn enqueueing_over_the_realtime_socket_plays_the_same_journey_and_reports_refusals() {
    let (mut cp, mut game) = planes().await;
    let dir = tempfile::tempdir().unwrap();

    let path = dir.path().join("realtime.json");
    let output = loadtest(
        &cp.http(),
        &path,
        &[
            "--enqueue",
            "realtime",
            "--players",
            "120",
            "--rate",
            "300",
            "--queue",
            "hero-defense:3v3",
        ],
    )
    .await;
    let stdout = successful_stdout(&output);
    assert!(stdout.contains("(enqueued over /realtime)"), "{stdout}");
    let report = read_report(&path);
    assert_eq!(report["enqueue"], "realtime");
    assert_eq!(
        (&report["enqueued"], &report["matched"], &report["joined"]),
        (&120.into(), &120.into(), &120.into()),
        "{report}"
    );
    assert_eq!(report["errorsTotal"], 0, "{report}");
    assert_eq!(
        report["polled"], 0,
        "every assignment came as a push: {report}"
    );
    assert_eq!(report["complete"], true);
    assert_latency(&report, "enqueue", 120);
    assert_latency(&report, "timeToMatch", 120);
    assert_latency(&report, "assignedToJoin", 120);

    // A member id over the limit: the socket answers each enqueue with an error,
    // which the run counts under the same name as a refused `POST /v1/tickets`.
    let long_prefix = "p".repeat(300);
    for enqueue in ["realtime", "rest"] {
        let path = dir.path().join(format!("refused-{enqueue}.json"));
        let output = loadtest(
            &cp.http(),
            &path,
            &[
                "--enqueue",
                enqueue,
                "--players",
                "4",
                "--rate",
                "100",
                "--queue",
                "hero-defense:1v1",
                "--no-join",
                "--player-prefix",
                &long_prefix,
            ],
        )
        .await;
        assert!(!output.status.success(), "{enqueue}: refusals fail the run");
        let report = read_report(&path);
        assert_eq!(report["enqueued"], 0, "{enqueue}: {report}");
        assert_eq!(
            report["errors"],
            serde_json::json!({"enqueue_FIELD_TOO_LONG": 4}),
            "{enqueue}: {report}"
        );
        assert_eq!(report["complete"], false);
    }

    game.sigterm();
    cp.sigterm();
    assert!(game.wait_exit(Duration::from_secs(20)).await.success());
    assert!(cp.wait_exit(Duration::from_secs(20)).await.success());
}

/// Runs `loadtest --control-plane <control_plane> --json <file> <extra>`,
/// sends it Ctrl-C (SIGINT) after `progress_lines` progress lines (one a second for
/// journeys, one every 5 s for heartbeats), checks that it stopped by itself as an
/// interrupted run (exit 1, "interrupted after", the report marked interrupted and
/// incomplete) and returns its JSON report.
async fn interrupted_loadtest(control_plane: &str, extra: &[&str], progress_lines: usize) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("report.json");
    let mut run = tokio::process::Command::new(support::BIN)
        .args(["loadtest", "--control-plane", control_plane, "--json"])
        .arg(&path)
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = run.stdout.take().unwrap();
    let stderr = run.stderr.take().unwrap();
    let mut progress = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stderr));
    let mut seen = 0;
    while seen < progress_lines {
        let line = tokio::time::timeout(Duration::from_secs(30), progress.next_line())
            .await
            .expect("progress within 30 s")
            .unwrap()
            .expect("the run prints progress before it ends");
        seen += usize::from(line.starts_with('['));
    }
    let pid = run.id().unwrap().to_string();
    let kill = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = tokio::time::timeout(Duration::from_secs(20), run.wait())
        .await
        .expect("the run stops within 20 s of Ctrl-C")
        .unwrap();
    let mut text = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut stdout, &mut text)
        .await
        .unwrap();
    while let Some(line) = progress.next_line().await.unwrap() {
        text.push_str(&line);
        text.push('\n');
    }
    // Not killed by the signal: it exited by itself, with a failure status.
    assert_eq!(status.code(), Some(1), "{text}");
    assert!(text.contains("interrupted after"), "{text}");
    let report = read_report(&path);
    assert_eq!(report["interrupted"], true, "{report}");
    assert_eq!(report["complete"], false, "{report}");
    report
}

#[tokio::test]
async fn ctrl_c_ends_a_run_early_with_the_report_of_what_it_did() {
    let (mut cp, mut game) = planes().await;
    // 20,000 players at 100/s would take over three minutes.
    let report = interrupted_loadtest(
        &cp.http(),
        &[
            "--queue",
            "hero-defense:1v1",
            "--no-join",
            "--rate",
            "100",
            "--players",
            "20000",
        ],
        2,
    )
    .await;
    let enqueued = report["enqueued"].as_u64().unwrap();
    let matched = report["matched"].as_u64().unwrap();
    assert!(matched >= 2 && enqueued < 20_000, "{report}");
    assert!(matched <= enqueued, "{report}");
    assert_eq!(
        report["latencyMs"]["timeToMatch"]["count"], matched,
        "{report}"
    );

    game.sigterm();
    cp.sigterm();
    assert!(game.wait_exit(Duration::from_secs(20)).await.success());
    assert!(cp.wait_exit(Duration::from_secs(20)).await.success());
}

#[tokio::test]
async fn ctrl_c_in_heartbeat_mode_still_deregisters_every_fake_server() {
    let mut cp = support::control_plane(&[]).await;
    let base = cp.http();
    let report = interrupted_loadtest(
        &base,
        &[
            "--heartbeat-servers",
            "20",
            "--heartbeat-interval",
            "500ms",
            "--duration",
            "10m",
            "--registration-token",
            support::REGISTRATION_TOKEN,
        ],
        1,
    )
    .await;
    assert_eq!(report["registered"], 20, "{report}");
    assert!(
        report["heartbeats"]["ok"].as_u64().unwrap() >= 20,
        "{report}"
    );
    assert_eq!(report["deregistered"], 20, "{report}");
    let (_, body) = support::admin_get(&format!("{base}/v1/admin/servers")).await;
    let servers = body["servers"].as_array().unwrap();
    assert!(
        !servers.iter().any(|server| server["serverId"]
            .as_str()
            .is_some_and(|id| id.starts_with("hb"))),
        "{body}"
    );

    cp.sigterm();
    assert!(cp.wait_exit(Duration::from_secs(20)).await.success());
}

#[tokio::test]
async fn heartbeat_mode_registers_heartbeats_and_deregisters_every_fake_server() {
    let mut cp = support::control_plane(&[]).await;
    let pid = cp.child.id().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("heartbeats.json");
    let is_fake = |server: &Value| {
        server["serverId"]
            .as_str()
            .is_some_and(|id| id.starts_with("hb"))
    };
    let servers_url = format!("{}/v1/admin/servers", cp.http());
    // While the load generator runs, its servers are registered and live.
    let seen_live = async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let (status, body) = support::admin_get(&servers_url).await;
            assert_eq!(status, 200, "{body}");
            let servers = body["servers"].as_array().cloned().unwrap_or_default();
            let live = servers
                .iter()
                .filter(|server| is_fake(server) && server["state"] == "live")
                .count();
            if live == 20 {
                return servers;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "never saw 20 live fake servers: {servers:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let base = cp.http();
    let args = [
        "--heartbeat-servers",
        "20",
        "--heartbeat-interval",
        "500ms",
        "--duration",
        "2s",
        "--registration-token",
        support::REGISTRATION_TOKEN,
        "--pid-cp",
        &pid,
    ];
    let (output, servers) = tokio::join!(loadtest(&base, &path, &args), seen_live);
    let stdout = successful_stdout(&output);
    assert!(stdout.contains("µs CPU per heartbeat"), "{stdout}");
    let fake: Vec<&Value> = servers.iter().filter(|server| is_fake(server)).collect();
    assert_eq!(fake.len(), 20, "{servers:?}");
    assert!(
        fake.iter()
            .all(|server| server["landTypes"] == serde_json::json!(["counter"])),
        "{fake:?}"
    );

    let report = read_report(&path);
    assert_eq!(report["servers"], 20);
    assert_eq!(report["registered"], 20);
    // Each server beats at its offset (< one interval) and every 500 ms after, inside 2 s.
    assert_eq!(report["heartbeats"]["sent"], 80, "{report}");
    assert_eq!(report["heartbeats"]["ok"], 80, "{report}");
    assert_eq!(report["heartbeats"]["errors"], 0, "{report}");
    assert_eq!(report["latencyMs"]["count"], 80, "{report}");
    assert_eq!(report["deregistered"], 20, "{report}");
    assert_eq!(report["errorsTotal"], 0, "{report}");
    assert_eq!(report["complete"], true, "{report}");
    assert!(
        report["advertisedIntervalMs"].as_u64().unwrap() > 0,
        "{report}"
    );
    let cost = &report["controlPlaneProcess"];
    assert_eq!(cost["pid"].as_u64().unwrap().to_string(), pid);
    assert!(cost["cpuSeconds"].as_f64().unwrap() >= 0.0, "{cost}");
    assert!(cost["cpuUsPerHeartbeat"].as_f64().is_some(), "{cost}");
    assert!(cost["peakRssKib"].as_u64().unwrap() > 0, "{cost}");

    // Deregistered on the way out: none is left behind.
    let (_, body) = support::admin_get(&servers_url).await;
    let left = body["servers"].as_array().unwrap();
    assert!(!left.iter().any(is_fake), "{body}");

    // Without the registration token every register is refused, and the run says so.
    let path = dir.path().join("refused.json");
    let output = loadtest(
        &cp.http(),
        &path,
        &[
            "--heartbeat-servers",
            "3",
            "--heartbeat-interval",
            "500ms",
            "--duration",
            "500ms",
        ],
    )
    .await;
    let report = failed_report(&output, &path);
    assert_eq!(report["registered"], 0, "{report}");
    assert_eq!(report["heartbeats"]["ok"], 0, "{report}");
    assert_eq!(report["complete"], false, "{report}");
    assert_eq!(report["errors"]["register_UNAUTHENTICATED"], 3, "{report}");

    cp.sigterm();
    assert!(cp.wait_exit(Duration::from_secs(20)).await.success());
}

#[tokio::test]
async fn heartbeat_mode_holds_idle_realtime_sockets_through_the_window() {
    let mut cp = support::control_plane(&[]).await;
    let pid = cp.child.id().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("idle.json");
    // While the load generator runs, the control plane counts its sockets as open.
    let seen_open = async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let open = counter(&cp, "matchplane_realtime_sockets").await;
            if open == 25 {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "never saw 25 open realtime sockets (last {open})"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let args = [
        "--heartbeat-servers",
        "0",
        "--idle-sockets",
        "25",
        "--duration",
        "2s",
        "--pid-cp",
        &pid,
    ];
    let base = cp.http();
    let (output, ()) = tokio::join!(loadtest(&base, &path, &args), seen_open);
    let stdout = successful_stdout(&output);
    assert!(
        stdout.contains("idle realtime sockets held through the window: 25"),
        "{stdout}"
    );
    let report = read_report(&path);
    assert_eq!(report["idleSockets"], 25, "{report}");
    assert_eq!(report["complete"], true, "{report}");
    assert!(
        report["controlPlaneProcess"]["rssKib"].as_u64().unwrap() > 0,
        "{report}"
    );

    // Sockets the control plane refuses are errors, and the run is incomplete.
    let mut limited = support::control_plane(&["--max-connections-per-ip", "3"]).await;
    let path = dir.path().join("refused.json");
    let output = loadtest(
        &limited.http(),
        &path,
        &[
            "--heartbeat-servers",
            "0",
            "--idle-sockets",
            "6",
            "--duration",
            "500ms",
        ],
    )
    .await;
    let report = failed_report(&output, &path);
    assert!(report["idleSockets"].as_u64().unwrap() < 6, "{report}");
    assert_eq!(report["complete"], false, "{report}");
    assert!(report["errorsTotal"].as_u64().unwrap() > 0, "{report}");

    limited.sigterm();
    cp.sigterm();
    assert!(limited.wait_exit(Duration::from_secs(20)).await.success());
    assert!(cp.wait_exit(Duration::from_secs(20)).await.success());
}

async fn replica(redis: &redis_server::RedisServer) -> (support::Proc, tempfile::TempDir) {
    support::redis_replica(&redis.url(), &[]).await
}

/// The value of an unlabelled counter on a replica's `/metrics`.
async fn counter(replica: &support::Proc, name: &str) -> u64 {
    let metrics = reqwest::get(format!("{}/metrics", replica.http()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from {metrics}"))
}

#[tokio::test]
async fn two_replicas_on_redis_assign_every_ticket_across_replicas() {
    let redis = redis_server::RedisServer::start();
    let (first, _first_dir) = replica(&redis).await;
    let (second, _second_dir) = replica(&redis).await;
    // Registered through the first replica only: the second learns it from Redis.
    let mut game = support::game_server(
        &first.http(),
        &["--lands", "hero-defense", "--rate-limit", "off"],
    )
    .await;
    for base in [first.http(), second.http()] {
        support::wait_servers(&base, Duration::from_secs(30), |servers| {
            servers.iter().any(|server| server["state"] == "live")
        })
        .await;
    }
    let dir = tempfile::tempdir().unwrap();
    let replicas = format!("{},{}", first.http(), second.http());
    // No warm-up: the queue's first lease is granted while tickets arrive, and
    // a ticket enqueued while the new holder reads the queue must still be
    // matched (it once was left out of the pool and stayed queued).
    let enqueued = "matchplane_tickets_enqueued_total";
    let assigned = "matchplane_tickets_assigned_total";
    let enqueued_before = [
        counter(&first, enqueued).await,
        counter(&second, enqueued).await,
    ];
    let assigned_before = counter(&first, assigned).await + counter(&second, assigned).await;

    let path = dir.path().join("replicas.json");
    let output = loadtest(
        &replicas,
        &path,
        &[
            "--players",
            "300",
            "--rate",
            "300",
            "--queue",
            "hero-defense:1v1",
            "--no-join",
        ],
    )
    .await;
    let stdout = successful_stdout(&output);
    assert!(stdout.contains("control planes (2)"), "{stdout}");
    let report = read_report(&path);
    assert_eq!(
        report["controlPlanes"],
        serde_json::json!([first.http(), second.http()]),
        "{report}"
    );
    assert_eq!(report["controlPlane"], replicas.as_str(), "{report}");
    assert_eq!(report["tickets"], 300, "{report}");
    assert_eq!(report["enqueued"], 300, "{report}");
    assert_eq!(report["matched"], 300, "{report}");
    // Every ticket was watched on the replica it was not enqueued on, and its
    // assignment was pushed there rather than found by polling.
    assert_eq!(report["polled"], 0, "{report}");
    assert_eq!(report["errorsTotal"], 0, "{report}");
    assert_eq!(report["complete"], true, "{report}");
    assert_latency(&report, "timeToMatch", 300);

    // Round-robin: each replica took half of the enqueues; the assignments of the
    // one queue, matched wherever its lease is, add up to every ticket.
    assert_eq!(counter(&first, enqueued).await - enqueued_before[0], 150);
    assert_eq!(counter(&second, enqueued).await - enqueued_before[1], 150);
    assert_eq!(
        counter(&first, assigned).await + counter(&second, assigned).await - assigned_before,
        300
    );

    game.sigterm();
    assert!(game.wait_exit(Duration::from_secs(20)).await.success());
}
