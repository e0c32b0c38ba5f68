//! The delivery engine: for each subscription, consume → decode → expired? →
//! route → POST to the app → outcome → ack, retry or dead-letter.
//!
//! One retry owner, the sidecar: without a Resiliency policy a failing
//! message is retried with the default backoff (1 s, x2, 60 s cap, 5
//! retries), then dead-lettered to the subscription's `deadLetterTopic` or
//! `{topic}.dlq`, and acked only once that publish succeeded. Shutdown is
//! never "retries exhausted": a message interrupted by it stays unacked.

mod app;
mod breaker;
mod bulk;
pub mod health;
pub mod outcome;
pub mod retry;
pub mod routing;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::{watch, Mutex, Semaphore};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::broker::{Delivery, Message, SubscribeRequest};
use crate::cloudevents::{self, Envelope};
use crate::config::subscription::ProgrammaticSubscription;
use crate::config::{DeliveryOrder, SubscriptionSpec};
use crate::runtime::{PubsubEntry, Shared};
use crate::store::{Claim, Finish, Key, Store};
use crate::telemetry::metrics::metrics;
use crate::telemetry::trace::TraceParent;
use crate::util::parse_go_bool;
pub use app::AppClient;
use outcome::Outcome;
use retry::{Backoff, RetryEnd, RetryPolicy};

/// Fetches the app's programmatic subscriptions, retrying with backoff until
/// the app answers (Dapr gives up after 10 s; a slow app then has none).
/// 404 means none. Returns empty when `stopping` fires first.
pub async fn discover(
    shared: &Shared,
    mut stopping: watch::Receiver<bool>,
) -> Vec<SubscriptionSpec> {
    let Some(client) = app_client(shared) else {
        return vec![];
    };
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    loop {
        match client.get_subscriptions().await {
            Some((200, body)) => {
                return match serde_json::from_slice::<Vec<ProgrammaticSubscription>>(&body) {
                    Ok(items) => items
                        .into_iter()
                        .filter_map(|i| {
                            let (p, t) = (i.pubsubname.clone(), i.topic.clone());
                            let spec = i.into_spec();
                            if spec.is_none() {
                                tracing::warn!(pubsub = %p, topic = %t, "programmatic subscription has no route; ignored");
                            }
                            spec
                        })
                        .collect(),
                    Err(e) => {
                        tracing::error!(error = %e, "the app's /dapr/subscribe answer is not a list of subscriptions");
                        vec![]
                    }
                };
            }
            Some((404, _)) => return vec![],
            Some((status, _)) => {
                tracing::error!(
                    status,
                    "the app's /dapr/subscribe failed; no programmatic subscriptions"
                );
                return vec![];
            }
            None => {
                tokio::select! {
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                    _ = stopping.wait_for(|s| *s) => return vec![],
                }
            }
        }
    }
}

fn app_client(shared: &Shared) -> Option<AppClient> {
    let s = &shared.settings;
    Some(AppClient::new(
        &s.app_channel_address,
        s.app_port?,
        &s.app_id,
        s.app_api_token.clone(),
    ))
}

/// Runs the subscriptions; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
    consumers: Mutex<JoinSet<()>>,
    app_limit: Option<Arc<Semaphore>>,
}

impl Engine {
    /// An engine that stops consuming when `stop` turns true.
    pub fn new(shared: Arc<Shared>, stop: watch::Receiver<bool>) -> Self {
        let app_limit = shared
            .settings
            .app_max_concurrency
            .map(|n| Arc::new(Semaphore::new(n.max(1))));
        Self {
            inner: Arc::new(Inner {
                shared,
                stop,
                consumers: Mutex::new(JoinSet::new()),
                app_limit,
            }),
        }
    }

    /// A receiver that turns true at shutdown.
    pub fn stopping(&self) -> watch::Receiver<bool> {
        self.inner.stop.clone()
    }

    /// Starts every subscription that scoping allows; records them for the
    /// metadata API.
    pub async fn start(&self, subs: Vec<SubscriptionSpec>) {
        let shared = &self.inner.shared;
        let Some(client) = app_client(shared) else {
            return;
        };
        let mut active = Vec::new();
        let mut breakers = std::collections::HashMap::new();
        for sub in subs {
            let Some(entry) = shared.pubsubs.get(&sub.pubsubname) else {
                tracing::error!(pubsub = %sub.pubsubname, topic = %sub.topic, "subscription names an unknown pubsub; not started");
                continue;
            };
            if !entry
                .component
                .scoping
                .may_subscribe(&shared.settings.app_id, &sub.topic)
            {
                shared
                    .denied
                    .write()
                    .expect("denied lock")
                    .push(sub.clone());
                tracing::error!(pubsub = %sub.pubsubname, topic = %sub.topic,
                    "subscription to topic '{}' on pubsub '{}' is not allowed", sub.topic, sub.pubsubname);
                continue;
            }
            let inbound = inbound_policy(shared, &sub.pubsubname);
            let breaker = inbound.breaker.as_ref().and_then(|(key, cfg)| {
                breakers
                    .entry(key.clone())
                    .or_insert_with(|| breaker::Breaker::new(key, cfg).map(Arc::new))
                    .clone()
            });
            let router = match routing::Router::new(&sub.rules) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(pubsub = %sub.pubsubname, topic = %sub.topic, error = %e, "subscription not started");
                    continue;
                }
            };
            // The pubsub's idempotency store, unless the subscription opts out.
            let store = entry
                .component
                .idempotency_store
                .as_ref()
                .filter(|_| {
                    sub.metadata
                        .get("idempotency")
                        .and_then(|v| parse_go_bool(v))
                        .unwrap_or(true)
                })
                .and_then(|name| shared.stores.get(name).cloned());
            let md = &entry.component.metadata;
            let req = SubscribeRequest {
                topic: entry.component.broker_topic(&sub.topic),
                group: md
                    .get("consumerGroup")
                    .or_else(|| md.get("consumerID"))
                    .cloned()
                    .unwrap_or_else(|| shared.settings.app_id.clone()),
                metadata: sub.metadata.clone(),
                // A bulk subscription needs whole batches handed out at once.
                window: if sub.bulk.enabled {
                    bulk::window(
                        entry.component.delivery_order,
                        entry.component.max_in_flight,
                        sub.bulk.max_messages_count,
                    )
                } else if store.is_some() {
                    entry.component.max_in_flight * STORE_WINDOW
                } else {
                    entry.component.max_in_flight
                },
                dead_letter_topic: sub
                    .dead_letter_topic
                    .clone()
                    .or_else(|| entry.component.default_dead_letter_topic(&sub.topic))
                    .map(|t| entry.component.broker_topic(&t)),
            };
            match entry.broker.subscribe(req).await {
                Ok(stream) => {
                    tracing::info!(pubsub = %sub.pubsubname, topic = %sub.topic, "subscription started");
                    let ctx = Arc::new(SubCtx {
                        router,
                        policy: inbound.retry,
                        timeout: inbound.timeout,
                        breaker,
                        sub: sub.clone(),
                        shared: shared.clone(),
                        client: client.clone(),
                        app_limit: self.inner.app_limit.clone(),
                        raw: sub
                            .metadata
                            .get("rawPayload")
                            .and_then(|v| parse_go_bool(v))
                            .unwrap_or(false),
                        store,
                    });
                    self.inner.consumers.lock().await.spawn(consume(
                        ctx,
                        stream,
                        self.inner.stop.clone(),
                    ));
                    active.push(sub);
                }
                Err(e) => {
                    tracing::error!(pubsub = %sub.pubsubname, topic = %sub.topic, error = %e, "subscribe failed")
                }
            }
        }
        *shared.subscriptions.write().expect("subscriptions lock") = active;
    }

    /// Waits for in-flight deliveries to finish, at most `grace`.
    pub async fn drain(&self, grace: Duration) {
        let mut set = self.inner.consumers.lock().await;
        let all = async { while set.join_next().await.is_some() {} };
        if tokio::time::timeout(grace, all).await.is_err() {
            tracing::warn!(
                "grace period over; unfinished deliveries are left unacknowledged for redelivery"
            );
        }
    }
}

/// With an idempotency store, the broker hands out this many times
/// `maxInFlight` per lane, while the app still gets at most `maxInFlight`
/// at once: the rest are being claimed or marked in the store. Without it,
/// the store's round trips would sit inside the app's window (by Little's
/// law, claim and mark latency cut throughput in proportion).
const STORE_WINDOW: usize = 8;

struct SubCtx {
    sub: SubscriptionSpec,
    policy: RetryPolicy,
    timeout: Option<Duration>,
    router: routing::Router,
    shared: Arc<Shared>,
    client: AppClient,
    app_limit: Option<Arc<Semaphore>>,
    /// The inbound target's circuit breaker, shared with its other users.
    breaker: Option<Arc<breaker::Breaker>>,
    /// `rawPayload` subscription metadata.
    raw: bool,
    /// The pubsub's idempotency store, unless the subscription opts out.
    store: Option<Arc<dyn Store>>,
}

impl SubCtx {
    fn entry(&self) -> &PubsubEntry {
        &self.shared.pubsubs[&self.sub.pubsubname]
    }
}

async fn consume(
    ctx: Arc<SubCtx>,
    mut stream: crate::broker::DeliveryStream,
    mut stop: watch::Receiver<bool>,
) {
    if ctx.sub.bulk.enabled {
        let comp = &ctx.entry().component;
        let slots = Arc::new(Semaphore::new(bulk::batches_in_flight(
            comp.delivery_order,
            comp.max_in_flight,
            ctx.sub.bulk.max_messages_count,
        )));
        let mut running = JoinSet::new();
        loop {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                break;
            };
            let batch = bulk::next_batch(&ctx, &mut stream, &mut stop).await;
            // An unhealthy app: hold the batch until it recovers; at
            // shutdown the batch is dropped unfinished (redelivered).
            if batch.is_empty() || !health::until_healthy(&ctx.shared, &mut stop).await {
                break;
            }
            let (ctx, stop) = (ctx.clone(), stop.clone());
            running.spawn(async move {
                bulk::process_batch(&ctx, batch, stop).await;
                drop(slot);
            });
            while running.try_join_next().is_some() {}
        }
        while running.join_next().await.is_some() {}
        return;
    }
    // The broker hands out at most `maxInFlight` unfinished deliveries per
    // lane; the engine only orders them. Each message waits for its
    // predecessor in its chain (the lane for `partition`, the key for `key`),
    // so the receive loop never blocks and a slow lane never holds up another.
    let comp = &ctx.entry().component;
    let order = comp.delivery_order;
    let mut chains = Chains::default();
    // With a store the broker window is wider than the app's (STORE_WINDOW):
    // each lane's app calls are limited to `maxInFlight` here.
    let mut lanes: HashMap<i32, Arc<Semaphore>> = HashMap::new();
    let mut tasks = JoinSet::new();
    loop {
        let d = tokio::select! {
            d = stream.recv() => match d { Some(d) => d, None => break },
            _ = stop.wait_for(|s| *s) => break,
        };
        // An unhealthy app: hold the message until it recovers; at
        // shutdown it is dropped unfinished (redelivered).
        if !health::until_healthy(&ctx.shared, &mut stop).await {
            break;
        }
        let chain = match order {
            DeliveryOrder::Partition => Some(Chain::Lane(d.lane)),
            DeliveryOrder::Key => ordering_key(&d.metadata).map(Chain::Key),
            DeliveryOrder::None => None,
        };
        let (previous, done) = chains.enqueue(chain, comp.max_in_flight);
        let lane = ctx.store.as_ref().map(|_| {
            lanes
                .entry(d.lane)
                .or_insert_with(|| Arc::new(Semaphore::new(comp.max_in_flight.max(1))))
                .clone()
        });
        let ctx = ctx.clone();
        let stop = stop.clone();
        tasks.spawn(async move {
            if let Some(prev) = previous {
                // Sender dropped or sent: either way the predecessor is finished.
                let _ = prev.await;
            }
            // A revoked message is left to its next owner.
            if d.is_owned() && !*stop.borrow() {
                let span = tracing::info_span!("deliver", pubsub = %ctx.sub.pubsubname,
                    topic = %ctx.sub.topic, outcome = tracing::field::Empty);
                process(&ctx, d, lane, stop).instrument(span).await;
            }
            drop(done);
        });
        while tasks.try_join_next().is_some() {}
    }
    drop(stream);
    while tasks.join_next().await.is_some() {}
}

/// A message that passed decoding, expiry and routing: ready for the app.
struct Ready {
    /// The app path the routing chose.
    path: String,
    /// The HTTP body: the broker bytes, or the raw-payload envelope.
    body: Bytes,
    /// The CloudEvent as a map.
    event: Envelope,
    /// Message metadata plus `content-type` and `pubsubName` (sent as headers).
    metadata: BTreeMap<String, String>,
    /// W3C trace parent for the delivery, from the event.
    traceparent: Option<String>,
    /// The broker message.
    delivery: Delivery,
}

/// Decodes, checks expiry and routes one delivery. A message that cannot be
/// delivered (not a CloudEvent, expired, no route) is finished here (dead
/// letter or ack) and `None` is returned.
async fn prepare(ctx: &SubCtx, d: Delivery, mut stop: watch::Receiver<bool>) -> Option<Ready> {
    let sub = &ctx.sub;
    let mut metadata = d.metadata.clone();
    if let Some(ct) = &d.content_type {
        metadata.insert("content-type".into(), ct.clone());
    }
    metadata.insert("pubsubName".into(), sub.pubsubname.clone());
    let (body, event) = if ctx.raw {
        let ev = cloudevents::raw_payload_envelope(&sub.pubsubname, &sub.topic, &d.data, &metadata);
        (Bytes::from(crate::util::to_go_json(&ev)), Some(ev))
    } else {
        (
            d.data.clone(),
            serde_json::from_slice::<Envelope>(&d.data).ok(),
        )
    };
    let Some(event) = event else {
        tracing::warn!(topic = %sub.topic, "message is not a JSON CloudEvent; dead-lettering");
        finish_dropped(ctx, d, stop, None).await;
        return None;
    };
    // A dead letter keeps its `expiration`; it is delivered anyway, since
    // the dead-letter topic exists so that it can be inspected.
    if !d.metadata.contains_key(DEAD_LETTER_FROM) && cloudevents::has_expired(&event) {
        tracing::warn!(topic = %sub.topic, "dropping expired pub/sub event");
        finish_dropped(ctx, d, stop, None).await;
        return None;
    }
    let path = match ctx.router.route(&event) {
        Ok(Some(p)) => p.to_owned(),
        Ok(None) => {
            tracing::debug!(topic = %sub.topic, "no route matched; dropping");
            ctx.record_ingress("drop", "success", None);
            finish_dropped(ctx, d, stop, None).await;
            return None;
        }
        Err(e) if dead_letter_topic(ctx).is_some() => {
            tracing::warn!(topic = %sub.topic, error = %e, "routing failed; dead-lettering");
            finish_dropped(ctx, d, stop, None).await;
            return None;
        }
        Err(e) => {
            // Dapr returns the error to the broker (redelivery); pause first
            // so a bad rule does not spin.
            tracing::error!(topic = %sub.topic, error = %e, "routing failed and no dead-letter topic; will redeliver");
            tokio::select! {
                _ = tokio::time::sleep(retry::DEFAULT_INITIAL) => {}
                _ = stop.wait_for(|s| *s) => return None,
            }
            let _ = d.ack.nack().await;
            return None;
        }
    };
    let traceparent = event
        .get("traceparent")
        .or_else(|| event.get("traceid"))
        .and_then(Value::as_str)
        .map(|tp| TraceParent::child_of(Some(tp)).to_string());
    Some(Ready {
        path,
        body,
        event,
        metadata,
        traceparent,
        delivery: d,
    })
}

impl SubCtx {
    /// One call to the app under `--app-max-concurrency`, the resiliency
    /// timeout and the circuit breaker; `None` is a transport error, a
    /// timeout or an open breaker. `succeeded` tells the breaker whether
    /// the answer counts as a success.
    async fn call_app<F: std::future::Future<Output = app::AppAnswer>>(
        &self,
        call: F,
        succeeded: impl Fn(&app::AppAnswer) -> bool,
    ) -> app::AppAnswer {
        if let Some(b) = &self.breaker {
            if b.admit() == breaker::Admit::No {
                tracing::debug!(topic = %self.sub.topic, "circuit breaker open; app not called");
                return None;
            }
        }
        let answer = {
            let _permit = match &self.app_limit {
                Some(s) => Some(s.clone().acquire_owned().await.expect("semaphore open")),
                None => None,
            };
            match self.timeout {
                Some(t) => tokio::time::timeout(t, call).await.unwrap_or(None),
                None => call.await,
            }
        };
        if let Some(b) = &self.breaker {
            b.record(succeeded(&answer));
        }
        answer
    }
}

/// Keeps `perch_inflight` up to date for one delivery.
struct InFlight<'a>(&'a SubCtx);

impl<'a> InFlight<'a> {
    fn new(ctx: &'a SubCtx) -> Self {
        metrics()
            .inflight
            .with_label_values(&[&ctx.sub.pubsubname, &ctx.sub.topic])
            .inc();
        Self(ctx)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        metrics()
            .inflight
            .with_label_values(&[&self.0.sub.pubsubname, &self.0.sub.topic])
            .dec();
    }
}

impl SubCtx {
    /// Records one delivery outcome with Dapr's ingress labels.
    fn record_ingress(&self, process_status: &str, status: &str, elapsed: Option<Duration>) {
        let labels = [
            self.shared.settings.app_id.as_str(),
            self.sub.pubsubname.as_str(),
            crate::telemetry::namespace(),
            process_status,
            status,
            self.sub.topic.as_str(),
        ];
        metrics().ingress_count.with_label_values(&labels).inc();
        if let Some(e) = elapsed {
            metrics()
                .ingress_latencies
                .with_label_values(&labels)
                .observe(e.as_secs_f64() * 1000.0);
            metrics()
                .app_latency
                .with_label_values(&[&self.sub.pubsubname, &self.sub.topic])
                .observe(e.as_secs_f64());
        }
    }

    fn count(&self, counter: &prometheus::IntCounterVec) {
        counter
            .with_label_values(&[&self.sub.pubsubname, &self.sub.topic])
            .inc();
    }
}

async fn process(
    ctx: &SubCtx,
    d: Delivery,
    lane: Option<Arc<Semaphore>>,
    stop: watch::Receiver<bool>,
) {
    let _inflight = InFlight::new(ctx);
    let Some(mut ready) = prepare(ctx, d, stop.clone()).await else {
        return;
    };
    let claim = match (&ctx.store, idempotency_key(ctx, &ready)) {
        (Some(store), Some(key)) => {
            let mut s = stop.clone();
            match claim(ctx, store.as_ref(), &key, &mut s).await {
                Claimed::Duplicate => {
                    ctx.count(&metrics().duplicates_suppressed);
                    tracing::debug!(topic = %ctx.sub.topic, key = %key.header(), "duplicate event; acknowledged without delivery");
                    let _ = ready.delivery.ack.ack().await;
                    return;
                }
                Claimed::Stopped => return,
                Claimed::Owned { attempts } => {
                    let limit = ctx.policy.max_retries.map(|r| r + 1);
                    if limit.is_some_and(|l| attempts > l) {
                        tracing::warn!(topic = %ctx.sub.topic, key = %key.header(), attempts,
                            "claimed more times than the retry policy allows (earlier attempts were cut short); dead-lettering");
                        let mark = Some((store.as_ref(), &key, Finish::Dead));
                        return finish_dropped(ctx, ready.delivery, stop, mark).await;
                    }
                    ready.metadata.insert(IDEMPOTENCY_KEY.into(), key.header());
                    Some((store.clone(), key))
                }
            }
        }
        _ => None,
    };
    // A place in the lane's app window, held until the message is finished
    // (marked, then acknowledged or dead-lettered): at most `maxInFlight`
    // per lane are delivered and not yet marked, which bounds the duplicates
    // a crash can cause. Only the claims run ahead of it.
    let _permit = match lane {
        Some(lane) => Some(lane.acquire_owned().await.expect("lane semaphore open")),
        None => None,
    };
    let mut retry_stop = stop.clone();
    let attempts = std::sync::atomic::AtomicU32::new(0);
    let end = retry::run(&ctx.policy, &mut retry_stop, || async {
        if attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed) > 0 {
            ctx.count(&metrics().redeliveries);
        }
        let classify = |answer: &app::AppAnswer| match answer {
            Some((s, body)) => outcome::classify(Some(*s), body),
            None => outcome::classify(None, b""),
        };
        let started = std::time::Instant::now();
        let answer = ctx
            .call_app(
                ctx.client.deliver(
                    &ready.path,
                    ready.body.clone(),
                    &ready.metadata,
                    ready.traceparent.as_deref(),
                ),
                |a| !matches!(classify(a), Outcome::Retry(_)),
            )
            .await;
        let status = answer.as_ref().map(|(s, _)| *s);
        let outcome = classify(&answer);
        // Dapr's labels: an app DROP is drop/success, a 404 drop/drop.
        let (process_status, status_label) = match (&outcome, status) {
            (Outcome::Success, _) => ("success", "success"),
            (Outcome::Drop(_), Some(404)) => ("drop", "drop"),
            (Outcome::Drop(_), _) => ("drop", "success"),
            (Outcome::Retry(_), _) => ("retry", "retry"),
        };
        let elapsed = answer.as_ref().map(|_| started.elapsed());
        ctx.record_ingress(process_status, status_label, elapsed);
        outcome.into_attempt(status)
    })
    .await;
    let d = ready.delivery;
    tracing::Span::current().record(
        "outcome",
        match &end {
            RetryEnd::Done(Outcome::Success) => "success",
            RetryEnd::Done(_) => "drop",
            RetryEnd::Exhausted(_) => "exhausted",
            RetryEnd::Stopped => "stopped",
        },
    );
    let mark = claim
        .as_ref()
        .map(|(store, key)| (store.as_ref(), key, Finish::Done));
    match end {
        RetryEnd::Done(Outcome::Success) => {
            if let Some((store, key, how)) = mark {
                if !mark_finished(ctx, store, key, how, stop).await {
                    return;
                }
            }
            let _ = d.ack.ack().await;
        }
        RetryEnd::Done(outcome) => {
            tracing::warn!(topic = %ctx.sub.topic, ?outcome, "message dropped by the app");
            finish_dropped(ctx, d, stop, mark).await
        }
        RetryEnd::Exhausted(reason) => {
            tracing::warn!(topic = %ctx.sub.topic, %reason, "retries exhausted");
            let mark = claim
                .as_ref()
                .map(|(store, key)| (store.as_ref(), key, Finish::Dead));
            finish_dropped(ctx, d, stop, mark).await
        }
        // Shutdown is not exhaustion: leave the message unacked, and give
        // the claim back so another sidecar may take it at once.
        RetryEnd::Stopped => {
            if let Some((store, key)) = claim {
                let _ =
                    tokio::time::timeout(Duration::from_secs(1), store.release(vec![key])).await;
            }
        }
    }
}

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
fn idempotency_key(ctx: &SubCtx, ready: &Ready) -> Option<Key> {
    let subscriber = format!(
        "{}/{}/{}",
        ctx.shared.settings.app_id, ctx.sub.pubsubname, ctx.sub.topic
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

enum Claimed {
    Owned { attempts: u32 },
    Duplicate,
    Stopped,
}

/// Claims `key`, waiting while another sidecar holds it and while the
/// store is unreachable (nothing is delivered without a claim, nothing is
/// acked).
async fn claim(
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
async fn mark_finished(
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

/// Sends the original message to the dead-letter topic and acks only after
/// that publish succeeded; retries the publish until shutdown. Without a
/// dead-letter topic (`deadLetterDefault: none`) the message is acked.
fn dead_letter_topic(ctx: &SubCtx) -> Option<String> {
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
async fn finish_dropped(
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

/// The policies applied to deliveries from one pubsub.
struct InboundPolicy {
    retry: RetryPolicy,
    timeout: Option<Duration>,
    /// `(resiliency/target key, settings)` of the target's circuit breaker.
    breaker: Option<(String, crate::config::resiliency::CircuitBreaker)>,
}

/// The retry policy, timeout and circuit breaker for deliveries from
/// `pubsub`: the Resiliency target `components.<pubsub>.inbound`, else
/// `apps.<app-id>`, else the default policy, no timeout and no breaker.
fn inbound_policy(shared: &Shared, pubsub: &str) -> InboundPolicy {
    for r in &shared.resiliency {
        let (key, target) = match r.inbound.get(pubsub) {
            Some(t) => (format!("{}/components.{pubsub}.inbound", r.name), t),
            None => match r.apps.get(&shared.settings.app_id) {
                Some(t) => (format!("{}/apps.{}", r.name, shared.settings.app_id), t),
                None => continue,
            },
        };
        let retry = target
            .retry
            .as_ref()
            .and_then(|name| r.retries.get(name))
            .map(RetryPolicy::from)
            .unwrap_or_default();
        let timeout = target.timeout.as_ref().and_then(|name| {
            r.timeouts
                .get(name)
                .copied()
                .or_else(|| crate::util::parse_go_duration(name).ok())
        });
        let breaker = target
            .circuit_breaker
            .as_ref()
            .and_then(|name| r.circuit_breakers.get(name))
            .map(|cb| (key, cb.clone()));
        return InboundPolicy {
            retry,
            timeout,
            breaker,
        };
    }
    InboundPolicy {
        retry: RetryPolicy::default(),
        timeout: None,
        breaker: None,
    }
}

/// The ordering key of a message: `partitionKey`, else `__key` (Kafka).
fn ordering_key(md: &BTreeMap<String, String>) -> Option<String> {
    md.get("partitionKey").or_else(|| md.get("__key")).cloned()
}

/// What a message waits behind: its lane (`partition` order) or its key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Chain {
    Lane(i32),
    Key(String),
}

/// Ordering chains: each message waits for the previous message of its
/// chain (its lane, or its key); different chains run concurrently.
#[derive(Default)]
struct Chains {
    tails: std::collections::HashMap<Chain, tokio::sync::oneshot::Receiver<()>>,
}

impl Chains {
    /// Returns what the new message waits for, and what it signals when done.
    /// Keyless messages have no order to keep.
    fn enqueue(
        &mut self,
        key: Option<Chain>,
        window: usize,
    ) -> (
        Option<tokio::sync::oneshot::Receiver<()>>,
        Option<tokio::sync::oneshot::Sender<()>>,
    ) {
        let Some(key) = key else { return (None, None) };
        if self.tails.len() > window * 2 {
            // Forget keys whose last message has finished; keeps memory bounded.
            self.tails.retain(|_, rx| {
                matches!(
                    rx.try_recv(),
                    Err(tokio::sync::oneshot::error::TryRecvError::Empty)
                )
            });
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let previous = self.tails.insert(key, rx);
        (previous, Some(tx))
    }
}
