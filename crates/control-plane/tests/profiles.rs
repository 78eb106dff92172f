//! A queue profile driven through the real control plane: 60 tickets with
//! skills and parties of 1–3 in a 3v3 skill queue, checked from the
//! assignments and tokens alone.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::Harness;
use matchplane_control_plane::Config;
use matchplane_matchmaker::EngineConfig;
use serde_json::{Value, json};

const PROFILE: &str = r#"
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
[queue.relax]
fill_after = "30s"
"#;

struct Ticket {
    id: String,
    members: Vec<String>,
    skill: f64,
}

/// Deterministic pseudo-random numbers (no clock, no global RNG).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, bound: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % bound
    }
}

/// Waits until no new assignment shows up for a few matcher ticks.
async fn settle(h: &Harness, tickets: &[Ticket]) -> BTreeMap<String, Value> {
    let mut last = usize::MAX;
    let mut stable_rounds = 0;
    loop {
        let mut assigned = BTreeMap::new();
        for ticket in tickets {
            let status = h.status(&ticket.id).await;
            if status["status"] == "assigned" {
                assigned.insert(ticket.id.clone(), status["assignment"].clone());
            }
        }
        if assigned.len() == last {
            stable_rounds += 1;
            if stable_rounds >= 3 {
                return assigned;
            }
        } else {
            stable_rounds = 0;
        }
        last = assigned.len();
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

/// Checks every match formed so far; `window` is the widest skill spread the
/// profile allows at the current wait.
async fn check_matches(
    h: &Harness,
    tickets: &[Ticket],
    assigned: &BTreeMap<String, Value>,
    window: f64,
    earlier: &BTreeSet<String>,
    fill_relaxed: bool,
) -> usize {
    let by_id: BTreeMap<&str, &Ticket> = tickets.iter().map(|t| (t.id.as_str(), t)).collect();
    let mut matches: BTreeMap<String, Vec<(&Ticket, &Value)>> = BTreeMap::new();
    for (id, assignment) in assigned {
        matches
            .entry(assignment["matchId"].as_str().unwrap().to_owned())
            .or_default()
            .push((by_id[id.as_str()], assignment));
    }
    for (match_id, members) in &matches {
        let land = &members[0].1["landId"];
        let first_token = members[0].1["matchToken"].as_str().unwrap();
        let roster = h.verify(first_token).await.roster;
        assert_eq!(roster.len(), 2, "two teams in {match_id}");
        for team in &roster {
            // Under-filled teams (2 of 3) only for matches formed after fill_after.
            if fill_relaxed && !earlier.contains(match_id) {
                assert!(
                    (2..=3).contains(&team.len()),
                    "team of 2..=3 in {match_id}: {roster:?}"
                );
            } else {
                assert_eq!(team.len(), 3, "team of exactly 3 in {match_id}: {roster:?}");
            }
        }
        let mut skills = Vec::new();
        for (ticket, assignment) in members {
            assert_eq!(&assignment["landId"], land, "one land per match");
            let team = assignment["team"].as_u64().unwrap() as usize;
            // The party is whole, in its own team, and every member can join.
            for member in &ticket.members {
                assert!(
                    roster[team].contains(member),
                    "{member} not in team {team} of {roster:?}"
                );
                let token = assignment["memberTokens"]
                    .get(member)
                    .and_then(Value::as_str)
                    .unwrap_or_else(|| assignment["matchToken"].as_str().unwrap());
                let claims = h.verify(token).await;
                assert_eq!(&claims.sub, member);
                assert_eq!(claims.team, Some(team as u32));
                assert_eq!(claims.roster, roster);
            }
            skills.push(ticket.skill);
        }
        let players: BTreeSet<&String> = members.iter().flat_map(|(t, _)| &t.members).collect();
        let rostered: BTreeSet<&String> = roster.iter().flatten().collect();
        assert_eq!(
            players, rostered,
            "roster names exactly the matched players"
        );
        let spread = skills.iter().cloned().fold(f64::MIN, f64::max)
            - skills.iter().cloned().fold(f64::MAX, f64::min);
        assert!(
            spread <= window + 1e-9,
            "skill spread {spread} exceeds window {window} in {match_id}"
        );
    }
    matches.len()
}

fn match_ids(assigned: &BTreeMap<String, Value>) -> BTreeSet<String> {
    assigned
        .values()
        .map(|a| a["matchId"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn sixty_tickets_in_a_3v3_skill_queue_match_by_the_profile() {
    let mut config = Config::ephemeral_for_tests();
    config.engine = EngineConfig::from_toml_str(PROFILE).unwrap();
    // The manual clock jumps whole seconds to widen skill windows; the one game
    // server must not go silent (suspect, lost) meanwhile.
    config.server_ttl = Duration::from_secs(3600);
    config.heartbeat_interval = Duration::from_secs(600);
    let h = Harness::start_with(config).await;
    h.register_server("game-1", "hero-defense").await;

    // The profile needs a skill: a ticket without one is refused before it is stored.
    let (status, reply) = h
        .post(
            "/v1/matchmaking/enqueue",
            json!({"queueKey": "hero-defense:3v3-ranked", "members": ["x"]}),
        )
        .await;
    assert_eq!(status, 400, "{reply}");
    assert_eq!(reply["error"]["code"], "INVALID_ATTRIBUTE");
    let (status, reply) = h
        .post(
            "/v1/matchmaking/enqueue",
            json!({"queueKey": "hero-defense:3v3-ranked", "members": ["a", "b", "c", "d"], "attributes": {"skill": 1}}),
        )
        .await;
    assert_eq!(status, 400, "{reply}");
    assert_eq!(reply["error"]["code"], "TICKET_TOO_LARGE");

    let mut rng = Lcg(7);
    let mut tickets = Vec::new();
    // 20 solos, 20 duos, 20 trios: 120 players, exactly 20 full 3v3 matches.
    for (index, size) in (0..60).map(|i| (i, 1 + i % 3)).collect::<Vec<_>>() {
        let members: Vec<String> = (0..size).map(|m| format!("p{index}-{m}")).collect();
        let skill = 1000.0 + rng.next(600) as f64;
        let id = h
            .enqueue(
                json!({"queueKey": "hero-defense:3v3-ranked", "members": members,
                "groupSize": size, "attributes": {"skill": skill}}),
            )
            .await;
        tickets.push(Ticket { id, members, skill });
    }

    // At wait 0 only tight matches (spread ≤ 100) may form.
    let none = BTreeSet::new();
    let assigned = settle(&h, &tickets).await;
    let tight = check_matches(&h, &tickets, &assigned, 100.0, &none, false).await;

    // After 12 s the window is 100 + 25·12 = 400; after 29 s it is 825, capped at 800.
    h.clock.advance(Duration::from_secs(12));
    let assigned = settle(&h, &tickets).await;
    let widened = check_matches(&h, &tickets, &assigned, 400.0, &none, false).await;
    h.clock.advance(Duration::from_secs(17));
    let assigned = settle(&h, &tickets).await;
    let capped = check_matches(&h, &tickets, &assigned, 800.0, &none, false).await;
    // Past fill_after (30 s), whatever full teams cannot be built from (e.g.
    // duos left without solos) may play 2v2.
    let before_fill = match_ids(&assigned);
    h.clock.advance(Duration::from_secs(2));
    let assigned = settle(&h, &tickets).await;
    let all = check_matches(&h, &tickets, &assigned, 800.0, &before_fill, true).await;

    let left: Vec<(usize, f64)> = tickets
        .iter()
        .filter(|t| !assigned.contains_key(&t.id))
        .map(|t| (t.members.len(), t.skill))
        .collect();
    eprintln!(
        "matches: tight {tight}, widened {widened}, capped {capped}, all {all}; left queued: {left:?}"
    );
    assert!(tight <= widened && widened <= capped && capped <= all);
    assert_eq!(
        assigned.len(),
        60,
        "every ticket ends assigned ({all} matches); left: {left:?}"
    );
}

const BACKFILL_PROFILE: &str = r#"
[[queue]]
key = "hero-defense:3v3-backfill"
teams = 2
team_size = 3
[queue.skill]
attribute = "skill"
window = 100
widen_per_second = 0
max_window = 100
[queue.backfill]
enabled = true
"#;

#[tokio::test]
async fn backfill_fills_open_slots_of_a_running_land() {
    let mut config = Config::ephemeral_for_tests();
    config.engine = EngineConfig::from_toml_str(&format!("{PROFILE}\n{BACKFILL_PROFILE}")).unwrap();
    let h = Harness::start_with(config).await;
    h.register_server("game-1", "hero-defense").await;
    let queue = "hero-defense:3v3-backfill";
    let near_a = h
        .enqueue(json!({"queueKey": queue, "members": ["n1"], "attributes": {"skill": 1500}}))
        .await;
    let near_b = h
        .enqueue(json!({"queueKey": queue, "members": ["n2"], "attributes": {"skill": 1520}}))
        .await;
    let far = h
        .enqueue(json!({"queueKey": queue, "members": ["f1"], "attributes": {"skill": 2500}}))
        .await;

    let request = json!({
        "queueKey": queue, "landId": "hero-defense:running-1", "serverId": "game-1", "matchId": "m-1",
        "openSlots": [1, 1], "roster": [["a", "b"], ["c", "d"]], "teamSkills": [[1500, 1510], [1490, 1505]]
    });
    let (status, reply) = h.post("/v1/internal/backfill", request.clone()).await;
    assert_eq!(status, 200, "{reply}");
    let placed = reply["placed"].as_array().unwrap();
    assert_eq!(placed.len(), 2, "{reply}");
    let teams: BTreeSet<u64> = placed.iter().map(|p| p["team"].as_u64().unwrap()).collect();
    assert_eq!(teams, BTreeSet::from([0, 1]), "one per open slot");

    for ticket in [&near_a, &near_b] {
        let assignment = h.wait_for(ticket, "assigned").await["assignment"].clone();
        assert_eq!(assignment["landId"], "hero-defense:running-1");
        assert_eq!(assignment["matchId"], "m-1");
        assert_eq!(assignment["serverId"], "game-1");
        assert_eq!(
            assignment["connectUrl"],
            "ws://127.0.0.1:9000/game/hero-defense?landId=hero-defense:running-1"
        );
        let claims = h.verify(assignment["matchToken"].as_str().unwrap()).await;
        let roster: BTreeSet<String> = claims.roster.iter().flatten().cloned().collect();
        let expected: BTreeSet<String> = ["a", "b", "c", "d", "n1", "n2"]
            .iter()
            .map(|p| (*p).to_owned())
            .collect();
        assert_eq!(roster, expected, "the roster grows from the land's");
    }
    assert_eq!(
        h.status(&far).await["status"],
        "queued",
        "outside the skill window"
    );

    // Nothing left that fits: an empty answer, not an error.
    let (status, reply) = h.post("/v1/internal/backfill", request).await;
    assert_eq!(status, 200);
    assert_eq!(reply["placed"], json!([]));

    let (status, reply) = h
        .post(
            "/v1/internal/backfill",
            json!({"queueKey": "hero-defense:3v3-ranked", "landId": "hero-defense:x", "serverId": "game-1", "openSlots": [1]}),
        )
        .await;
    assert_eq!(status, 409);
    assert_eq!(reply["error"]["code"], "BACKFILL_DISABLED");
    let (status, reply) = h
        .post(
            "/v1/internal/backfill",
            json!({"queueKey": queue, "landId": "hero-defense:x", "serverId": "ghost", "openSlots": [1]}),
        )
        .await;
    assert_eq!(status, 404);
    assert_eq!(reply["error"]["code"], "SERVER_NOT_FOUND");
    let (status, reply) = h
        .post("/v1/internal/backfill", json!({"queueKey": queue}))
        .await;
    assert_eq!(status, 400);
    assert_eq!(reply["error"]["code"], "INVALID_REQUEST");
}
