//! The ordering modes on one Kafka partition with a 5 ms app.

use crate::*;

/// Messages/s draining a one-partition backlog of `n` (20 keys) through an
/// app that takes 5 ms per event.
pub(crate) async fn ordered(order: &str, n: usize) -> f64 {
    let s = setup(
        Backend::Kafka,
        SetupOpts {
            delay: Duration::from_millis(5),
            open: false,
            ..SetupOpts::new(&[("deliveryOrder", order)])
        },
    )
    .await;
    backlog(&s.sc, &s.topic, n, Some(20)).await;
    s.app.wait_arrival().await;
    let start = Instant::now();
    s.app.open();
    while s.app.acked() < n {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

pub(crate) async fn run(s: &Sizes, rows: &mut Rows) {
    let mut modes = vec![];
    for order in ["partition", "key", "none"] {
        modes.push((order, ordered(order, s.ordered).await));
    }
    row(
        rows,
        format!(
            "ordering on Kafka, 5 ms app, 1 partition, backlog of {}, 20 keys, maxInFlight default",
            s.ordered
        ),
        modes
            .iter()
            .map(|(o, r)| format!("{o} {r:.0}/s"))
            .collect::<Vec<_>>()
            .join(", "),
        "".into(),
        format!("key {:.1}x partition", modes[1].1 / modes[0].1),
        "".into(),
    );
    peer_lacks(rows, "deliveryOrder");
}
