//! The control plane's matchmaking API: REST calls plus waiting for an assignment.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use matchplane_contracts::matchmaking::{
    Assignment, CancelRequest, CancelResponse, EnqueueRequest, EnqueueResponse, StatusResponse,
    TicketStatus,
};
use matchplane_contracts::realtime::{RealtimeEnvelope, RealtimeEvent};
use matchplane_contracts::{ErrorBody, ErrorCode};
use serde::de::DeserializeOwned;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::error::MatchmakingError;
use crate::realtime::RealtimeWatch;
use crate::url::{percent_encode, to_ws_scheme, with_query};

/// How status polling backs off while a ticket stays queued.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PollBackoff {
    pub initial: Duration,
    pub max: Duration,
    /// Multiplier applied after every poll that found the ticket still queued.
    pub factor: f64,
}

impl Default for PollBackoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
            factor: 1.5,
        }
    }
}

impl PollBackoff {
    fn next(&self, current: Duration) -> Duration {
        current.mul_f64(self.factor.max(1.0)).min(self.max)
    }
}

/// How an assignment reached the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Pushed on the `/realtime` socket.
    Push,
    /// Found by polling `status` (the socket was unavailable or dropped).
    Poll,
}

/// Client of the control plane's matchmaking API.
///
/// `base_url` is where the control plane's routes live: `http://127.0.0.1:3000`, or an
/// LB prefix such as `https://game.example.com/match`. Cloning is cheap and shares the
/// HTTP connection pool.
#[derive(Debug, Clone)]
pub struct MatchmakingClient {
    http: reqwest::Client,
    base: Arc<str>,
    poll: PollBackoff,
    push: bool,
}

/// What the push socket said about a ticket.
enum PushOutcome {
    Final(Result<Assignment, MatchmakingError>),
    /// The socket could not be used; polling takes over.
    Unavailable(String),
}

impl MatchmakingClient {
    pub fn new(base_url: impl AsRef<str>) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap_or_default();
        Self::with_http_client(http, base_url)
    }

    /// Shares an existing `reqwest::Client` (and its connection pool).
    pub fn with_http_client(http: reqwest::Client, base_url: impl AsRef<str>) -> Self {
        Self {
            http,
            base: Arc::from(base_url.as_ref().trim_end_matches('/')),
            poll: PollBackoff::default(),
            push: true,
        }
    }

    pub fn with_poll_backoff(mut self, poll: PollBackoff) -> Self {
        self.poll = poll;
        self
    }

    /// `false` makes [`Self::wait_for_assignment`] poll only (no `/realtime` socket).
    pub fn with_push(mut self, enabled: bool) -> Self {
        self.push = enabled;
        self
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// `ws(s)://…/realtime` under the same base (and prefix) as the REST calls.
    pub fn realtime_url(&self) -> String {
        format!("{}/realtime", to_ws_scheme(&self.base))
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn transport_error(url: &str, err: &reqwest::Error) -> MatchmakingError {
        MatchmakingError::Transport {
            url: url.to_owned(),
            message: err.to_string(),
        }
    }

    async fn decode<T: DeserializeOwned>(
        url: &str,
        response: reqwest::Response,
    ) -> Result<T, MatchmakingError> {
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|err| Self::transport_error(url, &err))?;
        if status.is_success() {
            return serde_json::from_slice(&body)
                .map_err(|err| MatchmakingError::Decode(format!("{url}: {err}")));
        }
        Err(match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(envelope) => MatchmakingError::Api {
                status: status.as_u16(),
                code: Some(envelope.error.code),
                message: envelope.error.message,
            },
            Err(_) => MatchmakingError::Api {
                status: status.as_u16(),
                code: None,
                message: String::from_utf8_lossy(&body).chars().take(200).collect(),
            },
        })
    }

    /// `POST /v1/matchmaking/enqueue`. The 201 means the ticket is durably stored.
    pub async fn enqueue(
        &self,
        request: &EnqueueRequest,
    ) -> Result<EnqueueResponse, MatchmakingError> {
        let url = self.url("/v1/matchmaking/enqueue");
        let response = self
            .http
            .post(&url)
            .json(request)
            .send()
            .await
            .map_err(|err| Self::transport_error(&url, &err))?;
        Self::decode(&url, response).await
    }

    /// Enqueues one player alone.
    pub async fn enqueue_solo(
        &self,
        queue_key: &str,
        player_id: &str,
    ) -> Result<EnqueueResponse, MatchmakingError> {
        self.enqueue(&EnqueueRequest {
            queue_key: Some(queue_key.to_owned()),
            members: Some(vec![player_id.to_owned()]),
            ..EnqueueRequest::default()
        })
        .await
    }

    /// `GET /v1/matchmaking/status/:ticketId`.
    pub async fn status(&self, ticket_id: &str) -> Result<StatusResponse, MatchmakingError> {
        let url = self.url(&format!(
            "/v1/matchmaking/status/{}",
            percent_encode(ticket_id)
        ));
        let response = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|err| Self::transport_error(&url, &err))?;
        Self::decode(&url, response).await
    }

    /// `POST /v1/matchmaking/cancel`: `cancelled: false` (with the status) when the ticket
    /// was no longer queued.
    pub async fn cancel(&self, ticket_id: &str) -> Result<CancelResponse, MatchmakingError> {
        let url = self.url("/v1/matchmaking/cancel");
        let response = self
            .http
            .post(&url)
            .json(&CancelRequest {
                ticket_id: Some(ticket_id.to_owned()),
            })
            .send()
            .await
            .map_err(|err| Self::transport_error(&url, &err))?;
        Self::decode(&url, response).await
    }

    /// Opens a `/realtime` socket that can watch up to
    /// [`crate::MAX_TICKETS_PER_SOCKET`] tickets (and enqueue over the socket).
    pub async fn watch(&self) -> Result<RealtimeWatch, MatchmakingError> {
        RealtimeWatch::connect(&self.realtime_url()).await
    }

    /// Waits until the ticket is assigned, for at most `timeout`.
    pub async fn wait_for_assignment(
        &self,
        ticket_id: &str,
        timeout: Duration,
    ) -> Result<Assignment, MatchmakingError> {
        self.wait_for_assignment_via(ticket_id, timeout)
            .await
            .map(|(assignment, _)| assignment)
    }

    /// Like [`Self::wait_for_assignment`], also saying whether push or polling found it.
    ///
    /// Push first: the socket subscribes before reading the ticket, so an assignment made
    /// at any moment is delivered. If the socket cannot connect, drops, or reports a
    /// server-side problem, status polling with backoff takes over until the deadline.
    pub async fn wait_for_assignment_via(
        &self,
        ticket_id: &str,
        timeout: Duration,
    ) -> Result<(Assignment, Delivery), MatchmakingError> {
        let deadline = Instant::now() + timeout;
        let timed_out = || MatchmakingError::Timeout {
            ticket_id: ticket_id.to_owned(),
            waited: timeout,
        };
        if self.push {
            match tokio::time::timeout_at(deadline, self.wait_push(ticket_id)).await {
                Err(_) => return Err(timed_out()),
                Ok(PushOutcome::Final(result)) => {
                    return result.map(|assignment| (assignment, Delivery::Push));
                }
                Ok(PushOutcome::Unavailable(reason)) => {
                    tracing::debug!(ticket_id, reason, "realtime push unavailable; polling");
                }
            }
        }
        match tokio::time::timeout_at(deadline, self.poll_until_final(ticket_id)).await {
            Err(_) => Err(timed_out()),
            Ok(result) => result.map(|assignment| (assignment, Delivery::Poll)),
        }
    }

    async fn wait_push(&self, ticket_id: &str) -> PushOutcome {
        let url = with_query(&self.realtime_url(), "ticketId", ticket_id);
        let mut socket = match tokio_tungstenite::connect_async(url.as_str()).await {
            Ok((socket, _)) => socket,
            Err(err) => return PushOutcome::Unavailable(format!("connect {url}: {err}")),
        };
        loop {
            let text = match socket.next().await {
                Some(Ok(Message::Text(text))) => text,
                Some(Ok(Message::Close(frame))) => {
                    return PushOutcome::Unavailable(format!("socket closed: {frame:?}"));
                }
                Some(Ok(_)) => continue,
                Some(Err(err)) => return PushOutcome::Unavailable(err.to_string()),
                None => return PushOutcome::Unavailable("socket ended".to_owned()),
            };
            let envelope: RealtimeEnvelope = match serde_json::from_str(text.as_str()) {
                Ok(envelope) => envelope,
                Err(err) => {
                    return PushOutcome::Unavailable(format!(
                        "undecodable realtime message: {err}"
                    ));
                }
            };
            let owner = ticket_id.to_owned();
            let outcome = match envelope.event {
                RealtimeEvent::MatchAssigned(assigned) if assigned.ticket_id == ticket_id => {
                    Ok(assigned.assignment)
                }
                RealtimeEvent::TicketCancelled(ticket) if ticket.ticket_id == ticket_id => {
                    Err(MatchmakingError::Cancelled { ticket_id: owner })
                }
                RealtimeEvent::TicketExpired(ticket) if ticket.ticket_id == ticket_id => {
                    Err(MatchmakingError::Expired { ticket_id: owner })
                }
                RealtimeEvent::Error(error) if error.code == ErrorCode::TicketNotFound => {
                    Err(MatchmakingError::Api {
                        status: 404,
                        code: Some(error.code),
                        message: error.message,
                    })
                }
                RealtimeEvent::Error(error) => {
                    return PushOutcome::Unavailable(format!(
                        "realtime error {}: {}",
                        error.code, error.message
                    ));
                }
                _ => continue,
            };
            let _ = socket.close(None).await;
            return PushOutcome::Final(outcome);
        }
    }

    /// Polls until the ticket leaves `queued`; transient failures are retried with the
    /// same backoff (the caller bounds the whole wait).
    async fn poll_until_final(&self, ticket_id: &str) -> Result<Assignment, MatchmakingError> {
        let mut delay = self.poll.initial;
        loop {
            match self.status(ticket_id).await {
                Ok(status) => match (status.status, status.assignment) {
                    (TicketStatus::Assigned, Some(assignment)) => return Ok(assignment),
                    (TicketStatus::Cancelled, _) => {
                        return Err(MatchmakingError::Cancelled {
                            ticket_id: ticket_id.to_owned(),
                        });
                    }
                    (TicketStatus::Expired, _) => {
                        return Err(MatchmakingError::Expired {
                            ticket_id: ticket_id.to_owned(),
                        });
                    }
                    (TicketStatus::Queued | TicketStatus::Assigned, _) => {}
                },
                Err(err) if err.is_retryable() => {
                    tracing::debug!(ticket_id, error = %err, "status poll failed; retrying");
                }
                Err(err) => return Err(err),
            }
            tokio::time::sleep(delay).await;
            delay = self.poll.next(delay);
        }
    }
}
