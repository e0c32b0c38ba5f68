//! `kind: Resiliency` (reference section 7): named timeout, retry and
//! circuit-breaker policies, and the targets that use them. Parsed and
//! validated here; the delivery engine applies them.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_yaml::Mapping;

use crate::report::doc::{scalar_text, DocCtx};
use crate::util::parse_go_duration;

/// Backoff shape of a retry policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryKind {
    /// The same `duration` between attempts.
    Constant,
    /// Growing intervals capped at `maxInterval`.
    Exponential,
}

/// A named retry policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// constant or exponential (Dapr's default: constant).
    pub kind: RetryKind,
    /// Interval of a constant policy (Dapr's default 5 s).
    pub duration: Duration,
    /// Cap of an exponential policy (Dapr's default 60 s).
    pub max_interval: Duration,
    /// Retries after the first attempt; `None` is forever (Dapr's -1).
    pub max_retries: Option<u32>,
    /// `matching.httpStatusCodes` as inclusive ranges; empty retries all.
    pub http_status_codes: Vec<(u16, u16)>,
}

/// A named circuit breaker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CircuitBreaker {
    /// Requests allowed while half-open (default 1).
    pub max_requests: u32,
    /// Window for clearing counts (default 0).
    pub interval: Duration,
    /// Open time before half-open (default 60 s).
    pub timeout: Duration,
    /// CEL trip expression (default `consecutiveFailures > 5`).
    pub trip: String,
}

/// The policies one target uses, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TargetPolicies {
    /// Timeout policy name.
    pub timeout: Option<String>,
    /// Retry policy name.
    pub retry: Option<String>,
    /// Circuit breaker name.
    pub circuit_breaker: Option<String>,
}

/// A loaded Resiliency document.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resiliency {
    /// `metadata.name`.
    pub name: String,
    /// Named timeouts.
    pub timeouts: BTreeMap<String, Duration>,
    /// Named retry policies.
    pub retries: BTreeMap<String, RetryPolicy>,
    /// Named circuit breakers.
    pub circuit_breakers: BTreeMap<String, CircuitBreaker>,
    /// `targets.apps`.
    pub apps: BTreeMap<String, TargetPolicies>,
    /// `targets.components.<name>.inbound` (delivery to the app).
    pub inbound: BTreeMap<String, TargetPolicies>,
    /// `targets.components.<name>.outbound` (publish to the broker).
    pub outbound: BTreeMap<String, TargetPolicies>,
}

/// Reads a Resiliency document; `None` when it has problems.
pub fn read(ctx: &mut DocCtx<'_>, name: &str, doc: &Mapping) -> Option<Resiliency> {
    let before = ctx.problems.len();
    let spec = ctx.spec(doc, &[])?;
    ctx.unknown_keys(spec, "spec", &["policies", "targets"]);
    let mut r = Resiliency {
        name: name.to_owned(),
        ..Default::default()
    };
    if let Some(p) = ctx.mapping(spec, "spec", "policies") {
        ctx.unknown_keys(
            p,
            "spec.policies",
            &["timeouts", "retries", "circuitBreakers"],
        );
        if let Some(t) = ctx.mapping(p, "spec.policies", "timeouts") {
            for (k, v) in t {
                let key = scalar_text(k).unwrap_or_default();
                let path = format!("spec.policies.timeouts.{key}");
                match scalar_text(v).map(|s| parse_go_duration(&s)) {
                    Some(Ok(d)) => {
                        r.timeouts.insert(key, d);
                    }
                    Some(Err(e)) => ctx.problem(path, e),
                    None => ctx.problem(path, "must be a duration such as 5s"),
                }
            }
        }
        for (key, m) in named(ctx, p, "spec.policies", "retries") {
            if let Some(policy) = retry(ctx, &format!("spec.policies.retries.{key}"), m) {
                r.retries.insert(key, policy);
            }
        }
        for (key, m) in named(ctx, p, "spec.policies", "circuitBreakers") {
            let path = format!("spec.policies.circuitBreakers.{key}");
            ctx.unknown_keys(m, &path, &["maxRequests", "interval", "timeout", "trip"]);
            let cb = CircuitBreaker {
                max_requests: ctx
                    .integer(m, &path, "maxRequests", 1, u32::MAX as i64)
                    .unwrap_or(1) as u32,
                interval: duration(ctx, m, &path, "interval").unwrap_or(Duration::ZERO),
                timeout: duration(ctx, m, &path, "timeout").unwrap_or(Duration::from_secs(60)),
                trip: ctx
                    .string(m, &path, "trip")
                    .unwrap_or_else(|| "consecutiveFailures > 5".into()),
            };
            if let Err(e) = crate::expr::compile(&cb.trip) {
                ctx.problem(
                    format!("{path}.trip"),
                    format!("trip expression {:?} does not compile: {e}", cb.trip),
                );
            }
            r.circuit_breakers.insert(key, cb);
        }
    }
    if let Some(t) = ctx.mapping(spec, "spec", "targets") {
        ctx.unknown_keys(t, "spec.targets", &["apps", "components", "actors"]);
        for (key, m) in named(ctx, t, "spec.targets", "apps") {
            let tp = target(ctx, &format!("spec.targets.apps.{key}"), m, &r);
            r.apps.insert(key, tp);
        }
        for (key, m) in named(ctx, t, "spec.targets", "components") {
            let path = format!("spec.targets.components.{key}");
            ctx.unknown_keys(m, &path, &["inbound", "outbound"]);
            if let Some(i) = ctx.mapping(m, &path, "inbound") {
                let tp = target(ctx, &format!("{path}.inbound"), i, &r);
                r.inbound.insert(key.clone(), tp);
            }
            if let Some(o) = ctx.mapping(m, &path, "outbound") {
                let tp = target(ctx, &format!("{path}.outbound"), o, &r);
                r.outbound.insert(key.clone(), tp);
            }
        }
    }
    (ctx.problems.len() == before).then_some(r)
}

fn named<'m>(
    ctx: &mut DocCtx<'_>,
    map: &'m Mapping,
    path: &str,
    key: &str,
) -> Vec<(String, &'m Mapping)> {
    let Some(m) = ctx.mapping(map, path, key) else {
        return vec![];
    };
    let mut out = vec![];
    for (k, v) in m {
        let name = scalar_text(k).unwrap_or_default();
        match v.as_mapping() {
            Some(inner) => out.push((name, inner)),
            None => ctx.problem(format!("{path}.{key}.{name}"), "must be a mapping"),
        }
    }
    out
}

fn duration(ctx: &mut DocCtx<'_>, m: &Mapping, path: &str, key: &str) -> Option<Duration> {
    let s = ctx.string(m, path, key)?;
    match parse_go_duration(&s) {
        Ok(d) => Some(d),
        Err(e) => {
            ctx.problem(format!("{path}.{key}"), e);
            None
        }
    }
}

fn retry(ctx: &mut DocCtx<'_>, path: &str, m: &Mapping) -> Option<RetryPolicy> {
    ctx.unknown_keys(
        m,
        path,
        &[
            "policy",
            "duration",
            "maxInterval",
            "maxRetries",
            "matching",
        ],
    );
    let kind = match ctx.string(m, path, "policy").as_deref() {
        None | Some("constant") => RetryKind::Constant,
        Some("exponential") => RetryKind::Exponential,
        Some(other) => {
            ctx.problem(
                format!("{path}.policy"),
                format!("must be constant or exponential, got {other:?}"),
            );
            return None;
        }
    };
    let max_retries = ctx
        .integer(m, path, "maxRetries", -1, u32::MAX as i64)
        .unwrap_or(-1);
    let mut http_status_codes = vec![];
    if let Some(matching) = ctx.mapping(m, path, "matching") {
        let mp = format!("{path}.matching");
        ctx.unknown_keys(matching, &mp, &["httpStatusCodes", "gRPCStatusCodes"]);
        if let Some(codes) = ctx.string(matching, &mp, "httpStatusCodes") {
            match status_ranges(&codes) {
                Ok(r) => http_status_codes = r,
                Err(e) => ctx.problem(format!("{mp}.httpStatusCodes"), e),
            }
        }
    }
    Some(RetryPolicy {
        kind,
        duration: duration(ctx, m, path, "duration").unwrap_or(Duration::from_secs(5)),
        max_interval: duration(ctx, m, path, "maxInterval").unwrap_or(Duration::from_secs(60)),
        max_retries: u32::try_from(max_retries).ok(),
        http_status_codes,
    })
}

fn target(ctx: &mut DocCtx<'_>, path: &str, m: &Mapping, r: &Resiliency) -> TargetPolicies {
    ctx.unknown_keys(
        m,
        path,
        &[
            "timeout",
            "retry",
            "circuitBreaker",
            "circuitBreakerCacheSize",
        ],
    );
    let tp = TargetPolicies {
        timeout: ctx.string(m, path, "timeout"),
        retry: ctx.string(m, path, "retry"),
        circuit_breaker: ctx.string(m, path, "circuitBreaker"),
    };
    let checks = [
        (
            "timeout",
            &tp.timeout,
            r.timeouts
                .contains_key(tp.timeout.as_deref().unwrap_or_default()),
        ),
        (
            "retry",
            &tp.retry,
            r.retries
                .contains_key(tp.retry.as_deref().unwrap_or_default()),
        ),
        (
            "circuitBreaker",
            &tp.circuit_breaker,
            r.circuit_breakers
                .contains_key(tp.circuit_breaker.as_deref().unwrap_or_default()),
        ),
    ];
    for (key, name, defined) in checks {
        if let Some(n) = name {
            // A timeout may also be given inline as a duration.
            let inline_timeout = key == "timeout" && parse_go_duration(n).is_ok();
            if !(defined || inline_timeout) {
                ctx.problem(
                    format!("{path}.{key}"),
                    format!("no {key} policy named {n:?} in spec.policies"),
                );
            }
        }
    }
    tp
}

/// Parses `"500-599,429"` into inclusive ranges of HTTP status codes.
pub fn status_ranges(s: &str) -> Result<Vec<(u16, u16)>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|part| {
            let (a, b) = part.split_once('-').unwrap_or((part, part));
            let parse = |x: &str| {
                x.trim()
                    .parse::<u16>()
                    .ok()
                    .filter(|c| (100..=599).contains(c))
                    .ok_or_else(|| {
                        format!("{part:?} is not a status code or range between 100 and 599")
                    })
            };
            let (lo, hi) = (parse(a)?, parse(b)?);
            if lo > hi {
                return Err(format!("range {part:?} runs backwards"));
            }
            Ok((lo, hi))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_code_ranges() {
        assert_eq!(
            status_ranges("500-599, 429"),
            Ok(vec![(500, 599), (429, 429)])
        );
        assert!(status_ranges("600").is_err());
        assert!(status_ranges("599-500").is_err());
    }
}
