//! The served OpenAPI description covers every route the router has, and Swagger UI
//! is served from the binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::Harness;
use matchplane_contracts::ErrorCode;
use matchplane_control_plane::api::openapi::{ROUTES, is_undocumented};
use serde_json::Value;

/// `{ticket_id}` and `{ticketId}` name the same segment: compare templates without names.
fn template(path: &str) -> String {
    let mut out = String::new();
    let mut in_param = false;
    for c in path.chars() {
        match c {
            '{' => {
                in_param = true;
                out.push_str("{}");
            }
            '}' => in_param = false,
            _ if in_param => {}
            _ => out.push(c),
        }
    }
    out
}

async fn description(h: &Harness) -> Value {
    let response = h.http.get(h.url("/openapi.json")).send().await.unwrap();
    assert_eq!(response.status(), 200, "/openapi.json needs no credential");
    let content_type = response.headers()["content-type"].to_str().unwrap();
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    response.json().await.unwrap()
}

const OPERATION_METHODS: &[&str] = &["get", "put", "post", "delete", "patch", "head", "options"];

#[tokio::test]
async fn the_served_description_lists_every_route_with_its_methods() {
    let h = Harness::start().await;
    let doc = description(&h).await;
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );

    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in OPERATION_METHODS {
            if item.get(*method).is_some() {
                documented.insert((method.to_uppercase(), template(path)));
            }
        }
    }
    let routed: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(method, path)| (method.as_str().to_owned(), template(path)))
        .collect();
    let undocumented: Vec<_> = routed.difference(&documented).collect();
    let unrouted: Vec<_> = documented.difference(&routed).collect();
    assert!(
        undocumented.is_empty(),
        "routes without an operation in /openapi.json (annotate the handler with \
         #[utoipa::path] and list it in ApiDoc's paths): {undocumented:?}"
    );
    assert!(
        unrouted.is_empty(),
        "operations in /openapi.json that ROUTES does not list: {unrouted:?}"
    );

    // ROUTES is what the router serves: each entry reaches a handler, not the fallback.
    for (method, path) in ROUTES {
        let url = h.url(
            &path
                .replace("{ticket_id}", "probe")
                .replace("{server_id}", "probe"),
        );
        let mut request = h.http.request(method.clone(), url);
        if *method == reqwest::Method::POST {
            request = request.json(&serde_json::json!({}));
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert_ne!(status, 405, "{method} {path} is not routed: {body}");
        assert!(
            !(status == 404 && body["error"]["code"] == "NOT_FOUND"),
            "{method} {path} is not routed: {body}"
        );
    }
}

#[tokio::test]
async fn operations_carry_their_credentials_bodies_and_error_envelopes() {
    let h = Harness::start().await;
    let doc = description(&h).await;

    let schemes = &doc["components"]["securitySchemes"];
    for name in ["adminToken", "registrationToken", "playerJwt"] {
        assert_eq!(schemes[name]["type"], "http", "{name}: {}", schemes[name]);
        assert_eq!(schemes[name]["scheme"], "bearer", "{name}");
    }
    assert_eq!(schemes["playerJwt"]["bearerFormat"], "JWT");

    let operation = |method: &str, path: &str| doc["paths"][path][method].clone();
    let security = |method: &str, path: &str| operation(method, path)["security"].clone();
    for (method, path) in [
        ("get", "/v1/admin/servers"),
        ("get", "/v1/admin/cluster"),
        ("get", "/v1/admin/queue/summary"),
        ("post", "/v1/admin/keys/rotate"),
        ("post", "/v1/internal/backfill"),
    ] {
        assert_eq!(
            security(method, path),
            serde_json::json!([{"adminToken": []}]),
            "{path}"
        );
    }
    for (method, path) in [
        ("post", "/v1/provisioning/servers/register"),
        ("delete", "/v1/provisioning/servers/{serverId}"),
    ] {
        assert_eq!(
            security(method, path),
            serde_json::json!([{"registrationToken": []}]),
            "{path}"
        );
    }
    // Optional: only `--player-auth jwt` asks for it.
    for (method, path) in [
        ("post", "/v1/matchmaking/enqueue"),
        ("get", "/v1/matchmaking/status/{ticketId}"),
        ("post", "/v1/matchmaking/cancel"),
        ("get", "/realtime"),
    ] {
        assert_eq!(
            security(method, path),
            serde_json::json!([{}, {"playerJwt": []}]),
            "{path}"
        );
    }
    for path in ["/health", "/.well-known/jwks.json", "/metrics"] {
        assert_eq!(security("get", path), serde_json::json!([{}]), "{path}");
    }

    // Bodies: request and success schemas come from the contract types.
    let enqueue = operation("post", "/v1/matchmaking/enqueue");
    assert_eq!(
        enqueue["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/EnqueueRequest"
    );
    assert_eq!(
        enqueue["responses"]["201"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/EnqueueResponse"
    );
    assert!(
        enqueue["responses"]["429"]["headers"]
            .get("Retry-After")
            .is_some()
    );
    assert!(
        operation("get", "/metrics")["responses"]["200"]["content"]
            .get("text/plain; version=0.0.4")
            .is_some()
    );
    assert!(
        operation("get", "/realtime")["responses"]
            .get("101")
            .is_some()
    );

    // Every error answer names its envelope: the standard one, or the seed's for provisioning.
    for (path, item) in doc["paths"].as_object().unwrap() {
        let envelope = if path.starts_with("/v1/provisioning/") {
            "#/components/schemas/ProvisioningResponse"
        } else {
            "#/components/schemas/ErrorBody"
        };
        for (method, op) in item.as_object().unwrap() {
            for (status, response) in op["responses"].as_object().unwrap() {
                if status.as_str() >= "400" && !path.starts_with("/health") {
                    assert_eq!(
                        response["content"]["application/json"]["schema"]["$ref"], envelope,
                        "{method} {path} {status}"
                    );
                }
            }
        }
    }

    // The codes clients switch on are listed, exactly as the wire spells them.
    let schemas = &doc["components"]["schemas"];
    let codes: Vec<&str> = schemas["ErrorCode"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|code| code.as_str().unwrap())
        .collect();
    for code in &codes {
        let parsed: ErrorCode = serde_json::from_value(Value::from(*code)).unwrap();
        assert_eq!(parsed.as_str(), *code);
    }
    for code in [
        ErrorCode::Unauthenticated,
        ErrorCode::Forbidden,
        ErrorCode::RateLimited,
        ErrorCode::TooManyConnections,
        ErrorCode::PlayerAlreadyQueued,
        ErrorCode::QueueNotFound,
        ErrorCode::ConstraintsTooLarge,
        ErrorCode::StoreUnavailable,
    ] {
        assert!(codes.contains(&code.as_str()), "{code} missing");
    }
    for name in [
        "ErrorBody",
        "ProvisioningResponse",
        "RealtimeEnvelope",
        "RealtimeAction",
    ] {
        assert!(schemas.get(name).is_some(), "schema {name} missing");
    }
}

#[tokio::test]
async fn swagger_ui_is_served_from_the_binary() {
    let h = Harness::start().await;
    // A relative redirect, so `/match/api` behind nginx lands on `/match/api/`.
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let response = no_redirects.get(h.url("/api")).send().await.unwrap();
    assert!(response.status().is_redirection(), "{}", response.status());
    assert_eq!(response.headers()["location"], "api/");
    let response = h.http.get(h.url("/api")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.url().path().starts_with("/api/"));
    let content_type = response.headers()["content-type"].to_str().unwrap();
    assert!(content_type.starts_with("text/html"), "{content_type}");
    let page = response.text().await.unwrap();
    assert!(page.contains("swagger-ui"), "{page}");

    let mut assets = Vec::new();
    for attribute in ["src=\"", "href=\""] {
        for (start, _) in page.match_indices(attribute) {
            let rest = &page[start + attribute.len()..];
            let asset = &rest[..rest.find('"').unwrap()];
            assert!(
                !asset.contains("://") && !asset.starts_with("//"),
                "the page loads {asset} from elsewhere"
            );
            assets.push(asset.trim_start_matches("./").to_owned());
        }
    }
    assert!(
        assets.iter().any(|asset| asset.ends_with(".js")),
        "{assets:?}"
    );
    assert!(
        assets.iter().any(|asset| asset.ends_with(".css")),
        "{assets:?}"
    );
    for asset in &assets {
        let response = h
            .http
            .get(h.url(&format!("/api/{asset}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{asset}");
        let body = response.bytes().await.unwrap();
        assert!(!body.is_empty(), "{asset} is empty");
    }

    // The UI is pointed at this server's description.
    let initializer = h
        .http
        .get(h.url("/api/swagger-initializer.js"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(initializer.contains("\"../openapi.json\""), "{initializer}");

    let response = h
        .http
        .get(h.url("/api/no-such-file.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "NOT_FOUND");
}

/// The router's source names every path literally, so this can see them all: each
/// route it registers is in `ROUTES` with its methods, or is a page on purpose.
#[test]
fn every_route_the_router_registers_is_listed() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut registered = Vec::new();
    let mut files = vec![src];
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            for (start, _) in text.match_indices(".route(") {
                let call = route_call(&text[start + ".route(".len()..]);
                let path_arg = call.split(',').next().unwrap().trim();
                let literal = path_arg
                    .strip_prefix('"')
                    .and_then(|rest| rest.strip_suffix('"'))
                    .unwrap_or_else(|| {
                        panic!(
                            "{}: .route({path_arg}, ...) — name the path as a string literal \
                             so this test can check it is documented",
                            path.display()
                        )
                    });
                for method in methods_of(call) {
                    registered.push((method, literal.to_owned(), path.clone()));
                }
            }
        }
    }
    assert!(registered.len() >= ROUTES.len(), "{registered:?}");
    let listed: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(method, path)| (method.as_str().to_owned(), (*path).to_owned()))
        .collect();
    for (method, path, file) in &registered {
        assert!(
            is_undocumented(path) || listed.contains(&(method.clone(), path.clone())),
            "{}: {method} {path} is routed but not in api::openapi::ROUTES (annotate its \
             handler with #[utoipa::path], add it to ApiDoc's paths and to ROUTES; or, for a \
             browser page, to UNDOCUMENTED)",
            file.display()
        );
    }
}

/// The text of a `.route(` call up to its closing parenthesis.
fn route_call(after_open: &str) -> &str {
    let mut depth = 0usize;
    for (index, c) in after_open.char_indices() {
        match c {
            '(' => depth += 1,
            ')' if depth == 0 => return &after_open[..index],
            ')' => depth -= 1,
            _ => {}
        }
    }
    after_open
}

/// The HTTP methods a method router expression such as `get(a).post(b)` serves.
fn methods_of(call: &str) -> Vec<String> {
    let mut methods = Vec::new();
    for method in ["get", "post", "put", "delete", "patch"] {
        let needle = format!("{method}(");
        for (index, _) in call.match_indices(&needle) {
            let before = call[..index].chars().next_back();
            if !before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                methods.push(method.to_uppercase());
            }
        }
    }
    assert!(!methods.is_empty(), "no method in .route({call})");
    methods
}

#[tokio::test]
async fn a_matcher_only_replica_serves_no_description() {
    let mut config = matchplane_control_plane::Config::ephemeral_for_tests();
    config.role = matchplane_control_plane::config::Role::Matcher;
    let h = Harness::start_with(config).await;
    for path in ["/openapi.json", "/api/"] {
        let response = h.http.get(h.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 404, "{path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "NOT_FOUND", "{path}");
    }
}
