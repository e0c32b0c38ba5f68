//! Perch against its baselines, side by side in one run, printed as a table.
//!
//! Files: `load` (load generator, percentiles, process stats), `app` (the
//! app rows drain into), `setup` (a sidecar per row, drains, latency),
//! `baselines` (direct rdkafka, lapin and redis), `table`, and one file per
//! section under `sections/`.
//!
//! `cargo bench --bench perch` runs the full sizes (release build);
//! under `cargo test` (no `--bench` argument) it runs a quick smoke with
//! small counts, to prove the harness works; it asserts no timing.
//! Needs what the test suite needs: Apache Kafka on 127.0.0.1:9092,
//! RabbitMQ, Redis and PostgreSQL (started by scripts/test.sh, or
//! scripts/bench.sh).
//!
//! `PERCH_BENCH_ONLY=publish,deliver,latency,idempotency,ordering,growth,memory`
//! runs some sections only, `PERCH_BENCH_BROKERS=Memory,Kafka,Rabbit,Redis` some
//! brokers only; `PERCH_BENCH_SOAK_SECS` sets the length of the
//! sustained run that samples RSS (default 600 s in full mode, the
//! 10-minute soak; flat means a spread within 2 MiB);
//! `PERCH_BENCH_BACKLOG` sets the delivery backlog on every broker
//! (default 20000; larger makes a drain long enough to profile).
//!
//! `PERCH_BENCH_PEER=/path/to/sidecar` runs every row that goes through
//! Perch again through that daprd-compatible binary and adds a Perch /
//! peer column (see `table`).
//!
//! Every delivery row drains a backlog that is already in the broker: the
//! app holds the first requests until the backlog is published, and the
//! clock starts when it lets them go.

mod app;
mod baselines;
#[path = "../../tests/common/mod.rs"]
mod common;
mod load;
mod sections;
mod setup;
mod table;

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub(crate) use app::*;
pub(crate) use baselines::*;
use bytes::Bytes;
pub(crate) use common::*;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
pub(crate) use load::*;
use serde_json::json;
pub(crate) use setup::*;
pub(crate) use table::*;
use tokio::sync::watch;

pub(crate) struct Sizes {
    pub(crate) publish: usize,
    pub(crate) deliver: usize,
    pub(crate) ordered: usize,
    pub(crate) concurrency: usize,
    pub(crate) latency_msgs: usize,
    pub(crate) latency_rate: u32,
    pub(crate) soak: Duration,
}

#[tokio::main]
async fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let only = std::env::var("PERCH_BENCH_ONLY").unwrap_or_default();
    let want = |section: &str| only.is_empty() || only.split(',').any(|s| s == section);
    let soak_secs = std::env::var("PERCH_BENCH_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if full { 600 } else { 3 });
    let s = if full {
        Sizes {
            publish: 5000,
            deliver: std::env::var("PERCH_BENCH_BACKLOG")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(20000),
            ordered: 400,
            concurrency: 16,
            latency_msgs: 2000,
            latency_rate: 200,
            soak: Duration::from_secs(soak_secs),
        }
    } else {
        Sizes {
            publish: 200,
            deliver: 300,
            ordered: 40,
            concurrency: 4,
            latency_msgs: 40,
            latency_rate: 100,
            soak: Duration::from_secs(soak_secs),
        }
    };
    let brokers = std::env::var("PERCH_BENCH_BROKERS").unwrap_or_default();
    let broker = |name: &str| brokers.is_empty() || brokers.split(',').any(|b| name.starts_with(b));
    let backends: Vec<Backend> = [
        Backend::Memory,
        Backend::Kafka,
        Backend::Rabbit,
        Backend::Redis,
    ]
    .into_iter()
    .filter(|b| broker(&format!("{b:?}")))
    .collect();
    let mut rows: Rows = vec![];
    let mut peak_rss = 0;
    if want("publish") {
        sections::publish::run(&backends, &s, &mut rows).await;
    }
    if want("deliver") {
        peak_rss = peak_rss.max(sections::deliver::run(&backends, &s, &mut rows).await);
    }
    if want("latency") {
        sections::latency::run(&backends, &s, &mut rows).await;
    }
    if want("idempotency") {
        sections::idempotency::run(&backends, &s, &mut rows).await;
    }
    if want("ordering") {
        sections::ordering::run(&s, &mut rows).await;
    }
    if want("growth") {
        sections::growth::run(&backends, &s, &mut rows, full).await;
    }
    if want("memory") {
        sections::memory::run(&backends, &s, &mut rows, peak_rss).await;
    }

    println!(
        "\n{} mode, {} cores",
        if full { "full" } else { "quick (smoke)" },
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    match peer() {
        None => {
            println!("| measurement | Perch | baseline | ratio | notes |\n|---|---|---|---|---|");
            for r in &rows {
                println!("| {} | {} | {} | {} | {} |", r[0], r[1], r[2], r[3], r[4]);
            }
        }
        Some(p) => {
            println!("\npeer: {p} (Perch / peer: throughput above 1 is Perch faster; latency, CPU and RSS below 1 is Perch lower)");
            println!("| measurement | Perch | baseline | ratio | notes | Perch / peer |\n|---|---|---|---|---|---|");
            for r in &rows {
                println!(
                    "| {} | {} | {} | {} | {} | {} |",
                    r[0], r[1], r[2], r[3], r[4], r[5]
                );
            }
            // The column's mechanics: every row that went through Perch
            // went through the peer too (or says why it could not).
            for r in &rows {
                assert!(
                    r[1].is_empty() || !r[5].is_empty(),
                    "row {:?} ran through Perch and has no peer cell",
                    r[0]
                );
            }
        }
    }
}
