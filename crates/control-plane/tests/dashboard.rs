//! The admin dashboard page and the admin endpoints it reads (recent matches,
//! queue history), against a real server on 127.0.0.1:0.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::Harness;
use matchplane_contracts::admin::{QueueHistory, QueueSample, RecentMatches};
use matchplane_control_plane::Config;
use serde_json::{Value, json};

const NEW_ROUTES: [&str; 2] = ["/v1/admin/matches/recent", "/v1/admin/queue/history"];

#[tokio::test]
async fn the_dashboard_page_is_served_self_contained() {
    let h = Harness::start().await;
    // The page itself is open: it holds no data until the admin token is given.
    let response = h.http.get(h.url("/dashboard")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let headers = response.headers().clone();
    let content_type = headers[reqwest::header::CONTENT_TYPE].to_str().unwrap();
    assert!(content_type.starts_with("text/html"), "{content_type}");
    let policy = headers["content-security-policy"].to_str().unwrap();
    assert!(policy.contains("default-src 'none'"), "{policy}");
    assert!(policy.contains("script-src 'sha256-"), "{policy}");
    let html = response.text().await.unwrap();
    for stable in [
        r#"id="matchplane-dashboard""#,
        r#"data-testid="token-input""#,
        r#"data-testid="token-submit""#,
        r#"data-testid="jwks-kids""#,
        r#"data-testid="recent-matches""#,
        r#"id="servers-body""#,
    ] {
        assert!(html.contains(stable), "{stable} missing from the page");
    }
    // Nothing is loaded from elsewhere, and the page calls the admin API with a bearer token.
    assert!(!html.contains("<script src"), "external script");
    assert!(!html.contains("<link"), "external stylesheet");
    assert!(!html.contains("https://"), "absolute URL in the page");
    assert!(html.contains("v1/admin/matches/recent") && html.contains("Bearer "));
}

#[tokio::test]
async fn the_dashboard_endpoints_need_the_admin_token() {
    let h = Harness::start().await;
    for path in NEW_ROUTES {
        for bearer in [None, Some("not-the-admin-token")] {
            let mut request = h.http.get(h.url(path));
            if let Some(bearer) = bearer {
                request = request.bearer_auth(bearer);
            }
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let reply: Value = response.json().await.unwrap();
            assert_eq!(status, 401, "{path} with {bearer:?}: {reply}");
            assert_eq!(reply["error"]["code"], "UNAUTHENTICATED", "{reply}");
        }
        // A wrong method is enveloped too.
        let response = h.http.post(h.url(path)).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 405, "{path}");
    }
    let (status, recent) = h.get("/v1/admin/matches/recent").await;
    assert_eq!(status, 200, "{recent}");
    assert_eq!(recent, json!({"matches": []}));
    let (status, history) = h.get("/v1/admin/queue/history").await;
    assert_eq!(status, 200, "{history}");
    assert_eq!(history["sampleEveryMs"], 2_000);
    assert_eq!(history["windowMs"], 600_000);
    assert_eq!(history["queues"], json!([]));
}

#[tokio::test]
async fn a_match_shows_in_recent_matches_and_the_queue_history() {
    let mut config = Config::ephemeral_for_tests();
    config.history_sample_every = Duration::from_millis(50);
    let h = Harness::start_with(config).await;
    h.register_server("game-1", "hero-defense").await;
    let alice = h
        .enqueue(json!({"queueKey": "hero-defense:1v1", "members": ["alice"]}))
        .await;
    let bob = h
        .enqueue(json!({"queueKey": "hero-defense:1v1", "members": ["bob"]}))
        .await;
    let assignment = h.wait_for(&alice, "assigned").await["assignment"].clone();
    h.wait_for(&bob, "assigned").await;

    // The matcher records the match right after the store has committed it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let recent = loop {
        let (status, recent) = h.get("/v1/admin/matches/recent").await;
        assert_eq!(status, 200, "{recent}");
        let recent: RecentMatches = serde_json::from_value(recent).unwrap();
        if !recent.matches.is_empty() || tokio::time::Instant::now() > deadline {
            break recent;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(recent.matches.len(), 1, "{recent:?}");
    let formed = &recent.matches[0];
    assert_eq!(formed.queue_key, "hero-defense:1v1");
    assert_eq!(formed.server_id, "game-1");
    assert_eq!(formed.land_id, assignment["landId"].as_str().unwrap());
    assert_eq!(formed.match_id.as_deref(), assignment["matchId"].as_str());
    assert_eq!(formed.tickets, 2);
    let mut players: Vec<&str> = formed.teams.iter().flatten().map(String::as_str).collect();
    players.sort_unstable();
    assert_eq!(players, ["alice", "bob"]);
    assert_eq!(
        formed.teams.len(),
        2,
        "one player per team: {:?}",
        formed.teams
    );
    assert!(formed.matched_at.ends_with('Z'), "{}", formed.matched_at);

    // Samples come every 50 ms. The queue is empty again after the match, yet its match is sampled.
    let samples = wait_for_samples(&h, "hero-defense:1v1", |samples| {
        samples.iter().any(|s| s.matches > 0)
    })
    .await;
    let matched: Vec<_> = samples.iter().filter(|s| s.matches > 0).collect();
    assert_eq!(matched.len(), 1, "the match is counted once: {samples:?}");
    assert_eq!(matched[0].matches, 1);
    assert!(matched[0].matches_per_sec > 0.0);
    assert!(matched[0].time_to_match_p50_ms.is_some());
    assert!(matched[0].time_to_match_p99_ms >= matched[0].time_to_match_p50_ms);

    // A third player waits alone: the next samples show a queued ticket.
    h.enqueue(json!({"queueKey": "hero-defense:1v1", "members": ["carol"]}))
        .await;
    wait_for_samples(&h, "hero-defense:1v1", |samples| {
        samples
            .last()
            .is_some_and(|s| s.queued == 1 && s.matches == 0)
    })
    .await;
}

/// Polls the queue's history until `wanted` holds for its samples.
async fn wait_for_samples(
    h: &Harness,
    queue_key: &str,
    wanted: impl Fn(&[QueueSample]) -> bool,
) -> Vec<QueueSample> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, history) = h.get("/v1/admin/queue/history").await;
        assert_eq!(status, 200, "{history}");
        let history: QueueHistory = serde_json::from_value(history).unwrap();
        assert_eq!(history.sample_every_ms, 50);
        let samples = history
            .queues
            .into_iter()
            .find(|series| series.queue_key == queue_key)
            .map(|series| series.samples)
            .unwrap_or_default();
        if wanted(&samples) {
            return samples;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the history of {queue_key} never got there: {samples:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
