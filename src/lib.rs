//! Perch: a Dapr-compatible pub/sub sidecar.
//!
//! # Layout
//! Modules in dependency order: each uses only those above it
//! (`scripts/module-dag.py` checks that no two import each other in a
//! circle; `scripts/test.sh` runs it).
//!
//! Leaves, no I/O of their own:
//! - [`util`]: Go-compatible parsing and JSON helpers.
//! - [`telemetry`]: logging, W3C trace context and Prometheus metrics.
//! - [`message`]: the published message and the boxed future the traits return.
//! - [`expr`]: CEL expressions compiled in one place (routing rules, breaker trips).
//! - [`errors`]: Dapr's API errors (code, reason, status, error JSON), for every transport.
//! - [`cloudevents`]: Dapr's envelope rules, pure functions.
//! - [`report`]: reading YAML documents field by field, every problem reported.
//!
//! Backends, behind small traits, each folder with its own `config`:
//! - [`broker`]: the broker trait and its backends (`memory`, `kafka/`, `rabbitmq/`,
//!   `redis/`).
//! - [`store`]: idempotency stores (inbox) and the publish outbox (`memory`, `postgres/`).
//!
//! Resources:
//! - [`config`]: Dapr-format YAML loading and validation (every problem at
//!   once); dispatches each component to its backend's `config`.
//! - [`resilience`]: retry policies, circuit breakers and the choice of a
//!   target's policies, for deliveries (inbound) and publishes (outbound).
//!
//! The sidecar's state and its two engines:
//! - [`state`]: settings, the registry of components with their brokers and
//!   stores, the live status, the shutdown token.
//! - [`publish`]: the publish path every transport calls (target, envelope,
//!   scopes, outbox decision, relay).
//! - [`delivery`]: subscriptions, pushing to the app, outcomes, retries, dead letters.
//!
//! Servers and life cycle:
//! - [`http`]: the publish, bulk, health and metadata API on hyper.
//! - [`sidecar`]: the life cycle that ties them together (build, serve, drain).
//! - [`demo`]: the README's first command.
//! - [`dlq`]: `perch dlq list` and `replay`, over a broker's dead letters.
//! - [`injector`]: `perch injector`, the Kubernetes admission webhook (a
//!   pure patch function and a thin HTTPS server).
//! - [`cli`]: flags (daprd's names, env fallbacks) and the subcommands.

pub mod broker;
pub mod cli;
pub mod cloudevents;
pub mod config;
pub mod dapr_proto;
pub mod delivery;
pub mod demo;
pub mod dlq;
pub mod errors;
pub mod expr;
pub mod grpc;
pub mod http;
pub mod injector;
pub mod message;
pub mod publish;
pub mod report;
pub mod resilience;
pub mod sidecar;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod util;
