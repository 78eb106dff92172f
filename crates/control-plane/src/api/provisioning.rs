//! `/v1/provisioning/servers/*`: game servers register, heartbeat, deregister.

use axum::Json;
use axum::extract::State;
use matchplane_contracts::ErrorCode;
use matchplane_contracts::ProvisioningResponse;
use matchplane_contracts::provisioning::RegisterRequest;

use super::{ApiError, ApiJson, ApiPath, AppState, Provisioning};
use crate::auth::{ServerAccess, forbidden};
use crate::store::ServerRecord;
use crate::validate;

type ProvisioningResult = Result<Json<ProvisioningResponse>, ApiError<Provisioning>>;

/// Registration and heartbeat are the same call: the latest report wins.
#[utoipa::path(
    post,
    path = "/v1/provisioning/servers/register",
    tag = "provisioning",
    summary = "Register a game server, or heartbeat",
    description = "A game server sends this on start and then every `heartbeatIntervalMs` with its load, \
        open land ids and draining flag; the latest report wins. A `serverId` belongs to the registration \
        token that registered it while the server is alive (heard from within `--server-ttl`): another \
        accepted token gets 403. A new `instanceId` under the same id means the previous process died; \
        its lands are released. Errors use the seed's provisioning envelope.",
    request_body = RegisterRequest,
    responses(
        (status = 200, description = "Registered; `heartbeatIntervalMs` is how often to heartbeat.", body = ProvisioningResponse),
        (status = 400, description = "`SERVER_ID_REQUIRED`, `INVALID_SERVER`, `FIELD_TOO_LONG`, `TOO_MANY_FIELDS`, \
            `INVALID_JSON`, `INVALID_REQUEST`.", body = ProvisioningResponse),
        (status = 401, description = "`UNAUTHENTICATED`: no registration token, or not an accepted one.", body = ProvisioningResponse),
        (status = 403, description = "`FORBIDDEN`: this `serverId` was registered with another registration token.", body = ProvisioningResponse),
        (status = 413, description = "`PAYLOAD_TOO_LARGE`: the body exceeds `--max-register-body-bytes` (default 8 MiB: a heartbeat lists every open land, about 45 bytes each).", body = ProvisioningResponse),
        (status = 415, description = "`UNSUPPORTED_MEDIA_TYPE`: `Content-Type` is not `application/json`.", body = ProvisioningResponse),
        (status = 503, description = "`STORE_UNAVAILABLE` (`retryable: true`): the store failed; retry shortly.", body = ProvisioningResponse),
    ),
    security(("registrationToken" = [])),
)]
pub async fn register(
    access: ServerAccess,
    State(state): State<AppState>,
    body: ApiJson<RegisterRequest, Provisioning>,
) -> ProvisioningResult {
    let valid = validate::register(body.into_inner(), &state.config.limits)
        .map_err(|invalid| ApiError::bad_request(invalid.code, invalid.message))?;
    let now = state.clock.now_ms();
    let previous = state.registry.get(&valid.server_id);
    if let Some(previous) = &previous
        && !state.registry.is_expired(previous, now)
    {
        check_owner(previous, &access)?;
    }
    let request = valid.request;
    let instance_id = match request.instance_id {
        Some(id)
            if id.is_empty() || id.len() > 128 || !id.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            return Err(ApiError::bad_request(
                ErrorCode::InvalidServer,
                "instanceId must be 1..=128 visible ASCII characters",
            ));
        }
        other => other,
    };
    let record = ServerRecord {
        server_id: valid.server_id,
        host: valid.host,
        port: valid.port,
        land_types: valid.land_types,
        connect_host: request.connect_host,
        connect_port: request.connect_port,
        connect_scheme: request.connect_scheme,
        connect_path_prefix: request.connect_path_prefix,
        region: request.region,
        capacity: request.capacity,
        load: request.load,
        draining: request.draining,
        land_ids: request.land_ids,
        registered_at: previous
            .as_ref()
            .map_or(now, |previous| previous.registered_at),
        last_seen: now,
        registered_with: Some(access.credential),
        instance_id,
    };
    // Shared through Redis, every heartbeat is written (one round trip, no
    // fsync): it is how the other replicas hear that the server is alive.
    let persisted = state.cluster.is_shared() || state.registry.needs_persisting(&record);
    if persisted {
        state.store.put_server(record.clone()).await?;
    }
    let server_id = record.server_id.clone();
    if previous.is_none() {
        tracing::info!(server_id = %record.server_id, land_types = ?record.land_types, "game server registered");
    } else if previous.as_ref().is_some_and(|p| !p.draining) && record.draining {
        tracing::info!(server_id = %record.server_id, "game server draining");
    }
    if let Some(lost) = state.registry.upsert(record) {
        tracing::warn!(server_id = %lost.record.server_id, old_instance = ?lost.record.instance_id,
            "game server restarted under the same id; releasing what its previous instance held");
        state.matcher.server_gone(lost);
    }
    if persisted {
        state.registry.mark_persisted(&server_id, now);
    }
    Ok(Json(ProvisioningResponse {
        heartbeat_interval_ms: Some(state.registry.heartbeat_ms()),
        ..ProvisioningResponse::ok()
    }))
}

#[utoipa::path(
    delete,
    path = "/v1/provisioning/servers/{serverId}",
    tag = "provisioning",
    summary = "Deregister a game server",
    description = "A draining game server leaves; anything it still held is released (queued again or \
        failed, per `--requeue-joined`). Only the registration token that registered the id may delete it. \
        Errors use the seed's provisioning envelope.",
    params(("serverId" = String, Path, description = "The id the server registered with.")),
    responses(
        (status = 200, description = "Deregistered.", body = ProvisioningResponse),
        (status = 400, description = "`INVALID_REQUEST`: the path is not valid UTF-8.", body = ProvisioningResponse),
        (status = 401, description = "`UNAUTHENTICATED`: no registration token, or not an accepted one.", body = ProvisioningResponse),
        (status = 403, description = "`FORBIDDEN`: this `serverId` was registered with another registration token.", body = ProvisioningResponse),
        (status = 404, description = "`SERVER_NOT_FOUND`: no server is registered under this id.", body = ProvisioningResponse),
        (status = 503, description = "`STORE_UNAVAILABLE` (`retryable: true`): the store failed; retry shortly.", body = ProvisioningResponse),
    ),
    security(("registrationToken" = [])),
)]
pub async fn deregister(
    access: ServerAccess,
    State(state): State<AppState>,
    server_id: ApiPath<String, Provisioning>,
) -> ProvisioningResult {
    let server_id = server_id.into_inner();
    let previous = state.registry.get(&server_id);
    if let Some(previous) = &previous {
        check_owner(previous, &access)?;
    }
    let pending_lands = state.registry.pending_lands(&server_id);
    let known_in_store = state.store.remove_server(&server_id).await?;
    let known_in_memory = state.registry.remove(&server_id);
    if let Some(previous) = previous {
        // Normally a draining server leaves empty; anything it still held is released.
        state.matcher.server_gone(crate::registry::LostServer {
            record: previous,
            why: crate::registry::LossKind::Deregistered,
            pending_lands,
        });
    }
    if !known_in_store && !known_in_memory {
        return Err(ApiError::not_found(
            ErrorCode::ServerNotFound,
            format!("no server {server_id} is registered"),
        ));
    }
    tracing::info!(server_id = %server_id, "game server deregistered");
    Ok(Json(ProvisioningResponse::ok()))
}

/// A server id belongs to the credential that registered it: another game
/// server (or a leaked second token) cannot take it over or delete it. On
/// register the claim lapses with the server's TTL, so a crashed server can come
/// back under a new credential once it is considered gone.
fn check_owner(
    previous: &ServerRecord,
    access: &ServerAccess,
) -> Result<(), ApiError<Provisioning>> {
    match &previous.registered_with {
        Some(owner) if *owner != access.credential => Err(forbidden(format!(
            "server {} was registered with another credential",
            previous.server_id
        ))),
        _ => Ok(()),
    }
}
