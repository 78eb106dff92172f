//! The embedded store: one redb file, written by a single thread that commits
//! many requests per transaction (group commit), so one fsync acknowledges a
//! whole burst of enqueues instead of each paying its own.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;

use async_trait::async_trait;
use matchplane_contracts::matchmaking::TicketStatus;
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, Table,
    TableDefinition,
};
use tokio::sync::oneshot;

use super::record::{attach_tokens, decode_ticket, encode_ticket, encode_tokens};
use super::ticket_rules::{self, TicketTables};
use super::{
    CancelOutcome, CommitOutcome, CreateOutcome, MatchCommit, QueueCounts, ReleaseOutcome,
    ReleaseRequest, ServerRecord, Store, StoreError, TicketRecord, count_ticket,
};
use crate::clock::Millis;

/// Tickets that have left the queue (assigned, cancelled, expired, failed).
/// They arrive here about in ticket-id order (ids are time-ordered), so
/// leaves fill up; a record that grew in place (queued, then assigned) would
/// split its full leaf in halves that newer tickets never fill again.
const TICKETS: TableDefinition<&str, &[u8]> = TableDefinition::new("tickets");
/// Queued tickets, until they leave the queue for [`TICKETS`]: a small table,
/// and the matcher's reload at start reads only it.
const QUEUED: TableDefinition<&str, &[u8]> = TableDefinition::new("queued_tickets");
/// (owner, groupId) → ticketId of that owner's most recent ticket of the
/// group (for dedup). Scoped by owner so a groupId names nothing across clients.
const OWNER_GROUPS: TableDefinition<(&str, &str), &str> = TableDefinition::new("owner_groups");
/// Schema 1's groupId → ticketId index, replaced by [`OWNER_GROUPS`]; only
/// opened to delete it when upgrading a data dir.
const LEGACY_GROUPS: TableDefinition<&str, &str> = TableDefinition::new("groups");
/// playerId → ticketId of the queued ticket the player waits in, so "one
/// queued ticket per player" is one lookup per member inside the write.
const QUEUED_PLAYERS: TableDefinition<&str, &str> = TableDefinition::new("queued_players");
const SERVERS: TableDefinition<&str, &[u8]> = TableDefinition::new("servers");
/// Finished tickets by `{updated_at:020}:{ticket_id}`, so purging past the
/// retention is a range scan instead of a walk over every ticket.
const FINISHED: TableDefinition<&str, ()> = TableDefinition::new("finished");
/// (server id, ticket id) of every ticket assigned to a land on that server,
/// so a lost server's tickets are found without scanning all tickets.
const SERVER_TICKETS: TableDefinition<(&str, &str), ()> = TableDefinition::new("server_tickets");
/// (assignment expiry, ticket id) → the assignment's match tokens, kept out
/// of the ticket's record: they are most of its bytes and worthless once
/// spent, and in expiry order they are dropped by a range from the front.
const TOKENS: TableDefinition<(u64, &str), &[u8]> = TableDefinition::new("match_tokens");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// 2: tickets have an owner, groups are indexed per owner, queued players are indexed.
/// 3: assigned tickets are indexed by the server their land is on.
/// 4: binary ticket records (JSON ones still read), tokens in their own table.
const SCHEMA_VERSION: u64 = 4;
/// Spent tokens dropped per write transaction, so a housekeeping pass never
/// holds the writer (and every enqueue behind it) for long.
const TOKEN_DROP_BATCH: u64 = 2048;
/// Finished tickets one purge op deletes at most (each has index entries too).
const PURGE_BATCH: u64 = 512;
/// Rounds of 10 ms that `close` waits for reads in flight to let go.
const CLOSE_WAIT_ROUNDS: u32 = 500;
/// Upper bound on requests folded into one transaction, to bound commit latency.
const MAX_BATCH: usize = 1024;

enum WriteOp {
    Create(Box<TicketRecord>, Millis),
    Cancel(String, Millis),
    Commit(Vec<MatchCommit>, Millis),
    Expire(Vec<String>, Millis),
    Release(Vec<ReleaseRequest>, Millis),
    Purge(Millis, u64),
    DropTokens(Millis),
    PutServer(Box<ServerRecord>),
    RemoveServer(String),
    /// Commit what came before, then let go of the database (graceful shutdown).
    Close,
}

enum WriteResult {
    Created(CreateOutcome),
    Cancelled(CancelOutcome),
    Committed(Vec<CommitOutcome>),
    Expired(Vec<TicketRecord>),
    Released(Vec<ReleaseOutcome>),
    Purged(u64),
    TokensDropped(u64),
    ServerPut,
    ServerRemoved(bool),
    Closed,
}

struct WriteJob {
    op: WriteOp,
    reply: oneshot::Sender<Result<WriteResult, StoreError>>,
}

pub struct RedbStore {
    /// Taken by [`Store::close`]: the file is closed cleanly only once every
    /// handle is gone, or the next start must repair it (a walk of the whole file).
    db: parking_lot::RwLock<Option<Arc<Database>>>,
    writer: mpsc::Sender<WriteJob>,
    kind: &'static str,
    queued: Arc<QueuedPerQueue>,
}

/// Queued tickets per queue, kept by the writer from what each committed
/// batch did, so the dashboard's sampler never scans the tickets table.
#[derive(Default)]
struct QueuedPerQueue(parking_lot::Mutex<BTreeMap<String, u64>>);

impl QueuedPerQueue {
    /// Counted once, when the store opens.
    fn count(db: &Database) -> Result<Self, StoreError> {
        let txn = db.begin_read().map_err(unavailable)?;
        let table = txn.open_table(QUEUED).map_err(unavailable)?;
        let mut counts = BTreeMap::new();
        for entry in table.iter().map_err(unavailable)? {
            let (key, value) = entry.map_err(unavailable)?;
            let ticket = decode_ticket(key.value(), value.value())?;
            *counts.entry(ticket.queue_key).or_default() += 1;
        }
        Ok(Self(parking_lot::Mutex::new(counts)))
    }

    /// Follows the tickets a committed batch put into or took out of a queue.
    fn follow(&self, results: &[WriteResult]) {
        let mut counts = self.0.lock();
        let mut change = |queue_key: &str, entered: bool| {
            if entered {
                *counts.entry(queue_key.to_owned()).or_default() += 1;
            } else if let Some(count) = counts.get_mut(queue_key) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    counts.remove(queue_key);
                }
            }
        };
        for result in results {
            match result {
                WriteResult::Created(CreateOutcome::Created(ticket)) => {
                    change(&ticket.queue_key, true);
                }
                WriteResult::Cancelled(CancelOutcome::Cancelled(ticket)) => {
                    change(&ticket.queue_key, false);
                }
                WriteResult::Committed(outcomes) => {
                    for outcome in outcomes {
                        if let CommitOutcome::Applied(tickets) = outcome {
                            for ticket in tickets {
                                change(&ticket.queue_key, false);
                            }
                        }
                    }
                }
                WriteResult::Expired(tickets) => {
                    for ticket in tickets {
                        change(&ticket.queue_key, false);
                    }
                }
                WriteResult::Released(outcomes) => {
                    for outcome in outcomes {
                        if let ReleaseOutcome::Requeued(ticket) = outcome {
                            change(&ticket.queue_key, true);
                        }
                    }
                }
                // A release that fails a ticket takes it from `assigned`,
                // and a purge never removes a queued one.
                _ => {}
            }
        }
    }
}

fn unavailable(err: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(err.to_string())
}

impl RedbStore {
    /// Opens (or creates) `data_dir/matchplane.redb`; every commit is fsynced.
    /// The dir is owner-only (0700) and the file 0600: tickets name players.
    /// `cache_bytes` bounds redb's page cache (reads past it come from the
    /// OS page cache).
    pub fn open(data_dir: &Path, cache_bytes: usize) -> Result<Self, StoreError> {
        crate::auth::create_private_dir(data_dir).map_err(unavailable)?;
        let path = data_dir.join("matchplane.redb");
        create_private_file(&path).map_err(unavailable)?;
        let db = Database::builder()
            .set_cache_size(cache_bytes)
            .create(&path)
            .map_err(unavailable)?;
        Self::start(db, Durability::Immediate, "redb")
    }

    /// A store that lives in memory only (`--ephemeral`): same code, no disk.
    pub fn in_memory() -> Result<Self, StoreError> {
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(unavailable)?;
        Self::start(db, Durability::None, "memory")
    }

    fn start(db: Database, durability: Durability, kind: &'static str) -> Result<Self, StoreError> {
        let db = Arc::new(db);
        init_schema(&db)?;
        let queued = Arc::new(QueuedPerQueue::count(&db)?);
        let (writer, jobs) = mpsc::channel::<WriteJob>();
        let writer_db = Arc::clone(&db);
        let writer_queued = Arc::clone(&queued);
        std::thread::Builder::new()
            .name("matchplane-store-writer".to_owned())
            .spawn(move || {
                let closing = run_writer(&writer_db, &jobs, durability, &writer_queued);
                drop(writer_db);
                if let Some(reply) = closing {
                    let _ = reply.send(Ok(WriteResult::Closed));
                }
            })
            .map_err(unavailable)?;
        Ok(Self {
            db: parking_lot::RwLock::new(Some(db)),
            writer,
            kind,
            queued,
        })
    }

    async fn write(&self, op: WriteOp) -> Result<WriteResult, StoreError> {
        let (reply, result) = oneshot::channel();
        self.writer
            .send(WriteJob { op, reply })
            .map_err(|_| StoreError::Unavailable("store writer has stopped".to_owned()))?;
        result
            .await
            .map_err(|_| StoreError::Unavailable("store writer dropped the request".to_owned()))?
    }

    /// A point read, on the calling task: a few pages, almost always in redb's
    /// cache or the OS's, where handing it to the blocking pool cost two thread
    /// wake-ups, more than the read itself.
    fn read_now<T>(
        &self,
        read: impl FnOnce(&Database) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let db = self
            .db
            .read()
            .clone()
            .ok_or_else(|| StoreError::Unavailable("the store is closed".to_owned()))?;
        read(&db)
    }

    async fn read<T, F>(&self, read: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    {
        let db = self
            .db
            .read()
            .clone()
            .ok_or_else(|| StoreError::Unavailable("the store is closed".to_owned()))?;
        tokio::task::spawn_blocking(move || read(&db))
            .await
            .map_err(unavailable)?
    }
}

/// What one table of a data dir holds (`matchplane store-stats`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TableUsage {
    pub name: String,
    pub entries: u64,
    /// Leaf and branch pages: what the table occupies on disk.
    pub pages: u64,
    /// Keys and values alone.
    pub stored_bytes: u64,
    /// Unused space inside the table's pages.
    pub fragmented_bytes: u64,
}

/// What a data dir holds, per table and in all.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StoreUsage {
    pub file_bytes: u64,
    pub page_size: u64,
    /// Pages of every table: the rest of the file is free space redb reuses.
    pub pages_in_use: u64,
    pub tickets: u64,
    pub tables: Vec<TableUsage>,
}

impl RedbStore {
    /// Reads what the data dir at `data_dir` holds without writing to it;
    /// refused while a control plane has it open.
    pub fn usage(data_dir: &Path) -> Result<StoreUsage, StoreError> {
        let path = data_dir.join("matchplane.redb");
        let file_bytes = std::fs::metadata(&path)
            .map_err(|err| StoreError::Unavailable(format!("{}: {err}", path.display())))?
            .len();
        let db = redb::ReadOnlyDatabase::open(&path).map_err(|err| match err {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Unavailable(format!(
                "{} is open in another process (stop the control plane first)",
                path.display()
            )),
            redb::DatabaseError::RepairAborted => StoreError::Unavailable(format!(
                "{} was not closed cleanly (killed?); starting the control plane on it repairs it",
                path.display()
            )),
            other => StoreError::Unavailable(format!("{}: {other}", path.display())),
        })?;
        let txn = db.begin_read().map_err(unavailable)?;
        let mut tables = Vec::new();
        table_usage(&txn, TICKETS, &mut tables)?;
        table_usage(&txn, QUEUED, &mut tables)?;
        table_usage(&txn, TOKENS, &mut tables)?;
        table_usage(&txn, OWNER_GROUPS, &mut tables)?;
        table_usage(&txn, QUEUED_PLAYERS, &mut tables)?;
        table_usage(&txn, FINISHED, &mut tables)?;
        table_usage(&txn, SERVER_TICKETS, &mut tables)?;
        table_usage(&txn, SERVERS, &mut tables)?;
        Ok(StoreUsage {
            file_bytes,
            page_size: PAGE_SIZE,
            pages_in_use: tables.iter().map(|table| table.pages).sum(),
            tickets: tables
                .iter()
                .filter(|table| {
                    [TICKETS, QUEUED]
                        .iter()
                        .any(|held| table.name == redb::TableHandle::name(held))
                })
                .map(|table| table.entries)
                .sum(),
            tables,
        })
    }
}

/// redb's page size (its default; this store never changes it).
const PAGE_SIZE: u64 = 4096;

fn table_usage<K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &redb::ReadTransaction,
    definition: TableDefinition<'static, K, V>,
    into: &mut Vec<TableUsage>,
) -> Result<(), StoreError> {
    let table = match txn.open_table(definition) {
        Ok(table) => table,
        // A data dir of an older schema may lack a table.
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
        Err(err) => return Err(unavailable(err)),
    };
    let stats = table.stats().map_err(unavailable)?;
    into.push(TableUsage {
        name: redb::TableHandle::name(&definition).to_owned(),
        entries: table.len().map_err(unavailable)?,
        pages: stats.leaf_pages() + stats.branch_pages(),
        stored_bytes: stats.stored_bytes(),
        fragmented_bytes: stats.fragmented_bytes(),
    });
    Ok(())
}

/// Creates `path` empty with mode 0600 unless it exists (redb initialises
/// an empty file as a new database), and tightens an existing one.
fn create_private_file(path: &Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    drop(options.open(path)?);
    crate::keys::restrict_to_owner(path, 0o600)
}

fn init_schema(db: &Database) -> Result<(), StoreError> {
    let txn = db.begin_write().map_err(unavailable)?;
    {
        txn.open_table(TICKETS).map_err(unavailable)?;
        txn.open_table(QUEUED).map_err(unavailable)?;
        txn.open_table(OWNER_GROUPS).map_err(unavailable)?;
        txn.open_table(QUEUED_PLAYERS).map_err(unavailable)?;
        txn.open_table(SERVERS).map_err(unavailable)?;
        txn.open_table(FINISHED).map_err(unavailable)?;
        txn.open_table(SERVER_TICKETS).map_err(unavailable)?;
        txn.open_table(TOKENS).map_err(unavailable)?;
        let mut meta = txn.open_table(META).map_err(unavailable)?;
        let version = meta
            .get("schema_version")
            .map_err(unavailable)?
            .map(|v| v.value());
        match version {
            None => {
                meta.insert("schema_version", SCHEMA_VERSION)
                    .map_err(unavailable)?;
            }
            Some(SCHEMA_VERSION) => {}
            Some(1) => {
                tracing::info!(
                    "upgrading the data dir to schema {SCHEMA_VERSION}: indexing ticket owners, queued players and assigned tickets"
                );
                rebuild_indexes(&txn)?;
                index_assigned_tickets(&txn)?;
                txn.delete_table(LEGACY_GROUPS).map_err(unavailable)?;
                move_queued_tickets(&txn)?;
                meta.insert("schema_version", SCHEMA_VERSION)
                    .map_err(unavailable)?;
            }
            Some(2) => {
                tracing::info!(
                    "upgrading the data dir to schema {SCHEMA_VERSION}: indexing assigned tickets by server"
                );
                index_assigned_tickets(&txn)?;
                move_queued_tickets(&txn)?;
                meta.insert("schema_version", SCHEMA_VERSION)
                    .map_err(unavailable)?;
            }
            // Other records stay JSON until next written, and decode as before.
            Some(3) => {
                tracing::info!(
                    "upgrading the data dir to schema {SCHEMA_VERSION}: queued tickets apart, binary records, tokens apart"
                );
                move_queued_tickets(&txn)?;
                meta.insert("schema_version", SCHEMA_VERSION)
                    .map_err(unavailable)?;
            }
            Some(other) => {
                return Err(StoreError::Unavailable(format!(
                    "data dir has schema version {other}, this build understands {SCHEMA_VERSION}"
                )));
            }
        }
    }
    txn.commit().map_err(unavailable)
}

/// Rebuilds the owner-group and queued-player indexes from the tickets, for a
/// data dir written before they existed. Where old data has a player in two
/// queued tickets, the index keeps the older one: that is the ticket the
/// matcher takes (it reloads oldest first) and the engine refuses the other.
fn rebuild_indexes(txn: &redb::WriteTransaction) -> Result<(), StoreError> {
    let mut groups: BTreeMap<(String, String), (Millis, String)> = BTreeMap::new();
    let mut players: BTreeMap<String, (Millis, String)> = BTreeMap::new();
    {
        let tickets = txn.open_table(TICKETS).map_err(unavailable)?;
        for entry in tickets.iter().map_err(unavailable)? {
            let (key, value) = entry.map_err(unavailable)?;
            let ticket = decode_ticket(key.value(), value.value())?;
            let newest = (ticket.enqueued_at, ticket.ticket_id.clone());
            groups
                .entry((ticket.owner.clone(), ticket.group_id.clone()))
                .and_modify(|current| {
                    if newest > *current {
                        current.clone_from(&newest);
                    }
                })
                .or_insert(newest);
            if ticket.status == TicketStatus::Queued {
                for member in &ticket.members {
                    let candidate = (ticket.enqueued_at, ticket.ticket_id.clone());
                    players
                        .entry(member.clone())
                        .and_modify(|current| {
                            if candidate < *current {
                                current.clone_from(&candidate);
                            }
                        })
                        .or_insert(candidate);
                }
            }
        }
    }
    let mut owner_groups = txn.open_table(OWNER_GROUPS).map_err(unavailable)?;
    for ((owner, group_id), (_, ticket_id)) in &groups {
        owner_groups
            .insert((owner.as_str(), group_id.as_str()), ticket_id.as_str())
            .map_err(unavailable)?;
    }
    let mut queued_players = txn.open_table(QUEUED_PLAYERS).map_err(unavailable)?;
    for (player_id, (_, ticket_id)) in &players {
        queued_players
            .insert(player_id.as_str(), ticket_id.as_str())
            .map_err(unavailable)?;
    }
    Ok(())
}

/// Moves the queued tickets of a data dir written before they had a table
/// of their own.
fn move_queued_tickets(txn: &redb::WriteTransaction) -> Result<(), StoreError> {
    let mut tickets = txn.open_table(TICKETS).map_err(unavailable)?;
    let mut queued = txn.open_table(QUEUED).map_err(unavailable)?;
    let mut moving = Vec::new();
    for entry in tickets.iter().map_err(unavailable)? {
        let (key, value) = entry.map_err(unavailable)?;
        if decode_ticket(key.value(), value.value())?.status == TicketStatus::Queued {
            moving.push((key.value().to_owned(), value.value().to_vec()));
        }
    }
    for (ticket_id, bytes) in &moving {
        queued
            .insert(ticket_id.as_str(), bytes.as_slice())
            .map_err(unavailable)?;
        tickets.remove(ticket_id.as_str()).map_err(unavailable)?;
    }
    Ok(())
}

/// Indexes every assigned ticket under its server, for a data dir written
/// before that index existed.
fn index_assigned_tickets(txn: &redb::WriteTransaction) -> Result<(), StoreError> {
    let mut assigned = Vec::new();
    {
        let tickets = txn.open_table(TICKETS).map_err(unavailable)?;
        for entry in tickets.iter().map_err(unavailable)? {
            let (key, value) = entry.map_err(unavailable)?;
            let ticket = decode_ticket(key.value(), value.value())?;
            if let (TicketStatus::Assigned, Some(assignment)) = (ticket.status, &ticket.assignment)
            {
                assigned.push((assignment.server_id.clone(), ticket.ticket_id.clone()));
            }
        }
    }
    let mut index = txn.open_table(SERVER_TICKETS).map_err(unavailable)?;
    for (server_id, ticket_id) in &assigned {
        index
            .insert((server_id.as_str(), ticket_id.as_str()), ())
            .map_err(unavailable)?;
    }
    Ok(())
}

/// Commits batches of jobs until asked to close (returning where to say it
/// has) or until every RedbStore handle, and so every sender, is gone.
fn run_writer(
    db: &Database,
    jobs: &mpsc::Receiver<WriteJob>,
    durability: Durability,
    queued: &QueuedPerQueue,
) -> Option<oneshot::Sender<Result<WriteResult, StoreError>>> {
    while let Ok(first) = jobs.recv() {
        let mut batch = Vec::new();
        let mut closing = None;
        let mut next = Some(first);
        while let Some(job) = next {
            if let WriteOp::Close = job.op {
                closing = Some(job.reply);
                break;
            }
            batch.push(job);
            next = if batch.len() < MAX_BATCH {
                jobs.try_recv().ok()
            } else {
                None
            };
        }
        commit_batch(db, batch, durability, queued);
        if closing.is_some() {
            return closing;
        }
    }
    None
}

fn commit_batch(
    db: &Database,
    mut batch: Vec<WriteJob>,
    durability: Durability,
    queued: &QueuedPerQueue,
) {
    if batch.is_empty() {
        return;
    }
    match apply_batch(db, &mut batch, durability) {
        Ok(results) => {
            queued.follow(&results);
            for (job, result) in batch.into_iter().zip(results) {
                // The requester may have gone away (client disconnect); the write stands.
                let _ = job.reply.send(Ok(result));
            }
        }
        Err(err) => {
            tracing::error!(error = %err, ops = batch.len(), "store commit failed");
            for job in batch {
                let _ = job
                    .reply
                    .send(Err(StoreError::Unavailable(err.to_string())));
            }
        }
    }
}

fn apply_batch(
    db: &Database,
    batch: &mut [WriteJob],
    durability: Durability,
) -> Result<Vec<WriteResult>, StoreError> {
    let mut txn = db.begin_write().map_err(unavailable)?;
    txn.set_durability(durability).map_err(unavailable)?;
    let mut results = Vec::with_capacity(batch.len());
    {
        let mut tables = Tables {
            tickets: txn.open_table(TICKETS).map_err(unavailable)?,
            queued: txn.open_table(QUEUED).map_err(unavailable)?,
            owner_groups: txn.open_table(OWNER_GROUPS).map_err(unavailable)?,
            queued_players: txn.open_table(QUEUED_PLAYERS).map_err(unavailable)?,
            servers: txn.open_table(SERVERS).map_err(unavailable)?,
            finished: txn.open_table(FINISHED).map_err(unavailable)?,
            server_tickets: txn.open_table(SERVER_TICKETS).map_err(unavailable)?,
            tokens: txn.open_table(TOKENS).map_err(unavailable)?,
        };
        for job in batch.iter_mut() {
            // Ops are moved out; a placeholder stays behind that is never read again.
            let op = std::mem::replace(&mut job.op, WriteOp::Purge(0, u64::MAX));
            results.push(tables.apply(op)?);
        }
    }
    txn.commit().map_err(unavailable)?;
    Ok(results)
}

struct Tables<'txn> {
    tickets: Table<'txn, &'static str, &'static [u8]>,
    queued: Table<'txn, &'static str, &'static [u8]>,
    owner_groups: Table<'txn, (&'static str, &'static str), &'static str>,
    queued_players: Table<'txn, &'static str, &'static str>,
    servers: Table<'txn, &'static str, &'static [u8]>,
    finished: Table<'txn, &'static str, ()>,
    server_tickets: Table<'txn, (&'static str, &'static str), ()>,
    tokens: Table<'txn, (u64, &'static str), &'static [u8]>,
}

impl Tables<'_> {
    fn apply(&mut self, op: WriteOp) -> Result<WriteResult, StoreError> {
        Ok(match op {
            WriteOp::Create(ticket, now) => {
                WriteResult::Created(ticket_rules::create(self, *ticket, now)?)
            }
            WriteOp::Cancel(ticket_id, now) => {
                WriteResult::Cancelled(ticket_rules::cancel(self, &ticket_id, now)?)
            }
            WriteOp::Commit(matches, now) => {
                WriteResult::Committed(ticket_rules::commit_all(self, matches, now)?)
            }
            WriteOp::Expire(ticket_ids, now) => {
                WriteResult::Expired(ticket_rules::expire(self, &ticket_ids, now)?)
            }
            WriteOp::Release(releases, now) => {
                WriteResult::Released(ticket_rules::release_all(self, releases, now)?)
            }
            WriteOp::Purge(before, keep_at_most) => WriteResult::Purged(ticket_rules::purge(
                self,
                before,
                keep_at_most,
                PURGE_BATCH,
            )?),
            WriteOp::DropTokens(before) => {
                // Spent tokens sit at the front of the table, in expiry order.
                let dropped = self
                    .tokens
                    .extract_from_if(..(before, ""), |_, _| true)
                    .map_err(unavailable)?
                    .take(usize::try_from(TOKEN_DROP_BATCH).unwrap_or(usize::MAX))
                    .try_fold(0u64, |count, entry| entry.map(|_| count + 1))
                    .map_err(unavailable)?;
                WriteResult::TokensDropped(dropped)
            }
            WriteOp::PutServer(server) => {
                let bytes = encode(&*server)?;
                self.servers
                    .insert(server.server_id.as_str(), bytes.as_slice())
                    .map_err(unavailable)?;
                WriteResult::ServerPut
            }
            // Taken out before a batch is applied (see `run_writer`).
            WriteOp::Close => WriteResult::Closed,
            WriteOp::RemoveServer(server_id) => WriteResult::ServerRemoved(
                self.servers
                    .remove(server_id.as_str())
                    .map_err(unavailable)?
                    .is_some(),
            ),
        })
    }
}

impl TicketTables for Tables<'_> {
    fn ticket(&self, ticket_id: &str) -> Result<Option<TicketRecord>, StoreError> {
        read_ticket(&self.tickets, &self.queued, &self.tokens, ticket_id)
    }

    fn insert_ticket(&mut self, ticket: &TicketRecord) -> Result<(), StoreError> {
        let bytes = encode_ticket(ticket)?;
        let id = ticket.ticket_id.as_str();
        let (to, from) = if ticket.status == TicketStatus::Queued {
            (&mut self.queued, &mut self.tickets)
        } else {
            (&mut self.tickets, &mut self.queued)
        };
        to.insert(id, bytes.as_slice()).map_err(unavailable)?;
        // Looked up first: a new ticket is in neither table, and a lookup
        // dirties no page where a removal might.
        if from.get(id).map_err(unavailable)?.is_some() {
            from.remove(id).map_err(unavailable)?;
        }
        // A record written again with the tokens it was read with writes the
        // same entry; one whose assignment was released leaves its entry to
        // be dropped when spent (it is never read: the key needs the expiry).
        if let (Some(expires_at), Some(assignment)) =
            (ticket.assignment_expires_at, &ticket.assignment)
            && let Some(tokens) = encode_tokens(assignment)?
        {
            self.tokens
                .insert((expires_at, ticket.ticket_id.as_str()), tokens.as_slice())
                .map_err(unavailable)?;
        }
        Ok(())
    }

    fn remove_unqueued_ticket(
        &mut self,
        ticket_id: &str,
    ) -> Result<Option<TicketRecord>, StoreError> {
        // A queued ticket lives in `queued` (see `insert_ticket`), any other in `tickets`.
        let removed = match self.tickets.remove(ticket_id).map_err(unavailable)? {
            Some(bytes) => decode_ticket(ticket_id, bytes.value())?,
            None => return Ok(None),
        };
        if removed.status == TicketStatus::Queued {
            // Queued yet not where `insert_ticket` puts it: it stays, moved there.
            self.insert_ticket(&removed)?;
            return Ok(None);
        }
        if let Some(expires_at) = removed.assignment_expires_at {
            self.tokens
                .remove((expires_at, ticket_id))
                .map_err(unavailable)?;
        }
        Ok(Some(removed))
    }

    fn owner_group(&self, owner: &str, group_id: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .owner_groups
            .get((owner, group_id))
            .map_err(unavailable)?
            .map(|id| id.value().to_owned()))
    }

    fn insert_owner_group(
        &mut self,
        owner: &str,
        group_id: &str,
        ticket_id: &str,
    ) -> Result<(), StoreError> {
        self.owner_groups
            .insert((owner, group_id), ticket_id)
            .map_err(unavailable)?;
        Ok(())
    }

    fn remove_owner_group(&mut self, owner: &str, group_id: &str) -> Result<(), StoreError> {
        self.owner_groups
            .remove((owner, group_id))
            .map_err(unavailable)?;
        Ok(())
    }

    fn queued_player(&self, player_id: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .queued_players
            .get(player_id)
            .map_err(unavailable)?
            .map(|id| id.value().to_owned()))
    }

    fn insert_queued_player(&mut self, player_id: &str, ticket_id: &str) -> Result<(), StoreError> {
        self.queued_players
            .insert(player_id, ticket_id)
            .map_err(unavailable)?;
        Ok(())
    }

    fn remove_queued_player(&mut self, player_id: &str) -> Result<(), StoreError> {
        self.queued_players.remove(player_id).map_err(unavailable)?;
        Ok(())
    }

    fn insert_finished(&mut self, key: String) -> Result<(), StoreError> {
        self.finished
            .insert(key.as_str(), ())
            .map_err(unavailable)?;
        Ok(())
    }

    fn remove_finished(&mut self, key: &str) -> Result<(), StoreError> {
        self.finished.remove(key).map_err(unavailable)?;
        Ok(())
    }

    fn finished_len(&self) -> Result<u64, StoreError> {
        self.finished.len().map_err(unavailable)
    }

    fn oldest_finished(
        &self,
        mut wanted: impl FnMut(&str) -> bool,
    ) -> Result<Vec<String>, StoreError> {
        let mut keys = Vec::new();
        for entry in self.finished.iter().map_err(unavailable)? {
            let (key, _) = entry.map_err(unavailable)?;
            if !wanted(key.value()) {
                break;
            }
            keys.push(key.value().to_owned());
        }
        Ok(keys)
    }

    fn insert_server_ticket(&mut self, server_id: &str, ticket_id: &str) -> Result<(), StoreError> {
        self.server_tickets
            .insert((server_id, ticket_id), ())
            .map_err(unavailable)?;
        Ok(())
    }

    fn remove_server_ticket(&mut self, server_id: &str, ticket_id: &str) -> Result<(), StoreError> {
        self.server_tickets
            .remove((server_id, ticket_id))
            .map_err(unavailable)?;
        Ok(())
    }
}

/// A ticket (finished or queued) with its match tokens, if they are still kept.
fn read_ticket(
    tickets: &impl ReadableTable<&'static str, &'static [u8]>,
    queued: &impl ReadableTable<&'static str, &'static [u8]>,
    tokens: &impl ReadableTable<(u64, &'static str), &'static [u8]>,
    ticket_id: &str,
) -> Result<Option<TicketRecord>, StoreError> {
    let bytes = match queued.get(ticket_id).map_err(unavailable)? {
        Some(bytes) => bytes,
        None => match tickets.get(ticket_id).map_err(unavailable)? {
            Some(bytes) => bytes,
            None => return Ok(None),
        },
    };
    let mut ticket = decode_ticket(ticket_id, bytes.value())?;
    if let (Some(expires_at), Some(assignment)) =
        (ticket.assignment_expires_at, &mut ticket.assignment)
        && let Some(stored) = tokens.get((expires_at, ticket_id)).map_err(unavailable)?
    {
        attach_tokens(ticket_id, assignment, stored.value())?;
    }
    Ok(Some(ticket))
}

fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(unavailable)
}

fn decode<T: serde::de::DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|err| StoreError::Corrupt {
        key: key.to_owned(),
        reason: err.to_string(),
    })
}

fn unexpected(result: WriteResult) -> StoreError {
    let name = match result {
        WriteResult::Created(_) => "created",
        WriteResult::Cancelled(_) => "cancelled",
        WriteResult::Committed(_) => "committed",
        WriteResult::Expired(_) => "expired",
        WriteResult::Released(_) => "released",
        WriteResult::Purged(_) => "purged",
        WriteResult::TokensDropped(_) => "tokens dropped",
        WriteResult::ServerPut => "server put",
        WriteResult::ServerRemoved(_) => "server removed",
        WriteResult::Closed => "closed",
    };
    StoreError::Unavailable(format!(
        "store writer answered with the wrong result kind ({name})"
    ))
}

#[async_trait]
impl Store for RedbStore {
    fn kind(&self) -> &'static str {
        self.kind
    }

    async fn create_ticket(
        &self,
        ticket: TicketRecord,
        now: Millis,
    ) -> Result<CreateOutcome, StoreError> {
        match self.write(WriteOp::Create(Box::new(ticket), now)).await? {
            WriteResult::Created(outcome) => Ok(outcome),
            other => Err(unexpected(other)),
        }
    }

    async fn ticket(&self, ticket_id: &str) -> Result<Option<TicketRecord>, StoreError> {
        self.read_now(|db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let tickets = txn.open_table(TICKETS).map_err(unavailable)?;
            let queued = txn.open_table(QUEUED).map_err(unavailable)?;
            let tokens = txn.open_table(TOKENS).map_err(unavailable)?;
            read_ticket(&tickets, &queued, &tokens, ticket_id)
        })
    }

    async fn cancel_ticket(
        &self,
        ticket_id: &str,
        now: Millis,
    ) -> Result<CancelOutcome, StoreError> {
        match self
            .write(WriteOp::Cancel(ticket_id.to_owned(), now))
            .await?
        {
            WriteResult::Cancelled(outcome) => Ok(outcome),
            other => Err(unexpected(other)),
        }
    }

    async fn commit_matches(
        &self,
        matches: Vec<MatchCommit>,
        now: Millis,
    ) -> Result<Vec<CommitOutcome>, StoreError> {
        match self.write(WriteOp::Commit(matches, now)).await? {
            WriteResult::Committed(outcomes) => Ok(outcomes),
            other => Err(unexpected(other)),
        }
    }

    async fn expire_tickets(
        &self,
        ticket_ids: Vec<String>,
        now: Millis,
    ) -> Result<Vec<TicketRecord>, StoreError> {
        match self.write(WriteOp::Expire(ticket_ids, now)).await? {
            WriteResult::Expired(tickets) => Ok(tickets),
            other => Err(unexpected(other)),
        }
    }

    async fn queued_tickets(&self) -> Result<Vec<TicketRecord>, StoreError> {
        self.read(|db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let table = txn.open_table(QUEUED).map_err(unavailable)?;
            let mut queued = Vec::new();
            for entry in table.iter().map_err(unavailable)? {
                let (key, value) = entry.map_err(unavailable)?;
                queued.push(decode_ticket(key.value(), value.value())?);
            }
            queued
                .sort_by(|a, b| (a.enqueued_at, &a.ticket_id).cmp(&(b.enqueued_at, &b.ticket_id)));
            Ok(queued)
        })
        .await
    }

    async fn assigned_on_server(&self, server_id: &str) -> Result<Vec<TicketRecord>, StoreError> {
        let server_id = server_id.to_owned();
        self.read(move |db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let index = txn.open_table(SERVER_TICKETS).map_err(unavailable)?;
            let tickets = txn.open_table(TICKETS).map_err(unavailable)?;
            let queued = txn.open_table(QUEUED).map_err(unavailable)?;
            let tokens = txn.open_table(TOKENS).map_err(unavailable)?;
            let mut assigned = Vec::new();
            let range = index
                .range((server_id.as_str(), "")..)
                .map_err(unavailable)?;
            for entry in range {
                let (key, _) = entry.map_err(unavailable)?;
                let (server, ticket_id) = key.value();
                if server != server_id {
                    break;
                }
                let Some(ticket) = read_ticket(&tickets, &queued, &tokens, ticket_id)? else {
                    continue;
                };
                if ticket.status == TicketStatus::Assigned {
                    assigned.push(ticket);
                }
            }
            Ok(assigned)
        })
        .await
    }

    async fn release_assignments(
        &self,
        releases: Vec<ReleaseRequest>,
        now: Millis,
    ) -> Result<Vec<ReleaseOutcome>, StoreError> {
        match self.write(WriteOp::Release(releases, now)).await? {
            WriteResult::Released(outcomes) => Ok(outcomes),
            other => Err(unexpected(other)),
        }
    }

    async fn purge_finished(&self, before: Millis, keep_at_most: u64) -> Result<u64, StoreError> {
        // In batches, each one write op: the writer applies ops in turn, so a
        // pass that purges every ticket finished in the last 30 s as one op
        // held every enqueue and commit behind it for that long.
        let mut purged = 0;
        loop {
            match self.write(WriteOp::Purge(before, keep_at_most)).await? {
                WriteResult::Purged(count) => {
                    purged += count;
                    if count < PURGE_BATCH {
                        return Ok(purged);
                    }
                }
                other => return Err(unexpected(other)),
            }
        }
    }

    async fn drop_spent_tokens(&self, before: Millis) -> Result<u64, StoreError> {
        let mut dropped = 0;
        loop {
            match self.write(WriteOp::DropTokens(before)).await? {
                WriteResult::TokensDropped(count) => {
                    dropped += count;
                    if count < TOKEN_DROP_BATCH {
                        return Ok(dropped);
                    }
                }
                other => return Err(unexpected(other)),
            }
        }
    }

    async fn put_server(&self, server: ServerRecord) -> Result<(), StoreError> {
        match self.write(WriteOp::PutServer(Box::new(server))).await? {
            WriteResult::ServerPut => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    async fn remove_server(&self, server_id: &str) -> Result<bool, StoreError> {
        match self
            .write(WriteOp::RemoveServer(server_id.to_owned()))
            .await?
        {
            WriteResult::ServerRemoved(existed) => Ok(existed),
            other => Err(unexpected(other)),
        }
    }

    async fn servers(&self) -> Result<Vec<ServerRecord>, StoreError> {
        self.read(|db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let table = txn.open_table(SERVERS).map_err(unavailable)?;
            let mut servers = Vec::new();
            for entry in table.iter().map_err(unavailable)? {
                let (key, value) = entry.map_err(unavailable)?;
                servers.push(decode(key.value(), value.value())?);
            }
            Ok(servers)
        })
        .await
    }

    async fn queue_counts(&self) -> Result<Vec<QueueCounts>, StoreError> {
        self.read(|db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let mut counts: BTreeMap<String, QueueCounts> = BTreeMap::new();
            for held in [TICKETS, QUEUED] {
                let table = txn.open_table(held).map_err(unavailable)?;
                for entry in table.iter().map_err(unavailable)? {
                    let (key, value) = entry.map_err(unavailable)?;
                    let ticket = decode_ticket(key.value(), value.value())?;
                    count_ticket(&mut counts, &ticket);
                }
            }
            Ok(counts.into_values().collect())
        })
        .await
    }

    async fn queued_per_queue(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        Ok(self.queued.0.lock().clone())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.read(|db| db.begin_read().map(|_| ()).map_err(unavailable))
            .await
    }

    async fn close(&self) -> Result<(), StoreError> {
        let Some(db) = self.db.write().take() else {
            return Ok(());
        };
        // The writer commits what it was given, then drops its handle.
        match self.write(WriteOp::Close).await? {
            WriteResult::Closed => {}
            other => return Err(unexpected(other)),
        }
        // A read in flight holds a handle of its own for a moment.
        tokio::task::spawn_blocking(move || {
            let mut db = db;
            for _ in 0..CLOSE_WAIT_ROUNDS {
                match Arc::try_unwrap(db) {
                    Ok(db) => return db.close().map_err(unavailable),
                    Err(shared) => db = shared,
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(StoreError::Unavailable(
                "reads still hold the store; it closes when they end".to_owned(),
            ))
        })
        .await
        .map_err(unavailable)?
    }
}

#[cfg(test)]
mod tests {
    use matchplane_contracts::matchmaking::Assignment;

    use super::*;
    use crate::store::Release;
    use crate::store::test_fixtures::{assignment_on, party, ticket};

    /// Reopens a data dir once the previous handle's writer thread has let go of it.
    async fn reopen(dir: &Path) -> RedbStore {
        for _ in 0..200 {
            if let Ok(store) = RedbStore::open(dir, crate::config::DEFAULT_STORE_CACHE_BYTES) {
                return store;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        RedbStore::open(dir, crate::config::DEFAULT_STORE_CACHE_BYTES).unwrap()
    }

    #[tokio::test]
    async fn queued_counts_are_recounted_when_the_store_opens() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store =
                RedbStore::open(dir.path(), crate::config::DEFAULT_STORE_CACHE_BYTES).unwrap();
            for id in ["a", "b", "c"] {
                store
                    .create_ticket(ticket(id, id, 1_000), 1_000)
                    .await
                    .unwrap();
            }
            store.cancel_ticket("b", 2_000).await.unwrap();
        }
        let store = reopen(dir.path()).await;
        let counts = store.queued_per_queue().await.unwrap();
        assert_eq!(counts, BTreeMap::from([("q".to_owned(), 2)]));
    }

    #[tokio::test]
    async fn purge_removes_only_finished_tickets_past_retention() {
        let store = RedbStore::in_memory().unwrap();
        for (id, group) in [("old", "g1"), ("recent", "g2"), ("waiting", "g3")] {
            store
                .create_ticket(ticket(id, group, 1_000), 1_000)
                .await
                .unwrap();
        }
        store.cancel_ticket("old", 2_000).await.unwrap();
        store.cancel_ticket("recent", 9_000).await.unwrap();

        assert_eq!(store.purge_finished(5_000, u64::MAX).await.unwrap(), 1);
        assert!(store.ticket("old").await.unwrap().is_none());
        assert!(store.ticket("recent").await.unwrap().is_some());
        assert!(
            store.ticket("waiting").await.unwrap().is_some(),
            "queued tickets are never purged"
        );
        // The purged ticket's group is free again; a purge with nothing due is a no-op.
        let again = store
            .create_ticket(ticket("new", "g1", 10_000), 10_000)
            .await
            .unwrap();
        assert!(matches!(again, CreateOutcome::Created(_)));
        assert_eq!(store.purge_finished(5_000, u64::MAX).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn purge_also_keeps_finished_tickets_under_a_count_cap() {
        let store = RedbStore::in_memory().unwrap();
        for i in 0..5u64 {
            let id = format!("t{i}");
            store
                .create_ticket(ticket(&id, &id, 1_000), 1_000)
                .await
                .unwrap();
            store.cancel_ticket(&id, 2_000 + i).await.unwrap();
        }
        store
            .create_ticket(ticket("waiting", "w", 1_000), 1_000)
            .await
            .unwrap();
        // Nothing is past the retention, but only the 2 newest may stay.
        assert_eq!(store.purge_finished(0, 2).await.unwrap(), 3);
        for (id, kept) in [
            ("t0", false),
            ("t2", false),
            ("t3", true),
            ("t4", true),
            ("waiting", true),
        ] {
            assert_eq!(store.ticket(id).await.unwrap().is_some(), kept, "{id}");
        }
        assert_eq!(store.purge_finished(0, 2).await.unwrap(), 0);
    }

    fn created(outcome: CreateOutcome) -> TicketRecord {
        match outcome {
            CreateOutcome::Created(ticket) => ticket,
            other => panic!("expected a new ticket, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn group_ids_are_scoped_to_their_owner() {
        let store = RedbStore::in_memory().unwrap();
        let alice = created(
            store
                .create_ticket(party("t-alice", "alice", "g", &["alice"], 1_000), 1_000)
                .await
                .unwrap(),
        );
        // Another owner reusing the groupId gets a ticket of its own.
        let mallory = created(
            store
                .create_ticket(
                    party("t-mallory", "mallory", "g", &["mallory"], 1_001),
                    1_001,
                )
                .await
                .unwrap(),
        );
        assert_ne!(mallory.ticket_id, alice.ticket_id);
        // The same owner retrying gets its own ticket back.
        let retry = store
            .create_ticket(party("t-retry", "alice", "g", &["alice"], 1_002), 1_002)
            .await
            .unwrap();
        assert_eq!(retry, CreateOutcome::Existing(alice));
        assert!(store.ticket("t-retry").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_player_waits_in_one_queued_ticket_at_a_time() {
        let store = RedbStore::in_memory().unwrap();
        store
            .create_ticket(party("solo", "bob", "g1", &["bob"], 1_000), 1_000)
            .await
            .unwrap();
        // Alone under another group, or inside someone else's party: refused.
        for (id, owner, group, members) in [
            ("again", "bob", "g2", vec!["bob"]),
            ("party", "carol", "g3", vec!["carol", "bob"]),
        ] {
            let outcome = store
                .create_ticket(party(id, owner, group, &members, 1_001), 1_001)
                .await
                .unwrap();
            assert_eq!(
                outcome,
                CreateOutcome::PlayerAlreadyQueued {
                    player_id: "bob".to_owned(),
                    ticket_id: "solo".to_owned(),
                }
            );
            assert!(store.ticket(id).await.unwrap().is_none(), "nothing stored");
        }
        // The refused party did not claim carol either.
        created(
            store
                .create_ticket(party("carol-solo", "carol", "g4", &["carol"], 1_002), 1_002)
                .await
                .unwrap(),
        );
    }

    async fn assign(
        store: &RedbStore,
        ticket: &str,
        server: &str,
        id: &str,
        now: Millis,
    ) -> CommitOutcome {
        store
            .commit_matches(
                vec![MatchCommit {
                    assignments: vec![(ticket.to_owned(), assignment_on(server, id))],
                    assignment_expires_at: now + 60_000,
                    server_instance_id: Some("i1".to_owned()),
                }],
                now,
            )
            .await
            .unwrap()
            .remove(0)
    }

    fn release(ticket: &str, assignment: &str, release: Release) -> ReleaseRequest {
        ReleaseRequest {
            ticket_id: ticket.to_owned(),
            assignment_id: assignment.to_owned(),
            release,
            joined_land: None,
        }
    }

    #[tokio::test]
    async fn released_assignments_requeue_once_and_keep_every_index_right() {
        let store = RedbStore::in_memory().unwrap();
        created(
            store
                .create_ticket(party("t", "pa", "g", &["pa"], 1_000), 1_000)
                .await
                .unwrap(),
        );
        assert!(matches!(
            assign(&store, "t", "gs-1", "as-1", 2_000).await,
            CommitOutcome::Applied(_)
        ));
        let on_server = store.assigned_on_server("gs-1").await.unwrap();
        assert_eq!(on_server.len(), 1);
        assert_eq!(on_server[0].assigned_instance.as_deref(), Some("i1"));
        assert!(store.assigned_on_server("gs-2").await.unwrap().is_empty());

        // Only the holder of that exact assignment is released.
        let requeue = Release::Requeue {
            expires_at: 700_000,
        };
        let outcomes = store
            .release_assignments(vec![release("t", "as-other", requeue.clone())], 3_000)
            .await
            .unwrap();
        assert_eq!(outcomes, vec![ReleaseOutcome::Unchanged("t".to_owned())]);
        let outcomes = store
            .release_assignments(vec![release("t", "as-1", requeue.clone())], 3_000)
            .await
            .unwrap();
        let ReleaseOutcome::Requeued(ticket) = &outcomes[0] else {
            panic!("{outcomes:?}");
        };
        assert_eq!(
            (ticket.status, ticket.enqueued_at, ticket.expires_at),
            (TicketStatus::Queued, 1_000, 700_000)
        );
        assert!(ticket.assignment.is_none());
        // A second release of the same assignment (a retry, a late duplicate) is a no-op.
        let outcomes = store
            .release_assignments(vec![release("t", "as-1", requeue)], 3_001)
            .await
            .unwrap();
        assert_eq!(outcomes, vec![ReleaseOutcome::Unchanged("t".to_owned())]);
        assert!(store.assigned_on_server("gs-1").await.unwrap().is_empty());
        // Queued again: holds its player, survives purges, can be assigned again.
        assert!(matches!(
            store
                .create_ticket(party("t2", "pa", "g2", &["pa"], 3_002), 3_002)
                .await
                .unwrap(),
            CreateOutcome::PlayerAlreadyQueued { .. }
        ));
        store.purge_finished(u64::MAX, 0).await.unwrap();
        assert_eq!(
            store.ticket("t").await.unwrap().unwrap().status,
            TicketStatus::Queued
        );
        assert!(matches!(
            assign(&store, "t", "gs-2", "as-2", 4_000).await,
            CommitOutcome::Applied(_)
        ));
        assert_eq!(store.assigned_on_server("gs-2").await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_release_fails_the_ticket_when_its_player_queued_elsewhere() {
        let store = RedbStore::in_memory().unwrap();
        created(
            store
                .create_ticket(party("t", "pa", "g", &["pa"], 1_000), 1_000)
                .await
                .unwrap(),
        );
        assign(&store, "t", "gs-1", "as-1", 2_000).await;
        // Assigned tickets free their players, who queue again meanwhile.
        created(
            store
                .create_ticket(party("t2", "pa", "g2", &["pa"], 2_500), 2_500)
                .await
                .unwrap(),
        );
        let outcomes = store
            .release_assignments(
                vec![release(
                    "t",
                    "as-1",
                    Release::Requeue {
                        expires_at: 700_000,
                    },
                )],
                3_000,
            )
            .await
            .unwrap();
        let ReleaseOutcome::Failed(ticket) = &outcomes[0] else {
            panic!("{outcomes:?}");
        };
        assert_eq!(
            ticket.failure_reason.as_deref(),
            Some("player_queued_elsewhere")
        );
        assert_eq!(
            store.ticket("t2").await.unwrap().unwrap().status,
            TicketStatus::Queued
        );
        let counts = store.queue_counts().await.unwrap();
        assert_eq!(counts.iter().map(|queue| queue.failed).sum::<u64>(), 1);
    }

    #[tokio::test]
    async fn players_are_free_to_queue_again_once_their_ticket_leaves_the_queue() {
        let store = RedbStore::in_memory().unwrap();
        for (id, player) in [("a", "pa"), ("c", "pc"), ("e", "pe")] {
            store
                .create_ticket(party(id, player, id, &[player], 1_000), 1_000)
                .await
                .unwrap();
        }
        let assignment = Assignment {
            assignment_id: "as".to_owned(),
            match_token: String::new(),
            connect_url: "ws://127.0.0.1:1/game/q".to_owned(),
            land_id: "q:1".to_owned(),
            server_id: "s".to_owned(),
            expires_at: "1970-01-01T00:01:00Z".to_owned(),
            member_tokens: BTreeMap::new(),
            match_id: None,
            team: Some(0),
        };
        let outcomes = store
            .commit_matches(
                vec![MatchCommit {
                    assignments: vec![("a".to_owned(), assignment)],
                    assignment_expires_at: 60_000,
                    server_instance_id: None,
                }],
                2_000,
            )
            .await
            .unwrap();
        assert!(matches!(outcomes[0], CommitOutcome::Applied(_)));
        store.cancel_ticket("c", 2_000).await.unwrap();
        store
            .expire_tickets(vec!["e".to_owned()], 2_000)
            .await
            .unwrap();
        for (id, player) in [("a2", "pa"), ("c2", "pc"), ("e2", "pe")] {
            created(
                store
                    .create_ticket(party(id, player, id, &[player], 2_001), 2_001)
                    .await
                    .unwrap(),
            );
        }
        // A queued ticket past its expiry no longer holds its player, even
        // before the matcher marks it expired.
        let late = 2_001 + 600_000;
        created(
            store
                .create_ticket(party("a3", "pa", "a3", &["pa"], late), late)
                .await
                .unwrap(),
        );
        // Purging the old ticket must not free the player of the newer one.
        store.purge_finished(u64::MAX, u64::MAX).await.unwrap();
        let refused = store
            .create_ticket(party("a4", "pa", "a4", &["pa"], late + 1), late + 1)
            .await
            .unwrap();
        assert!(matches!(
            refused,
            CreateOutcome::PlayerAlreadyQueued { ref ticket_id, .. } if ticket_id == "a3"
        ));
    }

    /// A data dir written by schema 1: tickets without owners, a global
    /// groupId index, no queued-player index.
    fn write_schema_1(path: &Path, tickets: &[TicketRecord]) {
        let db = Database::create(path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut table = txn.open_table(TICKETS).unwrap();
            let mut groups = txn.open_table(LEGACY_GROUPS).unwrap();
            for ticket in tickets {
                let mut json = serde_json::to_value(ticket).unwrap();
                json.as_object_mut().unwrap().remove("owner");
                let bytes = serde_json::to_vec(&json).unwrap();
                table
                    .insert(ticket.ticket_id.as_str(), bytes.as_slice())
                    .unwrap();
                groups
                    .insert(ticket.group_id.as_str(), ticket.ticket_id.as_str())
                    .unwrap();
            }
            txn.open_table(SERVERS).unwrap();
            txn.open_table(FINISHED).unwrap();
            txn.open_table(META)
                .unwrap()
                .insert("schema_version", 1)
                .unwrap();
        }
        txn.commit().unwrap();
    }

    #[tokio::test]
    async fn close_commits_and_leaves_a_file_that_opens_without_repair() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path(), crate::config::DEFAULT_STORE_CACHE_BYTES).unwrap();
        created(
            store
                .create_ticket(ticket("t", "g", 1_000), 1_000)
                .await
                .unwrap(),
        );
        let busy = RedbStore::usage(dir.path()).unwrap_err().to_string();
        assert!(busy.contains("stop the control plane"), "{busy}");
        store.close().await.unwrap();
        store.close().await.unwrap();
        assert!(store.ticket("t").await.is_err());
        assert!(
            store
                .create_ticket(ticket("u", "h", 1_000), 1_000)
                .await
                .is_err()
        );
        // Read-only, so it would refuse a file that needs repair.
        let usage = RedbStore::usage(dir.path()).unwrap();
        assert_eq!(usage.tickets, 1);
        assert!(usage.pages_in_use > 0);
        assert!(usage.pages_in_use * usage.page_size <= usage.file_bytes);
    }

    #[tokio::test]
    async fn a_schema_3_data_dir_is_upgraded_and_tokens_kept_apart_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        // A schema-3 data dir: a JSON record with its token inside.
        let mut old = ticket("old", "g-old", 1_000);
        old.status = TicketStatus::Assigned;
        let mut old_assignment = assignment_on("s", "a-old");
        old_assignment.match_token = "old.token".to_owned();
        old.assignment = Some(old_assignment);
        old.assignment_expires_at = Some(61_000);
        let waiting = ticket("waiting", "g-waiting", 1_500);
        {
            let db = Database::create(dir.path().join("matchplane.redb")).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut tickets = txn.open_table(TICKETS).unwrap();
                for record in [&old, &waiting] {
                    let bytes = serde_json::to_vec(record).unwrap();
                    tickets
                        .insert(record.ticket_id.as_str(), bytes.as_slice())
                        .unwrap();
                }
                txn.open_table(META)
                    .unwrap()
                    .insert("schema_version", 3)
                    .unwrap();
            }
            txn.commit().unwrap();
        }
        let store = reopen(dir.path()).await;
        assert_eq!(store.ticket("old").await.unwrap(), Some(old.clone()));
        assert_eq!(store.queued_tickets().await.unwrap(), vec![waiting.clone()]);
        assert_eq!(store.ticket("waiting").await.unwrap(), Some(waiting));

        created(
            store
                .create_ticket(ticket("new", "g-new", 2_000), 2_000)
                .await
                .unwrap(),
        );
        let mut assignment = assignment_on("s", "a-new");
        assignment.match_token = "new.token".to_owned();
        let committed = store
            .commit_matches(
                vec![MatchCommit {
                    assignments: vec![("new".to_owned(), assignment)],
                    assignment_expires_at: 62_000,
                    server_instance_id: None,
                }],
                2_000,
            )
            .await
            .unwrap();
        let CommitOutcome::Applied(applied) = &committed[0] else {
            panic!("{committed:?}");
        };
        drop(store);
        let store = reopen(dir.path()).await;
        assert_eq!(store.ticket("new").await.unwrap().as_ref(), applied.first());
        assert_eq!(store.ticket("old").await.unwrap(), Some(old));
        assert_eq!(store.drop_spent_tokens(62_001).await.unwrap(), 1);
        let spent = store.ticket("new").await.unwrap().unwrap();
        assert_eq!(spent.assignment.unwrap().match_token, "");
    }

    #[tokio::test]
    async fn a_schema_1_data_dir_is_upgraded_with_owners_and_queued_players() {
        let dir = tempfile::tempdir().unwrap();
        let old = party("old", "", "team", &["dana", "eve"], 1_000);
        write_schema_1(&dir.path().join("matchplane.redb"), &[old]);

        let store = RedbStore::open(dir.path(), crate::config::DEFAULT_STORE_CACHE_BYTES).unwrap();
        let loaded = store.ticket("old").await.unwrap().unwrap();
        assert_eq!(
            loaded.owner, "dana",
            "an old record is owned by its first member"
        );
        let refused = store
            .create_ticket(party("new", "eve", "solo", &["eve"], 2_000), 2_000)
            .await
            .unwrap();
        assert_eq!(
            refused,
            CreateOutcome::PlayerAlreadyQueued {
                player_id: "eve".to_owned(),
                ticket_id: "old".to_owned(),
            }
        );
        // The leader's retry still finds the group's ticket; another owner does not.
        let retry = store
            .create_ticket(
                party("retry", "dana", "team", &["dana", "eve"], 2_000),
                2_000,
            )
            .await
            .unwrap();
        assert!(matches!(retry, CreateOutcome::Existing(ref t) if t.ticket_id == "old"));
        let other = store
            .create_ticket(party("other", "frank", "team", &["frank"], 2_000), 2_000)
            .await
            .unwrap();
        assert!(matches!(other, CreateOutcome::Created(_)));
        drop(store);
        // Reopening an upgraded dir keeps the indexes (no second migration).
        let store = reopen(dir.path()).await;
        assert!(matches!(
            store
                .create_ticket(party("new2", "eve", "solo2", &["eve"], 2_001), 2_001)
                .await
                .unwrap(),
            CreateOutcome::PlayerAlreadyQueued { .. }
        ));
    }

    #[cfg(unix)]
    fn mode_of(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn the_data_dir_and_store_file_are_owner_only() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("fresh").join("data");
        let file = data_dir.join("matchplane.redb");
        let store = RedbStore::open(&data_dir, crate::config::DEFAULT_STORE_CACHE_BYTES).unwrap();
        assert_eq!(mode_of(&data_dir), 0o700);
        assert_eq!(mode_of(&file), 0o600);
        store
            .create_ticket(ticket("t", "g", 1_000), 1_000)
            .await
            .unwrap();
        drop(store);

        // A dir and file left open to others (an older version, a umask of
        // 022) are tightened on the next start, and the data is still there.
        std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let store = reopen(&data_dir).await;
        assert_eq!(mode_of(&data_dir), 0o700);
        assert_eq!(mode_of(&file), 0o600);
        assert!(store.ticket("t").await.unwrap().is_some());
    }
}
