//! The control plane's matchmaking API: REST calls plus waiting for an assignment.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use matchplane_contracts::ErrorCode;
use matchplane_contracts::matchmaking::{
    Assignment, CancelRequest, CancelResponse, EnqueueRequest, EnqueueResponse, StatusResponse,
    TicketStatus,
};
use matchplane_contracts::realtime::{RealtimeEnvelope, RealtimeEvent};
use reqwest::header::{AUTHORIZATION, RETRY_AFTER};
use serde::de::DeserializeOwned;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::error::{MatchmakingError, refusal};
use crate::realtime::{RealtimeWatch, connect_realtime};
use crate::token::PlayerToken;
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

/// 429 answers in a row that [`MatchmakingClient::enqueue`] and status polling wait out
/// unless [`MatchmakingClient::with_rate_limit_retries`] says otherwise.
const DEFAULT_RATE_LIMIT_RETRIES: u32 = 3;

/// Client of the control plane's matchmaking API.
///
/// `base_url` is where the control plane's routes live: `http://127.0.0.1:3000`, or an
/// LB prefix such as `https://game.example.com/match`. Cloning is cheap and shares the
/// HTTP connection pool and the player token (see [`Self::set_player_token`]).
#[derive(Debug, Clone)]
pub struct MatchmakingClient {
    http: reqwest::Client,
    base: Arc<str>,
    poll: PollBackoff,
    push: bool,
    player_token: PlayerToken,
    rate_limit_retries: u32,
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
            player_token: PlayerToken::default(),
            rate_limit_retries: DEFAULT_RATE_LIMIT_RETRIES,
        }
    }

    /// Sends the player's JWT from the identity provider as `Authorization: Bearer` on
    /// every REST call and on the `/realtime` handshake, as a control plane running with
    /// `--player-auth jwt` requires. The token is never logged nor shown by `Debug`.
    ///
    /// Clones made afterwards share it; [`Self::set_player_token`] swaps it for all of them.
    pub fn with_player_token(mut self, token: impl Into<String>) -> Self {
        self.player_token = PlayerToken::fixed(token.into());
        self
    }

    /// Asks `provider` for the token before every request (and every `/realtime`
    /// connect), for tokens that a session refreshes on its own; `None` sends none.
    /// The provider should return a cached token quickly: it is called on the request
    /// path and must not block.
    pub fn with_player_token_provider<F>(mut self, provider: F) -> Self
    where
        F: Fn() -> Option<String> + Send + Sync + 'static,
    {
        self.player_token = PlayerToken::provider(Arc::new(provider));
        self
    }

    /// Replaces the token (or the provider) of this client and of every clone sharing
    /// it, e.g. after a refresh; the next request sends the new one. Requests and
    /// sockets already under way keep the token they started with.
    pub fn set_player_token(&self, token: impl Into<String>) {
        self.player_token.set(Some(token.into()));
    }

    /// Stops sending a player token (on this client and the clones sharing it).
    pub fn clear_player_token(&self) {
        self.player_token.set(None);
    }

    /// How many 429 `RATE_LIMITED` answers in a row [`Self::enqueue`] and the status
    /// polling of [`Self::wait_for_assignment`] wait out (each for its `Retry-After`)
    /// before returning [`MatchmakingError::RateLimited`]; 0 returns the first one.
    /// Default 3. A 429 means the request was not processed, so repeating it is safe.
    pub fn with_rate_limit_retries(mut self, retries: u32) -> Self {
        self.rate_limit_retries = retries;
        self
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
        // reqwest's own message only says that sending failed; the cause
        // (refused, reset, timed out) is down its source chain.
        let mut message = err.to_string();
        let mut source = std::error::Error::source(err);
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        MatchmakingError::Transport {
            url: url.to_owned(),
            message,
        }
    }

    /// Sends a request with the player token, if any, and decodes the answer.
    async fn call<T: DeserializeOwned>(
        &self,
        url: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<T, MatchmakingError> {
        let request = match self.player_token.authorization()? {
            Some(authorization) => request.header(AUTHORIZATION, authorization),
            None => request,
        };
        let response = request
            .send()
            .await
            .map_err(|err| Self::transport_error(url, &err))?;
        Self::decode(url, response).await
    }

    async fn decode<T: DeserializeOwned>(
        url: &str,
        response: reqwest::Response,
    ) -> Result<T, MatchmakingError> {
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let body = response
            .bytes()
            .await
            .map_err(|err| Self::transport_error(url, &err))?;
        if status.is_success() {
            return serde_json::from_slice(&body)
                .map_err(|err| MatchmakingError::Decode(format!("{url}: {err}")));
        }
        Err(refusal(status.as_u16(), retry_after.as_deref(), &body))
    }

    /// `POST /v1/matchmaking/enqueue`. The 201 means the ticket is durably stored.
    ///
    /// A 429 is waited out (its `Retry-After`) and the enqueue sent again, up to
    /// [`Self::with_rate_limit_retries`] times.
    pub async fn enqueue(
        &self,
        request: &EnqueueRequest,
    ) -> Result<EnqueueResponse, MatchmakingError> {
        let url = self.url("/v1/matchmaking/enqueue");
        let mut refusals = 0;
        loop {
            match self.call(&url, self.http.post(&url).json(request)).await {
                Err(MatchmakingError::RateLimited { retry_after })
                    if refusals < self.rate_limit_retries =>
                {
                    refusals += 1;
                    tracing::debug!(?retry_after, refusals, "enqueue rate limited; waiting");
                    tokio::time::sleep(retry_after).await;
                }
                result => return result,
            }
        }
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
        self.call(&url, self.http.get(&url)).await
    }

    /// `POST /v1/matchmaking/cancel`: `cancelled: false` (with the status) when the ticket
    /// was no longer queued.
    pub async fn cancel(&self, ticket_id: &str) -> Result<CancelResponse, MatchmakingError> {
        let url = self.url("/v1/matchmaking/cancel");
        let request = self.http.post(&url).json(&CancelRequest {
            ticket_id: Some(ticket_id.to_owned()),
        });
        self.call(&url, request).await
    }

    /// Opens a `/realtime` socket that can watch up to
    /// [`crate::MAX_TICKETS_PER_SOCKET`] tickets (and enqueue over the socket).
    pub async fn watch(&self) -> Result<RealtimeWatch, MatchmakingError> {
        let authorization = self.player_token.authorization()?;
        RealtimeWatch::connect(&self.realtime_url(), authorization).await
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
        let authorization = match self.player_token.authorization() {
            Ok(authorization) => authorization,
            Err(err) => return PushOutcome::Final(Err(err)),
        };
        let mut socket = match connect_realtime(&url, authorization, None).await {
            Ok(socket) => socket,
            // Polling would be refused the same way; a rate limit is left to polling,
            // which waits it out.
            Err(
                err @ (MatchmakingError::Unauthenticated { .. }
                | MatchmakingError::Forbidden { .. }),
            ) => return PushOutcome::Final(Err(err)),
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
                RealtimeEvent::TicketFailed(failed) if failed.ticket_id == ticket_id => {
                    Err(MatchmakingError::Failed {
                        ticket_id: owner,
                        reason: failed.reason,
                    })
                }
                // The ticket is queued again (its server was lost): the next
                // `match.assigned` on this socket is the one to wait for.
                RealtimeEvent::TicketRequeued(requeued) if requeued.ticket_id == ticket_id => {
                    tracing::debug!(ticket_id, reason = %requeued.reason, "ticket requeued; waiting");
                    continue;
                }
                RealtimeEvent::MatchLost(lost) if lost.ticket_id == ticket_id => {
                    tracing::debug!(ticket_id, land_id = %lost.land_id, reason = %lost.reason,
                        "match lost; waiting for the next assignment");
                    continue;
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
    /// same backoff (the caller bounds the whole wait), a 429 after its `Retry-After`
    /// up to `rate_limit_retries` times in a row.
    async fn poll_until_final(&self, ticket_id: &str) -> Result<Assignment, MatchmakingError> {
        let mut delay = self.poll.initial;
        let mut refusals = 0;
        loop {
            let status = self.status(ticket_id).await;
            if let Err(MatchmakingError::RateLimited { retry_after }) = status {
                if refusals >= self.rate_limit_retries {
                    return Err(MatchmakingError::RateLimited { retry_after });
                }
                refusals += 1;
                tracing::debug!(
                    ticket_id,
                    ?retry_after,
                    refusals,
                    "status rate limited; waiting"
                );
                tokio::time::sleep(retry_after.max(delay)).await;
                continue;
            }
            refusals = 0;
            match status {
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
                    (TicketStatus::Failed, _) => {
                        return Err(MatchmakingError::Failed {
                            ticket_id: ticket_id.to_owned(),
                            reason: status.reason.unwrap_or_default(),
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
