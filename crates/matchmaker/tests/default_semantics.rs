//! Queues without a profile: `NvM`, `N` and solo keys.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use matchplane_matchmaker::{
    Engine, EngineConfig, InsertError, Match, QueueKeyRule, QueueStats, Ticket, TicketId,
};

fn engine() -> Engine {
    Engine::new(EngineConfig::default()).unwrap()
}

fn t(id: u64, size: u32, at: u64) -> Ticket {
    Ticket {
        id: TicketId(id),
        size,
        enqueued_at: at,
        ..Ticket::default()
    }
}

fn players(engine_match: &Match, team: usize, sizes: &dyn Fn(TicketId) -> u32) -> u32 {
    engine_match.teams[team].iter().map(|&id| sizes(id)).sum()
}

#[test]
fn one_v_one_pairs_fifo() {
    let mut e = engine();
    for i in 0..5 {
        e.insert("duel:1v1", t(i, 1, 100 + i)).unwrap();
    }
    let m = e.find_matches("duel:1v1", 1_000);
    assert_eq!(m.len(), 2);
    assert_eq!(m[0].teams, vec![vec![TicketId(0)], vec![TicketId(1)]]);
    assert_eq!(m[1].teams, vec![vec![TicketId(2)], vec![TicketId(3)]]);
    assert_eq!(m[0].queue_key, "duel:1v1");
    assert_eq!(m[0].quality, 1.0);
    assert_eq!(m[0].region, None);
    assert!(e.contains(TicketId(4)));
    assert_eq!(e.len(), 1);
}

#[test]
fn three_v_three_with_parties_is_never_split() {
    let mut e = engine();
    // sizes: 2, 3, 1, 2, 1, 1 -> one 3v3 match is possible: [3] + [2,1] ...
    let sizes = [2u32, 3, 1, 2, 1, 1];
    for (i, &s) in sizes.iter().enumerate() {
        e.insert("hero-defense:3v3", t(i as u64, s, i as u64))
            .unwrap();
    }
    let m = e.find_matches("hero-defense:3v3", 10);
    assert_eq!(m.len(), 1);
    let size_of = |id: TicketId| sizes[id.0 as usize];
    assert_eq!(players(&m[0], 0, &size_of), 3);
    assert_eq!(players(&m[0], 1, &size_of), 3);
    // The three oldest tickets (2, 3, 1) form the core of the match.
    let ids: Vec<TicketId> = m[0].teams.iter().flatten().copied().collect();
    for old in 0..3 {
        assert!(ids.contains(&TicketId(old)));
    }
}

#[test]
fn uneven_teams_n_v_m() {
    let mut e = engine();
    for i in 0..3 {
        e.insert("boss:1v2", t(i, 1, i)).unwrap();
    }
    let m = e.find_matches("boss:1v2", 10);
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].teams[0].len(), 1);
    assert_eq!(m[0].teams[1].len(), 2);
    assert_eq!(
        e.insert("boss:1v2", t(9, 3, 0)),
        Err(InsertError::TooLarge { size: 3, max: 2 })
    );
}

#[test]
fn single_team_n() {
    let mut e = engine();
    e.insert("counter:4", t(1, 2, 0)).unwrap();
    e.insert("counter:4", t(2, 3, 1)).unwrap();
    e.insert("counter:4", t(3, 1, 2)).unwrap();
    // The oldest ticket (2 players) cannot be completed yet; the next
    // oldest (3) can, with the single.
    let m = e.find_matches("counter:4", 5);
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].teams, vec![vec![TicketId(2), TicketId(3)]]);
    e.insert("counter:4", t(4, 2, 3)).unwrap();
    let m = e.find_matches("counter:4", 5);
    assert_eq!(m[0].teams, vec![vec![TicketId(1), TicketId(4)]]);
    assert!(e.is_empty());
}

#[test]
fn solo_keys_match_each_ticket_alone() {
    let mut e = engine();
    e.insert("sandbox", t(1, 7, 0)).unwrap();
    e.insert("hero-defense:3v3-casual", t(2, 40, 0)).unwrap();
    e.insert("hero-defense:0v3", t(3, 1, 0)).unwrap();
    let m = e.find_all_matches(1);
    assert_eq!(m.len(), 3);
    // Key order.
    assert_eq!(m[0].queue_key, "hero-defense:0v3");
    assert_eq!(m[1].queue_key, "hero-defense:3v3-casual");
    assert_eq!(m[2].queue_key, "sandbox");
    assert!(
        m.iter()
            .all(|m| m.teams.len() == 1 && m.teams[0].len() == 1)
    );
    assert!(e.is_empty());
}

#[test]
fn insert_errors() {
    let mut e = engine();
    e.insert("a:2v2", t(1, 1, 0)).unwrap();
    assert_eq!(
        e.insert("a:2v2", t(1, 1, 0)),
        Err(InsertError::Duplicate(TicketId(1)))
    );
    assert_eq!(
        e.insert("b:2v2", t(1, 1, 0)),
        Err(InsertError::Duplicate(TicketId(1)))
    );
    assert_eq!(e.insert("a:2v2", t(2, 0, 0)), Err(InsertError::EmptyTicket));
    assert_eq!(
        e.insert("a:2v2", t(3, 3, 0)),
        Err(InsertError::TooLarge { size: 3, max: 2 })
    );
    assert_eq!(e.len(), 1);
}

#[test]
fn remove_returns_ticket_and_it_is_never_matched() {
    let mut e = engine();
    let mut ticket = t(1, 1, 5);
    ticket.attributes.insert("skill".into(), 1234.5);
    ticket.latencies.insert("eu".into(), 20);
    ticket.string_args.insert("map".into(), "forest".into());
    ticket.tags.push("vip".into());
    e.insert("duel:1v1", ticket.clone()).unwrap();
    e.insert("duel:1v1", t(2, 1, 6)).unwrap();
    assert_eq!(e.get(TicketId(1)), Some(ticket.clone()));
    assert_eq!(e.queue_of(TicketId(1)), Some("duel:1v1"));
    assert_eq!(e.remove(TicketId(1)), Some(ticket));
    assert_eq!(e.remove(TicketId(1)), None);
    assert!(!e.contains(TicketId(1)));
    assert!(e.find_matches("duel:1v1", 10).is_empty());
    e.insert("duel:1v1", t(3, 1, 7)).unwrap();
    let m = e.find_matches("duel:1v1", 10);
    assert_eq!(m[0].teams, vec![vec![TicketId(2)], vec![TicketId(3)]]);
}

#[test]
fn reinserted_tickets_keep_age_order() {
    let mut e = engine();
    for i in 0..4 {
        e.insert("duel:1v1", t(i, 1, 100 + i)).unwrap();
    }
    let m = e.find_matches("duel:1v1", 1_000);
    assert_eq!(m.len(), 2);
    // A newer ticket arrives, then the caller puts back the first match
    // because no server was free.
    e.insert("duel:1v1", t(10, 1, 500)).unwrap();
    for &id in m[0].teams.iter().flatten() {
        e.insert("duel:1v1", t(id.0, 1, 100 + id.0)).unwrap();
    }
    let again = e.find_matches("duel:1v1", 2_000);
    assert_eq!(again[0].teams, vec![vec![TicketId(0)], vec![TicketId(1)]]);
    assert!(e.contains(TicketId(10)));
}

#[test]
fn land_type_and_stats() {
    let mut e = engine();
    assert_eq!(e.land_type("hero-defense:3v3"), "hero-defense");
    assert_eq!(e.land_type("sandbox"), "sandbox");
    e.insert("hero-defense:3v3", t(1, 2, 50)).unwrap();
    e.insert("hero-defense:3v3", t(2, 1, 40)).unwrap();
    e.insert("counter:4", t(3, 1, 70)).unwrap();
    assert_eq!(
        e.queue_stats(),
        vec![
            QueueStats {
                key: "counter:4".into(),
                tickets: 1,
                players: 1,
                oldest_enqueued_at: 70
            },
            QueueStats {
                key: "hero-defense:3v3".into(),
                tickets: 2,
                players: 3,
                oldest_enqueued_at: 40
            },
        ]
    );
    e.remove(TicketId(3));
    assert_eq!(e.queue_stats().len(), 1);
}

#[test]
fn unknown_queue_is_empty() {
    let mut e = engine();
    assert!(e.find_matches("nothing:1v1", 0).is_empty());
    assert!(e.find_all_matches(0).is_empty());
    assert!(e.queue_stats().is_empty());
}

fn seed_engine() -> Engine {
    Engine::new(EngineConfig {
        key_rule: QueueKeyRule::Seed,
        ..EngineConfig::default()
    })
    .unwrap()
}

#[test]
fn seed_rule_reads_the_mode_as_one_group_per_land() {
    let seed = |key: &str| QueueKeyRule::Seed.teams_for_key(key);
    assert_eq!(seed("standard:2v2"), Ok(Some(vec![2])));
    assert_eq!(seed("standard:3v1"), Ok(Some(vec![3])));
    assert_eq!(seed("hero-defense:3"), Ok(Some(vec![3])));
    assert_eq!(seed("arena:4v4:eu"), Ok(Some(vec![4])));
    assert_eq!(seed("x:1000"), Ok(Some(vec![1000])));
    // Not of the form `NvM` or `N`: one ticket per land.
    for solo in [
        "x:abc",
        "x",
        "x:",
        "x:3v3-casual",
        "x:v2",
        "x:2v",
        "x:2v2v2",
        "x:-1",
    ] {
        assert_eq!(seed(solo), Ok(None), "{solo}");
    }
    // Of the form, but no land can hold that group: refused, not read as solo.
    for refused in [
        "x:0",
        "x:0v0",
        "x:0v2",
        "x:2v0",
        "x:1001",
        "x:5v1001",
        "x:99999999999999999999",
    ] {
        match seed(refused) {
            Err(InsertError::InvalidQueueKey { key, reason }) => {
                assert_eq!(key, refused);
                assert!(reason.contains("1..=1000"), "{reason}");
            }
            other => panic!("{refused}: {other:?}"),
        }
    }
}

#[test]
fn teams_rule_is_the_default_and_unchanged() {
    assert_eq!(EngineConfig::default().key_rule, QueueKeyRule::Teams);
    let teams = |key: &str| QueueKeyRule::Teams.teams_for_key(key);
    assert_eq!(teams("standard:2v2"), Ok(Some(vec![2, 2])));
    assert_eq!(teams("hero-defense:3"), Ok(Some(vec![3])));
    // The teams rule reads out-of-range modes as solo, as it always has.
    assert_eq!(teams("x:0"), Ok(None));
    assert_eq!(teams("x:5000"), Ok(None));
    assert_eq!(teams("x:abc"), Ok(None));
    // The rule is not a TOML setting: the file cannot switch it.
    let from_file = EngineConfig::from_toml_str("key_rule = \"seed\"\n").unwrap();
    assert_eq!(from_file.key_rule, QueueKeyRule::Teams);
}

#[test]
fn seed_engine_puts_two_solos_of_2v2_in_one_land() {
    let mut e = seed_engine();
    assert_eq!(e.key_rule(), QueueKeyRule::Seed);
    e.insert("standard:2v2", t(1, 1, 10)).unwrap();
    e.insert("standard:2v2", t(2, 1, 11)).unwrap();
    let m = e.find_matches("standard:2v2", 100);
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].teams, vec![vec![TicketId(1), TicketId(2)]]);
    assert_eq!(e.land_type("standard:2v2"), "standard");
    assert!(e.is_empty());

    // The same two tickets under the teams rule wait for a second team.
    let mut teams = engine();
    teams.insert("standard:2v2", t(1, 1, 10)).unwrap();
    teams.insert("standard:2v2", t(2, 1, 11)).unwrap();
    assert!(teams.find_matches("standard:2v2", 100).is_empty());
    assert_eq!(teams.len(), 2);
}

#[test]
fn seed_engine_groups_parties_and_bounds_them() {
    let mut e = seed_engine();
    e.insert("hero-defense:3", t(1, 2, 10)).unwrap();
    e.insert("hero-defense:3", t(2, 2, 11)).unwrap();
    e.insert("hero-defense:3", t(3, 1, 12)).unwrap();
    let m = e.find_matches("hero-defense:3", 100);
    assert_eq!(m.len(), 1);
    let ids: Vec<TicketId> = m[0].teams.iter().flatten().copied().collect();
    assert_eq!(m[0].teams.len(), 1);
    assert!(ids.contains(&TicketId(1)) && ids.contains(&TicketId(3)));
    assert!(e.contains(TicketId(2)));

    // A party larger than the group can never be placed.
    assert_eq!(
        e.insert("standard:2v2", t(9, 3, 20)),
        Err(InsertError::TooLarge { size: 3, max: 2 })
    );
    // Anything else is one ticket per land, parties included.
    e.insert("standard:ranked", t(10, 4, 20)).unwrap();
    let solo = e.find_matches("standard:ranked", 100);
    assert_eq!(solo.len(), 1);
    assert_eq!(solo[0].teams, vec![vec![TicketId(10)]]);
}

#[test]
fn seed_engine_refuses_out_of_range_groups_without_queueing() {
    let mut e = seed_engine();
    for key in ["x:0", "x:5000", "x:1v99999999999"] {
        assert!(matches!(
            e.check(key, &t(1, 1, 0)),
            Err(InsertError::InvalidQueueKey { .. })
        ));
        assert!(matches!(
            e.insert(key, t(1, 1, 0)),
            Err(InsertError::InvalidQueueKey { .. })
        ));
    }
    assert!(e.is_empty());
    assert!(e.queue_stats().is_empty());
    // A profile for the key wins over the rule.
    let mut profiled = Engine::new(EngineConfig {
        key_rule: QueueKeyRule::Seed,
        ..EngineConfig::from_toml_str("[[queue]]\nkey = \"x:0\"\nteam_size = 1\n").unwrap()
    })
    .unwrap();
    profiled.insert("x:0", t(1, 1, 0)).unwrap();
    profiled.insert("x:0", t(2, 1, 0)).unwrap();
    assert_eq!(profiled.find_matches("x:0", 10).len(), 1);
}
