//! The ticket state machine of the stores this process owns (redb and the
//! in-memory one), written once over the few index operations it needs, so
//! both keep exactly the same rules: dedup per owner and group, one queued
//! ticket per player, all-or-nothing commits, releases that void only the
//! assignment they name, and purging of finished tickets oldest first.
//! Every function runs inside one atomic unit of its store (a redb write
//! transaction, a held lock), which is what makes its checks and writes one step.

use matchplane_contracts::matchmaking::TicketStatus;

use super::{
    CancelOutcome, CommitOutcome, CreateOutcome, MatchCommit, Release, ReleaseOutcome,
    ReleaseRequest, StoreError, TicketRecord,
};
use crate::clock::Millis;

/// The records and indexes the rules read and write. An implementation only
/// stores; it decides nothing.
pub(super) trait TicketTables {
    fn ticket(&self, ticket_id: &str) -> Result<Option<TicketRecord>, StoreError>;
    fn insert_ticket(&mut self, ticket: &TicketRecord) -> Result<(), StoreError>;
    /// Removes a ticket unless it is queued, and returns it (its match tokens
    /// may be left out). Returned rather than read first: a purge reads
    /// every ticket it removes, and a read is a copy (memory) or a decode (redb).
    fn remove_unqueued_ticket(
        &mut self,
        ticket_id: &str,
    ) -> Result<Option<TicketRecord>, StoreError>;

    /// (owner, groupId) → the ticket id of that owner's most recent ticket of the group.
    fn owner_group(&self, owner: &str, group_id: &str) -> Result<Option<String>, StoreError>;
    fn insert_owner_group(
        &mut self,
        owner: &str,
        group_id: &str,
        ticket_id: &str,
    ) -> Result<(), StoreError>;
    fn remove_owner_group(&mut self, owner: &str, group_id: &str) -> Result<(), StoreError>;

    /// playerId → the queued ticket the player waits in.
    fn queued_player(&self, player_id: &str) -> Result<Option<String>, StoreError>;
    fn insert_queued_player(&mut self, player_id: &str, ticket_id: &str) -> Result<(), StoreError>;
    fn remove_queued_player(&mut self, player_id: &str) -> Result<(), StoreError>;

    /// The finished index, keyed by [`finished_key`] and ordered by it.
    fn insert_finished(&mut self, key: String) -> Result<(), StoreError>;
    fn remove_finished(&mut self, key: &str) -> Result<(), StoreError>;
    fn finished_len(&self) -> Result<u64, StoreError>;
    /// Finished keys oldest first, for as long as `wanted` accepts the next one.
    fn oldest_finished(&self, wanted: impl FnMut(&str) -> bool) -> Result<Vec<String>, StoreError>;

    /// (server id, ticket id) of every ticket assigned to a land on that server.
    fn insert_server_ticket(&mut self, server_id: &str, ticket_id: &str) -> Result<(), StoreError>;
    fn remove_server_ticket(&mut self, server_id: &str, ticket_id: &str) -> Result<(), StoreError>;
}

/// Orders finished tickets by when they finished; zero-padded so the string
/// order is the time order.
pub(super) fn finished_key(updated_at: Millis, ticket_id: &str) -> String {
    // As `format!("{updated_at:020}:{ticket_id}")` writes it, without the
    // formatting machinery: that was 5 % of the store's work per assignment.
    // Twenty digits hold any u64.
    let mut digits = [b'0'; 20];
    let mut rest = updated_at;
    for digit in digits.iter_mut().rev() {
        *digit = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    let mut key = String::with_capacity(digits.len() + 1 + ticket_id.len());
    key.extend(digits.iter().map(|&digit| char::from(digit)));
    key.push(':');
    key.push_str(ticket_id);
    key
}

fn put_ticket(tables: &mut impl TicketTables, ticket: &TicketRecord) -> Result<(), StoreError> {
    tables.insert_ticket(ticket)?;
    // A ticket is indexed as finished once per time it leaves `queued`
    // (a released assignment takes its entry out again, see `release`).
    if ticket.status != TicketStatus::Queued {
        tables.insert_finished(finished_key(ticket.updated_at, &ticket.ticket_id))?;
        // Leaving the queue frees the members to queue again at once.
        release_players(tables, ticket)?;
    }
    Ok(())
}

/// Drops the ticket's members from the queued-player index, except where
/// a newer ticket has taken the entry over.
fn release_players(
    tables: &mut impl TicketTables,
    ticket: &TicketRecord,
) -> Result<(), StoreError> {
    for member in &ticket.members {
        let points_here = tables
            .queued_player(member)?
            .is_some_and(|id| id == ticket.ticket_id);
        if points_here {
            tables.remove_queued_player(member)?;
        }
    }
    Ok(())
}

/// The first member already waiting in another queued ticket, if any.
fn queued_elsewhere(
    tables: &impl TicketTables,
    members: &[String],
    now: Millis,
) -> Result<Option<(String, String)>, StoreError> {
    for member in members {
        let Some(ticket_id) = tables.queued_player(member)? else {
            continue;
        };
        // A ticket past its expiry that the matcher has not marked yet no
        // longer holds the player.
        if tables
            .ticket(&ticket_id)?
            .is_some_and(|queued| queued.is_queued_at(now))
        {
            return Ok(Some((member.clone(), ticket_id)));
        }
    }
    Ok(None)
}

pub(super) fn create(
    tables: &mut impl TicketTables,
    ticket: TicketRecord,
    now: Millis,
) -> Result<CreateOutcome, StoreError> {
    let ticket = ticket.with_default_owner();
    // A generated group is never named again: neither looked up nor indexed
    // (a tenth of a finished ticket's bytes on disk).
    let named_group = ticket.has_named_group();
    let existing_id = if named_group {
        tables.owner_group(&ticket.owner, &ticket.group_id)?
    } else {
        None
    };
    // Dedup first: an idempotent retry must get its ticket back, not be
    // refused because its own members are queued (in that very ticket).
    if let Some(existing_id) = existing_id
        && let Some(existing) = tables.ticket(&existing_id)?
        && existing.is_live(now)
    {
        return Ok(CreateOutcome::Existing(existing));
    }
    if let Some((player_id, ticket_id)) = queued_elsewhere(tables, &ticket.members, now)? {
        return Ok(CreateOutcome::PlayerAlreadyQueued {
            player_id,
            ticket_id,
        });
    }
    put_ticket(tables, &ticket)?;
    if named_group {
        tables.insert_owner_group(&ticket.owner, &ticket.group_id, &ticket.ticket_id)?;
    }
    for member in &ticket.members {
        tables.insert_queued_player(member, &ticket.ticket_id)?;
    }
    Ok(CreateOutcome::Created(ticket))
}

pub(super) fn cancel(
    tables: &mut impl TicketTables,
    ticket_id: &str,
    now: Millis,
) -> Result<CancelOutcome, StoreError> {
    let Some(mut ticket) = tables.ticket(ticket_id)? else {
        return Ok(CancelOutcome::NotFound);
    };
    if ticket.status != TicketStatus::Queued {
        return Ok(CancelOutcome::NotQueued(ticket));
    }
    ticket.status = TicketStatus::Cancelled;
    ticket.updated_at = now;
    put_ticket(tables, &ticket)?;
    Ok(CancelOutcome::Cancelled(ticket))
}

/// Commits each match on its own: one rejected match does not hold back the others.
pub(super) fn commit_all(
    tables: &mut impl TicketTables,
    matches: Vec<MatchCommit>,
    now: Millis,
) -> Result<Vec<CommitOutcome>, StoreError> {
    let mut outcomes = Vec::with_capacity(matches.len());
    for commit in matches {
        outcomes.push(commit_match(tables, commit, now)?);
    }
    Ok(outcomes)
}

fn commit_match(
    tables: &mut impl TicketTables,
    commit: MatchCommit,
    now: Millis,
) -> Result<CommitOutcome, StoreError> {
    let mut tickets = Vec::with_capacity(commit.assignments.len());
    let mut not_queued = Vec::new();
    for (ticket_id, _) in &commit.assignments {
        match tables.ticket(ticket_id)? {
            Some(ticket) if ticket.status == TicketStatus::Queued => tickets.push(ticket),
            _ => not_queued.push(ticket_id.clone()),
        }
    }
    if !not_queued.is_empty() {
        return Ok(CommitOutcome::Rejected { not_queued });
    }
    for (ticket, (_, assignment)) in tickets.iter_mut().zip(commit.assignments) {
        ticket.status = TicketStatus::Assigned;
        ticket.updated_at = now;
        tables.insert_server_ticket(&assignment.server_id, &ticket.ticket_id)?;
        ticket.assignment = Some(assignment);
        ticket.assignment_expires_at = Some(commit.assignment_expires_at);
        ticket
            .assigned_instance
            .clone_from(&commit.server_instance_id);
    }
    for ticket in &tickets {
        put_ticket(tables, ticket)?;
    }
    Ok(CommitOutcome::Applied(tickets))
}

pub(super) fn expire(
    tables: &mut impl TicketTables,
    ticket_ids: &[String],
    now: Millis,
) -> Result<Vec<TicketRecord>, StoreError> {
    let mut expired = Vec::new();
    for ticket_id in ticket_ids {
        if let Some(mut ticket) = tables.ticket(ticket_id)?
            && ticket.status == TicketStatus::Queued
        {
            ticket.status = TicketStatus::Expired;
            ticket.updated_at = now;
            put_ticket(tables, &ticket)?;
            expired.push(ticket);
        }
    }
    Ok(expired)
}

pub(super) fn release_all(
    tables: &mut impl TicketTables,
    releases: Vec<ReleaseRequest>,
    now: Millis,
) -> Result<Vec<ReleaseOutcome>, StoreError> {
    let mut outcomes = Vec::with_capacity(releases.len());
    for request in releases {
        outcomes.push(release(tables, request, now)?);
    }
    Ok(outcomes)
}

fn release(
    tables: &mut impl TicketTables,
    request: ReleaseRequest,
    now: Millis,
) -> Result<ReleaseOutcome, StoreError> {
    let Some(mut ticket) = tables.ticket(&request.ticket_id)? else {
        return Ok(ReleaseOutcome::Unchanged(request.ticket_id));
    };
    let holds_it = ticket.status == TicketStatus::Assigned
        && ticket
            .assignment
            .as_ref()
            .is_some_and(|assignment| assignment.assignment_id == request.assignment_id);
    if !holds_it {
        return Ok(ReleaseOutcome::Unchanged(request.ticket_id));
    }
    tables.remove_finished(&finished_key(ticket.updated_at, &ticket.ticket_id))?;
    if let Some(assignment) = &ticket.assignment {
        tables.remove_server_ticket(&assignment.server_id, &ticket.ticket_id)?;
    }
    ticket.assignment = None;
    ticket.assignment_expires_at = None;
    ticket.assigned_instance = None;
    ticket.updated_at = now;
    let release = match request.release {
        // A member who queued again meanwhile keeps that ticket; this one ends.
        Release::Requeue { .. } if queued_elsewhere(tables, &ticket.members, now)?.is_some() => {
            Release::Fail {
                reason: matchplane_contracts::realtime::reason::PLAYER_QUEUED_ELSEWHERE.to_owned(),
            }
        }
        release => release,
    };
    match release {
        Release::Requeue { expires_at } => {
            ticket.status = TicketStatus::Queued;
            ticket.expires_at = expires_at;
            put_ticket(tables, &ticket)?;
            for member in &ticket.members {
                tables.insert_queued_player(member, &ticket.ticket_id)?;
            }
            Ok(ReleaseOutcome::Requeued(ticket))
        }
        Release::Fail { reason } => {
            ticket.status = TicketStatus::Failed;
            ticket.failure_reason = Some(reason);
            put_ticket(tables, &ticket)?;
            Ok(ReleaseOutcome::Failed(ticket))
        }
    }
}

/// Deletes finished tickets last updated before `before`, then the oldest
/// finished ones beyond `keep_at_most`, at most `limit` of them; returns how
/// many index entries went. The cap is recomputed on each call, so calls of
/// `limit` entries until one takes fewer delete exactly what one pass would.
pub(super) fn purge(
    tables: &mut impl TicketTables,
    before: Millis,
    keep_at_most: u64,
    limit: u64,
) -> Result<u64, StoreError> {
    let upper = finished_key(before, "");
    // Oldest first: everything past the retention, then as many more as
    // it takes to get down to the cap.
    let over_cap = tables.finished_len()?.saturating_sub(keep_at_most);
    let mut taken = 0u64;
    let doomed = tables.oldest_finished(|key| {
        if taken >= limit || (key >= upper.as_str() && taken >= over_cap) {
            return false;
        }
        taken += 1;
        true
    })?;
    for key in &doomed {
        tables.remove_finished(key)?;
        let Some((_, ticket_id)) = key.split_once(':') else {
            continue;
        };
        // A stale entry of a ticket that was queued again is left: never
        // purge a live ticket.
        let Some(ticket) = tables.remove_unqueued_ticket(ticket_id)? else {
            continue;
        };
        if let Some(assignment) = &ticket.assignment {
            tables.remove_server_ticket(&assignment.server_id, ticket_id)?;
        }
        let group_points_here = ticket.has_named_group()
            && tables
                .owner_group(&ticket.owner, &ticket.group_id)?
                .is_some_and(|id| id == ticket_id);
        if group_points_here {
            tables.remove_owner_group(&ticket.owner, &ticket.group_id)?;
        }
        release_players(tables, &ticket)?;
    }
    Ok(doomed.len() as u64)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::finished_key;

    proptest! {
        #[test]
        fn a_finished_key_is_the_zero_padded_time_then_the_id(
            updated_at in prop_oneof![Just(0u64), Just(u64::MAX), any::<u64>()],
            ticket_id in "[0-9A-Za-z:-]{0,40}",
        ) {
            prop_assert_eq!(
                finished_key(updated_at, &ticket_id),
                format!("{updated_at:020}:{ticket_id}")
            );
        }
    }
}
