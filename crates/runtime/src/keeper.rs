//! The keeper: one task per land that owns the land and serialises everything touching it.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use matchplane_contracts::game::{ActionRequest, EventBody, LandClosed, close_code, error_code};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, Interval, MissedTickBehavior};

use crate::auth::{Admission, Rejection};
use crate::core::{ConnHandle, Disconnect, LandCore, SyncDue};
use crate::land::{Land, PlayerId};
use crate::manager::{LandStats, ManagerInner};

/// Commands handled at most this many at a time before state is synced, so a burst of
/// actions costs one diff instead of one per action, without starving the tick.
const MAX_BATCH: usize = 64;

#[derive(Debug)]
pub(crate) enum KeeperCommand {
    Join {
        admission: Admission,
        conn: ConnHandle,
        reply: oneshot::Sender<JoinReply>,
    },
    Action {
        player: PlayerId,
        conn_id: u64,
        request: ActionRequest,
    },
    Event {
        player: PlayerId,
        conn_id: u64,
        event: EventBody,
    },
    SyncRequest {
        player: PlayerId,
        conn_id: u64,
    },
    Disconnect {
        player: PlayerId,
        conn_id: u64,
        how: Disconnect,
    },
    Shutdown {
        reason: LandClosed,
    },
    /// The server started draining: an empty land goes now rather than after its
    /// `dispose_after_empty`, so a draining server exits as soon as its games are over.
    Draining,
}

#[derive(Debug)]
pub(crate) enum JoinReply {
    Joined,
    Rejected(Rejection),
    /// The land was disposing; the manager should create a fresh one.
    Retry,
}

pub(crate) struct KeeperParams {
    pub(crate) land_id: String,
    pub(crate) land_type: String,
    pub(crate) generation: u64,
    pub(crate) stats: Arc<LandStats>,
    pub(crate) manager: Arc<ManagerInner>,
}

fn micros(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

async fn next_tick(ticker: &mut Option<Interval>) -> Instant {
    match ticker {
        Some(ticker) => ticker.tick().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

pub(crate) async fn run<L: Land>(
    mut core: LandCore<L>,
    mut commands: mpsc::Receiver<KeeperCommand>,
    params: KeeperParams,
) {
    let period = core.settings().tick_period();
    let mut ticker = period.map(|period| {
        let mut ticker = tokio::time::interval_at(Instant::now() + period, period);
        // Skip keeps ticks on the original grid: after a stall the next tick comes at the
        // next slot (no drift) and missed slots are not replayed in a burst; the land
        // catches up through a longer `dt` instead.
        ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
        ticker
    });
    let mut last_tick = Instant::now();
    let ticks_per_sync = core.settings().ticks_per_sync();
    let mut ticks_since_sync: u32 = 0;
    // While the server sheds sync work, commands' changes wait for the next due
    // sync too: actions are most of the frames then (each one syncs the land).
    let mut stretch: u32 = 1;
    tracing::info!(land_id = %params.land_id, land_type = %params.land_type, "land created");

    loop {
        let deadline = core.next_deadline();
        // Commands' changes go out at once unless shedding; a tick's may wait.
        let mut due = if stretch > 1 && period.is_some() {
            SyncDue::Later
        } else {
            SyncDue::Now
        };
        tokio::select! {
            biased;
            // Ticks first: at most tick_rate_hz of them, so they cannot starve commands,
            // while a steady stream of commands must not delay the simulation.
            now = next_tick(&mut ticker) => {
                let dt = now.saturating_duration_since(last_tick);
                last_tick = now;
                // `now` is the tick's slot, so this is how far behind the process runs.
                stretch = params
                    .manager
                    .shedding
                    .record(Instant::now().saturating_duration_since(now));
                let work = std::time::Instant::now();
                core.tick(dt, now);
                ticks_since_sync = ticks_since_sync.saturating_add(1);
                due = if ticks_since_sync < ticks_per_sync.saturating_mul(stretch) {
                    SyncDue::Later
                } else {
                    SyncDue::Now
                };
                if core.flush_with(due).synced {
                    ticks_since_sync = 0;
                }
                let cost = work.elapsed();
                params.stats.record_tick(cost);
                if let Some(period) = period {
                    if cost > period {
                        tracing::warn!(land_id = %params.land_id, cost_us = micros(cost), period_us = micros(period), "slow tick");
                    } else if dt > period + period / 2 {
                        tracing::debug!(land_id = %params.land_id, dt_us = micros(dt), "late tick; simulating the longer dt");
                    }
                }
            }
            command = commands.recv() => {
                let Some(command) = command else { break };
                handle(&mut core, command, &params);
                for _ in 1..MAX_BATCH {
                    match commands.try_recv() {
                        Ok(command) => handle(&mut core, command, &params),
                        Err(_) => break,
                    }
                }
            }
            () = sleep_until(deadline) => {
                core.expire(Instant::now());
            }
        }
        let report = core.flush_with(due);
        if report.synced {
            ticks_since_sync = 0;
        }
        params
            .stats
            .seats
            .store(core.seat_count(), Ordering::Relaxed);
        params
            .stats
            .connected
            .store(core.connected_count(), Ordering::Relaxed);
        if report.closed || core.is_closed() {
            break;
        }
        if core.should_dispose(Instant::now()) {
            tracing::info!(land_id = %params.land_id, "land empty, disposing");
            break;
        }
        if core.seat_count() == 0 && params.manager.draining.load(Ordering::SeqCst) {
            tracing::info!(land_id = %params.land_id, "land empty while draining, disposing");
            break;
        }
    }

    let closed = core.is_closed();
    params
        .manager
        .remove_land(&params.land_id, params.generation, closed);
    // Nothing new is routed here any more; answer joins that raced with the disposal.
    commands.close();
    while let Some(command) = commands.recv().await {
        if let KeeperCommand::Join { reply, .. } = command {
            let answer = if closed {
                JoinReply::Rejected(Rejection::new(
                    close_code::LAND_FULL_OR_CLOSED,
                    error_code::LAND_CLOSED,
                    "land is closed",
                ))
            } else {
                JoinReply::Retry
            };
            let _ = reply.send(answer);
        }
    }
    tracing::info!(land_id = %params.land_id, "land disposed");
}

fn handle<L: Land>(core: &mut LandCore<L>, command: KeeperCommand, params: &KeeperParams) {
    let now = Instant::now();
    match command {
        KeeperCommand::Join {
            admission,
            conn,
            reply,
        } => {
            let admit_new = !params.manager.draining.load(Ordering::Relaxed);
            let answer = match core.admit(&admission, conn, admit_new, now) {
                Ok(()) => {
                    tracing::info!(land_id = %core.land_id(), player_id = %admission.player_id, "player joined");
                    JoinReply::Joined
                }
                Err(rejection) => {
                    tracing::info!(land_id = %core.land_id(), player_id = %admission.player_id, reason = %rejection, "join rejected");
                    JoinReply::Rejected(rejection)
                }
            };
            let _ = reply.send(answer);
        }
        KeeperCommand::Action {
            player,
            conn_id,
            request,
        } => core.action(&player, conn_id, request, now),
        KeeperCommand::Event {
            player,
            conn_id,
            event,
        } => core.event(&player, conn_id, event, now),
        KeeperCommand::SyncRequest { player, conn_id } => core.request_snapshot(&player, conn_id),
        KeeperCommand::Disconnect {
            player,
            conn_id,
            how,
        } => {
            tracing::info!(land_id = %core.land_id(), player_id = %player, how = ?how, "player disconnected");
            core.disconnect(&player, conn_id, how, now);
        }
        KeeperCommand::Shutdown { reason } => {
            core.close_from_runtime(reason, close_code::GOING_AWAY)
        }
        // Handled by the loop's disposal check after every batch.
        KeeperCommand::Draining => {}
    }
}
