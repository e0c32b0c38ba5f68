//! End to end: the real `perch` binary, a real HTTP app, the in-memory
//! broker. Publish API behaviour, delivery headers and CloudEvent fields,
//! errors, bulk publish, API token, health and metadata.

mod common;

use std::sync::Arc;

use common::*;
use serde_json::{json, Value};

const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

#[tokio::test]
async fn published_event_reaches_the_app_as_dapr_sends_it() -> TestResult {
    let dir = resources(&[
        ("pubsub.yaml", PUBSUB),
        ("sub.yaml", &subscription("orders", "orders", "/orders")),
    ]);
    let mut app = TestApp::ok(None).await;
    let sc = Sidecar::start(
        dir.path(),
        Some(app.port),
        &[("APP_API_TOKEN", "app-secret")],
        &[],
    )
    .await;
    let (status, _, _) = sc
        .call(
            "POST",
            "/v1.0/publish/pubsub/orders?metadata.customHeader=abc&metadata.cloudevent.subject=s1",
            &[
                ("content-type", "application/json"),
                ("traceparent", TRACEPARENT),
            ],
            r#"{"orderId":42}"#,
        )
        .await?;
    assert_eq!(status, 204);
    let got = app.next(10).await?;
    assert_eq!(got.path, "/orders");
    assert_eq!(got.headers["content-type"], "application/cloudevents+json");
    assert_eq!(got.headers["pubsubname"], "pubsub");
    assert_eq!(got.headers["customheader"], "abc");
    assert_eq!(got.headers["dapr-api-token"], "app-secret");
    let tp = &got.headers["traceparent"];
    assert!(
        tp.starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
        "same trace id: {tp}"
    );
    let ev = got.json();
    assert_eq!(ev["data"], json!({"orderId": 42}));
    assert_eq!(ev["source"], "test-app");
    assert_eq!(ev["type"], "com.dapr.event.sent");
    assert_eq!(ev["topic"], "orders");
    assert_eq!(ev["pubsubname"], "pubsub");
    assert_eq!(ev["subject"], "s1");
    assert_eq!(ev["datacontenttype"], "application/json");
    assert!(ev["traceparent"]
        .as_str()
        .unwrap()
        .contains("0af7651916cd43dd8448eb211c80319c"));
    Ok(())
}

#[tokio::test]
async fn topics_may_contain_slashes_and_raw_payloads_pass_unchanged() -> TestResult {
    let dir = resources(&[("pubsub.yaml", PUBSUB)]);
    let prog = json!([{"pubsubname": "pubsub", "topic": "a/b", "route": "raw", "metadata": {"rawPayload": "true"}}]);
    let mut app = TestApp::ok(Some(prog)).await;
    let sc = Sidecar::start(dir.path(), Some(app.port), &[], &[]).await;
    let (status, _, _) = sc
        .call(
            "PUT",
            "/v1.0/publish/pubsub/a/b?metadata.rawPayload=true",
            &[("content-type", "text/plain")],
            "hello",
        )
        .await?;
    assert_eq!(status, 204);
    let got = app.next(10).await?;
    assert_eq!(got.path, "/raw");
    let ev = got.json();
    assert_eq!(
        ev["data_base64"], "aGVsbG8=",
        "raw bytes, no envelope on the wire"
    );
    assert_eq!(ev["topic"], "a/b");
    Ok(())
}

fn error_code(body: &[u8]) -> (String, Value) {
    let v: Value = serde_json::from_slice(body).expect("error JSON");
    (v["errorCode"].as_str().unwrap_or_default().to_owned(), v)
}

#[tokio::test]
async fn publish_errors_match_dapr_codes_and_statuses() -> TestResult {
    let scoped = component("scoped", &[("publishingScopes", "test-app=allowed")]);
    let dir = resources(&[("pubsub.yaml", PUBSUB), ("scoped.yaml", &scoped)]);
    let sc = Sidecar::start(dir.path(), None, &[], &["--max-body-size", "1Ki"]).await;
    let cases: &[(&str, &str, &str, u16, &str)] = &[
        (
            "/v1.0/publish/nope/t",
            "text/plain",
            "x",
            404,
            "ERR_PUBSUB_NOT_FOUND",
        ),
        (
            "/v1.0/publish//t",
            "text/plain",
            "x",
            404,
            "ERR_PUBSUB_EMPTY",
        ),
        (
            "/v1.0/publish/pubsub/",
            "text/plain",
            "x",
            404,
            "ERR_TOPIC_NAME_EMPTY",
        ),
        (
            "/v1.0/publish/pubsub/t?metadata.rawPayload=maybe",
            "text/plain",
            "x",
            400,
            "ERR_PUBSUB_REQUEST_METADATA",
        ),
        (
            "/v1.0/publish/pubsub/t",
            "application/cloudevents+json",
            "{not json",
            500,
            "ERR_PUBSUB_CLOUD_EVENTS_SER",
        ),
        (
            "/v1.0/publish/scoped/other",
            "text/plain",
            "x",
            403,
            "ERR_PUBSUB_FORBIDDEN",
        ),
    ];
    for (path, ct, body, status, code) in cases {
        let (s, h, b) = sc.call("POST", path, &[("content-type", ct)], body).await?;
        assert_eq!(s, *status, "{path}");
        assert_eq!(h["content-type"], "application/json", "{path}");
        let (c, v) = error_code(&b);
        assert_eq!(c, *code, "{path}: {v}");
        assert!(v["message"].is_string(), "{path}");
        assert!(v["details"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["@type"] == "type.googleapis.com/google.rpc.ErrorInfo"));
    }
    let (_, _, b) = sc.call("POST", "/v1.0/publish/nope/t", &[], "x").await?;
    assert_eq!(error_code(&b).1["message"], "pubsub nope is not found");
    let (_, _, b) = sc
        .call("POST", "/v1.0/publish/scoped/other", &[], "x")
        .await?;
    assert_eq!(
        error_code(&b).1["message"],
        "topic other is not allowed for app id test-app"
    );
    assert_eq!(
        sc.call("POST", "/v1.0/publish/scoped/allowed", &[], "x")
            .await?
            .0,
        204
    );
    let big = "x".repeat(2048);
    assert_eq!(
        sc.call("POST", "/v1.0/publish/pubsub/t", &[], &big)
            .await?
            .0,
        413
    );
    Ok(())
}

#[tokio::test]
async fn bulk_publish_reports_each_failed_entry() -> TestResult {
    // A queue bounded at 3 unacked messages and an app that never answers:
    // the broker takes 3 entries and refuses the rest.
    let small = component(
        "pubsub",
        &[("maxMessages", "3"), ("deliveryOrder", "partition")],
    );
    let dir = resources(&[
        ("pubsub.yaml", &small),
        ("sub.yaml", &subscription("s", "orders", "/slow")),
    ]);
    let app = TestApp::start(None, Arc::new(|_| (0, String::new()))).await;
    let sc = Sidecar::start(dir.path(), Some(app.port), &[], &[]).await;
    let entries: Vec<Value> = (1..=5)
        .map(|i| json!({"entryId": i.to_string(), "event": {"n": i}, "contentType": "application/json"}))
        .collect();
    let (status, headers, body) = sc
        .call(
            "POST",
            "/v1.0-alpha1/publish/bulk/pubsub/orders",
            &[("content-type", "application/json")],
            &Value::from(entries).to_string(),
        )
        .await?;
    assert_eq!(status, 500);
    let v: Value = serde_json::from_slice(&body)?;
    assert_eq!(v["errorCode"], "ERR_PUBSUB_PUBLISH_MESSAGE");
    let failed: Vec<&str> = v["failedEntries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["entryId"].as_str().unwrap())
        .collect();
    assert_eq!(failed, ["4", "5"]);
    assert!(v["failedEntries"][0]["error"]
        .as_str()
        .unwrap()
        .contains("full"));
    assert!(headers.contains_key("metadata.responsedata"));
    Ok(())
}

#[tokio::test]
async fn bulk_publish_validates_entries_and_delivers_each() -> TestResult {
    let dir = resources(&[
        ("pubsub.yaml", PUBSUB),
        ("sub.yaml", &subscription("s", "orders", "/orders")),
    ]);
    let mut app = TestApp::ok(None).await;
    let sc = Sidecar::start(dir.path(), Some(app.port), &[], &[]).await;
    let bad = [
        (
            json!([{"entryId": "1", "event": "a", "contentType": "text/plain"}, {"entryId": "1", "event": "b", "contentType": "text/plain"}]),
            "duplicate",
        ),
        (
            json!([{"event": "a", "contentType": "text/plain"}]),
            "missing id",
        ),
        (
            json!([{"entryId": "1", "event": {"x": 1}, "contentType": "text/plain"}]),
            "object as text",
        ),
        (json!({"not": "an array"}), "not an array"),
    ];
    for (body, why) in bad {
        let (s, _, b) = sc
            .call(
                "POST",
                "/v1.0/publish/bulk/pubsub/orders",
                &[],
                &body.to_string(),
            )
            .await?;
        assert_eq!(s, 400, "{why}");
        assert_eq!(error_code(&b).0, "ERR_PUBSUB_EVENTS_SER", "{why}");
    }
    let ok = json!([
        {"entryId": "a", "event": "first text message", "contentType": "text/plain"},
        {"entryId": "b", "event": {"message": "second"}, "contentType": "application/json"},
        {"entryId": "c", "event": "AQI=", "contentType": "application/octet-stream"}
    ]);
    assert_eq!(
        sc.call(
            "POST",
            "/v1.0/publish/bulk/pubsub/orders",
            &[],
            &ok.to_string()
        )
        .await?
        .0,
        204
    );
    let mut got = vec![];
    for _ in 0..3 {
        got.push(app.next(10).await?.json());
    }
    got.sort_by_key(|e| e["datacontenttype"].as_str().unwrap_or_default().to_owned());
    assert_eq!(got[0]["data"], json!({"message": "second"}));
    assert_eq!(got[1]["data_base64"], "AQI=");
    assert_eq!(got[2]["data"], "first text message");
    Ok(())
}

#[tokio::test]
async fn api_token_guards_everything_but_health() -> TestResult {
    let dir = resources(&[("pubsub.yaml", PUBSUB)]);
    let sc = Sidecar::start(dir.path(), None, &[("DAPR_API_TOKEN", "s3cret")], &[]).await;
    let (s, _, b) = sc.call("POST", "/v1.0/publish/pubsub/t", &[], "x").await?;
    assert_eq!((s, &b[..]), (401, &b"invalid api token"[..]));
    assert_eq!(
        sc.call(
            "POST",
            "/v1.0/publish/pubsub/t",
            &[("dapr-api-token", "wrong")],
            "x"
        )
        .await?
        .0,
        401
    );
    assert_eq!(sc.call("GET", "/v1.0/metadata", &[], "").await?.0, 401);
    assert_eq!(
        sc.call(
            "POST",
            "/v1.0/publish/pubsub/t",
            &[("dapr-api-token", "s3cret")],
            "x"
        )
        .await?
        .0,
        204
    );
    assert_eq!(sc.call("GET", "/v1.0/healthz", &[], "").await?.0, 204);
    assert_eq!(
        sc.call("GET", "/v1.0/healthz/outbound", &[], "").await?.0,
        204
    );
    Ok(())
}

#[tokio::test]
async fn metadata_lists_components_and_both_kinds_of_subscription() -> TestResult {
    let dir = resources(&[
        ("pubsub.yaml", PUBSUB),
        (
            "store.yaml",
            "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: inbox}\nspec: {type: store.in-memory, version: v1}\n",
        ),
        ("a.yaml", &subscription("decl", "declared", "/declared")),
        ("b.yaml", &subscription("replaced", "both", "/from-yaml")),
    ]);
    let prog = json!([{"pubsubname": "pubsub", "topic": "both", "routes": {"rules": [{"match": "event.type == \"x\"", "path": "/x"}], "default": "/from-app"}}]);
    let mut app = TestApp::ok(Some(prog)).await;
    let sc = Sidecar::start(dir.path(), Some(app.port), &[], &[]).await;
    let (s, _, b) = sc.call("GET", "/v1.0/metadata", &[], "").await?;
    assert_eq!(s, 200);
    let v: Value = serde_json::from_slice(&b)?;
    assert_eq!(v["id"], "test-app");
    assert_eq!(
        v["components"],
        json!([
            {"name": "pubsub", "type": "pubsub.in-memory", "version": "v1", "capabilities": [], "healthy": true},
            {"name": "inbox", "type": "store.in-memory", "version": "v1", "capabilities": [], "healthy": true},
        ]),
        "every component, stores too, with its health"
    );
    let subs = v["subscriptions"].as_array().unwrap();
    assert_eq!(subs.len(), 2, "{subs:?}");
    let both = subs.iter().find(|s| s["topic"] == "both").unwrap();
    assert_eq!(both["type"], "PROGRAMMATIC");
    assert_eq!(
        both["rules"],
        json!([{"match": "event.type == \"x\"", "path": "/x"}, {"path": "/from-app"}])
    );
    let decl = subs.iter().find(|s| s["topic"] == "declared").unwrap();
    assert_eq!(decl["type"], "DECLARATIVE");
    assert_eq!(v["appConnectionProperties"]["port"], app.port);
    // Programmatic wins for the same pubsub+topic.
    assert_eq!(sc.publish_json("pubsub/both", "{}").await, 204);
    assert_eq!(app.next(10).await?.path, "/from-app");
    assert_eq!(
        sc.call("PUT", "/v1.0/metadata/color", &[], "blue").await?.0,
        204
    );
    let v: Value = serde_json::from_slice(&sc.call("GET", "/v1.0/metadata", &[], "").await?.2)?;
    assert_eq!(v["extended"]["color"], "blue");
    Ok(())
}

/// Issue 18 item 6, audit section 3.1: the small differences from daprd.
#[tokio::test]
async fn publish_details_match_daprd() -> TestResult {
    // P1: no pub/sub loaded is "not found" (daprd always has its adapter).
    let empty = resources(&[]);
    let sc = Sidecar::start(empty.path(), None, &[], &[]).await;
    let (s, _, b) = sc.call("POST", "/v1.0/publish/pubsub/t", &[], "x").await?;
    assert_eq!(
        (s, error_code(&b).0.as_str()),
        (404, "ERR_PUBSUB_NOT_FOUND")
    );
    // P10: ErrorInfo always carries its metadata map, `{}` when empty.
    let info = error_code(&b).1["details"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["@type"] == "type.googleapis.com/google.rpc.ErrorInfo")
        .cloned()
        .unwrap();
    assert_eq!(info["metadata"], json!({}), "{info}");
    drop(sc);

    let dir = resources(&[
        ("pubsub.yaml", PUBSUB),
        ("s.yaml", &subscription("s", "t", "/t")),
    ]);
    let mut app = TestApp::ok(None).await;
    let sc = Sidecar::start(dir.path(), Some(app.port), &[], &[]).await;
    // P2: an empty rawPayload is false: the event is wrapped.
    let (s, _, _) = sc
        .call(
            "POST",
            "/v1.0/publish/pubsub/t?metadata.rawPayload=",
            &[],
            "x",
        )
        .await?;
    assert_eq!(s, 204);
    assert_eq!(
        app.next(10).await?.json()["data"],
        "x",
        "wrapped in a CloudEvent"
    );
    // P3: `ttl` is read before `ttlInSeconds`, keys ignoring case.
    let (s, _, _) = sc
        .call(
            "POST",
            "/v1.0/publish/pubsub/t?metadata.TTL=1h&metadata.ttlInSeconds=5",
            &[],
            "x",
        )
        .await?;
    assert_eq!(s, 204);
    let ev = app.next(10).await?.json();
    let expires = chrono::DateTime::parse_from_rfc3339(ev["expiration"].as_str().unwrap())?;
    let left = expires
        .signed_duration_since(chrono::Utc::now())
        .num_seconds();
    assert!((3500..=3600).contains(&left), "an hour, not 5 s: {left} s");
    // P7: bulk entries carry the request's tracestate.
    let (s, _, _) = sc
        .call(
            "POST",
            "/v1.0-alpha1/publish/bulk/pubsub/t",
            &[
                ("content-type", "application/json"),
                (
                    "traceparent",
                    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                ),
                ("tracestate", "vendor=opaque"),
            ],
            r#"[{"entryId":"1","event":"a","contentType":"text/plain","metadata":{}}]"#,
        )
        .await?;
    assert_eq!(s, 204);
    let ev = app.next(10).await?.json();
    assert_eq!(ev["tracestate"], "vendor=opaque", "{ev}");
    assert!(ev["traceparent"]
        .as_str()
        .unwrap()
        .starts_with("00-0af7651916cd43dd8448eb211c80319c-"));
    // P10: a bad bulk entry names the app and the error, as daprd does.
    let (s, _, b) = sc
        .call(
            "POST",
            "/v1.0-alpha1/publish/bulk/pubsub/t",
            &[("content-type", "application/json")],
            r#"[{"entryId":"1","event":{"a":1},"contentType":"text/plain"}]"#,
        )
        .await?;
    assert_eq!(s, 400);
    let (code, v) = error_code(&b);
    assert_eq!(code, "ERR_PUBSUB_EVENTS_SER");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .ends_with(": a text/plain event must be a JSON string"),
        "{v}"
    );
    let info = v["details"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["@type"] == "type.googleapis.com/google.rpc.ErrorInfo")
        .cloned()
        .unwrap();
    assert_eq!(info["metadata"]["appID"], "test-app", "{info}");
    assert_eq!(
        info["metadata"]["error"],
        "a text/plain event must be a JSON string"
    );
    Ok(())
}
