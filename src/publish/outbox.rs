//! Publishing to the broker, and the outbox decision (`outboxStore` on a
//! pubsub component): a publish the broker cannot take now (unreachable,
//! timed out) is written to the store and answered 204 once the row is
//! durably committed; the [relay](super::relay) publishes the kept messages
//! in order when the broker is back. While messages of a topic wait, new
//! publishes to that topic queue behind them, so order per topic (and per
//! key) is kept; other topics are not held up. A message the broker refuses
//! for good (the backend classifies: too large, unknown topic with
//! auto-create off, access refused) is an error at once, never kept.
//! Every broker call goes through the component's outbound Resiliency
//! policies (`crate::resilience::outbound`): retried while the broker
//! cannot take it, then kept; an open circuit breaker sends publishes to
//! the outbox at once (without one, they fail at once). Records Dapr's
//! egress metrics.

use crate::state::backlog::Route;

use crate::broker::BrokerError;
use crate::message::Message;
use crate::state::Pubsub;

/// Publishes one message, through the outbox when the broker cannot take
/// it; records Dapr's egress metrics.
pub async fn publish(entry: &Pubsub, app_id: &str, msg: Message) -> Result<(), BrokerError> {
    let topic = msg.topic.clone();
    let start = std::time::Instant::now();
    let r = publish_inner(entry, msg).await;
    let m = crate::telemetry::metrics::metrics();
    let labels = [
        app_id,
        entry.component.name.as_str(),
        crate::telemetry::namespace(),
        if r.is_ok() { "true" } else { "false" },
        topic.as_str(),
    ];
    m.egress_count.with_label_values(&labels).inc();
    m.egress_latencies
        .with_label_values(&labels)
        .observe(start.elapsed().as_secs_f64() * 1000.0);
    r
}

/// One message to the broker under the outbound policies.
async fn send_one(entry: &Pubsub, msg: &Message) -> Result<(), BrokerError> {
    let sent = entry
        .outbound
        .run(1, |_| async {
            vec![entry.broker.publish(msg.clone()).await]
        })
        .await;
    sent.into_iter()
        .next()
        .unwrap_or_else(|| Err(BrokerError::Unavailable("not sent".into())))
}

async fn publish_inner(entry: &Pubsub, msg: Message) -> Result<(), BrokerError> {
    let Some(outbox) = &entry.outbox else {
        if entry.outbound.is_empty() {
            return entry.broker.publish(msg).await;
        }
        return send_one(entry, &msg).await;
    };
    match entry.backlog.route(&msg.topic).await {
        Route::Keep => return put(entry, outbox.as_ref(), vec![msg]).await,
        Route::Direct => {}
    }
    match send_one(entry, &msg).await {
        Err(BrokerError::Unavailable(e)) => {
            tracing::warn!(pubsub = %entry.component.name, error = %e, "broker unavailable; publish kept in the outbox");
        }
        done => return done,
    }
    keep(entry, outbox.as_ref(), vec![msg]).await
}

/// Publishes many; those the broker cannot take go to the outbox. Records
/// Dapr's bulk egress metric.
pub async fn publish_batch(
    entry: &Pubsub,
    app_id: &str,
    msgs: Vec<Message>,
) -> Vec<Result<(), BrokerError>> {
    let topic = msgs.first().map(|m| m.topic.clone()).unwrap_or_default();
    let r = publish_batch_inner(entry, msgs).await;
    let ok = r.iter().all(Result::is_ok);
    crate::telemetry::metrics::metrics()
        .egress_bulk_count
        .with_label_values(&[
            app_id,
            entry.component.name.as_str(),
            crate::telemetry::namespace(),
            if ok { "true" } else { "false" },
            topic.as_str(),
        ])
        .inc();
    r
}

/// Many messages to the broker under the outbound policies (only the ones
/// it could not take are sent again).
async fn send_batch(entry: &Pubsub, msgs: &[Message]) -> Vec<Result<(), BrokerError>> {
    entry
        .outbound
        .run(msgs.len(), |idx| {
            let batch: Vec<Message> = idx.iter().map(|i| msgs[*i].clone()).collect();
            entry.broker.publish_batch(batch)
        })
        .await
}

async fn publish_batch_inner(entry: &Pubsub, msgs: Vec<Message>) -> Vec<Result<(), BrokerError>> {
    let Some(outbox) = &entry.outbox else {
        if entry.outbound.is_empty() {
            return entry.broker.publish_batch(msgs).await;
        }
        return send_batch(entry, &msgs).await;
    };
    let n = msgs.len();
    let topic = msgs.first().map(|m| m.topic.clone()).unwrap_or_default();
    if let Route::Keep = entry.backlog.route(&topic).await {
        let mut rest: Vec<&str> = msgs.iter().skip(1).map(|m| m.topic.as_str()).collect();
        entry.backlog.keep_started(rest.drain(..));
        let r = put(entry, outbox.as_ref(), msgs).await;
        return (0..n).map(|_| r.clone()).collect();
    }
    let mut results = send_batch(entry, &msgs).await;
    let unavailable: Vec<usize> = results
        .iter()
        .enumerate()
        .filter(|(_, r)| matches!(r, Err(BrokerError::Unavailable(_))))
        .map(|(i, _)| i)
        .collect();
    if !unavailable.is_empty() {
        let kept = unavailable.iter().map(|i| msgs[*i].clone()).collect();
        let r = keep(entry, outbox.as_ref(), kept).await;
        for i in unavailable {
            results[i] = r.clone();
        }
    }
    results
}

/// Keeps `msgs` in the outbox, marking their topics as waiting first.
async fn keep(
    entry: &Pubsub,
    outbox: &dyn crate::store::Store,
    msgs: Vec<Message>,
) -> Result<(), BrokerError> {
    entry
        .backlog
        .keep_started(msgs.iter().map(|m| m.topic.as_str()));
    put(entry, outbox, msgs).await
}

/// Writes `msgs` (whose keeps were started) and finishes their keeps.
async fn put(
    entry: &Pubsub,
    outbox: &dyn crate::store::Store,
    msgs: Vec<Message>,
) -> Result<(), BrokerError> {
    let topics: Vec<String> = msgs.iter().map(|m| m.topic.clone()).collect();
    let r = outbox.outbox_put(&entry.component.name, msgs).await;
    entry
        .backlog
        .keep_finished(topics.iter().map(String::as_str));
    r.map_err(|e| {
        BrokerError::Unavailable(format!(
            "broker unavailable and the outbox could not keep the message: {e}"
        ))
    })
}
