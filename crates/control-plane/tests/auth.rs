//! Who may call what: admin token, registration tokens bound to server ids,
//! generated credential files, and player JWTs checked against a local JWKS.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use common::Harness;
use futures_util::{SinkExt, StreamExt};
use matchplane_control_plane::{Config, ControlPlane, CredentialSource, PlayerAuth, StorageConfig};
use p256::pkcs8::EncodePrivateKey as _;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const TOKEN_A: &str = "registration-token-aaaaaaaaaaaa";
const TOKEN_B: &str = "registration-token-bbbbbbbbbbbb";

async fn call(
    h: &Harness,
    method: reqwest::Method,
    path: &str,
    bearer: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = h.http.request(method, h.url(path));
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn admin_routes_need_the_admin_token() {
    let h = Harness::start().await;
    let admin = h.cp.admin_token();
    let routes = [
        (reqwest::Method::GET, "/v1/admin/servers", None),
        (reqwest::Method::GET, "/v1/admin/queue/summary", None),
        (
            reqwest::Method::POST,
            "/v1/admin/keys/rotate",
            Some(json!({})),
        ),
        (
            reqwest::Method::POST,
            "/v1/internal/backfill",
            Some(json!({"queueKey": "q"})),
        ),
    ];
    let kid_before = h.jwks().await.keys.len();
    for (method, path, body) in &routes {
        for bearer in [None, Some("not-the-admin-token-at-all"), Some("")] {
            let (status, reply) = call(&h, method.clone(), path, bearer, body.clone()).await;
            assert_eq!(status, 401, "{method} {path} with {bearer:?}: {reply}");
            assert_eq!(reply["error"]["code"], "UNAUTHENTICATED", "{reply}");
        }
    }
    // Nothing happened: no rotation took place.
    assert_eq!(h.jwks().await.keys.len(), kid_before);
    let (status, _) = call(
        &h,
        reqwest::Method::GET,
        "/v1/admin/servers",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(status, 200);
    // Open routes stay open.
    for path in ["/health", "/.well-known/jwks.json", "/metrics"] {
        let (status, _) = call(&h, reqwest::Method::GET, path, None, None).await;
        assert_eq!(status, 200, "{path}");
    }
}

#[tokio::test]
async fn provisioning_needs_a_registration_token_and_ids_stay_with_their_credential() {
    let mut config = Config::ephemeral_for_tests();
    config.registration_token = CredentialSource::Value(format!("{TOKEN_A},{TOKEN_B}"));
    let h = Harness::start_with(config).await;
    let register = "/v1/provisioning/servers/register";
    let body = json!({"serverId": "game-1", "host": "127.0.0.1", "port": 9000, "landType": "t"});

    for bearer in [None, Some("wrong-registration-token-xxxx")] {
        let (status, reply) = call(
            &h,
            reqwest::Method::POST,
            register,
            bearer,
            Some(body.clone()),
        )
        .await;
        assert_eq!(status, 401, "{reply}");
        assert_eq!(reply["success"], false);
        assert_eq!(reply["error"]["code"], "UNAUTHENTICATED");
        assert_eq!(reply["error"]["retryable"], false);
    }
    let (status, reply) = call(
        &h,
        reqwest::Method::DELETE,
        "/v1/provisioning/servers/game-1",
        None,
        None,
    )
    .await;
    assert_eq!(
        (status, reply["error"]["code"].clone()),
        (401, json!("UNAUTHENTICATED"))
    );

    let (status, _) = call(
        &h,
        reqwest::Method::POST,
        register,
        Some(TOKEN_A),
        Some(body.clone()),
    )
    .await;
    assert_eq!(status, 200);
    // Another accepted credential cannot take the id over or delete it.
    let hijack = json!({"serverId": "game-1", "host": "10.6.6.6", "port": 1, "landType": "t",
        "capacity": {"maxLands": 100000}});
    let (status, reply) = call(
        &h,
        reqwest::Method::POST,
        register,
        Some(TOKEN_B),
        Some(hijack),
    )
    .await;
    assert_eq!(status, 403, "{reply}");
    assert_eq!(reply["error"]["code"], "FORBIDDEN");
    let (status, reply) = call(
        &h,
        reqwest::Method::DELETE,
        "/v1/provisioning/servers/game-1",
        Some(TOKEN_B),
        None,
    )
    .await;
    assert_eq!(
        (status, reply["error"]["code"].clone()),
        (403, json!("FORBIDDEN"))
    );
    let (_, servers) = h.get("/v1/admin/servers").await;
    assert_eq!(servers["servers"][0]["host"], "127.0.0.1", "{servers}");

    // The owner heartbeats and deregisters as before.
    let (status, _) = call(
        &h,
        reqwest::Method::POST,
        register,
        Some(TOKEN_A),
        Some(body),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = call(
        &h,
        reqwest::Method::DELETE,
        "/v1/provisioning/servers/game-1",
        Some(TOKEN_A),
        None,
    )
    .await;
    assert_eq!(status, 200);
}

#[cfg(unix)]
#[tokio::test]
async fn generated_credentials_live_in_private_files_and_survive_restarts() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let config = || {
        let mut config = Config::ephemeral_for_tests();
        config.storage = StorageConfig::Durable {
            data_dir: data_dir.clone(),
        };
        config
    };
    let cp = ControlPlane::start(config()).await.unwrap();
    let (admin, registration) = (cp.admin_token(), cp.registration_token());
    cp.shutdown().await;
    let mode =
        |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data_dir), 0o700);
    for (file, token) in [
        ("admin-token", &admin),
        ("registration-token", &registration),
    ] {
        let path = data_dir.join(file);
        assert_eq!(mode(&path), 0o600, "{file}");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap().trim(),
            token.as_str()
        );
    }
    assert_ne!(admin, registration);
    assert!(admin.len() >= 32);
    // A restart reads the same files (the store lock is still held in-process,
    // so resolve the credentials the way a restarted control plane does).
    let again = matchplane_control_plane::auth::Auth::from_config(&config()).unwrap();
    assert_eq!(again.admin_token().unwrap().expose(), admin);
    assert_eq!(again.registration_token().unwrap().expose(), registration);
}

/// A tiny identity provider: one P-256 key published as a JWKS on 127.0.0.1.
struct IdentityProvider {
    key: jsonwebtoken::EncodingKey,
    kid: String,
    url: String,
    public: p256::ecdsa::VerifyingKey,
    jwk: Value,
}

impl IdentityProvider {
    async fn start() -> Self {
        let signing = p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng);
        let point = signing.verifying_key().to_encoded_point(false);
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let kid = "idp-key-1".to_owned();
        let jwk = json!({"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
            "x": b64(point.x().unwrap()), "y": b64(point.y().unwrap())});
        let jwks = json!({"keys": [jwk.clone()]});
        let app = axum::Router::new().route(
            "/jwks.json",
            axum::routing::get(move || {
                let jwks = jwks.clone();
                async move { axum::Json(jwks) }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let pem = signing.to_pkcs8_pem(Default::default()).unwrap();
        Self {
            key: jsonwebtoken::EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
            kid,
            url,
            public: *signing.verifying_key(),
            jwk,
        }
    }

    fn token_with(&self, claims: Value) -> String {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &claims, &self.key).unwrap()
    }

    fn token(&self, sub: &str) -> String {
        self.token_with(json!({"sub": sub, "iss": "idp", "aud": "game", "exp": now() + 600}))
    }

    /// Tokens for `sub` under this provider's kid that a naive verifier would accept
    /// without the private key (see [`matchplane_test_support::forgeries`]).
    fn forgeries(&self, sub: &str) -> Vec<(String, String)> {
        let claims = json!({"sub": sub, "iss": "idp", "aud": "game", "exp": now() + 600});
        matchplane_test_support::forgeries(
            &self.public,
            &self.jwk,
            &self.kid,
            &claims,
            &self.token(sub),
        )
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

async fn jwt_harness(idp: &IdentityProvider) -> Harness {
    let mut config = Config::ephemeral_for_tests();
    config.player_auth = PlayerAuth::Jwt {
        jwks_url: idp.url.clone(),
        issuer: "idp".to_owned(),
        audience: "game".to_owned(),
    };
    Harness::start_with(config).await
}

#[tokio::test]
async fn player_tokens_are_required_and_checked() {
    let idp = IdentityProvider::start().await;
    let h = jwt_harness(&idp).await;
    let enqueue = "/v1/matchmaking/enqueue";
    let body = json!({"queueKey": "q:1v1", "members": ["alice"]});

    let forger = IdentityProvider::start().await; // same kid, another key
    let refused =
        [
            None,
            Some("not-a-jwt".to_owned()),
            Some(forger.token("alice")),
            Some(idp.token_with(
                json!({"sub": "alice", "iss": "idp", "aud": "game", "exp": now() - 3600}),
            )),
            Some(idp.token_with(
                json!({"sub": "alice", "iss": "idp", "aud": "other-game", "exp": now() + 600}),
            )),
            Some(idp.token_with(
                json!({"sub": "alice", "iss": "someone-else", "aud": "game", "exp": now() + 600}),
            )),
            Some(idp.token_with(json!({"iss": "idp", "aud": "game", "exp": now() + 600}))),
        ];
    for token in &refused {
        let (status, reply) = call(
            &h,
            reqwest::Method::POST,
            enqueue,
            token.as_deref(),
            Some(body.clone()),
        )
        .await;
        assert_eq!(status, 401, "{token:?}: {reply}");
        assert_eq!(reply["error"]["code"], "UNAUTHENTICATED");
    }
    // The subject must be a member (the party leader).
    let (status, reply) = call(
        &h,
        reqwest::Method::POST,
        enqueue,
        Some(&idp.token("mallory")),
        Some(body.clone()),
    )
    .await;
    assert_eq!(
        (status, reply["error"]["code"].clone()),
        (403, json!("FORBIDDEN")),
        "{reply}"
    );

    let alice = idp.token("alice");
    let (status, reply) = call(
        &h,
        reqwest::Method::POST,
        enqueue,
        Some(&alice),
        Some(body.clone()),
    )
    .await;
    assert_eq!(status, 201, "{reply}");
    let ticket = reply["ticketId"].as_str().unwrap().to_owned();
    let status_path = format!("/v1/matchmaking/status/{ticket}");
    let (status, reply) = call(&h, reqwest::Method::GET, &status_path, Some(&alice), None).await;
    assert_eq!((status, reply["status"].clone()), (200, json!("queued")));

    // Another player cannot read or cancel it, and cannot tell it exists.
    let bob = idp.token("bob");
    let (status, reply) = call(&h, reqwest::Method::GET, &status_path, Some(&bob), None).await;
    assert_eq!(
        (status, reply["error"]["code"].clone()),
        (404, json!("TICKET_NOT_FOUND"))
    );
    let (status, reply) = call(&h, reqwest::Method::GET, &status_path, None, None).await;
    assert_eq!(
        (status, reply["error"]["code"].clone()),
        (401, json!("UNAUTHENTICATED"))
    );
    let cancel = json!({"ticketId": ticket});
    let (status, reply) = call(
        &h,
        reqwest::Method::POST,
        "/v1/matchmaking/cancel",
        Some(&bob),
        Some(cancel.clone()),
    )
    .await;
    assert_eq!(
        (status, reply["error"]["code"].clone()),
        (404, json!("TICKET_NOT_FOUND"))
    );
    let (_, reply) = call(&h, reqwest::Method::GET, &status_path, Some(&alice), None).await;
    assert_eq!(reply["status"], "queued", "bob's cancel changed nothing");

    // Realtime: no token → 401 before any upgrade; bob's socket cannot watch alice's ticket.
    let ws = format!("ws://{}/realtime?ticketId={ticket}", h.cp.local_addr());
    match tokio_tungstenite::connect_async(&ws).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 401)
        }
        other => panic!("expected a 401, got {other:?}"),
    }
    let (mut socket, _) = tokio_tungstenite::connect_async(format!("{ws}&access_token={bob}"))
        .await
        .unwrap();
    let event = next_text(&mut socket).await;
    assert_eq!(event["type"], "error", "{event}");
    assert_eq!(event["data"]["code"], "TICKET_NOT_FOUND", "{event}");
    // Alice's own socket (token in the header) sees her cancel.
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(ws).unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {alice}").parse().unwrap());
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(next_text(&mut socket).await["type"], "subscribed");
    let (status, reply) = call(
        &h,
        reqwest::Method::POST,
        "/v1/matchmaking/cancel",
        Some(&alice),
        Some(cancel),
    )
    .await;
    assert_eq!((status, reply["cancelled"].clone()), (201, json!(true)));
    assert_eq!(next_text(&mut socket).await["type"], "ticket.cancelled");
    socket.send(Message::Close(None)).await.ok();
}

async fn next_text(
    socket: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> Value {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("a message in time")
            .expect("socket open")
            .expect("no socket error");
        if let Message::Text(text) = message {
            return serde_json::from_str(&text).unwrap();
        }
    }
}

#[tokio::test]
async fn forged_player_tokens_are_refused_with_401_and_enqueue_nothing() {
    let idp = IdentityProvider::start().await;
    let h = jwt_harness(&idp).await;
    let enqueue = "/v1/matchmaking/enqueue";
    let body = json!({"queueKey": "q:1v1", "members": ["alice"]});
    let forged = idp.forgeries("alice");
    assert!(forged.len() > 20);
    for (what, token) in &forged {
        let (status, reply) = call(
            &h,
            reqwest::Method::POST,
            enqueue,
            Some(token),
            Some(body.clone()),
        )
        .await;
        assert_eq!(status, 401, "{what}: {reply}");
        assert_eq!(reply["error"]["code"], "UNAUTHENTICATED", "{what}: {reply}");
    }
    // The provider's genuine token for the same player is accepted.
    let (status, reply) = call(
        &h,
        reqwest::Method::POST,
        enqueue,
        Some(&idp.token("alice")),
        Some(body),
    )
    .await;
    assert_eq!(status, 201, "{reply}");
    // Only that one ticket is queued: no forgery got one in.
    let (_, summary) = h.get("/v1/admin/queue/summary").await;
    let queues = summary["queues"].as_array().unwrap();
    assert_eq!(queues.len(), 1, "{summary}");
    assert_eq!(queues[0]["queueKey"], "q:1v1", "{summary}");
    assert_eq!(queues[0]["queued"], 1, "{summary}");
}

/// The per-player bucket follows the token's subject, not the address: a player whose
/// requests arrive from many forwarded addresses is still limited, and only that player.
#[tokio::test]
async fn one_player_spread_over_many_addresses_is_rate_limited_and_others_are_not() {
    let idp = IdentityProvider::start().await;
    let mut config = Config::ephemeral_for_tests();
    config.player_auth = PlayerAuth::Jwt {
        jwks_url: idp.url.clone(),
        issuer: "idp".to_owned(),
        audience: "game".to_owned(),
    };
    // 2 per second with a burst of 4, per address and per player.
    config.rate_limit =
        matchplane_edge::ratelimit::RateLimit::PerSecond(std::num::NonZeroU32::new(2).unwrap());
    config.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    let h = Harness::start_with(config).await;
    let status_as = |player: String, client: String| {
        h.http
            .get(h.url("/v1/matchmaking/status/no-such-ticket"))
            .bearer_auth(player)
            .header("x-forwarded-for", client)
            .send()
    };
    let alice = idp.token("alice");
    let mut refused = None;
    // Each request from a fresh address: no address bucket ever runs dry.
    for sent in 0..40u32 {
        let response = status_as(alice.clone(), format!("198.51.100.{}", sent + 1))
            .await
            .unwrap();
        if response.status().as_u16() == 429 {
            assert!(sent >= 4, "refused within the burst, after {sent}");
            refused = Some(response);
            break;
        }
        assert_eq!(response.status().as_u16(), 404, "request {sent}");
    }
    let refused = refused.expect("40 requests of one player were never rate limited");
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
    let reply: Value = refused.json().await.unwrap();
    assert_eq!(reply["error"]["code"], "RATE_LIMITED", "{reply}");

    // Enqueue from yet another address is refused too: the bucket is the player's.
    let response = h
        .http
        .post(h.url("/v1/matchmaking/enqueue"))
        .bearer_auth(&alice)
        .header("x-forwarded-for", "198.51.100.200")
        .json(&json!({"queueKey": "q:1v1", "members": ["alice"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 429);
    assert!(response.headers().contains_key("retry-after"));

    // Bob, behind one of the addresses alice used, is unaffected.
    let bob = idp.token("bob");
    let response = status_as(bob.clone(), "198.51.100.1".to_owned())
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 404);
    let response = h
        .http
        .post(h.url("/v1/matchmaking/enqueue"))
        .bearer_auth(&bob)
        .header("x-forwarded-for", "198.51.100.2")
        .json(&json!({"queueKey": "q:1v1", "members": ["bob"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);
    h.cp.shutdown().await;
}
