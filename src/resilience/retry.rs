//! The one retry mechanism: a policy (the default, or a `Resiliency` retry
//! policy) and the loop that applies it. The sidecar is the only retry owner;
//! stopping is never treated as exhaustion.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;

use crate::config::resiliency::{self, RetryKind};

/// Default delivery policy without a Resiliency target: 1 s initial, x2,
/// capped at 60 s, 5 retries (DESIGN.md section 5; the seeds' convention).
pub const DEFAULT_INITIAL: Duration = Duration::from_secs(1);
/// Cap of the default policy.
pub const DEFAULT_MAX: Duration = Duration::from_secs(60);
/// Retries of the default policy (6 attempts in all).
pub const DEFAULT_MAX_RETRIES: u32 = 5;
/// First interval of a Resiliency `exponential` policy (Dapr's, from
/// cenkalti/backoff: 500 ms, x1.5, +/-50% jitter).
pub const EXPONENTIAL_INITIAL: Duration = Duration::from_millis(500);

/// An exponential backoff schedule without jitter.
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

/// How a failing delivery is retried.
#[derive(Debug, Clone, PartialEq)]
pub enum Spacing {
    /// Doubling from `initial` up to `max` (the default policy).
    Doubling { initial: Duration, max: Duration },
    /// The same interval every time (Resiliency `constant`).
    Constant(Duration),
    /// Dapr's exponential: x1.5 with +/-50% jitter, capped (Resiliency `exponential`).
    Jittered { max: Duration },
}

/// A retry policy.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Interval shape.
    pub spacing: Spacing,
    /// Retries after the first attempt; `None` is forever.
    pub max_retries: Option<u32>,
    /// HTTP statuses worth retrying; empty retries every failure.
    pub retry_statuses: Vec<(u16, u16)>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            spacing: Spacing::Doubling {
                initial: DEFAULT_INITIAL,
                max: DEFAULT_MAX,
            },
            max_retries: Some(DEFAULT_MAX_RETRIES),
            retry_statuses: vec![],
        }
    }
}

impl From<&resiliency::RetryPolicy> for RetryPolicy {
    fn from(p: &resiliency::RetryPolicy) -> Self {
        Self {
            spacing: match p.kind {
                RetryKind::Constant => Spacing::Constant(p.duration),
                RetryKind::Exponential => Spacing::Jittered {
                    max: p.max_interval,
                },
            },
            max_retries: p.max_retries,
            retry_statuses: p.http_status_codes.clone(),
        }
    }
}

impl RetryPolicy {
    /// Does `status` (`None`: transport error) qualify for a retry?
    pub fn retries_status(&self, status: Option<u16>) -> bool {
        match status {
            Some(s) if !self.retry_statuses.is_empty() => self
                .retry_statuses
                .iter()
                .any(|(lo, hi)| (*lo..=*hi).contains(&s)),
            _ => true,
        }
    }

    /// The waits between attempts, one per call.
    pub fn delays(&self) -> impl FnMut() -> Duration + '_ {
        let mut doubling = match self.spacing {
            Spacing::Doubling { initial, max } => Backoff::new(initial, max),
            _ => Backoff::new(Duration::ZERO, Duration::ZERO),
        };
        let mut current = EXPONENTIAL_INITIAL;
        move || match &self.spacing {
            Spacing::Doubling { .. } => doubling.next_delay(),
            Spacing::Constant(d) => *d,
            Spacing::Jittered { max } => {
                let jitter = 0.5 + (uuid::Uuid::new_v4().as_u128() % 1000) as f64 / 1000.0;
                let d = current.mul_f64(jitter).min(*max);
                current = current.mul_f64(1.5).min(*max);
                d
            }
        }
    }
}

/// What one attempt reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt<T> {
    /// Finished, successfully or not; stop retrying.
    Done(T),
    /// Failed; retry if the policy allows (the status decides with `matching`).
    Failed {
        /// The app's HTTP status, `None` for a transport error.
        status: Option<u16>,
        /// Why, for logs.
        reason: String,
    },
}

/// How the retry loop ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetryEnd<T> {
    /// An attempt finished.
    Done(T),
    /// Retries are used up, or the failure is not one the policy retries.
    Exhausted(String),
    /// Shutdown came first: leave the message unacknowledged.
    Stopped,
    /// The message is no longer ours (its Kafka partition was revoked, its
    /// RabbitMQ channel died): its next owner delivers it. Never "retries
    /// exhausted", never dead-lettered by this sidecar.
    Revoked,
}

/// How often ownership is looked at during a backoff.
const OWNERSHIP_POLL: Duration = Duration::from_millis(200);

/// Runs `attempt` until it is done, the policy gives up, `stop` fires, or
/// `owned` turns false (looked at before every attempt and, during a
/// backoff, every 200 ms).
pub async fn run<T, F, Fut>(
    policy: &RetryPolicy,
    stop: &mut watch::Receiver<bool>,
    owned: &(dyn Fn() -> bool + Sync),
    mut attempt: F,
) -> RetryEnd<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Attempt<T>>,
{
    let mut delays = policy.delays();
    let mut retries = 0u32;
    loop {
        if *stop.borrow() {
            return RetryEnd::Stopped;
        }
        if !owned() {
            return RetryEnd::Revoked;
        }
        let (status, reason) = match attempt().await {
            Attempt::Done(t) => return RetryEnd::Done(t),
            Attempt::Failed { status, reason } => (status, reason),
        };
        // An attempt that failed because the sidecar is stopping (or a
        // stream ended) or the message moved is not the message's fault.
        if *stop.borrow() {
            return RetryEnd::Stopped;
        }
        if !owned() {
            return RetryEnd::Revoked;
        }
        if !policy.retries_status(status) {
            return RetryEnd::Exhausted(format!("{reason} (not retried by the policy)"));
        }
        if policy.max_retries.is_some_and(|max| retries >= max) {
            return RetryEnd::Exhausted(format!("{reason} after {retries} retries"));
        }
        retries += 1;
        let until = tokio::time::Instant::now() + delays();
        loop {
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(left.min(OWNERSHIP_POLL)) => {}
                _ = stop.wait_for(|s| *s) => return RetryEnd::Stopped,
            }
            if !owned() {
                return RetryEnd::Revoked;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tokio::time::Instant;

    #[test]
    fn doubles_and_caps() {
        let mut b = Backoff::new(DEFAULT_INITIAL, DEFAULT_MAX);
        let got: Vec<u64> = (0..8).map(|_| b.next_delay().as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 8, 16, 32, 60, 60]);
    }

    /// Runs a loop whose attempts always fail; returns the offsets (in ms
    /// from the start) of each attempt and how the loop ended.
    async fn attempts_of(policy: RetryPolicy, status: Option<u16>) -> (Vec<u128>, RetryEnd<()>) {
        let start = Instant::now();
        let times = Arc::new(Mutex::new(vec![]));
        let (_tx, mut rx) = watch::channel(false);
        let t = times.clone();
        let end = run(&policy, &mut rx, &|| true, || {
            t.lock().unwrap().push(start.elapsed().as_millis());
            async move {
                Attempt::<()>::Failed {
                    status,
                    reason: "boom".into(),
                }
            }
        })
        .await;
        let v = times.lock().unwrap().clone();
        (v, end)
    }

    #[tokio::test(start_paused = true)]
    async fn default_policy_retries_five_times_doubling_from_one_second() {
        let (times, end) = attempts_of(RetryPolicy::default(), Some(500)).await;
        assert_eq!(times, [0, 1000, 3000, 7000, 15000, 31000]);
        assert!(matches!(end, RetryEnd::Exhausted(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn constant_policy_spacing_and_count() {
        let policy = RetryPolicy {
            spacing: Spacing::Constant(Duration::from_secs(5)),
            max_retries: Some(2),
            retry_statuses: vec![],
        };
        let (times, _) = attempts_of(policy, None).await;
        assert_eq!(times, [0, 5000, 10000]);
    }

    #[tokio::test(start_paused = true)]
    async fn jittered_exponential_stays_within_dapr_bounds() {
        let policy = RetryPolicy {
            spacing: Spacing::Jittered {
                max: Duration::from_secs(2),
            },
            max_retries: Some(6),
            retry_statuses: vec![],
        };
        let (times, _) = attempts_of(policy, None).await;
        let gaps: Vec<u128> = times.windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(gaps.len(), 6);
        assert!((250..=750).contains(&gaps[0]), "{gaps:?}");
        assert!(gaps.iter().all(|g| *g <= 2000), "capped: {gaps:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn matching_statuses_limit_what_is_retried() {
        let policy = RetryPolicy {
            retry_statuses: vec![(500, 599)],
            ..RetryPolicy::default()
        };
        let (times, end) = attempts_of(policy.clone(), Some(400)).await;
        assert_eq!(times, [0], "400 is not in 500-599: no retry");
        assert!(matches!(end, RetryEnd::Exhausted(r) if r.contains("not retried")));
        let (times, _) = attempts_of(policy, Some(503)).await;
        assert_eq!(times.len(), 6);
    }

    #[tokio::test(start_paused = true)]
    async fn stop_during_backoff_is_not_exhaustion() {
        let (tx, mut rx) = watch::channel(false);
        let stopper = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            tx.send(true).unwrap();
        });
        let end = run(&RetryPolicy::default(), &mut rx, &|| true, || async {
            Attempt::<()>::Failed {
                status: Some(500),
                reason: "boom".into(),
            }
        })
        .await;
        assert_eq!(end, RetryEnd::Stopped);
        stopper.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn losing_ownership_during_backoff_ends_the_retries_at_once() {
        let (_tx, mut rx) = watch::channel(false);
        let start = Instant::now();
        let owned = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let flag = owned.clone();
        tokio::spawn(async move {
            // Revoked 1.5 s into the 2 s backoff after the second attempt.
            tokio::time::sleep(Duration::from_millis(2500)).await;
            flag.store(false, std::sync::atomic::Ordering::Release);
        });
        let attempts = Arc::new(Mutex::new(0));
        let a = attempts.clone();
        let is_owned = move || owned.load(std::sync::atomic::Ordering::Acquire);
        let end = run(&RetryPolicy::default(), &mut rx, &is_owned, || {
            *a.lock().unwrap() += 1;
            async {
                Attempt::<()>::Failed {
                    status: Some(500),
                    reason: "boom".into(),
                }
            }
        })
        .await;
        assert_eq!(end, RetryEnd::Revoked, "not exhausted, not stopped");
        assert_eq!(*attempts.lock().unwrap(), 2);
        let took = start.elapsed().as_millis();
        assert!(
            (2500..=2700).contains(&took),
            "ended within a poll of the revoke: {took} ms"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_before_the_first_attempt_makes_no_attempt() {
        let (tx, mut rx) = watch::channel(true);
        let end = run(&RetryPolicy::default(), &mut rx, &|| true, || async {
            panic!("no attempt after the stop")
        })
        .await;
        assert_eq!(end, RetryEnd::<()>::Stopped);
        drop(tx);
    }
}
