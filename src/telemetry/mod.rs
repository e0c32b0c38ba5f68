//! Telemetry: log set-up, W3C trace context, and Prometheus metrics.

pub mod logging;
pub mod metrics;
pub mod otel;
mod otel_tls;
pub mod trace;

/// `NAMESPACE` (Dapr's `namespace` metric label), empty when unset.
pub fn namespace() -> &'static str {
    static NS: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NS.get_or_init(|| std::env::var("NAMESPACE").unwrap_or_default())
}
