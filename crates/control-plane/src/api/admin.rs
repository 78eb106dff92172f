//! Health, JWKS and the read-only admin views.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use matchplane_contracts::admin::{
    ClusterView, Health, QueueHistory, QueueSummary, QueueSummaryEntry, RecentMatches, ServerList,
    WaitPercentiles,
};
use matchplane_contracts::jwks::JwkSet;
use serde::Serialize;

use matchplane_contracts::internal::{BackfillPlaced, BackfillRequest, BackfillResponse};
use matchplane_contracts::{ErrorBody, ErrorCode};

use super::{ApiError, AppState};
use crate::auth::AdminAccess;
use crate::clock::duration_ms;
use crate::matcher::{BackfillError, BackfillJob};

#[utoipa::path(
    get,
    path = "/health",
    tag = "public",
    summary = "Liveness and a few vital numbers",
    description = "Open to anyone. 503 (same body, `status: degraded`) when the store cannot be reached.",
    responses(
        (status = 200, description = "Healthy.", body = Health),
        (status = 503, description = "The store is unavailable (`status: degraded`).", body = Health),
    ),
    security(()),
)]
pub async fn health(State(state): State<AppState>) -> impl IntoResponse {
    let now = state.clock.now_ms();
    let store_ok = state.store.ping().await.is_ok();
    let body = Health {
        status: if store_ok { "ok" } else { "degraded" }.to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        store: if store_ok {
            state.store.kind().to_owned()
        } else {
            format!("{} (unavailable)", state.store.kind())
        },
        uptime_ms: now.saturating_sub(state.started_at),
        live_servers: state.registry.live_count(now),
        queued_tickets: state.matcher.queued(),
        current_kid: state.issuer.keyring().current_kid(),
        role: state.cluster.role_name().to_owned(),
        replica_id: state
            .cluster
            .is_shared()
            .then(|| state.cluster.replica_id().to_owned()),
    };
    let status = if store_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}

#[utoipa::path(
    get,
    path = "/.well-known/jwks.json",
    tag = "public",
    summary = "Public keys that verify match tokens (RFC 7517)",
    description = "Open to anyone; game servers fetch it to verify match tokens. Carries the current key \
        and every previous key whose tokens may still be live. Cached for 60 s; verifiers refetch on an unknown `kid`.",
    responses((status = 200, description = "The key set.", body = JwkSet)),
    security(()),
)]
pub async fn jwks(State(state): State<AppState>) -> impl IntoResponse {
    let now = state.clock.now_ms();
    let set: JwkSet = state
        .issuer
        .keyring()
        .jwks(now, duration_ms(state.config.assignment_ttl));
    // Short caching: verifiers refetch on an unknown kid anyway.
    ([(header::CACHE_CONTROL, "public, max-age=60")], Json(set))
}

/// Nearest-rank percentiles of a sample.
fn percentiles(mut samples: Vec<u64>) -> WaitPercentiles {
    if samples.is_empty() {
        return WaitPercentiles::default();
    }
    samples.sort_unstable();
    let rank = |p: f64| {
        let index = ((p * samples.len() as f64).ceil() as usize).saturating_sub(1);
        samples[index.min(samples.len() - 1)]
    };
    WaitPercentiles {
        samples: samples.len() as u64,
        p50_ms: rank(0.50),
        p90_ms: rank(0.90),
        p99_ms: rank(0.99),
        max_ms: samples[samples.len() - 1],
    }
}

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "public",
    summary = "Prometheus metrics",
    description = "Prometheus text exposition (counters, gauges, the time-to-match histogram). Open to \
        anyone on the public listener, unless `--metrics-bind` moves it to a listener of its own.",
    responses((status = 200, description = "Metrics in the Prometheus text format.", body = String,
        content_type = "text/plain; version=0.0.4")),
    security(()),
)]
/// Prometheus text exposition.
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let now = state.clock.now_ms();
    let text = state.metrics.render(&crate::metrics::Gauges {
        queued_tickets: state.matcher.queued(),
        live_servers: state.registry.live_count(now),
        abandoned_lands: state.registry.abandoned_total(),
    });
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

#[utoipa::path(
    get,
    path = "/v1/admin/servers",
    tag = "admin",
    summary = "Registered game servers and their state",
    responses(
        (status = 200, description = "Every known game server.", body = ServerList),
        (status = 401, description = "`UNAUTHENTICATED`: no admin token, or not an accepted one.", body = ErrorBody),
    ),
    security(("adminToken" = [])),
)]
pub async fn servers(_admin: AdminAccess, State(state): State<AppState>) -> Json<ServerList> {
    let now = state.clock.now_ms();
    Json(ServerList {
        servers: state.registry.views(now),
    })
}

#[utoipa::path(
    get,
    path = "/v1/admin/cluster",
    tag = "admin",
    summary = "Replicas sharing the store, matcher leases, the Redis connection",
    responses(
        (status = 200, description = "This replica's view of the cluster (just itself on a single box).", body = ClusterView),
        (status = 401, description = "`UNAUTHENTICATED`: no admin token, or not an accepted one.", body = ErrorBody),
    ),
    security(("adminToken" = [])),
)]
/// Replicas sharing the store, matcher leases and the Redis connection.
pub async fn cluster(_admin: AdminAccess, State(state): State<AppState>) -> Json<ClusterView> {
    Json(state.cluster.view(state.clock.now_ms()).await)
}

#[utoipa::path(
    get,
    path = "/v1/admin/queue/summary",
    tag = "admin",
    summary = "Per-queue counts and waits",
    responses(
        (status = 200, description = "One entry per queue key seen.", body = QueueSummary),
        (status = 401, description = "`UNAUTHENTICATED`: no admin token, or not an accepted one.", body = ErrorBody),
        (status = 503, description = "`STORE_UNAVAILABLE`: the ticket store failed; retry shortly.", body = ErrorBody),
    ),
    security(("adminToken" = [])),
)]
pub async fn queue_summary(
    _admin: AdminAccess,
    State(state): State<AppState>,
) -> Result<Json<QueueSummary>, ApiError> {
    let now = state.clock.now_ms();
    let counts = state.store.queue_counts().await?;
    let mut waits = state.matcher.waits().await.unwrap_or_default();
    Ok(Json(QueueSummary {
        queues: counts
            .into_iter()
            .map(|queue| {
                let waits = waits.remove(&queue.queue_key).unwrap_or_default();
                (queue, waits)
            })
            .map(|(queue, waits)| QueueSummaryEntry {
                queued_wait: percentiles(waits.queued),
                time_to_match: percentiles(waits.recent_matched),
                oldest_wait_ms: queue
                    .oldest_queued_at
                    .map_or(0, |at| now.saturating_sub(at)),
                queue_key: queue.queue_key,
                queued: queue.queued,
                queued_players: queue.queued_players,
                assigned: queue.assigned,
                cancelled: queue.cancelled,
                expired: queue.expired,
                failed: queue.failed,
            })
            .collect(),
    }))
}

#[utoipa::path(
    post,
    path = "/v1/internal/backfill",
    tag = "internal",
    summary = "Fill open slots of a running land from a queue",
    description = "For game servers (through an operator-held credential) and operators: the placed \
        tickets are assigned to the existing land and their watchers get `match.assigned`. Served by \
        replicas that match (`--role all`), not by `--role api`.",
    request_body = BackfillRequest,
    responses(
        (status = 200, description = "The tickets placed (possibly none) and the fit's quality.", body = BackfillResponse),
        (status = 400, description = "`INVALID_REQUEST` (missing `queueKey`/`landId`/`serverId`, no open slot, \
            land not on that server), `INVALID_ATTRIBUTE` (non-finite `teamSkills`), `INVALID_JSON`.", body = ErrorBody),
        (status = 401, description = "`UNAUTHENTICATED`: no admin token, or not an accepted one.", body = ErrorBody),
        (status = 404, description = "`SERVER_NOT_FOUND`: no such live server; `NOT_FOUND`: this replica runs `--role api`.", body = ErrorBody),
        (status = 409, description = "`BACKFILL_DISABLED`: the queue's profile does not allow backfill.", body = ErrorBody),
        (status = 413, description = "`PAYLOAD_TOO_LARGE`: the body exceeds `--max-body-bytes`.", body = ErrorBody),
        (status = 415, description = "`UNSUPPORTED_MEDIA_TYPE`: `Content-Type` is not `application/json`.", body = ErrorBody),
        (status = 500, description = "`INTERNAL`: the matching loop failed or is stopping.", body = ErrorBody),
        (status = 503, description = "`STORE_UNAVAILABLE`: the ticket store failed; retry shortly.", body = ErrorBody),
    ),
    security(("adminToken" = [])),
)]
/// `POST /v1/internal/backfill`: fill open slots of a running land.
pub async fn backfill(
    _admin: AdminAccess,
    State(state): State<AppState>,
    body: super::ApiJson<BackfillRequest>,
) -> Result<Json<BackfillResponse>, ApiError> {
    if !state.config.role.matches() {
        // Backfill fills slots from the matcher's pool, which this replica has none of.
        return Err(ApiError::not_found(
            ErrorCode::NotFound,
            "backfill is served by replicas that match (--role all or matcher), not by --role api",
        ));
    }
    let body = body.into_inner();
    let required = |value: Option<String>, field: &str| {
        value.filter(|value| !value.is_empty()).ok_or_else(|| {
            ApiError::bad_request(ErrorCode::InvalidRequest, format!("{field} is required"))
        })
    };
    let queue_key = required(body.queue_key, "queueKey")?;
    let land_id = required(body.land_id, "landId")?;
    let server_id = required(body.server_id, "serverId")?;
    if body.open_slots.iter().all(|slots| *slots == 0) {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidRequest,
            "openSlots must offer at least one slot",
        ));
    }
    if body
        .team_skills
        .iter()
        .flatten()
        .any(|skill| !skill.is_finite())
    {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidAttribute,
            "teamSkills must be finite numbers",
        ));
    }
    let job = BackfillJob {
        queue_key,
        land_id: land_id.clone(),
        server_id,
        match_id: body.match_id,
        roster: body.roster,
        request: matchplane_matchmaker::BackfillRequest {
            land_id: land_id.clone(),
            open_slots: body.open_slots,
            team_skills: body.team_skills,
            string_args: body.string_args,
            region: body.region,
        },
    };
    let outcome = state.matcher.backfill(job).await.map_err(|err| match err {
        BackfillError::Disabled => ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::BackfillDisabled,
            err.to_string(),
        ),
        BackfillError::UnknownServer => {
            ApiError::not_found(ErrorCode::ServerNotFound, err.to_string())
        }
        BackfillError::WrongLand => {
            ApiError::bad_request(ErrorCode::InvalidRequest, err.to_string())
        }
        BackfillError::Store(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::StoreUnavailable,
            "the ticket store is unavailable; retry shortly",
        ),
        BackfillError::Internal(_) | BackfillError::Stopped => ApiError::internal(err.to_string()),
    })?;
    Ok(Json(BackfillResponse {
        land_id,
        quality: outcome.quality,
        placed: outcome
            .placed
            .into_iter()
            .map(|placed| BackfillPlaced {
                ticket_id: placed.ticket_id,
                members: placed.members,
                team: placed.team,
                assignment_id: placed.assignment_id,
            })
            .collect(),
    }))
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Rotated {
    kid: String,
}

#[utoipa::path(
    post,
    path = "/v1/admin/keys/rotate",
    tag = "admin",
    summary = "Rotate the match-token signing key",
    description = "Makes a new current key; the previous one stays in the JWKS until its tokens expire. \
        Shared through Redis, every replica adopts the new key within a second.",
    responses(
        (status = 200, description = "The new key's id.", body = Rotated),
        (status = 401, description = "`UNAUTHENTICATED`: no admin token, or not an accepted one.", body = ErrorBody),
        (status = 409, description = "`INVALID_REQUEST`: keys come from `--signing-key` and cannot be rotated here.", body = ErrorBody),
        (status = 503, description = "`STORE_UNAVAILABLE`: the shared keyring cannot be reached; retry shortly.", body = ErrorBody),
    ),
    security(("adminToken" = [])),
)]
pub async fn rotate_key(
    _admin: AdminAccess,
    State(state): State<AppState>,
) -> Result<Json<Rotated>, ApiError> {
    let now = state.clock.now_ms();
    let keyring = std::sync::Arc::clone(state.issuer.keyring());
    let algorithm = state.config.signing.algorithm;
    let lifetime = duration_ms(state.config.assignment_ttl);
    let kid = keyring
        .rotate(algorithm, now, lifetime)
        .await
        .map_err(|err| {
            if err.is_unavailable() {
                tracing::error!(error = %err, "key rotation failed");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::StoreUnavailable,
                    "the shared keyring is unavailable; retry shortly",
                )
            } else {
                ApiError::new(
                    StatusCode::CONFLICT,
                    ErrorCode::InvalidRequest,
                    err.to_string(),
                )
            }
        })?;
    tracing::info!(kid = %kid, "signing key rotated");
    Ok(Json(Rotated { kid }))
}

/// `GET /v1/admin/matches/recent`: the newest matches this replica formed.
#[utoipa::path(
    get,
    path = "/v1/admin/matches/recent",
    tag = "admin",
    summary = "The newest matches this replica formed",
    responses(
        (status = 200, description = "Newest first; each replica keeps its own.", body = RecentMatches),
        (status = 401, description = "`UNAUTHENTICATED`: no admin token, or not an accepted one.", body = ErrorBody),
    ),
    security(("adminToken" = [])),
)]
pub async fn recent_matches(
    _admin: AdminAccess,
    State(state): State<AppState>,
) -> Json<RecentMatches> {
    Json(RecentMatches {
        replica_id: shared_replica_id(&state),
        matches: state
            .history
            .recent_matches(crate::history::RECENT_MATCHES_KEPT),
    })
}

/// `GET /v1/admin/queue/history`: per-queue samples over the last minutes.
#[utoipa::path(
    get,
    path = "/v1/admin/queue/history",
    tag = "admin",
    summary = "Per-queue samples (depth, time to match) over the last minutes",
    responses(
        (status = 200, description = "One series per queue; each replica keeps its own.", body = QueueHistory),
        (status = 401, description = "`UNAUTHENTICATED`: no admin token, or not an accepted one.", body = ErrorBody),
    ),
    security(("adminToken" = [])),
)]
pub async fn queue_history(
    _admin: AdminAccess,
    State(state): State<AppState>,
) -> Json<QueueHistory> {
    Json(QueueHistory {
        replica_id: shared_replica_id(&state),
        sample_every_ms: duration_ms(state.history.sample_every()),
        window_ms: duration_ms(crate::history::HISTORY_WINDOW),
        queues: state.history.series(),
    })
}

/// Each replica keeps its own history: say which one answered when there are several.
fn shared_replica_id(state: &AppState) -> Option<String> {
    state
        .cluster
        .is_shared()
        .then(|| state.cluster.replica_id().to_owned())
}
