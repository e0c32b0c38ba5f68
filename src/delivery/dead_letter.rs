//! Dead letters: the original message published to the subscription's
//! dead-letter topic (else `{topic}.dlq` unless disabled), retried until
//! shutdown, and acked only after the publish succeeded (and the key was
//! marked).

use tokio::sync::watch;

use super::idempotency::mark_finished;
use super::retry::{self, Backoff};
use super::SubCtx;
use crate::broker::{Delivery, Message};
use crate::message::NOT_DEAD_LETTERED;
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

pub use crate::message::DEAD_LETTER_FROM;

/// Why a message is dead-lettered, recorded on the dead letter
/// ([`crate::message::DEAD_LETTER_REASON`], `..._ATTEMPTS`).
pub(super) struct Why {
    pub(super) reason: String,
    /// App calls made with it.
    pub(super) attempts: u32,
}

impl Why {
    pub(super) fn new(reason: impl Into<String>, attempts: u32) -> Self {
        Self {
            reason: reason.into(),
            attempts,
        }
    }
}

/// Longest reason recorded on a dead letter.
const MAX_REASON: usize = 1024;

/// With `mark`, the claimed key is marked (after the dead-letter publish,
/// before the ack).
pub(super) async fn finish_dropped(
    ctx: &SubCtx,
    d: Delivery,
    mut stop: watch::Receiver<bool>,
    mark: Option<(&dyn Store, &Key, Finish)>,
    why: Why,
) {
    let entry = ctx.entry();
    // The claim goes back whenever this sidecar stops owning the message
    // without finishing it: held, its lease would be renewed for the life
    // of the process and the next owner's claim would be Busy for good.
    let give_back = || async {
        if let Some((store, key, _)) = mark {
            let _ = tokio::time::timeout(
                std::time::Duration::from_secs(1),
                store.release(vec![key.clone()]),
            )
            .await;
        }
    };
    // Revoked (or its channel died) while it failed: the next owner decides.
    if !d.is_owned() {
        give_back().await;
        return;
    }
    let marked = |stop: watch::Receiver<bool>| async move {
        match mark {
            Some((store, key, how)) => {
                mark_finished(ctx, store, std::slice::from_ref(key), how, stop).await
            }
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
            let mut md = dead_letter_metadata(&d.metadata, &ctx.sub.topic);
            let mut reason = why.reason;
            if reason.len() > MAX_REASON {
                let mut end = MAX_REASON;
                while !reason.is_char_boundary(end) {
                    end -= 1;
                }
                reason.truncate(end);
            }
            md.insert(crate::message::DEAD_LETTER_REASON.into(), reason);
            md.insert(
                crate::message::DEAD_LETTER_ATTEMPTS.into(),
                why.attempts.to_string(),
            );
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
                let stopped = tokio::select! {
                    _ = tokio::time::sleep(backoff.next_delay()) => false,
                    _ = stop.wait_for(|s| *s) => true,
                };
                if stopped {
                    give_back().await;
                    return;
                }
                // Revoked while the dead-letter topic was unreachable: the
                // next owner dead-letters it (one copy, not two).
                if !d.is_owned() {
                    give_back().await;
                    return;
                }
            }
        }
    }
}

/// The dead letter's metadata: the original's, minus what addressed or
/// limited the original ([`NOT_DEAD_LETTERED`]), plus where it came from.
fn dead_letter_metadata(
    md: &std::collections::BTreeMap<String, String>,
    from: &str,
) -> std::collections::BTreeMap<String, String> {
    let mut out: std::collections::BTreeMap<String, String> = md
        .iter()
        .filter(|(k, _)| !NOT_DEAD_LETTERED.iter().any(|n| k.eq_ignore_ascii_case(n)))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    out.insert(DEAD_LETTER_FROM.into(), from.to_owned());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_letter_keeps_its_data_and_drops_what_addressed_the_original() {
        let md: std::collections::BTreeMap<String, String> = [
            ("routingKey", "rk"),
            ("ttlInSeconds", "2"),
            ("TTL", "2"),
            ("priority", "5"),
            ("partitionNumber", "3"),
            ("partitionKey", "k"),
            ("__key", "k"),
            ("traceparent", "00-1-2-01"),
            ("custom", "v"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let out = dead_letter_metadata(&md, "orders");
        let keys: Vec<&str> = out.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "__key",
                "custom",
                "partitionKey",
                DEAD_LETTER_FROM,
                "traceparent"
            ]
        );
        assert_eq!(out[DEAD_LETTER_FROM], "orders");
    }
}
