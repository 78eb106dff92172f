//! `matchplane game-server` settings from the environment: every flag a
//! container sets has a `MATCHPLANE_*` variable, and a bad value in one fails
//! the start with a message that names it, as the flag would.
#![allow(clippy::unwrap_used, clippy::expect_used)]

const BIN: &str = env!("CARGO_BIN_EXE_matchplane");

/// The stderr of a start with `name=value` that must fail; one that is still
/// running after 10 s took the value and is killed.
fn start_with_env(name: &str, value: &str) -> String {
    let mut child = std::process::Command::new(BIN)
        .args(["game-server", "--port", "0"])
        .env(name, value)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("{name}={value} was accepted: the game server started");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "{name}={value} was accepted: {stderr}");
    stderr
}

#[test]
fn bad_values_in_the_environment_fail_the_start_with_a_message() {
    for (name, value, message) in [
        ("MATCHPLANE_LANDS", "nope", "unknown land type \"nope\""),
        (
            "MATCHPLANE_MAX_MESSAGES_PER_SECOND",
            "0",
            "--max-messages-per-second must be a positive number",
        ),
        ("MATCHPLANE_MAX_MESSAGE_BYTES", "lots", "invalid digit"),
        ("MATCHPLANE_SHUTDOWN_TIMEOUT", "soon", "invalid duration"),
        ("MATCHPLANE_JWKS_REFRESH", "soon", "invalid duration"),
        (
            "MATCHPLANE_JWKS_REFETCH_COOLDOWN",
            "soon",
            "invalid duration",
        ),
    ] {
        let stderr = start_with_env(name, value);
        assert!(stderr.contains(message), "{name}={value}: {stderr}");
    }
}
