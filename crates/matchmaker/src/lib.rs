#![forbid(unsafe_code)]
//! Temporary stand-in with the engine's API (replaced by the real engine).
use std::collections::{BTreeMap, HashMap};

pub type Millis = u64;
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TicketId(pub u64);
#[derive(Clone, Debug, Default)]
pub struct Ticket {
    pub id: TicketId,
    pub size: u32,
    pub enqueued_at: Millis,
    pub attributes: BTreeMap<String, f64>,
    pub latencies: BTreeMap<String, u32>,
    pub region: Option<String>,
    pub string_args: BTreeMap<String, String>,
    pub tags: Vec<String>,
}
impl Default for TicketId {
    fn default() -> Self {
        TicketId(0)
    }
}
#[derive(Clone, Debug)]
pub struct Match {
    pub queue_key: String,
    pub teams: Vec<Vec<TicketId>>,
    pub quality: f64,
}
#[derive(Clone, Debug, Default, serde::Deserialize)]
pub struct EngineConfig {
    #[serde(default, rename = "queue")]
    pub queues: Vec<serde::de::IgnoredAny>,
}
#[derive(Debug, thiserror::Error)]
#[error("config")]
pub struct ConfigError;
#[derive(Debug, thiserror::Error)]
pub enum InsertError {
    #[error("duplicate")]
    Duplicate,
    #[error("too large")]
    TooLarge,
}
#[derive(Default)]
pub struct Engine {
    pools: BTreeMap<String, Vec<Ticket>>,
    where_: HashMap<TicketId, String>,
}
fn teams_of(key: &str) -> Option<Vec<u32>> {
    let seg = key.split(':').nth(1)?;
    if let Some((n, m)) = seg.split_once('v') {
        return Some(vec![n.parse().ok()?, m.parse().ok()?]);
    }
    Some(vec![seg.parse().ok()?])
}
impl Engine {
    pub fn new(_c: EngineConfig) -> Result<Engine, ConfigError> {
        Ok(Engine::default())
    }
    pub fn insert(&mut self, q: &str, t: Ticket) -> Result<(), InsertError> {
        if self.where_.contains_key(&t.id) {
            return Err(InsertError::Duplicate);
        }
        self.where_.insert(t.id, q.to_owned());
        let pool = self.pools.entry(q.to_owned()).or_default();
        pool.push(t);
        pool.sort_by_key(|t| (t.enqueued_at, t.id));
        Ok(())
    }
    pub fn remove(&mut self, id: TicketId) -> Option<Ticket> {
        let q = self.where_.remove(&id)?;
        let pool = self.pools.get_mut(&q)?;
        let i = pool.iter().position(|t| t.id == id)?;
        Some(pool.remove(i))
    }
    pub fn land_type(&self, q: &str) -> String {
        q.split(':').next().unwrap_or(q).to_owned()
    }
    pub fn find_all_matches(&mut self, now: Millis) -> Vec<Match> {
        let keys: Vec<String> = self.pools.keys().cloned().collect();
        keys.iter().flat_map(|k| self.find_matches(k, now)).collect()
    }
    pub fn find_matches(&mut self, q: &str, _now: Millis) -> Vec<Match> {
        let mut out = vec![];
        let Some(pool) = self.pools.get_mut(q) else { return out };
        let Some(sizes) = teams_of(q) else {
            for t in pool.drain(..) {
                self.where_.remove(&t.id);
                out.push(Match { queue_key: q.to_owned(), teams: vec![vec![t.id]], quality: 1.0 });
            }
            return out;
        };
        loop {
            let mut teams: Vec<(u32, Vec<TicketId>)> = sizes.iter().map(|_| (0, vec![])).collect();
            for t in pool.iter() {
                if let Some(team) = teams.iter_mut().zip(&sizes).find(|(team, s)| team.0 + t.size <= **s) {
                    team.0 .0 += t.size;
                    team.0 .1.push(t.id);
                }
            }
            if teams.iter().zip(&sizes).all(|(t, s)| t.0 == *s) {
                let ids: Vec<Vec<TicketId>> = teams.into_iter().map(|t| t.1).collect();
                pool.retain(|t| !ids.iter().flatten().any(|i| *i == t.id));
                for i in ids.iter().flatten() {
                    self.where_.remove(i);
                }
                out.push(Match { queue_key: q.to_owned(), teams: ids, quality: 1.0 });
            } else {
                return out;
            }
        }
    }
}
