//! The player's identity-provider token, sent as `Authorization: Bearer` to a control
//! plane running with `--player-auth jwt`.

use std::sync::{Arc, PoisonError, RwLock};

use reqwest::header::HeaderValue;

use crate::error::MatchmakingError;

type Provider = Arc<dyn Fn() -> Option<String> + Send + Sync>;

#[derive(Clone, Default)]
enum Source {
    #[default]
    Anonymous,
    Fixed(String),
    Provider(Provider),
}

/// Where the token comes from. Clones of a client share the cell, so a token swapped on
/// one (after a refresh) is what every clone sends next.
#[derive(Clone, Default)]
pub(crate) struct PlayerToken {
    source: Arc<RwLock<Source>>,
}

impl std::fmt::Debug for PlayerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token is a credential: a debug dump of the client must not leak it.
        let shown = match &*self.read() {
            Source::Anonymous => "none",
            Source::Fixed(_) => "<redacted>",
            Source::Provider(_) => "<provider>",
        };
        f.write_str(shown)
    }
}

impl PlayerToken {
    pub(crate) fn fixed(token: String) -> Self {
        Self::from_source(Source::Fixed(token))
    }

    pub(crate) fn provider(provider: Provider) -> Self {
        Self::from_source(Source::Provider(provider))
    }

    fn from_source(source: Source) -> Self {
        Self {
            source: Arc::new(RwLock::new(source)),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Source> {
        // The lock only ever holds a plain value, so a panic elsewhere cannot leave it
        // half-written: a poisoned lock is still sound to use.
        self.source.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn set(&self, token: Option<String>) {
        let source = token.map_or(Source::Anonymous, Source::Fixed);
        *self.source.write().unwrap_or_else(PoisonError::into_inner) = source;
    }

    fn current(&self) -> Option<String> {
        // Clone out of the lock so a slow provider never holds it.
        let source = self.read().clone();
        match source {
            Source::Anonymous => None,
            Source::Fixed(token) => Some(token),
            Source::Provider(provider) => provider(),
        }
    }

    /// The `Authorization` header value for the next request, if there is a token.
    pub(crate) fn authorization(&self) -> Result<Option<HeaderValue>, MatchmakingError> {
        let Some(token) = self.current() else {
            return Ok(None);
        };
        let mut value =
            HeaderValue::try_from(format!("Bearer {}", token.trim())).map_err(|_| {
                MatchmakingError::Unauthenticated {
                    message: "the player token is not a valid HTTP header value".to_owned(),
                }
            })?;
        // Keeps the value out of HTTP/2 header compression tables and debug output.
        value.set_sensitive(true);
        Ok(Some(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_shared_by_clones_and_never_printed() {
        let token = PlayerToken::fixed("secret.jwt.value".to_owned());
        let clone = token.clone();
        assert!(!format!("{token:?}").contains("secret"));
        clone.set(Some("fresh.jwt.value".to_owned()));
        let header = token.authorization().unwrap().unwrap();
        assert_eq!(header.to_str().unwrap(), "Bearer fresh.jwt.value");
        assert!(!format!("{header:?}").contains("fresh"));
        clone.set(None);
        assert_eq!(token.authorization().unwrap(), None);
        assert!(matches!(
            PlayerToken::fixed("bad\ntoken".to_owned()).authorization(),
            Err(MatchmakingError::Unauthenticated { .. })
        ));
    }

    #[test]
    fn a_provider_is_asked_for_every_request() {
        let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let counted = Arc::clone(&calls);
        let token = PlayerToken::provider(Arc::new(move || {
            let n = counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Some(format!("token-{n}"))
        }));
        assert_eq!(format!("{token:?}"), "<provider>");
        for expected in ["Bearer token-0", "Bearer token-1"] {
            let header = token.authorization().unwrap().unwrap();
            assert_eq!(header.to_str().unwrap(), expected);
        }
    }
}
