//! `/v1/matchmaking/*`: enqueue, status, cancel.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use matchplane_contracts::ErrorCode;
use matchplane_contracts::matchmaking::{
    CancelRequest, CancelResponse, EnqueueRequest, EnqueueResponse, StatusResponse, TicketStatus,
};
use matchplane_matchmaker::{InsertError, TicketId};

use super::{ApiError, ApiJson, AppState};
use crate::clock::{duration_ms, format_rfc3339};
use crate::events::TicketEvent;
use crate::matcher::engine_ticket;
use crate::metrics;
use crate::store::{CancelOutcome, CreateOutcome, TicketRecord};
use crate::validate;

pub async fn enqueue(
    State(state): State<AppState>,
    body: ApiJson<EnqueueRequest>,
) -> Result<(StatusCode, Json<EnqueueResponse>), ApiError> {
    let ticket = enqueue_ticket(&state, body.into_inner()).await?;
    Ok((
        StatusCode::CREATED,
        Json(EnqueueResponse {
            ticket_id: ticket.ticket_id,
            status: ticket.status,
        }),
    ))
}

/// Validates, stores durably and hands the ticket to the matcher; returns the
/// group's existing live ticket instead when there is one.
pub(crate) async fn enqueue_ticket(
    state: &AppState,
    request: EnqueueRequest,
) -> Result<TicketRecord, ApiError> {
    let valid = validate::enqueue(request, &state.config.limits)
        .map_err(|invalid| ApiError::bad_request(invalid.code, invalid.message))?;
    let now = state.clock.now_ms();
    let ticket_id = uuid::Uuid::new_v4().to_string();
    let request = valid.request;
    let record = TicketRecord {
        group_id: valid
            .group_id
            .unwrap_or_else(|| format!("group-{ticket_id}")),
        ticket_id,
        queue_key: valid.queue_key,
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
    };
    let fits = state
        .ticket_rules
        .lock()
        .check(&record.queue_key, &engine_ticket(TicketId(0), &record));
    if let Err(refused) = fits {
        return Err(refused_by_queue(refused));
    }
    // Durable before acknowledged: the 201 promises the ticket survives a crash.
    let ticket = match state.store.create_ticket(record, now).await? {
        CreateOutcome::Created(ticket) => {
            tracing::debug!(ticket_id = %ticket.ticket_id, queue_key = %ticket.queue_key, "ticket queued");
            state.matcher.enqueued(ticket.clone());
            metrics::inc(&state.metrics.tickets_enqueued);
            ticket
        }
        CreateOutcome::Existing(ticket) => {
            metrics::inc(&state.metrics.tickets_deduplicated);
            ticket
        }
    };
    Ok(ticket)
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
    };
    ApiError::bad_request(
        code,
        format!("this queue cannot take the ticket: {refused}"),
    )
}

pub async fn status(
    State(state): State<AppState>,
    Path(ticket_id): Path<String>,
) -> Result<Json<StatusResponse>, ApiError> {
    let ticket = state.store.ticket(&ticket_id).await?.ok_or_else(|| {
        ApiError::not_found(ErrorCode::TicketNotFound, format!("no ticket {ticket_id}"))
    })?;
    Ok(Json(StatusResponse {
        ticket_id: ticket.ticket_id,
        status: ticket.status,
        assignment: ticket.assignment,
        queue_key: Some(ticket.queue_key),
        enqueued_at: Some(format_rfc3339(ticket.enqueued_at)),
    }))
}

pub async fn cancel(
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
    let now = state.clock.now_ms();
    let (cancelled, status) = match state.store.cancel_ticket(&ticket_id, now).await? {
        CancelOutcome::NotFound => {
            return Err(ApiError::not_found(
                ErrorCode::TicketNotFound,
                format!("no ticket {ticket_id}"),
            ));
        }
        CancelOutcome::Cancelled(ticket) => {
            state.matcher.removed(ticket.ticket_id.clone());
            metrics::inc(&state.metrics.tickets_cancelled);
            state.events.publish(TicketEvent::Cancelled {
                ticket_id: ticket.ticket_id,
            });
            (true, TicketStatus::Cancelled)
        }
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
