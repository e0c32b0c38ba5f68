//! A restart of the Apache Kafka broker mid-stream (`scripts/kafka.sh stop`
//! / `start`, the script the test suite starts it with): publishes during the
//! outage fail cleanly with Dapr's error JSON, `/v1.0/metadata` reports the
//! outage (and `/v1.0/healthz/outbound` stays ready, as daprd's), and every message the broker accepted (every 204) is
//! delivered once the broker is back. In its own test binary: it stops the
//! broker the other tests use.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

#[tokio::test]
async fn broker_restart_mid_stream_loses_no_accepted_message() -> TestResult {
    let b = Bench::new(Backend::Kafka);
    let topic = b.topic("restart");
    let dir = resources(&[
        (
            "pubsub.yaml",
            &b.pubsub(&[("publishTimeout", "2s"), ("topicPartitions", "2")]),
        ),
        ("s.yaml", &b.subscription("s", "restart", "/r")),
    ]);
    let mut app = TestApp::ok(None).await;
    let sc = Sidecar::start(dir.path(), Some(app.port), &[], &[]).await;
    let publish = |seq: u64| {
        let sc = &sc;
        let topic = topic.clone();
        async move {
            let (status, _, body) = tokio::time::timeout(
                Duration::from_secs(10),
                sc.call(
                    "POST",
                    &format!("/v1.0/publish/pubsub/{topic}"),
                    &[("content-type", "application/json")],
                    &json!({ "seq": seq }).to_string(),
                ),
            )
            .await
            .expect("a publish answers within the request timeout, no hang")
            .expect("the sidecar answers");
            (status, body)
        }
    };
    let mut accepted = BTreeSet::new();
    let mut delivered = BTreeSet::new();
    let mut seq = 0u64;
    // Flowing before the outage: published and delivered.
    while delivered.len() < 20 {
        let (status, body) = publish(seq).await;
        assert_eq!(status, 204, "{}", String::from_utf8_lossy(&body));
        accepted.insert(seq);
        seq += 1;
        while let Ok(r) = app.next(0).await {
            delivered.insert(r.json()["data"]["seq"].as_u64().unwrap());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let guard = KafkaBroker::stop().await;
    let mut refused = 0;
    for _ in 0..3 {
        let (status, body) = publish(seq).await;
        seq += 1;
        if status == 204 {
            // Sent before the client noticed the broker going away.
            accepted.insert(seq - 1);
            continue;
        }
        assert_eq!(status, 500, "{}", String::from_utf8_lossy(&body));
        let err: serde_json::Value = serde_json::from_slice(&body)?;
        assert_eq!(err["errorCode"], "ERR_PUBSUB_PUBLISH_MESSAGE", "{err}");
        refused += 1;
    }
    assert!(refused > 0, "publishes fail while the broker is down");
    assert!(
        sc.wait_component("pubsub", false, 10).await,
        "/v1.0/metadata reports the outage"
    );
    assert_eq!(
        sc.call("GET", "/v1.0/healthz/outbound", &[], "").await?.0,
        204,
        "outbound health stays ready, as daprd's"
    );

    guard.start().await;
    // Publish until 20 more are accepted (the client reconnects by itself).
    let deadline = Instant::now() + Duration::from_secs(60);
    let after = accepted.len() + 20;
    while accepted.len() < after && Instant::now() < deadline {
        if publish(seq).await.0 == 204 {
            accepted.insert(seq);
        }
        seq += 1;
    }
    assert_eq!(
        accepted.len(),
        after,
        "publishes succeed again after the broker returns"
    );
    // A rebalance during the outage may replay what was not yet committed
    // (at least once); every accepted message must arrive.
    while !accepted.is_subset(&delivered) {
        let r = app.next(60).await.map_err(|e| {
            let lost: Vec<_> = accepted.difference(&delivered).collect();
            format!("accepted but not delivered: {lost:?}: {e}")
        })?;
        delivered.insert(r.json()["data"]["seq"].as_u64().unwrap());
    }
    println!(
        "Kafka restart: {} accepted, {refused} refused during the outage, lost 0",
        accepted.len()
    );
    Ok(())
}
