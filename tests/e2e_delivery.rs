//! Sidecar behaviour that does not depend on the broker, on the in-memory
//! broker through the real binary: shutdown, readiness, app concurrency and
//! health, scoping, circuit breakers. Broker-dependent delivery behaviour is
//! the suite in `behaviour.rs`.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use common::*;

#[tokio::test]
async fn sigterm_and_shutdown_api_exit_cleanly() -> TestResult {
    let dir = resources(&[("pubsub.yaml", PUBSUB)]);
    let mut sc = Sidecar::start(dir.path(), None, &[], &[]).await;
    let pid = sc.child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()?
        .success());
    let status =
        tokio::time::timeout(std::time::Duration::from_secs(10), sc.child.wait()).await??;
    assert!(status.success(), "{status}");

    let mut sc = Sidecar::start(dir.path(), None, &[], &[]).await;
    assert_eq!(sc.call("POST", "/v1.0/shutdown", &[], "").await?.0, 204);
    let status =
        tokio::time::timeout(std::time::Duration::from_secs(10), sc.child.wait()).await??;
    assert!(status.success(), "{status}");
    Ok(())
}

#[tokio::test]
async fn not_ready_until_the_app_answers_but_outbound_is() -> TestResult {
    let dir = resources(&[("pubsub.yaml", PUBSUB)]);
    let port = free_port();
    let closed_app_port = free_port();
    let _child = tokio::process::Command::new(perch_bin())
        .args([
            "run",
            "--app-id",
            "x",
            "--dapr-http-port",
            &port.to_string(),
        ])
        .args(["--dapr-grpc-port", &free_port().to_string()])
        .args(["--dapr-public-port", &free_port().to_string()])
        .args([
            "--app-port",
            &closed_app_port.to_string(),
            "--resources-path",
        ])
        .arg(dir.path())
        .kill_on_drop(true)
        .spawn()?;
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    let mut outbound = None;
    for _ in 0..100 {
        if let Ok(r) = request("GET", &url("/v1.0/healthz/outbound"), &[], "").await {
            outbound = Some(r.0);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        outbound,
        Some(204),
        "outbound is ready once components are loaded"
    );
    let (status, _, body) = request("GET", &url("/v1.0/healthz"), &[], "").await?;
    assert_eq!(status, 500);
    let v: serde_json::Value = serde_json::from_slice(&body)?;
    assert_eq!(v["errorCode"], "ERR_HEALTH_NOT_READY");
    // daprd checks readiness before the app id.
    let (_, _, body) = request("GET", &url("/v1.0/healthz?appid=other"), &[], "").await?;
    let v: serde_json::Value = serde_json::from_slice(&body)?;
    assert_eq!(v["errorCode"], "ERR_HEALTH_NOT_READY", "{v}");
    // Publishing works before the app is up.
    let (s, _, _) = request("POST", &url("/v1.0/publish/pubsub/t"), &[], "x").await?;
    assert_eq!(s, 204);
    Ok(())
}

#[tokio::test]
async fn app_max_concurrency_bounds_calls_to_the_app() -> TestResult {
    let pubsub = component("pubsub", &[("deliveryOrder", "none")]);
    let dir = resources(&[
        ("pubsub.yaml", &pubsub),
        ("s.yaml", &subscription("s", "orders", "/orders")),
    ]);
    // The app never answers, so every call it receives stays open.
    let mut app = TestApp::start(None, Arc::new(|_| (0, String::new()))).await;
    let sc = Sidecar::start(
        dir.path(),
        Some(app.port),
        &[],
        &["--app-max-concurrency", "2"],
    )
    .await;
    for i in 0..5 {
        assert_eq!(
            sc.publish_json("pubsub/orders", &format!(r#"{{"n":{i}}}"#))
                .await,
            204
        );
    }
    app.next(10).await?;
    app.next(10).await?;
    assert!(
        app.next(2).await.is_err(),
        "a third concurrent call was made despite --app-max-concurrency 2"
    );
    Ok(())
}

#[tokio::test]
async fn subscriptions_denied_by_scoping_are_reported_in_metadata() -> TestResult {
    let scoped = component("pubsub", &[("subscriptionScopes", "test-app=allowed")]);
    let dir = resources(&[
        ("pubsub.yaml", &scoped),
        ("a.yaml", &subscription("a", "allowed", "/a")),
        ("b.yaml", &subscription("b", "secret", "/b")),
    ]);
    let app = TestApp::ok(None).await;
    let sc = Sidecar::start(dir.path(), Some(app.port), &[], &[]).await;
    let v: serde_json::Value =
        serde_json::from_slice(&sc.call("GET", "/v1.0/metadata", &[], "").await?.2)?;
    let active: Vec<&str> = v["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["topic"].as_str().unwrap())
        .collect();
    assert_eq!(active, ["allowed"]);
    assert_eq!(v["deniedSubscriptions"][0]["topic"], "secret");
    assert!(v["deniedSubscriptions"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("is not allowed"));
    Ok(())
}

#[tokio::test]
async fn app_health_check_gates_start_and_pauses_deliveries() -> TestResult {
    use std::sync::atomic::AtomicBool;
    let dir = resources(&[
        ("pubsub.yaml", PUBSUB),
        ("s.yaml", &subscription("s", "orders", "/orders")),
    ]);
    let healthy = Arc::new(AtomicBool::new(false));
    let h = healthy.clone();
    let mut app = TestApp::start(
        None,
        Arc::new(move |r| match r.path.as_str() {
            "/healthz" if h.load(Ordering::SeqCst) => (200, String::new()),
            "/healthz" => (503, String::new()),
            _ => (200, String::new()),
        }),
    )
    .await;
    let flags = [
        "--enable-app-health-check",
        "--app-health-probe-interval",
        "1",
        "--app-health-threshold",
        "1",
    ];
    let sc = Sidecar::start_until(
        dir.path(),
        Some(app.port),
        &[],
        &flags,
        "/v1.0/healthz/outbound",
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(
        sc.call("GET", "/v1.0/healthz", &[], "").await?.0,
        500,
        "not ready while the app is unhealthy"
    );
    healthy.store(true, Ordering::SeqCst);
    let mut ready = false;
    for _ in 0..60 {
        if sc.call("GET", "/v1.0/healthz", &[], "").await?.0 == 204 {
            ready = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(ready, "ready once the app's health check passes");
    assert_eq!(sc.publish_json("pubsub/orders", r#"{"n":1}"#).await, 204);
    assert_eq!(app.next(5).await?.json()["data"]["n"], 1);

    healthy.store(false, Ordering::SeqCst);
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert_eq!(sc.publish_json("pubsub/orders", r#"{"n":2}"#).await, 204);
    assert!(
        app.next(2).await.is_err(),
        "nothing is delivered while the app is unhealthy"
    );
    healthy.store(true, Ordering::SeqCst);
    let r = app.next(5).await?;
    assert_eq!(
        r.json()["data"]["n"],
        2,
        "held, not dropped: delivered once healthy"
    );
    Ok(())
}

#[tokio::test]
async fn an_open_circuit_breaker_stops_calls_to_the_app_until_its_timeout() -> TestResult {
    let res = "apiVersion: dapr.io/v1alpha1
kind: Resiliency
metadata: {name: r}
spec:
  policies:
    retries:
      steady: {policy: constant, duration: 200ms, maxRetries: -1}
    circuitBreakers:
      cb: {maxRequests: 1, timeout: 3s, trip: consecutiveFailures > 2}
  targets:
    components:
      pubsub:
        inbound: {retry: steady, circuitBreaker: cb}
";
    let dir = resources(&[
        ("pubsub.yaml", PUBSUB),
        ("r.yaml", res),
        ("s.yaml", &subscription("s", "orders", "/orders")),
    ]);
    let mut app = TestApp::start(None, Arc::new(|_| (500, String::new()))).await;
    let sc = Sidecar::start(dir.path(), Some(app.port), &[], &[]).await;
    assert_eq!(sc.publish_json("pubsub/orders", "{}").await, 204);
    for _ in 0..3 {
        app.next(5).await?;
    }
    assert!(
        app.next(2).await.is_err(),
        "after three failures the breaker is open: the app is not called"
    );
    app.next(3).await.map_err(|e| {
        format!("after the 3 s timeout the breaker half-opens and lets one call through: {e}")
    })?;
    Ok(())
}

/// A `/dapr/subscribe` that fails (500, then an answer that is not a list)
/// is asked again until it answers, not taken as zero subscriptions
/// (review F16): the sidecar becomes ready with the app's subscription.
#[tokio::test]
async fn a_failing_dapr_subscribe_is_asked_again() -> TestResult {
    use std::sync::atomic::AtomicUsize;
    let dir = resources(&[("pubsub.yaml", PUBSUB)]);
    let asked = Arc::new(AtomicUsize::new(0));
    let a = asked.clone();
    let discovery: Discovery = Arc::new(move || match a.fetch_add(1, Ordering::SeqCst) {
        0 | 1 => (500, "boom".into()),
        2 => (200, "<html>not json</html>".into()),
        _ => (
            200,
            serde_json::json!([{"pubsubname": "pubsub", "topic": "orders", "route": "/orders"}])
                .to_string(),
        ),
    });
    let mut app = TestApp::start_discovering(
        discovery,
        std::time::Duration::ZERO,
        Arc::new(|_| (200, String::new())),
    )
    .await;
    let sc = Sidecar::start(dir.path(), Some(app.port), &[], &[]).await;
    assert!(
        asked.load(Ordering::SeqCst) >= 4,
        "asked until it answered a list"
    );
    let (status, _, _) = sc
        .call(
            "POST",
            "/v1.0/publish/pubsub/orders",
            &[("content-type", "application/json")],
            r#"{"n":1}"#,
        )
        .await?;
    assert_eq!(status, 204);
    let r = app.next(10).await?;
    assert_eq!(r.path, "/orders");
    Ok(())
}

/// Review C1: a Spring Boot app's `/dapr/subscribe` (the exact bytes the
/// Java SDK writes, `pubsubName` and all) subscribes it, and its rules
/// route as daprd routes them. Before, such an app got no subscription.
#[tokio::test]
async fn a_java_spring_boot_app_is_subscribed_from_its_own_answer() -> TestResult {
    let dir = resources(&[(
        "pubsub.yaml",
        &PUBSUB.replace("name: pubsub", "name: messagebus"),
    )]);
    let body = include_str!("fixtures/subscribe/java-springboot.json").to_owned();
    let discovery: Discovery = Arc::new(move || (200, body.clone()));
    let mut app = TestApp::start_discovering(
        discovery,
        std::time::Duration::ZERO,
        Arc::new(|_| (200, String::new())),
    )
    .await;
    let sc = Sidecar::start(dir.path(), Some(app.port), &[], &[]).await;
    let ce = |ty: &str| {
        serde_json::json!({"specversion": "1.0", "id": ty, "source": "s", "type": ty, "data": {}})
            .to_string()
    };
    for (topic, ty) in [
        ("testingtopic", "v1"),
        ("testingtopicV2", "v2"),
        ("testingtopicV2", "v1"),
    ] {
        let (status, _, body) = sc
            .call(
                "POST",
                &format!("/v1.0/publish/messagebus/{topic}"),
                &[("content-type", "application/cloudevents+json")],
                &ce(ty),
            )
            .await?;
        assert_eq!(status, 204, "{body:?}");
    }
    let mut got = vec![];
    for _ in 0..3 {
        let r = app.next(10).await?;
        got.push((
            r.json()["topic"].as_str().unwrap_or_default().to_owned(),
            r.path,
        ));
    }
    got.sort();
    assert_eq!(
        got,
        [
            ("testingtopic".to_owned(), "/testingtopic".to_owned()),
            ("testingtopicV2".to_owned(), "/testingtopic".to_owned()),
            ("testingtopicV2".to_owned(), "/testingtopicV2".to_owned()),
        ]
    );
    Ok(())
}

/// Issue 18 item 6: deliveries take daprd's inbound policies. Without a
/// `components.<pubsub>.inbound` target, Dapr's reserved default policy
/// applies (here `DefaultComponentInboundRetryPolicy`: 2 retries), and
/// `targets.apps.<own id>` (service invocation's) does not (it says 6).
#[tokio::test]
async fn deliveries_use_daprs_default_policies_and_never_the_apps_target() -> TestResult {
    let resiliency = "apiVersion: dapr.io/v1alpha1
kind: Resiliency
metadata: {name: r}
spec:
  policies:
    retries:
      DefaultComponentInboundRetryPolicy: {policy: constant, duration: 10ms, maxRetries: 2}
      DefaultAppRetryPolicy: {policy: constant, duration: 10ms, maxRetries: 9}
      invocation: {policy: constant, duration: 10ms, maxRetries: 6}
  targets:
    apps:
      test-app: {retry: invocation}
";
    let dir = resources(&[
        ("pubsub.yaml", PUBSUB),
        ("r.yaml", resiliency),
        ("s.yaml", &subscription("s", "orders", "/orders")),
        ("d.yaml", &subscription("d", "orders.dlq", "/dead")),
    ]);
    let mut app = TestApp::start(
        None,
        Arc::new(|r: &Received| {
            if r.path == "/dead" {
                (200, String::new())
            } else {
                (500, String::new())
            }
        }),
    )
    .await;
    let sc = Sidecar::start(dir.path(), Some(app.port), &[], &[]).await;
    assert_eq!(sc.publish_json("pubsub/orders", r#"{"n":1}"#).await, 204);
    let mut attempts = 0;
    loop {
        let r = app.next(20).await?;
        if r.path == "/dead" {
            break;
        }
        attempts += 1;
    }
    assert_eq!(
        attempts, 3,
        "one attempt and DefaultComponentInboundRetryPolicy's 2 retries"
    );
    Ok(())
}

/// Every CloudEvent Perch delivers parses with the CloudEvents SDK's HTTP
/// binding (structured mode, as Dapr delivers) with the attributes Perch
/// put in it: JSON, text and binary data, an app's own CloudEvent with an
/// extension, and a raw payload's envelope.
#[tokio::test]
async fn every_delivered_cloudevent_parses_with_the_cloudevents_sdk() -> TestResult {
    use cloudevents::{AttributesReader, Data};
    let raw = "apiVersion: dapr.io/v2alpha1\nkind: Subscription\nmetadata: {name: raw}\nspec:\n  pubsubname: pubsub\n  topic: raw\n  routes: {default: /raw}\n  metadata: {rawPayload: \"true\"}\n";
    let dir = resources(&[
        ("pubsub.yaml", PUBSUB),
        ("s.yaml", &subscription("s", "orders", "/orders")),
        ("raw.yaml", raw),
    ]);
    let mut app = TestApp::ok(None).await;
    let sc = Sidecar::start(dir.path(), Some(app.port), &[], &[]).await;
    let own = r#"{"specversion":"1.0","id":"own-1","source":"/app","type":"com.example.own","datacontenttype":"application/json","data":{"a":1},"myext":"x"}"#;
    let sent: [(&str, &str, &str); 5] = [
        ("orders", "application/json", r#"{"n":1,"s":"é"}"#),
        ("orders", "text/plain", "plain text"),
        ("orders", "application/octet-stream", "\u{0}\u{1}binary"),
        ("orders", "application/cloudevents+json", own),
        ("raw", "application/json", r#"{"raw":true}"#),
    ];
    for (topic, ct, body) in sent {
        let (status, _, _) = sc
            .call(
                "POST",
                &format!("/v1.0/publish/pubsub/{topic}"),
                &[("content-type", ct)],
                body,
            )
            .await?;
        assert_eq!(status, 204, "{ct}");
    }
    for _ in 0..sent.len() {
        let r = app.next(10).await?;
        let mut headers = hyper::HeaderMap::new();
        for (k, v) in &r.headers {
            headers.insert(
                hyper::header::HeaderName::try_from(k.as_str())?,
                hyper::header::HeaderValue::try_from(v.as_str())?,
            );
        }
        let event = cloudevents::binding::http::to_event(&headers, r.body.to_vec())
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&r.body)));
        let ours = r.json();
        assert_eq!(event.id(), ours["id"].as_str().unwrap());
        assert_eq!(event.source().to_string(), ours["source"].as_str().unwrap());
        assert_eq!(event.ty(), ours["type"].as_str().unwrap());
        assert_eq!(event.specversion().to_string(), "1.0");
        assert_eq!(event.datacontenttype(), ours["datacontenttype"].as_str());
        let data = event.data().expect("data");
        match ours["datacontenttype"].as_str().unwrap() {
            "application/json" if r.path == "/orders" && ours["id"] == "own-1" => {
                assert_eq!(event.ty(), "com.example.own");
                assert_eq!(
                    event.extension("myext").map(|e| e.to_string()),
                    Some("x".into())
                );
                assert_eq!(data, &Data::Json(serde_json::json!({"a": 1})));
            }
            "application/json" => assert_eq!(data, &Data::Json(ours["data"].clone())),
            "text/plain" => assert_eq!(data, &Data::String("plain text".into())),
            // Binary and raw payloads travel as data_base64.
            _ => assert!(matches!(data, Data::Binary(_)), "{data:?}"),
        }
    }
    Ok(())
}
