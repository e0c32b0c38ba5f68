//! The sidecar's HTTP API: publish, bulk publish, health, metadata and
//! shutdown, on hyper 1. The server takes an already-bound listener and a
//! shutdown future, so tests run it on port 0.

mod publish;
mod runtime_api;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::TcpListener;

use crate::errors::ApiError;
use crate::state::{Registry, Settings, Shutdown, Status};

/// What the API handlers read: settings, the registry, the live status, and
/// the shutdown token `POST /v1.0/shutdown` asks through.
#[derive(Clone)]
pub struct ApiState {
    /// Process settings (token, body limit, app id).
    pub settings: Arc<Settings>,
    /// Components with their brokers.
    pub registry: Arc<Registry>,
    /// Readiness and the metadata view.
    pub status: Arc<Status>,
    /// Asked by `POST /v1.0/shutdown`.
    pub shutdown: Shutdown,
}

/// Response type of every handler.
pub type Resp = Response<Full<Bytes>>;

/// Serves the API on `listener` until `shutdown` resolves, then lets open
/// requests finish.
pub async fn serve(listener: TcpListener, api: ApiState, shutdown: impl Future<Output = ()>) {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => { tracing::warn!(error = %e, "accept failed"); continue; }
            },
            _ = &mut shutdown => break,
        };
        let api = api.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let api = api.clone();
                async move { Ok::<_, Infallible>(route(req, api).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    let _ = stop_tx.send(true);
}

async fn route(req: Request<Incoming>, api: ApiState) -> Resp {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let is_health =
        method == Method::GET && (path == "/v1.0/healthz" || path == "/v1.0/healthz/outbound");
    if let Some(token) = &api.settings.api_token {
        let given = req
            .headers()
            .get("dapr-api-token")
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if !is_health && !crate::util::constant_time_eq(given, token.as_bytes()) {
            return text(StatusCode::UNAUTHORIZED, "invalid api token");
        }
    }
    let write = method == Method::POST || method == Method::PUT;
    for prefix in ["/v1.0-alpha1/publish/bulk/", "/v1.0/publish/bulk/"] {
        if let Some(rest) = path.strip_prefix(prefix) {
            if write {
                return publish::bulk(req, rest.to_owned(), &api).await;
            }
            return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
        }
    }
    if let Some(rest) = path.strip_prefix("/v1.0/publish/") {
        if write {
            return publish::single(req, rest.to_owned(), &api).await;
        }
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    }
    match (&method, path.as_str()) {
        (&Method::GET, "/v1.0/healthz") => runtime_api::healthz(&req, &api),
        (&Method::GET, "/v1.0/healthz/outbound") => runtime_api::outbound(&api),
        (&Method::GET, "/v1.0/metadata") => runtime_api::metadata(&api),
        (&Method::GET, "/v1.0-alpha1/lag") => {
            runtime_api::lag(&query_metadata_raw(req.uri().query()), &api).await
        }
        (&Method::PUT, p) if p.starts_with("/v1.0/metadata/") => {
            let key = p["/v1.0/metadata/".len()..].to_owned();
            runtime_api::put_metadata(req, key, &api).await
        }
        (&Method::POST, "/v1.0/shutdown") => {
            api.shutdown.request();
            empty(StatusCode::NO_CONTENT)
        }
        _ => text(StatusCode::NOT_FOUND, "404 page not found"),
    }
}

/// Reads the body up to `--max-body-size`.
async fn read_body(req: Request<Incoming>, limit: usize) -> Result<Bytes, ApiError> {
    match Limited::new(req.into_body(), limit).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(_) => Err(ApiError::body_too_large(limit)),
    }
}

/// Splits `{pubsub}/{topic...}`; the topic may contain `/`.
fn split_target(rest: &str) -> (String, String) {
    let decode = |s: &str| percent_decode(s, false);
    match rest.split_once('/') {
        Some((p, t)) => (decode(p), decode(t)),
        None => (decode(rest), String::new()),
    }
}

/// `metadata.*` query parameters: prefix stripped, first value wins.
fn query_metadata(query: Option<&str>) -> std::collections::BTreeMap<String, String> {
    let mut md = std::collections::BTreeMap::new();
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = percent_decode(k, true);
        if let Some(key) = k.strip_prefix("metadata.") {
            md.entry(key.to_owned())
                .or_insert_with(|| percent_decode(v, true));
        }
    }
    md
}

/// Decodes `%XX`; in a query string (`plus_is_space`) `+` is a space, in a
/// path it is a literal `+`.
fn percent_decode(s: &str, plus_is_space: bool) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' if plus_is_space => out.push(b' '),
            b'%' if i + 2 < bytes.len()
                && s[i + 1..i + 3].bytes().all(|b| b.is_ascii_hexdigit()) =>
            {
                match u8::from_str_radix(&s[i + 1..i + 3], 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn text(status: StatusCode, body: &str) -> Resp {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("static response")
}

fn empty(status: StatusCode) -> Resp {
    Response::builder()
        .status(status)
        .body(Full::new(Bytes::new()))
        .expect("static response")
}

fn json(status: StatusCode, value: &serde_json::Value) -> Resp {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(crate::util::to_go_json(value))))
        .expect("static response")
}

fn error(e: &ApiError) -> Resp {
    let category = if e.code.starts_with("ERR_PUBSUB") {
        "pubsub"
    } else {
        "generic"
    };
    crate::telemetry::metrics::metrics()
        .error_code_total
        .with_label_values(&[category, e.code])
        .inc();
    json(
        StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &e.body(),
    )
}

/// The query string's plain parameters (`pubsub=...&topic=...`).
fn query_metadata_raw(query: Option<&str>) -> std::collections::BTreeMap<String, String> {
    query
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((percent_decode(k, true), percent_decode(v, true)))
        })
        .collect()
}

/// Serves the Prometheus text exposition on every path of `listener`.
pub async fn serve_metrics(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(|_req| async {
                Ok::<_, Infallible>(
                    hyper::Response::builder()
                        .header("content-type", "text/plain; version=0.0.4")
                        .body(Full::new(Bytes::from(
                            crate::telemetry::metrics::metrics().render(),
                        )))
                        .expect("static response"),
                )
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_and_query() {
        assert_eq!(split_target("p/a/b"), ("p".into(), "a/b".into()));
        assert_eq!(split_target("p"), ("p".into(), "".into()));
        let md = query_metadata(Some(
            "metadata.ttlInSeconds=5&metadata.a=%20x&other=1&metadata.a=2",
        ));
        assert_eq!(md.get("ttlInSeconds").unwrap(), "5");
        assert_eq!(md.get("a").unwrap(), " x");
        assert_eq!(md.len(), 2);
        assert_eq!(
            percent_decode("a%2Fb%+f%4", false),
            "a/b%+f%4",
            "only two hex digits decode"
        );
        assert_eq!(percent_decode("a+b", true), "a b");
        assert_eq!(
            split_target("p/a+b"),
            ("p".into(), "a+b".into()),
            "+ is literal in a path"
        );
    }
}
