//! Client ↔ control plane: enqueue, status, cancel (seed REST contract).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `POST /v1/matchmaking/enqueue`. Required fields are `Option`/defaulted so a
/// missing one gets its own error code instead of a generic parse error.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnqueueRequest {
    #[schema(required = true, nullable = false)]
    #[serde(default)]
    pub queue_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    #[schema(required = true, nullable = false)]
    #[serde(default)]
    pub members: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_size: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Opaque to the control plane; kept with the ticket (seed field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub constraints: Option<serde_json::Value>,
    /// Numeric attributes, e.g. `{"skill": 1500}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub string_args: BTreeMap<String, String>,
    /// Measured latency per region in milliseconds, e.g. `{"eu": 35}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub latencies: BTreeMap<String, u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnqueueResponse {
    pub ticket_id: String,
    pub status: TicketStatus,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TicketStatus {
    Queued,
    Assigned,
    Cancelled,
    Expired,
    /// Additive terminal status: the ticket ended without a match it could play
    /// (e.g. its game server was lost and requeueing is off); see `reason`.
    Failed,
}

impl TicketStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Assigned => "assigned",
            Self::Cancelled => "cancelled",
            Self::Expired => "expired",
            Self::Failed => "failed",
        }
    }
}

/// Where and how the ticket's players join their match.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Assignment {
    pub assignment_id: String,
    /// The first member's token (seed-compatible); see `member_tokens` for parties.
    /// Empty once spent: a minute after `expires_at` the control plane drops it.
    pub match_token: String,
    pub connect_url: String,
    pub land_id: String,
    pub server_id: String,
    /// ISO 8601 (RFC 3339) UTC.
    pub expires_at: String,
    /// One token per member, keyed by player id (includes the first member).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub member_tokens: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_id: Option<String>,
    /// 0-based team index of this ticket within the match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<u32>,
}

/// `GET /v1/matchmaking/status/:ticketId`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatusResponse {
    pub ticket_id: String,
    pub status: TicketStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignment: Option<Assignment>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_key: Option<String>,
    /// RFC 3339 time the ticket was accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enqueued_at: Option<String>,
    /// Why a `failed` ticket failed (e.g. `server_lost`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `POST /v1/matchmaking/cancel`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CancelRequest {
    #[schema(required = true, nullable = false)]
    #[serde(default)]
    pub ticket_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CancelResponse {
    pub cancelled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<TicketStatus>,
}
