//! The one way assignments are written, for new matches and backfill alike:
//! sign every token of the batch, commit it to the store, then settle each
//! commit (applied: the tickets leave the pool and watchers hear of it;
//! refused: what changed leaves, the rest goes back to its queue). A failure to
//! sign or to reach the store puts everything back as it was before the round.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use matchplane_contracts::token::MatchClaims;
use matchplane_matchmaker::TicketId;

use super::MatchLoop;
use super::plan::{Origin, Planned, UnsignedCommit};
use crate::clock::Millis;
use crate::events::TicketEvent;
use crate::history::FormedMatch;
use crate::metrics;
use crate::registry::Allocation;
use crate::store::{CommitOutcome, Fence, MatchCommit, StoreError, TicketRecord};
use crate::tokens::{Signer, TokenError};

/// Why a batch was not written; its tickets are back in their queues.
#[derive(Debug, thiserror::Error)]
pub(super) enum CommitError {
    #[error("cannot mint match tokens: {0}")]
    Sign(#[from] TokenError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What became of one commit of a written batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Settled {
    Applied,
    /// Refused because a ticket changed meanwhile; nothing was written.
    Rejected,
    /// Refused because the queue's lease moved on; nothing was written and
    /// the loop no longer matches that queue.
    Fenced,
}

impl MatchLoop {
    /// Signs, commits and settles a batch; one outcome per planned commit, in order.
    pub(super) async fn commit(
        &mut self,
        batch: Vec<Planned>,
        now: Millis,
    ) -> Result<Vec<Settled>, CommitError> {
        let mut unsigned = Vec::with_capacity(batch.len());
        let mut pending = Vec::with_capacity(batch.len());
        for planned in batch {
            unsigned.push(planned.unsigned);
            pending.push((planned.origin, planned.tickets));
        }
        let signed = sign_commits(self.issuer.signer(), unsigned).await;
        let written = match signed {
            Ok(commits) => self.write(commits, &pending, now).await.map_err(|err| {
                metrics::inc(&self.metrics.store_errors);
                CommitError::from(err)
            }),
            Err(err) => Err(CommitError::from(err)),
        };
        let outcomes = match written {
            Ok(outcomes) => outcomes,
            Err(err) => {
                tracing::error!(error = %err, "cannot write assignments; tickets return to their queues");
                for (origin, tickets) in &pending {
                    self.put_back(origin, tickets);
                }
                return Err(err);
            }
        };
        let mut outcomes = outcomes.into_iter();
        let mut settled = Vec::with_capacity(pending.len());
        for (origin, tickets) in pending {
            settled.push(match outcomes.next() {
                Some(CommitOutcome::Applied(records)) => {
                    self.applied(origin, &tickets, records, now);
                    Settled::Applied
                }
                Some(CommitOutcome::Fenced) => {
                    metrics::inc(&self.metrics.fenced_commits);
                    let queue_key = self.queue_of(&tickets);
                    tracing::warn!(land_id = %origin.land_id(), queue_key = ?queue_key,
                        "commit refused: this replica no longer holds the queue's lease; it stops matching the queue");
                    if let Origin::NewMatch { allocation, .. } = &origin {
                        self.registry.release(allocation);
                    }
                    for id in &tickets {
                        self.pool.untrack(*id);
                    }
                    if let Some(queue_key) = queue_key {
                        self.stop_matching(&queue_key);
                    }
                    Settled::Fenced
                }
                Some(CommitOutcome::Rejected { not_queued }) => {
                    metrics::inc(&self.metrics.commit_conflicts);
                    if let Origin::NewMatch { allocation, .. } = &origin {
                        metrics::inc(&self.metrics.matches_dropped);
                        self.registry.release(allocation);
                    }
                    tracing::info!(land_id = %origin.land_id(), gone = not_queued.len(),
                        "assignments dropped: tickets changed meanwhile; the rest return to the queue");
                    self.pool.settle_rejected(&tickets, &not_queued);
                    Settled::Rejected
                }
                None => {
                    tracing::error!(land_id = %origin.land_id(), "the store answered fewer commits than it was given; tickets return to their queues");
                    self.put_back(&origin, &tickets);
                    Settled::Rejected
                }
            });
        }
        Ok(settled)
    }

    /// Writes signed commits: fenced by this replica's leases when it has
    /// them, so a replica that lost a queue's lease cannot write a match of it.
    async fn write(
        &mut self,
        commits: Vec<MatchCommit>,
        pending: &[(Origin, Vec<TicketId>)],
        now: Millis,
    ) -> Result<Vec<CommitOutcome>, StoreError> {
        let Some(leases) = &self.leases else {
            return self.store.commit_matches(commits, now).await;
        };
        let fenced = commits
            .into_iter()
            .zip(pending)
            .map(|(commit, (origin, tickets))| {
                let queue_key = self.queue_of(tickets).unwrap_or_default();
                // Epochs start at 1: a queue not held any more can never pass the check.
                let epoch = leases.epoch(&queue_key).unwrap_or(0);
                // A backfill reuses its land's match id, so it is told apart
                // by its first assignment's (fresh) id instead.
                let match_id = commit
                    .assignments
                    .first()
                    .map(|(_, assignment)| match (origin, &assignment.match_id) {
                        (Origin::NewMatch { .. }, Some(match_id)) => match_id.clone(),
                        _ => assignment.assignment_id.clone(),
                    })
                    .unwrap_or_default();
                let fence = Fence {
                    queue_key,
                    holder: leases.holder().to_owned(),
                    epoch,
                    match_id,
                };
                (commit, fence)
            })
            .collect();
        self.store.commit_matches_fenced(fenced, now).await
    }

    /// The queue of a commit's tickets (all of one queue).
    fn queue_of(&self, tickets: &[TicketId]) -> Option<String> {
        let first = tickets.first()?;
        self.pool
            .records()
            .get(first)
            .map(|record| record.queue_key.clone())
    }

    /// Undoes a commit that was not written: its land is free again and its
    /// tickets return to their queues, keeping their place in line.
    fn put_back(&mut self, origin: &Origin, tickets: &[TicketId]) {
        if let Origin::NewMatch { allocation, .. } = origin {
            self.registry.release(allocation);
        }
        self.pool.requeue_all(tickets);
    }

    fn applied(
        &mut self,
        origin: Origin,
        tickets: &[TicketId],
        records: Vec<TicketRecord>,
        now: Millis,
    ) {
        match origin {
            Origin::NewMatch {
                queue_key,
                quality,
                allocation,
            } => {
                metrics::inc(&self.metrics.matches_assigned);
                self.metrics
                    .tickets_assigned
                    .fetch_add(records.len() as u64, Ordering::Relaxed);
                tracing::info!(
                    queue_key = %queue_key,
                    land_id = %allocation.land_id,
                    server_id = %allocation.server_id,
                    tickets = records.len(),
                    quality,
                    "match assigned"
                );
                self.settings.history.record_match(formed_match(
                    &queue_key,
                    quality,
                    &allocation,
                    &records,
                    now,
                ));
                let recent = self.recent_waits.entry(queue_key).or_default();
                recent.last_at = now;
                for record in &records {
                    let wait = now.saturating_sub(record.enqueued_at);
                    self.metrics.observe_match_wait(wait);
                    recent.record(wait);
                }
            }
            Origin::Backfill { land_id } => {
                tracing::info!(land_id = %land_id, tickets = records.len(), "land backfilled");
            }
        }
        for id in tickets {
            self.pool.untrack(*id);
        }
        for record in records {
            if let Some(assignment) = record.assignment {
                self.events.publish(TicketEvent::Assigned {
                    ticket_id: record.ticket_id,
                    assignment: Box::new(assignment),
                });
            }
        }
    }
}

/// An applied new match as the dashboard's history keeps it.
fn formed_match(
    queue_key: &str,
    quality: f64,
    allocation: &Allocation,
    records: &[TicketRecord],
    now: Millis,
) -> FormedMatch {
    let mut teams: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for record in records {
        let team = record
            .assignment
            .as_ref()
            .and_then(|assignment| assignment.team)
            .unwrap_or(0);
        teams
            .entry(team)
            .or_default()
            .extend(record.members.iter().cloned());
    }
    FormedMatch {
        match_id: records
            .iter()
            .find_map(|record| record.assignment.as_ref()?.match_id.clone()),
        queue_key: queue_key.to_owned(),
        land_id: allocation.land_id.clone(),
        server_id: allocation.server_id.clone(),
        teams: teams.into_values().collect(),
        tickets: records.len(),
        quality,
        waits: records
            .iter()
            .map(|record| now.saturating_sub(record.enqueued_at))
            .collect(),
        at: now,
    }
}

/// Below this many tokens the hand-off to a second thread costs more than it
/// saves. At 16, rounds of 16–63 tokens (common at 10,000 assignments/s) went
/// to the blocking pool: the wake-ups and the second core's cold copy of the
/// signing tables cost ≈ 3 µs of CPU per assignment, and bought little
/// latency (p99 time to match at 20,000/s: 4.5–8.2 ms against 6.0–9.5 ms at
/// 64). Larger rounds, under bursts and near saturation, still halve their wait.
const PARALLEL_SIGNING_FROM: usize = 64;

/// Signs every token of a batch, on two threads when the batch is large
/// (signing dominates the matching loop's CPU), and puts the tokens in place:
/// each member's in `memberTokens` (parties), the first member's as `matchToken`.
async fn sign_commits(
    signer: Arc<Signer>,
    unsigned: Vec<UnsignedCommit>,
) -> Result<Vec<MatchCommit>, TokenError> {
    let mut claims: Vec<(usize, usize, MatchClaims)> = Vec::new();
    let mut commits = Vec::with_capacity(unsigned.len());
    for (
        commit_index,
        UnsignedCommit {
            commit,
            claims: planned,
        },
    ) in unsigned.into_iter().enumerate()
    {
        claims.extend(
            planned
                .into_iter()
                .map(|(assignment, claim)| (commit_index, assignment, claim)),
        );
        commits.push(commit);
    }
    let tokens: Vec<String> = if claims.len() < PARALLEL_SIGNING_FROM {
        claims
            .iter()
            .map(|(_, _, claim)| signer.sign(claim))
            .collect::<Result<_, _>>()?
    } else {
        let second_half = claims.split_off(claims.len() / 2);
        let background_signer = Arc::clone(&signer);
        let background = tokio::task::spawn_blocking(move || {
            let tokens: Result<Vec<String>, _> = second_half
                .iter()
                .map(|(_, _, claim)| background_signer.sign(claim))
                .collect();
            (second_half, tokens)
        });
        let mut tokens: Vec<String> = claims
            .iter()
            .map(|(_, _, claim)| signer.sign(claim))
            .collect::<Result<_, _>>()?;
        match background.await {
            Ok((second_half, rest)) => {
                tokens.extend(rest?);
                claims.extend(second_half);
            }
            Err(join_error) => {
                // The blocking task panicked or was cancelled; the batch goes back to the queue.
                tracing::warn!(error = %join_error, "background signing failed");
                return Err(TokenError::Background(join_error.to_string()));
            }
        }
        tokens
    };
    for ((commit_index, assignment_index, claim), token) in claims.into_iter().zip(tokens) {
        let Some((_, assignment)) = commits
            .get_mut(commit_index)
            .and_then(|commit| commit.assignments.get_mut(assignment_index))
        else {
            continue;
        };
        if claim.members.first() == Some(&claim.sub) {
            assignment.match_token.clone_from(&token);
        }
        // A solo ticket's only token is already `matchToken`.
        if claim.members.len() > 1 {
            assignment.member_tokens.insert(claim.sub, token);
        }
    }
    Ok(commits)
}
