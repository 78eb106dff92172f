//! A game server dies under real processes (issue 11): a control plane with
//! default liveness settings, game servers `gs-a` and `gs-b`, `gs-a` killed
//! with SIGKILL. Nothing is allocated to it after its TTL, a pair allocated to
//! it but not joined is requeued onto `gs-b` (`ticket.requeued`), a pair
//! playing on it gets `match.lost` and a new match, no ticket ends in two
//! live assignments, and `gs-a` restarted under the same id refuses tokens of
//! its previous instance (4404 `land_lost`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use support::*;
use tokio_tungstenite::tungstenite::Message;

/// Passed explicitly so that an assignment's time can be read back from its `expiresAt`.
const ASSIGNMENT_TTL: Duration = Duration::from_secs(60);
/// The bound with default settings (2 s heartbeat, 6 s TTL).
const NO_ALLOCATION_AFTER: Duration = Duration::from_secs(8);
const LOOP_FOR: Duration = Duration::from_secs(10);
const LOOP_EVERY: Duration = Duration::from_millis(300);
const SECONDS_30: Duration = Duration::from_secs(30);

const LOOP_QUEUE: &str = "counter:1v1";
/// The two watched pairs get queues of their own so that, requeued, each pair
/// can only be matched with itself (a 1v1 key's later segments keep the mode).
const PENDING_QUEUE: &str = "counter:1v1:pending";
const PLAYING_QUEUE: &str = "counter:1v1:playing";

/// Progress lines stamped with the time since the test began.
struct Clock(Instant);

impl Clock {
    fn say(&self, line: &str) {
        println!("[failover {:>6.2}s] {line}", self.0.elapsed().as_secs_f64());
    }
}

/// A `/realtime` socket whose messages a background task records as they come,
/// so the socket keeps answering pings and nothing is missed while the test
/// does other things.
struct Watcher {
    sink: SplitSink<Socket, Message>,
    events: Arc<Mutex<Vec<Value>>>,
    changed: Arc<tokio::sync::Notify>,
}

impl Watcher {
    async fn open(url: &str) -> Self {
        let (sink, mut stream) = ws(url).await.split();
        let events = Arc::new(Mutex::new(Vec::new()));
        let changed = Arc::new(tokio::sync::Notify::new());
        let (recorded, notify) = (events.clone(), changed.clone());
        tokio::spawn(async move {
            while let Some(Ok(message)) = stream.next().await {
                if let Message::Text(text) = message {
                    let event: Value = serde_json::from_str(&text).unwrap();
                    recorded.lock().unwrap().push(event);
                    notify.notify_waiters();
                }
            }
        });
        Self {
            sink,
            events,
            changed,
        }
    }

    async fn send(&mut self, action: Value) {
        self.sink
            .send(Message::Text(action.to_string().into()))
            .await
            .unwrap();
    }

    fn events(&self) -> Vec<Value> {
        self.events.lock().unwrap().clone()
    }

    /// Waits until `check` holds for the messages so far, and returns them.
    async fn wait_until(
        &self,
        within: Duration,
        what: &str,
        check: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let waited = tokio::time::timeout(within, async {
            loop {
                let notified = self.changed.notified();
                let events = self.events();
                if check(&events) {
                    return events;
                }
                notified.await;
            }
        })
        .await;
        waited.unwrap_or_else(|_| panic!("{what} within {within:?}; got {:#?}", self.events()))
    }

    /// Enqueues one player with the `enqueue` action (the socket then watches
    /// the ticket) and returns the ticket id.
    async fn enqueue(&mut self, queue_key: &str, player: &str) -> String {
        let answered = self
            .events()
            .iter()
            .filter(|e| e["type"] == "enqueued")
            .count();
        self.send(json!({"action": "enqueue", "queueKey": queue_key, "members": [player]}))
            .await;
        let events = self
            .wait_until(SECONDS_30, "an enqueued answer", |events| {
                events.iter().filter(|e| e["type"] == "enqueued").count() > answered
            })
            .await;
        let enqueued = events
            .iter()
            .filter(|e| e["type"] == "enqueued")
            .nth(answered);
        enqueued.unwrap()["data"]["ticketId"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// The ticket's lifecycle events (assignments, requeues, losses, endings).
    fn history(&self, ticket: &str) -> Vec<Value> {
        history_of(&self.events(), ticket)
    }

    /// The ticket's latest pushed assignment, once there is one on `server`.
    async fn assigned_on(&self, ticket: &str, server: &str, within: Duration) -> Value {
        let events = self
            .wait_until(
                within,
                &format!("{ticket} assigned on {server}"),
                |events| {
                    last_assignment(&history_of(events, ticket))
                        .is_some_and(|assignment| assignment["serverId"] == server)
                },
            )
            .await;
        last_assignment(&history_of(&events, ticket)).unwrap()
    }
}

const LIFECYCLE: [&str; 6] = [
    "match.assigned",
    "ticket.requeued",
    "match.lost",
    "ticket.failed",
    "ticket.expired",
    "ticket.cancelled",
];

fn history_of(events: &[Value], ticket: &str) -> Vec<Value> {
    events
        .iter()
        .filter(|e| {
            LIFECYCLE.contains(&e["type"].as_str().unwrap_or_default())
                && e["data"]["ticketId"] == ticket
        })
        .cloned()
        .collect()
}

/// The current assignment according to the pushes: the last event is an assignment.
fn last_assignment(history: &[Value]) -> Option<Value> {
    history
        .last()
        .filter(|e| e["type"] == "match.assigned")
        .map(|e| e["data"]["assignment"].clone())
}

fn kinds(history: &[Value]) -> Vec<&str> {
    history
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect()
}

/// When the control plane made the assignment: `expiresAt` minus the assignment TTL.
fn assigned_at(assignment: &Value) -> SystemTime {
    let expires = assignment["expiresAt"].as_str().unwrap();
    humantime::parse_rfc3339(expires).unwrap() - ASSIGNMENT_TTL
}

fn after(earlier: SystemTime, later: SystemTime) -> f64 {
    match later.duration_since(earlier) {
        Ok(gap) => gap.as_secs_f64(),
        Err(before) => -before.duration().as_secs_f64(),
    }
}

/// A player joins the land of its assignment: `join.ok` carries its id.
async fn join(assignment: &Value, player: &str) -> Socket {
    let mut socket = ws(&join_url(assignment, player)).await;
    let joined = next_of(&mut socket, "join.ok").await;
    assert_eq!(joined["data"]["playerId"], player, "{joined}");
    assert_eq!(joined["data"]["landId"], assignment["landId"], "{joined}");
    socket
}

async fn wait_state(cp: &Proc, server_id: &str, state: &str, within: Duration) {
    wait_servers(&cp.http(), within, |servers| {
        servers
            .iter()
            .any(|s| s["serverId"] == server_id && s["state"] == state)
    })
    .await;
}

/// The match token of one player of an assignment.
fn token_of<'a>(assignment: &'a Value, player: &str) -> &'a str {
    assignment["memberTokens"][player]
        .as_str()
        .unwrap_or_else(|| assignment["matchToken"].as_str().unwrap())
}

/// A land as the current assignments' tokens describe it.
struct Land {
    match_id: Option<String>,
    roster: Vec<Vec<String>>,
    /// Players whose ticket is assigned there.
    holders: BTreeSet<String>,
}

/// A ticket the test created: who is in it and which socket watches it.
struct Created {
    ticket: String,
    player: String,
    watcher: usize,
}

#[tokio::test]
async fn killed_game_server_strands_nobody_and_its_restart_refuses_old_tokens() {
    let clock = Clock(Instant::now());
    let ttl = format!("{}s", ASSIGNMENT_TTL.as_secs());
    let cp = control_plane(&["--assignment-ttl", &ttl]).await;
    let base = cp.http();
    let realtime = format!("ws://{}/realtime", cp.addr);
    let mut gs_a = game_server_at_default_heartbeat(&base, &["--server-id", "gs-a"]).await;
    wait_state(&cp, "gs-a", "live", SECONDS_30).await;
    clock.say("control plane and gs-a up (default heartbeat 2 s, server TTL 6 s)");

    let mut watchers: Vec<Watcher> = Vec::new();
    let mut created: Vec<Created> = Vec::new();

    // A pair that will be playing on gs-a when it dies.
    let p3a = enqueue(
        &base,
        json!({"queueKey": PLAYING_QUEUE, "members": ["playing-a"]}),
    )
    .await;
    let mut playing = Watcher::open(&format!("{realtime}?ticketId={p3a}")).await;
    let p3b = enqueue(
        &base,
        json!({"queueKey": PLAYING_QUEUE, "members": ["playing-b"]}),
    )
    .await;
    playing
        .send(json!({"action": "subscribe", "ticketId": p3b}))
        .await;
    let first_p3a = playing.assigned_on(&p3a, "gs-a", SECONDS_30).await;
    let first_p3b = playing.assigned_on(&p3b, "gs-a", SECONDS_30).await;
    assert_eq!(first_p3a["landId"], first_p3b["landId"]);
    let old_land = first_p3a["landId"].as_str().unwrap().to_owned();
    let _on_gs_a = (
        join(&first_p3a, "playing-a").await,
        join(&first_p3b, "playing-b").await,
    );
    clock.say(&format!("pair 'playing' joined land {old_land} on gs-a"));

    // A pair allocated to gs-a that nobody joins.
    let p2a = enqueue(
        &base,
        json!({"queueKey": PENDING_QUEUE, "members": ["pending-a"]}),
    )
    .await;
    let mut pending = Watcher::open(&format!("{realtime}?ticketId={p2a}")).await;
    let p2b = enqueue(
        &base,
        json!({"queueKey": PENDING_QUEUE, "members": ["pending-b"]}),
    )
    .await;
    pending
        .send(json!({"action": "subscribe", "ticketId": p2b}))
        .await;
    let first_p2a = pending.assigned_on(&p2a, "gs-a", SECONDS_30).await;
    pending.assigned_on(&p2b, "gs-a", SECONDS_30).await;
    clock.say(&format!(
        "pair 'pending' allocated land {} on gs-a, not joined",
        first_p2a["landId"].as_str().unwrap()
    ));
    for (ticket, player) in [
        (&p3a, "playing-a"),
        (&p3b, "playing-b"),
        (&p2a, "pending-a"),
        (&p2b, "pending-b"),
    ] {
        let watcher = if player.starts_with("playing") { 0 } else { 1 };
        created.push(Created {
            ticket: ticket.clone(),
            player: player.to_owned(),
            watcher,
        });
    }
    watchers.push(playing);
    watchers.push(pending);

    // gs-b comes up only now, so both pairs above had to go to gs-a.
    let gs_b = game_server_at_default_heartbeat(&base, &["--server-id", "gs-b"]).await;
    wait_state(&cp, "gs-b", "live", SECONDS_30).await;
    // The playing pair's land must be known to the control plane as open.
    wait_servers(&base, SECONDS_30, |servers| {
        servers.iter().any(|s| {
            s["serverId"] == "gs-a" && s["openLands"].as_u64().is_some_and(|open| open >= 1)
        })
    })
    .await;
    clock.say("gs-b live; gs-a reported the playing land open; killing gs-a (SIGKILL)");

    let killed_at = SystemTime::now();
    let killed = Instant::now();
    gs_a.child.kill().await.unwrap();

    // Watch for gs-a's loss while allocations keep being asked for.
    let lost_url = base.clone();
    let lost_within = tokio::spawn(async move {
        wait_servers(&lost_url, NO_ALLOCATION_AFTER, |servers| {
            servers
                .iter()
                .any(|s| s["serverId"] == "gs-a" && s["state"] == "lost")
        })
        .await;
        killed.elapsed()
    });

    let mut pair = 0;
    while killed.elapsed() < LOOP_FOR {
        let mut watcher = Watcher::open(&realtime).await;
        for side in ["a", "b"] {
            let player = format!("loop-{pair}-{side}");
            let ticket = watcher.enqueue(LOOP_QUEUE, &player).await;
            created.push(Created {
                ticket,
                player,
                watcher: watchers.len(),
            });
        }
        watchers.push(watcher);
        pair += 1;
        tokio::time::sleep(LOOP_EVERY).await;
    }
    clock.say(&format!(
        "enqueued {pair} 1v1 pairs over the 10 s after the kill"
    ));
    let lost_after = lost_within.await.expect("gs-a shows `lost` within 8 s");
    clock.say(&format!(
        "gs-a was `lost` in the admin list {:.2} s after the kill",
        lost_after.as_secs_f64()
    ));

    // 2. The pending pair: assigned on gs-a, requeued, assigned on gs-b, joins there.
    let new_p2a = watchers[1].assigned_on(&p2a, "gs-b", SECONDS_30).await;
    let new_p2b = watchers[1].assigned_on(&p2b, "gs-b", SECONDS_30).await;
    for ticket in [&p2a, &p2b] {
        let history = watchers[1].history(ticket);
        assert_eq!(
            kinds(&history),
            ["match.assigned", "ticket.requeued", "match.assigned"],
            "{history:#?}"
        );
        assert_eq!(history[0]["data"]["assignment"]["serverId"], "gs-a");
        assert_eq!(history[1]["data"]["reason"], "server_lost");
    }
    assert_eq!(
        new_p2a["landId"], new_p2b["landId"],
        "the pair plays together"
    );
    let _pending_on_gs_b = (
        join(&new_p2a, "pending-a").await,
        join(&new_p2b, "pending-b").await,
    );
    clock.say(&format!(
        "pair 'pending': requeued, then joined land {} on gs-b",
        new_p2a["landId"].as_str().unwrap()
    ));

    // 3. The playing pair: match.lost naming its land, a new match on gs-b, joins there.
    let new_p3a = watchers[0].assigned_on(&p3a, "gs-b", SECONDS_30).await;
    let new_p3b = watchers[0].assigned_on(&p3b, "gs-b", SECONDS_30).await;
    for ticket in [&p3a, &p3b] {
        let history = watchers[0].history(ticket);
        assert_eq!(
            kinds(&history),
            ["match.assigned", "match.lost", "match.assigned"],
            "{history:#?}"
        );
        assert_eq!(history[1]["data"]["landId"], old_land.as_str());
        assert_eq!(history[1]["data"]["reason"], "server_lost");
    }
    assert_ne!(new_p3a["landId"], old_land.as_str());
    assert_eq!(
        new_p3a["landId"], new_p3b["landId"],
        "the pair plays together"
    );
    let _playing_on_gs_b = (
        join(&new_p3a, "playing-a").await,
        join(&new_p3b, "playing-b").await,
    );
    clock.say(&format!(
        "pair 'playing': match.lost for {old_land}, then joined land {} on gs-b",
        new_p3a["landId"].as_str().unwrap()
    ));

    // Every ticket ends assigned (the pushes say so before the store is read).
    for entry in &created {
        watchers[entry.watcher]
            .wait_until(
                SECONDS_30,
                &format!("{} assigned", entry.ticket),
                |events| last_assignment(&history_of(events, &entry.ticket)).is_some(),
            )
            .await;
    }

    // 1. No allocation to gs-a past the bound, over every assignment pushed.
    let mut late = 0;
    let mut to_dead_gs_a = 0;
    for entry in &created {
        let history = watchers[entry.watcher].history(&entry.ticket);
        for event in history.iter().filter(|e| e["type"] == "match.assigned") {
            let assignment = &event["data"]["assignment"];
            let since_kill = after(killed_at, assigned_at(assignment));
            if since_kill > 0.0 && assignment["serverId"] == "gs-a" {
                to_dead_gs_a += 1;
            }
            if since_kill > NO_ALLOCATION_AFTER.as_secs_f64() {
                late += 1;
                assert_eq!(
                    assignment["serverId"], "gs-b",
                    "{} assigned {since_kill:.2} s after the kill: {assignment}",
                    entry.ticket
                );
            }
        }
    }
    assert!(late > 0, "the loop ran past the bound and got assignments");
    clock.say(&format!(
        "{late} assignments made > 8 s after the kill, all on gs-b \
         ({to_dead_gs_a} went to gs-a between the kill and its suspicion, all requeued)"
    ));

    // 4. No ticket in two live assignments: each push history alternates, and
    //    the store's current assignments are consistent with each other.
    for entry in &created {
        let history = watchers[entry.watcher].history(&entry.ticket);
        for window in history.windows(2) {
            assert!(
                !(window[0]["type"] == "match.assigned" && window[1]["type"] == "match.assigned"),
                "{} got a second assignment while the first was live: {history:#?}",
                entry.ticket
            );
        }
    }
    let (_, jwks) = get(&format!("{base}/.well-known/jwks.json")).await;
    let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_value(jwks).unwrap();
    let mut lands: BTreeMap<String, Land> = BTreeMap::new();
    let mut gs_b_instances = BTreeSet::new();
    for entry in &created {
        let (status, body) = get(&format!("{base}/v1/matchmaking/status/{}", entry.ticket)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["status"], "assigned", "{body}");
        let assignment = &body["assignment"];
        let pushed = last_assignment(&watchers[entry.watcher].history(&entry.ticket)).unwrap();
        assert_eq!(
            assignment["assignmentId"], pushed["assignmentId"],
            "the store and the last push agree on {}",
            entry.ticket
        );
        assert_eq!(
            assignment["serverId"], "gs-b",
            "nothing stays assigned to the lost server: {body}"
        );
        let claims = verify_match_token(token_of(assignment, &entry.player), &jwks);
        assert_eq!(claims.player_id, entry.player);
        assert_eq!(claims.members, std::slice::from_ref(&entry.player));
        assert_eq!(
            claims.assignment_id,
            assignment["assignmentId"].as_str().unwrap()
        );
        assert_eq!(claims.land_id, assignment["landId"].as_str().unwrap());
        assert_eq!(claims.server_id, "gs-b");
        assert_eq!(claims.match_id.as_deref(), assignment["matchId"].as_str());
        gs_b_instances.insert(
            claims
                .server_instance_id
                .expect("tokens carry the instance"),
        );
        let land = lands.entry(claims.land_id.clone()).or_insert_with(|| Land {
            match_id: claims.match_id.clone(),
            roster: claims.roster.clone(),
            holders: BTreeSet::new(),
        });
        assert_eq!(
            land.match_id, claims.match_id,
            "one land, one match: {}",
            claims.land_id
        );
        assert_eq!(
            land.roster, claims.roster,
            "one land, one roster: {}",
            claims.land_id
        );
        assert!(land.holders.insert(entry.player.clone()));
    }
    assert_eq!(
        gs_b_instances.len(),
        1,
        "one gs-b process: {gs_b_instances:?}"
    );
    let mut seated = BTreeSet::new();
    for (land_id, land) in &lands {
        let on_roster: BTreeSet<String> = land.roster.iter().flatten().cloned().collect();
        assert_eq!(
            on_roster, land.holders,
            "the roster of {land_id} is its tickets' players"
        );
        for player in on_roster {
            assert!(
                seated.insert(player.clone()),
                "{player} is in two live matches"
            );
        }
    }
    assert_eq!(seated.len(), created.len());
    clock.say(&format!(
        "{} tickets, all assigned once, on {} lands of gs-b; tokens verified",
        created.len(),
        lands.len()
    ));

    // 5. gs-a again under the same id: the old instance's token is refused with 4404.
    let gs_a_again = game_server_at_default_heartbeat(&base, &["--server-id", "gs-a"]).await;
    wait_state(&cp, "gs-a", "live", SECONDS_30).await;
    let old_token = token_of(&first_p3a, "playing-a");
    let old_instance = verify_match_token(old_token, &jwks).server_instance_id;
    assert!(old_instance.is_some_and(|old| !gs_b_instances.contains(&old)));
    let url = format!(
        "ws://{}/game/counter?landId={old_land}&token={old_token}",
        gs_a_again.addr
    );
    let mut socket = ws(&url).await;
    // 4404 alone also means "no such land type": the error frame sent before the
    // close says which, and it must be there.
    let mut errors = Vec::new();
    let closed = loop {
        match recv(&mut socket).await {
            Received::Json(message) if message["type"] == "error" => errors.push(message),
            Received::Json(message) => panic!("the old instance's token was admitted: {message}"),
            Received::Closed(code) => break code,
        }
    };
    assert_eq!(closed, Some(4404), "after {errors:?}");
    let codes: Vec<&Value> = errors.iter().map(|error| &error["data"]["code"]).collect();
    assert_eq!(codes, [&json!("land_lost")], "{errors:?}");
    let (_, lands_again) = admin_get(&format!("{}/admin/lands", gs_a_again.http())).await;
    assert_eq!(lands_again["lands"], json!([]), "no land was resurrected");
    clock.say("gs-a restarted: the old instance's token closed with 4404 land_lost");
    drop(gs_b);
}
