//! The sidecar's HTTP API: publish, bulk publish, health, metadata and
//! shutdown, on hyper 1. The server takes an already-bound listener and a
//! shutdown future, so tests run it on port 0.

mod publish;
pub(crate) mod runtime_api;

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

/// Connections served at once per listener; more are accepted and closed
/// at once (refused), so a flood of idle connections cannot use up the
/// process's file descriptors (which brokers and the app need too).
pub const MAX_CONNECTIONS: usize = 4096;

/// How long a client has to send a request's headers. hyper starts this
/// timer whenever a connection waits for a request, so it is also the
/// keep-alive idle timeout (daprd's `ReadHeaderTimeout` is 10 s too).
pub const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// An HTTP/1 connection builder with the limits every Perch server has.
pub(crate) fn http1() -> hyper::server::conn::http1::Builder {
    let mut b = hyper::server::conn::http1::Builder::new();
    b.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(64 * 1024);
    b
}

/// Serves one HTTP/1 connection with Perch's limits until the client is
/// done or `stop` changes; then lets the request in progress finish.
pub(crate) async fn serve_http1<I, S>(io: I, svc: S, stop: &mut tokio::sync::watch::Receiver<bool>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = Full<Bytes>>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = http1().serve_connection(hyper_util::rt::TokioIo::new(io), svc);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Accepts connections until `shutdown`, at most [`MAX_CONNECTIONS`]
/// served at once; an accept error (out of file descriptors, say) backs
/// off instead of spinning. Each connection gets a permit and the stop
/// signal. Returns the slots, to wait for the open connections with
/// [`Connections::drained`].
pub(crate) async fn accept_loop<F, Fut>(
    listener: TcpListener,
    what: &'static str,
    shutdown: impl Future<Output = ()>,
    mut serve: F,
) -> Connections
where
    F: FnMut(tokio::net::TcpStream, tokio::sync::OwnedSemaphorePermit) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut backoff = std::time::Duration::from_millis(10);
    let mut refused = 0u64;
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => {
                    backoff = std::time::Duration::from_millis(10);
                    // Requests and answers are small and go in several
                    // writes (HTTP/2 frames): without this, Nagle and the
                    // peer's delayed ACK hold an answer up to 40 ms.
                    let _ = s.set_nodelay(true);
                    s
                }
                Err(e) => {
                    tracing::warn!(server = what, error = %e, retry_in = ?backoff, "accept failed");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = &mut shutdown => break,
                    }
                    backoff = (backoff * 2).min(std::time::Duration::from_secs(1));
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            refused += 1;
            if refused.is_power_of_two() {
                tracing::warn!(
                    server = what,
                    refused,
                    limit = MAX_CONNECTIONS,
                    "too many connections; new ones are closed"
                );
            }
            drop(stream);
            continue;
        };
        tokio::spawn(serve(stream, permit));
    }
    Connections(slots)
}

/// The connections of an [`accept_loop`] (each holds one slot).
pub(crate) struct Connections(Arc<tokio::sync::Semaphore>);

impl Connections {
    /// Waits, at most `within`, until every connection has ended: a
    /// listener is done only once the answers it owes are written (a
    /// process exiting on `POST /v1.0/shutdown` or gRPC `Shutdown` used to
    /// race its own answer).
    pub(crate) async fn drained(self, within: std::time::Duration) {
        let all = self.0.acquire_many(MAX_CONNECTIONS as u32);
        let _ = tokio::time::timeout(within, all).await;
    }

    /// Tells the connections to finish (`stop`), then waits for them
    /// ([`DRAIN`] at most).
    pub(crate) async fn drained_after(self, stop: tokio::sync::watch::Sender<bool>) {
        let _ = stop.send(true);
        self.drained(DRAIN).await;
    }
}

/// How long a stopped server waits for its connections to finish.
pub(crate) const DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Serves the API on `listener` until `shutdown` resolves, then lets open
/// requests finish.
pub async fn serve(listener: TcpListener, api: ApiState, shutdown: impl Future<Output = ()>) {
    serve_on(listener, api, false, shutdown).await
}

/// Serves the API, or with `public` only the public endpoints
/// ([`PUBLIC_PATHS`], for the kubelet's probes and KEDA), on `listener`
/// until `shutdown` resolves.
pub async fn serve_on(
    listener: TcpListener,
    api: ApiState,
    public: bool,
    shutdown: impl Future<Output = ()>,
) {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let what = if public { "public" } else { "api" };
    accept_loop(listener, what, shutdown, |stream, permit| {
        let api = api.clone();
        let mut stop = stop_rx.clone();
        async move {
            let _permit = permit;
            let svc = hyper::service::service_fn(move |req| {
                let api = api.clone();
                async move {
                    if public
                        && !(req.method() == Method::GET
                            && PUBLIC_PATHS.contains(&req.uri().path()))
                    {
                        return Ok(text(StatusCode::NOT_FOUND, "404 page not found"));
                    }
                    Ok::<_, Infallible>(route(req, api).await)
                }
            });
            serve_http1(stream, svc, &mut stop).await;
        }
    })
    .await
    .drained_after(stop_tx)
    .await;
}

/// What the public port serves (GET only): health, outbound health, and
/// the lag, which keeps the API token check when a token is set.
pub const PUBLIC_PATHS: [&str; 3] = [
    "/v1.0/healthz",
    "/v1.0/healthz/outbound",
    "/v1.0-alpha1/lag",
];

/// Routes one request; with `--enable-api-logging`, logs it (method, path,
/// status, duration; no query string, which may carry metadata) at INFO.
async fn route(req: Request<Incoming>, api: ApiState) -> Resp {
    if !api.settings.api_logging {
        return route_inner(req, api).await;
    }
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    let started = std::time::Instant::now();
    let resp = route_inner(req, api).await;
    tracing::info!(target: "perch::api", %method, %path, status = resp.status().as_u16(),
        duration_ms = started.elapsed().as_millis() as u64, "api call");
    resp
}

async fn route_inner(req: Request<Incoming>, api: ApiState) -> Resp {
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
        (&Method::GET, "/v1.0-alpha1/lag") => match query_pairs(req.uri().query()) {
            Ok(q) => runtime_api::lag(&q.into_iter().collect(), &api).await,
            Err(e) => error(&e),
        },
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

/// A publish request's target and metadata from what follows
/// `/v1.0/publish/` (or the bulk prefix) and the query string: pubsub,
/// topic, `metadata.*`. Public for the fuzz targets (`fuzz/`).
pub fn publish_target(
    rest: &str,
    query: Option<&str>,
) -> Result<(String, String, std::collections::BTreeMap<String, String>), ApiError> {
    let metadata = query_metadata(query)?;
    let (pubsub, topic) = split_target(rest)?;
    Ok((pubsub, topic, metadata))
}

/// Splits `{pubsub}/{topic...}`; the topic may contain `/`.
fn split_target(rest: &str) -> Result<(String, String), ApiError> {
    let decode = |s: &str| percent_decode(s, false).map_err(|e| malformed("path", &e));
    Ok(match rest.split_once('/') {
        Some((p, t)) => (decode(p)?, decode(t)?),
        None => (decode(rest)?, String::new()),
    })
}

/// A 400 for a path or query that does not decode (Go's net/http, which
/// daprd serves with, rejects such a request too).
fn malformed(part: &str, why: &str) -> ApiError {
    ApiError::bad_request(
        "ERR_MALFORMED_REQUEST",
        format!("invalid request {part}: {why}"),
    )
}

/// `metadata.*` query parameters: prefix stripped, first value wins.
fn query_metadata(
    query: Option<&str>,
) -> Result<std::collections::BTreeMap<String, String>, ApiError> {
    let mut md = std::collections::BTreeMap::new();
    for (k, v) in query_pairs(query)? {
        if let Some(key) = k.strip_prefix("metadata.") {
            md.entry(key.to_owned()).or_insert(v);
        }
    }
    Ok(md)
}

/// The query string's `key=value` pairs, decoded, in order.
fn query_pairs(query: Option<&str>) -> Result<Vec<(String, String)>, ApiError> {
    query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let decode = |s: &str| percent_decode(s, true).map_err(|e| malformed("query", &e));
            Ok((decode(k)?, decode(v)?))
        })
        .collect()
}

/// Decodes `%XX` over bytes; in a query string (`plus_is_space`) `+` is a
/// space, in a path it is a literal `+`. A `%` not followed by two hex
/// digits, or bytes that are not UTF-8 once decoded, are an error (raw
/// UTF-8 in the request target is accepted by hyper, so a `%` may be
/// followed by a multi-byte character).
fn percent_decode(s: &str, plus_is_space: bool) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' if plus_is_space => out.push(b' '),
            b'%' => {
                let hex = |b: u8| (b as char).to_digit(16);
                match (
                    bytes.get(i + 1).and_then(|b| hex(*b)),
                    bytes.get(i + 2).and_then(|b| hex(*b)),
                ) {
                    (Some(h), Some(l)) => out.push((h * 16 + l) as u8),
                    _ => {
                        let end = s.len().min(i + 3);
                        let shown = String::from_utf8_lossy(&bytes[i..end]);
                        return Err(format!("invalid URL escape {shown:?}"));
                    }
                }
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| "percent-encoded bytes are not UTF-8".to_owned())
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

/// Serves the Prometheus text exposition on every path of `listener`,
/// with the API server's connection limits.
pub async fn serve_metrics(listener: TcpListener) {
    accept_loop(
        listener,
        "metrics",
        std::future::pending(),
        |stream, permit| async move {
            let _permit = permit;
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
            let _ = http1()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
        },
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_and_query() {
        assert_eq!(split_target("p/a/b").unwrap(), ("p".into(), "a/b".into()));
        assert_eq!(split_target("p").unwrap(), ("p".into(), "".into()));
        let md = query_metadata(Some(
            "metadata.ttlInSeconds=5&metadata.a=%20x&other=1&metadata.a=2",
        ))
        .unwrap();
        assert_eq!(md.get("ttlInSeconds").unwrap(), "5");
        assert_eq!(md.get("a").unwrap(), " x");
        assert_eq!(md.len(), 2);
        assert_eq!(percent_decode("a%2Fb%C3%A9", false).unwrap(), "a/b\u{e9}");
        assert_eq!(percent_decode("a+b", true).unwrap(), "a b");
        assert_eq!(
            split_target("p/a+b").unwrap(),
            ("p".into(), "a+b".into()),
            "+ is literal in a path"
        );
    }

    #[test]
    fn bad_escapes_and_bad_utf8_are_errors_not_panics() {
        for bad in ["%a\u{e9}", "%\u{e9}", "%", "%4", "%+f", "x%zz"] {
            assert!(percent_decode(bad, false).is_err(), "{bad:?}");
        }
        assert!(percent_decode("%ff%fe", true).is_err(), "not UTF-8");
        let e = split_target("p/%a\u{e9}").unwrap_err();
        assert_eq!((e.status, e.code), (400, "ERR_MALFORMED_REQUEST"));
        assert!(query_metadata(Some("metadata.k=%ZZ")).is_err());
    }
}
