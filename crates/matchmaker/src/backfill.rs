//! Filling open slots of a running land from a queue.

use crate::intern::{Interner, NO_SYM};
use crate::pool::{ANY_REGION, AgeMap, Queue, RELAXED_POOL, Slot};
use crate::search::{Cand, Stream, balance_onto, packable};
use crate::{BackfillRequest, Millis};

/// Candidates examined per request: bounds the cost when most of the pool
/// does not fit the land's remaining slots.
const BACKFILL_BUDGET: usize = 4096;

pub(crate) struct Plan {
    pub(crate) assignments: Vec<(Slot, usize)>,
    pub(crate) quality: f64,
}

/// Picks tickets oldest first as long as they still pack into the open
/// slots. With skill rules, the land's mean skill and the picked tickets must
/// stay within the window of the oldest picked ticket's wait. The picked
/// tickets are then split over the teams to even out team skill sums
/// (current players included).
pub(crate) fn plan(
    q: &Queue,
    interner: &Interner,
    request: &BackfillRequest,
    now: Millis,
) -> Option<Plan> {
    let spec = &q.spec;
    let total_open: u32 = request.open_slots.iter().sum();
    if total_open == 0 {
        return None;
    }
    let mut wanted = Vec::with_capacity(spec.filter_args.len());
    for arg in &spec.filter_args {
        match request.string_args.get(arg) {
            None => wanted.push(NO_SYM),
            // A value no queued ticket has interned cannot match anything.
            Some(v) => wanted.push(interner.get(v)?),
        }
    }
    let region = match (&spec.region, &request.region) {
        (Some(_), Some(r)) => Some(interner.get(r)?),
        (None, _) => Some(ANY_REGION),
        (Some(_), None) => None,
    };

    let current: Vec<f64> = request.team_skills.iter().flatten().copied().collect();
    let center = (!current.is_empty()).then(|| current.iter().sum::<f64>() / current.len() as f64);
    let (lo_bucket, hi_bucket) = match (&spec.skill, center, q.oldest()) {
        (Some(s), Some(c), Some(oldest)) => {
            let widest = s.window_at(now.saturating_sub(oldest));
            if widest.is_finite() {
                (s.bucket(c - widest), s.bucket(c + widest))
            } else {
                (i64::MIN, i64::MAX)
            }
        }
        _ => (i64::MIN, i64::MAX),
    };

    let mut buckets: Vec<&AgeMap> = Vec::new();
    if !q.indexed {
        buckets.push(&q.fifo);
    }
    for part in q.partitions.iter().flatten() {
        if *part.key.args != *wanted {
            continue;
        }
        for (&r, pool) in &part.regions {
            if region.is_some_and(|want| want != r && r != RELAXED_POOL) {
                continue;
            }
            buckets.extend(
                pool.buckets
                    .range(lo_bucket..=hi_bucket)
                    .map(|(_, b)| &b.tickets),
            );
        }
    }

    let caps = &request.open_slots;
    let mut lo = center.unwrap_or(f64::INFINITY);
    let mut hi = center.unwrap_or(f64::NEG_INFINITY);
    let mut window: Option<f64> = None;
    let mut filled = 0u32;
    let mut chosen: Vec<Cand> = Vec::new();

    for (_, slot) in Stream::new(buckets.into_iter()).take(BACKFILL_BUDGET) {
        if filled == total_open {
            break;
        }
        let Some(t) = q.get(slot) else {
            continue;
        };
        if let Some(r) = region
            && t.relaxed
            && r != ANY_REGION
            && t.latency(r).is_none()
        {
            continue;
        }
        if filled + t.size > total_open {
            continue;
        }
        let (mut nlo, mut nhi, mut w) = (lo, hi, window);
        if let Some(s) = &spec.skill {
            let limit = window.unwrap_or_else(|| s.window_at(now.saturating_sub(t.enqueued_at)));
            (nlo, nhi) = (lo.min(t.skill), hi.max(t.skill));
            if nhi - nlo > limit {
                continue;
            }
            w = Some(limit);
        }
        chosen.push(Cand::of(slot, t));
        if !packable(&chosen, caps) {
            chosen.pop();
            continue;
        }
        (lo, hi, window) = (nlo, nhi, w);
        filled += t.size;
    }
    let offsets: Vec<f64> = (0..caps.len())
        .map(|t| request.team_skills.get(t).map_or(0.0, |s| s.iter().sum()))
        .collect();
    let teams = balance_onto(&chosen, caps, &offsets, spec.skill.is_some());
    let assignments: Vec<(Slot, usize)> = teams
        .iter()
        .enumerate()
        .flat_map(|(team, members)| members.iter().map(move |c| (c.slot, team)))
        .collect();
    if assignments.is_empty() {
        return None;
    }
    let fill = f64::from(filled) / f64::from(total_open);
    let quality = match &spec.skill {
        Some(s) => {
            let norm = if s.window > 0.0 { s.window } else { 1.0 };
            fill / (1.0 + (hi - lo).max(0.0) / norm)
        }
        None => fill,
    };
    Some(Plan {
        assignments,
        quality,
    })
}
