//! One file per section of the table (`PERCH_BENCH_ONLY` names them).

pub(crate) mod deliver;
pub(crate) mod growth;
pub(crate) mod idempotency;
pub(crate) mod latency;
pub(crate) mod memory;
pub(crate) mod ordering;
pub(crate) mod publish;
