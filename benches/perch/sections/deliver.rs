//! Delivery from a pre-filled backlog against the app's own capacity, per
//! message and bulk, and the own drain ceiling of Kafka, RabbitMQ and
//! Redis. Returns the peak RSS.

use crate::*;

pub(crate) async fn run(backends: &[Backend], s: &Sizes, rows: &mut Rows) -> u64 {
    let mut peak_rss = 0;
    let app = BenchApp::start(Duration::ZERO, true).await;
    let ce = json!({"specversion": "1.0", "id": "x", "source": "s", "type": "t", "datacontenttype": "application/json", "data": {"pad": "x".repeat(1000)}}).to_string();
    let url = format!("http://127.0.0.1:{}/orders", app.port);
    let cap = load(&url, &ce, "application/cloudevents+json", s.deliver, 16).await;
    row(
        rows,
        format!(
            "app capacity: the load generator straight at the app, 1 KiB CloudEvents, 16 clients, {} requests",
            s.deliver
        ),
        "".into(),
        cap.summary("req"),
        "".into(),
        "".into(),
    );
    for &t in backends {
        let n = s.deliver;
        let ((one, bulk), peer) = both(|| async {
            (
                drain(t, n, &[], false, None).await,
                drain(t, n, &[], true, None).await,
            )
        })
        .await;
        peak_rss = peak_rss.max(one.peak_rss_kib).max(bulk.peak_rss_kib);
        row(
            rows,
            format!(
                "deliver {t:?}: backlog of {n} x 1 KiB, maxInFlight 64, order none; bulk 100 per request"
            ),
            format!("{:.0}/s; bulk {:.0}/s", one.rate, bulk.rate),
            format!("app {:.0}/s", cap.rate()),
            format!(
                "{:.2}x app; bulk {:.1}x per-message",
                one.rate / cap.rate(),
                bulk.rate / one.rate
            ),
            format!(
                "CPU s per 10k: {:.2}, bulk {:.2}; peak RSS {} MiB",
                one.cpu_s * 10000.0 / n as f64,
                bulk.cpu_s * 10000.0 / n as f64,
                one.peak_rss_kib.max(bulk.peak_rss_kib) / 1024
            ),
        );
        if let Some((p1, pb)) = &peer {
            peer_cell(
                rows,
                format!(
                    "per message: {}; bulk: {}",
                    versus(&one.measure(n), &p1.measure(n)),
                    versus(&bulk.measure(n), &pb.measure(n))
                ),
            );
        }
        // The broker's own ceiling, with no HTTP and no app.
        let direct = match t {
            Backend::Redis => Some((
                direct_redis_drain(n).await,
                format!("Redis drain with no app: XREADGROUP 64 at a time and one XACK per read, backlog of {n} x 1 KiB"),
            )),
            Backend::Kafka => Some((
                direct_kafka_drain(n).await,
                format!("Kafka drain with no app: an rdkafka consumer reads a backlog of {n} x 1 KiB on one partition, offsets stored per record"),
            )),
            _ => None,
        };
        if let Some((direct, name)) = direct {
            row(
                rows,
                name,
                format!("Perch {:.0}/s; bulk {:.0}/s", one.rate, bulk.rate),
                format!("direct {direct:.0}/s"),
                format!(
                    "{:.2}x; bulk {:.2}x the direct drain",
                    one.rate / direct,
                    bulk.rate / direct
                ),
                "".into(),
            );
            drain_peer_cell(rows, peer.as_ref(), direct);
        }
        if t == Backend::Rabbit {
            // The broker's own ceiling, with no HTTP and no app.
            let each = direct_rabbit_drain(n, 1).await;
            let batched = direct_rabbit_drain(n, 32).await;
            row(
                rows,
                format!(
                    "RabbitMQ drain with no app: lapin consumes a backlog of {n} x 1 KiB, prefetch 64"
                ),
                format!("Perch {:.0}/s; bulk {:.0}/s", one.rate, bulk.rate),
                format!(
                    "ack each {each:.0}/s; one multiple ack per 32 {batched:.0}/s"
                ),
                format!(
                    "{:.2}x; bulk {:.2}x the ack-each drain",
                    one.rate / each,
                    bulk.rate / each
                ),
                "".into(),
            );
            drain_peer_cell(rows, peer.as_ref(), each);
        }
    }
    peak_rss
}

/// The peer's drains against the broker's own, for a drain row.
fn drain_peer_cell(rows: &mut Rows, peer: Option<&(Drained, Drained)>, direct: f64) {
    if let Some((p1, pb)) = peer {
        peer_cell(
            rows,
            format!(
                "peer {:.0}/s ({:.2}x direct), bulk {:.0}/s ({:.2}x)",
                p1.rate,
                p1.rate / direct,
                pb.rate,
                pb.rate / direct
            ),
        );
    }
}
