//! The publish outbox end to end: RabbitMQ reached through a proxy the test
//! takes down and brings back, the outbox in PostgreSQL. With the broker
//! unreachable, publishes still answer 204; when it returns, every one of
//! them is delivered, in order per key.

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
    async fn up(port: u16) -> Self {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
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

#[tokio::test]
async fn publishes_during_a_broker_outage_are_kept_and_delivered_in_order() -> TestResult {
    let b = Bench::new(Backend::Rabbit);
    let mut proxy = Proxy::up(free_port()).await;
    let uri = format!("amqp://guest:guest@127.0.0.1:{}", proxy.port);
    let pubsub = component(
        "pubsub",
        &[
            ("connectionString", &uri),
            ("consumerID", &format!("g-{}", b.id)),
            ("reconnectWaitSeconds", "1"),
            ("outboxStore", "store"),
            ("deliveryOrder", "key"),
        ],
    )
    .replace("pubsub.in-memory", "pubsub.rabbitmq");
    let store = PgStore::new();
    let dir = resources(&[
        ("pubsub.yaml", &pubsub),
        ("store.yaml", &store.yaml("store")),
        ("s.yaml", &b.subscription("s", "orders", "/orders")),
    ]);
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
    let mut down = false;
    for _ in 0..50 {
        if sc.call("GET", "/v1.0/healthz/outbound", &[], "").await?.0 == 500 {
            down = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(down, "the outage is seen");
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
