//! What the sidecar knows at run time, in named pieces built once at
//! start-up and handed to whoever needs each:
//! - [`Settings`]: plain process settings (flags and env);
//! - [`Registry`]: the loaded components with their running brokers and
//!   stores, and the resiliency documents; immutable after start-up;
//! - [`Status`]: what changes while running: readiness, app health, the
//!   metadata view;
//! - [`Shutdown`]: the token the API uses to ask the process to stop.
//!
//! Depends on `config`, `broker` and `store` only; the publish path, the
//! delivery engine and the API servers depend on it.

pub mod backlog;
pub mod registry;
pub mod settings;
pub mod shutdown;
pub mod status;

pub use registry::{Pubsub, Registry};
pub use settings::{AppHealthCheck, AppProtocol, Settings};
pub use shutdown::Shutdown;
pub use status::Status;
