//! Publish through Perch against the direct client, per message and bulk,
//! over HTTP and gRPC (and through the peer, with `PERCH_BENCH_PEER`).

use crate::*;

/// One sidecar's publish runs: HTTP single, gRPC single, HTTP bulk and
/// gRPC bulk, each with the sidecar's CPU seconds per 10k messages.
struct Publishes {
    topic: String,
    http: (Run, f64),
    grpc: (Run, f64),
    bulk: (Run, f64),
    grpc_bulk: (Run, f64),
    /// Bulk requests sent.
    reqs: usize,
    peak_rss_kib: u64,
    /// Kept until the direct runs are done: they publish to the topic
    /// (on RabbitMQ, the exchange) the sidecar created.
    _bench: Bench,
}

impl Publishes {
    fn measure(run: &(Run, f64), peak: u64) -> Measure {
        Measure {
            rate: Some(run.0.rate()),
            p50_ms: Some(run.0.pct(0.5)),
            p99_ms: Some(run.0.pct(0.99)),
            cpu_per_10k: Some(run.1),
            rss_peak_kib: Some(peak),
            ..Measure::default()
        }
    }
}

/// The four publish runs through the sidecar of this measurement.
async fn publishes(b: Backend, s: &Sizes) -> Publishes {
    let bench = Bench::new(b);
    let dir = resources(&[("pubsub.yaml", &bench.pubsub(&[]))]);
    let sc = start_sc(dir.path(), None).await;
    let topic = bench.topic("pub");
    let url = sc.url(&format!("/v1.0/publish/pubsub/{topic}"));
    let body = payload();
    // Warm up (topic creation, connections).
    load(&url, &body, "application/json", 20, 2).await;
    let c = s.concurrency;
    let pid = sc.child.id().unwrap();
    // The sidecar's CPU seconds per 10 000 messages over a run of `n`.
    let cpu_per_10k = |cpu0: f64, n: usize| (proc_stats(pid).1 - cpu0) * 10000.0 / n as f64;
    // Profiling (PERCH_BENCH_PERF): 20 times the publishes, so that perf
    // has enough samples; the rows of such a run are not for the table.
    let n = if std::env::var_os("PERCH_BENCH_PERF").is_some() {
        s.publish * 20
    } else {
        s.publish
    };
    let perf = perf_record(pid, &format!("{b:?}-publish-http")).await;
    let cpu0 = proc_stats(pid).1;
    let http = load(&url, &body, "application/json", n, c).await;
    let http = (http, cpu_per_10k(cpu0, n));
    perf_stop(perf);
    // The same publishes over Dapr's gRPC API, as the Python, Go, Java and
    // .NET SDK clients make them.
    let perf = perf_record(pid, &format!("{b:?}-publish-grpc")).await;
    let cpu0 = proc_stats(pid).1;
    let grpc = load_grpc(sc.grpc_port, &topic, &body, n, c, 1).await;
    let grpc = (grpc, cpu_per_10k(cpu0, n));
    perf_stop(perf);
    // Bulk publish: 100 entries per request.
    let entries: Vec<serde_json::Value> = (0..100)
        .map(|i| json!({"entryId": i.to_string(), "event": {"pad": "x".repeat(1000)}, "contentType": "application/json"}))
        .collect();
    let bulk_url = sc.url(&format!("/v1.0-alpha1/publish/bulk/pubsub/{topic}"));
    let reqs = (s.publish * 2 / 100).max(c);
    let bulk_body = serde_json::Value::Array(entries).to_string();
    let cpu0 = proc_stats(pid).1;
    let bulk = load(&bulk_url, &bulk_body, "application/json", reqs, c).await;
    let bulk = (
        Run {
            count: reqs * 100,
            ..bulk
        },
        cpu_per_10k(cpu0, reqs * 100),
    );
    // The same over gRPC's BulkPublishEvent.
    let cpu0 = proc_stats(pid).1;
    let grpc_bulk = load_grpc(
        sc.grpc_port,
        &topic,
        &json!({"pad": "x".repeat(1000)}).to_string(),
        reqs,
        c,
        100,
    )
    .await;
    let grpc_bulk = (
        Run {
            count: reqs * 100,
            ..grpc_bulk
        },
        cpu_per_10k(cpu0, reqs * 100),
    );
    Publishes {
        peak_rss_kib: proc_stats(pid).0,
        topic,
        http,
        grpc,
        bulk,
        grpc_bulk,
        reqs,
        _bench: bench,
    }
}

pub(crate) async fn publish_rows(b: Backend, s: &Sizes, rows: &mut Rows) {
    let (p, peer) = both(|| publishes(b, s)).await;
    let c = s.concurrency;
    let body = payload();
    let peer_of = |pick: fn(&Publishes) -> &(Run, f64)| {
        peer.as_ref()
            .map(|q| Publishes::measure(pick(q), q.peak_rss_kib))
    };
    let cell = |pick: fn(&Publishes) -> &(Run, f64)| {
        peer_text(
            &Publishes::measure(pick(&p), p.peak_rss_kib),
            peer_of(pick).as_ref(),
        )
    };
    let (perch, cpu) = (&p.http.0, p.http.1);
    let direct = match b {
        Backend::Kafka => Some(direct_kafka(&p.topic, &body, s.publish, 1, c).await),
        Backend::Rabbit => Some(direct_rabbit(&p.topic, &body, s.publish, 1, c).await),
        Backend::Redis => Some(direct_redis(&p.topic, &body, s.publish, 1, c).await),
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
    peer_cell(rows, cell(|p| &p.http));
    let (grpc, grpc_cpu) = (&p.grpc.0, p.grpc.1);
    row(
        rows,
        format!(
            "gRPC PublishEvent {b:?}: 1 KiB, {c} clients, {} msgs",
            s.publish
        ),
        grpc.summary("msgs"),
        format!("HTTP publish {}", perch.summary("msgs")),
        format!("{:.2}x", grpc.rate() / perch.rate()),
        format!(
            "{}Perch {grpc_cpu:.2} CPU s per 10k",
            vs_direct(grpc, direct.as_ref())
        ),
    );
    peer_cell(rows, cell(|p| &p.grpc));
    let reqs = p.reqs;
    let direct = match b {
        Backend::Kafka => Some(direct_kafka(&p.topic, &body, reqs, 100, c).await),
        Backend::Rabbit => Some(direct_rabbit(&p.topic, &body, reqs, 100, c).await),
        Backend::Redis => Some(direct_redis(&p.topic, &body, reqs, 100, c).await),
        Backend::Memory => None,
    };
    let (bulk, bulk_cpu) = (&p.bulk.0, p.bulk.1);
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
    peer_cell(rows, cell(|p| &p.bulk));
    let (grpc_bulk, grpc_bulk_cpu) = (&p.grpc_bulk.0, p.grpc_bulk.1);
    row(
        rows,
        format!(
            "gRPC BulkPublishEventAlpha1 {b:?}: 100 x 1 KiB per request, {c} clients, {reqs} requests"
        ),
        format!("{} (per request)", grpc_bulk.summary("msgs")),
        format!("HTTP bulk publish {}", bulk.summary("msgs")),
        format!("{:.2}x", grpc_bulk.rate() / bulk.rate()),
        format!(
            "{}Perch {grpc_bulk_cpu:.2} CPU s per 10k",
            vs_direct(grpc_bulk, direct.as_ref())
        ),
    );
    peer_cell(rows, cell(|p| &p.grpc_bulk));
}

/// "`x`x direct; " when there is a direct client to compare with.
fn vs_direct(perch: &Run, direct: Option<&Run>) -> String {
    direct.map_or(String::new(), |d| {
        format!("{:.2}x direct; ", perch.rate() / d.rate())
    })
}

pub(crate) async fn run(backends: &[Backend], s: &Sizes, rows: &mut Rows) {
    for &b in backends {
        publish_rows(b, s, rows).await;
    }
}
