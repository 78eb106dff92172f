//! Control-plane WebSocket at `/realtime`: assignment push to clients.

use serde::{Deserialize, Serialize};

use crate::ErrorCode;
use crate::matchmaking::{Assignment, EnqueueRequest, TicketStatus};

/// Protocol version carried in every server message as `v`.
pub const REALTIME_VERSION: u32 = 1;

/// Server → client: `{"type": "...", "v": 1, "data": {...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", content = "data")]
pub enum RealtimeEvent {
    #[serde(rename = "match.assigned")]
    MatchAssigned(MatchAssigned),
    #[serde(rename = "ticket.cancelled")]
    TicketCancelled(TicketRef),
    #[serde(rename = "ticket.expired")]
    TicketExpired(TicketRef),
    /// The assignment is void (its game server was lost before anyone joined); the
    /// ticket is queued again with its original enqueue time. A new `match.assigned` follows.
    #[serde(rename = "ticket.requeued")]
    TicketRequeued(TicketRequeued),
    /// The land the players were in died with its game server. Unless the control plane
    /// runs with `--requeue-joined off`, the ticket is queued again (a new `match.assigned` follows).
    #[serde(rename = "match.lost")]
    MatchLost(MatchLost),
    /// The ticket ended without a match (`--requeue-on-server-loss off`, or its
    /// players queued elsewhere meanwhile); `reason` says why.
    #[serde(rename = "ticket.failed")]
    TicketFailed(TicketFailed),
    /// Answer to the `enqueue` action; the socket is then subscribed to the ticket.
    #[serde(rename = "enqueued")]
    Enqueued(Enqueued),
    /// Answer to `subscribe` (and to `?ticketId=`) while the ticket is still queued.
    #[serde(rename = "subscribed")]
    Subscribed(Subscribed),
    #[serde(rename = "heartbeat")]
    Heartbeat(HeartbeatAck),
    #[serde(rename = "error")]
    Error(RealtimeError),
}

/// The envelope as sent: the event plus the protocol version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RealtimeEnvelope {
    #[serde(flatten)]
    pub event: RealtimeEvent,
    pub v: u32,
}

impl RealtimeEnvelope {
    pub fn new(event: RealtimeEvent) -> Self {
        Self {
            event,
            v: REALTIME_VERSION,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MatchAssigned {
    pub ticket_id: String,
    pub assignment: Assignment,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TicketRef {
    pub ticket_id: String,
}

/// Why an assignment was voided or a match lost.
pub mod reason {
    /// The game server stopped heartbeating (crashed, partitioned) or restarted.
    pub const SERVER_LOST: &str = "server_lost";
    /// A member of the ticket is already queued in another ticket.
    pub const PLAYER_QUEUED_ELSEWHERE: &str = "player_queued_elsewhere";
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TicketRequeued {
    pub ticket_id: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MatchLost {
    pub ticket_id: String,
    pub land_id: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TicketFailed {
    pub ticket_id: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Enqueued {
    pub ticket_id: String,
    pub status: TicketStatus,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Subscribed {
    pub ticket_id: String,
    pub status: TicketStatus,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatAck {
    /// Server time, ms since the UNIX epoch.
    pub server_time: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RealtimeError {
    pub code: ErrorCode,
    pub message: String,
    /// The ticket the error is about, when it is about one (a socket may watch many).
    #[serde(default, rename = "ticketId", skip_serializing_if = "Option::is_none")]
    pub ticket_id: Option<String>,
}

/// Client → server: `{"action": "enqueue" | "subscribe" | "heartbeat", ...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "action", rename_all = "lowercase")]
pub enum RealtimeAction {
    /// The enqueue body's fields sit beside `action`.
    Enqueue(Box<EnqueueRequest>),
    Subscribe(SubscribeAction),
    Heartbeat {},
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubscribeAction {
    #[serde(default)]
    pub ticket_id: Option<String>,
}
