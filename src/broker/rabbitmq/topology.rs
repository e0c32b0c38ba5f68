//! Dapr's topology: an exchange per topic and a queue per subscribing
//! app, bound with the subscription's routing keys; queue arguments from
//! the component and the subscription (`queueType`, `maxLen`,
//! `maxLenBytes`, `maxPriority`, `singleActiveConsumer`).
//!
//! An exchange or queue that exists already (declared by daprd, by an
//! earlier Perch, or by an operator) is used as it is: a passive declare
//! finds it, and it is not declared again, so RabbitMQ's equivalence rule
//! never refuses Perch for flags or arguments another declarer chose
//! (daprd declares `auto_delete` exchanges and queues and always sets
//! `x-queue-type`). Perch's own safer settings (durable, kept, the quorum
//! delivery limit) apply only to what Perch creates.

use std::collections::BTreeMap;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection};

use super::Inner;

/// `x-delivery-limit` of the quorum queues Perch declares: high enough to
/// be never reached (RabbitMQ 3.x accepts only non-negative limits, so not
/// 4.x's `-1`).
pub(super) const QUORUM_DELIVERY_LIMIT: i64 = 1_000_000_000;

/// An exchange or a queue.
#[derive(Clone, Copy)]
pub(super) enum Object<'a> {
    /// An exchange of this kind.
    Exchange(&'a lapin::ExchangeKind),
    /// A queue.
    Queue,
}

/// Whether the exchange or queue `name` exists: a passive declare on a
/// channel of its own (a missing object closes the channel it was asked
/// on). `Err` when RabbitMQ could not be asked.
pub(super) async fn exists(
    conn: &Connection,
    what: Object<'_>,
    name: &str,
) -> Result<bool, lapin::Error> {
    let ch = conn.create_channel().await?;
    let answer = match what {
        Object::Exchange(kind) => ch
            .exchange_declare(
                name.into(),
                kind.clone(),
                ExchangeDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map(|_| ()),
        Object::Queue => ch
            .queue_declare(
                name.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map(|_| ()),
    };
    match answer {
        Ok(()) => {
            let _ = ch.close(200, "passive declare".into()).await;
            Ok(true)
        }
        Err(e) if is_not_found(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

fn is_not_found(e: &lapin::Error) -> bool {
    use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
    matches!(e.kind(), lapin::ErrorKind::ProtocolError(amqp)
        if matches!(amqp.kind(), AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND)))
}

/// Declares `topic`'s exchange on `ch` unless it exists already.
pub(super) async fn ensure_exchange(
    inner: &Inner,
    conn: &Connection,
    ch: &Channel,
    topic: &str,
) -> Result<(), lapin::Error> {
    let kind = inner.exchange_kind();
    if exists(conn, Object::Exchange(&kind), topic).await? {
        return Ok(());
    }
    ch.exchange_declare(
        topic.into(),
        kind,
        inner.exchange_options(),
        FieldTable::default(),
    )
    .await
}

/// Declares the subscription's queue with its arguments and bindings.
pub(super) async fn declare_queue(
    inner: &Inner,
    conn: &Connection,
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
    declare_bound_queue(
        inner,
        conn,
        ch,
        topic,
        queue,
        &keys,
        inner.cfg.durable,
        args,
    )
    .await
}

/// Declares `topic`'s exchange and `queue` (each unless it exists), bound
/// with `routing_keys`.
#[allow(clippy::too_many_arguments)]
pub(super) async fn declare_bound_queue(
    inner: &Inner,
    conn: &Connection,
    ch: &Channel,
    topic: &str,
    queue: &str,
    routing_keys: &[String],
    durable: bool,
    args: FieldTable,
) -> Result<(), String> {
    let e = |e: lapin::Error| e.to_string();
    ensure_exchange(inner, conn, ch, topic).await.map_err(e)?;
    if exists(conn, Object::Queue, queue).await.map_err(e)? {
        tracing::debug!(pubsub = %inner.name, %queue, "queue exists; used as it was declared");
    } else {
        let opts = QueueDeclareOptions {
            durable,
            auto_delete: inner.cfg.auto_delete && durable == inner.cfg.durable,
            ..Default::default()
        };
        ch.queue_declare(queue.into(), opts, args)
            .await
            .map_err(e)?;
    }
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
