//! One test per row of reference sections 1.3 and 1.4 (envelope rules).

use super::*;
use serde_json::json;

const TP: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

fn input<'a>(
    ct: Option<&'a str>,
    body: &'a [u8],
    md: &'a BTreeMap<String, String>,
) -> PublishInput<'a> {
    PublishInput {
        app_id: "checkout",
        pubsub: "pubsub",
        topic: "orders",
        content_type: ct,
        body,
        metadata: md,
        trace: TraceParent::parse(TP).unwrap(),
        tracestate: None,
    }
}

fn md(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn json_body_is_wrapped_with_dapr_defaults() {
    let m = md(&[]);
    let ev = envelope_for_publish(&input(Some("application/json"), br#"{"a":1}"#, &m)).unwrap();
    assert_eq!(ev["data"], json!({"a": 1}));
    assert_eq!(ev["datacontenttype"], "application/json");
    assert_eq!(ev["source"], "checkout");
    assert_eq!(ev["type"], "com.dapr.event.sent");
    assert_eq!(ev["specversion"], "1.0");
    assert_eq!(ev["topic"], "orders");
    assert_eq!(ev["pubsubname"], "pubsub");
    assert_eq!(ev["traceid"], TP);
    assert_eq!(ev["traceparent"], TP);
    assert_eq!(ev["tracestate"], "");
    assert!(uuid::Uuid::parse_str(ev["id"].as_str().unwrap()).is_ok());
    assert!(chrono::DateTime::parse_from_rfc3339(ev["time"].as_str().unwrap()).is_ok());
    assert!(!ev.contains_key("subject"));
    assert!(!ev.contains_key("expiration"));
}

#[test]
fn json_numbers_are_kept_exactly() {
    let m = md(&[]);
    let body = br#"{"big":12345678901234567890123,"f":1.50}"#;
    let ev = envelope_for_publish(&input(Some("application/json"), body, &m)).unwrap();
    let out = String::from_utf8(crate::util::to_go_json(&ev["data"])).unwrap();
    assert_eq!(out, r#"{"big":12345678901234567890123,"f":1.50}"#);
}

#[test]
fn content_type_params_are_kept_and_still_json() {
    let m = md(&[]);
    let ct = "application/json; charset=utf-8";
    let ev = envelope_for_publish(&input(Some(ct), b"[1,2]", &m)).unwrap();
    assert_eq!(ev["datacontenttype"], ct);
    assert_eq!(ev["data"], json!([1, 2]));
}

#[test]
fn invalid_json_with_json_type_becomes_a_string() {
    let m = md(&[]);
    let ev = envelope_for_publish(&input(Some("application/json"), b"not json", &m)).unwrap();
    assert_eq!(ev["data"], "not json");
}

#[test]
fn missing_content_type_is_text_plain_and_data_is_a_string() {
    let m = md(&[]);
    let ev = envelope_for_publish(&input(None, b"{\"a\":1}", &m)).unwrap();
    assert_eq!(ev["datacontenttype"], "text/plain");
    assert_eq!(ev["data"], "{\"a\":1}");
}

#[test]
fn binary_types_use_data_base64_instead_of_data() {
    let m = md(&[]);
    for ct in [
        "application/octet-stream",
        "application/cloudevents+protobuf",
    ] {
        let ev = envelope_for_publish(&input(Some(ct), &[0, 255, 1], &m)).unwrap();
        assert_eq!(ev["data_base64"], "AP8B", "{ct}");
        assert!(!ev.contains_key("data"), "{ct}");
    }
}

#[test]
fn overrides_apply_case_insensitively_and_traceparent_beats_traceid() {
    let other = "00-11111111111111111111111111111111-2222222222222222-01";
    let m = md(&[
        ("cloudevent.id", "my-id"),
        ("CloudEvent.Source", "my-source"),
        ("cloudevent.type", "my.type"),
        ("cloudevent.subject", "subj"),
        ("cloudevent.traceid", "ignored-because-traceparent-given"),
        ("cloudevent.traceparent", other),
        ("cloudevent.tracestate", "k=v"),
        ("cloudevent.topic", "cannot-override"),
        ("cloudevent.pubsubname", "cannot-override"),
    ]);
    let ev = envelope_for_publish(&input(Some("text/plain"), b"hi", &m)).unwrap();
    assert_eq!(ev["id"], "my-id");
    assert_eq!(ev["source"], "my-source");
    assert_eq!(ev["type"], "my.type");
    assert_eq!(ev["subject"], "subj");
    assert_eq!(ev["traceparent"], other);
    assert_eq!(ev["traceid"], other);
    assert_eq!(ev["tracestate"], "k=v");
    assert_eq!(ev["topic"], "orders");
    assert_eq!(ev["pubsubname"], "pubsub");
}

#[test]
fn traceid_override_alone_sets_both_fields() {
    let m = md(&[("cloudevent.traceid", "abc")]);
    let ev = envelope_for_publish(&input(Some("text/plain"), b"hi", &m)).unwrap();
    assert_eq!(ev["traceid"], "abc");
    assert_eq!(ev["traceparent"], "abc");
}

#[test]
fn ttl_sets_utc_expiration_in_the_future() {
    for key in ["ttlInSeconds", "ttl"] {
        let m = md(&[(key, "120")]);
        let ev = envelope_for_publish(&input(Some("text/plain"), b"x", &m)).unwrap();
        let exp = ev["expiration"].as_str().unwrap();
        assert!(exp.ends_with('Z'), "{exp}");
        let at = chrono::DateTime::parse_from_rfc3339(exp).unwrap();
        let secs = (at.with_timezone(&Utc) - Utc::now()).num_seconds();
        assert!((118..=120).contains(&secs), "{secs}");
        assert!(!has_expired(&ev));
    }
    let m = md(&[("ttlInSeconds", "2m")]);
    assert_eq!(ttl_from_metadata(&m), Some(Duration::from_secs(120)));
}

#[test]
fn invalid_ttl_is_ignored() {
    for v in ["0", "-5", "soon", ""] {
        let m = md(&[("ttlInSeconds", v)]);
        let ev = envelope_for_publish(&input(Some("text/plain"), b"x", &m)).unwrap();
        assert!(!ev.contains_key("expiration"), "{v}");
    }
}

#[test]
fn existing_cloudevent_keeps_its_fields_and_gets_defaults() {
    let m = md(&[("cloudevent.id", "ignored"), ("cloudevent.type", "ignored")]);
    let body = br#"{"id":"e1","data":{"x":1},"datacontenttype":"application/json","custom":"ext","topic":"wrong"}"#;
    let ev = envelope_for_publish(&input(Some(CLOUDEVENT_CONTENT_TYPE), body, &m)).unwrap();
    assert_eq!(ev["id"], "e1");
    assert_eq!(ev["custom"], "ext");
    assert_eq!(ev["data"], json!({"x": 1}));
    assert_eq!(ev["topic"], "orders");
    assert_eq!(ev["pubsubname"], "pubsub");
    assert_eq!(ev["source"], "Dapr");
    assert_eq!(ev["type"], "com.dapr.event.sent");
    assert_eq!(ev["specversion"], "1.0");
    assert_eq!(ev["traceid"], TP);
    assert_eq!(ev["traceparent"], TP);
    assert_eq!(ev["tracestate"], "");
    assert!(ev.contains_key("time"));
}

#[test]
fn existing_cloudevent_id_is_not_generated_and_traceid_is_kept() {
    let m = md(&[]);
    let body = br#"{"traceid":"keep","time":"2020-01-01T00:00:00Z","source":"s","type":"t"}"#;
    let ev = envelope_for_publish(&input(Some(CLOUDEVENT_CONTENT_TYPE), body, &m)).unwrap();
    assert!(!ev.contains_key("id"));
    assert_eq!(ev["traceid"], "keep");
    assert!(!ev.contains_key("traceparent"));
    assert_eq!(ev["time"], "2020-01-01T00:00:00Z");
    assert_eq!(ev["source"], "s");
    assert_eq!(ev["type"], "t");
}

#[test]
fn existing_cloudevent_gets_ttl_overwriting_expiration() {
    let m = md(&[("ttlInSeconds", "60")]);
    let body = br#"{"id":"e1","expiration":"2000-01-01T00:00:00Z"}"#;
    let ev = envelope_for_publish(&input(Some(CLOUDEVENT_CONTENT_TYPE), body, &m)).unwrap();
    assert_ne!(ev["expiration"], "2000-01-01T00:00:00Z");
    assert!(!has_expired(&ev));
}

#[test]
fn invalid_cloudevent_json_is_an_error() {
    let m = md(&[]);
    for body in [&b"{nope"[..], b"[1,2]"] {
        let err = envelope_for_publish(&input(Some(CLOUDEVENT_CONTENT_TYPE), body, &m));
        assert!(matches!(err, Err(EnvelopeError::InvalidCloudEvent(_))));
    }
}

#[test]
fn expiration_in_the_past_has_expired() {
    let mut ev = Envelope::new();
    ev.insert("expiration".into(), "2001-01-01T00:00:00Z".into());
    assert!(has_expired(&ev));
    ev.insert("expiration".into(), "garbage".into());
    assert!(!has_expired(&ev));
}

#[test]
fn raw_payload_envelope_matches_dapr() {
    let m = md(&[("traceparent", TP)]);
    let ev = raw_payload_envelope("pubsub", "orders", b"hello", &m);
    assert_eq!(ev["data_base64"], "aGVsbG8=");
    assert_eq!(ev["datacontenttype"], "application/octet-stream");
    assert_eq!(ev["source"], "Dapr");
    assert_eq!(ev["traceparent"], TP);
    assert!(!ev.contains_key("traceid"));
    assert!(!ev.contains_key("time"));
}

#[test]
fn content_type_classes() {
    assert!(is_string_type("text/csv"));
    assert!(is_string_type("Application/XML; charset=x"));
    assert!(!is_string_type("application/json"));
    assert!(is_cloudevent_json(
        "application/CloudEvents+JSON; charset=utf-8"
    ));
}

#[test]
fn parse_attributes_keeps_the_named_members_as_a_full_parse_has_them() {
    let body = br#"{"specversion":"1.0","id":"e-1","source":"orders","type":"t",
        "data":{"pad":[1,2,{"x":"y"}],"s":"\u00e9"},"traceparent":"00-ab-cd-01",
        "expiration":"2001-01-01T00:00:00Z","\u0069d2":"escaped name, not kept"}"#;
    let full: Envelope = serde_json::from_slice(body).unwrap();
    let some = parse_attributes(body, DELIVERY_ATTRIBUTES).expect("an object");
    let keys: Vec<&str> = some.keys().map(String::as_str).collect();
    assert_eq!(keys, ["expiration", "id", "source", "traceparent"]);
    for k in keys {
        assert_eq!(some[k], full[k], "{k}");
    }
    assert!(has_expired(&some));
    // An escaped member name is matched by its value.
    let escaped = parse_attributes(br#"{"\u0069d":"e-2"}"#, DELIVERY_ATTRIBUTES).unwrap();
    assert_eq!(escaped["id"], "e-2");
}

#[test]
fn parse_attributes_refuses_what_is_not_one_json_object() {
    for bad in [
        &br#"["e-1","orders"]"#[..],
        br#""a string""#,
        br#"{"id":"e-1"} trailing"#,
        br#"{"id":"e-1","data":{"open":"#,
        b"not json",
    ] {
        assert!(
            parse_attributes(bad, DELIVERY_ATTRIBUTES).is_none(),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
}
