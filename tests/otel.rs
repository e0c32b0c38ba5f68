//! Traces over OTLP, configured as Dapr users configure them (a
//! `Configuration` given by `--config`), received by an OTLP receiver the
//! test runs (OTLP/HTTP protobuf on `/v1/traces`, and OTLP/gRPC
//! `TraceService/Export` over h2c), decoded with the `opentelemetry-proto`
//! types: a publish span whose parent is the publisher's trace context, a
//! delivery span whose parent is the publish span and whose id is the
//! trace context the app received, with the messaging attributes.

mod common;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;

type Spans = Arc<Mutex<Vec<Span>>>;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn collect(req: &ExportTraceServiceRequest, into: &Spans) {
    for rs in &req.resource_spans {
        for ss in &rs.scope_spans {
            into.lock().unwrap().extend(ss.spans.iter().cloned());
        }
    }
}

/// The test CA's serving certificate (`tests/fixtures/tls/a`, valid for
/// 127.0.0.1) as a TLS acceptor speaking h2.
fn tls_acceptor() -> tokio_rustls::TlsAcceptor {
    use rustls_pki_types::pem::PemObject;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls/a");
    let certs = rustls_pki_types::CertificateDer::pem_file_iter(dir.join("tls.crt"))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_file(dir.join("tls.key")).unwrap();
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut cfg = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
}

/// An OTLP receiver on a free port: `/v1/traces` (HTTP, protobuf) or the
/// gRPC `Export` method (h2c, or h2 over TLS with `tls`).
async fn receiver(grpc: bool, tls: bool) -> (u16, Spans) {
    let acceptor = tls.then(tls_acceptor);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let spans: Spans = Arc::default();
    let s = spans.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let s = s.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let s = s.clone();
                        async move {
                            let path = req.uri().path().to_owned();
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let frames: Vec<Result<Frame<Bytes>, Infallible>> = if grpc {
                                assert_eq!(
                                    path,
                                    "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
                                );
                                // One length-prefixed, uncompressed message.
                                assert_eq!(body[0], 0, "uncompressed");
                                let len =
                                    u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
                                collect(
                                    &ExportTraceServiceRequest::decode(&body[5..5 + len]).unwrap(),
                                    &s,
                                );
                                let mut trailers = hyper::HeaderMap::new();
                                trailers.insert("grpc-status", "0".parse().unwrap());
                                vec![
                                    Ok(Frame::data(Bytes::from_static(&[0, 0, 0, 0, 0]))),
                                    Ok(Frame::trailers(trailers)),
                                ]
                            } else {
                                assert_eq!(path, "/v1/traces");
                                collect(&ExportTraceServiceRequest::decode(body).unwrap(), &s);
                                vec![]
                            };
                            let ct = if grpc {
                                "application/grpc"
                            } else {
                                "application/x-protobuf"
                            };
                            let resp = hyper::Response::builder()
                                .header("content-type", ct)
                                .body(StreamBody::new(futures_util_stream(frames)))
                                .unwrap();
                            Ok::<_, Infallible>(resp)
                        }
                    },
                );
                if let Some(acceptor) = acceptor {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let io = hyper_util::rt::TokioIo::new(tls);
                    if grpc {
                        let _ = hyper::server::conn::http2::Builder::new(
                            hyper_util::rt::TokioExecutor::new(),
                        )
                        .serve_connection(io, svc)
                        .await;
                    } else {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, svc)
                            .await;
                    }
                    return;
                }
                let io = hyper_util::rt::TokioIo::new(stream);
                if grpc {
                    let _ = hyper::server::conn::http2::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(io, svc)
                    .await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, svc)
                        .await;
                }
            });
        }
    });
    (port, spans)
}

/// The frames as a stream (no futures crate: a small iterator stream).
fn futures_util_stream(
    frames: Vec<Result<Frame<Bytes>, Infallible>>,
) -> impl futures_core::Stream<Item = Result<Frame<Bytes>, Infallible>> {
    struct Iter(std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>);
    impl futures_core::Stream for Iter {
        type Item = Result<Frame<Bytes>, Infallible>;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            std::task::Poll::Ready(self.0.next())
        }
    }
    Iter(frames.into_iter())
}

fn attr(span: &Span, key: &str) -> Option<String> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.clone()),
            other => Some(format!("{other:?}")),
        })
}

async fn spans_reach_the_collector(protocol: &str, secure: bool) -> TestResult {
    let (port, spans) = receiver(protocol == "grpc", secure).await;
    let config = format!(
        "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata: {{name: tracing}}\nspec:\n  tracing:\n    samplingRate: \"1\"\n    otel:\n      endpointAddress: \"127.0.0.1:{port}\"\n      isSecure: {secure}\n      protocol: {protocol}\n"
    );
    // With TLS the collector's certificate is trusted through the system's
    // roots: SSL_CERT_FILE names the test CA.
    let ca = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tls/a/ca.crt");
    let env: &[(&str, &str)] = if secure {
        &[("SSL_CERT_FILE", ca)]
    } else {
        &[]
    };
    let cfg = tempfile::NamedTempFile::new()?;
    std::fs::write(cfg.path(), config)?;
    let dir = resources(&[
        ("pubsub.yaml", PUBSUB),
        ("s.yaml", &subscription("s", "orders", "/orders")),
    ]);
    let mut app = TestApp::ok(None).await;
    let cfg_path = cfg.path().display().to_string();
    let sc = Sidecar::start(dir.path(), Some(app.port), env, &["--config", &cfg_path]).await;
    let client = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let (status, _, _) = sc
        .call(
            "POST",
            "/v1.0/publish/pubsub/orders",
            &[
                ("content-type", "application/json"),
                ("traceparent", client),
            ],
            r#"{"n":1}"#,
        )
        .await?;
    assert_eq!(status, 204);
    let delivered = app.next(10).await?;
    let app_parent = delivered.headers["traceparent"].clone();
    let event_id = delivered.json()["id"].as_str().unwrap().to_owned();
    // The batch goes out within its delay (5 s).
    for _ in 0..150 {
        if spans.lock().unwrap().len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let spans = spans.lock().unwrap().clone();
    let by_name = |n: &str| {
        spans
            .iter()
            .find(|s| s.name == n)
            .unwrap_or_else(|| {
                panic!(
                    "a {n:?} span in {:?}",
                    spans.iter().map(|s| &s.name).collect::<Vec<_>>()
                )
            })
            .clone()
    };
    let publish = by_name("publish orders");
    let deliver = by_name("deliver orders");
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    assert_eq!(hex(&publish.trace_id), trace, "the publisher's trace");
    assert_eq!(
        hex(&publish.parent_span_id),
        "00f067aa0ba902b7",
        "child of the publisher's span"
    );
    assert_eq!(hex(&deliver.trace_id), trace);
    assert_eq!(
        deliver.parent_span_id, publish.span_id,
        "the delivery is a child of the publish"
    );
    assert_eq!(
        app_parent,
        format!("00-{trace}-{}-01", hex(&deliver.span_id)),
        "the app's trace context is the delivery span"
    );
    // Kinds (OTLP enum): producer 4, consumer 5.
    assert_eq!((publish.kind, deliver.kind), (4, 5));
    for s in [&publish, &deliver] {
        assert_eq!(attr(s, "messaging.system").as_deref(), Some("in-memory"));
        assert_eq!(
            attr(s, "messaging.destination.name").as_deref(),
            Some("orders")
        );
        assert_eq!(
            attr(s, "messaging.message.id").as_deref(),
            Some(event_id.as_str())
        );
        assert_eq!(attr(s, "perch.pubsub").as_deref(), Some("pubsub"));
    }
    assert_eq!(attr(&deliver, "perch.outcome").as_deref(), Some("success"));
    assert_eq!(attr(&deliver, "perch.route").as_deref(), Some("/orders"));
    Ok(())
}

#[tokio::test]
async fn spans_are_exported_over_otlp_http() -> TestResult {
    spans_reach_the_collector("http", false).await
}

#[tokio::test]
async fn spans_are_exported_over_otlp_grpc() -> TestResult {
    spans_reach_the_collector("grpc", false).await
}

/// `isSecure: true` with OTLP/HTTP: HTTPS to `/v1/traces`, the
/// collector's certificate checked against the system's roots.
#[tokio::test]
async fn spans_are_exported_over_otlp_http_with_tls() -> TestResult {
    spans_reach_the_collector("http", true).await
}

/// `isSecure: true`: OTLP/gRPC over TLS, the collector's certificate
/// checked against the system's roots.
#[tokio::test]
async fn spans_are_exported_over_otlp_grpc_with_tls() -> TestResult {
    spans_reach_the_collector("grpc", true).await
}

/// A bulk subscription's entries get their delivery spans too, children
/// of their publish spans.
#[tokio::test]
async fn bulk_entries_get_delivery_spans() -> TestResult {
    let (port, spans) = receiver(false, false).await;
    let config = format!(
        "kind: Configuration\nspec:\n  tracing:\n    samplingRate: \"1\"\n    otel: {{endpointAddress: \"127.0.0.1:{port}\", protocol: http}}\n"
    );
    let cfg = tempfile::NamedTempFile::new()?;
    std::fs::write(cfg.path(), config)?;
    let bulk = "apiVersion: dapr.io/v2alpha1\nkind: Subscription\nmetadata: {name: bulk}\nspec:\n  pubsubname: pubsub\n  topic: bulk\n  bulkSubscribe: {enabled: true, maxMessagesCount: 10, maxAwaitDurationMs: 50}\n  routes: {default: /bulk}\n";
    let dir = resources(&[("pubsub.yaml", PUBSUB), ("s.yaml", bulk)]);
    let mut app = TestApp::bulk_ok(None).await;
    let cfg_path = cfg.path().display().to_string();
    let sc = Sidecar::start(dir.path(), Some(app.port), &[], &["--config", &cfg_path]).await;
    assert_eq!(sc.publish_json("pubsub/bulk", r#"{"n":1}"#).await, 204);
    app.next(10).await?;
    for _ in 0..150 {
        if spans.lock().unwrap().len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let spans = spans.lock().unwrap().clone();
    let find = |n: &str| spans.iter().find(|s| s.name == n).cloned();
    let (Some(publish), Some(deliver)) = (find("publish bulk"), find("deliver bulk")) else {
        panic!(
            "spans: {:?}",
            spans.iter().map(|s| &s.name).collect::<Vec<_>>()
        );
    };
    assert_eq!(deliver.trace_id, publish.trace_id);
    assert_eq!(deliver.parent_span_id, publish.span_id);
    assert_eq!(attr(&deliver, "perch.outcome").as_deref(), Some("success"));
    Ok(())
}
