//! Hostile input and hostile peers (issue 17): the real binary, raw TCP
//! clients for what an HTTP library will not send, and apps that misbehave.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends raw bytes on a new connection and returns what came back before
/// the server closed it (or `secs` passed).
async fn raw(port: u16, request: &[u8], secs: u64) -> String {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(request).await.unwrap();
    let mut out = vec![];
    let _ = tokio::time::timeout(Duration::from_secs(secs), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn memory_sidecar_dir() -> tempfile::TempDir {
    resources(&[("pubsub.yaml", &component("pubsub", &[]))])
}

/// Review §3: `%` followed by a multi-byte character sliced a `&str`
/// mid-character and panicked the connection task; invalid escapes were
/// decoded lossily, so distinct raw topics collapsed into one.
#[tokio::test]
async fn a_bad_percent_escape_is_a_400_and_the_sidecar_keeps_serving() -> TestResult {
    let dir = memory_sidecar_dir();
    let sc = Sidecar::start(dir.path(), None, &[], &[]).await;
    for target in [
        "/v1.0/publish/pubsub/%a\u{e9}".as_bytes(),
        "/v1.0/publish/pubsub/orders?metadata.k=%ff%fe".as_bytes(),
        "/v1.0/publish/pubsub/%zz".as_bytes(),
    ] {
        let mut req = b"POST ".to_vec();
        req.extend_from_slice(target);
        req.extend_from_slice(
            b" HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}",
        );
        let answer = raw(sc.port, &req, 5).await;
        assert!(
            answer.starts_with("HTTP/1.1 400") && answer.contains("ERR_MALFORMED_REQUEST"),
            "{}: {answer}",
            String::from_utf8_lossy(target)
        );
    }
    assert_eq!(sc.publish_json("pubsub/orders", r#"{"a":1}"#).await, 204);
    Ok(())
}

/// Review §3 (F14): a metadata key, `messageID`, `type` or a topic over
/// AMQP's 255-byte short-string limit panicked in `properties()`.
#[tokio::test]
async fn rabbitmq_names_and_properties_over_255_bytes_are_a_400() -> TestResult {
    let b = Bench::new(Backend::Rabbit);
    let dir = resources(&[("pubsub.yaml", &b.pubsub(&[]))]);
    let sc = Sidecar::start(dir.path(), None, &[], &[]).await;
    let topic = b.topic("orders");
    let long = "k".repeat(300);
    for (path, rule) in [
        (
            format!("/v1.0/publish/pubsub/{topic}?metadata.{long}=v"),
            "AMQP header name",
        ),
        (
            format!("/v1.0/publish/pubsub/{topic}?metadata.messageID={long}"),
            "messageID",
        ),
        (
            format!("/v1.0/publish/pubsub/{topic}?metadata.type={long}"),
            "metadata type",
        ),
        (format!("/v1.0/publish/pubsub/{long}"), "exchange name"),
        ("/v1.0/publish/pubsub/amq.direct".to_owned(), "reserved"),
    ] {
        let (status, _, body) = sc
            .call("POST", &path, &[("content-type", "application/json")], "{}")
            .await?;
        let body = String::from_utf8_lossy(&body);
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body.contains(rule), "{path}: {body}");
    }
    assert_eq!(
        sc.publish_json(&format!("pubsub/{topic}"), r#"{"a":1}"#)
            .await,
        204,
        "the sidecar keeps serving"
    );
    Ok(())
}

#[tokio::test]
async fn kafka_topic_names_are_checked_against_kafka_rules() -> TestResult {
    let b = Bench::new(Backend::Kafka);
    let dir = resources(&[("pubsub.yaml", &b.pubsub(&[]))]);
    let sc = Sidecar::start(dir.path(), None, &[], &[]).await;
    for (topic, rule) in [
        ("bad%20topic".to_owned(), "not allowed"),
        ("x".repeat(250), "1 to 249"),
        ("..".to_owned(), "not a legal"),
    ] {
        let (status, _, body) = sc
            .call(
                "POST",
                &format!("/v1.0/publish/pubsub/{topic}"),
                &[("content-type", "application/json")],
                "{}",
            )
            .await?;
        let body = String::from_utf8_lossy(&body);
        assert_eq!(status, 400, "{topic}: {body}");
        assert!(body.contains(rule), "{topic}: {body}");
    }
    Ok(())
}

/// Review F15: no connection cap, no header timeout (hyper's is off
/// without a timer). Idle connections neither stop health checks nor are
/// kept for ever; a slowloris client is cut off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_clients_do_not_take_the_api_down() -> TestResult {
    let dir = memory_sidecar_dir();
    let sc = Sidecar::start(dir.path(), None, &[], &[]).await;
    let mut idle = Vec::with_capacity(2000);
    for _ in 0..2000 {
        idle.push(tokio::net::TcpStream::connect(("127.0.0.1", sc.port)).await?);
    }
    let started = Instant::now();
    assert_eq!(sc.call("GET", "/v1.0/healthz", &[], "").await?.0, 204);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "health answered with 2,000 idle connections open"
    );
    // A slowloris client: one header byte a second.
    let mut slow = tokio::net::TcpStream::connect(("127.0.0.1", sc.port)).await?;
    let started = Instant::now();
    let request = b"GET /v1.0/healthz HTTP/1.1\r\nhost: x\r\nx-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let mut cut = false;
    for byte in request {
        if slow.write_all(&[*byte]).await.is_err() {
            cut = true;
            break;
        }
        let mut buf = [0u8; 64];
        if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_secs(1), slow.read(&mut buf)).await {
            cut = true;
            break;
        }
    }
    assert!(cut, "the slow client was never cut off");
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(20),
        "cut off by the 10 s header timeout, after {took:?}"
    );
    // The idle connections were closed by the same timeout.
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(5), idle[0].read(&mut buf)).await;
    assert!(
        matches!(n, Ok(Ok(0)) | Ok(Err(_))),
        "idle connection closed: {n:?}"
    );
    assert_eq!(sc.call("GET", "/v1.0/healthz", &[], "").await?.0, 204);
    Ok(())
}

/// The body limit holds for a chunked body too (no content-length).
#[tokio::test]
async fn a_chunked_body_over_the_limit_is_a_413() -> TestResult {
    let dir = memory_sidecar_dir();
    let sc = Sidecar::start(dir.path(), None, &[], &["--max-body-size", "1Ki"]).await;
    let mut req = b"POST /v1.0/publish/pubsub/orders HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n".to_vec();
    for _ in 0..4 {
        req.extend_from_slice(b"200\r\n");
        req.extend_from_slice(&[b'a'; 0x200]);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let answer = raw(sc.port, &req, 5).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    Ok(())
}

/// Review F13: the app's answer was read whole. An app answering 100 MiB
/// now fails the attempt after 4 MiB (retried, then dead-lettered), and
/// Perch's memory stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_answering_100_mib_does_not_grow_the_sidecar() -> TestResult {
    let huge: std::sync::Arc<String> = std::sync::Arc::new("x".repeat(100 << 20));
    let h = huge.clone();
    let mut app = TestApp::start(
        None,
        std::sync::Arc::new(move |r: &Received| {
            if r.path == "/dead" {
                (200, String::new())
            } else {
                (200, (*h).clone())
            }
        }),
    )
    .await;
    let sub = subscription_with_dead_letter("s", "orders", "/orders", "dead");
    let dir = resources(&[
        ("pubsub.yaml", &component("pubsub", &[])),
        ("r.yaml", &constant_retries("10ms", 1)),
        ("s.yaml", &sub),
        ("d.yaml", &subscription("d", "dead", "/dead")),
    ]);
    let sc = Sidecar::start(dir.path(), Some(app.port), &[], &[]).await;
    assert_eq!(sc.publish_json("pubsub/orders", r#"{"a":1}"#).await, 204);
    let mut paths = vec![];
    while !paths.contains(&"/dead".to_owned()) {
        paths.push(app.next(60).await?.path);
    }
    assert_eq!(
        paths.iter().filter(|p| *p == "/orders").count(),
        2,
        "each oversized answer failed its attempt: {paths:?}"
    );
    let status = std::fs::read_to_string(format!("/proc/{}/status", sc.child.id().unwrap()))?;
    let hwm_kib: u64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(
        hwm_kib < 64 * 1024,
        "peak RSS {hwm_kib} KiB stays far below the 100 MiB answer"
    );
    drop(huge);
    Ok(())
}

/// Review F13: with no Resiliency timeout, an app call had no deadline and
/// a hung app held its slot for ever. The default (60 s) ends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_app_releases_its_slot_after_the_default_timeout() -> TestResult {
    let mut app = TestApp::start(
        None,
        std::sync::Arc::new(|r: &Received| {
            if r.json()["data"]["n"] == 1 {
                (0, String::new()) // never answers
            } else {
                (200, String::new())
            }
        }),
    )
    .await;
    let dir = resources(&[
        ("pubsub.yaml", &component("pubsub", &[])),
        ("s.yaml", &subscription("s", "orders", "/orders")),
    ]);
    let sc = Sidecar::start(
        dir.path(),
        Some(app.port),
        &[],
        &["--app-max-concurrency", "1"],
    )
    .await;
    let started = Instant::now();
    assert_eq!(sc.publish_json("pubsub/orders", r#"{"n":1}"#).await, 204);
    assert_eq!(app.next(10).await?.json()["data"]["n"], 1);
    assert_eq!(sc.publish_json("pubsub/orders", r#"{"n":2}"#).await, 204);
    loop {
        let r = app.next(90).await?;
        if r.json()["data"]["n"] == 2 {
            break;
        }
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(55) && took < Duration::from_secs(90),
        "the slot came back after the 60 s default timeout, not before, not never: {took:?}"
    );
    Ok(())
}

/// Review F17: message metadata became app headers before the sidecar's
/// own, so a publisher could forge `dapr-api-token` (read first by Go's
/// `Header.Get`), Perch's dead-letter mark, or the idempotency key.
#[tokio::test]
async fn metadata_cannot_forge_control_headers() -> TestResult {
    let mut app = TestApp::ok(None).await;
    let dir = resources(&[
        ("pubsub.yaml", &component("pubsub", &[])),
        ("s.yaml", &subscription("s", "orders", "/orders")),
    ]);
    let sc = Sidecar::start(
        dir.path(),
        Some(app.port),
        &[("APP_API_TOKEN", "the-real-token")],
        &[],
    )
    .await;
    let (status, _, _) = sc
        .call(
            "POST",
            "/v1.0/publish/pubsub/orders?metadata.dapr-api-token=forged&metadata.idempotency-key=forged&metadata.perch-dead-letter-from=forged&metadata.authorization=forged&metadata.x-custom=kept",
            &[("content-type", "application/json")],
            &json!({"a": 1}).to_string(),
        )
        .await?;
    assert_eq!(status, 204);
    let r = app.next(10).await?;
    assert_eq!(
        r.headers.get("dapr-api-token").map(String::as_str),
        Some("the-real-token")
    );
    for forged in ["idempotency-key", "perch-dead-letter-from", "authorization"] {
        assert!(
            !r.headers.contains_key(forged),
            "{forged} forged: {:?}",
            r.headers
        );
    }
    assert_eq!(r.headers.get("x-custom").map(String::as_str), Some("kept"));
    Ok(())
}

/// The API token never reaches the logs, even at debug level in JSON, and
/// listening beyond loopback without a token is warned about.
#[tokio::test]
async fn the_token_is_never_logged_and_an_open_api_is_warned_about() -> TestResult {
    let dir = memory_sidecar_dir();
    for (token, listen) in [("tok-8f3a-secret", "127.0.0.1"), ("", "0.0.0.0")] {
        let port = free_port();
        let mut child = tokio::process::Command::new(perch_bin())
            .args([
                "run",
                "--app-id",
                "t",
                "--dapr-http-port",
                &port.to_string(),
            ])
            .args(["--metrics-port", &free_port().to_string()])
            .args(["--dapr-grpc-port", &free_port().to_string()])
            .args(["--dapr-public-port", &free_port().to_string()])
            .args(["--log-as-json", "--log-level", "debug"])
            .args(["--dapr-listen-addresses", listen])
            .arg("--resources-path")
            .arg(dir.path())
            .env("DAPR_API_TOKEN", token)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
        for _ in 0..200 {
            if let Ok((204, _, _)) = request("GET", &url("/v1.0/healthz"), &[], "").await {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = request(
            "GET",
            &url("/v1.0/metadata"),
            &[("dapr-api-token", "wrong")],
            "",
        )
        .await;
        let _ = request(
            "GET",
            &url("/v1.0/metadata"),
            &[("dapr-api-token", token)],
            "",
        )
        .await;
        child.start_kill()?;
        let out = child.wait_with_output().await?;
        let log = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(log.contains("\"level\""), "JSON logs: {log}");
        if token.is_empty() {
            assert!(log.contains("without DAPR_API_TOKEN"), "warned: {log}");
        } else {
            assert!(!log.contains(token), "the token is in the log: {log}");
            assert!(!log.contains("without DAPR_API_TOKEN"), "{log}");
        }
    }
    Ok(())
}
