//! The publish path, one for every transport: the HTTP API calls it (and
//! the gRPC API will call it the same way) with what it read off the
//! request. Step for step as daprd's `onPublish` / `onBulkPublish`
//! (reference 1.2 and 1.6): resolve the target, wrap in a CloudEvent (or
//! not, with `rawPayload`), check scopes, publish, and through the outbox
//! when the broker cannot take it ([`outbox`], [`relay`]).

pub mod outbox;
mod relay;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use serde_json::Value;

use crate::broker::BrokerError;
use crate::cloudevents::{self, PublishInput, CLOUDEVENT_CONTENT_TYPE};
use crate::errors::ApiError;
use crate::message::Message;
use crate::state::{Pubsub, Registry};
use crate::telemetry::trace::TraceParent;
use crate::util::{parse_go_bool, to_go_json};

pub use relay::relay;

/// Where a publish goes: the pub/sub component and the topic.
pub struct Target<'a> {
    /// The component with its broker and outbox.
    pub pubsub: &'a Arc<Pubsub>,
    /// The topic as the app named it.
    pub topic: String,
}

/// Resolves `pubsub`/`topic` against the registry, with Dapr's errors for a
/// missing or unknown name. `md` is the request's metadata (errors carry it).
pub fn target<'a>(
    registry: &'a Registry,
    pubsub: &str,
    topic: String,
    md: &BTreeMap<String, String>,
) -> Result<Target<'a>, ApiError> {
    // daprd always has its pub/sub adapter, so with no component loaded
    // the answer is "not found", never ERR_PUBSUB_NOT_CONFIGURED.
    if pubsub.is_empty() {
        return Err(ApiError::pubsub_empty(md));
    }
    let entry = registry
        .pubsubs
        .get(pubsub)
        .ok_or_else(|| ApiError::pubsub_not_found(pubsub, md))?;
    if topic.is_empty() {
        return Err(ApiError::topic_empty(pubsub, md));
    }
    Ok(Target {
        pubsub: entry,
        topic,
    })
}

/// Publish metadata never sets Perch's own headers (`perch-*`, such as
/// the dead-letter mark that exempts a message from expiry): only Perch
/// writes those.
fn without_perch_keys(mut md: BTreeMap<String, String>) -> BTreeMap<String, String> {
    md.retain(|k, _| !k.to_ascii_lowercase().starts_with("perch-"));
    md
}

/// The broker's limits (names, property sizes, topic rules): a 400 naming
/// the rule, before anything is published.
fn validate(t: &Target<'_>, msg: &Message) -> Result<(), ApiError> {
    t.pubsub.broker.validate(msg).map_err(|why| {
        ApiError::bad_request(
            "ERR_MALFORMED_REQUEST",
            format!("pubsub {}: {why}", t.pubsub.component.name),
        )
    })
}

/// One publish as read off a request: body, its content type, metadata and
/// trace context.
pub struct Single {
    /// The request body.
    pub body: Bytes,
    /// The body's content type.
    pub content_type: Option<String>,
    /// `metadata.*` of the request.
    pub metadata: BTreeMap<String, String>,
    /// W3C `traceparent` of the request.
    pub traceparent: Option<String>,
    /// W3C `tracestate` of the request.
    pub tracestate: Option<String>,
}

/// Publishes one message to `t`.
pub async fn single(t: &Target<'_>, app_id: &str, req: Single) -> Result<(), ApiError> {
    let name = t.pubsub.component.name.as_str();
    let md = req.metadata;
    let raw = raw_payload(name, &md)?;
    let mut span = None;
    let (data, ct) = if raw {
        (req.body, req.content_type)
    } else {
        let trace = TraceParent::child_of(req.traceparent.as_deref());
        let ev = cloudevents::envelope_for_publish(&PublishInput {
            app_id,
            pubsub: name,
            topic: &t.topic,
            content_type: req.content_type.as_deref(),
            body: &req.body,
            metadata: &md,
            trace,
            tracestate: req.tracestate.as_deref(),
        })
        .map_err(|e| ApiError::cloud_event_creation(name, app_id, &e.to_string()))?;
        span = publish_span(t, &ev, req.traceparent.as_deref());
        (
            Bytes::from(to_go_json(&ev)),
            Some(CLOUDEVENT_CONTENT_TYPE.to_owned()),
        )
    };
    check_scope(t, app_id)?;
    let msg = Message {
        topic: t.pubsub.component.broker_topic(&t.topic),
        data,
        content_type: ct,
        metadata: without_perch_keys(md),
    };
    validate(t, &msg)?;
    let r = outbox::publish(t.pubsub, app_id, msg).await;
    if let Some(span) = span.as_mut() {
        span.outcome(if r.is_ok() { "published" } else { "failed" }, r.is_ok());
    }
    r.map_err(|e| ApiError::publish_failed(name, &t.topic, &e.to_string()))
}

/// The exported `publish` span of the CloudEvent `ev` (when tracing is
/// configured): the ids of its `traceparent`, the request's as parent.
fn publish_span(
    t: &Target<'_>,
    ev: &cloudevents::Envelope,
    request_parent: Option<&str>,
) -> Option<crate::telemetry::otel::Span> {
    if !crate::telemetry::otel::enabled() {
        return None;
    }
    let this = TraceParent::parse(ev.get("traceparent")?.as_str()?)?;
    let parent = request_parent.and_then(TraceParent::parse);
    let id = ev.get("id").and_then(Value::as_str).unwrap_or_default();
    crate::telemetry::otel::start(
        format!("publish {}", t.topic),
        opentelemetry::trace::SpanKind::Producer,
        &this,
        parent.as_ref(),
        crate::telemetry::otel::messaging_attributes(
            &t.pubsub.component.type_name,
            &t.pubsub.component.name,
            &t.topic,
            id,
            "send",
        ),
    )
}

/// A bulk entry's event as its transport carries it.
pub enum EntryEvent {
    /// HTTP: a JSON value (a string for text and base64 for
    /// `application/octet-stream`, the JSON itself for JSON types).
    Json(Value),
    /// gRPC: the bytes themselves.
    Bytes(Bytes),
}

/// One entry of a bulk publish.
pub struct BulkEntry {
    /// The entry's id, unique within the request.
    pub entry_id: String,
    /// The event, as the request carried it.
    pub event: EntryEvent,
    /// The event's content type.
    pub content_type: String,
    /// The entry's own metadata; `None` when it has none.
    pub metadata: Option<BTreeMap<String, String>>,
}

/// A bulk publish as read off a request.
pub struct Bulk {
    /// The entries, in request order.
    pub entries: Vec<BulkEntry>,
    /// `metadata.*` of the request.
    pub metadata: BTreeMap<String, String>,
    /// W3C `traceparent` of the request.
    pub traceparent: Option<String>,
    /// W3C `tracestate` of the request: every entry's child span carries
    /// it, as daprd's.
    pub tracestate: Option<String>,
}

/// Publishes every entry as one batch; the result per entry id, in order.
pub async fn bulk(
    t: &Target<'_>,
    app_id: &str,
    req: Bulk,
) -> Result<Vec<(String, Result<(), BrokerError>)>, ApiError> {
    let name = t.pubsub.component.name.as_str();
    let md = &req.metadata;
    let mut seen = BTreeSet::new();
    for e in &req.entries {
        if e.entry_id.is_empty() || !seen.insert(e.entry_id.as_str()) {
            return Err(ApiError::marshal_events(
                name,
                &t.topic,
                app_id,
                "entryId is duplicated or not present for entry",
            ));
        }
    }
    let raw = raw_payload(name, md)?;
    let mut msgs = Vec::with_capacity(req.entries.len());
    let mut spans = Vec::with_capacity(req.entries.len());
    for e in &req.entries {
        let bytes = match &e.event {
            EntryEvent::Json(v) => event_bytes(v, &e.content_type)
                .map_err(|why| ApiError::marshal_envelope(name, &t.topic, app_id, &why))?,
            EntryEvent::Bytes(b) => b.to_vec(),
        };
        // Dapr quirk kept: an entry without its own metadata gets no
        // per-entry metadata, so no TTL or overrides from the query string.
        let entry_md: BTreeMap<String, String> = match &e.metadata {
            Some(m) => md
                .iter()
                .chain(m.iter())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            None => BTreeMap::new(),
        };
        let (data, ct) = if raw {
            spans.push(None);
            (Bytes::from(bytes), Some(e.content_type.clone()))
        } else {
            let ev = cloudevents::envelope_for_publish(&PublishInput {
                app_id,
                pubsub: name,
                topic: &t.topic,
                content_type: Some(&e.content_type),
                body: &bytes,
                metadata: &entry_md,
                trace: TraceParent::child_of(req.traceparent.as_deref()),
                tracestate: req.tracestate.as_deref(),
            })
            .map_err(|e| ApiError::cloud_event_creation(name, app_id, &e.to_string()))?;
            spans.push(publish_span(t, &ev, req.traceparent.as_deref()));
            (
                Bytes::from(to_go_json(&ev)),
                Some(CLOUDEVENT_CONTENT_TYPE.to_owned()),
            )
        };
        let mut broker_md = md.clone();
        broker_md.extend(entry_md);
        let msg = Message {
            topic: t.pubsub.component.broker_topic(&t.topic),
            data,
            content_type: ct,
            metadata: without_perch_keys(broker_md),
        };
        validate(t, &msg)?;
        msgs.push(msg);
    }
    check_scope(t, app_id)?;
    let results = outbox::publish_batch(t.pubsub, app_id, msgs).await;
    for (span, r) in spans.iter_mut().zip(&results) {
        if let Some(span) = span {
            span.outcome(if r.is_ok() { "published" } else { "failed" }, r.is_ok());
        }
    }
    drop(spans);
    Ok(req
        .entries
        .into_iter()
        .map(|e| e.entry_id)
        .zip(results)
        .collect())
}

fn raw_payload(pubsub: &str, md: &BTreeMap<String, String>) -> Result<bool, ApiError> {
    // daprd's IsRawPayload: absent or empty is false.
    match md.get("rawPayload").filter(|v| !v.is_empty()) {
        None => Ok(false),
        Some(v) => parse_go_bool(v).ok_or_else(|| ApiError::bad_metadata(pubsub, v, md)),
    }
}

fn check_scope(t: &Target<'_>, app_id: &str) -> Result<(), ApiError> {
    let c = &t.pubsub.component;
    if c.scoping.may_publish(app_id, &t.topic) {
        Ok(())
    } else {
        Err(ApiError::forbidden(&c.name, &t.topic, app_id))
    }
}

/// A bulk entry's `event` as bytes, checked against its content type.
fn event_bytes(event: &Value, content_type: &str) -> Result<Vec<u8>, String> {
    let media = cloudevents::media_type(content_type);
    if media == "application/octet-stream" {
        let s = event
            .as_str()
            .ok_or("an application/octet-stream event must be a base64 string")?;
        base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(|e| format!("the event is not valid base64: {e}"))
    } else if cloudevents::is_string_type(content_type) {
        event
            .as_str()
            .map(|s| s.as_bytes().to_vec())
            .ok_or_else(|| format!("a {content_type} event must be a JSON string"))
    } else if media == "application/json" || media == CLOUDEVENT_CONTENT_TYPE {
        Ok(to_go_json(event))
    } else {
        Err(format!(
            "content type {content_type:?} is not supported for bulk entries"
        ))
    }
}
