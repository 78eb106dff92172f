//! Error envelopes and the codes clients can switch on.

use serde::{Deserialize, Serialize};

/// Stable, machine-readable error codes. Clients switch on these, never on messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// The body is not valid for the endpoint (wrong types, unknown shape).
    InvalidRequest,
    /// The body is not well-formed JSON.
    InvalidJson,
    /// `Content-Type` is not `application/json`.
    UnsupportedMediaType,
    /// The body exceeds the configured limit.
    PayloadTooLarge,
    QueueKeyRequired,
    InvalidQueueKey,
    MembersRequired,
    TooManyMembers,
    DuplicateMember,
    InvalidMember,
    GroupSizeMismatch,
    FieldTooLong,
    TooManyFields,
    InvalidAttribute,
    InvalidLatency,
    /// The queue's profile has region rules and the ticket reports neither latencies nor a region.
    RegionRequired,
    TicketIdRequired,
    TicketNotFound,
    /// The queue key names a queue whose party size this ticket can never fit.
    TicketTooLarge,
    /// A realtime socket watches too many tickets at once.
    TooManySubscriptions,
    ServerIdRequired,
    InvalidServer,
    /// The queue's profile does not allow backfill.
    BackfillDisabled,
    ServerNotFound,
    NotFound,
    MethodNotAllowed,
    /// No credential, or one that does not verify (missing/forged/expired bearer token).
    Unauthenticated,
    /// The credential is valid but does not allow this (e.g. another server's id).
    Forbidden,
    /// Too many requests or new connections from this client or player; see `Retry-After`.
    RateLimited,
    /// Too many open connections (from this address or in total); retry later.
    TooManyConnections,
    /// A member of the ticket is already in another queued ticket.
    PlayerAlreadyQueued,
    /// Queue profiles are configured and this queue key matches none (see `--open-queues`).
    QueueNotFound,
    /// `constraints` is too large or too deeply nested.
    ConstraintsTooLarge,
    /// The durable store cannot be reached or failed; retry later.
    StoreUnavailable,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "INVALID_REQUEST",
            Self::InvalidJson => "INVALID_JSON",
            Self::UnsupportedMediaType => "UNSUPPORTED_MEDIA_TYPE",
            Self::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            Self::QueueKeyRequired => "QUEUE_KEY_REQUIRED",
            Self::InvalidQueueKey => "INVALID_QUEUE_KEY",
            Self::MembersRequired => "MEMBERS_REQUIRED",
            Self::TooManyMembers => "TOO_MANY_MEMBERS",
            Self::DuplicateMember => "DUPLICATE_MEMBER",
            Self::InvalidMember => "INVALID_MEMBER",
            Self::GroupSizeMismatch => "GROUP_SIZE_MISMATCH",
            Self::FieldTooLong => "FIELD_TOO_LONG",
            Self::TooManyFields => "TOO_MANY_FIELDS",
            Self::InvalidAttribute => "INVALID_ATTRIBUTE",
            Self::InvalidLatency => "INVALID_LATENCY",
            Self::RegionRequired => "REGION_REQUIRED",
            Self::TicketIdRequired => "TICKET_ID_REQUIRED",
            Self::TicketNotFound => "TICKET_NOT_FOUND",
            Self::TicketTooLarge => "TICKET_TOO_LARGE",
            Self::TooManySubscriptions => "TOO_MANY_SUBSCRIPTIONS",
            Self::ServerIdRequired => "SERVER_ID_REQUIRED",
            Self::BackfillDisabled => "BACKFILL_DISABLED",
            Self::InvalidServer => "INVALID_SERVER",
            Self::ServerNotFound => "SERVER_NOT_FOUND",
            Self::NotFound => "NOT_FOUND",
            Self::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            Self::Unauthenticated => "UNAUTHENTICATED",
            Self::Forbidden => "FORBIDDEN",
            Self::RateLimited => "RATE_LIMITED",
            Self::TooManyConnections => "TOO_MANY_CONNECTIONS",
            Self::PlayerAlreadyQueued => "PLAYER_ALREADY_QUEUED",
            Self::QueueNotFound => "QUEUE_NOT_FOUND",
            Self::ConstraintsTooLarge => "CONSTRAINTS_TOO_LARGE",
            Self::StoreUnavailable => "STORE_UNAVAILABLE",
            Self::Internal => "INTERNAL",
        }
    }

    /// Whether the same request may succeed when sent again later.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            Self::StoreUnavailable | Self::Internal | Self::RateLimited | Self::TooManyConnections
        )
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `{"error": {"code", "message"}}` — the matchmaking and admin endpoints' error body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    pub message: String,
}

/// The seed's provisioning envelope: `{success, error?: {code, message, retryable}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProvisioningResponse {
    pub success: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ProvisioningError>,
    /// Additive, on a successful register: how often the control plane expects a
    /// heartbeat. The game server adopts it, so the two cannot drift apart.
    #[serde(
        default,
        rename = "heartbeatIntervalMs",
        skip_serializing_if = "Option::is_none"
    )]
    pub heartbeat_interval_ms: Option<u64>,
}

impl ProvisioningResponse {
    pub fn ok() -> Self {
        Self {
            success: true,
            error: None,
            heartbeat_interval_ms: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProvisioningError {
    pub code: ErrorCode,
    pub message: String,
    pub retryable: bool,
}
