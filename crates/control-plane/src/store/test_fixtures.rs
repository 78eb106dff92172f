//! Records for the unit tests of the stores this process owns.

use std::collections::BTreeMap;

use matchplane_contracts::matchmaking::{Assignment, TicketStatus};

use super::TicketRecord;
use crate::clock::Millis;

/// A queued solo ticket in queue `q`, its player named after it.
pub(super) fn ticket(id: &str, group: &str, now: Millis) -> TicketRecord {
    TicketRecord {
        ticket_id: id.to_owned(),
        queue_key: "q".to_owned(),
        group_id: group.to_owned(),
        owner: format!("{id}-player"),
        members: vec![format!("{id}-player")],
        region: None,
        constraints: None,
        attributes: BTreeMap::new(),
        tags: Vec::new(),
        string_args: BTreeMap::new(),
        latencies: BTreeMap::new(),
        status: TicketStatus::Queued,
        enqueued_at: now,
        expires_at: now + 600_000,
        updated_at: now,
        assignment: None,
        assignment_expires_at: None,
        assigned_instance: None,
        failure_reason: None,
    }
}

/// A ticket of `owner` for these members.
pub(super) fn party(
    id: &str,
    owner: &str,
    group: &str,
    members: &[&str],
    now: Millis,
) -> TicketRecord {
    TicketRecord {
        owner: owner.to_owned(),
        members: members.iter().map(|m| (*m).to_owned()).collect(),
        ..ticket(id, group, now)
    }
}

/// An assignment to a land on `server`.
pub(super) fn assignment_on(server: &str, id: &str) -> Assignment {
    Assignment {
        assignment_id: id.to_owned(),
        match_token: String::new(),
        connect_url: "ws://127.0.0.1:1/game/q".to_owned(),
        land_id: format!("q:{id}"),
        server_id: server.to_owned(),
        expires_at: "1970-01-01T00:01:00Z".to_owned(),
        member_tokens: BTreeMap::new(),
        match_id: None,
        team: Some(0),
    }
}
