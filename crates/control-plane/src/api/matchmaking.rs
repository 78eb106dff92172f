//! `/v1/matchmaking/*`: enqueue, status, cancel.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use futures_util::FutureExt as _;
use matchplane_contracts::matchmaking::{
    CancelRequest, CancelResponse, EnqueueRequest, EnqueueResponse, StatusResponse, TicketStatus,
};
use matchplane_contracts::{ErrorBody, ErrorCode};
use matchplane_matchmaker::{InsertError, TicketId};

use super::{ApiError, ApiJson, ApiPath, AppState};
use crate::auth::{PlayerIdentity, forbidden, may_access};
use crate::clock::{Millis, duration_ms, format_rfc3339};
use crate::events::TicketEvent;
use crate::matcher::engine_ticket;
use crate::metrics;
use crate::store::{CancelOutcome, CreateOutcome, StoreError, TicketRecord};
use crate::validate;

#[utoipa::path(
    post,
    path = "/v1/matchmaking/enqueue",
    tag = "matchmaking",
    summary = "Queue a ticket for a player or a party",
    description = "Validates the ticket, stores it durably (a 201 survives a crash) and hands it to the \
        matcher. Sending the same `groupId` again returns the group's live ticket instead of a second one. \
        With `--player-auth jwt` the token's `sub` must be one of `members` and becomes the ticket's owner; \
        with `--player-auth none` (the default) no credential is needed. Rate-limited per client address \
        (and per player with `--player-auth jwt`).",
    request_body = EnqueueRequest,
    responses(
        (status = 201, description = "Queued (or the group's existing live ticket).", body = EnqueueResponse),
        (status = 400, description = "The body breaks an input rule: `INVALID_JSON`, `INVALID_REQUEST`, \
            `QUEUE_KEY_REQUIRED`, `INVALID_QUEUE_KEY`, `MEMBERS_REQUIRED`, `TOO_MANY_MEMBERS`, \
            `DUPLICATE_MEMBER`, `INVALID_MEMBER`, `GROUP_SIZE_MISMATCH`, `FIELD_TOO_LONG`, `TOO_MANY_FIELDS`, \
            `INVALID_ATTRIBUTE`, `INVALID_LATENCY`, `REGION_REQUIRED`, `CONSTRAINTS_TOO_LARGE`, \
            `TICKET_TOO_LARGE` (no match of the queue can hold this party).", body = ErrorBody),
        (status = 401, description = "`UNAUTHENTICATED`: `--player-auth jwt` and no valid player token.", body = ErrorBody),
        (status = 403, description = "`FORBIDDEN`: the player token's subject is not one of `members`.", body = ErrorBody),
        (status = 404, description = "`QUEUE_NOT_FOUND`: queue profiles are configured and none matches `queueKey` (see `--open-queues`).", body = ErrorBody),
        (status = 409, description = "`PLAYER_ALREADY_QUEUED`: a member is already in another queued ticket (the message names it).", body = ErrorBody),
        (status = 413, description = "`PAYLOAD_TOO_LARGE`: the body exceeds `--max-body-bytes`.", body = ErrorBody),
        (status = 415, description = "`UNSUPPORTED_MEDIA_TYPE`: `Content-Type` is not `application/json`.", body = ErrorBody),
        (status = 429, description = "`RATE_LIMITED`: too many requests from this address or player.", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Whole seconds to wait before retrying."))),
        (status = 503, description = "`STORE_UNAVAILABLE`: the ticket store failed; retry shortly.", body = ErrorBody),
    ),
    security((), ("playerJwt" = [])),
)]
pub async fn enqueue(
    player: PlayerIdentity,
    State(state): State<AppState>,
    body: ApiJson<EnqueueRequest>,
) -> Result<(StatusCode, Json<EnqueueResponse>), ApiError> {
    let ticket = enqueue_ticket(&state, &player, body.into_inner(), Completion::Guarded).await?;
    Ok((
        StatusCode::CREATED,
        Json(EnqueueResponse {
            ticket_id: ticket.ticket_id,
            status: ticket.status,
        }),
    ))
}

/// Who sees a started store write through when the caller's client goes away.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Completion {
    /// The caller may be dropped half-way (an HTTP handler, when its client hangs
    /// up): a write still pending finishes in a task of its own.
    Guarded,
    /// The caller drives the future to its end even when its client is gone (a
    /// realtime session drains its enqueues in flight), so no task is needed.
    DrivenByCaller,
}

/// Validates, stores durably and hands the ticket to the matcher; returns the
/// group's existing live ticket instead when there is one.
pub(crate) async fn enqueue_ticket(
    state: &AppState,
    player: &PlayerIdentity,
    request: EnqueueRequest,
    completion: Completion,
) -> Result<TicketRecord, ApiError> {
    let valid = validate::enqueue(request, &state.config.limits)
        .map_err(|invalid| ApiError::bad_request(invalid.code, invalid.message))?;
    if let Some(subject) = &player.0
        && !valid.members.iter().any(|member| member == subject)
    {
        return Err(forbidden(
            "the player token's subject must be one of the ticket's members (its leader)",
        ));
    }
    let known_queue = state.config.open_queues
        || state.config.engine.queues.is_empty()
        || state
            .ticket_rules
            .lock()
            .profile(&valid.queue_key)
            .is_some();
    if !known_queue {
        return Err(ApiError::not_found(
            ErrorCode::QueueNotFound,
            format!(
                "no queue profile is configured for queueKey {}",
                valid.queue_key
            ),
        ));
    }
    let now = state.clock.now_ms();
    let ticket_id = new_ticket_id(now);
    let request = valid.request;
    // The authenticated player owns the ticket; without player authentication
    // the first member speaks for it.
    let owner = match &player.0 {
        Some(subject) => subject.clone(),
        None => valid.members.first().cloned().unwrap_or_default(),
    };
    let record = TicketRecord {
        group_id: valid
            .group_id
            .unwrap_or_else(|| TicketRecord::generated_group_id(&ticket_id)),
        ticket_id,
        queue_key: valid.queue_key,
        owner,
        members: valid.members,
        region: request.region,
        constraints: request.constraints,
        attributes: request.attributes,
        tags: request.tags,
        string_args: request.string_args,
        latencies: request.latencies,
        status: TicketStatus::Queued,
        enqueued_at: now,
        expires_at: now.saturating_add(duration_ms(state.config.ticket_ttl)),
        updated_at: now,
        assignment: None,
        assignment_expires_at: None,
        assigned_instance: None,
        failure_reason: None,
    };
    let fits = state
        .ticket_rules
        .lock()
        .check(&record.queue_key, &engine_ticket(TicketId(0), &record));
    if let Err(refused) = fits {
        return Err(refused_by_queue(refused));
    }
    // Durable before acknowledged: the 201 promises the ticket survives a crash.
    // Stored and handed to the matcher even if the caller goes away meanwhile: a
    // ticket stored but never handed over would wait unmatched.
    let stored = store_and_hand_over(state.clone(), record, now);
    let outcome = match completion {
        Completion::Guarded => to_completion(stored).await??,
        Completion::DrivenByCaller => stored.await?,
    };
    let ticket = match outcome {
        CreateOutcome::Created(ticket) => ticket,
        CreateOutcome::Existing(ticket) => {
            metrics::inc(&state.metrics.tickets_deduplicated);
            ticket
        }
        CreateOutcome::PlayerAlreadyQueued {
            player_id,
            ticket_id,
        } => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                ErrorCode::PlayerAlreadyQueued,
                format!(
                    "player {player_id} is already queued in ticketId {ticket_id}; cancel it or wait for its match"
                ),
            ));
        }
    };
    Ok(ticket)
}

async fn store_and_hand_over(
    state: AppState,
    record: TicketRecord,
    now: Millis,
) -> Result<CreateOutcome, StoreError> {
    let outcome = state.store.create_ticket(record, now).await?;
    if let CreateOutcome::Created(ticket) = &outcome {
        tracing::debug!(ticket_id = %ticket.ticket_id, queue_key = %ticket.queue_key, "ticket queued");
        state.matcher.enqueued(ticket.clone());
        metrics::inc(&state.metrics.tickets_enqueued);
    }
    Ok(outcome)
}

/// Runs a store write and what must follow it (telling the matcher, the event
/// feed) to the end, even if the caller's future is dropped half-way: a client that
/// hangs up on its request, or a socket closed behind its actions, cancels that
/// future at its next await. A write the store finishes at once (the memory store)
/// runs right here; one it cannot (a disk or network write) finishes in a task of
/// its own, whose hand-offs cost ≈ 6 µs per call.
async fn to_completion<T: Send + 'static>(
    work: impl Future<Output = T> + Send + 'static,
) -> Result<T, ApiError> {
    let mut work = Box::pin(work);
    if let Some(done) = (&mut work).now_or_never() {
        return Ok(done);
    }
    tokio::spawn(work)
        .await
        .map_err(|_| ApiError::internal("the store write did not complete"))
}

fn refused_by_queue(refused: InsertError) -> ApiError {
    let code = match refused {
        InsertError::TooLarge { .. } => ErrorCode::TicketTooLarge,
        InsertError::MissingAttribute(_) | InsertError::InvalidAttribute(_) => {
            ErrorCode::InvalidAttribute
        }
        InsertError::NoRegion => ErrorCode::RegionRequired,
        InsertError::TooManyEntries => ErrorCode::TooManyFields,
        InsertError::EmptyTicket => ErrorCode::MembersRequired,
        InsertError::Duplicate(_) => ErrorCode::InvalidRequest,
        InsertError::DuplicatePlayer(_) => ErrorCode::DuplicateMember,
        InsertError::PlayerQueued { .. } => ErrorCode::PlayerAlreadyQueued,
        InsertError::InvalidQueueKey { .. } => ErrorCode::InvalidQueueKey,
    };
    ApiError::bad_request(
        code,
        format!("this queue cannot take the ticket: {refused}"),
    )
}

/// The ticket if it exists and `player` may see it. A ticket of someone else
/// answers exactly like a missing one, so ids cannot be probed.
pub(crate) async fn visible_ticket(
    state: &AppState,
    player: &PlayerIdentity,
    ticket_id: &str,
) -> Result<TicketRecord, ApiError> {
    match state.store.ticket(ticket_id).await? {
        Some(ticket) if may_access(player, &ticket) => Ok(ticket),
        _ => Err(ApiError::not_found(
            ErrorCode::TicketNotFound,
            format!("no ticket {ticket_id}"),
        )),
    }
}

#[utoipa::path(
    get,
    path = "/v1/matchmaking/status/{ticketId}",
    tag = "matchmaking",
    summary = "Read a ticket's status and, once matched, its assignment",
    description = "The source of truth a client polls (`/realtime` is the fast path). With \
        `--player-auth jwt` only the ticket's owner and members see it: anyone else gets the same 404 as \
        for a ticket that does not exist. Rate-limited per client address (and per player).",
    params(("ticketId" = String, Path, description = "The id returned by enqueue.")),
    responses(
        (status = 200, description = "The ticket; `assignment` is set once it is `assigned`.", body = StatusResponse),
        (status = 400, description = "`INVALID_REQUEST`: the path is not valid UTF-8.", body = ErrorBody),
        (status = 401, description = "`UNAUTHENTICATED`: `--player-auth jwt` and no valid player token.", body = ErrorBody),
        (status = 404, description = "`TICKET_NOT_FOUND`: no such ticket, or not one this player may see.", body = ErrorBody),
        (status = 429, description = "`RATE_LIMITED`: too many requests from this address or player.", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Whole seconds to wait before retrying."))),
        (status = 503, description = "`STORE_UNAVAILABLE`: the ticket store failed; retry shortly.", body = ErrorBody),
    ),
    security((), ("playerJwt" = [])),
)]
pub async fn status(
    player: PlayerIdentity,
    State(state): State<AppState>,
    ticket_id: ApiPath<String>,
) -> Result<Json<StatusResponse>, ApiError> {
    let ticket_id = ticket_id.into_inner();
    let ticket = visible_ticket(&state, &player, &ticket_id)
        .await?
        .without_spent_tokens(state.clock.now_ms());
    Ok(Json(StatusResponse {
        ticket_id: ticket.ticket_id,
        status: ticket.status,
        assignment: ticket.assignment,
        queue_key: Some(ticket.queue_key),
        enqueued_at: Some(format_rfc3339(ticket.enqueued_at)),
        reason: ticket.failure_reason,
    }))
}

#[utoipa::path(
    post,
    path = "/v1/matchmaking/cancel",
    tag = "matchmaking",
    summary = "Cancel a queued ticket",
    description = "Cancels the ticket if it is still queued; a ticket already assigned, expired or \
        failed answers `cancelled: false` with its status (201 either way, as the seed does). Watchers \
        on `/realtime` receive `ticket.cancelled`. Rate-limited per client address (and per player).",
    request_body = CancelRequest,
    responses(
        (status = 201, description = "`cancelled` says whether this call cancelled it; `status` is the ticket's status now.", body = CancelResponse),
        (status = 400, description = "`TICKET_ID_REQUIRED`, `INVALID_JSON`, `INVALID_REQUEST`.", body = ErrorBody),
        (status = 401, description = "`UNAUTHENTICATED`: `--player-auth jwt` and no valid player token.", body = ErrorBody),
        (status = 404, description = "`TICKET_NOT_FOUND`: no such ticket, or not one this player may see.", body = ErrorBody),
        (status = 413, description = "`PAYLOAD_TOO_LARGE`: the body exceeds `--max-body-bytes`.", body = ErrorBody),
        (status = 415, description = "`UNSUPPORTED_MEDIA_TYPE`: `Content-Type` is not `application/json`.", body = ErrorBody),
        (status = 429, description = "`RATE_LIMITED`: too many requests from this address or player.", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Whole seconds to wait before retrying."))),
        (status = 503, description = "`STORE_UNAVAILABLE`: the ticket store failed; retry shortly.", body = ErrorBody),
    ),
    security((), ("playerJwt" = [])),
)]
pub async fn cancel(
    player: PlayerIdentity,
    State(state): State<AppState>,
    body: ApiJson<CancelRequest>,
) -> Result<(StatusCode, Json<CancelResponse>), ApiError> {
    let ticket_id = match body.into_inner().ticket_id {
        Some(id) if !id.is_empty() => id,
        _ => {
            return Err(ApiError::bad_request(
                ErrorCode::TicketIdRequired,
                "ticketId is required",
            ));
        }
    };
    if player.0.is_some() {
        // Ownership never changes, so checking before the atomic cancel is safe.
        visible_ticket(&state, &player, &ticket_id).await?;
    }
    let now = state.clock.now_ms();
    // Watchers hear of the cancel and the matcher lets the ticket go even if the
    // caller hangs up meanwhile.
    let cancel = {
        let state = state.clone();
        let ticket_id = ticket_id.clone();
        async move {
            let outcome = state.store.cancel_ticket(&ticket_id, now).await?;
            if let CancelOutcome::Cancelled(ticket) = &outcome {
                state.matcher.removed(ticket.ticket_id.clone());
                metrics::inc(&state.metrics.tickets_cancelled);
                state.events.publish(TicketEvent::Cancelled {
                    ticket_id: ticket.ticket_id.clone(),
                });
            }
            Ok::<_, StoreError>(outcome)
        }
    };
    let (cancelled, status) = match to_completion(cancel).await?? {
        CancelOutcome::NotFound => {
            return Err(ApiError::not_found(
                ErrorCode::TicketNotFound,
                format!("no ticket {ticket_id}"),
            ));
        }
        CancelOutcome::Cancelled(_) => (true, TicketStatus::Cancelled),
        CancelOutcome::NotQueued(ticket) => (false, ticket.status),
    };
    Ok((
        StatusCode::CREATED,
        Json(CancelResponse {
            cancelled,
            status: Some(status),
        }),
    ))
}

/// A UUIDv7 whose first 48 bits are the enqueue time: the durable store's
/// indexes keyed by ticket id then take new tickets at their end instead of
/// dirtying a random page per ticket (fewer pages written per commit, fuller
/// pages on disk). The other 74 bits are all random, with no per-millisecond
/// counter, so one ticket id says nothing about another's.
fn new_ticket_id(now: Millis) -> String {
    uuid::Builder::from_unix_timestamp_millis(now, &rand::random())
        .into_uuid()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::new_ticket_id;

    #[test]
    fn ticket_ids_sort_by_enqueue_time_and_keep_74_random_bits() {
        let earlier = new_ticket_id(1_795_792_408_210);
        let later = new_ticket_id(1_795_792_408_211);
        assert!(earlier < later, "{earlier} !< {later}");
        let parsed = uuid::Uuid::parse_str(&earlier).unwrap();
        assert_eq!(parsed.get_version_num(), 7);
        let (secs, nanos) = parsed.get_timestamp().unwrap().to_unix();
        assert_eq!(
            secs * 1000 + u64::from(nanos) / 1_000_000,
            1_795_792_408_210
        );
        // Ids of the same millisecond share nothing past the timestamp: no
        // counter that would let one ticket's id predict its neighbour's.
        let same_ms: Vec<u128> = (0..64)
            .map(|_| uuid::Uuid::parse_str(&new_ticket_id(7)).unwrap().as_u128())
            .collect();
        let random_bits = |id: u128| id & ((1u128 << 80) - 1) & !(0xF << 76);
        let distinct: std::collections::HashSet<u128> =
            same_ms.iter().map(|&id| random_bits(id) >> 62).collect();
        assert!(
            distinct.len() > 48,
            "rand_a + top of rand_b repeat: {distinct:?}"
        );
    }
}
