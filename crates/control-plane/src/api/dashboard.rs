//! `GET /dashboard`: the admin dashboard, one self-contained page compiled
//! into the binary (no build step, nothing fetched from elsewhere). The page
//! holds no data: it asks for the admin token and reads the admin API with it.

use std::sync::LazyLock;

use axum::http::header;
use axum::response::{Html, IntoResponse};
use base64::Engine as _;
use sha2::{Digest as _, Sha256};

const TEMPLATE: &str = include_str!("../../assets/dashboard/index.html");
const STYLE: &str = include_str!("../../assets/dashboard/dashboard.css");
const SCRIPT: &str = include_str!("../../assets/dashboard/dashboard.js");

struct Page {
    html: String,
    /// Allows exactly the page's own inline script and style (by hash) and
    /// requests to this origin; nothing injected into the page could run.
    content_security_policy: String,
}

static PAGE: LazyLock<Page> = LazyLock::new(|| Page {
    html: TEMPLATE
        .replacen("{{style}}", STYLE, 1)
        .replacen("{{script}}", SCRIPT, 1),
    content_security_policy: format!(
        "default-src 'none'; script-src '{}'; style-src '{}'; connect-src 'self'; \
         img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        csp_hash(SCRIPT),
        csp_hash(STYLE),
    ),
});

pub(super) fn csp_hash(source: &str) -> String {
    let digest = Sha256::digest(source.as_bytes());
    format!(
        "sha256-{}",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

pub async fn page() -> impl IntoResponse {
    (
        [
            (
                header::CONTENT_SECURITY_POLICY,
                PAGE.content_security_policy.as_str(),
            ),
            // The page is tiny and changes with the binary: never serve a stale one.
            (header::CACHE_CONTROL, "no-store"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        Html(PAGE.html.as_str()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_inlines_its_assets_whole() {
        assert!(
            !PAGE.html.contains("{{"),
            "a placeholder was left in the page"
        );
        assert!(PAGE.html.contains(SCRIPT) && PAGE.html.contains(STYLE));
        // The hashes in the policy must be of exactly what sits between the tags.
        assert!(PAGE.html.contains(&format!("<script>{SCRIPT}</script>")));
        assert!(PAGE.html.contains(&format!("<style>{STYLE}</style>")));
        assert!(PAGE.content_security_policy.contains(&csp_hash(SCRIPT)));
    }
}
