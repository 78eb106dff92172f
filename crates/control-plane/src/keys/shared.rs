//! The keyring shared by every replica on one Redis: one hash `{P}:keyring`
//! holding the data-dir keyring's JSON (field `keyring`, private keys
//! included) and a `version` that every write bumps. Writes are a
//! compare-and-set on that version, so two replicas rotating at once cannot
//! lose a key: the one that loses re-reads and rotates on top of the winner.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands as _, Script};

use super::{KeyError, Keyring, LoadedKey, Ring, StoredKeyring};
use crate::clock::Millis;

/// ARGV[1] the version the writer read ('' = no keyring yet), [2] the new
/// version, [3] the keyring JSON. Returns 1 if written, 0 if the keyring
/// changed since it was read.
const COMPARE_AND_SET: &str = r"
local current = redis.call('HGET', KEYS[1], 'version')
if (current or '') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'version', ARGV[2], 'keyring', ARGV[3])
return 1
";

/// Rotations are rare admin actions: losing this many races in a row means
/// something is rotating in a loop, and the caller should hear about it.
const ROTATION_ATTEMPTS: u32 = 8;

pub(super) struct RedisKeys {
    conn: ConnectionManager,
    key: String,
    compare_and_set: Script,
    /// One refresh or rotation at a time on this replica, so a keyring read
    /// by a poll can never overwrite a newer one this replica just wrote.
    sync: tokio::sync::Mutex<()>,
}

fn redis_error(err: impl std::fmt::Display) -> KeyError {
    KeyError::Redis(err.to_string())
}

impl RedisKeys {
    /// Connects like the Redis store does; the key shares the store's hash tag.
    pub(super) async fn connect(url: &str, key_prefix: &str) -> Result<Self, KeyError> {
        // The URL may carry a password: errors name the problem, never the URL.
        let client = redis::Client::open(url)
            .map_err(|err| KeyError::Redis(format!("invalid Redis URL: {err}")))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_max_delay(Duration::from_secs(2));
        let conn = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(|err| KeyError::Redis(format!("connecting to Redis: {err}")))?;
        Ok(Self {
            conn,
            key: format!("{{{key_prefix}}}:keyring"),
            compare_and_set: Script::new(COMPARE_AND_SET),
            sync: tokio::sync::Mutex::new(()),
        })
    }

    /// The keyring in Redis; the first replica to get here publishes `seed`'s.
    pub(super) async fn load_or_create(
        &self,
        seed: impl FnOnce() -> Result<Ring, KeyError>,
    ) -> Result<Ring, KeyError> {
        let _sync = self.sync.lock().await;
        if let Some(ring) = self.read(None).await? {
            return Ok(ring);
        }
        let mut ring = seed()?;
        ring.version = 1;
        if self.write(None, &ring).await? {
            return Ok(ring);
        }
        // Another replica created it first: everyone signs with that one.
        self.read(None)
            .await?
            .ok_or_else(|| KeyError::Redis(format!("{} vanished while being created", self.key)))
    }

    /// Loads the keyring if another replica changed it; `Ok(true)` when it did.
    pub(super) async fn refresh(&self, keyring: &Keyring) -> Result<bool, KeyError> {
        let _sync = self.sync.lock().await;
        let mut conn = self.conn.clone();
        let version: Option<u64> = conn.hget(&self.key, "version").await.map_err(redis_error)?;
        match version {
            Some(version) if version == keyring.version() => Ok(false),
            Some(_) => {
                let known = keyring.snapshot();
                match self.read(Some(&known)).await? {
                    Some(ring) => {
                        keyring.install(ring);
                        Ok(true)
                    }
                    None => Ok(false),
                }
            }
            None => {
                // Redis lost the keyring (restarted without persistence, or
                // flushed): publish the keys in hand again, so tokens already
                // signed stay verifiable everywhere. If another replica does
                // so first, the next poll loads its copy.
                let mut ring = keyring.snapshot();
                ring.version += 1;
                if self.write(None, &ring).await? {
                    tracing::warn!(key = %self.key, "the signing keys were missing from Redis; published this replica's again");
                    keyring.install(ring);
                }
                Ok(false)
            }
        }
    }

    /// Makes `fresh` current in Redis, on top of whatever Redis holds now
    /// (not of what this replica last saw), then here.
    pub(super) async fn rotate(
        &self,
        keyring: &Keyring,
        fresh: LoadedKey,
        now: Millis,
        token_lifetime_ms: Millis,
    ) -> Result<String, KeyError> {
        let _sync = self.sync.lock().await;
        let kid = fresh.stored.kid.clone();
        for _ in 0..ROTATION_ATTEMPTS {
            let known = keyring.snapshot();
            let (expected, mut ring) = match self.read(Some(&known)).await? {
                Some(ring) => (Some(ring.version), ring),
                None => (None, known),
            };
            ring.rotate(fresh.clone(), now, token_lifetime_ms);
            ring.version = ring.version.saturating_add(1);
            if self.write(expected, &ring).await? {
                keyring.install(ring);
                return Ok(kid);
            }
        }
        Err(KeyError::Contended {
            attempts: ROTATION_ATTEMPTS,
        })
    }

    async fn read(&self, known: Option<&Ring>) -> Result<Option<Ring>, KeyError> {
        let mut conn = self.conn.clone();
        let (version, json): (Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(&self.key)
            .arg("version")
            .arg("keyring")
            .query_async(&mut conn)
            .await
            .map_err(redis_error)?;
        let corrupt =
            |reason: String| KeyError::Redis(format!("{} is corrupt: {reason}", self.key));
        let (version, json) = match (version, json) {
            (None, None) => return Ok(None),
            (Some(version), Some(json)) => (version, json),
            _ => return Err(corrupt("version or keyring missing".to_owned())),
        };
        let version: u64 = version
            .parse()
            .map_err(|_| corrupt(format!("version {version:?}")))?;
        let stored: StoredKeyring =
            serde_json::from_str(&json).map_err(|err| corrupt(err.to_string()))?;
        Ring::from_stored(stored, version, known)?
            .map(Some)
            .ok_or_else(|| corrupt("no key".to_owned()))
    }

    /// Writes `ring` as its version if Redis still holds `expected`.
    async fn write(&self, expected: Option<u64>, ring: &Ring) -> Result<bool, KeyError> {
        let json = serde_json::to_string(&ring.to_stored())
            .map_err(|err| KeyError::Encode(err.to_string()))?;
        let mut conn = self.conn.clone();
        let written: i64 = self
            .compare_and_set
            .key(&self.key)
            .arg(
                expected
                    .map(|version| version.to_string())
                    .unwrap_or_default(),
            )
            .arg(ring.version.to_string())
            .arg(json)
            .invoke_async(&mut conn)
            .await
            .map_err(redis_error)?;
        Ok(written == 1)
    }
}
