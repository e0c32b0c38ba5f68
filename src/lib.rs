//! Perch: a Dapr-compatible pub/sub sidecar.
//!
//! # Layout
//! - [`config`]: Dapr-format YAML loading and validation (every problem at once).
//! - [`cloudevents`]: Dapr's envelope rules, pure functions.
//! - [`broker`]: the broker trait and its backends (`memory`, `kafka`, `rabbitmq`).
//! - [`http`]: the publish, bulk, health and metadata API on hyper.
//! - [`delivery`]: subscriptions, pushing to the app, outcomes, retries, dead letters.
//! - [`store`]: idempotency stores (inbox) and the publish outbox (`memory`, `postgres`).
//! - [`outbox`]: publishing through the outbox when the broker cannot take it, and the relay.
//! - [`runtime`]: the life cycle that ties them together.
//! - [`cli`]: flags (daprd's names, env fallbacks) and the subcommands.
//! - [`demo`]: the README's first command.
//! - [`telemetry`]: logging, W3C trace context and Prometheus metrics.
//! - [`util`]: Go-compatible parsing and JSON helpers.

pub mod broker;
pub mod cli;
pub mod cloudevents;
pub mod config;
pub mod delivery;
pub mod demo;
pub mod http;
pub mod outbox;
pub mod runtime;
pub mod store;
pub mod telemetry;
pub mod util;
