//! Perch against its baselines, side by side in one run, printed as a table.
//!
//! `cargo bench --bench perch` runs the full sizes (release build);
//! under `cargo test` (no `--bench` argument) it runs a quick smoke with
//! small counts, to prove the harness works; it asserts no timing.
//! Needs what the test suite needs: tansu on 127.0.0.1:9092 (started by
//! scripts/test.sh, or scripts/bench.sh), RabbitMQ and PostgreSQL.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use serde_json::json;

struct Sizes {
    publish: usize,
    deliver: usize,
    ordered: usize,
    concurrency: usize,
}

/// Latencies of one load run.
struct Run {
    count: usize,
    elapsed: Duration,
    lat: Vec<Duration>,
}

impl Run {
    fn rate(&self) -> f64 {
        self.count as f64 / self.elapsed.as_secs_f64()
    }
    fn pct(&self, p: f64) -> f64 {
        let mut v = self.lat.clone();
        v.sort();
        v.get(((v.len() as f64 - 1.0) * p) as usize)
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    }
}

/// `n` POSTs of `body` to `url` from `c` keep-alive clients.
async fn load(url: &str, body: &str, content_type: &str, n: usize, c: usize) -> Run {
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..c {
        let (url, body, ct) = (url.to_owned(), body.to_owned(), content_type.to_owned());
        let share = n / c + usize::from(w < n % c);
        tasks.spawn(async move {
            let client =
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build_http::<Full<Bytes>>();
            let mut lat = Vec::with_capacity(share);
            for _ in 0..share {
                let t = Instant::now();
                let req = hyper::Request::post(&url)
                    .header("content-type", &ct)
                    .body(Full::new(Bytes::from(body.clone())))
                    .unwrap();
                let resp = client.request(req).await.expect("request");
                assert!(resp.status().is_success(), "{}", resp.status());
                let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
                lat.push(t.elapsed());
            }
            lat
        });
    }
    let mut lat = vec![];
    while let Some(l) = tasks.join_next().await {
        lat.extend(l.unwrap());
    }
    Run {
        count: n,
        elapsed: start.elapsed(),
        lat,
    }
}

/// RSS (KiB) and CPU seconds of a process, from /proc.
fn proc_stats(pid: u32) -> (u64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: f64 = fields
        .get(11)
        .and_then(|f| f.parse::<f64>().ok())
        .unwrap_or(0.0)
        + fields
            .get(12)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0);
    (rss, ticks / 100.0)
}

/// A 1 KiB JSON payload.
fn payload() -> String {
    json!({ "pad": "x".repeat(1000) }).to_string()
}

fn row(
    rows: &mut Vec<[String; 5]>,
    what: &str,
    perch: String,
    base: String,
    ratio: String,
    note: String,
) {
    rows.push([what.to_owned(), perch, base, ratio, note]);
}

async fn publish_rows(b: Backend, s: &Sizes, rows: &mut Vec<[String; 5]>) {
    let bench = Bench::new(b);
    let dir = resources(&[("pubsub.yaml", &bench.pubsub(&[]))]);
    let sc = Sidecar::start(dir.path(), None, &[], &["--log-level", "warn"]).await;
    let topic = bench.topic("pub");
    let url = sc.url(&format!("/v1.0/publish/pubsub/{topic}"));
    let body = payload();
    // Warm up (topic creation, connections).
    load(&url, &body, "application/json", 20, 2).await;
    let perch = load(&url, &body, "application/json", s.publish, s.concurrency).await;
    let direct = match b {
        Backend::Kafka => Some(direct_kafka(&topic, &body, s).await),
        Backend::Rabbit => Some(direct_rabbit(&topic, &body, s).await),
        Backend::Memory => None,
    };
    let name = format!("{b:?}");
    row(
        rows,
        &format!(
            "publish {name} (1 KiB, {} clients, {} msgs)",
            s.concurrency, s.publish
        ),
        format!(
            "{:.0}/s p50 {:.2} p99 {:.2} ms",
            perch.rate(),
            perch.pct(0.5),
            perch.pct(0.99)
        ),
        direct.as_ref().map_or("n/a".into(), |d| {
            format!(
                "{:.0}/s p50 {:.2} p99 {:.2} ms",
                d.rate(),
                d.pct(0.5),
                d.pct(0.99)
            )
        }),
        direct
            .as_ref()
            .map_or("".into(), |d| format!("{:.2}x", perch.rate() / d.rate())),
        direct.as_ref().map_or("".into(), |d| {
            format!("p99 added {:.2} ms", perch.pct(0.99) - d.pct(0.99))
        }),
    );
    // Bulk publish: 100 entries per request.
    let entries: Vec<serde_json::Value> = (0..100)
        .map(|i| json!({"entryId": i.to_string(), "event": {"pad": "x".repeat(1000)}, "contentType": "application/json"}))
        .collect();
    let bulk_url = sc.url(&format!("/v1.0-alpha1/publish/bulk/pubsub/{topic}"));
    let reqs = (s.publish / 100).max(1);
    let bulk = load(
        &bulk_url,
        &serde_json::Value::Array(entries).to_string(),
        "application/json",
        reqs,
        s.concurrency.min(reqs),
    )
    .await;
    row(
        rows,
        &format!("bulk publish {name} (100 per request)"),
        format!("{:.0} msgs/s", bulk.rate() * 100.0),
        "".into(),
        format!("{:.1}x single", bulk.rate() * 100.0 / perch.rate()),
        "".into(),
    );
}

async fn direct_kafka(topic: &str, body: &str, s: &Sizes) -> Run {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", "127.0.0.1:9092")
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    // Warm up: metadata and the idempotent producer id.
    for _ in 0..20 {
        producer
            .send(
                FutureRecord::<(), _>::to(topic).payload(body),
                Duration::from_secs(10),
            )
            .await
            .expect("warm-up produce");
    }
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..s.concurrency {
        let (p, t, b, n) = (
            producer.clone(),
            topic.to_owned(),
            body.to_owned(),
            s.publish / s.concurrency,
        );
        tasks.spawn(async move {
            let mut lat = vec![];
            for _ in 0..n {
                let t0 = Instant::now();
                p.send(
                    FutureRecord::<(), _>::to(&t).payload(&b),
                    Duration::from_secs(10),
                )
                .await
                .expect("direct produce");
                lat.push(t0.elapsed());
            }
            lat
        });
    }
    let mut lat = vec![];
    while let Some(l) = tasks.join_next().await {
        lat.extend(l.unwrap());
    }
    Run {
        count: lat.len(),
        elapsed: start.elapsed(),
        lat,
    }
}

async fn direct_rabbit(topic: &str, body: &str, s: &Sizes) -> Run {
    use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
    let conn = lapin::Connection::connect(RABBIT_URI, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..s.concurrency {
        let ch = conn.create_channel().await.unwrap();
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        let (t, b, n) = (topic.to_owned(), body.to_owned(), s.publish / s.concurrency);
        tasks.spawn(async move {
            let mut lat = vec![];
            for _ in 0..n {
                let t0 = Instant::now();
                ch.basic_publish(
                    t.as_str().into(),
                    "".into(),
                    BasicPublishOptions::default(),
                    b.as_bytes(),
                    lapin::BasicProperties::default().with_delivery_mode(2),
                )
                .await
                .unwrap()
                .await
                .unwrap();
                lat.push(t0.elapsed());
            }
            lat
        });
    }
    let mut lat = vec![];
    while let Some(l) = tasks.join_next().await {
        lat.extend(l.unwrap());
    }
    Run {
        count: lat.len(),
        elapsed: start.elapsed(),
        lat,
    }
}

/// Counts requests the app receives; answers 200 (bulk: SUCCESS for all).
async fn counting_app(delay: Duration) -> (TestApp, Arc<AtomicU64>) {
    let n = Arc::new(AtomicU64::new(0));
    let n2 = n.clone();
    let app = TestApp::start_slow(
        None,
        delay,
        Arc::new(move |r| {
            if r.path == "/bulk" {
                let entries = r.json()["entries"].as_array().unwrap().clone();
                n2.fetch_add(entries.len() as u64, Ordering::Relaxed);
                let statuses: Vec<serde_json::Value> = entries
                    .iter()
                    .map(|e| json!({"entryId": e["entryId"], "status": "SUCCESS"}))
                    .collect();
                return (200, json!({ "statuses": statuses }).to_string());
            }
            n2.fetch_add(1, Ordering::Relaxed);
            (200, String::new())
        }),
    )
    .await;
    (app, n)
}

/// Publishes `n` (bulk, 100 per request) and times until the app has them;
/// returns messages/s and the sidecar's peak RSS and CPU seconds.
async fn deliver(
    b: Backend,
    n: usize,
    extra: &[(&str, &str)],
    bulk: bool,
    store: Option<&str>,
) -> (f64, u64, f64) {
    let bench = Bench::new(b);
    let (mut app, count) = counting_app(Duration::ZERO).await;
    let mut md: Vec<(&str, &str)> = vec![("deliveryOrder", "none"), ("maxInFlight", "64")];
    md.extend_from_slice(extra);
    let mut files = vec![("pubsub.yaml".to_owned(), bench.pubsub(&md))];
    let topic = bench.topic("deliver");
    let sub = if bulk {
        format!("apiVersion: dapr.io/v2alpha1\nkind: Subscription\nmetadata: {{name: s}}\nspec:\n  pubsubname: pubsub\n  topic: {topic}\n  bulkSubscribe: {{enabled: true, maxMessagesCount: 100, maxAwaitDurationMs: 50}}\n  routes: {{default: /bulk}}\n")
    } else {
        subscription("s", &topic, "/orders")
    };
    files.push(("s.yaml".into(), sub));
    if let Some(s) = store {
        files.push(("store.yaml".into(), s.to_owned()));
    }
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let dir = resources(&refs);
    let sc = Sidecar::start(dir.path(), Some(app.port), &[], &["--log-level", "warn"]).await;
    let pid = sc.child.id().unwrap();
    let (_, cpu0) = proc_stats(pid);
    let start = Instant::now();
    let entries = |from: usize| -> String {
        let e: Vec<serde_json::Value> = (from..from + 100)
            .map(|i| json!({"entryId": i.to_string(), "event": {"seq": i, "pad": "x".repeat(1000)}, "contentType": "application/json"}))
            .collect();
        serde_json::Value::Array(e).to_string()
    };
    let url = sc.url(&format!("/v1.0-alpha1/publish/bulk/pubsub/{topic}"));
    for from in (0..n).step_by(100) {
        load(&url, &entries(from), "application/json", 1, 1).await;
    }
    let mut peak = 0;
    while (count.load(Ordering::Relaxed) as usize) < n {
        peak = peak.max(proc_stats(pid).0);
        // Drain the test app's log of requests.
        while app.rx.try_recv().is_ok() {}
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "delivery stalled"
        );
    }
    let elapsed = start.elapsed();
    let (_, cpu1) = proc_stats(pid);
    (n as f64 / elapsed.as_secs_f64(), peak, cpu1 - cpu0)
}

/// The app's own capacity: the load generator straight at it.
async fn app_capacity(s: &Sizes) -> Run {
    let (mut app, _) = counting_app(Duration::ZERO).await;
    let ce = json!({"specversion": "1.0", "id": "x", "source": "s", "type": "t", "data": {"pad": "x".repeat(1000)}}).to_string();
    let url = format!("http://127.0.0.1:{}/orders", app.port);
    let drain = tokio::spawn(async move { while app.rx.recv().await.is_some() {} });
    let r = load(&url, &ce, "application/cloudevents+json", s.deliver, 16).await;
    drain.abort();
    r
}

#[tokio::main]
async fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let s = if full {
        Sizes {
            publish: 5000,
            deliver: 10000,
            ordered: 400,
            concurrency: 16,
        }
    } else {
        Sizes {
            publish: 200,
            deliver: 300,
            ordered: 40,
            concurrency: 4,
        }
    };
    let mut rows: Vec<[String; 5]> = vec![];
    for b in [Backend::Memory, Backend::Kafka, Backend::Rabbit] {
        publish_rows(b, &s, &mut rows).await;
    }
    let cap = app_capacity(&s).await;
    row(
        &mut rows,
        "app capacity (16 clients straight at the app)",
        format!("{:.0}/s", cap.rate()),
        "".into(),
        "".into(),
        "".into(),
    );
    let mut peak_rss = 0;
    for b in [Backend::Memory, Backend::Kafka, Backend::Rabbit] {
        // The in-memory broker drops what is published before the
        // subscription exists; the bulk publishes come after start-up.
        let (per_msg, rss, cpu) = deliver(b, s.deliver, &[], false, None).await;
        let (bulk, rss2, _) = deliver(b, s.deliver, &[], true, None).await;
        peak_rss = peak_rss.max(rss).max(rss2);
        row(
            &mut rows,
            &format!("deliver {b:?} ({} msgs, 1 KiB, maxInFlight 64)", s.deliver),
            format!("{per_msg:.0}/s; bulk {bulk:.0}/s"),
            format!("app {:.0}/s", cap.rate()),
            format!(
                "{:.2}x; bulk {:.1}x per-message",
                per_msg / cap.rate(),
                bulk / per_msg
            ),
            format!(
                "{:.2} CPU s per 10k, peak RSS {} MiB",
                cpu * 10000.0 / s.deliver as f64,
                rss / 1024
            ),
        );
    }
    // Idempotency on (Postgres) vs off, RabbitMQ.
    let table = format!("bench_{}", uuid::Uuid::new_v4().simple());
    let store = format!("apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {{name: inbox}}\nspec:\n  type: store.postgresql\n  version: v1\n  metadata:\n    - {{name: connectionString, value: \"postgres://postgres@127.0.0.1:5432/test\"}}\n    - {{name: inboxTable, value: {table}}}\n    - {{name: outboxTable, value: {table}_out}}\n");
    let (off, _, _) = deliver(Backend::Rabbit, s.deliver, &[], false, None).await;
    let (on, _, _) = deliver(
        Backend::Rabbit,
        s.deliver,
        &[("idempotencyStore", "inbox")],
        false,
        Some(&store),
    )
    .await;
    let _ = std::process::Command::new("psql")
        .args([
            "postgres://postgres@127.0.0.1:5432/test",
            "-qc",
            &format!("DROP TABLE IF EXISTS {table}, {table}_out"),
        ])
        .output();
    row(
        &mut rows,
        "idempotency on (Postgres) vs off, RabbitMQ",
        format!("{on:.0}/s"),
        format!("{off:.0}/s"),
        format!("{:.2}x", on / off),
        "".into(),
    );
    // Ordering modes: 5 ms app, one partition (mock cluster: tansu serves
    // about one record per fetch).
    let mut modes = vec![];
    for order in ["partition", "key", "none"] {
        modes.push((order, ordered(order, s.ordered).await));
    }
    row(
        &mut rows,
        &format!(
            "ordering, 5 ms app, 1 partition, {} msgs, 20 keys",
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
    // Idle RSS.
    let dir = resources(&[("pubsub.yaml", PUBSUB)]);
    let idle = Sidecar::start(dir.path(), None, &[], &["--log-level", "warn"]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (idle_rss, _) = proc_stats(idle.child.id().unwrap());
    row(
        &mut rows,
        "RSS",
        format!("idle {} MiB, peak {} MiB", idle_rss / 1024, peak_rss / 1024),
        "".into(),
        "".into(),
        "".into(),
    );

    println!(
        "\n{} mode, {} cores",
        if full { "full" } else { "quick (smoke)" },
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("| measurement | Perch | baseline | ratio | notes |\n|---|---|---|---|---|");
    for r in rows {
        println!("| {} | {} | {} | {} | {} |", r[0], r[1], r[2], r[3], r[4]);
    }
}

/// Messages/s draining a one-partition backlog through a 5 ms app.
async fn ordered(order: &str, n: usize) -> f64 {
    let cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
    let id = uuid::Uuid::new_v4().simple().to_string();
    let topic = format!("ordered-{id}");
    cluster.create_topic(&topic, 1, 1).unwrap();
    let pubsub = component(
        "pubsub",
        &[
            ("brokers", &cluster.bootstrap_servers()),
            ("consumerGroup", &format!("g-{id}")),
            ("initialOffset", "oldest"),
            ("autoCreateTopics", "false"),
            ("deliveryOrder", order),
        ],
    )
    .replace("pubsub.in-memory", "pubsub.kafka");
    let dir = resources(&[
        ("pubsub.yaml", &pubsub),
        ("s.yaml", &subscription("s", &topic, "/orders")),
    ]);
    let publisher = Sidecar::start(dir.path(), None, &[], &["--log-level", "warn"]).await;
    let url = publisher.url(&format!("/v1.0-alpha1/publish/bulk/pubsub/{topic}"));
    for from in (0..n).step_by(100) {
        let e: Vec<serde_json::Value> = (from..(from + 100).min(n))
            .map(|i| json!({"entryId": i.to_string(), "event": {"seq": i}, "contentType": "application/json", "metadata": {"partitionKey": format!("k{}", i % 20)}}))
            .collect();
        load(
            &url,
            &serde_json::Value::Array(e).to_string(),
            "application/json",
            1,
            1,
        )
        .await;
    }
    drop(publisher);
    let (mut app, count) = counting_app(Duration::from_millis(5)).await;
    let _sc = Sidecar::start(dir.path(), Some(app.port), &[], &["--log-level", "warn"]).await;
    app.next(60).await.expect("first delivery");
    let start = Instant::now();
    while (count.load(Ordering::Relaxed) as usize) < n {
        while app.rx.try_recv().is_ok() {}
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (n - 1) as f64 / start.elapsed().as_secs_f64()
}
