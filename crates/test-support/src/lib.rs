//! Helpers shared by the integration tests of several matchplane crates. Test-only:
//! nothing here is linked into a binary.
#![forbid(unsafe_code)]
// Only tests call this crate: a panic on an impossible encoding failure is the right
// outcome there, as in the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use p256::pkcs8::{EncodePublicKey as _, LineEnding};
use serde_json::{Value, json};

/// Tokens carrying `claims` under `kid` that a naive verifier would accept without the
/// private key behind `public`: `alg: none` (without a signature part, with an empty
/// one), `genuine` (an ES256 token from the real signer) with its signature cut off, and
/// HS256/HS512 with the HMAC secret set to the public key in every encoding such a
/// verifier might load it in (`jwk` is the key as the JWKS publishes it). Each comes
/// with what it tries.
pub fn forgeries(
    public: &p256::ecdsa::VerifyingKey,
    jwk: &Value,
    kid: &str,
    claims: &Value,
    genuine: &str,
) -> Vec<(String, String)> {
    let body = URL_SAFE_NO_PAD.encode(claims.to_string());
    let mut forged = Vec::new();
    for alg in ["none", "None", "NONE"] {
        let header =
            URL_SAFE_NO_PAD.encode(json!({"alg": alg, "typ": "JWT", "kid": kid}).to_string());
        forged.push((
            format!("alg {alg}, no signature part"),
            format!("{header}.{body}"),
        ));
        forged.push((
            format!("alg {alg}, empty signature"),
            format!("{header}.{body}."),
        ));
    }
    let unsigned = genuine.rsplit_once('.').unwrap().0;
    forged.push((
        "ES256 with the signature cut off".to_owned(),
        format!("{unsigned}."),
    ));

    let point = public.to_encoded_point(false);
    let pem = public.to_public_key_pem(LineEnding::LF).unwrap();
    let public_encodings: Vec<(&str, Vec<u8>)> = vec![
        ("the SEC1 uncompressed point", point.as_bytes().to_vec()),
        (
            "the SEC1 compressed point",
            public.to_encoded_point(true).as_bytes().to_vec(),
        ),
        (
            "x || y",
            [&point.x().unwrap()[..], &point.y().unwrap()[..]].concat(),
        ),
        (
            "the SPKI DER",
            public.to_public_key_der().unwrap().as_bytes().to_vec(),
        ),
        ("the SPKI PEM", pem.as_bytes().to_vec()),
        (
            "the SPKI PEM without its last newline",
            pem.trim_end().as_bytes().to_vec(),
        ),
        ("the JWK as published", jwk.to_string().into_bytes()),
        (
            "the JWK's x",
            jwk["x"].as_str().unwrap().as_bytes().to_vec(),
        ),
    ];
    for (encoding, secret) in &public_encodings {
        for algorithm in [
            jsonwebtoken::Algorithm::HS256,
            jsonwebtoken::Algorithm::HS512,
        ] {
            let mut header = jsonwebtoken::Header::new(algorithm);
            header.kid = Some(kid.to_owned());
            let token = jsonwebtoken::encode(
                &header,
                claims,
                &jsonwebtoken::EncodingKey::from_secret(secret),
            )
            .unwrap();
            forged.push((format!("{algorithm:?} keyed with {encoding}"), token));
        }
    }
    forged
}
