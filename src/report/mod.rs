//! Reading Dapr YAML documents field by field while recording every
//! problem (file, document, field), and the report that lists them all. A
//! leaf: `config` reads resources with it, and each backend reads its own
//! component metadata with it, so the backends' configs live with the
//! backends without importing `config`.

pub mod doc;
pub mod meta;
pub mod problem;

pub use doc::DocCtx;
pub use problem::{ConfigReport, Problem};
