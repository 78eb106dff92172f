//! The real `matchplane control-plane` process: port 0, crash safety (SIGKILL
//! and restart on the same data dir), graceful SIGTERM and offline key rotation.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::time::Duration;

use jsonwebtoken::{DecodingKey, Validation};
use serde_json::{Value, json};

use support::{BIN, Proc};

/// Credential variables a developer's shell might carry; tests of the defaults
/// remove them so the process really runs without credentials.
const CREDENTIAL_ENV: [&str; 4] = [
    "MATCHPLANE_ADMIN_TOKEN",
    "MATCHPLANE_ADMIN_TOKEN_FILE",
    "MATCHPLANE_REGISTRATION_TOKEN",
    "MATCHPLANE_REGISTRATION_TOKEN_FILE",
];

/// `matchplane control-plane --port 0 <extra>` in `cwd`, with no credential from the
/// environment, logging at `filter`.
async fn start_without_credentials(cwd: &Path, extra: &[&str], filter: &str) -> Proc {
    let mut args = support::args(&["control-plane", "--port", "0"]);
    args.extend(support::args(extra));
    support::spawn_configured(&args, "control plane listening", filter, |command| {
        command.current_dir(cwd).env_remove("MATCHPLANE_DATA_DIR");
        for name in CREDENTIAL_ENV {
            command.env_remove(name);
        }
    })
    .await
}

/// SIGTERM, then the exit status once the process is gone. At once: the handler is
/// installed before the control plane starts, so even an early SIGTERM is graceful.
async fn stop_gracefully(proc: &mut Proc) {
    proc.sigterm();
    let exit = proc.wait_exit(Duration::from_secs(20)).await;
    assert!(exit.success(), "{exit}: {:?}", proc.output.lock().unwrap());
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(next) = pending.pop() {
        for entry in std::fs::read_dir(&next).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                found.push(path);
            }
        }
    }
    found
}

async fn start(data_dir: &Path) -> Proc {
    let args = vec![
        "control-plane".to_owned(),
        "--port".to_owned(),
        "0".to_owned(),
        "--data-dir".to_owned(),
        data_dir.display().to_string(),
    ];
    support::spawn(&args, "control plane listening").await
}

async fn post(base: &str, path: &str, body: Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .json(&body)
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn get(base: &str, path: &str) -> Value {
    let response = reqwest::get(format!("{base}{path}"))
        .await
        .expect("request");
    assert!(
        response.status().is_success(),
        "GET {path}: {}",
        response.status()
    );
    response.json().await.expect("json")
}

async fn enqueue(base: &str, queue_key: &str, member: &str) -> String {
    let (status, body) = post(
        base,
        "/v1/matchmaking/enqueue",
        json!({"queueKey": queue_key, "members": [member]}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    body["ticketId"].as_str().expect("ticketId").to_owned()
}

async fn wait_assigned(base: &str, ticket: &str) -> Value {
    for _ in 0..500 {
        let status = get(base, &format!("/v1/matchmaking/status/{ticket}")).await;
        if status["status"] == "assigned" {
            return status["assignment"].clone();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("ticket {ticket} was not assigned");
}

fn verify(jwks: &Value, token: &str) -> Value {
    let kid = jsonwebtoken::decode_header(token).unwrap().kid.unwrap();
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|key| key["kid"] == kid.as_str())
        .unwrap_or_else(|| panic!("kid {kid} not in {jwks}"));
    let key =
        DecodingKey::from_ec_components(jwk["x"].as_str().unwrap(), jwk["y"].as_str().unwrap())
            .unwrap();
    let mut validation = Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.set_audience(&["matchplane-game"]);
    validation.set_issuer(&["matchplane"]);
    jsonwebtoken::decode::<Value>(token, &key, &validation)
        .expect("verifies")
        .claims
}

/// Registers with the registration token the control plane generated on first
/// start (mode 0600 in the data dir); without it the call is refused.
async fn register(base: &str, data_dir: &Path) {
    let path = data_dir.join("registration-token");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    let token = std::fs::read_to_string(&path).unwrap().trim().to_owned();
    let body = json!({"serverId": "game-1", "host": "127.0.0.1", "port": 9000, "landType": "hero-defense"});
    let (status, _) = post(base, "/v1/provisioning/servers/register", body.clone()).await;
    assert_eq!(status, 401, "anonymous registration is refused");
    let response = reqwest::Client::new()
        .post(format!("{base}/v1/provisioning/servers/register"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
}

#[tokio::test]
async fn nothing_acknowledged_is_lost_across_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let first = start(dir.path()).await;
    register(&first.http(), dir.path()).await;
    let alice = enqueue(&first.http(), "hero-defense:1v1", "alice").await;
    let bob = enqueue(&first.http(), "hero-defense:1v1", "bob").await;
    let alice_assignment = wait_assigned(&first.http(), &alice).await;
    let bob_assignment = wait_assigned(&first.http(), &bob).await;
    let jwks_before = get(&first.http(), "/.well-known/jwks.json").await;
    // Waiting tickets (a 2v2 needs 4 players), acknowledged just before the crash.
    let mut waiting = Vec::new();
    for player in ["w1", "w2", "w3"] {
        waiting.push(enqueue(&first.http(), "hero-defense:2v2", player).await);
    }
    let mut first = first;
    first.child.kill().await.expect("SIGKILL");

    let second = start(dir.path()).await;
    for ticket in &waiting {
        let status = get(&second.http(), &format!("/v1/matchmaking/status/{ticket}")).await;
        assert_eq!(status["status"], "queued", "{status}");
    }
    let again = get(&second.http(), &format!("/v1/matchmaking/status/{alice}")).await;
    assert_eq!(again["status"], "assigned");
    assert_eq!(again["assignment"], alice_assignment);
    let again = get(&second.http(), &format!("/v1/matchmaking/status/{bob}")).await;
    assert_eq!(again["assignment"], bob_assignment);

    // Same key after restart: the old token verifies against the new process's JWKS.
    let jwks_after = get(&second.http(), "/.well-known/jwks.json").await;
    assert_eq!(jwks_after, jwks_before);
    let claims = verify(
        &jwks_after,
        alice_assignment["matchToken"].as_str().unwrap(),
    );
    assert_eq!(claims["sub"], "alice");

    // The queued tickets are matched after the restart (the registration survived too).
    let fourth = enqueue(&second.http(), "hero-defense:2v2", "w4").await;
    let land = wait_assigned(&second.http(), &fourth).await["landId"].clone();
    for ticket in &waiting {
        assert_eq!(wait_assigned(&second.http(), ticket).await["landId"], land);
    }
}

#[tokio::test]
async fn sigterm_shuts_down_gracefully_and_rotate_key_works_offline() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = start(dir.path()).await;
    let kid_before = get(&first.http(), "/health").await["currentKid"]
        .as_str()
        .unwrap()
        .to_owned();
    first.sigterm();
    let exit = first.wait_exit(Duration::from_secs(20)).await;
    assert!(exit.success(), "exit status {exit}");

    let output = tokio::process::Command::new(BIN)
        .args(["control-plane", "rotate-key", "--data-dir"])
        .arg(dir.path())
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let new_kid = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    assert_ne!(new_kid, kid_before);

    let second = start(dir.path()).await;
    assert_eq!(
        get(&second.http(), "/health").await["currentKid"],
        new_kid.as_str()
    );
    let kids: Vec<Value> = get(&second.http(), "/.well-known/jwks.json").await["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|key| key["kid"].clone())
        .collect();
    assert_eq!(kids, vec![json!(new_kid), json!(kid_before)]);
}

async fn store_stats(data_dir: &Path, json: bool) -> std::process::Output {
    let mut command = tokio::process::Command::new(BIN);
    command
        .args(["control-plane", "store-stats", "--data-dir"])
        .arg(data_dir);
    if json {
        command.arg("--json");
    }
    command.output().await.unwrap()
}

#[tokio::test]
async fn store_stats_reads_a_stopped_data_dir_and_refuses_a_running_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut cp = start(dir.path()).await;
    register(&cp.http(), dir.path()).await;
    let alice = enqueue(&cp.http(), "hero-defense:1v1", "alice").await;
    let bob = enqueue(&cp.http(), "hero-defense:1v1", "bob").await;
    wait_assigned(&cp.http(), &alice).await;
    wait_assigned(&cp.http(), &bob).await;

    let busy = store_stats(dir.path(), false).await;
    assert!(!busy.status.success());
    let message = String::from_utf8_lossy(&busy.stderr);
    assert!(message.contains("stop the control plane"), "{message}");

    cp.sigterm();
    assert!(cp.wait_exit(Duration::from_secs(20)).await.success());
    let output = store_stats(dir.path(), true).await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let usage: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(usage["tickets"], 2, "{usage}");
    let entries = |name: &str| {
        usage["tables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|table| table["name"] == name)
            .map(|table| table["entries"].clone())
    };
    // One set of tokens per assigned ticket, kept apart from its record.
    assert_eq!(entries("match_tokens"), Some(json!(2)));
    assert_eq!(entries("finished"), Some(json!(2)));
    let file_bytes = usage["fileBytes"].as_u64().unwrap();
    let in_use = usage["pagesInUse"].as_u64().unwrap() * usage["pageSize"].as_u64().unwrap();
    assert!(in_use > 0 && in_use <= file_bytes, "{usage}");

    let text = store_stats(dir.path(), false).await;
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(
        text.contains("2 tickets") && text.contains("match_tokens"),
        "{text}"
    );

    // A killed control plane leaves the file to be repaired by the next start.
    let mut killed = start(dir.path()).await;
    killed.child.kill().await.unwrap();
    let unclean = store_stats(dir.path(), false).await;
    assert!(!unclean.status.success());
    let message = String::from_utf8_lossy(&unclean.stderr);
    assert!(message.contains("not closed cleanly"), "{message}");

    let missing = store_stats(&dir.path().join("nowhere"), false).await;
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("nowhere"));
}

#[test]
fn bad_flags_fail_with_a_message() {
    let output = std::process::Command::new(BIN)
        .args(["control-plane", "--ticket-ttl", "soon"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("invalid duration"));
}

#[test]
fn a_split_role_needs_a_shared_store() {
    for role in ["api", "matcher"] {
        let output = std::process::Command::new(BIN)
            .args(["control-plane", "--ephemeral", "--role", role])
            .output()
            .unwrap();
        assert!(
            !output.status.success(),
            "--role {role} started without Redis"
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("need --redis-url"), "{stderr}");
    }
    let output = std::process::Command::new(BIN)
        .args(["control-plane", "--role", "both"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("invalid value 'both'"));
}

/// Generated credentials are written to private files whose paths the log names;
/// neither secret, nor a wrong one a client presented, appears in anything the
/// process prints, even at debug level, on first start or on restart.
#[tokio::test]
async fn generated_credentials_are_logged_by_path_and_never_by_value() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let data = data_dir.display().to_string();
    let admin_file = data_dir.join("admin-token");
    let registration_file = data_dir.join("registration-token");
    let wrong = "wrong-token-presented-by-a-client-0123456789";

    let mut first = start_without_credentials(dir.path(), &["--data-dir", &data], "debug").await;
    let admin = std::fs::read_to_string(&admin_file)
        .unwrap()
        .trim()
        .to_owned();
    let registration = std::fs::read_to_string(&registration_file)
        .unwrap()
        .trim()
        .to_owned();
    assert!(admin.len() >= 32 && registration.len() >= 32);
    for (message, file) in [
        (
            "generated a new admin token; read it from this file",
            &admin_file,
        ),
        (
            "generated a new registration token; read it from this file",
            &registration_file,
        ),
    ] {
        let line = first.wait_log(message, Duration::from_secs(5)).await;
        assert_eq!(line["path"], file.display().to_string(), "{line}");
    }
    // Use both, and present a wrong one, so request handling gets its chance to leak.
    let base = first.http();
    let servers = format!("{base}/v1/admin/servers");
    let reply = support::call(reqwest::Method::GET, &servers, Some(&admin), None).await;
    assert_eq!(reply.status, 200);
    let reply = support::call(reqwest::Method::GET, &servers, Some(wrong), None).await;
    assert_eq!(reply.status, 401);
    let register = format!("{base}/v1/provisioning/servers/register");
    let body = json!({"serverId": "game-1", "host": "127.0.0.1", "port": 9000, "landType": "t"});
    let reply = support::call(
        reqwest::Method::POST,
        &register,
        Some(&registration),
        Some(&body),
    )
    .await;
    assert_eq!(reply.status, 200);
    let reply = support::call(reqwest::Method::POST, &register, Some(wrong), Some(&body)).await;
    assert_eq!(reply.status, 401);
    stop_gracefully(&mut first).await;

    // A restart reads the same files and says so, by path again.
    let mut second = start_without_credentials(dir.path(), &["--data-dir", &data], "debug").await;
    let line = second
        .wait_log(
            "using the admin token from this file",
            Duration::from_secs(5),
        )
        .await;
    assert_eq!(line["path"], admin_file.display().to_string());
    stop_gracefully(&mut second).await;

    for proc in [&first, &second] {
        // The readers finish once the pipes close with the process.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let output = proc.output.lock().unwrap().clone();
        assert!(output.len() > 5, "the process printed: {output:?}");
        for secret in [admin.as_str(), registration.as_str(), wrong] {
            let leaks: Vec<&String> = output.iter().filter(|line| line.contains(secret)).collect();
            assert!(leaks.is_empty(), "a secret was printed: {leaks:?}");
        }
    }
}

/// `--ephemeral` without credentials keeps generated tokens in memory: no file
/// appears anywhere under the working directory (where the default data dir would
/// be), the log says how to supply them instead, and no guessable credential opens
/// the admin API.
#[tokio::test]
async fn ephemeral_credentials_stay_in_memory() {
    let cwd = tempfile::tempdir().unwrap();
    let mut proc = start_without_credentials(cwd.path(), &["--ephemeral"], "info").await;
    for what in ["admin token", "registration token"] {
        proc.wait_log(
            &format!(
                "generated a new {what} in memory (--ephemeral); pass it explicitly to use it from outside"
            ),
            Duration::from_secs(5),
        )
        .await;
    }
    let servers = format!("{}/v1/admin/servers", proc.http());
    for bearer in [None, Some(support::ADMIN_TOKEN)] {
        let reply = support::call(reqwest::Method::GET, &servers, bearer, None).await;
        assert_eq!(reply.status, 401, "{bearer:?}");
    }
    stop_gracefully(&mut proc).await;
    assert_eq!(files_under(cwd.path()), Vec::<std::path::PathBuf>::new());
}

/// `rotate-key --url` without a token flag reads `<data-dir>/admin-token`: the file
/// the control plane generated on first start.
#[tokio::test]
async fn rotate_key_over_http_reads_the_admin_token_from_the_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let data = data_dir.display().to_string();
    let proc = start_without_credentials(dir.path(), &["--data-dir", &data], "info").await;
    let kid_before = get(&proc.http(), "/health").await["currentKid"]
        .as_str()
        .unwrap()
        .to_owned();
    let rotate = |data_dir: std::path::PathBuf| {
        let mut command = tokio::process::Command::new(BIN);
        command
            .args([
                "control-plane",
                "rotate-key",
                "--url",
                &proc.http(),
                "--data-dir",
            ])
            .arg(data_dir)
            .env_remove("MATCHPLANE_URL")
            .env_remove("MATCHPLANE_DATA_DIR");
        for name in CREDENTIAL_ENV {
            command.env_remove(name);
        }
        command.output()
    };

    let output = rotate(data_dir.clone()).await.unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let new_kid = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    assert!(!new_kid.is_empty());
    assert_ne!(new_kid, kid_before);
    // The running control plane rotated: it signs with the new key now.
    assert_eq!(
        get(&proc.http(), "/health").await["currentKid"],
        new_kid.as_str()
    );

    // A data dir without the file: refused before any request, naming the file.
    let empty = tempfile::tempdir().unwrap();
    let output = rotate(empty.path().to_owned()).await.unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("reading the admin token from")
            && stderr.contains(&empty.path().join("admin-token").display().to_string()),
        "{stderr}"
    );
    // A data dir with another token: the control plane refuses it.
    let other = tempfile::tempdir().unwrap();
    std::fs::write(
        other.path().join("admin-token"),
        "not-the-admin-token-0123456789\n",
    )
    .unwrap();
    let output = rotate(other.path().to_owned()).await.unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("rotation failed with 401"), "{stderr}");
    assert_eq!(
        get(&proc.http(), "/health").await["currentKid"],
        new_kid.as_str()
    );
}

/// One registration credential per game server, one per line of
/// `--registration-token-file`: each listed token registers its server, an unlisted
/// one is refused, and a server's id stays with its token.
#[tokio::test]
async fn a_registration_token_file_admits_one_token_per_server() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = [
        "game-1-registration-token-aaaaaaaa",
        "game-2-registration-token-bbbbbbbb",
    ];
    let file = dir.path().join("registration-tokens");
    std::fs::write(&file, format!("{}\n{}\n", tokens[0], tokens[1])).unwrap();
    let file_arg = file.display().to_string();
    let control_plane = support::control_plane(&["--registration-token-file", &file_arg]).await;
    let base = control_plane.http();

    // game-1 reads its token from a file of its own, game-2 gets it as a flag.
    let own_file = dir.path().join("game-1-token");
    std::fs::write(&own_file, format!("{}\n", tokens[0])).unwrap();
    let own_file_arg = own_file.display().to_string();
    // Through `support::game_server`, whose MATCHPLANE_REGISTRATION_TOKEN the control
    // plane refuses here: game-1 registers only because its file wins over that value.
    let _game_1 = support::game_server(
        &base,
        &[
            "--server-id",
            "game-1",
            "--registration-token-file",
            &own_file_arg,
        ],
    )
    .await;
    let _game_2 = support::game_server(
        &base,
        &["--server-id", "game-2", "--registration-token", tokens[1]],
    )
    .await;
    support::wait_servers(&base, Duration::from_secs(20), |servers| {
        let ids: Vec<&str> = servers
            .iter()
            .filter_map(|server| server["serverId"].as_str())
            .collect();
        ids.contains(&"game-1") && ids.contains(&"game-2")
    })
    .await;

    let register = format!("{base}/v1/provisioning/servers/register");
    let body =
        |id: &str| json!({"serverId": id, "host": "127.0.0.1", "port": 9000, "landType": "t"});
    // The token the control plane would accept without the file, and one never listed.
    for unlisted in [
        support::REGISTRATION_TOKEN,
        "game-3-registration-token-cccccccc",
    ] {
        let reply = support::call(
            reqwest::Method::POST,
            &register,
            Some(unlisted),
            Some(&body("game-3")),
        )
        .await;
        assert_eq!(reply.status, 401, "{unlisted}: {:?}", reply.body);
        assert_eq!(reply.error_code(), Some("UNAUTHENTICATED"));
    }
    // game-2's token cannot take game-1's id.
    let reply = support::call(
        reqwest::Method::POST,
        &register,
        Some(tokens[1]),
        Some(&body("game-1")),
    )
    .await;
    assert_eq!(reply.status, 403, "{:?}", reply.body);
    assert_eq!(reply.error_code(), Some("FORBIDDEN"));
}
