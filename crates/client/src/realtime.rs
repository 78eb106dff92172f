//! A `/realtime` socket shared by many tickets: one connection per
//! [`MAX_TICKETS_PER_SOCKET`] waiting tickets instead of one per player.

use futures_util::{SinkExt as _, StreamExt as _};
use matchplane_contracts::matchmaking::EnqueueRequest;
use matchplane_contracts::realtime::{
    RealtimeAction, RealtimeEnvelope, RealtimeEvent, SubscribeAction,
};
use reqwest::header::{AUTHORIZATION, HeaderValue, RETRY_AFTER};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::error::{MatchmakingError, refusal};

/// Tickets the control plane lets one socket watch at once; a ticket stops counting
/// once its final event (assigned, cancelled, expired) was pushed.
pub const MAX_TICKETS_PER_SOCKET: usize = 32;

/// Most queued actions written to the socket at once.
const COMMAND_BATCH: usize = 64;

/// One `/realtime` socket. Events of every watched ticket arrive on
/// [`RealtimeWatch::next_event`]; subscriptions can be sent from other tasks through a
/// cloned [`RealtimeSubscriber`].
#[derive(Debug)]
pub struct RealtimeWatch {
    subscriber: RealtimeSubscriber,
    events: mpsc::UnboundedReceiver<RealtimeEvent>,
    task: JoinHandle<()>,
}

/// Sends actions on a [`RealtimeWatch`]'s socket; cheap to clone.
#[derive(Debug, Clone)]
pub struct RealtimeSubscriber {
    commands: mpsc::UnboundedSender<String>,
}

impl RealtimeSubscriber {
    fn send(&self, action: &RealtimeAction) -> Result<(), MatchmakingError> {
        let text = serde_json::to_string(action)
            .map_err(|err| MatchmakingError::Decode(err.to_string()))?;
        self.commands
            .send(text)
            .map_err(|_| MatchmakingError::RealtimeClosed)
    }

    /// Watches a ticket: the socket answers `subscribed` while it is queued, or its final
    /// event at once if it already has one.
    pub fn subscribe(&self, ticket_id: &str) -> Result<(), MatchmakingError> {
        self.send(&RealtimeAction::Subscribe(SubscribeAction {
            ticket_id: Some(ticket_id.to_owned()),
        }))
    }

    /// Enqueues over the socket; the answer is an `enqueued` event and the socket then
    /// watches the new ticket.
    pub fn enqueue(&self, request: EnqueueRequest) -> Result<(), MatchmakingError> {
        self.send(&RealtimeAction::Enqueue(Box::new(request)))
    }

    pub fn heartbeat(&self) -> Result<(), MatchmakingError> {
        self.send(&RealtimeAction::Heartbeat {})
    }

    /// Whether the socket is still open.
    pub fn is_open(&self) -> bool {
        !self.commands.is_closed()
    }
}

/// Opens a `/realtime` socket, with the player token in the `Authorization` header
/// (not `?access_token=`, which is for browsers and would put the token in URLs that
/// proxies log). A refused handshake becomes the typed error of its status.
pub(crate) async fn connect_realtime(
    url: &str,
    authorization: Option<HeaderValue>,
    config: Option<WebSocketConfig>,
) -> Result<WebSocketStream<MaybeTlsStream<TcpStream>>, MatchmakingError> {
    let transport = |message: String| MatchmakingError::Transport {
        url: url.to_owned(),
        message,
    };
    let mut request = url
        .into_client_request()
        .map_err(|err| transport(err.to_string()))?;
    if let Some(authorization) = authorization {
        request.headers_mut().insert(AUTHORIZATION, authorization);
    }
    match tokio_tungstenite::connect_async_with_config(request, config, true).await {
        Ok((socket, _)) => Ok(socket),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let retry_after = response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|value| value.to_str().ok());
            let body = response.body().as_deref().unwrap_or_default();
            Err(refusal(response.status().as_u16(), retry_after, body))
        }
        Err(err) => Err(transport(err.to_string())),
    }
}

impl RealtimeWatch {
    pub(crate) async fn connect(
        url: &str,
        authorization: Option<HeaderValue>,
    ) -> Result<Self, MatchmakingError> {
        // Realtime messages are small; see `ConnectOptions::read_buffer_bytes`.
        let config = WebSocketConfig::default().read_buffer_size(8 * 1024);
        let socket = connect_realtime(url, authorization, Some(config)).await?;
        let (commands, mut command_rx) = mpsc::unbounded_channel::<String>();
        let (event_tx, events) = mpsc::unbounded_channel();
        let url = url.to_owned();
        let task = tokio::spawn(async move {
            let (mut sink, mut stream) = socket.split();
            loop {
                tokio::select! {
                    command = command_rx.recv() => match command {
                        Some(text) => {
                            // Actions already queued behind this one go out in the same
                            // write (a pooled socket carries many tickets' actions).
                            let mut batch = vec![text];
                            while batch.len() < COMMAND_BATCH {
                                match command_rx.try_recv() {
                                    Ok(more) => batch.push(more),
                                    Err(_) => break,
                                }
                            }
                            let mut queued = futures_util::stream::iter(
                                batch.into_iter().map(|text| Ok(Message::Text(text.into()))),
                            );
                            if sink.send_all(&mut queued).await.is_err() {
                                break;
                            }
                        }
                        None => {
                            let _ = sink.close().await;
                            break;
                        }
                    },
                    frame = stream.next() => match frame {
                        Some(Ok(Message::Text(text))) => {
                            match serde_json::from_str::<RealtimeEnvelope>(text.as_str()) {
                                Ok(envelope) => {
                                    if event_tx.send(envelope.event).is_err() {
                                        break;
                                    }
                                }
                                Err(err) => tracing::warn!(%url, error = %err, "undecodable realtime message"),
                            }
                        }
                        Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                        Some(Ok(_)) => {}
                    },
                }
            }
            tracing::debug!(%url, "realtime socket closed");
        });
        Ok(Self {
            subscriber: RealtimeSubscriber { commands },
            events,
            task,
        })
    }

    pub fn subscriber(&self) -> RealtimeSubscriber {
        self.subscriber.clone()
    }

    pub fn subscribe(&self, ticket_id: &str) -> Result<(), MatchmakingError> {
        self.subscriber.subscribe(ticket_id)
    }

    /// The next event; `None` once the socket closed.
    pub async fn next_event(&mut self) -> Option<RealtimeEvent> {
        self.events.recv().await
    }

    /// Closes the socket (even if cloned subscribers are still around).
    pub async fn close(self) {
        let Self {
            subscriber,
            events,
            mut task,
        } = self;
        drop(subscriber);
        drop(events);
        if tokio::time::timeout(std::time::Duration::from_secs(1), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }
}
