//! URL building: the SDK accepts base URLs with a path prefix (an LB's `/match`), so it
//! appends paths and query parameters by hand instead of resolving relative URLs, which
//! would drop the prefix.

use matchplane_contracts::matchmaking::Assignment;

use crate::error::LandError;

/// Percent-encodes everything but RFC 3986 unreserved characters, so any player id or
/// token is safe as a query value or path segment.
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0x0f)]));
        }
    }
    out
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// `http(s)://` → `ws(s)://`; URLs already in a WebSocket scheme are kept.
pub(crate) fn to_ws_scheme(url: &str) -> String {
    if let Some(rest) = url.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = url.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        url.to_owned()
    }
}

pub(crate) fn with_query(url: &str, key: &str, value: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}{key}={}", percent_encode(value))
}

/// The URL a player connects to for an assignment: `connectUrl` plus the player's own
/// token (`memberTokens[player]`, else the ticket's `matchToken`).
pub fn assignment_url(assignment: &Assignment, player_id: &str) -> Result<String, LandError> {
    let token = assignment
        .member_tokens
        .get(player_id)
        .unwrap_or(&assignment.match_token);
    if token.is_empty() {
        return Err(LandError::NoToken {
            player_id: player_id.to_owned(),
        });
    }
    Ok(with_query(&assignment.connect_url, "token", token))
}

/// A development URL for a game server started with `--auth none`: the server trusts
/// `playerId`; without `land_id` it creates a fresh land.
pub fn dev_land_url(
    game_server_url: &str,
    land_type: &str,
    land_id: Option<&str>,
    player_id: &str,
) -> String {
    let base = to_ws_scheme(game_server_url.trim_end_matches('/'));
    let mut url = with_query(
        &format!("{base}/game/{}", percent_encode(land_type)),
        "playerId",
        player_id,
    );
    if let Some(land_id) = land_id {
        url = with_query(&url, "landId", land_id);
    }
    url
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn assignment(member_tokens: BTreeMap<String, String>) -> Assignment {
        Assignment {
            assignment_id: "a1".into(),
            match_token: "first.token".into(),
            connect_url: "ws://127.0.0.1:9/game/hero-defense?landId=hero-defense:x".into(),
            land_id: "hero-defense:x".into(),
            server_id: "g".into(),
            expires_at: "2030-01-01T00:00:00Z".into(),
            member_tokens,
            match_id: None,
            team: None,
        }
    }

    #[test]
    fn assignment_url_prefers_the_players_own_token() {
        let plain = assignment(BTreeMap::new());
        assert_eq!(
            assignment_url(&plain, "ann").unwrap(),
            "ws://127.0.0.1:9/game/hero-defense?landId=hero-defense:x&token=first.token"
        );
        let party = assignment(BTreeMap::from([("bob".to_owned(), "bob.t+k".to_owned())]));
        assert!(
            assignment_url(&party, "bob")
                .unwrap()
                .ends_with("&token=bob.t%2Bk")
        );
    }

    #[test]
    fn urls_keep_prefixes_and_encode_values() {
        assert_eq!(to_ws_scheme("https://lb/match"), "wss://lb/match");
        assert_eq!(
            dev_land_url(
                "http://127.0.0.1:8080/",
                "counter",
                Some("room 1"),
                "ann&co"
            ),
            "ws://127.0.0.1:8080/game/counter?playerId=ann%26co&landId=room%201"
        );
        assert_eq!(percent_encode("a-b_c.d~é"), "a-b_c.d~%C3%A9");
    }
}
