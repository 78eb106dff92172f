//! Single entry through a real nginx: `/match/*` → control plane, `/gs/{n}/game/*`
//! → the game server the control plane chose, and the seed's one-server form.
//! Every client request goes through the load balancer.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::nginx::{Nginx, start_nginx};
use support::*;

const WITHIN: Duration = Duration::from_secs(30);

async fn wait_live(lb: &str, ids: &[&str]) {
    wait_servers(lb, WITHIN, |servers| {
        ids.iter().all(|id| {
            servers
                .iter()
                .any(|s| s["serverId"] == *id && s["state"] == "live")
        })
    })
    .await;
}

/// One player's journey through the LB: enqueue, push, join, one action.
async fn play(lb: &Nginx, player: &str, queue: &str) -> (Value, Socket) {
    let ticket = enqueue(
        &format!("{}/match", lb.base()),
        json!({"queueKey": queue, "members": [player]}),
    )
    .await;
    let mut push = ws(&format!(
        "ws://127.0.0.1:{}/match/realtime?ticketId={ticket}",
        lb.port
    ))
    .await;
    let assignment = next_of(&mut push, "match.assigned").await["data"]["assignment"].clone();
    let url = join_url(&assignment, player);
    assert!(
        url.starts_with(&format!("ws://127.0.0.1:{}/", lb.port)),
        "connectUrl points at the LB, not past it: {url}"
    );
    let mut game = ws(&url).await;
    let joined = next_of(&mut game, "join.ok").await;
    assert_eq!(joined["data"]["playerId"], player);
    send(
        &mut game,
        json!({"type": "action", "v": 1, "data": {"requestId": "1", "name": "increment"}}),
    )
    .await;
    let result = next_of(&mut game, "action.result").await;
    assert_eq!(result["data"]["ok"], true);
    (assignment, game)
}

async fn lands_on(server: &Proc) -> Vec<Value> {
    let (status, body) = admin_get(&format!("{}/admin/lands", server.http())).await;
    assert_eq!(status, 200);
    body["lands"].as_array().unwrap().clone()
}

#[tokio::test]
async fn several_game_servers_behind_one_entry() {
    let cp = spawn_logging(
        &args(&[
            "control-plane",
            "--port",
            "0",
            "--ephemeral",
            "--trusted-proxy",
            "127.0.0.1",
            "--admin-token",
            ADMIN_TOKEN,
            "--registration-token",
            REGISTRATION_TOKEN,
        ]),
        "control plane listening",
        "info,matchplane_control_plane::client_ip=debug",
    )
    .await;
    let lb_port = free_port();
    let port = lb_port.to_string();
    let gs1 = game_server(
        &cp.http(),
        &[
            "--server-id",
            "gs-1",
            "--connect-host",
            "127.0.0.1",
            "--connect-port",
            &port,
            "--connect-path-prefix",
            "/gs/1",
            "--trusted-proxy",
            "127.0.0.1",
        ],
    )
    .await;
    let gs2 = game_server(
        &cp.http(),
        &[
            "--server-id",
            "gs-2",
            "--connect-host",
            "127.0.0.1",
            "--connect-port",
            &port,
            "--connect-path-prefix",
            "/gs/2",
            "--trusted-proxy",
            "127.0.0.1",
        ],
    )
    .await;
    let lb = start_nginx(
        lb_port,
        &args(&[
            "--control-plane",
            &cp.addr,
            "--prefixed",
            &format!("1={}", gs1.addr),
            "--prefixed",
            &format!("2={}", gs2.addr),
        ]),
    )
    .await;
    let lb_match = format!("{}/match", lb.base());
    wait_live(&lb_match, &["gs-1", "gs-2"]).await;

    // JWKS through the LB.
    let (status, jwks) = get(&format!("{lb_match}/.well-known/jwks.json")).await;
    assert_eq!(status, 200);
    assert!(!jwks["keys"].as_array().unwrap().is_empty());
    // Metrics are not part of the public entry; the control plane itself still serves them.
    let (status, _) = get(&format!("{lb_match}/metrics")).await;
    assert_eq!(status, 404);

    // Four solo matches; spread placement alternates between the two servers.
    let mut sockets = Vec::new();
    let mut placed = Vec::new();
    for player in ["p1", "p2", "p3", "p4"] {
        let (assignment, socket) = play(&lb, player, "counter").await;
        sockets.push(socket);
        placed.push(assignment);
    }
    let servers: std::collections::BTreeSet<&str> = placed
        .iter()
        .map(|a| a["serverId"].as_str().unwrap())
        .collect();
    assert_eq!(servers.len(), 2, "both servers got lands: {servers:?}");
    // Each player is seated on exactly the server the control plane named (asked directly).
    for assignment in &placed {
        let (server, prefix) = match assignment["serverId"].as_str().unwrap() {
            "gs-1" => (&gs1, "/gs/1/"),
            _ => (&gs2, "/gs/2/"),
        };
        assert!(
            assignment["connectUrl"]
                .as_str()
                .unwrap()
                .contains(&format!("{}{prefix}game/counter?", lb.port))
        );
        let lands = lands_on(server).await;
        let land = lands
            .iter()
            .find(|l| l["landId"] == assignment["landId"])
            .expect("land on the named server");
        assert_eq!(land["players"], 1);
        let other = if std::ptr::eq(server, &gs1) {
            &gs2
        } else {
            &gs1
        };
        assert!(
            lands_on(other)
                .await
                .iter()
                .all(|l| l["landId"] != assignment["landId"])
        );
    }

    // The LB's log shows every game socket upgraded through it under its
    // prefix (nginx writes a socket's line when it closes).
    drop(sockets);
    let deadline = tokio::time::Instant::now() + WITHIN;
    let log = loop {
        let log = lb.access_log();
        let all_logged = placed.iter().all(|assignment| {
            let land_id = assignment["landId"].as_str().unwrap();
            log.lines().any(|line| {
                line.contains(land_id) && line.contains("/gs/") && line.contains(" 101 ")
            })
        });
        if all_logged {
            break log;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "game sockets missing from the access log:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(log.contains("GET /match/realtime?ticketId="), "{log}");

    // Unknown prefixes stop at the LB.
    let (status, _) = get(&format!("{}/gs/9/admin/lands", lb.base())).await;
    assert_eq!(status, 404);

    // The control plane attributes requests to the client named by the trusted LB.
    let response = reqwest::Client::new()
        .get(format!("{lb_match}/health"))
        .header("x-forwarded-for", "203.0.113.7")
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        let seen = cp
            .logs
            .borrow()
            .iter()
            .any(|l| l["message"] == "request" && l["client_ip"] == "203.0.113.7");
        if seen {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no request logged with the forwarded client IP"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn seed_form_one_game_server_behind_game() {
    let cp = control_plane(&[]).await;
    let lb_port = free_port();
    let port = lb_port.to_string();
    let gs = game_server(
        &cp.http(),
        &[
            "--server-id",
            "solo-gs",
            "--connect-host",
            "127.0.0.1",
            "--connect-port",
            &port,
        ],
    )
    .await;
    let lb = start_nginx(
        lb_port,
        &args(&["--control-plane", &cp.addr, "--game-server", &gs.addr]),
    )
    .await;
    wait_live(&format!("{}/match", lb.base()), &["solo-gs"]).await;

    let (assignment, _socket) = play(&lb, "only", "counter").await;
    assert!(
        assignment["connectUrl"]
            .as_str()
            .unwrap()
            .starts_with(&format!("ws://127.0.0.1:{lb_port}/game/counter?landId=")),
        "{assignment}"
    );
    let lands = lands_on(&gs).await;
    assert!(lands.iter().any(|l| l["landId"] == assignment["landId"]));
    // The game server's admin is reachable through the LB too, with its token only:
    // nginx connects from loopback, which must not stand in for the credential.
    let (status, _) = get(&format!("{}/admin/lands", lb.base())).await;
    assert_eq!(status, 401);
    let (status, body) = admin_get(&format!("{}/admin/lands", lb.base())).await;
    assert_eq!(status, 200);
    assert_eq!(body["serverId"], "solo-gs");

    // The web pages work under the entry's `/match/` prefix: they and their
    // assets are addressed relative to the page.
    let page = |path: &str| format!("{}/match/{path}", lb.base());
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let api = no_redirects.get(page("api")).send().await.unwrap();
    assert!(api.status().is_redirection(), "{}", api.status());
    assert_eq!(api.headers()["location"], "api/");
    for (path, kind, needle) in [
        ("play", "text/html", "data-testid"),
        ("play/sdk.js", "text/javascript", "MatchmakingClient"),
        ("dashboard", "text/html", "matchplane-dashboard"),
        ("api/", "text/html", "swagger"),
        (
            "openapi.json",
            "application/json",
            "/v1/matchmaking/enqueue",
        ),
    ] {
        let response = reqwest::get(page(path)).await.unwrap();
        assert_eq!(response.status(), 200, "/match/{path}");
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            content_type.starts_with(kind),
            "/match/{path}: {content_type}"
        );
        let body = response.text().await.unwrap();
        assert!(body.contains(needle), "/match/{path} lacks {needle}");
    }
}
