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
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Map};
use tokio::sync::watch;

use super::context::{BulkRequest, Ready, Sink};
use super::dead_letter::{finish_dropped, Why};
use super::idempotency::{idempotency_key, mark_finished, observe_store};
use super::machine::{before_delivery, Before, Claimed};
use super::prepare::prepare;
use super::retry::Backoff;
use super::retry::{self, Attempt, RetryEnd};
use super::SubCtx;
use crate::broker::{Delivery, DeliveryStream};
use crate::config::DeliveryOrder;
use crate::store::{Claim, Finish, Key, Store};
use crate::telemetry::metrics::metrics;

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

/// One message of a batch, with the key claimed for it (with a store).
struct Entry {
    ready: Ready,
    key: Option<Key>,
    /// Its exported `deliver` span, when tracing is configured.
    span: Option<crate::telemetry::otel::Span>,
}

impl Entry {
    fn new(ready: Ready, key: Option<Key>) -> Self {
        Self {
            ready,
            key,
            span: None,
        }
    }

    /// Records how the entry ended on its span.
    fn ended(&mut self, outcome: &str) {
        if let Some(s) = self.span.as_mut() {
            s.outcome(outcome, outcome == "success");
        }
    }
}

/// Delivers a batch: each message is prepared (expired and unroutable ones
/// are finished on their own), claimed in the idempotency store (one
/// batched claim: duplicates are acked without delivery), the rest grouped
/// per route path, one bulk request per path, the paths one after another.
pub async fn process_batch(ctx: &SubCtx, batch: Vec<Delivery>, stop: watch::Receiver<bool>) {
    let mut ready = Vec::with_capacity(batch.len());
    for d in batch {
        if let Some(r) = prepare(ctx, d, stop.clone()).await {
            ready.push(r);
        }
    }
    let Some(store) = ctx.store.clone() else {
        let entries = ready
            .into_iter()
            .map(|ready| Entry::new(ready, None))
            .collect();
        return deliver_claimed(ctx, entries, stop).await;
    };
    // Copies of one event in one batch: the first is claimed and
    // delivered; the others wait for it to finish, then are claimed in
    // turn (a duplicate then, unless the first was given back).
    // Each key is computed once (a SHA-256 per message).
    let mut todo: Vec<(Ready, Option<Key>)> = ready
        .into_iter()
        .map(|r| {
            let k = idempotency_key(ctx, &r);
            (r, k)
        })
        .collect();
    while !todo.is_empty() {
        let (now, later) = first_copies(todo);
        match claim_all(ctx, store.as_ref(), now, stop.clone()).await {
            Some(entries) => deliver_claimed(ctx, entries, stop.clone()).await,
            None => return,
        }
        todo = later;
    }
}

/// Messages of a batch with their idempotency keys.
type Keyed = Vec<(Ready, Option<Key>)>;

/// Splits off the later copies of a key that appears more than once.
fn first_copies(ready: Keyed) -> (Keyed, Keyed) {
    let mut seen = std::collections::HashSet::new();
    ready
        .into_iter()
        .partition(|(_, k)| k.as_ref().is_none_or(|k| seen.insert(k.msg_key.clone())))
}

/// Delivers claimed (or unclaimed) entries, grouped per route path.
async fn deliver_claimed(ctx: &SubCtx, entries: Vec<Entry>, stop: watch::Receiver<bool>) {
    // A panic from here on drops the batch unfinished: its claims go back,
    // so the redelivered copies are not `Busy` for the life of the process
    // (releasing a key already marked does nothing).
    let _guard = ctx.store.clone().map(|store| ReleaseOnDrop {
        store,
        keys: entries.iter().filter_map(|e| e.key.clone()).collect(),
        armed: true,
    });
    let mut by_path: BTreeMap<String, Vec<Entry>> = BTreeMap::new();
    for e in entries {
        by_path.entry(e.ready.path.clone()).or_default().push(e);
    }
    for (path, entries) in by_path {
        deliver_group(ctx, path, entries, stop.clone()).await;
    }
    if let Some(mut g) = _guard {
        g.armed = false;
    }
}

/// Gives a batch's claims back when dropped armed (a panic).
struct ReleaseOnDrop {
    store: Arc<dyn Store>,
    keys: Vec<Key>,
    armed: bool,
}

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        if !self.armed || self.keys.is_empty() {
            return;
        }
        tracing::error!(
            keys = self.keys.len(),
            "bulk delivery cut off; its claims are released and the messages left for redelivery"
        );
        let (store, keys) = (self.store.clone(), std::mem::take(&mut self.keys));
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { store.release(keys).await });
        }
    }
}

/// Claims the keys of a batch in one call, as the single path claims one:
/// a done key is a duplicate (acked, counted), a key claimed more often
/// than the retry policy allows is dead-lettered, a key another sidecar
/// holds is asked again every second, and while the store is down the
/// whole batch waits. `None` at shutdown (what was claimed is released,
/// nothing is acked).
async fn claim_all(
    ctx: &SubCtx,
    store: &dyn Store,
    ready: Keyed,
    mut stop: watch::Receiver<bool>,
) -> Option<Vec<Entry>> {
    let mut out = Vec::with_capacity(ready.len());
    let mut waiting = vec![];
    for (r, k) in ready {
        match k {
            Some(k) => waiting.push((r, k)),
            None => out.push(Entry::new(r, None)),
        }
    }
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    while !waiting.is_empty() {
        let keys: Vec<Key> = waiting.iter().map(|(_, k)| k.clone()).collect();
        let started = std::time::Instant::now();
        let answer = store.claim(keys).await;
        observe_store(ctx, "claim", started);
        let wait = match answer {
            Ok(claims) => {
                let mut busy = vec![];
                for ((r, k), c) in waiting.drain(..).zip(claims) {
                    let claimed = match c {
                        Claim::Busy => {
                            busy.push((r, k));
                            continue;
                        }
                        Claim::Done => Claimed::Duplicate,
                        Claim::Owned { attempts } => Claimed::Owned { attempts },
                    };
                    match before_delivery(claimed, ctx.policy.max_retries) {
                        Before::AckDuplicate => {
                            ctx.count(&metrics().duplicates_suppressed);
                            let _ = r.delivery.ack.ack().await;
                        }
                        Before::DeadLetterOverclaimed => {
                            tracing::warn!(topic = %ctx.sub.topic, key = %k.header(), ?claimed,
                                "claimed more times than the retry policy allows (earlier attempts were cut short); dead-lettering");
                            let attempts = match claimed {
                                Claimed::Owned { attempts } => attempts,
                                _ => 0,
                            };
                            let why = Why::new("its deliveries were cut short (crashes) more often than the retry policy allows", attempts);
                            finish_dropped(
                                ctx,
                                r.delivery,
                                stop.clone(),
                                Some((store, &k, Finish::Dead)),
                                why,
                            )
                            .await;
                        }
                        Before::Deliver { .. } | Before::Leave => out.push(Entry::new(r, Some(k))),
                    }
                }
                waiting = busy;
                if waiting.is_empty() {
                    break;
                }
                Duration::from_secs(1)
            }
            Err(e) => {
                tracing::warn!(topic = %ctx.sub.topic, error = %e, "idempotency store unavailable; delivery paused");
                backoff.next_delay()
            }
        };
        let stopped = tokio::select! {
            _ = tokio::time::sleep(wait) => false,
            _ = stop.wait_for(|s| *s) => true,
        };
        if stopped {
            let held: Vec<Key> = out.iter().filter_map(|e| e.key.clone()).collect();
            let _ = tokio::time::timeout(Duration::from_secs(1), store.release(held)).await;
            return None;
        }
    }
    Some(out)
}

/// What is left of a group between attempts.
struct Pending {
    entries: BTreeMap<String, Entry>,
}

async fn deliver_group(
    ctx: &SubCtx,
    path: String,
    entries: Vec<Entry>,
    stop: watch::Receiver<bool>,
) {
    let store = ctx.store.as_deref();
    let pending = Mutex::new(Pending {
        entries: entries
            .into_iter()
            .map(|mut e| {
                e.span = super::process::deliver_span(ctx, &e.ready);
                (uuid::Uuid::new_v4().to_string(), e)
            })
            .collect(),
    });
    let lock = || {
        pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    };
    let mut retry_stop = stop.clone();
    // A batch is ours while every entry left is (no partition revoked, no
    // channel lost); otherwise it goes back to the broker whole.
    let owned = || lock().entries.values().all(|e| e.ready.delivery.is_owned());
    let attempts = std::sync::atomic::AtomicU32::new(0);
    let end = retry::run(&ctx.policy, &mut retry_stop, &owned, || async {
        let request = {
            let p = lock();
            if attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed) == 0 {
                // The claims' deliveries reach the app now: they count
                // toward the over-claim limit (a claim alone does not).
                if let Some(store) = store {
                    let keys: Vec<Key> = p.entries.values().filter_map(|e| e.key.clone()).collect();
                    if !keys.is_empty() {
                        drop(store.started(keys));
                    }
                }
            }
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
        let (succeeded, dropped) = match read_answer(status, &body, &mut lock().entries) {
            Ok(done) => done,
            Err(reason) => {
                return Attempt::Failed {
                    status: Some(status),
                    reason,
                }
            }
        };
        // Marked done before the acks, as a single delivery.
        if let Some(store) = store {
            let keys: Vec<Key> = succeeded.iter().filter_map(|e| e.key.clone()).collect();
            if !mark_finished(ctx, store, &keys, Finish::Done, stop.clone()).await {
                return Attempt::Failed {
                    status: Some(status),
                    reason: "shutdown before the keys were marked".into(),
                };
            }
        }
        for mut e in succeeded {
            e.ended("success");
            let _ = e.ready.delivery.ack.ack().await;
        }
        // An app DROP: dead, as a single delivery's (a replay reaches the
        // app again).
        let tried = attempts.load(std::sync::atomic::Ordering::Relaxed);
        for mut e in dropped {
            e.ended("drop");
            let mark = store.zip(e.key.as_ref()).map(|(s, k)| (s, k, Finish::Dead));
            let why = Why::new("the app answered DROP", tried);
            finish_dropped(ctx, e.ready.delivery, stop.clone(), mark, why).await;
        }
        let left = lock().entries.len();
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
    let mut left = std::mem::take(&mut lock().entries);
    match end {
        RetryEnd::Done(()) => {}
        RetryEnd::Exhausted(reason) => {
            tracing::warn!(topic = %ctx.sub.topic, %reason, entries = left.len(), "bulk retries exhausted");
            let tried = attempts.load(std::sync::atomic::Ordering::Relaxed);
            for (_, mut e) in left {
                e.ended("exhausted");
                let mark = store.zip(e.key.as_ref()).map(|(s, k)| (s, k, Finish::Dead));
                let why = Why::new(reason.clone(), tried);
                finish_dropped(ctx, e.ready.delivery, stop.clone(), mark, why).await;
            }
        }
        // Shutdown, or an entry no longer ours: the entries stay
        // unacknowledged for redelivery, their claims given back at once.
        RetryEnd::Stopped | RetryEnd::Revoked => {
            for e in left.values_mut() {
                e.ended(if matches!(end, RetryEnd::Stopped) {
                    "stopped"
                } else {
                    "revoked"
                });
            }
            if let Some(store) = store {
                let keys: Vec<Key> = left.values().filter_map(|e| e.key.clone()).collect();
                if !keys.is_empty() {
                    let _ = tokio::time::timeout(Duration::from_secs(1), store.release(keys)).await;
                }
            }
        }
    }
}

/// The bulk request for the pending entries, in the sink's form.
fn request_of(ctx: &SubCtx, path: &str, entries: &BTreeMap<String, Entry>) -> BulkRequest {
    match ctx.sink {
        Sink::GrpcApp(_) => BulkRequest::Grpc(super::app_grpc::bulk_request(
            &ctx.sub.topic,
            &ctx.sub.pubsubname,
            path,
            ctx.raw,
            entries.iter().map(|(id, e)| super::app_grpc::BulkEntry {
                id,
                event: &e.ready.event,
                body: &e.ready.body,
                data: &e.ready.delivery.data,
                metadata: &e.ready.delivery.metadata,
            }),
        )),
        Sink::App(_) | Sink::Stream(_) => BulkRequest::Http(request_body(ctx, entries)),
    }
}

/// The Dapr bulk request for the pending entries. Written by hand so that
/// each CloudEvent goes in as the broker's bytes (already checked to be a
/// JSON object by `prepare`) instead of being parsed into a map again and
/// re-serialised; keys in Go's sorted order, as daprd writes them.
fn request_body(ctx: &SubCtx, entries: &BTreeMap<String, Entry>) -> Bytes {
    use crate::util::to_go_json;
    let size: usize = entries.values().map(|e| e.ready.body.len() + 256).sum();
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
    for (n, (id, r)) in entries.iter().map(|(id, e)| (id, &e.ready)).enumerate() {
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
    entries: &mut BTreeMap<String, Entry>,
) -> Result<(Vec<Entry>, Vec<Entry>), String> {
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
