//! `POST|PUT /v1.0/publish/{pubsub}/{topic}` and the bulk variants: what
//! HTTP reads off the request and how it answers; the publish itself is
//! [`crate::publish`], the same for every transport.

use std::collections::BTreeMap;

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{empty, error, json as json_resp, publish_target, read_body, ApiState, Resp};
use crate::errors::ApiError;
use crate::publish;
use crate::util::to_go_json;

fn header<'a>(req: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// Single publish.
pub async fn single(req: Request<Incoming>, rest: String, api: &ApiState) -> Resp {
    use tracing::Instrument;
    // At debug, as the delivery span: free at the default level.
    let span = tracing::debug_span!("publish", target = %rest, outcome = tracing::field::Empty);
    let r = single_inner(req, rest, api).instrument(span.clone()).await;
    span.record("outcome", if r.is_ok() { "success" } else { "error" });
    match r {
        Ok(()) => empty(StatusCode::NO_CONTENT),
        Err(e) => error(&e),
    }
}

async fn single_inner(
    req: Request<Incoming>,
    rest: String,
    api: &ApiState,
) -> Result<(), ApiError> {
    let (pubsub, topic, metadata) = publish_target(&rest, req.uri().query())?;
    let t = publish::target(&api.registry, &pubsub, topic, &metadata)?;
    let content_type = header(&req, "content-type").map(str::to_owned);
    let traceparent = header(&req, "traceparent").map(str::to_owned);
    let tracestate = header(&req, "tracestate").map(str::to_owned);
    let body = read_body(req, api.settings.max_body_size).await?;
    let single = publish::Single {
        body,
        content_type,
        metadata,
        traceparent,
        tracestate,
    };
    publish::single(&t, &api.settings.app_id, single).await
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
pub async fn bulk(req: Request<Incoming>, rest: String, api: &ApiState) -> Resp {
    match bulk_inner(req, rest, api).await {
        Ok(r) => r,
        Err(e) => error(&e),
    }
}

async fn bulk_inner(
    req: Request<Incoming>,
    rest: String,
    api: &ApiState,
) -> Result<Resp, ApiError> {
    let (pubsub, topic, metadata) = publish_target(&rest, req.uri().query())?;
    let t = publish::target(&api.registry, &pubsub, topic, &metadata)?;
    let traceparent = header(&req, "traceparent").map(str::to_owned);
    let tracestate = header(&req, "tracestate").map(str::to_owned);
    let body = read_body(req, api.settings.max_body_size).await?;
    let entries: Vec<BulkEntry> = serde_json::from_slice(&body).map_err(|e| {
        ApiError::unmarshal_events(
            &t.pubsub.component.name,
            &t.topic,
            &api.settings.app_id,
            &e.to_string(),
        )
    })?;
    let bulk = publish::Bulk {
        entries: entries
            .into_iter()
            .map(|e| publish::BulkEntry {
                entry_id: e.entry_id,
                event: publish::EntryEvent::Json(e.event),
                content_type: e.content_type,
                metadata: e.metadata,
            })
            .collect(),
        metadata,
        traceparent,
        tracestate,
    };
    let results = publish::bulk(&t, &api.settings.app_id, bulk).await?;
    let failed: Vec<Value> = results
        .into_iter()
        .filter_map(|(id, r)| {
            r.err()
                .map(|err| json!({"entryId": id, "error": err.to_string()}))
        })
        .collect();
    if failed.is_empty() {
        return Ok(empty(StatusCode::NO_CONTENT));
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
    Ok(resp)
}
