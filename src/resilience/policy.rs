//! The Resiliency policies of a pub/sub component's operations, chosen as
//! daprd chooses them: the target `components.<pubsub>.inbound` (deliveries
//! to the app) or `.outbound` (publishes to the broker), and for what it
//! leaves unnamed Dapr's reserved default policies
//! (`DefaultPubsubComponentInboundRetryPolicy`, then
//! `DefaultComponentInbound…`, `DefaultComponent…`, `Default…`; likewise
//! `…Outbound…`), else none (the caller's defaults). `targets.apps` is for
//! service invocation and never applies to pub/sub.

use std::collections::BTreeMap;
use std::time::Duration;

use super::retry::RetryPolicy;
use crate::config::resiliency::{CircuitBreaker, Resiliency};

/// Which side of the component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Deliveries from the broker to the app.
    Inbound,
    /// Publishes from the app to the broker.
    Outbound,
}

impl Direction {
    fn word(self) -> &'static str {
        match self {
            Self::Inbound => "Inbound",
            Self::Outbound => "Outbound",
        }
    }

    fn target_name(self) -> &'static str {
        match self {
            Self::Inbound => "inbound",
            Self::Outbound => "outbound",
        }
    }
}

/// The policies of one pubsub in one direction; `None` where nothing
/// applies.
#[derive(Debug, Default)]
pub struct TargetPolicy {
    pub retry: Option<RetryPolicy>,
    pub timeout: Option<Duration>,
    /// `(resiliency/target key, settings)` of the target's circuit breaker.
    pub breaker: Option<(String, CircuitBreaker)>,
}

/// The scopes of Dapr's default policy names for a pub/sub component's
/// operations in `dir`, most specific first: `Default{scope}{Kind}Policy`.
fn scopes(dir: Direction) -> [String; 4] {
    let d = dir.word();
    [
        format!("PubsubComponent{d}"),
        format!("Component{d}"),
        "Component".into(),
        String::new(),
    ]
}

/// The first reserved default policy of `kind` (`Retry`, `Timeout`,
/// `CircuitBreaker`) that `policies` defines, with its name.
fn default_policy<'a, T>(
    policies: &'a BTreeMap<String, T>,
    kind: &str,
    dir: Direction,
) -> Option<(&'a str, &'a T)> {
    scopes(dir).iter().find_map(|scope| {
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
    dir: Direction,
) -> Option<(&'a str, &'a T)> {
    match named {
        Some(name) => policies.get_key_value(name).map(|(k, v)| (k.as_str(), v)),
        None => default_policy(policies, kind, dir),
    }
}

/// The retry policy, timeout and circuit breaker of `pubsub` in `dir`
/// (see the module doc).
pub fn for_target(docs: &[Resiliency], pubsub: &str, dir: Direction) -> TargetPolicy {
    let targets = |r: &Resiliency| match dir {
        Direction::Inbound => r.inbound.get(pubsub).cloned(),
        Direction::Outbound => r.outbound.get(pubsub).cloned(),
    };
    // The document with the target, else the first with a default policy.
    let with_target = docs.iter().find_map(|r| targets(r).map(|t| (r, Some(t))));
    let has_default = |r: &&Resiliency| {
        default_policy(&r.retries, "Retry", dir).is_some()
            || default_policy(&r.timeouts, "Timeout", dir).is_some()
            || default_policy(&r.circuit_breakers, "CircuitBreaker", dir).is_some()
    };
    let Some((r, target)) =
        with_target.or_else(|| docs.iter().find(has_default).map(|r| (r, None)))
    else {
        return TargetPolicy::default();
    };
    let target = target.as_ref();
    let retry = pick(
        &r.retries,
        target.and_then(|t| t.retry.as_ref()),
        "Retry",
        dir,
    )
    .map(|(_, p)| RetryPolicy::from(p));
    let timeout = match target.and_then(|t| t.timeout.as_ref()) {
        // A target may name a timeout or write a duration in its place.
        Some(name) => r
            .timeouts
            .get(name)
            .copied()
            .or_else(|| crate::util::parse_go_duration(name).ok()),
        None => default_policy(&r.timeouts, "Timeout", dir).map(|(_, d)| *d),
    };
    let breaker = pick(
        &r.circuit_breakers,
        target.and_then(|t| t.circuit_breaker.as_ref()),
        "CircuitBreaker",
        dir,
    )
    .map(|(name, cb)| {
        let key = match target {
            Some(_) => format!("{}/components.{pubsub}.{}", r.name, dir.target_name()),
            None => format!("{}/{name}", r.name),
        };
        (key, cb.clone())
    });
    TargetPolicy {
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
        let inbound = Direction::Inbound;
        assert_eq!(
            default_policy(&policies, "Retry", inbound).map(|(_, v)| *v),
            Some(3)
        );
        assert_eq!(
            default_policy(&policies, "Retry", Direction::Outbound).map(|(_, v)| *v),
            Some(9),
            "publishes take the outbound default"
        );
        let mut more = policies.clone();
        more.insert("DefaultPubsubComponentInboundRetryPolicy".into(), 4);
        assert_eq!(
            default_policy(&more, "Retry", inbound).map(|(_, v)| *v),
            Some(4)
        );
        let only_app: BTreeMap<String, u32> = [("DefaultAppRetryPolicy".to_owned(), 9)].into();
        assert_eq!(
            default_policy(&only_app, "Retry", inbound),
            None,
            "service invocation only"
        );
        assert_eq!(
            pick(
                &policies,
                Some(&"DefaultRetryPolicy".to_owned()),
                "Retry",
                inbound
            )
            .map(|(_, v)| *v),
            Some(1),
            "a name the target gives wins"
        );
    }
}
