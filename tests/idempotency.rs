//! Idempotent delivery end to end: the real binary, a real broker (Apache
//! Kafka and RabbitMQ), and the Postgres inbox (a fresh table per test).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::json;

/// Publishes a CloudEvent with a fixed `source` and `id`.
async fn publish_event(sc: &Sidecar, topic: &str, id: &str, seq: u64) -> u16 {
    publish_from(sc, topic, "orders-service", id, seq).await
}

/// Publishes a CloudEvent with `source` and `id`.
async fn publish_from(sc: &Sidecar, topic: &str, source: &str, id: &str, seq: u64) -> u16 {
    let ce = json!({"specversion": "1.0", "source": source, "id": id,
                    "type": "order.created", "datacontenttype": "application/json",
                    "data": {"seq": seq}});
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

fn dir_for(b: &Bench, inbox: &PgStore, extra: &[(&str, &str)]) -> tempfile::TempDir {
    let mut md = vec![("idempotencyStore", "inbox")];
    md.extend_from_slice(extra);
    resources(&[
        ("pubsub.yaml", &b.pubsub(&md)),
        ("inbox.yaml", &inbox.yaml("inbox")),
        ("s.yaml", &b.subscription("s", "orders", "/orders")),
    ])
}

async fn the_same_event_published_three_times_arrives_once(b: &Bench) -> TestResult {
    let inbox = PgStore::new();
    let dir = dir_for(b, &inbox, &[]);
    let mut app = TestApp::ok(None).await;
    let sc = Sidecar::start(dir.path(), Some(app.port), &[], &[]).await;
    let topic = b.topic("orders");
    for _ in 0..3 {
        assert_eq!(publish_event(&sc, &topic, "evt-1", 1).await, 204);
    }
    assert_eq!(publish_event(&sc, &topic, "evt-2", 2).await, 204);
    // RabbitMQ's default order is `none`: the two events may arrive in
    // either order, each exactly once.
    let mut got = BTreeMap::new();
    for _ in 0..2 {
        let r = app.next(30).await?;
        let id = r.json()["id"].as_str().unwrap_or_default().to_owned();
        let key = r.headers.get("idempotency-key").cloned();
        assert!(
            got.insert(id, key).is_none(),
            "the copies of evt-1 were not delivered"
        );
    }
    let key = got.get("evt-1").cloned().flatten().unwrap_or_default();
    let prefix = format!("test-app/pubsub/{topic}/ce:");
    assert!(
        key.starts_with(&prefix) && key.len() == prefix.len() + 64,
        "evt-1 arrived once, with its key (subscriber, then the digest of source and id): {got:?}"
    );
    assert!(got.contains_key("evt-2"), "evt-2 arrived: {got:?}");
    assert!(app.next(3).await.is_err(), "nothing more");
    Ok(())
}

async fn retry_twice_then_success_is_seen_three_times_and_never_again(b: &Bench) -> TestResult {
    let inbox = PgStore::new();
    let res = constant_retries("100ms", 5);
    let dir = dir_for(b, &inbox, &[]);
    std::fs::write(dir.path().join("r.yaml"), res)?;
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let mut app = TestApp::start(
        None,
        Arc::new(move |_| {
            if c.fetch_add(1, Ordering::SeqCst) < 2 {
                (200, r#"{"status":"RETRY"}"#.into())
            } else {
                (200, r#"{"status":"SUCCESS"}"#.into())
            }
        }),
    )
    .await;
    let sc = Sidecar::start(dir.path(), Some(app.port), &[], &[]).await;
    let topic = b.topic("orders");
    assert_eq!(publish_event(&sc, &topic, "evt-r", 1).await, 204);
    for _ in 0..3 {
        assert_eq!(app.next(30).await?.json()["id"], "evt-r");
    }
    assert_eq!(
        publish_event(&sc, &topic, "evt-r", 1).await,
        204,
        "published again"
    );
    assert!(app.next(3).await.is_err(), "done: never delivered again");
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    Ok(())
}

async fn two_sidecars_of_one_app_deliver_each_event_once_in_total(b: &Bench) -> TestResult {
    let inbox = PgStore::new();
    let extra: &[(&str, &str)] = if b.backend == Backend::Kafka {
        &[("topicPartitions", "2")]
    } else {
        &[]
    };
    let dir = dir_for(b, &inbox, extra);
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let app_of = |seen: Arc<Mutex<Vec<String>>>| {
        TestApp::start(
            None,
            Arc::new(move |r| {
                seen.lock()
                    .unwrap()
                    .push(r.json()["id"].as_str().unwrap().to_owned());
                (200, String::new())
            }),
        )
    };
    let mut a = app_of(seen.clone()).await;
    let mut c = app_of(seen.clone()).await;
    let sc_a = Sidecar::start(dir.path(), Some(a.port), &[], &[]).await;
    let sc_c = Sidecar::start(dir.path(), Some(c.port), &[], &[]).await;
    let topic = b.topic("orders");
    // Every event is published twice, once through each sidecar.
    for n in 0..40u64 {
        let id = format!("evt-{n}");
        assert_eq!(publish_event(&sc_a, &topic, &id, n).await, 204);
        assert_eq!(publish_event(&sc_c, &topic, &id, n).await, 204);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    while seen.lock().unwrap().iter().collect::<BTreeSet<_>>().len() < 40
        && std::time::Instant::now() < deadline
    {
        tokio::select! {
            _ = a.next(1) => {}
            _ = c.next(1) => {}
        }
    }
    // Let late duplicates (if any) arrive.
    while a.next(2).await.is_ok() || c.next(1).await.is_ok() {}
    let seen = seen.lock().unwrap().clone();
    let distinct: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(distinct.len(), 40, "every event arrived");
    assert_eq!(seen.len(), 40, "each once in total, over both sidecars");
    Ok(())
}

/// Rows of the inbox in state `in_progress` (claimed, not yet marked).
fn claimed(inbox: &PgStore) -> usize {
    let out = std::process::Command::new("psql")
        .args([
            PG,
            "-Atc",
            &format!(
                "SELECT count(*) FROM {} WHERE state = 'in_progress'",
                inbox.table
            ),
        ])
        .output()
        .expect("psql runs");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

async fn claims_run_ahead_while_the_app_sees_at_most_max_in_flight(b: &Bench) -> TestResult {
    let inbox = PgStore::new();
    let dir = dir_for(
        b,
        &inbox,
        &[("maxInFlight", "2"), ("deliveryOrder", "none")],
    );
    let mut app = TestApp::acking_after(Duration::from_millis(300)).await;
    let sc = Sidecar::start(dir.path(), Some(app.port), &[], &[]).await;
    let topic = b.topic("orders");
    for n in 0..12u64 {
        assert_eq!(
            publish_event(&sc, &topic, &format!("evt-{n}"), n).await,
            204
        );
    }
    // The store claims what the broker handed out while the app works
    // through two at a time.
    let mut most_claimed = 0;
    let mut ids = BTreeSet::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while ids.len() < 12 && std::time::Instant::now() < deadline {
        most_claimed = most_claimed.max(claimed(&inbox));
        if let Ok(r) = app.next(1).await {
            assert!(
                ids.insert(r.json()["id"].as_str().unwrap().to_owned()),
                "delivered once"
            );
        }
    }
    assert_eq!(ids.len(), 12, "every event arrives");
    assert_eq!(
        app.max_concurrent.load(Ordering::SeqCst),
        2,
        "the app never has more than maxInFlight requests open"
    );
    assert!(
        most_claimed > 2,
        "claims ran ahead of the app's window (at most {most_claimed} claimed at once)"
    );
    Ok(())
}

/// Two events whose `source` and `id` would join into the same text.
async fn distinct_events_that_read_alike_both_arrive(b: &Bench) -> TestResult {
    let inbox = PgStore::new();
    let dir = dir_for(b, &inbox, &[]);
    let mut app = TestApp::ok(None).await;
    let sc = Sidecar::start(dir.path(), Some(app.port), &[], &[]).await;
    let topic = b.topic("orders");
    assert_eq!(publish_from(&sc, &topic, "a b", "c", 1).await, 204);
    assert_eq!(publish_from(&sc, &topic, "a", "b c", 2).await, 204);
    let mut seqs = BTreeSet::new();
    for _ in 0..2 {
        seqs.insert(app.next(30).await?.json()["data"]["seq"].as_u64().unwrap());
    }
    assert_eq!(seqs, [1, 2].into(), "neither was taken for the other");
    Ok(())
}

/// Ids PostgreSQL cannot keep as text (a NUL byte) or index (over about
/// 2.7 KB) neither stall the subscription nor lose their dedupe.
async fn ids_the_database_cannot_store_do_not_stall_delivery(b: &Bench) -> TestResult {
    let inbox = PgStore::new();
    let dir = dir_for(b, &inbox, &[]);
    let mut app = TestApp::ok(None).await;
    let sc = Sidecar::start(dir.path(), Some(app.port), &[], &[]).await;
    let topic = b.topic("orders");
    let long = "x".repeat(10_000);
    for (seq, id) in [
        (1, "nul\u{0}id"),
        (2, long.as_str()),
        (1, "nul\u{0}id"),
        (3, "plain"),
    ] {
        assert_eq!(publish_from(&sc, &topic, "s", id, seq).await, 204);
    }
    let mut seqs = vec![];
    for _ in 0..3 {
        seqs.push(app.next(30).await?.json()["data"]["seq"].as_u64().unwrap());
    }
    seqs.sort();
    assert_eq!(seqs, [1, 2, 3], "each delivered, the NUL id once");
    assert!(
        app.next(3).await.is_err(),
        "the copy of the NUL id was suppressed"
    );
    Ok(())
}

/// A message dead-lettered after its retries (marked dead, never
/// delivered) and published again, as a replay does, reaches the app.
async fn a_replayed_dead_letter_reaches_the_app_again(b: &Bench) -> TestResult {
    let inbox = PgStore::new();
    let res = constant_retries("100ms", 0);
    let dir = dir_for(b, &inbox, &[("deadLetterDefault", "none")]);
    std::fs::write(dir.path().join("r.yaml"), res)?;
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let mut app = TestApp::start(
        None,
        Arc::new(move |_| {
            if c.fetch_add(1, Ordering::SeqCst) == 0 {
                (500, String::new())
            } else {
                (200, String::new())
            }
        }),
    )
    .await;
    let sc = Sidecar::start(dir.path(), Some(app.port), &[], &[]).await;
    let topic = b.topic("orders");
    assert_eq!(publish_event(&sc, &topic, "evt-d", 1).await, 204);
    assert_eq!(app.next(30).await?.json()["id"], "evt-d");
    // Retries exhausted: the key is dead. Wait until it is marked.
    let mut dead = false;
    for _ in 0..50 {
        let state = psql(&format!(
            "SELECT state FROM {} WHERE state = 'dead'",
            inbox.table
        ));
        if state.contains("dead") {
            dead = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(dead, "the exhausted message was marked dead");
    assert_eq!(publish_event(&sc, &topic, "evt-d", 1).await, 204);
    assert_eq!(
        app.next(30).await?.json()["id"],
        "evt-d",
        "the replay was delivered, not taken for a duplicate"
    );
    Ok(())
}

/// SIGTERM with claims run ahead and deliveries cut off by the grace
/// period (review F8): every claim this sidecar still holds is given back
/// at shutdown, so the next sidecar delivers them at once instead of after
/// their 60 s lease.
async fn sigterm_hands_unfinished_claims_over_at_once(b: &Bench) -> TestResult {
    let inbox = PgStore::new();
    let dir = dir_for(
        b,
        &inbox,
        &[("maxInFlight", "2"), ("deliveryOrder", "none")],
    );
    std::fs::write(
        dir.path().join("inbox.yaml"),
        inbox.yaml("inbox").replace("value: 3s", "value: 60s"),
    )?;
    // The first sidecar's app takes every event and never answers.
    let mut slow = TestApp::start(None, Arc::new(|_| (0, String::new()))).await;
    let mut a = Sidecar::start(
        dir.path(),
        Some(slow.port),
        &[],
        &["--dapr-graceful-shutdown-seconds", "1"],
    )
    .await;
    let topic = b.topic("orders");
    for n in 0..20u64 {
        assert_eq!(publish_event(&a, &topic, &format!("evt-{n}"), n).await, 204);
    }
    let first = slow.next(30).await?.json()["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let pid = a.child.id().expect("running").to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()?
        .success());
    a.child.wait().await?;
    let mut fast = TestApp::ok(None).await;
    let _b = Sidecar::start(dir.path(), Some(fast.port), &[], &[]).await;
    // Nothing was finished there, so the next sidecar must deliver all 20.
    let deadline = std::time::Instant::now() + Duration::from_secs(25);
    let mut seen = BTreeSet::new();
    while seen.len() < 20 && std::time::Instant::now() < deadline {
        if let Ok(r) = fast.next(1).await {
            seen.insert(r.json()["id"].as_str().unwrap_or_default().to_owned());
        }
    }
    assert!(
        seen.contains(&first),
        "the delivery cut off by the grace period came back"
    );
    assert_eq!(
        seen.len(),
        20,
        "the next sidecar delivered every unfinished event well before the 60 s lease: {seen:?}"
    );
    Ok(())
}

/// A pubsub with the inbox and a bulk subscription to `orders` (batches of
/// at most 10, flushed after 100 ms).
fn bulk_dir_for(b: &Bench, inbox: &PgStore, extra: &[(&str, &str)]) -> tempfile::TempDir {
    let mut md = vec![("idempotencyStore", "inbox")];
    md.extend_from_slice(extra);
    let sub = format!(
        "apiVersion: dapr.io/v2alpha1\nkind: Subscription\nmetadata: {{name: s}}\nspec:\n  pubsubname: pubsub\n  topic: {}\n  bulkSubscribe: {{enabled: true, maxMessagesCount: 10, maxAwaitDurationMs: 100}}\n  routes: {{default: /bulk}}\n",
        b.topic("orders")
    );
    resources(&[
        ("pubsub.yaml", &b.pubsub(&md)),
        ("inbox.yaml", &inbox.yaml("inbox")),
        ("s.yaml", &sub),
    ])
}

/// An app answering each bulk entry with `answer(event id, how many times
/// that id was seen before)`; every event id it was sent, in order.
async fn bulk_app(answer: fn(&str, usize) -> &'static str) -> (TestApp, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let s = seen.clone();
    let app = TestApp::start(
        None,
        Arc::new(move |r| {
            let body = r.json();
            let mut statuses = vec![];
            for e in body["entries"].as_array().into_iter().flatten() {
                let id = e["event"]["id"].as_str().unwrap_or_default().to_owned();
                let mut seen = s.lock().unwrap();
                let before = seen.iter().filter(|x| **x == id).count();
                seen.push(id.clone());
                statuses.push(json!({"entryId": e["entryId"], "status": answer(&id, before)}));
            }
            (200, json!({ "statuses": statuses }).to_string())
        }),
    )
    .await;
    (app, seen)
}

/// Waits until `seen` holds `distinct` different ids (at most 40 s), then
/// lets late copies arrive; the ids seen.
async fn bulk_seen(
    apps: &mut [&mut TestApp],
    seen: &Mutex<Vec<String>>,
    distinct: usize,
) -> Vec<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    while seen.lock().unwrap().iter().collect::<BTreeSet<_>>().len() < distinct
        && std::time::Instant::now() < deadline
    {
        for a in apps.iter_mut() {
            let _ = a.next(1).await;
        }
    }
    let mut quiet = false;
    while !quiet {
        quiet = true;
        for a in apps.iter_mut() {
            if a.next(2).await.is_ok() {
                quiet = false;
            }
        }
    }
    seen.lock().unwrap().clone()
}

async fn bulk_the_same_event_published_three_times_arrives_once(b: &Bench) -> TestResult {
    let inbox = PgStore::new();
    let dir = bulk_dir_for(b, &inbox, &[]);
    let (mut app, seen) = bulk_app(|_, _| "SUCCESS").await;
    let sc = Sidecar::start(dir.path(), Some(app.port), &[], &[]).await;
    let topic = b.topic("orders");
    for _ in 0..3 {
        assert_eq!(publish_event(&sc, &topic, "evt-1", 1).await, 204);
    }
    assert_eq!(publish_event(&sc, &topic, "evt-2", 2).await, 204);
    let mut got = bulk_seen(&mut [&mut app], &seen, 2).await;
    got.sort();
    assert_eq!(got, ["evt-1", "evt-2"], "each event once");
    let suppressed = sc
        .metric("perch_duplicates_suppressed_total", &[("topic", &topic)])
        .await;
    assert_eq!(
        suppressed,
        Some(2.0),
        "the two copies were acked without delivery"
    );
    Ok(())
}

async fn bulk_retry_twice_then_success_is_seen_three_times_and_never_again(
    b: &Bench,
) -> TestResult {
    let inbox = PgStore::new();
    let dir = bulk_dir_for(b, &inbox, &[]);
    std::fs::write(dir.path().join("r.yaml"), constant_retries("100ms", 5))?;
    let (mut app, seen) = bulk_app(|_, before| if before < 2 { "RETRY" } else { "SUCCESS" }).await;
    let sc = Sidecar::start(dir.path(), Some(app.port), &[], &[]).await;
    let topic = b.topic("orders");
    assert_eq!(publish_event(&sc, &topic, "evt-r", 1).await, 204);
    for _ in 0..3 {
        app.next(30).await?;
    }
    assert_eq!(
        publish_event(&sc, &topic, "evt-r", 1).await,
        204,
        "published again"
    );
    assert!(app.next(3).await.is_err(), "done: never delivered again");
    assert_eq!(seen.lock().unwrap().len(), 3);
    Ok(())
}

async fn bulk_two_sidecars_of_one_app_deliver_each_event_once_in_total(b: &Bench) -> TestResult {
    let inbox = PgStore::new();
    let extra: &[(&str, &str)] = if b.backend == Backend::Kafka {
        &[("topicPartitions", "2")]
    } else {
        &[]
    };
    let dir = bulk_dir_for(b, &inbox, extra);
    let (mut a, seen_a) = bulk_app(|_, _| "SUCCESS").await;
    let (mut c, seen_c) = bulk_app(|_, _| "SUCCESS").await;
    let sc_a = Sidecar::start(dir.path(), Some(a.port), &[], &[]).await;
    let sc_c = Sidecar::start(dir.path(), Some(c.port), &[], &[]).await;
    let topic = b.topic("orders");
    for n in 0..40u64 {
        let id = format!("evt-{n}");
        assert_eq!(publish_event(&sc_a, &topic, &id, n).await, 204);
        assert_eq!(publish_event(&sc_c, &topic, &id, n).await, 204);
    }
    let all_seen = || {
        let mut all = seen_a.lock().unwrap().clone();
        all.extend(seen_c.lock().unwrap().iter().cloned());
        all
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    while all_seen().iter().collect::<BTreeSet<_>>().len() < 40
        && std::time::Instant::now() < deadline
    {
        let _ = a.next(1).await;
        let _ = c.next(1).await;
    }
    while a.next(2).await.is_ok() || c.next(1).await.is_ok() {}
    let all = all_seen();
    let distinct: BTreeSet<&String> = all.iter().collect();
    assert_eq!(distinct.len(), 40, "every event arrived");
    assert_eq!(all.len(), 40, "each once in total, over both sidecars");
    Ok(())
}

macro_rules! suite {
    ($module:ident, $backend:expr) => {
        mod $module {
            use super::*;
            suite!(@tests $backend;
                the_same_event_published_three_times_arrives_once,
                retry_twice_then_success_is_seen_three_times_and_never_again,
                two_sidecars_of_one_app_deliver_each_event_once_in_total,
                claims_run_ahead_while_the_app_sees_at_most_max_in_flight,
                distinct_events_that_read_alike_both_arrive,
                ids_the_database_cannot_store_do_not_stall_delivery,
                a_replayed_dead_letter_reaches_the_app_again,
                sigterm_hands_unfinished_claims_over_at_once,
                bulk_the_same_event_published_three_times_arrives_once,
                bulk_retry_twice_then_success_is_seen_three_times_and_never_again,
                bulk_two_sidecars_of_one_app_deliver_each_event_once_in_total);
        }
    };
    (@tests $backend:expr; $($name:ident),*) => {
        $(
            #[tokio::test]
            async fn $name() -> TestResult {
                super::$name(&Bench::new($backend)).await
            }
        )*
    };
}

suite!(kafka, Backend::Kafka);
suite!(rabbitmq, Backend::Rabbit);

/// Publishes 120 events, SIGKILLs the sidecar after 40 deliveries, starts
/// it again, and checks: nothing lost, and every event delivered twice was
/// first delivered before the kill (in flight), at most `window` of them.
async fn sigkill_scenario(
    dir: &std::path::Path,
    topic: &str,
    window: usize,
    what: &str,
) -> TestResult {
    let log = Arc::new(Mutex::new(Vec::<(String, bool)>::new()));
    let killed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (l, k) = (log.clone(), killed.clone());
    let mut app = TestApp::start_slow(
        None,
        Duration::from_millis(20),
        Arc::new(move |r| {
            let id = r.json()["id"].as_str().unwrap().to_owned();
            l.lock().unwrap().push((id, k.load(Ordering::SeqCst)));
            (200, String::new())
        }),
    )
    .await;
    let mut sc = Sidecar::start(dir, Some(app.port), &[], &[]).await;
    for n in 0..120u64 {
        assert_eq!(publish_event(&sc, topic, &format!("evt-{n}"), n).await, 204);
    }
    for _ in 0..40 {
        app.next(30).await?;
    }
    sc.child.start_kill()?;
    sc.child.wait().await?;
    killed.store(true, Ordering::SeqCst);
    let _sc = Sidecar::start(dir, Some(app.port), &[], &[]).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while log
        .lock()
        .unwrap()
        .iter()
        .map(|(id, _)| id)
        .collect::<BTreeSet<_>>()
        .len()
        < 120
        && std::time::Instant::now() < deadline
    {
        let _ = app.next(1).await;
    }
    while app.next(2).await.is_ok() {}
    let log = log.lock().unwrap().clone();
    let mut count: BTreeMap<&str, usize> = BTreeMap::new();
    for (id, _) in &log {
        *count.entry(id.as_str()).or_default() += 1;
    }
    assert_eq!(count.len(), 120, "nothing lost");
    let before_kill: BTreeSet<&str> = log
        .iter()
        .filter(|(_, k)| !k)
        .map(|(id, _)| id.as_str())
        .collect();
    let duplicated: Vec<&str> = count
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, _)| *id)
        .collect();
    for id in &duplicated {
        assert!(
            before_kill.contains(id),
            "{id} was delivered twice without having been in flight at the kill"
        );
    }
    assert!(
        duplicated.len() <= window,
        "duplicates are bounded by the in-flight window: {duplicated:?}"
    );
    println!(
        "{what} SIGKILL with the Postgres inbox: {} duplicates over 120 events",
        duplicated.len()
    );
    Ok(())
}

/// SIGKILL while delivering, on one broker: 8 in flight per lane (one
/// queue on RabbitMQ; each of 2 partitions on Kafka).
async fn sigkill_with_the_inbox(backend: Backend) -> TestResult {
    let b = Bench::new(backend);
    let inbox = PgStore::new();
    let (window, what) = match backend {
        Backend::Kafka => (16, "Kafka"),
        _ => (8, "RabbitMQ"),
    };
    let mut extra = vec![("maxInFlight", "8"), ("deliveryOrder", "none")];
    if backend == Backend::Kafka {
        extra.push(("topicPartitions", "2"));
    }
    let dir = dir_for(&b, &inbox, &extra);
    sigkill_scenario(dir.path(), &b.topic("orders"), window, what).await
}

#[tokio::test]
async fn sigkill_while_delivering_loses_nothing_and_duplicates_only_what_was_in_flight(
) -> TestResult {
    sigkill_with_the_inbox(Backend::Rabbit).await
}

/// The same on Apache Kafka: the restarted sidecar rejoins the group and
/// gets its partitions back.
#[tokio::test]
async fn kafka_sigkill_with_the_inbox_loses_nothing_and_duplicates_only_what_was_in_flight(
) -> TestResult {
    sigkill_with_the_inbox(Backend::Kafka).await
}
