//! A stop of the Redis server mid-stream: publishes during the outage fail
//! cleanly (Dapr's 500) and the outage shows in the metadata API, the
//! sidecar reconnects by itself (its blocking read, its acks), and every
//! message Redis took (every 204) is delivered. In its own test binary: it
//! stops the server other tests use (`scripts/services.sh`'s functions),
//! and starts it again however the test ends.

mod common;

use std::collections::BTreeSet;

use common::*;
use serde_json::json;

fn services(cmd: &str) -> bool {
    std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            ". {}/scripts/services.sh; {cmd}; STARTED_SERVICES=\"\"",
            env!("CARGO_MANIFEST_DIR")
        ))
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Starts Redis again however the test ends.
struct StartAgain;

impl Drop for StartAgain {
    fn drop(&mut self) {
        services("redis_run");
    }
}

#[tokio::test]
async fn redis_down_mid_stream_loses_no_accepted_message() -> TestResult {
    let b = Bench::new(Backend::Redis);
    let topic = b.topic("restart");
    let dir = resources(&[
        ("pubsub.yaml", &b.pubsub(&[])),
        ("s.yaml", &b.subscription("s", "restart", "/r")),
    ]);
    let mut app = TestApp::ok(None).await;
    let sc = Sidecar::start(dir.path(), Some(app.port), &[], &[]).await;
    let target = format!("pubsub/{topic}");
    let publish = |seq: u64| {
        let body = json!({ "seq": seq }).to_string();
        let (sc, target) = (&sc, &target);
        async move { sc.publish_json(target, &body).await }
    };
    let mut accepted = BTreeSet::new();
    let mut refused = 0;
    let mut statuses = BTreeSet::new();
    let mut seq = 0u64;
    for _ in 0..20 {
        if publish(seq).await == 204 {
            accepted.insert(seq);
        }
        seq += 1;
    }
    let guard = StartAgain;
    assert!(services("redis_stop"), "redis stop");
    let mut outage_seen = false;
    for _ in 0..10 {
        match publish(seq).await {
            204 => {
                accepted.insert(seq);
            }
            s => {
                refused += 1;
                statuses.insert(s);
            }
        }
        seq += 1;
        if sc.component_healthy("pubsub").await == Some(false) {
            outage_seen = true;
        }
    }
    assert!(services("redis_run"), "redis start");
    drop(guard);
    sc.wait_component("pubsub", true, 20).await;
    for _ in 0..20 {
        if publish(seq).await == 204 {
            accepted.insert(seq);
        }
        seq += 1;
    }
    assert!(outage_seen, "/v1.0/metadata reported the outage");
    assert!(refused > 0, "publishes during the outage were refused");
    assert_eq!(statuses, BTreeSet::from([500]), "refused with Dapr's 500");
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
    Ok(())
}
