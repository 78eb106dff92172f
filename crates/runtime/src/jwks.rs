//! `--auth jwks`: admits a connection only with a match token signed by a key the
//! control plane publishes at `/.well-known/jwks.json`, for this land on this
//! game server.
//!
//! Key caching, refetch cooldown and signature checks are `matchplane_edge::jwks`
//! (the control plane verifies player tokens with the same code); this module
//! adds what a match token must say to be admitted here.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use matchplane_contracts::token::MatchClaims;
use matchplane_edge::jwks::{Expectations, JwksCache};

pub use matchplane_edge::jwks::JwksError;

use crate::auth::{Admission, AdmissionRequest, Authenticator, Rejection};

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

pub struct JwksAuthenticator {
    keys: Arc<JwksCache>,
    expect: Expectations,
}

impl JwksAuthenticator {
    pub fn new(settings: JwksSettings) -> Self {
        let mut cache = matchplane_edge::jwks::JwksSettings::new(settings.jwks_url());
        cache.refetch_cooldown = settings.refetch_cooldown;
        cache.refresh_every = settings.refresh_every;
        Self {
            keys: Arc::new(JwksCache::new(cache)),
            expect: Expectations {
                issuer: settings.issuer,
                audience: settings.audience,
                leeway: settings.leeway,
            },
        }
    }

    /// Number of keys currently trusted.
    pub fn cached_keys(&self) -> usize {
        self.keys.cached_keys()
    }

    /// Replaces the cached keys with what the control plane publishes now.
    pub async fn refresh(&self) -> Result<usize, JwksError> {
        self.keys.refresh().await
    }

    /// Refreshes periodically (retrying with backoff until the control plane is
    /// up); ends when the authenticator is dropped or the handle aborted.
    pub fn spawn_refresher(&self) -> tokio::task::JoinHandle<()> {
        self.keys.spawn_refresher()
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
        let claims: MatchClaims = self
            .keys
            .verify(token, &self.expect)
            .await
            .map_err(|rejected| Rejection::unauthenticated(rejected.to_string()))?;
        // A token is for one land on one server: honoured elsewhere, it would start a
        // second land under the same id on another server (a split match).
        if claims.server_id != request.server_id {
            return Err(Rejection::forbidden("the token is for another game server"));
        }
        // Tokens from a control plane that predates instance ids carry none: admitted as before.
        if claims
            .server_instance_id
            .as_deref()
            .is_some_and(|instance| instance != request.server_instance_id)
        {
            return Err(Rejection::land_lost(
                "the land died with an earlier instance of this server; ask for a new match",
            ));
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
