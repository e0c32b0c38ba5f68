//! The printed table: one row per measurement, and the peer column.
//!
//! With `PERCH_BENCH_PEER=/path/to/sidecar` (any binary taking daprd's
//! flags), every row that goes through Perch runs again through the peer
//! right after, on the same broker, app and load (`both`), and its last
//! column gives Perch / peer for what the row measures: throughput (above
//! 1: Perch faster), p50 and p99 latency, CPU seconds per 10k messages and
//! RSS (below 1: Perch lower). Rows of features the peer lacks say so.
//! Without the variable the column is left out.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

pub(crate) type Rows = Vec<[String; 6]>;

pub(crate) fn row(
    rows: &mut Rows,
    what: String,
    perch: String,
    base: String,
    ratio: String,
    note: String,
) {
    rows.push([what, perch, base, ratio, note, String::new()]);
}

/// Sets the peer column of the last row.
pub(crate) fn peer_cell(rows: &mut Rows, text: String) {
    if let Some(r) = rows.last_mut() {
        r[5] = text;
    }
}

/// The peer sidecar of `PERCH_BENCH_PEER`, if any.
pub(crate) fn peer() -> Option<&'static str> {
    static PEER: OnceLock<Option<String>> = OnceLock::new();
    PEER.get_or_init(|| {
        std::env::var("PERCH_BENCH_PEER")
            .ok()
            .filter(|p| !p.is_empty())
    })
    .as_deref()
}

/// True while a measurement runs through the peer.
static ON_PEER: AtomicBool = AtomicBool::new(false);

/// The binary `start_sc` starts now: `Some(peer)` inside the peer half of
/// `both`, else `None` (Perch).
pub(crate) fn current_peer() -> Option<&'static str> {
    peer().filter(|_| ON_PEER.load(Ordering::Acquire))
}

/// Runs `measure` through Perch, then (with a peer) through the peer.
pub(crate) async fn both<T, F, Fut>(measure: F) -> (T, Option<T>)
where
    F: Fn() -> Fut,
    Fut: Future<Output = T>,
{
    let perch = measure().await;
    let other = match peer() {
        Some(_) => {
            ON_PEER.store(true, Ordering::Release);
            let r = measure().await;
            ON_PEER.store(false, Ordering::Release);
            Some(r)
        }
        None => None,
    };
    (perch, other)
}

/// What a row measured of one sidecar, for the Perch / peer ratios.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Measure {
    /// Messages per second.
    pub(crate) rate: Option<f64>,
    pub(crate) p50_ms: Option<f64>,
    pub(crate) p99_ms: Option<f64>,
    pub(crate) cpu_per_10k: Option<f64>,
    pub(crate) rss_idle_kib: Option<u64>,
    pub(crate) rss_peak_kib: Option<u64>,
}

/// "throughput 1.02x, p50 0.97x, ..." for what both measured.
pub(crate) fn versus(perch: &Measure, peer: &Measure) -> String {
    let mut out = vec![];
    let mut ratio = |name: &str, a: Option<f64>, b: Option<f64>| {
        if let (Some(a), Some(b)) = (a, b) {
            if b > 0.0 {
                out.push(format!("{name} {:.2}x", a / b));
            }
        }
    };
    ratio("throughput", perch.rate, peer.rate);
    ratio("p50", perch.p50_ms, peer.p50_ms);
    ratio("p99", perch.p99_ms, peer.p99_ms);
    ratio("CPU/10k", perch.cpu_per_10k, peer.cpu_per_10k);
    let kib = |k: Option<u64>| k.map(|k| k as f64);
    ratio("RSS idle", kib(perch.rss_idle_kib), kib(peer.rss_idle_kib));
    ratio("RSS peak", kib(perch.rss_peak_kib), kib(peer.rss_peak_kib));
    if out.is_empty() {
        "peer ran; nothing to compare".into()
    } else {
        out.join(", ")
    }
}

/// The peer cell of a row measured on both (`None`: no peer).
pub(crate) fn peer_text(perch: &Measure, peer: Option<&Measure>) -> String {
    peer.map(|p| versus(perch, p)).unwrap_or_default()
}

/// The peer cell of a row the peer cannot run (a Perch-only feature).
pub(crate) fn peer_lacks(rows: &mut Rows, what: &str) {
    if peer().is_some() {
        peer_cell(rows, format!("n/a: {what} is Perch's"));
    }
}
