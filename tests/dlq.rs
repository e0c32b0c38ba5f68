//! `perch dlq list` and `replay` on real Kafka, RabbitMQ and Redis: messages the
//! app dropped are listed (again and again: reading consumes nothing) with
//! what Perch recorded, replayed selectively back to their topic, removed
//! from the dead-letter topic once republished, and, with the PostgreSQL
//! inbox that marked them dead, delivered to the app again with the same
//! CloudEvent id.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::*;
use serde_json::Value;

/// Runs `perch dlq <args>` on `dir` as app `test-app`; exit code, stdout, stderr.
async fn dlq(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(perch_bin())
        .arg("dlq")
        .args(args)
        .arg("--resources-path")
        .arg(dir)
        .args(["--app-id", "test-app"])
        .output()
        .await
        .expect("run perch dlq");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn listed(dir: &Path, topic: &str) -> Value {
    let (code, out, err) = dlq(dir, &["list", "--topic", topic, "--json"]).await;
    assert_eq!(code, 0, "{out}{err}");
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

async fn round_trip(b: &Bench) -> TestResult {
    let inbox = PgStore::new();
    let dir = resources(&[
        ("pubsub.yaml", &b.pubsub(&[("idempotencyStore", "inbox")])),
        ("inbox.yaml", &inbox.yaml("inbox")),
        ("s.yaml", &b.subscription("s", "orders", "/orders")),
    ]);
    let topic = b.topic("orders");
    let dead = format!("{topic}.dlq");
    // First the app drops everything; after the replay it takes it.
    let accept = Arc::new(AtomicBool::new(false));
    let a = accept.clone();
    let mut app = TestApp::start(
        None,
        Arc::new(move |_| {
            if a.load(Ordering::SeqCst) {
                (200, String::new())
            } else {
                (200, r#"{"status":"DROP"}"#.into())
            }
        }),
    )
    .await;
    let sc = Sidecar::start(dir.path(), Some(app.port), &[], &[]).await;
    for n in 1..=3 {
        let body = format!(r#"{{"n":{n}}}"#);
        assert_eq!(
            sc.publish_json(&format!("pubsub/{topic}"), &body).await,
            204
        );
    }
    let mut ids = vec![];
    for _ in 0..3 {
        ids.push(
            app.next(30)
                .await
                .map_err(|e| format!("first deliveries: {e}"))?
                .json()["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let dead_lettered = sc
        .metric_reaches("perch_dead_lettered_total", &[("topic", &topic)], 3.0)
        .await;
    assert_eq!(dead_lettered, Some(3.0));
    // The sidecar keeps running: the dead letters are read beside it.

    let l = listed(dir.path(), &dead).await;
    assert_eq!(l["count"], 3, "{l}");
    let messages = l["messages"].as_array().unwrap();
    let mut listed_ids: Vec<&str> = messages.iter().map(|m| m["id"].as_str().unwrap()).collect();
    listed_ids.sort();
    let mut want = ids.iter().map(String::as_str).collect::<Vec<_>>();
    want.sort();
    assert_eq!(listed_ids, want, "the CloudEvent ids");
    for m in messages {
        assert_eq!(m["from"], topic.as_str());
        assert_eq!(m["reason"], "app answered DROP");
        assert_eq!(m["attempts"], 1);
        assert!(m["size"].as_u64().unwrap() > 0);
        assert!(m["source"].as_str().is_some_and(|s| !s.is_empty()));
    }
    assert!(l["oldest"].is_string() && l["newest"].is_string(), "{l}");
    assert_eq!(
        listed(dir.path(), &dead).await["count"],
        3,
        "listing consumes nothing"
    );
    let text = dlq(dir.path(), &["list", "--topic", &dead]).await.1;
    assert!(
        text.contains("3 message(s)") && text.contains("app answered DROP"),
        "{text}"
    );

    // A dry run changes nothing.
    let first = messages[0]["id"].as_str().unwrap().to_owned();
    let (code, out, err) = dlq(
        dir.path(),
        &["replay", "--topic", &dead, "--id", &first, "--dry-run"],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("would replay 1"), "{out}");
    assert_eq!(listed(dir.path(), &dead).await["count"], 3);

    // The app takes them now; replay one by id, then the rest.
    accept.store(true, Ordering::SeqCst);
    let (code, out, err) = dlq(dir.path(), &["replay", "--topic", &dead, "--id", &first]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("replayed 1, kept 2"), "{out}");
    let again = app
        .next(30)
        .await
        .map_err(|e| format!("after the replay: {e}"))?
        .json();
    assert_eq!(
        again["id"],
        first.as_str(),
        "the same CloudEvent, delivered again through the inbox"
    );
    assert_eq!(again["topic"], topic.as_str());
    assert_eq!(
        listed(dir.path(), &dead).await["count"],
        2,
        "removed once republished"
    );
    let (code, out, err) = dlq(dir.path(), &["replay", "--topic", &dead]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("replayed 2, kept 0"), "{out}");
    for _ in 0..2 {
        let id = app.next(30).await?.json()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(ids.contains(&id) && id != first, "{id}");
    }
    assert_eq!(listed(dir.path(), &dead).await["count"], 0);
    assert!(app.next(2).await.is_err(), "each once");
    drop(sc);

    // A topic with no dead letters kept anywhere: a clear error.
    let (code, _, err) = dlq(dir.path(), &["list", "--topic", &b.topic("nothing-here")]).await;
    assert_eq!(code, 1);
    assert!(
        err.contains("does not exist") || err.contains("no queue"),
        "{err}"
    );
    Ok(())
}

#[tokio::test]
async fn kafka_dead_letters_are_listed_and_replayed() -> TestResult {
    round_trip(&Bench::new(Backend::Kafka)).await
}

#[tokio::test]
async fn rabbitmq_dead_letters_are_listed_and_replayed() -> TestResult {
    round_trip(&Bench::new(Backend::Rabbit)).await
}

#[tokio::test]
async fn redis_dead_letters_are_listed_and_replayed() -> TestResult {
    round_trip(&Bench::new(Backend::Redis)).await
}

/// A broker that cannot be reached is said so, with the component's name.
#[tokio::test]
async fn an_unreachable_kafka_is_a_clear_error() -> TestResult {
    let dir = resources(&[(
        "pubsub.yaml",
        &component(
            "pubsub",
            &[("brokers", "127.0.0.1:1"), ("authType", "none")],
        )
        .replace("pubsub.in-memory", "pubsub.kafka"),
    )]);
    let (code, _, err) = dlq(dir.path(), &["list", "--topic", "orders.dlq"]).await;
    assert_eq!(code, 1);
    assert!(
        err.contains("pubsub (pubsub.kafka) cannot be reached"),
        "{err}"
    );
    Ok(())
}

#[tokio::test]
async fn an_unreachable_broker_is_a_clear_error() -> TestResult {
    let dir = resources(&[(
        "pubsub.yaml",
        &component(
            "pubsub",
            &[("connectionString", "amqp://guest:guest@127.0.0.1:1")],
        )
        .replace("pubsub.in-memory", "pubsub.rabbitmq"),
    )]);
    let (code, _, err) = dlq(dir.path(), &["list", "--topic", "orders.dlq"]).await;
    assert_eq!(code, 1);
    assert!(
        err.contains("pubsub (pubsub.rabbitmq) cannot be reached"),
        "{err}"
    );
    Ok(())
}
