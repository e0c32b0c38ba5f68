//! The HTTP client to the app: delivery POSTs and `GET /dapr/subscribe`,
//! with the headers daprd sends (reference 2.1 and 3.2).

use std::collections::BTreeMap;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::client::legacy::{connect::HttpConnector, Client};

use crate::cloudevents::CLOUDEVENT_CONTENT_TYPE;

/// Headers never forwarded from message metadata: hop-by-hop headers,
/// the ones Perch sets itself, and credentials. Message metadata comes
/// from any publisher; it must not forge the sidecar's token, Perch's own
/// headers or the app's idempotency key.
const SKIPPED: &[&str] = &[
    "content-type",
    "content-length",
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
    "trailer",
    "host",
    "traceparent",
    "dapr-api-token",
    "authorization",
    "proxy-authorization",
    "cookie",
    crate::message::IDEMPOTENCY_KEY,
];

/// A forwarded metadata value longer than this is left out (an app's HTTP
/// server may refuse the whole request for one large header).
const MAX_FORWARDED_VALUE: usize = 8 * 1024;

/// The most of an app's response body Perch reads; a longer answer fails
/// the attempt (it is retried).
pub const MAX_APP_RESPONSE: usize = 4 * 1024 * 1024;

/// One pooled keep-alive client to the app.
#[derive(Clone)]
pub struct AppClient {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
    app_id: String,
    token: Option<String>,
}

/// The app's answer: status and body, or `None` for a transport error.
pub type AppAnswer = Option<(u16, Bytes)>;

impl AppClient {
    /// A client for `http://{address}:{port}`.
    pub fn new(address: &str, port: u16, app_id: &str, token: Option<String>) -> Self {
        let client = Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
        Self {
            client,
            base: format!("http://{address}:{port}"),
            app_id: app_id.to_owned(),
            token,
        }
    }

    /// `GET /dapr/subscribe`.
    pub async fn get_subscriptions(&self) -> AppAnswer {
        let req = Request::get(format!("{}/dapr/subscribe", self.base))
            .header("content-type", "application/json")
            .header("dapr-app-id", &self.app_id);
        self.send(self.with_token(req).body(Full::new(Bytes::new())).ok()?)
            .await
    }

    /// POSTs one CloudEvent to `path` with the message metadata as headers;
    /// `idempotency_key` (Perch's, from the store) is set by Perch only.
    pub async fn deliver(
        &self,
        path: &str,
        body: Bytes,
        metadata: &BTreeMap<String, String>,
        traceparent: Option<&str>,
        idempotency_key: Option<&str>,
    ) -> AppAnswer {
        let mut own: Vec<(&str, &str)> = idempotency_key
            .map(|k| (crate::message::IDEMPOTENCY_KEY, k))
            .into_iter()
            .collect();
        // A dead letter's origin, which only Perch writes (the publish API
        // strips `perch-*` metadata), told to the app by Perch.
        for k in [
            crate::message::DEAD_LETTER_FROM,
            crate::message::DEAD_LETTER_REASON,
            crate::message::DEAD_LETTER_ATTEMPTS,
        ] {
            if let Some(v) = metadata.get(k) {
                own.push((k, v));
            }
        }
        self.post(
            path,
            CLOUDEVENT_CONTENT_TYPE,
            body,
            metadata,
            traceparent,
            &own,
        )
        .await
    }

    /// POSTs a bulk request (`application/json`) to `path` with the batch
    /// metadata as headers.
    pub async fn deliver_bulk(
        &self,
        path: &str,
        body: Bytes,
        metadata: &BTreeMap<String, String>,
    ) -> AppAnswer {
        self.post(path, "application/json", body, metadata, None, &[])
            .await
    }

    /// `GET {path}` within `timeout`: the status, `None` when unreachable.
    pub async fn probe(&self, path: &str, timeout: std::time::Duration) -> Option<u16> {
        let req = Request::get(format!("{}{}", self.base, path))
            .body(Full::new(Bytes::new()))
            .ok()?;
        tokio::time::timeout(timeout, self.send(req))
            .await
            .ok()
            .flatten()
            .map(|(s, _)| s)
    }

    async fn post(
        &self,
        path: &str,
        content_type: &str,
        body: Bytes,
        metadata: &BTreeMap<String, String>,
        traceparent: Option<&str>,
        own: &[(&str, &str)],
    ) -> AppAnswer {
        let slash = if path.starts_with('/') { "" } else { "/" };
        let mut req = Request::post(format!("{}{slash}{path}", self.base));
        // Per message and per entry: names are compared and lowercased in
        // place (`from_bytes`), with no string built on the way.
        let has_prefix = |k: &str, p: &str| {
            k.get(..p.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(p))
        };
        for (k, v) in metadata {
            if SKIPPED.iter().any(|s| k.eq_ignore_ascii_case(s)) || has_prefix(k, "perch-") {
                continue;
            }
            if v.len() > MAX_FORWARDED_VALUE {
                tracing::debug!(key = %k, len = v.len(), "metadata value too long for an HTTP header; not forwarded");
                continue;
            }
            let name = if has_prefix(k, "grpc-") {
                hyper::header::HeaderName::try_from(format!(
                    "dapr-grpc-{}",
                    k["grpc-".len()..].to_ascii_lowercase()
                ))
            } else {
                hyper::header::HeaderName::from_bytes(k.as_bytes())
            };
            match (name, hyper::header::HeaderValue::try_from(v.as_str())) {
                (Ok(n), Ok(val)) => req = req.header(n, val),
                _ => {
                    tracing::debug!(key = %k, "metadata entry is not a valid HTTP header; not forwarded")
                }
            }
        }
        let mut req = req.body(Full::new(body)).ok()?;
        // Perch's own headers last, replacing anything of the same name.
        let h = req.headers_mut();
        let mut set = |name: &str, value: &str| {
            if let (Ok(n), Ok(v)) = (
                hyper::header::HeaderName::try_from(name),
                hyper::header::HeaderValue::try_from(value),
            ) {
                h.insert(n, v);
            }
        };
        set("content-type", content_type);
        if let Some(tp) = traceparent {
            set("traceparent", tp);
        }
        for (k, v) in own {
            set(k, v);
        }
        if let Some(t) = &self.token {
            set("dapr-api-token", t);
        }
        self.send_bounded(req, path).await
    }

    fn with_token(&self, req: hyper::http::request::Builder) -> hyper::http::request::Builder {
        match &self.token {
            Some(t) => req.header("dapr-api-token", t),
            None => req,
        }
    }

    async fn send(&self, req: Request<Full<Bytes>>) -> AppAnswer {
        let path = req.uri().path().to_owned();
        self.send_bounded(req, &path).await
    }

    /// Sends `req`; reads at most [`MAX_APP_RESPONSE`] of the answer (an
    /// app is a peer: a longer body fails the attempt, with a log line
    /// naming the route, instead of filling Perch's memory).
    async fn send_bounded(&self, req: Request<Full<Bytes>>, path: &str) -> AppAnswer {
        let resp = self.client.request(req).await.ok()?;
        let status = resp.status().as_u16();
        match http_body_util::Limited::new(resp.into_body(), MAX_APP_RESPONSE)
            .collect()
            .await
        {
            Ok(b) => Some((status, b.to_bytes())),
            Err(e) => {
                tracing::warn!(route = %path, status, error = %e,
                    "the app's answer is not read (over {MAX_APP_RESPONSE} bytes, or cut off); the attempt fails and is retried");
                None
            }
        }
    }
}
