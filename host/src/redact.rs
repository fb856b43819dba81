//! Secrets the plugin holds or has handed out (its own dr-provision token, every machine
//! token it fetched), masked in everything it emits: stderr, the lines and events it
//! sends dr-provision, and every reply on its socket. One process-wide set, because the
//! places that emit (the logger above all) are set up before anything else exists, and
//! a token learned anywhere must be masked everywhere.
//!
//! A new token is fetched at every agent start, so the set only grows, by thousands in
//! a burst. Matching is Rabin-Karp over each distinct token length: adding a token costs
//! a hash, masking a text costs one pass per distinct length, and memory is the tokens
//! themselves (an Aho-Corasick automaton was rebuilt per new token: 44 ms at 1,000
//! tokens, 2.3 s at 16,000).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{LazyLock, RwLock};

/// What a masked secret reads as.
pub const MASK: &str = "[redacted]";
/// Shorter strings are not masked: they would mask ordinary words.
const MIN_SECRET_LEN: usize = 8;
const BASE: u64 = 0x100_0000_01b3;

/// The secrets of one length, by rolling hash.
type SameLength = HashMap<u64, HashSet<Box<[u8]>>>;

#[derive(Default)]
pub struct Redactor {
    by_len: RwLock<BTreeMap<usize, SameLength>>,
}

static SECRETS: LazyLock<Redactor> = LazyLock::new(Redactor::default);

/// The process's secrets.
pub fn secrets() -> &'static Redactor {
    &SECRETS
}

fn hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0u64, |h, b| h.wrapping_mul(BASE).wrapping_add(u64::from(*b)))
}

impl Redactor {
    pub fn add(&self, secret: &str) {
        if secret.len() < MIN_SECRET_LEN {
            return;
        }
        let bytes = secret.as_bytes();
        let mut by_len = self.by_len.write().unwrap_or_else(|p| p.into_inner());
        by_len.entry(bytes.len()).or_default().entry(hash(bytes)).or_default().insert(bytes.into());
    }

    /// `text` with every known secret masked; where two overlap, the one starting first
    /// (then the longer) wins.
    pub fn redact(&self, text: &str) -> String {
        let mut found = self.find(text.as_bytes());
        if found.is_empty() {
            return text.to_string();
        }
        found.sort_by_key(|&(start, end)| (start, std::cmp::Reverse(end)));
        let mut masked = String::with_capacity(text.len());
        let mut done = 0;
        for (start, end) in found {
            if start < done {
                continue;
            }
            // A match of valid UTF-8 starts and ends on character boundaries.
            masked.push_str(&text[done..start]);
            masked.push_str(MASK);
            done = end;
        }
        masked.push_str(&text[done..]);
        masked
    }

    /// Every (start, end) where a secret occurs.
    fn find(&self, text: &[u8]) -> Vec<(usize, usize)> {
        let by_len = self.by_len.read().unwrap_or_else(|p| p.into_inner());
        let mut found = Vec::new();
        for (&len, table) in by_len.iter().filter(|(len, _)| **len <= text.len()) {
            let high = (1..len).fold(1u64, |p, _| p.wrapping_mul(BASE));
            let mut h = hash(&text[..len]);
            for start in 0..=text.len() - len {
                if start > 0 {
                    h = h
                        .wrapping_sub(u64::from(text[start - 1]).wrapping_mul(high))
                        .wrapping_mul(BASE)
                        .wrapping_add(u64::from(text[start + len - 1]));
                }
                if table.get(&h).is_some_and(|same| same.contains(&text[start..start + len])) {
                    found.push((start, start + len));
                }
            }
        }
        found
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
        assert_eq!(r.redact("RS_TOKEN=machine-token-1234\n"), "RS_TOKEN=[redacted]\n");
        r.add("machine-token-1234-longer");
        assert_eq!(r.redact("a machine-token-1234-longer b machine-token-1234"), "a [redacted] b [redacted]");
        assert_eq!(r.redact("ünïcode machine-token-1234ü"), "ünïcode [redacted]ü");
        assert_eq!(r.redact("machine-token-123"), "machine-token-123");
    }

    #[test]
    fn one_token_among_thousands_of_similar_ones_is_found() {
        let r = Redactor::default();
        for n in 0..20_000 {
            r.add(&format!("eyJhbGciOi.machine-{n:05}.signature-{:x}", n * 7919));
        }
        let text = format!("agent log line with eyJhbGciOi.machine-12345.signature-{:x} inside", 12345 * 7919);
        assert_eq!(r.redact(&text), "agent log line with [redacted] inside");
        assert_eq!(r.redact("eyJhbGciOi.machine-99999.signature-0"), "eyJhbGciOi.machine-99999.signature-0");
    }
}
