//! Publish through Perch against the direct client, per message and bulk.

use crate::*;

pub(crate) async fn publish_rows(b: Backend, s: &Sizes, rows: &mut Rows) {
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
        Backend::Redis => Some(direct_redis(&topic, &body, s.publish, 1, c).await),
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
    // The same publishes over Dapr's gRPC API, as the Python, Go, Java and
    // .NET SDK clients make them.
    let cpu0 = proc_stats(pid).1;
    let grpc = load_grpc(sc.grpc_port, &topic, &body, s.publish, c, 1).await;
    let grpc_cpu = cpu_per_10k(cpu0, s.publish);
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
            vs_direct(&grpc, direct.as_ref())
        ),
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
    let grpc_bulk_cpu = cpu_per_10k(cpu0, reqs * 100);
    let grpc_bulk = Run {
        count: reqs * 100,
        ..grpc_bulk
    };
    let direct = match b {
        Backend::Kafka => Some(direct_kafka(&topic, &body, reqs, 100, c).await),
        Backend::Rabbit => Some(direct_rabbit(&topic, &body, reqs, 100, c).await),
        Backend::Redis => Some(direct_redis(&topic, &body, reqs, 100, c).await),
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
    row(
        rows,
        format!(
            "gRPC BulkPublishEvent {b:?}: 100 x 1 KiB per request, {c} clients, {reqs} requests"
        ),
        format!("{} (per request)", grpc_bulk.summary("msgs")),
        format!("HTTP bulk publish {}", bulk.summary("msgs")),
        format!("{:.2}x", grpc_bulk.rate() / bulk.rate()),
        format!(
            "{}Perch {grpc_bulk_cpu:.2} CPU s per 10k",
            vs_direct(&grpc_bulk, direct.as_ref())
        ),
    );
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
