//! RabbitMQ-specific behaviour through the real binary against the
//! machine's RabbitMQ (127.0.0.1:5672), mirroring Dapr's certification
//! (reference 12.3): fan-out between apps, competing replicas, unsubscribed
//! topics, quorum and classic queues, TTL, priority, and a broker that is
//! down when the sidecar starts.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use serde_json::json;

/// A RabbitMQ component with `consumerID` and extra metadata.
fn rabbit(consumer: &str, uri: &str, extra: &[(&str, &str)]) -> String {
    let mut md = vec![("connectionString", uri), ("consumerID", consumer)];
    md.extend_from_slice(extra);
    component("pubsub", &md).replace("pubsub.in-memory", "pubsub.rabbitmq")
}

fn sub_with(name: &str, topic: &str, route: &str, metadata: &[(&str, &str)]) -> String {
    let mut yaml = subscription(name, topic, route);
    if !metadata.is_empty() {
        yaml.push_str("  metadata:\n");
        for (k, v) in metadata {
            yaml.push_str(&format!("    {k}: \"{v}\"\n"));
        }
    }
    yaml
}

/// Deletes queues and exchanges a test made under its own names.
async fn delete(queues: &[String], exchanges: &[String]) {
    use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
    let Ok(conn) =
        lapin::Connection::connect(RABBIT_URI, lapin::ConnectionProperties::default()).await
    else {
        return;
    };
    for q in queues {
        if let Ok(ch) = conn.create_channel().await {
            let _ = ch
                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
    }
    for e in exchanges {
        if let Ok(ch) = conn.create_channel().await {
            let _ = ch
                .exchange_delete(e.as_str().into(), ExchangeDeleteOptions::default())
                .await;
        }
    }
    let _ = conn.close(200, "clean-up".into()).await;
}

async fn publish(sc: &Sidecar, topic: &str, query: &str, body: serde_json::Value) -> u16 {
    sc.call(
        "POST",
        &format!("/v1.0/publish/pubsub/{topic}{query}"),
        &[("content-type", "application/json")],
        &body.to_string(),
    )
    .await
    .unwrap()
    .0
}

fn seq_of(r: &Received) -> u64 {
    r.json()["data"]["seq"].as_u64().unwrap()
}

/// Drains an app until it has been quiet for `quiet`.
async fn drain(app: &mut TestApp, quiet: u64) -> Vec<Received> {
    let mut out = vec![];
    while let Ok(r) = app.next(quiet).await {
        out.push(r);
    }
    out
}

#[tokio::test]
async fn apps_fan_out_replicas_compete_and_unsubscribed_topics_deliver_nothing() -> TestResult {
    let id = uuid::Uuid::new_v4().simple().to_string()[..10].to_owned();
    let (alpha, beta) = (format!("alpha-{id}"), format!("beta-{id}"));
    let [red, blue, green] = ["red", "blue", "green"].map(|c| format!("{c}-{id}"));
    let subs = |queue_type: &str| {
        [
            (
                "red.yaml",
                sub_with("red", &red, "/msgs", &[("queueType", queue_type)]),
            ),
            (
                "blue.yaml",
                sub_with("blue", &blue, "/msgs", &[("queueType", queue_type)]),
            ),
        ]
    };
    let [r1, b1] = subs("quorum");
    let alpha_dir = resources(&[
        ("pubsub.yaml", &rabbit(&alpha, RABBIT_URI, &[])),
        (r1.0, &r1.1),
        (b1.0, &b1.1),
    ]);
    let [r2, b2] = subs("classic");
    let beta_dir = resources(&[
        ("pubsub.yaml", &rabbit(&beta, RABBIT_URI, &[])),
        (r2.0, &r2.1),
        (b2.0, &b2.1),
    ]);
    let mut app_a = TestApp::ok(None).await;
    let mut app_b1 = TestApp::ok(None).await;
    let mut app_b2 = TestApp::ok(None).await;
    let sc_a = Sidecar::start(alpha_dir.path(), Some(app_a.port), &[], &[]).await;
    let sc_b1 = Sidecar::start(beta_dir.path(), Some(app_b1.port), &[], &[]).await;
    let _sc_b2 = Sidecar::start(beta_dir.path(), Some(app_b2.port), &[], &[]).await;
    for seq in 0..60u64 {
        let topic = [&red, &blue, &green][(seq % 3) as usize];
        let via = if seq % 2 == 0 { &sc_a } else { &sc_b1 };
        assert_eq!(publish(via, topic, "", json!({"seq": seq})).await, 204);
    }
    let subscribed: BTreeSet<u64> = (0..60).filter(|s| s % 3 != 2).collect();
    let a: Vec<u64> = drain(&mut app_a, 3).await.iter().map(seq_of).collect();
    let b1: Vec<u64> = drain(&mut app_b1, 2).await.iter().map(seq_of).collect();
    let b2: Vec<u64> = drain(&mut app_b2, 2).await.iter().map(seq_of).collect();
    assert_eq!(
        a.iter().copied().collect::<BTreeSet<_>>(),
        subscribed,
        "alpha gets every message of red and blue"
    );
    assert_eq!(a.len(), subscribed.len(), "once each");
    let mut beta_all = b1.clone();
    beta_all.extend(&b2);
    beta_all.sort();
    assert_eq!(
        beta_all,
        subscribed.iter().copied().collect::<Vec<_>>(),
        "beta's replicas together get each message once"
    );
    assert!(
        !b1.is_empty() && !b2.is_empty(),
        "both replicas took a share: {} and {}",
        b1.len(),
        b2.len()
    );
    let mut queues = vec![];
    for c in [&alpha, &beta] {
        for t in [&red, &blue] {
            queues.push(format!("{c}-{t}"));
            queues.push(format!("{c}-{t}.dlq"));
        }
    }
    let mut exchanges = vec![red.clone(), blue.clone(), green.clone()];
    exchanges.extend([format!("{red}.dlq"), format!("{blue}.dlq")]);
    delete(&queues, &exchanges).await;
    Ok(())
}

/// Declares the subscription's queue by running a consumer once, then
/// stops it, so messages published next wait in the queue.
async fn declare_then_stop(dir: &std::path::Path) -> TestResult {
    let app = TestApp::ok(None).await;
    let mut sc = Sidecar::start(dir, Some(app.port), &[], &[]).await;
    sc.call("POST", "/v1.0/shutdown", &[], "").await?;
    sc.child.wait().await?;
    Ok(())
}

#[tokio::test]
async fn ttl_expires_in_the_broker_and_the_message_ttl_beats_the_component_ttl() -> TestResult {
    let b = Bench::new(Backend::Rabbit);
    let topic = b.topic("ttl");
    let group = format!("g-{}", b.id);
    let consumer_dir = resources(&[
        ("pubsub.yaml", &rabbit(&group, RABBIT_URI, &[])),
        ("s.yaml", &subscription("s", &topic, "/ttl")),
    ]);
    declare_then_stop(consumer_dir.path()).await?;
    // The publisher's component sets a 1 s default TTL.
    let publisher_dir = resources(&[(
        "pubsub.yaml",
        &rabbit(&group, RABBIT_URI, &[("ttlInSeconds", "1")]),
    )]);
    let publisher = Sidecar::start(publisher_dir.path(), None, &[], &[]).await;
    for seq in 0..10u64 {
        let query = if seq % 2 == 0 {
            "?metadata.ttlInSeconds=100"
        } else {
            ""
        };
        assert_eq!(
            publish(&publisher, &topic, query, json!({"seq": seq})).await,
            204
        );
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut app = TestApp::ok(None).await;
    let _sc = Sidecar::start(consumer_dir.path(), Some(app.port), &[], &[]).await;
    let got: BTreeSet<u64> = drain(&mut app, 3).await.iter().map(seq_of).collect();
    assert_eq!(
        got,
        [0, 2, 4, 6, 8].into(),
        "only the messages with a 100 s TTL outlived the component's 1 s"
    );
    Ok(())
}

#[tokio::test]
async fn higher_priority_messages_are_delivered_first() -> TestResult {
    let b = Bench::new(Backend::Rabbit);
    let topic = b.topic("prio");
    let group = format!("g-{}", b.id);
    let dir = resources(&[
        (
            "pubsub.yaml",
            &rabbit(&group, RABBIT_URI, &[("concurrencyMode", "single")]),
        ),
        (
            "s.yaml",
            &sub_with("s", &topic, "/prio", &[("maxPriority", "10")]),
        ),
    ]);
    declare_then_stop(dir.path()).await?;
    let publisher = Sidecar::start(dir.path(), None, &[], &[]).await;
    for seq in 0..10u64 {
        let priority = if seq < 5 { 1 } else { 9 };
        let query = format!("?metadata.priority={priority}");
        assert_eq!(
            publish(&publisher, &topic, &query, json!({"seq": seq})).await,
            204
        );
    }
    let mut app = TestApp::ok(None).await;
    let _sc = Sidecar::start(dir.path(), Some(app.port), &[], &[]).await;
    let order: Vec<u64> = drain(&mut app, 3).await.iter().map(seq_of).collect();
    assert_eq!(order.len(), 10);
    let first: BTreeSet<u64> = order[..5].iter().copied().collect();
    assert_eq!(
        first,
        (5..10).collect(),
        "priority 9 before priority 1: {order:?}"
    );
    Ok(())
}

/// Forwards 127.0.0.1:`port` to the RabbitMQ server.
async fn proxy(listener: tokio::net::TcpListener) {
    while let Ok((mut client, _)) = listener.accept().await {
        tokio::spawn(async move {
            if let Ok(mut server) = tokio::net::TcpStream::connect("127.0.0.1:5672").await {
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            }
        });
    }
}

#[tokio::test]
async fn a_broker_down_at_start_up_is_retried_until_it_is_up() -> TestResult {
    let b = Bench::new(Backend::Rabbit);
    let topic = b.topic("late");
    let port = free_port();
    let uri = format!("amqp://guest:guest@127.0.0.1:{port}");
    let dir = resources(&[
        (
            "pubsub.yaml",
            &rabbit(
                &format!("g-{}", b.id),
                &uri,
                &[("reconnectWaitSeconds", "1")],
            ),
        ),
        ("s.yaml", &subscription("s", &topic, "/late")),
    ]);
    let mut app = TestApp::ok(None).await;
    // Nothing listens on the port yet: the sidecar starts anyway.
    let sc = Sidecar::start(dir.path(), Some(app.port), &[], &[]).await;
    assert_eq!(
        sc.component_healthy("pubsub").await,
        Some(false),
        "the outage is reported"
    );
    assert_eq!(
        sc.call("GET", "/v1.0/healthz/outbound", &[], "").await?.0,
        204,
        "a broker down at start-up does not hold the SDKs' wait for the sidecar"
    );
    let (status, _, body) = sc
        .call(
            "POST",
            &format!("/v1.0/publish/pubsub/{topic}"),
            &[("content-type", "application/json")],
            r#"{"seq":0}"#,
        )
        .await?;
    assert_eq!(status, 500);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&body)?["errorCode"],
        "ERR_PUBSUB_PUBLISH_MESSAGE"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The broker "comes up".
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    tokio::spawn(proxy(listener));
    assert!(sc.wait_component("pubsub", true, 10).await, "reconnected");
    // The subscription resumes by itself: once one message arrives, every
    // later one does.
    let mut seq = 1u64;
    loop {
        assert_eq!(publish(&sc, &topic, "", json!({"seq": seq})).await, 204);
        if let Ok(r) = app.next(1).await {
            assert_eq!(seq_of(&r), seq);
            break;
        }
        seq += 1;
        assert!(seq < 20, "the subscription never started");
    }
    for n in seq + 1..seq + 6 {
        assert_eq!(publish(&sc, &topic, "", json!({"seq": n})).await, 204);
    }
    let got: BTreeSet<u64> = drain(&mut app, 3).await.iter().map(seq_of).collect();
    assert_eq!(got, (seq + 1..seq + 6).collect());
    Ok(())
}

/// Perch asks for 32 KiB frames (lapin's buffers are 32 frames each): a
/// message of many frames goes through whole, both ways.
#[tokio::test]
async fn a_message_larger_than_a_frame_arrives_whole() -> TestResult {
    let b = Bench::new(Backend::Rabbit);
    let topic = b.topic("big");
    let dir = resources(&[
        ("pubsub.yaml", &b.pubsub(&[])),
        ("s.yaml", &subscription("s", &topic, "/big")),
    ]);
    let mut app = TestApp::ok(None).await;
    let sc = Sidecar::start(dir.path(), Some(app.port), &[], &[]).await;
    let pad: String = (0..300_000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    assert_eq!(
        publish(&sc, &topic, "", json!({"seq": 1, "pad": pad})).await,
        204
    );
    let r = app.next(20).await?;
    assert_eq!(r.json()["data"]["pad"].as_str(), Some(pad.as_str()));
    Ok(())
}

#[tokio::test]
async fn message_properties_reach_the_app_as_metadata_when_asked() -> TestResult {
    let b = Bench::new(Backend::Rabbit);
    let topic = b.topic("props");
    let dir = resources(&[
        (
            "pubsub.yaml",
            &b.pubsub(&[("publishMessagePropertiesToMetadata", "true")]),
        ),
        ("s.yaml", &subscription("s", &topic, "/props")),
    ]);
    let mut app = TestApp::ok(None).await;
    let sc = Sidecar::start(dir.path(), Some(app.port), &[], &[]).await;
    let query = "?metadata.messageID=m-1&metadata.correlationID=c-1&metadata.type=order";
    assert_eq!(publish(&sc, &topic, query, json!({"seq": 1})).await, 204);
    let r = app.next(20).await?;
    assert_eq!(r.headers["metadata.messageid"], "m-1");
    assert_eq!(r.headers["metadata.correlationid"], "c-1");
    assert_eq!(r.headers["metadata.type"], "order");
    assert_eq!(
        r.headers["metadata.contenttype"],
        "application/cloudevents+json"
    );
    Ok(())
}

#[tokio::test]
async fn lag_is_the_queue_depth() -> TestResult {
    let b = Bench::new(Backend::Rabbit);
    let broker = b.broker(&[]);
    let topic = b.topic("lag");
    let mut stream = b.subscribe(broker.as_ref(), &topic, 1).await;
    b.publish_numbers(broker.as_ref(), &topic, 5).await?;
    let held = tokio::time::timeout(Duration::from_secs(20), stream.recv())
        .await?
        .expect("delivery");
    let mut depth = 0;
    for _ in 0..20 {
        depth = broker.lag().await.iter().map(|l| l.messages).sum::<i64>();
        if depth == 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(depth, 4, "prefetch 1: one out, four waiting in the queue");
    held.ack.ack().await?;
    broker.close().await;
    Ok(())
}

/// Issue 18: topology daprd declared first (its defaults: a durable,
/// auto-deleted fanout exchange and a durable, auto-deleted classic queue
/// `{consumerID}-{topic}` with `x-queue-type`), then Perch on the same
/// names: it uses them as they are, where redeclaring with its own flags
/// failed with PRECONDITION_FAILED, and the messages flow, also to a queue
/// declared as quorum.
#[tokio::test]
async fn exchanges_and_queues_daprd_declared_are_used_as_they_are() -> TestResult {
    use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
    use lapin::types::{AMQPValue, FieldTable};
    let id = uuid::Uuid::new_v4().simple().to_string()[..10].to_owned();
    let consumer = format!("daprd-{id}");
    let conn =
        lapin::Connection::connect(RABBIT_URI, lapin::ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    let mut topics = vec![];
    let mut queues = vec![];
    for queue_type in ["classic", "quorum"] {
        let topic = format!("orders-{queue_type}-{id}");
        let queue = format!("{consumer}-{topic}");
        // Quorum queues cannot be auto-deleted; daprd declares them durable.
        let auto_delete = queue_type == "classic";
        ch.exchange_declare(
            topic.as_str().into(),
            lapin::ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                durable: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(queue_type.into()),
        );
        ch.queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                auto_delete,
                ..Default::default()
            },
            args,
        )
        .await?;
        ch.queue_bind(
            queue.as_str().into(),
            topic.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
        topics.push(topic);
        queues.push(queue);
    }
    let dir = resources(&[
        (
            "pubsub.yaml",
            &rabbit(&consumer, RABBIT_URI, &[("deadLetterDefault", "none")]),
        ),
        ("a.yaml", &subscription("a", &topics[0], "/classic")),
        ("b.yaml", &subscription("b", &topics[1], "/quorum")),
    ]);
    let mut app = TestApp::ok(None).await;
    let sc = Sidecar::start(dir.path(), Some(app.port), &[], &[]).await;
    for topic in &topics {
        assert_eq!(publish(&sc, topic, "", json!({"t": topic})).await, 204);
    }
    let mut paths: Vec<String> = vec![app.next(20).await?.path, app.next(20).await?.path];
    paths.sort();
    assert_eq!(paths, ["/classic", "/quorum"]);
    drop(sc);
    delete(&queues, &topics).await;
    Ok(())
}
