//! End-to-end latency, publish POST to app receipt, at a fixed rate.

use crate::*;

pub(crate) async fn run(backends: &[Backend], s: &Sizes, rows: &mut Rows) {
    for &t in backends {
        let (rate, msgs) = (s.latency_rate, s.latency_msgs);
        let (p50, p99) = end_to_end(t, rate, msgs).await;
        row(
            rows,
            format!("end to end {t:?}: publish POST to app receipt, {rate}/s, {msgs} x 1 KiB"),
            format!("p50 {p50:.2} ms, p99 {p99:.2} ms"),
            "".into(),
            "".into(),
            "".into(),
        );
    }
}
