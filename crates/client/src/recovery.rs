//! Surviving a lost game server: re-check the ticket, follow a new assignment.
//!
//! When a game server dies, the control plane requeues the tickets it held (their
//! status returns to `queued`, `/realtime` pushes `ticket.requeued` or `match.lost`)
//! and the next `match.assigned` names a live server. Until it has noticed (a few
//! heartbeats), the ticket still names the dead land; so a client whose land refuses
//! the connection waits a short jittered moment and asks again, instead of failing at
//! once or hammering the control plane.

use std::time::Duration;

use matchplane_contracts::matchmaking::{Assignment, TicketStatus};
use rand::Rng as _;

use crate::error::{JoinError, MatchmakingError};
use crate::land::{ConnectOptions, LandConnection};
use crate::matchmaking::MatchmakingClient;

/// How a client waits and re-checks its ticket when its land cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RecoveryPolicy {
    /// The first wait is jittered in `first_delay..4 × first_delay`; every further wait
    /// doubles, up to `max_delay`. Jitter keeps the players of one dead server from
    /// re-checking in lockstep.
    pub first_delay: Duration,
    pub max_delay: Duration,
    /// Failed connections to the same assignment before [`MatchmakingClient::join_land`]
    /// gives up: long enough to span the control plane's server TTL with the defaults.
    pub same_land_attempts: u32,
    /// How long a requeued ticket may wait for its next assignment.
    pub reassignment_timeout: Duration,
}

impl Default for RecoveryPolicy {
    fn default() -> Self {
        Self {
            first_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(4),
            same_land_attempts: 8,
            reassignment_timeout: Duration::from_secs(60),
        }
    }
}

impl RecoveryPolicy {
    fn jittered(&self, base: Duration) -> Duration {
        let factor = rand::thread_rng().gen_range(1.0..4.0);
        base.mul_f64(factor).min(self.max_delay)
    }

    fn next_base(&self, base: Duration) -> Duration {
        (base * 2).min(self.max_delay)
    }
}

/// What a re-check found.
#[derive(Debug, Clone, PartialEq)]
pub enum Recheck {
    /// The ticket has another assignment now (it was requeued and matched again): join it.
    Reassigned(Box<Assignment>),
    /// The ticket still names the same land: the control plane has not given up on its
    /// server (yet); retry it later.
    SameLand,
}

/// A joined land, with the assignment it came from.
#[derive(Debug)]
pub struct JoinedLand {
    pub connection: LandConnection,
    /// The assignment finally joined: another one than given if the ticket was requeued.
    pub assignment: Assignment,
    /// How many times a new assignment was followed.
    pub reassignments: u32,
}

fn same_assignment(a: &Assignment, b: &Assignment) -> bool {
    a.assignment_id == b.assignment_id && a.land_id == b.land_id
}

impl MatchmakingClient {
    /// Asks the control plane what became of a ticket whose land (`current`) could not be
    /// reached. A ticket queued again is waited for (push, else polling) up to `timeout`;
    /// a ticket that ended is its typed error (`Failed`, `Cancelled`, `Expired`).
    pub async fn recheck_assignment(
        &self,
        ticket_id: &str,
        current: &Assignment,
        timeout: Duration,
    ) -> Result<Recheck, MatchmakingError> {
        let status = self.status(ticket_id).await?;
        let owner = || ticket_id.to_owned();
        match status.status {
            TicketStatus::Assigned => match status.assignment {
                Some(assignment) if !same_assignment(&assignment, current) => {
                    Ok(Recheck::Reassigned(Box::new(assignment)))
                }
                _ => Ok(Recheck::SameLand),
            },
            TicketStatus::Queued => {
                let assignment = self.wait_for_assignment(ticket_id, timeout).await?;
                if same_assignment(&assignment, current) {
                    return Ok(Recheck::SameLand);
                }
                Ok(Recheck::Reassigned(Box::new(assignment)))
            }
            TicketStatus::Failed => Err(MatchmakingError::Failed {
                ticket_id: owner(),
                reason: status.reason.unwrap_or_default(),
            }),
            TicketStatus::Cancelled => Err(MatchmakingError::Cancelled { ticket_id: owner() }),
            TicketStatus::Expired => Err(MatchmakingError::Expired { ticket_id: owner() }),
        }
    }

    /// Joins the land of `assignment` as `player_id`. When the land cannot be reached
    /// ([`crate::LandError::is_unreachable_land`]: refused, reset, no `join.ok`, 4404
    /// `land_lost`), waits a jittered moment and re-checks the ticket: a new assignment is
    /// followed, the same one retried up to `policy.same_land_attempts` times in a row.
    pub async fn join_land(
        &self,
        ticket_id: &str,
        assignment: Assignment,
        player_id: &str,
        options: ConnectOptions,
        policy: &RecoveryPolicy,
    ) -> Result<JoinedLand, JoinError> {
        let mut assignment = assignment;
        let mut reassignments = 0;
        let mut failures = 0;
        let mut base = policy.first_delay;
        loop {
            let err =
                match LandConnection::connect_with(&assignment, player_id, options.clone()).await {
                    Ok(connection) => {
                        return Ok(JoinedLand {
                            connection,
                            assignment,
                            reassignments,
                        });
                    }
                    Err(err) if err.is_unreachable_land() => err,
                    Err(err) => return Err(err.into()),
                };
            failures += 1;
            if failures >= policy.same_land_attempts {
                return Err(err.into());
            }
            tracing::debug!(ticket_id, land_id = %assignment.land_id, error = %err,
                "land unreachable; re-checking the ticket");
            match self
                .wait_then_recheck(ticket_id, &assignment, policy, &mut base)
                .await
            {
                Ok(Some(next)) => {
                    tracing::info!(ticket_id, from = %assignment.land_id, to = %next.land_id,
                        "following a new assignment");
                    assignment = next;
                    reassignments += 1;
                    failures = 0;
                    base = policy.first_delay;
                }
                Ok(None) => {}
                Err(err) => return Err(err.into()),
            }
        }
    }

    /// For a player whose land connection dropped while playing: re-checks the ticket
    /// with jittered, doubling waits until it names another assignment (the server was
    /// lost and the ticket requeued and matched again), and returns that one. Never
    /// returns while the ticket still names `current`: race it with the connection's own
    /// reconnect and drop whichever loses.
    pub async fn wait_for_reassignment(
        &self,
        ticket_id: &str,
        current: &Assignment,
        policy: &RecoveryPolicy,
    ) -> Result<Assignment, MatchmakingError> {
        let mut base = policy.first_delay;
        loop {
            if let Some(next) = self
                .wait_then_recheck(ticket_id, current, policy, &mut base)
                .await?
            {
                return Ok(next);
            }
        }
    }

    /// One jittered wait and re-check; transient failures of the control plane count as
    /// "nothing new yet".
    async fn wait_then_recheck(
        &self,
        ticket_id: &str,
        current: &Assignment,
        policy: &RecoveryPolicy,
        base: &mut Duration,
    ) -> Result<Option<Assignment>, MatchmakingError> {
        tokio::time::sleep(policy.jittered(*base)).await;
        *base = policy.next_base(*base);
        match self
            .recheck_assignment(ticket_id, current, policy.reassignment_timeout)
            .await
        {
            Ok(Recheck::Reassigned(next)) => Ok(Some(*next)),
            Ok(Recheck::SameLand) => Ok(None),
            Err(err) if err.is_retryable() => {
                tracing::debug!(ticket_id, error = %err, "re-check failed; retrying");
                Ok(None)
            }
            Err(err) => Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_are_jittered_doubling_and_bounded() {
        let policy = RecoveryPolicy::default();
        let mut base = policy.first_delay;
        for _ in 0..100 {
            let wait = policy.jittered(base);
            assert!(wait >= base.min(policy.max_delay) && wait <= policy.max_delay);
            assert!(wait < base * 4);
            base = policy.next_base(base);
        }
        assert_eq!(base, policy.max_delay);
    }
}
