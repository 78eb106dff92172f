//! The JWKS verifier against a stand-in control plane that counts fetches.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Json;
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{EncodingKey, Header};
use matchplane_runtime::{AdmissionRequest, Authenticator, JwksAuthenticator, JwksSettings};
use p256::pkcs8::{EncodePrivateKey, LineEnding};
use serde_json::{Value, json};

mod common;

struct Key {
    pem: String,
    jwk: Value,
    public: p256::ecdsa::VerifyingKey,
}

fn key(kid: &str) -> Key {
    let signing = p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng);
    let point = signing.verifying_key().to_encoded_point(false);
    Key {
        pem: signing.to_pkcs8_pem(LineEnding::LF).unwrap().to_string(),
        jwk: json!({"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
            "x": URL_SAFE_NO_PAD.encode(point.x().unwrap()), "y": URL_SAFE_NO_PAD.encode(point.y().unwrap())}),
        public: *signing.verifying_key(),
    }
}

fn token(key: &Key, kid: &str, land_id: &str) -> String {
    token_for_server(key, kid, land_id, "s")
}

fn token_for_server(key: &Key, kid: &str, land_id: &str, server_id: &str) -> String {
    token_for_instance(key, kid, land_id, server_id, None)
}

/// `instance`: the `serverInstanceId` claim, absent for a control plane that predates it.
fn token_for_instance(
    key: &Key,
    kid: &str,
    land_id: &str,
    server_id: &str,
    instance: Option<&str>,
) -> String {
    let mut header = Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(kid.to_owned());
    let mut claims = claims(land_id, server_id);
    if let Some(instance) = instance {
        claims["serverInstanceId"] = json!(instance);
    }
    jsonwebtoken::encode(
        &header,
        &claims,
        &EncodingKey::from_ec_pem(key.pem.as_bytes()).unwrap(),
    )
    .unwrap()
}

/// The claims of a valid match token for player `p1`, alive for another minute.
fn claims(land_id: &str, server_id: &str) -> Value {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 60;
    json!({"iss": "matchplane", "aud": "matchplane-game", "sub": "p1", "playerId": "p1",
        "members": ["p1"], "assignmentId": "a1", "landId": land_id, "landType": "counter", "serverId": server_id,
        "iat": exp - 60, "exp": exp, "jti": "a1", "matchId": "m1", "roster": [["p1"]]})
}

/// Tokens for `signer`'s kid that a naive verifier would accept without the private
/// key (see [`matchplane_test_support::forgeries`]).
fn forgeries(signer: &Key, kid: &str, land_id: &str) -> Vec<(String, String)> {
    matchplane_test_support::forgeries(
        &signer.public,
        &signer.jwk,
        kid,
        &claims(land_id, "s"),
        &token(signer, kid, land_id),
    )
}

/// Serves `keys` as a JWKS and counts the requests.
async fn stand_in(keys: Arc<parking_lot::Mutex<Vec<Value>>>, hits: Arc<AtomicUsize>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    stand_in_on(listener, keys, hits).await
}

async fn stand_in_on(
    listener: tokio::net::TcpListener,
    keys: Arc<parking_lot::Mutex<Vec<Value>>>,
    hits: Arc<AtomicUsize>,
) -> String {
    let app = axum::Router::new().route(
        "/.well-known/jwks.json",
        get(move || {
            let keys = Arc::clone(&keys);
            let hits = Arc::clone(&hits);
            async move {
                hits.fetch_add(1, Ordering::SeqCst);
                Json(json!({"keys": keys.lock().clone()}))
            }
        }),
    );
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

async fn admit(verifier: &JwksAuthenticator, token: &str, land_id: &str) -> Result<String, u16> {
    let query = HashMap::from([("token".to_owned(), token.to_owned())]);
    let request = AdmissionRequest {
        server_id: "s",
        server_instance_id: "instance-now",
        land_type: "counter",
        land_id: Some(land_id),
        query: &query,
    };
    verifier
        .authenticate(&request)
        .await
        .map(|admission| admission.player_id)
        .map_err(|rejection| rejection.close_code)
}

#[tokio::test]
async fn unknown_kids_refetch_at_most_once_per_cooldown_and_rotations_are_picked_up() {
    let first = key("k1");
    let keys = Arc::new(parking_lot::Mutex::new(vec![first.jwk.clone()]));
    let hits = Arc::new(AtomicUsize::new(0));
    let url = stand_in(Arc::clone(&keys), Arc::clone(&hits)).await;
    let mut settings = JwksSettings::new(url);
    settings.refetch_cooldown = Duration::from_millis(300);
    let verifier = JwksAuthenticator::new(settings);

    // First token: cache empty → one fetch, admitted; the token's claims hold.
    assert_eq!(
        admit(&verifier, &token(&first, "k1", "counter:1"), "counter:1").await,
        Ok("p1".to_owned())
    );
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    // Cached: no more fetches.
    assert_eq!(
        admit(&verifier, &token(&first, "k1", "counter:1"), "counter:1").await,
        Ok("p1".to_owned())
    );
    assert_eq!(hits.load(Ordering::SeqCst), 1);

    // A flood of tokens with unknown kids costs at most one fetch per cooldown.
    let forger = key("evil");
    for attempt in 0..20 {
        let kid = format!("evil-{attempt}");
        assert_eq!(
            admit(&verifier, &token(&forger, &kid, "counter:1"), "counter:1").await,
            Err(4401)
        );
    }
    assert!(
        hits.load(Ordering::SeqCst) <= 2,
        "hits: {}",
        hits.load(Ordering::SeqCst)
    );

    // The control plane rotates: once the cooldown has passed the new kid is fetched.
    let second = key("k2");
    keys.lock().push(second.jwk.clone());
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(
        admit(&verifier, &token(&second, "k2", "counter:2"), "counter:2").await,
        Ok("p1".to_owned())
    );

    // Keys the control plane stops publishing stop being trusted after a refresh.
    keys.lock().retain(|jwk| jwk["kid"] == "k2");
    verifier.refresh().await.unwrap();
    assert_eq!(verifier.cached_keys(), 1);
    assert_eq!(
        admit(&verifier, &token(&first, "k1", "counter:1"), "counter:1").await,
        Err(4401)
    );
    // A token for another land than the one asked for is forbidden.
    assert_eq!(
        admit(&verifier, &token(&second, "k2", "counter:2"), "counter:3").await,
        Err(4403)
    );
}

#[tokio::test]
async fn a_control_plane_that_comes_up_late_is_not_shut_out_by_the_cooldown() {
    // Reserve a port, then leave it closed: the control plane is "not up yet".
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut settings = JwksSettings::new(format!("http://127.0.0.1:{port}"));
    settings.refetch_cooldown = Duration::from_secs(3600);
    let verifier = JwksAuthenticator::new(settings);
    let first = key("k1");
    let good = token(&first, "k1", "counter:1");
    assert_eq!(
        admit(&verifier, &good, "counter:1").await,
        Err(4401),
        "nothing to verify against yet"
    );

    let keys = Arc::new(parking_lot::Mutex::new(vec![first.jwk.clone()]));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    stand_in_on(listener, keys, Arc::new(AtomicUsize::new(0))).await;
    // Right after the failed fetch, as when the players of the first match arrive
    // while the server's first retry is still due: the token waits for the retry
    // (not the full 1 h cooldown), and is admitted.
    assert_eq!(
        admit(&verifier, &good, "counter:1").await,
        Ok("p1".to_owned())
    );
}

#[tokio::test]
async fn while_the_key_server_fails_a_burst_of_joins_costs_a_retry_or_two() {
    // A key server that answers every fetch with 503, and counts them.
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&hits);
    let app = axum::Router::new().route(
        "/.well-known/jwks.json",
        get(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            async { axum::http::StatusCode::SERVICE_UNAVAILABLE }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let verifier = Arc::new(JwksAuthenticator::new(JwksSettings::new(format!(
        "http://{addr}"
    ))));
    let signer = key("k1");
    let good = token(&signer, "k1", "counter:1");
    // Twenty joins at once: each waits for at most one retry made after it came,
    // and is refused when that retry fails too; they share the retries.
    let joins: Vec<_> = (0..20)
        .map(|_| {
            let verifier = Arc::clone(&verifier);
            let good = good.clone();
            tokio::spawn(async move { admit(&verifier, &good, "counter:1").await })
        })
        .collect();
    for join in joins {
        assert_eq!(join.await.unwrap(), Err(4401));
    }
    let fetches = hits.load(Ordering::SeqCst);
    assert!((1..=3).contains(&fetches), "{fetches} fetches for 20 joins");
}

/// A match token names the server it was allocated to: a token minted for server A must
/// not open (a second copy of) its land on server B.
#[tokio::test]
async fn a_token_for_another_game_server_is_refused_with_4403() {
    use common::{Client, TestServer, closed, test_limits};
    use matchplane_runtime::counter::Counter;
    use matchplane_runtime::{GameServerConfig, LandRegistry};

    let signer = key("k1");
    let keys = Arc::new(parking_lot::Mutex::new(vec![signer.jwk.clone()]));
    let url = stand_in(keys, Arc::new(AtomicUsize::new(0))).await;
    let start = |server_id: &'static str| {
        let url = url.clone();
        async move {
            let verifier = Arc::new(JwksAuthenticator::new(JwksSettings::new(url)));
            let config = GameServerConfig {
                server_id: server_id.to_owned(),
                limits: test_limits(),
                ..GameServerConfig::default()
            };
            TestServer::start_with_config(
                LandRegistry::new().register::<Counter>("counter", ()),
                verifier,
                config,
            )
            .await
        }
    };
    let server_a = start("game-a").await;
    let server_b = start("game-b").await;
    let for_a = token_for_server(&signer, "k1", "counter:m1", "game-a");
    let query = format!("landId=counter:m1&token={for_a}");

    let mut on_b = Client::open(&server_b.url("counter", &query)).await;
    let refused = closed(&mut on_b).await;
    assert_eq!(refused.code, Some(4403));
    assert_eq!(refused.errors, vec!["forbidden".to_owned()]);
    assert_eq!(server_b.server.manager().load().lands, 0, "no land on B");

    let on_a = Client::connect(&server_a.url("counter", &query)).await;
    assert_eq!(on_a.land_id, "counter:m1");
    assert_eq!(server_a.get_json("/health").await["lands"], 1);
    assert_eq!(server_b.get_json("/health").await["status"], "ok");
    server_a.shutdown().await.unwrap();
    server_b.shutdown().await.unwrap();
}

/// A server restarted under the same `--server-id` is a new instance: the tokens of lands
/// that died with its previous instance are refused with 4404 `land_lost`, so a requeued
/// player cannot also rejoin the old match there; a token without the claim (an older
/// control plane) is still admitted.
#[tokio::test]
async fn a_token_for_an_earlier_instance_of_this_server_is_refused_with_4404_land_lost() {
    use common::{Client, TestServer, closed, test_limits};
    use matchplane_runtime::counter::Counter;
    use matchplane_runtime::{GameServerConfig, LandRegistry};

    let signer = key("k1");
    let keys = Arc::new(parking_lot::Mutex::new(vec![signer.jwk.clone()]));
    let url = stand_in(keys, Arc::new(AtomicUsize::new(0))).await;
    let start = |instance_id: &'static str| {
        let url = url.clone();
        async move {
            let verifier = Arc::new(JwksAuthenticator::new(JwksSettings::new(url)));
            let config = GameServerConfig {
                server_id: "game-a".to_owned(),
                instance_id: instance_id.to_owned(),
                limits: test_limits(),
                ..GameServerConfig::default()
            };
            TestServer::start_with_config(
                LandRegistry::new().register::<Counter>("counter", ()),
                verifier,
                config,
            )
            .await
        }
    };
    let before_restart = start("instance-1").await;
    let after_restart = start("instance-2").await;
    assert_eq!(after_restart.server.instance_id(), "instance-2");
    let old = token_for_instance(&signer, "k1", "counter:m1", "game-a", Some("instance-1"));
    let old_query = format!("landId=counter:m1&token={old}");

    let mut refused = Client::open(&after_restart.url("counter", &old_query)).await;
    let refused = closed(&mut refused).await;
    assert_eq!(refused.code, Some(4404));
    assert_eq!(refused.errors, vec!["land_lost".to_owned()]);
    assert_eq!(
        after_restart.server.manager().load().lands,
        0,
        "no land resurrected"
    );

    // The instance the token was minted for admits it.
    let admitted = Client::connect(&before_restart.url("counter", &old_query)).await;
    assert_eq!(admitted.land_id, "counter:m1");

    // Tokens for the current instance, and tokens without the claim, are admitted.
    let current = token_for_instance(&signer, "k1", "counter:m2", "game-a", Some("instance-2"));
    let on_current = Client::connect(
        &after_restart.url("counter", &format!("landId=counter:m2&token={current}")),
    )
    .await;
    assert_eq!(on_current.land_id, "counter:m2");
    let legacy = token_for_instance(&signer, "k1", "counter:m3", "game-a", None);
    let on_legacy = Client::connect(
        &after_restart.url("counter", &format!("landId=counter:m3&token={legacy}")),
    )
    .await;
    assert_eq!(on_legacy.land_id, "counter:m3");
    drop((admitted, on_current, on_legacy));
    before_restart.shutdown().await.unwrap();
    after_restart.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_authenticator_compares_the_instance_claim_with_the_requests_instance() {
    let signer = key("k1");
    let keys = Arc::new(parking_lot::Mutex::new(vec![signer.jwk.clone()]));
    let url = stand_in(keys, Arc::new(AtomicUsize::new(0))).await;
    let verifier = JwksAuthenticator::new(JwksSettings::new(url));
    let for_instance =
        |instance: Option<&str>| token_for_instance(&signer, "k1", "counter:1", "s", instance);
    assert_eq!(
        admit(&verifier, &for_instance(Some("instance-now")), "counter:1").await,
        Ok("p1".to_owned())
    );
    assert_eq!(
        admit(
            &verifier,
            &for_instance(Some("instance-before")),
            "counter:1"
        )
        .await,
        Err(4404)
    );
    assert_eq!(
        admit(&verifier, &for_instance(None), "counter:1").await,
        Ok("p1".to_owned())
    );
}

#[tokio::test]
async fn alg_none_and_hmac_keyed_with_the_public_key_are_refused() {
    let signer = key("k1");
    let keys = Arc::new(parking_lot::Mutex::new(vec![signer.jwk.clone()]));
    let url = stand_in(keys, Arc::new(AtomicUsize::new(0))).await;
    let verifier = JwksAuthenticator::new(JwksSettings::new(url));
    // The key is known and trusted: a refusal below is about the forgery alone.
    assert_eq!(
        admit(&verifier, &token(&signer, "k1", "counter:1"), "counter:1").await,
        Ok("p1".to_owned())
    );
    let forged = forgeries(&signer, "k1", "counter:1");
    assert!(forged.len() > 20);
    for (what, token) in &forged {
        assert_eq!(
            admit(&verifier, token, "counter:1").await,
            Err(4401),
            "{what}: {token}"
        );
    }
}

#[tokio::test]
async fn a_game_server_closes_forged_tokens_with_4401_and_creates_no_land() {
    use common::{Client, TestServer, closed, test_limits};
    use matchplane_runtime::counter::Counter;
    use matchplane_runtime::{GameServerConfig, LandRegistry};

    let signer = key("k1");
    let keys = Arc::new(parking_lot::Mutex::new(vec![signer.jwk.clone()]));
    let url = stand_in(keys, Arc::new(AtomicUsize::new(0))).await;
    let verifier = Arc::new(JwksAuthenticator::new(JwksSettings::new(url)));
    let config = GameServerConfig {
        server_id: "s".to_owned(),
        limits: test_limits(),
        ..GameServerConfig::default()
    };
    let server = TestServer::start_with_config(
        LandRegistry::new().register::<Counter>("counter", ()),
        verifier,
        config,
    )
    .await;
    for (what, token) in forgeries(&signer, "k1", "counter:m1") {
        let mut socket =
            Client::open(&server.url("counter", &format!("landId=counter:m1&token={token}"))).await;
        let refused = closed(&mut socket).await;
        assert_eq!(refused.code, Some(4401), "{what}: {refused:?}");
        assert_eq!(refused.errors, vec!["unauthenticated".to_owned()], "{what}");
        assert_eq!(server.server.manager().load().lands, 0, "{what}: no land");
    }
    // The genuine token opens the land the forgeries could not.
    let genuine = token(&signer, "k1", "counter:m1");
    let admitted =
        Client::connect(&server.url("counter", &format!("landId=counter:m1&token={genuine}")))
            .await;
    assert_eq!(admitted.player_id, "p1");
    assert_eq!(server.server.manager().load().lands, 1);
    drop(admitted);
    server.shutdown().await.unwrap();
}

/// The 4403 of a token for another server reaches a client whose frames were already
/// on their way, and one that keeps sending.
#[tokio::test]
async fn a_token_for_another_game_server_is_refused_with_4403_while_the_client_keeps_sending() {
    use common::{Client, TestServer, flood, open_already_sending, test_limits};
    use matchplane_runtime::counter::Counter;
    use matchplane_runtime::{GameServerConfig, LandRegistry};
    use tokio_tungstenite::tungstenite::Message;

    let signer = key("k1");
    let keys = Arc::new(parking_lot::Mutex::new(vec![signer.jwk.clone()]));
    let url = stand_in(keys, Arc::new(AtomicUsize::new(0))).await;
    let config = GameServerConfig {
        server_id: "game-b".to_owned(),
        limits: test_limits(),
        ..GameServerConfig::default()
    };
    let server = TestServer::start_with_config(
        LandRegistry::new().register::<Counter>("counter", ()),
        Arc::new(JwksAuthenticator::new(JwksSettings::new(url))),
        config,
    )
    .await;
    let for_a = token_for_server(&signer, "k1", "counter:m1", "game-a");
    let query = format!("landId=counter:m1&token={for_a}");
    for attempt in 0..3 {
        let socket = if attempt == 0 {
            Client::open(&server.url("counter", &query)).await
        } else {
            open_already_sending(server.addr, &format!("/game/counter?{query}"), 1000).await
        };
        let outcome = flood(socket, || Message::text("let me in")).await;
        assert_eq!(outcome.code, Some(4403), "attempt {attempt}: {outcome:?}");
        assert_eq!(outcome.errors, vec!["forbidden".to_owned()], "{outcome:?}");
    }
    assert_eq!(server.server.manager().load().lands, 0);
    server.shutdown().await.unwrap();
}
