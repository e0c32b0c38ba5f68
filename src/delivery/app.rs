//! The HTTP client to the app: delivery POSTs and `GET /dapr/subscribe`,
//! with the headers daprd sends (reference 2.1 and 3.2).

use std::collections::BTreeMap;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::client::legacy::{connect::HttpConnector, Client};

use crate::cloudevents::CLOUDEVENT_CONTENT_TYPE;

/// Headers never forwarded from message metadata.
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
];

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

    /// POSTs one CloudEvent to `path` with the message metadata as headers.
    pub async fn deliver(
        &self,
        path: &str,
        body: Bytes,
        metadata: &BTreeMap<String, String>,
        traceparent: Option<&str>,
    ) -> AppAnswer {
        self.post(path, CLOUDEVENT_CONTENT_TYPE, body, metadata, traceparent)
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
        self.post(path, "application/json", body, metadata, None)
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
    ) -> AppAnswer {
        let mut req =
            Request::post(format!("{}{}", self.base, path)).header("content-type", content_type);
        if let Some(tp) = traceparent {
            req = req.header("traceparent", tp);
        }
        for (k, v) in metadata {
            let lower = k.to_ascii_lowercase();
            if SKIPPED.contains(&lower.as_str()) || lower == "traceparent" {
                continue;
            }
            let name = match lower.strip_prefix("grpc-") {
                Some(rest) => format!("dapr-grpc-{rest}"),
                None => k.clone(),
            };
            match (
                hyper::header::HeaderName::try_from(name),
                hyper::header::HeaderValue::try_from(v.as_str()),
            ) {
                (Ok(n), Ok(val)) => req = req.header(n, val),
                _ => {
                    tracing::debug!(key = %k, "metadata entry is not a valid HTTP header; not forwarded")
                }
            }
        }
        self.send(self.with_token(req).body(Full::new(body)).ok()?)
            .await
    }

    fn with_token(&self, req: hyper::http::request::Builder) -> hyper::http::request::Builder {
        match &self.token {
            Some(t) => req.header("dapr-api-token", t),
            None => req,
        }
    }

    async fn send(&self, req: Request<Full<Bytes>>) -> AppAnswer {
        let resp = self.client.request(req).await.ok()?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.ok()?.to_bytes();
        Some((status, body))
    }
}
