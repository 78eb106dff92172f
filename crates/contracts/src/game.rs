//! Runtime-plane (game server) WebSocket protocol types.
//!
//! Every text frame is an envelope `{"type": "...", "v": 1, "data": {...}}`. The full
//! protocol, with examples, is in `docs/runtime-protocol.md`; these types are its
//! single source of truth for Rust code (the server and the Rust client SDK).

use serde::de::Error as _;
use serde::ser::SerializeStruct;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

/// Version carried in every envelope's `v`. Bumped only on incompatible changes.
pub const PROTOCOL_VERSION: u32 = 1;

/// Message `type` names, shared by encoder, decoder and docs.
pub mod kind {
    pub const JOIN_OK: &str = "join.ok";
    pub const STATE_PATCH: &str = "state.patch";
    /// Sent instead of most `state.patch`es to a connection that asked for
    /// `?sync=merge`.
    pub const STATE_MERGE: &str = "state.merge";
    pub const STATE_SNAPSHOT: &str = "state.snapshot";
    pub const ACTION_RESULT: &str = "action.result";
    pub const EVENT: &str = "event";
    pub const ERROR: &str = "error";
    pub const LAND_CLOSED: &str = "land.closed";
    pub const PONG: &str = "pong";
    pub const ACTION: &str = "action";
    pub const SYNC_REQUEST: &str = "sync.request";
    pub const PING: &str = "ping";
}

/// WebSocket close codes the game server uses.
pub mod close_code {
    /// Land closed itself (game over) after sending `land.closed`.
    pub const NORMAL: u16 = 1000;
    /// Server shutting down or draining; reconnect elsewhere / later.
    pub const GOING_AWAY: u16 = 1001;
    /// The client did not read its frames fast enough; it may reconnect.
    pub const SLOW_CONSUMER: u16 = 1008;
    /// A single frame exceeded the per-connection size limit.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// Too many malformed or unknown messages.
    pub const MALFORMED: u16 = 4400;
    /// Missing or invalid credentials.
    pub const UNAUTHENTICATED: u16 = 4401;
    /// Authenticated, but not allowed in this land (wrong land, not on the roster, rejected by the land).
    pub const FORBIDDEN: u16 = 4403;
    /// No land type is served at this path; or (error `land_lost`) the token was minted
    /// for an earlier instance of this server, whose lands died with it.
    pub const UNKNOWN_LAND_TYPE: u16 = 4404;
    /// = 4404 with error `land_lost`: the land named in the token is gone for good.
    pub const LAND_LOST: u16 = 4404;
    /// Land is full or already closed, or the server runs as many lands as it may.
    pub const LAND_FULL_OR_CLOSED: u16 = 4409;
    /// A newer connection took over this seat.
    pub const SESSION_REPLACED: u16 = 4410;
    /// The connection sent messages faster than its rate limit.
    pub const RATE_LIMITED: u16 = 4429;
}

/// Machine-readable `code` values of `error` messages and failed `action.result`s
/// produced by the runtime itself (lands add their own action error codes).
pub mod error_code {
    pub const MALFORMED_MESSAGE: &str = "malformed_message";
    pub const UNKNOWN_MESSAGE: &str = "unknown_message";
    pub const UNSUPPORTED_VERSION: &str = "unsupported_version";
    pub const MESSAGE_TOO_BIG: &str = "message_too_big";
    pub const RATE_LIMITED: &str = "rate_limited";
    pub const UNKNOWN_ACTION: &str = "unknown_action";
    pub const INVALID_PAYLOAD: &str = "invalid_payload";
    pub const UNKNOWN_EVENT: &str = "unknown_event";
    pub const LAND_CLOSED: &str = "land_closed";
    pub const UNKNOWN_LAND_TYPE: &str = "unknown_land_type";
    pub const UNAUTHENTICATED: &str = "unauthenticated";
    pub const FORBIDDEN: &str = "forbidden";
    pub const LAND_FULL: &str = "land_full";
    /// The game server already runs its `--max-lands` and creates no more (close 4409).
    pub const SERVER_FULL: &str = "server_full";
    /// `?sync=` named an encoding the server does not speak (close 4400).
    pub const UNSUPPORTED_SYNC: &str = "unsupported_sync";
    /// The token names an earlier instance of this game server (it restarted).
    pub const LAND_LOST: &str = "land_lost";
    pub const DRAINING: &str = "draining";
    pub const SESSION_REPLACED: &str = "session_replaced";
}

/// `{code, message}`: the error shape of `error` and of failed `action.result`s.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
}

impl ErrorBody {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinOk {
    pub land_id: String,
    pub player_id: String,
    /// The seq of `state`; the next `state.patch` carries `seq + 1`.
    pub seq: u64,
    /// The full state as this player sees it.
    pub state: Value,
    /// With `?sync=binary`: the land's key table so far (see `binary_state`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatePatch {
    pub seq: u64,
    /// RFC 6902 operations turning the state at `seq - 1` into the state at `seq`.
    pub ops: Value,
}

/// An RFC 7386 JSON Merge Patch turning the state at `seq - 1` into the state
/// at `seq`: changed members with their new values, removed ones as `null`,
/// arrays whole. Only sent to a connection that asked for `?sync=merge`, and
/// only when it can say the change (a member that becomes `null` cannot be
/// said; that change comes as a `state.patch`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateMerge {
    pub seq: u64,
    pub merge: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateSnapshot {
    pub seq: u64,
    pub state: Value,
    /// With `?sync=binary`: the land's key table so far (see `binary_state`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<Vec<String>>,
}

/// Outcome of one `action`, matched to it by `requestId`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActionResult {
    pub request_id: String,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

/// A named event with a JSON payload (both directions).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventBody {
    pub name: String,
    #[serde(default)]
    pub payload: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LandClosed {
    /// Short machine-readable reason, e.g. `victory`, `defeat`, `server_shutdown`, `empty`.
    pub reason: String,
    /// Land-defined outcome (scores, winner…), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
}

/// Echo of the client's `ping.t`, so the client can measure round-trip time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ping {
    pub t: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActionRequest {
    /// Client-chosen id echoed in the matching `action.result`.
    pub request_id: String,
    pub name: String,
    #[serde(default)]
    pub payload: Value,
}

/// One live land in `GET /admin/lands`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LandSummary {
    pub land_id: String,
    pub land_type: String,
    /// Seats, including players within their reconnect grace.
    pub players: usize,
    pub connected: usize,
    pub age_ms: u64,
    pub tick_rate_hz: f64,
    pub ticks: u64,
    /// CPU time of the last tick including state sync, in microseconds.
    pub last_tick_us: u64,
    pub mean_tick_us: u64,
    pub max_tick_us: u64,
}

/// `GET /admin/lands` of a game server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdminLands {
    pub server_id: String,
    pub draining: bool,
    /// Additive: how many ticks one periodic state sync stands for right now, on top
    /// of each land type's sync rate: 1 normally, more while the server is overloaded
    /// and sheds sync work (up to `--max-sync-stretch`).
    #[serde(default = "one")]
    pub sync_stretch: u32,
    pub lands: Vec<LandSummary>,
}

fn one() -> u32 {
    1
}

/// `GET /health` of a game server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GameServerHealth {
    /// `ok`, or `draining` once shutdown started.
    pub status: String,
    pub server_id: String,
    pub land_types: Vec<String>,
    pub lands: usize,
    pub players: usize,
}

/// Everything the server sends.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerMessage {
    JoinOk(JoinOk),
    StatePatch(StatePatch),
    StateMerge(StateMerge),
    StateSnapshot(StateSnapshot),
    ActionResult(ActionResult),
    Event(EventBody),
    Error(ErrorBody),
    LandClosed(LandClosed),
    Pong(Ping),
}

/// Everything a client sends.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientMessage {
    Action(ActionRequest),
    Event(EventBody),
    SyncRequest,
    Ping(Ping),
}

impl ServerMessage {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::JoinOk(_) => kind::JOIN_OK,
            Self::StatePatch(_) => kind::STATE_PATCH,
            Self::StateMerge(_) => kind::STATE_MERGE,
            Self::StateSnapshot(_) => kind::STATE_SNAPSHOT,
            Self::ActionResult(_) => kind::ACTION_RESULT,
            Self::Event(_) => kind::EVENT,
            Self::Error(_) => kind::ERROR,
            Self::LandClosed(_) => kind::LAND_CLOSED,
            Self::Pong(_) => kind::PONG,
        }
    }
}

impl ClientMessage {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Action(_) => kind::ACTION,
            Self::Event(_) => kind::EVENT,
            Self::SyncRequest => kind::SYNC_REQUEST,
            Self::Ping(_) => kind::PING,
        }
    }
}

/// The raw envelope, for code that dispatches on `type` before decoding `data`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RawEnvelope {
    #[serde(rename = "type")]
    pub kind: String,
    pub v: u32,
    #[serde(default)]
    pub data: Value,
}

fn serialize_envelope<S: Serializer, D: Serialize>(
    serializer: S,
    kind: &'static str,
    data: &D,
) -> Result<S::Ok, S::Error> {
    let mut envelope = serializer.serialize_struct("Envelope", 3)?;
    envelope.serialize_field("type", kind)?;
    envelope.serialize_field("v", &PROTOCOL_VERSION)?;
    envelope.serialize_field("data", data)?;
    envelope.end()
}

/// `data` of messages that carry none.
#[derive(Serialize)]
struct Empty {}

impl Serialize for ServerMessage {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let kind = self.kind();
        match self {
            Self::JoinOk(data) => serialize_envelope(serializer, kind, data),
            Self::StatePatch(data) => serialize_envelope(serializer, kind, data),
            Self::StateMerge(data) => serialize_envelope(serializer, kind, data),
            Self::StateSnapshot(data) => serialize_envelope(serializer, kind, data),
            Self::ActionResult(data) => serialize_envelope(serializer, kind, data),
            Self::Event(data) => serialize_envelope(serializer, kind, data),
            Self::Error(data) => serialize_envelope(serializer, kind, data),
            Self::LandClosed(data) => serialize_envelope(serializer, kind, data),
            Self::Pong(data) => serialize_envelope(serializer, kind, data),
        }
    }
}

impl Serialize for ClientMessage {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let kind = self.kind();
        match self {
            Self::Action(data) => serialize_envelope(serializer, kind, data),
            Self::Event(data) => serialize_envelope(serializer, kind, data),
            Self::SyncRequest => serialize_envelope(serializer, kind, &Empty {}),
            Self::Ping(data) => serialize_envelope(serializer, kind, data),
        }
    }
}

/// Why a frame could not be decoded; the server answers with an `error` of this code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    pub code: &'static str,
    pub message: String,
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for DecodeError {}

/// The envelope as the frame holds it: `data` stays unparsed text until its type is
/// known, so it is parsed once, straight into that type, instead of into a `Value`
/// tree first (twice the work, on every frame a server or a client reads).
#[derive(Deserialize)]
struct EnvelopeText<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    v: u32,
    #[serde(default, borrow)]
    data: Option<&'a serde_json::value::RawValue>,
}

impl EnvelopeText<'_> {
    fn data<T: serde::de::DeserializeOwned>(&self) -> Result<T, DecodeError> {
        // An absent `data` reads as `null`, as it always has.
        let text = self.data.map_or("null", serde_json::value::RawValue::get);
        serde_json::from_str(text).map_err(|err| DecodeError {
            code: error_code::MALFORMED_MESSAGE,
            message: format!("invalid data for {:?}: {err}", self.kind),
        })
    }
}

fn parse_envelope(text: &str) -> Result<EnvelopeText<'_>, DecodeError> {
    let envelope: EnvelopeText<'_> = serde_json::from_str(text).map_err(|err| DecodeError {
        code: error_code::MALFORMED_MESSAGE,
        message: format!("not a message envelope: {err}"),
    })?;
    if envelope.v != PROTOCOL_VERSION {
        return Err(DecodeError {
            code: error_code::UNSUPPORTED_VERSION,
            message: format!(
                "protocol version {} is not supported (expected {PROTOCOL_VERSION})",
                envelope.v
            ),
        });
    }
    Ok(envelope)
}

impl ClientMessage {
    /// Decodes one text frame sent by a client.
    pub fn decode(text: &str) -> Result<Self, DecodeError> {
        let envelope = parse_envelope(text)?;
        match envelope.kind.as_ref() {
            kind::ACTION => envelope.data().map(Self::Action),
            kind::EVENT => envelope.data().map(Self::Event),
            kind::SYNC_REQUEST => Ok(Self::SyncRequest),
            kind::PING => envelope.data().map(Self::Ping),
            other => Err(DecodeError {
                code: error_code::UNKNOWN_MESSAGE,
                message: format!("unknown message type {other:?}"),
            }),
        }
    }
}

impl ServerMessage {
    /// Decodes one text frame sent by a game server (used by clients and tests).
    pub fn decode(text: &str) -> Result<Self, DecodeError> {
        let envelope = parse_envelope(text)?;
        match envelope.kind.as_ref() {
            kind::JOIN_OK => envelope.data().map(Self::JoinOk),
            kind::STATE_PATCH => envelope.data().map(Self::StatePatch),
            kind::STATE_MERGE => envelope.data().map(Self::StateMerge),
            kind::STATE_SNAPSHOT => envelope.data().map(Self::StateSnapshot),
            kind::ACTION_RESULT => envelope.data().map(Self::ActionResult),
            kind::EVENT => envelope.data().map(Self::Event),
            kind::ERROR => envelope.data().map(Self::Error),
            kind::LAND_CLOSED => envelope.data().map(Self::LandClosed),
            kind::PONG => envelope.data().map(Self::Pong),
            other => Err(DecodeError {
                code: error_code::UNKNOWN_MESSAGE,
                message: format!("unknown message type {other:?}"),
            }),
        }
    }
}

impl<'de> Deserialize<'de> for ClientMessage {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        let text = value.to_string();
        Self::decode(&text).map_err(D::Error::custom)
    }
}

impl<'de> Deserialize<'de> for ServerMessage {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        let text = value.to_string();
        Self::decode(&text).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn client_messages_round_trip_through_envelopes() {
        let messages = [
            ClientMessage::Action(ActionRequest {
                request_id: "r1".into(),
                name: "move".into(),
                payload: json!({"x": 1, "y": 2}),
            }),
            ClientMessage::Event(EventBody {
                name: "emote".into(),
                payload: json!({"kind": "wave"}),
            }),
            ClientMessage::SyncRequest,
            ClientMessage::Ping(Ping { t: json!(12) }),
        ];
        for message in messages {
            let text = serde_json::to_string(&message).unwrap();
            let envelope: RawEnvelope = serde_json::from_str(&text).unwrap();
            assert_eq!(envelope.kind, message.kind());
            assert_eq!(envelope.v, PROTOCOL_VERSION);
            assert_eq!(ClientMessage::decode(&text).unwrap(), message);
        }
    }

    #[test]
    fn server_action_result_omits_absent_fields() {
        let message = ServerMessage::ActionResult(ActionResult {
            request_id: "7".into(),
            ok: true,
            result: Some(json!({"gold": 3})),
            error: None,
        });
        let value = serde_json::to_value(&message).unwrap();
        assert_eq!(
            value,
            json!({"type": "action.result", "v": 1, "data": {"requestId": "7", "ok": true, "result": {"gold": 3}}})
        );
        assert_eq!(ServerMessage::decode(&value.to_string()).unwrap(), message);
    }

    #[test]
    fn decode_errors_say_what_is_wrong() {
        assert_eq!(
            ClientMessage::decode("nope").unwrap_err().code,
            error_code::MALFORMED_MESSAGE
        );
        assert_eq!(
            ClientMessage::decode(r#"{"type":"dance","v":1,"data":{}}"#)
                .unwrap_err()
                .code,
            error_code::UNKNOWN_MESSAGE
        );
        assert_eq!(
            ClientMessage::decode(r#"{"type":"ping","v":2,"data":{"t":1}}"#)
                .unwrap_err()
                .code,
            error_code::UNSUPPORTED_VERSION
        );
        assert_eq!(
            ClientMessage::decode(r#"{"type":"sync.request","v":1}"#).unwrap(),
            ClientMessage::SyncRequest
        );
        let missing = ClientMessage::decode(r#"{"type":"action","v":1}"#).unwrap_err();
        assert_eq!(missing.code, error_code::MALFORMED_MESSAGE);
        assert!(missing.message.contains("\"action\""), "{missing}");
        let wrong = ClientMessage::decode(r#"{"type":"action","v":1,"data":[1]}"#).unwrap_err();
        assert_eq!(wrong.code, error_code::MALFORMED_MESSAGE);
        let unknown = ClientMessage::decode(r#"{"type":"da\nce","v":1}"#).unwrap_err();
        assert!(unknown.message.contains(r#""da\nce""#), "{unknown}");
    }

    #[test]
    fn envelopes_decode_however_their_json_is_written() {
        // Escapes in the type, members in any order, unknown members, whitespace.
        let text = r#" { "data" : { "requestId":"r\u0031", "name":"move", "payload":{"x":1}, "extra":true },
            "v":1, "seq": 9, "type":"acti\u006fn" } "#;
        assert_eq!(
            ClientMessage::decode(text).unwrap(),
            ClientMessage::Action(ActionRequest {
                request_id: "r1".into(),
                name: "move".into(),
                payload: json!({"x": 1}),
            })
        );
        let patch = r#"{"type":"state.patch","v":1,"data":{"seq":3,"ops":[{"op":"replace","path":"/a","value":2}]}}"#;
        let ServerMessage::StatePatch(patch) = ServerMessage::decode(patch).unwrap() else {
            panic!("not a patch");
        };
        assert_eq!(patch.seq, 3);
        assert_eq!(
            patch.ops,
            json!([{"op": "replace", "path": "/a", "value": 2}])
        );
    }
}
