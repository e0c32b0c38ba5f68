//! The one backoff helper: exponential, doubling, capped.

use std::time::Duration;

/// Default delivery policy without a Resiliency target: 1 s initial, x2,
/// capped at 60 s, 5 retries (DESIGN.md section 5; the seeds' convention).
pub const DEFAULT_INITIAL: Duration = Duration::from_secs(1);
/// Cap of the default policy.
pub const DEFAULT_MAX: Duration = Duration::from_secs(60);
/// Retries of the default policy (6 attempts in all).
pub const DEFAULT_MAX_RETRIES: u32 = 5;

/// An exponential backoff schedule.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    /// Starts at `initial`, doubles each step, never above `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self { next: initial, max }
    }

    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next.min(self.max);
        self.next = (self.next * 2).min(self.max);
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_and_caps() {
        let mut b = Backoff::new(DEFAULT_INITIAL, DEFAULT_MAX);
        let got: Vec<u64> = (0..8).map(|_| b.next_delay().as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 8, 16, 32, 60, 60]);
    }
}
