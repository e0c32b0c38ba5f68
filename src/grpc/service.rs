//! `dapr.proto.runtime.v1.Dapr`: publish, bulk publish (both names),
//! metadata and shutdown, through the same code as the HTTP API
//! ([`crate::publish`], the metadata view, the shutdown request): one path,
//! two transports.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde_json::Value;
use tonic::{Request, Response, Status};

use super::gen::dapr_server::Dapr;
use super::gen::*;
use super::status::status_of;
use crate::errors::ApiError;
use crate::http::ApiState;
use crate::publish;

/// The service, over the API's shared state and the delivery engine
/// (streaming subscriptions).
pub struct DaprApi {
    pub(super) api: ApiState,
    pub(super) engine: crate::delivery::Engine,
}

/// A gRPC metadata value as text.
fn header<T>(req: &Request<T>, name: &str) -> Option<String> {
    req.metadata()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// The call's W3C `traceparent` and `tracestate` metadata.
fn trace<T>(req: &Request<T>) -> (Option<String>, Option<String>) {
    (header(req, "traceparent"), header(req, "tracestate"))
}

/// Proto maps are unordered; the publish path takes a sorted map.
fn sorted(m: std::collections::HashMap<String, String>) -> BTreeMap<String, String> {
    m.into_iter().collect()
}

impl DaprApi {
    async fn bulk(&self, req: Request<BulkPublishRequest>) -> Result<BulkPublishResponse, Status> {
        let (traceparent, tracestate) = trace(&req);
        let r = req.into_inner();
        let metadata = sorted(r.metadata);
        let t = publish::target(&self.api.registry, &r.pubsub_name, r.topic, &metadata)
            .map_err(|e| status_of(&e))?;
        let bulk = publish::Bulk {
            entries: r
                .entries
                .into_iter()
                .map(|e| publish::BulkEntry {
                    entry_id: e.entry_id,
                    event: publish::EntryEvent::Bytes(Bytes::from(e.event)),
                    content_type: e.content_type,
                    // An empty proto map is Go's nil map: no entry metadata.
                    metadata: (!e.metadata.is_empty()).then(|| sorted(e.metadata)),
                })
                .collect(),
            metadata,
            traceparent,
            tracestate,
        };
        let results = publish::bulk(&t, &self.api.settings.app_id, bulk)
            .await
            .map_err(|e| status_of(&e))?;
        // daprd: any entry the broker did not take fails the whole call
        // with Internal; gRPC carries no body with an error, so the
        // failed entries are not listed.
        if let Some(err) = results.iter().find_map(|(_, r)| r.as_ref().err()) {
            let e = ApiError::publish_failed(&t.pubsub.component.name, &t.topic, &err.to_string());
            return Err(status_of(&e));
        }
        Ok(BulkPublishResponse {
            failed_entries: vec![],
        })
    }
}

#[tonic::async_trait]
impl Dapr for DaprApi {
    type SubscribeTopicEventsAlpha1Stream = super::stream::EventStream;

    async fn subscribe_topic_events_alpha1(
        &self,
        req: Request<tonic::Streaming<SubscribeTopicEventsRequestAlpha1>>,
    ) -> Result<Response<Self::SubscribeTopicEventsAlpha1Stream>, Status> {
        super::stream::subscribe(&self.engine, req).await
    }

    async fn publish_event(
        &self,
        req: Request<PublishEventRequest>,
    ) -> Result<Response<()>, Status> {
        let (traceparent, tracestate) = trace(&req);
        let r = req.into_inner();
        let metadata = sorted(r.metadata);
        let t = publish::target(&self.api.registry, &r.pubsub_name, r.topic, &metadata)
            .map_err(|e| status_of(&e))?;
        let single = publish::Single {
            body: Bytes::from(r.data),
            // An empty content type is an HTTP request without one.
            content_type: Some(r.data_content_type).filter(|c| !c.is_empty()),
            metadata,
            traceparent,
            tracestate,
        };
        publish::single(&t, &self.api.settings.app_id, single)
            .await
            .map_err(|e| status_of(&e))?;
        Ok(Response::new(()))
    }

    async fn bulk_publish_event_alpha1(
        &self,
        req: Request<BulkPublishRequest>,
    ) -> Result<Response<BulkPublishResponse>, Status> {
        self.bulk(req).await.map(Response::new)
    }

    async fn bulk_publish_event(
        &self,
        req: Request<BulkPublishRequest>,
    ) -> Result<Response<BulkPublishResponse>, Status> {
        self.bulk(req).await.map(Response::new)
    }

    async fn get_metadata(
        &self,
        _req: Request<GetMetadataRequest>,
    ) -> Result<Response<GetMetadataResponse>, Status> {
        Ok(Response::new(metadata_of(
            &crate::http::runtime_api::metadata_view(&self.api),
        )))
    }

    async fn set_metadata(&self, req: Request<SetMetadataRequest>) -> Result<Response<()>, Status> {
        let r = req.into_inner();
        self.api
            .status
            .extended
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(r.key, r.value);
        Ok(Response::new(()))
    }

    async fn shutdown(&self, _req: Request<ShutdownRequest>) -> Result<Response<()>, Status> {
        // The answer is written before the process exits: the server
        // waits for its connections (`Connections::drained`).
        self.api.shutdown.request();
        Ok(Response::new(()))
    }
}

/// The gRPC metadata from the HTTP API's view (one source for both).
fn metadata_of(v: &Value) -> GetMetadataResponse {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| a.iter().map(s).collect())
            .unwrap_or_default()
    };
    let map = |v: &Value| -> std::collections::HashMap<String, String> {
        v.as_object()
            .map(|o| o.iter().map(|(k, v)| (k.clone(), s(v))).collect())
            .unwrap_or_default()
    };
    let list = |v: &Value| v.as_array().cloned().unwrap_or_default();
    let app = &v["appConnectionProperties"];
    let health = &app["health"];
    GetMetadataResponse {
        id: s(&v["id"]),
        registered_components: list(&v["components"])
            .iter()
            .map(|c| RegisteredComponents {
                name: s(&c["name"]),
                r#type: s(&c["type"]),
                version: s(&c["version"]),
                capabilities: strings(&c["capabilities"]),
            })
            .collect(),
        extended_metadata: map(&v["extended"]),
        subscriptions: list(&v["subscriptions"])
            .iter()
            .map(|sub| PubsubSubscription {
                pubsub_name: s(&sub["pubsubname"]),
                topic: s(&sub["topic"]),
                metadata: map(&sub["metadata"]),
                rules: Some(PubsubSubscriptionRules {
                    rules: list(&sub["rules"])
                        .iter()
                        .map(|r| PubsubSubscriptionRule {
                            r#match: s(&r["match"]),
                            path: s(&r["path"]),
                        })
                        .collect(),
                }),
                dead_letter_topic: s(&sub["deadLetterTopic"]),
                r#type: match sub["type"].as_str() {
                    Some("DECLARATIVE") => PubsubSubscriptionType::Declarative,
                    Some("PROGRAMMATIC") => PubsubSubscriptionType::Programmatic,
                    Some("STREAMING") => PubsubSubscriptionType::Streaming,
                    _ => PubsubSubscriptionType::Unknown,
                } as i32,
            })
            .collect(),
        app_connection_properties: Some(AppConnectionProperties {
            port: app["port"].as_i64().unwrap_or(0) as i32,
            protocol: s(&app["protocol"]),
            channel_address: s(&app["channelAddress"]),
            max_concurrency: app["maxConcurrency"].as_i64().unwrap_or(0) as i32,
            health: health.is_object().then(|| AppConnectionHealthProperties {
                health_check_path: s(&health["healthCheckPath"]),
                health_probe_interval: s(&health["healthProbeInterval"]),
                health_probe_timeout: s(&health["healthProbeTimeout"]),
                health_threshold: health["healthThreshold"].as_i64().unwrap_or(0) as i32,
            }),
        }),
        runtime_version: s(&v["runtimeVersion"]),
        enabled_features: strings(&v["enabledFeatures"]),
        // daprd without a placement service.
        actor_runtime: Some(ActorRuntime {
            runtime_status: actor_runtime::ActorRuntimeStatus::Disabled as i32,
            host_ready: false,
            placement: String::new(),
        }),
    }
}
