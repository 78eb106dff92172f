//! Text frames sent to clients.
//!
//! State frames are assembled from pre-serialised pieces so that a land encodes its shared
//! patch once per sync, whatever the number of players: per player only the seq and the
//! (small) private part differ, and those are spliced in with a few string copies.

use std::fmt::Write as _;

use axum::extract::ws::Utf8Bytes;
use matchplane_contracts::game::{ErrorBody, ServerMessage, kind};

pub(crate) fn encode(message: &ServerMessage) -> Option<Utf8Bytes> {
    match serde_json::to_string(message) {
        Ok(text) => Some(Utf8Bytes::from(text)),
        Err(err) => {
            tracing::error!(kind = message.kind(), error = %err, "message does not serialise");
            None
        }
    }
}

pub(crate) fn error(code: &str, message: impl Into<String>) -> Option<Utf8Bytes> {
    encode(&ServerMessage::Error(ErrorBody::new(code, message)))
}

/// A JSON string literal (with quotes) for `text`.
pub(crate) fn json_string(text: &str) -> String {
    serde_json::Value::from(text).to_string()
}

/// A player's state document: the shared object with `"me": private` added first.
/// `shared` must be a serialised JSON object.
pub(crate) fn state_document(shared: &str, private: Option<&str>) -> String {
    let Some(private) = private else {
        return shared.to_owned();
    };
    let rest = shared.strip_prefix('{').unwrap_or(shared);
    let mut out = String::with_capacity(shared.len() + private.len() + 8);
    out.push_str("{\"me\":");
    out.push_str(private);
    if !rest.trim_start().starts_with('}') {
        out.push(',');
    }
    out.push_str(rest);
    out
}

fn header(out: &mut String, message_kind: &str) {
    out.push_str("{\"type\":\"");
    out.push_str(message_kind);
    out.push_str("\",\"v\":1,\"data\":{");
}

/// A JSON array of the key table's names (the `keys` of `join.ok` and `state.snapshot`).
pub(crate) fn json_names(names: &[String]) -> String {
    serde_json::to_string(names).unwrap_or_else(|_| "[]".to_owned())
}

/// `keys` is a JSON array for `?sync=binary` connections.
pub(crate) fn join_ok(
    land_id_json: &str,
    player_id: &str,
    seq: u64,
    document: &str,
    keys: Option<&str>,
) -> Utf8Bytes {
    let mut out = String::with_capacity(document.len() + keys.map_or(0, str::len) + 96);
    header(&mut out, kind::JOIN_OK);
    out.push_str("\"landId\":");
    out.push_str(land_id_json);
    out.push_str(",\"playerId\":");
    out.push_str(&json_string(player_id));
    let _ = write!(out, ",\"seq\":{seq},\"state\":");
    out.push_str(document);
    finish_with_keys(out, keys)
}

pub(crate) fn snapshot(seq: u64, document: &str, keys: Option<&str>) -> Utf8Bytes {
    let mut out = String::with_capacity(document.len() + keys.map_or(0, str::len) + 64);
    header(&mut out, kind::STATE_SNAPSHOT);
    let _ = write!(out, "\"seq\":{seq},\"state\":");
    out.push_str(document);
    finish_with_keys(out, keys)
}

fn finish_with_keys(mut out: String, keys: Option<&str>) -> Utf8Bytes {
    if let Some(keys) = keys {
        out.push_str(",\"keys\":");
        out.push_str(keys);
    }
    out.push_str("}}");
    Utf8Bytes::from(out)
}

/// `shared_ops` and `private_ops` are comma-separated operation lists without brackets.
pub(crate) fn patch(seq: u64, shared_ops: &str, private_ops: &str) -> Utf8Bytes {
    state_change(
        kind::STATE_PATCH,
        seq,
        "ops",
        ('[', ']'),
        shared_ops,
        private_ops,
    )
}

/// `shared` and `private` are merge-patch members without braces (see
/// `diff::merge_into`): the shared state's, and the `me` member's.
pub(crate) fn merge(seq: u64, shared: &str, private: &str) -> Utf8Bytes {
    state_change(kind::STATE_MERGE, seq, "merge", ('{', '}'), shared, private)
}

/// `{"type":kind,…,"data":{"seq":seq,"<field>":<open>shared,private<close>}}`, the
/// shared part encoded once per land and the private part per player.
fn state_change(
    message_kind: &str,
    seq: u64,
    field: &str,
    (open, close): (char, char),
    shared: &str,
    private: &str,
) -> Utf8Bytes {
    let mut out = String::with_capacity(shared.len() + private.len() + 64);
    header(&mut out, message_kind);
    let _ = write!(out, "\"seq\":{seq},\"{field}\":{open}");
    out.push_str(shared);
    if !shared.is_empty() && !private.is_empty() {
        out.push(',');
    }
    out.push_str(private);
    out.push(close);
    out.push_str("}}");
    Utf8Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn spliced_frames_decode_as_protocol_messages() {
        let document = state_document(r#"{"count":2}"#, Some(r#"{"gold":5}"#));
        let frame = join_ok(&json_string("land-1"), "ann", 0, &document, None);
        let ServerMessage::JoinOk(join) = ServerMessage::decode(frame.as_str()).unwrap() else {
            panic!("not join.ok");
        };
        assert_eq!(join.state, json!({"count": 2, "me": {"gold": 5}}));
        assert_eq!(join.player_id, "ann");

        assert_eq!(state_document("{}", Some("1")), r#"{"me":1}"#);
        assert_eq!(state_document("{}", None), "{}");

        let frame = patch(
            3,
            r#"{"op":"remove","path":"/a"}"#,
            r#"{"op":"add","path":"/me","value":1}"#,
        );
        let ServerMessage::StatePatch(patch) = ServerMessage::decode(frame.as_str()).unwrap()
        else {
            panic!("not state.patch");
        };
        assert_eq!(patch.seq, 3);
        assert_eq!(patch.ops.as_array().map(Vec::len), Some(2));

        let frame = snapshot(9, r#"{"a":[]}"#, Some(&json_names(&["a".to_owned()])));
        assert!(matches!(
            ServerMessage::decode(frame.as_str()).unwrap(),
            ServerMessage::StateSnapshot(snapshot)
                if snapshot.seq == 9 && snapshot.keys == Some(vec!["a".to_owned()])
        ));
    }
}
