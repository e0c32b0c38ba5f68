//! `POST|PUT /v1.0/publish/{pubsub}/{topic}` and the bulk variants, step for
//! step as daprd's `onPublish` / `onBulkPublish` (reference 1.2 and 1.6).

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

use super::errors::ApiError;
use super::{empty, error, json as json_resp, query_metadata, read_body, split_target, Resp};
use crate::broker::Message;
use crate::cloudevents::{self, PublishInput, CLOUDEVENT_CONTENT_TYPE};
use crate::runtime::{PubsubEntry, Shared};
use crate::telemetry::trace::TraceParent;
use crate::util::{parse_go_bool, to_go_json};

struct Target<'a> {
    entry: &'a PubsubEntry,
    topic: String,
}

fn validate<'a>(
    shared: &'a Shared,
    rest: &str,
    md: &BTreeMap<String, String>,
) -> Result<Target<'a>, ApiError> {
    let (pubsub, topic) = split_target(rest);
    if shared.pubsubs.is_empty() {
        return Err(ApiError::not_configured(md));
    }
    if pubsub.is_empty() {
        return Err(ApiError::pubsub_empty(md));
    }
    let entry = shared
        .pubsubs
        .get(&pubsub)
        .ok_or_else(|| ApiError::pubsub_not_found(&pubsub, md))?;
    if topic.is_empty() {
        return Err(ApiError::topic_empty(&pubsub, md));
    }
    Ok(Target { entry, topic })
}

fn raw_payload(pubsub: &str, md: &BTreeMap<String, String>) -> Result<bool, ApiError> {
    match md.get("rawPayload") {
        None => Ok(false),
        Some(v) => parse_go_bool(v).ok_or_else(|| ApiError::bad_metadata(pubsub, v, md)),
    }
}

fn header<'a>(req: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// Single publish.
pub async fn single(req: Request<Incoming>, rest: String, shared: &Shared) -> Resp {
    use tracing::Instrument;
    let span = tracing::info_span!("publish", target = %rest, outcome = tracing::field::Empty);
    let r = single_inner(req, rest, shared)
        .instrument(span.clone())
        .await;
    span.record("outcome", if r.is_ok() { "success" } else { "error" });
    match r {
        Ok(()) => empty(StatusCode::NO_CONTENT),
        Err(e) => error(&e),
    }
}

async fn single_inner(
    req: Request<Incoming>,
    rest: String,
    shared: &Shared,
) -> Result<(), ApiError> {
    let md = query_metadata(req.uri().query());
    let t = validate(shared, &rest, &md)?;
    let name = t.entry.component.name.as_str();
    let content_type = header(&req, "content-type").map(str::to_owned);
    let traceparent = header(&req, "traceparent").map(str::to_owned);
    let tracestate = header(&req, "tracestate").map(str::to_owned);
    let body = read_body(req, shared.settings.max_body_size).await?;
    let raw = raw_payload(name, &md)?;
    let (data, ct) = if raw {
        (body, content_type)
    } else {
        let ev = cloudevents::envelope_for_publish(&PublishInput {
            app_id: &shared.settings.app_id,
            pubsub: name,
            topic: &t.topic,
            content_type: content_type.as_deref(),
            body: &body,
            metadata: &md,
            trace: TraceParent::child_of(traceparent.as_deref()),
            tracestate: tracestate.as_deref(),
        })
        .map_err(|_| ApiError::cloud_event_creation(name, &md))?;
        (
            Bytes::from(to_go_json(&ev)),
            Some(CLOUDEVENT_CONTENT_TYPE.to_owned()),
        )
    };
    check_scope(shared, t.entry, &t.topic)?;
    let msg = Message {
        topic: t.entry.component.broker_topic(&t.topic),
        data,
        content_type: ct,
        metadata: md,
    };
    crate::outbox::publish(t.entry, &shared.settings.app_id, msg)
        .await
        .map_err(|e| ApiError::publish_failed(name, &t.topic, &e.to_string()))
}

fn check_scope(shared: &Shared, entry: &PubsubEntry, topic: &str) -> Result<(), ApiError> {
    if entry
        .component
        .scoping
        .may_publish(&shared.settings.app_id, topic)
    {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            &entry.component.name,
            topic,
            &shared.settings.app_id,
        ))
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BulkEntry {
    #[serde(default)]
    entry_id: String,
    #[serde(default)]
    event: Value,
    #[serde(default)]
    content_type: String,
    #[serde(default)]
    metadata: Option<BTreeMap<String, String>>,
}

/// Bulk publish: every entry wrapped, published as a batch, per-entry results.
pub async fn bulk(req: Request<Incoming>, rest: String, shared: &Shared) -> Resp {
    let md = query_metadata(req.uri().query());
    let t = match validate(shared, &rest, &md) {
        Ok(t) => t,
        Err(e) => return error(&e),
    };
    let name = t.entry.component.name.clone();
    let traceparent = header(&req, "traceparent").map(str::to_owned);
    let body = match read_body(req, shared.settings.max_body_size).await {
        Ok(b) => b,
        Err(e) => return error(&e),
    };
    let entries: Vec<BulkEntry> = match serde_json::from_slice(&body) {
        Ok(e) => e,
        Err(e) => return error(&ApiError::unmarshal_events(&name, &t.topic, &e.to_string())),
    };
    let mut seen = BTreeSet::new();
    for e in &entries {
        if e.entry_id.is_empty() || !seen.insert(e.entry_id.as_str()) {
            return error(&ApiError::marshal_events(
                &name,
                &t.topic,
                "entryId is duplicated or not present for entry",
            ));
        }
    }
    let raw = match raw_payload(&name, &md) {
        Ok(r) => r,
        Err(e) => return error(&e),
    };
    let mut msgs = Vec::with_capacity(entries.len());
    for e in &entries {
        let Some(bytes) = event_bytes(&e.event, &e.content_type) else {
            return error(&ApiError::marshal_envelope(&name, &t.topic));
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
            (Bytes::from(bytes), Some(e.content_type.clone()))
        } else {
            match cloudevents::envelope_for_publish(&PublishInput {
                app_id: &shared.settings.app_id,
                pubsub: &name,
                topic: &t.topic,
                content_type: Some(&e.content_type),
                body: &bytes,
                metadata: &entry_md,
                trace: TraceParent::child_of(traceparent.as_deref()),
                tracestate: None,
            }) {
                Ok(ev) => (
                    Bytes::from(to_go_json(&ev)),
                    Some(CLOUDEVENT_CONTENT_TYPE.to_owned()),
                ),
                Err(_) => return error(&ApiError::cloud_event_creation(&name, &md)),
            }
        };
        let mut broker_md = md.clone();
        broker_md.extend(entry_md);
        msgs.push(Message {
            topic: t.entry.component.broker_topic(&t.topic),
            data,
            content_type: ct,
            metadata: broker_md,
        });
    }
    if let Err(e) = check_scope(shared, t.entry, &t.topic) {
        return error(&e);
    }
    let results = crate::outbox::publish_batch(t.entry, &shared.settings.app_id, msgs).await;
    let failed: Vec<Value> = entries
        .iter()
        .zip(results)
        .filter_map(|(e, r)| {
            r.err()
                .map(|err| json!({"entryId": e.entry_id, "error": err.to_string()}))
        })
        .collect();
    if failed.is_empty() {
        return empty(StatusCode::NO_CONTENT);
    }
    let body = json!({"failedEntries": failed, "errorCode": "ERR_PUBSUB_PUBLISH_MESSAGE"});
    let mut resp = json_resp(StatusCode::INTERNAL_SERVER_ERROR, &body);
    let text = String::from_utf8(to_go_json(&body)).unwrap_or_default();
    if let Ok(v) = text.parse() {
        resp.headers_mut().insert("metadata.responseData", v);
    }
    if let Ok(v) = format!("{} entries failed to publish", failed.len()).parse() {
        resp.headers_mut().insert("metadata.error", v);
    }
    resp
}

/// A bulk entry's `event` as bytes, checked against its content type.
fn event_bytes(event: &Value, content_type: &str) -> Option<Vec<u8>> {
    let media = cloudevents::media_type(content_type);
    if media == "application/octet-stream" {
        let s = event.as_str()?;
        base64::engine::general_purpose::STANDARD.decode(s).ok()
    } else if cloudevents::is_string_type(content_type) {
        event.as_str().map(|s| s.as_bytes().to_vec())
    } else if media == "application/json" || media == CLOUDEVENT_CONTENT_TYPE {
        Some(to_go_json(event))
    } else {
        None
    }
}
