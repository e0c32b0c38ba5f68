//! Idempotency through the store: the key of a delivery, claims (waiting
//! while another sidecar holds the key or the store is down) and marks
//! (retried while the store is down; nothing is acked before it).

use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;

use super::context::Ready;
use super::machine::Claimed;
use super::retry::Backoff;
use super::SubCtx;
use crate::store::{Claim, Finish, Key, Store};
use crate::telemetry::metrics::metrics;

fn observe_store(ctx: &SubCtx, op: &str, started: std::time::Instant) {
    let store = ctx
        .entry()
        .component
        .idempotency_store
        .as_deref()
        .unwrap_or("");
    metrics()
        .store_latency
        .with_label_values(&[store, op])
        .observe(started.elapsed().as_secs_f64());
}

/// Header (and metadata key) carrying the idempotency key to the app.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The idempotency key of a delivery: the CloudEvent's `source` and `id`;
/// for a raw payload (whose envelope id is random) the Kafka record's
/// topic, partition and offset, or the publisher's `messageID` (RabbitMQ),
/// else none (not deduplicated).
pub(super) fn idempotency_key(ctx: &SubCtx, ready: &Ready) -> Option<Key> {
    let subscriber = format!(
        "{}/{}/{}",
        ctx.deps.settings.app_id, ctx.sub.pubsubname, ctx.sub.topic
    );
    let msg_key = if ctx.raw {
        let md = &ready.delivery.metadata;
        match (md.get("__topic"), md.get("__partition"), md.get("__offset")) {
            (Some(t), Some(p), Some(o)) => format!("kafka {t}/{p}/{o}"),
            _ => format!("message-id {}", md.get("messageID")?),
        }
    } else {
        let source = ready
            .event
            .get("source")
            .and_then(Value::as_str)
            .unwrap_or("");
        let id = ready.event.get("id").and_then(Value::as_str)?;
        format!("{source} {id}")
    };
    Some(Key {
        subscriber,
        msg_key,
    })
}

/// Claims `key`, waiting while another sidecar holds it and while the
/// store is unreachable (nothing is delivered without a claim, nothing is
/// acked).
pub(super) async fn claim(
    ctx: &SubCtx,
    store: &dyn Store,
    key: &Key,
    stop: &mut watch::Receiver<bool>,
) -> Claimed {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        let started = std::time::Instant::now();
        let answer = store.claim(vec![key.clone()]).await.map(|c| c[0]);
        observe_store(ctx, "claim", started);
        let wait = match answer {
            Ok(Claim::Owned { attempts }) => return Claimed::Owned { attempts },
            Ok(Claim::Done) => return Claimed::Duplicate,
            Ok(Claim::Busy) => Duration::from_secs(1),
            Err(e) => {
                tracing::warn!(topic = %ctx.sub.topic, error = %e, "idempotency store unavailable; delivery paused");
                backoff.next_delay()
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => return Claimed::Stopped,
        }
    }
}

/// Marks a claimed key done or dead, retrying while the store is down;
/// `false` when shutdown came first (then the message stays unacked).
pub(super) async fn mark_finished(
    ctx: &SubCtx,
    store: &dyn Store,
    key: &Key,
    how: Finish,
    mut stop: watch::Receiver<bool>,
) -> bool {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        let started = std::time::Instant::now();
        let answer = store.finish(vec![key.clone()], how).await;
        observe_store(ctx, "finish", started);
        match answer {
            Ok(marked) => {
                if !marked[0] {
                    tracing::warn!(topic = %ctx.sub.topic, key = %key.header(),
                        "the claim was taken over before it was marked: a duplicate delivery is possible");
                }
                return true;
            }
            Err(e) => {
                tracing::warn!(topic = %ctx.sub.topic, error = %e, "idempotency store unavailable; acknowledgement waits");
                tokio::select! {
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                    _ = stop.wait_for(|s| *s) => return false,
                }
            }
        }
    }
}
