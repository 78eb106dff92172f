//! Assembling one match around an anchor ticket, and splitting it into teams.

use std::borrow::Cow;
use std::collections::btree_map;

use crate::Millis;
use crate::config::Spec;
use crate::intern::Sym;
use crate::pool::{
    ANY_REGION, AgeKey, AgeMap, Memo, Partition, Queue, RELAXED_POOL, RegionPool, Slot, Stored,
};

/// A ticket as the search sees it.
#[derive(Copy, Clone, Debug)]
pub(crate) struct Cand {
    pub(crate) slot: Slot,
    pub(crate) size: u32,
    pub(crate) skill: f64,
    pub(crate) age: AgeKey,
}

impl Cand {
    pub(crate) fn of(slot: Slot, s: &Stored) -> Cand {
        Cand {
            slot,
            size: s.size,
            skill: s.skill,
            age: s.age(),
        }
    }
}

/// Oldest-first merge of several age-ordered buckets. A ticket present in
/// more than one merged bucket (several region pools) is yielded once,
/// because equal keys come out adjacently.
pub(crate) struct Stream<'a> {
    heads: Vec<std::iter::Peekable<btree_map::Iter<'a, AgeKey, Slot>>>,
    last: Option<AgeKey>,
}

impl<'a> Stream<'a> {
    pub(crate) fn new(buckets: impl Iterator<Item = &'a AgeMap>) -> Stream<'a> {
        Stream {
            heads: buckets.map(|b| b.iter().peekable()).collect(),
            last: None,
        }
    }
}

impl Iterator for Stream<'_> {
    type Item = (AgeKey, Slot);

    fn next(&mut self) -> Option<(AgeKey, Slot)> {
        loop {
            // A linear scan beats a heap at the handful of buckets a skill
            // window spans.
            let mut best: Option<(usize, AgeKey)> = None;
            for (i, head) in self.heads.iter_mut().enumerate() {
                if let Some(&(&age, _)) = head.peek()
                    && best.is_none_or(|(_, b)| age < b)
                {
                    best = Some((i, age));
                }
            }
            let (i, _) = best?;
            let (&age, &slot) = self.heads[i].next()?;
            if self.last == Some(age) {
                continue;
            }
            self.last = Some(age);
            return Some((age, slot));
        }
    }
}

/// A match chosen by the search, before it leaves the pool.
#[derive(Debug)]
pub(crate) struct Selection {
    pub(crate) teams: Vec<Vec<Cand>>,
    pub(crate) region: Sym,
    pub(crate) quality: f64,
}

/// Candidates considered per (anchor, region, team size) attempt, beyond
/// the players needed. Keeps a failing anchor cheap in a big pool; the
/// search is then greedy-with-backtracking rather than exhaustive.
const SEARCH_BUDGET: u32 = 256;
/// Nodes of the team-balancing search before it settles for the best split so far.
const BALANCE_BUDGET: u32 = 20_000;

/// Tries to build a match containing `anchor`, preferring older candidates.
pub(crate) fn try_anchor(
    q: &Queue,
    anchor_slot: Slot,
    now: Millis,
    scratch: &mut Scratch,
) -> Outcome {
    let spec = &q.spec;
    let Some(anchor) = q.get(anchor_slot) else {
        return Outcome::Skipped;
    };
    let Some(full_caps) = spec.team_caps.as_ref() else {
        return Outcome::Matched(Selection {
            teams: vec![vec![Cand::of(anchor_slot, anchor)]],
            region: region_of_solo(anchor, spec),
            quality: 1.0,
        });
    };
    let wait = now.saturating_sub(anchor.enqueued_at);
    let window = spec
        .skill
        .as_ref()
        .map_or(f64::INFINITY, |s| s.window_at(wait));
    let may_underfill = spec.fill_after.is_some_and(|f| wait >= f);
    let part = match q.indexed {
        true => match q.partition(anchor.partition) {
            Some(part) => Some(part),
            None => return Outcome::Skipped,
        },
        false => None,
    };

    // Lowest latency for the anchor first. Ties go by symbol, which the
    // same sequence of inputs always assigns the same way.
    let regions: Cow<'_, [(Sym, u32)]> = if spec.region.is_some() {
        let mut regions = anchor.play_regions(spec);
        regions.sort_by_key(|&(r, ms)| (ms, r));
        Cow::Owned(regions)
    } else {
        Cow::Borrowed(&[(ANY_REGION, 0)])
    };

    let (lo, hi) = match &spec.skill {
        Some(s) if window.is_finite() => (
            s.bucket(anchor.skill - window),
            s.bucket(anchor.skill + window),
        ),
        _ => (i64::MIN, i64::MAX),
    };
    let memo = anchor.memo();
    if memo.stamp != 0
        && memo.window == window
        && memo.underfill == may_underfill
        && !changed_since(q, part, &regions, (lo, hi), memo.stamp)
    {
        return Outcome::Skipped;
    }

    let full = full_caps.iter().copied().max().unwrap_or(0);
    let smallest = if may_underfill {
        spec.min_team_size.min(full)
    } else {
        full
    };
    let anchor_cand = Cand::of(anchor_slot, anchor);
    for k in (smallest..=full).rev() {
        let caps: Cow<'_, [u32]> = if k == full {
            Cow::Borrowed(full_caps)
        } else {
            Cow::Owned(vec![k; full_caps.len()])
        };
        if anchor.size > caps.iter().copied().max().unwrap_or(0) {
            continue;
        }
        for &(region, _) in regions.iter() {
            let stream = match part {
                Some(part) => {
                    let pools = searched_pools(part, region);
                    if pools.is_empty() {
                        continue;
                    }
                    Stream::new(
                        pools
                            .into_iter()
                            .flat_map(|p| p.buckets.range(lo..=hi).map(|(_, b)| &b.tickets)),
                    )
                }
                None => Stream::new(std::iter::once(&q.fifo)),
            };
            scratch.cands.clear();
            scratch.chosen.clear();
            scratch.chosen.push(anchor_cand);
            let mut picker = Picker {
                q,
                stream,
                anchor: anchor_slot,
                anchor_skill: anchor.skill,
                region,
                cands: &mut scratch.cands,
                chosen: &mut scratch.chosen,
                caps: &caps,
                target: caps.iter().sum(),
                window,
                budget: SEARCH_BUDGET.saturating_add(caps.iter().sum::<u32>().saturating_mul(8)),
            };
            if picker.dfs(0, anchor.size, anchor.skill, anchor.skill) {
                let chosen = &scratch.chosen;
                let teams = balance(chosen, &caps, spec.skill.is_some());
                let quality = quality(spec, chosen, &teams, full_caps);
                return Outcome::Matched(Selection {
                    teams,
                    region,
                    quality,
                });
            }
        }
    }
    Outcome::Failed(Memo {
        stamp: q.stamp,
        window,
        underfill: may_underfill,
    })
}

/// Whether a candidate was added to any bucket the anchor searches since `stamp`.
fn changed_since(
    q: &Queue,
    part: Option<&Partition>,
    regions: &[(Sym, u32)],
    (lo, hi): (i64, i64),
    stamp: u64,
) -> bool {
    let Some(part) = part else {
        return q.fifo_changed > stamp;
    };
    regions.iter().any(|&(region, _)| {
        searched_pools(part, region).into_iter().any(|pool| {
            pool.buckets
                .range(lo..=hi)
                .any(|(_, bucket)| bucket.changed > stamp)
        })
    })
}

/// The pools a search in `region` reads: the region's own pool and, for
/// regional queues, the relaxed pool (whose tickets are then checked for
/// having reported the region).
pub(crate) fn searched_pools(part: &Partition, region: Sym) -> Vec<&RegionPool> {
    let own = part.regions.get(&region);
    let relaxed = (region != ANY_REGION)
        .then(|| part.regions.get(&RELAXED_POOL))
        .flatten();
    own.into_iter().chain(relaxed).collect()
}

/// Result of one anchor's turn.
pub(crate) enum Outcome {
    Matched(Selection),
    /// No match; remember why, to skip the anchor until something changes.
    Failed(Memo),
    /// Skipped: nothing changed since the anchor last failed.
    Skipped,
}

fn region_of_solo(anchor: &Stored, spec: &Spec) -> Sym {
    let mut pools = anchor.play_regions(spec);
    pools.sort_by_key(|&(r, ms)| (ms, r));
    pools.first().map_or(ANY_REGION, |&(r, _)| r)
}

/// Buffers reused across the anchors of one `find_matches` call.
#[derive(Default)]
pub(crate) struct Scratch {
    cands: Vec<Cand>,
    chosen: Vec<Cand>,
}

struct Picker<'a, 'c> {
    q: &'a Queue,
    stream: Stream<'a>,
    anchor: Slot,
    anchor_skill: f64,
    region: Sym,
    cands: &'c mut Vec<Cand>,
    chosen: &'c mut Vec<Cand>,
    caps: &'c [u32],
    target: u32,
    window: f64,
    budget: u32,
}

impl Picker<'_, '_> {
    fn pull(&mut self) -> bool {
        for (_, slot) in self.stream.by_ref() {
            if slot == self.anchor {
                continue;
            }
            let Some(s) = self.q.get(slot) else {
                continue;
            };
            if (s.skill - self.anchor_skill).abs() > self.window {
                continue;
            }
            if s.relaxed && self.region != ANY_REGION && s.latency(self.region).is_none() {
                continue;
            }
            self.cands.push(Cand::of(slot, s));
            return true;
        }
        false
    }

    /// Depth-first over candidates in age order, so the first solution found
    /// is the one that favours the oldest tickets.
    fn dfs(&mut self, from: usize, total: u32, lo: f64, hi: f64) -> bool {
        if total == self.target {
            return true;
        }
        let mut j = from;
        loop {
            if self.budget == 0 {
                return false;
            }
            if j == self.cands.len() && !self.pull() {
                return false;
            }
            self.budget -= 1;
            let c = self.cands[j];
            j += 1;
            if total + c.size > self.target {
                continue;
            }
            let (nlo, nhi) = (lo.min(c.skill), hi.max(c.skill));
            if nhi - nlo > self.window {
                continue;
            }
            self.chosen.push(c);
            if packable(self.chosen, self.caps) && self.dfs(j, total + c.size, nlo, nhi) {
                return true;
            }
            self.chosen.pop();
        }
    }
}

/// Whether whole tickets of these sizes fit into teams of these capacities.
pub(crate) fn packable(items: &[Cand], caps: &[u32]) -> bool {
    let total: u32 = items.iter().map(|c| c.size).sum();
    if total > caps.iter().sum::<u32>() {
        return false;
    }
    if caps.len() == 1 || items.iter().all(|c| c.size == 1) {
        return true;
    }
    let mut sizes: Vec<u32> = items.iter().map(|c| c.size).collect();
    sizes.sort_unstable_by(|a, b| b.cmp(a));
    let mut room = caps.to_vec();
    place(&sizes, &mut room)
}

fn place(sizes: &[u32], room: &mut [u32]) -> bool {
    let Some((&first, rest)) = sizes.split_first() else {
        return true;
    };
    for i in 0..room.len() {
        // Teams with the same room left are interchangeable.
        if room[i] < first || room[..i].contains(&room[i]) {
            continue;
        }
        room[i] -= first;
        let ok = place(rest, room);
        room[i] += first;
        if ok {
            return true;
        }
    }
    false
}

/// Splits the chosen tickets into teams filling `caps` exactly, minimising
/// the spread of team skill sums (skill × players per ticket).
pub(crate) fn balance(chosen: &[Cand], caps: &[u32], by_skill: bool) -> Vec<Vec<Cand>> {
    if !by_skill && chosen.iter().all(|c| c.size == 1) {
        // Nothing to balance and nothing to pack: fill the teams in age order.
        let mut sorted = chosen.to_vec();
        sorted.sort_by_key(|c| c.age);
        let mut rest = sorted.as_slice();
        return caps
            .iter()
            .map(|&cap| {
                let (team, tail) = rest.split_at((cap as usize).min(rest.len()));
                rest = tail;
                team.to_vec()
            })
            .collect();
    }
    balance_onto(chosen, caps, &vec![0.0; caps.len()], by_skill)
}

/// [`balance`] onto teams that already hold players with skill sums
/// `offsets`; `caps` is the room left, which need not be filled.
pub(crate) fn balance_onto(
    chosen: &[Cand],
    caps: &[u32],
    offsets: &[f64],
    by_skill: bool,
) -> Vec<Vec<Cand>> {
    let mut items: Vec<Cand> = chosen.to_vec();
    // Big parties first prunes the packing early; equal sizes fall back to
    // skill then age so the result is fully determined.
    items.sort_by(|a, b| {
        b.size
            .cmp(&a.size)
            .then(b.skill.total_cmp(&a.skill))
            .then(a.age.cmp(&b.age))
    });
    let mut s = Balancer {
        items: &items,
        caps,
        room: caps.to_vec(),
        sums: offsets.to_vec(),
        assign: vec![0; items.len()],
        best: None,
        by_skill,
        budget: BALANCE_BUDGET,
    };
    s.go(0);
    let assign = s.best.map(|(_, a)| a).unwrap_or_default();
    let mut teams: Vec<Vec<Cand>> = vec![Vec::new(); caps.len()];
    for (item, &team) in items.iter().zip(&assign) {
        if let Some(t) = teams.get_mut(team) {
            t.push(*item);
        }
    }
    for team in &mut teams {
        team.sort_by_key(|c| c.age);
    }
    teams
}

struct Balancer<'a> {
    items: &'a [Cand],
    caps: &'a [u32],
    room: Vec<u32>,
    sums: Vec<f64>,
    assign: Vec<usize>,
    best: Option<(f64, Vec<usize>)>,
    by_skill: bool,
    budget: u32,
}

impl Balancer<'_> {
    fn done(&self) -> bool {
        match &self.best {
            Some((score, _)) => !self.by_skill || *score <= 0.0 || self.budget == 0,
            None => false,
        }
    }

    fn go(&mut self, i: usize) {
        if self.done() {
            return;
        }
        self.budget = self.budget.saturating_sub(1);
        let Some(item) = self.items.get(i) else {
            let max = self.sums.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let min = self.sums.iter().copied().fold(f64::INFINITY, f64::min);
            let score = max - min;
            if self.best.as_ref().is_none_or(|(b, _)| score < *b) {
                self.best = Some((score, self.assign.clone()));
            }
            return;
        };
        let weight = item.skill * f64::from(item.size);
        for t in 0..self.room.len() {
            if self.room[t] < item.size {
                continue;
            }
            // Teams with the same capacity, room and sum so far are
            // interchangeable; exploring one of them is enough.
            let same = (0..t).any(|u| {
                self.caps[u] == self.caps[t]
                    && self.room[u] == self.room[t]
                    && self.sums[u] == self.sums[t]
            });
            if same {
                continue;
            }
            self.room[t] -= item.size;
            self.sums[t] += weight;
            self.assign[i] = t;
            self.go(i + 1);
            self.sums[t] -= weight;
            self.room[t] += item.size;
            if self.done() {
                return;
            }
        }
    }
}

/// Match quality in (0, 1]: the fill ratio, divided by `1 + spread / w` and
/// by `1 + imbalance / w`, where `spread` is the skill range of the match,
/// `imbalance` the range of team mean skills and `w` the base window.
pub(crate) fn quality(spec: &Spec, chosen: &[Cand], teams: &[Vec<Cand>], full_caps: &[u32]) -> f64 {
    let players: u32 = chosen.iter().map(|c| c.size).sum();
    let capacity: u32 = full_caps.iter().sum();
    let fill = if capacity == 0 {
        1.0
    } else {
        f64::from(players) / f64::from(capacity)
    };
    let Some(skill) = &spec.skill else {
        return fill;
    };
    let norm = if skill.window > 0.0 {
        skill.window
    } else if skill.max_window.is_finite() && skill.max_window > 0.0 {
        skill.max_window
    } else {
        1.0
    };
    let lo = chosen.iter().map(|c| c.skill).fold(f64::INFINITY, f64::min);
    let hi = chosen
        .iter()
        .map(|c| c.skill)
        .fold(f64::NEG_INFINITY, f64::max);
    let means: Vec<f64> = teams
        .iter()
        .map(|t| {
            let n: u32 = t.iter().map(|c| c.size).sum();
            let sum: f64 = t.iter().map(|c| c.skill * f64::from(c.size)).sum();
            if n == 0 { 0.0 } else { sum / f64::from(n) }
        })
        .collect();
    let mlo = means.iter().copied().fold(f64::INFINITY, f64::min);
    let mhi = means.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let spread = (hi - lo).max(0.0);
    let imbalance = (mhi - mlo).max(0.0);
    fill / ((1.0 + spread / norm) * (1.0 + imbalance / norm))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TicketId;

    fn cands(items: &[(u32, f64)]) -> Vec<Cand> {
        items
            .iter()
            .enumerate()
            .map(|(i, &(size, skill))| Cand {
                slot: i as Slot,
                size,
                skill,
                age: AgeKey {
                    enqueued_at: i as u64,
                    id: TicketId(i as u64),
                },
            })
            .collect()
    }

    #[test]
    fn packing_respects_whole_parties() {
        assert!(!packable(&cands(&[(2, 0.0), (2, 0.0), (2, 0.0)]), &[3, 3]));
        assert!(packable(&cands(&[(2, 0.0), (2, 0.0)]), &[3, 3]));
        assert!(packable(
            &cands(&[(3, 0.0), (3, 0.0), (1, 0.0), (1, 0.0)]),
            &[4, 4]
        ));
        assert!(!packable(&cands(&[(3, 0.0), (3, 0.0), (2, 0.0)]), &[4, 4]));
        assert!(packable(&cands(&[(1, 0.0), (2, 0.0)]), &[1, 2]));
        assert!(!packable(&cands(&[(1, 0.0); 4]), &[1, 2]));
        assert!(packable(&cands(&[(5, 0.0)]), &[5]));
    }

    #[test]
    fn balance_fills_exactly_and_evens_sums() {
        let items = cands(&[
            (2, 1000.0),
            (1, 1500.0),
            (1, 500.0),
            (1, 900.0),
            (1, 1100.0),
        ]);
        let teams = balance(&items, &[3, 3], true);
        let sums: Vec<f64> = teams
            .iter()
            .map(|t| t.iter().map(|c| c.skill * f64::from(c.size)).sum())
            .collect();
        let sizes: Vec<u32> = teams
            .iter()
            .map(|t| t.iter().map(|c| c.size).sum())
            .collect();
        assert_eq!(sizes, vec![3, 3]);
        // The party (2000) takes one single; the best choices, 900 or 1100,
        // leave 2900 against 3100.
        assert_eq!((sums[0] - sums[1]).abs(), 200.0);
    }

    #[test]
    fn balance_without_skill_keeps_age_order_for_singles() {
        let items = cands(&[(1, 0.0), (1, 0.0), (1, 0.0)]);
        let teams = balance(&items, &[1, 2], false);
        assert_eq!(teams[0].len(), 1);
        assert_eq!(teams[0][0].slot, 0);
        assert_eq!(teams[1].len(), 2);
    }

    #[test]
    fn balance_onto_counts_current_players() {
        // Team 0 already holds a strong player: the strong newcomer goes to team 1.
        let items = cands(&[(1, 2000.0), (1, 100.0)]);
        let teams = balance_onto(&items, &[1, 1], &[2000.0, 0.0], true);
        assert_eq!(teams[0][0].skill, 100.0);
        assert_eq!(teams[1][0].skill, 2000.0);
    }
}
