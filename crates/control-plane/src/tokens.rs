//! Minting match tokens (compact JWS / JWT) with the keyring's current key.
//!
//! The header and signature are produced here with the parsed key kept by the
//! keyring; verifiers (the game server, the tests) use `jsonwebtoken`.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use matchplane_contracts::token::MatchClaims;

use crate::keys::{CurrentKey, Keyring};

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot encode match-token claims: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("token signing thread failed: {0}")]
    Background(String),
    #[error(transparent)]
    Sign(#[from] crate::keys::SignError),
}

pub struct TokenIssuer {
    keyring: Arc<Keyring>,
    pub issuer: String,
    pub audience: String,
}

/// Signs a batch of tokens with one key snapshot, so a rotation mid-match
/// cannot give one match tokens from two keys.
pub struct Signer {
    key: CurrentKey,
    /// `base64url(header) + "."`, the same for every token of this key.
    encoded_header: String,
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
        let alg = match key.algorithm {
            jsonwebtoken::Algorithm::EdDSA => "EdDSA",
            _ => "ES256",
        };
        let header = serde_json::json!({"alg": alg, "kid": key.kid, "typ": "JWT"});
        let encoded_header = format!("{}.", URL_SAFE_NO_PAD.encode(header.to_string()));
        Signer {
            key,
            encoded_header,
        }
    }
}

impl Signer {
    pub fn sign(&self, claims: &MatchClaims) -> Result<String, TokenError> {
        let payload = serde_json::to_vec(claims)?;
        let mut token =
            String::with_capacity(self.encoded_header.len() + payload.len() * 4 / 3 + 100);
        token.push_str(&self.encoded_header);
        URL_SAFE_NO_PAD.encode_string(&payload, &mut token);
        let signature = self.key.material.sign(token.as_bytes())?;
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(signature, &mut token);
        Ok(token)
    }
}
