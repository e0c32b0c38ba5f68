//! Publishes under a pub/sub component's outbound policies
//! (`targets.components.<pubsub>.outbound`, or Dapr's reserved
//! `Default…Outbound…` policies), as daprd wraps a component's publish:
//! the circuit breaker first (open: the broker is not called), a timeout
//! per attempt, and retries of the failures worth retrying (the broker
//! unavailable or timed out; a refusal is final) as the retry policy
//! spaces them. Without any policy a publish is one call, as before, at no
//! cost.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use super::breaker::{Admit, Breaker};
use super::policy::{for_target, Direction};
use super::retry::RetryPolicy;
use crate::broker::BrokerError;
use crate::config::resiliency::Resiliency;

/// What is said of a publish the open breaker did not let through.
pub const BREAKER_OPEN: &str =
    "circuit breaker is open (the broker failed as the policy's trip says; publishes are tried again after its timeout)";

/// A pubsub's outbound policies.
#[derive(Default)]
pub struct Outbound {
    retry: Option<RetryPolicy>,
    timeout: Option<Duration>,
    breaker: Option<Arc<Breaker>>,
}

impl Outbound {
    /// The policies the documents give `pubsub`'s publishes.
    pub fn for_pubsub(docs: &[Resiliency], pubsub: &str) -> Self {
        let p = for_target(docs, pubsub, Direction::Outbound);
        Self {
            retry: p.retry,
            timeout: p.timeout,
            breaker: p
                .breaker
                .and_then(|(key, cfg)| Breaker::new(&key, &cfg))
                .map(Arc::new),
        }
    }

    /// No policy applies.
    pub fn is_empty(&self) -> bool {
        self.retry.is_none() && self.timeout.is_none() && self.breaker.is_none()
    }

    /// Sends `n` messages: `send(indices)` publishes those and answers one
    /// result each. The ones the broker could not take are sent again as
    /// the retry policy allows; the results, in order.
    pub async fn run<F, Fut>(&self, n: usize, send: F) -> Vec<Result<(), BrokerError>>
    where
        F: Fn(Vec<usize>) -> Fut,
        Fut: Future<Output = Vec<Result<(), BrokerError>>>,
    {
        if self.is_empty() {
            return send((0..n).collect()).await;
        }
        let no_retry = RetryPolicy {
            max_retries: Some(0),
            ..RetryPolicy::default()
        };
        let policy = self.retry.as_ref().unwrap_or(&no_retry);
        let mut delays = policy.delays();
        let mut results: Vec<Result<(), BrokerError>> = (0..n)
            .map(|_| Err(BrokerError::Unavailable("not sent".into())))
            .collect();
        let mut pending: Vec<usize> = (0..n).collect();
        let mut retries = 0u32;
        loop {
            if let Some(b) = &self.breaker {
                if b.admit() == Admit::No {
                    for i in &pending {
                        results[*i] = Err(BrokerError::Unavailable(BREAKER_OPEN.into()));
                    }
                    return results;
                }
            }
            let attempt = send(pending.clone());
            let answers = match self.timeout {
                None => attempt.await,
                Some(t) => match tokio::time::timeout(t, attempt).await {
                    Ok(a) => a,
                    Err(_) => pending
                        .iter()
                        .map(|_| {
                            Err(BrokerError::Unavailable(format!(
                                "the broker did not confirm within the timeout ({t:?})"
                            )))
                        })
                        .collect(),
                },
            };
            let mut again = vec![];
            let mut failed = false;
            for (i, r) in pending.iter().copied().zip(answers) {
                if matches!(r, Err(BrokerError::Unavailable(_))) {
                    failed = true;
                    again.push(i);
                }
                results[i] = r;
            }
            if let Some(b) = &self.breaker {
                // A refusal is the message's fault, not the broker's.
                b.record(!failed);
            }
            if again.is_empty() || policy.max_retries.is_some_and(|m| retries >= m) {
                return results;
            }
            retries += 1;
            pending = again;
            tokio::time::sleep(delays()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::resiliency::{CircuitBreaker, RetryKind};
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn outbound(max_retries: u32, breaker: Option<CircuitBreaker>) -> Outbound {
        Outbound {
            retry: Some(RetryPolicy::from(&crate::config::resiliency::RetryPolicy {
                kind: RetryKind::Constant,
                duration: Duration::from_millis(1),
                max_interval: Duration::from_millis(1),
                max_retries: Some(max_retries),
                http_status_codes: vec![],
            })),
            timeout: None,
            breaker: breaker.and_then(|c| Breaker::new("t", &c)).map(Arc::new),
        }
    }

    #[tokio::test]
    async fn unavailable_messages_are_sent_again_and_refusals_are_final() {
        let calls = AtomicUsize::new(0);
        let o = outbound(3, None);
        let r = o
            .run(3, |idx| {
                let call = calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    idx.iter()
                        .map(|i| match (i, call) {
                            (0, _) => Ok(()),
                            (1, _) => Err(BrokerError::Rejected("too large".into())),
                            (_, c) if c < 2 => Err(BrokerError::Unavailable("down".into())),
                            _ => Ok(()),
                        })
                        .collect()
                }
            })
            .await;
        assert!(r[0].is_ok());
        assert!(matches!(r[1], Err(BrokerError::Rejected(_))), "not retried");
        assert!(r[2].is_ok(), "retried until the broker took it");
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        // Out of retries: the last error.
        let o = outbound(1, None);
        let r = o
            .run(1, |_| async {
                vec![Err(BrokerError::Unavailable("down".into()))]
            })
            .await;
        assert!(matches!(&r[0], Err(BrokerError::Unavailable(e)) if e == "down"));
    }

    #[tokio::test]
    async fn an_open_breaker_does_not_call_the_broker() {
        let cb = CircuitBreaker {
            max_requests: 1,
            interval: Duration::ZERO,
            timeout: Duration::from_secs(60),
            trip: "consecutiveFailures >= 2".into(),
        };
        let o = outbound(0, Some(cb));
        let calls = AtomicUsize::new(0);
        let down = |_| {
            calls.fetch_add(1, Ordering::SeqCst);
            async { vec![Err(BrokerError::Unavailable("down".into()))] }
        };
        for _ in 0..2 {
            o.run(1, down).await;
        }
        let r = o.run(1, down).await;
        assert!(matches!(&r[0], Err(BrokerError::Unavailable(e)) if e == BREAKER_OPEN));
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "tripped after two failures"
        );
    }
}
