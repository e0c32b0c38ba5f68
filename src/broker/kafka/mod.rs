//! `pubsub.kafka` on librdkafka (rdkafka).
//!
//! **Publish**: one idempotent producer (`acks=all`) per component; a
//! publish resolves on the delivery report, or fails after
//! `publishTimeout`. `partitionKey` / `__key` is the record key,
//! `partitionNumber` pins the partition, the other metadata become record
//! headers (minus `excludeHeaderMetaRegex`), the content type travels in a
//! `content-type` header. Missing topics are created (`autoCreateTopics`)
//! by an admin client that lives only while a creation runs: idle, the
//! sidecar holds the producer and one consumer per group, nothing else.
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

//!
//! Files: `producer` (topic creation, produce, confirm, error classes),
//! `consumer` (the group's poll loop, hand-out and ack handles), `ledger`
//! (the pure per-partition offset ledger and pause policy), `rebalance`
//! (revoke and assign), `record` (delivered metadata).

pub mod config;
mod consumer;
mod dead_letters;
mod ledger;
mod producer;
mod rebalance;
mod record;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, Producer};
use tokio::sync::mpsc;

use super::{BoxFuture, Broker, BrokerError, DeliveryStream, Lag, Message, SubscribeRequest};
use config::{InitialOffset, KafkaConfig};
use consumer::{apply_topics, group_lag, poll_loop, Group, GroupState, TopicSub};
use rebalance::GroupContext;

/// The Kafka broker of one component.
pub struct KafkaBroker {
    name: String,
    cfg: KafkaConfig,
    producer: FutureProducer,
    /// The admin client while a topic creation runs (see [`AdminLease`]).
    admin: Mutex<Weak<AdminClient<DefaultClientContext>>>,
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
        let healthy = Arc::new(AtomicBool::new(true));
        spawn_health_probe(name, producer.clone(), Arc::downgrade(&healthy));
        Ok(Self {
            name: name.to_owned(),
            cfg: cfg.clone(),
            producer,
            admin: Mutex::new(Weak::new()),
            exclude: cfg
                .exclude_headers
                .as_deref()
                .and_then(|r| regex::Regex::new(r).ok()),
            created: Mutex::new(HashSet::new()),
            groups: Mutex::new(HashMap::new()),
            healthy,
        })
    }

    /// The admin client for a topic creation: the one a concurrent
    /// creation holds, or a new one. It is dropped when the last creation
    /// using it ends, so its librdkafka threads and buffers do not sit idle
    /// for the life of the process (topics are created once each, at
    /// subscribe or first publish; issue 23, idle RSS per broker). Its
    /// settings are the common ones the producer was already built with.
    fn admin(&self) -> Result<AdminLease, BrokerError> {
        let mut slot = self
            .admin
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(a) = slot.upgrade() {
            return Ok(AdminLease(Some(a)));
        }
        let a: Arc<AdminClient<DefaultClientContext>> =
            Arc::new(client_config(&self.cfg).create().map_err(|e| {
                BrokerError::Rejected(format!(
                    "kafka pubsub {}: admin client settings: {e}",
                    self.name
                ))
            })?);
        *slot = Arc::downgrade(&a);
        Ok(AdminLease(Some(a)))
    }

    fn excluded(&self, key: &str) -> bool {
        self.exclude.as_ref().is_some_and(|r| r.is_match(key))
    }

    /// Every consumer group of this broker, out of the lock.
    fn all_groups(&self) -> Vec<Arc<Group>> {
        self.groups
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    /// The consumer of group `name`, created (and its tasks started) on
    /// first use.
    fn group(&self, name: &str) -> Result<Arc<Group>, BrokerError> {
        let mut groups = self
            .groups
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
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
        crate::util::spawn_watched("kafka poll loop", poll_loop(Arc::downgrade(&group)));
        crate::util::spawn_watched("kafka topic list", apply_topics(Arc::downgrade(&group)));
        groups.insert(name.to_owned(), group.clone());
        Ok(group)
    }
}

/// A share of the admin client; the last one dropped destroys the client
/// off the runtime (librdkafka joins its threads).
struct AdminLease(Option<Arc<AdminClient<DefaultClientContext>>>);

impl std::ops::Deref for AdminLease {
    type Target = AdminClient<DefaultClientContext>;
    fn deref(&self) -> &Self::Target {
        self.0.as_ref().expect("held until dropped")
    }
}

impl Drop for AdminLease {
    fn drop(&mut self) {
        let Some(client) = self.0.take().and_then(Arc::into_inner) else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(move || drop(client))),
            Err(_) => drop(client),
        }
    }
}

/// The header that carries the content type.
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

/// Kafka's rule for topic names: 1 to 249 characters of ASCII letters,
/// digits, `.`, `_` and `-`, and not `.` or `..`.
pub fn topic_name(topic: &str) -> Result<(), String> {
    if topic.is_empty() || topic.len() > 249 {
        return Err(format!(
            "topic is {} characters; a Kafka topic name has 1 to 249",
            topic.len()
        ));
    }
    if topic == "." || topic == ".." {
        return Err(format!("topic {topic:?} is not a legal Kafka topic name"));
    }
    if let Some(c) = topic
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "topic {topic:?}: {c:?} is not allowed; a Kafka topic name has only ASCII letters, digits, '.', '_' and '-'"
        ));
    }
    Ok(())
}

impl Broker for KafkaBroker {
    fn dead_letters<'a>(
        &'a self,
        topic: &'a str,
        group: &'a str,
    ) -> BoxFuture<'a, Result<Box<dyn crate::broker::DeadLetters>, BrokerError>> {
        Box::pin(dead_letters::open(client_config(&self.cfg), topic, group))
    }

    fn validate(&self, msg: &Message) -> Result<(), String> {
        topic_name(&msg.topic)?;
        crate::broker::validate_metadata(msg)
    }

    fn publish(&self, msg: Message) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async move {
            self.ensure_topic(&msg.topic).await?;
            let f = self.enqueue(&msg).await?;
            self.confirmed(f).await
        })
    }

    fn publish_batch(&self, msgs: Vec<Message>) -> BoxFuture<'_, Vec<Result<(), BrokerError>>> {
        Box::pin(async move {
            let topics: BTreeSet<&str> = msgs.iter().map(|m| m.topic.as_str()).collect();
            let mut refused = BTreeMap::new();
            for t in topics {
                if let Err(e) = self.ensure_topic(t).await {
                    refused.insert(t, e);
                }
            }
            // All queued first, then awaited: one round of delivery reports.
            // A record that cannot be queued stops its topic's records
            // after it (answered unavailable), so a retry keeps their order.
            let mut queued = Vec::with_capacity(msgs.len());
            for m in &msgs {
                let q = match refused.get(m.topic.as_str()) {
                    Some(e) => Err(e.clone()),
                    None => self.enqueue(m).await,
                };
                if let Err(BrokerError::Unavailable(_)) = &q {
                    refused.insert(
                        m.topic.as_str(),
                        BrokerError::Unavailable(format!(
                            "kafka pubsub {}: not sent: an earlier message of the batch failed",
                            self.name
                        )),
                    );
                }
                queued.push(q);
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
            // A topic missing with auto-creation off is waited for, as
            // Dapr does: the group's metadata refresh picks it up.
            let _ = self.ensure_topic(&req.topic).await;
            let group = self.group(&req.group)?;
            let (tx, rx) = mpsc::unbounded_channel();
            // Messages that waited for a subscriber (a re-subscription) are
            // handed out at once; the topic list is applied by the group's
            // subscriber task, so subscriptions started together make one
            // group join rather than one each.
            let failed = {
                let mut s = group
                    .state
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
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
        let groups = self.all_groups();
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
        let groups = self.all_groups();
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
