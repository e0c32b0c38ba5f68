//! The delivery behaviour suite: one body per behaviour, run against every
//! broker through the real binary and a real HTTP app. `suite!` instantiates
//! the bodies for a backend; topics and consumer groups are unique per test,
//! so real brokers can be shared.
//!
//! Mirrors Dapr's pub/sub conformance steps (reference 12.1): an app that
//! fails the first two messages and every fifth still gets every message,
//! in order where order is promised; two subscriptions each receive exactly
//! their own topic.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::json;

async fn publish(sc: &Sidecar, b: &Bench, base: &str, query: &str, body: &str) -> u16 {
    let path = format!("/v1.0/publish/pubsub/{}{query}", b.topic(base));
    sc.call("POST", &path, &[("content-type", "application/json")], body)
        .await
        .unwrap()
        .0
}

/// Programmatic subscriptions: `orders` on `route`, and its dead-letter
/// topic `orders.dlq` on `/dead`.
fn with_dlq(b: &Bench, route: &str) -> serde_json::Value {
    json!([
        {"pubsubname": "pubsub", "topic": b.topic("orders"), "route": route},
        {"pubsubname": "pubsub", "topic": format!("{}.dlq", b.topic("orders")), "route": "/dead"}
    ])
}

async fn drop_and_404_go_to_the_dead_letter_topic(b: &Bench) -> TestResult {
    let dir = resources(&[("pubsub.yaml", &b.pubsub(&[]))]);
    let mut app = TestApp::start(
        Some(with_dlq(b, "/orders")),
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
        publish(&sc, b, "orders", "", r#"{"how":"drop"}"#).await,
        204
    );
    assert_eq!(
        publish(&sc, b, "orders", "", r#"{"how":"gone"}"#).await,
        204
    );
    let mut dead = vec![];
    while dead.len() < 2 {
        let r = app.next(20).await?;
        if r.path == "/dead" {
            let ev = r.json();
            assert_eq!(ev["topic"], b.topic("orders"), "the original message");
            assert_eq!(r.headers["perch-dead-letter-from"], b.topic("orders"));
            // Why, and after how many calls, as `perch dlq list` shows it.
            let how = ev["data"]["how"].as_str().unwrap().to_owned();
            let reason = if how == "drop" {
                "app answered DROP"
            } else {
                "app answered 404"
            };
            assert_eq!(r.headers["perch-dead-letter-reason"], reason);
            assert_eq!(r.headers["perch-dead-letter-attempts"], "1");
            dead.push(how);
        }
    }
    dead.sort();
    assert_eq!(dead, ["drop", "gone"]);
    assert!(app.next(2).await.is_err(), "each dead letter once");
    Ok(())
}

async fn retry_then_success_is_redelivered_once(b: &Bench) -> TestResult {
    let dir = resources(&[
        ("pubsub.yaml", &b.pubsub(&[])),
        ("s.yaml", &b.subscription("s", "orders", "/orders")),
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
    assert_eq!(publish(&sc, b, "orders", "", r#"{"n":1}"#).await, 204);
    let first = app.next(20).await?.json();
    let second = app.next(10).await?.json();
    assert_eq!(first["id"], second["id"], "the same event is redelivered");
    assert!(app.next(3).await.is_err(), "acked after SUCCESS");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    Ok(())
}

async fn without_dead_letters_drop_acks(b: &Bench) -> TestResult {
    let dir = resources(&[("pubsub.yaml", &b.pubsub(&[("deadLetterDefault", "none")]))]);
    let mut app = TestApp::start(
        Some(with_dlq(b, "/orders")),
        Arc::new(|_| (200, r#"{"status":"DROP"}"#.into())),
    )
    .await;
    let sc = Sidecar::start(dir.path(), Some(app.port), &[], &[]).await;
    assert_eq!(publish(&sc, b, "orders", "", "{}").await, 204);
    assert_eq!(app.next(20).await?.path, "/orders");
    assert!(
        app.next(3).await.is_err(),
        "dropped: neither redelivered nor dead-lettered"
    );
    Ok(())
}

async fn cel_rules_route_and_unmatched_events_are_dead_lettered(b: &Bench) -> TestResult {
    let sub = format!(
        r#"apiVersion: dapr.io/v2alpha1
kind: Subscription
metadata: {{name: routed}}
spec:
  pubsubname: pubsub
  topic: {}
  routes:
    rules:
      - match: event.type == "widget"
        path: /widgets
      - match: int(event.data.amount) > 100
        path: /big
"#,
        b.topic("orders")
    );
    let dir = resources(&[("pubsub.yaml", &b.pubsub(&[])), ("s.yaml", &sub)]);
    let dlq = format!("{}.dlq", b.topic("orders"));
    let prog = json!([{"pubsubname": "pubsub", "topic": dlq, "route": "/dead"}]);
    let mut app = TestApp::ok(Some(prog)).await;
    let sc = Sidecar::start(dir.path(), Some(app.port), &[], &[]).await;
    let typed = |ty: &str| format!("?metadata.cloudevent.type={ty}");
    assert_eq!(
        publish(&sc, b, "orders", &typed("widget"), r#"{"amount":1}"#).await,
        204
    );
    assert_eq!(app.next(20).await?.path, "/widgets");
    assert_eq!(
        publish(&sc, b, "orders", &typed("order"), r#"{"amount":500}"#).await,
        204
    );
    assert_eq!(app.next(10).await?.path, "/big");
    assert_eq!(
        publish(&sc, b, "orders", &typed("order"), r#"{"amount":5}"#).await,
        204
    );
    let dead = app.next(10).await?;
    assert_eq!(dead.path, "/dead", "no rule matched and no default");
    assert_eq!(dead.json()["data"]["amount"], 5);
    Ok(())
}

fn quick_retries(codes: &str) -> String {
    format!(
        "apiVersion: dapr.io/v1alpha1
kind: Resiliency
metadata: {{name: r}}
spec:
  policies:
    retries:
      quick: {{policy: constant, duration: 100ms, maxRetries: 2, matching: {{httpStatusCodes: \"{codes}\"}}}}
  targets:
    components:
      pubsub:
        inbound: {{retry: quick}}
"
    )
}

/// Attempts at `/orders` (the app answers 500) before the dead letter.
async fn attempts_before_dead_letter(
    b: &Bench,
    codes: &str,
) -> Result<usize, Box<dyn std::error::Error>> {
    let dir = resources(&[
        ("pubsub.yaml", &b.pubsub(&[])),
        ("r.yaml", &quick_retries(codes)),
    ]);
    let mut app = TestApp::start(
        Some(with_dlq(b, "/orders")),
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
    assert_eq!(publish(&sc, b, "orders", "", "{}").await, 204);
    let mut attempts = 0;
    loop {
        if app.next(20).await?.path == "/dead" {
            return Ok(attempts);
        }
        attempts += 1;
    }
}

async fn resiliency_sets_retry_count_and_matching(b: &Bench) -> TestResult {
    assert_eq!(
        attempts_before_dead_letter(b, "500-599").await?,
        3,
        "1 attempt + maxRetries 2"
    );
    let other = Bench::new(b.backend);
    assert_eq!(
        attempts_before_dead_letter(&other, "503").await?,
        1,
        "500 is not matched: no retry"
    );
    Ok(())
}

/// Publishes 3 keys x 8 messages interleaved to an app taking 20 ms each;
/// returns per-key sequences in arrival order and the app's peak concurrency.
async fn run_ordering(
    b: &Bench,
    order: &str,
) -> Result<(Vec<Vec<u64>>, usize), Box<dyn std::error::Error>> {
    let pubsub = b.pubsub(&[("deliveryOrder", order), ("maxInFlight", "8")]);
    let dir = resources(&[
        ("pubsub.yaml", &pubsub),
        ("s.yaml", &b.subscription("s", "orders", "/orders")),
    ]);
    let mut app = TestApp::acking_after(Duration::from_millis(20)).await;
    let sc = Sidecar::start(dir.path(), Some(app.port), &[], &[]).await;
    for seq in 0..8u64 {
        for key in 0..3u64 {
            let q = format!("?metadata.partitionKey=k{key}");
            let body = format!(r#"{{"key":{key},"seq":{seq}}}"#);
            assert_eq!(publish(&sc, b, "orders", &q, &body).await, 204);
        }
    }
    let mut per_key = vec![vec![]; 3];
    for _ in 0..24 {
        let ev = app.next(20).await?.json();
        per_key[ev["data"]["key"].as_u64().unwrap() as usize]
            .push(ev["data"]["seq"].as_u64().unwrap());
    }
    Ok((per_key, app.max_concurrent.load(Ordering::SeqCst)))
}

async fn key_order_keeps_each_key_in_order_while_keys_run_concurrently(b: &Bench) -> TestResult {
    let (per_key, peak) = run_ordering(b, "key").await?;
    for seqs in &per_key {
        assert_eq!(seqs, &(0..8).collect::<Vec<_>>(), "same key in order");
    }
    assert!(peak > 1, "different keys ran concurrently (peak {peak})");
    assert!(peak <= 3, "never two of one key at once: peak {peak}");
    Ok(())
}

async fn partition_order_delivers_one_at_a_time(b: &Bench) -> TestResult {
    let (per_key, peak) = run_ordering(b, "partition").await?;
    assert_eq!(peak, 1);
    for seqs in &per_key {
        assert_eq!(seqs, &(0..8).collect::<Vec<_>>());
    }
    Ok(())
}

/// Bulk requests a never-answering app receives for 8 messages, with
/// batches of 2 and `maxInFlight` 2.
async fn bulk_requests_in_flight(
    b: &Bench,
    order: &str,
) -> Result<usize, Box<dyn std::error::Error>> {
    let pubsub = b.pubsub(&[("deliveryOrder", order), ("maxInFlight", "2")]);
    let topic = format!("orders-{order}");
    let sub = format!(
        "apiVersion: dapr.io/v2alpha1\nkind: Subscription\nmetadata: {{name: s}}\nspec:\n  pubsubname: pubsub\n  topic: {}\n  bulkSubscribe: {{enabled: true, maxMessagesCount: 2, maxAwaitDurationMs: 50}}\n  routes: {{default: /bulk}}\n",
        b.topic(&topic)
    );
    let dir = resources(&[("pubsub.yaml", &pubsub), ("s.yaml", &sub)]);
    let mut app = TestApp::start(None, Arc::new(|_| (0, String::new()))).await;
    let sc = Sidecar::start(dir.path(), Some(app.port), &[], &[]).await;
    for n in 0..8 {
        let body = format!(r#"{{"n":{n}}}"#);
        assert_eq!(
            publish(&sc, b, &topic, "?metadata.partitionKey=k", &body).await,
            204
        );
    }
    // The first within 20 s (a Kafka group may wait out the previous
    // member's session), the rest within 3 s of each other.
    let mut requests = 0;
    while let Ok(r) = app.next(if requests == 0 { 20 } else { 3 }).await {
        assert_eq!(r.json()["entries"].as_array().unwrap().len(), 2);
        requests += 1;
    }
    Ok(requests)
}

async fn bulk_batches_run_concurrently_only_without_ordering(b: &Bench) -> TestResult {
    assert_eq!(
        bulk_requests_in_flight(b, "none").await?,
        2,
        "deliveryOrder none: maxInFlight counts batches in flight"
    );
    assert_eq!(
        bulk_requests_in_flight(b, "partition").await?,
        1,
        "deliveryOrder partition: one batch at a time"
    );
    Ok(())
}

/// A pubsub with `deliveryOrder: none` and `maxInFlight: 3`, and a
/// subscription to `orders` on `/orders`.
fn window_of_three(b: &Bench) -> tempfile::TempDir {
    let pubsub = b.pubsub(&[("deliveryOrder", "none"), ("maxInFlight", "3")]);
    resources(&[
        ("pubsub.yaml", &pubsub),
        ("s.yaml", &b.subscription("s", "orders", "/orders")),
    ])
}

async fn in_flight_window_is_respected(b: &Bench) -> TestResult {
    let dir = window_of_three(b);
    // The app never answers: every delivery it receives stays in flight.
    let mut app = TestApp::start(None, Arc::new(|_| (0, String::new()))).await;
    let sc = Sidecar::start(dir.path(), Some(app.port), &[], &[]).await;
    for n in 0..6 {
        assert_eq!(
            publish(&sc, b, "orders", "", &format!(r#"{{"n":{n}}}"#)).await,
            204
        );
    }
    for _ in 0..3 {
        app.next(20).await?;
    }
    assert!(
        app.next(2).await.is_err(),
        "a fourth message was delivered with maxInFlight 3"
    );
    Ok(())
}

async fn expired_events_are_dead_lettered_not_delivered(b: &Bench) -> TestResult {
    let pubsub = b.pubsub(&[("deliveryOrder", "partition")]);
    let dir = resources(&[("pubsub.yaml", &pubsub)]);
    // One at a time and 1.5 s per event: the second waits past its 1 s TTL.
    let mut app = TestApp::start_slow(
        Some(with_dlq(b, "/orders")),
        Duration::from_millis(1500),
        Arc::new(|_| (200, String::new())),
    )
    .await;
    let sc = Sidecar::start(dir.path(), Some(app.port), &[], &[]).await;
    assert_eq!(publish(&sc, b, "orders", "", r#"{"n":1}"#).await, 204);
    let ttl = "?metadata.ttlInSeconds=1";
    assert_eq!(publish(&sc, b, "orders", ttl, r#"{"n":2}"#).await, 204);
    let first = app.next(20).await?;
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

async fn raw_payload_subscription_gets_dapr_raw_envelope(b: &Bench) -> TestResult {
    use base64::Engine as _;
    let topic = b.topic("raw");
    let prog = json!([{"pubsubname": "pubsub", "topic": topic, "route": "/raw",
                       "metadata": {"rawPayload": "true"}}]);
    let dir = resources(&[("pubsub.yaml", &b.pubsub(&[]))]);
    let mut app = TestApp::ok(Some(prog)).await;
    let sc = Sidecar::start(dir.path(), Some(app.port), &[], &[]).await;
    let bytes = [0u8, 159, 146, 150, 255, 10];
    let path = format!("/v1.0/publish/pubsub/{topic}?metadata.rawPayload=true");
    let status = {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        let req = hyper::Request::post(sc.url(&path))
            .header("content-type", "application/octet-stream")
            .body(http_body_util::Full::new(bytes::Bytes::copy_from_slice(
                &bytes,
            )))?;
        client.request(req).await?.status().as_u16()
    };
    assert_eq!(status, 204);
    let r = app.next(20).await?;
    assert_eq!(r.headers["content-type"], "application/cloudevents+json");
    let ev = r.json();
    assert_eq!(ev["datacontenttype"], "application/octet-stream");
    assert_eq!(ev["type"], "com.dapr.event.sent");
    assert_eq!(ev["source"], "Dapr");
    assert_eq!(ev["topic"], topic);
    assert_eq!(ev["pubsubname"], "pubsub");
    let data =
        base64::engine::general_purpose::STANDARD.decode(ev["data_base64"].as_str().unwrap())?;
    assert_eq!(data, bytes, "binary bytes arrive unchanged");
    Ok(())
}

async fn bulk_subscribe_batches_per_route_with_per_entry_statuses(b: &Bench) -> TestResult {
    let sub = format!(
        r#"apiVersion: dapr.io/v2alpha1
kind: Subscription
metadata: {{name: bulk}}
spec:
  pubsubname: pubsub
  topic: {}
  bulkSubscribe: {{enabled: true, maxMessagesCount: 4, maxAwaitDurationMs: 300}}
  routes:
    rules:
      - match: event.data.kind == "b"
        path: /b
    default: /a
"#,
        b.topic("orders")
    );
    let dir = resources(&[("pubsub.yaml", &b.pubsub(&[])), ("s.yaml", &sub)]);
    let dlq = format!("{}.dlq", b.topic("orders"));
    let prog = json!([{"pubsubname": "pubsub", "topic": dlq, "route": "/dead"}]);
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
            let statuses: Vec<serde_json::Value> = r.json()["entries"]
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
        assert_eq!(publish(&sc, b, "orders", "", &body).await, 204);
    }
    let mut delivered = BTreeMap::<u64, usize>::new();
    let mut dead = vec![];
    // With deliveryOrder none (the in-memory and RabbitMQ default) batches
    // run concurrently: n=3's retry may come after the other batches.
    while delivered.len() < 10 || dead.is_empty() || delivered.get(&3) < Some(&2) {
        let r = app.next(20).await?;
        if r.path == "/dead" {
            dead.push(r.json()["data"]["n"].as_u64().unwrap());
            continue;
        }
        assert_eq!(r.headers["content-type"], "application/json");
        assert_eq!(r.headers["pubsubname"], "pubsub");
        let req = r.json();
        assert_eq!(req["type"], "com.dapr.event.sent.bulk");
        assert_eq!(req["topic"], b.topic("orders"));
        assert_eq!(req["metadata"]["pubsubName"], "pubsub");
        assert_eq!(req["pubsubname"], "pubsub");
        assert!(req["id"].as_str().is_some_and(|id| !id.is_empty()));
        let entries = req["entries"].as_array().unwrap();
        assert!(
            (1..=4).contains(&entries.len()),
            "maxMessagesCount bounds a batch"
        );
        for e in entries {
            assert_eq!(e["contentType"], "application/cloudevents+json");
            assert!(
                e["metadata"].is_object() && e["metadata"].get("pubsubName").is_none(),
                "entry metadata is an object; pubsubName is the request's: {}",
                e["metadata"]
            );
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

/// Conformance (12.1 step 3 and 7): the app fails the first two messages
/// and every fifth on their first delivery; every message arrives, each
/// succeeds once, and in publish order.
async fn failing_app_still_gets_everything_in_order(b: &Bench) -> TestResult {
    let res = "apiVersion: dapr.io/v1alpha1
kind: Resiliency
metadata: {name: r}
spec:
  policies:
    retries:
      quick: {policy: constant, duration: 50ms, maxRetries: 10}
  targets:
    components:
      pubsub:
        inbound: {retry: quick}
";
    let dir = resources(&[
        ("pubsub.yaml", &b.pubsub(&[("deliveryOrder", "partition")])),
        ("r.yaml", res),
        ("s.yaml", &b.subscription("s", "orders", "/orders")),
    ]);
    let succeeded = Arc::new(Mutex::new(Vec::<u64>::new()));
    let failed_once = Arc::new(Mutex::new(std::collections::BTreeSet::<u64>::new()));
    let (ok, failed) = (succeeded.clone(), failed_once.clone());
    let mut app = TestApp::start(
        None,
        Arc::new(move |r| {
            let seq = r.json()["data"]["seq"].as_u64().unwrap();
            let poisoned = seq < 2 || seq % 5 == 0;
            if poisoned && failed.lock().unwrap().insert(seq) {
                return (500, String::new());
            }
            ok.lock().unwrap().push(seq);
            (200, String::new())
        }),
    )
    .await;
    let sc = Sidecar::start(dir.path(), Some(app.port), &[], &[]).await;
    let count = 20u64;
    for seq in 0..count {
        let body = format!(r#"{{"seq":{seq}}}"#);
        assert_eq!(publish(&sc, b, "orders", "", &body).await, 204);
    }
    while succeeded.lock().unwrap().len() < count as usize {
        app.next(20).await?;
    }
    assert_eq!(
        *succeeded.lock().unwrap(),
        (0..count).collect::<Vec<_>>(),
        "every message once, in publish order"
    );
    assert!(app.next(2).await.is_err(), "nothing is delivered again");
    Ok(())
}

/// Conformance (12.1 step 9): two subscriptions on two topics, messages
/// published alternately; each route receives exactly its own topic.
async fn two_subscriptions_each_receive_their_own_topic(b: &Bench) -> TestResult {
    let dir = resources(&[
        ("pubsub.yaml", &b.pubsub(&[])),
        ("s1.yaml", &b.subscription("s1", "multi1", "/one")),
        ("s2.yaml", &b.subscription("s2", "multi2", "/two")),
    ]);
    let mut app = TestApp::ok(None).await;
    let sc = Sidecar::start(dir.path(), Some(app.port), &[], &[]).await;
    for n in 0..10u64 {
        let base = if n % 2 == 0 { "multi1" } else { "multi2" };
        assert_eq!(
            publish(&sc, b, base, "", &format!(r#"{{"n":{n}}}"#)).await,
            204
        );
    }
    let mut got: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for _ in 0..10 {
        let r = app.next(20).await?;
        let ev = r.json();
        let expected_topic = if r.path == "/one" {
            b.topic("multi1")
        } else {
            b.topic("multi2")
        };
        assert_eq!(ev["topic"], expected_topic);
        got.entry(r.path)
            .or_default()
            .push(ev["data"]["n"].as_u64().unwrap());
    }
    for v in got.values_mut() {
        v.sort();
    }
    assert_eq!(got["/one"], [0, 2, 4, 6, 8]);
    assert_eq!(got["/two"], [1, 3, 5, 7, 9]);
    assert!(app.next(2).await.is_err());
    Ok(())
}

/// Graceful shutdown (durable brokers only): a delivery the app never
/// answers is left unacknowledged when the grace period ends, and the next
/// sidecar of the same app receives it.
async fn shutdown_leaves_unfinished_messages_for_redelivery(b: &Bench) -> TestResult {
    let dir = resources(&[
        ("pubsub.yaml", &b.pubsub(&[])),
        ("s.yaml", &b.subscription("s", "orders", "/orders")),
    ]);
    let mut stuck = TestApp::start(None, Arc::new(|_| (0, String::new()))).await;
    let mut sc = Sidecar::start(
        dir.path(),
        Some(stuck.port),
        &[],
        &["--dapr-graceful-shutdown-seconds", "1"],
    )
    .await;
    assert_eq!(publish(&sc, b, "orders", "", r#"{"n":42}"#).await, 204);
    stuck.next(20).await?;
    sc.call("POST", "/v1.0/shutdown", &[], "").await?;
    let status = tokio::time::timeout(Duration::from_secs(10), sc.child.wait()).await??;
    assert!(status.success());
    let mut app = TestApp::ok(None).await;
    let _sc = Sidecar::start(dir.path(), Some(app.port), &[], &[]).await;
    let r = app.next(30).await?;
    assert_eq!(
        r.json()["data"]["n"],
        42,
        "the unfinished message came back"
    );
    Ok(())
}

/// Graceful shutdown (durable brokers only): a delivery the app answers
/// within the grace period is acknowledged before the sidecar exits, so the
/// next sidecar of the same app does not receive it again.
async fn shutdown_acknowledges_what_finishes_in_the_grace_period(b: &Bench) -> TestResult {
    let dir = resources(&[
        ("pubsub.yaml", &b.pubsub(&[])),
        ("s.yaml", &b.subscription("s", "orders", "/orders")),
    ]);
    let mut slow = TestApp::acking_after(Duration::from_millis(1500)).await;
    let mut sc = Sidecar::start(
        dir.path(),
        Some(slow.port),
        &[],
        &["--dapr-graceful-shutdown-seconds", "10"],
    )
    .await;
    assert_eq!(publish(&sc, b, "orders", "", r#"{"n":7}"#).await, 204);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while slow.max_concurrent.load(Ordering::SeqCst) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the app never received the event"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The app holds the request for 1.5 s; shut down while it does.
    sc.call("POST", "/v1.0/shutdown", &[], "").await?;
    assert_eq!(slow.next(10).await?.json()["data"]["n"], 7);
    let status = tokio::time::timeout(Duration::from_secs(15), sc.child.wait()).await??;
    assert!(status.success());
    let mut app = TestApp::ok(None).await;
    let sc = Sidecar::start(dir.path(), Some(app.port), &[], &[]).await;
    assert_eq!(publish(&sc, b, "orders", "", r#"{"n":8}"#).await, 204);
    let r = app.next(30).await?;
    assert_eq!(
        r.json()["data"]["n"],
        8,
        "the message answered during the grace period was not redelivered"
    );
    Ok(())
}

/// With `deliveryOrder: none`, a message the app never answers keeps one
/// place of the window; the others keep flowing through the rest (their
/// acknowledgements are not held behind it).
async fn a_stuck_message_does_not_hold_back_the_others(b: &Bench) -> TestResult {
    let dir = window_of_three(b);
    let mut app = TestApp::start(
        None,
        Arc::new(|r| {
            if r.json()["data"]["n"] == 0 {
                (0, String::new())
            } else {
                (200, String::new())
            }
        }),
    )
    .await;
    let sc = Sidecar::start(dir.path(), Some(app.port), &[], &[]).await;
    for n in 0..12 {
        assert_eq!(
            publish(&sc, b, "orders", "", &format!(r#"{{"n":{n}}}"#)).await,
            204
        );
    }
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..12 {
        seen.insert(app.next(30).await?.json()["data"]["n"].as_u64().unwrap());
    }
    assert_eq!(
        seen.len(),
        12,
        "all twelve delivered while n=0 is stuck: {seen:?}"
    );
    Ok(())
}

/// Instantiates the suite for one backend: `suite!(module, Backend, [extra
/// behaviours only this kind of broker has])`.
macro_rules! suite {
    ($module:ident, $backend:expr, [$($extra:ident),*]) => {
        mod $module {
            use super::*;
            suite!(@tests $backend;
                drop_and_404_go_to_the_dead_letter_topic,
                bulk_batches_run_concurrently_only_without_ordering,
                retry_then_success_is_redelivered_once,
                without_dead_letters_drop_acks,
                cel_rules_route_and_unmatched_events_are_dead_lettered,
                resiliency_sets_retry_count_and_matching,
                key_order_keeps_each_key_in_order_while_keys_run_concurrently,
                partition_order_delivers_one_at_a_time,
                in_flight_window_is_respected,
                expired_events_are_dead_lettered_not_delivered,
                raw_payload_subscription_gets_dapr_raw_envelope,
                bulk_subscribe_batches_per_route_with_per_entry_statuses,
                failing_app_still_gets_everything_in_order,
                two_subscriptions_each_receive_their_own_topic,
                a_stuck_message_does_not_hold_back_the_others
                $(, $extra)*
            );
        }
    };
    (@tests $backend:expr; $($name:ident),*) => {
        $(
            #[tokio::test]
            async fn $name() -> TestResult {
                super::$name(&Bench::new($backend)).await
            }
        )*
    };
}

suite!(memory, Backend::Memory, []);
suite!(
    kafka,
    Backend::Kafka,
    [
        shutdown_leaves_unfinished_messages_for_redelivery,
        shutdown_acknowledges_what_finishes_in_the_grace_period
    ]
);
suite!(
    rabbitmq,
    Backend::Rabbit,
    [
        shutdown_leaves_unfinished_messages_for_redelivery,
        shutdown_acknowledges_what_finishes_in_the_grace_period
    ]
);
suite!(
    redis,
    Backend::Redis,
    [
        shutdown_leaves_unfinished_messages_for_redelivery,
        shutdown_acknowledges_what_finishes_in_the_grace_period
    ]
);
