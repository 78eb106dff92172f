//! Cost of minting one match token (the matcher signs one per ticket member).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use matchplane_contracts::token::MatchClaims;
use matchplane_control_plane::SigningAlgorithm;
use matchplane_control_plane::keys::Keyring;
use matchplane_control_plane::tokens::TokenIssuer;

fn claims() -> MatchClaims {
    MatchClaims {
        iss: "matchplane".into(),
        aud: "matchplane-game".into(),
        sub: "player-1".into(),
        player_id: "player-1".into(),
        members: vec!["player-1".into()],
        assignment_id: "0b7c6f0e-6a44-4c1b-9d9b-4b1f6f0c2a11".into(),
        land_id: "hero-defense:5d1f0c3e-2b7a-4e55-9f0e-3c2d1b0a9f88".into(),
        land_type: "hero-defense".into(),
        server_id: "game-1".into(),
        iat: 1_800_000_000,
        exp: 1_800_000_060,
        jti: "0b7c6f0e-6a44-4c1b-9d9b-4b1f6f0c2a11".into(),
        match_id: Some("m".into()),
        team: Some(0),
        roster: vec![
            vec!["player-1".into(), "player-2".into(), "player-3".into()],
            vec!["player-4".into(), "player-5".into(), "player-6".into()],
        ],
        queue_key: Some("hero-defense:3v3".into()),
        server_instance_id: None,
    }
}

fn mint(c: &mut Criterion) {
    for (name, algorithm) in [
        ("es256", SigningAlgorithm::Es256),
        ("eddsa", SigningAlgorithm::EdDsa),
    ] {
        let keyring = Arc::new(Keyring::in_memory(algorithm, 0).unwrap());
        let issuer = TokenIssuer::new(keyring, "matchplane".into(), "matchplane-game".into());
        let signer = issuer.signer();
        let claims = claims();
        c.bench_function(&format!("mint_token_{name}"), |b| {
            b.iter(|| signer.sign(&claims).unwrap())
        });
    }
}

criterion_group!(benches, mint);
criterion_main!(benches);
