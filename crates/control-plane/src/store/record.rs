//! How the embedded store lays a ticket out on disk. A finished 1v1 ticket
//! was ≈ 1.8 KB of JSON, half of it the match token; what a disk page holds
//! is what the store costs per ticket. So a record is now:
//! - one version byte ([`RECORD_V1`]) and the fields in a fixed order,
//!   encoded by postcard (varints, no member names);
//! - without what it can be told again: the ticket id (the record's key),
//!   a group generated from it, the owner when it is the first member, the assignment's `expiresAt`
//!   text (derived from its millisecond twin) and the land id at the end of
//!   `connectUrl`;
//! - ids ending in a canonical UUID (`group-…`, `hero-defense:…`, assignment
//!   and match ids) as their prefix and 16 bytes instead of 36 characters;
//! - without the match tokens, which go to a table of their own, keyed by
//!   the assignment's expiry, so they are dropped once spent.
//!
//! Records written as JSON by earlier versions (they start with `{`) still
//! decode. Field order is the format: append new fields at the end of a new
//! version, never reorder.

use std::borrow::Cow;
use std::collections::BTreeMap;

use matchplane_contracts::matchmaking::{Assignment, TicketStatus};
use serde::{Deserialize, Serialize};

use super::{StoreError, TicketRecord, has_tokens};
use crate::clock::{Millis, format_rfc3339};

/// The first byte of a postcard ticket record (JSON records begin with `{`).
const RECORD_V1: u8 = 1;
const JSON_RECORD: u8 = b'{';

/// An id as stored: its text, or the text before a trailing canonical
/// (lowercase, hyphenated) UUID and that UUID's 16 bytes.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum CompactId<'a> {
    Text(Cow<'a, str>),
    EndsInUuid(Cow<'a, str>, [u8; 16]),
}

const UUID_TEXT_LEN: usize = 36;

impl<'a> CompactId<'a> {
    fn of(id: &'a str) -> Self {
        if let Some(split) = id.len().checked_sub(UUID_TEXT_LEN)
            && let (Some(prefix), Some(tail)) = (id.get(..split), id.get(split..))
            && let Ok(uuid) = uuid::Uuid::try_parse(tail)
        {
            let mut canonical = [0u8; UUID_TEXT_LEN];
            // Only a UUID that prints back as the same text may be stored as bytes.
            if uuid.hyphenated().encode_lower(&mut canonical).as_bytes() == tail.as_bytes() {
                return Self::EndsInUuid(Cow::Borrowed(prefix), *uuid.as_bytes());
            }
        }
        Self::Text(Cow::Borrowed(id))
    }

    fn into_string(self) -> String {
        match self {
            Self::Text(text) => text.into_owned(),
            Self::EndsInUuid(prefix, bytes) => {
                let mut id = String::with_capacity(prefix.len() + UUID_TEXT_LEN);
                id.push_str(&prefix);
                id.push_str(
                    uuid::Uuid::from_bytes(bytes)
                        .hyphenated()
                        .encode_lower(&mut [0u8; UUID_TEXT_LEN]),
                );
                id
            }
        }
    }
}

#[derive(Serialize, Deserialize)]
struct StoredTicket<'a> {
    queue_key: Cow<'a, str>,
    /// `None`: the group generated from the ticket id (no `groupId` asked).
    group_id: Option<CompactId<'a>>,
    /// `None`: the owner is the first member (the usual case).
    owner: Option<Cow<'a, str>>,
    members: Cow<'a, [String]>,
    region: Option<Cow<'a, str>>,
    /// JSON text: postcard cannot carry a self-describing value.
    constraints: Option<String>,
    attributes: Cow<'a, BTreeMap<String, f64>>,
    tags: Cow<'a, [String]>,
    string_args: Cow<'a, BTreeMap<String, String>>,
    latencies: Cow<'a, BTreeMap<String, u32>>,
    status: TicketStatus,
    enqueued_at: Millis,
    /// The other times as offsets from `enqueued_at` (wrapping, so any value
    /// round-trips): a few bytes instead of six each.
    expires_after: u64,
    updated_after: u64,
    assignment_expires_after: Option<u64>,
    assignment: Option<StoredAssignment<'a>>,
    assigned_instance: Option<CompactId<'a>>,
    failure_reason: Option<Cow<'a, str>>,
}

#[derive(Serialize, Deserialize)]
struct StoredAssignment<'a> {
    assignment_id: CompactId<'a>,
    land_id: CompactId<'a>,
    connect_url: StoredUrl<'a>,
    server_id: Cow<'a, str>,
    /// The `expiresAt` text only when it is not the one derived from the
    /// ticket's `assignment_expires_at`.
    expires_at_text: Option<Cow<'a, str>>,
    match_id: Option<CompactId<'a>>,
    team: Option<u32>,
}

#[derive(Serialize, Deserialize)]
enum StoredUrl<'a> {
    Full(Cow<'a, str>),
    /// The URL is this prefix followed by the land id.
    EndsWithLandId(Cow<'a, str>),
}

/// The match tokens of one assignment, stored apart from the ticket.
#[derive(Serialize, Deserialize)]
struct StoredTokens<'a> {
    match_token: Cow<'a, str>,
    member_tokens: Cow<'a, BTreeMap<String, String>>,
}

fn corrupt(key: &str, reason: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        key: key.to_owned(),
        reason: reason.to_string(),
    }
}

/// The record of `ticket` without its id and tokens (see the module docs).
pub(super) fn encode_ticket(ticket: &TicketRecord) -> Result<Vec<u8>, StoreError> {
    let stored = StoredTicket {
        queue_key: Cow::Borrowed(&ticket.queue_key),
        group_id: ticket
            .has_named_group()
            .then(|| CompactId::of(&ticket.group_id)),
        owner: (ticket.members.first() != Some(&ticket.owner))
            .then_some(Cow::Borrowed(ticket.owner.as_str())),
        members: Cow::Borrowed(&ticket.members),
        region: ticket.region.as_deref().map(Cow::Borrowed),
        constraints: ticket
            .constraints
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(|err| corrupt(&ticket.ticket_id, err))?,
        attributes: Cow::Borrowed(&ticket.attributes),
        tags: Cow::Borrowed(&ticket.tags),
        string_args: Cow::Borrowed(&ticket.string_args),
        latencies: Cow::Borrowed(&ticket.latencies),
        status: ticket.status,
        enqueued_at: ticket.enqueued_at,
        expires_after: ticket.expires_at.wrapping_sub(ticket.enqueued_at),
        updated_after: ticket.updated_at.wrapping_sub(ticket.enqueued_at),
        assignment_expires_after: ticket
            .assignment_expires_at
            .map(|at| at.wrapping_sub(ticket.enqueued_at)),
        assignment: ticket.assignment.as_ref().map(|assignment| {
            let expires_at = ticket.assignment_expires_at;
            StoredAssignment {
                assignment_id: CompactId::of(&assignment.assignment_id),
                land_id: CompactId::of(&assignment.land_id),
                connect_url: match assignment.connect_url.strip_suffix(&assignment.land_id) {
                    Some(prefix) => StoredUrl::EndsWithLandId(Cow::Borrowed(prefix)),
                    None => StoredUrl::Full(Cow::Borrowed(&assignment.connect_url)),
                },
                server_id: Cow::Borrowed(&assignment.server_id),
                expires_at_text: (expires_at.map(format_rfc3339).as_ref()
                    != Some(&assignment.expires_at))
                .then_some(Cow::Borrowed(assignment.expires_at.as_str())),
                match_id: assignment.match_id.as_deref().map(CompactId::of),
                team: assignment.team,
            }
        }),
        assigned_instance: ticket.assigned_instance.as_deref().map(CompactId::of),
        failure_reason: ticket.failure_reason.as_deref().map(Cow::Borrowed),
    };
    let mut bytes = vec![RECORD_V1];
    postcard::to_io(&stored, &mut bytes).map_err(|err| corrupt(&ticket.ticket_id, err))?;
    Ok(bytes)
}

/// The ticket stored under `ticket_id`, in either format; its assignment (if
/// any) comes without tokens (see [`attach_tokens`]).
pub(super) fn decode_ticket(ticket_id: &str, bytes: &[u8]) -> Result<TicketRecord, StoreError> {
    let ticket = match bytes.split_first() {
        Some((&RECORD_V1, body)) => from_stored(ticket_id, body)?,
        Some((&JSON_RECORD, _)) => {
            serde_json::from_slice(bytes).map_err(|err| corrupt(ticket_id, err))?
        }
        Some((other, _)) => {
            return Err(corrupt(ticket_id, format!("unknown record format {other}")));
        }
        None => return Err(corrupt(ticket_id, "empty record")),
    };
    Ok(ticket.with_default_owner())
}

fn from_stored(ticket_id: &str, body: &[u8]) -> Result<TicketRecord, StoreError> {
    let stored: StoredTicket<'_> =
        postcard::from_bytes(body).map_err(|err| corrupt(ticket_id, err))?;
    let enqueued_at = stored.enqueued_at;
    let members = stored.members.into_owned();
    let owner = match stored.owner {
        Some(owner) => owner.into_owned(),
        None => members.first().cloned().unwrap_or_default(),
    };
    let constraints = stored
        .constraints
        .map(|text| serde_json::from_str(&text))
        .transpose()
        .map_err(|err| corrupt(ticket_id, err))?;
    let assignment_expires_at = stored
        .assignment_expires_after
        .map(|after| enqueued_at.wrapping_add(after));
    let assignment = stored.assignment.map(|assignment| {
        let land_id = assignment.land_id.into_string();
        Assignment {
            assignment_id: assignment.assignment_id.into_string(),
            match_token: String::new(),
            connect_url: match assignment.connect_url {
                StoredUrl::Full(url) => url.into_owned(),
                StoredUrl::EndsWithLandId(prefix) => format!("{prefix}{land_id}"),
            },
            land_id,
            server_id: assignment.server_id.into_owned(),
            expires_at: match (assignment.expires_at_text, assignment_expires_at) {
                (Some(text), _) => text.into_owned(),
                (None, Some(at)) => format_rfc3339(at),
                (None, None) => String::new(),
            },
            member_tokens: BTreeMap::new(),
            match_id: assignment.match_id.map(CompactId::into_string),
            team: assignment.team,
        }
    });
    Ok(TicketRecord {
        ticket_id: ticket_id.to_owned(),
        queue_key: stored.queue_key.into_owned(),
        group_id: stored.group_id.map_or_else(
            || TicketRecord::generated_group_id(ticket_id),
            CompactId::into_string,
        ),
        owner,
        members,
        region: stored.region.map(Cow::into_owned),
        constraints,
        attributes: stored.attributes.into_owned(),
        tags: stored.tags.into_owned(),
        string_args: stored.string_args.into_owned(),
        latencies: stored.latencies.into_owned(),
        status: stored.status,
        enqueued_at,
        expires_at: enqueued_at.wrapping_add(stored.expires_after),
        updated_at: enqueued_at.wrapping_add(stored.updated_after),
        assignment,
        assignment_expires_at,
        assigned_instance: stored.assigned_instance.map(CompactId::into_string),
        failure_reason: stored.failure_reason.map(Cow::into_owned),
    })
}

/// The tokens of `assignment`, if it carries any, to be stored apart.
pub(super) fn encode_tokens(assignment: &Assignment) -> Result<Option<Vec<u8>>, StoreError> {
    if !has_tokens(assignment) {
        return Ok(None);
    }
    let stored = StoredTokens {
        match_token: Cow::Borrowed(&assignment.match_token),
        member_tokens: Cow::Borrowed(&assignment.member_tokens),
    };
    postcard::to_stdvec(&stored)
        .map(Some)
        .map_err(|err| corrupt(&assignment.assignment_id, err))
}

/// Puts stored tokens back into the assignment they were taken from.
pub(super) fn attach_tokens(
    ticket_id: &str,
    assignment: &mut Assignment,
    bytes: &[u8],
) -> Result<(), StoreError> {
    let stored: StoredTokens<'_> =
        postcard::from_bytes(bytes).map_err(|err| corrupt(ticket_id, err))?;
    assignment.match_token = stored.match_token.into_owned();
    assignment.member_tokens = stored.member_tokens.into_owned();
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use proptest::prelude::*;

    use super::*;
    use crate::store::test_fixtures;

    fn assigned_1v1() -> TicketRecord {
        let id = "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";
        let mut ticket =
            test_fixtures::ticket(id, &TicketRecord::generated_group_id(id), 1_764_201_600_000);
        ticket.owner = "p0-25150097".to_owned();
        ticket.members = vec![ticket.owner.clone()];
        ticket.status = TicketStatus::Assigned;
        ticket.updated_at = ticket.enqueued_at + 37;
        let land_id = "hero-defense:6f1c1d2e-8a9b-4c3d-9e5f-0a1b2c3d4e5f".to_owned();
        ticket.assignment = Some(Assignment {
            assignment_id: "7d2f3a4b-5c6d-4e7f-8091-a2b3c4d5e6f7".to_owned(),
            match_token: "x".repeat(950),
            connect_url: format!("ws://127.0.0.1:9000/game/hero-defense?landId={land_id}"),
            land_id,
            server_id: "gs-1".to_owned(),
            expires_at: format_rfc3339(ticket.enqueued_at + 60_037),
            member_tokens: BTreeMap::new(),
            match_id: Some("0e1f2a3b-4c5d-4e6f-9a0b-1c2d3e4f5a6b".to_owned()),
            team: Some(1),
        });
        ticket.assignment_expires_at = Some(ticket.enqueued_at + 60_037);
        ticket.assigned_instance = Some("5a6b7c8d-9e0f-4a1b-8c2d-3e4f5a6b7c8d".to_owned());
        ticket
    }

    fn without_tokens(mut ticket: TicketRecord) -> TicketRecord {
        if let Some(assignment) = &mut ticket.assignment {
            assignment.match_token.clear();
            assignment.member_tokens.clear();
        }
        ticket
    }

    #[test]
    fn a_finished_1v1_record_is_a_fraction_of_its_json() {
        let ticket = assigned_1v1();
        let bytes = encode_ticket(&ticket).unwrap();
        let json = serde_json::to_vec(&without_tokens(ticket.clone())).unwrap();
        // 182 bytes at the time of writing, against 733 of JSON without the token.
        assert!(
            bytes.len() * 3 < json.len(),
            "{} vs {}",
            bytes.len(),
            json.len()
        );
        assert_eq!(
            decode_ticket(&ticket.ticket_id, &bytes).unwrap(),
            without_tokens(ticket)
        );
    }

    #[test]
    fn tokens_round_trip_apart_from_the_record() {
        let mut ticket = assigned_1v1();
        let assignment = ticket.assignment.as_mut().unwrap();
        assignment
            .member_tokens
            .insert("p0-25150097".to_owned(), "a.b.c".to_owned());
        let original = assignment.clone();
        let tokens = encode_tokens(&original).unwrap().unwrap();
        let mut restored = decode_ticket(&ticket.ticket_id, &encode_ticket(&ticket).unwrap())
            .unwrap()
            .assignment
            .unwrap();
        attach_tokens(&ticket.ticket_id, &mut restored, &tokens).unwrap();
        assert_eq!(restored, original);
        assert_eq!(
            encode_tokens(&without_tokens(ticket).assignment.unwrap()).unwrap(),
            None
        );
    }

    #[test]
    fn json_records_of_earlier_versions_still_decode() {
        let ticket = assigned_1v1();
        let json = serde_json::to_vec(&ticket).unwrap();
        assert_eq!(decode_ticket(&ticket.ticket_id, &json).unwrap(), ticket);
    }

    #[test]
    fn hostile_bytes_are_refused_as_corrupt() {
        for bytes in [&b""[..], &[7, 1, 2], &[RECORD_V1], &[RECORD_V1, 0xff, 0xff]] {
            assert!(matches!(
                decode_ticket("t", bytes),
                Err(StoreError::Corrupt { .. })
            ));
        }
    }

    #[test]
    fn only_canonical_uuids_are_compacted() {
        let canonical = "group-0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";
        assert!(matches!(
            CompactId::of(canonical),
            CompactId::EndsInUuid(..)
        ));
        for id in [
            "group-0193A1B2-C3D4-7E5F-8A9B-0C1D2E3F4A5B",
            "0193a1b2c3d47e5f8a9b0c1d2e3f4a5b",
            "p0-1",
            "",
            "é0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5",
        ] {
            assert_eq!(
                CompactId::of(id),
                CompactId::Text(Cow::Borrowed(id)),
                "{id}"
            );
        }
    }

    fn any_id() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z0-9:é-]{0,12}",
            ("[a-z:-]{0,8}", any::<[u8; 16]>())
                .prop_map(|(prefix, bytes)| format!("{prefix}{}", uuid::Uuid::from_bytes(bytes))),
            any::<[u8; 16]>()
                .prop_map(|bytes| uuid::Uuid::from_bytes(bytes).to_string().to_uppercase()),
        ]
    }

    /// An assignment and its expiry (none in records of old versions).
    fn any_assignment() -> impl Strategy<Value = (Assignment, Option<Millis>)> {
        (
            (
                any_id(),
                any_id(),
                any_id(),
                "[a-z0-9:/?=.]{0,20}",
                any::<bool>(),
            ),
            (
                proptest::option::of(any::<Millis>()),
                any::<bool>(),
                proptest::option::of(any_id()),
            ),
            proptest::option::of(any::<u32>()),
        )
            .prop_map(
                |(
                    (assignment_id, land_id, server_id, url, url_ends_with_land),
                    (expires, derived_text, match_id),
                    team,
                )| {
                    let connect_url = if url_ends_with_land {
                        format!("{url}{land_id}")
                    } else {
                        url
                    };
                    let expires_at = match expires {
                        Some(at) if derived_text => format_rfc3339(at),
                        _ => "2026-11-27T00:00:00Z".to_owned(),
                    };
                    (
                        Assignment {
                            assignment_id,
                            match_token: String::new(),
                            connect_url,
                            land_id,
                            server_id,
                            expires_at,
                            member_tokens: BTreeMap::new(),
                            match_id,
                            team,
                        },
                        expires,
                    )
                },
            )
    }

    fn any_ticket() -> impl Strategy<Value = TicketRecord> {
        let status = prop_oneof![
            Just(TicketStatus::Queued),
            Just(TicketStatus::Assigned),
            Just(TicketStatus::Cancelled),
            Just(TicketStatus::Expired),
            Just(TicketStatus::Failed),
        ];
        (
            (
                any_id(),
                any_id(),
                any_id(),
                proptest::collection::vec(any_id(), 0..4),
            ),
            (
                proptest::option::of("[a-z-]{0,8}"),
                proptest::option::of(prop_oneof![
                    Just(serde_json::json!({"mode": "ranked", "max": [1, 2.5]})),
                    Just(serde_json::json!(null)),
                ]),
                proptest::collection::btree_map(
                    "[a-z]{1,4}",
                    any::<f64>().prop_filter("JSON has no NaN", |v| v.is_finite()),
                    0..3,
                ),
                proptest::collection::vec("[a-z]{0,4}", 0..3),
            ),
            (
                proptest::collection::btree_map("[a-z]{1,4}", "[a-z]{0,4}", 0..3),
                proptest::collection::btree_map("[a-z]{1,4}", any::<u32>(), 0..3),
                status,
                (any::<Millis>(), any::<Millis>(), any::<Millis>()),
            ),
            (
                proptest::option::of(any_assignment()),
                proptest::option::of(any_id()),
                proptest::option::of("[a-z_ ]{0,12}"),
                any::<bool>(),
                any::<bool>(),
            ),
        )
            .prop_map(
                |(
                    (ticket_id, queue_key, group_id, members),
                    (region, constraints, attributes, tags),
                    (string_args, latencies, status, (enqueued_at, expires_at, updated_at)),
                    (
                        assignment,
                        assigned_instance,
                        failure_reason,
                        owner_is_first,
                        generated_group,
                    ),
                )| {
                    let group_id = if generated_group {
                        TicketRecord::generated_group_id(&ticket_id)
                    } else {
                        group_id
                    };
                    let owner = match (owner_is_first, members.first()) {
                        (true, Some(first)) => first.clone(),
                        _ => format!("owner-{ticket_id}"),
                    };
                    TicketRecord {
                        ticket_id,
                        queue_key,
                        group_id,
                        owner,
                        members,
                        region,
                        constraints,
                        attributes,
                        tags,
                        string_args,
                        latencies,
                        status,
                        enqueued_at,
                        expires_at,
                        updated_at,
                        assignment_expires_at: assignment.as_ref().and_then(|(_, at)| *at),
                        assignment: assignment.map(|(assignment, _)| assignment),
                        assigned_instance,
                        failure_reason,
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn every_ticket_round_trips(ticket in any_ticket()) {
            let bytes = encode_ticket(&ticket).unwrap();
            prop_assert_eq!(decode_ticket(&ticket.ticket_id, &bytes).unwrap(), ticket);
        }

        #[test]
        fn arbitrary_bytes_decode_or_are_refused(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_ticket("t", &bytes);
            let mut assignment = assigned_1v1().assignment.unwrap();
            let _ = attach_tokens("t", &mut assignment, &bytes);
        }
    }
}
