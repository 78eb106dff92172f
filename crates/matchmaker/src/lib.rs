#![forbid(unsafe_code)]
//! The matchmaking engine of matchplane: pure, synchronous, deterministic.
//!
//! The engine keeps per-queue pools of tickets and turns them into matches.
//! It does no I/O and reads no clock: every time-dependent call takes the
//! caller's `now`. The same calls in the same order give the same matches.
//!
//! A queue key with a [`QueueProfile`] runs that profile (skill windows,
//! regions, string/tag filters, time relaxation, backfill). A key without
//! one runs the default semantics of its mode segment: `NvM`, `N` or solo,
//! as read by the configured [`QueueKeyRule`] (see [`default_teams_for_key`]).
//! A [`MatchFunction`] registered for a key replaces the built-in matching
//! for it.
//!
//! See `docs/matchmaking.md` for the settings, the algorithm and its
//! guarantees.
//!
//! ```
//! use matchplane_matchmaker::{Engine, EngineConfig, Ticket, TicketId};
//!
//! let mut engine = Engine::new(EngineConfig::default()).unwrap();
//! for id in 0..4 {
//!     let ticket = Ticket { id: TicketId(id), size: 1, enqueued_at: id, ..Ticket::default() };
//!     engine.insert("arena:2v2", ticket).unwrap();
//! }
//! let matches = engine.find_matches("arena:2v2", 10);
//! assert_eq!(matches.len(), 1);
//! assert_eq!(matches[0].teams.iter().map(Vec::len).sum::<usize>(), 4);
//! assert!(engine.is_empty());
//! ```

mod backfill;
mod config;
mod function;
mod hash;
mod intern;
mod pool;
mod search;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use config::{
    BackfillProfile, EngineConfig, FilterProfile, MAX_TEAM_SIZE, MAX_TEAMS, QueueKeyRule,
    QueueProfile, RegionProfile, RelaxProfile, SkillProfile, default_teams_for_key,
};
pub use function::{CommitError, MatchFunction, ProfileMatcher, QueuePool, TicketView};

use config::{Spec, land_type_of_key};
use hash::FastMap;
use intern::Interner;
use pool::{Loc, Queue};

/// The caller's clock: milliseconds since the UNIX epoch.
pub type Millis = u64;

/// Ticket identifier, assigned by the caller and unique across queues.
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct TicketId(pub u64);

/// A request to be matched: one player, or a party that is never split.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Ticket {
    /// Caller-assigned unique id.
    pub id: TicketId,
    /// Players in this ticket (a party when > 1).
    pub size: u32,
    /// Original enqueue time; kept when a ticket is re-inserted.
    pub enqueued_at: Millis,
    /// Numeric attributes such as `skill` (for a party: the party value).
    pub attributes: BTreeMap<String, f64>,
    /// Region → latency in ms.
    pub latencies: BTreeMap<String, u32>,
    /// Preferred (only) region when no latencies are given.
    pub region: Option<String>,
    /// String args, compared by profile filters.
    pub string_args: BTreeMap<String, String>,
    /// Tags, compared by profile tag filters.
    pub tags: Vec<String>,
    /// Player ids in this ticket, when the caller knows them. A player can
    /// wait in only one queued ticket at a time, so no match ever holds the
    /// same player twice (see [`InsertError::PlayerQueued`]). Empty: anonymous
    /// players, not checked. `size` stays what counts against team capacity.
    #[serde(default)]
    pub players: Vec<String>,
}

/// A formed match. Its tickets have left the pool.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Match {
    /// Queue the match came from.
    pub queue_key: String,
    /// Ticket ids per team; within a team, oldest first.
    pub teams: Vec<Vec<TicketId>>,
    /// Quality in (0, 1]; 1 is full teams of identical skill.
    pub quality: f64,
    /// Region the match was formed for, when the profile has region rules.
    pub region: Option<String>,
}

/// "Land `land_id` has open slots": what [`Engine::backfill`] fills.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BackfillRequest {
    /// The running land to fill.
    pub land_id: String,
    /// Open slots per team index.
    pub open_slots: Vec<u32>,
    /// Skills of the land's current players, per team.
    pub team_skills: Vec<Vec<f64>>,
    /// The land's string args; profile filters must match them.
    pub string_args: BTreeMap<String, String>,
    /// The land's region; tickets must be allowed there.
    pub region: Option<String>,
}

/// Tickets assigned to an existing land by [`Engine::backfill`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackfillMatch {
    /// The land from the request.
    pub land_id: String,
    /// Each ticket with the team index it joins.
    pub tickets: Vec<(TicketId, usize)>,
    /// Quality in (0, 1]: fraction of open slots filled, reduced by skill spread.
    pub quality: f64,
}

/// Occupancy of one non-empty queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueStats {
    /// Queue key.
    pub key: String,
    /// Tickets queued.
    pub tickets: usize,
    /// Players queued (sum of ticket sizes).
    pub players: u64,
    /// Enqueue time of the oldest ticket.
    pub oldest_enqueued_at: Millis,
}

/// Invalid engine configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The TOML text does not parse into `[[queue]]` tables.
    #[error("config parse error: {0}")]
    Parse(String),
    /// Two profiles share a key.
    #[error("duplicate queue profile key {0:?}")]
    DuplicateKey(String),
    /// A profile setting is out of range.
    #[error("queue profile {key:?}: {reason}")]
    Invalid {
        /// Profile key.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

/// Rejected [`Engine::insert`]. The ticket is not queued.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InsertError {
    /// A ticket with this id is already queued (in any queue).
    #[error("ticket {0:?} is already queued")]
    Duplicate(TicketId),
    /// The party can never fit a team of this queue.
    #[error("ticket of {size} players cannot fit a team of at most {max}")]
    TooLarge {
        /// Ticket size.
        size: u32,
        /// Largest team of the queue.
        max: u32,
    },
    /// A ticket must hold at least one player.
    #[error("ticket size must be at least 1")]
    EmptyTicket,
    /// The profile's skill attribute is missing.
    #[error("ticket lacks the numeric attribute {0:?}")]
    MissingAttribute(String),
    /// The profile's skill attribute is NaN or infinite.
    #[error("attribute {0:?} must be a finite number")]
    InvalidAttribute(String),
    /// The profile has region rules but the ticket names no region.
    #[error("ticket reports no latencies and no region")]
    NoRegion,
    /// More than 65,535 attributes, latencies, string args or tags.
    #[error("ticket has too many attributes, latencies, string args or tags")]
    TooManyEntries,
    /// The ticket names the same player twice.
    #[error("player {0:?} appears twice in the ticket")]
    DuplicatePlayer(String),
    /// A player of the ticket already waits in another queued ticket.
    #[error("player {player:?} is already queued in ticket {ticket:?}")]
    PlayerQueued {
        /// The player named twice.
        player: String,
        /// The queued ticket that holds the player.
        ticket: TicketId,
    },
    /// The queue key has no profile and its [`QueueKeyRule`] refuses it.
    #[error("queue key {key:?}: {reason}")]
    InvalidQueueKey {
        /// The refused key.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

/// Largest magnitude of the skill attribute a profile reads. Skills are
/// multiplied by party sizes and summed per team; bounding them keeps every
/// sum, spread and quality finite.
pub const MAX_SKILL_MAGNITUDE: f64 = 1e12;

/// The matchmaking engine: every queue's pool, profiles and match functions.
pub struct Engine {
    profiles: BTreeMap<String, Arc<Spec>>,
    raw_profiles: BTreeMap<String, QueueProfile>,
    key_rule: QueueKeyRule,
    functions: BTreeMap<String, Box<dyn MatchFunction>>,
    queues: Vec<Option<Queue>>,
    queue_free: Vec<u32>,
    queue_ids: BTreeMap<String, u32>,
    index: FastMap<TicketId, Loc>,
    /// Player ids of queued tickets that named them.
    players_of: FastMap<TicketId, Box<[String]>>,
    /// Which queued ticket each named player waits in. Player ids are client
    /// input, so this map keeps std's flood-resistant hasher.
    queued_players: HashMap<String, TicketId>,
    interner: Interner,
    skip_unchanged: bool,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("profiles", &self.raw_profiles.keys().collect::<Vec<_>>())
            .field("functions", &self.functions.keys().collect::<Vec<_>>())
            .field("queues", &self.queue_ids.keys().collect::<Vec<_>>())
            .field("tickets", &self.index.len())
            .finish()
    }
}

impl Engine {
    /// Builds an engine; fails on an invalid or duplicate profile.
    pub fn new(config: EngineConfig) -> Result<Engine, ConfigError> {
        let mut profiles = BTreeMap::new();
        let mut raw_profiles = BTreeMap::new();
        for profile in config.queues {
            let spec = Spec::from_profile(&profile)?;
            if profiles
                .insert(profile.key.clone(), Arc::new(spec))
                .is_some()
            {
                return Err(ConfigError::DuplicateKey(profile.key));
            }
            raw_profiles.insert(profile.key.clone(), profile);
        }
        Ok(Engine {
            profiles,
            raw_profiles,
            key_rule: config.key_rule,
            functions: BTreeMap::new(),
            queues: Vec::new(),
            queue_free: Vec::new(),
            queue_ids: BTreeMap::new(),
            index: FastMap::default(),
            players_of: FastMap::default(),
            queued_players: HashMap::new(),
            interner: Interner::default(),
            skip_unchanged: true,
        })
    }

    /// Turns off skipping of anchors whose last failed search cannot have
    /// changed. Only for tests that check the skipping changes no result.
    #[doc(hidden)]
    pub fn set_skip_unchanged_anchors(&mut self, on: bool) {
        self.skip_unchanged = on;
    }

    /// The profile for a key, if one is configured.
    pub fn profile(&self, queue_key: &str) -> Option<&QueueProfile> {
        self.raw_profiles.get(queue_key)
    }

    /// Replaces the built-in matching of one queue key with a game's own.
    pub fn set_match_function(&mut self, queue_key: &str, function: Box<dyn MatchFunction>) {
        self.functions.insert(queue_key.to_owned(), function);
    }

    /// How keys without a profile are read.
    pub fn key_rule(&self) -> QueueKeyRule {
        self.key_rule
    }

    fn spec_for(&self, queue_key: &str) -> Result<Arc<Spec>, InsertError> {
        if let Some(queue) = self.queue_ids.get(queue_key).and_then(|&q| self.queue(q)) {
            return Ok(Arc::clone(&queue.spec));
        }
        if let Some(spec) = self.profiles.get(queue_key) {
            return Ok(Arc::clone(spec));
        }
        let teams = self.key_rule.teams_for_key(queue_key)?;
        Ok(Arc::new(Spec::default_for_teams(teams)))
    }

    fn queue(&self, id: u32) -> Option<&Queue> {
        self.queues.get(id as usize).and_then(Option::as_ref)
    }

    /// Whether `insert` would accept this ticket for this queue, without
    /// queueing it (duplicate ids aside). Lets an API refuse a ticket that can
    /// never be matched before it is stored.
    pub fn check(&self, queue_key: &str, ticket: &Ticket) -> Result<(), InsertError> {
        if ticket.size == 0 {
            return Err(InsertError::EmptyTicket);
        }
        if ticket.attributes.len() > pool::MAX_ENTRIES
            || ticket.latencies.len() > pool::MAX_ENTRIES
            || ticket.string_args.len() > pool::MAX_ENTRIES
            || ticket.tags.len() > pool::MAX_ENTRIES
            || ticket.players.len() > pool::MAX_ENTRIES
        {
            return Err(InsertError::TooManyEntries);
        }
        let mut seen = std::collections::BTreeSet::new();
        if let Some(twice) = ticket.players.iter().find(|p| !seen.insert(p.as_str())) {
            return Err(InsertError::DuplicatePlayer(twice.clone()));
        }
        let spec = self.spec_for(queue_key)?;
        if let Some(max) = spec.max_party()
            && ticket.size > max
        {
            return Err(InsertError::TooLarge {
                size: ticket.size,
                max,
            });
        }
        if let Some(skill) = &spec.skill {
            match ticket.attributes.get(&skill.attribute) {
                None => return Err(InsertError::MissingAttribute(skill.attribute.clone())),
                Some(v) if !v.is_finite() || v.abs() > MAX_SKILL_MAGNITUDE => {
                    return Err(InsertError::InvalidAttribute(skill.attribute.clone()));
                }
                Some(_) => {}
            }
        }
        if spec.region.is_some() && ticket.latencies.is_empty() && ticket.region.is_none() {
            return Err(InsertError::NoRegion);
        }
        Ok(())
    }

    /// Queues a ticket. Re-inserting an unplaced match's tickets with their
    /// original `enqueued_at` puts them back in age order.
    pub fn insert(&mut self, queue_key: &str, ticket: Ticket) -> Result<(), InsertError> {
        if self.index.contains_key(&ticket.id) {
            return Err(InsertError::Duplicate(ticket.id));
        }
        self.check(queue_key, &ticket)?;
        // Refusing here, rather than skipping conflicts while searching, keeps
        // the search untouched and holds for match functions too: a pool
        // without shared players cannot yield a match with one player twice.
        for player in &ticket.players {
            if let Some(&holder) = self.queued_players.get(player) {
                return Err(InsertError::PlayerQueued {
                    player: player.clone(),
                    ticket: holder,
                });
            }
        }
        let spec = self.spec_for(queue_key)?;
        let queue_id = match self.queue_ids.get(queue_key) {
            Some(&id) => id,
            None => {
                let queue = Queue::new(queue_key.to_owned(), spec);
                let id = match self.queue_free.pop() {
                    Some(id) => {
                        self.queues[id as usize] = Some(queue);
                        id
                    }
                    None => {
                        self.queues.push(Some(queue));
                        u32::try_from(self.queues.len() - 1).unwrap_or(u32::MAX)
                    }
                };
                self.queue_ids.insert(queue_key.to_owned(), id);
                id
            }
        };
        let Some(queue) = self
            .queues
            .get_mut(queue_id as usize)
            .and_then(Option::as_mut)
        else {
            return Ok(());
        };
        let id = ticket.id;
        if !ticket.players.is_empty() {
            for player in &ticket.players {
                self.queued_players.insert(player.clone(), id);
            }
            self.players_of
                .insert(id, ticket.players.clone().into_boxed_slice());
        }
        let slot = queue.insert(&mut self.interner, ticket);
        self.index.insert(
            id,
            Loc {
                queue: queue_id,
                slot,
            },
        );
        Ok(())
    }

    /// Removes a queued ticket (cancel, expiry) and hands it back.
    pub fn remove(&mut self, id: TicketId) -> Option<Ticket> {
        let loc = self.index.remove(&id)?;
        let players = self.release_players(id);
        let queue = self.queues.get_mut(loc.queue as usize)?.as_mut()?;
        let mut ticket = queue.take(&mut self.interner, loc.slot, true).flatten();
        if let Some(ticket) = &mut ticket {
            ticket.players = players;
        }
        self.drop_if_empty(loc.queue);
        ticket
    }

    /// Frees the players of a ticket that left the pool; returns them.
    fn release_players(&mut self, id: TicketId) -> Vec<String> {
        let Some(players) = self.players_of.remove(&id) else {
            return Vec::new();
        };
        for player in players.iter() {
            if self.queued_players.get(player) == Some(&id) {
                self.queued_players.remove(player);
            }
        }
        players.into_vec()
    }

    /// Whether a ticket is queued.
    pub fn contains(&self, id: TicketId) -> bool {
        self.index.contains_key(&id)
    }

    /// A queued ticket, strings resolved.
    pub fn get(&self, id: TicketId) -> Option<Ticket> {
        let loc = self.index.get(&id)?;
        let stored = self.queue(loc.queue)?.get(loc.slot)?;
        let mut ticket = stored.to_ticket(&self.interner);
        if let Some(players) = self.players_of.get(&id) {
            ticket.players = players.to_vec();
        }
        Some(ticket)
    }

    /// The queue a ticket waits in.
    pub fn queue_of(&self, id: TicketId) -> Option<&str> {
        let loc = self.index.get(&id)?;
        Some(self.queue(loc.queue)?.key.as_str())
    }

    fn drop_if_empty(&mut self, queue_id: u32) {
        // Empty queues are dropped so that arbitrary client-chosen keys do
        // not accumulate.
        let Some(slot) = self.queues.get_mut(queue_id as usize) else {
            return;
        };
        if slot.as_ref().is_some_and(|q| q.len() == 0)
            && let Some(q) = slot.take()
        {
            self.queue_ids.remove(&q.key);
            self.queue_free.push(queue_id);
        }
    }

    /// Forms every match the queue allows at `now`; matched tickets leave the pool.
    pub fn find_matches(&mut self, queue_key: &str, now: Millis) -> Vec<Match> {
        let Some(&queue_id) = self.queue_ids.get(queue_key) else {
            return Vec::new();
        };
        let Some(queue) = self
            .queues
            .get_mut(queue_id as usize)
            .and_then(Option::as_mut)
        else {
            return Vec::new();
        };
        queue.promote(now);
        let mut pool = QueuePool {
            queue,
            queue_id,
            interner: &mut self.interner,
            index: &mut self.index,
            out: Vec::new(),
            skip_unchanged: self.skip_unchanged,
        };
        match self.functions.get_mut(queue_key) {
            Some(function) => function.find_matches(&mut pool, now),
            None => ProfileMatcher.find_matches(&mut pool, now),
        }
        let out = pool.out;
        queue.finish_run(now);
        self.drop_if_empty(queue_id);
        if !self.players_of.is_empty() {
            for id in out.iter().flat_map(|m| m.teams.iter().flatten()) {
                self.release_players(*id);
            }
        }
        out
    }

    /// [`Engine::find_matches`] over every non-empty queue, in key order: the periodic tick.
    pub fn find_all_matches(&mut self, now: Millis) -> Vec<Match> {
        let keys: Vec<String> = self.queue_ids.keys().cloned().collect();
        let mut out = Vec::new();
        for key in keys {
            out.extend(self.find_matches(&key, now));
        }
        out
    }

    /// Fills open slots of a running land from the queue, oldest tickets
    /// first. `None` when backfill is disabled for the queue or nothing fits.
    pub fn backfill(
        &mut self,
        queue_key: &str,
        request: &BackfillRequest,
        now: Millis,
    ) -> Option<BackfillMatch> {
        // The request comes from outside; bounding it like a profile keeps
        // every slot sum and skill sum of the plan from overflowing.
        let sane = request.open_slots.len() <= MAX_TEAMS as usize
            && request.open_slots.iter().all(|&n| n <= MAX_TEAM_SIZE)
            && request.team_skills.len() <= MAX_TEAMS as usize
            && request.team_skills.iter().all(|team| {
                team.len() <= MAX_TEAM_SIZE as usize
                    && team
                        .iter()
                        .all(|s| s.is_finite() && s.abs() <= MAX_SKILL_MAGNITUDE)
            });
        if !sane {
            return None;
        }
        let &queue_id = self.queue_ids.get(queue_key)?;
        let queue = self.queues.get_mut(queue_id as usize)?.as_mut()?;
        if !queue.spec.backfill {
            return None;
        }
        queue.promote(now);
        let plan = backfill::plan(queue, &self.interner, request, now)?;
        let mut tickets = Vec::with_capacity(plan.assignments.len());
        for (slot, team) in plan.assignments {
            if let Some(id) = queue.get(slot).map(|s| s.id) {
                self.index.remove(&id);
                queue.take(&mut self.interner, slot, false);
                tickets.push((id, team));
            }
        }
        self.drop_if_empty(queue_id);
        for (id, _) in &tickets {
            self.release_players(*id);
        }
        Some(BackfillMatch {
            land_id: request.land_id.clone(),
            tickets,
            quality: plan.quality,
        })
    }

    /// Land type to provision for a queue: the profile's `land_type`, else
    /// the key's part before the first `:` (or the whole key).
    pub fn land_type(&self, queue_key: &str) -> String {
        self.raw_profiles
            .get(queue_key)
            .and_then(|p| p.land_type.clone())
            .unwrap_or_else(|| land_type_of_key(queue_key).to_owned())
    }

    /// Occupancy of every non-empty queue, in key order.
    pub fn queue_stats(&self) -> Vec<QueueStats> {
        self.queue_ids
            .iter()
            .filter_map(|(key, &id)| {
                let q = self.queue(id)?;
                Some(QueueStats {
                    key: key.clone(),
                    tickets: q.len(),
                    players: q.players,
                    oldest_enqueued_at: q.oldest()?,
                })
            })
            .collect()
    }

    /// Tickets queued across all queues.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// No ticket queued.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>() {}

    #[test]
    fn engine_is_send() {
        assert_send::<Engine>();
    }

    #[test]
    fn strings_and_queues_are_released() {
        let config = EngineConfig::from_toml_str(
            "[[queue]]\nkey = \"q\"\nteam_size = 1\n[queue.filters]\nstring_args = [\"map\"]\n\
             [queue.region]\nmax_latency_ms = 50\n",
        )
        .unwrap();
        let mut engine = Engine::new(config).unwrap();
        for i in 0..4u64 {
            let mut t = Ticket {
                id: TicketId(i),
                size: 1,
                enqueued_at: i,
                ..Ticket::default()
            };
            t.latencies.insert(format!("r{}", i % 2), 10);
            t.string_args.insert("map".into(), format!("m{}", i % 2));
            t.tags.push(format!("tag{i}"));
            t.attributes.insert("x".into(), 1.0);
            engine.insert("q", t).unwrap();
        }
        engine
            .insert(
                "other:1v1",
                Ticket {
                    id: TicketId(9),
                    size: 1,
                    ..Ticket::default()
                },
            )
            .unwrap();
        assert!(engine.interner.live() > 0);
        let matches = engine.find_matches("q", 10);
        assert_eq!(matches.len(), 2);
        assert!(engine.remove(TicketId(9)).is_some());
        assert!(engine.is_empty());
        assert_eq!(
            engine.interner.live(),
            0,
            "no interned string outlives its tickets"
        );
        assert!(engine.queue_ids.is_empty(), "empty queues are dropped");
    }

    fn player_ticket(id: u64, players: &[&str]) -> Ticket {
        Ticket {
            id: TicketId(id),
            size: u32::try_from(players.len()).unwrap(),
            enqueued_at: id,
            players: players.iter().map(|p| (*p).to_owned()).collect(),
            ..Ticket::default()
        }
    }

    #[test]
    fn a_player_is_queued_once_and_freed_when_its_ticket_leaves() {
        let mut engine = Engine::new(EngineConfig::default()).unwrap();
        engine.insert("a:1v1", player_ticket(1, &["ann"])).unwrap();
        assert_eq!(
            engine.insert("b:2", player_ticket(2, &["bob", "ann"])),
            Err(InsertError::PlayerQueued {
                player: "ann".into(),
                ticket: TicketId(1)
            })
        );
        assert_eq!(
            engine.insert("b:2", player_ticket(3, &["cid", "cid"])),
            Err(InsertError::DuplicatePlayer("cid".into()))
        );
        // A refused ticket claims nobody.
        engine.insert("a:1v1", player_ticket(4, &["bob"])).unwrap();
        assert_eq!(engine.get(TicketId(1)).unwrap().players, vec!["ann"]);
        let matches = engine.find_matches("a:1v1", 10);
        assert_eq!(matches.len(), 1);
        // Matched: both may queue again (e.g. the caller puts the match back).
        engine.insert("a:1v1", player_ticket(1, &["ann"])).unwrap();
        let removed = engine.remove(TicketId(1)).unwrap();
        assert_eq!(removed.players, vec!["ann"]);
        engine.insert("a:1v1", player_ticket(5, &["ann"])).unwrap();
        engine.insert("a:1v1", player_ticket(6, &["bob"])).unwrap();
        assert!(engine.queued_players.len() == 2 && engine.players_of.len() == 2);
        engine.find_matches("a:1v1", 10);
        assert!(engine.queued_players.is_empty() && engine.players_of.is_empty());
    }

    #[test]
    fn absurd_numbers_are_refused_not_overflowed() {
        let config = EngineConfig::from_toml_str(
            "[[queue]]\nkey = \"r\"\nteam_size = 2\n[queue.skill]\nwindow = 100\n\
             [queue.backfill]\nenabled = true\n",
        )
        .unwrap();
        let mut engine = Engine::new(config).unwrap();
        let mut huge = player_ticket(1, &["a"]);
        huge.attributes.insert("skill".into(), 1e300);
        assert_eq!(
            engine.insert("r", huge),
            Err(InsertError::InvalidAttribute("skill".into()))
        );
        let mut fine = player_ticket(2, &["b"]);
        fine.attributes.insert("skill".into(), -MAX_SKILL_MAGNITUDE);
        engine.insert("r", fine).unwrap();
        for request in [
            BackfillRequest {
                open_slots: vec![u32::MAX, u32::MAX],
                ..BackfillRequest::default()
            },
            BackfillRequest {
                open_slots: vec![1; 100],
                ..BackfillRequest::default()
            },
            BackfillRequest {
                open_slots: vec![1, 1],
                team_skills: vec![vec![f64::NAN], vec![f64::INFINITY]],
                ..BackfillRequest::default()
            },
        ] {
            assert_eq!(engine.backfill("r", &request, 10), None);
        }
        assert_eq!(engine.len(), 1);
    }
}
