//! `matchplane control-plane --queue-key-rule` / `MATCHPLANE_QUEUE_KEY_RULE`
//! on the real binary: the flag and the env var both reach the engine.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::json;

use support::{Proc, args, control_plane, post, spawn_with_env};

/// Under `seed` a zero-player group is refused; under `teams` it is solo.
async fn zero_group_enqueue_status(cp: &Proc) -> (u16, Option<String>) {
    let (status, reply) = post(
        &format!("{}/v1/matchmaking/enqueue", cp.http()),
        &json!({"queueKey": "standard:0", "members": ["alice"]}),
    )
    .await;
    let code = reply["error"]["code"].as_str().map(str::to_owned);
    (status, code)
}

#[tokio::test]
async fn flag_and_env_select_the_rule() {
    let default = control_plane(&[]).await;
    assert_eq!(zero_group_enqueue_status(&default).await, (201, None));

    let by_flag = control_plane(&["--queue-key-rule", "seed"]).await;
    assert_eq!(
        zero_group_enqueue_status(&by_flag).await,
        (400, Some("INVALID_QUEUE_KEY".to_owned()))
    );

    let by_env = spawn_with_env(
        &args(&["control-plane", "--port", "0", "--ephemeral"]),
        "control plane listening",
        "info",
        &[("MATCHPLANE_QUEUE_KEY_RULE", "seed")],
    )
    .await;
    assert_eq!(
        zero_group_enqueue_status(&by_env).await,
        (400, Some("INVALID_QUEUE_KEY".to_owned()))
    );
}

#[tokio::test]
async fn unknown_rule_is_refused_at_start() {
    let output = tokio::process::Command::new(support::BIN)
        .args(["control-plane", "--ephemeral", "--port", "0"])
        .args(["--queue-key-rule", "pairs"])
        .output()
        .await
        .expect("run matchplane");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--queue-key-rule") && stderr.contains("seed"),
        "{stderr}"
    );
}
