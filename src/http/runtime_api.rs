//! Health, metadata and shutdown endpoints (reference 8.2).

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde_json::{json, Value};
use std::collections::BTreeMap;

use super::{empty, error, json, ApiState, Resp};
use crate::config::SubscriptionSource;
use crate::errors::ApiError;
use crate::util::format_duration;

/// `GET /v1.0/healthz`, as daprd: readiness first (components loaded and
/// the app's subscriptions running, or no app; 500 again if a
/// subscription's consume loop died), then the `appid` check. A broker or
/// store that is down does not make the sidecar unready (daprd's rule:
/// the kubelet would otherwise restart or unroute a pod that can still
/// keep publishes in the outbox); it is listed in the details of an
/// unready answer, in `/v1.0/metadata` and in `perch_broker_connected` /
/// `perch_store_connected`, and logged when it changes.
pub fn healthz(req: &Request<Incoming>, api: &ApiState) -> Resp {
    let failed: Vec<String> = api
        .status
        .failed
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .map(|(sub, why)| format!("subscription {sub}: {why}"))
        .collect();
    let not_ready = if !failed.is_empty() {
        Some(failed.join("; "))
    } else if !*api.status.ready.borrow() {
        Some("app channel".to_owned())
    } else {
        None
    };
    if let Some(why) = not_ready {
        let mut e = ApiError::not_ready(
            "ERR_HEALTH_NOT_READY",
            format!("dapr is not ready: [{why}]"),
        );
        for (name, state) in component_health(api) {
            if let Err(down) = state {
                e.metadata.insert(format!("component.{name}"), down);
            }
        }
        return error(&e);
    }
    let wanted = req
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .find_map(|p| p.strip_prefix("appid="));
    if let Some(id) = wanted {
        if id != api.settings.app_id {
            return error(&ApiError::not_ready(
                "ERR_HEALTH_APPID_NOT_MATCH",
                "dapr app-id does not match".into(),
            ));
        }
    }
    empty(StatusCode::NO_CONTENT)
}

/// Every broker and store by component name, with its reachability.
fn component_health(api: &ApiState) -> Vec<(String, Result<(), String>)> {
    let pubsubs = api.registry.pubsubs.values().map(|p| {
        (
            p.component.name.clone(),
            p.broker.health().map_err(|e| e.to_string()),
        )
    });
    let stores = api
        .registry
        .stores
        .iter()
        .map(|(name, s)| (name.clone(), s.health().map_err(|e| e.to_string())));
    pubsubs.chain(stores).collect()
}

/// `GET /v1.0/healthz/outbound`: 204 once the components are loaded
/// (daprd's rule, which the SDKs' `wait_for_sidecar` polls; they are
/// loaded before the API listens). A broker that is down does not make it
/// unready; see [`healthz`] for where that is reported.
pub fn outbound(_api: &ApiState) -> Resp {
    empty(StatusCode::NO_CONTENT)
}

/// `GET /v1.0/metadata`.
pub fn metadata(api: &ApiState) -> Resp {
    json(StatusCode::OK, &metadata_view(api))
}

/// The metadata both APIs answer with (`GET /v1.0/metadata`, gRPC
/// `GetMetadata`), as the HTTP API's JSON.
pub(crate) fn metadata_view(api: &ApiState) -> Value {
    let s = &api.settings;
    // Every component, as daprd lists them, with Perch's `healthy` (and
    // `healthError`) beside Dapr's fields.
    let health: BTreeMap<String, Result<(), String>> = component_health(api).into_iter().collect();
    let with_health = |mut c: Value, name: &str| {
        match health.get(name) {
            Some(Ok(())) => c["healthy"] = json!(true),
            Some(Err(e)) => {
                c["healthy"] = json!(false);
                c["healthError"] = json!(e);
            }
            None => {}
        }
        c
    };
    let components: Vec<Value> = api
        .registry
        .pubsubs
        .values()
        .map(|p| {
            let c = json!({"name": p.component.name, "type": p.component.type_name, "version": "v1",
                   "capabilities": p.broker.capabilities()});
            with_health(c, &p.component.name)
        })
        .chain(api.registry.stores.keys().map(|name| {
            with_health(
                json!({"name": name, "type": api.registry.store_types.get(name).copied().unwrap_or("store"),
                       "version": "v1", "capabilities": []}),
                name,
            )
        }))
        .collect();
    let subscriptions: Vec<Value> = api.status
        .subscriptions
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .map(|sub| {
            let rules: Vec<Value> = sub
                .rules
                .iter()
                .map(|r| if r.match_expr.is_empty() { json!({"path": r.path}) } else { json!({"match": r.match_expr, "path": r.path}) })
                .collect();
            json!({"pubsubname": sub.pubsubname, "topic": sub.topic, "metadata": sub.metadata,
                   "rules": rules, "deadLetterTopic": sub.dead_letter_topic.clone().unwrap_or_default(),
                   "type": match sub.source { SubscriptionSource::Declarative => "DECLARATIVE", SubscriptionSource::Programmatic => "PROGRAMMATIC", SubscriptionSource::Streaming => "STREAMING" }})
        })
        .collect();
    let protocol = match s.app_protocol {
        crate::state::AppProtocol::Http => "http",
        crate::state::AppProtocol::Grpc => "grpc",
    };
    let mut app = json!({"channelAddress": s.app_channel_address, "protocol": protocol,
                         "maxConcurrency": s.app_max_concurrency.unwrap_or(0)});
    if let Some(port) = s.app_port {
        app["port"] = json!(port);
    }
    if let Some(h) = &s.app_health {
        app["health"] = json!({"healthCheckPath": h.path,
            "healthProbeInterval": format_duration(h.interval),
            "healthProbeTimeout": format_duration(h.timeout),
            "healthThreshold": h.threshold});
    }
    let denied: Vec<Value> = api.status
        .denied
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .map(|s| {
            json!({"pubsubname": s.pubsubname, "topic": s.topic,
                   "reason": format!("subscription to topic '{}' on pubsub '{}' is not allowed", s.topic, s.pubsubname)})
        })
        .collect();
    let extended = api
        .status
        .extended
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let outbox: serde_json::Map<String, Value> = api
        .registry
        .pubsubs
        .iter()
        .filter(|(_, e)| e.outbox.is_some())
        .map(|(n, e)| (n.clone(), json!(e.backlog.waiting())))
        .collect();
    let parked: serde_json::Map<String, Value> = api
        .registry
        .pubsubs
        .iter()
        .filter(|(_, e)| e.outbox.is_some())
        .map(|(n, e)| (n.clone(), json!(e.backlog.parked())))
        .collect();
    json!({
        "id": s.app_id,
        "runtimeVersion": concat!("perch-", env!("CARGO_PKG_VERSION")),
        "enabledFeatures": [],
        "components": components,
        "subscriptions": subscriptions,
        "appConnectionProperties": app,
        "extended": extended,
        "gracefulShutdown": format_duration(s.graceful_shutdown),
        "deniedSubscriptions": denied,
        "outboxPending": outbox,
        "outboxParked": parked,
    })
}

/// `PUT /v1.0/metadata/{key}`: the body becomes an `extended` attribute.
pub async fn put_metadata(req: Request<Incoming>, key: String, api: &ApiState) -> Resp {
    let body = match http_body_util::Limited::new(req.into_body(), 64 * 1024)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => return error(&ApiError::body_too_large(64 * 1024)),
    };
    api.status
        .extended
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(key, String::from_utf8_lossy(&body).into_owned());
    empty(StatusCode::NO_CONTENT)
}

/// `GET /v1.0-alpha1/lag?pubsub=&topic=`: the consumer group's lag, in
/// total and per partition (or queue), for KEDA's `metrics-api` scaler.
pub async fn lag(query: &BTreeMap<String, String>, api: &ApiState) -> Resp {
    let (Some(pubsub), Some(topic)) = (query.get("pubsub"), query.get("topic")) else {
        return error(&ApiError::bad_request(
            "ERR_MALFORMED_REQUEST",
            "query parameters pubsub and topic are required".into(),
        ));
    };
    let Some(entry) = api.registry.pubsubs.get(pubsub) else {
        return error(&ApiError::bad_request(
            "ERR_PUBSUB_NOT_FOUND",
            format!("pubsub {pubsub} is not found"),
        ));
    };
    let broker_topic = entry.component.broker_topic(topic);
    let parts: Vec<Value> = entry
        .broker
        .lag()
        .await
        .into_iter()
        .filter(|l| l.topic == broker_topic)
        .map(|l| json!({"partition": l.partition, "lag": l.messages}))
        .collect();
    let total: i64 = parts.iter().filter_map(|p| p["lag"].as_i64()).sum();
    json(
        StatusCode::OK,
        &json!({"pubsub": pubsub, "topic": topic, "lag": total, "partitions": parts}),
    )
}
