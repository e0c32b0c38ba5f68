//! `pubsub.rabbitmq` on lapin, with Dapr's topology (reference 4.4): an
//! exchange per topic (`exchangeKind`, default fanout) and a queue per
//! subscribing app, `{consumerID}-{topic}` (or the subscription's
//! `queueName`), bound with the subscription's `routingKey`s. Replicas of an
//! app compete on one queue; different apps each get every message.
//!
//! **Connection**: one connection per component, kept by a task that
//! reconnects forever with capped backoff (also when the broker is down at
//! start-up); each subscription redeclares its topology and resumes
//! consuming on every new connection. While disconnected, publishes fail
//! with Dapr's 500 and `/v1.0/healthz/outbound` reports the outage.
//!
//! **Publish**: durable exchanges and persistent messages by default;
//! publisher confirms awaited (a negative confirm is an error, unlike
//! Dapr), and a batch is published first and confirmed after, so a bulk
//! publish is not one round trip per message. Metadata travels as AMQP
//! headers; `routingKey`, `priority`, `ttlInSeconds`, `messageID`,
//! `correlationID`, `type` and `contentType` map onto AMQP properties.
//!
//! **Consume**: manual acks, each delivery settled when finished (in any
//! order) through the consume loop, which sends what finished below the
//! oldest unfinished delivery as one `multiple` ack and the rest one by one;
//! prefetch = the in-flight window (`maxInFlight`) unless
//! `prefetchCount` is set; a nack requeues (the sidecar owns retries; there
//! is no requeue loop). The subscription's dead-letter topic gets its
//! exchange and a durable queue `{consumerID}-{dead-letter topic}` declared
//! with the subscription, so dead letters are kept before anyone subscribes.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use tokio::sync::{mpsc, watch};

use super::{
    AckHandle, BoxFuture, Broker, BrokerError, Delivery, DeliveryStream, Lag, Message,
    SubscribeRequest,
};
use crate::config::rabbitmq::{redact, RabbitConfig};

/// How long a publish (including its confirm) may take.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a publish waits for a connection before failing.
const CONNECT_GRACE: Duration = Duration::from_secs(2);
/// Longest wait between reconnection attempts.
const MAX_RECONNECT_WAIT: Duration = Duration::from_secs(5);

/// A live connection and its publishing channel.
struct Live {
    generation: u64,
    conn: Connection,
    publish: tokio::sync::Mutex<Option<Channel>>,
    /// Exchanges declared on this connection.
    declared: Mutex<HashSet<String>>,
}

/// The RabbitMQ broker of one component.
pub struct RabbitBroker {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    cfg: RabbitConfig,
    live: watch::Sender<Option<Arc<Live>>>,
    /// (topic, queue) of each subscription.
    queues: Mutex<Vec<(String, String)>>,
    closed: AtomicBool,
}

impl RabbitBroker {
    /// Starts connecting in the background.
    pub fn new(name: &str, cfg: &RabbitConfig) -> Self {
        let inner = Arc::new(Inner {
            name: name.to_owned(),
            cfg: cfg.clone(),
            live: watch::Sender::new(None),
            queues: Mutex::new(vec![]),
            closed: AtomicBool::new(false),
        });
        tokio::spawn(keep_connected(Arc::downgrade(&inner)));
        Self { inner }
    }
}

/// Connects, and reconnects whenever the connection is lost, until the
/// broker is dropped or closed.
async fn keep_connected(inner: std::sync::Weak<Inner>) {
    let generation = AtomicU64::new(0);
    let mut wait = Duration::ZERO;
    loop {
        tokio::time::sleep(wait).await;
        let Some(me) = inner.upgrade() else { return };
        if me.closed.load(Ordering::Acquire) {
            return;
        }
        let uri = with_heartbeat(&me.cfg.uri, me.cfg.heartbeat);
        let mut props = ConnectionProperties::default();
        if let Some(n) = &me.cfg.client_name {
            props = props.with_connection_name(LongString::from(n.as_str()));
        }
        let conn = match tokio::time::timeout(
            Duration::from_secs(10),
            connect(&uri, props, &me.cfg),
        )
        .await
        {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                tracing::warn!(pubsub = %me.name, uri = %redact(&me.cfg.uri), error = %e, "rabbitmq connection failed; retrying");
                wait = next_wait(wait, me.cfg.reconnect_wait);
                continue;
            }
            Err(_) => {
                tracing::warn!(pubsub = %me.name, "rabbitmq connection timed out; retrying");
                wait = next_wait(wait, me.cfg.reconnect_wait);
                continue;
            }
        };
        let g = generation.fetch_add(1, Ordering::AcqRel) + 1;
        tracing::info!(pubsub = %me.name, generation = g, "rabbitmq connected");
        let live = Arc::new(Live {
            generation: g,
            conn,
            publish: tokio::sync::Mutex::new(None),
            declared: Mutex::new(HashSet::new()),
        });
        me.live.send_replace(Some(live.clone()));
        drop(me);
        // Watch the connection; on loss, clear it and reconnect.
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if !live.conn.status().connected() {
                break;
            }
            if inner
                .upgrade()
                .is_none_or(|i| i.closed.load(Ordering::Acquire))
            {
                return;
            }
        }
        let Some(me) = inner.upgrade() else { return };
        tracing::warn!(pubsub = %me.name, "rabbitmq connection lost; reconnecting");
        me.live.send_replace(None);
        wait = me.cfg.reconnect_wait;
    }
}

/// Connects, with TLS for `amqps://` (the configured CA, else the
/// system's roots; the client certificate for mutual TLS).
async fn connect(
    uri: &str,
    props: ConnectionProperties,
    cfg: &RabbitConfig,
) -> lapin::Result<Connection> {
    if !uri.starts_with("amqps://") {
        return Connection::connect(uri, props).await;
    }
    let tls = lapin::tcp::OwnedTLSConfig {
        identity: cfg
            .tls
            .client
            .as_ref()
            .map(|(cert, key)| lapin::tcp::OwnedIdentity::PKCS8 {
                pem: cert.as_bytes().to_vec(),
                key: key.as_bytes().to_vec(),
            }),
        cert_chain: cfg.tls.ca_cert.clone(),
    };
    Connection::connect_with_config(uri, props, tls, lapin::runtime::default_runtime()?).await
}

fn next_wait(current: Duration, first: Duration) -> Duration {
    if current.is_zero() {
        first
    } else {
        (current * 2).min(MAX_RECONNECT_WAIT)
    }
}

/// Adds `heartbeat=<secs>` to the URI's query unless it has one.
fn with_heartbeat(uri: &str, heartbeat: Duration) -> String {
    if uri.contains("heartbeat=") {
        return uri.to_owned();
    }
    let sep = if uri.contains('?') { '&' } else { '?' };
    format!("{uri}{sep}heartbeat={}", heartbeat.as_secs().max(1))
}

impl Inner {
    /// The live connection, waiting up to `CONNECT_GRACE` for one (so the
    /// first publishes after start-up or a reconnect do not fail).
    async fn connected(&self) -> Result<Arc<Live>, BrokerError> {
        let mut rx = self.live.subscribe();
        if let Ok(Ok(l)) = tokio::time::timeout(CONNECT_GRACE, rx.wait_for(Option::is_some)).await {
            if let Some(l) = l.clone() {
                return Ok(l);
            }
        }
        self.current()
    }

    fn current(&self) -> Result<Arc<Live>, BrokerError> {
        self.live.borrow().clone().ok_or_else(|| {
            BrokerError::Unavailable(format!(
                "rabbitmq pubsub {}: not connected to {}",
                self.name,
                redact(&self.cfg.uri)
            ))
        })
    }

    fn exchange_options(&self) -> ExchangeDeclareOptions {
        ExchangeDeclareOptions {
            durable: self.cfg.durable,
            auto_delete: self.cfg.auto_delete,
            ..Default::default()
        }
    }

    fn exchange_kind(&self) -> ExchangeKind {
        match self.cfg.exchange_kind.as_str() {
            "topic" => ExchangeKind::Topic,
            "direct" => ExchangeKind::Direct,
            "headers" => ExchangeKind::Headers,
            _ => ExchangeKind::Fanout,
        }
    }

    /// The publishing channel of `live` (confirm mode), made on first use
    /// or after a channel error.
    async fn publish_channel(&self, live: &Live) -> Result<Channel, BrokerError> {
        let mut slot = live.publish.lock().await;
        if let Some(ch) = slot.as_ref().filter(|c| c.status().connected()) {
            return Ok(ch.clone());
        }
        let ch = live
            .conn
            .create_channel()
            .await
            .map_err(|e| self.error(e))?;
        if self.cfg.publisher_confirm {
            ch.confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(|e| self.error(e))?;
        }
        // A new channel: exchanges are declared again through it.
        live.declared.lock().expect("lock").clear();
        *slot = Some(ch.clone());
        Ok(ch)
    }

    async fn declare_exchange(
        &self,
        live: &Live,
        ch: &Channel,
        topic: &str,
    ) -> Result<(), BrokerError> {
        if live.declared.lock().expect("lock").contains(topic) {
            return Ok(());
        }
        ch.exchange_declare(
            topic.into(),
            self.exchange_kind(),
            self.exchange_options(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| self.error(e))?;
        live.declared.lock().expect("lock").insert(topic.to_owned());
        Ok(())
    }

    fn error(&self, e: lapin::Error) -> BrokerError {
        BrokerError::Unavailable(format!("rabbitmq pubsub {}: {e}", self.name))
    }

    fn properties(&self, msg: &Message) -> BasicProperties {
        let md = &msg.metadata;
        let mut headers = FieldTable::default();
        for (k, v) in super::carried_metadata(md) {
            headers.insert(k.as_str().into(), AMQPValue::LongString(v.as_str().into()));
        }
        let content_type = md
            .get("contentType")
            .cloned()
            .or_else(|| msg.content_type.clone())
            .unwrap_or_else(|| "text/plain".into());
        let mut props = BasicProperties::default()
            .with_content_type(ShortString::from(content_type.as_str()))
            .with_delivery_mode(self.cfg.delivery_mode)
            .with_headers(headers);
        let ttl = md
            .get("ttlInSeconds")
            .or_else(|| md.get("ttl"))
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_secs)
            .or(self.cfg.ttl);
        if let Some(ttl) = ttl {
            props = props.with_expiration(ShortString::from(ttl.as_millis().to_string().as_str()));
        }
        if let Some(p) = md.get("priority").and_then(|p| p.parse::<u8>().ok()) {
            props = props.with_priority(p);
        }
        if let Some(id) = md.get("messageID") {
            props = props.with_message_id(id.as_str().into());
        }
        if let Some(id) = md.get("correlationID") {
            props = props.with_correlation_id(id.as_str().into());
        }
        if let Some(t) = md.get("type") {
            props = props.with_type(t.as_str().into());
        }
        props
    }

    /// Publishes one message; returns the pending confirm.
    async fn send(&self, msg: &Message) -> Result<lapin::PublisherConfirm, BrokerError> {
        let live = self.connected().await?;
        let ch = self.publish_channel(&live).await?;
        self.declare_exchange(&live, &ch, &msg.topic).await?;
        let routing_key = msg.metadata.get("routingKey").cloned().unwrap_or_default();
        ch.basic_publish(
            msg.topic.as_str().into(),
            routing_key.as_str().into(),
            BasicPublishOptions::default(),
            &msg.data,
            self.properties(msg),
        )
        .await
        .map_err(|e| self.error(e))
    }

    async fn confirmed(&self, pending: lapin::PublisherConfirm) -> Result<(), BrokerError> {
        match pending.await {
            Ok(Confirmation::Ack(_)) | Ok(Confirmation::NotRequested) => Ok(()),
            Ok(Confirmation::Nack(_)) => Err(BrokerError::Unavailable(format!(
                "rabbitmq pubsub {}: the broker refused the message (negative confirm)",
                self.name
            ))),
            Err(e) => Err(self.error(e)),
        }
    }
}

impl Broker for RabbitBroker {
    fn publish(&self, msg: Message) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async move {
            let inner = &self.inner;
            let work = async {
                let pending = inner.send(&msg).await?;
                inner.confirmed(pending).await
            };
            tokio::time::timeout(PUBLISH_TIMEOUT, work)
                .await
                .unwrap_or_else(|_| {
                    Err(BrokerError::Unavailable(format!(
                        "rabbitmq pubsub {}: publish not confirmed within {PUBLISH_TIMEOUT:?}",
                        inner.name
                    )))
                })
        })
    }

    fn publish_batch(&self, msgs: Vec<Message>) -> BoxFuture<'_, Vec<Result<(), BrokerError>>> {
        Box::pin(async move {
            let inner = &self.inner;
            // All sent first, then the confirms awaited: pipelined.
            let mut pending = Vec::with_capacity(msgs.len());
            for m in &msgs {
                pending.push(inner.send(m).await);
            }
            let mut out = Vec::with_capacity(pending.len());
            for p in pending {
                out.push(match p {
                    Ok(confirm) => tokio::time::timeout(PUBLISH_TIMEOUT, inner.confirmed(confirm))
                        .await
                        .unwrap_or_else(|_| {
                            Err(BrokerError::Unavailable(format!(
                                "rabbitmq pubsub {}: publish not confirmed in time",
                                inner.name
                            )))
                        }),
                    Err(e) => Err(e),
                });
            }
            out
        })
    }

    fn subscribe(
        &self,
        req: SubscribeRequest,
    ) -> BoxFuture<'_, Result<DeliveryStream, BrokerError>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            let queue = req
                .metadata
                .get("queueName")
                .cloned()
                .unwrap_or_else(|| format!("{}-{}", req.group, req.topic));
            inner
                .queues
                .lock()
                .expect("lock")
                .push((req.topic.clone(), queue.clone()));
            let (tx, rx) = mpsc::unbounded_channel();
            let (declared_tx, declared) = tokio::sync::oneshot::channel();
            let connected = inner.live.borrow().is_some();
            tokio::spawn(consume_forever(
                inner.clone(),
                req,
                queue.clone(),
                tx,
                declared_tx,
            ));
            // Like Dapr, return once consuming (the queue is bound, so what
            // is published next reaches it); when the broker is down the
            // subscription starts by itself on connection.
            let wait = if connected {
                Duration::from_secs(10)
            } else {
                CONNECT_GRACE
            };
            if tokio::time::timeout(wait, declared).await.is_err() {
                tracing::warn!(pubsub = %inner.name, %queue, "rabbitmq not reachable yet; the subscription starts when it is");
            }
            Ok(rx)
        })
    }

    fn health(&self) -> Result<(), BrokerError> {
        let live = self.inner.current()?;
        if live.conn.status().connected() {
            Ok(())
        } else {
            Err(BrokerError::Unavailable(format!(
                "rabbitmq pubsub {}: connection lost",
                self.inner.name
            )))
        }
    }

    fn capabilities(&self) -> Vec<&'static str> {
        vec!["MESSAGE_TTL"]
    }

    fn lag(&self) -> BoxFuture<'_, Vec<Lag>> {
        Box::pin(async move {
            let Ok(live) = self.inner.current() else {
                return vec![];
            };
            let queues = self.inner.queues.lock().expect("lock").clone();
            let mut out = vec![];
            for (topic, q) in queues {
                // A passive declare of a missing queue closes its channel.
                let Ok(ch) = live.conn.create_channel().await else {
                    break;
                };
                let passive = QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                };
                if let Ok(info) = ch
                    .queue_declare(q.as_str().into(), passive, FieldTable::default())
                    .await
                {
                    out.push(Lag {
                        topic: topic.clone(),
                        partition: 0,
                        messages: i64::from(info.message_count()),
                    });
                }
                let _ = ch.close(200, "lag read".into()).await;
            }
            out
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.inner.closed.store(true, Ordering::Release);
            if let Some(live) = self.inner.live.send_replace(None) {
                let _ = live.conn.close(200, "perch shutting down".into()).await;
            }
        })
    }
}

/// Consumes `queue` on every connection the broker gets, until the
/// subscription is dropped.
async fn consume_forever(
    inner: Arc<Inner>,
    req: SubscribeRequest,
    queue: String,
    tx: mpsc::UnboundedSender<Delivery>,
    declared: tokio::sync::oneshot::Sender<()>,
) {
    let mut declared = Some(declared);
    let mut live_rx = inner.live.subscribe();
    let mut last_generation = 0;
    loop {
        let live = tokio::select! {
            l = live_rx.wait_for(|l| l.as_ref().is_some_and(|l| l.generation > last_generation)) => match l {
                Ok(l) => l.clone().expect("checked"),
                Err(_) => return,
            },
            _ = tx.closed() => return,
        };
        last_generation = live.generation;
        match consume_once(&inner, &live, &req, &queue, &tx, &mut declared).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(pubsub = %inner.name, %queue, error = %e, "rabbitmq consumer stopped; resuming on the next connection");
                // A topology error on a live connection: wait before trying
                // again on it.
                if live.conn.status().connected() {
                    last_generation -= 1;
                    tokio::select! {
                        _ = tokio::time::sleep(MAX_RECONNECT_WAIT) => {}
                        _ = tx.closed() => return,
                    }
                }
            }
        }
    }
}

/// Declares the topology and consumes until the connection is lost (`Err`)
/// or the subscription is dropped (`Ok`).
async fn consume_once(
    inner: &Inner,
    live: &Live,
    req: &SubscribeRequest,
    queue: &str,
    tx: &mpsc::UnboundedSender<Delivery>,
    declared: &mut Option<tokio::sync::oneshot::Sender<()>>,
) -> Result<(), String> {
    let e = |e: lapin::Error| e.to_string();
    let ch = live.conn.create_channel().await.map_err(e)?;
    let prefetch = inner
        .cfg
        .prefetch
        .unwrap_or_else(|| u16::try_from(req.window).unwrap_or(u16::MAX));
    ch.basic_qos(prefetch, BasicQosOptions::default())
        .await
        .map_err(e)?;
    declare_queue(inner, &ch, &req.topic, queue, &req.metadata).await?;
    if let Some(dlq) = &req.dead_letter_topic {
        let dlq_queue = format!("{}-{dlq}", req.group);
        // Dead letters are kept: a durable queue whatever the settings.
        declare_bound_queue(
            inner,
            &ch,
            dlq,
            &dlq_queue,
            &[String::new()],
            true,
            FieldTable::default(),
        )
        .await?;
    }
    let tag = format!("{queue}-{}", uuid::Uuid::new_v4().simple());
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(e)?;
    tracing::info!(pubsub = %inner.name, %queue, prefetch, "rabbitmq consuming");
    if let Some(d) = declared.take() {
        let _ = d.send(());
    }
    // Deliveries are settled through this loop, which coalesces acks: what
    // finished below the oldest unfinished delivery goes in one `multiple`
    // ack, the rest one by one (a slow message never holds others' acks).
    let (settle, mut settled) = mpsc::unbounded_channel::<(u64, bool)>();
    let mut unsettled = BTreeSet::new();
    let mut closing = false;
    loop {
        let next = tokio::select! {
            d = std::future::poll_fn(|cx| futures_core::Stream::poll_next(std::pin::Pin::new(&mut consumer), cx)), if !closing => d,
            Some(first) = settled.recv() => {
                let mut batch = vec![first];
                while let Ok(more) = settled.try_recv() {
                    batch.push(more);
                }
                settle_batch(&ch, &mut unsettled, batch).await.map_err(e)?;
                if closing && unsettled.is_empty() {
                    let _ = ch.close(200, "subscription closed".into()).await;
                    return Ok(());
                }
                continue;
            }
            _ = tx.closed(), if !closing => {
                // No more deliveries; those handed out are settled first.
                let _ = ch.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()).await;
                closing = true;
                if unsettled.is_empty() {
                    let _ = ch.close(200, "subscription closed".into()).await;
                    return Ok(());
                }
                continue;
            }
        };
        let d = match next {
            Some(Ok(d)) => d,
            Some(Err(err)) => return Err(err.to_string()),
            None => return Err("consumer ended".into()),
        };
        unsettled.insert(d.delivery_tag);
        let delivery = Delivery {
            topic: req.topic.clone(),
            data: Bytes::from(d.data),
            content_type: d.properties.content_type().as_ref().map(|c| c.to_string()),
            metadata: metadata_of(&d.properties, inner.cfg.properties_to_metadata),
            lane: 0,
            owned: None,
            ack: Box::new(RabbitAck {
                tag: d.delivery_tag,
                settle: Some(settle.clone()),
            }),
        };
        // A subscription that is gone drops the delivery, which nacks
        // itself; the loop then sees `tx` closed.
        let _ = tx.send(delivery);
    }
}

/// Sends the acks and nacks of finished deliveries (`true`: ack). Nacks go
/// first, one by one; then the acks below the oldest unsettled delivery as
/// one `multiple` ack (every tag at or below it is finished), and the
/// others one by one.
async fn settle_batch(
    ch: &Channel,
    unsettled: &mut BTreeSet<u64>,
    batch: Vec<(u64, bool)>,
) -> Result<(), lapin::Error> {
    let mut acks = Vec::with_capacity(batch.len());
    for (tag, ack) in batch {
        unsettled.remove(&tag);
        if ack {
            acks.push(tag);
        } else {
            let requeue = BasicNackOptions {
                requeue: true,
                ..Default::default()
            };
            ch.basic_nack(tag, requeue).await?;
        }
    }
    acks.sort_unstable();
    let oldest = unsettled.first().copied().unwrap_or(u64::MAX);
    let below = acks.partition_point(|t| *t < oldest);
    if let Some(&last) = acks[..below].last() {
        ch.basic_ack(
            last,
            BasicAckOptions {
                multiple: below > 1,
            },
        )
        .await?;
    }
    for &tag in &acks[below..] {
        ch.basic_ack(tag, BasicAckOptions::default()).await?;
    }
    Ok(())
}

async fn declare_queue(
    inner: &Inner,
    ch: &Channel,
    topic: &str,
    queue: &str,
    sub: &BTreeMap<String, String>,
) -> Result<(), String> {
    let mut args = FieldTable::default();
    let queue_type = sub.get("queueType").or(inner.cfg.queue_type.as_ref());
    if let Some(t) = queue_type {
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(t.as_str().into()),
        );
    }
    let number = |key: &str, component: Option<i64>| -> Option<i64> {
        sub.get(key).and_then(|v| v.parse().ok()).or(component)
    };
    if let Some(n) = number("maxLen", inner.cfg.max_len) {
        args.insert("x-max-length".into(), AMQPValue::LongLongInt(n));
    }
    if let Some(n) = number("maxLenBytes", inner.cfg.max_len_bytes) {
        args.insert("x-max-length-bytes".into(), AMQPValue::LongLongInt(n));
    }
    if let Some(n) = number("maxPriority", None) {
        args.insert("x-max-priority".into(), AMQPValue::LongLongInt(n));
    }
    if sub
        .get("singleActiveConsumer")
        .and_then(|v| crate::util::parse_go_bool(v))
        .unwrap_or(false)
    {
        args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    }
    let keys: Vec<String> = match sub.get("routingKey") {
        Some(k) => k.split(',').map(|s| s.trim().to_owned()).collect(),
        None => vec![String::new()],
    };
    declare_bound_queue(inner, ch, topic, queue, &keys, inner.cfg.durable, args).await
}

async fn declare_bound_queue(
    inner: &Inner,
    ch: &Channel,
    topic: &str,
    queue: &str,
    routing_keys: &[String],
    durable: bool,
    args: FieldTable,
) -> Result<(), String> {
    let e = |e: lapin::Error| e.to_string();
    ch.exchange_declare(
        topic.into(),
        inner.exchange_kind(),
        inner.exchange_options(),
        FieldTable::default(),
    )
    .await
    .map_err(e)?;
    let opts = QueueDeclareOptions {
        durable,
        auto_delete: inner.cfg.auto_delete && durable == inner.cfg.durable,
        ..Default::default()
    };
    ch.queue_declare(queue.into(), opts, args)
        .await
        .map_err(e)?;
    for key in routing_keys {
        ch.queue_bind(
            queue.into(),
            topic.into(),
            key.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(e)?;
    }
    Ok(())
}

/// AMQP headers as metadata; with `publishMessagePropertiesToMetadata`,
/// also Dapr's `metadata.*` property keys.
fn metadata_of(p: &BasicProperties, properties: bool) -> BTreeMap<String, String> {
    let mut md = BTreeMap::new();
    if let Some(h) = p.headers() {
        for (k, v) in h.inner() {
            if let Some(s) = value_text(v) {
                md.insert(k.to_string(), s);
            }
        }
    }
    if properties {
        for (key, value) in [
            ("metadata.messageid", p.message_id()),
            ("metadata.correlationid", p.correlation_id()),
            ("metadata.type", p.kind()),
            ("metadata.contenttype", p.content_type()),
        ] {
            if let Some(v) = value {
                md.insert(key.into(), v.to_string());
            }
        }
        if let Some(h) = p.headers() {
            for (k, v) in h.inner() {
                if let Some(s) = value_text(v) {
                    md.insert(format!("metadata.{k}"), s);
                }
            }
        }
    }
    md
}

fn value_text(v: &AMQPValue) -> Option<String> {
    Some(match v {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.to_string(),
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::ShortInt(n) => n.to_string(),
        _ => return None,
    })
}

/// Settles one delivery through its subscription's consume loop.
struct RabbitAck {
    tag: u64,
    settle: Option<mpsc::UnboundedSender<(u64, bool)>>,
}

impl RabbitAck {
    fn send(&mut self, ack: bool) {
        if let Some(settle) = self.settle.take() {
            // A closed loop means a closed channel: the message is already
            // back in the queue.
            let _ = settle.send((self.tag, ack));
        }
    }
}

impl AckHandle for RabbitAck {
    fn ack(mut self: Box<Self>) -> BoxFuture<'static, Result<(), BrokerError>> {
        self.send(true);
        Box::pin(async { Ok(()) })
    }

    fn nack(mut self: Box<Self>) -> BoxFuture<'static, Result<(), BrokerError>> {
        self.send(false);
        Box::pin(async { Ok(()) })
    }
}

impl Drop for RabbitAck {
    fn drop(&mut self) {
        // Unfinished: back to the queue now (or when the channel closes).
        self.send(false);
    }
}
