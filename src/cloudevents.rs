//! Dapr's CloudEvent envelope rules, with no I/O: wrapping a published body
//! (reference `dapr-pubsub.md` section 1.3), completing a body that already
//! is a CloudEvent (1.4), TTL `expiration` (4.1), and the synthetic envelope
//! for raw-payload subscriptions (3.4). Every envelope Perch builds is built
//! here.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use chrono::{SecondsFormat, Utc};
use serde_json::{Map, Value};

use crate::telemetry::trace::TraceParent;

/// A CloudEvent as a JSON object; keys serialise sorted, as Go's maps do.
pub type Envelope = Map<String, Value>;

/// The content type a message carries on the broker when it is a JSON
/// CloudEvent, and the one every delivery to the app declares.
pub const CLOUDEVENT_CONTENT_TYPE: &str = "application/cloudevents+json";
/// Dapr's default `type` (`contrib:pubsub/envelope.go`).
pub const DEFAULT_EVENT_TYPE: &str = "com.dapr.event.sent";
/// Dapr's `source` when the app id is empty or an incoming CloudEvent has none.
pub const DEFAULT_SOURCE: &str = "Dapr";
/// Content type assumed when a publish request has none (Dapr's default).
pub const DEFAULT_DATA_CONTENT_TYPE: &str = "text/plain";

/// Why no envelope could be built.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EnvelopeError {
    /// The body was declared `application/cloudevents+json` but is not a JSON object.
    #[error("cannot create cloudevent: body is not a JSON object: {0}")]
    InvalidCloudEvent(String),
}

/// Everything the publish path knows when it wraps one message.
#[derive(Debug, Clone)]
pub struct PublishInput<'a> {
    /// The publishing app's id: the default `source`.
    pub app_id: &'a str,
    /// Pubsub component name, written to `pubsubname`.
    pub pubsub: &'a str,
    /// Topic, written to `topic`.
    pub topic: &'a str,
    /// The request's `Content-Type`, parameters included.
    pub content_type: Option<&'a str>,
    /// The request body.
    pub body: &'a [u8],
    /// Publish metadata (`metadata.*` query parameters, or a bulk entry's map).
    pub metadata: &'a BTreeMap<String, String>,
    /// The producer span: its `traceparent` goes into the event.
    pub trace: TraceParent,
    /// The incoming `tracestate`, if any.
    pub tracestate: Option<&'a str>,
}

/// Returns the media type of a content type, lowercased, without parameters.
pub fn media_type(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// `application/json` with any parameters.
pub fn is_json(content_type: &str) -> bool {
    media_type(content_type) == "application/json"
}

/// `application/cloudevents+json` with any parameters.
pub fn is_cloudevent_json(content_type: &str) -> bool {
    media_type(content_type) == CLOUDEVENT_CONTENT_TYPE
}

/// Types whose body goes into `data_base64` rather than `data`.
pub fn is_binary(content_type: &str) -> bool {
    matches!(
        media_type(content_type).as_str(),
        "application/octet-stream" | "application/cloudevents+protobuf"
    )
}

/// Dapr's "string" types: `text/*` and `application/xml`.
pub fn is_string_type(content_type: &str) -> bool {
    let m = media_type(content_type);
    m.starts_with("text/") || m == "application/xml"
}

/// Builds the envelope for a non-raw publish: wraps a plain body, or
/// completes a body that already is a CloudEvent; then applies TTL.
pub fn envelope_for_publish(input: &PublishInput<'_>) -> Result<Envelope, EnvelopeError> {
    let mut ev = match input.content_type {
        Some(ct) if is_cloudevent_json(ct) => from_cloud_event(input)?,
        _ => wrap(input),
    };
    if let Some(at) = ttl_from_metadata(input.metadata).and_then(expiration_after) {
        ev.insert("expiration".into(), Value::String(at));
    }
    Ok(ev)
}

fn wrap(input: &PublishInput<'_>) -> Envelope {
    let over = Overrides::from_metadata(input.metadata);
    let content_type = match input.content_type {
        Some(ct) if !ct.is_empty() => ct,
        _ => DEFAULT_DATA_CONTENT_TYPE,
    };
    let mut ev = Map::new();
    let id = over
        .get("id")
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    ev.insert("id".into(), id.into());
    let source = over.get("source").unwrap_or(if input.app_id.is_empty() {
        DEFAULT_SOURCE
    } else {
        input.app_id
    });
    ev.insert("source".into(), source.into());
    ev.insert(
        "type".into(),
        over.get("type").unwrap_or(DEFAULT_EVENT_TYPE).into(),
    );
    ev.insert("specversion".into(), "1.0".into());
    ev.insert("datacontenttype".into(), content_type.into());
    if is_binary(content_type) {
        ev.insert(
            "data_base64".into(),
            base64::engine::general_purpose::STANDARD
                .encode(input.body)
                .into(),
        );
    } else if is_json(content_type) {
        let data = serde_json::from_slice::<Value>(input.body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(input.body).into_owned()));
        ev.insert("data".into(), data);
    } else {
        ev.insert(
            "data".into(),
            String::from_utf8_lossy(input.body).into_owned().into(),
        );
    }
    ev.insert("topic".into(), input.topic.into());
    ev.insert("pubsubname".into(), input.pubsub.into());
    // cloudevent.traceparent wins over cloudevent.traceid; both fields carry it.
    let producer = input.trace.to_string();
    let traceparent = over
        .get("traceparent")
        .or_else(|| over.get("traceid"))
        .map(str::to_owned)
        .unwrap_or(producer);
    ev.insert("traceid".into(), traceparent.clone().into());
    ev.insert("traceparent".into(), traceparent.into());
    let tracestate = over
        .get("tracestate")
        .or(input.tracestate)
        .unwrap_or_default();
    ev.insert("tracestate".into(), tracestate.into());
    ev.insert("time".into(), now_local_rfc3339().into());
    if let Some(subject) = over.get("subject") {
        ev.insert("subject".into(), subject.into());
    }
    ev
}

fn from_cloud_event(input: &PublishInput<'_>) -> Result<Envelope, EnvelopeError> {
    let mut ev: Envelope = serde_json::from_slice(input.body)
        .map_err(|e| EnvelopeError::InvalidCloudEvent(e.to_string()))?;
    ev.insert("topic".into(), input.topic.into());
    ev.insert("pubsubname".into(), input.pubsub.into());
    if !ev.contains_key("traceid") {
        let producer = input.trace.to_string();
        ev.insert("traceid".into(), producer.clone().into());
        ev.insert("traceparent".into(), producer.into());
    }
    ev.entry("tracestate")
        .or_insert_with(|| input.tracestate.unwrap_or_default().into());
    ev.entry("source").or_insert_with(|| DEFAULT_SOURCE.into());
    ev.entry("type")
        .or_insert_with(|| DEFAULT_EVENT_TYPE.into());
    ev.entry("specversion").or_insert_with(|| "1.0".into());
    ev.entry("time")
        .or_insert_with(|| now_local_rfc3339().into());
    Ok(ev)
}

/// The `cloudevent.*` overrides, matched case-insensitively as Go's
/// `mapstructure.WeakDecode` does. Empty values do not override.
struct Overrides<'a>(BTreeMap<String, &'a str>);

impl<'a> Overrides<'a> {
    fn from_metadata(md: &'a BTreeMap<String, String>) -> Self {
        const KEYS: [&str; 7] = [
            "id",
            "source",
            "type",
            "subject",
            "traceid",
            "traceparent",
            "tracestate",
        ];
        let mut map = BTreeMap::new();
        for (k, v) in md {
            let lower = k.to_ascii_lowercase();
            if let Some(field) = lower.strip_prefix("cloudevent.") {
                if KEYS.contains(&field) && !v.is_empty() {
                    map.insert(field.to_owned(), v.as_str());
                }
            }
        }
        Self(map)
    }

    fn get(&self, field: &str) -> Option<&'a str> {
        self.0.get(field).copied()
    }
}

/// The message TTL from publish metadata, read as Dapr's `TryGetTTL`
/// reads it: `ttl`, else `ttlInSeconds`, keys matched ignoring case;
/// integer seconds or a Go duration. An invalid value is ignored, as daprd
/// ignores it; zero or negative is no TTL (daprd expires such a message at
/// once).
pub fn ttl_from_metadata(md: &BTreeMap<String, String>) -> Option<Duration> {
    let get = |key: &str| {
        md.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    };
    let raw = get("ttl").or_else(|| get("ttlInSeconds"))?;
    crate::util::parse_ttl(raw).ok()
}

/// The RFC 3339 time `ttl` from now; `None` when that is past the last
/// representable date (a TTL of billions of years never expires; found by
/// the `publish_envelope` fuzz target, it used to panic on the overflow).
fn expiration_after(ttl: Duration) -> Option<String> {
    let ttl = chrono::Duration::from_std(ttl).ok()?;
    let at = Utc::now().checked_add_signed(ttl)?;
    Some(at.to_rfc3339_opts(SecondsFormat::Secs, true))
}

#[cfg(test)]
mod ttl_tests {
    use super::*;

    #[test]
    fn a_ttl_past_the_last_representable_date_sets_no_expiration() {
        assert!(expiration_after(Duration::from_secs(5_444_444_444_444_444_444)).is_none());
        assert!(expiration_after(Duration::from_secs(60)).is_some());
        let md = BTreeMap::from([("ttlInSeconds".to_owned(), "5444444444444444444".to_owned())]);
        let ev = envelope_for_publish(&PublishInput {
            app_id: "a",
            pubsub: "p",
            topic: "t",
            content_type: Some("application/json"),
            body: b"{}",
            metadata: &md,
            trace: crate::telemetry::trace::TraceParent::child_of(None),
            tracestate: None,
        })
        .unwrap();
        assert!(!ev.contains_key("expiration"));
    }
}

/// True when the event has an `expiration` in the past (Dapr's `HasExpired`).
/// A missing or unparsable expiration never expires.
pub fn has_expired(ev: &Envelope) -> bool {
    ev.get("expiration")
        .and_then(Value::as_str)
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .is_some_and(|at| at < Utc::now())
}

fn now_local_rfc3339() -> String {
    chrono::Local::now().to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Dapr's envelope for a raw-payload subscription (section 3.4): the broker
/// bytes in `data_base64`, a fresh id, no `time`, and the trace fields only
/// when the broker metadata carries them.
pub fn raw_payload_envelope(
    pubsub: &str,
    topic: &str,
    data: &[u8],
    metadata: &BTreeMap<String, String>,
) -> Envelope {
    let mut ev = Map::new();
    ev.insert("id".into(), uuid::Uuid::new_v4().to_string().into());
    ev.insert("specversion".into(), "1.0".into());
    ev.insert("datacontenttype".into(), "application/octet-stream".into());
    ev.insert("source".into(), DEFAULT_SOURCE.into());
    ev.insert("type".into(), DEFAULT_EVENT_TYPE.into());
    ev.insert("topic".into(), topic.into());
    ev.insert("pubsubname".into(), pubsub.into());
    ev.insert(
        "data_base64".into(),
        base64::engine::general_purpose::STANDARD
            .encode(data)
            .into(),
    );
    for key in ["traceid", "traceparent", "tracestate"] {
        if let Some(v) = metadata.get(key) {
            ev.insert(key.into(), v.clone().into());
        }
    }
    ev
}

/// The attributes a delivery to an HTTP app reads from an event without
/// routing rules: the idempotency key's, the trace context's, the expiry.
pub const DELIVERY_ATTRIBUTES: &[&str] = &["id", "source", "expiration", "traceparent", "traceid"];

/// Parses `bytes` as a JSON object (a CloudEvent) and keeps only the
/// attributes named in `keep`; every other member is checked and skipped
/// without being built. `None` when `bytes` is not a JSON object. A full
/// parse builds every member (a 1 KiB `data` object is tens of
/// allocations), which a delivery that only forwards the bytes never reads.
pub fn parse_attributes(bytes: &[u8], keep: &'static [&'static str]) -> Option<Envelope> {
    use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
    struct Attributes(&'static [&'static str]);
    impl<'de> Visitor<'de> for Attributes {
        type Value = Envelope;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Envelope, A::Error> {
            let mut out = Envelope::new();
            while let Some(key) = map.next_key_seed(Wanted(self.0))? {
                match key {
                    Some(k) => {
                        let v: Value = map.next_value()?;
                        out.insert(k.to_owned(), v);
                    }
                    None => {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
            }
            Ok(out)
        }
    }
    impl<'de> DeserializeSeed<'de> for Attributes {
        type Value = Envelope;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Envelope, D::Error> {
            d.deserialize_map(self)
        }
    }
    /// A member name: which of the wanted ones it is, compared in place
    /// (no string is built for the names skipped).
    struct Wanted(&'static [&'static str]);
    impl<'de> Visitor<'de> for Wanted {
        type Value = Option<&'static str>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a member name")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(self.0.iter().copied().find(|k| *k == v))
        }
    }
    impl<'de> DeserializeSeed<'de> for Wanted {
        type Value = Option<&'static str>;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_str(self)
        }
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let ev = Attributes(keep).deserialize(&mut de).ok()?;
    de.end().ok()?;
    Some(ev)
}

#[cfg(test)]
mod tests;
