//! Swapping brokers is a YAML change: the same app and the same
//! subscription file, run with the shipped Kafka, RabbitMQ and Redis
//! components in turn (`components/*/pubsub.yaml`, unchanged), give the
//! same deliveries.

mod common;

use std::collections::BTreeMap;

use common::*;
use serde_json::{json, Value};

/// Runs the shipped `components/<broker>/pubsub.yaml` with the in-memory
/// folder's subscription; returns what the app received for this run, by
/// sequence number, without the per-event fields (id, time, trace).
async fn run_with(
    broker: &str,
    run: &str,
) -> Result<BTreeMap<u64, Value>, Box<dyn std::error::Error>> {
    let root = env!("CARGO_MANIFEST_DIR");
    let component = std::fs::read_to_string(format!("{root}/components/{broker}/pubsub.yaml"))?;
    let subscription =
        std::fs::read_to_string(format!("{root}/components/in-memory/subscription.yaml"))?;
    let dir = resources(&[
        ("pubsub.yaml", &component),
        ("subscription.yaml", &subscription),
    ]);
    let mut app = TestApp::ok(None).await;
    let sc = Sidecar::start(dir.path(), Some(app.port), &[], &[]).await;
    for seq in 0..20u64 {
        let (status, _, _) = sc
            .call(
                "POST",
                &format!(
                    "/v1.0/publish/pubsub/orders?metadata.partitionKey=k{}",
                    seq % 4
                ),
                &[("content-type", "application/json")],
                &json!({"run": run, "seq": seq}).to_string(),
            )
            .await?;
        assert_eq!(status, 204, "{broker}");
    }
    let mut got = BTreeMap::new();
    while got.len() < 20 {
        let r = app.next(30).await.map_err(|e| format!("{broker}: {e}"))?;
        let mut ev = r.json();
        // Earlier runs' leftovers on a durable broker are not this run's.
        if ev["data"]["run"] != run {
            continue;
        }
        assert_eq!(r.path, "/orders");
        assert_eq!(r.headers["content-type"], "application/cloudevents+json");
        let seq = ev["data"]["seq"].as_u64().unwrap();
        for k in ["id", "time", "traceid", "traceparent", "tracestate"] {
            ev.as_object_mut().unwrap().remove(k);
        }
        got.insert(seq, ev);
    }
    Ok(got)
}

#[tokio::test]
async fn the_same_app_gets_the_same_events_on_kafka_rabbitmq_and_redis() -> TestResult {
    let run = uuid::Uuid::new_v4().to_string();
    let kafka = run_with("kafka", &run).await?;
    let rabbit = run_with("rabbitmq", &run).await?;
    let redis = run_with("redis", &run).await?;
    assert_eq!(kafka.len(), 20);
    assert_eq!(
        kafka, rabbit,
        "same CloudEvents, whichever broker carried them"
    );
    assert_eq!(kafka, redis, "same CloudEvents on Redis");
    assert_eq!(kafka[&0]["source"], "test-app");
    assert_eq!(kafka[&0]["topic"], "orders");
    Ok(())
}
