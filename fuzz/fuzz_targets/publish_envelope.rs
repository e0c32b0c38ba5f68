//! The CloudEvent envelope of a publish: content type, metadata and body
//! from the input (split at the first two NUL bytes; metadata as
//! `k=v&k=v`). Must never panic, whatever the bytes.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use perch::cloudevents::{envelope_for_publish, PublishInput};
use perch::telemetry::trace::TraceParent;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |b| *b == 0);
    let ct = parts.next().map(String::from_utf8_lossy);
    let md_text = parts
        .next()
        .map(String::from_utf8_lossy)
        .unwrap_or_default();
    let body = parts.next().unwrap_or_default();
    let metadata: BTreeMap<String, String> = md_text
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let tp = metadata.get("traceparent").cloned();
    let _ = envelope_for_publish(&PublishInput {
        app_id: "fuzz",
        pubsub: "pubsub",
        topic: "orders",
        content_type: ct.as_deref(),
        body,
        metadata: &metadata,
        trace: TraceParent::child_of(tp.as_deref()),
        tracestate: metadata.get("tracestate").map(String::as_str),
    });
});
