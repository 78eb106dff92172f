//! Health, JWKS and the read-only admin views.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use matchplane_contracts::admin::{
    Health, QueueSummary, QueueSummaryEntry, ServerList, WaitPercentiles,
};
use matchplane_contracts::jwks::JwkSet;
use serde::Serialize;

use super::{ApiError, AppState};
use crate::clock::duration_ms;

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

pub async fn servers(State(state): State<AppState>) -> Json<ServerList> {
    let now = state.clock.now_ms();
    Json(ServerList {
        servers: state.registry.views(now),
    })
}

pub async fn queue_summary(State(state): State<AppState>) -> Result<Json<QueueSummary>, ApiError> {
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
            })
            .collect(),
    }))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rotated {
    kid: String,
}

pub async fn rotate_key(State(state): State<AppState>) -> Result<Json<Rotated>, ApiError> {
    let now = state.clock.now_ms();
    let keyring = std::sync::Arc::clone(state.issuer.keyring());
    let algorithm = state.config.signing.algorithm;
    let lifetime = duration_ms(state.config.assignment_ttl);
    let kid = tokio::task::spawn_blocking(move || keyring.rotate(algorithm, now, lifetime))
        .await
        .map_err(|err| ApiError::internal(err.to_string()))?
        .map_err(|err| {
            ApiError::new(
                StatusCode::CONFLICT,
                matchplane_contracts::ErrorCode::InvalidRequest,
                err.to_string(),
            )
        })?;
    tracing::info!(kid = %kid, "signing key rotated");
    Ok(Json(Rotated { kid }))
}
