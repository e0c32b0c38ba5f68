//! Idempotency stores: each event reaches the app once per subscriber,
//! across retries, restarts and replicas (DESIGN.md section 5).
//!
//! The protocol, per delivery:
//! 1. **claim** the key: a fresh key, or one whose lease expired, becomes
//!    ours (`Owned`, with the number of claims so far); a `done` key is a
//!    duplicate (ack without delivery); a live lease of another sidecar is
//!    `Busy` (wait and claim again; neither deliver nor ack).
//! 2. deliver to the app (the lease is renewed while this runs);
//! 3. on SUCCESS or DROP mark it **done** (fenced by the lease owner), then
//!    ack the broker; after dead-lettering mark it **dead**; on shutdown
//!    **release** it so another sidecar may take it at once.
//!
//! Key: subscriber `{app-id}/{pubsub}/{topic}` and the CloudEvent's
//! `source` and `id`; a raw payload has no stable id and uses the broker's
//! identity (Kafka partition and offset), or is not deduplicated.
//!
//! The window left open: the app succeeded and the sidecar died before
//! `done` was written; the event is delivered again after the lease. The
//! key reaches the app as the `idempotency-key` header so an app with side
//! effects can record it in its own transaction.

pub mod config;
pub mod memory;
pub mod postgres;

use std::sync::Arc;

use crate::message::{BoxFuture, Message};
use config::{StoreComponent, StoreKind};

/// One event for one subscriber.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    /// `{app-id}/{pubsub}/{topic}`.
    pub subscriber: String,
    /// `{source} {id}` of the CloudEvent, or the broker identity.
    pub msg_key: String,
}

impl Key {
    /// The value of the `idempotency-key` header.
    pub fn header(&self) -> String {
        format!("{}/{}", self.subscriber, self.msg_key)
    }
}

/// The answer to a claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Ours; `attempts` is the number of this delivery: deliveries of the
    /// key that reached the app before (and never finished), plus one.
    Owned {
        /// Deliveries started so far, plus this one.
        attempts: u32,
    },
    /// Already done (delivered or dropped by the app): a duplicate. A dead
    /// key (dead-lettered, never delivered) is claimed anew, so a replay
    /// from the dead-letter topic reaches the app.
    Done,
    /// Another sidecar holds a live lease.
    Busy,
}

/// How a claimed key ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// Delivered (SUCCESS) or dropped by the app.
    Done,
    /// Dead-lettered.
    Dead,
}

/// The store is unreachable or failed; deliveries pause.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(pub String);

/// An idempotency store. Every call takes many keys: one round trip for a
/// batch.
pub trait Store: Send + Sync {
    /// Claims each key; one answer per key, in order.
    fn claim(&self, keys: Vec<Key>) -> BoxFuture<'_, Result<Vec<Claim>, StoreError>>;
    /// Marks claimed keys done or dead; `false` where the lease was lost
    /// (taken over by another sidecar: a possible duplicate).
    fn finish(&self, keys: Vec<Key>, how: Finish) -> BoxFuture<'_, Result<Vec<bool>, StoreError>>;
    /// The deliveries of these claimed keys reach the app now: one more
    /// attempt each (fenced by owner). The write is queued when this is
    /// called; the future only waits for it, and the engine drops it
    /// unawaited (the app call does not wait), so a crash within
    /// milliseconds of the call may leave it uncounted. Claims alone never count, so claims that ran
    /// ahead and were cut off (a crash, a shutdown) do not push a message
    /// toward the over-claim dead letter.
    fn started(&self, keys: Vec<Key>) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Gives claimed keys back (their lease ends now).
    fn release(&self, keys: Vec<Key>) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Gives back every key this sidecar still holds, at shutdown: what
    /// was claimed and not finished (claimed ahead, or cut off at the end
    /// of the grace period) is free for another sidecar at once instead of
    /// after its lease. A store whose claims die with the process does
    /// nothing.
    fn release_held(&self) -> BoxFuture<'_, Result<usize, StoreError>> {
        Box::pin(async { Ok(0) })
    }
    /// Deletes done and dead keys older than the retention, in small
    /// batches; returns how many went.
    fn purge(&self) -> BoxFuture<'_, Result<u64, StoreError>>;
    /// `Ok` while the store is reachable.
    fn health(&self) -> Result<(), StoreError>;
    /// Keeps messages the broker of `pubsub` could not take, in order. The
    /// write is durable before this returns (the publisher is answered 204
    /// on it), whatever the store's commit settings for the inbox.
    fn outbox_put(&self, pubsub: &str, msgs: Vec<Message>)
        -> BoxFuture<'_, Result<(), StoreError>>;
    /// One relay pass over the outbox of `pubsub`: unless another sidecar
    /// is relaying it now (then [`Pass::Busy`]), hands the oldest `limit`
    /// waiting messages to `send`, in order, and then deletes the sent ones
    /// and parks the refused ones, while still holding the relay's lock, so
    /// each message is relayed by one sidecar at a time, in order.
    fn outbox_relay<'a>(
        &'a self,
        pubsub: &'a str,
        limit: usize,
        send: RelaySend<'a>,
    ) -> BoxFuture<'a, Result<Pass, StoreError>>;
    /// What the outbox of `pubsub` holds: waiting messages per topic, and
    /// how many are parked.
    fn outbox_depth(&self, pubsub: &str) -> BoxFuture<'_, Result<OutboxDepth, StoreError>>;
}

/// What the relay did with one kept message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Relayed {
    /// The broker confirmed it: delete it.
    Sent,
    /// The broker cannot take it now: keep it, try again later.
    Retry,
    /// The broker refused it for good (the reason): set it aside, so it
    /// never holds up what comes after it.
    Park(String),
}

/// Publishes a batch of kept messages; one answer per message, in order.
pub type RelaySend<'a> = Box<dyn FnOnce(Vec<Message>) -> BoxFuture<'a, Vec<Relayed>> + Send + 'a>;

/// The outcome of one relay pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pass {
    /// Another sidecar holds the relay lock of this pub/sub.
    Busy,
    /// What this pass took and did, per topic.
    Relayed(Vec<TopicPass>),
}

/// One topic's part of a relay pass.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TopicPass {
    /// The topic.
    pub topic: String,
    /// Messages handed to the broker.
    pub taken: usize,
    /// Confirmed and deleted.
    pub sent: usize,
    /// Refused for good and parked.
    pub parked: usize,
}

impl Pass {
    /// Messages taken in this pass.
    pub fn taken(&self) -> usize {
        match self {
            Pass::Busy => 0,
            Pass::Relayed(t) => t.iter().map(|t| t.taken).sum(),
        }
    }
}

/// What an outbox holds for one pub/sub.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OutboxDepth {
    /// Messages waiting, per topic.
    pub waiting: std::collections::BTreeMap<String, u64>,
    /// Messages parked (refused for good by the broker; kept for an
    /// operator to inspect).
    pub parked: u64,
}

/// Groups `answers` (one per message of `msgs`, in order) per topic.
pub fn tally(msgs: &[(i64, Message)], answers: &[Relayed]) -> Vec<TopicPass> {
    let mut out: Vec<TopicPass> = vec![];
    for ((_, m), a) in msgs.iter().zip(answers) {
        let i = match out.iter().position(|t| t.topic == m.topic) {
            Some(i) => i,
            None => {
                out.push(TopicPass {
                    topic: m.topic.clone(),
                    ..Default::default()
                });
                out.len() - 1
            }
        };
        let t = &mut out[i];
        t.taken += 1;
        match a {
            Relayed::Sent => t.sent += 1,
            Relayed::Park(_) => t.parked += 1,
            Relayed::Retry => {}
        }
    }
    out
}

/// Builds a store; a Postgres store connects lazily (a database that is
/// down at start-up pauses deliveries; it is not fatal).
pub fn build(c: &StoreComponent) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match &c.kind {
        StoreKind::Memory { max_entries } => {
            Arc::new(memory::MemoryStore::new(*max_entries, c.lease, c.retention))
        }
        StoreKind::Postgres { .. } => Arc::new(postgres::PostgresStore::new(c)?),
    })
}
