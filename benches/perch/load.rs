//! The load generator: keep-alive HTTP clients fanned out over a count,
//! latencies and percentiles, pre-filled backlogs, process RSS and CPU.

use super::*;

/// Latencies of one load run.
pub(crate) struct Run {
    pub(crate) count: usize,
    pub(crate) elapsed: Duration,
    pub(crate) lat: Vec<Duration>,
}

impl Run {
    pub(crate) fn rate(&self) -> f64 {
        self.count as f64 / self.elapsed.as_secs_f64()
    }
    pub(crate) fn pct(&self, p: f64) -> f64 {
        pct(&self.lat, p)
    }
    pub(crate) fn summary(&self, unit: &str) -> String {
        format!(
            "{:.0} {unit}/s, p50 {:.2} p99 {:.2} ms",
            self.rate(),
            self.pct(0.5),
            self.pct(0.99)
        )
    }
}

/// The `p` quantile of `lat`, in milliseconds.
pub(crate) fn pct(lat: &[Duration], p: f64) -> f64 {
    let mut v = lat.to_vec();
    v.sort();
    v.get(((v.len() as f64 - 1.0) * p) as usize)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

pub(crate) fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// A 1 KiB JSON payload carrying its send time (`ts`, µs since the epoch).
pub(crate) fn payload() -> String {
    format!(r#"{{"ts":{},"pad":"{}"}}"#, now_micros(), "x".repeat(1000))
}

/// Client `w`'s share when `total` rounds are spread over `c` clients.
pub(crate) fn share(total: usize, c: usize, w: usize) -> usize {
    total / c + usize::from(w < total % c)
}

/// Runs the clients together and gathers their per-round latencies;
/// `count` is the messages they send in all.
pub(crate) async fn run_clients<F>(count: usize, clients: Vec<F>) -> Run
where
    F: std::future::Future<Output = Vec<Duration>> + Send + 'static,
{
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in clients {
        tasks.spawn(c);
    }
    let mut lat = vec![];
    while let Some(l) = tasks.join_next().await {
        lat.extend(l.unwrap());
    }
    Run {
        count,
        elapsed: start.elapsed(),
        lat,
    }
}

/// `n` POSTs of `body` to `url` from `c` keep-alive clients.
pub(crate) async fn load(url: &str, body: &str, content_type: &str, n: usize, c: usize) -> Run {
    let body = Bytes::from(body.to_owned());
    let clients = (0..c)
        .map(|w| {
            let (url, body, ct) = (url.to_owned(), body.clone(), content_type.to_owned());
            let share = share(n, c, w);
            async move {
                let client = hyper_util::client::legacy::Client::builder(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .build_http::<Full<Bytes>>();
                let mut lat = Vec::with_capacity(share);
                for _ in 0..share {
                    let t = Instant::now();
                    let req = Request::post(&url)
                        .header("content-type", &ct)
                        .body(Full::new(body.clone()))
                        .unwrap();
                    let resp = client.request(req).await.expect("request");
                    let status = resp.status();
                    let text = resp.into_body().collect().await.unwrap().to_bytes();
                    assert!(
                        status.is_success(),
                        "{status}: {}",
                        String::from_utf8_lossy(&text[..text.len().min(300)])
                    );
                    lat.push(t.elapsed());
                }
                lat
            }
        })
        .collect();
    run_clients(n, clients).await
}

/// Publishes `n` 1 KiB events through Perch's bulk API, 100 per request from
/// 4 clients; `keys` spreads them over that many partition keys.
pub(crate) async fn backlog(sc: &Sidecar, topic: &str, n: usize, keys: Option<usize>) {
    backlog_of(sc, topic, n, keys, 1000).await;
}

/// Like `backlog`, with `pad` bytes of padding per event (about its size),
/// and as many per request as keep a request near 1 MiB (100 at most).
pub(crate) async fn backlog_of(
    sc: &Sidecar,
    topic: &str,
    n: usize,
    keys: Option<usize>,
    pad: usize,
) {
    let url = sc.url(&format!("/v1.0-alpha1/publish/bulk/pubsub/{topic}"));
    let per = (1_000_000 / pad.max(1)).clamp(1, 100);
    let chunks: Vec<usize> = (0..n).step_by(per).collect();
    let mut tasks = tokio::task::JoinSet::new();
    for part in chunks.chunks(chunks.len().div_ceil(4).max(1)) {
        let (url, part) = (url.clone(), part.to_vec());
        tasks.spawn(async move {
            for from in part {
                let entries: Vec<serde_json::Value> = (from..(from + per).min(n))
                    .map(|i| {
                        let mut e = json!({"entryId": i.to_string(), "event": {"seq": i, "pad": "x".repeat(pad)}, "contentType": "application/json"});
                        if let Some(k) = keys {
                            e["metadata"] = json!({"partitionKey": format!("k{}", i % k)});
                        }
                        e
                    })
                    .collect();
                load(
                    &url,
                    &serde_json::Value::Array(entries).to_string(),
                    "application/json",
                    1,
                    1,
                )
                .await;
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
}

/// RSS (KiB) and CPU seconds of a process, from /proc.
pub(crate) fn proc_stats(pid: u32) -> (u64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<f64>().ok())
        .sum();
    (rss, ticks / 100.0)
}

/// `n` gRPC calls publishing `body` to `topic` over `c` clients (one
/// HTTP/2 connection each), as an SDK publisher makes them: `PublishEvent`
/// when `entries` is 1, else `BulkPublishEvent` with `entries` copies.
pub(crate) async fn load_grpc(
    port: u16,
    topic: &str,
    body: &str,
    n: usize,
    c: usize,
    entries: usize,
) -> Run {
    use perch::dapr_proto::{
        dapr_client::DaprClient, BulkPublishRequest, BulkPublishRequestEntry, PublishEventRequest,
    };
    let clients = (0..c)
        .map(|w| {
            let (topic, body) = (topic.to_owned(), body.as_bytes().to_vec());
            let share = share(n, c, w);
            async move {
                let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
                // As gRPC clients do (grpc-go, grpcio): no Nagle delay.
                connector.set_nodelay(true);
                let channel = hyper_util::client::legacy::Client::builder(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .http2_only(true)
                .build::<_, tonic::body::Body>(connector);
                let origin: tonic::codegen::http::Uri =
                    format!("http://127.0.0.1:{port}").parse().unwrap();
                let mut client = DaprClient::with_origin(channel, origin);
                let bulk = (entries > 1).then(|| BulkPublishRequest {
                    pubsub_name: "pubsub".into(),
                    topic: topic.clone(),
                    entries: (0..entries)
                        .map(|i| BulkPublishRequestEntry {
                            entry_id: i.to_string(),
                            event: body.clone(),
                            content_type: "application/json".into(),
                            metadata: Default::default(),
                        })
                        .collect(),
                    metadata: Default::default(),
                });
                let mut lat = Vec::with_capacity(share);
                for _ in 0..share {
                    let t = Instant::now();
                    match &bulk {
                        Some(r) => {
                            // The Alpha1 name: every daprd since 1.10 serves
                            // it (1.14 has no stable BulkPublishEvent, and
                            // proxies an unknown method as an invocation).
                            let failed = client
                                .bulk_publish_event_alpha1(r.clone())
                                .await
                                .expect("BulkPublishEventAlpha1")
                                .into_inner()
                                .failed_entries;
                            assert!(failed.is_empty(), "bulk entries failed: {failed:?}");
                        }
                        None => {
                            client
                                .publish_event(PublishEventRequest {
                                    pubsub_name: "pubsub".into(),
                                    topic: topic.clone(),
                                    data: body.clone(),
                                    data_content_type: "application/json".into(),
                                    metadata: Default::default(),
                                })
                                .await
                                .expect("PublishEvent");
                        }
                    }
                    lat.push(t.elapsed());
                }
                lat
            }
        })
        .collect();
    run_clients(n, clients).await
}
