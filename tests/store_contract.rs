//! The idempotency store contract, against `store.in-memory` and against
//! `store.postgresql` on the machine's PostgreSQL (a fresh table per test,
//! dropped afterwards).

use std::sync::Arc;
use std::time::Duration;

use perch::store::config::{StoreComponent, StoreKind};
use perch::store::{Claim, Finish, Key, Store};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const PG: &str = "postgres://postgres@127.0.0.1:5432/test";

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

async fn release_lets_the_next_claim_in_and_counts_attempts(kind: Kind) -> TestResult {
    let p = pair(kind, Duration::from_secs(60), Duration::from_secs(3600));
    let k = key(1);
    assert_eq!(one(p.a.as_ref(), &k).await, Claim::Owned { attempts: 1 });
    p.a.release(vec![k.clone()]).await?;
    assert_eq!(one(p.b.as_ref(), &k).await, Claim::Owned { attempts: 2 });
    p.b.release(vec![k.clone()]).await?;
    assert_eq!(
        one(p.a.as_ref(), &k).await,
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
        assert_eq!(one(p.b.as_ref(), &k).await, Claim::Owned { attempts: 2 });
        assert_eq!(
            p.a.finish(vec![k.clone()], Finish::Done).await?,
            [false],
            "the old owner can no longer mark it"
        );
        assert_eq!(p.b.finish(vec![k.clone()], Finish::Done).await?, [true]);
    }
    let k = key(1);
    assert_eq!(one(p.a.as_ref(), &k).await, Claim::Owned { attempts: 1 });
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
        "expired: taken over"
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

async fn the_outbox_keeps_order_until_deleted(kind: Kind) -> TestResult {
    let p = pair(kind, Duration::from_secs(60), Duration::from_secs(3600));
    let msg = |n: u32| perch::broker::Message {
        topic: "orders".into(),
        data: format!("m{n}").into(),
        content_type: (n % 2 == 0).then(|| "text/plain".to_owned()),
        metadata: [("partitionKey".to_owned(), format!("k{n}"))].into(),
    };
    p.a.outbox_put("pubsub", (0..5).map(msg).collect()).await?;
    p.a.outbox_put("other", vec![msg(99)]).await?;
    p.a.outbox_put("pubsub", vec![msg(5)]).await?;
    assert_eq!(p.b.outbox_depth("pubsub").await?, 6);
    let first = p.b.outbox_peek("pubsub", 4).await?;
    let data: Vec<&[u8]> = first.iter().map(|(_, m)| m.data.as_ref()).collect();
    assert_eq!(data, [b"m0", b"m1", b"m2", b"m3"], "in publish order");
    assert_eq!(first[0].1.content_type.as_deref(), Some("text/plain"));
    assert_eq!(first[1].1.content_type, None);
    assert_eq!(first[2].1.metadata["partitionKey"], "k2");
    p.b.outbox_delete(first.iter().map(|(id, _)| *id).collect())
        .await?;
    let rest = p.a.outbox_peek("pubsub", 10).await?;
    let data: Vec<&[u8]> = rest.iter().map(|(_, m)| m.data.as_ref()).collect();
    assert_eq!(data, [b"m4", b"m5"]);
    assert_eq!(p.a.outbox_depth("other").await?, 1);
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
                the_outbox_keeps_order_until_deleted);
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
