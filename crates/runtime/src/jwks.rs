//! `--auth jwks`: admits a connection only with a match token signed by a key the
//! control plane publishes at `/.well-known/jwks.json`.
//!
//! Keys are cached. An unknown `kid` triggers a refetch (a rotation happened),
//! but at most once per cooldown so forged tokens cannot make the game server
//! hammer the control plane; a periodic refresh drops rotated-out keys.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use matchplane_contracts::jwks::{Jwk, JwkSet};
use matchplane_contracts::token::MatchClaims;
use parking_lot::RwLock;
use tokio::time::Instant;

use crate::auth::{Admission, AdmissionRequest, Authenticator, Rejection};

#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("cannot fetch {url}: {message}")]
    Fetch { url: String, message: String },
}

#[derive(Debug, Clone)]
pub struct JwksSettings {
    /// e.g. `http://127.0.0.1:3000` (a trailing `/match` prefix behind an LB works too).
    pub control_plane_url: String,
    pub issuer: String,
    pub audience: String,
    /// Least time between two fetches caused by unknown `kid`s.
    pub refetch_cooldown: Duration,
    /// Periodic refresh so keys the control plane stopped publishing are dropped.
    pub refresh_every: Duration,
    /// Clock skew tolerated on `exp`.
    pub leeway: Duration,
}

impl JwksSettings {
    pub fn new(control_plane_url: impl Into<String>) -> Self {
        Self {
            control_plane_url: control_plane_url.into(),
            issuer: "matchplane".to_owned(),
            audience: "matchplane-game".to_owned(),
            refetch_cooldown: Duration::from_secs(5),
            refresh_every: Duration::from_secs(300),
            leeway: Duration::from_secs(5),
        }
    }

    fn jwks_url(&self) -> String {
        format!(
            "{}/.well-known/jwks.json",
            self.control_plane_url.trim_end_matches('/')
        )
    }
}

struct CachedKey {
    key: DecodingKey,
    algorithm: Algorithm,
}

#[derive(Default)]
struct Cache {
    keys: HashMap<String, Arc<CachedKey>>,
    last_fetch_attempt: Option<Instant>,
    /// Whether that attempt succeeded: after a failure (control plane not up
    /// yet) the next try comes sooner than the full cooldown.
    last_fetch_ok: bool,
}

/// Least time between fetches while the control plane could not be reached.
const RETRY_AFTER_FAILURE: Duration = Duration::from_millis(250);

pub struct JwksAuthenticator {
    settings: JwksSettings,
    http: reqwest::Client,
    cache: RwLock<Cache>,
    /// Serialises fetches: concurrent misses share one request.
    fetching: tokio::sync::Mutex<()>,
}

impl JwksAuthenticator {
    pub fn new(settings: JwksSettings) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_default();
        Self {
            settings,
            http,
            cache: RwLock::new(Cache::default()),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    /// Number of keys currently trusted.
    pub fn cached_keys(&self) -> usize {
        self.cache.read().keys.len()
    }

    /// Replaces the cached keys with what the control plane publishes now.
    pub async fn refresh(&self) -> Result<usize, JwksError> {
        let _fetching = self.fetching.lock().await;
        self.fetch_locked().await
    }

    async fn fetch_locked(&self) -> Result<usize, JwksError> {
        {
            let mut cache = self.cache.write();
            cache.last_fetch_attempt = Some(Instant::now());
            cache.last_fetch_ok = false;
        }
        let url = self.settings.jwks_url();
        let fetch_error = |message: String| JwksError::Fetch {
            url: url.clone(),
            message,
        };
        let response = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|err| fetch_error(err.to_string()))?;
        if !response.status().is_success() {
            return Err(fetch_error(format!("status {}", response.status())));
        }
        let set: JwkSet = response
            .json()
            .await
            .map_err(|err| fetch_error(err.to_string()))?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            match decoding_key(jwk) {
                Some(key) => {
                    keys.insert(jwk.kid.clone(), Arc::new(key));
                }
                None => {
                    tracing::warn!(kid = %jwk.kid, kty = %jwk.kty, alg = %jwk.alg, "ignoring unusable JWK")
                }
            }
        }
        let count = keys.len();
        {
            let mut cache = self.cache.write();
            cache.keys = keys;
            cache.last_fetch_ok = true;
        }
        tracing::debug!(keys = count, "JWKS refreshed");
        Ok(count)
    }

    async fn key_for(&self, kid: &str) -> Option<Arc<CachedKey>> {
        if let Some(key) = self.cache.read().keys.get(kid) {
            return Some(Arc::clone(key));
        }
        let _fetching = self.fetching.lock().await;
        // Another request may have fetched while this one waited.
        let recently = {
            let cache = self.cache.read();
            if let Some(key) = cache.keys.get(kid) {
                return Some(Arc::clone(key));
            }
            let cooldown = if cache.last_fetch_ok {
                self.settings.refetch_cooldown
            } else {
                self.settings.refetch_cooldown.min(RETRY_AFTER_FAILURE)
            };
            cache
                .last_fetch_attempt
                .is_some_and(|at| at.elapsed() < cooldown)
        };
        if recently {
            return None;
        }
        if let Err(err) = self.fetch_locked().await {
            tracing::warn!(error = %err, "JWKS refetch for an unknown kid failed");
        }
        self.cache.read().keys.get(kid).cloned()
    }

    /// Refreshes every `refresh_every` until `shutdown` resolves.
    pub fn spawn_refresher(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            // Until the first success (the control plane may start after the
            // game server) retry with backoff; then refresh periodically.
            let mut backoff = Duration::from_millis(200);
            loop {
                match this.refresh().await {
                    Ok(_) => {
                        backoff = Duration::from_millis(200);
                        tokio::time::sleep(this.settings.refresh_every).await;
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "JWKS refresh failed; keeping cached keys and retrying");
                        tokio::time::sleep(backoff.min(this.settings.refresh_every)).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
        })
    }
}

fn decoding_key(jwk: &Jwk) -> Option<CachedKey> {
    if jwk.use_ != "sig" {
        return None;
    }
    match (jwk.kty.as_str(), jwk.crv.as_str(), jwk.alg.as_str()) {
        ("EC", "P-256", "ES256") => Some(CachedKey {
            key: DecodingKey::from_ec_components(&jwk.x, jwk.y.as_deref()?).ok()?,
            algorithm: Algorithm::ES256,
        }),
        ("OKP", "Ed25519", "EdDSA") => Some(CachedKey {
            key: DecodingKey::from_ed_components(&jwk.x).ok()?,
            algorithm: Algorithm::EdDSA,
        }),
        _ => None,
    }
}

#[async_trait]
impl Authenticator for JwksAuthenticator {
    async fn authenticate(&self, request: &AdmissionRequest<'_>) -> Result<Admission, Rejection> {
        let token = request
            .query
            .get("token")
            .filter(|token| !token.is_empty())
            .ok_or_else(|| Rejection::unauthenticated("a match token is required (?token=)"))?;
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| Rejection::unauthenticated("the token is not a well-formed JWT"))?;
        let kid = header
            .kid
            .ok_or_else(|| Rejection::unauthenticated("the token names no signing key (kid)"))?;
        let key = self.key_for(&kid).await.ok_or_else(|| {
            Rejection::unauthenticated(
                "the token was signed by a key the control plane does not publish",
            )
        })?;
        if header.alg != key.algorithm {
            return Err(Rejection::unauthenticated(
                "the token's algorithm does not match its key",
            ));
        }
        let mut validation = Validation::new(key.algorithm);
        validation.set_issuer(&[&self.settings.issuer]);
        validation.set_audience(&[&self.settings.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = self.settings.leeway.as_secs();
        let claims = jsonwebtoken::decode::<MatchClaims>(token, &key.key, &validation)
            .map_err(|err| match err.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                    Rejection::unauthenticated("the token has expired")
                }
                jsonwebtoken::errors::ErrorKind::InvalidSignature => {
                    Rejection::unauthenticated("the token's signature is invalid")
                }
                _ => Rejection::unauthenticated(format!("the token is not valid here: {err}")),
            })?
            .claims;
        // A token is for one land on one server: honoured elsewhere, it would start a
        // second land under the same id on another server (a split match).
        if claims.server_id != request.server_id {
            return Err(Rejection::forbidden("the token is for another game server"));
        }
        if request.land_id != Some(claims.land_id.as_str()) {
            return Err(Rejection::forbidden("the token is for another land"));
        }
        let token_land_type = claims.land_id.split(':').next().unwrap_or_default();
        if claims.land_type != request.land_type || token_land_type != request.land_type {
            return Err(Rejection::forbidden("the token is for another land type"));
        }
        if claims.player_id != claims.sub {
            return Err(Rejection::unauthenticated(
                "the token's player and subject disagree",
            ));
        }
        Ok(Admission {
            player_id: claims.player_id,
            land_id: claims.land_id,
            match_id: claims.match_id,
            roster: (!claims.roster.is_empty()).then_some(claims.roster),
            // The same token (assignment) may take over its own seat, nobody else's.
            session_key: Some(claims.jti),
        })
    }
}
