//! Dead letters: the original message published to the subscription's
//! dead-letter topic (else `{topic}.dlq` unless disabled), retried until
//! shutdown, and acked only after the publish succeeded (and the key was
//! marked).

use tokio::sync::watch;

use super::idempotency::mark_finished;
use super::retry::{self, Backoff};
use super::SubCtx;
use crate::broker::{Delivery, Message};
use crate::store::{Finish, Key, Store};
use crate::telemetry::metrics::metrics;

/// Sends the original message to the dead-letter topic and acks only after
/// that publish succeeded; retries the publish until shutdown. Without a
/// dead-letter topic (`deadLetterDefault: none`) the message is acked.
pub(super) fn dead_letter_topic(ctx: &SubCtx) -> Option<String> {
    ctx.sub.dead_letter_topic.clone().or_else(|| {
        ctx.entry()
            .component
            .default_dead_letter_topic(&ctx.sub.topic)
    })
}

/// Metadata (and header to the app) naming the topic a dead letter came from.
pub const DEAD_LETTER_FROM: &str = "perch-dead-letter-from";

/// With `mark`, the claimed key is marked (after the dead-letter publish,
/// before the ack).
pub(super) async fn finish_dropped(
    ctx: &SubCtx,
    d: Delivery,
    mut stop: watch::Receiver<bool>,
    mark: Option<(&dyn Store, &Key, Finish)>,
) {
    let entry = ctx.entry();
    let marked = |stop: watch::Receiver<bool>| async move {
        match mark {
            Some((store, key, how)) => mark_finished(ctx, store, key, how, stop).await,
            None => true,
        }
    };
    let Some(topic) = dead_letter_topic(ctx) else {
        if marked(stop).await {
            let _ = d.ack.ack().await;
        }
        return;
    };
    let msg = Message {
        topic: entry.component.broker_topic(&topic),
        data: d.data.clone(),
        content_type: d.content_type.clone(),
        metadata: {
            let mut md = d.metadata.clone();
            md.insert(DEAD_LETTER_FROM.into(), ctx.sub.topic.clone());
            md
        },
    };
    let mut backoff = Backoff::new(retry::DEFAULT_INITIAL, retry::DEFAULT_MAX);
    loop {
        match entry.broker.publish(msg.clone()).await {
            Ok(()) => {
                tracing::info!(pubsub = %ctx.sub.pubsubname, from = %ctx.sub.topic, to = %topic, "message dead-lettered");
                ctx.count(&metrics().dead_lettered);
                if marked(stop).await {
                    let _ = d.ack.ack().await;
                }
                return;
            }
            Err(e) => {
                tracing::error!(to = %topic, error = %e, "dead-letter publish failed; message kept unacked and retried");
                tokio::select! {
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        }
    }
}
