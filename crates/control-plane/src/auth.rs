//! Who may call what: the admin token, the registration token(s) game servers
//! present, and the player identity (anyone in `none` mode; the `sub` of a
//! verified player JWT in `jwt` mode).
//!
//! Extractors (`AdminAccess`, `ServerAccess`, `PlayerIdentity`) make a handler's
//! credential part of its signature, so a route cannot forget to check it.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use matchplane_contracts::ErrorCode;
use matchplane_edge::jwks::{Expectations, JwksCache, JwksSettings, TokenRejected};
use matchplane_edge::secret::{Secret, SecretError, bearer};
use serde::Deserialize;

use crate::api::{ApiError, AppState, Provisioning};
use crate::config::{Config, CredentialSource, PlayerAuth, StorageConfig};
use crate::store::TicketRecord;

/// File names of generated credentials inside `--data-dir`.
pub const ADMIN_TOKEN_FILE: &str = "admin-token";
pub const REGISTRATION_TOKEN_FILE: &str = "registration-token";

/// Clock skew tolerated on player tokens' `exp`.
const PLAYER_TOKEN_LEEWAY: Duration = Duration::from_secs(30);

pub struct Auth {
    admin: Vec<Secret>,
    registration: Vec<Secret>,
    player: PlayerVerifier,
}

enum PlayerVerifier {
    Anyone,
    Jwt {
        keys: Arc<JwksCache>,
        expect: Expectations,
    },
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("admin_tokens", &self.admin.len())
            .field("registration_tokens", &self.registration.len())
            .finish_non_exhaustive()
    }
}

impl Auth {
    /// Resolves every credential the config names: given values, files, or
    /// secrets generated into the data dir on first start.
    pub fn from_config(config: &Config) -> Result<Self, SecretError> {
        let admin = resolve(
            &config.admin_token,
            &config.storage,
            ADMIN_TOKEN_FILE,
            "admin token",
        )?;
        let registration = resolve(
            &config.registration_token,
            &config.storage,
            REGISTRATION_TOKEN_FILE,
            "registration token",
        )?;
        let player = match &config.player_auth {
            PlayerAuth::None => PlayerVerifier::Anyone,
            PlayerAuth::Jwt {
                jwks_url,
                issuer,
                audience,
            } => PlayerVerifier::Jwt {
                keys: Arc::new(JwksCache::new(JwksSettings::new(jwks_url.clone()))),
                expect: Expectations {
                    issuer: issuer.clone(),
                    audience: audience.clone(),
                    leeway: PLAYER_TOKEN_LEEWAY,
                },
            },
        };
        Ok(Self {
            admin,
            registration,
            player,
        })
    }

    /// Starts refreshing the identity provider's keys (jwt mode only).
    pub fn spawn_background(&self) {
        if let PlayerVerifier::Jwt { keys, .. } = &self.player {
            keys.spawn_refresher();
        }
    }

    /// The admin token clients must present (the first when several are accepted).
    pub fn admin_token(&self) -> Option<&Secret> {
        self.admin.first()
    }

    /// The registration token game servers must present (the first of several).
    pub fn registration_token(&self) -> Option<&Secret> {
        self.registration.first()
    }

    pub fn players_authenticated(&self) -> bool {
        matches!(self.player, PlayerVerifier::Jwt { .. })
    }

    fn admin_allows(&self, presented: &str) -> bool {
        // Check every entry so timing does not tell which one matched.
        self.admin
            .iter()
            .fold(false, |found, secret| secret.matches(presented) | found)
    }

    /// The accepted registration token that `presented` is, if any.
    fn registration_match(&self, presented: &str) -> Option<&Secret> {
        self.registration
            .iter()
            .fold(None, |found, secret| match secret.matches(presented) {
                true => Some(secret),
                false => found,
            })
    }

    /// Verifies a player JWT and returns its subject.
    pub async fn verify_player(&self, token: &str) -> Result<String, TokenRejected> {
        match &self.player {
            PlayerVerifier::Anyone => Err(TokenRejected::Invalid(
                "player tokens are not used in this mode".to_owned(),
            )),
            PlayerVerifier::Jwt { keys, expect } => {
                let claims: PlayerClaims = keys.verify(token, expect).await?;
                if claims.sub.is_empty() || claims.sub.len() > MAX_SUBJECT_LEN {
                    return Err(TokenRejected::Invalid(
                        "the token's sub is empty or too long".to_owned(),
                    ));
                }
                Ok(claims.sub)
            }
        }
    }
}

/// Longest `sub` accepted (player ids are bounded like ticket members).
const MAX_SUBJECT_LEN: usize = 128;

#[derive(Debug, Deserialize)]
struct PlayerClaims {
    sub: String,
}

fn resolve(
    source: &CredentialSource,
    storage: &StorageConfig,
    file_name: &str,
    what: &str,
) -> Result<Vec<Secret>, SecretError> {
    match source {
        // Several comma-separated values are all accepted: rotation without downtime,
        // or one credential per game server.
        CredentialSource::Value(values) => values
            .split(',')
            .filter(|value| !value.trim().is_empty())
            .map(|value| Secret::new(value, what))
            .collect::<Result<Vec<_>, _>>()
            .and_then(|secrets| non_empty(secrets, what)),
        CredentialSource::File(path) => read_lines(path, what),
        CredentialSource::Generate => match storage {
            StorageConfig::Durable { data_dir } | StorageConfig::Redis { data_dir, .. } => {
                create_private_dir(data_dir).map_err(|source| SecretError::Write {
                    path: data_dir.clone(),
                    source,
                })?;
                let path = data_dir.join(file_name);
                let (secret, generated) = Secret::load_or_generate(&path, what)?;
                if generated {
                    tracing::info!(path = %path.display(), "generated a new {what}; read it from this file");
                } else {
                    tracing::info!(path = %path.display(), "using the {what} from this file");
                }
                Ok(vec![secret])
            }
            StorageConfig::Ephemeral => {
                tracing::info!(
                    "generated a new {what} in memory (--ephemeral); pass it explicitly to use it from outside"
                );
                Ok(vec![Secret::generate()])
            }
        },
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SharedCredentialError {
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// With Redis, a credential left to be generated belongs to the cluster, not
/// to one replica: the first replica to start publishes the one in its data
/// dir (generated there if missing) and every other replica adopts it into
/// its own data dir — so one admin token and one registration token work on
/// every replica behind the load balancer, and `<data-dir>/admin-token` on any
/// host is the one to use. Given credentials (flags, env, files) are left
/// alone: they are the operator's to keep identical.
pub async fn adopt_shared_credentials(
    config: &Config,
    data_dir: &Path,
    redis: &crate::store::RedisStore,
) -> Result<(), SharedCredentialError> {
    let generated = [
        (&config.admin_token, ADMIN_TOKEN_FILE, "admin token"),
        (
            &config.registration_token,
            REGISTRATION_TOKEN_FILE,
            "registration token",
        ),
    ];
    for (source, file_name, what) in generated {
        if !matches!(source, CredentialSource::Generate) {
            continue;
        }
        create_private_dir(data_dir).map_err(|source| SecretError::Write {
            path: data_dir.to_owned(),
            source,
        })?;
        let path = data_dir.join(file_name);
        let (local, _) = Secret::load_or_generate(&path, what)?;
        let shared = redis.shared_credential(file_name, local.expose()).await?;
        if shared != local.expose() {
            // Validated like any given secret before it is trusted.
            Secret::new(&shared, what)?;
            replace_private_file(&path, &shared)?;
            tracing::info!(path = %path.display(), "adopted the cluster's {what} from Redis into this file");
        }
    }
    Ok(())
}

/// Writes `value` to `path` (mode 0600) so that a reader sees the old file or
/// the new one, never a part.
fn replace_private_file(path: &Path, value: &str) -> Result<(), SecretError> {
    use std::io::Write as _;
    let write_error = |source| SecretError::Write {
        path: path.to_owned(),
        source,
    };
    let staging = path.with_extension("new");
    let _ = std::fs::remove_file(&staging);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(&staging).map_err(write_error)?;
    file.write_all(format!("{value}\n").as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(write_error)?;
    std::fs::rename(&staging, path).map_err(write_error)
}

/// One accepted secret per non-empty line.
fn read_lines(path: &Path, what: &str) -> Result<Vec<Secret>, SecretError> {
    let text = std::fs::read_to_string(path).map_err(|source| SecretError::Read {
        path: path.to_owned(),
        source,
    })?;
    let secrets = text
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| Secret::new(line, what))
        .collect::<Result<Vec<_>, _>>()?;
    non_empty(secrets, what)
}

fn non_empty(secrets: Vec<Secret>, what: &str) -> Result<Vec<Secret>, SecretError> {
    if secrets.is_empty() {
        return Err(SecretError::Unusable {
            what: what.to_owned(),
        });
    }
    Ok(secrets)
}

/// The data dir holds the store, the keys and these secrets: owner only.
pub(crate) fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
        let mut permissions = std::fs::metadata(dir)?.permissions();
        if permissions.mode() & 0o077 != 0 {
            permissions.set_mode(0o700);
            std::fs::set_permissions(dir, permissions)?;
        }
        Ok(())
    }
    #[cfg(not(unix))]
    {
        std::fs::create_dir_all(dir)
    }
}

/// Proof that the caller presented the admin token.
pub struct AdminAccess;

impl FromRequestParts<AppState> for AdminAccess {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let refusal = match bearer(&parts.headers) {
            Some(token) if state.auth.admin_allows(token) => return Ok(Self),
            Some(_) => "the admin token is not valid",
            None => "this endpoint needs Authorization: Bearer <admin token>",
        };
        crate::metrics::inc(&state.metrics.auth_failures);
        Err(unauthenticated(refusal))
    }
}

/// Proof that the caller presented an accepted registration token; `credential`
/// identifies which (a digest, never the secret), to bind a server id to it.
pub struct ServerAccess {
    pub credential: String,
}

impl FromRequestParts<AppState> for ServerAccess {
    type Rejection = ApiError<Provisioning>;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let refusal = match bearer(&parts.headers) {
            Some(token) => match state.auth.registration_match(token) {
                Some(secret) => {
                    return Ok(Self {
                        credential: credential_id(secret),
                    });
                }
                None => "the registration token is not valid",
            },
            None => "provisioning needs Authorization: Bearer <registration token>",
        };
        crate::metrics::inc(&state.metrics.auth_failures);
        Err(unauthenticated(refusal))
    }
}

/// A stable id of a registration secret: its SHA-256, hex.
fn credential_id(secret: &Secret) -> String {
    secret
        .digest()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// The caller as a player: `Some(sub)` with a verified player JWT, `None` in
/// `--player-auth none` (anyone may act for any player id).
pub struct PlayerIdentity(pub Option<String>);

impl FromRequestParts<AppState> for PlayerIdentity {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        if !state.auth.players_authenticated() {
            return Ok(Self(None));
        }
        let token = bearer(&parts.headers).map(str::to_owned);
        authenticate_player(state, token.as_deref()).await.map(Self)
    }
}

/// Verifies a presented player token (header or, for browsers' WebSockets, a
/// query parameter). `Ok(None)` when players are not authenticated.
pub async fn authenticate_player(
    state: &AppState,
    token: Option<&str>,
) -> Result<Option<String>, ApiError> {
    if !state.auth.players_authenticated() {
        return Ok(None);
    }
    let Some(token) = token.filter(|token| !token.is_empty()) else {
        return Err(unauthenticated(
            "this endpoint needs Authorization: Bearer <player token>",
        ));
    };
    match state.auth.verify_player(token).await {
        Ok(subject) => {
            // Per player, so one player cannot spread a flood over many addresses.
            if let Err(refused) = state.request_limits.check_player(&subject) {
                crate::metrics::inc(&state.metrics.rate_limited);
                return Err(refused);
            }
            Ok(Some(subject))
        }
        Err(rejected) => {
            crate::metrics::inc(&state.metrics.auth_failures);
            Err(unauthenticated(rejected.to_string()))
        }
    }
}

/// Whether `player` may see or act on `ticket`: its owner or one of its members.
/// Without player identity (`none` mode) the unguessable ticket id is the capability.
pub fn may_access(player: &PlayerIdentity, ticket: &TicketRecord) -> bool {
    match &player.0 {
        None => true,
        Some(subject) => {
            ticket.owner == *subject || ticket.members.iter().any(|member| member == subject)
        }
    }
}

fn unauthenticated<E: crate::api::error::Envelope>(message: impl Into<String>) -> ApiError<E> {
    ApiError::new(
        axum::http::StatusCode::UNAUTHORIZED,
        ErrorCode::Unauthenticated,
        message,
    )
}

/// 403 for a valid credential that does not cover this resource.
pub fn forbidden<E: crate::api::error::Envelope>(message: impl Into<String>) -> ApiError<E> {
    ApiError::new(
        axum::http::StatusCode::FORBIDDEN,
        ErrorCode::Forbidden,
        message,
    )
}
