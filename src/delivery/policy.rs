//! The Resiliency policies of a subscription's deliveries: the target
//! `components.<pubsub>.inbound`, else `apps.<app-id>`, else the defaults.

use std::time::Duration;

use super::retry::RetryPolicy;
use super::Deps;

/// The policies applied to deliveries from one pubsub.
pub(super) struct InboundPolicy {
    pub(super) retry: RetryPolicy,
    pub(super) timeout: Option<Duration>,
    /// `(resiliency/target key, settings)` of the target's circuit breaker.
    pub(super) breaker: Option<(String, crate::config::resiliency::CircuitBreaker)>,
}

/// The retry policy, timeout and circuit breaker for deliveries from
/// `pubsub`: the Resiliency target `components.<pubsub>.inbound`, else
/// `apps.<app-id>`, else the default policy, no timeout and no breaker.
pub(super) fn inbound_policy(deps: &Deps, pubsub: &str) -> InboundPolicy {
    for r in &deps.registry.resiliency {
        let (key, target) = match r.inbound.get(pubsub) {
            Some(t) => (format!("{}/components.{pubsub}.inbound", r.name), t),
            None => match r.apps.get(&deps.settings.app_id) {
                Some(t) => (format!("{}/apps.{}", r.name, deps.settings.app_id), t),
                None => continue,
            },
        };
        let retry = target
            .retry
            .as_ref()
            .and_then(|name| r.retries.get(name))
            .map(RetryPolicy::from)
            .unwrap_or_default();
        let timeout = target.timeout.as_ref().and_then(|name| {
            r.timeouts
                .get(name)
                .copied()
                .or_else(|| crate::util::parse_go_duration(name).ok())
        });
        let breaker = target
            .circuit_breaker
            .as_ref()
            .and_then(|name| r.circuit_breakers.get(name))
            .map(|cb| (key, cb.clone()));
        return InboundPolicy {
            retry,
            timeout,
            breaker,
        };
    }
    InboundPolicy {
        retry: RetryPolicy::default(),
        timeout: None,
        breaker: None,
    }
}
