//! A restart of the RabbitMQ server mid-stream (`rabbitmqctl stop_app` /
//! `start_app`): publishes during the outage fail cleanly, the sidecar
//! reconnects by itself, and every message the broker confirmed (every 204)
//! is delivered. In its own test binary: it stops the server other tests use.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use serde_json::json;

fn rabbitmqctl(cmd: &str) -> bool {
    std::process::Command::new("rabbitmqctl")
        .arg(cmd)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Starts the RabbitMQ app again however the test ends.
struct StartAgain;

impl Drop for StartAgain {
    fn drop(&mut self) {
        rabbitmqctl("start_app");
    }
}

#[tokio::test]
async fn broker_restart_mid_stream_loses_no_confirmed_message() -> TestResult {
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
        if sc.call("GET", "/v1.0/healthz/outbound", &[], "").await?.0 == 500 {
            outage_seen = true;
        }
    }
    assert!(rabbitmqctl("start_app"), "rabbitmqctl start_app");
    drop(guard);
    for _ in 0..100 {
        if sc.call("GET", "/v1.0/healthz/outbound", &[], "").await?.0 == 204 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for _ in 0..20 {
        send(publish(seq).await, seq);
        seq += 1;
    }
    assert!(outage_seen, "/v1.0/healthz/outbound reported the outage");
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
