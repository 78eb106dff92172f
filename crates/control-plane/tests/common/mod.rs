//! Test harness: a real control plane on 127.0.0.1:0 with a manual clock.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{DecodingKey, Validation};
use matchplane_contracts::jwks::JwkSet;
use matchplane_contracts::token::MatchClaims;
use matchplane_control_plane::{Config, ControlPlane, ManualClock};
use serde_json::{Value, json};

pub struct Harness {
    pub cp: ControlPlane,
    pub clock: ManualClock,
    pub http: reqwest::Client,
    pub base: String,
}

impl Harness {
    pub async fn start() -> Self {
        Self::start_with(Config::ephemeral_for_tests()).await
    }

    pub async fn start_with(config: Config) -> Self {
        Self::start_on(ControlPlane::builder(config)).await
    }

    /// A control plane on this store, which the test keeps a handle of.
    pub async fn start_with_store(
        config: Config,
        store: Arc<dyn matchplane_control_plane::store::Store>,
    ) -> Self {
        Self::start_on(ControlPlane::builder(config).store(store)).await
    }

    async fn start_on(builder: matchplane_control_plane::server::Builder) -> Self {
        let clock = ManualClock::new();
        let cp = builder
            .clock(Arc::new(clock.clone()))
            .start()
            .await
            .expect("control plane starts");
        let base = cp.base_url();
        Self {
            cp,
            clock,
            http: reqwest::Client::new(),
            base,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// The credential a legitimate caller of `path` presents: the admin token
    /// for admin and internal routes, the registration token for provisioning.
    pub fn credential_for(&self, path: &str) -> Option<String> {
        if path.starts_with("/v1/admin/") || path.starts_with("/v1/internal/") {
            Some(self.cp.admin_token())
        } else if path.starts_with("/v1/provisioning/") {
            Some(self.cp.registration_token())
        } else {
            None
        }
    }

    fn with_credential(
        &self,
        request: reqwest::RequestBuilder,
        path: &str,
    ) -> reqwest::RequestBuilder {
        match self.credential_for(path) {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let response = self
            .with_credential(self.http.post(self.url(path)), path)
            .json(&body)
            .send()
            .await
            .expect("request");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = self
            .with_credential(self.http.get(self.url(path)), path)
            .send()
            .await
            .expect("request");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        let response = self
            .with_credential(self.http.delete(self.url(path)), path)
            .send()
            .await
            .expect("request");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Registers (or heartbeats) and returns the answer.
    pub async fn register(&self, body: Value) -> Value {
        let (status, reply) = self.post("/v1/provisioning/servers/register", body).await;
        assert_eq!(status, 200, "register failed: {reply}");
        assert_eq!(reply["success"], true, "{reply}");
        assert!(reply["heartbeatIntervalMs"].as_u64().is_some(), "{reply}");
        reply
    }

    pub async fn register_server(&self, server_id: &str, land_type: &str) {
        self.register(json!({"serverId": server_id, "host": "127.0.0.1", "port": 9000, "landType": land_type}))
            .await;
    }

    pub async fn enqueue(&self, body: Value) -> String {
        let (status, reply) = self.post("/v1/matchmaking/enqueue", body).await;
        assert_eq!(status, 201, "enqueue failed: {reply}");
        assert_eq!(reply["status"], "queued");
        reply["ticketId"].as_str().expect("ticketId").to_owned()
    }

    pub async fn status(&self, ticket_id: &str) -> Value {
        let (status, reply) = self
            .get(&format!("/v1/matchmaking/status/{ticket_id}"))
            .await;
        assert_eq!(status, 200, "status failed: {reply}");
        reply
    }

    /// Polls until the ticket leaves `queued` (the matcher ticks every 100 ms).
    pub async fn wait_for(&self, ticket_id: &str, wanted: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let reply = self.status(ticket_id).await;
            if reply["status"] == wanted {
                return reply;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "ticket {ticket_id} never became {wanted}: {reply}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn jwks(&self) -> JwkSet {
        let (status, reply) = self.get("/.well-known/jwks.json").await;
        assert_eq!(status, 200);
        serde_json::from_value(reply).expect("jwks shape")
    }

    pub async fn verify(&self, token: &str) -> MatchClaims {
        verify_with(&self.jwks().await, token)
    }
}

/// Verifies a match token against a JWK Set the way a game server would.
pub fn verify_with(jwks: &JwkSet, token: &str) -> MatchClaims {
    let header = jsonwebtoken::decode_header(token).expect("token header");
    let kid = header.kid.expect("kid in header");
    let jwk = jwks
        .keys
        .iter()
        .find(|key| key.kid == kid)
        .expect("kid is published");
    assert_eq!(jwk.use_, "sig");
    let key = match jwk.kty.as_str() {
        "EC" => {
            DecodingKey::from_ec_components(&jwk.x, jwk.y.as_deref().expect("y")).expect("ec key")
        }
        "OKP" => DecodingKey::from_ed_components(&jwk.x).expect("ed key"),
        other => panic!("unexpected kty {other}"),
    };
    let mut validation = Validation::new(header.alg);
    validation.set_issuer(&["matchplane"]);
    validation.set_audience(&["matchplane-game"]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    jsonwebtoken::decode::<MatchClaims>(token, &key, &validation)
        .expect("token verifies")
        .claims
}

pub type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

impl Harness {
    /// A `/realtime` socket with this query (e.g. `?ticketId=…`).
    pub async fn realtime(&self, query: &str) -> Socket {
        let url = format!("ws://{}/realtime{query}", self.cp.local_addr());
        tokio_tungstenite::connect_async(url)
            .await
            .expect("ws connect")
            .0
    }
}

/// Next JSON text message (skipping pings), or panic after a few seconds.
pub async fn next_event(socket: &mut Socket) -> Value {
    use futures_util::StreamExt as _;
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("a message in time")
            .expect("socket open")
            .expect("no socket error");
        match message {
            tokio_tungstenite::tungstenite::Message::Text(text) => {
                return serde_json::from_str(&text).expect("json");
            }
            tokio_tungstenite::tungstenite::Message::Ping(_)
            | tokio_tungstenite::tungstenite::Message::Pong(_) => continue,
            other => panic!("unexpected message {other:?}"),
        }
    }
}
