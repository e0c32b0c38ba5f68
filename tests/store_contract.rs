//! The idempotency store contract, against `store.in-memory` and against
//! `store.postgresql` on the machine's PostgreSQL (a fresh table per test,
//! dropped afterwards).

use std::sync::Arc;
use std::time::Duration;

mod common;

use common::{psql, PG};
use perch::store::config::{StoreComponent, StoreKind};
use perch::store::{Claim, Finish, Key, Pass, Relayed, Store};

type TestResult = Result<(), Box<dyn std::error::Error>>;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Memory,
    Postgres,
}

/// Two sidecars' stores on one backend (the in-memory store is one process:
/// both are the same store), and the table to drop.
struct Pair {
    a: Arc<dyn Store>,
    b: Arc<dyn Store>,
    table: Option<String>,
}

impl Drop for Pair {
    fn drop(&mut self) {
        if let Some(t) = self.table.take() {
            let _ = std::process::Command::new("psql")
                .args([PG, "-qc", &format!("DROP TABLE IF EXISTS {t}, {t}_out")])
                .output();
        }
    }
}

fn component(kind: Kind, table: &str, lease: Duration, retention: Duration) -> StoreComponent {
    StoreComponent {
        name: "store".into(),
        kind: match kind {
            Kind::Memory => StoreKind::Memory {
                max_entries: 100_000,
            },
            Kind::Postgres => StoreKind::Postgres {
                connection_string: PG.into(),
                inbox_table: table.into(),
                outbox_table: format!("{table}_out"),
                max_connections: 4,
                cleanup_interval: Duration::from_secs(3600),
            },
        },
        retention,
        lease,
    }
}

fn pair(kind: Kind, lease: Duration, retention: Duration) -> Pair {
    let table = format!("inbox_{}", uuid::Uuid::new_v4().simple());
    let c = component(kind, &table, lease, retention);
    let a = perch::store::build(&c).expect("store builds");
    let b = match kind {
        Kind::Memory => a.clone(),
        Kind::Postgres => perch::store::build(&c).expect("store builds"),
    };
    Pair {
        a,
        b,
        table: (kind == Kind::Postgres).then_some(table),
    }
}

fn key(n: u32) -> Key {
    Key {
        subscriber: "app/pubsub/orders".into(),
        msg_key: format!("source id-{n}"),
    }
}

async fn one(store: &dyn Store, k: &Key) -> Claim {
    store.claim(vec![k.clone()]).await.unwrap()[0]
}

async fn claim_done_and_duplicates(kind: Kind) -> TestResult {
    let p = pair(kind, Duration::from_secs(60), Duration::from_secs(3600));
    let k = key(1);
    assert_eq!(one(p.a.as_ref(), &k).await, Claim::Owned { attempts: 1 });
    assert_eq!(one(p.b.as_ref(), &k).await, Claim::Busy, "a live lease");
    assert_eq!(p.a.finish(vec![k.clone()], Finish::Done).await?, [true]);
    assert_eq!(one(p.b.as_ref(), &k).await, Claim::Done, "a duplicate");
    let dead = key(2);
    assert_eq!(one(p.a.as_ref(), &dead).await, Claim::Owned { attempts: 1 });
    p.a.finish(vec![dead.clone()], Finish::Dead).await?;
    assert_eq!(
        one(p.b.as_ref(), &dead).await,
        Claim::Owned { attempts: 1 },
        "dead-lettered was never delivered: a replay is claimed anew, attempts counted afresh"
    );
    assert_eq!(
        one(p.a.as_ref(), &dead).await,
        Claim::Busy,
        "and held by its new owner"
    );
    Ok(())
}

/// Review F8: `attempts` counted claims, so claims that ran ahead of the
/// app and were cut off (crash loops) pushed messages that never reached
/// the app to the over-claim dead letter. Only started deliveries count.
async fn release_lets_the_next_claim_in_and_counts_attempts(kind: Kind) -> TestResult {
    let p = pair(kind, Duration::from_secs(60), Duration::from_secs(3600));
    let k = key(1);
    assert_eq!(one(p.a.as_ref(), &k).await, Claim::Owned { attempts: 1 });
    p.a.release(vec![k.clone()]).await?;
    assert_eq!(
        one(p.b.as_ref(), &k).await,
        Claim::Owned { attempts: 1 },
        "a claim that never reached the app does not count"
    );
    p.b.started(vec![k.clone()]).await?;
    p.b.release(vec![k.clone()]).await?;
    assert_eq!(one(p.a.as_ref(), &k).await, Claim::Owned { attempts: 2 });
    p.a.started(vec![k.clone()]).await?;
    p.a.release(vec![k.clone()]).await?;
    assert_eq!(
        one(p.b.as_ref(), &k).await,
        Claim::Owned { attempts: 3 },
        "attempts survive owners"
    );
    Ok(())
}

async fn an_expired_lease_is_taken_over_and_the_old_owner_is_fenced(kind: Kind) -> TestResult {
    let mut p = pair(kind, Duration::from_secs(1), Duration::from_secs(3600));
    if kind == Kind::Postgres {
        // Fenced: an owner that lost its claim can no longer mark it.
        let k = key(2);
        assert_eq!(one(p.a.as_ref(), &k).await, Claim::Owned { attempts: 1 });
        p.a.release(vec![k.clone()]).await?;
        assert_eq!(one(p.b.as_ref(), &k).await, Claim::Owned { attempts: 1 });
        assert_eq!(
            p.a.finish(vec![k.clone()], Finish::Done).await?,
            [false],
            "the old owner can no longer mark it"
        );
        assert_eq!(p.b.finish(vec![k.clone()], Finish::Done).await?, [true]);
    }
    let k = key(1);
    assert_eq!(one(p.a.as_ref(), &k).await, Claim::Owned { attempts: 1 });
    p.a.started(vec![k.clone()]).await?;
    assert_eq!(one(p.b.as_ref(), &k).await, Claim::Busy);
    if kind == Kind::Postgres {
        // A live owner renews its lease (every third of it, on a task of
        // its own), so it does not lapse mid-delivery.
        tokio::time::sleep(Duration::from_millis(1300)).await;
        assert_eq!(one(p.b.as_ref(), &k).await, Claim::Busy, "renewed");
        // The owner crashes: its store, and its renewal, go.
        p.a = p.b.clone();
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        one(p.b.as_ref(), &k).await,
        Claim::Owned { attempts: 2 },
        "expired: taken over (the crashed delivery had reached the app)"
    );
    assert_eq!(p.b.finish(vec![k.clone()], Finish::Done).await?, [true]);
    Ok(())
}

async fn many_keys_in_one_call(kind: Kind) -> TestResult {
    let p = pair(kind, Duration::from_secs(60), Duration::from_secs(3600));
    let mut keys: Vec<Key> = (0..1000).map(key).collect();
    keys.push(key(7));
    let claims = p.a.claim(keys.clone()).await?;
    assert!(claims[..1000]
        .iter()
        .all(|c| matches!(c, Claim::Owned { attempts: 1 })));
    assert_eq!(
        claims[1000],
        Claim::Busy,
        "the same key twice in one batch: once"
    );
    let marked = p.a.finish(keys[..1000].to_vec(), Finish::Done).await?;
    assert!(marked.iter().all(|m| *m));
    let again = p.b.claim(keys[..1000].to_vec()).await?;
    assert!(again.iter().all(|c| *c == Claim::Done));
    Ok(())
}

async fn concurrent_claims_have_one_winner(kind: Kind) -> TestResult {
    let p = pair(kind, Duration::from_secs(60), Duration::from_secs(3600));
    let mut tasks = vec![];
    for i in 0..20 {
        let store = if i % 2 == 0 { p.a.clone() } else { p.b.clone() };
        tasks.push(tokio::spawn(
            async move { store.claim(vec![key(42)]).await },
        ));
    }
    let mut owned = 0;
    for t in tasks {
        if matches!(t.await??[0], Claim::Owned { .. }) {
            owned += 1;
        }
    }
    assert_eq!(owned, 1, "exactly one claim wins");
    Ok(())
}

async fn retention_purges_finished_keys_only(kind: Kind) -> TestResult {
    let p = pair(kind, Duration::from_secs(60), Duration::from_secs(1));
    p.a.claim(vec![key(1), key(2)]).await?;
    p.a.finish(vec![key(1)], Finish::Done).await?;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(p.a.purge().await?, 1, "the done key past retention");
    assert_eq!(
        one(p.b.as_ref(), &key(1)).await,
        Claim::Owned { attempts: 1 },
        "forgotten"
    );
    assert_eq!(
        one(p.b.as_ref(), &key(2)).await,
        Claim::Busy,
        "in-progress keys are never purged"
    );
    Ok(())
}

fn outbox_msg(topic: &str, n: u32) -> perch::broker::Message {
    perch::broker::Message {
        topic: topic.into(),
        data: format!("m{n}").into(),
        content_type: n.is_multiple_of(2).then(|| "text/plain".to_owned()),
        metadata: [("partitionKey".to_owned(), format!("k{n}"))].into(),
    }
}

/// A relay pass that answers `answer(n)` for message `m{n}` and records
/// what it was handed.
async fn pass(
    s: &dyn Store,
    pubsub: &str,
    limit: usize,
    seen: Arc<std::sync::Mutex<Vec<String>>>,
    answer: fn(u32) -> Relayed,
) -> Result<Pass, perch::store::StoreError> {
    s.outbox_relay(
        pubsub,
        limit,
        Box::new(move |msgs| {
            Box::pin(async move {
                let mut out = vec![];
                for m in msgs {
                    let d = String::from_utf8_lossy(&m.data).to_string();
                    out.push(answer(d[1..].parse().unwrap()));
                    seen.lock().unwrap().push(format!("{}:{d}", m.topic));
                }
                out
            })
        }),
    )
    .await
}

async fn the_outbox_relays_in_order_and_deletes_what_was_sent(kind: Kind) -> TestResult {
    let p = pair(kind, Duration::from_secs(60), Duration::from_secs(3600));
    p.a.outbox_put("pubsub", (0..5).map(|n| outbox_msg("orders", n)).collect())
        .await?;
    p.a.outbox_put("other", vec![outbox_msg("orders", 99)])
        .await?;
    p.a.outbox_put("pubsub", vec![outbox_msg("audit", 5)])
        .await?;
    let depth = p.b.outbox_depth("pubsub").await?;
    assert_eq!(
        depth.waiting,
        [("audit".into(), 1), ("orders".into(), 5)].into()
    );
    let seen = Arc::new(std::sync::Mutex::new(vec![]));
    let kept = Arc::new(std::sync::Mutex::new(vec![]));
    {
        let kept = kept.clone();
        p.b.outbox_relay(
            "pubsub",
            4,
            Box::new(move |msgs| {
                Box::pin(async move {
                    let n = msgs.len();
                    kept.lock().unwrap().extend(msgs);
                    vec![Relayed::Sent; n]
                })
            }),
        )
        .await?;
    }
    let first = kept.lock().unwrap().clone();
    let data: Vec<&[u8]> = first.iter().map(|m| m.data.as_ref()).collect();
    assert_eq!(data, [b"m0", b"m1", b"m2", b"m3"], "in publish order");
    assert_eq!(first[0].content_type.as_deref(), Some("text/plain"));
    assert_eq!(first[1].content_type, None);
    assert_eq!(first[2].metadata["partitionKey"], "k2");
    // m4 cannot go yet: kept; the audit message goes.
    let r = pass(p.a.as_ref(), "pubsub", 10, seen.clone(), |n| {
        if n == 4 {
            Relayed::Retry
        } else {
            Relayed::Sent
        }
    })
    .await?;
    assert_eq!(r.taken(), 2);
    assert_eq!(*seen.lock().unwrap(), ["orders:m4", "audit:m5"]);
    let depth = p.a.outbox_depth("pubsub").await?;
    assert_eq!(depth.waiting, [("orders".into(), 1)].into(), "m4 kept");
    assert_eq!(p.a.outbox_depth("other").await?.waiting.len(), 1);
    Ok(())
}

async fn a_refused_message_is_parked_and_does_not_hold_up_the_rest(kind: Kind) -> TestResult {
    let p = pair(kind, Duration::from_secs(60), Duration::from_secs(3600));
    p.a.outbox_put("pubsub", (0..4).map(|n| outbox_msg("orders", n)).collect())
        .await?;
    let seen = Arc::new(std::sync::Mutex::new(vec![]));
    let r = pass(p.a.as_ref(), "pubsub", 2, seen.clone(), |n| {
        if n == 0 {
            Relayed::Park("too large".into())
        } else {
            Relayed::Sent
        }
    })
    .await?;
    assert_eq!(r.taken(), 2);
    let depth = p.b.outbox_depth("pubsub").await?;
    assert_eq!(depth.parked, 1);
    assert_eq!(depth.waiting, [("orders".into(), 2)].into());
    pass(p.b.as_ref(), "pubsub", 10, seen.clone(), |_| Relayed::Sent).await?;
    assert_eq!(
        *seen.lock().unwrap(),
        ["orders:m0", "orders:m1", "orders:m2", "orders:m3"],
        "the parked message is not handed out again"
    );
    let depth = p.b.outbox_depth("pubsub").await?;
    assert_eq!((depth.parked, depth.waiting.len()), (1, 0));
    Ok(())
}

/// Two sidecars relaying one outbox at once (F12: no lock, both relayed
/// the same rows): each message goes out once, in order per topic.
async fn two_relays_on_one_outbox_send_each_message_once_in_order(kind: Kind) -> TestResult {
    let p = pair(kind, Duration::from_secs(60), Duration::from_secs(3600));
    for chunk in 0..10u32 {
        let msgs = (0..100)
            .map(|i| outbox_msg(["a", "b", "c"][(i % 3) as usize], chunk * 100 + i))
            .collect();
        p.a.outbox_put("pubsub", msgs).await?;
    }
    let seen = Arc::new(std::sync::Mutex::new(vec![]));
    let mut relays = vec![];
    for s in [p.a.clone(), p.b.clone()] {
        let seen = seen.clone();
        relays.push(tokio::spawn(async move {
            let mut busy = 0;
            for _ in 0..2000 {
                let seen = seen.clone();
                let r = s
                    .outbox_relay(
                        "pubsub",
                        37,
                        Box::new(move |msgs| {
                            Box::pin(async move {
                                let n = msgs.len();
                                for m in msgs {
                                    seen.lock().unwrap().push(m);
                                    tokio::task::yield_now().await;
                                }
                                vec![Relayed::Sent; n]
                            })
                        }),
                    )
                    .await
                    .unwrap();
                match r {
                    Pass::Busy => busy += 1,
                    r if r.taken() == 0 => break,
                    _ => {}
                }
                tokio::task::yield_now().await;
            }
            busy
        }));
    }
    let mut busy = 0;
    for r in relays {
        busy += r.await?;
    }
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1000, "each message once");
    for t in ["a", "b", "c"] {
        let ns: Vec<u32> = seen
            .iter()
            .filter(|m| m.topic == t)
            .map(|m| String::from_utf8_lossy(&m.data)[1..].parse().unwrap())
            .collect();
        let mut sorted = ns.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(ns, sorted, "topic {t} in order, no repeats");
    }
    if kind == Kind::Postgres {
        assert!(busy > 0, "the relays did overlap");
    }
    Ok(())
}

macro_rules! contract {
    ($module:ident, $kind:expr) => {
        mod $module {
            use super::*;
            contract!(@tests $kind;
                claim_done_and_duplicates,
                release_lets_the_next_claim_in_and_counts_attempts,
                an_expired_lease_is_taken_over_and_the_old_owner_is_fenced,
                many_keys_in_one_call,
                concurrent_claims_have_one_winner,
                retention_purges_finished_keys_only,
                the_outbox_relays_in_order_and_deletes_what_was_sent,
                a_refused_message_is_parked_and_does_not_hold_up_the_rest,
                two_relays_on_one_outbox_send_each_message_once_in_order);
        }
    };
    (@tests $kind:expr; $($name:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() -> TestResult {
                super::$name($kind).await
            }
        )*
    };
}

contract!(memory, Kind::Memory);
contract!(postgres, Kind::Postgres);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sidecars_migrating_together_both_work() -> TestResult {
    let table = format!("inbox_{}", uuid::Uuid::new_v4().simple());
    let c = component(
        Kind::Postgres,
        &table,
        Duration::from_secs(60),
        Duration::from_secs(60),
    );
    let stores: Vec<Arc<dyn Store>> = (0..4).map(|_| perch::store::build(&c).unwrap()).collect();
    let mut tasks = vec![];
    for (i, s) in stores.iter().enumerate() {
        let s = s.clone();
        tasks.push(tokio::spawn(
            async move { s.claim(vec![key(i as u32)]).await },
        ));
    }
    for t in tasks {
        assert!(matches!(t.await??[0], Claim::Owned { .. }));
    }
    let _drop = Pair {
        a: stores[0].clone(),
        b: stores[1].clone(),
        table: Some(table),
    };
    Ok(())
}

/// Rows read by sequential scans of `table`, and its index scans, so far
/// (as the statistics have it).
fn scans(table: &str) -> (u64, u64) {
    let row = psql(&format!(
        "SELECT seq_tup_read || ' ' || coalesce(idx_scan, 0) FROM pg_stat_user_tables WHERE relname = '{table}'"
    ));
    let mut it = row.split(' ').map(|n| n.parse::<u64>().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0))
}

/// [`scans`] once every backend has reported: a backend reports when idle
/// and a second after its last report, and the store's health probe keeps
/// its one connection waking every 2 s, so three quiet seconds suffice.
async fn settled_scans(table: &str) -> (u64, u64) {
    let mut last = scans(table);
    let mut quiet = std::time::Instant::now();
    let deadline = quiet + Duration::from_secs(30);
    while quiet.elapsed() < Duration::from_secs(3) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = scans(table);
        if now != last {
            (last, quiet) = (now, std::time::Instant::now());
        }
    }
    last
}

/// A store's first statements run on an empty inbox. PostgreSQL plans a
/// prepared statement for good after five runs, and on an empty table the
/// plan is a sequential scan: without custom plans every mark then scanned
/// the whole table, slower as it grew (the durable idempotency bench row
/// at 0.1x of off, PostgreSQL on a full core). The marks of a grown table
/// use its primary key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marks_use_the_primary_key_after_the_inbox_grew() -> TestResult {
    // One connection, so that every statement runs on it (plans are per
    // connection).
    let table = format!("inbox_{}", uuid::Uuid::new_v4().simple());
    let mut c = component(
        Kind::Postgres,
        &table,
        Duration::from_secs(60),
        Duration::from_secs(3600),
    );
    if let StoreKind::Postgres {
        max_connections, ..
    } = &mut c.kind
    {
        *max_connections = 1;
    }
    let a = perch::store::build(&c).expect("store builds");
    let _drop = Pair {
        a: a.clone(),
        b: a.clone(),
        table: Some(table.clone()),
    };
    let store = a.as_ref();
    // The first claim creates the table. No autovacuum (its ANALYZE would
    // replan), set before the statements run: ALTER TABLE replans too.
    assert!(matches!(one(store, &key(0)).await, Claim::Owned { .. }));
    psql(&format!(
        "ALTER TABLE {table} SET (autovacuum_enabled = false)"
    ));
    // More than five runs of each statement on the (nearly) empty table.
    for n in 1..20 {
        assert!(matches!(one(store, &key(n)).await, Claim::Owned { .. }));
        store.started(vec![key(n)]).await?;
        assert_eq!(store.finish(vec![key(n)], Finish::Done).await?, [true]);
    }
    // The table grows behind the plans' back.
    psql(&format!(
        "INSERT INTO {table} (subscriber, msg_key, state, lease_owner, lease_until)
         SELECT 'app/pubsub/other', 'k' || g, 'done', gen_random_uuid(), now()
           FROM generate_series(1, 200000) g"
    ));
    let (seq0, idx0) = settled_scans(&table).await;
    let rounds = 20;
    for n in 100..100 + rounds {
        assert!(matches!(one(store, &key(n)).await, Claim::Owned { .. }));
        assert_eq!(store.finish(vec![key(n)], Finish::Done).await?, [true]);
    }
    let (seq1, idx1) = settled_scans(&table).await;
    assert!(
        seq1 - seq0 < 200_000,
        "marks on a 200 000-row inbox scanned the whole table ({} rows read sequentially, {} index scans)",
        seq1 - seq0,
        idx1 - idx0
    );
    assert!(
        idx1 - idx0 >= rounds as u64,
        "the marks were not counted: {seq0}/{idx0} -> {seq1}/{idx1}"
    );
    Ok(())
}
