//! RabbitMQ dead letters never vanish (code review F1, F5): the copy drops
//! the original's routing key and TTL, is published `mandatory` so an
//! unroutable copy is an error (and the original stays unacked), and quorum
//! queues carry a delivery limit the broker never reaches.

mod common;

use std::time::{Duration, Instant};

use common::*;
use lapin::options::{BasicGetOptions, QueueBindOptions};
use lapin::types::FieldTable;
use serde_json::json;

async fn channel() -> Result<(lapin::Connection, lapin::Channel), lapin::Error> {
    let conn =
        lapin::Connection::connect(RABBIT_URI, lapin::ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    Ok((conn, ch))
}

/// Waits up to `secs` for a message in `queue` and takes it.
async fn get(
    ch: &lapin::Channel,
    queue: &str,
    secs: u64,
) -> Option<lapin::message::BasicGetMessage> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let got = ch
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .ok()
            .flatten();
        if got.is_some() || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A subscription whose app answers 404 (drop) for every event, on a
/// direct exchange, bound with routing key `rk`; the component gives every
/// publish a 1 s TTL.
fn dropping_setup(b: &Bench) -> tempfile::TempDir {
    let pubsub = b.pubsub(&[("exchangeKind", "direct"), ("ttlInSeconds", "1")]);
    let topic = b.topic("orders");
    let sub = format!(
        "{}  metadata:\n    routingKey: rk\n",
        subscription("s", &topic, "/orders")
    );
    b.topic("orders.dlq");
    resources(&[("pubsub.yaml", &pubsub), ("s.yaml", &sub)])
}

async fn publish_keyed(sc: &Sidecar, topic: &str, seq: u64) -> TestResult {
    let (status, _, body) = sc
        .call(
            "POST",
            &format!("/v1.0/publish/pubsub/{topic}?metadata.routingKey=rk"),
            &[("content-type", "application/json")],
            &json!({ "seq": seq }).to_string(),
        )
        .await?;
    assert_eq!(status, 204, "{}", String::from_utf8_lossy(&body));
    Ok(())
}

#[tokio::test]
async fn a_dead_letter_with_a_routing_key_and_a_ttl_is_kept_in_the_dead_letter_queue() -> TestResult
{
    let b = Bench::new(Backend::Rabbit);
    let dir = dropping_setup(&b);
    let topic = b.topic("orders");
    let mut app = TestApp::start(None, std::sync::Arc::new(|_| (404, String::new()))).await;
    let sc = Sidecar::start(dir.path(), Some(app.port), &[], &[]).await;
    publish_keyed(&sc, &topic, 1).await?;
    app.next(30).await?;
    // Longer than the component's TTL: a dead letter must not expire.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (_conn, ch) = channel().await?;
    let dlq = format!("g-{}-{topic}.dlq", b.id);
    let m = get(&ch, &dlq, 5)
        .await
        .expect("the dead letter is in the dead-letter queue");
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&m.delivery.data)?["data"]["seq"],
        1
    );
    assert!(
        m.delivery.properties.expiration().is_none(),
        "a dead letter carries no expiration"
    );
    let headers = m.delivery.properties.headers().clone().unwrap_or_default();
    let from = match headers.inner().get("perch-dead-letter-from") {
        Some(lapin::types::AMQPValue::LongString(s)) => {
            String::from_utf8_lossy(s.as_bytes()).into_owned()
        }
        other => format!("{other:?}"),
    };
    assert_eq!(from, topic, "the dead letter names the topic it came from");
    assert!(
        !headers.inner().contains_key("routingKey"),
        "the original's routing key did not follow it"
    );
    Ok(())
}

#[tokio::test]
async fn an_unroutable_dead_letter_keeps_the_original_until_it_can_be_routed() -> TestResult {
    let b = Bench::new(Backend::Rabbit);
    let dir = dropping_setup(&b);
    let topic = b.topic("orders");
    let dlq_exchange = format!("{topic}.dlq");
    let dlq = format!("g-{}-{dlq_exchange}", b.id);
    let mut app = TestApp::start(None, std::sync::Arc::new(|_| (404, String::new()))).await;
    let sc = Sidecar::start(dir.path(), Some(app.port), &[], &[]).await;
    // Nothing is bound to the dead-letter exchange any more.
    let (_conn, ch) = channel().await?;
    ch.queue_unbind(
        dlq.as_str().into(),
        dlq_exchange.as_str().into(),
        "".into(),
        FieldTable::default(),
    )
    .await?;
    publish_keyed(&sc, &topic, 7).await?;
    app.next(30).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        get(&ch, &dlq, 0).await.is_none(),
        "nothing reached the unbound dead-letter queue"
    );
    // The original is still unacked: a clean stop puts it back in its queue.
    ch.queue_bind(
        dlq.as_str().into(),
        dlq_exchange.as_str().into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    let m = get(&ch, &dlq, 10)
        .await
        .expect("once routable, the dead letter is published and kept");
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&m.delivery.data)?["data"]["seq"],
        7
    );
    Ok(())
}

#[tokio::test]
async fn quorum_queues_carry_a_delivery_limit_the_broker_never_reaches() -> TestResult {
    let b = Bench::new(Backend::Rabbit);
    let topic = b.topic("quorum");
    b.topic("quorum.dlq");
    let dir = resources(&[
        ("pubsub.yaml", &b.pubsub(&[("queueType", "quorum")])),
        ("s.yaml", &b.subscription("s", "quorum", "/q")),
    ]);
    let app = TestApp::ok(None).await;
    let _sc = Sidecar::start(dir.path(), Some(app.port), &[], &[]).await;
    let queue = format!("g-{}-{topic}", b.id);
    let out = std::process::Command::new("rabbitmqctl")
        .args([
            "list_queues",
            "name",
            "type",
            "arguments",
            "--formatter",
            "json",
        ])
        .output()?;
    let queues: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let q = queues
        .as_array()
        .and_then(|a| a.iter().find(|q| q["name"] == queue.as_str()))
        .unwrap_or_else(|| panic!("queue {queue} declared"));
    assert_eq!(q["type"], "quorum");
    // rabbitmqctl lists arguments as [name, type, value].
    let limit = q["arguments"]
        .as_array()
        .and_then(|args| args.iter().find(|a| a[0] == "x-delivery-limit"))
        .and_then(|a| a[2].as_i64())
        .unwrap_or(0);
    assert!(
        limit >= 1_000_000,
        "a delivery limit far above RabbitMQ 4's default of 20: {q}"
    );
    Ok(())
}
