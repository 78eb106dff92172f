//! Admission: who is connecting, and to which land.
//!
//! The transport asks an [`Authenticator`] before a connection reaches any land. The
//! dev implementation [`DevAuthenticator`] (`--auth none`) trusts the query string;
//! a JWKS-backed implementation verifying match tokens plugs in behind the same trait.

use std::collections::HashMap;

use async_trait::async_trait;
use matchplane_contracts::game::{close_code, error_code};

use crate::land::PlayerId;

/// What the transport knows about a connection attempt.
#[derive(Debug, Clone)]
pub struct AdmissionRequest<'a> {
    /// This game server's id (`--server-id`): match tokens name the server they were
    /// allocated to, and a token for another server is refused.
    pub server_id: &'a str,
    /// This game-server process's instance id: a token minted for an earlier instance
    /// (a land that died with it) is refused with `land_lost`.
    pub server_instance_id: &'a str,
    /// The `{landType}` of `/game/{landType}`; already known to be served.
    pub land_type: &'a str,
    /// The `landId` query parameter, if present.
    pub land_id: Option<&'a str>,
    /// All query parameters (`token`, `playerId`, …), decoded.
    pub query: &'a HashMap<String, String>,
}

/// A connection the authenticator let in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    pub player_id: PlayerId,
    pub land_id: String,
    pub match_id: Option<String>,
    /// Expected players per team, handed to `on_create` when this admission creates the land.
    pub roster: Option<Vec<Vec<PlayerId>>>,
    /// A new connection takes over a held seat only if its session key equals the seat's
    /// (e.g. the token's assignment id); `None` matches `None`.
    pub session_key: Option<String>,
}

/// A refused connection: the client receives `error {code, message}`, then a close.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error_code} ({close_code}): {message}")]
pub struct Rejection {
    pub close_code: u16,
    pub error_code: String,
    pub message: String,
}

impl Rejection {
    pub fn new(close_code: u16, error_code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            close_code,
            error_code: error_code.into(),
            message: message.into(),
        }
    }

    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(
            close_code::UNAUTHENTICATED,
            error_code::UNAUTHENTICATED,
            message,
        )
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(close_code::FORBIDDEN, error_code::FORBIDDEN, message)
    }

    /// The land is gone for good (e.g. it died with an earlier instance of this server):
    /// the client should ask the control plane for a new match, not retry.
    pub fn land_lost(message: impl Into<String>) -> Self {
        Self::new(close_code::LAND_LOST, error_code::LAND_LOST, message)
    }
}

#[async_trait]
pub trait Authenticator: Send + Sync + 'static {
    async fn authenticate(&self, request: &AdmissionRequest<'_>) -> Result<Admission, Rejection>;
}

/// Longest player or land id accepted from a query string.
const MAX_ID_LEN: usize = 128;

/// `--auth none`: trusts `?playerId=` (required) and `?landId=`. Without `landId` every
/// connection creates a fresh land `{landType}:{uuid}`, announced in `join.ok`.
/// For development and tests only: anyone can claim any player id.
#[derive(Debug, Clone, Copy, Default)]
pub struct DevAuthenticator;

/// Visible ASCII except what would need escaping in a URL, a JSON string or a log
/// line: the same characters the control plane accepts in ids.
fn is_id_char(c: char) -> bool {
    c.is_ascii_graphic() && !matches!(c, '/' | '?' | '#' | '%' | '&' | '"' | '\\')
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_ID_LEN && id.chars().all(is_id_char)
}

const ID_CHARS: &str = "visible ASCII characters, none of / ? # % & \" \\";

#[async_trait]
impl Authenticator for DevAuthenticator {
    async fn authenticate(&self, request: &AdmissionRequest<'_>) -> Result<Admission, Rejection> {
        let player_id = request.query.get("playerId").ok_or_else(|| {
            Rejection::unauthenticated("playerId query parameter is required (auth mode none)")
        })?;
        if !valid_id(player_id) {
            return Err(Rejection::unauthenticated(format!(
                "playerId must be 1..={MAX_ID_LEN} {ID_CHARS}"
            )));
        }
        let land_id = match request.land_id {
            Some(land_id) if valid_id(land_id) => land_id.to_owned(),
            Some(_) => {
                return Err(Rejection::forbidden(format!(
                    "landId must be 1..={MAX_ID_LEN} {ID_CHARS}"
                )));
            }
            None => format!("{}:{}", request.land_type, uuid::Uuid::new_v4()),
        };
        Ok(Admission {
            player_id: player_id.clone(),
            land_id,
            match_id: None,
            roster: None,
            session_key: None,
        })
    }
}
