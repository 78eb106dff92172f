//! The real `matchplane control-plane` process: port 0, crash safety (SIGKILL
//! and restart on the same data dir), graceful SIGTERM and offline key rotation.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::time::Duration;

use jsonwebtoken::{DecodingKey, Validation};
use serde_json::{Value, json};

use support::{BIN, Proc};

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
