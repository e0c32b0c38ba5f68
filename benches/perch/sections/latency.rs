//! End-to-end latency, publish POST to app receipt, at a fixed rate.

use crate::*;

pub(crate) async fn run(backends: &[Backend], s: &Sizes, rows: &mut Rows) {
    for &t in backends {
        let (rate, msgs) = (s.latency_rate, s.latency_msgs);
        let ((p50, p99), peer) = both(|| end_to_end(t, rate, msgs)).await;
        row(
            rows,
            format!("end to end {t:?}: publish POST to app receipt, {rate}/s, {msgs} x 1 KiB"),
            format!("p50 {p50:.2} ms, p99 {p99:.2} ms"),
            "".into(),
            "".into(),
            "".into(),
        );
        let m = |(p50, p99): (f64, f64)| Measure {
            p50_ms: Some(p50),
            p99_ms: Some(p99),
            ..Measure::default()
        };
        peer_cell(rows, peer_text(&m((p50, p99)), peer.map(m).as_ref()));
    }
}
