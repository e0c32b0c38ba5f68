//! The outbox relay: publishes what the outbox kept, in order per topic,
//! when the broker is back, deleting each batch after the broker confirmed
//! it.
//!
//! - **Batched, no idle sleep while behind**: a pass takes up to
//!   [`BATCH`] messages and publishes each topic's share with one
//!   pipelined `publish_batch`; a full pass is followed at once by the
//!   next, so the relay drains faster than publishes can be kept.
//! - **One relay per pub/sub across replicas**: a pass runs under the
//!   store's relay lock (a PostgreSQL advisory lock held from the read to
//!   the delete); the other replicas see `Busy` and only count.
//! - **Poison never blocks**: a message the broker refuses for good is
//!   parked (kept in the store with the reason, skipped from then on) and
//!   logged at ERROR; the messages after it go on.
//! - **No lost wake-up**: the publish path marks topics before it writes;
//!   the relay clears a topic only from a count that no keep raced (see
//!   [`crate::state::backlog`]).
//!
//! The relay may publish a message twice (it crashed between the confirm
//! and the delete); the CloudEvent keeps its id, so the idempotency inbox
//! drops the copy.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::broker::{Broker, BrokerError, Message};
use crate::state::Pubsub;
use crate::store::{Pass, RelaySend, Relayed};

/// Messages taken per relay pass.
pub const BATCH: usize = 500;

/// How often the store is counted while nothing is known to wait (to pick
/// up what a replica that died left behind).
const RECOUNT: Duration = Duration::from_secs(5);

/// Relays the outbox of `entry` to its broker until `stop`.
pub async fn relay(entry: Arc<Pubsub>, mut stop: watch::Receiver<bool>) {
    let Some(outbox) = entry.outbox.clone() else {
        return;
    };
    let name = entry.component.name.as_str();
    let mut backoff = Duration::from_millis(100);
    let mut count = true;
    loop {
        if *stop.borrow() {
            return;
        }
        if count {
            let snap = entry.backlog.snapshot();
            match outbox.outbox_depth(name).await {
                Ok(d) => entry.backlog.counted(&snap, d.waiting, d.parked),
                Err(e) => tracing::debug!(pubsub = %name, error = %e, "outbox count failed"),
            }
        }
        if !entry.backlog.any_waiting() {
            tokio::select! {
                _ = entry.backlog.kept() => {}
                _ = tokio::time::sleep(RECOUNT) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            count = true;
            continue;
        }
        if entry.broker.health().is_err() {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            count = false;
            continue;
        }
        // Not cut off by `stop`: a pass ends within the publish timeout,
        // and what it published is deleted in the same pass.
        let broker = entry.broker.clone();
        let send: RelaySend<'_> = Box::new(move |msgs| Box::pin(send(broker, msgs)));
        let pause = match outbox.outbox_relay(name, BATCH, send).await {
            Err(e) => {
                tracing::warn!(pubsub = %name, error = %e, "outbox relay: store unavailable");
                count = false;
                Some(backoff)
            }
            Ok(Pass::Busy) => {
                // Another replica relays; count to learn when it is done.
                count = true;
                Some(Duration::from_millis(200))
            }
            Ok(Pass::Relayed(topics)) => {
                let taken: usize = topics.iter().map(|t| t.taken).sum();
                let mut retry = 0;
                for t in &topics {
                    entry.backlog.relayed(&t.topic, (t.sent + t.parked) as u64);
                    let left = t.taken - t.sent - t.parked;
                    retry += left;
                    if left > 0 {
                        entry.backlog.undrain(&t.topic);
                    } else if taken < BATCH {
                        entry.backlog.drain(&t.topic);
                    }
                    if t.parked > 0 {
                        tracing::error!(pubsub = %name, topic = %t.topic, parked = t.parked,
                            "outbox messages refused for good by the broker; parked in the outbox table (column `parked` holds the reason)");
                    }
                    if t.sent > 0 {
                        tracing::debug!(pubsub = %name, topic = %t.topic, relayed = t.sent, "outbox messages published");
                    }
                }
                count = taken < BATCH;
                if retry > 0 {
                    tracing::warn!(pubsub = %name, waiting = retry, "outbox relay: broker cannot take messages yet");
                    Some(backoff)
                } else if taken == 0 {
                    // Caught up, and a topic drains: count again once its
                    // in-flight keeps finish.
                    tokio::select! {
                        _ = entry.backlog.kept() => {}
                        _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                    }
                    None
                } else {
                    None
                }
            }
        };
        match pause {
            Some(p) => {
                tokio::select! {
                    _ = tokio::time::sleep(p) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            None => backoff = Duration::from_millis(100),
        }
    }
}

/// Publishes a pass's messages, each topic's share in one pipelined batch
/// (in order), and answers per message: sent, retry later, or park.
async fn send(broker: Arc<dyn Broker>, msgs: Vec<Message>) -> Vec<Relayed> {
    let mut answers: Vec<Option<Relayed>> = vec![None; msgs.len()];
    let mut topics: Vec<(String, Vec<usize>)> = vec![];
    for (i, m) in msgs.iter().enumerate() {
        match topics.iter_mut().find(|(t, _)| *t == m.topic) {
            Some((_, ix)) => ix.push(i),
            None => topics.push((m.topic.clone(), vec![i])),
        }
    }
    let mut msgs: Vec<Option<Message>> = msgs.into_iter().map(Some).collect();
    for (_, ix) in topics {
        let batch = ix.iter().filter_map(|i| msgs[*i].take()).collect();
        for (i, r) in ix.into_iter().zip(broker.publish_batch(batch).await) {
            answers[i] = Some(match r {
                Ok(()) => Relayed::Sent,
                Err(BrokerError::Rejected(e)) => Relayed::Park(e),
                Err(BrokerError::Unavailable(_)) => Relayed::Retry,
            });
        }
    }
    answers
        .into_iter()
        .map(|a| a.unwrap_or(Relayed::Retry))
        .collect()
}
