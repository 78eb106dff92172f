//! Sync shedding: a game server that cannot keep up syncs state less often.
//!
//! Every tick of every land syncs its players, so a server carrying more players
//! than its cores can serve falls behind on everything at once: the ticks run late,
//! and a join or an action waits behind the whole backlog of sync work (seconds, at
//! 10,000 players on two cores). Sending state on every Nth tick instead sheds the
//! bulk of that work — the frames — while the simulation keeps its rate and joins
//! go through at once. An action's change waits for the land's next due sync too
//! (each action would otherwise sync its land: most of the frames under load), with
//! its `action.result` behind the patch, so its player sees it within N ticks.
//!
//! The signal is how late ticks run: each land reports the lateness of every tick,
//! and over each window the mean decides the process-wide *stretch* N. It doubles
//! while ticks run late and steps back down once they have been on time for a
//! while, so the server syncs as often as it can afford and never less than
//! `tick rate ÷ max stretch`.

use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

/// The default most ticks one sync may stand for under overload: 20 Hz lands keep
/// at least 2.5 syncs a second. At 10,000 hero-defense players on two cores, 4 left
/// the server overloaded (joins p99 ≈ 680 ms) where 8 brought it to its capacity.
pub const DEFAULT_MAX_SYNC_STRETCH: u32 = 8;

/// How long lateness is averaged before the stretch is reconsidered.
const WINDOW: Duration = Duration::from_millis(250);
/// Fewer ticks than this in a window say too little to act on.
const MIN_TICKS: u32 = 8;
/// A mean lateness from here on means the process is overloaded. At 10,000
/// hero-defense players, 20 ms let joins wait ≈ 250 ms (p99) while the stretch
/// caught up with the load, 10 ms ≈ 125 ms, 5 ms ≈ 97 ms; at 1,200 players (half a
/// core) the mean stays below it and nothing is shed.
const OVERLOADED: Duration = Duration::from_millis(5);
/// A mean lateness up to here is a process keeping up (timer granularity is 1 ms).
const ON_TIME: Duration = Duration::from_millis(2);
/// On-time windows in a row before the stretch steps down; stepping down is
/// slower than stepping up so the server does not swing in and out of overload.
const ON_TIME_WINDOWS_TO_RELAX: u32 = 4;

/// The decision, clock passed in: fed each tick's lateness, it says the stretch.
#[derive(Debug)]
pub(crate) struct StretchControl {
    max: u32,
    stretch: u32,
    window_start: Instant,
    late_total: Duration,
    ticks: u32,
    on_time_windows: u32,
}

impl StretchControl {
    pub(crate) fn new(max: u32, now: Instant) -> Self {
        Self {
            max: max.max(1),
            stretch: 1,
            window_start: now,
            late_total: Duration::ZERO,
            ticks: 0,
            on_time_windows: 0,
        }
    }

    pub(crate) fn stretch(&self) -> u32 {
        self.stretch
    }

    /// A tick ran `lateness` after its slot, seen at `now`; returns the stretch.
    pub(crate) fn observe(&mut self, lateness: Duration, now: Instant) -> u32 {
        self.late_total = self.late_total.saturating_add(lateness);
        self.ticks = self.ticks.saturating_add(1);
        if self.ticks < MIN_TICKS || now.saturating_duration_since(self.window_start) < WINDOW {
            return self.stretch;
        }
        let mean = self.late_total / self.ticks;
        if mean >= OVERLOADED {
            self.stretch = self.stretch.saturating_mul(2).min(self.max);
            self.on_time_windows = 0;
        } else if mean <= ON_TIME {
            self.on_time_windows += 1;
            if self.on_time_windows >= ON_TIME_WINDOWS_TO_RELAX {
                self.stretch = (self.stretch - 1).max(1);
                self.on_time_windows = 0;
            }
        } else {
            self.on_time_windows = 0;
        }
        self.window_start = now;
        self.late_total = Duration::ZERO;
        self.ticks = 0;
        self.stretch
    }
}

/// The process-wide [`StretchControl`], shared by every land's keeper.
#[derive(Debug)]
pub(crate) struct SyncShedding {
    control: Mutex<StretchControl>,
}

impl SyncShedding {
    /// `max` 1 turns shedding off: every tick syncs whatever the load.
    pub(crate) fn new(max: u32) -> Self {
        Self {
            control: Mutex::new(StretchControl::new(max, Instant::now())),
        }
    }

    /// A land's tick ran `lateness` after its slot; returns the stretch in force.
    pub(crate) fn record(&self, lateness: Duration) -> u32 {
        let mut control = self.control.lock();
        let before = control.stretch();
        let stretch = control.observe(lateness, Instant::now());
        drop(control);
        if stretch > before {
            tracing::warn!(
                stretch,
                "ticks run late: lands now sync every {stretch} ticks"
            );
        } else if stretch < before {
            tracing::info!(
                stretch,
                "ticks back on time: lands now sync every {stretch} ticks"
            );
        }
        stretch
    }

    pub(crate) fn stretch(&self) -> u32 {
        self.control.lock().stretch()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LATE: Duration = OVERLOADED;
    const ON: Duration = ON_TIME;
    const BETWEEN: Duration =
        Duration::from_micros((ON_TIME.as_micros() as u64 + OVERLOADED.as_micros() as u64) / 2);

    /// Feeds `windows` windows of 10 ticks each late by `lateness`; the stretch after each.
    fn run(
        control: &mut StretchControl,
        start: &mut Instant,
        lateness: Duration,
        windows: usize,
    ) -> Vec<u32> {
        (0..windows)
            .map(|_| {
                let mut stretch = control.stretch();
                for _ in 0..10 {
                    *start += WINDOW / 10;
                    stretch = control.observe(lateness, *start);
                }
                stretch
            })
            .collect()
    }

    #[test]
    fn late_ticks_double_the_stretch_up_to_the_max_and_on_time_ticks_walk_it_back() {
        let mut now = Instant::now();
        let mut control = StretchControl::new(8, now);
        assert_eq!(run(&mut control, &mut now, ON, 3), [1, 1, 1]);
        assert_eq!(run(&mut control, &mut now, BETWEEN, 3), [1, 1, 1]);
        assert_eq!(run(&mut control, &mut now, LATE, 5), [2, 4, 8, 8, 8]);
        // In between: neither overloaded nor on time, so the stretch holds.
        assert_eq!(run(&mut control, &mut now, BETWEEN, 8), [8; 8]);
        assert_eq!(
            run(&mut control, &mut now, ON, 12),
            [8, 8, 8, 7, 7, 7, 7, 6, 6, 6, 6, 5]
        );
        // One late window interrupts the walk back and doubles again.
        assert_eq!(run(&mut control, &mut now, LATE * 8, 1), [8]);
    }

    #[test]
    fn a_max_of_one_never_sheds_and_a_short_window_decides_nothing() {
        let mut now = Instant::now();
        let mut off = StretchControl::new(1, now);
        assert_eq!(run(&mut off, &mut now, Duration::from_secs(1), 4), [1; 4]);
        let mut zero = StretchControl::new(0, now);
        assert_eq!(run(&mut zero, &mut now, Duration::from_secs(1), 2), [1; 2]);

        // Seven very late ticks are too few to act on, however long they took.
        let mut control = StretchControl::new(4, now);
        for _ in 0..7 {
            now += WINDOW;
            assert_eq!(control.observe(Duration::from_secs(1), now), 1);
        }
        assert_eq!(control.observe(Duration::from_secs(1), now), 2);
    }
}
