//! `GET /play`: a page to play hero-defense in the browser, compiled into the
//! binary with the TypeScript SDK it is built on (`GET /play/sdk.js`). Every
//! URL the page uses is relative to where it was served, so it works behind a
//! path prefix (`/match/play` through nginx) as well as at the root.

use std::sync::LazyLock;

use axum::http::header;
use axum::response::{Html, IntoResponse};

use super::dashboard::csp_hash;

const TEMPLATE: &str = include_str!("../../assets/play/index.html");
const STYLE: &str = include_str!("../../assets/play/play.css");
const SCRIPT: &str = include_str!("../../assets/play/play.js");
/// The SDK's committed build (`npm run build` in sdk/typescript keeps it current).
const SDK: &str = include_str!("../../../../sdk/typescript/dist/index.js");

struct Page {
    html: String,
    content_security_policy: String,
}

static PAGE: LazyLock<Page> = LazyLock::new(|| Page {
    html: TEMPLATE
        .replacen("{{style}}", STYLE, 1)
        .replacen("{{script}}", SCRIPT, 1),
    // Scripts: the page's own inline module (by hash) and the SDK it imports from
    // this origin. Connections: the API on this origin, and game servers over
    // `ws:`/`wss:` on any host and port, because an assignment's `connectUrl`
    // names a game server the control plane only learns about at run time.
    content_security_policy: format!(
        "default-src 'none'; script-src 'self' '{}'; style-src '{}'; \
         connect-src 'self' ws: wss:; img-src data:; base-uri 'none'; \
         form-action 'none'; frame-ancestors 'none'",
        csp_hash(SCRIPT),
        csp_hash(STYLE),
    ),
});

/// Headers shared by the page and the SDK: both change with the binary.
const NO_STORE: (header::HeaderName, &str) = (header::CACHE_CONTROL, "no-store");
const NO_SNIFF: (header::HeaderName, &str) = (header::X_CONTENT_TYPE_OPTIONS, "nosniff");

pub async fn page() -> impl IntoResponse {
    (
        [
            (
                header::CONTENT_SECURITY_POLICY,
                PAGE.content_security_policy.as_str(),
            ),
            NO_STORE,
            NO_SNIFF,
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        Html(PAGE.html.as_str()),
    )
}

pub async fn sdk() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            NO_STORE,
            NO_SNIFF,
        ],
        SDK,
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
        // The hashes in the policy must be of exactly what sits between the tags.
        assert!(
            PAGE.html
                .contains(&format!("<script type=\"module\">{SCRIPT}</script>"))
        );
        assert!(PAGE.html.contains(&format!("<style>{STYLE}</style>")));
        assert!(PAGE.content_security_policy.contains(&csp_hash(SCRIPT)));
        assert!(PAGE.content_security_policy.contains(&csp_hash(STYLE)));
    }

    #[test]
    fn the_page_imports_the_sdk_relative_to_itself() {
        // `./play/sdk.js` from `/prefix/play` is `/prefix/play/sdk.js`: prefix-proof.
        assert!(SCRIPT.contains("from \"./play/sdk.js\""));
        assert!(SDK.contains("export class MatchmakingClient"));
    }
}
