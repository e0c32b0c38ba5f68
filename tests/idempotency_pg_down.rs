//! PostgreSQL stopped under load (`pg_ctlcluster ... stop` / `start`) with
//! the inbox on: deliveries pause (nothing acked, nothing delivered without
//! a claim), `/v1.0/metadata` reports it, and when Postgres returns
//! delivery resumes by itself: nothing lost, nothing duplicated. In its own
//! test binary: it stops the server other tests use.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

fn pg_ctl(action: &str) -> bool {
    let version = std::fs::read_dir("/etc/postgresql")
        .ok()
        .and_then(|mut d| d.next())
        .and_then(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .unwrap_or_else(|| "15".into());
    std::process::Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", &version, "main", action])
        .status()
        .is_ok_and(|s| s.success())
}

/// Starts PostgreSQL again however the test ends.
struct StartAgain;

impl Drop for StartAgain {
    fn drop(&mut self) {
        pg_ctl("start");
    }
}

async fn run(backend: Backend) -> TestResult {
    let b = Bench::new(backend);
    // Dropped last, after the test started PostgreSQL again.
    let store = PgStore::new();
    let dir = resources(&[
        ("pubsub.yaml", &b.pubsub(&[("idempotencyStore", "inbox")])),
        ("inbox.yaml", &store.yaml("inbox")),
        ("s.yaml", &b.subscription("s", "orders", "/orders")),
    ]);
    let seen = Arc::new(Mutex::new(BTreeMap::<u64, usize>::new()));
    let s2 = seen.clone();
    let mut app = TestApp::start(
        None,
        Arc::new(move |r| {
            *s2.lock()
                .unwrap()
                .entry(r.json()["data"]["seq"].as_u64().unwrap())
                .or_default() += 1;
            (200, String::new())
        }),
    )
    .await;
    let sc = Sidecar::start(dir.path(), Some(app.port), &[], &[]).await;
    let topic = b.topic("orders");
    let publish = |seq: u64| {
        let sc = &sc;
        let topic = topic.clone();
        async move {
            let ce = json!({"specversion": "1.0", "source": "load", "id": format!("e-{seq}"),
                            "type": "t", "data": {"seq": seq}});
            sc.call(
                "POST",
                &format!("/v1.0/publish/pubsub/{topic}"),
                &[("content-type", "application/cloudevents+json")],
                &ce.to_string(),
            )
            .await
            .unwrap()
            .0
        }
    };
    for seq in 0..30 {
        assert_eq!(publish(seq).await, 204);
    }
    let guard = StartAgain;
    assert!(pg_ctl("stop"), "pg_ctlcluster stop");
    for seq in 30..60 {
        assert_eq!(
            publish(seq).await,
            204,
            "publishing does not need the store"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        sc.wait_component("inbox", false, 6).await,
        "/v1.0/metadata reports the store outage"
    );
    let during = seen.lock().unwrap().len();
    assert!(during < 60, "deliveries paused while the store was down");
    assert!(pg_ctl("start"), "pg_ctlcluster start");
    drop(guard);
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.lock().unwrap().len() < 60 && Instant::now() < deadline {
        let _ = app.next(1).await;
    }
    while app.next(2).await.is_ok() {}
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen.len(),
        60,
        "nothing lost: {:?}",
        (0..60)
            .filter(|s| !seen.contains_key(s))
            .collect::<Vec<_>>()
    );
    assert!(
        seen.values().all(|n| *n == 1),
        "nothing duplicated: {seen:?}"
    );
    Ok(())
}

#[tokio::test]
async fn postgres_down_under_load_pauses_then_resumes_exactly_once() -> TestResult {
    run(Backend::Rabbit).await?;
    run(Backend::Kafka).await
}
