//! The planes joined, as real processes: enqueue → match.assigned (push or
//! poll) → connect to connectUrl with the token → join.ok → action → patch;
//! token checks, self-registration, TTL expiry, drain, capacity.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{EncodingKey, Header};
use p256::pkcs8::{EncodePrivateKey, LineEnding};
use serde_json::{Value, json};
use support::*;

const SECONDS_30: Duration = Duration::from_secs(30);

/// Waits until the game server is live; a real one also reports its sync stretch
/// (1: keeping up), which placement reads.
async fn live(cp: &Proc, server_id: &str) {
    let servers = wait_servers(&cp.http(), SECONDS_30, |servers| {
        servers
            .iter()
            .any(|s| s["serverId"] == server_id && s["state"] == "live")
    })
    .await;
    let server = servers.iter().find(|s| s["serverId"] == server_id).unwrap();
    assert_eq!(server["load"]["syncStretch"], 1, "{server}");
}

async fn admin_land_ids(gs: &Proc) -> Vec<String> {
    let (status, body) = admin_get(&format!("{}/admin/lands", gs.http())).await;
    assert_eq!(status, 200);
    body["lands"]
        .as_array()
        .unwrap()
        .iter()
        .map(|land| land["landId"].as_str().unwrap().to_owned())
        .collect()
}

/// Sends an action and returns (patches seen before the result, the result).
async fn act(socket: &mut Socket, request_id: &str, name: &str) -> (Vec<Value>, Value) {
    send(
        socket,
        json!({"type": "action", "v": 1, "data": {"requestId": request_id, "name": name}}),
    )
    .await;
    let mut patches = Vec::new();
    loop {
        let message = next_json(socket).await;
        match message["type"].as_str() {
            Some("state.patch") => patches.push(message),
            Some("action.result") if message["data"]["requestId"] == request_id => {
                return (patches, message);
            }
            _ => {}
        }
    }
}

#[tokio::test]
async fn journey_through_push_and_poll_to_join_action_and_patch() {
    let cp = control_plane(&[]).await;
    let gs = game_server(&cp.http(), &["--server-id", "gs-1"]).await;
    live(&cp, "gs-1").await;
    let base = cp.http();

    // Alice waits for the push, Bob polls.
    let alice = enqueue(
        &base,
        json!({"queueKey": "counter:2", "members": ["alice"]}),
    )
    .await;
    let mut push = ws(&format!("ws://{}/realtime?ticketId={alice}", cp.addr)).await;
    assert_eq!(next_json(&mut push).await["type"], "subscribed");
    let bob = enqueue(&base, json!({"queueKey": "counter:2", "members": ["bob"]})).await;
    let pushed = next_of(&mut push, "match.assigned").await;
    let alice_assignment = pushed["data"]["assignment"].clone();
    let bob_assignment = poll_assignment(&base, &bob, SECONDS_30).await;
    assert_eq!(alice_assignment["landId"], bob_assignment["landId"]);
    assert_eq!(alice_assignment["serverId"], "gs-1");
    let land_id = alice_assignment["landId"].as_str().unwrap().to_owned();
    assert!(
        alice_assignment["connectUrl"]
            .as_str()
            .unwrap()
            .starts_with(&format!("ws://{}/game/counter?landId=", gs.addr))
    );

    let mut a = ws(&join_url(&alice_assignment, "alice")).await;
    let joined = next_of(&mut a, "join.ok").await;
    assert_eq!(
        joined["data"]["playerId"], "alice",
        "the player id comes from the token"
    );
    assert_eq!(joined["data"]["landId"], land_id.as_str());
    let mut b = ws(&join_url(&bob_assignment, "bob")).await;
    assert_eq!(next_of(&mut b, "join.ok").await["data"]["playerId"], "bob");

    let (patches, result) = act(&mut a, "r1", "increment").await;
    assert_eq!(result["data"]["ok"], true, "{result}");
    assert_eq!(result["data"]["result"]["count"], 1);
    assert!(
        patches
            .iter()
            .flat_map(|p| p["data"]["ops"].as_array().unwrap().clone())
            .any(|op| op["path"] == "/count"),
        "the action's patch precedes its result: {patches:?}"
    );
    let seen_by_bob = loop {
        let patch = next_of(&mut b, "state.patch").await;
        if patch["data"]["ops"]
            .as_array()
            .unwrap()
            .iter()
            .any(|op| op["path"] == "/count")
        {
            break patch;
        }
    };
    assert!(seen_by_bob["data"]["seq"].as_u64().is_some());

    assert_eq!(admin_land_ids(&gs).await, vec![land_id.clone()]);
    let (_, lands) = admin_get(&format!("{}/admin/lands", gs.http())).await;
    assert_eq!(lands["lands"][0]["players"], 2);

    // A second socket with the same token takes over the seat; the old one is closed.
    let mut again = ws(&join_url(&alice_assignment, "alice")).await;
    assert_eq!(
        next_of(&mut again, "join.ok").await["data"]["playerId"],
        "alice"
    );
    let replaced = loop {
        match recv(&mut a).await {
            Received::Closed(code) => break code,
            Received::Json(_) => continue,
        }
    };
    assert_eq!(replaced, Some(4410));
    let (_, lands) = admin_get(&format!("{}/admin/lands", gs.http())).await;
    assert_eq!(lands["lands"][0]["players"], 2, "still two seats");
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(land_id: &str, land_type: &str, player: &str, exp: u64) -> Value {
    json!({
        "iss": "matchplane", "aud": "matchplane-game", "sub": player, "playerId": player,
        "members": [player], "assignmentId": "a-1", "landId": land_id, "landType": land_type,
        "serverId": "gs-1", "iat": now_secs(), "exp": exp, "jti": "a-1"
    })
}

fn sign(pem: &str, kid: &str, claims: &Value) -> String {
    let mut header = Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(
        &header,
        claims,
        &EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
    )
    .unwrap()
}

fn fresh_pem() -> String {
    p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng)
        .to_pkcs8_pem(LineEnding::LF)
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn bad_tokens_are_refused_and_create_no_land() {
    // The control plane signs with a key the test also holds, so the test can
    // mint precisely wrong tokens with a key the JWKS does publish.
    let dir = tempfile::tempdir().unwrap();
    let pem = fresh_pem();
    let key_path = dir.path().join("signing.pem");
    std::fs::write(&key_path, &pem).unwrap();
    let cp = control_plane(&["--signing-key", key_path.to_str().unwrap()]).await;
    let gs = game_server(
        &cp.http(),
        &["--server-id", "gs-1", "--jwks-refetch-cooldown", "100ms"],
    )
    .await;
    live(&cp, "gs-1").await;
    let (_, jwks) = get(&format!("{}/.well-known/jwks.json", cp.http())).await;
    let kid = jwks["keys"][0]["kid"].as_str().unwrap().to_owned();
    let game = format!("ws://{}/game", gs.addr);

    // Control: a correct token minted by the test is admitted.
    let good = sign(
        &pem,
        &kid,
        &claims("counter:good", "counter", "p1", now_secs() + 60),
    );
    let mut socket = ws(&format!("{game}/counter?landId=counter:good&token={good}")).await;
    assert_eq!(
        next_of(&mut socket, "join.ok").await["data"]["playerId"],
        "p1"
    );

    // A real control-plane token with its signature tampered with.
    let ticket = enqueue(
        &cp.http(),
        json!({"queueKey": "counter", "members": ["solo"]}),
    )
    .await;
    let assignment = poll_assignment(&cp.http(), &ticket, SECONDS_30).await;
    let token = assignment["matchToken"].as_str().unwrap();
    let (head, signature) = token.rsplit_once('.').unwrap();
    let flipped = if signature.starts_with('A') { 'B' } else { 'A' };
    let tampered = format!("{head}.{flipped}{}", &signature[1..]);
    let url = format!(
        "{}&token={tampered}",
        assignment["connectUrl"].as_str().unwrap()
    );
    let refused = expect_refused(&mut ws(&url).await, 4401).await;
    assert_eq!(refused["data"]["code"], "unauthenticated");

    let cases = [
        // expired
        (
            "counter:expired",
            "counter",
            sign(
                &pem,
                &kid,
                &claims("counter:expired", "counter", "p2", now_secs() - 120),
            ),
            4401,
        ),
        // token for another landId than the one asked for
        (
            "counter:asked",
            "counter",
            sign(
                &pem,
                &kid,
                &claims("counter:other", "counter", "p3", now_secs() + 60),
            ),
            4403,
        ),
        // token for another land type than the route's
        (
            "hero-defense:x",
            "hero-defense",
            sign(
                &pem,
                &kid,
                &claims("counter:x", "counter", "p4", now_secs() + 60),
            ),
            4403,
        ),
        // a key the control plane never served
        (
            "counter:foreign",
            "counter",
            sign(
                &fresh_pem(),
                "foreign-kid",
                &claims("counter:foreign", "counter", "p5", now_secs() + 60),
            ),
            4401,
        ),
        // the control plane's kid but another key
        (
            "counter:forged",
            "counter",
            sign(
                &fresh_pem(),
                &kid,
                &claims("counter:forged", "counter", "p6", now_secs() + 60),
            ),
            4401,
        ),
    ];
    for (land_id, route, token, code) in cases {
        let url = format!("{game}/{route}?landId={land_id}&token={token}");
        expect_refused(&mut ws(&url).await, code).await;
    }
    let missing = format!("{game}/counter?landId=counter:none");
    expect_refused(&mut ws(&missing).await, 4401).await;
    // `playerId` in the query is ignored under JWKS auth.
    let spoof = format!("{game}/counter?landId=counter:spoof&playerId=admin");
    expect_refused(&mut ws(&spoof).await, 4401).await;

    let lands = admin_land_ids(&gs).await;
    assert_eq!(
        lands,
        vec!["counter:good".to_owned()],
        "refused joins created no land"
    );
}

#[tokio::test]
async fn rotated_keys_are_picked_up_without_restarting_the_game_server() {
    let cp = control_plane(&[]).await;
    let gs = game_server(
        &cp.http(),
        &["--server-id", "gs-1", "--jwks-refetch-cooldown", "100ms"],
    )
    .await;
    live(&cp, "gs-1").await;
    let join = |assignment: Value, player: &'static str| async move {
        let mut socket = ws(&join_url(&assignment, player)).await;
        next_of(&mut socket, "join.ok").await
    };
    let before = enqueue(
        &cp.http(),
        json!({"queueKey": "counter", "members": ["early"]}),
    )
    .await;
    let assignment = poll_assignment(&cp.http(), &before, SECONDS_30).await;
    assert_eq!(join(assignment, "early").await["data"]["playerId"], "early");

    let (status, _) = post(&format!("{}/v1/admin/keys/rotate", cp.http()), &json!({})).await;
    assert_eq!(status, 401, "rotation needs the admin token");
    let (status, rotated) =
        admin_post(&format!("{}/v1/admin/keys/rotate", cp.http()), &json!({})).await;
    assert_eq!(status, 200);
    // The game server refetches for an unknown kid at most once per cooldown (100 ms
    // here) since its last fetch; with fast loopback the late join could otherwise
    // come within the cooldown of the fetch at its start-up and be refused (4401).
    // See docs/security.md, "Rotating credentials".
    tokio::time::sleep(Duration::from_millis(150)).await;
    let after = enqueue(
        &cp.http(),
        json!({"queueKey": "counter", "members": ["late"]}),
    )
    .await;
    let assignment = poll_assignment(&cp.http(), &after, SECONDS_30).await;
    let kid = jsonwebtoken::decode_header(assignment["matchToken"].as_str().unwrap())
        .unwrap()
        .kid;
    assert_eq!(kid.as_deref(), rotated["kid"].as_str());
    assert_eq!(join(assignment, "late").await["data"]["playerId"], "late");
    drop(gs);
}

#[tokio::test]
async fn game_server_started_first_registers_once_the_control_plane_is_up() {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let _gs = game_server(&url, &["--server-id", "early-bird"]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cp = control_plane_on(port).await;
    live(&cp, "early-bird").await;
}

#[tokio::test]
async fn killed_game_server_expires_and_gets_no_new_lands() {
    let cp = control_plane(&["--server-ttl", "2s", "--heartbeat-interval", "500ms"]).await;
    let mut gs = game_server(&cp.http(), &["--server-id", "doomed"]).await;
    live(&cp, "doomed").await;
    gs.child.kill().await.unwrap(); // SIGKILL: no goodbye
    wait_servers(&cp.http(), SECONDS_30, |servers| {
        servers
            .iter()
            .any(|s| s["serverId"] == "doomed" && s["state"] == "lost")
    })
    .await;
    let ticket = enqueue(
        &cp.http(),
        json!({"queueKey": "counter", "members": ["orphan"]}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, status) = get(&format!("{}/v1/matchmaking/status/{ticket}", cp.http())).await;
    assert_eq!(status["status"], "queued");
}

#[tokio::test]
async fn sigterm_drains_then_deregisters() {
    let cp = control_plane(&[]).await;
    let mut gs = game_server(
        &cp.http(),
        &["--server-id", "leaving", "--drain-timeout", "2s"],
    )
    .await;
    live(&cp, "leaving").await;
    let ticket = enqueue(
        &cp.http(),
        json!({"queueKey": "counter", "members": ["stayer"]}),
    )
    .await;
    let assignment = poll_assignment(&cp.http(), &ticket, SECONDS_30).await;
    let mut player = ws(&join_url(&assignment, "stayer")).await;
    next_of(&mut player, "join.ok").await;

    gs.sigterm();
    wait_servers(&cp.http(), SECONDS_30, |servers| {
        servers
            .iter()
            .any(|s| s["serverId"] == "leaving" && s["state"] == "draining")
    })
    .await;
    // While draining it gets no new land.
    let waiting = enqueue(
        &cp.http(),
        json!({"queueKey": "counter", "members": ["newcomer"]}),
    )
    .await;
    // The land outlives the drain timeout; then the server deregisters and closes it.
    wait_servers(&cp.http(), SECONDS_30, |servers| servers.is_empty()).await;
    let closed = next_of(&mut player, "land.closed").await;
    assert!(closed["data"]["reason"].is_string());
    assert!(gs.wait_exit(SECONDS_30).await.success());
    let (_, status) = get(&format!("{}/v1/matchmaking/status/{waiting}", cp.http())).await;
    assert_eq!(status["status"], "queued");
}

#[tokio::test]
async fn capacity_one_servers_get_one_match_each_and_the_third_waits() {
    let cp = control_plane(&[]).await;
    let _a = game_server(&cp.http(), &["--server-id", "gs-a", "--max-lands", "1"]).await;
    let _b = game_server(&cp.http(), &["--server-id", "gs-b", "--max-lands", "1"]).await;
    live(&cp, "gs-a").await;
    live(&cp, "gs-b").await;
    let mut tickets = Vec::new();
    for player in ["a1", "a2", "b1", "b2", "c1", "c2"] {
        tickets.push(
            enqueue(
                &cp.http(),
                json!({"queueKey": "counter:2", "members": [player]}),
            )
            .await,
        );
    }
    let first = poll_assignment(&cp.http(), &tickets[0], SECONDS_30).await;
    let second = poll_assignment(&cp.http(), &tickets[2], SECONDS_30).await;
    assert_ne!(first["serverId"], second["serverId"], "one land per server");
    // Heartbeats keep arriving (every second) without the lands opening; the
    // allocations still count until their assignments expire.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for ticket in &tickets[4..] {
        let (_, status) = get(&format!("{}/v1/matchmaking/status/{ticket}", cp.http())).await;
        assert_eq!(status["status"], "queued");
    }
}

/// The game server's admin: a bearer from anywhere once `--admin-token` is set; without
/// one, only clients on this host, never what a proxy forwards.
#[tokio::test]
async fn game_server_admin_needs_its_token_or_a_local_client() {
    let mut with_token = dev_game_server(&["--admin-token", ADMIN_TOKEN]).await;
    let url = format!("{}/admin/lands", with_token.http());
    for bearer in [None, Some("wrong-admin-token-0123")] {
        let reply = call(reqwest::Method::GET, &url, bearer, None).await;
        assert_eq!(reply.status, 401, "{bearer:?}: {:?}", reply.body);
        assert_eq!(reply.error_code(), Some("UNAUTHENTICATED"));
        assert_eq!(reply.headers["www-authenticate"], "Bearer");
    }
    let reply = call(reqwest::Method::GET, &url, Some(ADMIN_TOKEN), None).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.body["lands"], json!([]));
    assert_alive(&mut with_token).await;

    let mut loopback_only = dev_game_server(&[]).await;
    loopback_only
        .wait_log(
            "no admin token: /admin/* answers only to clients on this host (loopback, not \
             through a proxy) until --admin-token or --admin-token-file is set",
            Duration::from_secs(5),
        )
        .await;
    let url = format!("{}/admin/lands", loopback_only.http());
    let (status, body) = get(&url).await;
    assert_eq!(status, 200, "from this host: {body}");
    let proxied = reqwest::Client::new()
        .get(&url)
        .header("x-forwarded-for", "203.0.113.7")
        .send()
        .await
        .unwrap();
    assert_eq!(
        proxied.status(),
        401,
        "a proxy on this host speaks for others"
    );
    assert_alive(&mut loopback_only).await;
}
