//! The message types every layer shares: what is published, and the boxed
//! future the object-safe traits return. A leaf, so that stores and the
//! publish path need not import the broker module for them.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;

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
