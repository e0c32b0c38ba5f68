//! `pubsub.kafka` on librdkafka (rdkafka).
//!
//! **Publish**: one idempotent producer (`acks=all`) per component; a
//! publish resolves on the delivery report, or fails after
//! `publishTimeout`. `partitionKey` / `__key` is the record key,
//! `partitionNumber` pins the partition, the other metadata become record
//! headers (minus `excludeHeaderMetaRegex`), the content type travels in a
//! `content-type` header. Missing topics are created (`autoCreateTopics`).
//!
//! **Consume**: one consumer per consumer group (app id by default) covers
//! every subscribed topic, so a new subscription changes the group's topic
//! list instead of restarting the group; assignment is cooperative-sticky,
//! so a rebalance moves only the partitions that change owner.
//! Per partition the broker keeps:
//! - the offsets received and not yet finished (handed out or waiting);
//! - at most `window` (the component's `maxInFlight`) deliveries handed out;
//!   the rest wait here, up to 2048 messages or 8 MiB, beyond which the
//!   partition is paused (resumed at half of that, with a seek to the next
//!   offset: librdkafka's resume alone leaves the fetcher idle for up to a
//!   second), so memory stays bounded however large the backlog
//!   (librdkafka's own prefetch queue is capped at 16 MiB per consumer);
//! - the committed position: the lowest unfinished offset (or the next
//!   offset when all are finished). Completions arrive in any order, and no
//!   gap is ever committed. Stored offsets are committed in the background
//!   (`auto.commit.interval.ms` 1 s) and synchronously on revoke and close.
//!
//! A nack, or a delivery dropped unfinished, goes back to waiting and is
//! handed out again. When a partition is revoked its waiting messages are
//! forgotten and deliveries still out are marked not owned: the engine skips
//! them, their acks are ignored, and the new owner redelivers them from the
//! committed position (at least once, never lost).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::mpsc;

use super::{
    AckHandle, BoxFuture, Broker, BrokerError, Delivery, DeliveryStream, Lag, Message,
    SubscribeRequest,
};
use crate::config::kafka::{InitialOffset, KafkaConfig};

/// The Kafka broker of one component.
pub struct KafkaBroker {
    name: String,
    cfg: KafkaConfig,
    producer: FutureProducer,
    admin: AdminClient<DefaultClientContext>,
    exclude: Option<regex::Regex>,
    created: Mutex<HashSet<String>>,
    groups: Mutex<HashMap<String, Arc<Group>>>,
    healthy: Arc<AtomicBool>,
}

impl KafkaBroker {
    /// Creates the clients; nothing connects until first use, so a broker
    /// that is down at start-up is not fatal.
    pub fn new(name: &str, cfg: &KafkaConfig) -> Result<Self, BrokerError> {
        let mut producer_cfg = client_config(cfg);
        for (k, v) in &cfg.producer {
            producer_cfg.set(k, v);
        }
        producer_cfg.set(
            "message.timeout.ms",
            cfg.publish_timeout.as_millis().to_string(),
        );
        let producer: FutureProducer = producer_cfg.create().map_err(|e| {
            BrokerError::Rejected(format!("kafka pubsub {name}: producer settings: {e}"))
        })?;
        let admin = client_config(cfg).create().map_err(|e| {
            BrokerError::Rejected(format!("kafka pubsub {name}: admin client settings: {e}"))
        })?;
        let healthy = Arc::new(AtomicBool::new(true));
        spawn_health_probe(name, producer.clone(), Arc::downgrade(&healthy));
        Ok(Self {
            name: name.to_owned(),
            cfg: cfg.clone(),
            producer,
            admin,
            exclude: cfg
                .exclude_headers
                .as_deref()
                .and_then(|r| regex::Regex::new(r).ok()),
            created: Mutex::new(HashSet::new()),
            groups: Mutex::new(HashMap::new()),
            healthy,
        })
    }

    fn excluded(&self, key: &str) -> bool {
        self.exclude.as_ref().is_some_and(|r| r.is_match(key))
    }

    /// Creates `topic` once when auto-creation is on; an existing topic is
    /// fine, other failures are logged and left to the produce or fetch.
    async fn ensure_topic(&self, topic: &str) {
        if !self.cfg.auto_create_topics || self.created.lock().expect("lock").contains(topic) {
            return;
        }
        let new = NewTopic::new(
            topic,
            self.cfg.topic_partitions,
            TopicReplication::Fixed(self.cfg.topic_replication),
        );
        let opts =
            AdminOptions::new().request_timeout(Some(Timeout::After(Duration::from_secs(5))));
        match self.admin.create_topics([&new], &opts).await {
            Ok(results) => {
                let ok = results.iter().all(|r| match r {
                    Ok(_) => true,
                    Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => true,
                    Err((t, e)) => {
                        tracing::warn!(pubsub = %self.name, topic = %t, error = %e, "could not create topic");
                        false
                    }
                });
                if ok && self.wait_for_metadata(topic).await {
                    self.created.lock().expect("lock").insert(topic.to_owned());
                }
            }
            Err(e) => {
                tracing::warn!(pubsub = %self.name, %topic, error = %e, "could not create topic")
            }
        }
    }

    /// Waits (up to 5 s) until the cluster's metadata lists `topic` with
    /// partitions, so a consumer subscribing right after the creation sees
    /// it instead of waiting for its next metadata refresh.
    async fn wait_for_metadata(&self, topic: &str) -> bool {
        for _ in 0..20 {
            let p = self.producer.clone();
            let t = topic.to_owned();
            let visible = tokio::task::spawn_blocking(move || {
                p.client()
                    .fetch_metadata(Some(&t), Duration::from_secs(1))
                    .is_ok_and(|m| {
                        m.topics()
                            .iter()
                            .any(|mt| mt.error().is_none() && !mt.partitions().is_empty())
                    })
            })
            .await
            .unwrap_or(false);
            if visible {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        tracing::warn!(pubsub = %self.name, %topic, "created topic not visible in metadata after 5 s");
        false
    }

    /// Queues one record; the future resolves on its delivery report.
    async fn enqueue(
        &self,
        msg: &Message,
    ) -> Result<rdkafka::producer::DeliveryFuture, BrokerError> {
        let key = msg
            .metadata
            .get("partitionKey")
            .or_else(|| msg.metadata.get("__key"));
        let partition = match msg.metadata.get("partitionNumber") {
            None => None,
            Some(p) => Some(p.parse::<i32>().map_err(|_| {
                BrokerError::Rejected(format!("partitionNumber must be a whole number, got {p:?}"))
            })?),
        };
        let mut headers = OwnedHeaders::new();
        for (k, v) in super::carried_metadata(&msg.metadata) {
            if k == "__key" || k == "partitionNumber" || self.excluded(k) {
                continue;
            }
            headers = headers.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            });
        }
        if let Some(ct) = &msg.content_type {
            headers = headers.insert(Header {
                key: CONTENT_TYPE,
                value: Some(ct.as_bytes()),
            });
        }
        let deadline = tokio::time::Instant::now() + self.cfg.publish_timeout;
        let mut record = FutureRecord::to(&msg.topic)
            .payload(msg.data.as_ref())
            .headers(headers);
        if let Some(k) = key {
            record = record.key(k.as_bytes());
        }
        if let Some(p) = partition {
            record = record.partition(p);
        }
        loop {
            match self.producer.send_result(record) {
                Ok(f) => return Ok(f),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r))
                    if tokio::time::Instant::now() < deadline =>
                {
                    record = r;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => return Err(self.classify(e)),
            }
        }
    }

    /// Waits for the delivery report, never past the publish timeout (plus
    /// a second): librdkafka's own `message.timeout.ms` can run late while
    /// the idempotent producer recovers from a broker outage.
    async fn confirmed(&self, f: rdkafka::producer::DeliveryFuture) -> Result<(), BrokerError> {
        let limit = self.cfg.publish_timeout + Duration::from_secs(1);
        let Ok(report) = tokio::time::timeout(limit, f).await else {
            self.healthy.store(false, Ordering::Release);
            return Err(BrokerError::Unavailable(format!(
                "kafka pubsub {}: not confirmed within {limit:?}",
                self.name
            )));
        };
        match report {
            Ok(Ok(_)) => {
                self.healthy.store(true, Ordering::Release);
                Ok(())
            }
            Ok(Err((e, _))) => Err(self.classify(e)),
            Err(_) => Err(BrokerError::Unavailable(format!(
                "kafka pubsub {}: producer closed",
                self.name
            ))),
        }
    }

    fn classify(&self, e: KafkaError) -> BrokerError {
        let code = e.rdkafka_error_code();
        let text = format!("kafka pubsub {}: {e}", self.name);
        match code {
            Some(
                RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::InvalidTopic
                | RDKafkaErrorCode::UnknownPartition,
            ) => BrokerError::Rejected(text),
            _ => {
                self.healthy.store(false, Ordering::Release);
                BrokerError::Unavailable(text)
            }
        }
    }

    fn group(&self, name: &str) -> Result<Arc<Group>, BrokerError> {
        let mut groups = self.groups.lock().expect("lock");
        if let Some(g) = groups.get(name) {
            return Ok(g.clone());
        }
        let state = Arc::new(Mutex::new(GroupState::default()));
        let mut cc = client_config(&self.cfg);
        for (k, v) in &self.cfg.consumer {
            cc.set(k, v);
        }
        if !self
            .cfg
            .common
            .contains_key("topic.metadata.refresh.interval.ms")
        {
            // New topics and partitions are noticed within 10 s.
            cc.set("topic.metadata.refresh.interval.ms", "10000");
        }
        // Dapr's defaults (sessionTimeout 10 s, heartbeatInterval 3 s): a
        // crashed member's partitions move after 10 s, not librdkafka's 45.
        // fetch.wait.max.ms 100 (librdkafka: 500): a partition resumed
        // after a pause is fetched again only when the fetch outstanding at
        // the log end returns, so this bounds the gap a pause costs.
        for (k, v) in [
            ("session.timeout.ms", "10000"),
            ("heartbeat.interval.ms", "3000"),
            ("fetch.wait.max.ms", "100"),
        ] {
            if !self.cfg.consumer.contains_key(k) && !self.cfg.common.contains_key(k) {
                cc.set(k, v);
            }
        }
        cc.set("group.id", name)
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set(
                "partition.assignment.strategy",
                self.cfg.assignment_strategy,
            )
            .set("queued.max.messages.kbytes", "16384")
            .set(
                "auto.offset.reset",
                match self.cfg.initial_offset {
                    InitialOffset::Newest => "latest",
                    InitialOffset::Oldest => "earliest",
                },
            );
        let consumer: StreamConsumer<GroupContext> = cc
            .create_with_context(GroupContext {
                state: state.clone(),
            })
            .map_err(|e| {
                BrokerError::Rejected(format!(
                    "kafka pubsub {}: consumer settings: {e}",
                    self.name
                ))
            })?;
        let group = Arc::new(Group {
            name: name.to_owned(),
            consumer,
            state,
            escape_headers: self.cfg.escape_headers,
            exclude: self.exclude.clone(),
            topics_changed: tokio::sync::Notify::new(),
        });
        tokio::spawn(poll_loop(Arc::downgrade(&group)));
        tokio::spawn(apply_topics(Arc::downgrade(&group)));
        groups.insert(name.to_owned(), group.clone());
        Ok(group)
    }
}

const CONTENT_TYPE: &str = "content-type";

fn client_config(cfg: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    for (k, v) in &cfg.common {
        c.set(k, v);
    }
    c
}

/// Marks the broker healthy or not every 2 s by fetching cluster metadata.
fn spawn_health_probe(name: &str, producer: FutureProducer, healthy: Weak<AtomicBool>) {
    let name = name.to_owned();
    tokio::spawn(async move {
        loop {
            let Some(flag) = healthy.upgrade() else {
                return;
            };
            let p = producer.clone();
            let ok = tokio::task::spawn_blocking(move || {
                p.client()
                    .fetch_metadata(None, Duration::from_secs(2))
                    .is_ok()
            })
            .await
            .unwrap_or(false);
            if flag.swap(ok, Ordering::AcqRel) != ok {
                if ok {
                    tracing::info!(pubsub = %name, "kafka reachable again");
                } else {
                    tracing::warn!(pubsub = %name, "kafka unreachable");
                }
            }
            drop(flag);
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    });
}

impl Broker for KafkaBroker {
    fn publish(&self, msg: Message) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async move {
            self.ensure_topic(&msg.topic).await;
            let f = self.enqueue(&msg).await?;
            self.confirmed(f).await
        })
    }

    fn publish_batch(&self, msgs: Vec<Message>) -> BoxFuture<'_, Vec<Result<(), BrokerError>>> {
        Box::pin(async move {
            let topics: BTreeSet<&str> = msgs.iter().map(|m| m.topic.as_str()).collect();
            for t in topics {
                self.ensure_topic(t).await;
            }
            // All queued first, then awaited: one round of delivery reports.
            let mut queued = Vec::with_capacity(msgs.len());
            for m in &msgs {
                queued.push(self.enqueue(m).await);
            }
            let mut out = Vec::with_capacity(queued.len());
            for q in queued {
                out.push(match q {
                    Ok(f) => self.confirmed(f).await,
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
        Box::pin(async move {
            self.ensure_topic(&req.topic).await;
            let group = self.group(&req.group)?;
            let (tx, rx) = mpsc::unbounded_channel();
            // Messages that waited for a subscriber (a re-subscription) are
            // handed out at once; the topic list is applied by the group's
            // subscriber task, so subscriptions started together make one
            // group join rather than one each.
            let failed = {
                let mut s = group.state.lock().expect("lock");
                s.topics.insert(
                    req.topic.clone(),
                    TopicSub {
                        tx,
                        window: req.window.max(1),
                    },
                );
                s.pump_topic(&group, &req.topic)
            };
            drop(failed);
            group.topics_changed.notify_one();
            Ok(rx)
        })
    }

    fn health(&self) -> Result<(), BrokerError> {
        if self.healthy.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(BrokerError::Unavailable(format!(
                "kafka pubsub {}: brokers unreachable",
                self.name
            )))
        }
    }

    fn capabilities(&self) -> Vec<&'static str> {
        vec!["BULK_PUBSUB"]
    }

    fn lag(&self) -> BoxFuture<'_, Vec<Lag>> {
        let groups: Vec<Arc<Group>> = self
            .groups
            .lock()
            .expect("lock")
            .values()
            .cloned()
            .collect();
        Box::pin(async move {
            let mut out = vec![];
            for g in groups {
                let g2 = g.clone();
                let lags = tokio::task::spawn_blocking(move || group_lag(&g2))
                    .await
                    .unwrap_or_default();
                out.extend(lags);
            }
            out
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        let groups: Vec<Arc<Group>> = self
            .groups
            .lock()
            .expect("lock")
            .values()
            .cloned()
            .collect();
        let producer = self.producer.clone();
        Box::pin(async move {
            let _ = tokio::task::spawn_blocking(move || {
                for g in groups {
                    if let Err(e) = g.consumer.commit_consumer_state(CommitMode::Sync) {
                        tracing::debug!(group = %g.name, error = %e, "final commit");
                    }
                }
                let _ = producer.flush(Duration::from_secs(5));
            })
            .await;
        })
    }
}

/// High watermark minus committed offset for each assigned partition.
fn group_lag(g: &Group) -> Vec<Lag> {
    // Every partition of every subscribed topic, not only the ones this
    // member owns: the lag of the whole group (what an autoscaler needs).
    let timeout = Duration::from_secs(2);
    let topics: Vec<String> = g
        .state
        .lock()
        .expect("lock")
        .topics
        .keys()
        .cloned()
        .collect();
    let mut tpl = TopicPartitionList::new();
    for t in &topics {
        if let Ok(md) = g.consumer.fetch_metadata(Some(t), timeout) {
            for mt in md.topics() {
                for p in mt.partitions() {
                    tpl.add_partition(mt.name(), p.id());
                }
            }
        }
    }
    let Ok(committed) = g.consumer.committed_offsets(tpl, timeout) else {
        return vec![];
    };
    committed
        .elements()
        .iter()
        .filter_map(|e| {
            let (low, high) = g
                .consumer
                .fetch_watermarks(e.topic(), e.partition(), timeout)
                .ok()?;
            let from = match e.offset() {
                Offset::Offset(o) => o,
                _ => low,
            };
            Some(Lag {
                topic: e.topic().to_owned(),
                partition: e.partition(),
                messages: (high - from).max(0),
            })
        })
        .collect()
}

/// One consumer group's consumer and its per-partition bookkeeping.
struct Group {
    name: String,
    consumer: StreamConsumer<GroupContext>,
    state: Arc<Mutex<GroupState>>,
    escape_headers: bool,
    exclude: Option<regex::Regex>,
    /// The subscribed topic list changed.
    topics_changed: tokio::sync::Notify,
}

/// Applies the group's topic list to the consumer, 200 ms after the last
/// change, so that subscriptions started together join the group once.
async fn apply_topics(group: Weak<Group>) {
    let mut applied: Vec<String> = vec![];
    loop {
        {
            // Upgraded for a bounded wait only, so a dropped broker ends
            // the task.
            let Some(g) = group.upgrade() else { return };
            let changed = g.topics_changed.notified();
            if tokio::time::timeout(Duration::from_secs(5), changed)
                .await
                .is_err()
            {
                continue;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let Some(g) = group.upgrade() else { return };
        let topics: Vec<String> = g
            .state
            .lock()
            .expect("lock")
            .topics
            .keys()
            .cloned()
            .collect();
        if topics == applied {
            continue;
        }
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        match g.consumer.subscribe(&names) {
            Ok(()) => {
                tracing::info!(group = %g.name, topics = ?topics, "kafka consumer subscribed");
                applied = topics;
            }
            Err(e) => {
                tracing::error!(group = %g.name, error = %e, "kafka subscribe failed; retrying");
                g.topics_changed.notify_one();
            }
        }
    }
}

struct TopicSub {
    tx: mpsc::UnboundedSender<Delivery>,
    window: usize,
}

/// A received record, kept until it is finished.
#[derive(Clone)]
struct Record {
    topic: String,
    partition: i32,
    offset: i64,
    data: Bytes,
    content_type: Option<String>,
    metadata: BTreeMap<String, String>,
}

struct Part {
    /// Shared with the deliveries handed out; false once revoked.
    owned: Arc<AtomicBool>,
    /// Offsets received and not finished (waiting or handed out).
    unfinished: BTreeSet<i64>,
    /// Received, not handed out, by offset.
    waiting: BTreeMap<i64, Record>,
    /// Payload bytes in `waiting`.
    waiting_bytes: usize,
    /// Handed out and not finished.
    out: usize,
    /// The offset after the highest received.
    next: i64,
    /// What was last stored for commit.
    stored: i64,
    paused: bool,
}

impl Part {
    fn hold(&mut self, rec: Record) {
        self.waiting_bytes += rec.data.len();
        if let Some(old) = self.waiting.insert(rec.offset, rec) {
            self.waiting_bytes -= old.data.len();
        }
    }
}

/// Per partition, received messages beyond the in-flight window wait here,
/// up to this many (or `WAIT_BYTES`); then the partition is paused.
const WAIT_MESSAGES: usize = 2048;
/// Payload bytes that may wait per partition before it is paused.
const WAIT_BYTES: usize = 8 << 20;

#[derive(Default)]
struct GroupState {
    topics: BTreeMap<String, TopicSub>,
    parts: HashMap<(String, i32), Part>,
}

type Deliveries = Vec<Delivery>;

impl GroupState {
    /// Hands out waiting records of every partition of `topic`.
    fn pump_topic(&mut self, group: &Arc<Group>, topic: &str) -> Deliveries {
        let keys: Vec<(String, i32)> = self
            .parts
            .keys()
            .filter(|(t, _)| t == topic)
            .cloned()
            .collect();
        let mut failed = vec![];
        for k in keys {
            failed.extend(self.pump(group, &k));
        }
        failed
    }

    /// Hands out waiting records of one partition up to its window, in
    /// offset order, and pauses or resumes the partition. Sends happen under
    /// the lock (unbounded, never blocking) so the order on the channel is
    /// the offset order; deliveries whose channel is closed are returned, to
    /// be dropped after the lock is released.
    fn pump(&mut self, group: &Arc<Group>, key: &(String, i32)) -> Deliveries {
        let mut failed = vec![];
        let Some(sub) = self.topics.get(&key.0) else {
            return failed;
        };
        let Some(part) = self.parts.get_mut(key) else {
            return failed;
        };
        while part.out < sub.window && !sub.tx.is_closed() {
            let Some((_, rec)) = part.waiting.pop_first() else {
                break;
            };
            part.waiting_bytes -= rec.data.len();
            part.out += 1;
            let d = Delivery {
                topic: rec.topic.clone(),
                data: rec.data.clone(),
                content_type: rec.content_type.clone(),
                metadata: rec.metadata.clone(),
                lane: rec.partition,
                owned: Some(part.owned.clone()),
                ack: Box::new(KafkaAck {
                    group: Arc::downgrade(group),
                    owned: part.owned.clone(),
                    record: Some(rec),
                }),
            };
            if let Err(e) = sub.tx.send(d) {
                failed.push(e.0);
                break;
            }
        }
        // Paused when the waiting buffer is full, resumed when it is down to
        // half: a pause/resume costs a fetch round trip (up to
        // fetch.wait.max.ms when the fetch outstanding is at the log end),
        // so it must be rare, not one per window, and what still waits
        // covers the refetch.
        let full = part.waiting.len() >= WAIT_MESSAGES || part.waiting_bytes >= WAIT_BYTES;
        let low = part.waiting.len() <= WAIT_MESSAGES / 2 && part.waiting_bytes <= WAIT_BYTES / 2;
        let tpl = || {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&key.0, key.1);
            tpl
        };
        if full && !part.paused {
            if group.consumer.pause(&tpl()).is_ok() {
                tracing::debug!(topic = %key.0, partition = key.1, next = part.next, "partition paused");
                part.paused = true;
            }
        } else if low && part.paused && group.consumer.resume(&tpl()).is_ok() {
            tracing::debug!(topic = %key.0, partition = key.1, next = part.next, "partition resumed");
            part.paused = false;
            // librdkafka's resume does not wake the broker thread, which
            // then idles up to a second before fetching again; a seek to
            // the next offset (asynchronous, timeout 0) restarts the fetch
            // at once. What was fetched before the pause was purged, so
            // the position is the same.
            if let Err(e) =
                group
                    .consumer
                    .seek(&key.0, key.1, Offset::Offset(part.next), Duration::ZERO)
            {
                tracing::debug!(error = %e, "seek after resume");
            }
        }
        failed
    }

    /// Records a finished offset and stores the new commit position.
    fn finish(&mut self, group: &Group, key: &(String, i32), offset: i64) {
        let Some(part) = self.parts.get_mut(key) else {
            return;
        };
        part.unfinished.remove(&offset);
        let position = part.unfinished.first().copied().unwrap_or(part.next);
        if position > part.stored {
            let mut tpl = TopicPartitionList::new();
            if tpl
                .add_partition_offset(&key.0, key.1, Offset::Offset(position))
                .is_ok()
                && group.consumer.store_offsets(&tpl).is_ok()
            {
                part.stored = position;
            }
        }
    }
}

/// The consumer's context: revocations drop the partition's bookkeeping.
struct GroupContext {
    state: Arc<Mutex<GroupState>>,
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            return;
        };
        {
            let mut s = self.state.lock().expect("lock");
            for e in tpl.elements() {
                if let Some(part) = s.parts.remove(&(e.topic().to_owned(), e.partition())) {
                    part.owned.store(false, Ordering::Release);
                    tracing::info!(
                        topic = e.topic(),
                        partition = e.partition(),
                        unfinished = part.unfinished.len(),
                        "partition revoked; unfinished messages are left to the next owner"
                    );
                }
            }
        }
        // What finished is committed before the partitions move.
        if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
            tracing::debug!(error = %e, "commit on revoke");
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let assigned: Vec<String> = tpl
                .elements()
                .iter()
                .map(|e| format!("{}[{}]", e.topic(), e.partition()))
                .collect();
            tracing::info!(partitions = ?assigned, "partitions assigned");
        }
    }
}

/// Receives records and hands them to the subscriptions, until the group
/// is dropped.
async fn poll_loop(group: Weak<Group>) {
    loop {
        let Some(g) = group.upgrade() else { return };
        // The timeout lets the loop notice the group was dropped. A resumed
        // partition needs no wake-up here: the seek after the resume starts
        // its fetch, and the records wake the receive.
        let received = tokio::time::timeout(Duration::from_millis(500), g.consumer.recv()).await;
        let failed = match received {
            Err(_) => vec![],
            Ok(Err(e)) => {
                tracing::warn!(group = %g.name, error = %e, "kafka consumer error");
                tokio::time::sleep(Duration::from_millis(100)).await;
                vec![]
            }
            Ok(Ok(m)) => {
                let rec = record_of(&g, &m);
                let key = (rec.topic.clone(), rec.partition);
                let mut s = g.state.lock().expect("lock");
                let part = s.parts.entry(key.clone()).or_insert_with(|| Part {
                    owned: Arc::new(AtomicBool::new(true)),
                    unfinished: BTreeSet::new(),
                    waiting: BTreeMap::new(),
                    waiting_bytes: 0,
                    out: 0,
                    next: rec.offset,
                    stored: rec.offset,
                    paused: false,
                });
                // A record seen before (librdkafka refetching after a pause)
                // is already waiting, out, or finished.
                if rec.offset >= part.next {
                    part.unfinished.insert(rec.offset);
                    part.next = part.next.max(rec.offset + 1);
                    part.hold(rec);
                }
                s.pump(&g, &key)
            }
        };
        drop(failed);
    }
}

/// Copies a record out of librdkafka with Dapr's delivered metadata.
fn record_of(g: &Group, m: &rdkafka::message::BorrowedMessage<'_>) -> Record {
    let mut metadata = BTreeMap::new();
    let mut content_type = None;
    if let Some(h) = m.headers() {
        for hdr in h.iter() {
            let value = hdr
                .value
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default();
            if hdr.key == CONTENT_TYPE {
                content_type = Some(value);
                continue;
            }
            if g.exclude.as_ref().is_some_and(|r| r.is_match(hdr.key)) {
                continue;
            }
            let value = if g.escape_headers {
                escape(&value)
            } else {
                value
            };
            metadata.insert(hdr.key.to_owned(), value);
        }
    }
    if let Some(k) = m.key() {
        let k = String::from_utf8_lossy(k).into_owned();
        metadata.insert(
            "__key".into(),
            if g.escape_headers { escape(&k) } else { k },
        );
    }
    metadata.insert("__offset".into(), m.offset().to_string());
    metadata.insert("__partition".into(), m.partition().to_string());
    metadata.insert("__topic".into(), m.topic().to_owned());
    if let Some(ts) = m.timestamp().to_millis() {
        metadata.insert("__timestamp".into(), ts.to_string());
    }
    Record {
        topic: m.topic().to_owned(),
        partition: m.partition(),
        offset: m.offset(),
        data: Bytes::copy_from_slice(m.payload().unwrap_or_default()),
        content_type,
        metadata,
    }
}

/// URL query escaping, as Go's `url.QueryEscape` (Dapr's `escapeHeaders`).
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

struct KafkaAck {
    group: Weak<Group>,
    owned: Arc<AtomicBool>,
    record: Option<Record>,
}

impl KafkaAck {
    /// Finishes (`done`) or returns the record to waiting; ignored once the
    /// partition was revoked.
    fn settle(&mut self, done: bool) {
        let Some(rec) = self.record.take() else {
            return;
        };
        let Some(group) = self.group.upgrade() else {
            return;
        };
        if !self.owned.load(Ordering::Acquire) {
            return;
        }
        let key = (rec.topic.clone(), rec.partition);
        let failed = {
            let mut s = group.state.lock().expect("lock");
            let Some(part) = s.parts.get_mut(&key) else {
                return;
            };
            if !Arc::ptr_eq(&part.owned, &self.owned) {
                return;
            }
            part.out = part.out.saturating_sub(1);
            if done {
                s.finish(&group, &key, rec.offset);
            } else {
                part.hold(rec);
            }
            s.pump(&group, &key)
        };
        drop(failed);
    }
}

impl AckHandle for KafkaAck {
    fn ack(mut self: Box<Self>) -> BoxFuture<'static, Result<(), BrokerError>> {
        self.settle(true);
        Box::pin(async { Ok(()) })
    }
    fn nack(mut self: Box<Self>) -> BoxFuture<'static, Result<(), BrokerError>> {
        self.settle(false);
        Box::pin(async { Ok(()) })
    }
}

impl Drop for KafkaAck {
    fn drop(&mut self) {
        self.settle(false);
    }
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn escape_matches_go_query_escape() {
        assert_eq!(escape("a b/c?d=é"), "a+b%2Fc%3Fd%3D%C3%A9");
        assert_eq!(escape("plain-_.~"), "plain-_.~");
    }
}
