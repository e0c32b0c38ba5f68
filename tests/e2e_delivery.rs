//! Delivery on the in-memory broker through the real binary: the app's
//! answers read as Dapr reads them, dead letters, and graceful shutdown.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::*;
use serde_json::json;

fn dlq_subscribe(route: &str, topic: &str) -> serde_json::Value {
    json!([
        {"pubsubname": "pubsub", "topic": "orders", "route": route},
        {"pubsubname": "pubsub", "topic": topic, "route": "/dead"}
    ])
}

#[tokio::test]
async fn drop_and_404_go_to_the_default_dead_letter_topic() -> TestResult {
    let dir = resources(&[("pubsub.yaml", PUBSUB)]);
    let mut app = TestApp::start(
        Some(dlq_subscribe("/orders", "orders.dlq")),
        Arc::new(
            |r| match (r.path.as_str(), r.json()["data"]["how"].as_str()) {
                ("/orders", Some("drop")) => (200, r#"{"status":"DROP"}"#.into()),
                ("/orders", _) => (404, String::new()),
                _ => (200, String::new()),
            },
        ),
    )
    .await;
    let sc = Sidecar::start(dir.path(), Some(app.port), &[], &[]).await;
    assert_eq!(
        sc.publish_json("pubsub/orders", r#"{"how":"drop"}"#).await,
        204
    );
    assert_eq!(
        sc.publish_json("pubsub/orders", r#"{"how":"missing"}"#)
            .await,
        204
    );
    let mut dead = vec![];
    while dead.len() < 2 {
        let r = app.next(10).await?;
        if r.path == "/dead" {
            let ev = r.json();
            assert_eq!(
                ev["topic"], "orders",
                "the original message is dead-lettered unchanged"
            );
            dead.push(ev["data"]["how"].as_str().unwrap().to_owned());
        }
    }
    dead.sort();
    assert_eq!(dead, ["drop", "missing"]);
    Ok(())
}

#[tokio::test]
async fn retry_then_success_is_delivered_again_then_acked() -> TestResult {
    let dir = resources(&[
        ("pubsub.yaml", PUBSUB),
        ("s.yaml", &subscription("s", "orders", "/orders")),
    ]);
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let mut app = TestApp::start(
        None,
        Arc::new(move |_| {
            if c.fetch_add(1, Ordering::SeqCst) == 0 {
                (200, r#"{"status":"RETRY"}"#.into())
            } else {
                (200, r#"{"status":"SUCCESS"}"#.into())
            }
        }),
    )
    .await;
    let sc = Sidecar::start(dir.path(), Some(app.port), &[], &[]).await;
    assert_eq!(sc.publish_json("pubsub/orders", r#"{"n":1}"#).await, 204);
    let first = app.next(10).await?.json();
    let second = app.next(10).await?.json();
    assert_eq!(first["id"], second["id"], "the same event is redelivered");
    assert!(
        app.next(3).await.is_err(),
        "acked after SUCCESS: no third delivery"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    Ok(())
}

#[tokio::test]
async fn dead_letters_can_be_disabled_and_then_drop_acks() -> TestResult {
    let pubsub = component("pubsub", &[("deadLetterDefault", "none")]);
    let dir = resources(&[("pubsub.yaml", &pubsub)]);
    let mut app = TestApp::start(
        Some(dlq_subscribe("/orders", "orders.dlq")),
        Arc::new(|_| (200, r#"{"status":"DROP"}"#.into())),
    )
    .await;
    let sc = Sidecar::start(dir.path(), Some(app.port), &[], &[]).await;
    assert_eq!(sc.publish_json("pubsub/orders", "{}").await, 204);
    assert_eq!(app.next(10).await?.path, "/orders");
    assert!(
        app.next(3).await.is_err(),
        "dropped: neither redelivered nor dead-lettered"
    );
    Ok(())
}

#[tokio::test]
async fn sigterm_and_shutdown_api_exit_cleanly() -> TestResult {
    let dir = resources(&[("pubsub.yaml", PUBSUB)]);
    let mut sc = Sidecar::start(dir.path(), None, &[], &[]).await;
    let pid = sc.child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()?
        .success());
    let status =
        tokio::time::timeout(std::time::Duration::from_secs(10), sc.child.wait()).await??;
    assert!(status.success(), "{status}");

    let mut sc = Sidecar::start(dir.path(), None, &[], &[]).await;
    assert_eq!(sc.call("POST", "/v1.0/shutdown", &[], "").await?.0, 204);
    let status =
        tokio::time::timeout(std::time::Duration::from_secs(10), sc.child.wait()).await??;
    assert!(status.success(), "{status}");
    Ok(())
}

#[tokio::test]
async fn not_ready_until_the_app_answers_but_outbound_is() -> TestResult {
    let dir = resources(&[("pubsub.yaml", PUBSUB)]);
    let port = free_port();
    let closed_app_port = free_port();
    let _child = tokio::process::Command::new(perch_bin())
        .args([
            "run",
            "--app-id",
            "x",
            "--dapr-http-port",
            &port.to_string(),
        ])
        .args([
            "--app-port",
            &closed_app_port.to_string(),
            "--resources-path",
        ])
        .arg(dir.path())
        .kill_on_drop(true)
        .spawn()?;
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    let mut outbound = None;
    for _ in 0..100 {
        if let Ok(r) = request("GET", &url("/v1.0/healthz/outbound"), &[], "").await {
            outbound = Some(r.0);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        outbound,
        Some(204),
        "outbound is ready once components are loaded"
    );
    let (status, _, body) = request("GET", &url("/v1.0/healthz"), &[], "").await?;
    assert_eq!(status, 500);
    let v: serde_json::Value = serde_json::from_slice(&body)?;
    assert_eq!(v["errorCode"], "ERR_HEALTH_NOT_READY");
    // Publishing works before the app is up.
    let (s, _, _) = request("POST", &url("/v1.0/publish/pubsub/t"), &[], "x").await?;
    assert_eq!(s, 204);
    Ok(())
}

#[tokio::test]
async fn app_max_concurrency_bounds_calls_to_the_app() -> TestResult {
    let pubsub = component("pubsub", &[("deliveryOrder", "none")]);
    let dir = resources(&[
        ("pubsub.yaml", &pubsub),
        ("s.yaml", &subscription("s", "orders", "/orders")),
    ]);
    // The app never answers, so every call it receives stays open.
    let mut app = TestApp::start(None, Arc::new(|_| (0, String::new()))).await;
    let sc = Sidecar::start(
        dir.path(),
        Some(app.port),
        &[],
        &["--app-max-concurrency", "2"],
    )
    .await;
    for i in 0..5 {
        assert_eq!(
            sc.publish_json("pubsub/orders", &format!(r#"{{"n":{i}}}"#))
                .await,
            204
        );
    }
    app.next(10).await?;
    app.next(10).await?;
    assert!(
        app.next(2).await.is_err(),
        "a third concurrent call was made despite --app-max-concurrency 2"
    );
    Ok(())
}

#[tokio::test]
async fn cel_rules_route_each_event_and_unmatched_events_are_dead_lettered() -> TestResult {
    let dir = resources(&[
        ("pubsub.yaml", PUBSUB),
        (
            "s.yaml",
            r#"apiVersion: dapr.io/v2alpha1
kind: Subscription
metadata: {name: routed}
spec:
  pubsubname: pubsub
  topic: orders
  routes:
    rules:
      - match: event.type == "widget"
        path: /widgets
      - match: int(event.data.amount) > 100
        path: /big
"#,
        ),
    ]);
    let prog = json!([{"pubsubname": "pubsub", "topic": "orders.dlq", "route": "/dead"}]);
    let mut app = TestApp::ok(Some(prog)).await;
    let sc = Sidecar::start(dir.path(), Some(app.port), &[], &[]).await;
    let publish = |ty: &'static str, amount: u32| {
        let sc = &sc;
        async move {
            sc.call(
                "POST",
                &format!("/v1.0/publish/pubsub/orders?metadata.cloudevent.type={ty}"),
                &[("content-type", "application/json")],
                &format!(r#"{{"amount":{amount}}}"#),
            )
            .await
            .unwrap()
            .0
        }
    };
    assert_eq!(publish("widget", 1).await, 204);
    assert_eq!(app.next(10).await?.path, "/widgets");
    assert_eq!(publish("order", 500).await, 204);
    assert_eq!(app.next(10).await?.path, "/big");
    assert_eq!(publish("order", 5).await, 204);
    let dead = app.next(10).await?;
    assert_eq!(
        dead.path, "/dead",
        "no rule matched and there is no default: dead-lettered"
    );
    assert_eq!(dead.json()["data"]["amount"], 5);
    Ok(())
}

fn resiliency(codes: &str) -> String {
    format!(
        "apiVersion: dapr.io/v1alpha1
kind: Resiliency
metadata: {{name: r}}
spec:
  policies:
    retries:
      quick:
        policy: constant
        duration: 100ms
        maxRetries: 2
        matching:
          httpStatusCodes: \"{codes}\"
  targets:
    components:
      pubsub:
        inbound:
          retry: quick
"
    )
}

async fn attempts_before_dead_letter(codes: &str) -> Result<usize, Box<dyn std::error::Error>> {
    let dir = resources(&[("pubsub.yaml", PUBSUB), ("r.yaml", &resiliency(codes))]);
    let mut app = TestApp::start(
        Some(dlq_subscribe("/orders", "orders.dlq")),
        Arc::new(|r| {
            if r.path == "/orders" {
                (500, String::new())
            } else {
                (200, String::new())
            }
        }),
    )
    .await;
    let sc = Sidecar::start(dir.path(), Some(app.port), &[], &[]).await;
    assert_eq!(sc.publish_json("pubsub/orders", "{}").await, 204);
    let mut attempts = 0;
    loop {
        let r = app.next(10).await?;
        if r.path == "/dead" {
            return Ok(attempts);
        }
        attempts += 1;
    }
}

#[tokio::test]
async fn resiliency_inbound_policy_sets_retry_count_and_matching() -> TestResult {
    assert_eq!(
        attempts_before_dead_letter("500-599").await?,
        3,
        "1 attempt + maxRetries 2"
    );
    assert_eq!(
        attempts_before_dead_letter("503").await?,
        1,
        "500 is not matched: no retry"
    );
    Ok(())
}

fn ordered_pubsub(order: &str) -> String {
    component("pubsub", &[("deliveryOrder", order), ("maxInFlight", "8")])
}

/// Publishes 3 keys x 8 messages interleaved to an app taking 20 ms each;
/// returns per-key sequences in arrival order and the app's peak concurrency.
async fn run_ordering(order: &str) -> Result<(Vec<Vec<u64>>, usize), Box<dyn std::error::Error>> {
    let dir = resources(&[
        ("pubsub.yaml", &ordered_pubsub(order)),
        ("s.yaml", &subscription("s", "orders", "/orders")),
    ]);
    let mut app = TestApp::start_slow(
        None,
        std::time::Duration::from_millis(20),
        Arc::new(|_| (200, String::new())),
    )
    .await;
    let sc = Sidecar::start(dir.path(), Some(app.port), &[], &[]).await;
    for seq in 0..8u64 {
        for key in 0..3u64 {
            let path = format!("/v1.0/publish/pubsub/orders?metadata.partitionKey=k{key}");
            let body = format!(r#"{{"key":{key},"seq":{seq}}}"#);
            assert_eq!(
                sc.call(
                    "POST",
                    &path,
                    &[("content-type", "application/json")],
                    &body
                )
                .await?
                .0,
                204
            );
        }
    }
    let mut per_key = vec![vec![]; 3];
    for _ in 0..24 {
        let ev = app.next(10).await?.json();
        per_key[ev["data"]["key"].as_u64().unwrap() as usize]
            .push(ev["data"]["seq"].as_u64().unwrap());
    }
    Ok((per_key, app.max_concurrent.load(Ordering::SeqCst)))
}

#[tokio::test]
async fn key_order_keeps_each_key_in_order_while_keys_run_concurrently() -> TestResult {
    let (per_key, peak) = run_ordering("key").await?;
    for seqs in &per_key {
        assert_eq!(
            seqs,
            &(0..8).collect::<Vec<_>>(),
            "same key delivered in order"
        );
    }
    assert!(peak > 1, "different keys ran concurrently (peak {peak})");
    assert!(
        peak <= 3,
        "never two of one key at once: peak {peak} over 3 keys"
    );
    Ok(())
}

#[tokio::test]
async fn partition_order_delivers_one_at_a_time() -> TestResult {
    let (per_key, peak) = run_ordering("partition").await?;
    assert_eq!(peak, 1);
    for seqs in &per_key {
        assert_eq!(seqs, &(0..8).collect::<Vec<_>>());
    }
    Ok(())
}

#[tokio::test]
async fn expired_events_are_not_delivered_but_dead_lettered() -> TestResult {
    let dir = resources(&[("pubsub.yaml", &ordered_pubsub("partition"))]);
    // One at a time and 1.5 s per event: the second event waits past its 1 s TTL.
    let mut app = TestApp::start_slow(
        Some(dlq_subscribe("/orders", "orders.dlq")),
        std::time::Duration::from_millis(1500),
        Arc::new(|_| (200, String::new())),
    )
    .await;
    let sc = Sidecar::start(dir.path(), Some(app.port), &[], &[]).await;
    assert_eq!(sc.publish_json("pubsub/orders", r#"{"n":1}"#).await, 204);
    let (s, _, _) = sc
        .call(
            "POST",
            "/v1.0/publish/pubsub/orders?metadata.ttlInSeconds=1",
            &[("content-type", "application/json")],
            r#"{"n":2}"#,
        )
        .await?;
    assert_eq!(s, 204);
    let first = app.next(10).await?;
    assert_eq!(
        (first.path.as_str(), first.json()["data"]["n"].as_u64()),
        ("/orders", Some(1))
    );
    let second = app.next(10).await?;
    assert_eq!(
        second.path, "/dead",
        "the expired event never reached /orders"
    );
    assert_eq!(second.json()["data"]["n"], 2);
    Ok(())
}

#[tokio::test]
async fn subscriptions_denied_by_scoping_are_reported_in_metadata() -> TestResult {
    let scoped = component("pubsub", &[("subscriptionScopes", "test-app=allowed")]);
    let dir = resources(&[
        ("pubsub.yaml", &scoped),
        ("a.yaml", &subscription("a", "allowed", "/a")),
        ("b.yaml", &subscription("b", "secret", "/b")),
    ]);
    let app = TestApp::ok(None).await;
    let sc = Sidecar::start(dir.path(), Some(app.port), &[], &[]).await;
    let v: serde_json::Value =
        serde_json::from_slice(&sc.call("GET", "/v1.0/metadata", &[], "").await?.2)?;
    let active: Vec<&str> = v["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["topic"].as_str().unwrap())
        .collect();
    assert_eq!(active, ["allowed"]);
    assert_eq!(v["deniedSubscriptions"][0]["topic"], "secret");
    assert!(v["deniedSubscriptions"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("is not allowed"));
    Ok(())
}

#[tokio::test]
async fn bulk_subscribe_batches_per_route_and_reads_per_entry_statuses() -> TestResult {
    let dir = resources(&[
        ("pubsub.yaml", PUBSUB),
        (
            "s.yaml",
            r#"apiVersion: dapr.io/v2alpha1
kind: Subscription
metadata: {name: bulk}
spec:
  pubsubname: pubsub
  topic: orders
  bulkSubscribe: {enabled: true, maxMessagesCount: 4, maxAwaitDurationMs: 300}
  routes:
    rules:
      - match: event.data.kind == "b"
        path: /b
    default: /a
"#,
        ),
    ]);
    let prog = json!([{"pubsubname": "pubsub", "topic": "orders.dlq", "route": "/dead"}]);
    // n=3 is left out of the first answer that holds it (missing = RETRY),
    // n=5 is DROPped; everything else succeeds.
    let seen_3 = Arc::new(AtomicUsize::new(0));
    let s3 = seen_3.clone();
    let mut app = TestApp::start(
        Some(prog),
        Arc::new(move |r| {
            if r.path == "/dead" {
                return (200, String::new());
            }
            let req = r.json();
            let statuses: Vec<serde_json::Value> = req["entries"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|e| {
                    let id = e["entryId"].clone();
                    match e["event"]["data"]["n"].as_u64().unwrap() {
                        3 if s3.fetch_add(1, Ordering::SeqCst) == 0 => None,
                        5 => Some(json!({"entryId": id, "status": "DROP"})),
                        _ => Some(json!({"entryId": id, "status": "SUCCESS"})),
                    }
                })
                .collect();
            (200, json!({ "statuses": statuses }).to_string())
        }),
    )
    .await;
    let sc = Sidecar::start(dir.path(), Some(app.port), &[], &[]).await;
    for n in 0..10u64 {
        let kind = if n % 2 == 0 { "a" } else { "b" };
        let body = json!({"n": n, "kind": kind}).to_string();
        assert_eq!(sc.publish_json("pubsub/orders", &body).await, 204);
    }
    let mut delivered = std::collections::BTreeMap::<u64, usize>::new();
    let mut dead = vec![];
    while delivered.len() < 10 || dead.is_empty() {
        let r = app.next(15).await?;
        if r.path == "/dead" {
            dead.push(r.json()["data"]["n"].as_u64().unwrap());
            continue;
        }
        assert_eq!(r.headers["content-type"], "application/json");
        assert_eq!(r.headers["pubsubname"], "pubsub");
        let req = r.json();
        assert_eq!(req["type"], "com.dapr.event.sent.bulk");
        assert_eq!(req["topic"], "orders");
        assert_eq!(req["metadata"]["pubsubName"], "pubsub");
        let entries = req["entries"].as_array().unwrap();
        assert!(
            (1..=4).contains(&entries.len()),
            "maxMessagesCount bounds a batch"
        );
        for e in entries {
            assert_eq!(e["contentType"], "application/cloudevents+json");
            assert_eq!(e["event"]["topic"], "orders");
            let kind = e["event"]["data"]["kind"].as_str().unwrap();
            assert_eq!(format!("/{kind}"), r.path, "one request per route path");
            *delivered
                .entry(e["event"]["data"]["n"].as_u64().unwrap())
                .or_default() += 1;
        }
    }
    assert_eq!(
        delivered[&3], 2,
        "a missing status is RETRY: n=3 came again"
    );
    assert!(
        delivered.iter().all(|(n, c)| *n == 3 || *c == 1),
        "answered entries are not sent again: {delivered:?}"
    );
    assert_eq!(dead, [5], "the DROPped entry alone is dead-lettered");
    assert!(app.next(2).await.is_err(), "nothing more arrives");
    Ok(())
}

#[tokio::test]
async fn app_health_check_gates_start_and_pauses_deliveries() -> TestResult {
    use std::sync::atomic::AtomicBool;
    let dir = resources(&[
        ("pubsub.yaml", PUBSUB),
        ("s.yaml", &subscription("s", "orders", "/orders")),
    ]);
    let healthy = Arc::new(AtomicBool::new(false));
    let h = healthy.clone();
    let mut app = TestApp::start(
        None,
        Arc::new(move |r| match r.path.as_str() {
            "/healthz" if h.load(Ordering::SeqCst) => (200, String::new()),
            "/healthz" => (503, String::new()),
            _ => (200, String::new()),
        }),
    )
    .await;
    let flags = [
        "--enable-app-health-check",
        "--app-health-probe-interval",
        "1",
        "--app-health-threshold",
        "1",
    ];
    let sc = Sidecar::start_until(
        dir.path(),
        Some(app.port),
        &[],
        &flags,
        "/v1.0/healthz/outbound",
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(
        sc.call("GET", "/v1.0/healthz", &[], "").await?.0,
        500,
        "not ready while the app is unhealthy"
    );
    healthy.store(true, Ordering::SeqCst);
    let mut ready = false;
    for _ in 0..60 {
        if sc.call("GET", "/v1.0/healthz", &[], "").await?.0 == 204 {
            ready = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(ready, "ready once the app's health check passes");
    assert_eq!(sc.publish_json("pubsub/orders", r#"{"n":1}"#).await, 204);
    assert_eq!(app.next(5).await?.json()["data"]["n"], 1);

    healthy.store(false, Ordering::SeqCst);
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert_eq!(sc.publish_json("pubsub/orders", r#"{"n":2}"#).await, 204);
    assert!(
        app.next(2).await.is_err(),
        "nothing is delivered while the app is unhealthy"
    );
    healthy.store(true, Ordering::SeqCst);
    let r = app.next(5).await?;
    assert_eq!(
        r.json()["data"]["n"],
        2,
        "held, not dropped: delivered once healthy"
    );
    Ok(())
}

#[tokio::test]
async fn an_open_circuit_breaker_stops_calls_to_the_app_until_its_timeout() -> TestResult {
    let res = "apiVersion: dapr.io/v1alpha1
kind: Resiliency
metadata: {name: r}
spec:
  policies:
    retries:
      steady: {policy: constant, duration: 200ms, maxRetries: -1}
    circuitBreakers:
      cb: {maxRequests: 1, timeout: 3s, trip: consecutiveFailures > 2}
  targets:
    components:
      pubsub:
        inbound: {retry: steady, circuitBreaker: cb}
";
    let dir = resources(&[
        ("pubsub.yaml", PUBSUB),
        ("r.yaml", res),
        ("s.yaml", &subscription("s", "orders", "/orders")),
    ]);
    let mut app = TestApp::start(None, Arc::new(|_| (500, String::new()))).await;
    let sc = Sidecar::start(dir.path(), Some(app.port), &[], &[]).await;
    assert_eq!(sc.publish_json("pubsub/orders", "{}").await, 204);
    for _ in 0..3 {
        app.next(5).await?;
    }
    assert!(
        app.next(2).await.is_err(),
        "after three failures the breaker is open: the app is not called"
    );
    app.next(3).await.map_err(|e| {
        format!("after the 3 s timeout the breaker half-opens and lets one call through: {e}")
    })?;
    Ok(())
}
