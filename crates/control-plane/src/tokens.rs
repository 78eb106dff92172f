//! Minting match tokens (compact JWS / JWT) with the keyring's current key.
//!
//! The header and signature are produced here with the parsed key kept by the
//! keyring; verifiers (the game server, the tests) use `jsonwebtoken`.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use matchplane_contracts::token::MatchClaims;
use parking_lot::Mutex;

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
    /// The last signer made, reused while the keyring's current key stays the
    /// same: the matching loop asks for one every round, and building the
    /// header (JSON, then base64) each time was 0.6 % of the control plane.
    last_signer: Mutex<Option<Arc<Signer>>>,
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
            last_signer: Mutex::new(None),
        }
    }

    pub fn keyring(&self) -> &Arc<Keyring> {
        &self.keyring
    }

    /// A signer with the keyring's current key.
    pub fn signer(&self) -> Arc<Signer> {
        let key = self.keyring.current();
        let mut last = self.last_signer.lock();
        if let Some(signer) = last.as_ref()
            && Arc::ptr_eq(&signer.key.material, &key.material)
        {
            return Arc::clone(signer);
        }
        let signer = Arc::new(Self::signer_for(key));
        *last = Some(Arc::clone(&signer));
        signer
    }

    fn signer_for(key: CurrentKey) -> Signer {
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use super::TokenIssuer;
    use crate::SigningAlgorithm;
    use crate::keys::Keyring;

    #[tokio::test]
    async fn one_signer_serves_until_the_key_rotates() {
        let keyring = Arc::new(Keyring::in_memory(SigningAlgorithm::Es256, 0).unwrap());
        let issuer = TokenIssuer::new(Arc::clone(&keyring), "iss".into(), "aud".into());
        let first = issuer.signer();
        assert!(
            Arc::ptr_eq(&first, &issuer.signer()),
            "reused while the key stays"
        );

        let new_kid = keyring
            .rotate(SigningAlgorithm::Es256, 1, 60_000)
            .await
            .unwrap();
        let after = issuer.signer();
        assert!(
            !Arc::ptr_eq(&first, &after),
            "a rotation makes a new signer"
        );
        assert_eq!(after.key.kid, new_kid);
        assert_ne!(after.encoded_header, first.encoded_header);
    }
}
