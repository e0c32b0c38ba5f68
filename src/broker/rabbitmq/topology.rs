//! Dapr's topology: an exchange per topic and a queue per subscribing
//! app, bound with the subscription's routing keys; queue arguments from
//! the component and the subscription (`queueType`, `maxLen`,
//! `maxLenBytes`, `maxPriority`, `singleActiveConsumer`).

use std::collections::BTreeMap;

use lapin::options::{QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::Channel;

use super::Inner;

/// `x-delivery-limit` of the quorum queues Perch declares: high enough to
/// be never reached (RabbitMQ 3.x accepts only non-negative limits, so not
/// 4.x's `-1`).
pub(super) const QUORUM_DELIVERY_LIMIT: i64 = 1_000_000_000;

/// Declares the subscription's queue with its arguments and bindings.
pub(super) async fn declare_queue(
    inner: &Inner,
    ch: &Channel,
    topic: &str,
    queue: &str,
    sub: &BTreeMap<String, String>,
) -> Result<(), String> {
    let mut args = FieldTable::default();
    let queue_type = sub.get("queueType").or(inner.cfg.queue_type.as_ref());
    if let Some(t) = queue_type {
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(t.as_str().into()),
        );
        // RabbitMQ 4 gives quorum queues a delivery limit of 20 and drops a
        // message past it. Perch requeues what it has not finished
        // (shutdown, the claims-ahead window) and owns retries and dead
        // letters itself, so the broker's limit must never be reached.
        if t.eq_ignore_ascii_case("quorum") {
            args.insert(
                "x-delivery-limit".into(),
                AMQPValue::LongLongInt(QUORUM_DELIVERY_LIMIT),
            );
        }
    }
    let number = |key: &str, component: Option<i64>| -> Option<i64> {
        sub.get(key).and_then(|v| v.parse().ok()).or(component)
    };
    if let Some(n) = number("maxLen", inner.cfg.max_len) {
        args.insert("x-max-length".into(), AMQPValue::LongLongInt(n));
    }
    if let Some(n) = number("maxLenBytes", inner.cfg.max_len_bytes) {
        args.insert("x-max-length-bytes".into(), AMQPValue::LongLongInt(n));
    }
    if let Some(n) = number("maxPriority", None) {
        args.insert("x-max-priority".into(), AMQPValue::LongLongInt(n));
    }
    if sub
        .get("singleActiveConsumer")
        .and_then(|v| crate::util::parse_go_bool(v))
        .unwrap_or(false)
    {
        args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    }
    let keys: Vec<String> = match sub.get("routingKey") {
        Some(k) => k.split(',').map(|s| s.trim().to_owned()).collect(),
        None => vec![String::new()],
    };
    declare_bound_queue(inner, ch, topic, queue, &keys, inner.cfg.durable, args).await
}

/// Declares `topic`'s exchange and `queue`, bound with `routing_keys`.
pub(super) async fn declare_bound_queue(
    inner: &Inner,
    ch: &Channel,
    topic: &str,
    queue: &str,
    routing_keys: &[String],
    durable: bool,
    args: FieldTable,
) -> Result<(), String> {
    let e = |e: lapin::Error| e.to_string();
    ch.exchange_declare(
        topic.into(),
        inner.exchange_kind(),
        inner.exchange_options(),
        FieldTable::default(),
    )
    .await
    .map_err(e)?;
    let opts = QueueDeclareOptions {
        durable,
        auto_delete: inner.cfg.auto_delete && durable == inner.cfg.durable,
        ..Default::default()
    };
    ch.queue_declare(queue.into(), opts, args)
        .await
        .map_err(e)?;
    for key in routing_keys {
        ch.queue_bind(
            queue.into(),
            topic.into(),
            key.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(e)?;
    }
    Ok(())
}
