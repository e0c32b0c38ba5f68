//! Dapr's gRPC API (`dapr.proto.runtime.v1.Dapr`) on `--dapr-grpc-port`,
//! served on the same runtime, accept loop and connection limits as the
//! HTTP API, HTTP/2 by hyper with tonic's generated service:
//!
//! - `PublishEvent`, `BulkPublishEvent`, `BulkPublishEventAlpha1`,
//!   `GetMetadata`, `SetMetadata`, `Shutdown` ([`service`]), through the
//!   publish path and state the HTTP API uses;
//! - `SubscribeTopicEventsAlpha1` ([`stream`]), a streaming subscription
//!   run by the delivery engine like any other;
//! - every other method answers `UNIMPLEMENTED` (tonic's generated
//!   fallback, the signal the SDKs' fallbacks key on), each distinct one
//!   logged once;
//! - with `DAPR_API_TOKEN`, every call needs `dapr-api-token` metadata
//!   (`Unauthenticated` "Unauthorized" otherwise, as daprd; gRPC has no
//!   health exemption);
//! - a request message larger than `--max-body-size` is
//!   `ResourceExhausted`;
//! - errors carry daprd's codes and details ([`status`]).
//!
//! The protocol code in `gen/` is generated from `proto/` by
//! `scripts/protogen.sh` and committed (no protoc, no build script: the
//! generator's 26 build-time crates stay out of every build); a unit test
//! checks it was regenerated after the last change to `proto/`.

mod service;
pub mod status;
mod stream;

use std::collections::HashSet;
use std::convert::Infallible;
use std::future::Future;
use std::sync::{Mutex, OnceLock};

use tokio::net::TcpListener;
use tonic::codegen::Service;

use crate::http::ApiState;

pub use crate::dapr_proto as gen;

/// The methods `gen` serves; any other path is answered UNIMPLEMENTED.
const SERVED: &[&str] = &[
    "/dapr.proto.runtime.v1.Dapr/PublishEvent",
    "/dapr.proto.runtime.v1.Dapr/BulkPublishEventAlpha1",
    "/dapr.proto.runtime.v1.Dapr/BulkPublishEvent",
    "/dapr.proto.runtime.v1.Dapr/SubscribeTopicEventsAlpha1",
    "/dapr.proto.runtime.v1.Dapr/GetMetadata",
    "/dapr.proto.runtime.v1.Dapr/SetMetadata",
    "/dapr.proto.runtime.v1.Dapr/Shutdown",
];

/// Logs the first call of each method Perch does not serve.
fn note_unserved(path: &str) {
    if SERVED.contains(&path) {
        return;
    }
    static SEEN: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    let mut seen = SEEN
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // Bounded: a client probing random paths cannot grow it for ever.
    if seen.len() < 256 && seen.insert(path.to_owned()) {
        tracing::info!(method = %path, "gRPC method not served by Perch (a pub/sub sidecar); answered UNIMPLEMENTED");
    }
}

/// tonic answers a message over the limit with OUT_OF_RANGE; grpc-go, and
/// so daprd, with RESOURCE_EXHAUSTED, which the SDKs report.
fn resource_exhausted_for_size(
    resp: hyper::Response<tonic::body::Body>,
) -> hyper::Response<tonic::body::Body> {
    let header = |k: &str| resp.headers().get(k).and_then(|v| v.to_str().ok());
    let oversize = header("grpc-status") == Some("11")
        && header("grpc-message").is_some_and(|m| {
            m.contains("message%20length%20too%20large") || m.contains("message length too large")
        });
    if !oversize {
        return resp;
    }
    let message = header("grpc-message")
        .map(|m| m.replace("%20", " "))
        .unwrap_or_default();
    tonic::Status::resource_exhausted(message).into_http()
}

/// Checks `dapr-api-token` when a token is configured.
fn authorised(api: &ApiState, req: &hyper::Request<hyper::body::Incoming>) -> bool {
    let Some(token) = &api.settings.api_token else {
        return true;
    };
    let given = req
        .headers()
        .get("dapr-api-token")
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    crate::util::constant_time_eq(given, token.as_bytes())
}

/// Serves the gRPC API on `listener` until `shutdown` resolves, then lets
/// open calls finish.
pub async fn serve(
    listener: TcpListener,
    api: ApiState,
    engine: crate::delivery::Engine,
    shutdown: impl Future<Output = ()>,
) {
    let limit = api.settings.max_body_size;
    let dapr = gen::dapr_server::DaprServer::new(service::DaprApi {
        api: api.clone(),
        engine,
    })
    .max_decoding_message_size(limit)
    .max_encoding_message_size(limit.max(4 << 20));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    crate::http::accept_loop(listener, "grpc", shutdown, |stream, permit| {
        let (dapr, api) = (dapr.clone(), api.clone());
        let mut stop = stop_rx.clone();
        async move {
            let _permit = permit;
            let svc =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let (mut dapr, api) = (dapr.clone(), api.clone());
                    async move {
                        if !authorised(&api, &req) {
                            let s = tonic::Status::unauthenticated("Unauthorized");
                            return Ok::<_, Infallible>(s.into_http());
                        }
                        note_unserved(req.uri().path());
                        let resp = dapr.call(req).await?;
                        Ok(resource_exhausted_for_size(resp))
                    }
                });
            let conn =
                hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        }
    })
    .await
    .drained_after(stop_tx)
    .await;
}

#[cfg(test)]
mod tests {
    /// `gen/` was regenerated after the last change to `proto/`
    /// (`scripts/protogen.sh` writes the inputs' digests).
    #[test]
    fn generated_code_matches_the_protos() {
        use sha2::Digest as _;
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let recorded = std::fs::read_to_string(root.join("src/grpc/gen/inputs.sha256")).unwrap();
        for line in recorded.lines() {
            let (digest, file) = line.split_once("  ").unwrap();
            let text = std::fs::read(root.join("proto").join(file)).unwrap();
            let hex: String = sha2::Sha256::digest(&text)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            assert_eq!(hex, digest, "{file} changed: run scripts/protogen.sh");
        }
        let protos = walk(&root.join("proto"));
        assert_eq!(
            protos,
            recorded.lines().count(),
            "a proto file was added or removed: run scripts/protogen.sh"
        );
    }

    fn walk(dir: &std::path::Path) -> usize {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .map(|p| {
                if p.is_dir() {
                    walk(&p)
                } else {
                    usize::from(p.extension().is_some_and(|e| e == "proto"))
                }
            })
            .sum()
    }
}
