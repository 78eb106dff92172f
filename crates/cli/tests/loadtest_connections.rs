//! `matchplane loadtest --max-connections` against a control plane that stalls:
//! the generator keeps at most that many enqueues (and so connections) in flight
//! instead of opening one per due ticket until it runs out of file descriptors.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::{get, post};

#[derive(Default)]
struct Stall {
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
    received: AtomicUsize,
}

/// A control plane whose enqueue answers only after `hold`, with a 503: every
/// ticket fails fast once answered, so the run ends by itself.
async fn stalling_control_plane(hold: Duration) -> (String, Arc<Stall>) {
    let stall = Arc::new(Stall::default());
    let seen = Arc::clone(&stall);
    let app = Router::new()
        .route("/health", get(|| async { "ok" }))
        .route(
            "/v1/matchmaking/enqueue",
            post(move || {
                let stall = Arc::clone(&seen);
                async move {
                    stall.received.fetch_add(1, Ordering::SeqCst);
                    let now = stall.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    stall.most_in_flight.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(hold).await;
                    stall.in_flight.fetch_sub(1, Ordering::SeqCst);
                    StatusCode::SERVICE_UNAVAILABLE
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, stall)
}

async fn run_loadtest(control_plane: &str, max_connections: &str) {
    let report = tempfile::NamedTempFile::new().unwrap();
    let run = tokio::process::Command::new(support::BIN)
        .args(["loadtest", "--control-plane", control_plane])
        .args(["--players", "40", "--rate", "2000", "--no-join"])
        .args(["--queue", "hero-defense:1v1"])
        .args(["--max-connections", max_connections, "--json"])
        .arg(report.path())
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the loadtest finishes by itself")
        .expect("the loadtest runs");
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(report.path()).unwrap(),
    )
    .unwrap_or_else(|err| panic!("{err}; stderr: {}", String::from_utf8_lossy(&output.stderr)));
    // Refused, not lost: each ticket's enqueue was answered (503) and counted.
    assert_eq!(report["errorsTotal"], 40, "{report}");
}

#[tokio::test]
async fn enqueues_in_flight_never_exceed_max_connections() {
    let (url, stall) = stalling_control_plane(Duration::from_millis(300)).await;
    run_loadtest(&url, "4").await;
    assert_eq!(
        stall.received.load(Ordering::SeqCst),
        40,
        "every ticket is still offered"
    );
    assert_eq!(stall.most_in_flight.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn a_larger_cap_lets_the_same_stalled_load_open_more_connections() {
    // The same load with room for all of it: proves the cap above is what held it to 4.
    let (url, stall) = stalling_control_plane(Duration::from_millis(300)).await;
    run_loadtest(&url, "100").await;
    assert_eq!(stall.received.load(Ordering::SeqCst), 40);
    assert!(stall.most_in_flight.load(Ordering::SeqCst) > 4);
}
