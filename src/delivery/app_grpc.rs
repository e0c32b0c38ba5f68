//! The app over gRPC (`--app-protocol grpc`): Dapr's `AppCallback`
//! service, h2c, as daprd calls it. `ListTopicSubscriptions` gives the
//! programmatic subscriptions (`UNIMPLEMENTED` = none), `OnTopicEvent`
//! takes each event (built like the streaming event, with the matching
//! route as `path` and the message metadata as gRPC metadata), and
//! `AppCallbackHealthCheck/HealthCheck` is the health probe (any error is
//! unhealthy). `APP_API_TOKEN` goes as `dapr-api-token`. Outcomes as
//! daprd's: the status enum; an `UNIMPLEMENTED` error is DROP (warned);
//! any other error is RETRY.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;

use super::app::AppAnswer;
use super::stream::{event_of, StreamEvent};
use crate::config::subscription::{BulkSubscribe, Route, SubscriptionSource, SubscriptionSpec};
use crate::dapr_proto as pb;

type Channel = Client<HttpConnector, tonic::body::Body>;

/// One pooled h2c client to the app.
#[derive(Clone)]
pub struct GrpcAppClient {
    channel: Channel,
    origin: tonic::codegen::http::Uri,
    token: Option<String>,
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

    /// `OnTopicEvent` for the CloudEvent `body` routed to `path`.
    pub async fn deliver(
        &self,
        path: &str,
        body: &Bytes,
        metadata: &BTreeMap<String, String>,
        traceparent: Option<&str>,
        topic: &str,
        pubsub: &str,
    ) -> AppAnswer {
        let mut ev = event_of(topic, pubsub, body)?;
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
        extensions: Some(prost_types::Struct {
            fields: ev
                .extensions
                .into_iter()
                .map(|(k, v)| (k, proto_value(v)))
                .collect(),
        }),
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
