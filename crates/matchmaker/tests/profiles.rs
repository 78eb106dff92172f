//! Queue profiles: one test (or a few) per setting, plus balancing,
//! fairness, backfill and custom match functions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use matchplane_matchmaker::{
    BackfillRequest, CommitError, ConfigError, Engine, EngineConfig, InsertError, MatchFunction,
    Millis, QueuePool, Ticket, TicketId,
};

const SEC: Millis = 1000;

fn engine(toml: &str) -> Engine {
    Engine::new(EngineConfig::from_toml_str(toml).unwrap()).unwrap()
}

fn ticket(id: u64, size: u32, at: Millis, skill: f64) -> Ticket {
    let mut t = Ticket {
        id: TicketId(id),
        size,
        enqueued_at: at,
        ..Ticket::default()
    };
    t.attributes.insert("skill".into(), skill);
    t
}

fn with_latency(mut t: Ticket, region: &str, ms: u32) -> Ticket {
    t.latencies.insert(region.into(), ms);
    t
}

fn with_arg(mut t: Ticket, k: &str, v: &str) -> Ticket {
    t.string_args.insert(k.into(), v.into());
    t
}

fn ids(m: &matchplane_matchmaker::Match) -> Vec<u64> {
    let mut v: Vec<u64> = m.teams.iter().flatten().map(|id| id.0).collect();
    v.sort_unstable();
    v
}

const FULL_EXAMPLE: &str = r#"
# The control plane's own settings live in the same file and are ignored.
[server]
listen = "0.0.0.0:8080"

[[queue]]
key = "hero-defense:3v3-ranked"
land_type = "hero-defense"
teams = 2
team_size = 3
min_team_size = 2
[queue.skill]
attribute = "skill"
window = 100
widen_per_second = 25
max_window = 800
[queue.region]
max_latency_ms = 80
relax_after = "20s"
[queue.relax]
fill_after = "30s"
[queue.filters]
string_args = ["mode", "map"]
tags = ["crossplay"]
[queue.backfill]
enabled = true

[[queue]]
key = "duel:ranked"
team_size = 1
[queue.skill]
window = 100
widen_per_second = 50
max_window = 300
"#;

#[test]
fn config_parses_and_ignores_other_tables() {
    let config = EngineConfig::from_toml_str(FULL_EXAMPLE).unwrap();
    assert_eq!(config.queues.len(), 2);
    let p = &config.queues[0];
    assert_eq!(p.team_size, 3);
    assert_eq!(p.min_team_size, Some(2));
    assert_eq!(p.skill.as_ref().unwrap().window, 100.0);
    assert_eq!(
        p.region.as_ref().unwrap().relax_after.as_deref(),
        Some("20s")
    );
    assert_eq!(p.filters.string_args, vec!["mode", "map"]);
    assert!(p.backfill.enabled);
    assert_eq!(config.queues[1].teams, 2, "teams defaults to 2");
    let e = Engine::new(config).unwrap();
    assert_eq!(e.land_type("hero-defense:3v3-ranked"), "hero-defense");
    assert_eq!(e.land_type("duel:ranked"), "duel");
    assert!(e.profile("duel:ranked").is_some());
    assert!(EngineConfig::from_toml_str("").unwrap().queues.is_empty());
}

#[test]
fn config_errors() {
    let bad = |s: &str| EngineConfig::from_toml_str(s).unwrap_err();
    assert!(matches!(
        bad("[[queue]]\nkey = \"a\"\nteam_size = 1\n[[queue]]\nkey = \"a\"\nteam_size = 2\n"),
        ConfigError::DuplicateKey(_)
    ));
    assert!(matches!(
        bad("[[queue]]\nkey = \"a\"\nteam_size = 3\nmin_team_size = 2\n"),
        ConfigError::Invalid { .. }
    ));
    assert!(matches!(
        bad("[[queue]]\nkey = \"a\"\nteam_size = 0\n"),
        ConfigError::Invalid { .. }
    ));
    assert!(matches!(
        bad("[[queue]]\nkey = \"a\"\nteam_size = 1\n[queue.relax]\nfill_after = \"soon\"\n"),
        ConfigError::Invalid { .. }
    ));
    assert!(matches!(
        bad(
            "[[queue]]\nkey = \"a\"\nteam_size = 1\n[queue.skill]\nwindow = 100\nmax_window = 50\n"
        ),
        ConfigError::Invalid { .. }
    ));
    assert!(matches!(
        bad("[[queue]]\nkey = \"a\"\nteam_size = 1\ntypo = 3\n"),
        ConfigError::Parse(_)
    ));
    // The same checks apply when a config is built in code.
    let mut config = EngineConfig::from_toml_str(FULL_EXAMPLE).unwrap();
    config.queues[1].key = config.queues[0].key.clone();
    assert!(matches!(
        Engine::new(config),
        Err(ConfigError::DuplicateKey(_))
    ));
}

#[test]
fn insert_validates_against_profile() {
    let mut e = engine(FULL_EXAMPLE);
    let q = "hero-defense:3v3-ranked";
    let no_skill = Ticket {
        id: TicketId(1),
        size: 1,
        ..Ticket::default()
    };
    assert_eq!(
        e.insert(q, no_skill),
        Err(InsertError::MissingAttribute("skill".into()))
    );
    assert_eq!(
        e.insert(q, ticket(2, 1, 0, f64::NAN)),
        Err(InsertError::InvalidAttribute("skill".into()))
    );
    assert_eq!(
        e.insert(q, ticket(3, 1, 0, 1.0)),
        Err(InsertError::NoRegion)
    );
    assert_eq!(
        e.insert(q, with_latency(ticket(4, 4, 0, 1.0), "eu", 10)),
        Err(InsertError::TooLarge { size: 4, max: 3 })
    );
    let mut bare_region = ticket(5, 1, 0, 1.0);
    bare_region.region = Some("eu".into());
    e.insert(q, bare_region).unwrap();
    assert_eq!(e.len(), 1);
}

const DUEL: &str = r#"
[[queue]]
key = "duel"
teams = 2
team_size = 1
[queue.skill]
window = 100
widen_per_second = 25
max_window = 200
"#;

#[test]
fn skill_window_at_wait_zero() {
    let mut e = engine(DUEL);
    e.insert("duel", ticket(1, 1, 0, 1000.0)).unwrap();
    e.insert("duel", ticket(2, 1, 0, 1150.0)).unwrap();
    e.insert("duel", ticket(3, 1, 0, 1290.0)).unwrap();
    assert!(e.find_matches("duel", 0).is_empty());
    e.insert("duel", ticket(4, 1, 0, 1080.0)).unwrap();
    let m = e.find_matches("duel", 0);
    assert_eq!(m.len(), 1);
    assert_eq!(ids(&m[0]), vec![1, 4]);
}

#[test]
fn skill_window_widens_with_wait_and_is_capped() {
    let mut e = engine(DUEL);
    e.insert("duel", ticket(1, 1, 0, 1000.0)).unwrap();
    e.insert("duel", ticket(2, 1, 0, 1150.0)).unwrap();
    // window(1s) = 125 < 150
    assert!(e.find_matches("duel", SEC).is_empty());
    // window(2s) = 150
    let m = e.find_matches("duel", 2 * SEC);
    assert_eq!(ids(&m[0]), vec![1, 2]);

    e.insert("duel", ticket(3, 1, 0, 1000.0)).unwrap();
    e.insert("duel", ticket(4, 1, 0, 1250.0)).unwrap();
    // max_window = 200 holds even after a long wait.
    assert!(e.find_matches("duel", 3600 * SEC).is_empty());
}

#[test]
fn fairness_oldest_matchable_first() {
    let mut e = engine(DUEL);
    e.insert("duel", ticket(1, 1, 10, 1000.0)).unwrap();
    e.insert("duel", ticket(2, 1, 20, 1010.0)).unwrap();
    e.insert("duel", ticket(3, 1, 30, 1005.0)).unwrap();
    e.insert("duel", ticket(4, 1, 40, 1001.0)).unwrap();
    let m = e.find_matches("duel", 50);
    // Oldest with next oldest, although 4 is closer in skill to 1.
    assert_eq!(ids(&m[0]), vec![1, 2]);
    assert_eq!(ids(&m[1]), vec![3, 4]);
}

#[test]
fn fairness_unmatchable_oldest_does_not_block_others() {
    let mut e = engine(DUEL);
    e.insert("duel", ticket(1, 1, 0, 5000.0)).unwrap();
    e.insert("duel", ticket(2, 1, 1, 1000.0)).unwrap();
    e.insert("duel", ticket(3, 1, 2, 2000.0)).unwrap();
    e.insert("duel", ticket(4, 1, 3, 2010.0)).unwrap();
    e.insert("duel", ticket(5, 1, 4, 1020.0)).unwrap();
    let m = e.find_matches("duel", 5);
    assert_eq!(m.len(), 2);
    assert_eq!(ids(&m[0]), vec![2, 5], "older anchor goes first");
    assert_eq!(ids(&m[1]), vec![3, 4]);
    assert!(e.contains(TicketId(1)));
}

const TEAMS: &str = r#"
[[queue]]
key = "arena:2v2"
teams = 2
team_size = 2
[queue.skill]
window = 1000
"#;

#[test]
fn balancing_minimises_team_sum_difference() {
    let mut e = engine(TEAMS);
    for (i, s) in [100.0, 200.0, 300.0, 400.0].into_iter().enumerate() {
        e.insert("arena:2v2", ticket(i as u64 + 1, 1, i as u64, s))
            .unwrap();
    }
    let m = e.find_matches("arena:2v2", 10);
    let mut teams: Vec<Vec<u64>> = m[0]
        .teams
        .iter()
        .map(|t| {
            let mut v: Vec<u64> = t.iter().map(|id| id.0).collect();
            v.sort_unstable();
            v
        })
        .collect();
    teams.sort();
    assert_eq!(teams, vec![vec![1, 4], vec![2, 3]]);
    assert!(m[0].quality > 0.0 && m[0].quality <= 1.0);
}

#[test]
fn balancing_with_a_party() {
    // Party of 2 at 500 (team sum 1000) vs singles 900 + 100 (sum 1000).
    let mut e = engine(TEAMS);
    e.insert("arena:2v2", ticket(1, 2, 0, 500.0)).unwrap();
    e.insert("arena:2v2", ticket(2, 1, 1, 900.0)).unwrap();
    e.insert("arena:2v2", ticket(3, 1, 2, 100.0)).unwrap();
    let m = e.find_matches("arena:2v2", 10);
    assert_eq!(m.len(), 1);
    let party_team = m[0]
        .teams
        .iter()
        .find(|t| t.contains(&TicketId(1)))
        .unwrap();
    assert_eq!(party_team, &vec![TicketId(1)]);
}

#[test]
fn balancing_four_teams() {
    let toml = r#"
[[queue]]
key = "ffa"
teams = 4
team_size = 2
"#;
    let mut e = engine(&format!("{toml}[queue.skill]\nwindow = 10000\n"));
    let skills = [10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0];
    for (i, &s) in skills.iter().enumerate() {
        e.insert("ffa", ticket(i as u64, 1, i as u64, s)).unwrap();
    }
    let m = e.find_matches("ffa", 10);
    assert_eq!(m[0].teams.len(), 4);
    for team in &m[0].teams {
        let sum: f64 = team.iter().map(|id| skills[id.0 as usize]).sum();
        assert_eq!(sum, 90.0, "perfect split exists: {:?}", m[0].teams);
    }
}

const REGIONS: &str = r#"
[[queue]]
key = "r"
teams = 2
team_size = 1
[queue.region]
max_latency_ms = 80
relax_after = "20s"
"#;

#[test]
fn region_latency_limit_then_relaxation() {
    let mut e = engine(REGIONS);
    let a = with_latency(ticket(1, 1, 0, 0.0), "eu", 50);
    let b = with_latency(
        with_latency(ticket(2, 1, 5 * SEC, 0.0), "us", 40),
        "eu",
        120,
    );
    e.insert("r", a).unwrap();
    e.insert("r", b).unwrap();
    assert!(
        e.find_matches("r", 20 * SEC).is_empty(),
        "b has not waited 20s"
    );
    let m = e.find_matches("r", 25 * SEC);
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].region.as_deref(), Some("eu"));
}

#[test]
fn region_prefers_lowest_latency_for_the_oldest() {
    let mut e = engine(REGIONS);
    let a = with_latency(with_latency(ticket(1, 1, 0, 0.0), "eu", 70), "us", 10);
    let b = with_latency(with_latency(ticket(2, 1, 0, 0.0), "eu", 5), "us", 60);
    e.insert("r", a).unwrap();
    e.insert("r", b).unwrap();
    let m = e.find_matches("r", 0);
    assert_eq!(m[0].region.as_deref(), Some("us"));
}

#[test]
fn region_without_relax_never_relaxes() {
    let toml = "[[queue]]\nkey = \"r\"\nteam_size = 1\n[queue.region]\nmax_latency_ms = 80\n";
    let mut e = engine(toml);
    e.insert("r", with_latency(ticket(1, 1, 0, 0.0), "eu", 50))
        .unwrap();
    e.insert("r", with_latency(ticket(2, 1, 0, 0.0), "eu", 90))
        .unwrap();
    assert!(e.find_matches("r", 3600 * SEC).is_empty());
}

const FILL: &str = r#"
[[queue]]
key = "coop"
teams = 2
team_size = 3
min_team_size = 1
[queue.relax]
fill_after = "30s"
"#;

#[test]
fn under_filled_teams_only_after_fill_after() {
    let mut e = engine(FILL);
    for i in 0..5 {
        e.insert("coop", ticket(i, 1, i, 0.0)).unwrap();
    }
    assert!(e.find_matches("coop", 29 * SEC).is_empty());
    let m = e.find_matches("coop", 31 * SEC);
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].teams[0].len(), 2);
    assert_eq!(m[0].teams[1].len(), 2);
    assert!(m[0].quality < 1.0, "under-filled matches score lower");
    // The fifth ticket alone cannot make two teams.
    assert_eq!(e.len(), 1);
    e.insert("coop", ticket(9, 1, 40 * SEC, 0.0)).unwrap();
    let m = e.find_matches("coop", 41 * SEC);
    assert_eq!(m[0].teams, vec![vec![TicketId(4)], vec![TicketId(9)]]);
}

#[test]
fn full_teams_are_preferred_after_fill_after() {
    let mut e = engine(FILL);
    for i in 0..6 {
        e.insert("coop", ticket(i, 1, 0, 0.0)).unwrap();
    }
    let m = e.find_matches("coop", 60 * SEC);
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].teams[0].len() + m[0].teams[1].len(), 6);
    assert_eq!(m[0].quality, 1.0);
}

const FILTERS: &str = r#"
[[queue]]
key = "f"
teams = 2
team_size = 1
[queue.filters]
string_args = ["mode", "map"]
tags = ["crossplay"]
"#;

#[test]
fn string_arg_filters() {
    let mut e = engine(FILTERS);
    e.insert(
        "f",
        with_arg(with_arg(ticket(1, 1, 0, 0.0), "mode", "ctf"), "map", "a"),
    )
    .unwrap();
    e.insert(
        "f",
        with_arg(with_arg(ticket(2, 1, 1, 0.0), "mode", "ctf"), "map", "b"),
    )
    .unwrap();
    e.insert("f", with_arg(ticket(3, 1, 2, 0.0), "mode", "ctf"))
        .unwrap();
    // Args not listed in the profile do not matter.
    let t4 = with_arg(ticket(4, 1, 3, 0.0), "mode", "ctf");
    e.insert("f", with_arg(with_arg(t4, "map", "b"), "skin", "red"))
        .unwrap();
    e.insert("f", with_arg(ticket(5, 1, 4, 0.0), "mode", "ctf"))
        .unwrap();
    let m = e.find_matches("f", 10);
    assert_eq!(m.len(), 2);
    assert_eq!(ids(&m[0]), vec![2, 4]);
    assert_eq!(
        ids(&m[1]),
        vec![3, 5],
        "a missing arg only equals a missing arg"
    );
    assert!(e.contains(TicketId(1)));
}

#[test]
fn tag_filters() {
    let mut e = engine(FILTERS);
    let mut a = ticket(1, 1, 0, 0.0);
    a.tags.push("crossplay".into());
    let mut b = ticket(2, 1, 1, 0.0);
    b.tags.push("vip".into());
    let mut c = ticket(3, 1, 2, 0.0);
    c.tags = vec!["vip".into(), "crossplay".into()];
    e.insert("f", a).unwrap();
    e.insert("f", b).unwrap();
    e.insert("f", c).unwrap();
    let m = e.find_matches("f", 10);
    assert_eq!(m.len(), 1);
    assert_eq!(ids(&m[0]), vec![1, 3]);
}

const BACKFILL: &str = r#"
[[queue]]
key = "hd"
teams = 2
team_size = 3
[queue.skill]
window = 100
widen_per_second = 10
max_window = 400
[queue.region]
max_latency_ms = 80
[queue.filters]
string_args = ["map"]
[queue.backfill]
enabled = true
"#;

fn bf_ticket(id: u64, size: u32, at: Millis, skill: f64, region: &str, map: &str) -> Ticket {
    with_arg(
        with_latency(ticket(id, size, at, skill), region, 30),
        "map",
        map,
    )
}

#[test]
fn backfill_fills_open_slots_from_the_queue() {
    let mut e = engine(BACKFILL);
    e.insert("hd", bf_ticket(1, 1, 0, 1000.0, "eu", "a"))
        .unwrap();
    e.insert("hd", bf_ticket(2, 2, 1, 1020.0, "eu", "a"))
        .unwrap();
    e.insert("hd", bf_ticket(3, 1, 2, 1350.0, "eu", "a"))
        .unwrap(); // outside window
    e.insert("hd", bf_ticket(4, 1, 3, 1010.0, "us", "a"))
        .unwrap(); // other region
    e.insert("hd", bf_ticket(5, 1, 4, 1010.0, "eu", "b"))
        .unwrap(); // other map
    e.insert("hd", bf_ticket(6, 1, 5, 990.0, "eu", "a"))
        .unwrap();
    let request = BackfillRequest {
        land_id: "land-7".into(),
        open_slots: vec![1, 2],
        team_skills: vec![vec![1000.0, 1010.0], vec![1005.0]],
        string_args: [("map".to_string(), "a".to_string())].into(),
        region: Some("eu".into()),
    };
    let b = e.backfill("hd", &request, 10).unwrap();
    assert_eq!(b.land_id, "land-7");
    // Oldest first: ticket 1 (1 player) then the party 2 (2 players);
    // the party only fits team 1, which has two open slots.
    let mut got = b.tickets.clone();
    got.sort();
    assert_eq!(got, vec![(TicketId(1), 0), (TicketId(2), 1)]);
    assert!(b.quality > 0.5);
    assert!(!e.contains(TicketId(1)) && !e.contains(TicketId(2)));
    for id in [3, 4, 5, 6] {
        assert!(e.contains(TicketId(id)));
    }
    // Nothing left that fits a full land.
    let full = BackfillRequest {
        open_slots: vec![0, 0],
        ..request.clone()
    };
    assert!(e.backfill("hd", &full, 10).is_none());
    // The outlier becomes acceptable once its wait widens the window
    // (window(40s) = 400 around the land mean ~1005).
    let one = BackfillRequest {
        open_slots: vec![1, 0],
        ..request
    };
    let b = e.backfill("hd", &one, 40 * SEC).unwrap();
    assert_eq!(b.tickets, vec![(TicketId(3), 0)]);
}

#[test]
fn backfill_requires_the_profile_to_enable_it() {
    let mut e = engine(DUEL);
    e.insert("duel", ticket(1, 1, 0, 0.0)).unwrap();
    let request = BackfillRequest {
        land_id: "l".into(),
        open_slots: vec![1],
        ..BackfillRequest::default()
    };
    assert!(e.backfill("duel", &request, 0).is_none());
    let mut d = Engine::new(EngineConfig::default()).unwrap();
    d.insert("x:1v1", ticket(1, 1, 0, 0.0)).unwrap();
    assert!(d.backfill("x:1v1", &request, 0).is_none());
    assert!(d.backfill("nope", &request, 0).is_none());
}

/// Pairs the newest tickets first: the opposite of the built-in order.
struct NewestPairs;

impl MatchFunction for NewestPairs {
    fn find_matches(&mut self, pool: &mut QueuePool<'_>, _now: Millis) {
        let mut newest: Vec<TicketId> = pool.tickets().map(|t| t.id()).collect();
        newest.reverse();
        for pair in newest.chunks_exact(2) {
            pool.commit(vec![vec![pair[0]], vec![pair[1]]], 0.5)
                .unwrap();
        }
    }
}

#[test]
fn custom_match_function() {
    let mut e = Engine::new(EngineConfig::default()).unwrap();
    e.set_match_function("custom:1v1", Box::new(NewestPairs));
    for i in 0..3 {
        e.insert("custom:1v1", ticket(i, 1, i, 0.0)).unwrap();
    }
    let m = e.find_matches("custom:1v1", 10);
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].teams, vec![vec![TicketId(2)], vec![TicketId(1)]]);
    assert_eq!(m[0].quality, 0.5);
    assert!(e.contains(TicketId(0)));
}

struct Checker;

impl MatchFunction for Checker {
    fn find_matches(&mut self, pool: &mut QueuePool<'_>, _now: Millis) {
        assert_eq!(pool.key(), "c:2v2");
        assert_eq!(pool.team_sizes(), Some(&[2, 2][..]));
        assert_eq!(pool.len(), 2);
        let t = pool.get(TicketId(1)).unwrap();
        assert_eq!(t.attribute("skill"), Some(0.0));
        assert_eq!(t.latency("eu"), Some(30));
        assert_eq!(t.string_arg("map"), Some("a"));
        assert_eq!(pool.commit(vec![], 1.0), Err(CommitError::Empty));
        assert_eq!(
            pool.commit(vec![vec![TicketId(1)], vec![TicketId(1)]], 1.0),
            Err(CommitError::Repeated(TicketId(1)))
        );
        assert_eq!(
            pool.commit(vec![vec![TicketId(1), TicketId(99)]], 1.0),
            Err(CommitError::Unknown(TicketId(99)))
        );
        assert_eq!(pool.len(), 2, "rejected commits remove nothing");
        pool.commit(vec![vec![TicketId(2)]], 1.0).unwrap();
    }
}

#[test]
fn commit_is_validated() {
    let mut e = Engine::new(EngineConfig::default()).unwrap();
    e.set_match_function("c:2v2", Box::new(Checker));
    e.insert("c:2v2", bf_ticket(1, 1, 0, 0.0, "eu", "a"))
        .unwrap();
    e.insert("c:2v2", ticket(2, 1, 0, 0.0)).unwrap();
    e.insert("other:2v2", ticket(3, 1, 0, 0.0)).unwrap();
    let m = e.find_matches("c:2v2", 0);
    assert_eq!(m.len(), 1);
    assert!(e.contains(TicketId(1)) && !e.contains(TicketId(2)));
}
