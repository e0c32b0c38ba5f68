//! The consumer's rebalance callbacks: a revoked partition's bookkeeping is
//! dropped (deliveries still out are marked not owned, so the engine stops
//! them and their acks are ignored), its pause is lifted, and what finished
//! is committed before the partitions move; assignments start unpaused and
//! are logged.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::ClientContext;

use super::consumer::GroupState;

/// The consumer's context: revocations drop the partition's bookkeeping.
pub(super) struct GroupContext {
    pub(super) state: Arc<Mutex<GroupState>>,
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            return;
        };
        {
            let mut s = self
                .state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for e in tpl.elements() {
                if let Some(part) = s.parts.remove(&(e.topic().to_owned(), e.partition())) {
                    part.owned.store(false, Ordering::Release);
                    tracing::info!(
                        topic = e.topic(),
                        partition = e.partition(),
                        unfinished = part.ledger.unfinished(),
                        "partition revoked; unfinished messages are left to the next owner"
                    );
                }
            }
        }
        // librdkafka keeps a partition's pause across unassign and assign;
        // the ledger that knew of it is gone, so a partition paused here
        // and handed back later would never be fetched again (review F7).
        if let Err(e) = consumer.resume(tpl) {
            tracing::debug!(error = %e, "resume on revoke");
        }
        // What finished is committed before the partitions move.
        if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
            tracing::debug!(error = %e, "commit on revoke");
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            // A new assignment starts unpaused, whatever happened before.
            if let Err(e) = consumer.resume(tpl) {
                tracing::debug!(error = %e, "resume on assign");
            }
            let assigned: Vec<String> = tpl
                .elements()
                .iter()
                .map(|e| format!("{}[{}]", e.topic(), e.partition()))
                .collect();
            tracing::info!(partitions = ?assigned, "partitions assigned");
        }
    }
}
