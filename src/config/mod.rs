//! Configuration: Dapr-format YAML read from the resources paths. Loading
//! collects every problem (file, document, field) before failing.

pub mod doc;
pub mod error;

pub use error::{ConfigReport, Problem};
