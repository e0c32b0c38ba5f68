//! Telemetry: log set-up and W3C trace context. Metrics arrive with the
//! telemetry issue; log events are defined here so they stay consistent.

pub mod logging;
pub mod trace;
