//! How many instances of one engine live at once. A call holds a slot for as long as it
//! runs; at most `max` calls run, so at most `max` instances exist: a call creates an
//! instance only when no idle one is left, that is when every other instance is in a
//! call. Calls beyond `max` wait for a slot (the wait is not guest time: it counts
//! against no deadline). Idle instances are kept for the next call, and dropped when
//! the machine runs short of memory.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The right to run one call (and hold one instance) of an engine.
pub type Slot = OwnedSemaphorePermit;

pub struct Pool<T> {
    idle: Mutex<Vec<(u64, T)>>,
    slots: Mutex<Arc<Semaphore>>,
    max: Mutex<usize>,
}

impl<T> Pool<T> {
    pub fn new(max: usize) -> Pool<T> {
        let max = max.max(1);
        Pool { idle: Mutex::new(Vec::new()), slots: Mutex::new(Arc::new(Semaphore::new(max))), max: Mutex::new(max) }
    }

    /// Waits for a free slot.
    pub async fn slot(&self) -> Slot {
        let slots = Arc::clone(&self.slots.lock().unwrap_or_else(|p| p.into_inner()));
        // The semaphore is never closed, so acquiring only waits.
        slots.acquire_owned().await.unwrap_or_else(|_| unreachable!("the pool's semaphore is never closed"))
    }

    /// An idle instance of `generation` (older ones are dropped on the way).
    pub fn take(&self, generation: u64) -> Option<T> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some((made_for, instance)) = idle.pop() {
            if made_for == generation {
                return Some(instance);
            }
        }
        None
    }

    /// Keeps `instance` for the next call, unless memory is short.
    pub fn give_back(&self, generation: u64, instance: T) {
        if memory::short() {
            self.clear();
            return;
        }
        let max = *self.max.lock().unwrap_or_else(|p| p.into_inner());
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < max {
            idle.push((generation, instance));
        }
    }

    pub fn clear(&self) {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// A new bound. Calls already running keep their slots of the old one, so for as
    /// long as they last up to old + new instances can exist.
    pub fn resize(&self, max: usize) {
        let max = max.max(1);
        let mut current = self.max.lock().unwrap_or_else(|p| p.into_inner());
        if *current != max {
            *current = max;
            *self.slots.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(Semaphore::new(max));
        }
    }
}

/// Whether the machine is short of memory, read from `/proc/meminfo` at most once a
/// second (calls are far more frequent than memory changes).
mod memory {
    use super::*;

    /// Short: less available than this share of the total, or than [`FLOOR`].
    const SHARE: u64 = 10;
    const FLOOR: u64 = 256 * 1024 * 1024;
    const EVERY: Duration = Duration::from_secs(1);

    static LAST: Mutex<Option<(Instant, bool)>> = Mutex::new(None);

    pub fn short() -> bool {
        let mut last = LAST.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, short)) = *last
            && at.elapsed() < EVERY
        {
            return short;
        }
        let short = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|text| parse(&text))
            .is_some_and(|(total, available)| available < FLOOR || available.saturating_mul(100) < total.saturating_mul(SHARE));
        *last = Some((Instant::now(), short));
        short
    }

    /// `(MemTotal, MemAvailable)` in bytes.
    pub fn parse(meminfo: &str) -> Option<(u64, u64)> {
        let field = |name: &str| {
            meminfo
                .lines()
                .find_map(|line| line.strip_prefix(name)?.trim().strip_suffix("kB")?.trim().parse::<u64>().ok().map(|kb| kb * 1024))
        };
        Some((field("MemTotal:")?, field("MemAvailable:")?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn calls_beyond_the_bound_wait_for_a_slot() {
        let pool: Pool<u32> = Pool::new(2);
        let a = pool.slot().await;
        let _b = pool.slot().await;
        let third = tokio::time::timeout(Duration::from_millis(50), pool.slot()).await;
        assert!(third.is_err(), "a third call got a slot with two taken");
        drop(a);
        let _c = tokio::time::timeout(Duration::from_secs(1), pool.slot()).await.expect("a slot freed is taken");
    }

    #[test]
    fn idle_instances_of_an_old_generation_are_dropped() {
        let pool: Pool<u32> = Pool::new(4);
        pool.give_back(0, 7);
        pool.give_back(1, 8);
        assert_eq!(pool.take(1), Some(8));
        assert_eq!(pool.take(1), None, "an instance configured with old settings was handed out");
        assert_eq!(pool.take(0), None, "the old instance was kept after being passed over");
    }

    #[test]
    fn meminfo_is_read_in_bytes() {
        let text = "MemTotal:       24000000 kB\nMemFree:  1 kB\nMemAvailable:   12000000 kB\n";
        assert_eq!(memory::parse(text), Some((24_000_000 * 1024, 12_000_000 * 1024)));
        assert_eq!(memory::parse("MemTotal: 1 kB\n"), None);
    }
}
