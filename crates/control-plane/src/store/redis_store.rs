//! The Redis store: the same atomic operations as the embedded store, each
//! multi-key state change one Lua script (run with EVALSHA, reloaded on
//! NOSCRIPT), so replicas sharing one Redis share one truth. The key layout,
//! why it uses one hash tag, and the durability Redis must be configured for
//! are in docs/scale-out.md.
//!
//! A ticket is a hash: its request as JSON (`record`, written once) beside its
//! lifecycle as plain fields (`status`, `updated_at`, `assignment`, ...).
//! Scripts only ever read and write those plain fields and never re-encode
//! the JSON, because Redis' cjson would turn `[]` into `{}` and round floats.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use matchplane_contracts::matchmaking::{Assignment, TicketStatus};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands as _, Script, Value};

use super::{
    CancelOutcome, CommitOutcome, CreateOutcome, Fence, MatchCommit, QueueCounts, Release,
    ReleaseOutcome, ReleaseRequest, ServerRecord, Store, StoreError, TicketRecord,
};
use crate::clock::Millis;

/// Key prefix of a control plane's store unless told otherwise.
pub const DEFAULT_KEY_PREFIX: &str = "matchplane";
/// Bumped when the key layout or the ticket fields change incompatibly.
const SCHEMA_VERSION: u64 = 1;
/// Finished tickets deleted per purge script, so one purge never blocks Redis for long.
const PURGE_BATCH: u64 = 500;
/// Entries the event feed keeps at least (`XADD MAXLEN ~`; the scripts'
/// `emit` spells the same number): a replica further behind than this resyncs.
pub(super) const FEED_MAXLEN: u64 = 100_000;
/// Tickets read per pipelined round trip by the scanning reads.
const READ_BATCH: isize = 500;
/// How long a committed match's marker outlives its assignments' expiry.
const MATCH_MARKER_GRACE_MS: Millis = 60_000;

/// Helpers every script starts with. KEYS are the four global indexes, the
/// event stream and the set of queues with queued tickets (each such queue
/// also has its own queued index, `<queues>:<queueKey>`, for the matcher that
/// holds its lease); ARGV[1..4] are the ticket key prefix, the server index
/// prefix, `now` and the replica id that runs the script (the `origin` of the
/// events it appends). Numbers are written from ARGV strings, never from Lua
/// numbers, which Redis would format with 14 significant digits.
const PRELUDE: &str = r"
local tprefix, sprefix, now_arg, origin = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local now = tonumber(now_arg)
local groups, players, queued, finished, events = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local queues, token_expiry = KEYS[6], KEYS[7]
local function tkey(id) return tprefix .. id end
-- Callers pass what they already read of the ticket (its queue key, its
-- members JSON): every call a script saves is paid once per ticket per change.
local function index_queued(id, score, queue)
  redis.call('ZADD', queued, score, id)
  redis.call('ZADD', queues .. ':' .. queue, score, id)
  redis.call('SADD', queues, queue)
end
local function unindex_queued(id, queue)
  redis.call('ZREM', queued, id)
  local index = queues .. ':' .. queue
  redis.call('ZREM', index, id)
  if redis.call('ZCARD', index) == 0 then redis.call('SREM', queues, queue) end
end
local function dump(id) return redis.call('HGETALL', tkey(id)) end
local function queued_at(id)
  local t = redis.call('HMGET', tkey(id), 'status', 'expires_at')
  return t[1] == 'queued' and now < tonumber(t[2])
end
local function live(id)
  local t = redis.call('HMGET', tkey(id), 'status', 'expires_at', 'assignment_expires_at')
  if t[1] == 'queued' then return now < tonumber(t[2]) end
  if t[1] == 'assigned' then return t[3] ~= false and now < tonumber(t[3]) end
  return false
end
local function queued_elsewhere(list)
  for _, m in ipairs(list) do
    local other = redis.call('HGET', players, m)
    if other and queued_at(other) then return m, other end
  end
  return nil, nil
end
local function release_players(id, members_json)
  if not members_json then return end
  for _, m in ipairs(cjson.decode(members_json)) do
    if redis.call('HGET', players, m) == id then redis.call('HDEL', players, m) end
  end
end
-- Further field/value pairs to set go after `members_json`.
local function finish(id, status, queue, members_json, ...)
  redis.call('HSET', tkey(id), 'status', status, 'updated_at', now_arg, ...)
  unindex_queued(id, queue)
  redis.call('ZADD', finished, now_arg, id)
  release_players(id, members_json)
end
-- Appends a ticket event to the cluster feed in the same script as the
-- change, so the feed holds exactly the changes that happened, in order.
local function emit(kind, id, queue, ...)
  redis.call('XADD', events, 'MAXLEN', '~', '100000', '*', 'kind', kind, 'ticket', id,
    'queue', queue, 'origin', origin, ...)
end
";

/// ARGV[5] ticket id, [6] owner-group field ('' for a generated group: not
/// indexed), [7] enqueued_at, [8] members
/// JSON, [9] queue key, [10..] the ticket hash's field/value pairs, `record` first. The feed
/// entry carries the record, so other replicas' matchers need no read of the
/// ticket (one HGETALL per ticket per replica saved).
const CREATE: &str = r"
local id, gfield, queue = ARGV[5], ARGV[6], ARGV[9]
if ARGV[10] ~= 'record' then return redis.error_reply('CREATE: the record must come first') end
local existing = gfield ~= '' and redis.call('HGET', groups, gfield)
if existing and live(existing) then return {'existing', dump(existing)} end
local list = cjson.decode(ARGV[8])
local player, other = queued_elsewhere(list)
if player then return {'player_queued', player, other} end
redis.call('DEL', tkey(id))
local fields = {}
for i = 10, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', tkey(id), unpack(fields))
if gfield ~= '' then redis.call('HSET', groups, gfield, id) end
for _, m in ipairs(list) do redis.call('HSET', players, m, id) end
index_queued(id, ARGV[7], queue)
emit('enqueued', id, queue, 'record', ARGV[11])
return {'created'}
";

/// ARGV[5] ticket id.
const CANCEL: &str = r"
local id = ARGV[5]
local t = redis.call('HMGET', tkey(id), 'status', 'queue_key', 'members')
if not t[1] then return {'not_found'} end
if t[1] ~= 'queued' then return {'not_queued', dump(id)} end
local queue = t[2] or ''
finish(id, 'cancelled', queue, t[3])
emit('cancelled', id, queue)
return {'cancelled', dump(id)}
";

/// ARGV[5] number of matches; per match: ticket count, assignment_expires_at,
/// '1'/'0' has instance, instance, then the fence (all '' when unfenced):
/// lease key, the `replicaId:epoch` it must hold, the match's marker key and
/// its TTL in ms; then per ticket: id, assignment JSON, assignment id, server
/// id. A match whose marker exists was committed before: nothing is written
/// and the tickets are answered as then (`applied`, whole hashes). Otherwise it
/// is applied only if the lease still holds exactly that value and all its
/// tickets are queued; the answer (`assigned`) is each ticket's `record` and
/// `expires_at` only, since the caller knows what the commit wrote.
const COMMIT: &str = r"
local results = {}
local i = 6
for _ = 1, tonumber(ARGV[5]) do
  local n, expires, has_instance, instance = tonumber(ARGV[i]), ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local lease, holder, marker, marker_ttl = ARGV[i + 4], ARGV[i + 5], ARGV[i + 6], ARGV[i + 7]
  i = i + 8
  -- One read per ticket serves the check, the writes and the answer.
  local state, not_queued = {}, {}
  for k = 0, n - 1 do
    local id = ARGV[i + 4 * k]
    local t = redis.call('HMGET', tkey(id), 'status', 'queue_key', 'members', 'record', 'expires_at')
    state[k] = t
    if t[1] ~= 'queued' then not_queued[#not_queued + 1] = id end
  end
  if marker ~= '' and redis.call('EXISTS', marker) == 1 then
    local applied = {}
    for k = 0, n - 1 do applied[#applied + 1] = dump(ARGV[i + 4 * k]) end
    results[#results + 1] = {'applied', applied}
  elseif lease ~= '' and redis.call('GET', lease) ~= holder then
    results[#results + 1] = {'fenced', {}}
  elseif #not_queued > 0 then
    results[#results + 1] = {'rejected', not_queued}
  else
    local assigned = {}
    for k = 0, n - 1 do
      local base = i + 4 * k
      local id, server_id, t = ARGV[base], ARGV[base + 3], state[k]
      local queue = t[2] or ''
      if has_instance == '1' then
        finish(id, 'assigned', queue, t[3], 'assignment', ARGV[base + 1],
          'assignment_id', ARGV[base + 2], 'server_id', server_id,
          'assignment_expires_at', expires, 'assigned_instance', instance)
      else
        redis.call('HDEL', tkey(id), 'assigned_instance')
        finish(id, 'assigned', queue, t[3], 'assignment', ARGV[base + 1],
          'assignment_id', ARGV[base + 2], 'server_id', server_id,
          'assignment_expires_at', expires)
      end
      redis.call('SADD', sprefix .. server_id, id)
      redis.call('ZADD', token_expiry, expires, id)
      emit('assigned', id, queue, 'assignment', ARGV[base + 1])
      -- The commit changes neither, so the read before it answers.
      assigned[#assigned + 1] = {t[4], t[5]}
    end
    if marker ~= '' then redis.call('SET', marker, '1', 'PX', marker_ttl) end
    results[#results + 1] = {'assigned', assigned}
  end
  i = i + 4 * n
end
return results
";

/// ARGV[5..] ticket ids.
const EXPIRE: &str = r"
local out = {}
for i = 5, #ARGV do
  local id = ARGV[i]
  local t = redis.call('HMGET', tkey(id), 'status', 'queue_key', 'members')
  if t[1] == 'queued' then
    local queue = t[2] or ''
    finish(id, 'expired', queue, t[3])
    emit('expired', id, queue)
    out[#out + 1] = dump(id)
  end
end
return out
";

/// ARGV[5] the reason for a requeue refused by a member queued elsewhere,
/// [6] the reason a released assignment is gone (the feed's `match_lost` /
/// `requeued`), [7] number of requests; per request: ticket id, assignment
/// id, 'requeue' | 'fail', expires_at | reason, the land its players had
/// joined ('' if none). Feed events are the ones the matcher publishes
/// locally: `match_lost` for a joined land, else `requeued`; then `failed`.
const RELEASE: &str = r"
local elsewhere, lost_reason = ARGV[5], ARGV[6]
local out = {}
local i = 8
for _ = 1, tonumber(ARGV[7]) do
  local id, assignment_id, kind, value, joined = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  i = i + 5
  local t = redis.call('HMGET', tkey(id), 'status', 'assignment_id', 'server_id', 'queue_key',
    'enqueued_at', 'members')
  if t[1] ~= 'assigned' or t[2] ~= assignment_id then
    out[#out + 1] = {'unchanged', id}
  else
    redis.call('ZREM', finished, id)
    if t[3] then redis.call('SREM', sprefix .. t[3], id) end
    redis.call('HDEL', tkey(id), 'assignment', 'assignment_id', 'server_id',
      'assignment_expires_at', 'assigned_instance')
    local queue = t[4] or ''
    local list = t[6] and cjson.decode(t[6]) or {}
    if kind == 'requeue' and queued_elsewhere(list) then kind, value = 'fail', elsewhere end
    if kind == 'requeue' then
      redis.call('HSET', tkey(id), 'status', 'queued', 'expires_at', value, 'updated_at', now_arg)
      index_queued(id, t[5], queue)
      for _, m in ipairs(list) do redis.call('HSET', players, m, id) end
      out[#out + 1] = {'requeued', dump(id)}
    else
      finish(id, 'failed', queue, t[6], 'failure_reason', value)
      out[#out + 1] = {'failed', dump(id)}
    end
    if joined ~= '' then
      emit('match_lost', id, queue, 'land', joined, 'reason', lost_reason)
    elseif kind == 'requeue' then
      emit('requeued', id, queue, 'reason', lost_reason)
    end
    if kind ~= 'requeue' then emit('failed', id, queue, 'reason', value) end
  end
end
return out
";

/// ARGV[5] before, [6] keep at most, [7] batch size. Oldest first: everything
/// past the retention, then as many more as it takes to get down to the cap.
const PURGE: &str = r"
local before, keep, limit = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local over = redis.call('ZCARD', finished) - keep
local entries = redis.call('ZRANGE', finished, 0, limit - 1, 'WITHSCORES')
local doomed = 0
for k = 1, #entries, 2 do
  local id, score = entries[k], tonumber(entries[k + 1])
  if score >= before and doomed >= over then break end
  doomed = doomed + 1
  redis.call('ZREM', finished, id)
  local t = redis.call('HMGET', tkey(id), 'status', 'server_id', 'group_field', 'members')
  -- A stale entry of a ticket queued again: never purge a live ticket.
  if t[1] and t[1] ~= 'queued' then
    if t[2] then redis.call('SREM', sprefix .. t[2], id) end
    if t[3] and redis.call('HGET', groups, t[3]) == id then redis.call('HDEL', groups, t[3]) end
    release_players(id, t[4])
    redis.call('DEL', tkey(id))
  end
end
return doomed
";

/// ARGV[5] before, [6] batch size. The assignments whose expiry is before
/// `before`, oldest first: per ticket its id, that expiry, and its
/// `assignment_id` and `assignment` as stored ('' when gone). Lua cannot
/// re-encode JSON safely, so the caller strips the tokens (`STRIP_TOKENS`).
const SPENT_TOKENS: &str = r"
local entries = redis.call('ZRANGEBYSCORE', token_expiry, '-inf', '(' .. ARGV[5],
  'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[6]))
local out = {}
for k = 1, #entries, 2 do
  local id = entries[k]
  local t = redis.call('HMGET', tkey(id), 'assignment_id', 'assignment')
  out[#out + 1] = {id, entries[k + 1], t[1] or '', t[2] or ''}
end
return out
";

/// ARGV[5] number of tickets; per ticket: id, the expiry `SPENT_TOKENS`
/// read, the assignment id it read, the assignment JSON without tokens ('' to
/// write nothing). A ticket released or assigned anew meanwhile keeps what it
/// has now, and its index entry if that is newer. Returns how many were stripped.
const STRIP_TOKENS: &str = r"
local stripped = 0
local i = 6
for _ = 1, tonumber(ARGV[5]) do
  local id, score, assignment_id, json = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  i = i + 4
  if json ~= '' and redis.call('HGET', tkey(id), 'assignment_id') == assignment_id then
    redis.call('HSET', tkey(id), 'assignment', json)
    stripped = stripped + 1
  end
  if redis.call('ZSCORE', token_expiry, id) == score then redis.call('ZREM', token_expiry, id) end
end
return stripped
";

struct Keys {
    ticket_prefix: String,
    /// Assigned tickets by assignment expiry, for dropping spent tokens.
    token_expiry: String,
    server_tickets_prefix: String,
    groups: String,
    players: String,
    queued: String,
    finished: String,
    servers: String,
    meta: String,
    /// The cluster event feed: one stream every state-changing script appends to.
    events: String,
    /// Queues with queued tickets; `{queues}:<queueKey>` indexes each one's.
    queues: String,
    /// `{prefix}:`, what the per-queue and per-match keys start with.
    base: String,
}

impl Keys {
    /// Every key is `{prefix}:...`: the whole prefix is the hash tag, so all
    /// keys of one store hash to one Redis Cluster slot (see docs/scale-out.md).
    fn new(prefix: &str) -> Self {
        let key = |name: &str| format!("{{{prefix}}}:{name}");
        Self {
            ticket_prefix: key("ticket:"),
            token_expiry: key("token-expiry"),
            server_tickets_prefix: key("server-tickets:"),
            groups: key("owner-groups"),
            players: key("queued-players"),
            queued: key("queued"),
            finished: key("finished"),
            servers: key("servers"),
            meta: key("meta"),
            events: key("events"),
            queues: key("queues"),
            base: key(""),
        }
    }

    fn queue_index(&self, queue_key: &str) -> String {
        format!("{}:{queue_key}", self.queues)
    }

    fn ticket(&self, ticket_id: &str) -> String {
        format!("{}{ticket_id}", self.ticket_prefix)
    }
}

struct Scripts {
    create: Script,
    cancel: Script,
    commit: Script,
    expire: Script,
    release: Script,
    purge: Script,
    spent_tokens: Script,
    strip_tokens: Script,
}

impl Scripts {
    fn new() -> Self {
        let script = |body: &str| Script::new(&format!("{PRELUDE}{body}"));
        Self {
            create: script(CREATE),
            cancel: script(CANCEL),
            commit: script(COMMIT),
            expire: script(EXPIRE),
            release: script(RELEASE),
            purge: script(PURGE),
            spent_tokens: script(SPENT_TOKENS),
            strip_tokens: script(STRIP_TOKENS),
        }
    }
}

pub struct RedisStore {
    conn: ConnectionManager,
    keys: Keys,
    scripts: Scripts,
    /// Kept to open the feed's own connection (a blocking read would stall
    /// the shared multiplexed one).
    client: redis::Client,
    /// This process' id in the cluster: the `origin` of the events its scripts append.
    replica_id: String,
    /// The key prefix (and hash tag), for the cluster view's keys.
    prefix: String,
    /// Set when a state-changing script failed without an answer (connection
    /// lost, timeout): Redis may have applied it, and its feed entries carry
    /// this replica's origin, which the feed skips. The feed reader resyncs
    /// once Redis answers again (see [`RedisFeed::take_unsure_writes`]).
    unsure_writes: Arc<AtomicBool>,
}

fn unavailable(err: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(err.to_string())
}

fn bad_reply(what: &str) -> StoreError {
    StoreError::Unavailable(format!("unexpected reply from Redis: {what}"))
}

impl RedisStore {
    /// Connects to `redis://[:PASSWORD@]HOST:PORT[/DB]` (or `rediss://` for
    /// TLS) and keeps every key under `{key_prefix}:`. The connection is
    /// multiplexed and re-established in the background after a failure; a
    /// call made while Redis is unreachable fails with `Unavailable`.
    pub async fn connect(url: &str, key_prefix: &str) -> Result<Self, StoreError> {
        if key_prefix.is_empty() || key_prefix.contains(['{', '}']) {
            return Err(StoreError::Unavailable(format!(
                "Redis key prefix {key_prefix:?} must be non-empty and without braces (it becomes the hash tag)"
            )));
        }
        // The URL may carry a password: errors name the problem, never the URL.
        let client = redis::Client::open(url)
            .map_err(|err| StoreError::Unavailable(format!("invalid Redis URL: {err}")))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_max_delay(Duration::from_secs(2));
        let conn = ConnectionManager::new_with_config(client.clone(), config)
            .await
            .map_err(|err| StoreError::Unavailable(format!("connecting to Redis: {err}")))?;
        let store = Self {
            conn,
            keys: Keys::new(key_prefix),
            scripts: Scripts::new(),
            client,
            replica_id: uuid::Uuid::new_v4().to_string(),
            prefix: key_prefix.to_owned(),
            unsure_writes: Arc::new(AtomicBool::new(false)),
        };
        store.check_schema().await?;
        Ok(store)
    }

    /// The cluster's value of a generated credential (`name` is its file name
    /// in the data dir): `candidate` if no replica published one yet.
    pub async fn shared_credential(
        &self,
        name: &str,
        candidate: &str,
    ) -> Result<String, StoreError> {
        let mut conn = self.conn.clone();
        let key = format!("{{{}}}:credentials", self.prefix);
        let (_, value): (bool, Option<String>) = redis::pipe()
            .atomic()
            .hset_nx(&key, name, candidate)
            .hget(&key, name)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        value.ok_or_else(|| bad_reply("the credential vanished after it was published"))
    }

    async fn check_schema(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: bool = conn
            .hset_nx(&self.keys.meta, "schema_version", SCHEMA_VERSION)
            .await
            .map_err(unavailable)?;
        let version: Option<u64> = conn
            .hget(&self.keys.meta, "schema_version")
            .await
            .map_err(unavailable)?;
        match version {
            Some(SCHEMA_VERSION) => Ok(()),
            other => Err(StoreError::Unavailable(format!(
                "Redis holds store schema {other:?} under this prefix, this build understands {SCHEMA_VERSION}"
            ))),
        }
    }

    /// Runs one of the scripts with the global indexes as KEYS and the common
    /// arguments first.
    async fn run(
        &self,
        script: &Script,
        now: Millis,
        args: Vec<String>,
    ) -> Result<Value, StoreError> {
        let mut invocation = script.prepare_invoke();
        invocation
            .key(&self.keys.groups)
            .key(&self.keys.players)
            .key(&self.keys.queued)
            .key(&self.keys.finished)
            .key(&self.keys.events)
            .key(&self.keys.queues)
            .key(&self.keys.token_expiry)
            .arg(&self.keys.ticket_prefix)
            .arg(&self.keys.server_tickets_prefix)
            .arg(now.to_string())
            .arg(&self.replica_id);
        for arg in args {
            invocation.arg(arg);
        }
        let mut conn = self.conn.clone();
        invocation
            .invoke_async::<Value>(&mut conn)
            .await
            .map_err(|err| {
                // Whether it ran is unknown (only an error reply from the
                // script itself would say it did not; that is a bug, and a
                // resync too many costs one read).
                self.unsure_writes.store(true, Ordering::Release);
                unavailable(err)
            })
    }

    /// Commits matches, each fenced by the lease it was planned under or not.
    async fn commit(
        &self,
        matches: Vec<(MatchCommit, Option<Fence>)>,
        now: Millis,
    ) -> Result<Vec<CommitOutcome>, StoreError> {
        if matches.is_empty() {
            return Ok(Vec::new());
        }
        let mut args = vec![matches.len().to_string()];
        for (commit, fence) in &matches {
            args.push(commit.assignments.len().to_string());
            args.push(commit.assignment_expires_at.to_string());
            match &commit.server_instance_id {
                Some(instance) => {
                    args.push("1".to_owned());
                    args.push(instance.clone());
                }
                None => {
                    args.push("0".to_owned());
                    args.push(String::new());
                }
            }
            match fence {
                Some(fence) => {
                    args.push(format!("{}lease:{}", self.keys.base, fence.queue_key));
                    args.push(format!("{}:{}", fence.holder, fence.epoch));
                    args.push(format!("{}match:{}", self.keys.base, fence.match_id));
                    // The marker outlives every assignment it could duplicate.
                    let ttl = commit
                        .assignment_expires_at
                        .saturating_sub(now)
                        .saturating_add(MATCH_MARKER_GRACE_MS);
                    args.push(ttl.to_string());
                }
                None => args.extend(std::iter::repeat_n(String::new(), 4)),
            }
            for (ticket_id, assignment) in &commit.assignments {
                args.push(ticket_id.clone());
                args.push(serde_json::to_string(assignment).map_err(unavailable)?);
                args.push(assignment.assignment_id.clone());
                args.push(assignment.server_id.clone());
            }
        }
        let reply = self.run(&self.scripts.commit, now, args).await?;
        let mut outcomes = Vec::with_capacity(matches.len());
        for (outcome, (commit, _)) in into_array(reply)?.into_iter().zip(&matches) {
            let (tag, mut rest) = tagged(outcome)?;
            let items = into_array(next(&mut rest)?)?;
            outcomes.push(match tag.as_str() {
                "assigned" => CommitOutcome::Applied(
                    items
                        .into_iter()
                        .zip(&commit.assignments)
                        .map(|(item, (ticket_id, assignment))| {
                            assigned_ticket(item, ticket_id, assignment, commit, now)
                        })
                        .collect::<Result<_, _>>()?,
                ),
                "applied" => CommitOutcome::Applied(
                    items
                        .into_iter()
                        .map(into_ticket)
                        .collect::<Result<_, _>>()?,
                ),
                "fenced" => CommitOutcome::Fenced,
                "rejected" => CommitOutcome::Rejected {
                    not_queued: items
                        .into_iter()
                        .map(into_string)
                        .collect::<Result<_, _>>()?,
                },
                other => return Err(bad_reply(other)),
            });
        }
        if outcomes.len() != matches.len() {
            return Err(bad_reply("one outcome per match"));
        }
        for (outcome, (commit, _)) in outcomes.iter().zip(&matches) {
            if let CommitOutcome::Applied(tickets) = outcome
                && tickets.len() != commit.assignments.len()
            {
                return Err(bad_reply("one ticket per assignment"));
            }
        }
        Ok(outcomes)
    }

    /// Reads whole tickets by id in one pipelined round trip; gone ones are skipped.
    async fn tickets_by_id(&self, ids: &[String]) -> Result<Vec<TicketRecord>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.hgetall(self.keys.ticket(id));
        }
        let mut conn = self.conn.clone();
        let hashes: Vec<HashMap<String, String>> =
            pipe.query_async(&mut conn).await.map_err(unavailable)?;
        let mut tickets = Vec::with_capacity(hashes.len());
        for (id, fields) in ids.iter().zip(hashes) {
            if !fields.is_empty() {
                tickets.push(ticket_from_fields(id, &fields)?);
            }
        }
        Ok(tickets)
    }

    /// Every member of an index sorted set, in order, a batch per round trip.
    async fn index_members(&self, key: &str) -> Result<Vec<String>, StoreError> {
        let mut conn = self.conn.clone();
        let mut members = Vec::new();
        let mut start = 0isize;
        loop {
            let batch: Vec<String> = conn
                .zrange(key, start, start + READ_BATCH - 1)
                .await
                .map_err(unavailable)?;
            let done = (batch.len() as isize) < READ_BATCH;
            members.extend(batch);
            if done {
                return Ok(members);
            }
            start += READ_BATCH;
        }
    }
}

/// The hash a new queued ticket is stored as; `record` (the whole request as
/// JSON) comes first, where the create script finds it for the feed entry.
fn ticket_fields(ticket: &TicketRecord, group_field: &str) -> Result<Vec<String>, StoreError> {
    let mut fields = vec![
        "record".to_owned(),
        serde_json::to_string(ticket).map_err(unavailable)?,
        "status".to_owned(),
        status_name(TicketStatus::Queued).to_owned(),
        "updated_at".to_owned(),
        ticket.updated_at.to_string(),
        "expires_at".to_owned(),
        ticket.expires_at.to_string(),
        "enqueued_at".to_owned(),
        ticket.enqueued_at.to_string(),
        "group_field".to_owned(),
        group_field.to_owned(),
        "members".to_owned(),
        serde_json::to_string(&ticket.members).map_err(unavailable)?,
        // Plain, for the feed entries the scripts append.
        "queue_key".to_owned(),
        ticket.queue_key.clone(),
    ];
    if let Some(assignment) = &ticket.assignment {
        fields.push("assignment".to_owned());
        fields.push(serde_json::to_string(assignment).map_err(unavailable)?);
    }
    Ok(fields)
}

/// The owner-group index field: length-prefixed so no pair of ids collides.
fn group_field(owner: &str, group_id: &str) -> String {
    format!("{}:{owner}:{group_id}", owner.len())
}

fn status_name(status: TicketStatus) -> &'static str {
    match status {
        TicketStatus::Queued => "queued",
        TicketStatus::Assigned => "assigned",
        TicketStatus::Cancelled => "cancelled",
        TicketStatus::Expired => "expired",
        TicketStatus::Failed => "failed",
    }
}

fn parse_status(key: &str, name: &str) -> Result<TicketStatus, StoreError> {
    Ok(match name {
        "queued" => TicketStatus::Queued,
        "assigned" => TicketStatus::Assigned,
        "cancelled" => TicketStatus::Cancelled,
        "expired" => TicketStatus::Expired,
        "failed" => TicketStatus::Failed,
        other => return Err(corrupt(key, format!("unknown status {other:?}"))),
    })
}

fn corrupt(key: &str, reason: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        key: key.to_owned(),
        reason: reason.to_string(),
    }
}

/// A ticket from its hash: the stored request with the lifecycle fields laid over it.
pub(super) fn ticket_from_fields(
    ticket_id: &str,
    fields: &HashMap<String, String>,
) -> Result<TicketRecord, StoreError> {
    let required = |name: &str| {
        fields
            .get(name)
            .ok_or_else(|| corrupt(ticket_id, format!("missing field {name}")))
    };
    let millis = |name: &str, raw: &str| {
        raw.parse::<Millis>()
            .map_err(|err| corrupt(ticket_id, format!("field {name}: {err}")))
    };
    let mut ticket: TicketRecord = serde_json::from_str(required("record")?)
        .map_err(|err| corrupt(ticket_id, err))
        .map(TicketRecord::with_default_owner)?;
    ticket.status = parse_status(ticket_id, required("status")?)?;
    ticket.updated_at = millis("updated_at", required("updated_at")?)?;
    ticket.expires_at = millis("expires_at", required("expires_at")?)?;
    ticket.assignment = fields
        .get("assignment")
        .map(|raw| serde_json::from_str::<Assignment>(raw).map_err(|err| corrupt(ticket_id, err)))
        .transpose()?;
    ticket.assignment_expires_at = fields
        .get("assignment_expires_at")
        .map(|raw| millis("assignment_expires_at", raw))
        .transpose()?;
    ticket.assigned_instance = fields.get("assigned_instance").cloned();
    ticket.failure_reason = fields.get("failure_reason").cloned();
    Ok(ticket)
}

// Script replies are nested arrays of strings; these take them apart.

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

/// A ticket the commit script just assigned, from its stored request and
/// queue expiry (`[record, expires_at]`) and what the commit wrote.
fn assigned_ticket(
    item: Value,
    ticket_id: &str,
    assignment: &Assignment,
    commit: &MatchCommit,
    now: Millis,
) -> Result<TicketRecord, StoreError> {
    let mut fields = into_array(item)?.into_iter();
    let record = into_string(next(&mut fields)?)?;
    let expires_at = into_string(next(&mut fields)?)?;
    let mut ticket: TicketRecord = serde_json::from_str(&record)
        .map_err(|err| corrupt(ticket_id, err))
        .map(TicketRecord::with_default_owner)?;
    ticket.expires_at = expires_at
        .parse()
        .map_err(|err| corrupt(ticket_id, format!("field expires_at: {err}")))?;
    ticket.status = TicketStatus::Assigned;
    ticket.updated_at = now;
    ticket.assignment = Some(assignment.clone());
    ticket.assignment_expires_at = Some(commit.assignment_expires_at);
    ticket
        .assigned_instance
        .clone_from(&commit.server_instance_id);
    ticket.failure_reason = None;
    Ok(ticket)
}

/// A dumped ticket hash (HGETALL's flat field/value list) as a record.
fn into_ticket(value: Value) -> Result<TicketRecord, StoreError> {
    let items = into_array(value)?;
    let mut fields = HashMap::with_capacity(items.len() / 2);
    let mut items = items.into_iter();
    while let (Some(name), Some(value)) = (items.next(), items.next()) {
        fields.insert(into_string(name)?, into_string(value)?);
    }
    ticket_from_fields("(ticket in a script reply)", &fields)
}

/// A reply `{tag, rest...}`.
fn tagged(value: Value) -> Result<(String, std::vec::IntoIter<Value>), StoreError> {
    let mut items = into_array(value)?.into_iter();
    let tag = into_string(items.next().ok_or_else(|| bad_reply("empty reply"))?)?;
    Ok((tag, items))
}

fn next(items: &mut std::vec::IntoIter<Value>) -> Result<Value, StoreError> {
    items.next().ok_or_else(|| bad_reply("reply too short"))
}

#[async_trait]
impl Store for RedisStore {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn create_ticket(
        &self,
        ticket: TicketRecord,
        now: Millis,
    ) -> Result<CreateOutcome, StoreError> {
        let ticket = TicketRecord {
            status: TicketStatus::Queued,
            ..ticket.with_default_owner()
        };
        let group = if ticket.has_named_group() {
            group_field(&ticket.owner, &ticket.group_id)
        } else {
            String::new()
        };
        let mut args = vec![
            ticket.ticket_id.clone(),
            group.clone(),
            ticket.enqueued_at.to_string(),
            serde_json::to_string(&ticket.members).map_err(unavailable)?,
            ticket.queue_key.clone(),
        ];
        args.extend(ticket_fields(&ticket, &group)?);
        let (tag, mut rest) = tagged(self.run(&self.scripts.create, now, args).await?)?;
        match tag.as_str() {
            "created" => Ok(CreateOutcome::Created(ticket)),
            "existing" => Ok(CreateOutcome::Existing(into_ticket(next(&mut rest)?)?)),
            "player_queued" => Ok(CreateOutcome::PlayerAlreadyQueued {
                player_id: into_string(next(&mut rest)?)?,
                ticket_id: into_string(next(&mut rest)?)?,
            }),
            other => Err(bad_reply(other)),
        }
    }

    async fn ticket(&self, ticket_id: &str) -> Result<Option<TicketRecord>, StoreError> {
        let mut conn = self.conn.clone();
        let fields: HashMap<String, String> = conn
            .hgetall(self.keys.ticket(ticket_id))
            .await
            .map_err(unavailable)?;
        if fields.is_empty() {
            return Ok(None);
        }
        ticket_from_fields(ticket_id, &fields).map(Some)
    }

    async fn cancel_ticket(
        &self,
        ticket_id: &str,
        now: Millis,
    ) -> Result<CancelOutcome, StoreError> {
        let reply = self
            .run(&self.scripts.cancel, now, vec![ticket_id.to_owned()])
            .await?;
        let (tag, mut rest) = tagged(reply)?;
        match tag.as_str() {
            "not_found" => Ok(CancelOutcome::NotFound),
            "not_queued" => Ok(CancelOutcome::NotQueued(into_ticket(next(&mut rest)?)?)),
            "cancelled" => Ok(CancelOutcome::Cancelled(into_ticket(next(&mut rest)?)?)),
            other => Err(bad_reply(other)),
        }
    }

    async fn commit_matches(
        &self,
        matches: Vec<MatchCommit>,
        now: Millis,
    ) -> Result<Vec<CommitOutcome>, StoreError> {
        self.commit(
            matches.into_iter().map(|commit| (commit, None)).collect(),
            now,
        )
        .await
    }

    async fn commit_matches_fenced(
        &self,
        matches: Vec<(MatchCommit, Fence)>,
        now: Millis,
    ) -> Result<Vec<CommitOutcome>, StoreError> {
        self.commit(
            matches
                .into_iter()
                .map(|(commit, fence)| (commit, Some(fence)))
                .collect(),
            now,
        )
        .await
    }

    async fn queued_tickets_in(&self, queue_key: &str) -> Result<Vec<TicketRecord>, StoreError> {
        let ids = self
            .index_members(&self.keys.queue_index(queue_key))
            .await?;
        let mut queued = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(READ_BATCH as usize) {
            queued.extend(
                self.tickets_by_id(chunk)
                    .await?
                    .into_iter()
                    .filter(|ticket| {
                        ticket.status == TicketStatus::Queued && ticket.queue_key == queue_key
                    }),
            );
        }
        queued.sort_by(|a, b| (a.enqueued_at, &a.ticket_id).cmp(&(b.enqueued_at, &b.ticket_id)));
        queued.dedup_by(|a, b| a.ticket_id == b.ticket_id);
        Ok(queued)
    }

    fn matcher_leases(&self) -> Option<super::RedisLeases> {
        Some(super::RedisLeases::new(
            self.conn.clone(),
            self.keys.base.clone(),
            self.replica_id.clone(),
        ))
    }

    async fn expire_tickets(
        &self,
        ticket_ids: Vec<String>,
        now: Millis,
    ) -> Result<Vec<TicketRecord>, StoreError> {
        if ticket_ids.is_empty() {
            return Ok(Vec::new());
        }
        let reply = self.run(&self.scripts.expire, now, ticket_ids).await?;
        into_array(reply)?.into_iter().map(into_ticket).collect()
    }

    async fn queued_tickets(&self) -> Result<Vec<TicketRecord>, StoreError> {
        let ids = self.index_members(&self.keys.queued).await?;
        let mut queued = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(READ_BATCH as usize) {
            // A ticket assigned or cancelled between the index read and this one is left out.
            queued.extend(
                self.tickets_by_id(chunk)
                    .await?
                    .into_iter()
                    .filter(|ticket| ticket.status == TicketStatus::Queued),
            );
        }
        // A requeue between two batches can move a ticket back in the index.
        queued.sort_by(|a, b| (a.enqueued_at, &a.ticket_id).cmp(&(b.enqueued_at, &b.ticket_id)));
        queued.dedup_by(|a, b| a.ticket_id == b.ticket_id);
        Ok(queued)
    }

    async fn assigned_on_server(&self, server_id: &str) -> Result<Vec<TicketRecord>, StoreError> {
        let mut conn = self.conn.clone();
        let mut ids: Vec<String> = conn
            .smembers(format!("{}{server_id}", self.keys.server_tickets_prefix))
            .await
            .map_err(unavailable)?;
        ids.sort();
        let mut assigned = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(READ_BATCH as usize) {
            assigned.extend(
                self.tickets_by_id(chunk)
                    .await?
                    .into_iter()
                    .filter(|ticket| ticket.status == TicketStatus::Assigned),
            );
        }
        Ok(assigned)
    }

    async fn release_assignments(
        &self,
        releases: Vec<ReleaseRequest>,
        now: Millis,
    ) -> Result<Vec<ReleaseOutcome>, StoreError> {
        if releases.is_empty() {
            return Ok(Vec::new());
        }
        let mut args = vec![
            matchplane_contracts::realtime::reason::PLAYER_QUEUED_ELSEWHERE.to_owned(),
            matchplane_contracts::realtime::reason::SERVER_LOST.to_owned(),
            releases.len().to_string(),
        ];
        for request in &releases {
            args.push(request.ticket_id.clone());
            args.push(request.assignment_id.clone());
            match &request.release {
                Release::Requeue { expires_at } => {
                    args.push("requeue".to_owned());
                    args.push(expires_at.to_string());
                }
                Release::Fail { reason } => {
                    args.push("fail".to_owned());
                    args.push(reason.clone());
                }
            }
            args.push(request.joined_land.clone().unwrap_or_default());
        }
        let reply = self.run(&self.scripts.release, now, args).await?;
        let mut outcomes = Vec::with_capacity(releases.len());
        for outcome in into_array(reply)? {
            let (tag, mut rest) = tagged(outcome)?;
            let item = next(&mut rest)?;
            outcomes.push(match tag.as_str() {
                "unchanged" => ReleaseOutcome::Unchanged(into_string(item)?),
                "requeued" => ReleaseOutcome::Requeued(into_ticket(item)?),
                "failed" => ReleaseOutcome::Failed(into_ticket(item)?),
                other => return Err(bad_reply(other)),
            });
        }
        Ok(outcomes)
    }

    async fn purge_finished(&self, before: Millis, keep_at_most: u64) -> Result<u64, StoreError> {
        // Each batch is atomic on its own and recomputes the cap, so the
        // batches together delete exactly what one pass would.
        let mut purged = 0;
        loop {
            let args = vec![
                before.to_string(),
                keep_at_most.to_string(),
                PURGE_BATCH.to_string(),
            ];
            let reply = self.run(&self.scripts.purge, 0, args).await?;
            let count: u64 = match reply {
                Value::Int(count) => u64::try_from(count).map_err(|_| bad_reply("count"))?,
                other => return Err(bad_reply(&format!("purge count {other:?}"))),
            };
            purged += count;
            if count < PURGE_BATCH {
                return Ok(purged);
            }
        }
    }

    async fn drop_spent_tokens(&self, before: Millis) -> Result<u64, StoreError> {
        let mut dropped = 0;
        loop {
            let args = vec![before.to_string(), PURGE_BATCH.to_string()];
            let spent = into_array(self.run(&self.scripts.spent_tokens, 0, args).await?)?;
            let taken = spent.len() as u64;
            if spent.is_empty() {
                return Ok(dropped);
            }
            let mut args = vec![spent.len().to_string()];
            for entry in spent {
                let mut fields = into_array(entry)?.into_iter().map(into_string);
                let mut next = || {
                    fields
                        .next()
                        .unwrap_or_else(|| Err(bad_reply("spent token")))
                };
                let (ticket_id, score, assignment_id, json) = (next()?, next()?, next()?, next()?);
                let stripped = if json.is_empty() {
                    String::new()
                } else {
                    let mut assignment: Assignment =
                        serde_json::from_str(&json).map_err(|err| corrupt(&ticket_id, err))?;
                    super::drop_tokens(&mut assignment);
                    serde_json::to_string(&assignment).map_err(unavailable)?
                };
                args.extend([ticket_id, score, assignment_id, stripped]);
            }
            match self.run(&self.scripts.strip_tokens, 0, args).await? {
                Value::Int(count) => dropped += u64::try_from(count).unwrap_or(0),
                other => return Err(bad_reply(&format!("strip count {other:?}"))),
            }
            if taken < PURGE_BATCH {
                return Ok(dropped);
            }
        }
    }

    async fn put_server(&self, server: ServerRecord) -> Result<(), StoreError> {
        let json = serde_json::to_string(&server).map_err(unavailable)?;
        let mut conn = self.conn.clone();
        let _: i64 = conn
            .hset(&self.keys.servers, &server.server_id, json)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn remove_server(&self, server_id: &str) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let removed: i64 = conn
            .hdel(&self.keys.servers, server_id)
            .await
            .map_err(unavailable)?;
        Ok(removed > 0)
    }

    async fn servers(&self) -> Result<Vec<ServerRecord>, StoreError> {
        let mut conn = self.conn.clone();
        let servers: HashMap<String, String> = conn
            .hgetall(&self.keys.servers)
            .await
            .map_err(unavailable)?;
        let mut servers = servers
            .into_iter()
            .map(|(id, json)| serde_json::from_str(&json).map_err(|err| corrupt(&id, err)))
            .collect::<Result<Vec<ServerRecord>, _>>()?;
        servers.sort_by(|a, b| a.server_id.cmp(&b.server_id));
        Ok(servers)
    }

    async fn queue_counts(&self) -> Result<Vec<QueueCounts>, StoreError> {
        // Every ticket is in exactly one of the two indexes: queued or finished.
        let mut ids = self.index_members(&self.keys.queued).await?;
        ids.extend(self.index_members(&self.keys.finished).await?);
        ids.sort();
        ids.dedup();
        let mut counts: std::collections::BTreeMap<String, QueueCounts> =
            std::collections::BTreeMap::new();
        for chunk in ids.chunks(READ_BATCH as usize) {
            for ticket in self.tickets_by_id(chunk).await? {
                super::count_ticket(&mut counts, &ticket);
            }
        }
        Ok(counts.into_values().collect())
    }

    async fn queued_per_queue(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        let mut conn = self.conn.clone();
        let queues: Vec<String> = conn
            .smembers(&self.keys.queues)
            .await
            .map_err(unavailable)?;
        if queues.is_empty() {
            return Ok(BTreeMap::new());
        }
        let mut pipe = redis::pipe();
        for queue_key in &queues {
            pipe.zcard(self.keys.queue_index(queue_key));
        }
        let counts: Vec<u64> = pipe.query_async(&mut conn).await.map_err(unavailable)?;
        Ok(queues.into_iter().zip(counts).collect())
    }

    fn event_feed(&self) -> Option<super::RedisFeed> {
        Some(super::RedisFeed::new(
            self.client.clone(),
            self.keys.events.clone(),
            self.keys.ticket_prefix.clone(),
            self.replica_id.clone(),
            Arc::clone(&self.unsure_writes),
        ))
    }

    fn cluster(&self) -> Option<super::RedisCluster> {
        Some(super::RedisCluster::new(
            self.conn.clone(),
            &self.prefix,
            self.replica_id.clone(),
        ))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}
