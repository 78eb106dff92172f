//! `--cors-origin`: lets pages served from other origins call the REST API.
//! Without it the API sends no CORS headers, so only same-origin pages (the
//! control plane's own `/play` and `/dashboard`, or anything behind the same
//! reverse proxy) can read its answers.

use std::time::Duration;

use axum::http::{HeaderValue, Method, header};
use tower_http::cors::{AllowOrigin, CorsLayer};

/// How long a browser may reuse a preflight answer.
const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum CorsOriginError {
    #[error(
        "a CORS origin is `scheme://host[:port]` with scheme http or https and nothing after \
         the host (no path, no trailing `/`, no `*`), got {0:?}"
    )]
    Malformed(String),
}

/// Checks one `--cors-origin` value; browsers send `Origin` in exactly this form, and
/// the comparison is byte for byte, so anything else could never match.
pub fn parse_origin(raw: &str) -> Result<String, CorsOriginError> {
    let malformed = || CorsOriginError::Malformed(raw.to_owned());
    let origin = raw.trim();
    let host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .ok_or_else(malformed)?;
    let well_formed = !host.is_empty()
        && host
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || b"-.:[]".contains(&byte));
    if !well_formed {
        return Err(malformed());
    }
    Ok(origin.to_ascii_lowercase())
}

/// The CORS layer for `origins`, or `None` (no CORS headers at all) when none are given.
pub fn layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allowed: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|origin| HeaderValue::from_str(origin).ok())
        .collect();
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(allowed))
            .allow_methods([Method::GET, Method::POST, Method::DELETE])
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
            // Clients read `Retry-After` on 429 to back off.
            .expose_headers([header::RETRY_AFTER])
            .max_age(PREFLIGHT_MAX_AGE),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_scheme_host_and_port_only() {
        assert_eq!(
            parse_origin("https://Game.Example:8443").ok().as_deref(),
            Some("https://game.example:8443")
        );
        assert!(parse_origin("http://127.0.0.1:5173").is_ok());
        assert!(parse_origin("http://[::1]:8080").is_ok());
        for bad in [
            "",
            "*",
            "game.example",
            "ftp://game.example",
            "https://",
            "https://game.example/",
            "https://game.example/path",
            "https://user@game.example",
        ] {
            assert!(parse_origin(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn no_origins_means_no_layer() {
        assert!(layer(&[]).is_none());
        assert!(layer(&["http://127.0.0.1:5173".to_owned()]).is_some());
    }
}
