//! Rust client SDK for matchplane: the player's journey from the queue to a land.
//!
//! 1. [`MatchmakingClient`] talks to the control plane: [`enqueue`](MatchmakingClient::enqueue),
//!    [`status`](MatchmakingClient::status), [`cancel`](MatchmakingClient::cancel) and
//!    [`wait_for_assignment`](MatchmakingClient::wait_for_assignment), which listens on the
//!    `/realtime` push socket and falls back to polling with backoff when the socket is
//!    unavailable or drops. [`RealtimeWatch`] multiplexes many tickets on one socket.
//! 2. [`LandConnection`] joins the land named by an assignment, keeps a local mirror of
//!    the player's view (`join.ok` + RFC 6902 patches, `sync.request` on a sequence gap),
//!    sends actions and awaits their `action.result`, streams events, and reconnects
//!    within the land's reconnect grace.
//! 3. When a game server dies, the control plane requeues its players: `ticket.requeued`
//!    and `match.lost` make [`MatchmakingClient::wait_for_assignment`] wait for the next
//!    `match.assigned`, and [`MatchmakingClient::join_land`] re-checks the ticket after a
//!    refused connection or 4404 `land_lost` and follows the new assignment.
//!
//! Against a control plane running with `--player-auth jwt`, give the client the player's
//! JWT with [`MatchmakingClient::with_player_token`] (or a provider that refreshes it).
//!
//! Every failure is a typed error: [`MatchmakingError`], [`LandError`], [`ActionError`].
//! `docs/client.md` walks through the journey with examples.
#![forbid(unsafe_code)]

mod error;
mod land;
mod matchmaking;
mod realtime;
mod recovery;
mod token;
mod url;

pub use error::{ActionError, JoinError, LandError, MatchmakingError};
pub use land::{
    ConnectOptions, ConnectionStats, LandConnection, LandEvent, LandEvents, LandHandle,
    ReconnectPolicy, StateSync,
};
pub use matchmaking::{Delivery, MatchmakingClient, PollBackoff};
pub use realtime::{MAX_TICKETS_PER_SOCKET, RealtimeSubscriber, RealtimeWatch};
pub use recovery::{JoinedLand, Recheck, RecoveryPolicy};
pub use url::{assignment_url, dev_land_url, percent_encode};

/// The wire types, re-exported so SDK users need no second dependency.
pub use matchplane_contracts as contracts;
