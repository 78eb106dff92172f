//! Reading the cluster event feed: the `{P}:events` stream every
//! state-changing script of the Redis store appends to, atomically with the
//! change. A replica reads it after a position it remembers (XREAD BLOCK on a
//! connection of its own), so a reconnect resumes where it stopped; a position
//! trimmed away (or lost with a Redis that restarted without its data) is
//! reported as a gap, which the reader answers by reloading state. See
//! docs/scale-out.md ("Cluster event feed").

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use matchplane_contracts::matchmaking::{Assignment, TicketStatus};
use redis::Value;
use redis::aio::MultiplexedConnection;

use super::redis_store::{FEED_MAXLEN, ticket_from_fields};
use super::{StoreError, TicketRecord};
use crate::clock::Millis;

/// The longest a read waits for new entries.
pub const MAX_BLOCK: Duration = Duration::from_secs(10);

/// What one feed entry says happened to its ticket.
#[derive(Debug, Clone, PartialEq)]
pub enum FeedEvent {
    Enqueued,
    Cancelled,
    Expired,
    Assigned(Box<Assignment>),
    /// Back in its queue after its game server was lost (nobody had joined).
    Requeued {
        reason: String,
    },
    /// The land its players had joined died; the ticket was requeued or failed
    /// (a `Failed` entry follows then).
    MatchLost {
        land_id: String,
        reason: String,
    },
    Failed {
        reason: String,
    },
}

/// One entry another replica appended.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedEntry {
    /// The stream id (`<ms>-<seq>`).
    pub id: String,
    /// When Redis appended it (the id's time part), for the feed lag.
    pub appended_at: Millis,
    pub ticket_id: String,
    pub queue_key: String,
    pub event: FeedEvent,
    /// For an entry that may have put the ticket in a queue (enqueued,
    /// requeued, match lost): the ticket as the entry carries it (enqueued),
    /// or as read after the entry if it was still queued then. A later entry
    /// tells what became of it otherwise.
    pub queued: Option<TicketRecord>,
}

/// What one read of the feed found.
#[derive(Debug, Clone, PartialEq)]
pub enum FeedRead {
    /// Entries after the position, other replicas' only; `last_id` is the
    /// new position (it also moves past this replica's own entries).
    Entries {
        entries: Vec<FeedEntry>,
        last_id: Option<String>,
    },
    /// The position is no longer in the stream: entries after it may be lost.
    Gap,
}

/// A replica's reader of the feed, with a connection of its own.
pub struct RedisFeed {
    client: redis::Client,
    stream: String,
    ticket_prefix: String,
    replica_id: String,
    conn: Option<MultiplexedConnection>,
    unsure_writes: Arc<AtomicBool>,
}

fn unavailable(err: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(err.to_string())
}

fn bad_reply(what: &str) -> StoreError {
    StoreError::Unavailable(format!("unexpected feed reply from Redis: {what}"))
}

impl RedisFeed {
    pub(super) fn new(
        client: redis::Client,
        stream: String,
        ticket_prefix: String,
        replica_id: String,
        unsure_writes: Arc<AtomicBool>,
    ) -> Self {
        Self {
            client,
            stream,
            ticket_prefix,
            replica_id,
            conn: None,
            unsure_writes,
        }
    }

    /// Whether one of this replica's writes failed without an answer since
    /// the last call. Its feed entries (if Redis applied it) carry this
    /// replica's origin and are skipped, and the in-process delivery never
    /// happened: the caller must reload what they would have told.
    pub fn take_unsure_writes(&self) -> bool {
        self.unsure_writes.swap(false, Ordering::AcqRel)
    }

    /// Puts back what [`RedisFeed::take_unsure_writes`] took, when the reload failed.
    pub fn keep_unsure_writes(&self) {
        self.unsure_writes.store(true, Ordering::Release);
    }

    /// The `origin` this replica's own entries carry (skipped on read: they
    /// were delivered in-process already).
    pub fn replica_id(&self) -> &str {
        &self.replica_id
    }

    async fn connection(&mut self) -> Result<MultiplexedConnection, StoreError> {
        if let Some(conn) = &self.conn {
            return Ok(conn.clone());
        }
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            // A blocking read answers after its block time at the latest.
            .set_response_timeout(Some(MAX_BLOCK + Duration::from_secs(5)));
        let conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|err| StoreError::Unavailable(format!("connecting to Redis: {err}")))?;
        self.conn = Some(conn.clone());
        Ok(conn)
    }

    /// Runs a command; a failure drops the connection so the next call opens a new one.
    async fn query<T: redis::FromRedisValue>(
        &mut self,
        pipe: &redis::Pipeline,
    ) -> Result<T, StoreError> {
        let mut conn = self.connection().await?;
        match pipe.query_async(&mut conn).await {
            Ok(value) => Ok(value),
            Err(err) => {
                self.conn = None;
                Err(unavailable(err))
            }
        }
    }

    /// Drops the connection; the next call opens a new one.
    pub fn disconnect(&mut self) {
        self.conn = None;
    }

    /// Appends a marker entry and returns its id: the position to read after.
    /// Taken before loading state, so nothing falls between the load and the
    /// feed; and since the stream is never empty after it, a position that is
    /// no longer in the stream always means a gap.
    pub async fn mark(&mut self) -> Result<String, StoreError> {
        let mut pipe = redis::pipe();
        pipe.cmd("XADD")
            .arg(&self.stream)
            .arg("MAXLEN")
            .arg("~")
            .arg(FEED_MAXLEN)
            .arg("*")
            .arg("kind")
            .arg("mark")
            .arg("origin")
            .arg(&self.replica_id);
        let (id,): (String,) = self.query(&pipe).await?;
        Ok(id)
    }

    /// Waits up to `block` (at most [`MAX_BLOCK`]) for entries after `after`
    /// (at most `count`).
    pub async fn read_after(
        &mut self,
        after: &str,
        block: Duration,
        count: usize,
    ) -> Result<FeedRead, StoreError> {
        // On a new connection (a restart, a reconnect) check the position
        // before blocking: with the stream emptied, or Redis back without its
        // data, nothing would end the block to reveal the gap.
        if self.conn.is_none() {
            let mut check = redis::pipe();
            check.cmd("XRANGE").arg(&self.stream).arg(after).arg(after);
            let (position,): (Value,) = self.query(&check).await?;
            if into_array(position)?.is_empty() {
                return Ok(FeedRead::Gap);
            }
        }
        let mut pipe = redis::pipe();
        pipe.cmd("XREAD")
            .arg("COUNT")
            .arg(count)
            .arg("BLOCK")
            .arg(u64::try_from(block.min(MAX_BLOCK).as_millis()).unwrap_or(u64::MAX))
            .arg("STREAMS")
            .arg(&self.stream)
            .arg(after);
        // After the read on the same connection: if the position is still
        // there, nothing after it was trimmed before the read (trimming takes
        // the oldest entries first), so the read saw every entry after it.
        pipe.cmd("XRANGE").arg(&self.stream).arg(after).arg(after);
        let (read, position): (Value, Value) = self.query(&pipe).await?;
        if into_array(position)?.is_empty() {
            return Ok(FeedRead::Gap);
        }
        let mut last_id = None;
        let mut entries = Vec::new();
        for (id, fields) in stream_entries(read)? {
            last_id = Some(id.clone());
            if fields.get("origin").map(String::as_str) == Some(self.replica_id.as_str()) {
                continue;
            }
            if let Some(entry) = parse_entry(id, fields)? {
                entries.push(entry);
            }
        }
        self.fill_queued(&mut entries).await?;
        Ok(FeedRead::Entries { entries, last_id })
    }

    /// Reads the tickets that entries may have put in a queue and do not
    /// carry (requeues, and enqueues by older builds), in one round trip.
    async fn fill_queued(&mut self, entries: &mut [FeedEntry]) -> Result<(), StoreError> {
        let wanted: Vec<usize> = entries
            .iter()
            .enumerate()
            .filter(|(_, entry)| {
                entry.queued.is_none()
                    && matches!(
                        entry.event,
                        FeedEvent::Enqueued
                            | FeedEvent::Requeued { .. }
                            | FeedEvent::MatchLost { .. }
                    )
            })
            .map(|(index, _)| index)
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for index in &wanted {
            pipe.hgetall(format!(
                "{}{}",
                self.ticket_prefix, entries[*index].ticket_id
            ));
        }
        let hashes: Vec<HashMap<String, String>> = self.query(&pipe).await?;
        for (index, fields) in wanted.into_iter().zip(hashes) {
            if fields.is_empty() {
                continue;
            }
            let entry = &mut entries[index];
            let ticket = ticket_from_fields(&entry.ticket_id, &fields)?;
            if ticket.status == TicketStatus::Queued {
                entry.queued = Some(ticket);
            }
        }
        Ok(())
    }
}

/// An entry's fields as a feed entry; `None` for kinds a replica ignores
/// (markers, and kinds from a newer build).
fn parse_entry(
    id: String,
    mut fields: HashMap<String, String>,
) -> Result<Option<FeedEntry>, StoreError> {
    let mut take = |name: &str| fields.remove(name).unwrap_or_default();
    let kind = take("kind");
    let event = match kind.as_str() {
        "enqueued" => FeedEvent::Enqueued,
        "cancelled" => FeedEvent::Cancelled,
        "expired" => FeedEvent::Expired,
        "assigned" => FeedEvent::Assigned(Box::new(
            serde_json::from_str(&take("assignment"))
                .map_err(|err| bad_reply(&format!("assignment in entry {id}: {err}")))?,
        )),
        "requeued" => FeedEvent::Requeued {
            reason: take("reason"),
        },
        "match_lost" => FeedEvent::MatchLost {
            land_id: take("land"),
            reason: take("reason"),
        },
        "failed" => FeedEvent::Failed {
            reason: take("reason"),
        },
        _ => return Ok(None),
    };
    let appended_at = id
        .split('-')
        .next()
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_default();
    let ticket_id = take("ticket");
    // An enqueued entry carries the ticket as created: no read needed. A later
    // entry says if it left the queue since (the matcher removes it then).
    let record = take("record");
    let queued = if record.is_empty() {
        None
    } else {
        Some(
            serde_json::from_str::<TicketRecord>(&record)
                .map(TicketRecord::with_default_owner)
                .map_err(|err| bad_reply(&format!("ticket record in entry {id}: {err}")))?,
        )
    };
    Ok(Some(FeedEntry {
        appended_at,
        ticket_id,
        queue_key: take("queue"),
        event,
        queued,
        id,
    }))
}

fn into_array(value: Value) -> Result<Vec<Value>, StoreError> {
    match value {
        Value::Array(items) | Value::Set(items) => Ok(items),
        Value::Nil => Ok(Vec::new()),
        other => Err(bad_reply(&format!("expected an array, got {other:?}"))),
    }
}

fn into_string(value: Value) -> Result<String, StoreError> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes).map_err(|_| bad_reply("non-UTF-8")),
        Value::SimpleString(text) => Ok(text),
        Value::Int(number) => Ok(number.to_string()),
        other => Err(bad_reply(&format!("expected a string, got {other:?}"))),
    }
}

/// A stream entry: its id and its fields.
type RawEntry = (String, HashMap<String, String>);

/// XREAD's reply for one stream (nil on timeout) as (id, fields) pairs.
fn stream_entries(read: Value) -> Result<Vec<RawEntry>, StoreError> {
    let streams: Vec<Value> = match read {
        Value::Map(pairs) => pairs.into_iter().map(|(_, entries)| entries).collect(),
        other => into_array(other)?
            .into_iter()
            .map(|stream| {
                let mut parts = into_array(stream)?.into_iter();
                parts.next();
                parts
                    .next()
                    .ok_or_else(|| bad_reply("stream without entries"))
            })
            .collect::<Result<_, _>>()?,
    };
    let mut out = Vec::new();
    for entries in streams {
        for entry in into_array(entries)? {
            let mut parts = into_array(entry)?.into_iter();
            let id = into_string(parts.next().ok_or_else(|| bad_reply("entry without id"))?)?;
            let flat = into_array(parts.next().unwrap_or(Value::Nil))?;
            let mut fields = HashMap::with_capacity(flat.len() / 2);
            let mut flat = flat.into_iter();
            while let (Some(name), Some(value)) = (flat.next(), flat.next()) {
                fields.insert(into_string(name)?, into_string(value)?);
            }
            out.push((id, fields));
        }
    }
    Ok(out)
}
