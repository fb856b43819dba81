//! The monotonic clock (`wasi:clocks/monotonic-clock@0.2.12`). Wall-clock time is not
//! part of the engine world.

use std::time::Duration;

use crate::bindings::wasi::clocks::monotonic_clock;

/// Nanoseconds on the monotonic clock: only differences between two readings mean
/// anything.
pub fn now_nanos() -> u64 {
    monotonic_clock::now()
}

/// The time elapsed since `start`, a reading of [`now_nanos`].
pub fn since(start_nanos: u64) -> Duration {
    Duration::from_nanos(now_nanos().saturating_sub(start_nanos))
}

/// Blocks for `duration` without spinning: the host parks the call on a clock pollable.
/// The host's per-call deadline still applies.
pub fn sleep(duration: Duration) {
    let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
    monotonic_clock::subscribe_duration(nanos).block();
}
