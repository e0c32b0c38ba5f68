//! Perch: a Dapr-compatible pub/sub sidecar.
//!
//! # Layout
//! - [`cloudevents`]: Dapr's envelope rules, pure functions.
//! - [`config`]: Dapr-format YAML loading and validation.
//! - [`telemetry`]: logging and W3C trace context.
//! - [`util`]: Go-compatible parsing and JSON helpers.

pub mod cloudevents;
pub mod config;
pub mod telemetry;
pub mod util;
