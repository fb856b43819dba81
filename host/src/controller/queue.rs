//! The reconciler's work queue, in the manner of client-go's workqueue: one entry per
//! machine key, never two workers on one key (a key marked while it is processed is
//! processed once more afterwards), and per-key exponential backoff with jitter for
//! failures, behind a global rate limit. No timers live here: the owner asks for the
//! keys that are due and for when the next one will be, and runs one timer for all.
//!
//! Pure data and arithmetic, so it is tested without a runtime.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

pub const BACKOFF_FIRST: Duration = Duration::from_secs(1);
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// Retries across all machines: at most this many a second, after a burst of
/// [`RETRY_BURST`]. Keeps a runtime that fails every call from being hammered by a
/// thousand machines retrying in step.
const RETRY_RATE: f64 = 10.0;
const RETRY_BURST: f64 = 100.0;
/// A delay is shortened by up to this fraction at random, so machines that failed
/// together do not retry together.
const JITTER: f64 = 0.2;

#[derive(Debug, Default)]
struct Work {
    processing: bool,
    dirty: bool,
}

/// Why a machine's last settle failed, and what happens next.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Failure {
    pub error: String,
    pub attempts: u32,
    /// Parked: retrying cannot help (a bad name, an unknown engine); the machine waits
    /// for its next event or resync.
    pub parked: bool,
    #[serde(skip)]
    pub next_try: Option<Instant>,
}

/// A settle's outcome, as the queue needs it.
pub enum Outcome {
    Done,
    Failed { error: String, permanent: bool },
}

#[derive(Debug)]
pub struct Queue {
    work: HashMap<String, Work>,
    failures: HashMap<String, Failure>,
    tokens: f64,
    refilled: Instant,
}

impl Queue {
    pub fn new(now: Instant) -> Queue {
        Queue { work: HashMap::new(), failures: HashMap::new(), tokens: RETRY_BURST, refilled: now }
    }

    /// Marks `key` for processing. Returns true when the caller must start a worker for
    /// it; false when one is already at work (it will go round once more).
    pub fn add(&mut self, key: &str) -> bool {
        // Whatever retry was pending is superseded by this processing.
        if let Some(failure) = self.failures.get_mut(key) {
            failure.next_try = None;
        }
        let work = self.work.entry(key.to_string()).or_default();
        if work.processing {
            work.dirty = true;
            return false;
        }
        work.processing = true;
        work.dirty = false;
        true
    }

    /// A worker finished one pass over `key`. Returns true when it must make another
    /// (the key was marked meanwhile); false when the key is released.
    pub fn done(&mut self, key: &str, outcome: Outcome, now: Instant) -> bool {
        match outcome {
            Outcome::Done => {
                self.failures.remove(key);
            }
            Outcome::Failed { error, permanent } => {
                let failure = self.failures.entry(key.to_string()).or_insert_with(|| Failure {
                    error: String::new(),
                    attempts: 0,
                    parked: false,
                    next_try: None,
                });
                failure.attempts = failure.attempts.saturating_add(1);
                failure.error = error;
                failure.parked = permanent;
                failure.next_try = (!permanent).then(|| now + backoff(failure.attempts, jitter(key, failure.attempts)));
            }
        }
        let again = self.work.get(key).is_some_and(|w| w.dirty);
        if again {
            if let Some(work) = self.work.get_mut(key) {
                work.dirty = false;
            }
        } else {
            self.work.remove(key);
        }
        again
    }

    /// Keys whose retry is due at `now`, as many as the rate limit allows; each is
    /// handed out once.
    pub fn due(&mut self, now: Instant) -> Vec<String> {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * RETRY_RATE).min(RETRY_BURST);
        self.refilled = now;
        let mut due: Vec<(Instant, String)> =
            self.failures.iter().filter_map(|(key, f)| f.next_try.filter(|t| *t <= now).map(|t| (t, key.clone()))).collect();
        due.sort();
        let allowed = self.tokens.floor().max(0.0) as usize;
        due.truncate(allowed);
        self.tokens -= due.len() as f64;
        for (_, key) in &due {
            if let Some(f) = self.failures.get_mut(key) {
                f.next_try = None;
            }
        }
        due.into_iter().map(|(_, key)| key).collect()
    }

    /// When [`Queue::due`] will next have something: the earliest retry, or the moment
    /// the rate limit lets the next one through.
    pub fn next_due(&self) -> Option<Instant> {
        let earliest = self.failures.values().filter_map(|f| f.next_try).min()?;
        if self.tokens >= 1.0 {
            return Some(earliest);
        }
        let wait = Duration::from_secs_f64((1.0 - self.tokens) / RETRY_RATE);
        Some(earliest.max(self.refilled + wait))
    }

    pub fn pending(&self) -> usize {
        self.work.len()
    }

    pub fn failures(&self) -> &HashMap<String, Failure> {
        &self.failures
    }
}

/// `BACKOFF_FIRST` doubled per attempt up to `BACKOFF_MAX`, less `jitter` (0..1) of
/// [`JITTER`].
pub fn backoff(attempts: u32, jitter: f64) -> Duration {
    let doublings = attempts.saturating_sub(1).min(16);
    let base = BACKOFF_FIRST.saturating_mul(1u32 << doublings).min(BACKOFF_MAX);
    base.mul_f64(1.0 - JITTER * jitter.clamp(0.0, 1.0))
}

/// A number in 0..1, different per key and attempt and per process: enough to spread
/// retries, no cryptography needed.
fn jitter(key: &str, attempts: u32) -> f64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write(key.as_bytes());
    hasher.write_u32(attempts);
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(permanent: bool) -> Outcome {
        Outcome::Failed { error: "boom".to_string(), permanent }
    }

    #[test]
    fn a_key_has_one_worker_and_one_more_pass_however_often_it_is_marked() {
        let now = Instant::now();
        let mut q = Queue::new(now);
        assert!(q.add("m"));
        for _ in 0..10 {
            assert!(!q.add("m"));
        }
        assert!(q.done("m", Outcome::Done, now), "marked meanwhile: one more pass");
        assert!(!q.done("m", Outcome::Done, now), "then released");
        assert_eq!(q.pending(), 0);
        assert!(q.add("m"), "a released key gets a new worker");
    }

    #[test]
    fn backoff_doubles_from_one_second_to_a_minute_with_downward_jitter() {
        assert_eq!(backoff(1, 0.0), Duration::from_secs(1));
        assert_eq!(backoff(2, 0.0), Duration::from_secs(2));
        assert_eq!(backoff(6, 0.0), Duration::from_secs(32));
        assert_eq!(backoff(7, 0.0), Duration::from_secs(60));
        assert_eq!(backoff(u32::MAX, 0.0), Duration::from_secs(60));
        assert_eq!(backoff(7, 1.0), Duration::from_secs(48));
        for attempt in 1..20 {
            let d = backoff(attempt, jitter("m", attempt));
            assert!(d <= BACKOFF_MAX && d >= BACKOFF_FIRST.mul_f64(1.0 - JITTER), "{d:?}");
        }
    }

    #[test]
    fn failures_retry_once_when_due_and_success_forgets_them() {
        let now = Instant::now();
        let mut q = Queue::new(now);
        q.add("m");
        assert!(!q.done("m", failed(false), now));
        let failure = q.failures()["m"].clone();
        assert_eq!((failure.attempts, failure.parked), (1, false));
        let at = failure.next_try.expect("a retry is scheduled");
        assert!(at > now && at <= now + BACKOFF_FIRST);
        assert!(q.due(now).is_empty(), "not before its time");
        assert_eq!(q.next_due(), Some(at));
        assert_eq!(q.due(at), vec!["m".to_string()]);
        assert!(q.due(at).is_empty(), "handed out once");
        q.add("m");
        q.done("m", failed(false), at);
        assert_eq!(q.failures()["m"].attempts, 2);
        q.add("m");
        q.done("m", Outcome::Done, at);
        assert!(q.failures().is_empty() && q.next_due().is_none());
    }

    #[test]
    fn a_permanent_error_parks_until_the_key_is_marked_again() {
        let now = Instant::now();
        let mut q = Queue::new(now);
        q.add("m");
        q.done("m", failed(true), now);
        assert!(q.failures()["m"].parked);
        assert_eq!(q.next_due(), None);
        assert!(q.due(now + Duration::from_secs(3600)).is_empty());
        assert!(q.add("m"), "an event processes it again");
    }

    #[test]
    fn an_event_during_backoff_supersedes_the_pending_retry() {
        let now = Instant::now();
        let mut q = Queue::new(now);
        q.add("m");
        q.done("m", failed(false), now);
        assert!(q.add("m"));
        assert_eq!(q.next_due(), None, "one pending retry at most, and none while processing");
    }

    #[test]
    fn retries_are_rate_limited_across_keys() {
        let now = Instant::now();
        let mut q = Queue::new(now);
        for i in 0..300 {
            let key = format!("m{i}");
            q.add(&key);
            q.done(&key, failed(false), now);
        }
        let later = now + Duration::from_secs(2);
        assert_eq!(q.due(later).len(), 100, "the burst");
        assert!(q.due(later).is_empty());
        let next = q.next_due().expect("more to come");
        assert!(next > later && next <= later + Duration::from_millis(100), "{:?}", next - later);
        assert_eq!(q.due(later + Duration::from_secs(1)).len(), 10, "then the rate");
    }
}
