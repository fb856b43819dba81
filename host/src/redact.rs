//! Secrets the plugin holds or has handed out (its own dr-provision token, every machine
//! token it fetched), masked in everything it emits: stderr, the lines and events it
//! sends dr-provision, and every reply on its socket. One process-wide set, because the
//! places that emit (the logger above all) are set up before anything else exists, and
//! a token learned anywhere must be masked everywhere.

use std::collections::BTreeSet;
use std::sync::{Arc, LazyLock, RwLock};

use aho_corasick::AhoCorasick;

/// What a masked secret reads as.
pub const MASK: &str = "[redacted]";
/// Shorter strings are not masked: they would mask ordinary words.
const MIN_SECRET_LEN: usize = 8;

#[derive(Default)]
pub struct Redactor {
    state: RwLock<State>,
}

#[derive(Default)]
struct State {
    secrets: BTreeSet<String>,
    /// Rebuilt at the first redaction after the set grew: a burst of token fetches
    /// costs one build, not one per token, and a line is scanned once for all of them.
    matcher: Option<Arc<AhoCorasick>>,
}

static SECRETS: LazyLock<Redactor> = LazyLock::new(Redactor::default);

/// The process's secrets.
pub fn secrets() -> &'static Redactor {
    &SECRETS
}

impl Redactor {
    pub fn add(&self, secret: &str) {
        if secret.len() < MIN_SECRET_LEN {
            return;
        }
        if self.state.read().unwrap_or_else(|p| p.into_inner()).secrets.contains(secret) {
            return;
        }
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        if state.secrets.insert(secret.to_string()) {
            state.matcher = None;
        }
    }

    /// `text` with every known secret masked.
    pub fn redact(&self, text: &str) -> String {
        match self.matcher() {
            Ok(Some(matcher)) if matcher.is_match(text) => matcher.replace_all(text, &vec![MASK; matcher.patterns_len()]),
            Ok(_) => text.to_string(),
            // Only a pattern set beyond the library's size limits gets here; masking
            // nothing would leak, so mask one secret at a time.
            Err(secrets) => secrets.iter().fold(text.to_string(), |text, secret| text.replace(secret.as_str(), MASK)),
        }
    }

    fn matcher(&self) -> Result<Option<Arc<AhoCorasick>>, BTreeSet<String>> {
        if let Some(matcher) = &self.state.read().unwrap_or_else(|p| p.into_inner()).matcher {
            return Ok(Some(Arc::clone(matcher)));
        }
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        if state.secrets.is_empty() {
            return Ok(None);
        }
        if state.matcher.is_none() {
            // Leftmost-longest: a token that contains another is masked whole.
            let built = AhoCorasick::builder().match_kind(aho_corasick::MatchKind::LeftmostLongest).build(&state.secrets);
            state.matcher = Some(Arc::new(built.map_err(|_| state.secrets.clone())?));
        }
        Ok(state.matcher.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_secrets_are_masked_short_strings_are_not() {
        let r = Redactor::default();
        assert_eq!(r.redact("nothing known yet"), "nothing known yet");
        r.add("machine-token-1234");
        r.add("short");
        assert_eq!(r.redact("token machine-token-1234 and short"), "token [redacted] and short");
        r.add("machine-token-1234-longer");
        assert_eq!(r.redact("a machine-token-1234-longer b machine-token-1234"), "a [redacted] b [redacted]");
    }
}
