//! The Resiliency policies of a subscription's deliveries, chosen as daprd
//! chooses a component's inbound policies: the target
//! `components.<pubsub>.inbound`, and for what it leaves unnamed Dapr's
//! reserved default policies (`DefaultPubsubComponentInboundRetryPolicy`,
//! then `DefaultComponentInbound…`, `DefaultComponent…`, `Default…`), else
//! Perch's defaults. `targets.apps` is for service invocation and never
//! applies to pub/sub.

use std::collections::BTreeMap;
use std::time::Duration;

use super::retry::RetryPolicy;
use super::Deps;
use crate::config::resiliency::{CircuitBreaker, Resiliency};

/// The policies applied to deliveries from one pubsub.
pub(super) struct InboundPolicy {
    pub(super) retry: RetryPolicy,
    pub(super) timeout: Option<Duration>,
    /// `(resiliency/target key, settings)` of the target's circuit breaker.
    pub(super) breaker: Option<(String, CircuitBreaker)>,
}

/// The scopes of Dapr's default policy names for a pub/sub component's
/// inbound operations, most specific first: `Default{scope}{Kind}Policy`.
const DEFAULT_SCOPES: [&str; 4] = [
    "PubsubComponentInbound",
    "ComponentInbound",
    "Component",
    "",
];

/// The first reserved default policy of `kind` (`Retry`, `Timeout`,
/// `CircuitBreaker`) that `policies` defines, with its name.
fn default_policy<'a, T>(
    policies: &'a BTreeMap<String, T>,
    kind: &str,
) -> Option<(&'a str, &'a T)> {
    DEFAULT_SCOPES.iter().find_map(|scope| {
        policies
            .get_key_value(&format!("Default{scope}{kind}Policy"))
            .map(|(k, v)| (k.as_str(), v))
    })
}

/// The policy the target names, else the reserved default.
fn pick<'a, T>(
    policies: &'a BTreeMap<String, T>,
    named: Option<&String>,
    kind: &str,
) -> Option<(&'a str, &'a T)> {
    match named {
        Some(name) => policies.get_key_value(name).map(|(k, v)| (k.as_str(), v)),
        None => default_policy(policies, kind),
    }
}

/// The retry policy, timeout and circuit breaker for deliveries from
/// `pubsub` (see the module doc).
pub(super) fn inbound_policy(deps: &Deps, pubsub: &str) -> InboundPolicy {
    let docs = &deps.registry.resiliency;
    // The document with the target, else the first with a default policy.
    let with_target = docs
        .iter()
        .find_map(|r| r.inbound.get(pubsub).map(|t| (r, Some(t))));
    let has_default = |r: &&Resiliency| {
        default_policy(&r.retries, "Retry").is_some()
            || default_policy(&r.timeouts, "Timeout").is_some()
            || default_policy(&r.circuit_breakers, "CircuitBreaker").is_some()
    };
    let Some((r, target)) =
        with_target.or_else(|| docs.iter().find(has_default).map(|r| (r, None)))
    else {
        return InboundPolicy {
            retry: RetryPolicy::default(),
            timeout: None,
            breaker: None,
        };
    };
    let retry = pick(&r.retries, target.and_then(|t| t.retry.as_ref()), "Retry")
        .map(|(_, p)| RetryPolicy::from(p))
        .unwrap_or_default();
    let timeout = match target.and_then(|t| t.timeout.as_ref()) {
        // A target may name a timeout or write a duration in its place.
        Some(name) => r
            .timeouts
            .get(name)
            .copied()
            .or_else(|| crate::util::parse_go_duration(name).ok()),
        None => default_policy(&r.timeouts, "Timeout").map(|(_, d)| *d),
    };
    let breaker = pick(
        &r.circuit_breakers,
        target.and_then(|t| t.circuit_breaker.as_ref()),
        "CircuitBreaker",
    )
    .map(|(name, cb)| {
        let key = match target {
            Some(_) => format!("{}/components.{pubsub}.inbound", r.name),
            None => format!("{}/{name}", r.name),
        };
        (key, cb.clone())
    });
    InboundPolicy {
        retry,
        timeout,
        breaker,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_most_specific_default_policy_wins() {
        let policies: BTreeMap<String, u32> = [
            ("DefaultRetryPolicy", 1),
            ("DefaultComponentRetryPolicy", 2),
            ("DefaultComponentInboundRetryPolicy", 3),
            ("DefaultComponentOutboundRetryPolicy", 9),
            ("DefaultAppRetryPolicy", 9),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        assert_eq!(default_policy(&policies, "Retry").map(|(_, v)| *v), Some(3));
        let mut more = policies.clone();
        more.insert("DefaultPubsubComponentInboundRetryPolicy".into(), 4);
        assert_eq!(default_policy(&more, "Retry").map(|(_, v)| *v), Some(4));
        let only_app: BTreeMap<String, u32> = [("DefaultAppRetryPolicy".to_owned(), 9)].into();
        assert_eq!(
            default_policy(&only_app, "Retry"),
            None,
            "service invocation only"
        );
        assert_eq!(
            pick(&policies, Some(&"DefaultRetryPolicy".to_owned()), "Retry").map(|(_, v)| *v),
            Some(1),
            "a name the target gives wins"
        );
    }
}
