//! The broker trait the engine drives, and its backends. The trait is kept to
//! what the engine needs: publish (resolving after the broker accepted the
//! message), subscribe (a stream of deliveries, each with its own ack
//! handle), health and capabilities.

pub mod kafka;
pub mod memory;
pub mod rabbitmq;
pub mod redis;

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

pub use crate::message::{BoxFuture, Message};

/// A broker failure, classified once: retryable or final.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BrokerError {
    /// The broker cannot take the message now; trying again later may work.
    #[error("{0}")]
    Unavailable(String),
    /// The message will never be accepted as it is.
    #[error("{0}")]
    Rejected(String),
}

/// What a subscription asks of the broker.
#[derive(Debug, Clone)]
pub struct SubscribeRequest {
    /// Topic to consume.
    pub topic: String,
    /// Competing-consumer group (app id by default).
    pub group: String,
    /// This sidecar's name among the group's consumers, the same across
    /// its restarts (`{POD_NAME or HOSTNAME}-{app port}`): Redis names its
    /// stream consumer so, and a restarted sidecar resumes what it held
    /// first, in order.
    pub consumer: String,
    /// Subscription metadata.
    pub metadata: BTreeMap<String, String>,
    /// Most deliveries of one lane (partition or queue) handed out and not
    /// yet finished; the broker holds back the rest (flow control).
    pub window: usize,
    /// Where this subscription's dead letters go, so a broker can keep them
    /// before anyone subscribes (RabbitMQ declares a durable queue).
    pub dead_letter_topic: Option<String>,
}

/// Finishes one delivery: `ack` when it is done with, `nack` to have it
/// redelivered. Dropping the handle without either also redelivers.
pub trait AckHandle: Send {
    /// The message is finished (delivered, dropped or dead-lettered).
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<(), BrokerError>>;
    /// The message is not finished; the broker redelivers it.
    fn nack(self: Box<Self>) -> BoxFuture<'static, Result<(), BrokerError>>;
}

/// One consumed message.
pub struct Delivery {
    /// Topic it came from.
    pub topic: String,
    /// Payload bytes.
    pub data: Bytes,
    /// Content type recorded with the message.
    pub content_type: Option<String>,
    /// Broker metadata (forwarded to the app as headers).
    pub metadata: BTreeMap<String, String>,
    /// The ordering lane: the partition (Kafka), or 0 for a single queue
    /// or stream.
    /// Order is kept per lane, and a slow lane never holds up another.
    pub lane: i32,
    /// Turns false when the broker took the message back (its partition was
    /// revoked): it is then not delivered; its next owner delivers it.
    pub owned: Option<Arc<AtomicBool>>,
    /// How to finish it.
    pub ack: Box<dyn AckHandle>,
}

impl Delivery {
    /// Still ours to deliver (not revoked).
    pub fn is_owned(&self) -> bool {
        self.owned
            .as_ref()
            .is_none_or(|o| o.load(std::sync::atomic::Ordering::Acquire))
    }
}

/// A running subscription: deliveries arrive on the receiver in lane order;
/// dropping it stops consumption and returns unfinished messages to the
/// broker. The broker bounds it: at most `window` unfinished deliveries per
/// lane are handed out.
pub type DeliveryStream = mpsc::UnboundedReceiver<Delivery>;

/// Consumer lag of one partition or queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lag {
    /// Topic on the broker.
    pub topic: String,
    /// Partition (0 for a queue).
    pub partition: i32,
    /// Messages not yet finished by the group: high watermark minus the
    /// committed offset (Kafka), queue depth (RabbitMQ), or the group's
    /// pending plus unread entries (Redis).
    pub messages: i64,
}

/// A pub/sub backend.
pub trait Broker: Send + Sync {
    /// Publishes one message; resolves once the broker accepted it.
    fn publish(&self, msg: Message) -> BoxFuture<'_, Result<(), BrokerError>>;
    /// Publishes many; one result per message, in order.
    fn publish_batch(&self, msgs: Vec<Message>) -> BoxFuture<'_, Vec<Result<(), BrokerError>>> {
        Box::pin(async move {
            let mut out = Vec::with_capacity(msgs.len());
            for m in msgs {
                out.push(self.publish(m).await);
            }
            out
        })
    }
    /// Checks a message before it is published: what this broker cannot
    /// carry (a name or property over its limits, a topic its rules
    /// reject) is refused with the rule it breaks, so the publisher gets a
    /// 400 instead of an error (or a panic) deep in the client library.
    fn validate(&self, msg: &Message) -> Result<(), String> {
        validate_metadata(msg)
    }
    /// Starts consuming.
    fn subscribe(
        &self,
        req: SubscribeRequest,
    ) -> BoxFuture<'_, Result<DeliveryStream, BrokerError>>;
    /// `Ok` while the broker is reachable.
    fn health(&self) -> Result<(), BrokerError>;
    /// Dapr capability names for the metadata API (`BULK_PUBSUB`, `MESSAGE_TTL`, ...).
    fn capabilities(&self) -> Vec<&'static str>;
    /// Consumer lag of the subscriptions' groups.
    fn lag(&self) -> BoxFuture<'_, Vec<Lag>> {
        Box::pin(async { vec![] })
    }
    /// Commits what finished and releases connections; called once after
    /// the engine drained.
    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
    /// Opens what waits in the dead-letter `topic` (`perch dlq`) without
    /// consuming it: Kafka from the `group`'s committed offsets, RabbitMQ
    /// the queue `{group}-{topic}` Perch declares for it, Redis the
    /// entries the `group` has not finished.
    fn dead_letters<'a>(
        &'a self,
        topic: &'a str,
        group: &'a str,
    ) -> BoxFuture<'a, Result<Box<dyn DeadLetters>, BrokerError>> {
        let _ = (topic, group);
        Box::pin(async {
            Err(BrokerError::Rejected(
                "this broker keeps no dead letters to read (in-memory)".into(),
            ))
        })
    }
}

/// A message of a dead-letter topic, read and not consumed.
#[derive(Debug, Clone)]
pub struct Peeked {
    /// Payload bytes.
    pub data: Bytes,
    /// Content type recorded with the message.
    pub content_type: Option<String>,
    /// Broker metadata, as a delivery's.
    pub metadata: BTreeMap<String, String>,
    /// When the broker took it (ms since the epoch), if it says.
    pub timestamp_ms: Option<i64>,
}

/// What waits in a dead-letter topic when the session opened, in order:
/// each message read is left where it is unless removed.
pub trait DeadLetters: Send {
    /// The next message; `None` at the end of what was there at the start.
    fn next(&mut self) -> BoxFuture<'_, Result<Option<Peeked>, BrokerError>>;
    /// Removes the message `next` returned last (it was replayed): RabbitMQ
    /// and Redis ack it; Kafka moves the group's committed offset past it once every
    /// message before it in its partition was removed.
    fn remove(&mut self) -> BoxFuture<'_, Result<(), BrokerError>>;
    /// Ends the session: what was not removed stays.
    fn close(self: Box<Self>) -> BoxFuture<'static, ()>;
}

/// Publish metadata that travels with a message: everything but Perch's
/// publish-time controls (`cloudevent.*` overrides and `rawPayload`).
pub fn carried_metadata(md: &BTreeMap<String, String>) -> impl Iterator<Item = (&String, &String)> {
    md.iter()
        .filter(|(k, _)| !k.starts_with("cloudevent.") && k.as_str() != "rawPayload")
}

/// The largest metadata value a message carries as a broker header (and
/// that reaches the app as an HTTP header): 64 KiB.
pub const MAX_METADATA_VALUE: usize = 64 * 1024;

/// Every broker's rule for metadata: values are bounded.
pub fn validate_metadata(msg: &Message) -> Result<(), String> {
    for (k, v) in carried_metadata(&msg.metadata) {
        if v.len() > MAX_METADATA_VALUE {
            return Err(format!(
                "metadata {k:?} is {} bytes; a metadata value is at most {MAX_METADATA_VALUE} bytes",
                v.len()
            ));
        }
    }
    Ok(())
}

/// Which broker backs a pub/sub component (`spec.type`), with the
/// backend's own settings, read by the backend's `config` module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Spec {
    /// `pubsub.in-memory`: one process, for the demo and fast tests.
    InMemory {
        /// `maxMessages`: unacknowledged messages kept per subscriber queue.
        max_messages: usize,
    },
    /// `pubsub.kafka`.
    Kafka(Box<kafka::config::KafkaConfig>),
    /// `pubsub.rabbitmq`.
    Rabbit(Box<rabbitmq::config::RabbitConfig>),
    /// `pubsub.redis` (Redis Streams).
    Redis(Box<self::redis::config::RedisConfig>),
}

/// Builds the broker of component `name`. Connecting happens in the
/// background: a broker that is down at start-up is retried, not fatal.
/// Fails only on settings the client library refuses (a bad `rdkafka.*`
/// property, say).
pub fn build(name: &str, spec: &Spec) -> Result<Arc<dyn Broker>, BrokerError> {
    Ok(match spec {
        Spec::InMemory { max_messages } => Arc::new(memory::MemoryBroker::new(name, *max_messages)),
        Spec::Kafka(cfg) => Arc::new(kafka::KafkaBroker::new(name, cfg)?),
        Spec::Rabbit(cfg) => Arc::new(rabbitmq::RabbitBroker::new(name, cfg)),
        Spec::Redis(cfg) => Arc::new(self::redis::RedisBroker::new(name, cfg)?),
    })
}
