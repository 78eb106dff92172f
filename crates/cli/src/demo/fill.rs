//! With `--keep-running`, bots fill the matches of people playing from the play page's
//! "with bots" mode: the demo watches that queue and sends bots in whenever a human
//! ticket waits there, so no endpoint is needed to ask for them.

use std::sync::Arc;
use std::time::Duration;

use matchplane_client::MatchmakingClient;
use matchplane_control_plane::store::Store;

use super::bot::{Bot, SharedBoard};

/// The play page's "with bots" queue (crates/control-plane/assets/play/play.js): three
/// heroes per land, so a lone human gets two bots.
pub const PLAY_WITH_BOTS_QUEUE: &str = "hero-defense:3";
const MATCH_SIZE: u64 = 3;
const WATCH_EVERY: Duration = Duration::from_millis(500);
/// A bot sent for a human who then cancelled stops waiting after this long.
const PATIENCE: Duration = Duration::from_secs(60);

/// Runs until dropped (the caller aborts it at shutdown), and never fails: a store hiccup
/// only skips a look at the queue.
pub async fn fill_human_matches(
    store: Arc<dyn Store>,
    client: MatchmakingClient,
    round_timeout: Duration,
) {
    // Their own board: these bots are not part of the demo's summary.
    let board = SharedBoard::default();
    let mut bots = tokio::task::JoinSet::new();
    let mut sent = 0usize;
    let mut every = tokio::time::interval(WATCH_EVERY);
    loop {
        every.tick().await;
        while bots.try_join_next().is_some() {}
        // Bots count as waiting from just before they enqueue until they are matched,
        // so the larger of two readings around the store's never counts a bot as a human.
        let waiting_before = board.lock().waiting as u64;
        let Ok(counts) = store.queue_counts().await else {
            continue;
        };
        let waiting_bots = waiting_before.max(board.lock().waiting as u64);
        let queued_players = counts
            .iter()
            .find(|queue| queue.queue_key == PLAY_WITH_BOTS_QUEUE)
            .map_or(0, |queue| queue.queued_players);
        let humans = queued_players.saturating_sub(waiting_bots);
        if humans == 0 {
            continue;
        }
        let bots_needed = humans.div_ceil(MATCH_SIZE) * MATCH_SIZE - humans;
        for _ in waiting_bots..bots_needed {
            sent += 1;
            let bot = Bot {
                id: format!("fill-bot-{sent:03}"),
                slot: sent % MATCH_SIZE as usize,
                client: client.clone(),
                queue: PLAY_WITH_BOTS_QUEUE.to_owned(),
                board: board.clone(),
                patience: Some(PATIENCE),
            };
            // The bot counts itself as waiting on its first poll, long before the next look.
            bots.spawn(async move { bot.play_round(round_timeout).await });
        }
    }
}
