//! Self-registration with the control plane: register on start, heartbeat with
//! fresh load, retry with backoff while the control plane is down (the planes
//! may start in any order), and on shutdown drain then deregister.

use std::ops::RangeInclusive;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use matchplane_contracts::ProvisioningResponse;
use matchplane_contracts::provisioning::{Capacity, Load, RegisterRequest};
use matchplane_edge::secret::Secret;

use crate::manager::LandManager;

#[derive(Debug, Clone)]
pub struct ProvisioningSettings {
    pub control_plane_url: String,
    pub server_id: String,
    /// Address the server is bound to (control-plane internal use).
    pub host: String,
    pub port: u16,
    /// Client-facing address when clients go through a load balancer.
    pub connect_host: Option<String>,
    pub connect_port: Option<u16>,
    pub connect_scheme: Option<String>,
    pub connect_path_prefix: Option<String>,
    pub region: Option<String>,
    pub capacity: Capacity,
    /// Until the control plane says otherwise: a register answer's `heartbeatIntervalMs`
    /// replaces it (see [`ProvisioningAgent::heartbeat_interval`]).
    pub heartbeat_interval: Duration,
    /// This process's instance id (fresh per start), sent with every register/heartbeat.
    pub instance_id: String,
    /// Sent as `Authorization: Bearer` on register, heartbeat and deregister; the control
    /// plane refuses these calls without it. `Debug` shows only a fingerprint.
    pub registration_token: Option<Secret>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProvisioningError {
    #[error("control plane unreachable at {url}: {message}")]
    Unreachable { url: String, message: String },
    #[error("control plane refused the registration ({status}): {body}")]
    Refused { status: u16, body: String },
    /// 401 or 403: the registration token is missing, wrong, or not the one this
    /// server id was registered with.
    #[error(
        "control plane refused this server's credential ({status} {code}): {message}; \
         pass --registration-token or --registration-token-file with the control plane's registration token"
    )]
    Credential {
        status: u16,
        code: String,
        message: String,
    },
}

impl ProvisioningError {
    /// Failures of the same kind are logged once, not once per heartbeat.
    fn kind(&self) -> (&'static str, u16) {
        match self {
            Self::Unreachable { .. } => ("unreachable", 0),
            Self::Refused { status, .. } => ("refused", *status),
            Self::Credential { status, .. } => ("credential", *status),
        }
    }
}

pub struct ProvisioningAgent {
    settings: ProvisioningSettings,
    manager: LandManager,
    http: reqwest::Client,
    /// The interval in force: the flag's, until a register answer names the control plane's.
    interval_ms: AtomicU64,
}

/// What a register answer's `heartbeatIntervalMs` may set: a broken or hostile answer
/// must neither turn the heartbeat into a busy loop nor silence it past any TTL.
pub const ADOPTED_HEARTBEAT_BOUNDS: RangeInclusive<Duration> =
    Duration::from_millis(100)..=Duration::from_secs(60);

/// Longest wait between two attempts while the control plane is unreachable.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

impl ProvisioningAgent {
    pub fn new(settings: ProvisioningSettings, manager: LandManager) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_default();
        let interval_ms = AtomicU64::new(millis(settings.heartbeat_interval));
        Self {
            settings,
            manager,
            http,
            interval_ms,
        }
    }

    /// The heartbeat interval in force: `heartbeat_interval` of the settings until the
    /// control plane's register answer names its own (bounded by [`ADOPTED_HEARTBEAT_BOUNDS`]).
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms.load(Ordering::Relaxed))
    }

    fn adopt_interval(&self, answer: &ProvisioningResponse) {
        let Some(asked_ms) = answer.heartbeat_interval_ms else {
            return;
        };
        let asked = Duration::from_millis(asked_ms);
        let adopted = asked.clamp(
            *ADOPTED_HEARTBEAT_BOUNDS.start(),
            *ADOPTED_HEARTBEAT_BOUNDS.end(),
        );
        let previous = self.interval_ms.swap(millis(adopted), Ordering::Relaxed);
        if previous != millis(adopted) {
            tracing::info!(
                configured = ?self.settings.heartbeat_interval,
                previous = ?Duration::from_millis(previous),
                adopted = ?adopted,
                asked = ?asked,
                "heartbeat interval set by the control plane"
            );
        }
    }

    pub fn settings(&self) -> &ProvisioningSettings {
        &self.settings
    }

    fn base(&self) -> &str {
        self.settings.control_plane_url.trim_end_matches('/')
    }

    /// What the next heartbeat says, with the current load.
    pub fn registration(&self, draining: bool) -> RegisterRequest {
        let load = self.manager.load();
        let land_types: Vec<String> = self.manager.registry().names().map(str::to_owned).collect();
        RegisterRequest {
            server_id: Some(self.settings.server_id.clone()),
            host: Some(self.settings.host.clone()),
            port: Some(self.settings.port),
            land_type: land_types.first().cloned(),
            land_types,
            connect_host: self.settings.connect_host.clone(),
            connect_port: self.settings.connect_port,
            connect_scheme: self.settings.connect_scheme.clone(),
            connect_path_prefix: self.settings.connect_path_prefix.clone(),
            region: self.settings.region.clone(),
            capacity: Some(self.settings.capacity),
            load: Some(Load {
                lands: u32::try_from(load.lands).unwrap_or(u32::MAX),
                players: u32::try_from(load.players).unwrap_or(u32::MAX),
                sync_stretch: Some(self.manager.sync_stretch()),
            }),
            draining: draining || load.draining,
            land_ids: Some(load.land_ids_by_type.into_values().flatten().collect()),
            instance_id: Some(self.settings.instance_id.clone()),
        }
    }

    fn authorized(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.settings.registration_token {
            Some(token) => request.bearer_auth(token.expose()),
            None => request,
        }
    }

    /// One register/heartbeat call; adopts the interval the answer names, if any.
    pub async fn heartbeat(&self, draining: bool) -> Result<(), ProvisioningError> {
        let url = format!("{}/v1/provisioning/servers/register", self.base());
        let request = self
            .authorized(self.http.post(&url))
            .json(&self.registration(draining));
        if let Some(answer) = send(request, url, false).await? {
            self.adopt_interval(&answer);
        }
        Ok(())
    }

    pub async fn deregister(&self) -> Result<(), ProvisioningError> {
        let url = format!(
            "{}/v1/provisioning/servers/{}",
            self.base(),
            self.settings.server_id
        );
        // Already gone (e.g. forgotten after a long outage) is as good as removed.
        send(self.authorized(self.http.delete(&url)), url, true)
            .await
            .map(drop)
    }

    /// Registers, then heartbeats every interval until the task is aborted.
    /// While the control plane is unreachable it retries with exponential backoff.
    pub fn spawn(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let agent = Arc::clone(self);
        tokio::spawn(async move { agent.heartbeat_loop().await })
    }

    async fn heartbeat_loop(&self) {
        let mut backoff = Duration::from_millis(200);
        let mut registered = false;
        let mut last_failure: Option<(&'static str, u16)> = None;
        loop {
            match self.heartbeat(false).await {
                Ok(()) => {
                    if !registered {
                        tracing::info!(server_id = %self.settings.server_id,
                            instance_id = %self.settings.instance_id, url = %self.base(),
                            heartbeat_interval = ?self.heartbeat_interval(),
                            "registered with the control plane");
                        registered = true;
                    } else if last_failure.is_some() {
                        tracing::info!("control plane reachable again");
                    }
                    last_failure = None;
                    backoff = Duration::from_millis(200);
                    tokio::time::sleep(self.heartbeat_interval()).await;
                }
                Err(err) => {
                    if last_failure != Some(err.kind()) {
                        log_failure(&err, "heartbeat failed; retrying with backoff");
                        last_failure = Some(err.kind());
                    }
                    tokio::time::sleep(backoff.min(self.heartbeat_interval())).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Stops taking new lands, tells the control plane (`draining: true`), lets
    /// running lands finish for up to `drain_timeout` while still heartbeating,
    /// then deregisters. Returns whether every land finished in time.
    pub async fn drain(&self, drain_timeout: Duration) -> bool {
        self.manager.start_draining();
        if let Err(err) = self.heartbeat(true).await {
            log_failure(&err, "could not announce draining");
        }
        let deadline = tokio::time::Instant::now() + drain_timeout;
        let finished = loop {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            let wait = remaining.min(self.heartbeat_interval());
            if self.manager.wait_until_empty(wait).await {
                break true;
            }
            if remaining <= wait {
                break false;
            }
            if let Err(err) = self.heartbeat(true).await {
                log_failure(&err, "draining heartbeat failed");
            }
        };
        match self.deregister().await {
            Ok(()) => {
                tracing::info!(server_id = %self.settings.server_id, "deregistered from the control plane")
            }
            Err(err) => log_failure(
                &err,
                "deregistration failed; the control plane will expire this server",
            ),
        }
        finished
    }
}

/// A refused credential or an oversized heartbeat is an operator's matter that
/// retrying cannot fix, and the control plane expires a server it stops hearing
/// from (its matches are then lost): an error.
fn log_failure(err: &ProvisioningError, what: &str) {
    match err {
        ProvisioningError::Credential { .. } => tracing::error!(error = %err, "{what}"),
        ProvisioningError::Refused { status: 413, .. } => tracing::error!(
            error = %err,
            "{what}: the heartbeat lists every open land and outgrew the control plane's \
             --max-register-body-bytes; raise it there"
        ),
        _ => tracing::warn!(error = %err, "{what}"),
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Sends one provisioning call; a non-success status is a refusal carrying
/// the control plane's answer (404 counts as success when `not_found_is_ok`).
/// On success, the answer's body if it is a provisioning envelope.
async fn send(
    request: reqwest::RequestBuilder,
    url: String,
    not_found_is_ok: bool,
) -> Result<Option<ProvisioningResponse>, ProvisioningError> {
    let response = request
        .send()
        .await
        .map_err(|err| ProvisioningError::Unreachable {
            url,
            message: err.to_string(),
        })?;
    let status = response.status();
    if status.is_success() {
        // An answer without a body (or another shape) is still a success.
        let body = response.bytes().await.unwrap_or_default();
        return Ok(serde_json::from_slice(&body).ok());
    }
    if not_found_is_ok && status == reqwest::StatusCode::NOT_FOUND {
        return Ok(None);
    }
    let body = response.text().await.unwrap_or_default();
    if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
        let (code, message) = match serde_json::from_str::<ProvisioningResponse>(&body) {
            Ok(ProvisioningResponse {
                error: Some(error), ..
            }) => (error.code.to_string(), error.message),
            _ => (String::new(), body.chars().take(200).collect()),
        };
        return Err(ProvisioningError::Credential {
            status: status.as_u16(),
            code,
            message,
        });
    }
    Err(ProvisioningError::Refused {
        status: status.as_u16(),
        body,
    })
}
