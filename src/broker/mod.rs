//! The broker trait the engine drives, and its backends. The trait is kept to
//! what the engine needs: publish (resolving after the broker accepted the
//! message), subscribe (a stream of deliveries, each with its own ack
//! handle), health and capabilities.

pub mod memory;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

/// A boxed, sendable future (the trait must be object-safe).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One message to publish.
#[derive(Debug, Clone)]
pub struct Message {
    /// Destination topic.
    pub topic: String,
    /// The bytes on the wire (a CloudEvent JSON, or a raw payload).
    pub data: Bytes,
    /// Content type of `data`.
    pub content_type: Option<String>,
    /// Publish metadata, passed to the broker whole (as Dapr does).
    pub metadata: BTreeMap<String, String>,
}

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
    /// Subscription metadata.
    pub metadata: BTreeMap<String, String>,
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
    /// How to finish it.
    pub ack: Box<dyn AckHandle>,
}

/// A running subscription: deliveries arrive on the receiver; dropping it
/// stops consumption and returns unfinished messages to the broker.
pub type DeliveryStream = mpsc::Receiver<Delivery>;

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
    /// Starts consuming.
    fn subscribe(
        &self,
        req: SubscribeRequest,
    ) -> BoxFuture<'_, Result<DeliveryStream, BrokerError>>;
    /// `Ok` while the broker is reachable.
    fn health(&self) -> Result<(), BrokerError>;
    /// Dapr capability names for the metadata API (`BULK_PUBSUB`, `MESSAGE_TTL`, ...).
    fn capabilities(&self) -> Vec<&'static str>;
}

/// Builds the broker for a pub/sub component. Connecting happens in the
/// background: a broker that is down at start-up is retried, not fatal.
pub fn build(component: &crate::config::PubsubComponent) -> Arc<dyn Broker> {
    match &component.kind {
        crate::config::PubsubKind::InMemory { max_messages } => {
            Arc::new(memory::MemoryBroker::new(&component.name, *max_messages))
        }
    }
}
