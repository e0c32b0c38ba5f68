//! Dapr's gRPC API driven by the real Dapr Python SDK (`dapr[grpc]`, pinned
//! in tests/sdk/python/requirements.txt, installed by scripts/sdk.sh), an
//! unchanged SDK publisher as an app would run it: `DaprClient()` finds the
//! sidecar through DAPR_HTTP_PORT and DAPR_GRPC_PORT.

mod common;

use std::path::PathBuf;

use common::*;
use serde_json::{json, Value};

/// Where scripts/sdk.sh keeps the SDK installed from `files` (the same
/// key: the first 12 hex digits of the SHA-256 of their contents, in order).
fn sdk_dir(prefix: &str, files: &[&str]) -> PathBuf {
    use sha2::Digest as _;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut h = sha2::Sha256::new();
    for f in files {
        h.update(std::fs::read(root.join(f)).unwrap());
    }
    let key: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    let cache = std::env::var("PERCH_SDK_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/perch-sdk"));
    let dir = cache.join(format!("{prefix}-{}", &key[..12]));
    assert!(
        dir.exists(),
        "{} is missing: run scripts/sdk.sh (scripts/test.sh does)",
        dir.display()
    );
    dir
}

/// The SDK's Python: PERCH_SDK_PYTHON (scripts/test.sh exports it), else
/// the venv scripts/sdk.sh makes.
fn python() -> PathBuf {
    match std::env::var("PERCH_SDK_PYTHON") {
        Ok(p) => p.into(),
        Err(_) => sdk_dir("python", &["tests/sdk/python/requirements.txt"]).join("bin/python"),
    }
}

/// The folder whose node_modules holds the JS SDK.
fn js_dir() -> PathBuf {
    match std::env::var("PERCH_SDK_NODE_MODULES") {
        Ok(p) => PathBuf::from(p).parent().unwrap().to_path_buf(),
        Err(_) => sdk_dir(
            "js",
            &[
                "tests/sdk/js/package.json",
                "tests/sdk/js/package-lock.json",
            ],
        ),
    }
}

/// Runs tests/sdk/python/client.py `args` against `sc`; its JSON answer.
async fn sdk(sc: &Sidecar, env: &[(&str, &str)], args: &[&str]) -> Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/python/client.py");
    let out = tokio::process::Command::new(python())
        .arg(script)
        .args(args)
        .env("DAPR_HTTP_PORT", sc.port.to_string())
        .env("DAPR_GRPC_PORT", sc.grpc_port.to_string())
        .env("DAPR_HEALTH_TIMEOUT", "10")
        .env_remove("DAPR_API_TOKEN")
        .envs(env.iter().copied())
        .output()
        .await
        .expect("run the Python SDK");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_else(|| {
        panic!(
            "no answer from the SDK: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

#[tokio::test]
async fn the_python_sdk_publishes_over_grpc_as_over_http() -> TestResult {
    let raw_sub = format!(
        "{}  metadata:\n    rawPayload: \"true\"\n",
        subscription("raw", "raw", "/raw")
    );
    let dir = resources(&[
        ("pubsub.yaml", PUBSUB),
        ("s.yaml", &subscription("s", "orders", "/orders")),
        ("raw.yaml", &raw_sub),
    ]);
    let mut app = TestApp::ok(None).await;
    let sc = Sidecar::start(dir.path(), Some(app.port), &[], &[]).await;
    let r = sdk(
        &sc,
        &[],
        &[
            "publish",
            "pubsub",
            "orders",
            r#"{"n":1}"#,
            "application/json",
            r#"{"cloudevent.type":"com.example.order"}"#,
        ],
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    let ev = app.next(10).await?.json();
    assert_eq!(ev["data"], json!({"n": 1}));
    assert_eq!(ev["datacontenttype"], "application/json");
    assert_eq!(ev["source"], "test-app");
    assert_eq!(ev["type"], "com.example.order", "cloudevent.* overrides");
    assert_eq!(ev["topic"], "orders");
    assert_eq!(ev["pubsubname"], "pubsub");
    assert!(ev["traceparent"]
        .as_str()
        .is_some_and(|t| t.starts_with("00-")));

    // rawPayload: the bytes as they are.
    let r = sdk(
        &sc,
        &[],
        &[
            "publish",
            "pubsub",
            "raw",
            "plain bytes",
            "text/plain",
            r#"{"rawPayload":"true"}"#,
        ],
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    // A rawPayload subscriber gets daprd's wrapper: the bytes in data_base64.
    let ev = app.next(10).await?.json();
    use base64::Engine as _;
    let bytes =
        base64::engine::general_purpose::STANDARD.decode(ev["data_base64"].as_str().unwrap())?;
    assert_eq!(bytes, b"plain bytes", "{ev}");

    // Bulk (BulkPublishEvent): every entry delivered, none failed.
    let r = sdk(
        &sc,
        &[],
        &[
            "bulk",
            "pubsub",
            "orders",
            r#"["{\"b\":1}","{\"b\":2}","{\"b\":3}"]"#,
        ],
    )
    .await;
    assert_eq!(r, json!({"ok": true, "failed": []}));
    let mut got = vec![];
    for _ in 0..3 {
        got.push(app.next(10).await?.json()["data"]["b"].as_i64().unwrap());
    }
    got.sort();
    assert_eq!(got, [1, 2, 3]);

    // Metadata, as GET /v1.0/metadata.
    assert_eq!(
        sdk(&sc, &[], &["set_metadata", "team", "orders"]).await["ok"],
        true
    );
    let m = sdk(&sc, &[], &["metadata"]).await;
    assert_eq!(m["id"], "test-app", "{m}");
    assert_eq!(m["components"], json!(["pubsub"]));
    assert_eq!(m["types"], json!(["pubsub.in-memory"]));
    assert_eq!(m["extended"]["team"], "orders");
    Ok(())
}

/// daprd's gRPC codes and ErrorInfo reasons, as the SDK reports them.
#[tokio::test]
async fn errors_reach_the_sdk_with_daprds_codes() -> TestResult {
    let scoped = component("scoped", &[("publishingScopes", "test-app=allowed")]);
    // A broker nothing listens on, and no outbox: the publish fails.
    let down = component(
        "down",
        &[("connectionString", "amqp://guest:guest@127.0.0.1:1")],
    )
    .replace("pubsub.in-memory", "pubsub.rabbitmq");
    let dir = resources(&[
        ("pubsub.yaml", PUBSUB),
        ("scoped.yaml", &scoped),
        ("down.yaml", &down),
    ]);
    let sc = Sidecar::start(dir.path(), None, &[], &["--max-body-size", "1Ki"]).await;
    let publish = |pubsub: &'static str, topic: &'static str, data: String| {
        let sc = &sc;
        async move { sdk(sc, &[], &["publish", pubsub, topic, &data, "text/plain"]).await }
    };
    let cases = [
        (
            publish("nope", "t", "x".into()).await,
            "INVALID_ARGUMENT",
            "DAPR_PUBSUB_NOT_FOUND",
        ),
        (
            publish("scoped", "other", "x".into()).await,
            "PERMISSION_DENIED",
            "DAPR_PUBSUB_FORBIDDEN",
        ),
        (
            publish("down", "t", "x".into()).await,
            "INTERNAL",
            "DAPR_PUBSUB_PUBLISH_MESSAGE",
        ),
        (
            publish("pubsub", "t", "x".repeat(2048)).await,
            "RESOURCE_EXHAUSTED",
            "UNKNOWN",
        ),
        (
            publish("pubsub", "", "x".into()).await,
            "INVALID_ARGUMENT",
            "DAPR_PUBSUB_TOPIC_NAME_EMPTY",
        ),
        (
            publish("", "t", "x".into()).await,
            "INVALID_ARGUMENT",
            "DAPR_PUBSUB_NAME_EMPTY",
        ),
        (
            sdk(
                &sc,
                &[],
                &[
                    "publish",
                    "pubsub",
                    "t",
                    "x",
                    "text/plain",
                    r#"{"rawPayload":"maybe"}"#,
                ],
            )
            .await,
            "INVALID_ARGUMENT",
            "DAPR_PUBSUB_METADATA_DESERIALIZATION",
        ),
        (
            sdk(
                &sc,
                &[],
                &[
                    "publish",
                    "pubsub",
                    "t",
                    "{not json",
                    "application/cloudevents+json",
                ],
            )
            .await,
            "INVALID_ARGUMENT",
            "DAPR_PUBSUB_CLOUD_EVENT_CREATION",
        ),
    ];
    for (got, code, reason) in cases {
        assert_eq!(got["error"], code, "{got}");
        assert_eq!(got["reason"], reason, "{got}");
    }
    // Not a pub/sub RPC: UNIMPLEMENTED, the signal SDK fallbacks key on.
    let state = sdk(&sc, &[], &["state"]).await;
    assert_eq!(state["error"], "UNIMPLEMENTED", "{state}");
    Ok(())
}

/// DAPR_API_TOKEN guards every RPC; the SDK sends it from its env.
#[tokio::test]
async fn the_api_token_guards_grpc() -> TestResult {
    let dir = resources(&[("pubsub.yaml", PUBSUB)]);
    let sc = Sidecar::start(dir.path(), None, &[("DAPR_API_TOKEN", "s3cret")], &[]).await;
    let args = ["publish", "pubsub", "t", "x", "text/plain"];
    let r = sdk(&sc, &[], &args).await;
    assert_eq!(r["error"], "UNAUTHENTICATED", "{r}");
    let r = sdk(&sc, &[("DAPR_API_TOKEN", "wrong")], &args).await;
    assert_eq!(r["error"], "UNAUTHENTICATED", "{r}");
    let r = sdk(&sc, &[("DAPR_API_TOKEN", "s3cret")], &args).await;
    assert_eq!(r["ok"], true, "{r}");
    Ok(())
}

/// `Shutdown` stops the sidecar as `POST /v1.0/shutdown` does.
#[tokio::test]
async fn shutdown_over_grpc_stops_the_sidecar() -> TestResult {
    let dir = resources(&[("pubsub.yaml", PUBSUB)]);
    let mut sc = Sidecar::start(dir.path(), None, &[], &[]).await;
    let r = sdk(&sc, &[], &["shutdown"]).await;
    assert_eq!(r["ok"], true, "{r}");
    let status =
        tokio::time::timeout(std::time::Duration::from_secs(10), sc.child.wait()).await??;
    assert!(status.success(), "{status}");
    Ok(())
}

/// The JS SDK in gRPC mode: `start()` polls GetMetadata, `publish` is
/// PublishEvent, `publishBulk` BulkPublishEventAlpha1 (its only bulk RPC).
#[tokio::test]
async fn the_js_sdk_in_grpc_mode_publishes_and_bulk_publishes_through_alpha1() -> TestResult {
    let (_dir, mut app, sc) = orders_sidecar().await;
    // ESM resolves packages next to the script: run it beside node_modules.
    let js = js_dir();
    let script = js.join("client.mjs");
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/js/client.mjs"),
        &script,
    )?;
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(&script);
    let r = client_answer(&mut cmd, &sc, "JS").await;
    assert_eq!(r["id"], "test-app", "{r}");
    assert_eq!(r["components"], json!(["pubsub"]));
    assert_eq!(r["failed"], 0, "{r}");
    let mut got = vec![];
    for _ in 0..3 {
        got.push(app.next(10).await?.json()["data"].clone());
    }
    for want in [json!({"js": 1}), json!({"js": 2}), json!("text three")] {
        assert!(got.contains(&want), "{want} in {got:?}");
    }
    Ok(())
}

/// The Go SDK: `NewClient()` dials with `WithBlock` (5 s), then
/// PublishEvent and PublishEvents (the stable bulk RPC); an unknown pubsub
/// is an error with daprd's code.
#[tokio::test]
async fn the_go_sdk_publishes() -> TestResult {
    let (_dir, mut app, sc) = orders_sidecar().await;
    let publisher = match std::env::var("PERCH_SDK_GO_PUBLISHER") {
        Ok(p) => PathBuf::from(p),
        Err(_) => sdk_dir("go", &GO_FILES).join("publisher"),
    };
    let mut cmd = tokio::process::Command::new(publisher);
    let r = client_answer(&mut cmd, &sc, "Go").await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["failed"], 0, "{r}");
    assert!(
        r["unknown"].as_str().unwrap().contains("InvalidArgument"),
        "{r}"
    );
    assert_eq!(delivered_numbers(&mut app, "go", 3).await, [1, 2, 3]);
    Ok(())
}

/// The Java SDK: `DaprClientBuilder().build()` over gRPC, `publishEvent`,
/// and the preview client's `publishEvents` (bulk is preview in 1.16).
#[tokio::test]
async fn the_java_sdk_publishes() -> TestResult {
    let (_dir, mut app, sc) = orders_sidecar().await;
    let cp = match std::env::var("PERCH_SDK_JAVA_CP") {
        Ok(cp) => cp,
        Err(_) => {
            let d = sdk_dir(
                "java",
                &["tests/sdk/java/pom.xml", "tests/sdk/java/Publisher.java"],
            );
            let deps = std::fs::read_to_string(d.join("cp.txt"))?;
            format!("{}:{}", d.join("classes").display(), deps.trim())
        }
    };
    let mut cmd = tokio::process::Command::new("java");
    cmd.args(["-cp", &cp, "Publisher"]);
    let r = client_answer(&mut cmd, &sc, "Java").await;
    assert_eq!(r, json!({"ok": true, "failed": 0}));
    assert_eq!(delivered_numbers(&mut app, "java", 3).await, [1, 2, 3]);
    Ok(())
}

/// Starts the Python SDK's streaming subscriber with `plan` in the
/// background; returns it once it printed that it subscribed.
async fn stream_subscriber(
    sc: &Sidecar,
    topic: &str,
    plan: &str,
    dead: Option<&str>,
) -> (
    tokio::process::Child,
    tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
) {
    use tokio::io::AsyncBufReadExt;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/python/client.py");
    let mut args = vec!["stream", "pubsub", topic, plan];
    args.extend(dead);
    let mut child = tokio::process::Command::new(python())
        .arg(script)
        .args(&args)
        .env("DAPR_HTTP_PORT", sc.port.to_string())
        .env("DAPR_GRPC_PORT", sc.grpc_port.to_string())
        .env_remove("DAPR_API_TOKEN")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run the Python SDK");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(std::time::Duration::from_secs(20), lines.next_line())
        .await
        .expect("the subscriber starts")
        .unwrap()
        .unwrap_or_default();
    assert!(first.contains("subscribed"), "{first}");
    // The subscription runs once it is listed.
    for _ in 0..100 {
        let (_, _, body) = sc.call("GET", "/v1.0/metadata", &[], "").await.unwrap();
        let md: Value = serde_json::from_slice(&body).unwrap();
        if md["subscriptions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["topic"] == topic && s["type"] == "STREAMING")
        {
            return (child, lines);
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the stream is not listed as STREAMING");
}

async fn last_json(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
) -> Value {
    let line = tokio::time::timeout(std::time::Duration::from_secs(30), lines.next_line())
        .await
        .expect("the subscriber answers")
        .unwrap()
        .unwrap_or_default();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

/// A streaming subscription (`DaprClient().subscribe`): SUCCESS acks,
/// RETRY redelivers on the stream, DROP dead-letters; listed as
/// STREAMING; no app port needed.
#[tokio::test]
async fn the_python_sdk_subscribes_over_a_stream() -> TestResult {
    let dir = resources(&[
        ("pubsub.yaml", PUBSUB),
        ("r.yaml", &constant_retries("10ms", 3)),
        ("d.yaml", &subscription("d", "orders-dead", "/dead")),
    ]);
    let mut app = TestApp::ok(None).await;
    let sc = Sidecar::start(dir.path(), Some(app.port), &[], &[]).await;
    let (_child, mut lines) = stream_subscriber(
        &sc,
        "orders",
        r#"["success","retry","success","drop"]"#,
        Some("orders-dead"),
    )
    .await;
    for n in 1..=3 {
        let ce = json!({"specversion": "1.0", "id": format!("e{n}"), "source": "s", "type": "t",
                        "datacontenttype": "application/json", "data": {"n": n}});
        let (status, _, _) = sc
            .call(
                "POST",
                "/v1.0/publish/pubsub/orders",
                &[("content-type", "application/cloudevents+json")],
                &ce.to_string(),
            )
            .await?;
        assert_eq!(status, 204);
        // One at a time, so the plan meets them in order.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    let r = last_json(&mut lines).await;
    let seen: Vec<(String, String)> = r["seen"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["id"].as_str().unwrap().to_owned(),
                s["action"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let want = [
        ("e1", "success"),
        ("e2", "retry"),
        ("e2", "success"),
        ("e3", "drop"),
    ];
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(seen, want, "{r}");
    assert_eq!(r["seen"][0]["data"], json!({"n": 1}), "{r}");
    let dead = app.next(10).await?;
    assert_eq!(dead.path, "/dead");
    assert_eq!(dead.json()["id"], "e3", "DROP dead-letters");
    Ok(())
}

/// A stream that ends with an event unsettled leaves it to the next
/// stream: never acked, never dead-lettered for it.
#[tokio::test]
async fn an_unsettled_event_goes_to_the_next_stream() -> TestResult {
    let dir = resources(&[("pubsub.yaml", PUBSUB)]);
    let sc = Sidecar::start(dir.path(), None, &[], &[]).await;
    let (mut first, mut lines) = stream_subscriber(&sc, "jobs", r#"["close"]"#, None).await;
    assert_eq!(sc.publish_json("pubsub/jobs", r#"{"job":1}"#).await, 204);
    let r = last_json(&mut lines).await;
    assert_eq!(r["seen"][0]["action"], "close", "{r}");
    let _ = first.wait().await;
    // Listed no more once the stream is gone.
    let mut gone = false;
    for _ in 0..100 {
        let (_, _, body) = sc.call("GET", "/v1.0/metadata", &[], "").await?;
        let md: Value = serde_json::from_slice(&body)?;
        if md["subscriptions"].as_array().unwrap().is_empty() {
            gone = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(gone, "the closed stream is unlisted");
    let (_second, mut lines) = stream_subscriber(&sc, "jobs", r#"["success"]"#, None).await;
    let r = last_json(&mut lines).await;
    assert_eq!(r["seen"][0]["data"], json!({"job": 1}), "redelivered: {r}");
    assert_eq!(r["seen"][0]["action"], "success");
    Ok(())
}

/// How one `--app-protocol grpc` case runs: the pub/sub component, the
/// topic the app subscribes to and the one published to, what else is in
/// the resources folder, whether the topic is a bulk subscription (its
/// batches counted in Dapr's bulk ingress metric), and whether the Python
/// SDK's `DaprClient` publishes (else HTTP).
struct GrpcCase<'a> {
    pubsub: &'a str,
    app_topic: &'a str,
    topic: &'a str,
    extra: &'a [(&'a str, &'a str)],
    bulk: bool,
    sdk_publish: bool,
}

/// The single-event case: `orders`, from ListTopicSubscriptions.
const ORDERS: GrpcCase = GrpcCase {
    pubsub: PUBSUB,
    app_topic: "orders",
    topic: "orders",
    extra: &[],
    bulk: false,
    sdk_publish: false,
};

/// `--app-protocol grpc` against `app` (a gRPC app written with an SDK,
/// listening on `app_port`, logging each event it saw to `log`): its
/// subscriptions come from ListTopicSubscriptions, events go to
/// OnTopicEvent (or, for a bulk subscription, OnBulkTopicEvent or its
/// Alpha1 fallback): SUCCESS acks, RETRY is retried, DROP ends the event;
/// its health check is probed over gRPC.
async fn grpc_app_case(
    mut app: tokio::process::Command,
    app_port: u16,
    log: &std::path::Path,
    dead_letter: &str,
    case: GrpcCase<'_>,
) -> TestResult {
    let _app = app.kill_on_drop(true).spawn()?;
    let retries = constant_retries("10ms", 3);
    let mut files = vec![("pubsub.yaml", case.pubsub), ("r.yaml", retries.as_str())];
    files.extend_from_slice(case.extra);
    let dir = resources(&files);
    let sc = Sidecar::start(
        dir.path(),
        Some(app_port),
        &[("APP_API_TOKEN", "app-secret")],
        &[
            "--app-protocol",
            "grpc",
            "--enable-app-health-check",
            "--app-health-probe-interval",
            "1",
        ],
    )
    .await;
    let (_, _, body) = sc.call("GET", "/v1.0/metadata", &[], "").await?;
    let md: Value = serde_json::from_slice(&body)?;
    let orders = md["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["topic"] == case.app_topic)
        .unwrap_or_else(|| panic!("{} is subscribed: {md}", case.app_topic));
    assert_eq!(orders["type"], "PROGRAMMATIC");
    assert_eq!(orders["deadLetterTopic"], dead_letter);
    assert_eq!(md["appConnectionProperties"]["protocol"], "grpc");
    for n in 1..=3 {
        let data = json!({"n": n}).to_string();
        if case.sdk_publish {
            let r = sdk(
                &sc,
                &[],
                &["publish", "pubsub", case.topic, &data, "application/json"],
            )
            .await;
            assert_eq!(r, json!({"ok": true}));
        } else {
            let status = sc
                .publish_json(&format!("pubsub/{}", case.topic), &data)
                .await;
            assert_eq!(status, 204);
        }
    }
    // What the app saw: n=1 once, n=2 twice (RETRY then SUCCESS), n=3 once.
    let read = || -> Vec<Value> {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .collect()
    };
    let mut lines = vec![];
    for _ in 0..100 {
        lines = read();
        if lines.len() >= 4 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let mut seen: Vec<(i64, String)> = lines
        .iter()
        .map(|l| {
            (
                l["n"].as_f64().unwrap() as i64,
                l["answer"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            (1, "success".to_owned()),
            (2, "retry".to_owned()),
            (2, "success".to_owned()),
            (3, "drop".to_owned())
        ],
        "{lines:?}"
    );
    // Nothing settled is delivered again.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(read().len(), 4, "settled events are not delivered again");
    let batches = sc
        .metric(
            "dapr_component_pubsub_ingress_bulk_count",
            &[("topic", case.topic)],
        )
        .await;
    if case.bulk {
        // The first batch, then the retry of n=2 alone.
        assert!(batches.unwrap_or(0.0) >= 2.0, "batches: {batches:?}");
    } else {
        assert_eq!(batches, None, "one event per call");
    }
    Ok(())
}

/// A gRPC app written with the Python SDK's `dapr.ext.grpc.App`.
fn python_grpc_app(app_port: u16, log: &std::path::Path) -> tokio::process::Command {
    let mut app = tokio::process::Command::new(python());
    app.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/sdk/python/grpc_app.py"
    ))
    .arg(app_port.to_string())
    .env("GRPC_APP_LOG", log);
    app
}

#[tokio::test]
async fn a_python_grpc_app_is_subscribed_and_delivered_to() -> TestResult {
    let app_port = free_port();
    let log = tempfile::NamedTempFile::new()?;
    let app = python_grpc_app(app_port, log.path());
    grpc_app_case(app, app_port, log.path(), "orders-dead", ORDERS).await
}

/// A declarative bulk subscription routed to the Python app's `orders`
/// handler (the SDK routes a path equal to a topic it serves there): the
/// batches go to OnBulkTopicEvent, which the SDK implements.
#[tokio::test]
async fn a_python_grpc_app_takes_bulk_batches() -> TestResult {
    let app_port = free_port();
    let log = tempfile::NamedTempFile::new()?;
    let app = python_grpc_app(app_port, log.path());
    let bulk = "apiVersion: dapr.io/v2alpha1
kind: Subscription
metadata: {name: bulk}
spec:
  pubsubname: pubsub
  topic: bulk-orders
  routes: {default: orders}
  bulkSubscribe: {enabled: true, maxMessagesCount: 10, maxAwaitDurationMs: 50}
";
    let case = GrpcCase {
        topic: "bulk-orders",
        extra: &[("bulk.yaml", bulk)],
        bulk: true,
        ..ORDERS
    };
    grpc_app_case(app, app_port, log.path(), "orders-dead", case).await
}

/// Swapping brokers is a YAML change for gRPC apps too: the Python SDK's
/// publisher and `dapr.ext.grpc` app, unchanged, on the shipped Kafka and
/// RabbitMQ components (a fresh topic each run, so a durable broker's
/// leftovers are not counted).
#[tokio::test]
async fn python_grpc_publisher_and_app_run_unchanged_on_kafka_and_rabbitmq() -> TestResult {
    for broker in ["kafka", "rabbitmq"] {
        let component = std::fs::read_to_string(format!(
            "{}/components/{broker}/pubsub.yaml",
            env!("CARGO_MANIFEST_DIR")
        ))?;
        let topic = format!("grpc-{}", uuid::Uuid::new_v4().simple());
        let app_port = free_port();
        let log = tempfile::NamedTempFile::new()?;
        let mut app = python_grpc_app(app_port, log.path());
        app.env("GRPC_APP_TOPIC", &topic);
        let case = GrpcCase {
            pubsub: &component,
            app_topic: &topic,
            topic: &topic,
            sdk_publish: true,
            ..ORDERS
        };
        grpc_app_case(app, app_port, log.path(), &format!("{topic}-dead"), case).await?;
    }
    Ok(())
}

/// A gRPC app written with the Go SDK's `service/grpc`.
#[tokio::test]
async fn a_go_grpc_app_is_subscribed_and_delivered_to() -> TestResult {
    let app_port = free_port();
    let log = tempfile::NamedTempFile::new()?;
    let bin = match std::env::var("PERCH_SDK_GO_SUBSCRIBER") {
        Ok(p) => PathBuf::from(p),
        Err(_) => sdk_dir("go", &GO_FILES).join("subscriber"),
    };
    let mut app = tokio::process::Command::new(bin);
    app.arg(app_port.to_string())
        .env("GRPC_APP_LOG", log.path());
    grpc_app_case(app, app_port, log.path(), "", ORDERS).await
}

/// A gRPC app written with the JS SDK's `DaprServer` (gRPC mode).
fn js_grpc_app(app_port: u16, log: &std::path::Path) -> tokio::process::Command {
    // ESM resolves packages next to the script: run it beside node_modules.
    let script = js_dir().join(format!("grpc_app-{app_port}.mjs"));
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/js/grpc_app.mjs"),
        &script,
    )
    .unwrap();
    let mut app = tokio::process::Command::new("node");
    app.arg(script)
        .arg(app_port.to_string())
        .env("GRPC_APP_LOG", log);
    app
}

#[tokio::test]
async fn a_js_grpc_app_is_subscribed_and_delivered_to() -> TestResult {
    let app_port = free_port();
    let log = tempfile::NamedTempFile::new()?;
    let app = js_grpc_app(app_port, log.path());
    grpc_app_case(app, app_port, log.path(), "", ORDERS).await
}

/// The JS SDK's `subscribeBulk`: declared in ListTopicSubscriptions, its
/// batches answered by OnBulkTopicEventAlpha1 after OnBulkTopicEvent is
/// UNIMPLEMENTED (the SDK serves only the alpha method).
#[tokio::test]
async fn a_js_grpc_app_takes_bulk_batches_through_alpha1() -> TestResult {
    let app_port = free_port();
    let log = tempfile::NamedTempFile::new()?;
    let app = js_grpc_app(app_port, log.path());
    let case = GrpcCase {
        topic: "bulk-orders",
        bulk: true,
        ..ORDERS
    };
    grpc_app_case(app, app_port, log.path(), "", case).await
}

/// What scripts/sdk.sh builds the Go SDK clients from.
const GO_FILES: [&str; 4] = [
    "tests/sdk/go/go.mod",
    "tests/sdk/go/go.sum",
    "tests/sdk/go/main.go",
    "tests/sdk/go/subscriber/main.go",
];

/// Runs an SDK client program pointed at `sc`; the last JSON line it
/// printed.
async fn client_answer(cmd: &mut tokio::process::Command, sc: &Sidecar, sdk: &str) -> Value {
    let out = cmd
        .env("DAPR_GRPC_PORT", sc.grpc_port.to_string())
        .env("DAPR_HTTP_PORT", sc.port.to_string())
        .output()
        .await
        .unwrap_or_else(|e| panic!("run the {sdk} SDK client: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rfind(|l| l.starts_with('{'))
        .unwrap_or_else(|| {
            panic!(
                "no answer from the {sdk} SDK: {stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

/// A sidecar on the in-memory broker with an HTTP app subscribed to
/// `orders` on `/orders`.
async fn orders_sidecar() -> (tempfile::TempDir, TestApp, Sidecar) {
    let dir = resources(&[
        ("pubsub.yaml", PUBSUB),
        ("s.yaml", &subscription("s", "orders", "/orders")),
    ]);
    let app = TestApp::ok(None).await;
    let sc = Sidecar::start(dir.path(), Some(app.port), &[], &[]).await;
    (dir, app, sc)
}

/// The `data[field]` numbers of the next `n` deliveries, sorted.
async fn delivered_numbers(app: &mut TestApp, field: &str, n: usize) -> Vec<i64> {
    let mut got = vec![];
    for _ in 0..n {
        let ev = app.next(10).await.expect("a delivery").json();
        got.push(ev["data"][field].as_i64().unwrap_or(-1));
    }
    got.sort();
    got
}
