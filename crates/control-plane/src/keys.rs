//! Signing keys for match tokens: generated once and persisted in the data dir
//! (or given as a PEM so replicas share one key), rotated without breaking
//! tokens already handed out, and published as a JWK Set.

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
struct StoredKeyring {
    keys: Vec<StoredKey>,
}

struct LoadedKey {
    stored: StoredKey,
    material: Arc<SigningMaterial>,
    jwk: Jwk,
}

/// A parsed private key, kept parsed: re-reading PKCS#8 for every token
/// dominated the cost of minting (see benches/tokens.rs). ES256 signs with
/// aws-lc-rs, whose assembly P-256 is several times faster than the pure-Rust
/// one, which showed as ~45 % of the control plane's CPU under load.
pub enum SigningMaterial {
    Es256(
        aws_lc_rs::signature::EcdsaKeyPair,
        aws_lc_rs::rand::SystemRandom,
    ),
    EdDsa(ed25519_dalek::SigningKey),
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
            Self::EdDsa(key) => {
                use ed25519_dalek::Signer as _;
                Ok(key.sign(input).to_bytes().to_vec())
            }
        }
    }
}

/// The crypto library refused to sign (it has no other failure to report).
#[derive(Debug, thiserror::Error)]
#[error("the signing key could not produce a signature")]
pub struct SignError;

/// The key used to sign new tokens, plus the keys whose tokens may still be live.
pub struct Keyring {
    path: Option<PathBuf>,
    external: bool,
    ring: RwLock<Ring>,
}

/// Holding the current key outside the list makes "no key to sign with" unrepresentable.
struct Ring {
    current: LoadedKey,
    /// Older keys, newest first.
    retired: Vec<LoadedKey>,
}

/// What a signer needs, cloned out of the lock.
#[derive(Clone)]
pub struct CurrentKey {
    pub kid: String,
    pub algorithm: Algorithm,
    pub material: Arc<SigningMaterial>,
}

const KEYRING_FILE: &str = "keyring.json";

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
        let mut keys = stored
            .keys
            .into_iter()
            .map(load_key)
            .collect::<Result<Vec<_>, _>>()?;
        let newest = keys.pop();
        let keyring_was_empty = newest.is_none();
        let current = match newest {
            Some(key) => key,
            None => generate_key(algorithm, now)?,
        };
        keys.reverse();
        let keyring = Self {
            path: Some(path),
            external: false,
            ring: RwLock::new(Ring {
                current,
                retired: keys,
            }),
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
            path: None,
            external: false,
            ring: RwLock::new(Ring {
                current: generate_key(algorithm, now)?,
                retired: Vec::new(),
            }),
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
            path: None,
            external: true,
            ring: RwLock::new(Ring {
                current: key,
                retired: Vec::new(),
            }),
        })
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
    /// tokens have expired. Keys retired long ago are forgotten.
    pub fn rotate(
        &self,
        algorithm: SigningAlgorithm,
        now: Millis,
        token_lifetime_ms: Millis,
    ) -> Result<String, KeyError> {
        if self.external {
            return Err(KeyError::ExternalKey);
        }
        let fresh = generate_key(algorithm, now)?;
        let kid = fresh.stored.kid.clone();
        {
            let mut ring = self.ring.write();
            let forget_before = now.saturating_sub(token_lifetime_ms.saturating_add(60_000));
            ring.retired
                .retain(|key| key.stored.retired_at.is_none_or(|at| at >= forget_before));
            let mut previous = std::mem::replace(&mut ring.current, fresh);
            previous.stored.retired_at = Some(now);
            ring.retired.insert(0, previous);
        }
        self.persist()?;
        Ok(kid)
    }

    fn persist(&self) -> Result<(), KeyError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        // Persisted oldest first, current last.
        let stored = {
            let ring = self.ring.read();
            StoredKeyring {
                keys: ring
                    .retired
                    .iter()
                    .rev()
                    .chain(std::iter::once(&ring.current))
                    .map(|key| key.stored.clone())
                    .collect(),
            }
        };
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
    Keyring::open_dir(data_dir, algorithm, now)?.rotate(algorithm, now, token_lifetime_ms)
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
            (
                "OKP",
                "Ed25519",
                URL_SAFE_NO_PAD.encode(key.verifying_key().to_bytes()),
                None,
                SigningMaterial::EdDsa(key),
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
            .rotate(SigningAlgorithm::EdDsa, 3_000, 60_000)
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
            a.rotate(SigningAlgorithm::Es256, 3, 1),
            Err(KeyError::ExternalKey)
        ));
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
            .rotate(SigningAlgorithm::Es256, 2_000, 60_000)
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
