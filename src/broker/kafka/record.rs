//! A Kafka record as Perch keeps it, and Dapr's delivered metadata:
//! `__key`, `__offset`, `__partition`, `__topic`, `__timestamp` and the
//! record headers (query-escaped with `escapeHeaders`, minus
//! `excludeHeaderMetaRegex`), the content type from its header.

use std::collections::BTreeMap;

use bytes::Bytes;
use rdkafka::message::{Headers, Message as _};

use super::consumer::Group;
use super::CONTENT_TYPE;

/// A received record, kept until it is finished.
#[derive(Clone)]
pub(super) struct Record {
    pub(super) topic: String,
    pub(super) partition: i32,
    pub(super) offset: i64,
    pub(super) data: Bytes,
    pub(super) content_type: Option<String>,
    pub(super) metadata: BTreeMap<String, String>,
}

/// Copies a record out of librdkafka with Dapr's delivered metadata.
pub(super) fn record_of(g: &Group, m: &rdkafka::message::BorrowedMessage<'_>) -> Record {
    let mut metadata = BTreeMap::new();
    let mut content_type = None;
    if let Some(h) = m.headers() {
        for hdr in h.iter() {
            let value = hdr
                .value
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default();
            if hdr.key == CONTENT_TYPE {
                content_type = Some(value);
                continue;
            }
            if g.exclude.as_ref().is_some_and(|r| r.is_match(hdr.key)) {
                continue;
            }
            let value = if g.escape_headers {
                escape(&value)
            } else {
                value
            };
            metadata.insert(hdr.key.to_owned(), value);
        }
    }
    if let Some(k) = m.key() {
        let k = String::from_utf8_lossy(k).into_owned();
        metadata.insert(
            "__key".into(),
            if g.escape_headers { escape(&k) } else { k },
        );
    }
    metadata.insert("__offset".into(), m.offset().to_string());
    metadata.insert("__partition".into(), m.partition().to_string());
    metadata.insert("__topic".into(), m.topic().to_owned());
    if let Some(ts) = m.timestamp().to_millis() {
        metadata.insert("__timestamp".into(), ts.to_string());
    }
    Record {
        topic: m.topic().to_owned(),
        partition: m.partition(),
        offset: m.offset(),
        data: Bytes::copy_from_slice(m.payload().unwrap_or_default()),
        content_type,
        metadata,
    }
}

/// URL query escaping, as Go's `url.QueryEscape` (Dapr's `escapeHeaders`).
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn escape_matches_go_query_escape() {
        assert_eq!(escape("a b/c?d=é"), "a+b%2Fc%3Fd%3D%C3%A9");
        assert_eq!(escape("plain-_.~"), "plain-_.~");
    }
}
