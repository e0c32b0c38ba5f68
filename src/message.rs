//! The message types every layer shares: what is published, and the boxed
//! future the object-safe traits return. A leaf, so that stores and the
//! publish path need not import the broker module for them.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;

/// A boxed, sendable future (the trait must be object-safe).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Metadata (and header to the app) naming the topic a dead letter came
/// from. Set only by the delivery engine on the copy it dead-letters; a
/// broker publishes such a copy as a dead letter (RabbitMQ: `mandatory`,
/// never expiring).
pub const DEAD_LETTER_FROM: &str = "perch-dead-letter-from";

/// Metadata of a dead letter: why it was dead-lettered (the app's DROP,
/// the last failure when the retries ran out, not a CloudEvent, expired,
/// no route), as `perch dlq list` shows it.
pub const DEAD_LETTER_REASON: &str = "perch-dead-letter-reason";

/// Metadata of a dead letter: how many times the app was called with it.
pub const DEAD_LETTER_ATTEMPTS: &str = "perch-dead-letter-attempts";

/// Header carrying the idempotency key to the app; set only by Perch
/// (message metadata of that name is never forwarded).
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Broker metadata that addresses or limits the original message and must
/// not follow it into the dead-letter topic: a routing key the dead-letter
/// queue is not bound with, a TTL that would expire the dead letter, a
/// priority, a partition of the original topic.
pub const NOT_DEAD_LETTERED: &[&str] = &[
    "routingKey",
    "ttlInSeconds",
    "ttl",
    "priority",
    "partitionNumber",
];

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
