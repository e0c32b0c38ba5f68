//! Circuit breakers (Resiliency `circuitBreakers`, reference 7), with the
//! state machine Dapr takes from gobreaker:
//! - **closed**: calls pass and are counted; counts reset every `interval`
//!   (0: never). After a failure the `trip` expression is evaluated over
//!   `requests`, `totalSuccesses`, `totalFailures`, `consecutiveSuccesses`
//!   and `consecutiveFailures`; true opens the breaker.
//! - **open**: calls fail at once, without reaching the app, for `timeout`.
//! - **half-open**: up to `maxRequests` calls pass; that many successes in a
//!   row close it, one failure opens it again.
//!
//! One breaker per Resiliency target, shared by every subscription that
//! uses the target. An open breaker counts as a failed attempt, so the
//! retry policy spaces the attempts and, when it gives up, the message is
//! dead-lettered as after any failure.

use std::sync::Mutex;
use std::time::Duration;

use cel::{Context, Program, Value as Cel};
use tokio::time::Instant;

use crate::config::resiliency::CircuitBreaker;

#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    requests: u32,
    total_successes: u32,
    total_failures: u32,
    consecutive_successes: u32,
    consecutive_failures: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Closed,
    Open { until: Instant },
    HalfOpen,
}

struct State {
    phase: Phase,
    counts: Counts,
    /// When closed counts reset next (`interval` > 0).
    window_end: Option<Instant>,
}

/// A running breaker.
pub struct Breaker {
    name: String,
    max_requests: u32,
    interval: Duration,
    timeout: Duration,
    trip: Program,
    state: Mutex<State>,
}

/// Whether a call may go ahead.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    /// Go ahead; report the result with `record`.
    Yes,
    /// The breaker is open (or half-open and full): fail without calling.
    No,
}

impl Breaker {
    /// A closed breaker; `None` when the trip expression does not compile
    /// (config validation reports that before start-up).
    pub fn new(name: &str, cfg: &CircuitBreaker) -> Option<Self> {
        let trip = crate::expr::compile(&cfg.trip).ok()?;
        Some(Self {
            name: name.to_owned(),
            max_requests: cfg.max_requests.max(1),
            interval: cfg.interval,
            timeout: cfg.timeout,
            trip,
            state: Mutex::new(State {
                phase: Phase::Closed,
                counts: Counts::default(),
                window_end: None,
            }),
        })
    }

    /// Asks to make a call.
    pub fn admit(&self) -> Admit {
        let now = Instant::now();
        let mut s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match s.phase {
            Phase::Closed => {
                if !self.interval.is_zero() {
                    match s.window_end {
                        Some(end) if now < end => {}
                        _ => {
                            s.counts = Counts::default();
                            s.window_end = Some(now + self.interval);
                        }
                    }
                }
            }
            Phase::Open { until } if now < until => return Admit::No,
            Phase::Open { .. } => {
                tracing::info!(breaker = %self.name, "circuit breaker half-open");
                s.phase = Phase::HalfOpen;
                s.counts = Counts::default();
            }
            Phase::HalfOpen if s.counts.requests >= self.max_requests => return Admit::No,
            Phase::HalfOpen => {}
        }
        s.counts.requests += 1;
        Admit::Yes
    }

    /// Reports the result of an admitted call.
    pub fn record(&self, success: bool) {
        let mut s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let c = &mut s.counts;
        if success {
            c.total_successes += 1;
            c.consecutive_successes += 1;
            c.consecutive_failures = 0;
        } else {
            c.total_failures += 1;
            c.consecutive_failures += 1;
            c.consecutive_successes = 0;
        }
        let counts = *c;
        match s.phase {
            Phase::HalfOpen if success && counts.consecutive_successes >= self.max_requests => {
                tracing::info!(breaker = %self.name, "circuit breaker closed");
                s.phase = Phase::Closed;
                s.counts = Counts::default();
                s.window_end = None;
            }
            Phase::HalfOpen if !success => self.open(&mut s),
            Phase::Closed if !success && self.trips(&counts) => self.open(&mut s),
            _ => {}
        }
    }

    fn open(&self, s: &mut State) {
        tracing::warn!(breaker = %self.name, timeout = ?self.timeout, "circuit breaker open");
        s.phase = Phase::Open {
            until: Instant::now() + self.timeout,
        };
        s.counts = Counts::default();
    }

    fn trips(&self, c: &Counts) -> bool {
        let mut ctx = Context::default();
        for (name, v) in [
            ("requests", c.requests),
            ("totalSuccesses", c.total_successes),
            ("totalFailures", c.total_failures),
            ("consecutiveSuccesses", c.consecutive_successes),
            ("consecutiveFailures", c.consecutive_failures),
        ] {
            ctx.add_variable_from_value(name, Cel::UInt(v.into()));
        }
        match self.trip.execute(&ctx) {
            Ok(Cel::Bool(b)) => b,
            other => {
                tracing::error!(breaker = %self.name, result = ?other, "trip expression did not return a boolean; not tripping");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(trip: &str, max_requests: u32, interval: u64) -> Breaker {
        Breaker::new(
            "cb",
            &CircuitBreaker {
                max_requests,
                interval: Duration::from_secs(interval),
                timeout: Duration::from_secs(10),
                trip: trip.into(),
            },
        )
        .unwrap()
    }

    fn fail(b: &Breaker, n: u32) {
        for _ in 0..n {
            assert_eq!(b.admit(), Admit::Yes);
            b.record(false);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn trips_after_consecutive_failures_then_half_opens_after_timeout() {
        let b = breaker("consecutiveFailures > 2", 1, 0);
        fail(&b, 3);
        assert_eq!(b.admit(), Admit::No, "open after the third failure");
        tokio::time::advance(Duration::from_secs(9)).await;
        assert_eq!(b.admit(), Admit::No, "still open before the timeout");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(b.admit(), Admit::Yes, "half-open lets one call through");
        assert_eq!(b.admit(), Admit::No, "maxRequests 1: the second waits");
        b.record(true);
        assert_eq!(b.admit(), Admit::Yes, "closed after a success");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_while_half_open_opens_again() {
        let b = breaker("consecutiveFailures >= 1", 2, 0);
        fail(&b, 1);
        tokio::time::advance(Duration::from_secs(10)).await;
        fail(&b, 1);
        assert_eq!(b.admit(), Admit::No);
    }

    #[tokio::test(start_paused = true)]
    async fn successes_reset_consecutive_failures_and_interval_resets_totals() {
        let b = breaker("totalFailures > 2", 1, 5);
        fail(&b, 2);
        assert_eq!(b.admit(), Admit::Yes);
        b.record(true);
        tokio::time::advance(Duration::from_secs(6)).await;
        fail(&b, 2);
        assert_eq!(b.admit(), Admit::Yes, "the interval cleared the totals");
        b.record(false);
        assert_eq!(b.admit(), Admit::No, "three failures in this window");
    }

    #[test]
    fn bad_trip_expression_builds_no_breaker() {
        assert!(Breaker::new(
            "cb",
            &CircuitBreaker {
                max_requests: 1,
                interval: Duration::ZERO,
                timeout: Duration::ZERO,
                trip: "consecutiveFailures >".into(),
            }
        )
        .is_none());
    }
}
