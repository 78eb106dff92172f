//! Chaos with real processes: three matcher replicas and one api replica on
//! one durable Redis, a game server, and a steady stream of tickets (with
//! cancels racing the matcher). The replica holding a queue's lease is
//! SIGKILLed three times and paused (SIGSTOP) once, one replica is restarted
//! gracefully, and Redis is SIGKILLed and restarted from its AOF. Afterwards every acknowledged ticket
//! must be accounted for, and no ticket and no player may be in two matches,
//! judged from everything stored and every token issued (docs/scale-out.md,
//! "Leases and fencing").
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../control-plane/tests/common/redis_server.rs"]
mod redis_server;
mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::AsyncCommands as _;
use redis_server::RedisServer;
use serde_json::{Value, json};
use support::*;
use tokio::time::Instant;

/// `--matcher-lease` of every replica.
const LEASE: Duration = Duration::from_secs(3);
/// Short, so tickets left without a partner expire within the test.
const TICKET_TTL: &str = "15s";
/// The queue whose lease holder gets killed: two solo players per land.
const KILLED_QUEUE: &str = "counter:1v1";
/// A second queue, so leases spread and a kill can leave one queue alone.
const OTHER_QUEUE: &str = "counter:2";
/// Tickets per second offered while the chaos goes on.
const LOAD_INTERVAL: Duration = Duration::from_millis(10);
/// Every how many acknowledged tickets one is cancelled right away.
const CANCEL_EVERY: u64 = 10;
const KEYS: &str = "{matchplane}";

struct Replica {
    port: u16,
    role: &'static str,
    dir: tempfile::TempDir,
    proc: Option<Proc>,
    /// Its replica id in Redis (new for every start).
    id: String,
}

impl Replica {
    async fn start(redis_url: &str, role: &'static str) -> Self {
        let mut replica = Self {
            port: free_port(),
            role,
            dir: tempfile::tempdir().unwrap(),
            proc: None,
            id: String::new(),
        };
        replica.launch(redis_url).await;
        replica
    }

    async fn launch(&mut self, redis_url: &str) {
        let all = args(&[
            "control-plane",
            "--port",
            &self.port.to_string(),
            "--redis-url",
            redis_url,
            "--data-dir",
            self.dir.path().to_str().unwrap(),
            "--role",
            self.role,
            "--rate-limit",
            "off",
            "--matcher-lease",
            &format!("{}s", LEASE.as_secs()),
            "--ticket-ttl",
            TICKET_TTL,
            "--assignment-ttl",
            "10m",
        ]);
        let proc =
            spawn_with_env(&all, "control plane listening", "info", &KNOWN_CREDENTIALS).await;
        let (status, cluster) = admin_get(&format!("{}/v1/admin/cluster", proc.http())).await;
        assert_eq!(status, 200, "{cluster}");
        self.id = cluster["replicaId"].as_str().unwrap().to_owned();
        self.proc = Some(proc);
    }

    fn http(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn kill(&mut self) {
        let mut proc = self.proc.take().expect("running");
        proc.child.start_kill().unwrap();
        proc.child.wait().await.unwrap();
    }

    async fn stop_gracefully(&mut self) {
        let mut proc = self.proc.take().expect("running");
        proc.sigterm();
        assert!(proc.wait_exit(Duration::from_secs(30)).await.success());
    }
}

/// What the control planes acknowledged and answered, as the clients saw it.
#[derive(Default)]
struct Ledger {
    /// Tickets answered 201 with a ticket id: id → (queue, player).
    acknowledged: BTreeMap<String, (String, String)>,
    /// Cancels answered: ticket → `cancelled` of the answer.
    cancels: BTreeMap<String, bool>,
    /// Enqueues that got no acknowledgement (refused, reset, timed out).
    unacknowledged: u64,
}

type SharedLedger = Arc<Mutex<Ledger>>;

async fn enqueue_one(
    http: &reqwest::Client,
    base: &str,
    queue: &str,
    player: &str,
    ledger: &SharedLedger,
) -> Option<String> {
    let response = http
        .post(format!("{base}/v1/matchmaking/enqueue"))
        .json(&json!({"queueKey": queue, "members": [player]}))
        .send()
        .await;
    let ticket = match response {
        Ok(response) if response.status().as_u16() == 201 => response
            .json::<Value>()
            .await
            .ok()
            .and_then(|body| body["ticketId"].as_str().map(str::to_owned)),
        _ => None,
    };
    let mut ledger = ledger.lock().unwrap();
    match &ticket {
        Some(id) => {
            ledger
                .acknowledged
                .insert(id.clone(), (queue.to_owned(), player.to_owned()));
        }
        None => ledger.unacknowledged += 1,
    }
    ticket
}

/// Offers a ticket every [`LOAD_INTERVAL`], round-robin over `bases` and the
/// two queues, and cancels every [`CANCEL_EVERY`]th acknowledged one through
/// another replica while the matcher may be taking it.
async fn load(
    bases: Vec<String>,
    ledger: SharedLedger,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut ticker = tokio::time::interval(LOAD_INTERVAL);
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0u64.. {
        tokio::select! {
            _ = stop.changed() => break,
            _ = ticker.tick() => {}
        }
        let (http, ledger) = (http.clone(), Arc::clone(&ledger));
        let base = bases[n as usize % bases.len()].clone();
        let canceller = bases[(n as usize + 1) % bases.len()].clone();
        let queue = if n % 2 == 0 {
            KILLED_QUEUE
        } else {
            OTHER_QUEUE
        };
        tasks.spawn(async move {
            let player = format!("load-{n}");
            let Some(ticket) = enqueue_one(&http, &base, queue, &player, &ledger).await else {
                return;
            };
            if n % CANCEL_EVERY != 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(n % 30)).await;
            let answer = http
                .post(format!("{canceller}/v1/matchmaking/cancel"))
                .json(&json!({ "ticketId": ticket }))
                .send()
                .await;
            if let Ok(answer) = answer
                && answer.status().is_success()
                && let Ok(body) = answer.json::<Value>().await
            {
                let cancelled = body["cancelled"].as_bool().unwrap();
                ledger.lock().unwrap().cancels.insert(ticket, cancelled);
            }
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}

/// The holder and epoch of `queue`'s lease, once somebody holds it.
async fn lease_holder(base: &str, queue: &str) -> (String, u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, cluster) = admin_get(&format!("{base}/v1/admin/cluster")).await;
        assert_eq!(status, 200, "{cluster}");
        if let Some(lease) = cluster["leases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|lease| lease["queueKey"] == queue)
        {
            return (
                lease["holder"].as_str().unwrap().to_owned(),
                lease["epoch"].as_u64().unwrap(),
            );
        }
        assert!(Instant::now() < deadline, "nobody holds {queue}: {cluster}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Two fresh tickets on `queue` through `base`; how long after `since` both
/// were assigned.
async fn probe(
    base: &str,
    queue: &str,
    tag: &str,
    ledger: &SharedLedger,
    since: Instant,
) -> Duration {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut tickets = Vec::new();
    for side in ["a", "b"] {
        let player = format!("probe-{tag}-{side}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // Refused while Redis is down: try again.
            if let Some(ticket) = enqueue_one(&http, base, queue, &player, ledger).await {
                tickets.push(ticket);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "probe {tag}: enqueue never acknowledged"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for ticket in &tickets {
        loop {
            if let Ok(response) = http
                .get(format!("{base}/v1/matchmaking/status/{ticket}"))
                .send()
                .await
                && let Ok(status) = response.json::<Value>().await
                && status["status"] == "assigned"
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "probe {tag}: {ticket} never assigned"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    since.elapsed()
}

/// One issued assignment, from the store or from the event feed, checked
/// token by token.
struct Issued {
    ticket: String,
    land: String,
    assignment_id: String,
    players: BTreeSet<String>,
}

/// Verifies every token of an assignment: each names its player, this land
/// and this assignment.
fn check_assignment(ticket: &str, assignment: &Value, jwks: &jsonwebtoken::jwk::JwkSet) -> Issued {
    let land = assignment["landId"].as_str().unwrap().to_owned();
    let assignment_id = assignment["assignmentId"].as_str().unwrap().to_owned();
    let mut tokens: Vec<(Option<String>, &str)> = assignment["memberTokens"]
        .as_object()
        .map(|map| {
            map.iter()
                .map(|(player, token)| (Some(player.clone()), token.as_str().unwrap()))
                .collect()
        })
        .unwrap_or_default();
    tokens.push((None, assignment["matchToken"].as_str().unwrap()));
    let mut players = BTreeSet::new();
    for (player, token) in tokens {
        let claims = verify_match_token(token, jwks);
        if let Some(player) = player {
            assert_eq!(claims.sub, player, "{ticket}");
        }
        assert_eq!(claims.land_id, land, "{ticket}: token of another land");
        assert_eq!(claims.assignment_id, assignment_id, "{ticket}");
        players.insert(claims.sub);
    }
    Issued {
        ticket: ticket.to_owned(),
        land,
        assignment_id,
        players,
    }
}

#[tokio::test]
async fn kills_and_restarts_never_lose_a_ticket_or_match_anyone_twice() {
    let redis_dir = tempfile::tempdir().unwrap();
    let mut redis = RedisServer::start_durable(redis_dir.path());
    let redis_url = redis.url();
    let mut matchers = Vec::new();
    for _ in 0..3 {
        matchers.push(Replica::start(&redis_url, "all").await);
    }
    // The game server and the probes talk to an api replica that is never
    // killed, as they would to a load balancer.
    let api = Replica::start(&redis_url, "api").await;
    let _gs = game_server(
        &api.http(),
        &[
            "--server-id",
            "gs-chaos",
            "--lands",
            "counter",
            "--max-lands",
            "1000000",
        ],
    )
    .await;
    wait_servers(&api.http(), Duration::from_secs(30), |servers| {
        servers
            .iter()
            .any(|s| s["serverId"] == "gs-chaos" && s["state"] == "live")
    })
    .await;

    let ledger = SharedLedger::default();
    let mut bases: Vec<String> = matchers.iter().map(Replica::http).collect();
    bases.push(api.http());
    let (stop_load, stop) = tokio::sync::watch::channel(false);
    let loader = tokio::spawn(load(bases, Arc::clone(&ledger), stop));
    let started = Instant::now();
    let warm = probe(&api.http(), KILLED_QUEUE, "warm-up", &ledger, started).await;
    println!("warm-up: first probe matched {warm:?} after the load started");
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Kill whoever holds the queue's lease, three times.
    let mut resumptions = Vec::new();
    for round in 0..3 {
        let (holder, epoch) = lease_holder(&api.http(), KILLED_QUEUE).await;
        let index = matchers
            .iter()
            .position(|replica| replica.id == holder)
            .unwrap_or_else(|| panic!("{holder} is not one of the matcher replicas"));
        let killed_at = Instant::now();
        matchers[index].kill().await;
        let resumed = probe(
            &api.http(),
            KILLED_QUEUE,
            &format!("kill-{round}"),
            &ledger,
            killed_at,
        )
        .await;
        let (new_holder, new_epoch) = lease_holder(&api.http(), KILLED_QUEUE).await;
        println!(
            "kill {round}: {holder} (epoch {epoch}) killed; {new_holder} matches at epoch {new_epoch}; \
             probe assigned {resumed:?} after the kill"
        );
        assert_ne!(new_holder, holder);
        assert!(new_epoch > epoch, "a new grant bumps the fencing epoch");
        assert!(
            resumed <= 2 * LEASE,
            "matching resumed {resumed:?} after the kill, more than two leases"
        );
        resumptions.push(resumed);
        matchers[index].launch(&redis_url).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    // A holder that stops without dying (a long GC-like pause, or cut off
    // from Redis): the others take over, and whatever it sends when it wakes
    // up is fenced.
    let (holder, epoch) = lease_holder(&api.http(), KILLED_QUEUE).await;
    let index = matchers
        .iter()
        .position(|replica| replica.id == holder)
        .expect("the holder is a matcher replica");
    let pid = matchers[index]
        .proc
        .as_ref()
        .unwrap()
        .child
        .id()
        .unwrap()
        .to_string();
    let signal = |name: &str| {
        let status = std::process::Command::new("kill")
            .args([name, &pid])
            .status()
            .unwrap();
        assert!(status.success());
    };
    signal("-STOP");
    let paused_at = Instant::now();
    let resumed = probe(&api.http(), KILLED_QUEUE, "pause", &ledger, paused_at).await;
    let (new_holder, new_epoch) = lease_holder(&api.http(), KILLED_QUEUE).await;
    println!(
        "pause: {holder} (epoch {epoch}) stopped; {new_holder} matches at epoch {new_epoch}; \
         probe assigned {resumed:?} after the pause"
    );
    assert_ne!(new_holder, holder);
    assert!(
        resumed <= 2 * LEASE,
        "matching resumed {resumed:?} after the pause"
    );
    resumptions.push(resumed);
    signal("-CONT");
    // Awake, it learns at its next lease round that the queue moved on.
    let lost = matchers[index]
        .proc
        .as_mut()
        .unwrap()
        .wait_log("matcher lease lost", Duration::from_secs(10))
        .await;
    assert_eq!(lost["queue_key"], KILLED_QUEUE, "{lost}");
    tokio::time::sleep(Duration::from_secs(1)).await;

    // A graceful restart of a replica.
    matchers[0].stop_gracefully().await;
    matchers[0].launch(&redis_url).await;
    let at = Instant::now();
    let after_restart = probe(&api.http(), OTHER_QUEUE, "restart", &ledger, at).await;
    println!("graceful restart: probe assigned in {after_restart:?}");

    // Redis itself dies and comes back from its AOF.
    redis.kill_hard();
    let redis_down = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    redis.restart();
    let after_redis = probe(&api.http(), KILLED_QUEUE, "redis", &ledger, redis_down).await;
    println!("redis restart: probe assigned {after_redis:?} after Redis died");
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop_load.send(true).unwrap();
    loader.await.unwrap();

    // Left-over tickets (an odd one out, cancels that lost) end by TTL.
    let client = redis::Client::open(redis_url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let queued: u64 = conn.zcard(format!("{KEYS}:queued")).await.unwrap();
        if queued == 0 {
            break;
        }
        if Instant::now() >= deadline {
            let stuck: Vec<String> = conn.zrange(format!("{KEYS}:queued"), 0, -1).await.unwrap();
            let mut details = Vec::new();
            for id in &stuck {
                let fields: HashMap<String, String> =
                    conn.hgetall(format!("{KEYS}:ticket:{id}")).await.unwrap();
                details.push(format!("{id}: {fields:?}"));
            }
            let (_, cluster) = admin_get(&format!("{}/v1/admin/cluster", api.http())).await;
            let queues: Vec<String> = conn.smembers(format!("{KEYS}:queues")).await.unwrap();
            panic!(
                "{queued} tickets still queued a minute after the load stopped: {details:#?}\n\
                 queues with queued tickets: {queues:?}\ncluster: {cluster:#}"
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let (status, jwks) = get(&format!("{}/.well-known/jwks.json", api.http())).await;
    assert_eq!(status, 200);
    let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_value(jwks).unwrap();

    // Everything stored.
    let keys: Vec<String> = conn.keys(format!("{KEYS}:ticket:*")).await.unwrap();
    let mut stored: HashMap<String, HashMap<String, String>> = HashMap::new();
    for key in keys {
        let fields: HashMap<String, String> = conn.hgetall(&key).await.unwrap();
        let id = key.rsplit(':').next().unwrap().to_owned();
        stored.insert(id, fields);
    }
    // Every event the feed carried (it is what pushes are made of).
    let feed: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
        .arg(format!("{KEYS}:events"))
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut events: BTreeMap<String, Vec<(String, Option<Value>)>> = BTreeMap::new();
    for (_, flat) in &feed {
        let fields: HashMap<&str, &str> = flat
            .chunks(2)
            .map(|pair| (pair[0].as_str(), pair[1].as_str()))
            .collect();
        // Markers (`kind` = mark) only position readers; they name no ticket.
        let Some(ticket) = fields.get("ticket") else {
            continue;
        };
        let assignment = fields
            .get("assignment")
            .map(|raw| serde_json::from_str(raw).unwrap());
        events
            .entry((*ticket).to_owned())
            .or_default()
            .push((fields["kind"].to_owned(), assignment));
    }

    let ledger = ledger.lock().unwrap();
    let mut outcome: BTreeMap<String, u64> = BTreeMap::new();
    // 1. Every acknowledged ticket is accounted for.
    for (ticket, (queue, player)) in &ledger.acknowledged {
        let fields = stored
            .get(ticket)
            .unwrap_or_else(|| panic!("acknowledged ticket {ticket} ({player}) is gone"));
        assert_eq!(fields["queue_key"], *queue, "{ticket}");
        let status = fields["status"].as_str();
        *outcome.entry(status.to_owned()).or_default() += 1;
        match ledger.cancels.get(ticket) {
            Some(true) => assert_eq!(status, "cancelled", "{ticket} was cancelled, then {status}"),
            Some(false) => assert_ne!(status, "cancelled", "{ticket}: cancel said no"),
            None => {}
        }
        assert!(
            ["assigned", "expired", "cancelled"].contains(&status),
            "{ticket} ended {status}"
        );
        let kinds: Vec<&str> = events
            .get(ticket)
            .map(|list| list.iter().map(|(kind, _)| kind.as_str()).collect())
            .unwrap_or_default();
        assert_eq!(kinds.first(), Some(&"enqueued"), "{ticket}: feed {kinds:?}");
    }

    // 2. Every stored assignment: tokens verify and name its land; a land
    //    holds one match of two tickets, and nobody is in two lands.
    let mut lands: BTreeMap<String, Vec<Issued>> = BTreeMap::new();
    for (ticket, fields) in &stored {
        if let Some(raw) = fields.get("assignment") {
            assert_eq!(fields["status"], "assigned", "{ticket}");
            let assignment: Value = serde_json::from_str(raw).unwrap();
            let issued = check_assignment(ticket, &assignment, &jwks);
            lands.entry(issued.land.clone()).or_default().push(issued);
        }
    }
    let mut land_of_player: HashMap<String, String> = HashMap::new();
    for (land, tickets) in &lands {
        assert_eq!(
            tickets.len(),
            2,
            "land {land} holds {} tickets",
            tickets.len()
        );
        for issued in tickets {
            for player in &issued.players {
                if let Some(other) = land_of_player.insert(player.clone(), land.clone()) {
                    panic!("{player} is in two lands: {other} and {land}");
                }
            }
        }
    }

    // 3. Every token issued (the feed's `assigned` events): one assignment
    //    per ticket unless a release requeued it in between, the same as the
    //    one stored, and no player in two lands.
    let mut assigned_events = 0;
    let mut lands_of_player: HashMap<String, BTreeSet<String>> = HashMap::new();
    for (ticket, list) in &events {
        let mut releases = 0;
        let mut assigned = Vec::new();
        for (kind, assignment) in list {
            match kind.as_str() {
                "assigned" => {
                    let issued = check_assignment(ticket, assignment.as_ref().unwrap(), &jwks);
                    for player in &issued.players {
                        lands_of_player
                            .entry(player.clone())
                            .or_default()
                            .insert(issued.land.clone());
                    }
                    assigned.push(issued);
                }
                "requeued" | "match_lost" => releases += 1,
                _ => {}
            }
        }
        assigned_events += assigned.len();
        assert!(
            assigned.len() <= 1 + releases,
            "{ticket} assigned {} times with {releases} releases",
            assigned.len()
        );
        if releases == 0 {
            for issued in &assigned {
                for player in &issued.players {
                    assert_eq!(lands_of_player[player].len(), 1, "{player} in two lands");
                }
            }
        }
        if let (Some(last), Some(fields)) = (assigned.last(), stored.get(ticket))
            && fields["status"] == "assigned"
        {
            let raw = &fields["assignment"];
            let stored_assignment: Value = serde_json::from_str(raw).unwrap();
            assert_eq!(
                stored_assignment["assignmentId"], last.assignment_id,
                "{}: the feed and the store disagree",
                last.ticket
            );
        }
    }
    for (ticket, fields) in &stored {
        if fields["status"] == "assigned" {
            assert!(
                events
                    .get(ticket)
                    .is_some_and(|list| list.iter().any(|(kind, _)| kind == "assigned")),
                "{ticket} assigned without an event"
            );
        }
    }
    let assigned_total = outcome.get("assigned").copied().unwrap_or(0);
    println!(
        "acknowledged {} (unacknowledged {}), outcomes {outcome:?}, cancels answered {}, \
         {} lands, {assigned_events} assigned events, resumptions {resumptions:?}",
        ledger.acknowledged.len(),
        ledger.unacknowledged,
        ledger.cancels.len(),
        lands.len(),
    );
    assert!(assigned_total > 100, "the load was matched: {outcome:?}");
}
