//! A restart of the RabbitMQ server mid-stream (`rabbitmqctl stop_app` /
//! `start_app`): publishes during the outage fail cleanly, the sidecar
//! reconnects by itself, and every message the broker confirmed (every 204)
//! is delivered; and a channel closed under a message in its retry backoff.
//! In its own test binary: it stops the server other tests use.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use serde_json::json;

fn rabbitmqctl(cmd: &str) -> bool {
    let mut args = vec![cmd];
    if cmd == "close_all_connections" {
        args.push("test: closed by the test");
    }
    std::process::Command::new("rabbitmqctl")
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The tests here disturb the one broker: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Starts the RabbitMQ app again however the test ends.
struct StartAgain;

impl Drop for StartAgain {
    fn drop(&mut self) {
        rabbitmqctl("start_app");
    }
}

#[tokio::test]
async fn broker_restart_mid_stream_loses_no_confirmed_message() -> TestResult {
    let _serial = SERIAL.lock().await;
    let b = Bench::new(Backend::Rabbit);
    let topic = b.topic("restart");
    let dir = resources(&[
        ("pubsub.yaml", &b.pubsub(&[("reconnectWaitSeconds", "1")])),
        ("s.yaml", &b.subscription("s", "restart", "/r")),
    ]);
    let mut app = TestApp::ok(None).await;
    let sc = Sidecar::start(dir.path(), Some(app.port), &[], &[]).await;
    let publish = |seq: u64| {
        let sc = &sc;
        let topic = topic.clone();
        async move {
            sc.call(
                "POST",
                &format!("/v1.0/publish/pubsub/{topic}"),
                &[("content-type", "application/json")],
                &json!({ "seq": seq }).to_string(),
            )
            .await
            .map(|r| r.0)
            .unwrap_or(0)
        }
    };
    let mut accepted = BTreeSet::new();
    let mut refused = 0;
    let mut seq = 0u64;
    let mut send = |status: u16, seq: u64| {
        if status == 204 {
            accepted.insert(seq);
        } else {
            refused += 1;
        }
    };
    for _ in 0..20 {
        send(publish(seq).await, seq);
        seq += 1;
    }
    let guard = StartAgain;
    assert!(rabbitmqctl("stop_app"), "rabbitmqctl stop_app");
    let mut outage_seen = false;
    for _ in 0..10 {
        send(publish(seq).await, seq);
        seq += 1;
        if sc.component_healthy("pubsub").await == Some(false) {
            outage_seen = true;
        }
    }
    assert!(rabbitmqctl("start_app"), "rabbitmqctl start_app");
    drop(guard);
    sc.wait_component("pubsub", true, 20).await;
    for _ in 0..20 {
        send(publish(seq).await, seq);
        seq += 1;
    }
    assert!(outage_seen, "/v1.0/metadata reported the outage");
    assert!(refused > 0, "publishes during the outage were refused");
    let mut got = BTreeSet::new();
    while !accepted.is_subset(&got) {
        let r = app.next(60).await.map_err(|e| {
            format!(
                "{e}; missing {:?}",
                accepted.difference(&got).collect::<Vec<_>>()
            )
        })?;
        got.insert(r.json()["data"]["seq"].as_u64().unwrap());
    }
    println!(
        "restart: {} confirmed and all delivered, {refused} refused during the outage",
        accepted.len()
    );
    Ok(())
}

/// Messages waiting in `queue` (0 when it does not exist).
async fn depth(queue: &str) -> u32 {
    let Ok(conn) =
        lapin::Connection::connect(RABBIT_URI, lapin::ConnectionProperties::default()).await
    else {
        return 0;
    };
    let Ok(ch) = conn.create_channel().await else {
        return 0;
    };
    let passive = lapin::options::QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let n = ch
        .queue_declare(queue.into(), passive, lapin::types::FieldTable::default())
        .await
        .map_or(0, |q| q.message_count());
    let _ = conn.close(200, "depth read".into()).await;
    n
}

/// The channel dies while a message is in its retry backoff (review F6):
/// the broker requeues it, and the copy on the dead channel stops retrying
/// at once instead of running out its retries into the dead-letter topic
/// beside the redelivered copy. The app fails every attempt, so exactly one
/// dead letter (the redelivered copy's) is the right count.
#[tokio::test]
async fn a_lost_channel_is_not_retries_exhausted() -> TestResult {
    let _serial = SERIAL.lock().await;
    let b = Bench::new(Backend::Rabbit);
    let topic = b.topic("lost");
    let dlq = format!("g-{}-{topic}.dlq", b.id);
    let dir = resources(&[
        ("pubsub.yaml", &b.pubsub(&[("reconnectWaitSeconds", "1")])),
        ("s.yaml", &b.subscription("s", "lost", "/r")),
        ("r.yaml", &constant_retries("500ms", 6)),
    ]);
    let mut app = TestApp::start(None, std::sync::Arc::new(|_| (500, String::new()))).await;
    let sc = Sidecar::start(dir.path(), Some(app.port), &[], &[]).await;
    let (status, _, _) = sc
        .call(
            "POST",
            &format!("/v1.0/publish/pubsub/{topic}"),
            &[("content-type", "application/json")],
            &json!({ "seq": 1 }).to_string(),
        )
        .await?;
    assert_eq!(status, 204);
    app.next(30).await?;
    assert!(
        rabbitmqctl("close_all_connections"),
        "rabbitmqctl close_all_connections"
    );
    // The redelivered copy runs out its retries (3 s) after the reconnect.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while depth(&dlq).await == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Long enough for a zombie copy to have run out its retries too.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        depth(&dlq).await,
        1,
        "one dead letter, from the live delivery only"
    );
    Ok(())
}
