//! A message as a stream entry, in Dapr's layout (components-contrib
//! `pubsub/redis`): field `data` holds the bytes published (the CloudEvent
//! JSON, or a raw payload) and field `metadata` the publish metadata as a
//! JSON object of strings. Perch adds `content-type` when it knows one;
//! daprd reads only `data` and `metadata`, so a stream either writes is
//! read by the other.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use redis::Value;

use crate::broker::carried_metadata;
use crate::message::Message;

/// The payload field.
pub(super) const DATA: &str = "data";
/// The metadata field (JSON object of strings).
pub(super) const METADATA: &str = "metadata";
/// Perch's content-type field.
pub(super) const CONTENT_TYPE: &str = "content-type";

/// Appends the field/value pairs of `msg` to an `XADD`.
pub(super) fn push_fields(cmd: &mut redis::Cmd, msg: &Message) {
    cmd.arg(DATA).arg(&msg.data[..]);
    let md: BTreeMap<&String, &String> = carried_metadata(&msg.metadata).collect();
    if !md.is_empty() {
        cmd.arg(METADATA)
            .arg(serde_json::to_vec(&md).unwrap_or_default());
    }
    if let Some(ct) = &msg.content_type {
        cmd.arg(CONTENT_TYPE).arg(ct.as_str());
    }
}

/// What an entry read from the stream carries.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Decoded {
    pub(super) data: Bytes,
    pub(super) content_type: Option<String>,
    pub(super) metadata: BTreeMap<String, String>,
}

fn bytes_of(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

/// Reads an entry's fields, taking them out of `map`: the payload's bytes
/// move into the delivery without a copy. A `metadata` field that is not a
/// JSON object of strings is skipped with a warning (daprd does the same),
/// so the message is still delivered.
pub(super) fn decode(id: &str, mut map: HashMap<String, Value>) -> Decoded {
    let data = match map.remove(DATA) {
        Some(Value::BulkString(b)) => Bytes::from(b),
        Some(Value::SimpleString(s)) => Bytes::from(s),
        _ => Bytes::new(),
    };
    let content_type = map
        .get(CONTENT_TYPE)
        .and_then(bytes_of)
        .map(|b| String::from_utf8_lossy(b).into_owned());
    let metadata = match map.get(METADATA).and_then(bytes_of) {
        None => BTreeMap::new(),
        Some(raw) => serde_json::from_slice(raw).unwrap_or_else(|e| {
            tracing::warn!(entry = id, error = %e, "redis entry's metadata is not a JSON object of strings; delivered without it");
            BTreeMap::new()
        }),
    };
    Decoded {
        data,
        content_type,
        metadata,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The field/value pairs an `XADD` of `msg` writes.
    fn written(msg: &Message) -> Vec<(String, Vec<u8>)> {
        let mut cmd = redis::cmd("XADD");
        push_fields(&mut cmd, msg);
        // The first argument is the command's name.
        let args: Vec<Vec<u8>> = cmd
            .args_iter()
            .skip(1)
            .map(|a| match a {
                redis::Arg::Simple(b) => b.to_vec(),
                _ => vec![],
            })
            .collect();
        args.chunks(2)
            .map(|kv| (String::from_utf8(kv[0].clone()).unwrap(), kv[1].clone()))
            .collect()
    }

    fn as_map(fields: Vec<(String, Vec<u8>)>) -> HashMap<String, Value> {
        fields
            .into_iter()
            .map(|(k, v)| (k, Value::BulkString(v)))
            .collect()
    }

    #[test]
    fn an_entry_reads_back_as_it_was_published() {
        let msg = Message {
            topic: "orders".into(),
            data: Bytes::from_static(b"{\"specversion\":\"1.0\"}"),
            content_type: Some("application/cloudevents+json".into()),
            metadata: [
                ("ttlInSeconds".to_owned(), "30".to_owned()),
                ("rawPayload".to_owned(), "false".to_owned()),
                ("cloudevent.id".to_owned(), "x".to_owned()),
            ]
            .into(),
        };
        let f = written(&msg);
        assert_eq!(f[0], ("data".to_owned(), msg.data.to_vec()));
        // Perch's publish-time controls stay out of the entry.
        assert_eq!(
            f[1],
            ("metadata".to_owned(), br#"{"ttlInSeconds":"30"}"#.to_vec())
        );
        let d = decode("1-0", as_map(f));
        assert_eq!(d.data, msg.data);
        assert_eq!(
            d.content_type.as_deref(),
            Some("application/cloudevents+json")
        );
        assert_eq!(
            d.metadata,
            [("ttlInSeconds".to_owned(), "30".to_owned())].into()
        );
    }

    #[test]
    fn a_daprd_entry_without_perch_fields_decodes() {
        let mut map = HashMap::new();
        map.insert("data".to_owned(), Value::BulkString(b"hello".to_vec()));
        map.insert(
            "metadata".to_owned(),
            Value::BulkString(br#"{"traceparent":"00-a-b-01"}"#.to_vec()),
        );
        let d = decode("1-0", map.clone());
        assert_eq!(d.data, "hello");
        assert_eq!(d.content_type, None);
        assert_eq!(d.metadata["traceparent"], "00-a-b-01");
        map.insert("metadata".to_owned(), Value::BulkString(b"[1]".to_vec()));
        assert!(
            decode("1-0", map).metadata.is_empty(),
            "bad metadata is skipped"
        );
    }
}
