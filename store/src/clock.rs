//! The store's clock: the wall clock plus an offset that only tests move
//! (`advance`), so a deadline, an expiry or a schedule is tested by moving
//! time forward rather than by waiting for it. Every timestamp the store
//! writes, and every "now" the control plane decides by (the reaper, the
//! campaign runner, token expiry), reads this one clock.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

#[derive(Debug, Clone, Default)]
pub struct Clock {
    offset_ms: Arc<AtomicI64>,
}

impl Clock {
    pub fn now_ms(&self) -> i64 {
        wall_clock_ms() + self.offset_ms.load(Ordering::Relaxed)
    }

    /// Moves this clock (and every store sharing it) forward.
    #[cfg(any(test, feature = "test-util"))]
    pub fn advance(&self, by: std::time::Duration) {
        let by = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.offset_ms.fetch_add(by, Ordering::Relaxed);
    }
}

/// The system's time, for what must follow real time across appliances
/// (the leader lease) or has no store (the CLI).
pub fn wall_clock_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_clock_moves_for_every_store_sharing_it() {
        let clock = Clock::default();
        let shared = clock.clone();
        let before = shared.now_ms();
        clock.advance(Duration::from_secs(3600));
        let after = shared.now_ms();
        assert!((3_600_000..3_660_000).contains(&(after - before)), "{}", after - before);
    }
}
