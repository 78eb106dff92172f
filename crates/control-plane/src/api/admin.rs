//! Health, JWKS and the read-only admin views.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use matchplane_contracts::admin::{
    ClusterView, Health, QueueSummary, QueueSummaryEntry, ServerList, WaitPercentiles,
};
use matchplane_contracts::jwks::JwkSet;
use serde::Serialize;

use matchplane_contracts::ErrorCode;
use matchplane_contracts::internal::{BackfillPlaced, BackfillRequest, BackfillResponse};

use super::{ApiError, AppState};
use crate::auth::AdminAccess;
use crate::clock::duration_ms;
use crate::matcher::{BackfillError, BackfillJob};

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

pub async fn servers(_admin: AdminAccess, State(state): State<AppState>) -> Json<ServerList> {
    let now = state.clock.now_ms();
    Json(ServerList {
        servers: state.registry.views(now),
    })
}

/// Replicas sharing the store, matcher leases and the Redis connection.
pub async fn cluster(_admin: AdminAccess, State(state): State<AppState>) -> Json<ClusterView> {
    Json(state.cluster.view(state.clock.now_ms()).await)
}

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

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rotated {
    kid: String,
}

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
