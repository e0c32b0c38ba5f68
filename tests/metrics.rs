//! Telemetry: `/metrics` after a known workload (exact counters and Dapr's
//! labels), the lag endpoint against a known backlog on Kafka and RabbitMQ,
//! and the dashboard and alert rules referring only to metrics that exist.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::json;

const STORE: &str = "apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: inbox}
spec:
  type: store.in-memory
  version: v1
";

const QUICK: &str = "apiVersion: dapr.io/v1alpha1
kind: Resiliency
metadata: {name: r}
spec:
  policies:
    retries:
      quick: {policy: constant, duration: 50ms, maxRetries: 3}
  targets:
    components:
      pubsub:
        inbound: {retry: quick}
";

/// Runs the workload and returns the sidecar (still running) for scraping.
async fn workload() -> Result<Sidecar, Box<dyn std::error::Error>> {
    let pubsub = component(
        "pubsub",
        &[("idempotencyStore", "inbox"), ("outboxStore", "inbox")],
    );
    let dir = resources(&[
        ("pubsub.yaml", &pubsub),
        ("store.yaml", STORE),
        ("r.yaml", QUICK),
        ("s.yaml", &subscription("s", "orders", "/orders")),
        (
            "bulk.yaml",
            "apiVersion: dapr.io/v2alpha1
kind: Subscription
metadata: {name: bulk}
spec:
  pubsubname: pubsub
  topic: bulk
  bulkSubscribe: {enabled: true, maxMessagesCount: 10, maxAwaitDurationMs: 100}
  routes: {default: /bulk}
",
        ),
    ]);
    let retried = Arc::new(AtomicUsize::new(0));
    let r2 = retried.clone();
    let mut app = TestApp::start(
        None,
        Arc::new(move |r| {
            if r.path == "/bulk" {
                return (200, bulk_success(r));
            }
            match r.json()["data"]["kind"].as_str().unwrap_or("") {
                "retry-once" if r2.fetch_add(1, Ordering::SeqCst) == 0 => {
                    (200, r#"{"status":"RETRY"}"#.into())
                }
                "drop" => (200, r#"{"status":"DROP"}"#.into()),
                "gone" => (404, String::new()),
                _ => (200, String::new()),
            }
        }),
    )
    .await;
    let sc = Sidecar::start(dir.path(), Some(app.port), &[], &[]).await;
    for kind in ["ok", "ok", "ok", "retry-once", "drop", "gone"] {
        let body = json!({ "kind": kind }).to_string();
        assert_eq!(sc.publish_json("pubsub/orders", &body).await, 204);
    }
    // The same CloudEvent twice: delivered once.
    let ce = json!({"specversion": "1.0", "source": "s", "id": "same", "type": "t", "data": {"kind": "ok"}});
    for _ in 0..2 {
        let (status, _, _) = sc
            .call(
                "POST",
                "/v1.0/publish/pubsub/orders",
                &[("content-type", "application/cloudevents+json")],
                &ce.to_string(),
            )
            .await?;
        assert_eq!(status, 204);
    }
    assert_eq!(sc.publish_json("nowhere/orders", "{}").await, 404);
    let (status, _, _) = sc
        .call(
            "POST",
            "/v1.0-alpha1/publish/bulk/pubsub/bulk",
            &[("content-type", "application/json")],
            r#"[{"entryId":"1","event":{"kind":"bulk"},"contentType":"application/json"}]"#,
        )
        .await?;
    assert_eq!(status, 204);
    // ok x3, retry-once x2, drop, gone, the CloudEvent once, one bulk call.
    for _ in 0..9 {
        app.next(10).await?;
    }
    if let Ok(r) = app.next(1).await {
        panic!(
            "the duplicate was not to be delivered: {} {}",
            r.path,
            String::from_utf8_lossy(&r.body)
        );
    }
    Ok(sc)
}

#[tokio::test]
async fn a_known_workload_gives_exact_counters_with_dapr_labels() -> TestResult {
    let sc = workload().await?;
    // Counters are recorded once the sidecar has the app's answer (after
    // the app saw the request): wait for the last ones of the workload.
    let perch = [("pubsub", "pubsub"), ("topic", "orders")];
    assert_eq!(
        sc.metric_reaches("perch_dead_lettered_total", &perch, 2.0)
            .await,
        Some(2.0)
    );
    let successes = [
        ("topic", "orders"),
        ("process_status", "success"),
        ("status", "success"),
    ];
    assert_eq!(
        sc.metric_reaches("dapr_component_pubsub_ingress_count", &successes, 5.0)
            .await,
        Some(5.0)
    );
    let base = [
        ("app_id", "test-app"),
        ("component", "pubsub"),
        ("topic", "orders"),
    ];
    let with = |extra: &[(&'static str, &'static str)]| -> Vec<(&str, &str)> {
        base.iter().chain(extra).copied().collect()
    };
    let ingress = "dapr_component_pubsub_ingress_count";
    let m = |name: &'static str, labels: Vec<(&'static str, &'static str)>| {
        let sc = &sc;
        async move { sc.metric(name, &labels).await }
    };
    assert_eq!(
        m(
            "dapr_component_pubsub_egress_count",
            with(&[("success", "true")])
        )
        .await,
        Some(8.0),
        "six publishes and the CloudEvent twice"
    );
    assert_eq!(
        m(
            ingress,
            with(&[("process_status", "success"), ("status", "success")])
        )
        .await,
        Some(5.0)
    );
    assert_eq!(
        m(
            ingress,
            with(&[("process_status", "retry"), ("status", "retry")])
        )
        .await,
        Some(1.0)
    );
    assert_eq!(
        m(
            ingress,
            with(&[("process_status", "drop"), ("status", "success")])
        )
        .await,
        Some(1.0),
        "an app DROP"
    );
    assert_eq!(
        m(
            ingress,
            with(&[("process_status", "drop"), ("status", "drop")])
        )
        .await,
        Some(1.0),
        "a 404"
    );
    let perch = [("pubsub", "pubsub"), ("topic", "orders")];
    assert_eq!(
        sc.metric("perch_redeliveries_total", &perch).await,
        Some(1.0)
    );
    assert_eq!(
        sc.metric("perch_duplicates_suppressed_total", &perch).await,
        Some(1.0)
    );
    assert_eq!(
        sc.metric("perch_dead_lettered_total", &perch).await,
        Some(2.0)
    );
    assert_eq!(sc.metric("perch_inflight", &perch).await, Some(0.0));
    assert_eq!(
        sc.metric(
            "dapr_error_code_total",
            &[
                ("category", "pubsub"),
                ("error_code", "ERR_PUBSUB_NOT_FOUND")
            ]
        )
        .await,
        Some(1.0)
    );
    assert_eq!(
        sc.metric(
            "dapr_runtime_component_loaded",
            &[("component", "pubsub"), ("type", "pubsub.in-memory")]
        )
        .await,
        Some(1.0)
    );
    assert_eq!(
        sc.metric("perch_app_latency_seconds_count", &perch).await,
        Some(8.0),
        "one observation per app call"
    );
    assert_eq!(
        sc.metric(
            "perch_store_latency_seconds_count",
            &[("store", "inbox"), ("op", "finish")]
        )
        .await,
        Some(8.0),
        "seven distinct events marked (done or dead), and the bulk entry's batch marked in one write"
    );
    assert_eq!(
        sc.metric(
            "dapr_component_pubsub_ingress_bulk_count",
            &[
                ("component", "pubsubName"),
                ("topic", "bulk"),
                ("process_status", "success")
            ]
        )
        .await,
        Some(1.0),
        "Dapr's literal pubsubName label"
    );
    assert_eq!(
        sc.metric(
            "dapr_component_pubsub_egress_bulk_count",
            &[("topic", "bulk"), ("success", "true")]
        )
        .await,
        Some(1.0)
    );
    Ok(())
}

/// Every `dapr_*` / `perch_*` name in the dashboard and the alert rules is
/// a metric the sidecar exposes.
#[tokio::test]
async fn dashboard_and_alerts_parse_and_name_only_real_metrics() -> TestResult {
    let root = env!("CARGO_MANIFEST_DIR");
    let dashboard = std::fs::read_to_string(format!("{root}/k8s/monitoring/perch-dashboard.json"))?;
    let alerts = std::fs::read_to_string(format!("{root}/k8s/monitoring/perch-alerts.yaml"))?;
    let dash: serde_json::Value = serde_json::from_str(&dashboard)?;
    let rules: serde_yaml::Value = serde_yaml::from_str(&alerts)?;
    let mut exprs: Vec<String> = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .map(|t| t["expr"].as_str().unwrap().to_owned())
        .collect();
    for group in rules["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            exprs.push(rule["expr"].as_str().unwrap().to_owned());
        }
    }
    assert!(exprs.len() >= 15);
    let sc = workload().await?;
    // Gauges are set by a refresh every 5 s: wait for the lag gauge.
    sc.metric_reaches("perch_consumer_lag", &[("topic", "orders")], 0.0)
        .await
        .expect("perch_consumer_lag is exposed");
    let scrape = sc.scrape().await;
    let exposed: BTreeSet<&str> = scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let re = regex::Regex::new(r"\b(?:dapr|perch)_[a-z0-9_]+").unwrap();
    for expr in &exprs {
        for name in re.find_iter(expr).map(|m| m.as_str()) {
            assert!(
                exposed.contains(name),
                "{name} (in {expr:?}) is not exposed"
            );
        }
    }
    Ok(())
}

/// The lag as KEDA's `metrics-api` scaler reads it: on the public port.
async fn lag_of(
    sc: &Sidecar,
    topic: &str,
) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    let (status, _, body) = sc
        .call_public(
            "GET",
            &format!("/v1.0-alpha1/lag?pubsub=pubsub&topic={topic}"),
            &[],
        )
        .await?;
    assert_eq!(status, 200);
    Ok(serde_json::from_slice(&body)?)
}

/// The public port serves health, outbound health and the lag (with the
/// API token when one is set), and nothing else: the kubelet and KEDA
/// reach it while the API stays on loopback.
#[tokio::test]
async fn the_public_port_serves_health_and_lag_only() -> TestResult {
    let dir = resources(&[
        ("pubsub.yaml", PUBSUB),
        ("s.yaml", &subscription("s", "orders", "/orders")),
    ]);
    let _app = TestApp::ok(None).await;
    let token = [("dapr-api-token", "secret")];
    let sc = Sidecar::start(
        dir.path(),
        Some(_app.port),
        &[("DAPR_API_TOKEN", "secret")],
        &[],
    )
    .await;
    let lag = "/v1.0-alpha1/lag?pubsub=pubsub&topic=orders";
    for (method, path, headers, want) in [
        ("GET", "/v1.0/healthz", &[][..], 204),
        ("GET", "/v1.0/healthz/outbound", &[], 204),
        ("GET", lag, &[], 401),
        ("GET", lag, &token, 200),
        ("GET", "/v1.0/metadata", &token, 404),
        ("POST", "/v1.0/publish/pubsub/orders", &token, 404),
        ("POST", "/v1.0/shutdown", &token, 404),
        ("POST", "/v1.0/healthz", &token, 404),
    ] {
        let (status, _, body) = sc.call_public(method, path, headers).await?;
        assert_eq!(
            status,
            want,
            "{method} {path}: {}",
            String::from_utf8_lossy(&body)
        );
        if status == 200 {
            let v: serde_json::Value = serde_json::from_slice(&body)?;
            assert!(
                v["lag"].is_i64(),
                "a numeric top-level lag (KEDA valueLocation: lag): {v}"
            );
        }
    }
    // The API itself is still there, on its own port.
    let (status, _, _) = sc.call("GET", "/v1.0/metadata", &token, "").await?;
    assert_eq!(status, 200);
    Ok(())
}

/// A backlog of 6 with an app that never answers and a window of 1.
async fn known_backlog(backend: Backend) -> TestResult {
    let b = Bench::new(backend);
    let dir = resources(&[
        (
            "pubsub.yaml",
            &b.pubsub(&[("maxInFlight", "1"), ("deliveryOrder", "none")]),
        ),
        ("s.yaml", &b.subscription("s", "lag", "/lag")),
    ]);
    let mut app = TestApp::start(None, Arc::new(|_| (0, String::new()))).await;
    let sc = Sidecar::start(dir.path(), Some(app.port), &[], &[]).await;
    let topic = b.topic("lag");
    for n in 0..6 {
        assert_eq!(
            sc.publish_json(&format!("pubsub/{topic}"), &format!(r#"{{"n":{n}}}"#))
                .await,
            204
        );
    }
    app.next(30).await?;
    // Kafka counts what the group has not committed (all 6), Redis what
    // the group has not acked (1 pending, 5 unread); RabbitMQ the queue
    // depth (5 ready, 1 out unacknowledged).
    let expected = if backend == Backend::Rabbit { 5 } else { 6 };
    let mut lag = serde_json::Value::Null;
    for _ in 0..50 {
        lag = lag_of(&sc, &topic).await?;
        if lag["lag"] == expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(lag["lag"], expected, "{lag}");
    assert_eq!(lag["partitions"].as_array().unwrap().len(), 1);
    let mut gauge = None;
    for _ in 0..40 {
        gauge = sc
            .metric(
                "perch_consumer_lag",
                &[("pubsub", "pubsub"), ("topic", &topic)],
            )
            .await;
        if gauge == Some(f64::from(expected)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(gauge, Some(f64::from(expected)), "perch_consumer_lag");
    Ok(())
}

#[tokio::test]
async fn lag_matches_a_known_backlog_on_kafka() -> TestResult {
    known_backlog(Backend::Kafka).await
}

#[tokio::test]
async fn lag_matches_a_known_backlog_on_rabbitmq() -> TestResult {
    known_backlog(Backend::Rabbit).await
}

#[tokio::test]
async fn lag_matches_a_known_backlog_on_redis() -> TestResult {
    known_backlog(Backend::Redis).await
}
