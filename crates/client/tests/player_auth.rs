//! The SDK against a control plane running with `--player-auth jwt`: player tokens on
//! REST and on the `/realtime` handshake, and the typed errors of refusals.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::num::NonZeroU32;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use common::{Planes, fast_hero_defense, init_tracing};
use matchplane_client::contracts::ErrorCode;
use matchplane_client::contracts::matchmaking::TicketStatus;
use matchplane_client::contracts::realtime::RealtimeEvent;
use matchplane_client::{Delivery, MatchmakingClient, MatchmakingError, PollBackoff};
use matchplane_control_plane::{Config, PlayerAuth};
use matchplane_edge::ratelimit::RateLimit;
use p256::pkcs8::EncodePrivateKey as _;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(10);
const ISSUER: &str = "test-idp";
const AUDIENCE: &str = "test-game";

/// An identity provider on 127.0.0.1: one P-256 key, published as a JWKS.
struct IdentityProvider {
    key: jsonwebtoken::EncodingKey,
    jwks_url: String,
}

impl IdentityProvider {
    const KID: &str = "player-key";

    async fn start() -> Self {
        let signing = p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng);
        let point = signing.verifying_key().to_encoded_point(false);
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let jwks = json!({"keys": [{
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": Self::KID,
            "x": b64(point.x().unwrap()), "y": b64(point.y().unwrap()),
        }]});
        let app = axum::Router::new().route(
            "/jwks.json",
            axum::routing::get(move || std::future::ready(axum::Json(jwks.clone()))),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let jwks_url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let pem = signing.to_pkcs8_pem(Default::default()).unwrap();
        Self {
            key: jsonwebtoken::EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
            jwks_url,
        }
    }

    fn token(&self, player: &str) -> String {
        let exp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 600;
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(Self::KID.to_owned());
        let claims = json!({"sub": player, "iss": ISSUER, "aud": AUDIENCE, "exp": exp});
        jsonwebtoken::encode(&header, &claims, &self.key).unwrap()
    }

    fn config(&self) -> Config {
        let mut config = Config::ephemeral_for_tests();
        config.player_auth = PlayerAuth::Jwt {
            jwks_url: self.jwks_url.clone(),
            issuer: ISSUER.to_owned(),
            audience: AUDIENCE.to_owned(),
        };
        config
    }
}

#[tokio::test]
async fn the_journey_works_with_player_tokens() {
    init_tracing();
    let idp = IdentityProvider::start().await;
    let planes = Planes::start_configured(fast_hero_defense(), idp.config(), None).await;
    let alice_token = idp.token("alice");
    let alice = MatchmakingClient::new(planes.cp_url()).with_player_token(alice_token.clone());
    assert!(!format!("{alice:?}").contains(&alice_token));
    let bob_token = idp.token("bob");
    let bob = MatchmakingClient::new(planes.cp_url())
        .with_player_token_provider(move || Some(bob_token.clone()));

    let ticket = alice.enqueue_solo("counter:1v1", "alice").await.unwrap();
    assert_eq!(ticket.status, TicketStatus::Queued);
    let waiting = {
        let alice = alice.clone();
        let ticket = ticket.ticket_id.clone();
        tokio::spawn(async move { alice.wait_for_assignment_via(&ticket, WAIT).await })
    };
    let bob_ticket = bob.enqueue_solo("counter:1v1", "bob").await.unwrap();
    // Push, not polling: the `/realtime` handshake carried the token in its header
    // (without it the control plane answers 401 and the SDK would fall back to polling).
    let (assignment, via) = waiting.await.unwrap().unwrap();
    assert_eq!(via, Delivery::Push);
    let status = alice.status(&ticket.ticket_id).await.unwrap();
    assert_eq!(status.status, TicketStatus::Assigned);
    assert_eq!(status.assignment.as_ref(), Some(&assignment));
    let (bob_assignment, via) = bob
        .wait_for_assignment_via(&bob_ticket.ticket_id, WAIT)
        .await
        .unwrap();
    assert_eq!(via, Delivery::Push);
    assert_eq!(bob_assignment.land_id, assignment.land_id);

    // Another player's ticket does not exist for bob.
    let err = bob.status(&ticket.ticket_id).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::TicketNotFound), "{err:?}");

    // A watch socket authenticates the same way and gets the final event at once.
    let mut watch = alice.watch().await.unwrap();
    watch.subscribe(&ticket.ticket_id).unwrap();
    match tokio::time::timeout(WAIT, watch.next_event())
        .await
        .unwrap()
    {
        Some(RealtimeEvent::MatchAssigned(pushed)) => {
            assert_eq!(pushed.assignment, assignment);
        }
        other => panic!("unexpected {other:?}"),
    }
    watch.close().await;
    planes.stop().await;
}

#[tokio::test]
async fn missing_or_refused_tokens_are_typed_errors() {
    init_tracing();
    let idp = IdentityProvider::start().await;
    let planes = Planes::start_configured(fast_hero_defense(), idp.config(), None).await;
    let anonymous = MatchmakingClient::new(planes.cp_url());
    let unauthenticated =
        |err: &MatchmakingError| matches!(err, MatchmakingError::Unauthenticated { .. });

    let err = anonymous
        .enqueue_solo("counter:1v1", "alice")
        .await
        .unwrap_err();
    assert!(unauthenticated(&err), "{err:?}");
    assert_eq!(err.code(), Some(ErrorCode::Unauthenticated));
    assert!(!err.is_retryable());
    let err = anonymous.status("some-ticket").await.unwrap_err();
    assert!(unauthenticated(&err), "{err:?}");
    let err = anonymous.cancel("some-ticket").await.unwrap_err();
    assert!(unauthenticated(&err), "{err:?}");
    let err = anonymous.watch().await.unwrap_err();
    assert!(unauthenticated(&err), "{err:?}");
    // Push is refused at the handshake and polling would be too: the wait says so at
    // once instead of running into its timeout.
    let err = anonymous
        .wait_for_assignment("some-ticket", WAIT)
        .await
        .unwrap_err();
    assert!(unauthenticated(&err), "{err:?}");

    let garbage = MatchmakingClient::new(planes.cp_url()).with_player_token("not-a-jwt");
    let err = garbage
        .enqueue_solo("counter:1v1", "alice")
        .await
        .unwrap_err();
    assert!(unauthenticated(&err), "{err:?}");
    // A refreshed token set on a clone is what every clone sends next.
    garbage.clone().set_player_token(idp.token("alice"));
    let ticket = garbage.enqueue_solo("counter:2v2", "alice").await.unwrap();
    assert_eq!(
        garbage.status(&ticket.ticket_id).await.unwrap().status,
        TicketStatus::Queued
    );
    garbage.clear_player_token();
    let err = garbage.status(&ticket.ticket_id).await.unwrap_err();
    assert!(unauthenticated(&err), "{err:?}");

    // A valid token whose player is not a member of the ticket.
    let mallory = MatchmakingClient::new(planes.cp_url()).with_player_token(idp.token("mallory"));
    let err = mallory
        .enqueue_solo("counter:1v1", "alice")
        .await
        .unwrap_err();
    assert!(matches!(err, MatchmakingError::Forbidden { .. }), "{err:?}");
    assert_eq!(err.code(), Some(ErrorCode::Forbidden));
    planes.stop().await;
}

#[tokio::test]
async fn a_second_ticket_names_the_queued_one() {
    init_tracing();
    let idp = IdentityProvider::start().await;
    let planes = Planes::start_configured(fast_hero_defense(), idp.config(), None).await;
    let alice = MatchmakingClient::new(planes.cp_url()).with_player_token(idp.token("alice"));
    let first = alice.enqueue_solo("counter:2v2", "alice").await.unwrap();
    let err = alice
        .enqueue_solo("counter:1v1", "alice")
        .await
        .unwrap_err();
    match &err {
        MatchmakingError::PlayerAlreadyQueued { ticket_id, .. } => {
            assert_eq!(ticket_id.as_deref(), Some(first.ticket_id.as_str()));
        }
        other => panic!("expected PlayerAlreadyQueued, got {other:?}"),
    }
    assert_eq!(err.code(), Some(ErrorCode::PlayerAlreadyQueued));
    assert!(!err.is_retryable());
    // Once the first ticket is cancelled, the player may queue again.
    assert!(alice.cancel(&first.ticket_id).await.unwrap().cancelled);
    alice.enqueue_solo("counter:1v1", "alice").await.unwrap();
    planes.stop().await;
}

#[tokio::test]
async fn rate_limits_are_typed_and_waited_out() {
    init_tracing();
    let idp = IdentityProvider::start().await;
    let mut config = idp.config();
    // One request per second (burst 2) per address: every client here is 127.0.0.1.
    config.rate_limit = RateLimit::PerSecond(NonZeroU32::MIN);
    config.trusted_proxies = Vec::new();
    let planes = Planes::start_configured(fast_hero_defense(), config, None).await;
    let client = |player: &str| {
        MatchmakingClient::new(planes.cp_url())
            .with_player_token(idp.token(player))
            .with_push(false)
    };

    let impatient = client("alice").with_rate_limit_retries(0);
    let ticket = impatient
        .enqueue_solo("counter:1v1", "alice")
        .await
        .unwrap();
    let mut refused = None;
    for _ in 0..10 {
        if let Err(err) = impatient.status(&ticket.ticket_id).await {
            refused = Some(err);
            break;
        }
    }
    let refused = refused.expect("the bucket runs dry within a few requests");
    match refused {
        MatchmakingError::RateLimited { retry_after } => {
            assert!(retry_after >= Duration::from_secs(1), "{retry_after:?}");
        }
        ref other => panic!("expected RateLimited, got {other:?}"),
    }
    assert_eq!(refused.code(), Some(ErrorCode::RateLimited));
    assert!(refused.is_retryable());

    // The bucket is empty now: enqueue and polling wait out the refusals.
    let bob = client("bob").enqueue_solo("counter:1v1", "bob").await;
    assert_eq!(bob.unwrap().status, TicketStatus::Queued);
    let (assignment, via) = client("alice")
        .wait_for_assignment_via(&ticket.ticket_id, WAIT)
        .await
        .unwrap();
    assert_eq!(via, Delivery::Poll);
    assert!(assignment.land_id.starts_with("counter:"));

    // Retries are bounded: polling faster than the limit ends with the refusal, not
    // with the wait's timeout.
    let carol = client("carol");
    let lonely = carol.enqueue_solo("counter:2v2", "carol").await.unwrap();
    let err = carol
        .with_rate_limit_retries(0)
        .with_poll_backoff(PollBackoff {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(20),
            factor: 1.0,
        })
        .wait_for_assignment(&lonely.ticket_id, WAIT)
        .await
        .unwrap_err();
    assert!(
        matches!(err, MatchmakingError::RateLimited { .. }),
        "{err:?}"
    );
    planes.stop().await;
}
