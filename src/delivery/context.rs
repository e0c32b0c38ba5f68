//! One running subscription as the engine sees it: its route rules,
//! policies, store and app client, and the calls and metrics of one
//! delivery (`--app-max-concurrency`, the resiliency timeout and the circuit
//! breaker around every app call; Dapr's ingress metrics).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use tokio::sync::Semaphore;

use super::app::{self, AppClient};
use super::retry::RetryPolicy;
use super::{breaker, routing, Deps};
use crate::broker::Delivery;
use crate::cloudevents::Envelope;
use crate::config::SubscriptionSpec;
use crate::state::Pubsub;
use crate::store::Store;
use crate::telemetry::metrics::metrics;

/// A message that passed decoding, expiry and routing: ready for the app.
pub(super) struct Ready {
    /// The app path the routing chose.
    pub(super) path: String,
    /// The HTTP body: the broker bytes, or the raw-payload envelope.
    pub(super) body: Bytes,
    /// The CloudEvent as a map.
    pub(super) event: Envelope,
    /// Message metadata plus `content-type` and `pubsubName` (sent as headers).
    pub(super) metadata: BTreeMap<String, String>,
    /// W3C trace parent for the delivery, from the event.
    pub(super) traceparent: Option<String>,
    /// The broker message.
    pub(super) delivery: Delivery,
}

/// What one delivery sends, borrowed from its [`Ready`] (whose broker
/// message, not `Sync`, stays behind).
#[derive(Clone, Copy)]
pub(super) struct Outgoing<'a> {
    pub(super) path: &'a str,
    pub(super) body: &'a Bytes,
    pub(super) event: &'a Envelope,
    pub(super) metadata: &'a BTreeMap<String, String>,
    pub(super) traceparent: Option<&'a str>,
}

impl Ready {
    /// What the sink is sent for this message.
    pub(super) fn outgoing(&self) -> Outgoing<'_> {
        Outgoing {
            path: &self.path,
            body: &self.body,
            event: &self.event,
            metadata: &self.metadata,
            traceparent: self.traceparent.as_deref(),
        }
    }
}

/// One subscription's context, shared by its deliveries.
pub(super) struct SubCtx {
    pub(super) sub: SubscriptionSpec,
    pub(super) policy: RetryPolicy,
    pub(super) timeout: Option<Duration>,
    pub(super) router: routing::Router,
    /// The subscription's pub/sub component and broker.
    pub(super) pubsub: Arc<Pubsub>,
    pub(super) deps: Deps,
    /// Where deliveries go: the app, or a streaming subscription's client.
    pub(super) sink: Sink,
    pub(super) app_limit: Option<Arc<Semaphore>>,
    /// The inbound target's circuit breaker, shared with its other users.
    pub(super) breaker: Option<Arc<breaker::Breaker>>,
    /// `rawPayload` subscription metadata.
    pub(super) raw: bool,
    /// The pubsub's idempotency store, unless the subscription opts out.
    pub(super) store: Option<Arc<dyn Store>>,
}

/// One bulk attempt's request, in the form of the subscription's sink.
pub(super) enum BulkRequest {
    /// Dapr's bulk JSON, POSTed.
    Http(Bytes),
    /// `OnBulkTopicEvent`'s request.
    Grpc(crate::dapr_proto::TopicEventBulkRequest),
}

/// Where a subscription's deliveries go.
#[derive(Clone)]
pub enum Sink {
    /// The app, over HTTP.
    App(AppClient),
    /// The app, over gRPC (`--app-protocol grpc`).
    GrpcApp(super::app_grpc::GrpcAppClient),
    /// A streaming subscription's client.
    Stream(Arc<super::stream::StreamSink>),
}

impl SubCtx {
    pub(super) fn entry(&self) -> &Pubsub {
        &self.pubsub
    }

    /// One delivery to the sink: POSTed to the app, called over gRPC, or
    /// sent on the stream (whose client answers SUCCESS, RETRY or DROP as
    /// an app would).
    pub(super) async fn deliver_once(
        &self,
        ready: Outgoing<'_>,
        idempotency_key: Option<&str>,
    ) -> app::AppAnswer {
        let traceparent = ready.traceparent;
        match &self.sink {
            Sink::App(c) => {
                c.deliver(
                    ready.path,
                    ready.body.clone(),
                    ready.metadata,
                    traceparent,
                    idempotency_key,
                )
                .await
            }
            Sink::GrpcApp(c) => {
                let mut md = ready.metadata.clone();
                if let Some(k) = idempotency_key {
                    md.insert(crate::message::IDEMPOTENCY_KEY.into(), k.to_owned());
                }
                c.deliver(
                    ready.path,
                    ready.event,
                    &md,
                    traceparent,
                    &self.sub.topic,
                    &self.sub.pubsubname,
                )
                .await
            }
            Sink::Stream(s) => {
                s.deliver(&self.sub.topic, &self.sub.pubsubname, ready.event)
                    .await
            }
        }
    }

    /// One bulk delivery to the app, `request` built for its sink (a
    /// stream is never bulk: `None`).
    pub(super) async fn deliver_bulk_once(
        &self,
        path: &str,
        request: BulkRequest,
        headers: &BTreeMap<String, String>,
    ) -> app::AppAnswer {
        match (&self.sink, request) {
            (Sink::App(c), BulkRequest::Http(body)) => c.deliver_bulk(path, body, headers).await,
            (Sink::GrpcApp(c), BulkRequest::Grpc(r)) => c.deliver_bulk(r).await,
            // Streams have no bulk form: a bulk subscription on one is
            // delivered one by one (see `Engine::start_one`).
            _ => None,
        }
    }

    /// Whether a delivery reads the whole event (routing rules, or a gRPC
    /// app or stream, which are sent the event itself), not only the
    /// attributes of [`crate::cloudevents::DELIVERY_ATTRIBUTES`].
    pub(super) fn needs_whole_event(&self) -> bool {
        !matches!(self.sink, Sink::App(_)) || self.router.has_rules()
    }

    /// A stream is not gated on the app's health: its client is the app.
    pub(super) fn needs_app(&self) -> bool {
        matches!(self.sink, Sink::App(_) | Sink::GrpcApp(_))
    }
}

impl SubCtx {
    /// One call to the app under `--app-max-concurrency`, the resiliency
    /// timeout and the circuit breaker; `None` is a transport error, a
    /// timeout or an open breaker. `succeeded` tells the breaker whether
    /// the answer counts as a success.
    pub(super) async fn call_app<F: std::future::Future<Output = app::AppAnswer>>(
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
            // No Resiliency `timeout`: the default, so a hung app never
            // holds a slot for ever.
            let t = self.timeout.unwrap_or(DEFAULT_APP_TIMEOUT);
            match tokio::time::timeout(t, call).await {
                Ok(a) => a,
                Err(_) => {
                    tracing::warn!(topic = %self.sub.topic, timeout = ?t, "the app did not answer in time; the attempt fails and is retried");
                    None
                }
            }
        };
        if let Some(b) = &self.breaker {
            b.record(succeeded(&answer));
        }
        answer
    }
}

/// The deadline of an app call when no Resiliency `timeout` applies.
pub const DEFAULT_APP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Keeps `perch_inflight` up to date for one delivery.
pub(super) struct InFlight<'a>(&'a SubCtx);

impl<'a> InFlight<'a> {
    pub(super) fn new(ctx: &'a SubCtx) -> Self {
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
    pub(super) fn record_ingress(
        &self,
        process_status: &str,
        status: &str,
        elapsed: Option<Duration>,
    ) {
        let labels = [
            self.deps.settings.app_id.as_str(),
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

    pub(super) fn count(&self, counter: &prometheus::IntCounterVec) {
        counter
            .with_label_values(&[&self.sub.pubsubname, &self.sub.topic])
            .inc();
    }
}
