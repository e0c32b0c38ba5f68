//! Dapr's API errors: the `errorCode`, ErrorInfo reason, HTTP status and
//! error JSON (`errorCode`, `message`, `details`) of every pub/sub API error,
//! chosen in one place (reference section 1.2). A leaf: the publish path
//! returns these, and each transport renders them.

use std::collections::BTreeMap;

use serde_json::{json, Value};

/// A pub/sub API error as daprd reports it.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// Dapr's `errorCode`.
    pub code: &'static str,
    /// ErrorInfo `reason`.
    pub reason: &'static str,
    /// Human message.
    pub message: String,
    /// Pubsub name for ResourceInfo; `None` leaves ResourceInfo out.
    pub resource: Option<String>,
    /// ErrorInfo metadata.
    pub metadata: BTreeMap<String, String>,
}

/// daprd's `WithAppError` ErrorInfo metadata.
fn app_error(app_id: &str, err: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("appID".into(), app_id.into()),
        ("error".into(), err.into()),
    ])
}

impl ApiError {
    fn new(status: u16, code: &'static str, reason: &'static str, message: String) -> Self {
        Self {
            status,
            code,
            reason,
            message,
            resource: None,
            metadata: BTreeMap::new(),
        }
    }
    fn on(mut self, pubsub: &str) -> Self {
        self.resource = Some(pubsub.to_owned());
        self
    }
    fn with(mut self, md: BTreeMap<String, String>) -> Self {
        self.metadata = md;
        self
    }

    /// The URL has no pubsub name.
    pub fn pubsub_empty(md: &BTreeMap<String, String>) -> Self {
        Self::new(
            404,
            "ERR_PUBSUB_EMPTY",
            "DAPR_PUBSUB_NAME_EMPTY",
            "pubsub name is empty".into(),
        )
        .on("")
        .with(md.clone())
    }
    /// No component with that name.
    pub fn pubsub_not_found(name: &str, md: &BTreeMap<String, String>) -> Self {
        Self::new(
            404,
            "ERR_PUBSUB_NOT_FOUND",
            "DAPR_PUBSUB_NOT_FOUND",
            format!("pubsub {name} is not found"),
        )
        .with(md.clone())
    }
    /// The URL has no topic.
    pub fn topic_empty(name: &str, md: &BTreeMap<String, String>) -> Self {
        Self::new(
            404,
            "ERR_TOPIC_NAME_EMPTY",
            "DAPR_PUBSUB_TOPIC_NAME_EMPTY",
            format!("topic is empty in pubsub {name}"),
        )
        .on(name)
        .with(md.clone())
    }
    /// `rawPayload` is not a boolean.
    pub fn bad_metadata(name: &str, value: &str, md: &BTreeMap<String, String>) -> Self {
        Self::new(
            400,
            "ERR_PUBSUB_REQUEST_METADATA",
            "DAPR_PUBSUB_METADATA_DESERIALIZATION",
            format!("failed deserializing metadata. Error: rawPayload value must be a valid boolean: actual is '{value}'"),
        )
        .on(name)
        .with(md.clone())
    }
    /// The body is declared a CloudEvent but is not one.
    pub fn cloud_event_creation(name: &str, app_id: &str, err: &str) -> Self {
        Self::new(
            500,
            "ERR_PUBSUB_CLOUD_EVENTS_SER",
            "DAPR_PUBSUB_CLOUD_EVENT_CREATION",
            "cannot create cloudevent".into(),
        )
        .on(name)
        .with(app_error(app_id, err))
    }
    /// Scoping denies the topic.
    pub fn forbidden(name: &str, topic: &str, app_id: &str) -> Self {
        let msg = format!("topic {topic} is not allowed for app id {app_id}");
        Self::new(
            403,
            "ERR_PUBSUB_FORBIDDEN",
            "DAPR_PUBSUB_FORBIDDEN",
            msg.clone(),
        )
        .on(name)
        .with(BTreeMap::from([
            ("topic".into(), topic.into()),
            ("error".into(), msg),
        ]))
    }
    /// The broker did not take the message.
    pub fn publish_failed(name: &str, topic: &str, err: &str) -> Self {
        Self::new(
            500,
            "ERR_PUBSUB_PUBLISH_MESSAGE",
            "DAPR_PUBSUB_PUBLISH_MESSAGE",
            format!("error when publishing to topic {topic} in pubsub {name}: {err}"),
        )
        .on(name)
        .with(BTreeMap::from([
            ("topic".into(), topic.into()),
            ("error".into(), err.into()),
        ]))
    }
    /// A bulk entry's `event` does not match its `contentType`.
    pub fn marshal_envelope(name: &str, topic: &str, app_id: &str, err: &str) -> Self {
        Self::new(
            400,
            "ERR_PUBSUB_EVENTS_SER",
            "DAPR_PUBSUB_MARSHAL_ENVELOPE",
            format!(
                "error when marshalling cloud event envelope for topic {topic} pubsub {name}: {err}"
            ),
        )
        .on(name)
        .with(app_error(app_id, err))
    }
    /// A bulk entry id is missing or repeated.
    pub fn marshal_events(name: &str, topic: &str, app_id: &str, err: &str) -> Self {
        Self::new(
            400,
            "ERR_PUBSUB_EVENTS_SER",
            "DAPR_PUBSUB_MARSHAL_EVENTS",
            format!(
                "error marshaling events to bytes for topic {topic} pubsub {name}. error: {err}"
            ),
        )
        .on(name)
        .with(app_error(app_id, err))
    }
    /// A bulk body is not a JSON array of entries.
    pub fn unmarshal_events(name: &str, topic: &str, app_id: &str, err: &str) -> Self {
        Self::new(
            400,
            "ERR_PUBSUB_EVENTS_SER",
            "DAPR_PUBSUB_UNMARSHAL_EVENTS",
            format!("error when unmarshaling the request for topic {topic} pubsub {name}: {err}"),
        )
        .on(name)
        .with(app_error(app_id, err))
    }
    /// The body is larger than `--max-body-size`.
    pub fn body_too_large(limit: usize) -> Self {
        Self::new(
            413,
            "ERR_BODY_TOO_LARGE",
            "DAPR_BODY_TOO_LARGE",
            format!("request body larger than the limit of {limit} bytes (--max-body-size)"),
        )
    }
    /// Health endpoints when not ready.
    /// A request with missing or bad parameters (400).
    pub fn bad_request(code: &'static str, message: String) -> Self {
        Self::new(400, code, "DAPR_BAD_REQUEST", message)
    }
    /// Health endpoints when not ready.
    pub fn not_ready(code: &'static str, message: String) -> Self {
        Self::new(500, code, "DAPR_HEALTH_NOT_READY", message)
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        let mut error_info = json!({
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "domain": "dapr.io",
            "reason": self.reason,
        });
        // daprd always writes the map (`{}` when empty).
        error_info["metadata"] = json!(self.metadata);
        let mut details = Vec::new();
        if let Some(name) = &self.resource {
            details.push(json!({
                "@type": "type.googleapis.com/google.rpc.ResourceInfo",
                "resource_type": "pubsub",
                "resource_name": name,
                "owner": "",
                "description": self.message,
            }));
        }
        details.push(error_info);
        json!({"errorCode": self.code, "message": self.message, "details": details})
    }
}
