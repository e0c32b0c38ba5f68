//! Panics and dead tasks are not silent (review F11): the real binary on
//! RabbitMQ with the PostgreSQL inbox, and Perch's fault hooks
//! (`PERCH_FAULT_PANIC_ON`, `PERCH_FAULT_PANIC_CONSUME_ON`) standing in
//! for a bug, since Perch's own code has no input-triggered panic to use.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

/// A delivery that panics after its claim used to leave the key held (and
/// renewed) for the life of the process: every redelivered copy was
/// `Busy`, for ever. Now the claim is released, the panic logged and
/// counted, each redelivery counts as an attempt, and the message is
/// dead-lettered once its attempts pass the retry policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_delivery_releases_its_claim_and_ends_in_the_dead_letter_topic() -> TestResult {
    let b = Bench::new(Backend::Rabbit);
    let inbox = PgStore::new();
    let orders = b.topic("orders");
    let dlq = b.topic("orders-dead");
    let dir = resources(&[
        ("pubsub.yaml", &b.pubsub(&[("idempotencyStore", "inbox")])),
        ("inbox.yaml", &inbox.yaml("inbox")),
        ("r.yaml", &constant_retries("10ms", 1)),
        (
            "s.yaml",
            &subscription_with_dead_letter("s", &orders, "/orders", &dlq),
        ),
    ]);
    let mut app = TestApp::ok(None).await;
    let sc = Sidecar::start(
        dir.path(),
        Some(app.port),
        &[("PERCH_FAULT_PANIC_ON", "POISON-PILL")],
        &[],
    )
    .await;
    let publish = |body: serde_json::Value| {
        let (sc, orders) = (&sc, orders.clone());
        async move {
            sc.call(
                "POST",
                &format!("/v1.0/publish/pubsub/{orders}"),
                &[("content-type", "application/json")],
                &body.to_string(),
            )
            .await
            .unwrap()
            .0
        }
    };
    assert_eq!(publish(json!({"poison": "POISON-PILL"})).await, 204);
    assert_eq!(publish(json!({"n": 1})).await, 204);
    assert_eq!(app.next(30).await?.json()["data"]["n"], 1, "the rest flow");
    // The dead letter, read from the queue Perch declared for it (a
    // subscriber to it would run into the same fault hook).
    let conn =
        lapin::Connection::connect(RABBIT_URI, lapin::ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    let queue = format!("g-{}-{dlq}", b.id);
    let mut dead = None;
    for _ in 0..300 {
        dead = ch
            .basic_get(
                queue.as_str().into(),
                lapin::options::BasicGetOptions { no_ack: true },
            )
            .await?;
        if dead.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dead = dead.expect("the poison message is dead-lettered");
    let ce: serde_json::Value = serde_json::from_slice(&dead.delivery.data)?;
    assert_eq!(ce["data"]["poison"], "POISON-PILL");
    assert!(
        app.next(1).await.is_err(),
        "the poison never reached the app"
    );
    // Each panic is counted in its own task before its message is handed
    // back, so the count is there by now; the read is polled only to give
    // a clear failure instead of a race if that ever changes.
    let n = sc
        .metric_reaches(
            "perch_panics_total",
            &[("pubsub", "pubsub"), ("topic", &orders)],
            2.0,
        )
        .await
        .unwrap_or_default();
    assert!(n >= 2.0, "each redelivery panicked and was counted: {n}");
    assert_eq!(
        sc.call("GET", "/v1.0/healthz", &[], "").await?.0,
        204,
        "a delivery's panic does not kill the subscription"
    );
    Ok(())
}

/// A consume loop that dies used to leave the sidecar ready with the
/// subscription silently gone. Now `/v1.0/healthz` turns not ready, naming
/// the subscription, so the orchestrator restarts the sidecar.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_consume_loop_turns_the_sidecar_not_ready() -> TestResult {
    let b = Bench::new(Backend::Rabbit);
    let orders = b.topic("orders");
    let dir = resources(&[
        ("pubsub.yaml", &b.pubsub(&[])),
        ("s.yaml", &subscription("s", &orders, "/orders")),
    ]);
    let mut app = TestApp::ok(None).await;
    let sc = Sidecar::start(
        dir.path(),
        Some(app.port),
        &[("PERCH_FAULT_PANIC_CONSUME_ON", "KILL-THE-LOOP")],
        &[],
    )
    .await;
    assert_eq!(sc.call("GET", "/v1.0/healthz", &[], "").await?.0, 204);
    assert_eq!(
        sc.publish_json(&format!("pubsub/{orders}"), r#"{"n":1}"#)
            .await,
        204
    );
    assert_eq!(app.next(10).await?.json()["data"]["n"], 1);
    assert_eq!(
        sc.publish_json(&format!("pubsub/{orders}"), r#"{"x":"KILL-THE-LOOP"}"#)
            .await,
        204
    );
    let mut body = String::new();
    for _ in 0..100 {
        let (status, _, b) = sc.call("GET", "/v1.0/healthz", &[], "").await?;
        if status == 500 {
            body = String::from_utf8_lossy(&b).into_owned();
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        body.contains(&format!("pubsub/{orders}")) && body.contains("panicked"),
        "not ready, naming the subscription: {body:?}"
    );
    Ok(())
}
