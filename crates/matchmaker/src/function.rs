//! The pluggable matching step: [`MatchFunction`] and the pool view it gets.

use std::collections::BTreeSet;
use std::ops::Bound;

use crate::hash::FastMap;
use crate::intern::{Interner, NO_SYM};
use crate::pool::{ANY_REGION, Loc, Queue, Stored};
use crate::search::{Outcome, Scratch, Selection, try_anchor};
use crate::{Match, Millis, Ticket, TicketId};

/// A game's matching logic for one queue.
///
/// The engine calls it from [`crate::Engine::find_matches`] after applying
/// time-based region relaxation. The function reads the queue through
/// [`QueuePool`] and forms matches with [`QueuePool::commit`], which checks
/// that every ticket is queued here and used once, then removes the tickets.
/// Must be deterministic for the engine to stay deterministic.
pub trait MatchFunction: Send {
    /// Forms matches from the pool at time `now`.
    fn find_matches(&mut self, pool: &mut QueuePool<'_>, now: Millis);
}

/// The built-in function: the queue's profile (or the default semantics of
/// its key), anchored on the oldest ticket first.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProfileMatcher;

impl MatchFunction for ProfileMatcher {
    fn find_matches(&mut self, pool: &mut QueuePool<'_>, now: Millis) {
        pool.run_profile(now);
    }
}

/// Rejection of a [`QueuePool::commit`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommitError {
    /// The match has no ticket.
    #[error("a match needs at least one ticket")]
    Empty,
    /// The ticket is not queued in this queue.
    #[error("ticket {0:?} is not queued here")]
    Unknown(TicketId),
    /// The ticket appears more than once in the match.
    #[error("ticket {0:?} appears twice")]
    Repeated(TicketId),
}

/// A queue as seen by a [`MatchFunction`].
pub struct QueuePool<'a> {
    pub(crate) queue: &'a mut Queue,
    pub(crate) queue_id: u32,
    pub(crate) interner: &'a mut Interner,
    pub(crate) index: &'a mut FastMap<TicketId, Loc>,
    pub(crate) out: Vec<Match>,
    pub(crate) skip_unchanged: bool,
}

impl QueuePool<'_> {
    /// The queue key.
    pub fn key(&self) -> &str {
        &self.queue.key
    }

    /// Players per team from the profile or the key's default semantics;
    /// `None` for solo queues.
    pub fn team_sizes(&self) -> Option<&[u32]> {
        self.queue.spec.team_caps.as_deref()
    }

    /// Tickets queued.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// No ticket queued.
    pub fn is_empty(&self) -> bool {
        self.queue.len() == 0
    }

    /// Every queued ticket, oldest first (ties by id).
    pub fn tickets(&self) -> impl Iterator<Item = TicketView<'_>> + '_ {
        let queue: &Queue = self.queue;
        let interner: &Interner = self.interner;
        queue
            .fifo
            .values()
            .filter_map(move |&slot| queue.get(slot))
            .map(move |stored| TicketView { stored, interner })
    }

    /// One queued ticket.
    pub fn get(&self, id: TicketId) -> Option<TicketView<'_>> {
        let loc = self.index.get(&id)?;
        if loc.queue != self.queue_id {
            return None;
        }
        let stored = self.queue.get(loc.slot)?;
        Some(TicketView {
            stored,
            interner: self.interner,
        })
    }

    /// Forms a match: the tickets leave the pool and the match is returned by
    /// the engine's `find_matches`. Nothing is removed when it is rejected.
    pub fn commit(&mut self, teams: Vec<Vec<TicketId>>, quality: f64) -> Result<(), CommitError> {
        let mut seen = BTreeSet::new();
        for &id in teams.iter().flatten() {
            if !seen.insert(id) {
                return Err(CommitError::Repeated(id));
            }
            if self.get(id).is_none() {
                return Err(CommitError::Unknown(id));
            }
        }
        if seen.is_empty() {
            return Err(CommitError::Empty);
        }
        for &id in &seen {
            if let Some(loc) = self.index.remove(&id) {
                self.queue.take(self.interner, loc.slot, false);
            }
        }
        self.out.push(Match {
            queue_key: self.queue.key.clone(),
            teams,
            quality,
            region: None,
        });
        Ok(())
    }

    pub(crate) fn run_profile(&mut self, now: Millis) {
        let mut scratch = Scratch::default();
        if self.skip_unchanged && self.queue.indexed {
            // Only anchors whose neighbourhood, window or fill rule changed
            // can succeed; visiting just those, oldest first, gives the same
            // matches as walking the whole queue.
            for (age, slot) in self.queue.take_dirty(now) {
                if self.queue.get(slot).map(Stored::age) != Some(age) {
                    continue;
                }
                match try_anchor(self.queue, slot, now, &mut scratch) {
                    Outcome::Matched(selection) => self.emit(selection),
                    Outcome::Failed(memo) => self.queue.set_memo(slot, memo),
                    Outcome::Skipped => {}
                }
            }
            return;
        }
        let mut cursor = None;
        loop {
            let next = match cursor {
                None => self.queue.fifo.iter().next(),
                Some(c) => self
                    .queue
                    .fifo
                    .range((Bound::Excluded(c), Bound::Unbounded))
                    .next(),
            };
            let Some((&age, &slot)) = next else {
                break;
            };
            cursor = Some(age);
            match try_anchor(self.queue, slot, now, &mut scratch) {
                Outcome::Matched(selection) => self.emit(selection),
                Outcome::Failed(memo) if self.skip_unchanged => self.queue.set_memo(slot, memo),
                Outcome::Failed(_) => {}
                Outcome::Skipped => {}
            }
        }
    }

    fn emit(&mut self, selection: Selection) {
        let region = (selection.region != ANY_REGION)
            .then(|| self.interner.resolve(selection.region).to_owned());
        let mut teams = Vec::with_capacity(selection.teams.len());
        for team in &selection.teams {
            let mut ids = Vec::with_capacity(team.len());
            for c in team {
                ids.push(c.age.id);
                self.index.remove(&c.age.id);
                self.queue.take(self.interner, c.slot, false);
            }
            teams.push(ids);
        }
        self.out.push(Match {
            queue_key: self.queue.key.clone(),
            teams,
            quality: selection.quality,
            region,
        });
    }
}

/// Read access to one queued ticket.
#[derive(Clone, Copy)]
pub struct TicketView<'a> {
    stored: &'a Stored,
    interner: &'a Interner,
}

impl std::fmt::Debug for TicketView<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TicketView")
            .field("id", &self.stored.id)
            .field("size", &self.stored.size)
            .field("enqueued_at", &self.stored.enqueued_at)
            .finish_non_exhaustive()
    }
}

impl TicketView<'_> {
    /// Ticket id.
    pub fn id(&self) -> TicketId {
        self.stored.id
    }

    /// Players in the ticket.
    pub fn size(&self) -> u32 {
        self.stored.size
    }

    /// Original enqueue time.
    pub fn enqueued_at(&self) -> Millis {
        self.stored.enqueued_at
    }

    /// A numeric attribute.
    pub fn attribute(&self, name: &str) -> Option<f64> {
        let sym = self.interner.get(name)?;
        self.stored
            .extras
            .attributes()
            .find(|&(k, _)| k == sym)
            .map(|(_, v)| v)
    }

    /// Latency to a region; a bare preferred region reports 0.
    pub fn latency(&self, region: &str) -> Option<u32> {
        let sym = self.interner.get(region)?;
        self.stored.latency(sym)
    }

    /// A string arg.
    pub fn string_arg(&self, key: &str) -> Option<&str> {
        let sym = self.interner.get(key)?;
        self.stored
            .extras
            .string_args()
            .find(|&(k, _)| k == sym)
            .map(|(_, v)| self.interner.resolve(v))
    }

    /// Whether the ticket carries a tag.
    pub fn has_tag(&self, tag: &str) -> bool {
        self.interner
            .get(tag)
            .is_some_and(|sym| self.stored.extras.tags().any(|t| t == sym))
    }

    /// Preferred region.
    pub fn region(&self) -> Option<&str> {
        (self.stored.region != NO_SYM).then(|| self.interner.resolve(self.stored.region))
    }

    /// The full ticket, strings resolved.
    pub fn to_ticket(&self) -> Ticket {
        self.stored.to_ticket(self.interner)
    }
}
