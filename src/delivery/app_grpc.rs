//! The app over gRPC (`--app-protocol grpc`): Dapr's `AppCallback`
//! service, h2c, as daprd calls it. `ListTopicSubscriptions` gives the
//! programmatic subscriptions (`UNIMPLEMENTED` = none), `OnTopicEvent`
//! takes each event (built like the streaming event, with the matching
//! route as `path` and the message metadata as gRPC metadata),
//! `OnBulkTopicEvent` takes a bulk subscription's batches (falling back to
//! `AppCallbackAlpha/OnBulkTopicEventAlpha1` when the app answers
//! `UNIMPLEMENTED`, as daprd; the JS SDK serves only that one), and
//! `AppCallbackHealthCheck/HealthCheck` is the health probe (any error is
//! unhealthy). `APP_API_TOKEN` goes as `dapr-api-token`. Outcomes as
//! daprd's: the status enum; an `UNIMPLEMENTED` error is DROP (warned; for
//! a batch, when both bulk methods are unimplemented); any other error is
//! RETRY.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;

use super::app::AppAnswer;
use super::stream::{event_of, StreamEvent};
use crate::cloudevents::Envelope;
use crate::config::subscription::{BulkSubscribe, Route, SubscriptionSource, SubscriptionSpec};
use crate::dapr_proto as pb;

type Channel = Client<HttpConnector, tonic::body::Body>;

/// The app's bulk method: not known yet, `OnBulkTopicEvent`, or the
/// Alpha1 one.
const UNKNOWN: u8 = 0;
const STABLE: u8 = 1;
const ALPHA: u8 = 2;

/// A failed bulk call other than UNIMPLEMENTED: retried.
fn bulk_failed(s: &tonic::Status) -> AppAnswer {
    tracing::debug!(code = ?s.code(), message = s.message(), "OnBulkTopicEvent failed; retried");
    None
}

/// One pooled h2c client to the app.
#[derive(Clone)]
pub struct GrpcAppClient {
    channel: Channel,
    origin: tonic::codegen::http::Uri,
    token: Option<String>,
    /// Which bulk method the app serves, once known ([`UNKNOWN`],
    /// [`STABLE`], [`ALPHA`]).
    bulk_method: Arc<AtomicU8>,
}

impl GrpcAppClient {
    /// A client for `http://{address}:{port}`, HTTP/2 with prior knowledge.
    pub fn new(address: &str, port: u16, token: Option<String>) -> Self {
        let mut connector = HttpConnector::new();
        // HTTP/2 frames go in several writes: no Nagle delay.
        connector.set_nodelay(true);
        let channel = Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build(connector);
        let origin = format!("http://{address}:{port}")
            .parse()
            .unwrap_or_else(|_| tonic::codegen::http::Uri::from_static("http://127.0.0.1"));
        Self {
            channel,
            origin,
            token,
            bulk_method: Arc::default(),
        }
    }

    fn request<T>(&self, msg: T, metadata: &BTreeMap<String, String>) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        let md = r.metadata_mut();
        for (k, v) in metadata {
            // Keys gRPC cannot carry (upper case is folded; others skipped).
            if let (Ok(k), Ok(v)) = (
                tonic::metadata::MetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes()),
                tonic::metadata::MetadataValue::try_from(v.as_str()),
            ) {
                md.insert(k, v);
            }
        }
        if let Some(t) = self.token.as_deref().and_then(|t| t.parse().ok()) {
            md.insert("dapr-api-token", t);
        }
        r
    }

    /// `ListTopicSubscriptions`: `Ok(None)` when the app does not
    /// implement it (no programmatic subscriptions), `Err` when it cannot
    /// be asked (asked again).
    pub async fn list_subscriptions(&self) -> Result<Vec<SubscriptionSpec>, String> {
        let mut c = pb::app_callback_client::AppCallbackClient::with_origin(
            self.channel.clone(),
            self.origin.clone(),
        );
        match c
            .list_topic_subscriptions(self.request((), &BTreeMap::new()))
            .await
        {
            Ok(r) => Ok(r
                .into_inner()
                .subscriptions
                .into_iter()
                .filter_map(spec_of)
                .collect()),
            Err(s) if s.code() == tonic::Code::Unimplemented => Ok(vec![]),
            Err(s) => Err(format!(
                "ListTopicSubscriptions: {}: {}",
                s.code(),
                s.message()
            )),
        }
    }

    /// `OnTopicEvent` for the CloudEvent `event` routed to `path`.
    pub async fn deliver(
        &self,
        path: &str,
        event: &Envelope,
        metadata: &BTreeMap<String, String>,
        traceparent: Option<&str>,
        topic: &str,
        pubsub: &str,
    ) -> AppAnswer {
        let mut ev = event_of(topic, pubsub, event)?;
        ev.path = path.to_owned();
        let mut md = metadata.clone();
        if let Some(tp) = traceparent {
            md.insert("traceparent".into(), tp.to_owned());
        }
        let mut c = pb::app_callback_client::AppCallbackClient::with_origin(
            self.channel.clone(),
            self.origin.clone(),
        );
        let answer = c.on_topic_event(self.request(request_of(ev), &md)).await;
        let body: &'static [u8] = match answer {
            Ok(r) => match r.into_inner().status {
                0 => b"",
                2 => br#"{"status":"DROP"}"#,
                _ => br#"{"status":"RETRY"}"#,
            },
            Err(s) if s.code() == tonic::Code::Unimplemented => {
                tracing::warn!(%topic, %path, "the app answered UNIMPLEMENTED for the event; dropped");
                br#"{"status":"DROP"}"#
            }
            Err(s) => {
                tracing::debug!(%topic, code = ?s.code(), message = s.message(), "OnTopicEvent failed; retried");
                return None;
            }
        };
        Some((200, Bytes::from_static(body)))
    }

    /// One batch to `OnBulkTopicEvent`, or `OnBulkTopicEventAlpha1` when
    /// the app does not implement it. The answer in the HTTP bulk form the
    /// batch code reads: 200 with the statuses as JSON; 404 (every entry
    /// dropped) when the app implements neither method, as daprd; `None`
    /// (the batch retried) on any other error. Until the app's method is
    /// known the request is copied for the fallback; after, it is sent as
    /// it is, and an UNIMPLEMENTED from the known method (the app changed)
    /// forgets it and retries the batch.
    pub async fn deliver_bulk(&self, request: pb::TopicEventBulkRequest) -> AppAnswer {
        let known = self.bulk_method.load(Ordering::Relaxed);
        if known != UNKNOWN {
            return match self.call_bulk(known == ALPHA, request).await {
                Ok(r) => Some((200, statuses_json(r))),
                Err(s) if s.code() == tonic::Code::Unimplemented => {
                    self.bulk_method.store(UNKNOWN, Ordering::Relaxed);
                    None
                }
                Err(s) => bulk_failed(&s),
            };
        }
        for alpha in [false, true] {
            match self.call_bulk(alpha, request.clone()).await {
                Ok(r) => {
                    self.bulk_method
                        .store(if alpha { ALPHA } else { STABLE }, Ordering::Relaxed);
                    return Some((200, statuses_json(r)));
                }
                Err(s) if s.code() == tonic::Code::Unimplemented => continue,
                Err(s) => return bulk_failed(&s),
            }
        }
        tracing::warn!(topic = %request.topic, path = %request.path, entries = request.entries.len(),
            "the app implements neither OnBulkTopicEvent nor OnBulkTopicEventAlpha1 for the batch; dropped");
        Some((404, Bytes::new()))
    }

    async fn call_bulk(
        &self,
        alpha: bool,
        request: pb::TopicEventBulkRequest,
    ) -> Result<pb::TopicEventBulkResponse, tonic::Status> {
        let call = self.request(request, &BTreeMap::new());
        let answer = if alpha {
            pb::app_callback_alpha_client::AppCallbackAlphaClient::with_origin(
                self.channel.clone(),
                self.origin.clone(),
            )
            .on_bulk_topic_event_alpha1(call)
            .await
        } else {
            pb::app_callback_client::AppCallbackClient::with_origin(
                self.channel.clone(),
                self.origin.clone(),
            )
            .on_bulk_topic_event(call)
            .await
        };
        answer.map(tonic::Response::into_inner)
    }

    /// `HealthCheck`; 200 when it answers, `None` on any error.
    pub async fn probe(&self, timeout: Duration) -> Option<u16> {
        let mut c = pb::app_callback_health_check_client::AppCallbackHealthCheckClient::with_origin(
            self.channel.clone(),
            self.origin.clone(),
        );
        let call = c.health_check(self.request((), &BTreeMap::new()));
        match tokio::time::timeout(timeout, call).await {
            Ok(Ok(_)) => Some(200),
            _ => None,
        }
    }
}

/// The app's bulk answer as Dapr's HTTP bulk answer
/// (`{"statuses":[{"entryId","status"}]}`); an unknown status enum is
/// RETRY, as for single events.
fn statuses_json(r: pb::TopicEventBulkResponse) -> Bytes {
    let statuses: Vec<serde_json::Value> = r
        .statuses
        .into_iter()
        .map(|s| {
            let status = match s.status {
                0 => "SUCCESS",
                2 => "DROP",
                _ => "RETRY",
            };
            serde_json::json!({"entryId": s.entry_id, "status": status})
        })
        .collect();
    Bytes::from(serde_json::json!({ "statuses": statuses }).to_string())
}

/// One message of a batch, as the bulk request needs it.
pub(super) struct BulkEntry<'a> {
    pub(super) id: &'a str,
    /// The CloudEvent (for a raw payload, its envelope).
    pub(super) event: &'a Envelope,
    /// The CloudEvent's bytes.
    pub(super) body: &'a Bytes,
    /// The broker's bytes.
    pub(super) data: &'a Bytes,
    /// The broker's metadata.
    pub(super) metadata: &'a BTreeMap<String, String>,
}

/// The `OnBulkTopicEvent` request for a batch's `entries` routed to
/// `path`, as daprd builds it: each CloudEvent as a `cloud_event` entry
/// (the fields of a single event), a raw payload as `bytes`; entry
/// metadata is the message's.
pub(super) fn bulk_request<'a>(
    topic: &str,
    pubsub: &str,
    path: &str,
    raw: bool,
    entries: impl Iterator<Item = BulkEntry<'a>>,
) -> pb::TopicEventBulkRequest {
    use pb::topic_event_bulk_request_entry::Event;
    let entries = entries
        .map(|r| {
            let (event, content_type) = match (raw, event_of(topic, pubsub, r.event)) {
                (false, Some(ev)) => (
                    Event::CloudEvent(pb::TopicEventCeRequest {
                        id: ev.id,
                        source: ev.source,
                        r#type: ev.r#type,
                        spec_version: ev.spec_version,
                        data_content_type: ev.data_content_type,
                        data: ev.data,
                        extensions: Some(struct_of(ev.extensions)),
                    }),
                    crate::cloudevents::CLOUDEVENT_CONTENT_TYPE,
                ),
                (false, None) => (
                    Event::Bytes(r.body.to_vec()),
                    crate::cloudevents::CLOUDEVENT_CONTENT_TYPE,
                ),
                (true, _) => (Event::Bytes(r.data.to_vec()), "application/octet-stream"),
            };
            pb::TopicEventBulkRequestEntry {
                entry_id: r.id.to_owned(),
                event: Some(event),
                content_type: content_type.to_owned(),
                metadata: r
                    .metadata
                    .iter()
                    .filter(|(k, _)| k.as_str() != "pubsubName")
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            }
        })
        .collect();
    pb::TopicEventBulkRequest {
        id: uuid::Uuid::new_v4().to_string(),
        entries,
        metadata: [("pubsubName".to_owned(), pubsub.to_owned())].into(),
        topic: topic.to_owned(),
        pubsub_name: pubsub.to_owned(),
        r#type: "com.dapr.event.sent.bulk".to_owned(),
        path: path.to_owned(),
    }
}

pub fn request_of(ev: StreamEvent) -> pb::TopicEventRequest {
    pb::TopicEventRequest {
        id: ev.id,
        source: ev.source,
        r#type: ev.r#type,
        spec_version: ev.spec_version,
        data_content_type: ev.data_content_type,
        data: ev.data,
        topic: ev.topic,
        pubsub_name: ev.pubsub_name,
        path: ev.path,
        extensions: Some(struct_of(ev.extensions)),
    }
}

/// CloudEvent extensions as a `google.protobuf.Struct`.
fn struct_of(extensions: serde_json::Map<String, serde_json::Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: extensions
            .into_iter()
            .map(|(k, v)| (k, proto_value(v)))
            .collect(),
    }
}

/// A JSON value as `google.protobuf.Value` (numbers as doubles, as Go's
/// protojson).
pub fn proto_value(v: serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    use serde_json::Value as J;
    let kind = match v {
        J::Null => Kind::NullValue(0),
        J::Bool(b) => Kind::BoolValue(b),
        J::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        J::String(s) => Kind::StringValue(s),
        J::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.into_iter().map(proto_value).collect(),
        }),
        J::Object(o) => Kind::StructValue(prost_types::Struct {
            fields: o.into_iter().map(|(k, v)| (k, proto_value(v))).collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}

/// daprd's reading of a `TopicSubscription`: rules in order, then the
/// default; no routes at all is one rule with the empty path.
fn spec_of(t: pb::TopicSubscription) -> Option<SubscriptionSpec> {
    if t.pubsub_name.is_empty() || t.topic.is_empty() {
        tracing::warn!(pubsub = %t.pubsub_name, topic = %t.topic, "ListTopicSubscriptions: an entry without pubsub or topic; ignored");
        return None;
    }
    let routes = t.routes.unwrap_or_default();
    let mut rules: Vec<Route> = routes
        .rules
        .into_iter()
        .map(|r| Route {
            match_expr: r.r#match,
            path: r.path,
        })
        .collect();
    if !routes.default.is_empty() || rules.is_empty() {
        rules.push(Route {
            match_expr: String::new(),
            path: routes.default,
        });
    }
    let bulk = t.bulk_subscribe.unwrap_or_default();
    Some(SubscriptionSpec {
        name: String::new(),
        pubsubname: t.pubsub_name,
        topic: t.topic,
        rules,
        dead_letter_topic: Some(t.dead_letter_topic).filter(|d| !d.is_empty()),
        bulk: BulkSubscribe {
            enabled: bulk.enabled,
            max_messages_count: u32::try_from(bulk.max_messages_count)
                .ok()
                .filter(|n| *n > 0),
            max_await_duration_ms: u32::try_from(bulk.max_await_duration_ms)
                .ok()
                .filter(|n| *n > 0),
        },
        metadata: t.metadata.into_iter().collect(),
        source: SubscriptionSource::Programmatic,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_sent_as_daprd_builds_on_bulk_topic_event() {
        use pb::topic_event_bulk_request_entry::Event;
        let body = Bytes::from_static(
            br#"{"id":"1","type":"ty","specversion":"1.0","data":{"n":1},"x":"y"}"#,
        );
        let event: Envelope = serde_json::from_slice(&body).unwrap();
        let metadata: BTreeMap<String, String> = [
            ("pubsubName".to_owned(), "ps".to_owned()),
            ("k".to_owned(), "v".to_owned()),
        ]
        .into();
        let entry = || BulkEntry {
            id: "e1",
            event: &event,
            body: &body,
            data: &body,
            metadata: &metadata,
        };
        let r = bulk_request("t", "ps", "route", false, [entry()].into_iter());
        assert_eq!((r.topic.as_str(), r.path.as_str()), ("t", "route"));
        assert_eq!(r.r#type, "com.dapr.event.sent.bulk");
        assert_eq!(r.metadata["pubsubName"], "ps");
        let e = &r.entries[0];
        assert_eq!(e.entry_id, "e1");
        assert_eq!(e.content_type, "application/cloudevents+json");
        assert_eq!(
            e.metadata,
            [("k".to_owned(), "v".to_owned())].into(),
            "entry metadata is the message's, without pubsubName"
        );
        let Some(Event::CloudEvent(ce)) = &e.event else {
            panic!("a CloudEvent entry: {e:?}")
        };
        assert_eq!((ce.id.as_str(), ce.r#type.as_str()), ("1", "ty"));
        assert_eq!(ce.data, br#"{"n":1}"#);
        assert!(ce.extensions.as_ref().unwrap().fields.contains_key("x"));
        // rawPayload: the broker's bytes as they are.
        let r = bulk_request("t", "ps", "route", true, [entry()].into_iter());
        let e = &r.entries[0];
        assert_eq!(e.content_type, "application/octet-stream");
        assert!(matches!(&e.event, Some(Event::Bytes(b)) if b[..] == body[..]));
    }

    #[test]
    fn the_bulk_answer_reads_as_the_http_one() {
        let answer = pb::TopicEventBulkResponse {
            statuses: vec![
                pb::TopicEventBulkResponseEntry {
                    entry_id: "a".into(),
                    status: 0,
                },
                pb::TopicEventBulkResponseEntry {
                    entry_id: "b".into(),
                    status: 2,
                },
                pb::TopicEventBulkResponseEntry {
                    entry_id: "c".into(),
                    status: 9,
                },
            ],
        };
        let json: serde_json::Value = serde_json::from_slice(&statuses_json(answer)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"statuses": [
                {"entryId": "a", "status": "SUCCESS"},
                {"entryId": "b", "status": "DROP"},
                {"entryId": "c", "status": "RETRY"}
            ]})
        );
    }
}
