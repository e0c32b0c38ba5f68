//! The fault suite (issue 16, item 6), written once and run against Apache
//! Kafka, RabbitMQ and Redis with the PostgreSQL inbox and outbox on.
//!
//! Publishers send CloudEvents over 8 keys through the sidecar (one per
//! key, in order, retrying a publish until it is answered 204, with the
//! same event id); the app
//! fails the first two attempts of every 100th message, answers 500 to 5%
//! of attempts at random, and always fails a few poison messages; it
//! commits each event's effect once per `idempotency-key` (the header Perch
//! sends for that purpose). Meanwhile the sidecar is SIGKILLed and
//! restarted, the broker restarted (or killed), PostgreSQL restarted, and
//! (tier 1) a second sidecar joins the group and leaves.
//!
//! Asserted: nothing answered 204 is lost, no effect is applied twice, the
//! first deliveries of each key arrive in publish order, and every poison
//! message reaches the dead-letter subscriber with exactly one effect (it
//! has the inbox too; the app commits once per idempotency key).
//!
//! - tier 0, in every `.ci/run`: 2,000 messages, 2 sidecar kills, 1 broker
//!   restart, 1 PostgreSQL restart, per broker;
//! - tier 1, `scripts/faults.sh` (ignored here): 100,000 messages, 10
//!   kills, 3 broker restarts, 3 broker kills, 3 PostgreSQL restarts, 2
//!   rebalances; prints the table for the README.
//!
//! In its own test binary: it restarts the services other tests use. The
//! tests of this binary take a lock, so they run one at a time.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// One test at a time: they restart the shared services.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[derive(Debug, Clone, Copy)]
struct Plan {
    messages: u64,
    keys: u64,
    sidecar_kills: usize,
    broker_restarts: usize,
    broker_kills: usize,
    pg_restarts: usize,
    rebalances: usize,
}

const TIER0: Plan = Plan {
    messages: 2_000,
    keys: 8,
    sidecar_kills: 2,
    broker_restarts: 1,
    broker_kills: 0,
    pg_restarts: 1,
    rebalances: 0,
};

const TIER1: Plan = Plan {
    messages: 100_000,
    keys: 8,
    sidecar_kills: 10,
    broker_restarts: 3,
    broker_kills: 3,
    pg_restarts: 3,
    rebalances: 2,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    KillSidecar,
    RestartBroker,
    KillBroker,
    RestartPostgres,
    Rebalance,
}

impl Plan {
    /// The faults, interleaved so each kind is spread over the run.
    fn faults(&self) -> Vec<Fault> {
        let mut kinds = [
            (Fault::KillSidecar, self.sidecar_kills),
            (Fault::RestartBroker, self.broker_restarts),
            (Fault::RestartPostgres, self.pg_restarts),
            (Fault::KillBroker, self.broker_kills),
            (Fault::Rebalance, self.rebalances),
        ];
        let mut out = vec![];
        while kinds.iter().any(|(_, n)| *n > 0) {
            for (f, n) in kinds.iter_mut() {
                if *n > 0 {
                    out.push(*f);
                    *n -= 1;
                }
            }
        }
        out
    }
}

/// A poison message: the app always fails it; it must be dead-lettered.
fn is_poison(seq: u64) -> bool {
    seq % 500 == 250
}

/// A cheap deterministic "random": 5% of (event, attempt) pairs fail.
fn unlucky(id: &str, attempt: u32) -> bool {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (id, attempt).hash(&mut h);
    h.finish() % 100 < 5
}

/// The app fails attempt `n` (from 1) of event `seq`.
fn fails(seq: u64, id: &str, n: u32) -> bool {
    is_poison(seq) || (seq.is_multiple_of(100) && n <= 2) || unlucky(id, n)
}

/// What the app saw.
#[derive(Default)]
struct Ledger {
    /// Deliveries per event id (on the subscription's route).
    deliveries: HashMap<String, u32>,
    /// Per key, the sequence numbers in the order of their first delivery.
    first_order: BTreeMap<u64, Vec<u64>>,
    /// Effects committed per event id, and the idempotency keys seen.
    effects: HashMap<String, u32>,
    committed: BTreeSet<String>,
    /// Dead letters committed per event id (once per idempotency key, as
    /// the effects: a sidecar killed between the dead-letter subscriber's
    /// delivery and its mark delivers that copy again, which its app
    /// absorbs like any other duplicate after a crash).
    dead: HashMap<String, u32>,
    dead_committed: BTreeSet<String>,
    /// When the last event was first committed.
    last_commit: Option<Instant>,
}

fn app_behaviour(ledger: Arc<Mutex<Ledger>>) -> Behaviour {
    Arc::new(move |r: &Received| {
        let ce = r.json();
        let id = ce["id"].as_str().unwrap_or_default().to_owned();
        let seq = ce["data"]["seq"].as_u64().unwrap_or_default();
        let key = ce["data"]["key"].as_u64().unwrap_or_default();
        let ikey = r
            .headers
            .get("idempotency-key")
            .cloned()
            .unwrap_or_default();
        let mut l = ledger.lock().unwrap();
        if r.path == "/dead" {
            if l.dead_committed.insert(ikey) {
                *l.dead.entry(id).or_default() += 1;
            }
            return (200, String::new());
        }
        let n = {
            let n = l.deliveries.entry(id.clone()).or_default();
            *n += 1;
            *n
        };
        if n == 1 {
            l.first_order.entry(key).or_default().push(seq);
        }
        if fails(seq, &id, n) {
            return (500, String::new());
        }
        // The app's own transaction: the effect once per idempotency key.
        if l.committed.insert(ikey) {
            *l.effects.entry(id).or_default() += 1;
            l.last_commit = Some(Instant::now());
        }
        (200, String::new())
    })
}

/// Runs `scripts/services.sh {svc} {how}`.
async fn service(svc: &str, how: &str) {
    let out =
        tokio::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/services.sh"))
            .args([svc, how])
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .expect("scripts/services.sh runs");
    assert!(
        out.status.success(),
        "scripts/services.sh {svc} {how}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts every service again however the test ends.
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = std::process::Command::new("bash")
            .arg("-c")
            .arg(concat!(
                ". ",
                env!("CARGO_MANIFEST_DIR"),
                "/scripts/services.sh; start_services >/dev/null; STARTED_SERVICES=\"\""
            ))
            .status();
    }
}

/// The peak resident set of a process, in KiB (`VmHWM`).
fn peak_rss_kib(pid: Option<u32>) -> u64 {
    pid.and_then(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

struct Report {
    backend: Backend,
    published: u64,
    delivered: u64,
    lost: u64,
    duplicate_deliveries: u64,
    duplicate_effects: u64,
    dead_lettered: u64,
    poison: u64,
    drain: Duration,
    /// First deliveries per key out of publish order.
    out_of_order: u64,
    peak_rss_mib: f64,
    elapsed: Duration,
}

impl Report {
    fn header() -> &'static str {
        "| broker | published | delivered | lost | duplicate deliveries | duplicate effects | first deliveries out of key order | poison dead-lettered | last effect after the last fault | peak RSS | run |\n|---|---|---|---|---|---|---|---|---|---|---|"
    }

    fn row(&self) -> String {
        format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} of {} | {:.1} s | {:.1} MiB | {:.0} s |",
            match self.backend {
                Backend::Kafka => "Kafka",
                Backend::Rabbit => "RabbitMQ",
                Backend::Redis => "Redis",
                Backend::Memory => "in-memory",
            },
            self.published,
            self.delivered,
            self.lost,
            self.duplicate_deliveries,
            self.duplicate_effects,
            self.out_of_order,
            self.dead_lettered,
            self.poison,
            self.drain.as_secs_f64(),
            self.peak_rss_mib,
            self.elapsed.as_secs_f64()
        )
    }
}

fn resources_for(b: &Bench, store: &PgStore) -> tempfile::TempDir {
    let orders = b.topic("orders");
    let dead = b.topic("orders-dead");
    // PERCH_FAULTS_MAX_IN_FLIGHT narrows the window while investigating.
    let window = std::env::var("PERCH_FAULTS_MAX_IN_FLIGHT").unwrap_or_else(|_| "16".into());
    let mut md = vec![
        ("idempotencyStore", "store"),
        ("maxInFlight", window.as_str()),
    ];
    if std::env::var("PERCH_FAULTS_NO_OUTBOX").is_err() {
        md.push(("outboxStore", "store"));
    }
    match b.backend {
        Backend::Kafka => md.extend([
            ("topicPartitions", "4"),
            ("sessionTimeout", "6s"),
            ("heartbeatInterval", "1s"),
        ]),
        Backend::Rabbit => md.extend([("deliveryOrder", "key"), ("reconnectWaitSeconds", "1")]),
        Backend::Redis => md.push(("deliveryOrder", "key")),
        Backend::Memory => {}
    }
    let sub = subscription_with_dead_letter("s", &orders, "/orders", &dead);
    resources(&[
        ("pubsub.yaml", &b.pubsub(&md)),
        ("store.yaml", &store.yaml("store")),
        ("r.yaml", &constant_retries("20ms", 5)),
        ("s.yaml", &sub),
        ("d.yaml", &subscription("d", &dead, "/dead")),
    ])
}

async fn start_sidecar(dir: &Path, app_port: u16) -> Sidecar {
    start_replica(dir, app_port, "first").await
}

/// A sidecar in pod `pod` (its Redis consumer is named after it).
async fn start_replica(dir: &Path, app_port: u16, pod: &str) -> Sidecar {
    let log = std::env::var("PERCH_FAULTS_LOG").unwrap_or_else(|_| "warn".into());
    Sidecar::start(
        dir,
        Some(app_port),
        &[("RUST_LOG", &log), ("POD_NAME", pod)],
        &[],
    )
    .await
}

async fn run(backend: Backend, plan: Plan) -> Report {
    let _serial = SERIAL.lock().await;
    let _restore = Restore;
    let started = Instant::now();
    let b = Bench::new(backend);
    let store = PgStore::new();
    let dir = resources_for(&b, &store);
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let app = TestApp::start(None, app_behaviour(ledger.clone())).await;
    let mut sc = start_sidecar(dir.path(), app.port).await;
    let port = Arc::new(AtomicU16::new(sc.port));
    let published = Arc::new(AtomicU64::new(0));
    let orders = b.topic("orders");

    // The publishers, one per key: each event until it is answered 204,
    // in order within its key.
    let publishers: Vec<_> = (0..plan.keys)
        .map(|key| {
            let (port, published, orders) = (port.clone(), published.clone(), orders.clone());
            tokio::spawn(async move {
                for seq in (key..plan.messages).step_by(plan.keys as usize) {
                    let ce = json!({"specversion": "1.0", "source": "faults", "id": format!("e-{seq}"),
                                    "type": "t", "datacontenttype": "application/json",
                                    "data": {"seq": seq, "key": key}});
                    loop {
                        let url = format!(
                            "http://127.0.0.1:{}/v1.0/publish/pubsub/{orders}?metadata.partitionKey=k{key}",
                            port.load(Ordering::Acquire)
                        );
                        let ok = tokio::time::timeout(
                            Duration::from_secs(15),
                            request(
                                "POST",
                                &url,
                                &[("content-type", "application/cloudevents+json")],
                                &ce.to_string(),
                            ),
                        )
                        .await
                        .is_ok_and(|r| r.is_ok_and(|(status, _, _)| status == 204));
                        if ok {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    published.fetch_add(1, Ordering::AcqRel);
                }
            })
        })
        .collect();

    let mut peak_rss = peak_rss_kib(sc.child.id());
    let mut faults = plan.faults();
    // Narrowing a run down while investigating (never set in CI).
    if let Ok(only) = std::env::var("PERCH_FAULTS_ONLY") {
        faults.retain(|f| only.split(',').any(|o| o == format!("{f:?}")));
    }
    let broker = match backend {
        Backend::Kafka => "kafka",
        Backend::Redis => "redis",
        _ => "rabbitmq",
    };
    for (i, fault) in faults.iter().enumerate() {
        // Spread over the first 90% of the publishes.
        let at = plan.messages * 9 * (i as u64 + 1) / (10 * (faults.len() as u64 + 1));
        while published.load(Ordering::Acquire) < at {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        eprintln!("faults: {fault:?} at {at} published");
        match fault {
            Fault::KillSidecar => {
                peak_rss = peak_rss.max(peak_rss_kib(sc.child.id()));
                sc.child.kill().await.expect("SIGKILL the sidecar");
                sc = start_sidecar(dir.path(), app.port).await;
                port.store(sc.port, Ordering::Release);
            }
            Fault::RestartBroker => service(broker, "restart").await,
            Fault::KillBroker => service(broker, "kill").await,
            Fault::RestartPostgres => service("postgres", "restart").await,
            Fault::Rebalance => {
                // A second sidecar of the app joins the group, takes a
                // share of the work for a while, and leaves (SIGTERM).
                let second = start_replica(dir.path(), app.port, "second").await;
                tokio::time::sleep(Duration::from_secs(5)).await;
                let pid = second.child.id().expect("pid");
                let _ = std::process::Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status();
                let mut second = second;
                let _ = tokio::time::timeout(Duration::from_secs(20), second.child.wait()).await;
            }
        }
    }
    let last_fault = Instant::now();
    for p in publishers {
        p.await.expect("publisher");
    }
    let total = plan.messages;
    let poison: u64 = (0..total).filter(|s| is_poison(*s)).count() as u64;

    // Drain: every effect committed and every poison message dead-lettered.
    let deadline = Instant::now() + Duration::from_secs(if total > 10_000 { 600 } else { 180 });
    loop {
        {
            let l = ledger.lock().unwrap();
            if l.effects.len() as u64 == total - poison && l.dead.len() as u64 == poison {
                break;
            }
        }
        if Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Late copies show up here, if any.
    tokio::time::sleep(Duration::from_secs(2)).await;
    peak_rss = peak_rss.max(peak_rss_kib(sc.child.id()));
    let l = ledger.lock().unwrap();
    let drain = l
        .last_commit
        .map(|t| t.saturating_duration_since(last_fault))
        .unwrap_or_default();
    let committed: BTreeSet<u64> = l
        .effects
        .keys()
        .map(|id| id[2..].parse().unwrap())
        .collect();
    let lost = (0..total)
        .filter(|s| !is_poison(*s) && !committed.contains(s))
        .count() as u64;
    let report = Report {
        backend,
        published: published.load(Ordering::Acquire),
        delivered: committed.len() as u64,
        lost,
        duplicate_deliveries: l
            .deliveries
            .iter()
            .map(|(id, n)| {
                let seq: u64 = id[2..].parse().unwrap();
                // Deliveries after the first the app answered SUCCESS (the
                // failed ones before it were retries it asked for).
                let first_ok = (1..=*n).find(|a| !fails(seq, id, *a)).unwrap_or(*n);
                (*n - first_ok) as u64
            })
            .sum(),
        duplicate_effects: l.effects.values().map(|n| (*n - 1) as u64).sum(),
        dead_lettered: l.dead.len() as u64,
        poison,
        drain,
        out_of_order: l
            .first_order
            .values()
            .map(|seqs| seqs.windows(2).filter(|w| w[0] > w[1]).count() as u64)
            .sum(),
        peak_rss_mib: peak_rss as f64 / 1024.0,
        elapsed: started.elapsed(),
    };
    eprintln!("{}\n{}", Report::header(), report.row());

    assert_eq!(report.published, total, "every publish answered 204");
    let missing: Vec<u64> = (0..total)
        .filter(|s| !is_poison(*s) && !committed.contains(s))
        .take(20)
        .collect();
    let seen: Vec<(u64, Option<u32>, Option<u32>)> = missing
        .iter()
        .map(|s| {
            let id = format!("e-{s}");
            (*s, l.deliveries.get(&id).copied(), l.dead.get(&id).copied())
        })
        .collect();
    let diagnosis = if missing.is_empty() {
        String::new()
    } else {
        diagnose(&b, &store, &missing)
    };
    // Shows the diagnosis of events that were not lost (checking it while
    // investigating; never set in CI).
    if let Ok(seqs) = std::env::var("PERCH_FAULTS_DIAGNOSE") {
        let seqs: Vec<u64> = seqs.split(',').filter_map(|s| s.parse().ok()).collect();
        eprintln!("faults: diagnosis\n{}", diagnose(&b, &store, &seqs));
    }
    assert_eq!(
        report.lost, 0,
        "lost (first few, with the deliveries the app saw of each and dead letters: {seen:?}); where they are:\n{diagnosis}"
    );
    assert_eq!(report.duplicate_effects, 0, "an effect applied twice");
    // Two sidecars consuming one RabbitMQ queue are competing consumers:
    // the broker hands each its share, and order per key holds within each
    // replica only (as with daprd). Kafka moves whole partitions, so order
    // holds across a rebalance.
    let order_holds = !(matches!(backend, Backend::Rabbit | Backend::Redis) && plan.rebalances > 0);
    for (key, seqs) in l.first_order.iter().filter(|_| order_holds) {
        if let Some(i) = seqs.windows(2).position(|w| w[0] > w[1]) {
            let from = i.saturating_sub(5);
            panic!(
                "key k{key}: first deliveries out of publish order at {}: ... {:?} ...",
                i + 1,
                &seqs[from..(i + 6).min(seqs.len())]
            );
        }
    }
    for s in (0..total).filter(|s| is_poison(*s)) {
        assert_eq!(
            l.dead.get(&format!("e-{s}")).copied(),
            Some(1),
            "poison e-{s} dead-lettered with one effect (the dead-letter subscriber's inbox lets a copy through only after a crash, and the app absorbs that one by its idempotency key)"
        );
        assert_eq!(
            l.effects.get(&format!("e-{s}")),
            None,
            "poison e-{s} had no effect"
        );
    }
    drop(l);
    report
}

/// Where each missing event is, for the failure message of a lost event
/// (the suite runs in every CI run so that a rare loss is caught; this
/// makes the one run that catches it say where the event stopped): its
/// inbox row, its outbox rows, and on Kafka its record (partition, offset)
/// beside the group's committed offset and the partition's watermarks.
fn diagnose(b: &Bench, store: &PgStore, missing: &[u64]) -> String {
    let orders = b.topic("orders");
    let subscriber = format!("test-app/pubsub/{orders}");
    let found = match b.backend {
        Backend::Kafka => kafka_records(&orders, &format!("g-{}", b.id), missing),
        _ => BTreeMap::new(),
    };
    let mut out = String::new();
    for seq in missing {
        let id = format!("e-{seq}");
        let key = perch::delivery::event_key("faults", &id);
        let inbox = psql(&format!(
            "SELECT state || ' attempts ' || attempts || ' lease ' || (lease_until > now()) FROM {} WHERE subscriber = '{subscriber}' AND msg_key = '{key}'",
            store.table
        ));
        let outbox = psql(&format!(
            "SELECT string_agg(id || ':' || coalesce('parked ' || parked, 'waiting'), '; ') FROM {} WHERE position('\"{id}\"'::bytea in data) > 0",
            store.outbox_table()
        ));
        out.push_str(&format!(
            "  {id}: inbox [{inbox}] outbox [{outbox}] kafka {:?}\n",
            found.get(seq)
        ));
    }
    out
}

/// The records of the `missing` events in Kafka topic `topic`, each with
/// its partition, offset, the group's committed offset there and the
/// partition's low and high watermarks.
fn kafka_records(topic: &str, group: &str, missing: &[u64]) -> BTreeMap<u64, Vec<String>> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message as _;
    let wait = Duration::from_secs(5);
    let mut found: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    let Ok(c) = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", "127.0.0.1:9092")
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create::<BaseConsumer>()
    else {
        return found;
    };
    let Ok(md) = c.fetch_metadata(Some(topic), wait) else {
        return found;
    };
    let mut tpl = rdkafka::TopicPartitionList::new();
    let parts: Vec<i32> = md
        .topics()
        .iter()
        .flat_map(|t| t.partitions())
        .map(|p| p.id())
        .collect();
    for p in &parts {
        let _ = tpl.add_partition_offset(topic, *p, rdkafka::Offset::Beginning);
    }
    let committed: BTreeMap<i32, String> = c
        .committed_offsets(tpl.clone(), wait)
        .map(|t| {
            t.elements()
                .iter()
                .map(|e| (e.partition(), format!("{:?}", e.offset())))
                .collect()
        })
        .unwrap_or_default();
    let marks: BTreeMap<i32, (i64, i64)> = parts
        .iter()
        .filter_map(|p| Some((*p, c.fetch_watermarks(topic, *p, wait).ok()?)))
        .collect();
    let mut left: BTreeMap<i32, i64> = marks
        .iter()
        .filter(|(_, (low, high))| high > low)
        .map(|(p, (_, high))| (*p, *high))
        .collect();
    if c.assign(&tpl).is_err() {
        return found;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !left.is_empty() && Instant::now() < deadline {
        let Some(Ok(m)) = c.poll(Duration::from_millis(500)) else {
            continue;
        };
        if left
            .get(&m.partition())
            .is_some_and(|h| m.offset() + 1 >= *h)
        {
            left.remove(&m.partition());
        }
        let seq = m
            .payload()
            .and_then(|p| serde_json::from_slice::<serde_json::Value>(p).ok())
            .and_then(|ce| ce["data"]["seq"].as_u64());
        if let Some(seq) = seq.filter(|s| missing.contains(s)) {
            found.entry(seq).or_default().push(format!(
                "partition {} offset {} (group committed {}, watermarks {:?})",
                m.partition(),
                m.offset(),
                committed.get(&m.partition()).map_or("?", String::as_str),
                marks.get(&m.partition())
            ));
        }
    }
    found
}

/// Puts `wal_writer_delay` back however the test ends.
struct WalWriterDelay;

impl Drop for WalWriterDelay {
    fn drop(&mut self) {
        // Not `psql`, which panics on failure: a drop may run while the
        // test is already unwinding (PostgreSQL down, say).
        for sql in [
            "ALTER SYSTEM RESET wal_writer_delay",
            "SELECT pg_reload_conf()",
        ] {
            let _ = std::process::Command::new("psql")
                .args([PG, "-qc", sql])
                .status();
        }
    }
}

/// Review F2: the README advised `synchronous_commit=off` on the store,
/// and its example serves the outbox from the same store; a publish
/// answered 204 after an asynchronously committed outbox row was lost if
/// PostgreSQL crashed. The outbox's commits are synchronous now whatever
/// the connection asks. (The WAL writer is slowed to 10 s so that the
/// crash surely falls inside the asynchronous-commit window.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outboxed_publish_survives_a_postgresql_crash() {
    let _serial = SERIAL.lock().await;
    let _restore = Restore;
    let store = PgStore::new();
    let _wal = WalWriterDelay;
    psql("ALTER SYSTEM SET wal_writer_delay = '10s'");
    psql("SELECT pg_reload_conf()");
    let yaml = store
        .yaml("store")
        .replace(PG, &format!("{PG}?options=-c%20synchronous_commit%3Doff"));
    // A broker that is never reachable: every publish goes to the outbox.
    let pubsub = component(
        "pubsub",
        &[
            ("connectionString", "amqp://guest:guest@127.0.0.1:1"),
            ("outboxStore", "store"),
        ],
    )
    .replace("pubsub.in-memory", "pubsub.rabbitmq");
    let dir = resources(&[("pubsub.yaml", &pubsub), ("store.yaml", &yaml)]);
    let sc = Sidecar::start(dir.path(), None, &[("RUST_LOG", "error")], &[]).await;
    for n in 0..20 {
        assert_eq!(
            sc.publish_json("pubsub/orders", &json!({ "n": n }).to_string())
                .await,
            204,
            "kept in the outbox"
        );
    }
    service("postgres", "kill").await;
    let kept = psql(&format!("SELECT count(*) FROM {}", store.outbox_table()));
    assert_eq!(kept, "20", "every publish answered 204 survived the crash");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tier0_kafka() {
    run(Backend::Kafka, TIER0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tier0_rabbitmq() {
    run(Backend::Rabbit, TIER0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tier0_redis() {
    run(Backend::Redis, TIER0).await;
}

/// Tier 1, both brokers, with the table; `scripts/faults.sh` runs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "tier 1: run by scripts/faults.sh"]
async fn tier1_table() {
    let plan = match std::env::var("PERCH_FAULTS_MESSAGES") {
        Ok(n) => Plan {
            messages: n.parse().expect("PERCH_FAULTS_MESSAGES"),
            ..TIER1
        },
        Err(_) => TIER1,
    };
    let brokers =
        std::env::var("PERCH_FAULTS_BROKERS").unwrap_or_else(|_| "kafka rabbitmq redis".into());
    let mut rows = vec![];
    for backend in brokers.split_whitespace().map(|b| match b {
        "kafka" => Backend::Kafka,
        "rabbitmq" => Backend::Rabbit,
        "redis" => Backend::Redis,
        other => panic!("PERCH_FAULTS_BROKERS: unknown broker {other}"),
    }) {
        rows.push(run(backend, plan).await.row());
    }
    println!(
        "\nfault suite tier 1: {} messages over {} keys; {} sidecar SIGKILLs, {} broker restarts, {} broker kills, {} PostgreSQL restarts, {} rebalances, per broker\n\n{}\n{}",
        plan.messages,
        plan.keys,
        plan.sidecar_kills,
        plan.broker_restarts,
        plan.broker_kills,
        plan.pg_restarts,
        plan.rebalances,
        Report::header(),
        rows.join("\n")
    );
}
