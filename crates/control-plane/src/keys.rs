//! Signing keys for match tokens: generated once and persisted in the data dir
//! or, for replicas on one Redis, in Redis (`shared`), or given as a PEM;
//! rotated without breaking tokens already handed out, and published as a JWK Set.

mod shared;

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use std::sync::Arc;

use jsonwebtoken::Algorithm;
use matchplane_contracts::jwks::{Jwk, JwkSet};
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::clock::Millis;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SigningAlgorithm {
    #[serde(rename = "ES256")]
    Es256,
    #[serde(rename = "EdDSA")]
    EdDsa,
}

impl SigningAlgorithm {
    pub fn jwt_algorithm(self) -> Algorithm {
        match self {
            Self::Es256 => Algorithm::ES256,
            Self::EdDsa => Algorithm::EdDSA,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Es256 => "ES256",
            Self::EdDsa => "EdDSA",
        }
    }
}

impl std::str::FromStr for SigningAlgorithm {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value.to_ascii_lowercase().as_str() {
            "es256" => Ok(Self::Es256),
            "eddsa" | "ed25519" => Ok(Self::EdDsa),
            other => Err(format!(
                "unknown signing algorithm {other:?} (es256 or eddsa)"
            )),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read or write the keyring at {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the keyring file {path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error(
        "the signing key PEM is neither a P-256 (ES256) nor an Ed25519 (EdDSA) PKCS#8/SEC1 private key"
    )]
    UnsupportedPem,
    #[error("cannot encode the signing key: {0}")]
    Encode(String),
    #[error("a key given with --signing-key cannot be rotated here; rotate it where it is managed")]
    ExternalKey,
    #[error("signing keys in Redis: {0}")]
    Redis(String),
    #[error(
        "the keyring in Redis changed under {attempts} rotation attempts in a row; retry the rotation"
    )]
    Contended { attempts: u32 },
}

impl KeyError {
    /// Whether the failure is the shared keyring being unreachable (retry
    /// later) rather than a request that cannot succeed.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Redis(_) | Self::Contended { .. })
    }
}

/// One key as persisted: the private half stays in the data dir only.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredKey {
    kid: String,
    alg: SigningAlgorithm,
    created_at: Millis,
    #[serde(default)]
    retired_at: Option<Millis>,
    /// PKCS#8 PEM.
    private_pem: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct StoredKeyring {
    keys: Vec<StoredKey>,
}

#[derive(Clone)]
struct LoadedKey {
    stored: StoredKey,
    material: Arc<SigningMaterial>,
    jwk: Jwk,
}

/// A parsed private key, kept parsed: re-reading PKCS#8 for every token
/// dominated the cost of minting (see benches/tokens.rs). Both algorithms sign
/// with aws-lc-rs: its assembly P-256 is several times faster than the pure-Rust
/// one (which showed as ~45 % of the control plane's CPU under load), and its
/// Ed25519 signs in 9.7 µs where ed25519-dalek took 17.0 µs on the same box.
pub enum SigningMaterial {
    Es256(
        aws_lc_rs::signature::EcdsaKeyPair,
        aws_lc_rs::rand::SystemRandom,
    ),
    EdDsa(aws_lc_rs::signature::Ed25519KeyPair),
}

impl SigningMaterial {
    /// The JWS signature of `input` (ES256: `r || s`, 64 bytes; EdDSA: 64 bytes).
    pub fn sign(&self, input: &[u8]) -> Result<Vec<u8>, SignError> {
        match self {
            Self::Es256(key, rng) => Ok(key
                .sign(rng, input)
                .map_err(|_| SignError)?
                .as_ref()
                .to_vec()),
            Self::EdDsa(key) => Ok(key.sign(input).as_ref().to_vec()),
        }
    }
}

/// The crypto library refused to sign (it has no other failure to report).
#[derive(Debug, thiserror::Error)]
#[error("the signing key could not produce a signature")]
pub struct SignError;

/// The key used to sign new tokens, plus the keys whose tokens may still be live.
pub struct Keyring {
    backing: Backing,
    ring: RwLock<Ring>,
}

/// Where the keyring lives, which decides how it rotates.
enum Backing {
    /// `--ephemeral`: gone with the process.
    Memory,
    /// `--signing-key`: managed elsewhere, never rotated here.
    External,
    /// `<data-dir>/keys/keyring.json`.
    Dir(PathBuf),
    /// One keyring for every replica on this Redis.
    Redis(shared::RedisKeys),
}

/// Holding the current key outside the list makes "no key to sign with" unrepresentable.
#[derive(Clone)]
struct Ring {
    current: LoadedKey,
    /// Older keys, newest first.
    retired: Vec<LoadedKey>,
    /// The shared keyring's version this ring was read from or written as
    /// (always 0 when the keyring is not shared).
    version: u64,
}

impl Ring {
    /// From keys stored oldest first, current last; `None` when there are none.
    fn from_stored_order(mut keys: Vec<LoadedKey>, version: u64) -> Option<Self> {
        let current = keys.pop()?;
        keys.reverse();
        Some(Self {
            current,
            retired: keys,
            version,
        })
    }

    /// Parses stored keys, reusing the already parsed material of keys `known`
    /// holds (a reload after a rotation parses only the new key).
    fn from_stored(
        stored: StoredKeyring,
        version: u64,
        known: Option<&Ring>,
    ) -> Result<Option<Self>, KeyError> {
        let keys = stored
            .keys
            .into_iter()
            .map(
                |stored| match known.and_then(|ring| ring.find(&stored.kid)) {
                    Some(key) if key.stored.private_pem == stored.private_pem => Ok(LoadedKey {
                        stored,
                        material: Arc::clone(&key.material),
                        jwk: key.jwk.clone(),
                    }),
                    _ => load_key(stored),
                },
            )
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::from_stored_order(keys, version))
    }

    fn find(&self, kid: &str) -> Option<&LoadedKey> {
        std::iter::once(&self.current)
            .chain(&self.retired)
            .find(|key| key.stored.kid == kid)
    }

    fn fresh(current: LoadedKey) -> Self {
        Self {
            current,
            retired: Vec::new(),
            version: 0,
        }
    }

    /// Persisted oldest first, current last.
    fn to_stored(&self) -> StoredKeyring {
        StoredKeyring {
            keys: self
                .retired
                .iter()
                .rev()
                .chain(std::iter::once(&self.current))
                .map(|key| key.stored.clone())
                .collect(),
        }
    }

    /// Makes `fresh` current and retires the previous one at `now`; keys
    /// whose tokens expired long ago are forgotten.
    fn rotate(&mut self, fresh: LoadedKey, now: Millis, token_lifetime_ms: Millis) {
        let forget_before = now.saturating_sub(token_lifetime_ms.saturating_add(60_000));
        self.retired
            .retain(|key| key.stored.retired_at.is_none_or(|at| at >= forget_before));
        let mut previous = std::mem::replace(&mut self.current, fresh);
        previous.stored.retired_at = Some(now);
        self.retired.insert(0, previous);
    }
}

/// What a signer needs, cloned out of the lock.
#[derive(Clone)]
pub struct CurrentKey {
    pub kid: String,
    pub algorithm: Algorithm,
    pub material: Arc<SigningMaterial>,
}

const KEYRING_FILE: &str = "keyring.json";

/// How often a replica checks the keyring shared through Redis for a rotation.
pub const SHARED_KEYRING_POLL: std::time::Duration = std::time::Duration::from_secs(1);

impl Keyring {
    /// Opens `data_dir/keys/keyring.json`, creating a first key if there is none.
    pub fn open_dir(
        data_dir: &Path,
        algorithm: SigningAlgorithm,
        now: Millis,
    ) -> Result<Self, KeyError> {
        let dir = data_dir.join("keys");
        let path = dir.join(KEYRING_FILE);
        let stored = read_keyring(&path)?;
        // Private keys: a keyring left readable by an older version is
        // tightened on the next start, not only when it is rewritten.
        if path.exists() {
            for (target, mode) in [(&dir, 0o700), (&path, 0o600)] {
                restrict_to_owner(target, mode).map_err(|source| KeyError::Io {
                    path: target.clone(),
                    source,
                })?;
            }
        }
        let keys = stored
            .keys
            .into_iter()
            .map(load_key)
            .collect::<Result<Vec<_>, _>>()?;
        let loaded = Ring::from_stored_order(keys, 0);
        let keyring_was_empty = loaded.is_none();
        let ring = match loaded {
            Some(ring) => ring,
            None => Ring::fresh(generate_key(algorithm, now)?),
        };
        let keyring = Self {
            backing: Backing::Dir(path),
            ring: RwLock::new(ring),
        };
        if keyring_was_empty {
            crate::auth::create_private_dir(&dir).map_err(|source| KeyError::Io {
                path: dir.clone(),
                source,
            })?;
            keyring.persist()?;
        }
        Ok(keyring)
    }

    /// A keyring that lives only in memory (ephemeral mode).
    pub fn in_memory(algorithm: SigningAlgorithm, now: Millis) -> Result<Self, KeyError> {
        Ok(Self {
            backing: Backing::Memory,
            ring: RwLock::new(Ring::fresh(generate_key(algorithm, now)?)),
        })
    }

    /// Uses the given PEM private key. Its `kid` is its JWK thumbprint, so every
    /// replica configured with the same key publishes the same `kid`.
    pub fn from_pem(pem: &str, now: Millis) -> Result<Self, KeyError> {
        let (alg, private_pem) = normalise_pem(pem)?;
        let key = load_key(StoredKey {
            kid: String::new(),
            alg,
            created_at: now,
            retired_at: None,
            private_pem,
        })?;
        Ok(Self {
            backing: Backing::External,
            ring: RwLock::new(Ring::fresh(key)),
        })
    }

    /// Opens the keyring every replica on this Redis shares (`{key_prefix}:keyring`).
    /// The first replica creates it: from `seed_dir`'s keyring when it has
    /// one, so tokens signed before the move to Redis stay verifiable, else
    /// with a fresh key. Call [`Keyring::spawn_refresh`] to follow rotations
    /// made by other replicas.
    pub async fn open_redis(
        url: &str,
        key_prefix: &str,
        algorithm: SigningAlgorithm,
        seed_dir: &Path,
        now: Millis,
    ) -> Result<Self, KeyError> {
        let shared = shared::RedisKeys::connect(url, key_prefix).await?;
        let ring = shared
            .load_or_create(|| seed_ring(seed_dir, algorithm, now))
            .await?;
        Ok(Self {
            backing: Backing::Redis(shared),
            ring: RwLock::new(ring),
        })
    }

    /// Reloads a keyring shared through Redis if another replica changed it;
    /// `Ok(true)` when it did. Other keyrings have nothing to reload.
    pub async fn refresh(&self) -> Result<bool, KeyError> {
        match &self.backing {
            Backing::Redis(shared) => shared.refresh(self).await,
            Backing::Memory | Backing::External | Backing::Dir(_) => Ok(false),
        }
    }

    /// For a keyring shared through Redis, polls it every
    /// [`SHARED_KEYRING_POLL`] until the keyring is dropped, so a rotation
    /// made on any replica reaches this one's signer and JWKS within that
    /// bound. Polling rather than pub/sub: a missed message would leave a
    /// replica on the old key, and a poll is one `HGET` a second.
    pub fn spawn_refresh(self: &Arc<Self>) {
        if !matches!(self.backing, Backing::Redis(_)) {
            return;
        }
        let keyring = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SHARED_KEYRING_POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut failing = false;
            loop {
                tick.tick().await;
                let Some(keyring) = keyring.upgrade() else {
                    return;
                };
                match keyring.refresh().await {
                    Ok(changed) => {
                        if changed {
                            tracing::info!(kid = %keyring.current_kid(), "signing keys reloaded from Redis");
                        }
                        if failing {
                            tracing::info!("signing keys in Redis reachable again");
                        }
                        failing = false;
                    }
                    Err(err) => {
                        // Once per outage: the keys in hand keep signing meanwhile.
                        if !failing {
                            tracing::warn!(error = %err, "cannot check the signing keys in Redis; signing with the keys in hand");
                        }
                        failing = true;
                    }
                }
            }
        });
    }

    fn snapshot(&self) -> Ring {
        self.ring.read().clone()
    }

    /// Swaps the whole ring at once: a signer holds either the old current
    /// key or the new one, never a mix.
    fn install(&self, ring: Ring) {
        *self.ring.write() = ring;
    }

    fn version(&self) -> u64 {
        self.ring.read().version
    }

    pub fn current(&self) -> CurrentKey {
        let ring = self.ring.read();
        CurrentKey {
            kid: ring.current.stored.kid.clone(),
            algorithm: ring.current.stored.alg.jwt_algorithm(),
            material: Arc::clone(&ring.current.material),
        }
    }

    pub fn current_kid(&self) -> String {
        self.ring.read().current.stored.kid.clone()
    }

    /// Public keys of the current key and of retired keys whose tokens may still
    /// be valid (retired less than `token_lifetime_ms` ago, plus a minute of slack).
    pub fn jwks(&self, now: Millis, token_lifetime_ms: Millis) -> JwkSet {
        let keep_for = token_lifetime_ms.saturating_add(60_000);
        let ring = self.ring.read();
        let still_verifiable = ring.retired.iter().filter(|key| {
            key.stored
                .retired_at
                .is_none_or(|retired_at| now < retired_at.saturating_add(keep_for))
        });
        JwkSet {
            keys: std::iter::once(&ring.current)
                .chain(still_verifiable)
                .map(|key| key.jwk.clone())
                .collect(),
        }
    }

    /// Makes a new key current; the previous one keeps being published until its
    /// tokens have expired. Keys retired long ago are forgotten. A keyring
    /// shared through Redis rotates there (every replica follows within
    /// [`SHARED_KEYRING_POLL`]); a data-dir one rewrites its file.
    pub async fn rotate(
        self: &Arc<Self>,
        algorithm: SigningAlgorithm,
        now: Millis,
        token_lifetime_ms: Millis,
    ) -> Result<String, KeyError> {
        match &self.backing {
            Backing::External => Err(KeyError::ExternalKey),
            Backing::Redis(shared) => {
                let fresh = generate_key(algorithm, now)?;
                shared.rotate(self, fresh, now, token_lifetime_ms).await
            }
            Backing::Memory | Backing::Dir(_) => {
                let keyring = Arc::clone(self);
                tokio::task::spawn_blocking(move || {
                    keyring.rotate_locally(algorithm, now, token_lifetime_ms)
                })
                .await
                .map_err(|err| KeyError::Encode(format!("rotation task failed: {err}")))?
            }
        }
    }

    fn rotate_locally(
        &self,
        algorithm: SigningAlgorithm,
        now: Millis,
        token_lifetime_ms: Millis,
    ) -> Result<String, KeyError> {
        if matches!(self.backing, Backing::External) {
            return Err(KeyError::ExternalKey);
        }
        let fresh = generate_key(algorithm, now)?;
        let kid = fresh.stored.kid.clone();
        self.ring.write().rotate(fresh, now, token_lifetime_ms);
        self.persist()?;
        Ok(kid)
    }

    fn persist(&self) -> Result<(), KeyError> {
        let Backing::Dir(path) = &self.backing else {
            return Ok(());
        };
        let stored = self.ring.read().to_stored();
        let json =
            serde_json::to_vec_pretty(&stored).map_err(|err| KeyError::Encode(err.to_string()))?;
        write_private_file_atomically(path, &json)
    }
}

/// Rotates the keyring of a data dir that no running process holds (offline CLI).
pub fn rotate_in_dir(
    data_dir: &Path,
    algorithm: SigningAlgorithm,
    now: Millis,
    token_lifetime_ms: Millis,
) -> Result<String, KeyError> {
    Keyring::open_dir(data_dir, algorithm, now)?.rotate_locally(algorithm, now, token_lifetime_ms)
}

/// The keyring a replica publishes when Redis has none: the data dir's, if
/// this replica had one before moving to Redis, else a fresh key.
fn seed_ring(data_dir: &Path, algorithm: SigningAlgorithm, now: Millis) -> Result<Ring, KeyError> {
    let stored = read_keyring(&data_dir.join("keys").join(KEYRING_FILE))?;
    match Ring::from_stored(stored, 0, None)? {
        Some(ring) => Ok(ring),
        None => Ok(Ring::fresh(generate_key(algorithm, now)?)),
    }
}

fn read_keyring(path: &Path) -> Result<StoredKeyring, KeyError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|err| KeyError::Corrupt {
            path: path.to_owned(),
            reason: err.to_string(),
        }),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(StoredKeyring::default()),
        Err(source) => Err(KeyError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

fn write_private_file_atomically(path: &Path, contents: &[u8]) -> Result<(), KeyError> {
    use std::io::Write as _;
    let io_err = |source| KeyError::Io {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("json.tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp).map_err(io_err)?;
    // `mode` only applies when the file is created; a leftover temp file
    // from a crash keeps whatever mode it had.
    restrict_to_owner(&tmp, 0o600).map_err(io_err)?;
    file.write_all(contents).map_err(io_err)?;
    file.sync_all().map_err(io_err)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(io_err)?;
    if let Some(dir) = path.parent()
        && let Ok(dir_handle) = std::fs::File::open(dir)
    {
        // Make the rename itself durable; failure here only weakens crash safety.
        let _ = dir_handle.sync_all();
    }
    Ok(())
}

/// Sets `mode` on a file or directory that grants anything to group or
/// others; owner-only modes are left alone. A no-op off Unix.
pub(crate) fn restrict_to_owner(path: &Path, mode: u32) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mut permissions = std::fs::metadata(path)?.permissions();
        if permissions.mode() & 0o077 != 0 {
            permissions.set_mode(mode);
            std::fs::set_permissions(path, permissions)?;
        }
    }
    #[cfg(not(unix))]
    let _ = (path, mode);
    Ok(())
}

fn generate_key(algorithm: SigningAlgorithm, now: Millis) -> Result<LoadedKey, KeyError> {
    let mut rng = rand::rngs::OsRng;
    let private_pem = match algorithm {
        SigningAlgorithm::Es256 => p256::ecdsa::SigningKey::random(&mut rng)
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|err| KeyError::Encode(err.to_string()))?
            .to_string(),
        SigningAlgorithm::EdDsa => ed25519_dalek::SigningKey::generate(&mut rng)
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|err| KeyError::Encode(err.to_string()))?
            .to_string(),
    };
    load_key(StoredKey {
        kid: String::new(),
        alg: algorithm,
        created_at: now,
        retired_at: None,
        private_pem,
    })
}

/// Accepts PKCS#8 (either curve) or SEC1 (`EC PRIVATE KEY`) and returns PKCS#8.
fn normalise_pem(pem: &str) -> Result<(SigningAlgorithm, String), KeyError> {
    use p256::elliptic_curve::SecretKey;
    if let Ok(key) = p256::ecdsa::SigningKey::from_pkcs8_pem(pem) {
        return Ok((SigningAlgorithm::Es256, encode_p256(&key)?));
    }
    if let Ok(secret) = SecretKey::<p256::NistP256>::from_sec1_pem(pem) {
        return Ok((SigningAlgorithm::Es256, encode_p256(&secret.into())?));
    }
    if let Ok(key) = ed25519_dalek::SigningKey::from_pkcs8_pem(pem) {
        let pem = key
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|err| KeyError::Encode(err.to_string()))?;
        return Ok((SigningAlgorithm::EdDsa, pem.to_string()));
    }
    Err(KeyError::UnsupportedPem)
}

fn encode_p256(key: &p256::ecdsa::SigningKey) -> Result<String, KeyError> {
    Ok(key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|err| KeyError::Encode(err.to_string()))?
        .to_string())
}

fn load_key(mut stored: StoredKey) -> Result<LoadedKey, KeyError> {
    let (kty, crv, x, y, material) = match stored.alg {
        SigningAlgorithm::Es256 => {
            let key = p256::ecdsa::SigningKey::from_pkcs8_pem(&stored.private_pem)
                .map_err(|_| KeyError::UnsupportedPem)?;
            let point = key.verifying_key().to_encoded_point(false);
            let (Some(x), Some(y)) = (point.x(), point.y()) else {
                return Err(KeyError::UnsupportedPem);
            };
            let der = key
                .to_pkcs8_der()
                .map_err(|err| KeyError::Encode(err.to_string()))?;
            let pair = aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(
                &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                der.as_bytes(),
            )
            .map_err(|_| KeyError::UnsupportedPem)?;
            (
                "EC",
                "P-256",
                URL_SAFE_NO_PAD.encode(x),
                Some(URL_SAFE_NO_PAD.encode(y)),
                SigningMaterial::Es256(pair, aws_lc_rs::rand::SystemRandom::new()),
            )
        }
        SigningAlgorithm::EdDsa => {
            let key = ed25519_dalek::SigningKey::from_pkcs8_pem(&stored.private_pem)
                .map_err(|_| KeyError::UnsupportedPem)?;
            // Ed25519 signatures are a function of the seed and the message, so the
            // pair built from dalek's seed signs exactly as dalek would.
            let pair = aws_lc_rs::signature::Ed25519KeyPair::from_seed_unchecked(key.as_bytes())
                .map_err(|_| KeyError::UnsupportedPem)?;
            (
                "OKP",
                "Ed25519",
                URL_SAFE_NO_PAD.encode(key.verifying_key().to_bytes()),
                None,
                SigningMaterial::EdDsa(pair),
            )
        }
    };
    if stored.kid.is_empty() {
        stored.kid = thumbprint(kty, crv, &x, y.as_deref());
    }
    let jwk = Jwk {
        kty: kty.to_owned(),
        crv: crv.to_owned(),
        x,
        y,
        kid: stored.kid.clone(),
        alg: stored.alg.as_str().to_owned(),
        use_: "sig".to_owned(),
    };
    Ok(LoadedKey {
        stored,
        material: Arc::new(material),
        jwk,
    })
}

/// RFC 7638 JWK thumbprint (SHA-256, base64url): stable for a given public key.
fn thumbprint(kty: &str, crv: &str, x: &str, y: Option<&str>) -> String {
    // Members in lexicographic order, no whitespace, as the RFC requires.
    let canonical = match y {
        Some(y) => format!(r#"{{"crv":"{crv}","kty":"{kty}","x":"{x}","y":"{y}"}}"#),
        None => format!(r#"{{"crv":"{crv}","kty":"{kty}","x":"{x}"}}"#),
    };
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyring_survives_reopen_and_rotation_keeps_previous_key_published() {
        let dir = tempfile::tempdir().unwrap();
        let first = Keyring::open_dir(dir.path(), SigningAlgorithm::Es256, 1_000).unwrap();
        let kid = first.current_kid();
        drop(first);
        let reopened = Keyring::open_dir(dir.path(), SigningAlgorithm::Es256, 2_000).unwrap();
        assert_eq!(reopened.current_kid(), kid);

        let new_kid = reopened
            .rotate_locally(SigningAlgorithm::EdDsa, 3_000, 60_000)
            .unwrap();
        assert_ne!(new_kid, kid);
        let kids: Vec<_> = reopened
            .jwks(3_000, 60_000)
            .keys
            .into_iter()
            .map(|k| k.kid)
            .collect();
        assert_eq!(kids, vec![new_kid.clone(), kid.clone()]);
        // After the old key's tokens have expired it is no longer published.
        let kids: Vec<_> = reopened
            .jwks(3_000 + 121_000, 60_000)
            .keys
            .into_iter()
            .map(|k| k.kid)
            .collect();
        assert_eq!(kids, vec![new_kid.clone()]);

        let again = Keyring::open_dir(dir.path(), SigningAlgorithm::Es256, 4_000).unwrap();
        assert_eq!(again.current_kid(), new_kid);
        assert_eq!(again.current().algorithm, Algorithm::EdDSA);
    }

    #[test]
    fn shared_pem_gives_the_same_kid_everywhere() {
        let pem = p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng)
            .to_pkcs8_pem(LineEnding::LF)
            .unwrap()
            .to_string();
        let a = Keyring::from_pem(&pem, 1).unwrap();
        let b = Keyring::from_pem(&pem, 2).unwrap();
        assert_eq!(a.current_kid(), b.current_kid());
        assert!(matches!(
            a.rotate_locally(SigningAlgorithm::Es256, 3, 1),
            Err(KeyError::ExternalKey)
        ));
    }

    /// The aws-lc signer built from the PEM's seed signs byte for byte as
    /// ed25519-dalek does, and the JWK's public key verifies it.
    #[test]
    fn eddsa_signatures_are_dalek_s_and_verify_against_the_published_key() {
        use ed25519_dalek::{Signer as _, Verifier as _};
        let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
        let pem = key.to_pkcs8_pem(LineEnding::LF).unwrap().to_string();
        let ring = Keyring::from_pem(&pem, 1).unwrap();
        let current = ring.current();
        assert_eq!(current.algorithm, Algorithm::EdDSA);
        let published = URL_SAFE_NO_PAD
            .decode(&ring.jwks(1, 60_000).keys[0].x)
            .unwrap();
        let verifying =
            ed25519_dalek::VerifyingKey::from_bytes(&published.try_into().unwrap()).unwrap();
        for input in [&b""[..], b"header.payload", &[0xA5; 700]] {
            let signed = current.material.sign(input).unwrap();
            assert_eq!(signed, key.sign(input).to_bytes().to_vec());
            let signature = ed25519_dalek::Signature::from_slice(&signed).unwrap();
            assert!(verifying.verify(input, &signature).is_ok());
        }
    }

    #[test]
    fn garbage_pem_is_rejected() {
        assert!(matches!(
            Keyring::from_pem("nope", 1),
            Err(KeyError::UnsupportedPem)
        ));
    }

    #[cfg(unix)]
    fn mode_of(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[cfg(unix)]
    #[test]
    fn the_keyring_is_owner_only_and_loose_modes_are_tightened() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        let keys_dir = data_dir.join("keys");
        let keyring = keys_dir.join(KEYRING_FILE);
        let first = Keyring::open_dir(&data_dir, SigningAlgorithm::Es256, 1_000).unwrap();
        assert_eq!(mode_of(&keys_dir), 0o700);
        assert_eq!(mode_of(&keyring), 0o600);
        first
            .rotate_locally(SigningAlgorithm::Es256, 2_000, 60_000)
            .unwrap();
        assert_eq!(mode_of(&keyring), 0o600, "a rewrite stays private");
        drop(first);

        // A keyring left readable (e.g. by an older version) is tightened on open.
        std::fs::set_permissions(&keys_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&keyring, std::fs::Permissions::from_mode(0o644)).unwrap();
        Keyring::open_dir(&data_dir, SigningAlgorithm::Es256, 3_000).unwrap();
        assert_eq!(mode_of(&keys_dir), 0o700);
        assert_eq!(mode_of(&keyring), 0o600);
    }
}
