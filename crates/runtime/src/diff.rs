//! RFC 6902 diff that writes operations straight into their JSON encoding.
//!
//! Same operations as `json_patch::diff` (objects key by key, arrays index by index with
//! additions or removals at the tail), but without building an intermediate `Patch`:
//! the sync path runs this for every land on every tick, and skipping the per-operation
//! pointer and value clones roughly halves its cost. Tests apply the output with
//! `json_patch::patch` to prove it round-trips.

use matchplane_contracts::binary_state::BinaryWriter;
use serde_json::Value;

use crate::flat::{Flat, Kind};

/// How far the walk over the previous object's keys may skip ahead to line up with the
/// new one again (keys removed between two states, e.g. enemies killed in one tick).
const RESYNC_STEPS: usize = 4;

/// Appends the operations turning `left` into `right` to `out` as `op,op,…` (no
/// brackets). Both are flat ([`FlatValue`]): the state a land last sent, kept between
/// syncs, and the one it sends now, written straight from the land's state.
///
/// [`FlatValue`]: crate::flat::FlatValue
pub(crate) fn diff_into(left: Flat<'_>, right: Flat<'_>, out: &mut Vec<u8>) {
    let mut path = Vec::new();
    diff_at(left, right, &mut path, out);
}

/// `path` is the JSON Pointer of `left` and `right` as UTF-8 bytes: member names come
/// out of the flat form as bytes, and are only read as text for an operation.
fn diff_at(left: Flat<'_>, right: Flat<'_>, path: &mut Vec<u8>, out: &mut Vec<u8>) {
    match (left.kind(), right.kind()) {
        (Kind::Object(before), Kind::Object(after)) => {
            // Consecutive states mostly have the same keys in the same order, so the key
            // `before` holds next is usually the one wanted: comparing it is much cheaper
            // than a search per key. Any mismatch falls back to the search, so the
            // result never depends on the order.
            let mut previous_entries = before.clone().peekable();
            let mut lookup = before.lookup();
            let mut kept = 0usize;
            for (key, value) in after.clone() {
                let previous = match previous_entries.next_if(|(next, _)| *next == key) {
                    Some((_, previous)) => Some(previous),
                    None => {
                        let found = lookup.get(key);
                        if found.is_some() {
                            // Skip past keys removed since (few) to line up again.
                            for _ in 0..RESYNC_STEPS {
                                if previous_entries.next_if(|(next, _)| *next != key).is_none() {
                                    break;
                                }
                            }
                            previous_entries.next_if(|(next, _)| *next == key);
                        }
                        found
                    }
                };
                let len = path.len();
                push_token(path, key);
                match previous {
                    Some(previous) => {
                        kept += 1;
                        diff_at(previous, value, path, out);
                    }
                    None => push_op(out, "add", path, Some(value)),
                }
                path.truncate(len);
            }
            if kept == before.len() {
                return;
            }
            let mut in_after = after.lookup();
            for (key, _) in before.restart() {
                if in_after.get(key).is_none() {
                    let len = path.len();
                    push_token(path, key);
                    push_op(out, "remove", path, None);
                    path.truncate(len);
                }
            }
        }
        (Kind::Array(before), Kind::Array(after)) => {
            let before_len = before.len();
            let after_len = after.len();
            let common = before_len.min(after_len);
            for (index, (previous, value)) in before.zip(after.clone()).enumerate() {
                let len = path.len();
                push_index(path, index);
                diff_at(previous, value, path, out);
                path.truncate(len);
            }
            // From the end, so every index is valid when its operation applies.
            for index in (common..before_len).rev() {
                let len = path.len();
                push_index(path, index);
                push_op(out, "remove", path, None);
                path.truncate(len);
            }
            for (index, value) in after.enumerate().skip(common) {
                let len = path.len();
                push_index(path, index);
                push_op(out, "add", path, Some(value));
                path.truncate(len);
            }
        }
        _ if left.same_scalar(right) => {}
        _ => push_op(out, "replace", path, Some(right)),
    }
}

/// A change an RFC 7386 merge patch cannot express: an object member whose new
/// value is `null` (a merge patch's `null` removes the member).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct NotMergeable;

/// How the members of a merge patch are written: as JSON text (`state.merge`) or in
/// the binary encoding (`?sync=binary`); the walk over the two states is the same.
pub(crate) trait MergeWriter {
    /// A member's key (with whatever separates it from the previous member).
    fn key(&mut self, out: &mut Vec<u8>, key: &str);
    /// A member's new value; `previous` is what it held before, if anything.
    fn value(&mut self, out: &mut Vec<u8>, previous: Option<&Value>, value: &Value);
    /// Before the members of an object merged member by member are written to a
    /// buffer of their own.
    fn open_object(&mut self) {}
    /// The member `key` holding the object opened last, whose members are in
    /// `members`; writes nothing when there are none.
    fn close_object(&mut self, out: &mut Vec<u8>, key: &str, members: &[u8]);
}

/// `"key":value,…` without braces.
pub(crate) struct JsonMerge;

impl MergeWriter for JsonMerge {
    fn key(&mut self, out: &mut Vec<u8>, key: &str) {
        if !out.is_empty() {
            out.push(b',');
        }
        let _ = serde_json::to_writer(&mut *out, key);
        out.push(b':');
    }

    fn value(&mut self, out: &mut Vec<u8>, _previous: Option<&Value>, value: &Value) {
        let _ = serde_json::to_writer(&mut *out, value);
    }

    fn close_object(&mut self, out: &mut Vec<u8>, key: &str, members: &[u8]) {
        if !members.is_empty() {
            self.key(out, key);
            out.push(b'{');
            out.extend_from_slice(members);
            out.push(b'}');
        }
    }
}

impl MergeWriter for BinaryWriter<'_> {
    fn key(&mut self, out: &mut Vec<u8>, key: &str) {
        BinaryWriter::key(self, out, key);
    }

    fn value(&mut self, out: &mut Vec<u8>, previous: Option<&Value>, value: &Value) {
        BinaryWriter::value(self, out, previous, value);
    }

    fn open_object(&mut self) {
        BinaryWriter::open_object(self);
    }

    fn close_object(&mut self, out: &mut Vec<u8>, key: &str, members: &[u8]) {
        BinaryWriter::close_object(self, out, key, members);
    }
}

/// Appends the members of the merge patch turning object `left` into object
/// `right` to `out`, written by `writer` (nothing when they are equal). Objects
/// are merged member by member, anything else (arrays included) is replaced
/// whole, a removed member is `null`.
pub(crate) fn merge_into(
    left: &Value,
    right: &Value,
    writer: &mut impl MergeWriter,
    out: &mut Vec<u8>,
) -> Result<(), NotMergeable> {
    match (left, right) {
        (Value::Object(before), Value::Object(after)) => merge_members(before, after, writer, out),
        _ => Err(NotMergeable),
    }
}

fn merge_members(
    before: &serde_json::Map<String, Value>,
    after: &serde_json::Map<String, Value>,
    writer: &mut impl MergeWriter,
    out: &mut Vec<u8>,
) -> Result<(), NotMergeable> {
    for (key, value) in after {
        match (before.get(key), value) {
            (Some(previous), _) if previous == value => {}
            (Some(Value::Object(previous)), Value::Object(next)) => {
                writer.open_object();
                let mut inner = Vec::new();
                merge_members(previous, next, writer, &mut inner)?;
                writer.close_object(out, key, &inner);
            }
            (previous, _) => {
                // Applied to a missing or non-object member, an object value is
                // merged into `{}`: a `null` anywhere in it would be dropped.
                if value.is_null() || has_null_member(value) {
                    return Err(NotMergeable);
                }
                writer.key(out, key);
                writer.value(out, previous, value);
            }
        }
    }
    for key in before.keys().filter(|key| !after.contains_key(*key)) {
        writer.key(out, key);
        writer.value(out, None, &Value::Null);
    }
    Ok(())
}

fn has_null_member(value: &Value) -> bool {
    match value {
        Value::Object(members) => members
            .values()
            .any(|member| member.is_null() || has_null_member(member)),
        _ => false,
    }
}

/// Appends `/key` as an RFC 6901 reference token (`~` written `~0`, `/` written
/// `~1`). Called for every member the diff walks, changed or not, so the usual key
/// (no `~`, no `/`) is copied whole.
fn push_token(path: &mut Vec<u8>, key: &[u8]) {
    path.push(b'/');
    if !key.iter().any(|byte| matches!(byte, b'~' | b'/')) {
        path.extend_from_slice(key);
        return;
    }
    // `~` and `/` are ASCII, so no other character's bytes contain them.
    for byte in key {
        match byte {
            b'~' => path.extend_from_slice(b"~0"),
            b'/' => path.extend_from_slice(b"~1"),
            other => path.push(*other),
        }
    }
}

fn push_index(path: &mut Vec<u8>, index: usize) {
    path.push(b'/');
    path.extend_from_slice(itoa::Buffer::new().format(index).as_bytes());
}

fn push_op(out: &mut Vec<u8>, op: &str, path: &[u8], value: Option<Flat<'_>>) {
    if !out.is_empty() {
        out.push(b',');
    }
    out.extend_from_slice(b"{\"op\":\"");
    out.extend_from_slice(op.as_bytes());
    out.extend_from_slice(b"\",\"path\":");
    // Writing a string into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, &String::from_utf8_lossy(path));
    if let Some(value) = value {
        out.extend_from_slice(b",\"value\":");
        value.write_json(out);
    }
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flat::FlatValue;
    use serde_json::json;

    fn round_trip(left: Value, right: Value) -> Value {
        let mut out = Vec::new();
        diff_into(
            FlatValue::new(&left).root(),
            FlatValue::new(&right).root(),
            &mut out,
        );
        let ops: json_patch::Patch =
            serde_json::from_str(&format!("[{}]", String::from_utf8(out).unwrap())).unwrap();
        let mut doc = left;
        json_patch::patch(&mut doc, &ops).unwrap();
        assert_eq!(doc, right);
        serde_json::to_value(ops).unwrap()
    }

    #[test]
    fn objects_whose_names_all_changed_diff_right() {
        // Past a few misses the previous object's members are looked up in an index.
        let left: serde_json::Map<String, Value> =
            (0..100).map(|i| (format!("old-{i}"), json!(i))).collect();
        let mut right: serde_json::Map<String, Value> =
            (0..100).map(|i| (format!("new-{i}"), json!(i))).collect();
        right.extend((40..60).map(|i| (format!("old-{i}"), json!(i * 2))));
        let ops = round_trip(Value::Object(left), Value::Object(right));
        let ops = ops.as_array().unwrap();
        let count = |op: &str| ops.iter().filter(|o| o["op"] == op).count();
        assert_eq!(
            (count("add"), count("replace"), count("remove")),
            (100, 20, 80)
        );
    }

    #[test]
    fn diffs_apply_and_escape_pointers() {
        let ops = round_trip(
            json!({"a/b": 1, "~": [1, 2, 3], "gone": true}),
            json!({"a/b": 2, "~": [1], "new": {}}),
        );
        assert_eq!(
            ops,
            json!([
                {"op": "replace", "path": "/a~1b", "value": 2},
                {"op": "add", "path": "/new", "value": {}},
                {"op": "remove", "path": "/~0/2"},
                {"op": "remove", "path": "/~0/1"},
                {"op": "remove", "path": "/gone"},
            ])
        );
        round_trip(json!({"x": [1]}), json!({"x": [1, {"y": null}, 3]}));
        // Multi-digit indices, and a key that needs both escapes mid-word.
        let long: Vec<u32> = (0..12).collect();
        let ops = round_trip(
            json!({"l": long, "p~q/r": {"s": 1}}),
            json!({"l": (0..13).map(|i| if i == 10 { 99 } else { i }).collect::<Vec<u32>>(), "p~q/r": {"s": 2}}),
        );
        assert_eq!(
            ops,
            json!([
                {"op": "replace", "path": "/l/10", "value": 99},
                {"op": "add", "path": "/l/12", "value": 12},
                {"op": "replace", "path": "/p~0q~1r/s", "value": 2},
            ])
        );
        // Keys removed, added and kept in every mix, so the walk over the previous keys
        // loses its place and has to find it again.
        let ops = round_trip(
            json!({"a": 1, "b": 2, "c": 3, "d": 4, "e": 5, "f": 6, "g": 7, "h": 8}),
            json!({"a": 1, "c": 30, "d": 4, "da": 0, "h": 8, "i": 9}),
        );
        assert_eq!(
            ops,
            json!([
                {"op": "replace", "path": "/c", "value": 30},
                {"op": "add", "path": "/da", "value": 0},
                {"op": "add", "path": "/i", "value": 9},
                {"op": "remove", "path": "/b"},
                {"op": "remove", "path": "/e"},
                {"op": "remove", "path": "/f"},
                {"op": "remove", "path": "/g"},
            ])
        );
        round_trip(json!({"x": {"y": 1}}), json!({"x": [1]}));
        assert_eq!(
            round_trip(
                json!({"same": [1, {"a": 2}]}),
                json!({"same": [1, {"a": 2}]})
            ),
            json!([])
        );
    }
    /// The merge patch of `left` → `right`, or `None` when it cannot be one;
    /// when it can, applying it (RFC 7386, `json_patch::merge`) gives `right`.
    fn merge_round_trip(left: Value, right: Value) -> Option<Value> {
        let mut out = Vec::new();
        merge_into(&left, &right, &mut JsonMerge, &mut out).ok()?;
        let merge: Value =
            serde_json::from_str(&format!("{{{}}}", String::from_utf8(out).unwrap())).unwrap();
        let mut doc = left;
        json_patch::merge(&mut doc, &merge);
        assert_eq!(doc, right);
        Some(merge)
    }

    #[test]
    fn merge_patches_apply_and_refuse_a_member_set_to_null() {
        let merge = merge_round_trip(
            json!({"heroes": {"a": {"x": 1.5, "y": 2, "hp": 9}, "b": {"x": 0}}, "wave": 1, "gone": [1]}),
            json!({"heroes": {"a": {"x": 1.75, "y": 2, "hp": 9}, "c": {"x": 4}}, "wave": 1, "new": "s/~"}),
        );
        assert_eq!(
            merge,
            Some(
                json!({"heroes": {"a": {"x": 1.75}, "c": {"x": 4}, "b": null}, "gone": null, "new": "s/~"})
            )
        );
        assert_eq!(
            merge_round_trip(json!({"a": [1, 2]}), json!({"a": [1, 2]})),
            Some(json!({}))
        );
        // Arrays go whole, nulls inside them included; an object replaces a number.
        merge_round_trip(
            json!({"a": [1, 2], "b": 3}),
            json!({"a": [null, {"k": null}], "b": {"c": 1}}),
        )
        .unwrap();
        // A member that becomes null, also inside a new object, cannot be said.
        assert_eq!(merge_round_trip(json!({"a": 1}), json!({"a": null})), None);
        assert_eq!(
            merge_round_trip(json!({"a": 1}), json!({"a": {"b": {"c": null}}})),
            None
        );
        assert_eq!(
            merge_round_trip(json!({"a": {"b": 1}}), json!({"a": {"b": null}})),
            None
        );
    }

    /// Arrays and objects (member names from `names`) nested up to three deep over
    /// `leaf`.
    fn json_tree(
        leaf: impl proptest::strategy::Strategy<Value = Value> + 'static,
        names: &'static str,
    ) -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        leaf.prop_recursive(3, 24, 4, move |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                proptest::collection::btree_map(names, inner, 0..4)
                    .prop_map(|members| Value::Object(members.into_iter().collect())),
            ]
        })
    }

    fn json_value() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        json_tree(
            prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                (-3i64..3).prop_map(Value::from),
                "[a-c/~]{0,2}".prop_map(Value::from),
            ],
            "[a-d]",
        )
    }

    /// Values with every kind of number serde_json tells apart (unsigned, negative,
    /// float; `1` and `1.0` are not equal), for the flat form.
    fn json_value_of_all_numbers() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        json_tree(
            prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                prop_oneof![Just(0u64), Just(1), Just(u64::MAX)].prop_map(Value::from),
                prop_oneof![Just(-1i64), Just(i64::MIN)].prop_map(Value::from),
                prop_oneof![Just(0.0f64), Just(-0.0), Just(1.0), Just(-2.5), Just(1e300)]
                    .prop_map(Value::from),
                "[a-c/~é]{0,3}".prop_map(Value::from),
            ],
            "[a-dé]",
        )
    }

    fn json_object() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        proptest::collection::btree_map("[a-d]", json_value(), 0..5)
            .prop_map(|members| Value::Object(members.into_iter().collect()))
    }

    proptest::proptest! {
        #[test]
        fn diffs_from_a_flat_state_round_trip(
            left in json_value_of_all_numbers(),
            right in json_value_of_all_numbers(),
        ) {
            round_trip(left, right);
        }

        #[test]
        fn flat_values_hold_what_they_were_made_of(value in json_value_of_all_numbers()) {
            let flat = FlatValue::new(&value);
            proptest::prop_assert_eq!(flat.to_value(), value.clone());
            // Its JSON is serde_json's, to the byte.
            proptest::prop_assert_eq!(flat.root().to_json(), value.to_string());
            // Serde into the flat form writes what the tree's writer does.
            let serialized = crate::flat::to_flat(&value, 0).unwrap();
            proptest::prop_assert_eq!(serialized.as_bytes(), flat.as_bytes());
            // A scalar equals itself flat, and nothing else.
            if !value.is_object() && !value.is_array() {
                proptest::prop_assert!(flat.root().same_scalar(flat.root()));
                for other in [json!(null), json!(0), json!(0.0), json!(-1), json!(""), json!(false)] {
                    let other_flat = FlatValue::new(&other);
                    proptest::prop_assert_eq!(flat.root().same_scalar(other_flat.root()), other == value);
                }
            }
        }

        /// Any two objects: the merge patch applies to the new one exactly, or is
        /// refused only because some member of the new one is null.
        #[test]
        fn merge_patches_round_trip_or_name_a_null_member(left in json_object(), right in json_object()) {
            if merge_round_trip(left.clone(), right.clone()).is_none() {
                proptest::prop_assert!(has_null_member(&right), "{left} -> {right}");
            }
        }

        /// A chain of states sent as binary frames: a client that started from the
        /// table at its join and decodes each frame holds every state exactly, and
        /// each frame says what the JSON merge patch says.
        #[test]
        fn binary_frames_say_the_json_merge_patch(states in proptest::collection::vec(json_object(), 2..6)) {
            use matchplane_contracts::binary_state::{KeyTable, decode_state_merge, state_merge_frame};
            let mut table = KeyTable::default();
            let mut keys = table.names().to_vec();
            let mut mirror = states[0].clone();
            for (seq, pair) in states.windows(2).enumerate() {
                let (left, right) = (&pair[0], &pair[1]);
                let mut writer = BinaryWriter::entering(&mut table);
                let mut members = Vec::new();
                if merge_into(left, right, &mut writer, &mut members).is_err() {
                    // The server sends a snapshot with the whole table instead.
                    mirror = right.clone();
                    keys = table.names().to_vec();
                    continue;
                }
                let frame = state_merge_frame(seq as u64, &writer.into_definitions(), &members, &[]);
                let (_, merge) = decode_state_merge(&frame, &mut keys, Some(&mirror)).unwrap();
                proptest::prop_assert_eq!(Some(merge.clone()), merge_round_trip(left.clone(), right.clone()));
                json_patch::merge(&mut mirror, &merge);
                proptest::prop_assert_eq!(&mirror, right);
                proptest::prop_assert_eq!(&keys[..], table.names());
            }
        }
    }
}
