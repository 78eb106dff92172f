//! The REST API described as OpenAPI 3.1 (`GET /openapi.json`) and Swagger UI (`GET /api`).
//!
//! The description is generated from each handler's `#[utoipa::path]` and the contract
//! types' `ToSchema` derives, so bodies and codes cannot drift from the code. Which routes
//! exist is the router's business: [`ROUTES`] lists them, and tests hold the router, this
//! list and the served description together (a route added to the router but not here,
//! or listed here but not annotated, fails them).
//!
//! Both endpoints are open: the description is public knowledge (the same as the docs)
//! and names no secret; the credentials it mentions are still checked by each route.

use std::sync::Arc;

use axum::Router;
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use matchplane_contracts::realtime::{RealtimeAction, RealtimeEnvelope, RealtimeEvent};
use matchplane_contracts::{ErrorBody, ErrorCode, ProvisioningResponse};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{ApiError, ApiPath, admin, matchmaking, provisioning, realtime};

/// Every operation the public router serves, as the router spells its path. Each must
/// have a `#[utoipa::path]` on its handler, listed in [`ApiDoc`]'s `paths(...)`.
pub const ROUTES: &[(Method, &str)] = &[
    (Method::GET, "/health"),
    (Method::GET, "/.well-known/jwks.json"),
    (Method::GET, "/metrics"),
    (Method::GET, "/realtime"),
    (Method::POST, "/v1/matchmaking/enqueue"),
    (Method::GET, "/v1/matchmaking/status/{ticket_id}"),
    (Method::POST, "/v1/matchmaking/cancel"),
    (Method::POST, "/v1/provisioning/servers/register"),
    (Method::DELETE, "/v1/provisioning/servers/{server_id}"),
    (Method::GET, "/v1/admin/servers"),
    (Method::GET, "/v1/admin/cluster"),
    (Method::GET, "/v1/admin/queue/summary"),
    (Method::GET, "/v1/admin/queue/history"),
    (Method::GET, "/v1/admin/matches/recent"),
    (Method::POST, "/v1/admin/keys/rotate"),
    (Method::POST, "/v1/internal/backfill"),
];

/// Paths served on purpose without an operation in the description: pages for a
/// browser (and their assets beneath them) and the description itself.
pub const UNDOCUMENTED: &[&str] = &["/openapi.json", "/api", "/dashboard", "/play"];

/// Whether `path` is one of [`UNDOCUMENTED`] or an asset beneath one.
pub fn is_undocumented(path: &str) -> bool {
    UNDOCUMENTED.iter().any(|page| {
        path == *page
            || path
                .strip_prefix(page)
                .is_some_and(|rest| rest.starts_with('/'))
    })
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "matchplane control plane",
        description = "Matchmaking (tickets, status, cancel, the `/realtime` push socket), game-server \
provisioning, match-token keys (JWKS) and the admin views of a matchplane control plane. Generated \
from the code (`crates/control-plane/src/api`, `crates/contracts`).

**Errors.** Every failure a client can cause is a documented status with a stable `code` (schema \
`ErrorCode`; switch on it, never on `message`). Matchmaking, admin and internal endpoints answer \
`{\"error\": {\"code\", \"message\"}}` (`ErrorBody`); provisioning endpoints answer the seed's \
`{\"success\": false, \"error\": {\"code\", \"message\", \"retryable\"}}` (`ProvisioningResponse`). \
Any endpoint may also answer 404 `NOT_FOUND` / 405 `METHOD_NOT_ALLOWED` for a wrong path or method, \
500 `INTERNAL`, and, at the connection level, 503 `TOO_MANY_CONNECTIONS` with `Retry-After` when \
`--max-connections` / `--max-connections-per-ip` are reached.

**Credentials** (`Authorization: Bearer …`): `adminToken` for `/v1/admin/*` and \
`/v1/internal/*`; `registrationToken` for `/v1/provisioning/*`; `playerJwt` for matchmaking and \
`/realtime` only when the control plane runs `--player-auth jwt` (with the default \
`--player-auth none` they need no credential: the ticket id is the capability). `/health`, the \
JWKS, `/metrics`, this description and Swagger UI are open."
    ),
    paths(
        admin::health,
        admin::jwks,
        admin::metrics,
        realtime::upgrade,
        matchmaking::enqueue,
        matchmaking::status,
        matchmaking::cancel,
        provisioning::register,
        provisioning::deregister,
        admin::servers,
        admin::cluster,
        admin::queue_summary,
        admin::queue_history,
        admin::recent_matches,
        admin::rotate_key,
        admin::backfill,
    ),
    components(schemas(
        ErrorCode,
        ErrorBody,
        ProvisioningResponse,
        RealtimeEnvelope,
        RealtimeEvent,
        RealtimeAction
    )),
    modifiers(&SecuritySchemes),
    tags(
        (name = "matchmaking", description = "Clients: queue a ticket, read its status, cancel it."),
        (name = "realtime", description = "Clients: the `/realtime` WebSocket (assignment push)."),
        (name = "provisioning", description = "Game servers: register, heartbeat, deregister (seed envelope)."),
        (name = "admin", description = "Operators: read-only views and key rotation (admin token)."),
        (name = "internal", description = "Operators and game servers: backfill a running land (admin token)."),
        (name = "public", description = "Open to anyone: health, JWKS, metrics."),
    )
)]
pub struct ApiDoc;

/// The credentials of docs/security.md, named as the operations' `security` refers to them.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let bearer = |description: &str| {
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(description))
        };
        components.add_security_scheme(
            "adminToken",
            SecurityScheme::Http(
                bearer(
                    "The operator's admin token (`--admin-token`, `--admin-token-file`, or generated \
                     into `<data-dir>/admin-token` on first start).",
                )
                .build(),
            ),
        );
        components.add_security_scheme(
            "registrationToken",
            SecurityScheme::Http(
                bearer(
                    "A game server's registration token (`--registration-token`, \
                     `--registration-token-file`, or generated into `<data-dir>/registration-token`). \
                     A server id stays with the token that registered it.",
                )
                .build(),
            ),
        );
        components.add_security_scheme(
            "playerJwt",
            SecurityScheme::Http(
                bearer(
                    "A player JWT from your identity provider, required only with `--player-auth jwt` \
                     (verified against `--player-jwks-url`, `--player-issuer`, `--player-audience`; its \
                     `sub` is the player). With `--player-auth none`, the default, matchmaking needs no \
                     credential. On `/realtime` it may also come as `?access_token=`.",
                )
                .bearer_format("JWT")
                .build(),
            ),
        );
    }
}

/// The generated description.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// `GET /openapi.json` and Swagger UI under `GET /api/`, its assets embedded in the binary.
///
/// Every link is relative (the redirect to `api/`, the UI's `../openapi.json`), so both
/// keep working behind a proxy that mounts the control plane under a prefix (`/match/`).
pub(crate) fn docs_router<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    let description = Arc::new(document());
    let ui_config = Arc::new(utoipa_swagger_ui::Config::new(["../openapi.json"]));
    let root_config = Arc::clone(&ui_config);
    Router::new()
        .route(
            "/openapi.json",
            get(move || {
                let description = Arc::clone(&description);
                async move { axum::Json(description.as_ref()).into_response() }
            }),
        )
        .route("/api", get(|| async { Redirect::to("api/") }))
        .route(
            "/api/",
            get(move || async move { swagger_ui_file("", &root_config) }),
        )
        .route(
            "/api/{*asset}",
            get(move |asset: ApiPath<String>| async move {
                swagger_ui_file(&asset.into_inner(), &ui_config)
            }),
        )
}

/// One file of the embedded Swagger UI (`""` is its page).
fn swagger_ui_file(asset: &str, config: &Arc<utoipa_swagger_ui::Config<'static>>) -> Response {
    match utoipa_swagger_ui::serve(asset, Arc::clone(config)) {
        Ok(Some(file)) => {
            let mut response = (
                StatusCode::OK,
                [(header::CONTENT_TYPE, file.content_type)],
                file.bytes,
            )
                .into_response();
            if file.gzpipped {
                response.headers_mut().insert(
                    header::CONTENT_ENCODING,
                    header::HeaderValue::from_static("gzip"),
                );
            }
            response
        }
        Ok(None) => ApiError::<super::Plain>::not_found(
            ErrorCode::NotFound,
            format!("no Swagger UI file {asset}"),
        )
        .into_response(),
        Err(error) => {
            ApiError::<super::Plain>::internal(format!("Swagger UI: {error}")).into_response()
        }
    }
}
