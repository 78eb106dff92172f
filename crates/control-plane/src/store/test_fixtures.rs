//! Records for the unit tests of the stores this process owns.

use std::collections::BTreeMap;

use matchplane_contracts::matchmaking::Assignment;

use super::TicketRecord;
use crate::clock::Millis;

/// A queued solo ticket in queue `q`, its player named after it.
pub(super) fn ticket(id: &str, group: &str, now: Millis) -> TicketRecord {
    TicketRecord {
        group_id: group.to_owned(),
        ..TicketRecord::queued(
            id.to_owned(),
            "q".to_owned(),
            vec![format!("{id}-player")],
            now,
            now + 600_000,
        )
    }
}

/// A ticket of `owner` for these members.
pub(super) fn party(
    id: &str,
    owner: &str,
    group: &str,
    members: &[&str],
    now: Millis,
) -> TicketRecord {
    TicketRecord {
        owner: owner.to_owned(),
        members: members.iter().map(|m| (*m).to_owned()).collect(),
        ..ticket(id, group, now)
    }
}

/// An assignment to a land on `server`.
pub(super) fn assignment_on(server: &str, id: &str) -> Assignment {
    Assignment {
        assignment_id: id.to_owned(),
        match_token: String::new(),
        connect_url: "ws://127.0.0.1:1/game/q".to_owned(),
        land_id: format!("q:{id}"),
        server_id: server.to_owned(),
        expires_at: "1970-01-01T00:01:00Z".to_owned(),
        member_tokens: BTreeMap::new(),
        match_id: None,
        team: Some(0),
    }
}

#[test]
fn empty_request_fields_are_left_out_of_the_record_and_older_records_still_decode() {
    let record = ticket("t1", "g1", 1_000);
    let json = serde_json::to_value(&record).unwrap();
    for absent in [
        "region",
        "constraints",
        "attributes",
        "tags",
        "stringArgs",
        "latencies",
        "assignment",
        "assignmentExpiresAt",
    ] {
        assert!(json.get(absent).is_none(), "{absent} in {json}");
    }
    assert_eq!(
        serde_json::from_value::<TicketRecord>(json).unwrap(),
        record
    );
    // As earlier versions wrote it: every field, empty ones as null / {} / [].
    let mut older = serde_json::to_value(&record).unwrap();
    let object = older.as_object_mut().unwrap();
    for (name, empty) in [
        ("region", serde_json::Value::Null),
        ("constraints", serde_json::Value::Null),
        ("attributes", serde_json::json!({})),
        ("tags", serde_json::json!([])),
        ("stringArgs", serde_json::json!({})),
        ("latencies", serde_json::json!({})),
        ("assignment", serde_json::Value::Null),
        ("assignmentExpiresAt", serde_json::Value::Null),
    ] {
        object.insert(name.to_owned(), empty);
    }
    assert_eq!(
        serde_json::from_value::<TicketRecord>(older).unwrap(),
        record
    );
    // A filled field is still written.
    let mut tagged = record;
    tagged.tags = vec!["eu".to_owned()];
    assert_eq!(
        serde_json::to_value(&tagged).unwrap()["tags"],
        serde_json::json!(["eu"])
    );
}
