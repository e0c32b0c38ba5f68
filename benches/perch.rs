//! Perch against its baselines, side by side in one run, printed as a table.
//!
//! `cargo bench --bench perch` runs the full sizes (release build);
//! under `cargo test` (no `--bench` argument) it runs a quick smoke with
//! small counts, to prove the harness works; it asserts no timing.
//! Needs what the test suite needs: Apache Kafka on 127.0.0.1:9092,
//! RabbitMQ and PostgreSQL (started by scripts/test.sh, or scripts/bench.sh).
//!
//! `PERCH_BENCH_ONLY=publish,deliver,latency,idempotency,ordering,memory`
//! runs some sections only, `PERCH_BENCH_BROKERS=Memory,Kafka,Rabbit` some
//! brokers only; `PERCH_BENCH_SOAK_SECS` sets the length of the
//! sustained run that samples RSS (default 60 s in full mode; DESIGN.md
//! asks for a 10-minute soak: `PERCH_BENCH_SOAK_SECS=600`);
//! `PERCH_BENCH_BACKLOG` sets the delivery backlog on every broker
//! (default 20000; larger makes a drain long enough to profile).
//!
//! Every delivery row drains a backlog that is already in the broker: the
//! app holds the first requests until the backlog is published, and the
//! clock starts when it lets them go.

#[path = "../tests/common/mod.rs"]
mod common;

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use serde_json::json;
use tokio::sync::watch;

struct Sizes {
    publish: usize,
    deliver: usize,
    ordered: usize,
    concurrency: usize,
    latency_msgs: usize,
    latency_rate: u32,
    soak: Duration,
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
        pct(&self.lat, p)
    }
    fn summary(&self, unit: &str) -> String {
        format!(
            "{:.0} {unit}/s, p50 {:.2} p99 {:.2} ms",
            self.rate(),
            self.pct(0.5),
            self.pct(0.99)
        )
    }
}

/// The `p` quantile of `lat`, in milliseconds.
fn pct(lat: &[Duration], p: f64) -> f64 {
    let mut v = lat.to_vec();
    v.sort();
    v.get(((v.len() as f64 - 1.0) * p) as usize)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// A 1 KiB JSON payload carrying its send time (`ts`, µs since the epoch).
fn payload() -> String {
    format!(r#"{{"ts":{},"pad":"{}"}}"#, now_micros(), "x".repeat(1000))
}

/// Client `w`'s share when `total` rounds are spread over `c` clients.
fn share(total: usize, c: usize, w: usize) -> usize {
    total / c + usize::from(w < total % c)
}

/// Runs the clients together and gathers their per-round latencies;
/// `count` is the messages they send in all.
async fn run_clients<F>(count: usize, clients: Vec<F>) -> Run
where
    F: std::future::Future<Output = Vec<Duration>> + Send + 'static,
{
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in clients {
        tasks.spawn(c);
    }
    let mut lat = vec![];
    while let Some(l) = tasks.join_next().await {
        lat.extend(l.unwrap());
    }
    Run {
        count,
        elapsed: start.elapsed(),
        lat,
    }
}

/// `n` POSTs of `body` to `url` from `c` keep-alive clients.
async fn load(url: &str, body: &str, content_type: &str, n: usize, c: usize) -> Run {
    let body = Bytes::from(body.to_owned());
    let clients = (0..c)
        .map(|w| {
            let (url, body, ct) = (url.to_owned(), body.clone(), content_type.to_owned());
            let share = share(n, c, w);
            async move {
                let client = hyper_util::client::legacy::Client::builder(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .build_http::<Full<Bytes>>();
                let mut lat = Vec::with_capacity(share);
                for _ in 0..share {
                    let t = Instant::now();
                    let req = Request::post(&url)
                        .header("content-type", &ct)
                        .body(Full::new(body.clone()))
                        .unwrap();
                    let resp = client.request(req).await.expect("request");
                    let status = resp.status();
                    let text = resp.into_body().collect().await.unwrap().to_bytes();
                    assert!(
                        status.is_success(),
                        "{status}: {}",
                        String::from_utf8_lossy(&text[..text.len().min(300)])
                    );
                    lat.push(t.elapsed());
                }
                lat
            }
        })
        .collect();
    run_clients(n, clients).await
}

/// Publishes `n` 1 KiB events through Perch's bulk API, 100 per request from
/// 4 clients; `keys` spreads them over that many partition keys.
async fn backlog(sc: &Sidecar, topic: &str, n: usize, keys: Option<usize>) {
    let url = sc.url(&format!("/v1.0-alpha1/publish/bulk/pubsub/{topic}"));
    let chunks: Vec<usize> = (0..n).step_by(100).collect();
    let mut tasks = tokio::task::JoinSet::new();
    for part in chunks.chunks(chunks.len().div_ceil(4).max(1)) {
        let (url, part) = (url.clone(), part.to_vec());
        tasks.spawn(async move {
            for from in part {
                let entries: Vec<serde_json::Value> = (from..(from + 100).min(n))
                    .map(|i| {
                        let mut e = json!({"entryId": i.to_string(), "event": {"seq": i, "pad": "x".repeat(1000)}, "contentType": "application/json"});
                        if let Some(k) = keys {
                            e["metadata"] = json!({"partitionKey": format!("k{}", i % k)});
                        }
                        e
                    })
                    .collect();
                load(
                    &url,
                    &serde_json::Value::Array(entries).to_string(),
                    "application/json",
                    1,
                    1,
                )
                .await;
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
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
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<f64>().ok())
        .sum();
    (rss, ticks / 100.0)
}

/// The minimal app: acks every event (bulk: SUCCESS for every entry),
/// counts them, and records publish-to-receipt latency from `ts` in the
/// data. Requests wait while the gate is closed.
struct BenchApp {
    port: u16,
    state: Arc<AppState>,
    gate: watch::Sender<bool>,
}

struct AppState {
    /// Events acked.
    acked: AtomicU64,
    /// Requests that reached the app (held at the gate or not).
    arrived: AtomicU64,
    lat: Mutex<Vec<Duration>>,
    gate: watch::Receiver<bool>,
    delay: Duration,
}

impl BenchApp {
    async fn start(delay: Duration, open: bool) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (gate, gate_rx) = watch::channel(open);
        let state = Arc::new(AppState {
            acked: AtomicU64::new(0),
            arrived: AtomicU64::new(0),
            lat: Mutex::new(vec![]),
            gate: gate_rx,
            delay,
        });
        let st = state.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let st = st.clone();
                        async move { st.answer(req).await }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self { port, state, gate }
    }

    fn open(&self) {
        self.gate.send_replace(true);
    }

    fn acked(&self) -> usize {
        self.state.acked.load(Ordering::Relaxed) as usize
    }

    /// Waits until a request reached the app (the consumer is running).
    async fn wait_arrival(&self) {
        let start = Instant::now();
        while self.state.arrived.load(Ordering::Relaxed) == 0 {
            assert!(start.elapsed() < Duration::from_secs(60), "no delivery");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn take_latencies(&self) -> Vec<Duration> {
        std::mem::take(&mut *self.state.lat.lock().unwrap())
    }
}

impl AppState {
    async fn answer(
        &self,
        req: Request<hyper::body::Incoming>,
    ) -> Result<Response<Full<Bytes>>, Infallible> {
        let path = req.uri().path().to_owned();
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let reply = |status: u16, body: String| {
            Ok(Response::builder()
                .status(status)
                .body(Full::new(Bytes::from(body)))
                .unwrap())
        };
        if path == "/dapr/subscribe" {
            return reply(404, String::new());
        }
        self.arrived.fetch_add(1, Ordering::Relaxed);
        let _ = self.gate.clone().wait_for(|open| *open).await;
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        if path == "/bulk" {
            // As little work as the per-message answer: read the entry ids
            // only (the events are scanned, not built).
            #[derive(serde::Deserialize)]
            struct Entry {
                #[serde(rename = "entryId")]
                entry_id: String,
            }
            #[derive(serde::Deserialize)]
            struct Bulk {
                entries: Vec<Entry>,
            }
            let entries = serde_json::from_slice::<Bulk>(&body).unwrap().entries;
            let statuses: Vec<serde_json::Value> = entries
                .iter()
                .map(|e| json!({"entryId": e.entry_id, "status": "SUCCESS"}))
                .collect();
            self.acked
                .fetch_add(entries.len() as u64, Ordering::Relaxed);
            return reply(200, json!({ "statuses": statuses }).to_string());
        }
        if let Some(sent) = sent_at(&body) {
            let lat = Duration::from_micros(now_micros().saturating_sub(sent));
            self.lat.lock().unwrap().push(lat);
        }
        self.acked.fetch_add(1, Ordering::Relaxed);
        reply(200, String::new())
    }
}

/// The `"ts":N` send time in a delivered body.
fn sent_at(body: &[u8]) -> Option<u64> {
    let at = body.windows(5).position(|w| w == b"\"ts\":")? + 5;
    let digits: Vec<u8> = body[at..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .copied()
        .collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

/// The `pubsub` component for `backend`, with `md`.
fn pubsub_yaml(backend: Backend, bench: &Bench, md: &[(&str, &str)]) -> String {
    let mut md = md.to_vec();
    if backend == Backend::Memory {
        md.push(("maxMessages", "1000000"));
    }
    bench.pubsub(&md)
}

/// A running sidecar with its app and files.
struct Setup {
    app: BenchApp,
    sc: Sidecar,
    topic: String,
    _dir: tempfile::TempDir,
    _bench: Bench,
}

struct SetupOpts<'a> {
    md: &'a [(&'a str, &'a str)],
    bulk: bool,
    store: Option<&'a str>,
    delay: Duration,
    open: bool,
}

impl<'a> SetupOpts<'a> {
    /// Per-message, no store, an app that answers at once.
    fn new(md: &'a [(&'a str, &'a str)]) -> Self {
        Self {
            md,
            bulk: false,
            store: None,
            delay: Duration::ZERO,
            open: true,
        }
    }
}

async fn setup(backend: Backend, o: SetupOpts<'_>) -> Setup {
    let bench = Bench::new(backend);
    let app = BenchApp::start(o.delay, o.open).await;
    // One Kafka partition (the default): one ordering lane, as on the
    // RabbitMQ queue.
    let topic = bench.topic("bench");
    let mut files = vec![("pubsub.yaml".to_owned(), pubsub_yaml(backend, &bench, o.md))];
    files.push((
        "s.yaml".into(),
        if o.bulk {
            format!("apiVersion: dapr.io/v2alpha1\nkind: Subscription\nmetadata: {{name: s}}\nspec:\n  pubsubname: pubsub\n  topic: {topic}\n  bulkSubscribe: {{enabled: true, maxMessagesCount: 100, maxAwaitDurationMs: 50}}\n  routes: {{default: /bulk}}\n")
        } else {
            subscription("s", &topic, "/orders")
        },
    ));
    if let Some(s) = o.store {
        files.push(("store.yaml".into(), s.to_owned()));
    }
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let dir = resources(&refs);
    let sc = Sidecar::start(dir.path(), Some(app.port), &[], &["--log-level", "warn"]).await;
    Setup {
        app,
        sc,
        topic,
        _dir: dir,
        _bench: bench,
    }
}

/// What draining a backlog measured.
struct Drained {
    rate: f64,
    peak_rss_kib: u64,
    cpu_s: f64,
}

/// Fills the broker with `n` events, then times Perch delivering them all
/// to the app (`maxInFlight` 64, no ordering).
async fn drain(
    backend: Backend,
    n: usize,
    md: &[(&str, &str)],
    bulk: bool,
    store: Option<&str>,
) -> Drained {
    let mut all = vec![("deliveryOrder", "none"), ("maxInFlight", "64")];
    all.extend_from_slice(md);
    let s = setup(
        backend,
        SetupOpts {
            bulk,
            store,
            open: false,
            ..SetupOpts::new(&all)
        },
    )
    .await;
    backlog(&s.sc, &s.topic, n, None).await;
    s.app.wait_arrival().await;
    let pid = s.sc.child.id().unwrap();
    let (mut peak, cpu0) = proc_stats(pid);
    let start = Instant::now();
    s.app.open();
    while s.app.acked() < n {
        peak = peak.max(proc_stats(pid).0);
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "delivery stalled at {} of {n}",
            s.app.acked()
        );
    }
    let elapsed = start.elapsed();
    let (rss, cpu1) = proc_stats(pid);
    Drained {
        rate: n as f64 / elapsed.as_secs_f64(),
        peak_rss_kib: peak.max(rss),
        cpu_s: cpu1 - cpu0,
    }
}

/// Publish-to-app latency at a fixed `rate`, one POST per event.
async fn end_to_end(backend: Backend, rate: u32, n: usize) -> (f64, f64) {
    let s = setup(backend, SetupOpts::new(&[])).await;
    let url = s.sc.url(&format!("/v1.0/publish/pubsub/{}", s.topic));
    // Warm up until events flow (consumer joined, connections open).
    let warm = 20;
    for _ in 0..warm {
        load(&url, &payload(), "application/json", 1, 1).await;
    }
    while s.app.acked() < warm {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    s.app.take_latencies();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
    let mut sends = tokio::task::JoinSet::new();
    for _ in 0..n {
        tick.tick().await;
        let req = Request::post(&url)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(payload())))
            .unwrap();
        let client = client.clone();
        sends.spawn(async move {
            let resp = client.request(req).await.expect("publish");
            assert!(resp.status().is_success(), "{}", resp.status());
        });
    }
    while let Some(r) = sends.join_next().await {
        r.unwrap();
    }
    let start = Instant::now();
    while s.app.acked() < warm + n {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "delivery stalled"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let lat = s.app.take_latencies();
    (pct(&lat, 0.5), pct(&lat, 0.99))
}

/// The same load produced straight to Kafka with rdkafka: `requests` rounds
/// of `per_request` records (all sent, then all awaited) from `c` tasks.
async fn direct_kafka(
    topic: &str,
    body: &str,
    requests: usize,
    per_request: usize,
    c: usize,
) -> Run {
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
    let clients = (0..c)
        .map(|w| {
            let (p, t, b) = (producer.clone(), topic.to_owned(), body.to_owned());
            let share = share(requests, c, w);
            async move {
                let mut lat = vec![];
                for _ in 0..share {
                    let t0 = Instant::now();
                    let pending: Vec<_> = (0..per_request)
                        .map(|_| {
                            p.send_result(FutureRecord::<(), _>::to(&t).payload(&b))
                                .map_err(|(e, _)| e)
                                .expect("enqueue")
                        })
                        .collect();
                    for d in pending {
                        d.await.unwrap().map_err(|(e, _)| e).expect("produce");
                    }
                    lat.push(t0.elapsed());
                }
                lat
            }
        })
        .collect();
    run_clients(requests * per_request, clients).await
}

/// The same load published straight to RabbitMQ with lapin, persistent and
/// confirmed, one confirm channel per task, as Perch publishes.
async fn direct_rabbit(
    topic: &str,
    body: &str,
    requests: usize,
    per_request: usize,
    c: usize,
) -> Run {
    use lapin::options::ConfirmSelectOptions;
    let conn = lapin::Connection::connect(RABBIT_URI, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let mut clients = vec![];
    for w in 0..c {
        let ch = conn.create_channel().await.unwrap();
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        let (t, b) = (topic.to_owned(), body.to_owned());
        let share = share(requests, c, w);
        clients.push(async move {
            let mut lat = vec![];
            for _ in 0..share {
                let t0 = Instant::now();
                publish_confirmed(&ch, &t, "", &b, per_request).await;
                lat.push(t0.elapsed());
            }
            lat
        });
    }
    run_clients(requests * per_request, clients).await
}

/// Publishes `n` persistent copies of `body` on a confirm channel, then
/// awaits their confirms.
async fn publish_confirmed(
    ch: &lapin::Channel,
    exchange: &str,
    routing_key: &str,
    body: &str,
    n: usize,
) {
    let mut pending = Vec::with_capacity(n);
    for _ in 0..n {
        pending.push(
            ch.basic_publish(
                exchange.into(),
                routing_key.into(),
                lapin::options::BasicPublishOptions::default(),
                body.as_bytes(),
                lapin::BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap(),
        );
    }
    for p in pending {
        p.await.unwrap();
    }
}

/// RabbitMQ's own drain rate with no app in the way: lapin consumes a
/// backlog of `n` persistent 1 KiB messages from a durable queue with
/// prefetch 64, acknowledging each message (`every` = 1) or every `every`
/// messages at once (`multiple`).
async fn direct_rabbit_drain(n: usize, every: usize) -> f64 {
    use lapin::options::{
        BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions,
        QueueDeclareOptions, QueueDeleteOptions,
    };
    use lapin::types::FieldTable;
    let conn = lapin::Connection::connect(RABBIT_URI, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let queue = format!("bench-drain-{}", uuid::Uuid::new_v4().simple());
    let ch = conn.create_channel().await.unwrap();
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare(queue.as_str().into(), durable, FieldTable::default())
        .await
        .unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let body = payload();
    for chunk in 0..n.div_ceil(500) {
        publish_confirmed(&ch, "", &queue, &body, 500.min(n - chunk * 500)).await;
    }
    let consumer_ch = conn.create_channel().await.unwrap();
    consumer_ch
        .basic_qos(64, BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = consumer_ch
        .basic_consume(
            queue.as_str().into(),
            "drain".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let started = Instant::now();
    for got in 1..=n {
        let d = std::future::poll_fn(|cx| {
            futures_core::Stream::poll_next(std::pin::Pin::new(&mut consumer), cx)
        })
        .await
        .unwrap()
        .unwrap();
        if got % every == 0 || got == n {
            d.acker
                .ack(BasicAckOptions {
                    multiple: every > 1,
                })
                .await
                .unwrap();
        }
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    let _ = ch
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    rate
}

type Rows = Vec<[String; 5]>;

fn row(rows: &mut Rows, what: String, perch: String, base: String, ratio: String, note: String) {
    rows.push([what, perch, base, ratio, note]);
}

async fn publish_rows(b: Backend, s: &Sizes, rows: &mut Rows) {
    let bench = Bench::new(b);
    let dir = resources(&[("pubsub.yaml", &bench.pubsub(&[]))]);
    let sc = Sidecar::start(dir.path(), None, &[], &["--log-level", "warn"]).await;
    let topic = bench.topic("pub");
    let url = sc.url(&format!("/v1.0/publish/pubsub/{topic}"));
    let body = payload();
    // Warm up (topic creation, connections).
    load(&url, &body, "application/json", 20, 2).await;
    let c = s.concurrency;
    let pid = sc.child.id().unwrap();
    // Perch's CPU seconds per 10 000 messages over a run of `n`.
    let cpu_per_10k = |cpu0: f64, n: usize| (proc_stats(pid).1 - cpu0) * 10000.0 / n as f64;
    let cpu0 = proc_stats(pid).1;
    let perch = load(&url, &body, "application/json", s.publish, c).await;
    let cpu = cpu_per_10k(cpu0, s.publish);
    let direct = match b {
        Backend::Kafka => Some(direct_kafka(&topic, &body, s.publish, 1, c).await),
        Backend::Rabbit => Some(direct_rabbit(&topic, &body, s.publish, 1, c).await),
        Backend::Memory => None,
    };
    let (base, ratio, note) = match &direct {
        Some(d) => (
            format!("direct {}", d.summary("msgs")),
            format!("{:.2}x", perch.rate() / d.rate()),
            format!(
                "p99 added {:.2} ms; Perch {cpu:.2} CPU s per 10k",
                perch.pct(0.99) - d.pct(0.99)
            ),
        ),
        None => (
            "n/a (no external broker)".into(),
            "".into(),
            format!("Perch {cpu:.2} CPU s per 10k"),
        ),
    };
    row(
        rows,
        format!("publish {b:?}: 1 KiB, {c} clients, {} msgs", s.publish),
        perch.summary("msgs"),
        base,
        ratio,
        note,
    );
    // Bulk publish: 100 entries per request.
    let entries: Vec<serde_json::Value> = (0..100)
        .map(|i| json!({"entryId": i.to_string(), "event": {"pad": "x".repeat(1000)}, "contentType": "application/json"}))
        .collect();
    let bulk_url = sc.url(&format!("/v1.0-alpha1/publish/bulk/pubsub/{topic}"));
    let reqs = (s.publish * 2 / 100).max(c);
    let bulk_body = serde_json::Value::Array(entries).to_string();
    let cpu0 = proc_stats(pid).1;
    let bulk = load(&bulk_url, &bulk_body, "application/json", reqs, c).await;
    let bulk_cpu = cpu_per_10k(cpu0, reqs * 100);
    let bulk = Run {
        count: reqs * 100,
        ..bulk
    };
    let direct = match b {
        Backend::Kafka => Some(direct_kafka(&topic, &body, reqs, 100, c).await),
        Backend::Rabbit => Some(direct_rabbit(&topic, &body, reqs, 100, c).await),
        Backend::Memory => None,
    };
    let (base, ratio) = match &direct {
        Some(d) => (
            format!("direct, 100 sent then awaited: {}", d.summary("msgs")),
            format!("{:.2}x", bulk.rate() / d.rate()),
        ),
        None => ("n/a".into(), "".into()),
    };
    row(
        rows,
        format!("bulk publish {b:?}: 100 x 1 KiB per request, {c} clients, {reqs} requests"),
        format!("{} (per request)", bulk.summary("msgs")),
        base,
        ratio,
        format!(
            "{:.1}x single publish; Perch {bulk_cpu:.2} CPU s per 10k",
            bulk.rate() / perch.rate()
        ),
    );
}

/// Messages/s draining a one-partition backlog of `n` (20 keys) through an
/// app that takes 5 ms per event.
async fn ordered(order: &str, n: usize) -> f64 {
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

/// RSS sampled over a sustained publish-and-deliver run on RabbitMQ.
async fn soak(s: &Sizes, rows: &mut Rows) -> u64 {
    let st = setup(
        Backend::Rabbit,
        SetupOpts::new(&[("deliveryOrder", "none"), ("maxInFlight", "64")]),
    )
    .await;
    let url = st.sc.url(&format!("/v1.0/publish/pubsub/{}", st.topic));
    let pid = st.sc.child.id().unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients = 8;
    let mut pubs = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (url, stop) = (url.clone(), stop.clone());
        pubs.spawn(async move {
            let mut sent = 0;
            while !stop.load(Ordering::Relaxed) {
                load(&url, &payload(), "application/json", 50, 1).await;
                sent += 50;
            }
            sent
        });
    }
    let samples = 10;
    let mut rss = vec![];
    let (_, cpu0) = proc_stats(pid);
    for _ in 0..samples {
        tokio::time::sleep(s.soak / samples).await;
        rss.push(proc_stats(pid).0);
    }
    stop.store(true, Ordering::Relaxed);
    let mut sent = 0;
    while let Some(n) = pubs.join_next().await {
        sent += n.unwrap();
    }
    let (_, cpu1) = proc_stats(pid);
    let (lo, hi) = (*rss.iter().min().unwrap(), *rss.iter().max().unwrap());
    row(
        rows,
        format!(
            "RSS over {} s sustained RabbitMQ publish + delivery, 1 KiB, {clients} clients, every {} s",
            s.soak.as_secs(),
            (s.soak / samples).as_secs_f64()
        ),
        rss.iter()
            .map(|k| format!("{:.1}", *k as f64 / 1024.0))
            .collect::<Vec<_>>()
            .join(", ")
            + " MiB",
        "".into(),
        "".into(),
        format!(
            "{sent} published, {} delivered; spread {:.1} MiB; {:.2} CPU s per 10k (publish + delivery)",
            st.app.acked(),
            (hi - lo) as f64 / 1024.0,
            (cpu1 - cpu0) * 10000.0 / (sent + st.app.acked()).max(1) as f64 * 2.0
        ),
    );
    hi
}

#[tokio::main]
async fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let only = std::env::var("PERCH_BENCH_ONLY").unwrap_or_default();
    let want = |section: &str| only.is_empty() || only.split(',').any(|s| s == section);
    let soak_secs = std::env::var("PERCH_BENCH_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if full { 60 } else { 3 });
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
    let backends: Vec<Backend> = [Backend::Memory, Backend::Kafka, Backend::Rabbit]
        .into_iter()
        .filter(|b| broker(&format!("{b:?}")))
        .collect();
    let mut rows: Rows = vec![];
    let mut peak_rss = 0;
    if want("publish") {
        for &b in &backends {
            publish_rows(b, &s, &mut rows).await;
        }
    }
    if want("deliver") {
        let app = BenchApp::start(Duration::ZERO, true).await;
        let ce = json!({"specversion": "1.0", "id": "x", "source": "s", "type": "t", "datacontenttype": "application/json", "data": {"pad": "x".repeat(1000)}}).to_string();
        let url = format!("http://127.0.0.1:{}/orders", app.port);
        let cap = load(&url, &ce, "application/cloudevents+json", s.deliver, 16).await;
        row(
            &mut rows,
            format!(
                "app capacity: the load generator straight at the app, 1 KiB CloudEvents, 16 clients, {} requests",
                s.deliver
            ),
            "".into(),
            cap.summary("req"),
            "".into(),
            "".into(),
        );
        for &t in &backends {
            let n = s.deliver;
            let one = drain(t, n, &[], false, None).await;
            let bulk = drain(t, n, &[], true, None).await;
            peak_rss = peak_rss.max(one.peak_rss_kib).max(bulk.peak_rss_kib);
            row(
                &mut rows,
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
            if t == Backend::Rabbit {
                // The broker's own ceiling, with no HTTP and no app.
                let each = direct_rabbit_drain(n, 1).await;
                let batched = direct_rabbit_drain(n, 32).await;
                row(
                    &mut rows,
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
            }
        }
    }
    if want("latency") {
        for &t in &backends {
            let (rate, msgs) = (s.latency_rate, s.latency_msgs);
            let (p50, p99) = end_to_end(t, rate, msgs).await;
            row(
                &mut rows,
                format!("end to end {t:?}: publish POST to app receipt, {rate}/s, {msgs} x 1 KiB"),
                format!("p50 {p50:.2} ms, p99 {p99:.2} ms"),
                "".into(),
                "".into(),
                "".into(),
            );
        }
    }
    if want("idempotency") {
        for b in [Backend::Memory, Backend::Rabbit] {
            if !backends.contains(&b) {
                continue;
            }
            let pg = PgStore::new();
            // Default leases (5 m), durable commits; then the same with
            // synchronous_commit off through the connection string.
            let store = pg.yaml("inbox").replace("value: 3s", "value: 5m");
            let lazy = store.replace(PG, &format!("{PG}?options=-c%20synchronous_commit%3Doff"));
            let off = drain(b, s.deliver, &[], false, None).await;
            let inbox = [("idempotencyStore", "inbox")];
            let on = drain(b, s.deliver, &inbox, false, Some(&store)).await;
            let on_lazy = drain(b, s.deliver, &inbox, false, Some(&lazy)).await;
            row(
                &mut rows,
                format!(
                    "idempotency {b:?}: store.postgresql on vs off, backlog of {} x 1 KiB, maxInFlight 64",
                    s.deliver
                ),
                format!(
                    "{:.0}/s; synchronous_commit off {:.0}/s",
                    on.rate, on_lazy.rate
                ),
                format!("off {:.0}/s", off.rate),
                format!(
                    "{:.2}x; synchronous_commit off {:.2}x",
                    on.rate / off.rate,
                    on_lazy.rate / off.rate
                ),
                format!(
                    "CPU s per 10k: {:.2} on, {:.2} off",
                    on.cpu_s * 10000.0 / s.deliver as f64,
                    off.cpu_s * 10000.0 / s.deliver as f64
                ),
            );
        }
    }
    if want("ordering") {
        let mut modes = vec![];
        for order in ["partition", "key", "none"] {
            modes.push((order, ordered(order, s.ordered).await));
        }
        row(
            &mut rows,
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
    }
    if want("memory") {
        let soak_peak = soak(&s, &mut rows).await;
        peak_rss = peak_rss.max(soak_peak);
        let dir = resources(&[("pubsub.yaml", PUBSUB)]);
        let idle = Sidecar::start(dir.path(), None, &[], &["--log-level", "warn"]).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (idle_rss, _) = proc_stats(idle.child.id().unwrap());
        row(
            &mut rows,
            "RSS of the perch process".into(),
            format!(
                "idle {:.1} MiB, peak {:.1} MiB",
                idle_rss as f64 / 1024.0,
                peak_rss as f64 / 1024.0
            ),
            "".into(),
            "".into(),
            "peak over every run above".into(),
        );
    }

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
