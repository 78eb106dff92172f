//! Ticket records for the matcher's unit tests.

use crate::clock::Millis;
use crate::store::TicketRecord;

/// A queued ticket of `arena:2v2`, enqueued 5 s before `now`, expiring at
/// `expires_at`; every optional field takes its stored default.
pub fn queued_record(
    ticket_id: &str,
    members: &[&str],
    now: Millis,
    expires_at: Millis,
) -> TicketRecord {
    let enqueued_at = now.saturating_sub(5_000);
    let stored = serde_json::json!({
        "ticketId": ticket_id,
        "queueKey": "arena:2v2",
        "groupId": format!("group-{ticket_id}"),
        "owner": members.first(),
        "members": members,
        "status": "queued",
        "enqueuedAt": enqueued_at,
        "expiresAt": expires_at,
        "updatedAt": enqueued_at,
    });
    serde_json::from_value(stored).unwrap()
}
