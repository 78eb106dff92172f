//! Input rules for client and game-server requests. Each rule has its own
//! error code so a client can tell exactly what to fix.

use matchplane_contracts::ErrorCode;
use matchplane_contracts::matchmaking::EnqueueRequest;
use matchplane_contracts::provisioning::RegisterRequest;

use crate::config::Limits;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub code: ErrorCode,
    pub message: String,
}

fn invalid(code: ErrorCode, message: impl Into<String>) -> Invalid {
    Invalid {
        code,
        message: message.into(),
    }
}

/// An enqueue request that passed validation.
#[derive(Debug, Clone)]
pub struct ValidEnqueue {
    pub queue_key: String,
    pub land_type: String,
    pub group_id: Option<String>,
    pub members: Vec<String>,
    pub request: EnqueueRequest,
}

/// Queue keys and land types: `[A-Za-z0-9._:-]`. Keeps them safe in URLs,
/// log lines and Redis keys without escaping.
fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')
}

/// Player, group and server ids: printable ASCII without spaces or characters
/// that need escaping in URLs (`/`, `?`, `#`, `%`, `&`, `"`).
fn is_id_char(c: char) -> bool {
    c.is_ascii_graphic() && !matches!(c, '/' | '?' | '#' | '%' | '&' | '"' | '\\')
}

fn check_len(field: &str, value: &str, limits: &Limits) -> Result<(), Invalid> {
    if value.len() > limits.max_string_len {
        return Err(invalid(
            ErrorCode::FieldTooLong,
            format!("{field} is longer than {} bytes", limits.max_string_len),
        ));
    }
    Ok(())
}

fn check_id(field: &str, value: &str, code: ErrorCode, limits: &Limits) -> Result<(), Invalid> {
    check_len(field, value, limits)?;
    if value.is_empty() || !value.chars().all(is_id_char) {
        return Err(invalid(
            code,
            format!(
                "{field} must be 1..{} printable ASCII characters without spaces or /?#%&\"\\",
                limits.max_string_len
            ),
        ));
    }
    Ok(())
}

/// The land type a queue key plays on: the part before the first `:`.
pub fn land_type_of(queue_key: &str) -> &str {
    queue_key.split(':').next().unwrap_or(queue_key)
}

pub fn enqueue(request: EnqueueRequest, limits: &Limits) -> Result<ValidEnqueue, Invalid> {
    let queue_key = match request.queue_key.as_deref().map(str::trim) {
        None | Some("") => {
            return Err(invalid(ErrorCode::QueueKeyRequired, "queueKey is required"));
        }
        Some(key) => key.to_owned(),
    };
    check_len("queueKey", &queue_key, limits)?;
    if !queue_key.chars().all(is_key_char) {
        return Err(invalid(
            ErrorCode::InvalidQueueKey,
            "queueKey may only contain letters, digits and . _ : -",
        ));
    }
    let land_type = land_type_of(&queue_key).to_owned();
    if land_type.is_empty() {
        return Err(invalid(
            ErrorCode::InvalidQueueKey,
            "queueKey must start with a land type",
        ));
    }

    let members = match &request.members {
        None => return Err(invalid(ErrorCode::MembersRequired, "members is required")),
        Some(members) if members.is_empty() => {
            return Err(invalid(
                ErrorCode::MembersRequired,
                "members must name at least one player",
            ));
        }
        Some(members) => members.clone(),
    };
    if members.len() > limits.max_members {
        return Err(invalid(
            ErrorCode::TooManyMembers,
            format!("a ticket holds at most {} members", limits.max_members),
        ));
    }
    for member in &members {
        check_id("each member", member, ErrorCode::InvalidMember, limits)?;
    }
    let mut unique = members.clone();
    unique.sort();
    unique.dedup();
    if unique.len() != members.len() {
        return Err(invalid(
            ErrorCode::DuplicateMember,
            "members must be distinct",
        ));
    }
    if let Some(group_size) = request.group_size
        && usize::try_from(group_size).ok() != Some(members.len())
    {
        return Err(invalid(
            ErrorCode::GroupSizeMismatch,
            format!(
                "groupSize is {group_size} but members has {}",
                members.len()
            ),
        ));
    }

    if let Some(group_id) = &request.group_id {
        check_id("groupId", group_id, ErrorCode::InvalidRequest, limits)?;
    }
    if let Some(region) = &request.region {
        check_id("region", region, ErrorCode::InvalidRequest, limits)?;
    }
    check_count("attributes", request.attributes.len(), limits)?;
    for (name, value) in &request.attributes {
        check_len("an attribute name", name, limits)?;
        if !value.is_finite() || value.abs() > limits.max_attribute_magnitude {
            return Err(invalid(
                ErrorCode::InvalidAttribute,
                format!(
                    "attribute {name} must be a finite number of magnitude at most {:e}",
                    limits.max_attribute_magnitude
                ),
            ));
        }
    }
    check_total(
        "attributes",
        request.attributes.keys().map(String::len),
        limits,
    )?;
    check_count("tags", request.tags.len(), limits)?;
    for tag in &request.tags {
        check_len("a tag", tag, limits)?;
    }
    check_total("tags", request.tags.iter().map(String::len), limits)?;
    check_count("stringArgs", request.string_args.len(), limits)?;
    for (name, value) in &request.string_args {
        check_len("a stringArgs name", name, limits)?;
        check_len("a stringArgs value", value, limits)?;
    }
    check_total(
        "stringArgs",
        request.string_args.iter().map(|(k, v)| k.len() + v.len()),
        limits,
    )?;
    check_count("latencies", request.latencies.len(), limits)?;
    check_total(
        "latencies",
        request.latencies.keys().map(String::len),
        limits,
    )?;
    if let Some(constraints) = &request.constraints {
        check_constraints(constraints, limits)?;
    }
    for (region, latency) in &request.latencies {
        check_id(
            "a latencies region",
            region,
            ErrorCode::InvalidLatency,
            limits,
        )?;
        if *latency > 60_000 {
            return Err(invalid(
                ErrorCode::InvalidLatency,
                format!("latency for {region} must be 0..=60000 ms"),
            ));
        }
    }

    Ok(ValidEnqueue {
        queue_key,
        land_type,
        group_id: request.group_id.clone(),
        members,
        request,
    })
}

/// The names and values of one collection together, so a client cannot
/// reach the per-string and per-count limits on every entry at once.
fn check_total(
    field: &str,
    lengths: impl Iterator<Item = usize>,
    limits: &Limits,
) -> Result<(), Invalid> {
    let total = lengths.fold(0usize, usize::saturating_add);
    if total > limits.max_fields_bytes {
        return Err(invalid(
            ErrorCode::FieldTooLong,
            format!(
                "{field} holds more than {} bytes of names and values",
                limits.max_fields_bytes
            ),
        ));
    }
    Ok(())
}

/// Compact-JSON size of a value, counted without building the text and
/// abandoned as soon as it passes `limit`.
fn json_size_within(value: &serde_json::Value, limit: usize) -> bool {
    struct Budget {
        left: usize,
    }
    impl std::io::Write for Budget {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.left = self
                .left
                .checked_sub(buf.len())
                .ok_or_else(|| std::io::Error::other("over budget"))?;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    serde_json::to_writer(&mut Budget { left: limit }, value).is_ok()
}

/// Nesting of arrays and objects: a scalar is 0, `[]` and `{}` are 1.
/// Iterative, so the measurement cannot itself run out of stack.
fn json_depth(value: &serde_json::Value) -> usize {
    let mut deepest = 0;
    let mut pending = vec![(value, 0usize)];
    while let Some((value, above)) = pending.pop() {
        let children: Box<dyn Iterator<Item = &serde_json::Value>> = match value {
            serde_json::Value::Array(items) => Box::new(items.iter()),
            serde_json::Value::Object(fields) => Box::new(fields.values()),
            _ => continue,
        };
        let depth = above + 1;
        deepest = deepest.max(depth);
        pending.extend(children.map(|child| (child, depth)));
    }
    deepest
}

fn check_constraints(constraints: &serde_json::Value, limits: &Limits) -> Result<(), Invalid> {
    if !json_size_within(constraints, limits.max_constraints_bytes) {
        return Err(invalid(
            ErrorCode::ConstraintsTooLarge,
            format!(
                "constraints is larger than {} bytes as compact JSON",
                limits.max_constraints_bytes
            ),
        ));
    }
    if json_depth(constraints) > limits.max_constraints_depth {
        return Err(invalid(
            ErrorCode::ConstraintsTooLarge,
            format!(
                "constraints is nested deeper than {} levels",
                limits.max_constraints_depth
            ),
        ));
    }
    Ok(())
}

fn check_count(field: &str, count: usize, limits: &Limits) -> Result<(), Invalid> {
    if count > limits.max_map_entries {
        return Err(invalid(
            ErrorCode::TooManyFields,
            format!("{field} has more than {} entries", limits.max_map_entries),
        ));
    }
    Ok(())
}

/// A registration that passed validation, normalised.
#[derive(Debug, Clone)]
pub struct ValidRegister {
    pub server_id: String,
    pub host: String,
    pub port: u16,
    pub land_types: Vec<String>,
    pub request: RegisterRequest,
}

pub fn register(request: RegisterRequest, limits: &Limits) -> Result<ValidRegister, Invalid> {
    let server_id = match request.server_id.as_deref() {
        None | Some("") => {
            return Err(invalid(ErrorCode::ServerIdRequired, "serverId is required"));
        }
        Some(id) => id.to_owned(),
    };
    check_id("serverId", &server_id, ErrorCode::InvalidServer, limits)?;
    let host = match request.host.as_deref() {
        None | Some("") => return Err(invalid(ErrorCode::InvalidServer, "host is required")),
        Some(host) => host.to_owned(),
    };
    check_id("host", &host, ErrorCode::InvalidServer, limits)?;
    let port = match request.port {
        None | Some(0) => return Err(invalid(ErrorCode::InvalidServer, "port must be 1..=65535")),
        Some(port) => port,
    };
    let mut land_types: Vec<String> = request.land_types.clone();
    if let Some(land_type) = &request.land_type {
        land_types.insert(0, land_type.clone());
    }
    land_types.dedup();
    let mut seen = std::collections::BTreeSet::new();
    land_types.retain(|land_type| seen.insert(land_type.clone()));
    if land_types.is_empty() {
        return Err(invalid(
            ErrorCode::InvalidServer,
            "landType (or landTypes) is required",
        ));
    }
    check_count("landTypes", land_types.len(), limits)?;
    for land_type in &land_types {
        check_len("landType", land_type, limits)?;
        if land_type.is_empty() || !land_type.chars().all(|c| is_key_char(c) && c != ':') {
            return Err(invalid(
                ErrorCode::InvalidServer,
                "land types may only contain letters, digits and . _ -",
            ));
        }
    }
    if let Some(host) = &request.connect_host {
        check_id("connectHost", host, ErrorCode::InvalidServer, limits)?;
    }
    if request.connect_port == Some(0) {
        return Err(invalid(
            ErrorCode::InvalidServer,
            "connectPort must be 1..=65535",
        ));
    }
    if let Some(scheme) = &request.connect_scheme
        && !matches!(scheme.as_str(), "ws" | "wss")
    {
        return Err(invalid(
            ErrorCode::InvalidServer,
            "connectScheme must be ws or wss",
        ));
    }
    if let Some(prefix) = &request.connect_path_prefix {
        check_len("connectPathPrefix", prefix, limits)?;
        let well_formed = prefix.starts_with('/')
            && !prefix.ends_with('/')
            && prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '_' | '.'));
        if !well_formed {
            return Err(invalid(
                ErrorCode::InvalidServer,
                "connectPathPrefix must look like /segment[/segment] (letters, digits, - _ .)",
            ));
        }
    }
    if let Some(region) = &request.region {
        check_id("region", region, ErrorCode::InvalidServer, limits)?;
    }
    if let Some(land_ids) = &request.land_ids {
        if land_ids.len() > 100_000 {
            return Err(invalid(
                ErrorCode::InvalidServer,
                "landIds lists more than 100000 lands",
            ));
        }
        // Land ids are `landType:suffix`, so they may exceed one plain field.
        let max_land_id = limits.max_string_len.saturating_mul(4);
        if let Some(long) = land_ids.iter().find(|id| id.len() > max_land_id) {
            return Err(invalid(
                ErrorCode::FieldTooLong,
                format!(
                    "landIds entry {}... is longer than {max_land_id} bytes",
                    long.chars().take(32).collect::<String>()
                ),
            ));
        }
    }
    Ok(ValidRegister {
        server_id,
        host,
        port,
        land_types,
        request,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(queue_key: &str, members: &[&str]) -> EnqueueRequest {
        EnqueueRequest {
            queue_key: Some(queue_key.to_owned()),
            members: Some(members.iter().map(|m| (*m).to_owned()).collect()),
            ..EnqueueRequest::default()
        }
    }

    fn code(result: Result<ValidEnqueue, Invalid>) -> ErrorCode {
        result.err().map(|e| e.code).unwrap_or(ErrorCode::Internal)
    }

    #[test]
    fn enqueue_rules() {
        let limits = Limits::default();
        assert!(enqueue(request("hero-defense:3v3", &["a", "b"]), &limits).is_ok());
        assert_eq!(
            code(enqueue(request("", &["a"]), &limits)),
            ErrorCode::QueueKeyRequired
        );
        assert_eq!(
            code(enqueue(request("bad key", &["a"]), &limits)),
            ErrorCode::InvalidQueueKey
        );
        assert_eq!(
            code(enqueue(request(":3v3", &["a"]), &limits)),
            ErrorCode::InvalidQueueKey
        );
        assert_eq!(
            code(enqueue(request("q", &[]), &limits)),
            ErrorCode::MembersRequired
        );
        assert_eq!(
            code(enqueue(request("q", &["a", "a"]), &limits)),
            ErrorCode::DuplicateMember
        );
        assert_eq!(
            code(enqueue(request("q", &["a b"]), &limits)),
            ErrorCode::InvalidMember
        );
        let long = "x".repeat(200);
        assert_eq!(
            code(enqueue(request("q", &[long.as_str()]), &limits)),
            ErrorCode::FieldTooLong
        );
        assert_eq!(
            code(enqueue(request(&long, &["a"]), &limits)),
            ErrorCode::FieldTooLong
        );
        let many: Vec<String> = (0..17).map(|i| format!("p{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(
            code(enqueue(request("q", &many), &limits)),
            ErrorCode::TooManyMembers
        );
        let mut mismatch = request("q", &["a", "b"]);
        mismatch.group_size = Some(3);
        assert_eq!(
            code(enqueue(mismatch, &limits)),
            ErrorCode::GroupSizeMismatch
        );
        let mut latency = request("q", &["a"]);
        latency.latencies.insert("eu".to_owned(), 70_000);
        assert_eq!(code(enqueue(latency, &limits)), ErrorCode::InvalidLatency);
    }

    #[test]
    fn land_type_is_the_key_prefix() {
        assert_eq!(land_type_of("hero-defense:3v3"), "hero-defense");
        assert_eq!(land_type_of("counter"), "counter");
    }

    mod properties {
        use std::collections::BTreeMap;

        use proptest::prelude::*;
        use serde_json::{Value, json};

        use super::super::*;

        /// Any JSON value, nested up to a dozen levels.
        fn any_json() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                any::<f64>().prop_map(|f| json!(f)),
                ".{0,40}".prop_map(Value::from),
            ];
            leaf.prop_recursive(12, 256, 8, |inner| {
                prop_oneof![
                    proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                    proptest::collection::btree_map(".{0,12}", inner, 0..8)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        /// Mostly plausible, sometimes hostile strings.
        fn text() -> impl Strategy<Value = String> {
            prop_oneof![
                4 => "[a-z0-9:._-]{0,20}",
                1 => ".{0,200}",
                1 => "[a-z]{100,300}",
            ]
        }

        fn any_f64() -> impl Strategy<Value = f64> {
            prop_oneof![
                4 => -2e12f64..2e12,
                1 => any::<f64>(),
                1 => Just(f64::NAN),
                1 => Just(f64::INFINITY),
                1 => Just(-1e12),
                1 => Just(1e12),
            ]
        }

        fn any_request() -> impl Strategy<Value = EnqueueRequest> {
            (
                proptest::option::of(text()),
                proptest::option::of(text()),
                proptest::option::of(proptest::collection::vec(text(), 0..20)),
                proptest::option::of(any::<u32>()),
                proptest::option::of(text()),
                proptest::option::of(any_json()),
                proptest::collection::btree_map(text(), any_f64(), 0..40),
                proptest::collection::vec(text(), 0..40),
                proptest::collection::btree_map(text(), text(), 0..40),
                proptest::collection::btree_map(text(), 0u32..100_000, 0..40),
            )
                .prop_map(
                    |(
                        queue_key,
                        group_id,
                        members,
                        group_size,
                        region,
                        constraints,
                        attributes,
                        tags,
                        string_args,
                        latencies,
                    )| EnqueueRequest {
                        queue_key,
                        group_id,
                        members,
                        group_size,
                        region,
                        constraints,
                        attributes,
                        tags,
                        string_args,
                        latencies,
                    },
                )
        }

        fn valid_base() -> EnqueueRequest {
            EnqueueRequest {
                queue_key: Some("hero-defense:3v3".to_owned()),
                members: Some(vec!["a".to_owned()]),
                ..EnqueueRequest::default()
            }
        }

        fn code_of(request: EnqueueRequest) -> Option<ErrorCode> {
            enqueue(request, &Limits::default()).err().map(|e| e.code)
        }

        /// `{"<key>":"<pad>"}` of exactly `size` bytes as compact JSON.
        fn constraints_of_size(key: &str, size: usize) -> Value {
            let overhead = json!({ key: "" }).to_string().len();
            json!({ key: "x".repeat(size - overhead) })
        }

        /// `depth` levels of arrays and objects, chosen by `shape`'s bits.
        fn nested(depth: usize, shape: u64) -> Value {
            let mut value = json!(1);
            for level in 0..depth {
                value = if shape >> (level % 64) & 1 == 1 {
                    json!([value])
                } else {
                    json!({ "k": value })
                };
            }
            value
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

            /// Arbitrary input never panics, and whatever is accepted obeys
            /// every documented bound.
            #[test]
            fn accepted_requests_obey_every_bound(request in any_request()) {
                let limits = Limits::default();
                let Ok(valid) = enqueue(request, &limits) else {
                    return Ok(());
                };
                let r = &valid.request;
                prop_assert!(!valid.queue_key.is_empty());
                prop_assert!(valid.queue_key.len() <= limits.max_string_len);
                prop_assert!(valid.queue_key.chars().all(is_key_char));
                prop_assert!(!valid.land_type.is_empty());
                prop_assert!((1..=limits.max_members).contains(&valid.members.len()));
                let mut distinct = valid.members.clone();
                distinct.sort();
                distinct.dedup();
                prop_assert_eq!(distinct.len(), valid.members.len());
                for id in valid.members.iter().chain(&r.group_id).chain(&r.region) {
                    prop_assert!(!id.is_empty() && id.len() <= limits.max_string_len);
                    prop_assert!(id.chars().all(is_id_char));
                }
                for (count, bytes) in [
                    (r.attributes.len(), r.attributes.keys().map(String::len).sum::<usize>()),
                    (r.tags.len(), r.tags.iter().map(String::len).sum()),
                    (
                        r.string_args.len(),
                        r.string_args.iter().map(|(k, v)| k.len() + v.len()).sum(),
                    ),
                    (r.latencies.len(), r.latencies.keys().map(String::len).sum()),
                ] {
                    prop_assert!(count <= limits.max_map_entries);
                    prop_assert!(bytes <= limits.max_fields_bytes);
                }
                for (name, value) in &r.attributes {
                    prop_assert!(name.len() <= limits.max_string_len);
                    prop_assert!(value.is_finite());
                    prop_assert!(value.abs() <= limits.max_attribute_magnitude);
                }
                for s in r.tags.iter().chain(r.string_args.keys()).chain(r.string_args.values()) {
                    prop_assert!(s.len() <= limits.max_string_len);
                }
                for latency in r.latencies.values() {
                    prop_assert!(*latency <= 60_000);
                }
                if let Some(c) = &r.constraints {
                    prop_assert!(serde_json::to_vec(c).unwrap().len() <= limits.max_constraints_bytes);
                    prop_assert!(json_depth(c) <= limits.max_constraints_depth);
                }
            }

            #[test]
            fn constraints_at_the_size_bound_pass_and_one_byte_over_fails(key in "[a-z]{1,16}") {
                let limit = Limits::default().max_constraints_bytes;
                let mut at = valid_base();
                at.constraints = Some(constraints_of_size(&key, limit));
                prop_assert_eq!(code_of(at), None);
                let mut over = valid_base();
                over.constraints = Some(constraints_of_size(&key, limit + 1));
                prop_assert_eq!(code_of(over), Some(ErrorCode::ConstraintsTooLarge));
            }

            #[test]
            fn constraints_at_the_depth_bound_pass_and_one_level_deeper_fails(shape in any::<u64>()) {
                let depth = Limits::default().max_constraints_depth;
                prop_assert_eq!(json_depth(&nested(depth, shape)), depth);
                let mut at = valid_base();
                at.constraints = Some(nested(depth, shape));
                prop_assert_eq!(code_of(at), None);
                let mut over = valid_base();
                over.constraints = Some(nested(depth + 1, shape));
                prop_assert_eq!(code_of(over), Some(ErrorCode::ConstraintsTooLarge));
            }

            #[test]
            fn attributes_beyond_the_magnitude_bound_fail(negative in any::<bool>(), name in "[a-z]{1,10}") {
                let bound = Limits::default().max_attribute_magnitude;
                let sign = if negative { -1.0 } else { 1.0 };
                let just_over = f64::from_bits(bound.to_bits() + 1);
                let mut at = valid_base();
                at.attributes = BTreeMap::from([(name.clone(), sign * bound)]);
                prop_assert_eq!(code_of(at), None);
                for bad in [sign * just_over, f64::NAN, sign * f64::INFINITY] {
                    let mut over = valid_base();
                    over.attributes = BTreeMap::from([(name.clone(), bad)]);
                    prop_assert_eq!(code_of(over), Some(ErrorCode::InvalidAttribute));
                }
            }

            #[test]
            fn collections_past_their_count_or_bytes_fail(which in 0usize..4, pad in 1usize..=100) {
                let limits = Limits::default();
                let n = limits.max_map_entries;
                let names = |count: usize| -> Vec<String> {
                    (0..count).map(|i| format!("k{i:03}{}", "x".repeat(pad))).collect()
                };
                let fill = |request: &mut EnqueueRequest, names: Vec<String>| match which {
                    0 => request.attributes = names.into_iter().map(|k| (k, 1.0)).collect(),
                    1 => request.tags = names,
                    2 => request.string_args = names.into_iter().map(|k| (k, "v".to_owned())).collect(),
                    _ => request.latencies = names.into_iter().map(|k| (k, 10)).collect(),
                };
                // Count: at the bound is fine when the bytes allow it.
                let mut at = valid_base();
                let count_fits = n * (4 + pad + usize::from(which == 2)) <= limits.max_fields_bytes;
                fill(&mut at, names(n));
                if count_fits {
                    prop_assert_eq!(code_of(at), None);
                }
                let mut over = valid_base();
                fill(&mut over, names(n + 1));
                prop_assert_eq!(code_of(over), Some(ErrorCode::TooManyFields));
            }

            #[test]
            fn string_args_one_byte_over_the_total_fail(name_len in 8usize..=100) {
                let limits = Limits::default();
                // Fill to the byte bound exactly with full-length values,
                // then with whatever remains.
                let mut args: BTreeMap<String, String> = BTreeMap::new();
                let mut left = limits.max_fields_bytes;
                let mut i = 0;
                while left > 0 {
                    let name = format!("{i:0name_len$}");
                    let value_len = left.saturating_sub(name.len()).min(limits.max_string_len);
                    left -= (name.len() + value_len).min(left);
                    args.insert(name, "v".repeat(value_len));
                    i += 1;
                }
                let total: usize = args.iter().map(|(k, v)| k.len() + v.len()).sum();
                prop_assume!(total == limits.max_fields_bytes);
                prop_assert!(args.len() < limits.max_map_entries);
                let mut at = valid_base();
                at.string_args = args.clone();
                prop_assert_eq!(code_of(at), None);
                args.insert("q".to_owned(), String::new());
                let mut over = valid_base();
                over.string_args = args;
                prop_assert_eq!(code_of(over), Some(ErrorCode::FieldTooLong));
            }

            /// Register bodies: arbitrary input never panics, and an accepted
            /// body's strings are all bounded.
            #[test]
            fn register_never_panics_and_bounds_strings(
                server_id in proptest::option::of(text()),
                host in proptest::option::of(text()),
                port in proptest::option::of(any::<u16>()),
                land_type in proptest::option::of(text()),
                land_types in proptest::collection::vec(text(), 0..40),
                connect_host in proptest::option::of(text()),
                prefix in proptest::option::of(text()),
                land_ids in proptest::option::of(proptest::collection::vec(text(), 0..20)),
            ) {
                let limits = Limits::default();
                let request = RegisterRequest {
                    server_id,
                    host,
                    port,
                    land_type,
                    land_types,
                    connect_host,
                    connect_path_prefix: prefix,
                    land_ids,
                    ..RegisterRequest::default()
                };
                let Ok(valid) = register(request, &limits) else {
                    return Ok(());
                };
                let r = &valid.request;
                let bounded = [&valid.server_id, &valid.host]
                    .into_iter()
                    .chain(&valid.land_types)
                    .chain(&r.connect_host)
                    .chain(&r.connect_path_prefix)
                    .chain(&r.region);
                for s in bounded {
                    prop_assert!(s.len() <= limits.max_string_len);
                }
                prop_assert!(valid.land_types.len() <= limits.max_map_entries);
                for id in r.land_ids.iter().flatten() {
                    prop_assert!(id.len() <= 4 * limits.max_string_len);
                }
            }
        }

        #[test]
        fn the_issue_s_63_kb_constraints_are_refused() {
            let mut request = valid_base();
            request.constraints = Some(json!({ "blob": "x".repeat(63 * 1024) }));
            assert_eq!(code_of(request), Some(ErrorCode::ConstraintsTooLarge));
        }
    }
}
