//! The outbox relay: publishes what the outbox kept, in order, when the
//! broker is back, deleting each batch after the broker confirmed it.
//!
//! The relay may publish a message twice (it crashed between the confirm
//! and the delete); the CloudEvent keeps its id, so the idempotency inbox
//! drops the copy.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::state::Pubsub;

/// Relays the outbox of `entry` to its broker until `stop`.
pub async fn relay(entry: Arc<Pubsub>, mut stop: watch::Receiver<bool>) {
    let Some(outbox) = entry.outbox.clone() else {
        return;
    };
    let name = entry.component.name.as_str();
    // What an earlier run left behind.
    if let Ok(n) = outbox.outbox_depth(name).await {
        entry.outbox_pending.store(n, Ordering::Release);
    }
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if entry.outbox_pending.load(Ordering::Acquire) == 0 || entry.broker.health().is_err() {
            continue;
        }
        let Ok(rows) = outbox.outbox_peek(name, 100).await else {
            continue;
        };
        if rows.is_empty() {
            entry.outbox_pending.store(0, Ordering::Release);
            continue;
        }
        let mut sent = vec![];
        for (id, msg) in rows {
            match entry.broker.publish(msg).await {
                Ok(()) => sent.push(id),
                Err(e) => {
                    tracing::warn!(pubsub = %name, error = %e, "outbox relay paused");
                    break;
                }
            }
        }
        let n = sent.len() as u64;
        if n > 0 && outbox.outbox_delete(sent).await.is_ok() {
            let _ = entry
                .outbox_pending
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| {
                    Some(p.saturating_sub(n))
                });
            tracing::info!(pubsub = %name, relayed = n, "outbox messages published");
        }
    }
}
