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
        if !value.is_finite() {
            return Err(invalid(
                ErrorCode::InvalidAttribute,
                format!("attribute {name} must be a finite number"),
            ));
        }
    }
    check_count("tags", request.tags.len(), limits)?;
    for tag in &request.tags {
        check_len("a tag", tag, limits)?;
    }
    check_count("stringArgs", request.string_args.len(), limits)?;
    for (name, value) in &request.string_args {
        check_len("a stringArgs name", name, limits)?;
        check_len("a stringArgs value", value, limits)?;
    }
    check_count("latencies", request.latencies.len(), limits)?;
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
    if let Some(land_ids) = &request.land_ids
        && land_ids.len() > 100_000
    {
        return Err(invalid(
            ErrorCode::InvalidServer,
            "landIds lists more than 100000 lands",
        ));
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
}
