//! The delivery engine: for each subscription, consume → decode → expired? →
//! route → POST to the app → outcome → ack, retry or dead-letter.
//!
//! One retry owner, the sidecar: without a Resiliency policy a failing
//! message is retried with the default backoff (1 s, x2, 60 s cap, 5
//! retries), then dead-lettered to the subscription's `deadLetterTopic` or
//! `{topic}.dlq`, and acked only once that publish succeeded. Shutdown is
//! never "retries exhausted": a message interrupted by it stays unacked.
//!
//! Files: `discover` (the app's `/dapr/subscribe`), `context` (one running
//! subscription and its app calls), `consume` (the receive loop and its
//! ordering `window`), `prepare` (decode, expire, route), `process` (one
//! message through the pure state machine of `machine`), `idempotency`
//! (keys, claims, marks), `dead_letter`, `policy` (Resiliency targets),
//! `bulk`, and the app client, outcomes, retries, breaker and health.

mod app;
pub mod app_grpc;
mod bulk;
mod consume;
mod context;
mod dead_letter;
mod discover;
pub mod health;
mod idempotency;
pub mod machine;
pub mod outcome;
mod prepare;
mod process;
pub mod routing;
pub mod stream;
mod window;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Mutex, Semaphore};
use tokio::task::JoinSet;

use crate::broker::SubscribeRequest;
use crate::config::SubscriptionSpec;
use crate::state::{Registry, Settings, Status};
use crate::util::parse_go_bool;
pub use app::AppClient;
pub use dead_letter::DEAD_LETTER_FROM;
pub use discover::discover;
pub use idempotency::{event_key, IDEMPOTENCY_KEY};

use crate::resilience::policy::{for_target, Direction};
pub(crate) use crate::resilience::{breaker, retry};
use context::SubCtx;
use discover::app_client;

/// What the engine reads: settings (the app), the registry (brokers,
/// stores, policies) and the live status (app health, metadata view).
#[derive(Clone)]
pub struct Deps {
    /// Process settings.
    pub settings: Arc<Settings>,
    /// Components with their brokers and stores.
    pub registry: Arc<Registry>,
    /// App health (waited on) and the metadata view (written).
    pub status: Arc<Status>,
}

/// Runs the subscriptions; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    deps: Deps,
    stop: watch::Receiver<bool>,
    consumers: Mutex<JoinSet<()>>,
    app_limit: Option<Arc<Semaphore>>,
}

impl Engine {
    /// An engine that stops consuming when `stop` turns true.
    pub fn new(deps: Deps, stop: watch::Receiver<bool>) -> Self {
        let app_limit = deps
            .settings
            .app_max_concurrency
            .map(|n| Arc::new(Semaphore::new(n.max(1))));
        Self {
            inner: Arc::new(Inner {
                deps,
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
        let deps = &self.inner.deps;
        let Some(sink) = app_client(&deps.settings) else {
            return;
        };
        let mut active = Vec::new();
        let mut breakers = std::collections::HashMap::new();
        for sub in subs {
            let sink = sink.clone();
            match self
                .start_one(&sub, sink, self.inner.stop.clone(), &mut breakers)
                .await
            {
                Ok(()) => active.push(sub),
                Err(StartError::Denied) => {
                    deps.status
                        .denied
                        .write()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(sub.clone());
                    tracing::error!(pubsub = %sub.pubsubname, topic = %sub.topic,
                        "subscription to topic '{}' on pubsub '{}' is not allowed", sub.topic, sub.pubsubname);
                }
                Err(e) => {
                    tracing::error!(pubsub = %sub.pubsubname, topic = %sub.topic, error = %e, "subscription not started")
                }
            }
        }
        deps.status
            .subscriptions
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend(active);
    }

    /// Starts a streaming subscription whose client is `sink`: it consumes
    /// until the stream ends (`sink.closed()`) or the sidecar stops, and
    /// is listed as STREAMING meanwhile. One stream per pubsub and topic
    /// at a time, and none on a topic the app subscribes to otherwise (as
    /// daprd 1.14).
    pub async fn start_stream(
        &self,
        sub: SubscriptionSpec,
        sink: Arc<stream::StreamSink>,
    ) -> Result<(), StartError> {
        let deps = &self.inner.deps;
        let taken = deps
            .status
            .subscriptions
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .any(|s| s.pubsubname == sub.pubsubname && s.topic == sub.topic);
        if taken {
            return Err(StartError::AlreadySubscribed);
        }
        // Stops with the sidecar or with the stream, whichever is first.
        let (stop_tx, stop_rx) = watch::channel(false);
        let (mut global, mut closed) = (self.inner.stop.clone(), sink.closed());
        tokio::spawn(async move {
            tokio::select! {
                _ = global.wait_for(|s| *s) => {}
                _ = closed.wait_for(|c| *c) => {}
            }
            stop_tx.send_replace(true);
        });
        let mut breakers = std::collections::HashMap::new();
        let mut end = stop_rx.clone();
        self.start_one(&sub, context::Sink::Stream(sink), stop_rx, &mut breakers)
            .await?;
        deps.status
            .subscriptions
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(sub.clone());
        let status = deps.status.clone();
        tokio::spawn(async move {
            let _ = end.wait_for(|s| *s).await;
            status
                .subscriptions
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .retain(|s| {
                    !(s.source == crate::config::SubscriptionSource::Streaming
                        && s.pubsubname == sub.pubsubname
                        && s.topic == sub.topic)
                });
        });
        Ok(())
    }

    /// Starts one subscription delivering to `sink` until `stop`.
    async fn start_one(
        &self,
        sub: &SubscriptionSpec,
        sink: context::Sink,
        stop: watch::Receiver<bool>,
        breakers: &mut std::collections::HashMap<String, Option<Arc<breaker::Breaker>>>,
    ) -> Result<(), StartError> {
        let deps = &self.inner.deps;
        let mut sub = sub.clone();
        if sub.bulk.enabled && matches!(sink, context::Sink::Stream(_)) {
            tracing::warn!(pubsub = %sub.pubsubname, topic = %sub.topic,
                "a streaming subscription has no bulk form; delivered one by one");
            sub.bulk.enabled = false;
        }
        let sub = &sub;
        let Some(entry) = deps.registry.pubsubs.get(&sub.pubsubname) else {
            return Err(StartError::UnknownPubsub);
        };
        if !entry
            .component
            .scoping
            .may_subscribe(&deps.settings.app_id, &sub.topic)
        {
            return Err(StartError::Denied);
        }
        let inbound = for_target(
            &deps.registry.resiliency,
            &sub.pubsubname,
            Direction::Inbound,
        );
        let breaker = inbound.breaker.as_ref().and_then(|(key, cfg)| {
            breakers
                .entry(key.clone())
                .or_insert_with(|| breaker::Breaker::new(key, cfg).map(Arc::new))
                .clone()
        });
        let router =
            routing::Router::new(&sub.rules).map_err(|e| StartError::Route(e.to_string()))?;
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
            .and_then(|name| deps.registry.stores.get(name).cloned());
        let req = SubscribeRequest {
            topic: entry.component.broker_topic(&sub.topic),
            group: entry.component.consumer_group(&deps.settings.app_id),
            consumer: consumer_name(deps.settings.app_port),
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
        let stream = entry
            .broker
            .subscribe(req)
            .await
            .map_err(|e| StartError::Subscribe(e.to_string()))?;
        tracing::info!(pubsub = %sub.pubsubname, topic = %sub.topic, "subscription started");
        let ctx = Arc::new(SubCtx {
            router,
            policy: inbound.retry.unwrap_or_default(),
            timeout: inbound.timeout,
            breaker,
            sub: sub.clone(),
            pubsub: entry.clone(),
            deps: deps.clone(),
            sink,
            app_limit: self.inner.app_limit.clone(),
            raw: sub
                .metadata
                .get("rawPayload")
                .and_then(|v| parse_go_bool(v))
                .unwrap_or(false),
            store,
        });
        self.inner
            .consumers
            .lock()
            .await
            .spawn(supervise(ctx, stream, stop));
        Ok(())
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

/// Runs a subscription's consume loop on a task of its own and watches
/// it: a loop that panics, or ends while the sidecar is not stopping (its
/// broker stream closed), is logged at ERROR naming the subscription,
/// counted, and turns `/v1.0/healthz` not ready, so the orchestrator
/// restarts the sidecar instead of it idling with a dead subscription
/// (review F11). Aborting the supervisor aborts the loop.
async fn supervise(
    ctx: Arc<SubCtx>,
    stream: crate::broker::DeliveryStream,
    stop: watch::Receiver<bool>,
) {
    struct AbortOnDrop(tokio::task::JoinHandle<()>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let (pubsub, topic) = (ctx.sub.pubsubname.clone(), ctx.sub.topic.clone());
    let status = ctx.deps.status.clone();
    let panics = crate::telemetry::metrics::metrics()
        .panics
        .with_label_values(&[&pubsub, &topic]);
    let mut run = AbortOnDrop(tokio::spawn(consume::consume(ctx, stream, stop.clone())));
    let why = match (&mut run.0).await {
        Ok(()) if *stop.borrow() => return,
        Ok(()) => "its broker stream ended".to_owned(),
        Err(e) if e.is_panic() => {
            panics.inc();
            format!("its consume loop panicked: {}", crate::util::panic_text(e))
        }
        Err(e) => format!("its consume loop ended: {e}"),
    };
    tracing::error!(%pubsub, %topic, reason = %why,
        "subscription stopped consuming; /v1.0/healthz reports not ready");
    status
        .failed
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(format!("{pubsub}/{topic}"), why);
}

/// Why a subscription did not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    /// No pub/sub component of that name.
    #[error("no pubsub component of that name")]
    UnknownPubsub,
    /// Scoping does not let the app subscribe to the topic.
    #[error("scoping does not allow the topic")]
    Denied,
    /// A rule does not compile.
    #[error("a routing rule does not compile: {0}")]
    Route(String),
    /// The broker refused the subscription.
    #[error("the broker refused the subscription: {0}")]
    Subscribe(String),
    /// A stream (or another subscription) has the topic already.
    #[error("already subscribed")]
    AlreadySubscribed,
}

/// With an idempotency store, the broker hands out this many times
/// `maxInFlight` per lane, while the app still gets at most `maxInFlight`
/// at once: the rest are being claimed or marked in the store. Without it,
/// the store's round trips would sit inside the app's window (by Little's
/// law, claim and mark latency cut throughput in proportion).
const STORE_WINDOW: usize = 8;

/// This sidecar's consumer name (see `SubscribeRequest::consumer`): the
/// pod (or host) and the app's port, which tell the app's instances apart
/// on one host and stay when the sidecar restarts.
fn consumer_name(app_port: Option<u16>) -> String {
    let host = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .unwrap_or_else(|| "perch".into());
    format!("{host}-{}", app_port.unwrap_or(0))
}
