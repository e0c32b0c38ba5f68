//! AMQP properties and headers as the metadata Perch delivers.

use std::collections::BTreeMap;

use lapin::types::AMQPValue;
use lapin::BasicProperties;

/// AMQP headers as metadata; with `publishMessagePropertiesToMetadata`,
/// also Dapr's `metadata.*` property keys.
pub(super) fn metadata_of(p: &BasicProperties, properties: bool) -> BTreeMap<String, String> {
    let mut md = BTreeMap::new();
    if let Some(h) = p.headers() {
        for (k, v) in h.inner() {
            if let Some(s) = value_text(v) {
                md.insert(k.to_string(), s);
            }
        }
    }
    if properties {
        for (key, value) in [
            ("metadata.messageid", p.message_id()),
            ("metadata.correlationid", p.correlation_id()),
            ("metadata.type", p.kind()),
            ("metadata.contenttype", p.content_type()),
        ] {
            if let Some(v) = value {
                md.insert(key.into(), v.to_string());
            }
        }
        if let Some(h) = p.headers() {
            for (k, v) in h.inner() {
                if let Some(s) = value_text(v) {
                    md.insert(format!("metadata.{k}"), s);
                }
            }
        }
    }
    md
}

fn value_text(v: &AMQPValue) -> Option<String> {
    Some(match v {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.to_string(),
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::ShortInt(n) => n.to_string(),
        _ => return None,
    })
}
