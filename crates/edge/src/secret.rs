//! Shared-secret bearer credentials (admin token, registration token).
//!
//! A secret is never logged or printed by `Debug`; it is compared in constant
//! time (over SHA-256 digests, so neither content nor length leaks through
//! timing); a generated one is written to a 0600 file next to the data it guards.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use base64::Engine as _;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

/// Shortest secret accepted from a flag or file: guessing must stay hopeless.
pub const MIN_SECRET_LEN: usize = 16;
/// Longest secret accepted: a bearer value is a header, not a document.
pub const MAX_SECRET_LEN: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} must be {MIN_SECRET_LEN}..={MAX_SECRET_LEN} visible ASCII characters")]
    Unusable { what: String },
}

/// A bearer secret. Cloning shares nothing mutable; `Debug` redacts.
#[derive(Clone)]
pub struct Secret {
    value: String,
    digest: [u8; 32],
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret(<redacted, id {}>)", self.fingerprint())
    }
}

impl Secret {
    /// Checks a secret given on the command line or in the environment.
    pub fn new(value: impl Into<String>, what: &str) -> Result<Self, SecretError> {
        let value = value.into().trim().to_owned();
        let usable = (MIN_SECRET_LEN..=MAX_SECRET_LEN).contains(&value.len())
            && value.bytes().all(|byte| byte.is_ascii_graphic());
        if !usable {
            return Err(SecretError::Unusable {
                what: what.to_owned(),
            });
        }
        let digest = Sha256::digest(value.as_bytes()).into();
        Ok(Self { value, digest })
    }

    /// 32 random bytes, base64url: 256 bits an attacker cannot guess.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
        let value = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let digest = Sha256::digest(value.as_bytes()).into();
        Self { value, digest }
    }

    /// Reads the first line of `path`.
    pub fn from_file(path: &Path, what: &str) -> Result<Self, SecretError> {
        let text = std::fs::read_to_string(path).map_err(|source| SecretError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::new(text.lines().next().unwrap_or_default(), what)
    }

    /// Reads `path` when it exists; otherwise generates a secret and writes it
    /// there (mode 0600, created exclusively so two processes cannot race).
    /// Returns the secret and whether it was generated now.
    pub fn load_or_generate(path: &Path, what: &str) -> Result<(Self, bool), SecretError> {
        match Self::from_file(path, what) {
            Ok(secret) => return Ok((secret, false)),
            Err(SecretError::Read { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound => {}
            Err(other) => return Err(other),
        }
        let secret = Self::generate();
        let write_error = |source| SecretError::Write {
            path: path.to_owned(),
            source,
        };
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        match options.open(path) {
            Ok(mut file) => {
                file.write_all(format!("{}\n", secret.value).as_bytes())
                    .and_then(|()| file.sync_all())
                    .map_err(write_error)?;
                Ok((secret, true))
            }
            // Another process created it between our read and our write: use theirs.
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
                Ok((Self::from_file(path, what)?, false))
            }
            Err(err) => Err(write_error(err)),
        }
    }

    /// The secret itself, for a client that must send it.
    pub fn expose(&self) -> &str {
        &self.value
    }

    /// A short, non-reversible id of the secret for logs ("which token was it").
    pub fn fingerprint(&self) -> String {
        self.digest[..4]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// The SHA-256 of the secret, for storing "who registered this" without the secret.
    pub fn digest(&self) -> [u8; 32] {
        self.digest
    }

    /// Constant-time comparison with a presented value.
    pub fn matches(&self, presented: &str) -> bool {
        let presented: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        self.digest.ct_eq(&presented).into()
    }
}

/// The credential of an `Authorization: Bearer <token>` header, if any.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn rejects_short_or_odd_secrets() {
        assert!(Secret::new("short", "admin token").is_err());
        assert!(Secret::new("has a space in it....", "admin token").is_err());
        assert!(Secret::new("x".repeat(MAX_SECRET_LEN + 1), "admin token").is_err());
        assert!(Secret::new("  0123456789abcdef\n", "admin token").is_ok());
    }

    #[test]
    fn matches_only_the_same_value() {
        let secret = Secret::new("0123456789abcdef", "t").unwrap();
        assert!(secret.matches("0123456789abcdef"));
        assert!(!secret.matches("0123456789abcdeF"));
        assert!(!secret.matches(""));
        assert!(!format!("{secret:?}").contains("0123456789abcdef"));
    }

    #[test]
    fn generated_secrets_differ_and_are_usable() {
        let a = Secret::generate();
        let b = Secret::generate();
        assert_ne!(a.expose(), b.expose());
        assert!(Secret::new(a.expose(), "t").is_ok());
    }

    #[test]
    fn load_or_generate_writes_a_private_file_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin-token");
        let (first, generated) = Secret::load_or_generate(&path, "admin token").unwrap();
        assert!(generated);
        let (again, generated) = Secret::load_or_generate(&path, "admin token").unwrap();
        assert!(!generated);
        assert_eq!(first.expose(), again.expose());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn bearer_header_parsing() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer(&headers), None);
        headers.insert(AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(bearer(&headers), Some("abc"));
        headers.insert(AUTHORIZATION, "bearer  abc ".parse().unwrap());
        assert_eq!(bearer(&headers), Some("abc"));
        headers.insert(AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&headers), None);
        headers.insert(AUTHORIZATION, "Bearer ".parse().unwrap());
        assert_eq!(bearer(&headers), None);
    }
}
