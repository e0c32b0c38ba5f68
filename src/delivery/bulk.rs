//! Bulk subscribe (reference 3.5): messages are gathered into batches of at
//! most `maxMessagesCount` (default 100), flushed when full or
//! `maxAwaitDurationMs` (default 1000) after the first message arrived, and
//! sent as one Dapr bulk request per route path (POSTed, or to a gRPC app's
//! `OnBulkTopicEvent`, see `app_grpc`). The app answers a status
//! per entry; a missing entry or an empty status is RETRY. Entries still
//! failing when the retry policy gives up are dead-lettered one by one.
//!
//! The batch is the unit of concurrency, and its entries are in broker
//! order. With `deliveryOrder=partition` or `key` one batch is in flight at
//! a time (the next batch waits, so order holds across batches); with
//! `none`, `maxInFlight` counts batches in flight, as it counts messages for
//! a per-message subscription, bounded to [`MAX_WINDOW`] messages.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Map};
use tokio::sync::watch;

use super::context::{BulkRequest, Ready, Sink};
use super::dead_letter::finish_dropped;
use super::prepare::prepare;
use super::retry::{self, Attempt, RetryEnd};
use super::SubCtx;
use crate::broker::{Delivery, DeliveryStream};
use crate::config::DeliveryOrder;

/// Dapr's default batcher limits.
const DEFAULT_MAX_MESSAGES: usize = 100;
/// Dapr's default batcher wait, from the first pending message.
pub const DEFAULT_MAX_AWAIT: Duration = Duration::from_millis(1000);

/// Most unfinished messages a bulk subscription holds per lane. Larger
/// windows measured slower on RabbitMQ (a 4096 prefetch drained a backlog
/// at about half the rate of 800) and cost memory.
pub const MAX_WINDOW: usize = 1024;

/// `maxMessagesCount`, or Dapr's default.
fn batch_size(max_messages: Option<u32>) -> usize {
    max_messages.map_or(DEFAULT_MAX_MESSAGES, |n| n as usize)
}

/// The broker window (unfinished messages per lane) of a bulk subscription.
pub fn window(order: DeliveryOrder, max_in_flight: usize, max_messages: Option<u32>) -> usize {
    let batch = batch_size(max_messages);
    match order {
        DeliveryOrder::None => max_in_flight
            .saturating_mul(batch)
            .min(MAX_WINDOW)
            .max(batch),
        DeliveryOrder::Partition | DeliveryOrder::Key => max_in_flight.max(batch),
    }
}

/// How many batches may be in flight at once (see the module docs).
pub fn batches_in_flight(
    order: DeliveryOrder,
    max_in_flight: usize,
    max_messages: Option<u32>,
) -> usize {
    match order {
        DeliveryOrder::None => {
            (window(order, max_in_flight, max_messages) / batch_size(max_messages).max(1)).max(1)
        }
        DeliveryOrder::Partition | DeliveryOrder::Key => 1,
    }
}

/// Reads the next batch: waits for one message, then takes more until the
/// batch is full or the wait is over. Empty when the stream ended or `stop`
/// fired; a batch cut short by `stop` is dropped unfinished, so its
/// messages are redelivered.
pub async fn next_batch(
    ctx: &SubCtx,
    stream: &mut DeliveryStream,
    stop: &mut watch::Receiver<bool>,
) -> Vec<Delivery> {
    let max = batch_size(ctx.sub.bulk.max_messages_count);
    let wait = ctx
        .sub
        .bulk
        .max_await_duration_ms
        .map_or(DEFAULT_MAX_AWAIT, |ms| Duration::from_millis(ms.into()));
    let mut batch = Vec::new();
    let first = tokio::select! {
        d = stream.recv() => d,
        _ = stop.wait_for(|s| *s) => None,
    };
    let Some(first) = first else { return batch };
    batch.push(first);
    let deadline = tokio::time::Instant::now() + wait;
    while batch.len() < max {
        tokio::select! {
            d = stream.recv() => match d {
                Some(d) => batch.push(d),
                None => break,
            },
            _ = tokio::time::sleep_until(deadline) => break,
            _ = stop.wait_for(|s| *s) => return Vec::new(),
        }
    }
    batch
}

/// One entry of the app's bulk answer.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EntryStatus {
    #[serde(default)]
    entry_id: String,
    #[serde(default)]
    status: String,
}

#[derive(Deserialize)]
struct BulkAnswer {
    #[serde(default)]
    statuses: Vec<EntryStatus>,
}

/// Delivers a batch: each message is prepared (expired and unroutable ones
/// are finished on their own), the rest grouped per route path, one bulk
/// request per path, the paths one after another.
pub async fn process_batch(ctx: &SubCtx, batch: Vec<Delivery>, stop: watch::Receiver<bool>) {
    let mut by_path: BTreeMap<String, Vec<Ready>> = BTreeMap::new();
    for d in batch {
        if let Some(r) = prepare(ctx, d, stop.clone()).await {
            by_path.entry(r.path.clone()).or_default().push(r);
        }
    }
    for (path, entries) in by_path {
        deliver_group(ctx, path, entries, stop.clone()).await;
    }
}

/// What is left of a group between attempts.
struct Pending {
    entries: BTreeMap<String, Ready>,
}

async fn deliver_group(
    ctx: &SubCtx,
    path: String,
    entries: Vec<Ready>,
    stop: watch::Receiver<bool>,
) {
    let pending = Mutex::new(Pending {
        entries: entries
            .into_iter()
            .map(|r| (uuid::Uuid::new_v4().to_string(), r))
            .collect(),
    });
    let mut retry_stop = stop.clone();
    // A batch is ours while every entry left is (no partition revoked, no
    // channel lost); otherwise it goes back to the broker whole.
    let owned = || {
        pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entries
            .iter()
            .all(|(_, r)| r.delivery.is_owned())
    };
    let end = retry::run(&ctx.policy, &mut retry_stop, &owned, || async {
        let request = {
            let p = pending
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            request_of(ctx, &path, &p.entries)
        };
        let headers = BTreeMap::from([("pubsubName".to_owned(), ctx.sub.pubsubname.clone())]);
        let answer = ctx
            .call_app(ctx.deliver_bulk_once(&path, request, &headers), |a| {
                a.as_ref()
                    .is_some_and(|(s, _)| (200..300).contains(s) || *s == 404)
            })
            .await;
        let (status, body) = match answer {
            None => {
                return Attempt::Failed {
                    status: None,
                    reason: "app unreachable".into(),
                }
            }
            Some(a) => a,
        };
        let bulk_labels = [
            ctx.deps.settings.app_id.as_str(),
            "pubsubName",
            crate::telemetry::namespace(),
            if (200..300).contains(&status) {
                "success"
            } else {
                "retry"
            },
            ctx.sub.topic.as_str(),
        ];
        crate::telemetry::metrics::metrics()
            .ingress_bulk_count
            .with_label_values(&bulk_labels)
            .inc();
        let (succeeded, dropped) = {
            let mut p = pending
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match read_answer(status, &body, &mut p.entries) {
                Ok(done) => done,
                Err(reason) => {
                    return Attempt::Failed {
                        status: Some(status),
                        reason,
                    }
                }
            }
        };
        for r in succeeded {
            let _ = r.delivery.ack.ack().await;
        }
        for r in dropped {
            finish_dropped(ctx, r.delivery, stop.clone(), None).await;
        }
        let left = pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entries
            .len();
        if left == 0 {
            Attempt::Done(())
        } else {
            Attempt::Failed {
                status: Some(status),
                reason: format!("{left} bulk entries to retry"),
            }
        }
    })
    .await;
    let left = std::mem::take(
        &mut pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entries,
    );
    match end {
        RetryEnd::Done(()) => {}
        RetryEnd::Exhausted(reason) => {
            tracing::warn!(topic = %ctx.sub.topic, %reason, entries = left.len(), "bulk retries exhausted");
            for (_, r) in left {
                finish_dropped(ctx, r.delivery, stop.clone(), None).await;
            }
        }
        // Shutdown, or an entry no longer ours: the entries stay
        // unacknowledged for redelivery.
        RetryEnd::Stopped | RetryEnd::Revoked => {}
    }
}

/// The bulk request for the pending entries, in the sink's form.
fn request_of(ctx: &SubCtx, path: &str, entries: &BTreeMap<String, Ready>) -> BulkRequest {
    match ctx.sink {
        Sink::GrpcApp(_) => BulkRequest::Grpc(super::app_grpc::bulk_request(
            &ctx.sub.topic,
            &ctx.sub.pubsubname,
            path,
            ctx.raw,
            entries.iter().map(|(id, r)| super::app_grpc::BulkEntry {
                id,
                event: &r.event,
                body: &r.body,
                data: &r.delivery.data,
                metadata: &r.delivery.metadata,
            }),
        )),
        Sink::App(_) | Sink::Stream(_) => BulkRequest::Http(request_body(ctx, entries)),
    }
}

/// The Dapr bulk request for the pending entries. Written by hand so that
/// each CloudEvent goes in as the broker's bytes (already checked to be a
/// JSON object by `prepare`) instead of being parsed into a map again and
/// re-serialised; keys in Go's sorted order, as daprd writes them.
fn request_body(ctx: &SubCtx, entries: &BTreeMap<String, Ready>) -> Bytes {
    use crate::util::to_go_json;
    let size: usize = entries.values().map(|r| r.body.len() + 256).sum();
    let mut out = Vec::with_capacity(size + 256);
    // Every entry starts with the same content type.
    let entry_start = [
        &b"{\"contentType\":"[..],
        &to_go_json(if ctx.raw {
            "application/octet-stream"
        } else {
            crate::cloudevents::CLOUDEVENT_CONTENT_TYPE
        }),
    ]
    .concat();
    out.extend_from_slice(b"{\"entries\":[");
    for (n, (id, r)) in entries.iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&entry_start);
        out.extend_from_slice(b",\"entryId\":");
        out.extend_from_slice(&to_go_json(id));
        out.extend_from_slice(b",\"event\":");
        if ctx.raw {
            let data = base64::engine::general_purpose::STANDARD.encode(&r.delivery.data);
            out.extend_from_slice(&to_go_json(&data));
        } else {
            out.extend_from_slice(&r.body);
        }
        out.extend_from_slice(b",\"metadata\":");
        out.extend_from_slice(&to_go_json(&EntryMetadata(&r.delivery.metadata)));
        out.push(b'}');
    }
    out.extend_from_slice(b"],");
    let mut rest = Map::new();
    rest.insert("id".into(), uuid::Uuid::new_v4().to_string().into());
    rest.insert("type".into(), "com.dapr.event.sent.bulk".into());
    rest.insert("topic".into(), ctx.sub.topic.clone().into());
    rest.insert("pubsubname".into(), ctx.sub.pubsubname.clone().into());
    rest.insert(
        "metadata".into(),
        json!({"pubsubName": ctx.sub.pubsubname.clone()}),
    );
    // `{"id":...}` without its opening brace closes the request.
    out.extend_from_slice(&to_go_json(&rest)[1..]);
    Bytes::from(out)
}

/// An entry's metadata: the message's, without `pubsubName` (the request
/// carries it once), serialised without copying the map.
struct EntryMetadata<'a>(&'a BTreeMap<String, String>);

impl serde::Serialize for EntryMetadata<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().filter(|(k, _)| k.as_str() != "pubsubName"))
    }
}

/// Applies the app's answer to the pending entries. Returns the entries
/// that succeeded and those dropped; what stays in `entries` is retried.
/// `Err` when the whole batch is to be retried (non-2xx, non-JSON body).
/// A 404 drops every entry.
fn read_answer(
    status: u16,
    body: &[u8],
    entries: &mut BTreeMap<String, Ready>,
) -> Result<(Vec<Ready>, Vec<Ready>), String> {
    if status == 404 {
        return Ok((vec![], std::mem::take(entries).into_values().collect()));
    }
    if !(200..300).contains(&status) {
        return Err(format!("app answered status {status}"));
    }
    let answer: BulkAnswer = serde_json::from_slice(body)
        .map_err(|_| "the app's bulk answer is not JSON with statuses".to_string())?;
    let (mut ok, mut dropped) = (vec![], vec![]);
    for s in answer.statuses {
        let target = match s.status.as_str() {
            "SUCCESS" => &mut ok,
            "DROP" => &mut dropped,
            _ => continue,
        };
        match entries.remove(&s.entry_id) {
            Some(r) => target.push(r),
            None => {
                tracing::warn!(entry_id = %s.entry_id, "the app answered for an unknown bulk entry; ignored")
            }
        }
    }
    Ok((ok, dropped))
}

#[cfg(test)]
mod tests {
    use super::{batches_in_flight, window, DeliveryOrder, MAX_WINDOW};

    #[test]
    fn bulk_window_counts_batches_only_without_ordering() {
        // Unordered: maxInFlight batches, bounded in messages.
        assert_eq!(window(DeliveryOrder::None, 4, Some(100)), 400);
        assert_eq!(batches_in_flight(DeliveryOrder::None, 4, Some(100)), 4);
        assert_eq!(window(DeliveryOrder::None, 64, None), MAX_WINDOW);
        assert_eq!(batches_in_flight(DeliveryOrder::None, 64, None), 10);
        // A batch larger than the bound still fits whole.
        assert_eq!(window(DeliveryOrder::None, 64, Some(5000)), 5000);
        assert_eq!(batches_in_flight(DeliveryOrder::None, 64, Some(5000)), 1);
        // Ordered: one batch at a time, the window at least a batch.
        for order in [DeliveryOrder::Partition, DeliveryOrder::Key] {
            assert_eq!(window(order, 64, Some(100)), 100);
            assert_eq!(window(order, 64, Some(10)), 64);
            assert_eq!(batches_in_flight(order, 64, Some(10)), 1);
        }
    }
}
