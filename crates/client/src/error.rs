//! Typed errors of the SDK. Callers switch on variants and [`ErrorCode`]s, never on
//! messages.

use std::time::Duration;

use matchplane_contracts::ErrorCode;
use matchplane_contracts::game::LandClosed;

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
    /// The realtime socket refused a request (e.g. too many subscriptions).
    #[error("realtime socket error {code}: {message}")]
    Realtime { code: ErrorCode, message: String },
    /// The realtime socket is closed.
    #[error("the realtime socket is closed")]
    RealtimeClosed,
}

impl MatchmakingError {
    /// The stable error code of an API or realtime refusal.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Api { code, .. } => *code,
            Self::Realtime { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether sending the same request again later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Transport { .. } | Self::RealtimeClosed => true,
            Self::Api { status, code, .. } => code.map_or(*status >= 500, |code| code.retryable()),
            Self::Realtime { code, .. } => code.retryable(),
            _ => false,
        }
    }
}

/// Connecting to a land or staying connected failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LandError {
    /// The assignment carries no token for this player.
    #[error("the assignment has no token for player {player_id}")]
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
