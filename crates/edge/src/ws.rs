//! What a failed WebSocket read means, for both planes' sockets.

/// A read error, as the server should answer it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadFailure {
    /// The connection is gone (reset, EOF mid-frame): nobody to answer.
    Gone,
    /// A frame or message beyond the hard size limit: close 1009.
    TooBig(String),
    /// A protocol violation (bad framing, invalid UTF-8 in a text frame).
    Malformed(String),
}

/// Classifies the error axum's `WebSocket::recv` returned.
pub fn classify_read_error(err: axum::Error) -> ReadFailure {
    use tokio_tungstenite::tungstenite::Error as WsError;
    use tokio_tungstenite::tungstenite::error::ProtocolError;
    let inner = err.into_inner();
    match inner.downcast_ref::<WsError>() {
        Some(WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake)) | None => {
            ReadFailure::Gone
        }
        Some(WsError::Capacity(capacity)) => ReadFailure::TooBig(capacity.to_string()),
        Some(WsError::Protocol(protocol)) => ReadFailure::Malformed(protocol.to_string()),
        Some(WsError::Utf8(_)) => {
            ReadFailure::Malformed("text frames must be valid UTF-8".to_owned())
        }
        Some(_) => ReadFailure::Gone,
    }
}
