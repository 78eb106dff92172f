//! A demo bot: queues, gets matched, joins its land through the SDK and plays
//! hero-defense simply (chase the enemy closest to the base, buy upgrades) until the
//! land closes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use matchplane_client::contracts::game::LandClosed;
use matchplane_client::contracts::matchmaking::Assignment;
use matchplane_client::{
    ActionError, ConnectOptions, LandConnection, LandEvent, MatchmakingClient, MatchmakingError,
    ReconnectPolicy, RecoveryPolicy, StateSync,
};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::loadtest::stats::Latency;

/// Centre of the hero-defense map, where the base stands.
const BASE: (f64, f64) = (50.0, 50.0);
/// Bots defend instead of wandering: they never chase further than this from the base.
const LEASH: f64 = 22.0;
const THINK_EVERY: Duration = Duration::from_millis(250);

/// What the progress line and the summary know about one land.
#[derive(Debug, Clone)]
pub struct LandRecord {
    pub match_id: Option<String>,
    pub players: BTreeSet<String>,
    pub opened: Instant,
    pub wave: u64,
    pub waves: u64,
    pub phase: String,
    pub closed: Option<(LandClosed, Instant)>,
}

/// Shared scoreboard of the demo.
#[derive(Debug, Default)]
pub struct Board {
    pub waiting: usize,
    pub enqueued: u64,
    pub matched: u64,
    pub in_land: usize,
    pub time_to_match: Latency,
    pub lands: BTreeMap<String, LandRecord>,
    pub failures: Vec<String>,
    /// Times a bot followed a new assignment because its land's server was lost.
    pub recovered: u64,
}

#[derive(Debug, Clone, Default)]
pub struct SharedBoard(Arc<Mutex<Board>>);

impl SharedBoard {
    pub fn lock(&self) -> MutexGuard<'_, Board> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The action a bot takes this turn.
pub struct Decision {
    action: &'static str,
    payload: Value,
    /// Where a `move` heads, remembered to avoid resending it.
    target: Option<(f64, f64)>,
}

type Reassignment<'a> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Assignment, MatchmakingError>> + Send + 'a>,
>;

/// How a stay in a land ended.
enum Stay {
    Closed(LandClosed),
    /// The land's server was lost and the ticket matched again.
    Reassigned(Assignment),
}

impl Decision {
    fn upgrade(stat: &str) -> Self {
        Self {
            action: "upgrade",
            payload: json!({ "stat": stat }),
            target: None,
        }
    }
}

pub struct Bot {
    pub id: String,
    /// Spreads idle bots around the base.
    pub slot: usize,
    pub client: MatchmakingClient,
    pub queue: String,
    pub board: SharedBoard,
    /// A bot filling a human's match gives up (cancelling its ticket) when no match
    /// formed within this long; a demo round's bots wait for each other instead.
    pub patience: Option<Duration>,
}

impl Bot {
    /// One round: queue → land → play until the land closes.
    pub async fn play_round(&self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        match tokio::time::timeout_at(deadline, self.round()).await {
            Ok(result) => result,
            Err(_) => Err(format!(
                "{}: round not finished within {timeout:?}",
                self.id
            )),
        }
        .inspect_err(|failure| self.board.lock().failures.push(failure.clone()))
    }

    async fn round(&self) -> Result<(), String> {
        {
            let mut board = self.board.lock();
            board.enqueued += 1;
            board.waiting += 1;
        }
        let started = Instant::now();
        let waited = async {
            let ticket = self
                .client
                .enqueue_solo(&self.queue, &self.id)
                .await
                .map_err(|err| format!("{}: enqueue failed: {err}", self.id))?;
            let waiting = self
                .client
                .wait_for_assignment(&ticket.ticket_id, Duration::from_secs(120));
            let Some(patience) = self.patience else {
                return waiting
                    .await
                    .map(|assignment| Some((ticket.ticket_id, assignment)))
                    .map_err(|err| format!("{}: no assignment: {err}", self.id));
            };
            match tokio::time::timeout(patience, waiting).await {
                Ok(waited) => waited
                    .map(|assignment| Some((ticket.ticket_id, assignment)))
                    .map_err(|err| format!("{}: no assignment: {err}", self.id)),
                Err(_) => {
                    let cancelled = self
                        .client
                        .cancel(&ticket.ticket_id)
                        .await
                        .map_or(true, |reply| reply.cancelled);
                    if cancelled {
                        return Ok(None);
                    }
                    // Matched just before the cancel: someone waits for this bot in a land.
                    self.client
                        .wait_for_assignment(&ticket.ticket_id, Duration::from_secs(5))
                        .await
                        .map(|assignment| Some((ticket.ticket_id, assignment)))
                        .map_err(|err| format!("{}: no assignment: {err}", self.id))
                }
            }
        }
        .await;
        let assignment = {
            let mut board = self.board.lock();
            board.waiting -= 1;
            let Some((ticket_id, assignment)) = waited? else {
                return Ok(());
            };
            board.matched += 1;
            board.time_to_match.record(started.elapsed());
            (ticket_id, assignment)
        };
        let (ticket_id, mut assignment) = assignment;
        loop {
            match self.stay(&ticket_id, assignment).await? {
                Stay::Closed(_) => return Ok(()),
                Stay::Reassigned(next) => {
                    self.board.lock().recovered += 1;
                    assignment = next;
                }
            }
        }
    }

    /// Joins the assignment's land (following a new assignment if that land is lost
    /// before the join) and plays until it closes or is lost.
    async fn stay(&self, ticket_id: &str, assignment: Assignment) -> Result<Stay, String> {
        let policy = RecoveryPolicy::default();
        let options = ConnectOptions {
            reconnect: Some(ReconnectPolicy {
                grace: Duration::from_secs(15),
                ..ReconnectPolicy::default()
            }),
            // The fewest bytes, as the play page asks for too.
            sync: StateSync::Binary,
            ..ConnectOptions::default()
        };
        let land_id = assignment.land_id.clone();
        let joined = self
            .client
            .join_land(ticket_id, assignment, &self.id, options, &policy)
            .await
            .map_err(|err| format!("{}: cannot join {land_id}: {err}", self.id))?;
        let assignment = joined.assignment;
        let mut land = joined.connection;
        {
            let mut board = self.board.lock();
            board.in_land += 1;
            let record = board
                .lands
                .entry(assignment.land_id.clone())
                .or_insert_with(|| LandRecord {
                    match_id: assignment.match_id.clone(),
                    players: BTreeSet::new(),
                    opened: Instant::now(),
                    wave: 0,
                    waves: 0,
                    phase: "preparing".to_owned(),
                    closed: None,
                });
            record.players.insert(self.id.clone());
        }
        let outcome = self.play(&mut land, ticket_id, &assignment, &policy).await;
        let mut board = self.board.lock();
        board.in_land -= 1;
        let stay = outcome?;
        if let Some(record) = board.lands.get_mut(&assignment.land_id)
            && record.closed.is_none()
        {
            match &stay {
                Stay::Closed(closed) => {
                    record.phase = closed.reason.clone();
                    record.closed = Some((closed.clone(), Instant::now()));
                }
                Stay::Reassigned(_) => record.phase = "lost".to_owned(),
            }
        }
        Ok(stay)
    }

    async fn play(
        &self,
        land: &mut LandConnection,
        ticket_id: &str,
        assignment: &Assignment,
        policy: &RecoveryPolicy,
    ) -> Result<Stay, String> {
        let land_id = assignment.land_id.as_str();
        let mut think = tokio::time::interval(THINK_EVERY);
        let mut last_target: Option<(f64, f64)> = None;
        // While the connection is down: whether the control plane has matched the ticket
        // again (its server was lost), raced with the connection's own reconnect.
        let mut reassignment: Option<Reassignment<'_>> = None;
        let lost = |err: &dyn std::fmt::Display| format!("{}: lost {land_id}: {err}", self.id);
        loop {
            tokio::select! {
                next = async {
                    match reassignment.as_mut() {
                        Some(waiting) => waiting.await,
                        None => std::future::pending().await,
                    }
                } => {
                    return match next {
                        Ok(next) => Ok(Stay::Reassigned(next)),
                        Err(err) => Err(lost(&err)),
                    };
                }
                event = land.next_event() => match event {
                    Some(LandEvent::Closed(closed)) => return Ok(Stay::Closed(closed)),
                    Some(LandEvent::Disconnected { .. }) if reassignment.is_none() => {
                        reassignment = Some(Box::pin(self.client.wait_for_reassignment(ticket_id, assignment, policy)));
                    }
                    Some(LandEvent::Reconnected { .. }) => reassignment = None,
                    Some(LandEvent::ReconnectFailed(err)) => {
                        // The land is gone for good; the ticket may still be matched again.
                        let waiting = reassignment.take().unwrap_or_else(|| {
                            Box::pin(self.client.wait_for_reassignment(ticket_id, assignment, policy))
                        });
                        return match tokio::time::timeout(policy.reassignment_timeout, waiting).await {
                            Ok(Ok(next)) => Ok(Stay::Reassigned(next)),
                            _ => Err(lost(&err)),
                        };
                    }
                    Some(_) => {}
                    None => {
                        return land
                            .closed()
                            .map(Stay::Closed)
                            .ok_or_else(|| format!("{}: connection to {land_id} ended without land.closed", self.id));
                    }
                },
                _ = think.tick() => {
                    let (decision, wave, waves, phase) = land.with_state(|state| {
                        (
                            self.decide(state, last_target),
                            state["wave"].as_u64().unwrap_or(0),
                            state["waves"].as_u64().unwrap_or(0),
                            state["phase"].as_str().unwrap_or("?").to_owned(),
                        )
                    });
                    if let Some(record) = self.board.lock().lands.get_mut(land_id)
                        && record.closed.is_none()
                    {
                        record.wave = wave;
                        record.waves = waves;
                        record.phase = phase;
                    }
                    let Some(decision) = decision else {
                        continue;
                    };
                    match land.action(decision.action, decision.payload).await {
                        Ok(_) => {
                            if decision.target.is_some() {
                                last_target = decision.target;
                            }
                        }
                        // Upgrades race with gold changes; the land says no and the bot moves on.
                        Err(ActionError::Failed { .. }) => {}
                        // The close or drop shows up as an event next.
                        Err(_) => {}
                    }
                }
            }
        }
    }

    /// Upgrade when affordable, else head for the enemy nearest to the base (on a
    /// leash), else guard a spot beside the base.
    fn decide(&self, state: &Value, last_target: Option<(f64, f64)>) -> Option<Decision> {
        let me = &state["me"];
        let gold = me["gold"].as_f64().unwrap_or(0.0);
        let affordable = |key: &str| me[key].as_f64().filter(|cost| *cost <= gold);
        match (
            affordable("damageUpgradeCost"),
            affordable("rangeUpgradeCost"),
        ) {
            (Some(damage), Some(range)) if range < damage => {
                return Some(Decision::upgrade("range"));
            }
            (Some(_), _) => return Some(Decision::upgrade("damage")),
            (None, Some(_)) => return Some(Decision::upgrade("range")),
            (None, None) => {}
        }
        let distance_to_base = |x: f64, y: f64| (x - BASE.0).hypot(y - BASE.1);
        let nearest = state["enemies"].as_object().and_then(|enemies| {
            enemies
                .values()
                .filter_map(|enemy| Some((enemy["x"].as_f64()?, enemy["y"].as_f64()?)))
                .min_by(|a, b| distance_to_base(a.0, a.1).total_cmp(&distance_to_base(b.0, b.1)))
        });
        let target = match nearest {
            Some((x, y)) => {
                let distance = distance_to_base(x, y);
                if distance > LEASH {
                    let scale = LEASH / distance;
                    (BASE.0 + (x - BASE.0) * scale, BASE.1 + (y - BASE.1) * scale)
                } else {
                    (x, y)
                }
            }
            None => {
                let angle = self.slot as f64 * std::f64::consts::TAU / 6.0;
                (BASE.0 + 8.0 * angle.cos(), BASE.1 + 8.0 * angle.sin())
            }
        };
        let target = (
            (target.0 * 10.0).round() / 10.0,
            (target.1 * 10.0).round() / 10.0,
        );
        // Re-sending the same destination only costs rate limit.
        if last_target.is_some_and(|last| (last.0 - target.0).hypot(last.1 - target.1) < 2.0) {
            return None;
        }
        Some(Decision {
            action: "move",
            payload: json!({"x": target.0, "y": target.1}),
            target: Some(target),
        })
    }
}
