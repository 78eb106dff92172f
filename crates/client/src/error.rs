//! Typed errors of the SDK. Callers switch on variants and [`ErrorCode`]s, never on
//! messages.

use std::time::Duration;

use matchplane_contracts::game::{LandClosed, error_code};
use matchplane_contracts::{ErrorBody, ErrorCode};

/// A control-plane call failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MatchmakingError {
    /// The control plane could not be reached, or the connection broke mid-request.
    #[error("control plane unreachable at {url}: {message}")]
    Transport { url: String, message: String },
    /// The control plane answered with an error status. `code` is `None` when the body
    /// was not a matchplane error envelope (e.g. a proxy's error page).
    #[error("control plane refused the request ({status}{}): {message}", code.map(|c| format!(" {c}")).unwrap_or_default())]
    Api {
        status: u16,
        code: Option<ErrorCode>,
        message: String,
    },
    /// A success answer whose body is not what the contract says.
    #[error("unexpected answer from the control plane: {0}")]
    Decode(String),
    /// The ticket was still queued when the wait ran out.
    #[error("ticket {ticket_id} was not assigned within {waited:?}")]
    Timeout { ticket_id: String, waited: Duration },
    #[error("ticket {ticket_id} was cancelled")]
    Cancelled { ticket_id: String },
    #[error("ticket {ticket_id} expired before a match was found")]
    Expired { ticket_id: String },
    /// The ticket ended without a match it could play (`ticket.failed`, status `failed`),
    /// e.g. its game server was lost and the control plane does not requeue.
    #[error("ticket {ticket_id} failed: {reason}")]
    Failed { ticket_id: String, reason: String },
    /// The realtime socket refused a request (e.g. too many subscriptions).
    #[error("realtime socket error {code}: {message}")]
    Realtime { code: ErrorCode, message: String },
    /// The realtime socket is closed.
    #[error("the realtime socket is closed")]
    RealtimeClosed,
    /// 401 `UNAUTHENTICATED`: no player token, or one the control plane does not accept
    /// (forged, expired, wrong issuer or audience). Refresh the token and try again.
    #[error("the control plane did not accept the player token: {message}")]
    Unauthenticated { message: String },
    /// 403 `FORBIDDEN`: the token is valid but its subject may not do this (e.g. it is
    /// not one of the ticket's members).
    #[error("the player token does not allow this: {message}")]
    Forbidden { message: String },
    /// 409 `PLAYER_ALREADY_QUEUED`: a member already waits in another ticket.
    /// `ticket_id` names that ticket when the control plane's message does.
    #[error("a member is already queued{}: {message}", ticket_id.as_deref().map(|id| format!(" in ticket {id}")).unwrap_or_default())]
    PlayerAlreadyQueued {
        ticket_id: Option<String>,
        message: String,
    },
    /// 429 `RATE_LIMITED`: wait `retry_after` (the `Retry-After` header) before the next
    /// request.
    #[error("rate limited by the control plane; retry after {retry_after:?}")]
    RateLimited { retry_after: Duration },
}

impl MatchmakingError {
    /// The stable error code of an API or realtime refusal.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Api { code, .. } => *code,
            Self::Realtime { code, .. } => Some(*code),
            Self::Unauthenticated { .. } => Some(ErrorCode::Unauthenticated),
            Self::Forbidden { .. } => Some(ErrorCode::Forbidden),
            Self::PlayerAlreadyQueued { .. } => Some(ErrorCode::PlayerAlreadyQueued),
            Self::RateLimited { .. } => Some(ErrorCode::RateLimited),
            _ => None,
        }
    }

    /// Whether sending the same request again later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Transport { .. } | Self::RealtimeClosed | Self::RateLimited { .. } => true,
            Self::Api { status, code, .. } => code.map_or(*status >= 500, |code| code.retryable()),
            Self::Realtime { code, .. } => code.retryable(),
            _ => false,
        }
    }
}

/// When the control plane sends no usable `Retry-After` with a 429, the SDK waits this
/// long; the control plane itself never asks for less than a second.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// The typed error for a refusal of the control plane: the status, the `Retry-After`
/// header and the body (an error envelope, or a proxy's page). Shared by the REST calls
/// and the `/realtime` handshake so both refuse the same way.
pub(crate) fn refusal(status: u16, retry_after: Option<&str>, body: &[u8]) -> MatchmakingError {
    let envelope = serde_json::from_slice::<ErrorBody>(body).ok();
    let code = envelope.as_ref().map(|envelope| envelope.error.code);
    let message = match envelope {
        Some(envelope) => envelope.error.message,
        None => String::from_utf8_lossy(body).chars().take(200).collect(),
    };
    // 429 counts without an envelope too: a proxy's rate limit means the same thing.
    if status == 429 || code == Some(ErrorCode::RateLimited) {
        let retry_after = retry_after
            .and_then(|seconds| seconds.trim().parse::<u64>().ok())
            .map_or(DEFAULT_RETRY_AFTER, Duration::from_secs);
        return MatchmakingError::RateLimited { retry_after };
    }
    match code {
        Some(ErrorCode::Unauthenticated) => MatchmakingError::Unauthenticated { message },
        Some(ErrorCode::Forbidden) => MatchmakingError::Forbidden { message },
        Some(ErrorCode::PlayerAlreadyQueued) => MatchmakingError::PlayerAlreadyQueued {
            ticket_id: queued_ticket_id(&message),
            message,
        },
        code => MatchmakingError::Api {
            status,
            code,
            message,
        },
    }
}

/// The ticket a `PLAYER_ALREADY_QUEUED` message names ("… queued in ticketId <id>; …").
/// The envelope has no field for it, so this reads the message and gives up quietly
/// when its wording changes.
fn queued_ticket_id(message: &str) -> Option<String> {
    let (_, rest) = message.split_once("ticketId ")?;
    let id: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
        .collect();
    let id = id.trim_end_matches(['.', ':']);
    (!id.is_empty()).then(|| id.to_owned())
}

/// Connecting to a land or staying connected failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LandError {
    /// The assignment carries no token for this player (or its tokens are
    /// spent: the control plane drops them a minute after `expiresAt`).
    #[error("the assignment has no token for player {player_id} (expired?)")]
    NoToken { player_id: String },
    /// The game server could not be reached or the WebSocket handshake failed.
    #[error("cannot connect to {url}: {message}")]
    Connect { url: String, message: String },
    /// The server refused the player: it sent `error {code, message}` and closed with
    /// `close_code` (see the protocol's close codes, e.g. 4401, 4409).
    #[error("refused by the game server ({close_code:?} {code}): {message}")]
    Rejected {
        close_code: Option<u16>,
        code: String,
        message: String,
    },
    /// No `join.ok` arrived in time.
    #[error("no join.ok within {0:?}")]
    JoinTimeout(Duration),
    /// The server sent something that is not protocol v1.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The connection is gone and was not (or could not be) re-established.
    #[error("disconnected from the land")]
    Disconnected,
    /// The land ended.
    #[error("the land closed ({})", .0.reason)]
    Closed(LandClosed),
    /// A wait on the state mirror ran out.
    #[error("the state did not reach the expected condition within {0:?}")]
    StateTimeout(Duration),
}

impl LandError {
    /// Whether the land may be gone with its game server (connection refused or reset,
    /// no `join.ok` in time, an abrupt close, or 4404 `land_lost`): the ticket is worth
    /// re-checking, since the control plane requeues the players of a lost server.
    pub fn is_unreachable_land(&self) -> bool {
        match self {
            Self::Connect { .. } | Self::JoinTimeout(_) => true,
            Self::Rejected {
                close_code, code, ..
            } => {
                code == error_code::LAND_LOST
                    || (code == "closed" && matches!(close_code, None | Some(1006)))
            }
            _ => false,
        }
    }
}

/// Joining the land of a ticket failed for good: the ticket ended, or its land stayed
/// unreachable (see [`crate::MatchmakingClient::join_land`]).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum JoinError {
    #[error(transparent)]
    Matchmaking(#[from] MatchmakingError),
    #[error(transparent)]
    Land(#[from] LandError),
}

/// An action did not produce a successful `action.result`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ActionError {
    /// The land answered `ok: false` (`not_enough_gold`, `unknown_action`, …).
    #[error("action failed: {code}: {message}")]
    Failed { code: String, message: String },
    /// No `action.result` within the action timeout.
    #[error("no action.result within {0:?}")]
    Timeout(Duration),
    /// The connection dropped before the result arrived; the action may or may not have
    /// been applied (check the state after reconnecting).
    #[error("disconnected before the action's result arrived")]
    Disconnected,
    /// The land closed before answering.
    #[error("the land closed before answering")]
    LandClosed,
}

impl ActionError {
    /// The land's or runtime's error code for [`ActionError::Failed`].
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Failed { code, .. } => Some(code),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(code: &str, message: &str) -> Vec<u8> {
        serde_json::json!({"error": {"code": code, "message": message}})
            .to_string()
            .into_bytes()
    }

    #[test]
    fn refusals_become_typed_errors() {
        assert_eq!(
            refusal(429, Some("3"), &envelope("RATE_LIMITED", "slow down")),
            MatchmakingError::RateLimited {
                retry_after: Duration::from_secs(3)
            }
        );
        assert_eq!(
            refusal(
                429,
                Some("Wed, 21 Oct 2015 07:28:00 GMT"),
                b"<html>busy</html>"
            ),
            MatchmakingError::RateLimited {
                retry_after: DEFAULT_RETRY_AFTER
            }
        );
        assert!(matches!(
            refusal(401, None, &envelope("UNAUTHENTICATED", "no token")),
            MatchmakingError::Unauthenticated { message } if message == "no token"
        ));
        assert!(matches!(
            refusal(403, None, &envelope("FORBIDDEN", "not a member")),
            MatchmakingError::Forbidden { .. }
        ));
        // A proxy's 401 page is no statement about the player token.
        assert!(matches!(
            refusal(401, None, b"Unauthorized"),
            MatchmakingError::Api {
                status: 401,
                code: None,
                ..
            }
        ));
    }

    #[test]
    fn lost_or_unreachable_lands_are_told_from_refusals() {
        let rejected = |close_code: Option<u16>, code: &str| LandError::Rejected {
            close_code,
            code: code.to_owned(),
            message: String::new(),
        };
        assert!(rejected(Some(4404), "land_lost").is_unreachable_land());
        assert!(rejected(Some(1006), "closed").is_unreachable_land());
        assert!(rejected(None, "closed").is_unreachable_land());
        assert!(
            LandError::Connect {
                url: String::new(),
                message: "refused".to_owned()
            }
            .is_unreachable_land()
        );
        assert!(!rejected(Some(4404), "unknown_land_type").is_unreachable_land());
        assert!(!rejected(Some(4403), "forbidden").is_unreachable_land());
        assert!(!rejected(Some(4409), "land_full").is_unreachable_land());
    }

    #[test]
    fn already_queued_names_the_ticket_when_the_message_does() {
        let message =
            "player alice is already queued in ticketId 0b6f-42aa; cancel it or wait for its match";
        let err = refusal(409, None, &envelope("PLAYER_ALREADY_QUEUED", message));
        assert_eq!(
            err,
            MatchmakingError::PlayerAlreadyQueued {
                ticket_id: Some("0b6f-42aa".to_owned()),
                message: message.to_owned(),
            }
        );
        assert_eq!(err.code(), Some(ErrorCode::PlayerAlreadyQueued));
        assert!(!err.is_retryable());
        let err = refusal(
            400,
            None,
            &envelope("PLAYER_ALREADY_QUEUED", "queued elsewhere"),
        );
        assert!(matches!(
            err,
            MatchmakingError::PlayerAlreadyQueued {
                ticket_id: None,
                ..
            }
        ));
    }
}
