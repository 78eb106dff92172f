//! `matchplane demo` as a user runs it: one process, real planes, bots, a summary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Output;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_matchplane");

/// A hero-defense game of a couple of seconds.
const SHORT_GAME: &str = r#"{"waves":1,"firstWaveDelaySecs":0.2,"enemiesFirstWave":2,"spawnIntervalSecs":0.1,"enemyHp":10,"enemySpeed":20}"#;

async fn demo(args: &[&str]) -> Output {
    let run = tokio::process::Command::new(BIN)
        .arg("demo")
        .args(args)
        // The default filter (`info`): the planes do log, only not on the terminal.
        .env_remove("RUST_LOG")
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the demo finishes by itself")
        .expect("the demo runs")
}

#[tokio::test]
async fn a_short_demo_plays_two_matches_and_exits_zero() {
    let data_dir = tempfile::tempdir().unwrap();
    let output = demo(&[
        "--bots",
        "12",
        "--game-config",
        SHORT_GAME,
        "--round-timeout",
        "60s",
        "--data-dir",
        data_dir.path().to_str().unwrap(),
    ])
    .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "exit {:?}\n{stdout}\n{stderr}",
        output.status
    );
    assert!(
        stdout.contains("control plane  http://127.0.0.1:"),
        "{stdout}"
    );
    assert!(
        stdout.contains("bots               12 (12/12 joins reached a land)"),
        "{stdout}"
    );
    assert!(stdout.contains("matches formed     2"), "{stdout}");
    assert!(stdout.contains("time to match      p50 "), "{stdout}");
    assert!(stdout.contains("lands played       2"), "{stdout}");
    let results = stdout
        .lines()
        .filter(|line| line.trim_start().starts_with("hero-defense:"))
        .filter(|line| line.contains(" victory ") || line.contains(" defeat "))
        .count();
    assert_eq!(results, 2, "{stdout}");
    assert!(
        stdout.contains("OK: every bot reached a land and every land closed properly"),
        "{stdout}"
    );

    // The terminal shows the progress view and the summary; the planes' logs go to a file it names.
    let log_file = data_dir.path().join("demo.log");
    assert!(
        stdout.contains(&format!("  logs           {}", log_file.display())),
        "{stdout}"
    );
    for line in stdout.lines().chain(stderr.lines()) {
        assert!(
            !line.contains(" INFO ") && !line.contains(" WARN "),
            "a log line reached the terminal: {line}"
        );
    }
    assert!(stderr.trim().is_empty(), "{stderr}");
    let log = std::fs::read_to_string(&log_file).expect("the log file exists");
    assert!(
        log.lines()
            .any(|line| line.contains(" INFO ") && line.contains("control plane listening")),
        "{log}"
    );
    assert!(log.contains("match assigned"), "{log}");
}

#[tokio::test]
async fn bots_that_cannot_fill_whole_matches_are_refused_up_front() {
    let output = demo(&["--bots", "5"]).await;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("use a multiple of 6"), "{stderr}");
}
