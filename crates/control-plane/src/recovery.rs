//! What becomes of tickets a lost game server stranded — decided as a pure
//! function over the lost server's last report and its assigned tickets, so the
//! rules are tested without a server, a store or a clock. The matching loop does
//! the I/O (reads the tickets, applies the releases, tracks and publishes).

use matchplane_contracts::matchmaking::TicketStatus;
use matchplane_contracts::realtime::reason;

use crate::clock::Millis;
use crate::registry::LostServer;
use crate::store::{Release, ReleaseRequest, TicketRecord};

/// `--requeue-on-server-loss`, `--requeue-joined` and the queue lifetime a
/// requeued ticket gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecoveryPolicy {
    pub requeue: bool,
    pub requeue_joined: bool,
    pub ticket_ttl_ms: Millis,
}

/// One ticket to release, and the land its players were in (if they had joined).
#[derive(Debug, Clone, PartialEq)]
pub struct Stranded {
    pub request: ReleaseRequest,
    pub joined_land: Option<String>,
}

/// The tickets of `assigned` that the lost instance held, and what to do with each:
///
/// - its land was open in the server's last report → players had joined: they
///   learn `match.lost`; requeued unless `requeue_joined` is off;
/// - allocated but never reported open (pending), assignment still live →
///   nobody joined yet: requeued;
/// - anything else → nothing live to save: the match ended (its land was open
///   once and closed since), or was abandoned;
/// - assigned to another instance of the same server id → not this loss's business.
///
/// With `requeue` off every released ticket fails instead.
pub fn plan(
    lost: &LostServer,
    assigned: &[TicketRecord],
    policy: RecoveryPolicy,
    now: Millis,
) -> Vec<Stranded> {
    let open_lands = lost.record.land_ids.as_deref().unwrap_or_default();
    let lost_instance = lost.record.instance_id.as_deref();
    assigned
        .iter()
        .filter(|ticket| ticket.status == TicketStatus::Assigned)
        .filter(
            |ticket| match (lost_instance, ticket.assigned_instance.as_deref()) {
                (Some(lost), Some(held)) => lost == held,
                // Records from before instance ids: the server id decides.
                _ => true,
            },
        )
        .filter_map(|ticket| {
            let assignment = ticket.assignment.as_ref()?;
            if assignment.server_id != lost.record.server_id {
                return None;
            }
            let joined = open_lands.contains(&assignment.land_id);
            let live = ticket.assignment_expires_at.is_some_and(|at| now < at);
            let never_opened = lost.pending_lands.contains(&assignment.land_id);
            let has_a_live_match = joined || (never_opened && live);
            if !has_a_live_match {
                return None;
            }
            let release = if !policy.requeue || (joined && !policy.requeue_joined) {
                Release::Fail {
                    reason: reason::SERVER_LOST.to_owned(),
                }
            } else {
                Release::Requeue {
                    expires_at: now.saturating_add(policy.ticket_ttl_ms),
                }
            };
            Some(Stranded {
                request: ReleaseRequest {
                    ticket_id: ticket.ticket_id.clone(),
                    assignment_id: assignment.assignment_id.clone(),
                    release,
                    joined_land: joined.then(|| assignment.land_id.clone()),
                },
                joined_land: joined.then(|| assignment.land_id.clone()),
            })
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::collections::BTreeMap;

    use matchplane_contracts::matchmaking::Assignment;

    use super::*;
    use crate::registry::LossKind;
    use crate::store::ServerRecord;

    const POLICY: RecoveryPolicy = RecoveryPolicy {
        requeue: true,
        requeue_joined: true,
        ticket_ttl_ms: 600_000,
    };

    fn lost(instance: &str, open: &[&str]) -> LostServer {
        LostServer {
            record: ServerRecord {
                server_id: "gs-1".to_owned(),
                host: "127.0.0.1".to_owned(),
                port: 1,
                land_types: vec!["t".to_owned()],
                connect_host: None,
                connect_port: None,
                connect_scheme: None,
                connect_path_prefix: None,
                region: None,
                capacity: None,
                load: None,
                draining: false,
                land_ids: Some(open.iter().map(|land| (*land).to_owned()).collect()),
                registered_at: 0,
                last_seen: 1_000,
                registered_with: None,
                instance_id: Some(instance.to_owned()),
            },
            why: LossKind::Silent,
            pending_lands: vec!["t:new".to_owned(), "t:other".to_owned()],
        }
    }

    fn assigned(
        ticket: &str,
        server: &str,
        instance: &str,
        land: &str,
        expires_at: Millis,
    ) -> TicketRecord {
        TicketRecord {
            group_id: format!("g-{ticket}"),
            status: TicketStatus::Assigned,
            updated_at: 500,
            assignment: Some(Assignment {
                assignment_id: format!("a-{ticket}"),
                match_token: String::new(),
                connect_url: String::new(),
                land_id: land.to_owned(),
                server_id: server.to_owned(),
                expires_at: String::new(),
                member_tokens: BTreeMap::new(),
                match_id: None,
                team: None,
            }),
            assignment_expires_at: Some(expires_at),
            assigned_instance: Some(instance.to_owned()),
            ..TicketRecord::queued(
                ticket.to_owned(),
                "t:1v1".to_owned(),
                vec![ticket.to_owned()],
                10,
                600_010,
            )
        }
    }

    #[test]
    fn unjoined_live_allocations_are_requeued_and_joined_lands_are_lost() {
        let tickets = [
            assigned("waiting", "gs-1", "i1", "t:new", 61_000),
            assigned("playing", "gs-1", "i1", "t:open", 5_000),
            assigned("done", "gs-1", "i1", "t:closed", 5_000),
            // Ended a moment ago: its land was open once, so it is not pending.
            assigned("just-finished", "gs-1", "i1", "t:finished", 61_000),
            assigned("next-life", "gs-1", "i2", "t:other", 61_000),
            assigned("elsewhere", "gs-2", "i1", "t:new", 61_000),
        ];
        let plan = plan(&lost("i1", &["t:open"]), &tickets, POLICY, 10_000);
        let by_ticket: BTreeMap<&str, &Stranded> = plan
            .iter()
            .map(|stranded| (stranded.request.ticket_id.as_str(), stranded))
            .collect();
        assert_eq!(by_ticket.len(), 2, "{plan:?}");
        assert_eq!(by_ticket["waiting"].joined_land, None);
        assert_eq!(
            by_ticket["waiting"].request.release,
            Release::Requeue {
                expires_at: 610_000
            }
        );
        assert_eq!(by_ticket["waiting"].request.assignment_id, "a-waiting");
        assert_eq!(by_ticket["playing"].joined_land.as_deref(), Some("t:open"));
        assert!(matches!(
            by_ticket["playing"].request.release,
            Release::Requeue { .. }
        ));
    }

    #[test]
    fn policies_turn_releases_into_failures() {
        let tickets = [
            assigned("waiting", "gs-1", "i1", "t:new", 61_000),
            assigned("playing", "gs-1", "i1", "t:open", 5_000),
        ];
        let server = lost("i1", &["t:open"]);
        let keep_joined = RecoveryPolicy {
            requeue_joined: false,
            ..POLICY
        };
        let plan_kept = plan(&server, &tickets, keep_joined, 10_000);
        let failed = |stranded: &Stranded| {
            stranded.request.release
                == Release::Fail {
                    reason: reason::SERVER_LOST.to_owned(),
                }
        };
        assert_eq!(plan_kept.len(), 2, "{plan_kept:?}");
        assert_eq!(plan_kept.iter().filter(|s| failed(s)).count(), 1);
        assert!(failed(
            plan_kept
                .iter()
                .find(|s| s.request.ticket_id == "playing")
                .unwrap()
        ));
        let off = RecoveryPolicy {
            requeue: false,
            ..POLICY
        };
        let plan_off = plan(&server, &tickets, off, 10_000);
        assert_eq!(plan_off.len(), 2, "{plan_off:?}");
        assert!(plan_off.iter().all(failed), "{plan_off:?}");
    }

    #[test]
    fn a_restart_releases_only_the_old_instance() {
        let tickets = [
            assigned("old", "gs-1", "i1", "t:a", 61_000),
            assigned("new", "gs-1", "i2", "t:b", 61_000),
        ];
        let mut server = lost("i1", &[]);
        server.why = LossKind::Restarted;
        server.pending_lands = vec!["t:a".to_owned(), "t:b".to_owned()];
        let plan = plan(&server, &tickets, POLICY, 10_000);
        assert_eq!(plan.len(), 1);
        assert_eq!(plan[0].request.ticket_id, "old");
    }
}
