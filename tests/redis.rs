//! `pubsub.redis` on the real Redis server (127.0.0.1:6379): Dapr's
//! quickstart with its own component file, the stream layout daprd reads
//! and writes, what a dead consumer held taken over after
//! `processingTimeout` (and what a live one holds not), trimming, and lag.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// A stream entry's field/value pairs, as `XRANGE` answers them.
type Fields = Vec<(String, Vec<u8>)>;

/// Dapr's pub/sub quickstart (dapr/quickstarts `pub_sub`), written from
/// what it does: its `components/pubsub.yaml` (`orderpubsub`,
/// `pubsub.redis` on localhost:6379, empty password) and
/// `components/subscription.yaml` (scoped to other app ids, so skipped
/// here), loaded unchanged; the order processor subscribes
/// programmatically (`/dapr/subscribe`: orderpubsub, orders, route
/// `orders`) and answers `{"success": true}`; checkout publishes
/// `{"orderId": i}` for i in 1..=9 as JSON through its own sidecar.
#[tokio::test]
async fn daprs_pub_sub_quickstart_runs_on_its_own_redis_component() -> TestResult {
    const PUBSUB: &str = "apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: orderpubsub
spec:
  type: pubsub.redis
  version: v1
  metadata:
  - name: redisHost
    value: localhost:6379
  - name: redisPassword
    value: \"\"
";
    const SUBSCRIPTION: &str = "apiVersion: dapr.io/v2alpha1
kind: Subscription
metadata:
  name: orderpubsub
spec:
  topic: orders
  routes:
    default: /orders
  pubsubname: orderpubsub
scopes:
- orderprocessing
- checkout
";
    // A Redis as `dapr init` leaves it: no stream `orders` yet (the group
    // of a new app starts at the stream's beginning, as in Dapr).
    redis_cmd::<i64>(redis::cmd("DEL").arg("orders")).await?;
    let dir = resources(&[("pubsub.yaml", PUBSUB), ("subscription.yaml", SUBSCRIPTION)]);
    let subscribe = json!([{"pubsubname": "orderpubsub", "topic": "orders", "route": "orders"}]);
    let mut processor = TestApp::start(
        Some(subscribe),
        Arc::new(|_| (200, json!({"success": true}).to_string())),
    )
    .await;
    let _processor_sc = Sidecar::start(
        dir.path(),
        Some(processor.port),
        &[],
        &["--app-id", "order-processor-http"],
    )
    .await;
    let checkout = Sidecar::start(dir.path(), None, &[], &["--app-id", "checkout-http"]).await;
    for i in 1..=9 {
        let (status, _, body) = checkout
            .call(
                "POST",
                "/v1.0/publish/orderpubsub/orders",
                &[("content-type", "application/json")],
                &json!({ "orderId": i }).to_string(),
            )
            .await?;
        assert_eq!(status, 204, "{body:?}");
    }
    let mut got = vec![];
    for _ in 1..=9 {
        let r = processor.next(30).await?;
        assert_eq!(r.path, "/orders");
        let ev = r.json();
        assert_eq!(ev["source"], "checkout-http");
        assert_eq!(ev["pubsubname"], "orderpubsub");
        got.push(ev["data"]["orderId"].as_u64().unwrap());
    }
    got.sort();
    assert_eq!(got, (1..=9).collect::<Vec<_>>(), "every order, once");
    assert!(processor.next(2).await.is_err(), "nothing delivered twice");
    Ok(())
}

/// A stream entry as daprd writes it (field `data`: the CloudEvent,
/// `metadata`: the publish metadata as JSON) is delivered by Perch with its
/// metadata; an entry Perch publishes has the fields daprd reads.
#[tokio::test]
async fn streams_written_by_daprd_and_by_perch_read_the_same() -> TestResult {
    let b = Bench::new(Backend::Redis);
    let topic = b.topic("layout");
    let dir = resources(&[
        ("pubsub.yaml", &b.pubsub(&[])),
        ("s.yaml", &subscription("s", &topic, "/in")),
    ]);
    let mut app = TestApp::ok(None).await;
    let sc = Sidecar::start(dir.path(), Some(app.port), &[], &[]).await;
    let ce = json!({"specversion": "1.0", "id": "d-1", "source": "daprd-app", "type": "com.dapr.event.sent",
                    "datacontenttype": "application/json", "topic": topic, "pubsubname": "pubsub",
                    "data": {"n": 1}});
    redis_cmd::<String>(
        redis::cmd("XADD")
            .arg(&topic)
            .arg("*")
            .arg("data")
            .arg(ce.to_string())
            .arg("metadata")
            .arg(r#"{"custom":"v"}"#),
    )
    .await?;
    let r = app.next(20).await?;
    assert_eq!(r.json()["id"], "d-1");
    assert_eq!(r.json()["data"]["n"], 1);
    assert_eq!(r.headers["custom"], "v", "the entry's metadata as headers");

    let (status, _, _) = sc
        .call(
            "POST",
            &format!("/v1.0/publish/pubsub/{topic}?metadata.custom=w"),
            &[("content-type", "application/json")],
            r#"{"n":2}"#,
        )
        .await?;
    assert_eq!(status, 204);
    assert_eq!(app.next(20).await?.json()["data"]["n"], 2);
    let entries: Vec<(String, Fields)> =
        redis_cmd(redis::cmd("XRANGE").arg(&topic).arg("-").arg("+")).await?;
    let (_, fields) = &entries[1];
    let field = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("field {name} in {fields:?}"))
    };
    let data: Value = serde_json::from_slice(&field("data"))?;
    assert_eq!(data["specversion"], "1.0");
    assert_eq!(data["topic"], topic);
    assert_eq!(data["data"]["n"], 2);
    let metadata: Value = serde_json::from_slice(&field("metadata"))?;
    assert_eq!(
        metadata["custom"], "w",
        "daprd reads metadata as a JSON map"
    );
    Ok(())
}

/// An entry a consumer read and never acked (its sidecar died) is taken
/// over after `processingTimeout` and delivered; one a live sidecar is
/// still working on is not, even past `processingTimeout` (it keeps its
/// entries fresh).
#[tokio::test]
async fn what_a_dead_consumer_held_is_taken_over_and_a_live_ones_is_not() -> TestResult {
    let b = Bench::new(Backend::Redis);
    let topic = b.topic("claim");
    let group = format!("g-{}", b.id);
    redis_cmd::<()>(
        redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&topic)
            .arg(&group)
            .arg("0")
            .arg("MKSTREAM"),
    )
    .await?;
    let ce = |n: u32| {
        json!({"specversion": "1.0", "id": format!("c-{n}"), "source": "s", "type": "t",
               "datacontenttype": "application/json", "data": {"n": n}})
        .to_string()
    };
    redis_cmd::<String>(
        redis::cmd("XADD")
            .arg(&topic)
            .arg("*")
            .arg("data")
            .arg(ce(1)),
    )
    .await?;
    // The ghost consumer reads it and dies.
    redis_cmd::<redis::Value>(
        redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(&group)
            .arg("ghost")
            .arg("COUNT")
            .arg(1)
            .arg("STREAMS")
            .arg(&topic)
            .arg(">"),
    )
    .await?;
    let md = [("processingTimeout", "2s"), ("redeliverInterval", "500ms")];
    let dir = resources(&[
        ("pubsub.yaml", &b.pubsub(&md)),
        ("s.yaml", &subscription("s", &topic, "/in")),
    ]);
    // The app takes 3 s over each event: longer than processingTimeout.
    let mut app = TestApp::start_slow(
        None,
        Duration::from_secs(3),
        Arc::new(|_| (200, String::new())),
    )
    .await;
    let _a = Sidecar::start(dir.path(), Some(app.port), &[("POD_NAME", "a")], &[]).await;
    let t0 = std::time::Instant::now();
    let r = app.next(20).await?;
    assert_eq!(r.json()["data"]["n"], 1, "the ghost's entry");
    assert!(
        t0.elapsed() >= Duration::from_secs(4),
        "taken over after processingTimeout (2 s), then 3 s in the app"
    );
    // A second replica of the app joins; the first takes n = 2 and holds
    // it past processingTimeout while the second looks for entries to
    // take over every 500 ms.
    let _b2 = Sidecar::start(dir.path(), Some(app.port), &[("POD_NAME", "b")], &[]).await;
    redis_cmd::<String>(
        redis::cmd("XADD")
            .arg(&topic)
            .arg("*")
            .arg("data")
            .arg(ce(2)),
    )
    .await?;
    assert_eq!(app.next(20).await?.json()["data"]["n"], 2);
    assert!(
        app.next(6).await.is_err(),
        "held by a live sidecar past processingTimeout: not taken over"
    );
    let pending: Vec<redis::Value> = redis_cmd(
        redis::cmd("XPENDING")
            .arg(&topic)
            .arg(&group)
            .arg("-")
            .arg("+")
            .arg(10),
    )
    .await?;
    assert!(pending.is_empty(), "both acked: {pending:?}");
    Ok(())
}

/// `maxLenApprox` trims the stream as it is written (`MAXLEN ~`).
#[tokio::test]
async fn max_len_approx_trims_the_stream() -> TestResult {
    let b = Bench::new(Backend::Redis);
    let topic = b.topic("trim");
    let dir = resources(&[("pubsub.yaml", &b.pubsub(&[("maxLenApprox", "100")]))]);
    let sc = Sidecar::start(dir.path(), None, &[], &[]).await;
    let entries: Vec<Value> = (0..1000).map(|n| json!({"entryId": n.to_string(), "event": {"n": n}, "contentType": "application/json"})).collect();
    for chunk in entries.chunks(100) {
        let (status, _, body) = sc
            .call(
                "POST",
                &format!("/v1.0-alpha1/publish/bulk/pubsub/{topic}"),
                &[("content-type", "application/json")],
                &Value::Array(chunk.to_vec()).to_string(),
            )
            .await?;
        assert_eq!(status, 204, "{body:?}");
    }
    let len: u64 = redis_cmd(redis::cmd("XLEN").arg(&topic)).await?;
    // Redis trims whole nodes of the stream (100 entries each by default).
    assert!((100..=300).contains(&len), "1000 written, {len} kept");
    Ok(())
}

/// Lag is what the group has not finished: read and not acked, plus not
/// read yet.
#[tokio::test]
async fn lag_is_pending_plus_unread() -> TestResult {
    let b = Bench::new(Backend::Redis);
    let broker = b.broker(&[]);
    let topic = b.topic("lag");
    let mut stream = b.subscribe(broker.as_ref(), &topic, 1).await;
    b.publish_numbers(broker.as_ref(), &topic, 5).await?;
    let held = tokio::time::timeout(Duration::from_secs(20), stream.recv())
        .await?
        .expect("delivery");
    let lag = || async { broker.lag().await.iter().map(|l| l.messages).sum::<i64>() };
    assert_eq!(lag().await, 5, "one held (pending), four not read");
    held.ack.ack().await?;
    let next = tokio::time::timeout(Duration::from_secs(20), stream.recv())
        .await?
        .expect("delivery");
    let mut now = 0;
    for _ in 0..50 {
        now = lag().await;
        if now == 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(now, 4, "the first acked");
    drop(next);
    drop(stream);
    broker.close().await;
    Ok(())
}
