//! Minting match tokens (JWT) with the keyring's current key.

use std::sync::Arc;

use jsonwebtoken::Header;
use matchplane_contracts::token::MatchClaims;

use crate::keys::{CurrentKey, Keyring};

#[derive(Debug, thiserror::Error)]
#[error("cannot sign a match token: {0}")]
pub struct TokenError(#[from] jsonwebtoken::errors::Error);

pub struct TokenIssuer {
    keyring: Arc<Keyring>,
    pub issuer: String,
    pub audience: String,
}

/// Signs a batch of tokens with one key snapshot, so a rotation mid-match
/// cannot give one match tokens from two keys.
pub struct Signer {
    key: CurrentKey,
    header: Header,
}

impl TokenIssuer {
    pub fn new(keyring: Arc<Keyring>, issuer: String, audience: String) -> Self {
        Self {
            keyring,
            issuer,
            audience,
        }
    }

    pub fn keyring(&self) -> &Arc<Keyring> {
        &self.keyring
    }

    pub fn signer(&self) -> Signer {
        let key = self.keyring.current();
        let mut header = Header::new(key.algorithm);
        header.kid = Some(key.kid.clone());
        header.typ = Some("JWT".to_owned());
        Signer { key, header }
    }
}

impl Signer {
    pub fn sign(&self, claims: &MatchClaims) -> Result<String, TokenError> {
        Ok(jsonwebtoken::encode(
            &self.header,
            claims,
            &self.key.encoding,
        )?)
    }
}
