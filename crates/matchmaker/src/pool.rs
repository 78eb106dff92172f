//! Per-queue ticket storage and the indexes the search runs on.
//!
//! Layout: a slab of compact tickets; a FIFO index over the whole queue
//! (anchor order, i.e. fairness); and per string-filter partition, per
//! region, per skill bucket, an age-ordered map. A match is assembled from
//! one (partition, region) pool by merging the few skill buckets in range
//! oldest-first, so forming a match touches a small neighbourhood of the
//! anchor instead of the whole pool.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::Arc;

use crate::config::Spec;
use crate::hash::FastMap;
use crate::intern::{Interner, NO_SYM, Sym};
use crate::{Millis, Ticket, TicketId};

pub(crate) type Slot = u32;

/// Total order of tickets by age. The id breaks ties so the order does not
/// depend on insertion order, which keeps re-inserted tickets oldest-first.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct AgeKey {
    pub(crate) enqueued_at: Millis,
    pub(crate) id: TicketId,
}

/// Partition of every ticket in a queue that is not `indexed`.
pub(crate) const NO_PARTITION: u32 = u32::MAX;

/// Pool key used for every ticket when the queue has no region rules.
pub(crate) const ANY_REGION: Sym = NO_SYM;

/// Pool key of a partition's region-relaxed tickets. A relaxed ticket may
/// play in every region it reported; one entry here, checked against the
/// searched region, costs far less than an entry in each region's pool.
pub(crate) const RELAXED_POOL: Sym = NO_SYM - 1;

/// A queued ticket with its strings interned.
#[derive(Debug)]
pub(crate) struct Stored {
    pub(crate) id: TicketId,
    pub(crate) enqueued_at: Millis,
    /// The profile's skill attribute, resolved at insert (0 without skill rules).
    pub(crate) skill: f64,
    pub(crate) size: u32,
    pub(crate) partition: u32,
    pub(crate) region: Sym,
    /// Region relaxation has been applied: the ticket sits in every region it reported.
    pub(crate) relaxed: bool,
    // The memo's fields are stored flat so the two flags share padding.
    memo_stamp: u64,
    memo_window: f64,
    memo_underfill: bool,
    pub(crate) extras: Extras,
}

/// A ticket's attributes, latencies, string args and tags in a single
/// allocation (none when all are empty): one box instead of four saves 48
/// bytes inline plus three allocator headers per ticket.
///
/// Layout in `u32` words: `n_attr | n_lat << 16`, `n_args | n_tags << 16`,
/// then attributes as (name, f64 low word, f64 high word), latencies as
/// (region, ms), string args as (key, value), tags.
#[derive(Debug, Default)]
pub(crate) struct Extras(Box<[u32]>);

/// Most entries of one kind a ticket may carry (see [`Extras`]).
pub(crate) const MAX_ENTRIES: usize = u16::MAX as usize;

impl Extras {
    fn build(
        attrs: &[(Sym, f64)],
        lats: &[(Sym, u32)],
        args: &[(Sym, Sym)],
        tags: &[Sym],
    ) -> Extras {
        if attrs.is_empty() && lats.is_empty() && args.is_empty() && tags.is_empty() {
            return Extras::default();
        }
        let n = |len: usize| u32::try_from(len.min(MAX_ENTRIES)).unwrap_or(0);
        let mut w =
            Vec::with_capacity(2 + 3 * attrs.len() + 2 * lats.len() + 2 * args.len() + tags.len());
        w.push(n(attrs.len()) | n(lats.len()) << 16);
        w.push(n(args.len()) | n(tags.len()) << 16);
        for &(k, v) in attrs.iter().take(MAX_ENTRIES) {
            let bits = v.to_bits();
            w.extend([k, bits as u32, (bits >> 32) as u32]);
        }
        for &(k, v) in lats.iter().take(MAX_ENTRIES) {
            w.extend([k, v]);
        }
        for &(k, v) in args.iter().take(MAX_ENTRIES) {
            w.extend([k, v]);
        }
        w.extend(tags.iter().take(MAX_ENTRIES));
        Extras(w.into_boxed_slice())
    }

    fn counts(&self) -> [usize; 4] {
        match *self.0 {
            [a, b, ..] => [
                (a & 0xffff) as usize,
                (a >> 16) as usize,
                (b & 0xffff) as usize,
                (b >> 16) as usize,
            ],
            _ => [0; 4],
        }
    }

    fn section(&self, which: usize) -> &[u32] {
        let c = self.counts();
        let widths = [3, 2, 2, 1];
        let start = 2 + (0..which).map(|i| c[i] * widths[i]).sum::<usize>();
        self.0
            .get(start..start + c[which] * widths[which])
            .unwrap_or(&[])
    }

    pub(crate) fn attributes(&self) -> impl Iterator<Item = (Sym, f64)> + '_ {
        self.section(0).chunks_exact(3).map(|w| {
            (
                w[0],
                f64::from_bits(u64::from(w[1]) | u64::from(w[2]) << 32),
            )
        })
    }

    pub(crate) fn latencies(&self) -> impl Iterator<Item = (Sym, u32)> + '_ {
        self.section(1).chunks_exact(2).map(|w| (w[0], w[1]))
    }

    pub(crate) fn has_latencies(&self) -> bool {
        self.counts()[1] > 0
    }

    pub(crate) fn string_args(&self) -> impl Iterator<Item = (Sym, Sym)> + '_ {
        self.section(2).chunks_exact(2).map(|w| (w[0], w[1]))
    }

    pub(crate) fn tags(&self) -> impl Iterator<Item = Sym> + '_ {
        self.section(3).iter().copied()
    }
}

impl Stored {
    pub(crate) fn memo(&self) -> Memo {
        Memo {
            stamp: self.memo_stamp,
            window: self.memo_window,
            underfill: self.memo_underfill,
        }
    }

    pub(crate) fn age(&self) -> AgeKey {
        AgeKey {
            enqueued_at: self.enqueued_at,
            id: self.id,
        }
    }

    /// Regions the ticket reported, with latency; a bare preferred region
    /// counts as latency 0.
    pub(crate) fn reported(&self) -> impl Iterator<Item = (Sym, u32)> + '_ {
        let bare =
            (!self.extras.has_latencies() && self.region != NO_SYM).then_some((self.region, 0));
        self.extras.latencies().chain(bare)
    }

    /// Regions the ticket may currently play in, with its latency there
    /// (`ANY_REGION` when the queue has no region rules).
    pub(crate) fn play_regions(&self, spec: &Spec) -> Vec<(Sym, u32)> {
        let limit = spec.region.as_ref().map(|r| r.max_latency_ms);
        let any = limit.is_none().then_some((ANY_REGION, 0));
        let regional = self
            .reported()
            .filter(move |&(_, ms)| limit.is_some_and(|max| self.relaxed || ms <= max));
        any.into_iter().chain(regional).collect()
    }

    /// The pools of the index that hold the ticket: the regions it may play
    /// in, except that a relaxed ticket sits in [`RELAXED_POOL`] only.
    pub(crate) fn index_pools<'a>(&'a self, spec: &'a Spec) -> impl Iterator<Item = Sym> + 'a {
        let limit = spec.region.as_ref().map(|r| r.max_latency_ms);
        let any = limit.is_none().then_some(ANY_REGION);
        let relaxed = (limit.is_some() && self.relaxed).then_some(RELAXED_POOL);
        let strict = self
            .reported()
            .filter(move |&(_, ms)| !self.relaxed && limit.is_some_and(|max| ms <= max))
            .map(|(r, _)| r);
        any.into_iter().chain(relaxed).chain(strict)
    }

    pub(crate) fn latency(&self, region: Sym) -> Option<u32> {
        if region == ANY_REGION {
            return Some(0);
        }
        self.reported()
            .find(|&(r, _)| r == region)
            .map(|(_, ms)| ms)
    }

    pub(crate) fn to_ticket(&self, interner: &Interner) -> Ticket {
        let s = |sym: Sym| interner.resolve(sym).to_owned();
        Ticket {
            id: self.id,
            size: self.size,
            enqueued_at: self.enqueued_at,
            attributes: self.extras.attributes().map(|(k, v)| (s(k), v)).collect(),
            latencies: self.extras.latencies().map(|(k, v)| (s(k), v)).collect(),
            region: (self.region != NO_SYM).then(|| s(self.region)),
            string_args: self
                .extras
                .string_args()
                .map(|(k, v)| (s(k), s(v)))
                .collect(),
            tags: self.extras.tags().map(s).collect(),
            // The engine keeps player ids beside the pool (see `Engine::get`).
            players: Vec::new(),
        }
    }

    fn release(self, interner: &mut Interner) {
        for (k, _) in self.extras.attributes() {
            interner.release(k);
        }
        for (k, _) in self.extras.latencies() {
            interner.release(k);
        }
        for (k, v) in self.extras.string_args() {
            interner.release(k);
            interner.release(v);
        }
        for t in self.extras.tags() {
            interner.release(t);
        }
        if self.region != NO_SYM {
            interner.release(self.region);
        }
    }
}

/// Tickets in age order.
pub(crate) type AgeMap = BTreeMap<AgeKey, Slot>;

/// Tickets of one skill bucket, oldest first.
#[derive(Debug, Default)]
pub(crate) struct Bucket {
    pub(crate) tickets: AgeMap,
    /// Queue stamp of the last ticket added; see [`Memo`].
    pub(crate) changed: u64,
}

/// Why an anchor failed last time. Its search cannot succeed again until
/// a ticket is added to a bucket it searched (a later stamp), its window
/// changes or its teams may be under-filled; removals only shrink the
/// candidate set. Skipping such anchors keeps a tick over a standing pool
/// cheap when the caller runs `find_matches` on every arrival.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Memo {
    /// Queue stamp at the failure; 0 when the ticket never failed.
    pub(crate) stamp: u64,
    pub(crate) window: f64,
    pub(crate) underfill: bool,
}

#[derive(Debug, Default)]
pub(crate) struct RegionPool {
    pub(crate) buckets: BTreeMap<i64, Bucket>,
    pub(crate) len: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct PartKey {
    /// Value of each filtered string arg, in the spec's (sorted) order.
    pub(crate) args: Box<[Sym]>,
    /// Presence bit per filtered tag.
    pub(crate) tags: u64,
}

#[derive(Debug)]
pub(crate) struct Partition {
    pub(crate) key: PartKey,
    pub(crate) len: usize,
    pub(crate) regions: BTreeMap<Sym, RegionPool>,
}

/// Where a ticket lives; the engine's id index points here.
#[derive(Copy, Clone, Debug)]
pub(crate) struct Loc {
    pub(crate) queue: u32,
    pub(crate) slot: Slot,
}

#[derive(Debug)]
pub(crate) struct Queue {
    pub(crate) key: String,
    pub(crate) spec: Arc<Spec>,
    /// Without skill, region or filter rules every ticket is a candidate
    /// for every other, in age order: `fifo` is then the only index needed,
    /// and partitions and pools are not kept.
    pub(crate) indexed: bool,
    slots: Vec<Option<Stored>>,
    free: Vec<Slot>,
    pub(crate) fifo: AgeMap,
    /// Counts additions of candidates (inserts, region relaxations).
    pub(crate) stamp: u64,
    /// Stamp of the last insert, for queues that are not `indexed`.
    pub(crate) fifo_changed: u64,
    /// Buckets that gained a candidate since the last run: (partition,
    /// region, skill bucket). Only anchors near them need a new search.
    touched: BTreeSet<(u32, Sym, i64)>,
    /// `now` of the last `find_matches` run, for time-triggered re-searches.
    last_run: Option<Millis>,
    pub(crate) players: u64,
    pub(crate) partitions: Vec<Option<Partition>>,
    part_free: Vec<u32>,
    part_lookup: FastMap<PartKey, u32>,
    /// Region relaxation has been applied to every ticket up to this age.
    /// Waits grow with age, so the tickets due for relaxation are always a
    /// prefix of `fifo`; a cursor replaces a per-ticket pending index.
    relaxed_upto: Option<AgeKey>,
}

impl Queue {
    pub(crate) fn new(key: String, spec: Arc<Spec>) -> Queue {
        let indexed = spec.skill.is_some()
            || spec.region.is_some()
            || !spec.filter_args.is_empty()
            || !spec.filter_tags.is_empty();
        Queue {
            key,
            spec,
            indexed,
            slots: Vec::new(),
            free: Vec::new(),
            fifo: BTreeMap::new(),
            stamp: 0,
            fifo_changed: 0,
            touched: BTreeSet::new(),
            last_run: None,
            players: 0,
            partitions: Vec::new(),
            part_free: Vec::new(),
            part_lookup: FastMap::default(),
            relaxed_upto: None,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.fifo.len()
    }

    pub(crate) fn get(&self, slot: Slot) -> Option<&Stored> {
        self.slots.get(slot as usize).and_then(Option::as_ref)
    }

    pub(crate) fn set_memo(&mut self, slot: Slot, memo: Memo) {
        if let Some(s) = self.slots.get_mut(slot as usize).and_then(Option::as_mut) {
            s.memo_stamp = memo.stamp;
            s.memo_window = memo.window;
            s.memo_underfill = memo.underfill;
        }
    }

    pub(crate) fn partition(&self, idx: u32) -> Option<&Partition> {
        self.partitions.get(idx as usize).and_then(Option::as_ref)
    }

    pub(crate) fn oldest(&self) -> Option<Millis> {
        self.fifo.keys().next().map(|k| k.enqueued_at)
    }

    /// Converts and stores a validated ticket; returns its slot.
    pub(crate) fn insert(&mut self, interner: &mut Interner, ticket: Ticket) -> Slot {
        let spec = Arc::clone(&self.spec);
        let skill = spec
            .skill
            .as_ref()
            .and_then(|s| ticket.attributes.get(&s.attribute).copied())
            .unwrap_or(0.0);
        let mut tags: Vec<Sym> = ticket.tags.iter().map(|t| interner.acquire(t)).collect();
        tags.sort_unstable();
        let string_args: Vec<(Sym, Sym)> = ticket
            .string_args
            .iter()
            .map(|(k, v)| (interner.acquire(k), interner.acquire(v)))
            .collect();
        let attributes: Vec<(Sym, f64)> = ticket
            .attributes
            .iter()
            .map(|(k, &v)| (interner.acquire(k), v))
            .collect();
        let latencies: Vec<(Sym, u32)> = ticket
            .latencies
            .iter()
            .map(|(k, &v)| (interner.acquire(k), v))
            .collect();
        let part_key = PartKey {
            args: spec
                .filter_args
                .iter()
                .map(|arg| {
                    ticket
                        .string_args
                        .get(arg)
                        .and_then(|v| interner.get(v))
                        .unwrap_or(NO_SYM)
                })
                .collect(),
            tags: tag_bits(&spec.filter_tags, ticket.tags.iter().map(String::as_str)),
        };
        let partition = if self.indexed {
            self.partition_for(interner, part_key)
        } else {
            NO_PARTITION
        };
        let stored = Stored {
            id: ticket.id,
            enqueued_at: ticket.enqueued_at,
            skill,
            size: ticket.size,
            partition,
            region: ticket
                .region
                .as_deref()
                .map_or(NO_SYM, |r| interner.acquire(r)),
            // A re-inserted ticket older than the cursor was due long ago.
            relaxed: self.relaxed_upto.is_some_and(|c| {
                AgeKey {
                    enqueued_at: ticket.enqueued_at,
                    id: ticket.id,
                } <= c
            }),
            memo_stamp: 0,
            memo_window: 0.0,
            memo_underfill: false,
            extras: Extras::build(&attributes, &latencies, &string_args, &tags),
        };
        let age = stored.age();
        let bucket = spec.skill.as_ref().map_or(0, |s| s.bucket(skill));
        let slot = match self.free.last() {
            Some(&slot) => slot,
            None => Slot::try_from(self.slots.len()).unwrap_or(Slot::MAX),
        };
        self.fifo.insert(age, slot);
        self.stamp += 1;
        self.fifo_changed = self.stamp;
        let stamp = self.stamp;
        self.players += u64::from(stored.size);
        if let Some(part) = self
            .partitions
            .get_mut(partition as usize)
            .and_then(Option::as_mut)
        {
            part.len += 1;
            for region in stored.index_pools(&spec) {
                let pool = part.regions.entry(region).or_default();
                let b = pool.buckets.entry(bucket).or_default();
                b.tickets.insert(age, slot);
                b.changed = stamp;
                pool.len += 1;
                self.touched.insert((partition, region, bucket));
            }
        }
        match self.free.pop() {
            Some(slot) => self.slots[slot as usize] = Some(stored),
            None => self.slots.push(Some(stored)),
        }
        slot
    }

    fn partition_for(&mut self, interner: &mut Interner, key: PartKey) -> u32 {
        if let Some(&idx) = self.part_lookup.get(&key) {
            return idx;
        }
        // The partition keeps its own references so its key symbols stay
        // valid even if every ticket's copy is released first.
        for &sym in key.args.iter() {
            if sym != NO_SYM {
                interner.retain(sym);
            }
        }
        let part = Partition {
            key: key.clone(),
            len: 0,
            regions: BTreeMap::new(),
        };
        let idx = match self.part_free.pop() {
            Some(idx) => {
                self.partitions[idx as usize] = Some(part);
                idx
            }
            None => {
                self.partitions.push(Some(part));
                u32::try_from(self.partitions.len() - 1).unwrap_or(u32::MAX)
            }
        };
        self.part_lookup.insert(key, idx);
        idx
    }

    /// Removes a ticket from every index. Returns it as a [`Ticket`] when
    /// `want_ticket`, resolving strings before their references are dropped.
    pub(crate) fn take(
        &mut self,
        interner: &mut Interner,
        slot: Slot,
        want_ticket: bool,
    ) -> Option<Option<Ticket>> {
        let stored = self.slots.get_mut(slot as usize)?.take()?;
        self.free.push(slot);
        let age = stored.age();
        self.fifo.remove(&age);
        self.players -= u64::from(stored.size);
        let bucket = self
            .spec
            .skill
            .as_ref()
            .map_or(0, |s| s.bucket(stored.skill));
        let mut drop_partition = false;
        if let Some(part) = self
            .partitions
            .get_mut(stored.partition as usize)
            .and_then(Option::as_mut)
        {
            for region in stored.index_pools(&self.spec) {
                remove_from_pool(&mut part.regions, region, bucket, &age);
            }
            part.len -= 1;
            drop_partition = part.len == 0;
        }
        if drop_partition && let Some(part) = self.partitions[stored.partition as usize].take() {
            self.part_lookup.remove(&part.key);
            for &sym in part.key.args.iter() {
                if sym != NO_SYM {
                    interner.release(sym);
                }
            }
            self.part_free.push(stored.partition);
        }
        let ticket = want_ticket.then(|| stored.to_ticket(interner));
        stored.release(interner);
        Some(ticket)
    }

    /// Anchors whose search may succeed now although it failed before:
    /// tickets near a bucket that gained a candidate, tickets whose skill
    /// window stepped up and tickets that reached `fill_after` since the last
    /// run. Everything else would fail again (see [`Memo`]). Only for
    /// `indexed` queues; call after [`Queue::promote`].
    pub(crate) fn take_dirty(&mut self, now: Millis) -> Vec<(AgeKey, Slot)> {
        let mut dirty: Vec<(AgeKey, Slot)> = Vec::new();
        let spec = Arc::clone(&self.spec);
        // A candidate can only join an anchor whose window reaches it, and no
        // window exceeds max_window.
        let reach = match &spec.skill {
            Some(s) if s.max_window.is_finite() => {
                (s.max_window / s.bucket_width).ceil() as i64 + 1
            }
            Some(_) => i64::MAX / 4,
            None => 0,
        };
        let touched = std::mem::take(&mut self.touched);
        let mut span: Option<(u32, Sym, i64, i64)> = None;
        let flush = |span: (u32, Sym, i64, i64), dirty: &mut Vec<(AgeKey, Slot)>| {
            let (part, region, lo, hi) = span;
            let Some(part) = self.partitions.get(part as usize).and_then(Option::as_ref) else {
                return;
            };
            // Relaxed tickets search and are searched from every region: a
            // change in a region pool concerns the relaxed pool too, and a
            // change in the relaxed pool concerns every region.
            for (&key, pool) in &part.regions {
                if key != region && key != RELAXED_POOL && region != RELAXED_POOL {
                    continue;
                }
                for (_, bucket) in pool.buckets.range(lo..=hi) {
                    dirty.extend(bucket.tickets.iter().map(|(&a, &s)| (a, s)));
                }
            }
        };
        // Touched buckets are sorted, so overlapping ranges merge in one pass.
        for (part, region, b) in touched {
            let (lo, hi) = (b.saturating_sub(reach), b.saturating_add(reach));
            span = match span {
                Some((p, r, slo, shi))
                    if p == part && r == region && lo <= shi.saturating_add(1) =>
                {
                    Some((p, r, slo, shi.max(hi)))
                }
                Some(done) => {
                    flush(done, &mut dirty);
                    Some((part, region, lo, hi))
                }
                None => Some((part, region, lo, hi)),
            };
        }
        if let Some(done) = span {
            flush(done, &mut dirty);
        }

        if let Some(prev) = self.last_run.filter(|&prev| prev < now) {
            if let Some(fill) = spec
                .fill_after
                .filter(|_| spec.min_team_size < spec.max_party().unwrap_or(0))
            {
                // wait crosses fill_after: prev - enq < fill <= now - enq.
                if let Some(upper) = now.checked_sub(fill) {
                    let lower = prev.checked_sub(fill).map_or(Bound::Unbounded, |l| {
                        Bound::Excluded(AgeKey {
                            enqueued_at: l,
                            id: TicketId(u64::MAX),
                        })
                    });
                    let upper = Bound::Included(AgeKey {
                        enqueued_at: upper,
                        id: TicketId(u64::MAX),
                    });
                    dirty.extend(self.fifo.range((lower, upper)).map(|(&a, &s)| (a, s)));
                }
            }
            if let Some(s) = spec.skill.as_ref().filter(|s| s.widen_per_second > 0.0) {
                // Tickets capped at max_window before `prev` cannot step; they
                // are the oldest ones, a prefix of `fifo`.
                let capped_after = if s.max_window.is_finite() {
                    let secs = ((s.max_window - s.window) / s.widen_per_second).ceil();
                    (secs as u64).saturating_add(1).saturating_mul(1000)
                } else {
                    u64::MAX
                };
                let from = AgeKey {
                    enqueued_at: prev.saturating_sub(capped_after),
                    id: TicketId(0),
                };
                for (&age, &slot) in self.fifo.range(from..) {
                    let before = s.window_at(prev.saturating_sub(age.enqueued_at));
                    if s.window_at(now.saturating_sub(age.enqueued_at)) != before {
                        dirty.push((age, slot));
                    }
                }
            }
        }
        // A ticket near several touched buckets or regions is listed once.
        dirty.sort_unstable_by_key(|&(age, _)| age);
        dirty.dedup_by_key(|&mut (age, _)| age);
        dirty
    }

    /// Records the end of a `find_matches` run.
    pub(crate) fn finish_run(&mut self, now: Millis) {
        self.touched.clear();
        self.last_run = Some(self.last_run.map_or(now, |prev| prev.max(now)));
    }

    /// Applies region relaxation to every ticket that has waited long enough.
    pub(crate) fn promote(&mut self, now: Millis) {
        let Some((after, max_latency)) = self
            .spec
            .region
            .as_ref()
            .and_then(|r| Some((r.relax_after?, r.max_latency_ms)))
        else {
            return;
        };
        let start = self.relaxed_upto.map_or(Bound::Unbounded, Bound::Excluded);
        let due: Vec<(AgeKey, Slot)> = self
            .fifo
            .range((start, Bound::Unbounded))
            .take_while(|(age, _)| now.saturating_sub(age.enqueued_at) >= after)
            .map(|(&age, &slot)| (age, slot))
            .collect();
        for (age, slot) in due {
            self.relaxed_upto = Some(age);
            let Some(stored) = self.slots.get_mut(slot as usize).and_then(Option::as_mut) else {
                continue;
            };
            stored.relaxed = true;
            let stored: &Stored = stored;
            let bucket = self
                .spec
                .skill
                .as_ref()
                .map_or(0, |s| s.bucket(stored.skill));
            let Some(part) = self
                .partitions
                .get_mut(stored.partition as usize)
                .and_then(Option::as_mut)
            else {
                continue;
            };
            // The relaxed pool covers every reported region, so the ticket
            // leaves the strict pools it was in.
            for (region, _) in stored.reported().filter(|&(_, ms)| ms <= max_latency) {
                remove_from_pool(&mut part.regions, region, bucket, &age);
            }
            self.stamp += 1;
            let pool = part.regions.entry(RELAXED_POOL).or_default();
            let b = pool.buckets.entry(bucket).or_default();
            b.tickets.insert(age, slot);
            b.changed = self.stamp;
            pool.len += 1;
            self.touched
                .insert((stored.partition, RELAXED_POOL, bucket));
        }
    }
}

fn remove_from_pool(
    regions: &mut BTreeMap<Sym, RegionPool>,
    region: Sym,
    bucket: i64,
    age: &AgeKey,
) {
    let Some(pool) = regions.get_mut(&region) else {
        return;
    };
    if let Some(b) = pool.buckets.get_mut(&bucket) {
        if b.tickets.remove(age).is_some() {
            pool.len -= 1;
        }
        if b.tickets.is_empty() {
            pool.buckets.remove(&bucket);
        }
    }
    if pool.len == 0 {
        regions.remove(&region);
    }
}

pub(crate) fn tag_bits<'a>(filter_tags: &[String], tags: impl Iterator<Item = &'a str>) -> u64 {
    let mut bits = 0u64;
    for tag in tags {
        if let Ok(i) = filter_tags.binary_search_by(|t| t.as_str().cmp(tag))
            && i < 64
        {
            bits |= 1 << i;
        }
    }
    bits
}
