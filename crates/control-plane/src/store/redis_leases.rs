//! Matcher leases in Redis: one per queue, `{prefix}:lease:<queueKey>` holding
//! `replicaId:epoch`, so exactly one replica matches a queue at a time. Every
//! grant increments `{prefix}:epoch:<queueKey>` in the same script, so a
//! replica that lost a lease and comes back with a commit carries an epoch
//! that no longer matches (the commit script checks it; see docs/scale-out.md).
//! Which replicas are alive (`{prefix}:replicas`, written by the cluster
//! task and read through [`RedisCluster`]) tells each one how many matchers
//! share the queues.

use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{AsyncCommands as _, Script, Value};

use super::{RedisCluster, StoreError};
use crate::clock::Millis;

/// KEYS[1] lease, [2] epoch counter; ARGV[1] replica id, [2] lease ms. The
/// holder renews (same epoch, new expiry); nobody else gets a held lease; a
/// free one is granted with the next epoch.
const ACQUIRE: &str = r"
local current = redis.call('GET', KEYS[1])
if current then
  local holder, epoch = string.match(current, '^(.*):(%d+)$')
  if holder == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return {'renewed', epoch}
  end
  return {'held', holder or '', epoch or '0'}
end
local epoch = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. epoch, 'PX', ARGV[2])
return {'granted', tostring(epoch)}
";

/// KEYS[1] lease; ARGV[1] `replicaId:epoch`. Gives a lease up only if it is still that one.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// What asking for a queue's lease got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseReply {
    /// Newly granted at this epoch.
    Granted(u64),
    /// Already ours at this epoch; its expiry moved on.
    Renewed(u64),
    /// Another replica holds it.
    Held { holder: String, epoch: u64 },
}

#[derive(Clone)]
pub struct RedisLeases {
    conn: ConnectionManager,
    /// `{prefix}:`.
    base: String,
    replica_id: String,
    /// The one reader of `{prefix}:replicas`.
    cluster: RedisCluster,
    acquire: Script,
    release: Script,
}

fn unavailable(err: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(err.to_string())
}

fn bad_reply(what: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("unexpected reply from Redis: {what}"))
}

fn text(value: &Value) -> Result<String, StoreError> {
    match value {
        Value::BulkString(bytes) => {
            String::from_utf8(bytes.clone()).map_err(|_| bad_reply("non-UTF-8"))
        }
        Value::SimpleString(text) => Ok(text.clone()),
        Value::Int(number) => Ok(number.to_string()),
        other => Err(bad_reply(format!("{other:?}"))),
    }
}

fn epoch(value: &Value) -> Result<u64, StoreError> {
    text(value)?
        .parse()
        .map_err(|err| bad_reply(format!("epoch: {err}")))
}

/// `replicaId:epoch` as its parts.
pub fn parse_holder(value: &str) -> Option<(String, u64)> {
    let (holder, epoch) = value.rsplit_once(':')?;
    Some((holder.to_owned(), epoch.parse().ok()?))
}

impl RedisLeases {
    pub(super) fn new(conn: ConnectionManager, base: String, replica_id: String) -> Self {
        let cluster = RedisCluster::under_base(conn.clone(), &base, replica_id.clone());
        Self {
            conn,
            base,
            replica_id,
            cluster,
            acquire: Script::new(ACQUIRE),
            release: Script::new(RELEASE),
        }
    }

    /// This replica's id: the holder its leases name.
    pub fn replica_id(&self) -> &str {
        &self.replica_id
    }

    fn lease_key(&self, queue_key: &str) -> String {
        format!("{}lease:{queue_key}", self.base)
    }

    /// Takes or renews the queue's lease for `lease`.
    pub async fn acquire(
        &self,
        queue_key: &str,
        lease: Duration,
    ) -> Result<LeaseReply, StoreError> {
        let mut conn = self.conn.clone();
        let reply: Value = self
            .acquire
            .key(self.lease_key(queue_key))
            .key(format!("{}epoch:{queue_key}", self.base))
            .arg(&self.replica_id)
            .arg(lease.as_millis().max(1).to_string())
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let Value::Array(items) = reply else {
            return Err(bad_reply(format!("{reply:?}")));
        };
        match (
            items.first().map(text).transpose()?.as_deref(),
            items.as_slice(),
        ) {
            (Some("granted"), [_, at]) => Ok(LeaseReply::Granted(epoch(at)?)),
            (Some("renewed"), [_, at]) => Ok(LeaseReply::Renewed(epoch(at)?)),
            (Some("held"), [_, holder, at]) => Ok(LeaseReply::Held {
                holder: text(holder)?,
                epoch: epoch(at)?,
            }),
            _ => Err(bad_reply(format!("{items:?}"))),
        }
    }

    /// Gives up the queue's lease if it is still ours at `epoch`; `false`
    /// if it was not (it lapsed, or moved on to another holder or epoch).
    pub async fn release(&self, queue_key: &str, epoch: u64) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let deleted: i64 = self
            .release
            .key(self.lease_key(queue_key))
            .arg(format!("{}:{epoch}", self.replica_id))
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(deleted > 0)
    }

    /// The queues that have queued tickets.
    pub async fn queues(&self) -> Result<Vec<String>, StoreError> {
        let mut conn = self.conn.clone();
        let mut queues: Vec<String> = conn
            .smembers(format!("{}queues", self.base))
            .await
            .map_err(unavailable)?;
        queues.sort();
        Ok(queues)
    }

    /// Who holds each queue's lease (`None`: nobody), in the order asked.
    pub async fn holders(
        &self,
        queue_keys: &[String],
    ) -> Result<Vec<Option<(String, u64)>>, StoreError> {
        if queue_keys.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = queue_keys.iter().map(|q| self.lease_key(q)).collect();
        let mut conn = self.conn.clone();
        let values: Vec<Option<String>> = redis::cmd("MGET")
            .arg(&keys)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(values
            .into_iter()
            .map(|value| value.as_deref().and_then(parse_holder))
            .collect())
    }

    /// Ids of the matcher replicas (`--role all|matcher`) heard from at
    /// most `window` ms before `now`.
    pub async fn live_matchers(
        &self,
        now: Millis,
        window: Millis,
    ) -> Result<Vec<String>, StoreError> {
        Ok(self
            .cluster
            .live_replicas(now, window)
            .await?
            .into_iter()
            .filter(|entry| entry.matches())
            .map(|entry| entry.id)
            .collect())
    }
}
