//! The publish outbox end to end: RabbitMQ reached through a proxy the test
//! takes down and brings back (Kafka directly), the outbox in PostgreSQL.
//! With the broker unreachable, publishes still answer 204; when it
//! returns, every one of them is delivered, in order per key. A message the
//! broker refuses for good is answered as an error (or, when it was kept
//! during an outage, parked) and never holds up the others; the relay
//! drains while publishes keep coming.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use serde_json::json;

/// A TCP proxy to the RabbitMQ server that can be cut and restored.
struct Proxy {
    port: u16,
    tasks: Option<tokio::task::JoinSet<()>>,
}

impl Proxy {
    /// A proxy on a port the system picks (a port picked first and bound
    /// later could be taken in between: CI saw that).
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind the proxy");
        Self::serve(listener)
    }

    /// The proxy back on `port` after a cut.
    async fn up(port: u16) -> Self {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap_or_else(|e| panic!("bind the proxy again on port {port}: {e}"));
        Self::serve(listener)
    }

    fn serve(listener: tokio::net::TcpListener) -> Self {
        let port = listener.local_addr().expect("proxy address").port();
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((mut client, _)) = listener.accept().await {
                conns.spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect("127.0.0.1:5672").await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        Self {
            port,
            tasks: Some(tasks),
        }
    }

    /// Closes the listener and every proxied connection.
    fn cut(&mut self) {
        if let Some(mut t) = self.tasks.take() {
            t.abort_all();
        }
    }
}

/// The store, and resources with RabbitMQ through `proxy`, the outbox
/// in the store, and a subscription to `orders`.
fn outbox_setup(b: &Bench, proxy: &Proxy) -> (PgStore, tempfile::TempDir) {
    let store = PgStore::new();
    let dir = resources(&[
        ("pubsub.yaml", &rabbit_outbox(b, proxy)),
        ("store.yaml", &store.yaml("store")),
        ("s.yaml", &b.subscription("s", "orders", "/orders")),
    ]);
    (store, dir)
}

/// RabbitMQ through `proxy`, with the outbox in PostgreSQL.
fn rabbit_outbox(b: &Bench, proxy: &Proxy) -> String {
    rabbit_through(
        b,
        proxy,
        &[("outboxStore", "store"), ("deliveryOrder", "key")],
    )
}

async fn metadata(sc: &Sidecar) -> serde_json::Value {
    serde_json::from_slice(&sc.call("GET", "/v1.0/metadata", &[], "").await.unwrap().2).unwrap()
}

async fn publish_json(sc: &Sidecar, topic: &str, body: &serde_json::Value) -> (u16, Vec<u8>) {
    let (status, _, body) = sc
        .call(
            "POST",
            &format!("/v1.0/publish/pubsub/{topic}"),
            &[("content-type", "application/json")],
            &body.to_string(),
        )
        .await
        .unwrap();
    (status, body.to_vec())
}

/// Waits until the sidecar reports the broker down.
async fn wait_outage(sc: &Sidecar) {
    if sc.wait_component("pubsub", false, 5).await {
        return;
    }
    panic!("the outage is not seen");
}

/// Polls the metadata until `f` holds of it (30 s at most).
async fn wait_metadata(sc: &Sidecar, what: &str, f: impl Fn(&serde_json::Value) -> bool) {
    for _ in 0..300 {
        if f(&metadata(sc).await) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: metadata is {}", metadata(sc).await);
}

#[tokio::test]
async fn publishes_during_a_broker_outage_are_kept_and_delivered_in_order() -> TestResult {
    let b = Bench::new(Backend::Rabbit);
    let mut proxy = Proxy::start().await;
    let (_store, dir) = outbox_setup(&b, &proxy);
    let mut app = TestApp::ok(None).await;
    let sc = Sidecar::start(dir.path(), Some(app.port), &[], &[]).await;
    let topic = b.topic("orders");
    let publish = |seq: u64| {
        let sc = &sc;
        let topic = topic.clone();
        async move {
            sc.call(
                "POST",
                &format!(
                    "/v1.0/publish/pubsub/{topic}?metadata.partitionKey=k{}",
                    seq % 4
                ),
                &[("content-type", "application/json")],
                &json!({ "seq": seq }).to_string(),
            )
            .await
            .unwrap()
            .0
        }
    };
    assert_eq!(publish(0).await, 204);
    assert_eq!(app.next(20).await?.json()["data"]["seq"], 0);

    proxy.cut();
    assert!(
        sc.wait_component("pubsub", false, 5).await,
        "the outage is seen"
    );
    for seq in 1..=20 {
        assert_eq!(publish(seq).await, 204, "kept in the outbox, answered 204");
    }
    let md: serde_json::Value =
        serde_json::from_slice(&sc.call("GET", "/v1.0/metadata", &[], "").await?.2)?;
    assert_eq!(md["outboxPending"]["pubsub"], 20, "outbox depth");
    assert!(
        app.next(2).await.is_err(),
        "nothing delivered during the outage"
    );

    let _proxy = Proxy::up(proxy.port).await;
    let mut per_key: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    let mut got = 0;
    while got < 20 {
        let seq = app.next(30).await?.json()["data"]["seq"].as_u64().unwrap();
        // Seq 0 may come again: its ack can be lost with the connection,
        // and without an inbox that is at-least-once.
        if seq == 0 {
            continue;
        }
        per_key.entry(seq % 4).or_default().push(seq);
        got += 1;
    }
    for (k, seqs) in &per_key {
        let mut sorted = seqs.clone();
        sorted.sort();
        assert_eq!(seqs, &sorted, "key k{k} in publish order");
    }
    assert_eq!(per_key.values().map(Vec::len).sum::<usize>(), 20);
    Ok(())
}

/// Declares `exchange` as an internal exchange on the RabbitMQ server:
/// Perch uses an existing exchange as it is, and RabbitMQ refuses every
/// publish to an internal one for good (ACCESS_REFUSED).
async fn predeclare_internal(exchange: &str) {
    let conn = lapin::Connection::connect(RABBIT_URI, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.exchange_declare(
        exchange.into(),
        lapin::ExchangeKind::Fanout,
        lapin::options::ExchangeDeclareOptions {
            durable: true,
            internal: true,
            ..Default::default()
        },
        lapin::types::FieldTable::default(),
    )
    .await
    .unwrap();
    let _ = conn.close(200, "done".into()).await;
}

/// Review F3: every lapin error was "unavailable", so a message the broker
/// refuses (here ACCESS_REFUSED: the exchange is internal) was kept and answered 204, and the relay retried it at the head
/// of the outbox for ever while every later publish queued behind it.
#[tokio::test]
async fn a_publish_refused_for_good_is_an_error_and_is_not_kept() -> TestResult {
    let b = Bench::new(Backend::Rabbit);
    let proxy = Proxy::start().await;
    let (_store, dir) = outbox_setup(&b, &proxy);
    let mut app = TestApp::ok(None).await;
    let sc = Sidecar::start(dir.path(), Some(app.port), &[], &[]).await;
    let bad = b.topic("internal");
    predeclare_internal(&bad).await;
    let (status, body) = publish_json(&sc, &bad, &json!({"n": 0})).await;
    assert_eq!(status, 500, "{}", String::from_utf8_lossy(&body));
    let err: serde_json::Value = serde_json::from_slice(&body)?;
    assert_eq!(err["errorCode"], "ERR_PUBSUB_PUBLISH_MESSAGE");
    assert!(
        err["message"].as_str().unwrap().contains("ACCESS_REFUSED"),
        "{err}"
    );
    assert_eq!(
        metadata(&sc).await["outboxPending"]["pubsub"],
        0,
        "not kept"
    );
    assert_eq!(
        publish_json(&sc, &b.topic("orders"), &json!({"n": 1}))
            .await
            .0,
        204
    );
    assert_eq!(
        app.next(10).await?.json()["data"]["n"],
        1,
        "nothing held up"
    );
    Ok(())
}

/// A message kept during an outage that the broker then refuses for good
/// is parked (with its reason) and the messages after it flow.
#[tokio::test]
async fn a_kept_message_refused_later_is_parked_and_the_rest_flow() -> TestResult {
    let b = Bench::new(Backend::Rabbit);
    let mut proxy = Proxy::start().await;
    let (store, dir) = outbox_setup(&b, &proxy);
    let mut app = TestApp::ok(None).await;
    let sc = Sidecar::start(dir.path(), Some(app.port), &[], &[]).await;
    let orders = b.topic("orders");
    assert_eq!(publish_json(&sc, &orders, &json!({"n": 0})).await.0, 204);
    assert_eq!(app.next(10).await?.json()["data"]["n"], 0);
    proxy.cut();
    wait_outage(&sc).await;
    let bad = b.topic("internal");
    assert_eq!(
        publish_json(&sc, &bad, &json!({"n": -1})).await.0,
        204,
        "kept: the broker is down"
    );
    // Meanwhile the exchange is declared with another type: the relay's
    // publish of the kept message is refused for good.
    predeclare_internal(&bad).await;
    for n in 1..=5 {
        assert_eq!(publish_json(&sc, &orders, &json!({"n": n})).await.0, 204);
    }
    let _proxy = Proxy::up(proxy.port).await;
    // Message 0 may come again: its ack can still be in the channel's
    // batch when the connection is cut, and without an inbox that is
    // at-least-once. Nothing else may come but 1..=5.
    let mut got = std::collections::BTreeSet::new();
    while got.len() < 5 {
        match app.next(30).await?.json()["data"]["n"].as_i64().unwrap() {
            0 => {}
            n => assert!(
                got.insert(n) && (1..=5).contains(&n),
                "got {n} after {got:?}"
            ),
        }
    }
    assert_eq!(
        got,
        (1..=5).collect(),
        "every later message, past the poison"
    );
    wait_metadata(&sc, "parked and drained", |md| {
        md["outboxParked"]["pubsub"] == 1 && md["outboxPending"]["pubsub"] == 0
    })
    .await;
    let reason = psql(&format!(
        "SELECT topic, parked FROM {}",
        store.outbox_table()
    ));
    assert!(
        reason.contains(&bad) && reason.contains("ACCESS_REFUSED"),
        "{reason}"
    );
    Ok(())
}

/// Review F12: the relay slept 500 ms per pass of 100 one-by-one publishes
/// (about 200/s) while every new publish was diverted into the outbox, so
/// a publisher faster than that kept the outbox full for ever. It drains
/// now, and once caught up, publishes go straight to the broker again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_drains_while_publishes_keep_coming() -> TestResult {
    let b = Bench::new(Backend::Rabbit);
    let mut proxy = Proxy::start().await;
    let (_store, dir) = outbox_setup(&b, &proxy);
    let mut app = TestApp::ok(None).await;
    let sc = std::sync::Arc::new(Sidecar::start(dir.path(), Some(app.port), &[], &[]).await);
    let orders = b.topic("orders");
    assert_eq!(publish_json(&sc, &orders, &json!({"n": 0})).await.0, 204);
    assert_eq!(app.next(10).await?.json()["data"]["n"], 0);
    proxy.cut();
    wait_outage(&sc).await;
    for n in 1..=300 {
        assert_eq!(publish_json(&sc, &orders, &json!({"n": n})).await.0, 204);
    }
    let _proxy = Proxy::up(proxy.port).await;
    // Four publishers without pause, while the relay catches up.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let next = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(301));
    let mut publishers = vec![];
    for _ in 0..4 {
        let (sc, done, next, orders) = (sc.clone(), done.clone(), next.clone(), orders.clone());
        publishers.push(tokio::spawn(async move {
            while !done.load(std::sync::atomic::Ordering::Acquire) {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                assert_eq!(publish_json(&sc, &orders, &json!({"n": n})).await.0, 204);
            }
        }));
    }
    wait_metadata(&sc, "the outbox drains under load", |md| {
        md["outboxPending"]["pubsub"] == 0
    })
    .await;
    let published_when_drained = next.load(std::sync::atomic::Ordering::Acquire);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        metadata(&sc).await["outboxPending"]["pubsub"],
        0,
        "and stays drained while publishes go straight to the broker"
    );
    done.store(true, std::sync::atomic::Ordering::Release);
    for p in publishers {
        p.await?;
    }
    // Every publish answered 204 is delivered: n = 1 .. next-1.
    let last = next.load(std::sync::atomic::Ordering::Acquire) - 1;
    assert!(
        last > published_when_drained,
        "publishes went on after the drain"
    );
    let mut seen = std::collections::BTreeSet::new();
    while (seen.len() as u64) < last {
        seen.insert(app.next(30).await?.json()["data"]["n"].as_u64().unwrap());
    }
    assert_eq!(seen.last(), Some(&last));
    Ok(())
}

/// Kafka with `autoCreateTopics: "false"`: a topic the cluster does not
/// have is a final error, answered at once instead of kept for ever.
#[tokio::test]
async fn kafka_publish_to_a_missing_topic_without_auto_create_is_an_error() -> TestResult {
    let b = Bench::new(Backend::Kafka);
    let store = PgStore::new();
    let dir = resources(&[
        (
            "pubsub.yaml",
            &b.pubsub(&[("outboxStore", "store"), ("autoCreateTopics", "false")]),
        ),
        ("store.yaml", &store.yaml("store")),
    ]);
    let sc = Sidecar::start(dir.path(), None, &[], &[]).await;
    let (status, body) = publish_json(&sc, &b.topic("missing"), &json!({"n": 1})).await;
    assert_eq!(status, 500, "{}", String::from_utf8_lossy(&body));
    let err: serde_json::Value = serde_json::from_slice(&body)?;
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("does not exist and autoCreateTopics is false"),
        "{err}"
    );
    assert_eq!(
        metadata(&sc).await["outboxPending"]["pubsub"],
        0,
        "not kept"
    );
    Ok(())
}

/// RabbitMQ through `proxy` (no outbox), with `extra` component metadata.
fn rabbit_through(b: &Bench, proxy: &Proxy, extra: &[(&str, &str)]) -> String {
    let uri = format!("amqp://guest:guest@127.0.0.1:{}", proxy.port);
    let consumer = format!("g-{}", b.id);
    let mut md = vec![
        ("connectionString", uri.as_str()),
        ("consumerID", consumer.as_str()),
        ("reconnectWaitSeconds", "1"),
    ];
    md.extend_from_slice(extra);
    component("pubsub", &md).replace("pubsub.in-memory", "pubsub.rabbitmq")
}

/// A Resiliency document with `outbound` as the pubsub's outbound target,
/// a retry policy `retry` (300 ms apart, 40 times) and a circuit breaker
/// `cb` that opens on the first failure, for a minute.
fn outbound_resiliency(outbound: &str) -> String {
    format!(
        "apiVersion: dapr.io/v1alpha1
kind: Resiliency
metadata: {{name: r}}
spec:
  policies:
    retries:
      retry: {{policy: constant, duration: 300ms, maxRetries: 40}}
    circuitBreakers:
      cb: {{maxRequests: 1, timeout: 60s, trip: consecutiveFailures >= 1}}
  targets:
    components:
      pubsub:
        outbound: {outbound}
"
    )
}

/// Publish resiliency: with an outbound retry policy a publish made while
/// the broker is down is retried and answered 204 once the broker is back
/// (and delivered); without one it fails at once.
#[tokio::test]
async fn an_outbound_retry_policy_retries_a_publish_until_the_broker_is_back() -> TestResult {
    let b = Bench::new(Backend::Rabbit);
    let mut proxy = Proxy::start().await;
    let topic = b.topic("orders");
    let dir = resources(&[
        ("pubsub.yaml", &rabbit_through(&b, &proxy, &[])),
        ("s.yaml", &b.subscription("s", "orders", "/orders")),
    ]);
    let plain = Sidecar::start(dir.path(), None, &[], &[]).await;
    std::fs::write(
        dir.path().join("r.yaml"),
        outbound_resiliency("{retry: retry}"),
    )?;
    let mut app = TestApp::ok(None).await;
    let sc = Sidecar::start(dir.path(), Some(app.port), &[], &[]).await;
    proxy.cut();
    wait_outage(&sc).await;
    wait_outage(&plain).await;
    let (status, body) = publish_json(&plain, &topic, &json!({"n": 0})).await;
    assert_eq!(
        status,
        500,
        "no policy: an error at once: {}",
        String::from_utf8_lossy(&body)
    );
    let retried = {
        let (sc, topic) = (&sc, topic.clone());
        async move { publish_json(sc, &topic, &json!({"n": 1})).await }
    };
    let back = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        Proxy::up(proxy.port).await
    };
    let ((status, body), _proxy) = tokio::join!(retried, back);
    assert_eq!(
        status,
        204,
        "retried until the broker took it: {}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(app.next(30).await?.json()["data"]["n"], 1);
    Ok(())
}

/// An outbound circuit breaker: once open, publishes fail at once without
/// calling the broker ("circuit breaker is open"); with an outbox they are
/// kept at once instead, and delivered when the broker is back.
#[tokio::test]
async fn an_open_outbound_breaker_fails_publishes_fast_or_sends_them_to_the_outbox() -> TestResult {
    let b = Bench::new(Backend::Rabbit);
    let mut proxy = Proxy::start().await;
    let topic = b.topic("orders");
    let store = PgStore::new();
    let r = outbound_resiliency("{circuitBreaker: cb}");
    let bare = resources(&[
        ("pubsub.yaml", &rabbit_through(&b, &proxy, &[])),
        ("r.yaml", &r),
    ]);
    let kept = resources(&[
        (
            "pubsub.yaml",
            &rabbit_through(&b, &proxy, &[("outboxStore", "store")]),
        ),
        ("store.yaml", &store.yaml("store")),
        ("s.yaml", &b.subscription("s", "orders", "/orders")),
        ("r.yaml", &r),
    ]);
    let no_outbox = Sidecar::start(bare.path(), None, &[], &[]).await;
    let mut app = TestApp::ok(None).await;
    let sc = Sidecar::start(kept.path(), Some(app.port), &[], &[]).await;
    proxy.cut();
    wait_outage(&no_outbox).await;
    wait_outage(&sc).await;
    let (status, first) = publish_json(&no_outbox, &topic, &json!({"n": 0})).await;
    assert_eq!(status, 500);
    let first = String::from_utf8_lossy(&first).into_owned();
    assert!(
        !first.contains("circuit breaker is open"),
        "the broker was tried: {first}"
    );
    let (status, second) = publish_json(&no_outbox, &topic, &json!({"n": 0})).await;
    assert_eq!(status, 500);
    let err: serde_json::Value = serde_json::from_slice(&second)?;
    assert_eq!(err["errorCode"], "ERR_PUBSUB_PUBLISH_MESSAGE");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("circuit breaker is open"),
        "the breaker opened on the first failure: {err}"
    );
    // With the outbox: the first is kept because the broker failed, the
    // rest because the breaker is open; all arrive once it is back.
    for n in 1..=3 {
        assert_eq!(publish_json(&sc, &topic, &json!({"n": n})).await.0, 204);
    }
    assert_eq!(metadata(&sc).await["outboxPending"]["pubsub"], 3, "kept");
    let _proxy = Proxy::up(proxy.port).await;
    let mut got = vec![];
    for _ in 0..3 {
        got.push(app.next(30).await?.json()["data"]["n"].as_u64().unwrap());
    }
    got.sort();
    assert_eq!(got, [1, 2, 3]);
    Ok(())
}
