//! The synchronous heart of a land: seats, hooks and state sync.
//!
//! [`LandCore`] knows nothing about tasks or timers; the keeper task drives it from its
//! mailbox and tick schedule, and [`crate::LandHarness`] drives it directly in tests and
//! benches. Both therefore exercise exactly the same sync path.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::ws::Utf8Bytes;
use matchplane_contracts::binary_state::{self, BinaryWriter, KeyTable};
use matchplane_contracts::game::{
    ActionRequest, ActionResult, ErrorBody, EventBody, LandClosed, ServerMessage, close_code,
    error_code,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::auth::{Admission, Rejection};
use crate::diff::JsonMerge;
use crate::flat::{Flat, FlatValue, FlatWriter, Kind, to_flat};
use crate::frame;
use crate::land::{
    CreateInfo, Ctx, JoinRejection, Land, LandSettings, LeaveReason, Outbox, PlayerId, Target,
};

/// A frame for a connection's writer task.
#[derive(Debug, Clone)]
pub(crate) enum Outbound {
    Text(Utf8Bytes),
    /// A binary state frame (`?sync=binary`).
    Binary(Bytes),
    Close {
        code: u16,
        reason: String,
    },
}

/// The keeper's end of one WebSocket connection.
#[derive(Debug, Clone)]
pub(crate) struct ConnHandle {
    pub(crate) id: u64,
    pub(crate) tx: mpsc::Sender<Outbound>,
    /// Closes the socket at once, skipping queued frames (takeover, slow consumer).
    pub(crate) kill: Arc<watch::Sender<Option<(u16, String)>>>,
    /// How this connection asked for state changes (`?sync=`).
    pub(crate) sync: SyncEncoding,
}

/// How a connection receives state changes between snapshots (`?sync=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncEncoding {
    /// `state.patch`: RFC 6902 operations (the default).
    #[default]
    Patch,
    /// `state.merge`: RFC 7386 merge patches, about a third of the bytes for
    /// states whose changes are a few fields deep; a change a merge patch
    /// cannot say (a member set to `null`) still comes as `state.patch`.
    Merge,
    /// The merge patches as binary frames with a land-wide key table
    /// (`matchplane_contracts::binary_state`); a change a merge patch cannot say
    /// comes as a `state.snapshot`, which also carries the table.
    Binary,
}

impl SyncEncoding {
    /// The `?sync=` query value: `patch` (or absent), `merge` or `binary`.
    pub(crate) fn from_query(value: Option<&str>) -> Option<Self> {
        match value {
            None | Some("patch") => Some(Self::Patch),
            Some("merge") => Some(Self::Merge),
            Some("binary") => Some(Self::Binary),
            Some(_) => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivery {
    Sent,
    Full,
    Gone,
}

impl ConnHandle {
    fn send(&self, frame: Utf8Bytes) -> Delivery {
        self.push(Outbound::Text(frame))
    }

    fn push(&self, frame: Outbound) -> Delivery {
        match self.tx.try_send(frame) {
            Ok(()) => Delivery::Sent,
            Err(mpsc::error::TrySendError::Full(_)) => Delivery::Full,
            Err(mpsc::error::TrySendError::Closed(_)) => Delivery::Gone,
        }
    }

    /// Queued close: frames already queued (like `land.closed`) are delivered first.
    pub(crate) fn close(&self, code: u16, reason: &str) {
        let message = Outbound::Close {
            code,
            reason: reason.to_owned(),
        };
        if self.tx.try_send(message).is_err() {
            self.force_close(code, reason);
        }
    }

    pub(crate) fn force_close(&self, code: u16, reason: &str) {
        self.kill.send_replace(Some((code, reason.to_owned())));
    }
}

/// How a connection ended, as seen by its reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Disconnect {
    /// Closed by the client with 1000: the seat is released now.
    Left,
    /// Dropped, errored or closed otherwise: the seat is held for the reconnect grace.
    Dropped,
    /// Closed by the runtime for abuse: the seat is released now.
    Kicked,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SeatSync {
    NeedsJoin,
    NeedsSnapshot,
    Live,
}

#[derive(Debug)]
struct Seat {
    player_id: PlayerId,
    session_key: Option<String>,
    conn: Option<ConnHandle>,
    /// Seq of the last state frame sent on this player's stream.
    seq: u64,
    /// `{"me": view}` (or `{}`) as last sent, the base of the next private diff: kept
    /// flat while the seat's connection syncs by JSON Patch, as the shared view is.
    private: Option<FlatValue>,
    /// The same as a tree, kept instead while the connection syncs by merge patches.
    private_tree: Option<Value>,
    sync: SeatSync,
    grace_deadline: Option<Instant>,
}

/// One land: the game value plus everything the runtime tracks about it.
pub(crate) struct LandCore<L: Land> {
    land: L,
    settings: LandSettings,
    land_id: String,
    land_id_json: String,
    seats: Vec<Seat>,
    seat_ids: Vec<PlayerId>,
    /// The shared view as last sent, the base of the next shared diff; flat, so the
    /// diff reads one buffer rather than a tree gone cold since (see `flat`). Kept
    /// unless every connection syncs by merge patches.
    shared: Option<FlatValue>,
    /// The same view as a tree, kept only while a connection syncs by merge patches
    /// (`?sync=merge`, `?sync=binary`), whose writers read it. One of the two is
    /// always kept; a sync that needs the other makes it from it.
    shared_tree: Option<Value>,
    /// Member names numbered for `?sync=binary` connections, grown as the shared
    /// state names new members.
    keys: KeyTable,
    outbox: Outbox,
    state_touched: bool,
    closing: Option<(LandClosed, u16)>,
    closed: bool,
    empty_since: Option<Instant>,
}

/// Whether a change to the state must be sent now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SyncDue {
    Now,
    /// At the next due sync (a sync rate below the tick rate, or shedding).
    Later,
}

/// What [`LandCore::flush`] reports to its driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct FlushReport {
    pub(crate) synced: bool,
    pub(crate) closed: bool,
}

impl<L: Land> LandCore<L> {
    pub(crate) fn create(
        config: &L::Config,
        settings: LandSettings,
        info: &CreateInfo,
        now: Instant,
    ) -> Self {
        let mut outbox = Outbox::default();
        let land = {
            let mut ctx = Ctx::<L> {
                land_id: &info.land_id,
                now,
                players: &[],
                outbox: &mut outbox,
                _land: std::marker::PhantomData,
            };
            L::on_create(config, &mut ctx, info)
        };
        Self {
            land,
            settings,
            land_id: info.land_id.clone(),
            land_id_json: frame::json_string(&info.land_id),
            seats: Vec::new(),
            seat_ids: Vec::new(),
            shared: Some(FlatValue::new(&Value::Object(Map::new()))),
            shared_tree: None,
            keys: KeyTable::default(),
            outbox,
            state_touched: true,
            closing: None,
            closed: false,
            empty_since: Some(now),
        }
    }

    pub(crate) fn land(&self) -> &L {
        &self.land
    }

    /// For unit tests that start a land from an extreme state.
    #[cfg(test)]
    pub(crate) fn land_mut(&mut self) -> &mut L {
        &mut self.land
    }

    pub(crate) fn settings(&self) -> &LandSettings {
        &self.settings
    }

    pub(crate) fn land_id(&self) -> &str {
        &self.land_id
    }

    pub(crate) fn seat_count(&self) -> usize {
        self.seats.len()
    }

    pub(crate) fn connected_count(&self) -> usize {
        self.seats.iter().filter(|seat| seat.conn.is_some()).count()
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed
    }

    pub(crate) fn is_closing(&self) -> bool {
        self.closing.is_some() || self.outbox.close.is_some()
    }

    fn hook<R>(&mut self, now: Instant, call: impl FnOnce(&mut L, &mut Ctx<'_, L>) -> R) -> R {
        let mut ctx = Ctx::<L> {
            land_id: &self.land_id,
            now,
            players: &self.seat_ids,
            outbox: &mut self.outbox,
            _land: std::marker::PhantomData,
        };
        call(&mut self.land, &mut ctx)
    }

    fn seat_index(&self, player: &str) -> Option<usize> {
        self.seats.iter().position(|seat| seat.player_id == player)
    }

    fn live_seat(&self, player: &str, conn_id: u64) -> bool {
        self.seat_index(player)
            .and_then(|index| self.seats[index].conn.as_ref())
            .is_some_and(|conn| conn.id == conn_id)
    }

    /// Seats a player (new, reconnecting or taking over a live connection).
    pub(crate) fn admit(
        &mut self,
        admission: &Admission,
        conn: ConnHandle,
        admit_new_seats: bool,
        now: Instant,
    ) -> Result<(), Rejection> {
        if self.closed || self.is_closing() {
            return Err(Rejection::new(
                close_code::LAND_FULL_OR_CLOSED,
                error_code::LAND_CLOSED,
                "land is closed",
            ));
        }
        let player = &admission.player_id;
        if let Some(index) = self.seat_index(player) {
            let seat = &mut self.seats[index];
            if seat.session_key != admission.session_key {
                return Err(Rejection::new(
                    close_code::FORBIDDEN,
                    error_code::FORBIDDEN,
                    "this seat belongs to another session",
                ));
            }
            if let Some(previous) = seat.conn.replace(conn) {
                previous.force_close(
                    close_code::SESSION_REPLACED,
                    "replaced by a newer connection",
                );
            }
            seat.sync = SeatSync::NeedsJoin;
            let was_in_grace = seat.grace_deadline.take().is_some();
            if was_in_grace {
                self.hook(now, |land, ctx| land.on_reconnect(ctx, player));
            }
            self.state_touched = true;
            return Ok(());
        }
        if !admit_new_seats {
            return Err(Rejection::new(
                close_code::GOING_AWAY,
                error_code::DRAINING,
                "server is draining and admits no new players",
            ));
        }
        if self.seats.len() >= self.settings.max_players {
            return Err(Rejection::new(
                close_code::LAND_FULL_OR_CLOSED,
                error_code::LAND_FULL,
                format!("land is full ({} players)", self.settings.max_players),
            ));
        }
        self.seats.push(Seat {
            player_id: player.clone(),
            session_key: admission.session_key.clone(),
            conn: Some(conn),
            seq: 0,
            private: Some(FlatValue::new(&Value::Object(Map::new()))),
            private_tree: None,
            sync: SeatSync::NeedsJoin,
            grace_deadline: None,
        });
        self.seat_ids.push(player.clone());
        self.empty_since = None;
        self.state_touched = true;
        if let Err(rejection) = self.hook(now, |land, ctx| land.on_join(ctx, player)) {
            self.remove_seat(player, now);
            return Err(rejection.into());
        }
        Ok(())
    }

    fn remove_seat(&mut self, player: &str, now: Instant) -> Option<Seat> {
        let index = self.seat_index(player)?;
        let seat = self.seats.remove(index);
        self.seat_ids.retain(|id| id != player);
        if self.seats.is_empty() {
            self.empty_since = Some(now);
        }
        Some(seat)
    }

    fn leave(&mut self, player: &PlayerId, reason: LeaveReason, now: Instant) {
        if self.remove_seat(player, now).is_some() {
            self.hook(now, |land, ctx| land.on_leave(ctx, player, reason));
            self.state_touched = true;
        }
    }

    pub(crate) fn disconnect(
        &mut self,
        player: &PlayerId,
        conn_id: u64,
        how: Disconnect,
        now: Instant,
    ) {
        if !self.live_seat(player, conn_id) {
            return;
        }
        match how {
            Disconnect::Left => self.leave(player, LeaveReason::Left, now),
            Disconnect::Kicked => self.leave(player, LeaveReason::Kicked, now),
            Disconnect::Dropped if self.settings.reconnect_grace.is_zero() => {
                self.leave(player, LeaveReason::GraceExpired, now);
            }
            Disconnect::Dropped => {
                if let Some(index) = self.seat_index(player) {
                    let seat = &mut self.seats[index];
                    seat.conn = None;
                    // A grace too long to represent holds the seat until the land closes.
                    seat.grace_deadline = now.checked_add(self.settings.reconnect_grace);
                    self.hook(now, |land, ctx| land.on_disconnect(ctx, player));
                    self.state_touched = true;
                }
            }
        }
    }

    pub(crate) fn action(
        &mut self,
        player: &PlayerId,
        conn_id: u64,
        request: ActionRequest,
        now: Instant,
    ) {
        if !self.live_seat(player, conn_id) {
            return;
        }
        let ActionRequest {
            request_id,
            name,
            payload,
        } = request;
        let outcome = match decode_named::<L::Action>(&name, payload, error_code::UNKNOWN_ACTION) {
            Ok(action) => {
                self.state_touched = true;
                self.hook(now, |land, ctx| land.on_action(ctx, player, action))
                    .map_err(|err| ErrorBody::new(err.code, err.message))
                    .and_then(|output| {
                        serde_json::to_value(output).map_err(|err| {
                            tracing::error!(land_id = %self.land_id, action = %name, error = %err, "action result does not serialise");
                            ErrorBody::new("internal", "action result could not be encoded")
                        })
                    })
            }
            Err(error) => Err(error),
        };
        let result = match outcome {
            Ok(result) => ActionResult {
                request_id,
                ok: true,
                result: Some(result),
                error: None,
            },
            Err(error) => ActionResult {
                request_id,
                ok: false,
                result: None,
                error: Some(error),
            },
        };
        if let Some(frame) = frame::encode(&ServerMessage::ActionResult(result)) {
            self.outbox
                .frames
                .push((Target::Player(player.clone()), frame));
        }
    }

    pub(crate) fn event(
        &mut self,
        player: &PlayerId,
        conn_id: u64,
        event: EventBody,
        now: Instant,
    ) {
        if !self.live_seat(player, conn_id) {
            return;
        }
        match decode_named::<L::ClientEvent>(&event.name, event.payload, error_code::UNKNOWN_EVENT)
        {
            Ok(event) => self.hook(now, |land, ctx| land.on_event(ctx, player, event)),
            Err(error) => {
                if let Some(frame) = frame::encode(&ServerMessage::Error(error)) {
                    self.outbox
                        .frames
                        .push((Target::Player(player.clone()), frame));
                }
            }
        }
    }

    pub(crate) fn request_snapshot(&mut self, player: &PlayerId, conn_id: u64) {
        if !self.live_seat(player, conn_id) {
            return;
        }
        if let Some(index) = self.seat_index(player)
            && self.seats[index].sync == SeatSync::Live
        {
            self.seats[index].sync = SeatSync::NeedsSnapshot;
        }
    }

    pub(crate) fn tick(&mut self, dt: Duration, now: Instant) {
        self.state_touched = true;
        self.hook(now, |land, ctx| land.on_tick(ctx, dt));
    }

    /// Releases seats whose grace ran out; returns when the next deadline (grace or
    /// dispose) is due.
    pub(crate) fn expire(&mut self, now: Instant) -> Option<Instant> {
        let expired: Vec<PlayerId> = self
            .seats
            .iter()
            .filter(|seat| seat.grace_deadline.is_some_and(|deadline| deadline <= now))
            .map(|seat| seat.player_id.clone())
            .collect();
        for player in &expired {
            self.leave(player, LeaveReason::GraceExpired, now);
        }
        self.next_deadline()
    }

    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let grace = self
            .seats
            .iter()
            .filter_map(|seat| seat.grace_deadline)
            .min();
        let dispose = self
            .empty_since
            .and_then(|since| since.checked_add(self.settings.dispose_after_empty));
        match (grace, dispose) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub(crate) fn should_dispose(&self, now: Instant) -> bool {
        self.seats.is_empty()
            && self
                .empty_since
                .and_then(|since| since.checked_add(self.settings.dispose_after_empty))
                .is_some_and(|deadline| deadline <= now)
    }

    /// Closes the land from outside (server shutdown).
    pub(crate) fn close_from_runtime(&mut self, reason: LandClosed, code: u16) {
        if self.closing.is_none() && !self.closed {
            self.closing = Some((reason, code));
        }
    }

    /// Sends what the last hooks produced: state changes first, then events and action
    /// results in the order the land produced them, then a pending close.
    pub(crate) fn flush(&mut self) -> FlushReport {
        self.flush_with(SyncDue::Now)
    }

    /// [`Self::flush`], or with [`SyncDue::Later`] a change to the state waits for a
    /// later sync together with the events and results produced since (they may
    /// refer to it), unless something needs a sync now: a joining seat, a snapshot,
    /// [`crate::Ctx::request_sync`] or the close.
    pub(crate) fn flush_with(&mut self, due: SyncDue) -> FlushReport {
        let mut report = FlushReport::default();
        if self.closed {
            return report;
        }
        if let Some(reason) = self.outbox.close.take()
            && self.closing.is_none()
        {
            self.closing = Some((reason, close_code::NORMAL));
        }
        let pending_seat = self
            .seats
            .iter()
            .any(|seat| seat.conn.is_some() && seat.sync != SeatSync::Live);
        let sync_now = self.outbox.sync_requested
            || pending_seat
            || self.closing.is_some()
            || (self.state_touched && due == SyncDue::Now);
        if sync_now {
            self.sync();
            report.synced = true;
            self.state_touched = false;
        } else if self.state_touched {
            // Events and results may refer to the change held back: they wait with it.
            return report;
        }
        self.outbox.sync_requested = false;
        self.deliver_frames();
        if let Some((reason, code)) = self.closing.take() {
            self.finish_close(&reason, code);
            report.closed = true;
        }
        report
    }

    fn deliver_frames(&mut self) {
        for (target, frame) in self.outbox.frames.drain(..) {
            match target {
                Target::All => {
                    for seat in &self.seats {
                        deliver(seat, frame.clone());
                    }
                }
                Target::Player(player) => {
                    if let Some(seat) = self.seats.iter().find(|seat| seat.player_id == player) {
                        deliver(seat, frame);
                    }
                }
            }
        }
    }

    fn finish_close(&mut self, reason: &LandClosed, code: u16) {
        tracing::info!(land_id = %self.land_id, reason = %reason.reason, players = self.seats.len(), "land closed");
        let frame = frame::encode(&ServerMessage::LandClosed(reason.clone()));
        for seat in self.seats.drain(..) {
            if let Some(conn) = seat.conn {
                if let Some(frame) = &frame {
                    let _ = conn.send(frame.clone());
                }
                conn.close(code, &reason.reason);
            }
        }
        self.seat_ids.clear();
        self.closed = true;
    }

    fn sync(&mut self) {
        let connected_with = |patch: bool| {
            self.seats.iter().any(|seat| {
                seat.conn
                    .as_ref()
                    .is_some_and(|conn| (conn.sync == SyncEncoding::Patch) == patch)
            })
        };
        // JSON Patch connections diff flat states, merge-patch ones read trees; a land
        // with neither connected keeps the flat form (one of the two is always kept).
        let merging = connected_with(false);
        let keep_flat = connected_with(true) || !merging;
        let capacity = self
            .shared
            .as_ref()
            .map_or(0, |flat| flat.len() + flat.len() / 8);
        let mut current = match Forms::of_state(self.land.state(), merging, capacity) {
            Ok(forms) => forms,
            Err(err) => {
                tracing::error!(land_id = %self.land_id, error = %err, "land state does not serialise to a JSON object; not synced");
                return;
            }
        };
        let mut before = Forms {
            flat: self.shared.take(),
            tree: self.shared_tree.take(),
        };
        // Each encoding of the shared change is made once per land, when a
        // seat first needs it, and spliced into every seat's frame. The binary
        // one is made first: it may number new member names, and a seat joining
        // in this round must get the table with them.
        let mut shared_ops: Option<String> = None;
        let mut shared_merge: Option<Option<String>> = None;
        let binary_live = self.seats.iter().any(|seat| {
            seat.sync == SeatSync::Live
                && seat
                    .conn
                    .as_ref()
                    .is_some_and(|conn| conn.sync == SyncEncoding::Binary)
        });
        let shared_binary = if binary_live {
            binary_members(
                before.tree(),
                current.tree(),
                BinaryWriter::entering(&mut self.keys),
            )
        } else {
            None
        };
        let mut shared_document: Option<String> = None;
        let mut keys_json: Option<String> = None;
        for seat in &mut self.seats {
            let Some(conn) = &seat.conn else {
                continue;
            };
            let seat_merging = conn.sync != SyncEncoding::Patch;
            let mut private_before = Forms {
                flat: seat.private.take(),
                tree: seat.private_tree.take(),
            };
            let view = self.land.private_view(&seat.player_id);
            let mut wrapped = match Forms::of_private(view.as_ref(), seat_merging) {
                Ok(forms) => forms,
                Err(err) => {
                    tracing::error!(land_id = %self.land_id, error = %err, "private view does not serialise");
                    Forms::empty_object()
                }
            };
            let mut document = |current: &mut Forms, wrapped: &mut Forms| {
                let shared_text = shared_document.get_or_insert_with(|| current.json());
                let private_text = wrapped.member_json("me");
                let keys = (conn.sync == SyncEncoding::Binary).then(|| {
                    keys_json
                        .get_or_insert_with(|| frame::json_names(self.keys.names()))
                        .clone()
                });
                (
                    frame::state_document(shared_text, private_text.as_deref()),
                    keys,
                )
            };
            match seat.sync {
                SeatSync::NeedsJoin | SeatSync::NeedsSnapshot => {
                    let (document, keys) = document(&mut current, &mut wrapped);
                    let frame = if seat.sync == SeatSync::NeedsJoin {
                        frame::join_ok(
                            &self.land_id_json,
                            &seat.player_id,
                            seat.seq,
                            &document,
                            keys.as_deref(),
                        )
                    } else {
                        frame::snapshot(seat.seq + 1, &document, keys.as_deref())
                    };
                    if conn.send(frame) == Delivery::Sent {
                        if seat.sync == SeatSync::NeedsSnapshot {
                            seat.seq += 1;
                        }
                        seat.sync = SeatSync::Live;
                    }
                }
                SeatSync::Live => {
                    let next = seat.seq + 1;
                    let frame = match conn.sync {
                        SyncEncoding::Binary => {
                            let private = binary_members(
                                private_before.tree(),
                                wrapped.tree(),
                                BinaryWriter::looking_up(&self.keys),
                            );
                            match shared_binary.as_ref().zip(private) {
                                Some(((definitions, shared), (_, private))) => (!shared.is_empty()
                                    || !private.is_empty())
                                .then(|| {
                                    Outbound::Binary(Bytes::from(binary_state::state_merge_frame(
                                        next,
                                        definitions,
                                        shared,
                                        &private,
                                    )))
                                }),
                                // A change a merge patch cannot say: the whole view,
                                // with the key table.
                                None => {
                                    let (document, keys) = document(&mut current, &mut wrapped);
                                    Some(Outbound::Text(frame::snapshot(
                                        next,
                                        &document,
                                        keys.as_deref(),
                                    )))
                                }
                            }
                        }
                        SyncEncoding::Merge => {
                            let shared = shared_merge
                                .get_or_insert_with(|| merge_members(before.tree(), current.tree()))
                                .as_deref();
                            shared
                                .zip(merge_members(private_before.tree(), wrapped.tree()))
                                .map(|(shared, private)| {
                                    (!shared.is_empty() || !private.is_empty())
                                        .then(|| frame::merge(next, shared, &private))
                                })
                                // A change a merge patch cannot say: a JSON Patch.
                                .unwrap_or_else(|| {
                                    let shared = shared_ops.get_or_insert_with(|| {
                                        ops_list(before.flat(), current.flat())
                                    });
                                    patch_frame(shared, private_before.flat(), next, wrapped.flat())
                                })
                                .map(Outbound::Text)
                        }
                        SyncEncoding::Patch => {
                            let shared = shared_ops
                                .get_or_insert_with(|| ops_list(before.flat(), current.flat()));
                            patch_frame(shared, private_before.flat(), next, wrapped.flat())
                                .map(Outbound::Text)
                        }
                    };
                    if let Some(frame) = frame {
                        match conn.push(frame) {
                            Delivery::Sent => seat.seq += 1,
                            // A gap: the next sync sends a snapshot instead of patches.
                            Delivery::Full => seat.sync = SeatSync::NeedsSnapshot,
                            Delivery::Gone => {}
                        }
                    }
                }
            }
            if seat_merging {
                seat.private_tree = Some(wrapped.into_tree());
            } else {
                seat.private = Some(wrapped.into_flat());
            }
        }
        let (flat, tree) = current.keep(keep_flat, merging);
        self.shared = flat;
        self.shared_tree = tree;
    }
}

/// A view (the shared state, or a seat's `{"me": view}`) in the forms a sync needs:
/// flat for JSON Patch diffs, a tree for merge patches. It starts in one, written
/// straight from the land's types, and the other is made from it on demand.
struct Forms {
    flat: Option<FlatValue>,
    tree: Option<Value>,
}

impl Forms {
    fn empty_object() -> Self {
        Self {
            flat: None,
            tree: Some(Value::Object(Map::new())),
        }
    }

    /// The land's state as a tree if `tree` (merge-patch connections read it), else
    /// flat, without a tree in between. Refused unless it is a JSON object.
    fn of_state<T: Serialize>(state: &T, tree: bool, capacity: usize) -> Result<Self, String> {
        let forms = if tree {
            let value = serde_json::to_value(state).map_err(|err| err.to_string())?;
            Self {
                flat: None,
                tree: Some(value),
            }
        } else {
            match to_flat(state, capacity) {
                Ok(flat) => Self {
                    flat: Some(flat),
                    tree: None,
                },
                // What the flat writer refuses (a `RawValue`) goes through a tree.
                Err(_) => Self {
                    flat: None,
                    tree: Some(serde_json::to_value(state).map_err(|err| err.to_string())?),
                },
            }
        };
        let object = match (&forms.flat, &forms.tree) {
            (Some(flat), _) => flat.root().is_object(),
            (None, Some(tree)) => tree.is_object(),
            (None, None) => false,
        };
        if object {
            Ok(forms)
        } else {
            Err("the state is not a JSON object".to_owned())
        }
    }

    /// `{"me": view}`, or `{}` without a view.
    fn of_private<T: Serialize>(view: Option<&T>, tree: bool) -> Result<Self, String> {
        let Some(view) = view else {
            return Ok(Self::empty_object());
        };
        if !tree {
            let mut writer = FlatWriter::with_capacity(64);
            let open = writer.open_object(1);
            writer.key("me");
            if view.serialize(&mut writer).is_ok() {
                writer.close(open);
                return Ok(Self {
                    flat: Some(writer.finish()),
                    tree: None,
                });
            }
        }
        let view = serde_json::to_value(view).map_err(|err| err.to_string())?;
        let mut wrapped = Map::new();
        wrapped.insert("me".to_owned(), view);
        Ok(Self {
            flat: None,
            tree: Some(Value::Object(wrapped)),
        })
    }

    fn flat(&mut self) -> Flat<'_> {
        let tree = &self.tree;
        self.flat
            .get_or_insert_with(|| FlatValue::new(tree.as_ref().unwrap_or(&Value::Null)))
            .root()
    }

    fn tree(&mut self) -> &Value {
        let flat = &self.flat;
        self.tree
            .get_or_insert_with(|| flat.as_ref().map_or(Value::Null, FlatValue::to_value))
    }

    /// The view as compact JSON.
    fn json(&self) -> String {
        match (&self.tree, &self.flat) {
            (Some(tree), _) => tree.to_string(),
            (None, Some(flat)) => flat.root().to_json(),
            (None, None) => "null".to_owned(),
        }
    }

    /// Member `name` of the view as compact JSON, if it has one.
    fn member_json(&self, name: &str) -> Option<String> {
        match (&self.tree, &self.flat) {
            (Some(tree), _) => tree.get(name).map(Value::to_string),
            (None, Some(flat)) => match flat.root().kind() {
                Kind::Object(mut members) => members
                    .find(|(key, _)| *key == name.as_bytes())
                    .map(|(_, member)| member.to_json()),
                _ => None,
            },
            (None, None) => None,
        }
    }

    fn into_flat(mut self) -> FlatValue {
        self.flat();
        self.flat.unwrap_or_default()
    }

    fn into_tree(mut self) -> Value {
        self.tree();
        self.tree.unwrap_or_default()
    }

    /// The forms asked for, made if need be.
    fn keep(mut self, flat: bool, tree: bool) -> (Option<FlatValue>, Option<Value>) {
        if flat {
            self.flat();
        }
        if tree {
            self.tree();
        }
        (self.flat.filter(|_| flat), self.tree.filter(|_| tree))
    }
}

/// A seat's `state.patch` numbered `seq`: the shared operations (made once per land)
/// and those turning its private view `before` into `after`.
fn patch_frame(shared_ops: &str, before: Flat<'_>, seq: u64, after: Flat<'_>) -> Option<Utf8Bytes> {
    let private_ops = ops_list(before, after);
    (!shared_ops.is_empty() || !private_ops.is_empty())
        .then(|| frame::patch(seq, shared_ops, &private_ops))
}

fn deliver(seat: &Seat, frame: Utf8Bytes) {
    if let Some(conn) = &seat.conn
        && conn.send(frame) == Delivery::Full
    {
        // Events and results cannot be re-derived like state, so a client that cannot
        // keep up is disconnected; it may reconnect within the grace.
        tracing::warn!(player_id = %seat.player_id, "client too slow, disconnecting");
        conn.force_close(close_code::SLOW_CONSUMER, "client too slow");
    }
}

/// The members of the merge patch turning object `before` into object `after`
/// (`"key":value,…`, empty for no change), or `None` when a merge patch cannot
/// say the change.
fn merge_members(before: &Value, after: &Value) -> Option<String> {
    let mut out = Vec::new();
    crate::diff::merge_into(before, after, &mut JsonMerge, &mut out).ok()?;
    String::from_utf8(out).ok()
}

/// The same merge patch in the binary encoding: the definitions of the names the
/// writer numbered, and the members; `None` when a merge patch cannot say it.
fn binary_members(
    before: &Value,
    after: &Value,
    mut writer: BinaryWriter<'_>,
) -> Option<(Vec<u8>, Vec<u8>)> {
    let mut members = Vec::new();
    crate::diff::merge_into(before, after, &mut writer, &mut members).ok()?;
    Some((writer.into_definitions(), members))
}

/// The operations turning `before` into `after` as a JSON array's inside (`op,op`),
/// empty for no change.
fn ops_list(before: Flat<'_>, after: Flat<'_>) -> String {
    let mut out = Vec::new();
    crate::diff::diff_into(before, after, &mut out);
    String::from_utf8(out).unwrap_or_else(|err| {
        tracing::error!(error = %err, "patch encoding is not UTF-8");
        String::new()
    })
}

/// Decodes `{name, payload}` into a land's action or event enum.
fn decode_named<T: DeserializeOwned>(
    name: &str,
    payload: Value,
    unknown_code: &str,
) -> Result<T, ErrorBody> {
    let empty_object = payload.as_object().is_some_and(Map::is_empty);
    let attempt = |with_payload: bool, payload: &Value| {
        let mut fields = Map::new();
        fields.insert("name".to_owned(), Value::from(name));
        if with_payload && !payload.is_null() {
            fields.insert("payload".to_owned(), payload.clone());
        }
        serde_json::from_value::<T>(Value::Object(fields))
    };
    match attempt(true, &payload) {
        Ok(decoded) => Ok(decoded),
        // Unit variants reject `{}`; clients commonly send it for "no payload".
        Err(_) if empty_object && attempt(false, &payload).is_ok() => attempt(false, &payload)
            .map_err(|err| ErrorBody::new(error_code::INVALID_PAYLOAD, err.to_string())),
        Err(err) => {
            let message = err.to_string();
            if message.contains("unknown variant") {
                Err(ErrorBody::new(
                    unknown_code,
                    format!("unknown name {name:?}"),
                ))
            } else {
                Err(ErrorBody::new(
                    error_code::INVALID_PAYLOAD,
                    format!("invalid payload for {name:?}: {message}"),
                ))
            }
        }
    }
}

impl From<JoinRejection> for Rejection {
    fn from(rejection: JoinRejection) -> Self {
        let code = if rejection.close_code == close_code::LAND_FULL_OR_CLOSED {
            error_code::LAND_FULL
        } else {
            error_code::FORBIDDEN
        };
        Rejection::new(rejection.close_code, code, rejection.message)
    }
}
