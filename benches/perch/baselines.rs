//! The baselines: the same load produced straight to Kafka (rdkafka),
//! RabbitMQ (lapin, with confirms) and Redis (the redis crate), and
//! Kafka's, RabbitMQ's and Redis's own drain ceilings.

use super::*;

/// The same load produced straight to Kafka with rdkafka: `requests` rounds
/// of `per_request` records (all sent, then all awaited) from `c` tasks,
/// with Perch's producer settings (idempotent, `acks=all`, its `linger.ms`
/// and one request in flight),
/// so the ratio is what Perch adds, not a difference of settings.
pub(crate) async fn direct_kafka(
    topic: &str,
    body: &str,
    requests: usize,
    per_request: usize,
    c: usize,
) -> Run {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", "127.0.0.1:9092")
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", perch::broker::kafka::config::DEFAULT_LINGER_MS)
        .set(
            "max.in.flight.requests.per.connection",
            perch::broker::kafka::config::IDEMPOTENT_MAX_IN_FLIGHT,
        )
        .create()
        .unwrap();
    // Warm up: metadata and the idempotent producer id.
    for _ in 0..20 {
        producer
            .send(
                FutureRecord::<(), _>::to(topic).payload(body),
                Duration::from_secs(10),
            )
            .await
            .expect("warm-up produce");
    }
    let clients = (0..c)
        .map(|w| {
            let (p, t, b) = (producer.clone(), topic.to_owned(), body.to_owned());
            let share = share(requests, c, w);
            async move {
                let mut lat = vec![];
                for _ in 0..share {
                    let t0 = Instant::now();
                    let pending: Vec<_> = (0..per_request)
                        .map(|_| {
                            p.send_result(FutureRecord::<(), _>::to(&t).payload(&b))
                                .map_err(|(e, _)| e)
                                .expect("enqueue")
                        })
                        .collect();
                    for d in pending {
                        d.await.unwrap().map_err(|(e, _)| e).expect("produce");
                    }
                    lat.push(t0.elapsed());
                }
                lat
            }
        })
        .collect();
    run_clients(requests * per_request, clients).await
}

/// The same load published straight to RabbitMQ with lapin, persistent and
/// confirmed, one confirm channel per task, as Perch publishes.
pub(crate) async fn direct_rabbit(
    topic: &str,
    body: &str,
    requests: usize,
    per_request: usize,
    c: usize,
) -> Run {
    use lapin::options::ConfirmSelectOptions;
    let conn = lapin::Connection::connect(RABBIT_URI, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let mut clients = vec![];
    for w in 0..c {
        let ch = conn.create_channel().await.unwrap();
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        let (t, b) = (topic.to_owned(), body.to_owned());
        let share = share(requests, c, w);
        clients.push(async move {
            let mut lat = vec![];
            for _ in 0..share {
                let t0 = Instant::now();
                publish_confirmed(&ch, &t, "", &b, per_request).await;
                lat.push(t0.elapsed());
            }
            lat
        });
    }
    run_clients(requests * per_request, clients).await
}

/// Publishes `n` persistent copies of `body` on a confirm channel, then
/// awaits their confirms.
pub(crate) async fn publish_confirmed(
    ch: &lapin::Channel,
    exchange: &str,
    routing_key: &str,
    body: &str,
    n: usize,
) {
    let mut pending = Vec::with_capacity(n);
    for _ in 0..n {
        pending.push(
            ch.basic_publish(
                exchange.into(),
                routing_key.into(),
                lapin::options::BasicPublishOptions::default(),
                body.as_bytes(),
                lapin::BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap(),
        );
    }
    for p in pending {
        p.await.unwrap();
    }
}

/// RabbitMQ's own drain rate with no app in the way: lapin consumes a
/// backlog of `n` persistent 1 KiB messages from a durable queue with
/// prefetch 64, acknowledging each message (`every` = 1) or every `every`
/// messages at once (`multiple`).
pub(crate) async fn direct_rabbit_drain(n: usize, every: usize) -> f64 {
    use lapin::options::{
        BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions,
        QueueDeclareOptions, QueueDeleteOptions,
    };
    use lapin::types::FieldTable;
    let conn = lapin::Connection::connect(RABBIT_URI, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let queue = format!("bench-drain-{}", uuid::Uuid::new_v4().simple());
    let ch = conn.create_channel().await.unwrap();
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare(queue.as_str().into(), durable, FieldTable::default())
        .await
        .unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let body = payload();
    for chunk in 0..n.div_ceil(500) {
        publish_confirmed(&ch, "", &queue, &body, 500.min(n - chunk * 500)).await;
    }
    let consumer_ch = conn.create_channel().await.unwrap();
    consumer_ch
        .basic_qos(64, BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = consumer_ch
        .basic_consume(
            queue.as_str().into(),
            "drain".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let started = Instant::now();
    for got in 1..=n {
        let d = std::future::poll_fn(|cx| {
            futures_core::Stream::poll_next(std::pin::Pin::new(&mut consumer), cx)
        })
        .await
        .unwrap()
        .unwrap();
        if got % every == 0 || got == n {
            d.acker
                .ack(BasicAckOptions {
                    multiple: every > 1,
                })
                .await
                .unwrap();
        }
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    let _ = ch
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    rate
}

/// A connection to the test Redis server.
async fn redis_conn() -> redis::aio::MultiplexedConnection {
    redis::Client::open(format!("redis://{REDIS_HOST}"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// The same load appended straight to Redis with the redis crate, Dapr's
/// field layout: `requests` rounds of `per_request` `XADD`s (one pipeline)
/// from `c` tasks, each on its own connection.
pub(crate) async fn direct_redis(
    topic: &str,
    body: &str,
    requests: usize,
    per_request: usize,
    c: usize,
) -> Run {
    let mut clients = vec![];
    for w in 0..c {
        let mut conn = redis_conn().await;
        let (t, b) = (topic.to_owned(), body.to_owned());
        let share = share(requests, c, w);
        clients.push(async move {
            let mut lat = vec![];
            for _ in 0..share {
                let t0 = Instant::now();
                let mut pipe = redis::pipe();
                for _ in 0..per_request {
                    pipe.cmd("XADD").arg(&t).arg("*").arg("data").arg(&b);
                }
                pipe.query_async::<Vec<String>>(&mut conn).await.unwrap();
                lat.push(t0.elapsed());
            }
            lat
        });
    }
    run_clients(requests * per_request, clients).await
}

/// Redis's own drain rate with no app in the way: one consumer of a group
/// reads a backlog of `n` 1 KiB entries 64 at a time (`XREADGROUP`, the
/// window Perch uses) and acks each read's entries in one `XACK`.
pub(crate) async fn direct_redis_drain(n: usize) -> f64 {
    let mut conn = redis_conn().await;
    let stream = format!("bench-drain-{}", uuid::Uuid::new_v4().simple());
    let body = payload();
    for chunk in 0..n.div_ceil(500) {
        let mut pipe = redis::pipe();
        for _ in 0..500.min(n - chunk * 500) {
            pipe.cmd("XADD")
                .arg(&stream)
                .arg("*")
                .arg("data")
                .arg(&body);
        }
        pipe.query_async::<Vec<String>>(&mut conn).await.unwrap();
    }
    redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg("g")
        .arg("0")
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    let started = Instant::now();
    let mut got = 0;
    while got < n {
        let reply: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg("g")
            .arg("c")
            .arg("COUNT")
            .arg(64)
            .arg("STREAMS")
            .arg(&stream)
            .arg(">")
            .query_async(&mut conn)
            .await
            .unwrap();
        let ids: Vec<String> = reply
            .keys
            .into_iter()
            .flat_map(|k| k.ids)
            .map(|e| e.id)
            .collect();
        got += ids.len();
        redis::cmd("XACK")
            .arg(&stream)
            .arg("g")
            .arg(&ids)
            .query_async::<i64>(&mut conn)
            .await
            .unwrap();
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    let _ = redis::cmd("DEL")
        .arg(&stream)
        .query_async::<i64>(&mut conn)
        .await;
    rate
}

/// Kafka's own drain rate with no app in the way: an rdkafka consumer of a
/// new group reads a backlog of `n` 1 KiB records on one partition with
/// Perch's consumer settings and ack mode (each record copied out, its
/// offset stored once finished, auto-commit every second). The clock starts
/// at the first record, after the group join.
pub(crate) async fn direct_kafka_drain(n: usize) -> f64 {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use rdkafka::Message;
    let topic = format!("bench-drain-{}", uuid::Uuid::new_v4().simple());
    let admin: AdminClient<_> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", "127.0.0.1:9092")
        .create()
        .unwrap();
    admin
        .create_topics(
            &[NewTopic::new(&topic, 1, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", "127.0.0.1:9092")
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let body = payload();
    for chunk in 0..n.div_ceil(1000) {
        let pending: Vec<_> = (0..1000.min(n - chunk * 1000))
            .map(|_| {
                producer
                    .send_result(FutureRecord::<(), _>::to(&topic).payload(&body))
                    .map_err(|(e, _)| e)
                    .expect("enqueue")
            })
            .collect();
        for d in pending {
            d.await.unwrap().map_err(|(e, _)| e).expect("produce");
        }
    }
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", "127.0.0.1:9092")
        .set("group.id", &topic)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("fetch.wait.max.ms", "100")
        .set("queued.max.messages.kbytes", "16384")
        .create()
        .unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let mut started = None;
    for _ in 0..n {
        let m = consumer.recv().await.expect("consume");
        started.get_or_insert_with(Instant::now);
        let data = m.payload().map(<[u8]>::to_vec).unwrap_or_default();
        std::hint::black_box(data);
        consumer
            .store_offset(m.topic(), m.partition(), m.offset() + 1)
            .expect("store offset");
    }
    let rate = n as f64 / started.expect("records").elapsed().as_secs_f64();
    let _ = admin
        .delete_topics(&[topic.as_str()], &AdminOptions::new())
        .await;
    rate
}
