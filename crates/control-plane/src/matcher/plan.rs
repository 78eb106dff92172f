//! The pure half of placing a match: from a snapshot (the engine's proposal or
//! backfill result, the ticket records, where the land is) to the commit the
//! store applies and the claims of every token still to be signed. No I/O, no
//! clock, no randomness of its own (ids come from the caller), so what a match
//! writes can be tested without a store, a registry or HTTP.

use std::collections::{BTreeMap, HashMap};

use matchplane_contracts::matchmaking::Assignment;
use matchplane_contracts::token::MatchClaims;
use matchplane_matchmaker::{BackfillMatch, Match, TicketId};

use super::{BackfillJob, BackfillPlacement};
use crate::clock::{Millis, format_rfc3339};
use crate::registry::Allocation;
use crate::store::{MatchCommit, TicketRecord};

/// What every token and assignment of one round shares.
pub(super) struct TokenTerms<'a> {
    pub issuer: &'a str,
    pub audience: &'a str,
    pub issued_at: Millis,
    /// When the assignments (and their tokens) expire.
    pub expires_at: Millis,
}

/// A commit whose tokens are still to be signed: `(assignment index, claims)`.
pub(super) struct UnsignedCommit {
    pub commit: MatchCommit,
    pub claims: Vec<(usize, MatchClaims)>,
}

/// Why a commit is made, which decides what its success or failure undoes and counts.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Origin {
    /// A proposed match on a freshly allocated land, given back if the commit fails.
    NewMatch {
        queue_key: String,
        quality: f64,
        allocation: Allocation,
    },
    /// Tickets joining a running land.
    Backfill { land_id: String },
}

impl Origin {
    pub fn land_id(&self) -> &str {
        match self {
            Origin::NewMatch { allocation, .. } => &allocation.land_id,
            Origin::Backfill { land_id } => land_id,
        }
    }
}

/// One commit ready for signing, with the pool tickets it takes.
pub(super) struct Planned {
    pub origin: Origin,
    /// Every ticket the engine handed out for it (some may have left the loop
    /// meanwhile and have no assignment); all leave or return to the pool together.
    pub tickets: Vec<TicketId>,
    pub unsigned: UnsignedCommit,
}

/// Where a set of assignments points.
struct LandTarget<'a> {
    land: &'a Allocation,
    land_type: &'a str,
    match_id: &'a str,
}

/// A proposed match on its allocated land: team `n` of the proposal is team `n`
/// of every token, and every token carries the whole roster.
pub(super) fn plan_match(
    proposed: Match,
    allocation: Allocation,
    land_type: &str,
    tickets: &HashMap<TicketId, TicketRecord>,
    terms: &TokenTerms<'_>,
    new_id: &mut dyn FnMut() -> String,
) -> Planned {
    let roster: Vec<Vec<String>> = proposed
        .teams
        .iter()
        .map(|team| members_of(team.iter(), tickets).collect())
        .collect();
    let placements: Vec<(TicketId, usize)> = proposed
        .teams
        .iter()
        .enumerate()
        .flat_map(|(team, ids)| ids.iter().map(move |id| (*id, team)))
        .collect();
    let match_id = new_id();
    let target = LandTarget {
        land: &allocation,
        land_type,
        match_id: &match_id,
    };
    let unsigned = plan_assignments(&placements, &target, &roster, tickets, terms, new_id);
    Planned {
        tickets: placements.iter().map(|(id, _)| *id).collect(),
        origin: Origin::NewMatch {
            queue_key: proposed.queue_key,
            quality: proposed.quality,
            allocation,
        },
        unsigned,
    }
}

/// Backfilled tickets into the job's running land (`land`: where it is and
/// how to reach it): the roster grows from the players already there, and the
/// land keeps its match id when the job names it. Also returns what the admin
/// API answers once the commit applies.
pub(super) fn plan_backfill(
    job: &BackfillJob,
    found: &BackfillMatch,
    land: &Allocation,
    land_type: &str,
    tickets: &HashMap<TicketId, TicketRecord>,
    terms: &TokenTerms<'_>,
    new_id: &mut dyn FnMut() -> String,
) -> (Planned, Vec<BackfillPlacement>) {
    let mut roster = job.roster.clone();
    for (id, team) in &found.tickets {
        if let Some(record) = tickets.get(id) {
            if roster.len() <= *team {
                roster.resize(team + 1, Vec::new());
            }
            roster[*team].extend(record.members.iter().cloned());
        }
    }
    let match_id = job.match_id.clone().unwrap_or_else(&mut *new_id);
    let target = LandTarget {
        land,
        land_type,
        match_id: &match_id,
    };
    let unsigned = plan_assignments(&found.tickets, &target, &roster, tickets, terms, new_id);
    let placed = unsigned
        .commit
        .assignments
        .iter()
        .zip(found.tickets.iter().filter_map(|(id, _)| tickets.get(id)))
        .map(|((ticket_id, assignment), record)| BackfillPlacement {
            ticket_id: ticket_id.clone(),
            members: record.members.clone(),
            team: assignment.team.unwrap_or_default(),
            assignment_id: assignment.assignment_id.clone(),
        })
        .collect();
    let planned = Planned {
        origin: Origin::Backfill {
            land_id: land.land_id.clone(),
        },
        tickets: found.tickets.iter().map(|(id, _)| *id).collect(),
        unsigned,
    };
    (planned, placed)
}

fn members_of<'a>(
    ids: impl Iterator<Item = &'a TicketId> + 'a,
    tickets: &'a HashMap<TicketId, TicketRecord>,
) -> impl Iterator<Item = String> + 'a {
    ids.filter_map(|id| tickets.get(id))
        .flat_map(|record| record.members.iter().cloned())
}

/// One assignment per ticket into one land, with the claims of every
/// member's token still to be signed. Tickets no longer in `tickets` are skipped.
fn plan_assignments(
    placements: &[(TicketId, usize)],
    target: &LandTarget<'_>,
    roster: &[Vec<String>],
    tickets: &HashMap<TicketId, TicketRecord>,
    terms: &TokenTerms<'_>,
    new_id: &mut dyn FnMut() -> String,
) -> UnsignedCommit {
    let mut assignments = Vec::with_capacity(placements.len());
    let mut claims = Vec::with_capacity(placements.len());
    for (id, team) in placements {
        let Some(record) = tickets.get(id) else {
            continue;
        };
        let team_number = u32::try_from(*team).unwrap_or(u32::MAX);
        let assignment_id = new_id();
        for member in &record.members {
            claims.push((
                assignments.len(),
                MatchClaims {
                    iss: terms.issuer.to_owned(),
                    aud: terms.audience.to_owned(),
                    sub: member.clone(),
                    player_id: member.clone(),
                    members: record.members.clone(),
                    assignment_id: assignment_id.clone(),
                    land_id: target.land.land_id.clone(),
                    land_type: target.land_type.to_owned(),
                    server_id: target.land.server_id.clone(),
                    iat: terms.issued_at / 1000,
                    exp: terms.expires_at / 1000,
                    jti: assignment_id.clone(),
                    match_id: Some(target.match_id.to_owned()),
                    team: Some(team_number),
                    roster: roster.to_vec(),
                    queue_key: Some(record.queue_key.clone()),
                    server_instance_id: target.land.server_instance_id.clone(),
                },
            ));
        }
        assignments.push((
            record.ticket_id.clone(),
            Assignment {
                assignment_id,
                match_token: String::new(),
                connect_url: target.land.connect_url.clone(),
                land_id: target.land.land_id.clone(),
                server_id: target.land.server_id.clone(),
                expires_at: format_rfc3339(terms.expires_at),
                member_tokens: BTreeMap::new(),
                match_id: Some(target.match_id.to_owned()),
                team: Some(team_number),
            },
        ));
    }
    UnsignedCommit {
        commit: MatchCommit {
            assignments,
            assignment_expires_at: terms.expires_at,
            server_instance_id: target.land.server_instance_id.clone(),
        },
        claims,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use matchplane_matchmaker::BackfillRequest;

    use super::*;
    use crate::matcher::test_support::queued_record;

    const NOW: Millis = 1_700_000_000_000;
    const EXPIRES: Millis = NOW + 30_000;

    fn terms() -> TokenTerms<'static> {
        TokenTerms {
            issuer: "matchplane",
            audience: "game-servers",
            issued_at: NOW,
            expires_at: EXPIRES,
        }
    }

    /// Ids `id-1`, `id-2`, … in the order the plan asks for them.
    fn counter() -> impl FnMut() -> String {
        let mut next = 0;
        move || {
            next += 1;
            format!("id-{next}")
        }
    }

    fn record(ticket_id: &str, members: &[&str]) -> TicketRecord {
        queued_record(ticket_id, members, NOW, NOW + 60_000)
    }

    /// A duo (t1) and two solos (t2, t3) in the pool.
    fn pool() -> HashMap<TicketId, TicketRecord> {
        HashMap::from([
            (TicketId(1), record("t1", &["alice", "bob"])),
            (TicketId(2), record("t2", &["carol"])),
            (TicketId(3), record("t3", &["dave"])),
        ])
    }

    fn allocation() -> Allocation {
        Allocation {
            server_id: "srv-1".to_owned(),
            server_instance_id: Some("boot-7".to_owned()),
            land_id: "arena:land-9".to_owned(),
            connect_url: "ws://127.0.0.1:9000/arena/land-9".to_owned(),
        }
    }

    fn two_v_two() -> Match {
        Match {
            queue_key: "arena:2v2".to_owned(),
            teams: vec![vec![TicketId(1)], vec![TicketId(2), TicketId(3)]],
            quality: 0.75,
            region: None,
        }
    }

    fn plan_two_v_two(tickets: &HashMap<TicketId, TicketRecord>) -> Planned {
        plan_match(
            two_v_two(),
            allocation(),
            "arena",
            tickets,
            &terms(),
            &mut counter(),
        )
    }

    fn backfill(job: &BackfillJob, found: &BackfillMatch) -> (Planned, Vec<BackfillPlacement>) {
        plan_backfill(
            job,
            found,
            &allocation(),
            "arena",
            &pool(),
            &terms(),
            &mut counter(),
        )
    }

    fn claims_of(planned: &Planned) -> Vec<&MatchClaims> {
        planned
            .unsigned
            .claims
            .iter()
            .map(|(_, claim)| claim)
            .collect()
    }

    #[test]
    fn a_match_gives_one_assignment_per_ticket_numbered_by_team() {
        let planned = plan_two_v_two(&pool());
        let commit = &planned.unsigned.commit;
        let tickets: Vec<&str> = commit
            .assignments
            .iter()
            .map(|(id, _)| id.as_str())
            .collect();
        assert_eq!(tickets, ["t1", "t2", "t3"]);
        let teams: Vec<Option<u32>> = commit.assignments.iter().map(|(_, a)| a.team).collect();
        assert_eq!(teams, [Some(0), Some(1), Some(1)]);
        // The first id is the match's, then one per assignment, all distinct.
        let assignment_ids: BTreeSet<&str> = commit
            .assignments
            .iter()
            .map(|(_, a)| a.assignment_id.as_str())
            .collect();
        assert_eq!(assignment_ids, BTreeSet::from(["id-2", "id-3", "id-4"]));
        for (_, assignment) in &commit.assignments {
            assert_eq!(assignment.match_id.as_deref(), Some("id-1"));
            assert_eq!(assignment.land_id, "arena:land-9");
            assert_eq!(assignment.server_id, "srv-1");
            assert_eq!(assignment.connect_url, "ws://127.0.0.1:9000/arena/land-9");
            assert_eq!(assignment.expires_at, format_rfc3339(EXPIRES));
            assert!(
                assignment.match_token.is_empty(),
                "signing fills the tokens"
            );
            assert!(assignment.member_tokens.is_empty());
        }
        assert_eq!(commit.assignment_expires_at, EXPIRES);
        assert_eq!(commit.server_instance_id.as_deref(), Some("boot-7"));
        assert_eq!(planned.tickets, [TicketId(1), TicketId(2), TicketId(3)]);
        assert_eq!(
            planned.origin,
            Origin::NewMatch {
                queue_key: "arena:2v2".to_owned(),
                quality: 0.75,
                allocation: allocation(),
            }
        );
    }

    #[test]
    fn every_member_gets_claims_for_its_own_ticket_and_the_whole_roster() {
        let planned = plan_two_v_two(&pool());
        let roster = vec![
            vec!["alice".to_owned(), "bob".to_owned()],
            vec!["carol".to_owned(), "dave".to_owned()],
        ];
        let subjects: Vec<(usize, &str)> = planned
            .unsigned
            .claims
            .iter()
            .map(|(index, claim)| (*index, claim.sub.as_str()))
            .collect();
        assert_eq!(
            subjects,
            [(0, "alice"), (0, "bob"), (1, "carol"), (2, "dave")]
        );
        for (index, claim) in &planned.unsigned.claims {
            let (ticket_id, assignment) = &planned.unsigned.commit.assignments[*index];
            assert_eq!(claim.player_id, claim.sub);
            assert_eq!(claim.assignment_id, assignment.assignment_id);
            assert_eq!(claim.jti, assignment.assignment_id);
            assert_eq!(claim.team, assignment.team);
            assert_eq!(claim.match_id.as_deref(), Some("id-1"));
            assert_eq!(claim.roster, roster);
            assert_eq!(claim.server_instance_id.as_deref(), Some("boot-7"));
            assert_eq!(claim.server_id, "srv-1");
            assert_eq!(claim.land_id, "arena:land-9");
            assert_eq!(claim.land_type, "arena");
            assert_eq!(claim.queue_key.as_deref(), Some("arena:2v2"));
            assert_eq!(
                (claim.iss.as_str(), claim.aud.as_str()),
                ("matchplane", "game-servers")
            );
            assert_eq!((claim.iat, claim.exp), (NOW / 1000, EXPIRES / 1000));
            // A party's tokens all name the party; a solo's names the solo.
            if ticket_id == "t1" {
                assert_eq!(claim.members, ["alice", "bob"]);
            } else {
                assert_eq!(claim.members, std::slice::from_ref(&claim.sub));
            }
        }
    }

    #[test]
    fn a_ticket_that_left_the_pool_gets_no_assignment_but_stays_in_the_plan() {
        let mut tickets = pool();
        tickets.remove(&TicketId(2));
        let planned = plan_two_v_two(&tickets);
        let assigned: Vec<&str> = planned
            .unsigned
            .commit
            .assignments
            .iter()
            .map(|(id, _)| id.as_str())
            .collect();
        assert_eq!(assigned, ["t1", "t3"]);
        assert!(claims_of(&planned).iter().all(|claim| claim.sub != "carol"));
        assert!(
            claims_of(&planned)
                .iter()
                .all(|claim| claim.roster[1] == ["dave"])
        );
        // Its fate (gone or back to the queue) is settled with the rest of the match.
        assert_eq!(planned.tickets, [TicketId(1), TicketId(2), TicketId(3)]);
        // Claims still point at the assignment they belong to.
        for (index, claim) in &planned.unsigned.claims {
            assert_eq!(
                planned.unsigned.commit.assignments[*index].1.assignment_id,
                claim.assignment_id
            );
        }
    }

    fn job(match_id: Option<&str>) -> BackfillJob {
        BackfillJob {
            queue_key: "arena:2v2".to_owned(),
            land_id: "arena:land-9".to_owned(),
            server_id: "srv-1".to_owned(),
            match_id: match_id.map(str::to_owned),
            roster: vec![vec!["erin".to_owned()]],
            request: BackfillRequest::default(),
        }
    }

    #[test]
    fn backfill_grows_the_roster_and_keeps_the_lands_match_id() {
        // One solo joins team 0 next to erin, a duo opens team 1.
        let found = BackfillMatch {
            land_id: "arena:land-9".to_owned(),
            tickets: vec![(TicketId(2), 0), (TicketId(1), 1)],
            quality: 0.5,
        };
        let (planned, placed) = backfill(&job(Some("match-0")), &found);
        let roster = vec![
            vec!["erin".to_owned(), "carol".to_owned()],
            vec!["alice".to_owned(), "bob".to_owned()],
        ];
        for claim in claims_of(&planned) {
            assert_eq!(claim.roster, roster);
            assert_eq!(claim.match_id.as_deref(), Some("match-0"));
            assert_eq!(claim.server_instance_id.as_deref(), Some("boot-7"));
        }
        for (_, assignment) in &planned.unsigned.commit.assignments {
            assert_eq!(assignment.connect_url, "ws://127.0.0.1:9000/arena/land-9");
            assert_eq!(assignment.land_id, "arena:land-9");
        }
        assert_eq!(
            placed,
            [
                BackfillPlacement {
                    ticket_id: "t2".to_owned(),
                    members: vec!["carol".to_owned()],
                    team: 0,
                    assignment_id: "id-1".to_owned(),
                },
                BackfillPlacement {
                    ticket_id: "t1".to_owned(),
                    members: vec!["alice".to_owned(), "bob".to_owned()],
                    team: 1,
                    assignment_id: "id-2".to_owned(),
                },
            ]
        );
        assert_eq!(planned.tickets, [TicketId(2), TicketId(1)]);
        assert_eq!(
            planned.origin,
            Origin::Backfill {
                land_id: "arena:land-9".to_owned()
            }
        );
    }

    #[test]
    fn backfill_without_a_known_match_id_gets_a_new_one() {
        let found = BackfillMatch {
            land_id: "arena:land-9".to_owned(),
            tickets: vec![(TicketId(3), 2)],
            quality: 1.0,
        };
        let (planned, placed) = backfill(&job(None), &found);
        let (_, assignment) = &planned.unsigned.commit.assignments[0];
        assert_eq!(assignment.match_id.as_deref(), Some("id-1"));
        assert_eq!(assignment.team, Some(2));
        // Team 1 had nobody yet: the roster grows to reach team 2.
        assert_eq!(
            claims_of(&planned)[0].roster,
            [vec!["erin".to_owned()], Vec::new(), vec!["dave".to_owned()]]
        );
        assert_eq!(placed.len(), 1);
        assert_eq!(placed[0].assignment_id, "id-2");
    }
}
