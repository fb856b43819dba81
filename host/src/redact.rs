//! Secrets the plugin holds or has handed out (its own dr-provision token, every machine
//! token it fetched), masked in what it shows operators: agent logs above all, where an
//! agent may well print its own `RS_TOKEN`.

use std::collections::BTreeSet;
use std::sync::RwLock;

/// What a masked secret reads as.
pub const MASK: &str = "[redacted]";
/// Shorter strings are not masked: they would mask ordinary words.
const MIN_SECRET_LEN: usize = 8;

#[derive(Default)]
pub struct Redactor {
    secrets: RwLock<BTreeSet<String>>,
}

impl Redactor {
    pub fn add(&self, secret: &str) {
        if secret.len() >= MIN_SECRET_LEN {
            self.secrets.write().unwrap_or_else(|p| p.into_inner()).insert(secret.to_string());
        }
    }

    /// `text` with every known secret masked.
    pub fn redact(&self, text: &str) -> String {
        let secrets = self.secrets.read().unwrap_or_else(|p| p.into_inner());
        secrets
            .iter()
            .fold(text.to_string(), |text, secret| if text.contains(secret.as_str()) { text.replace(secret.as_str(), MASK) } else { text })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_secrets_are_masked_short_strings_are_not() {
        let r = Redactor::default();
        r.add("machine-token-1234");
        r.add("short");
        assert_eq!(r.redact("token machine-token-1234 and short"), "token [redacted] and short");
    }
}
