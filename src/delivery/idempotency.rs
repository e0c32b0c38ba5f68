//! Idempotency through the store: the key of a delivery, claims (waiting
//! while another sidecar holds the key or the store is down) and marks
//! (retried while the store is down; nothing is acked before it).

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;

use super::context::Ready;
use super::machine::Claimed;
use super::retry::Backoff;
use super::SubCtx;
use crate::store::{Claim, Finish, Key, Store};
use crate::telemetry::metrics::metrics;

pub(super) fn observe_store(ctx: &SubCtx, op: &str, started: std::time::Instant) {
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

pub use crate::message::IDEMPOTENCY_KEY;

/// The idempotency key of a delivery: the CloudEvent's `source` and `id`;
/// for a raw payload (whose envelope id is random) the Kafka record's
/// topic, partition, offset and timestamp, or the publisher's `messageID`
/// (RabbitMQ), else none (not deduplicated).
pub(super) fn idempotency_key(ctx: &SubCtx, ready: &Ready) -> Option<Key> {
    let subscriber = format!(
        "{}/{}/{}",
        ctx.deps.settings.app_id, ctx.sub.pubsubname, ctx.sub.topic
    );
    let identity = if ctx.raw {
        Identity::Raw(&ready.delivery.metadata)
    } else {
        Identity::Event {
            source: ready.event.get("source").and_then(Value::as_str),
            id: ready.event.get("id").and_then(Value::as_str),
        }
    };
    Some(Key {
        subscriber,
        msg_key: message_key(identity)?,
    })
}

/// What identifies a message for deduplication.
pub(super) enum Identity<'a> {
    /// A CloudEvent: its `source` and `id` (the spec's uniqueness rule).
    Event {
        source: Option<&'a str>,
        id: Option<&'a str>,
    },
    /// A raw payload: the broker's delivered metadata.
    Raw(&'a BTreeMap<String, String>),
}

/// The message part of an idempotency key: SHA-256 over length-prefixed
/// parts, hex, with a prefix naming the scheme. Length prefixes keep
/// distinct parts from colliding (`"a b" + "c"` is not `"a" + "b c"`), and
/// the digest gives any input (a NUL byte, a megabyte id) a 64-character key
/// the store can index. A raw Kafka record includes its timestamp, so a
/// recreated topic, whose offsets start again, is not taken for
/// duplicates of the old one.
pub(super) fn message_key(identity: Identity<'_>) -> Option<String> {
    match identity {
        Identity::Event { source, id } => Some(event_key(source.unwrap_or(""), id?)),
        Identity::Raw(md) => {
            let get = |k: &str| md.get(k).map(String::as_str);
            match (get("__topic"), get("__partition"), get("__offset")) {
                (Some(t), Some(p), Some(o)) => Some(digest(
                    "kafka",
                    &[t, p, o, get("__timestamp").unwrap_or("")],
                )),
                _ => Some(digest("message-id", &[get("messageID")?])),
            }
        }
    }
}

/// The message part of the idempotency key of a CloudEvent with `source`
/// and `id` (what the store's `msg_key` column holds for it).
pub fn event_key(source: &str, id: &str) -> String {
    digest("ce", &[source, id])
}

fn digest(scheme: &str, parts: &[&str]) -> String {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p.as_bytes());
    }
    let mut out = String::with_capacity(scheme.len() + 65);
    out.push_str(scheme);
    out.push(':');
    for b in h.finalize() {
        out.push(char::from_digit(u32::from(b >> 4), 16).expect("hex digit"));
        out.push(char::from_digit(u32::from(b & 15), 16).expect("hex digit"));
    }
    out
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

/// Marks claimed keys done or dead (one batched write), retrying while the
/// store is down; `false` when shutdown came first (then the messages stay
/// unacked).
pub(super) async fn mark_finished(
    ctx: &SubCtx,
    store: &dyn Store,
    keys: &[Key],
    how: Finish,
    mut stop: watch::Receiver<bool>,
) -> bool {
    if keys.is_empty() {
        return true;
    }
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        let started = std::time::Instant::now();
        let answer = store.finish(keys.to_vec(), how).await;
        observe_store(ctx, "finish", started);
        match answer {
            Ok(marked) => {
                for (key, ok) in keys.iter().zip(marked) {
                    if !ok {
                        tracing::warn!(topic = %ctx.sub.topic, key = %key.header(),
                            "the claim was taken over before it was marked: a duplicate delivery is possible");
                    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn event(source: &str, id: &str) -> String {
        message_key(Identity::Event {
            source: Some(source),
            id: Some(id),
        })
        .unwrap()
    }

    fn raw(pairs: &[(&str, &str)]) -> Option<String> {
        let md: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        message_key(Identity::Raw(&md))
    }

    #[test]
    fn distinct_events_never_share_a_key() {
        assert_ne!(event("a b", "c"), event("a", "b c"));
        assert_ne!(event("", "ab"), event("a", "b"));
        assert_eq!(event("orders", "1"), event("orders", "1"));
        assert!(event("orders", "1").starts_with("ce:"));
    }

    #[test]
    fn any_id_makes_a_key_the_store_can_hold() {
        for id in ["\u{0}", &"x".repeat(1 << 20), "é\u{2028}"] {
            let k = event("s", id);
            assert_eq!(k.len(), "ce:".len() + 64, "{k}");
            assert!(k[3..].bytes().all(|b| b.is_ascii_hexdigit()));
        }
    }

    #[test]
    fn an_event_without_an_id_is_not_deduplicated() {
        assert_eq!(
            message_key(Identity::Event {
                source: Some("s"),
                id: None
            }),
            None
        );
    }

    #[test]
    fn a_recreated_kafka_topic_is_not_taken_for_duplicates() {
        let at = |ts| {
            raw(&[
                ("__topic", "t"),
                ("__partition", "0"),
                ("__offset", "0"),
                ("__timestamp", ts),
            ])
        };
        assert_ne!(at("1700000000000"), at("1800000000000"));
        assert_eq!(at("1700000000000"), at("1700000000000"));
        assert!(at("1").unwrap().starts_with("kafka:"));
    }

    #[test]
    fn raw_rabbitmq_messages_are_keyed_by_message_id_or_not_at_all() {
        assert!(raw(&[("messageID", "m-1")])
            .unwrap()
            .starts_with("message-id:"));
        assert_eq!(raw(&[("other", "x")]), None);
    }
}
