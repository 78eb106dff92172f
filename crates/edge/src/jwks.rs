//! A cache of the public keys a JWKS URL publishes, and JWT verification against it.
//!
//! Used for match tokens (the game server trusts the control plane's JWKS) and
//! for player tokens (the control plane trusts an identity provider's JWKS).
//! An unknown `kid` triggers a refetch (a rotation happened) at most once per
//! cooldown, so forged tokens cannot make us hammer the key server; a periodic
//! refresh drops keys that are no longer published. While the key server cannot
//! be reached (it may start after us), a token waits for the next try, at most
//! [`RETRY_AFTER_FAILURE`] away, instead of being refused at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use parking_lot::RwLock;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tokio::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("cannot fetch {url}: {message}")]
    Fetch { url: String, message: String },
}

#[derive(Debug, Clone)]
pub struct JwksSettings {
    /// The full URL of the key set.
    pub url: String,
    /// Least time between two fetches caused by unknown `kid`s.
    pub refetch_cooldown: Duration,
    /// Periodic refresh so keys the issuer stopped publishing are dropped.
    pub refresh_every: Duration,
}

impl JwksSettings {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            refetch_cooldown: Duration::from_secs(5),
            refresh_every: Duration::from_secs(300),
        }
    }
}

/// A key as published: EC P-256, Ed25519 or RSA. Identity providers often omit
/// `use` and `alg`, so both are optional here.
#[derive(Debug, Deserialize)]
struct PublishedKey {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default, rename = "use")]
    use_: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
}

#[derive(Debug, Deserialize)]
struct PublishedSet {
    keys: Vec<serde_json::Value>,
}

pub struct VerifyingKey {
    pub key: DecodingKey,
    pub algorithm: Algorithm,
}

impl VerifyingKey {
    fn from_published(jwk: &PublishedKey) -> Option<Self> {
        if jwk.use_.as_deref().is_some_and(|use_| use_ != "sig") {
            return None;
        }
        let (key, algorithm) = match (jwk.kty.as_str(), jwk.crv.as_deref()) {
            ("EC", Some("P-256")) => (
                DecodingKey::from_ec_components(jwk.x.as_deref()?, jwk.y.as_deref()?).ok()?,
                Algorithm::ES256,
            ),
            ("OKP", Some("Ed25519")) => (
                DecodingKey::from_ed_components(jwk.x.as_deref()?).ok()?,
                Algorithm::EdDSA,
            ),
            ("RSA", _) => {
                let algorithm = match jwk.alg.as_deref() {
                    None | Some("RS256") => Algorithm::RS256,
                    Some("RS384") => Algorithm::RS384,
                    Some("RS512") => Algorithm::RS512,
                    Some("PS256") => Algorithm::PS256,
                    Some("PS384") => Algorithm::PS384,
                    Some("PS512") => Algorithm::PS512,
                    Some(_) => return None,
                };
                (
                    DecodingKey::from_rsa_components(jwk.n.as_deref()?, jwk.e.as_deref()?).ok()?,
                    algorithm,
                )
            }
            _ => return None,
        };
        // A key that declares an algorithm must be used with exactly that one.
        let declared_matches = jwk
            .alg
            .as_deref()
            .is_none_or(|alg| alg_name(algorithm) == alg);
        declared_matches.then_some(Self { key, algorithm })
    }
}

fn alg_name(algorithm: Algorithm) -> &'static str {
    match algorithm {
        Algorithm::ES256 => "ES256",
        Algorithm::EdDSA => "EdDSA",
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS256 => "PS256",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
        _ => "",
    }
}

/// Why a token was not accepted. Each maps to one client-facing message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenRejected {
    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error("the token names no signing key (kid)")]
    NoKeyId,
    #[error("the token was signed by a key the issuer does not publish")]
    UnknownKey,
    #[error("the token's algorithm does not match its key")]
    AlgorithmMismatch,
    #[error("the token has expired")]
    Expired,
    #[error("the token's signature is invalid")]
    BadSignature,
    #[error("the token is for another audience")]
    WrongAudience,
    #[error("the token is from another issuer")]
    WrongIssuer,
    #[error("the token is not valid here: {0}")]
    Invalid(String),
}

/// What a token must say besides its signature.
#[derive(Debug, Clone)]
pub struct Expectations {
    pub issuer: String,
    pub audience: String,
    /// Clock skew tolerated on `exp` / `nbf`.
    pub leeway: Duration,
}

#[derive(Default)]
struct Cache {
    keys: HashMap<String, Arc<VerifyingKey>>,
    last_fetch_attempt: Option<Instant>,
    /// After a failure (issuer not up yet) the next try comes sooner than the full cooldown.
    last_fetch_ok: bool,
}

/// Least time between fetches while the key server could not be reached.
const RETRY_AFTER_FAILURE: Duration = Duration::from_millis(250);
/// A key set larger than this is refused: it is not a key set.
const MAX_JWKS_BYTES: usize = 256 * 1024;

pub struct JwksCache {
    settings: JwksSettings,
    http: reqwest::Client,
    cache: RwLock<Cache>,
    /// Serialises fetches: concurrent misses share one request.
    fetching: tokio::sync::Mutex<()>,
}

impl JwksCache {
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

    pub fn settings(&self) -> &JwksSettings {
        &self.settings
    }

    /// Number of keys currently trusted.
    pub fn cached_keys(&self) -> usize {
        self.cache.read().keys.len()
    }

    /// Replaces the cached keys with what the URL publishes now.
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
        let url = &self.settings.url;
        let fetch_error = |message: String| JwksError::Fetch {
            url: url.clone(),
            message,
        };
        let response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|err| fetch_error(err.to_string()))?;
        if !response.status().is_success() {
            return Err(fetch_error(format!("status {}", response.status())));
        }
        let body = response
            .bytes()
            .await
            .map_err(|err| fetch_error(err.to_string()))?;
        if body.len() > MAX_JWKS_BYTES {
            return Err(fetch_error(format!("{} bytes is too large", body.len())));
        }
        let set: PublishedSet =
            serde_json::from_slice(&body).map_err(|err| fetch_error(err.to_string()))?;
        let mut keys = HashMap::new();
        for value in set.keys {
            // One odd key must not hide the others.
            let Ok(jwk) = serde_json::from_value::<PublishedKey>(value) else {
                tracing::warn!("ignoring a JWK that is not an object with kty");
                continue;
            };
            match (jwk.kid.clone(), VerifyingKey::from_published(&jwk)) {
                (Some(kid), Some(key)) => {
                    keys.insert(kid, Arc::new(key));
                }
                _ => {
                    tracing::warn!(kid = ?jwk.kid, kty = %jwk.kty, alg = ?jwk.alg, "ignoring unusable JWK")
                }
            }
        }
        let count = keys.len();
        {
            let mut cache = self.cache.write();
            cache.keys = keys;
            cache.last_fetch_ok = true;
        }
        tracing::debug!(keys = count, url = %url, "JWKS refreshed");
        Ok(count)
    }

    /// The key for `kid`, refetching (within the cooldown) when it is unknown.
    pub async fn key_for(&self, kid: &str) -> Option<Arc<VerifyingKey>> {
        if let Some(key) = self.cache.read().keys.get(kid) {
            return Some(Arc::clone(key));
        }
        let asked_at = Instant::now();
        let _fetching = self.fetching.lock().await;
        let wait = {
            let cache = self.cache.read();
            // Another request may have fetched while this one waited.
            if let Some(key) = cache.keys.get(kid) {
                return Some(Arc::clone(key));
            }
            let since_last = cache.last_fetch_attempt.map(|at| (at, at.elapsed()));
            match since_last {
                // A fetch made after this request came did not find the kid.
                Some((at, _)) if at >= asked_at => return None,
                // The issuer answered lately without this kid: no refetch per
                // forged kid before the cooldown is over.
                Some((_, elapsed)) if cache.last_fetch_ok => {
                    if elapsed < self.settings.refetch_cooldown {
                        return None;
                    }
                    Duration::ZERO
                }
                // The last fetch failed, as it does while a control plane
                // started beside this server is still coming up: the retry
                // is due within RETRY_AFTER_FAILURE, so the request waits for
                // it instead of turning the first players away.
                Some((_, elapsed)) => self
                    .settings
                    .refetch_cooldown
                    .min(RETRY_AFTER_FAILURE)
                    .saturating_sub(elapsed),
                None => Duration::ZERO,
            }
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        if let Err(err) = self.fetch_locked().await {
            tracing::warn!(error = %err, "JWKS refetch for an unknown kid failed");
        }
        self.cache.read().keys.get(kid).cloned()
    }

    /// Verifies signature, `exp`, `iss`, `aud` and the presence of `sub`, then
    /// decodes the claims.
    pub async fn verify<C: DeserializeOwned>(
        &self,
        token: &str,
        expect: &Expectations,
    ) -> Result<C, TokenRejected> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenRejected::Malformed)?;
        let kid = header.kid.ok_or(TokenRejected::NoKeyId)?;
        let key = self.key_for(&kid).await.ok_or(TokenRejected::UnknownKey)?;
        // The key decides the algorithm, never the token (no alg=none, no HS256-with-public-key).
        if header.alg != key.algorithm {
            return Err(TokenRejected::AlgorithmMismatch);
        }
        let mut validation = Validation::new(key.algorithm);
        validation.set_issuer(&[&expect.issuer]);
        validation.set_audience(&[&expect.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = expect.leeway.as_secs();
        jsonwebtoken::decode::<C>(token, &key.key, &validation)
            .map(|data| data.claims)
            .map_err(|err| {
                use jsonwebtoken::errors::ErrorKind;
                match err.kind() {
                    ErrorKind::ExpiredSignature => TokenRejected::Expired,
                    ErrorKind::InvalidSignature => TokenRejected::BadSignature,
                    ErrorKind::InvalidAudience => TokenRejected::WrongAudience,
                    ErrorKind::InvalidIssuer => TokenRejected::WrongIssuer,
                    _ => TokenRejected::Invalid(err.to_string()),
                }
            })
    }

    /// Refreshes every `refresh_every`; until the first success (the issuer may
    /// start after us) retries with backoff. Ends when the cache is dropped.
    pub fn spawn_refresher(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(200);
            loop {
                let Some(this) = weak.upgrade() else { return };
                let refresh_every = this.settings.refresh_every;
                let wait = match this.refresh().await {
                    Ok(_) => {
                        backoff = Duration::from_millis(200);
                        refresh_every
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "JWKS refresh failed; keeping cached keys and retrying");
                        let wait = backoff.min(refresh_every);
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        wait
                    }
                };
                drop(this);
                tokio::time::sleep(wait).await;
            }
        })
    }
}
