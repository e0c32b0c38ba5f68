//! The app every delivery row drains into: a minimal hyper server that
//! acks (per message or bulk), counts, and holds the first requests until
//! the backlog is published.

use super::*;

/// The minimal app: acks every event (bulk: SUCCESS for every entry),
/// counts them, and records publish-to-receipt latency from `ts` in the
/// data. Requests wait while the gate is closed.
pub(crate) struct BenchApp {
    pub(crate) port: u16,
    pub(crate) state: Arc<AppState>,
    pub(crate) gate: watch::Sender<bool>,
}

pub(crate) struct AppState {
    /// Events acked.
    pub(crate) acked: AtomicU64,
    /// Requests that reached the app (held at the gate or not).
    pub(crate) arrived: AtomicU64,
    pub(crate) lat: Mutex<Vec<Duration>>,
    pub(crate) gate: watch::Receiver<bool>,
    pub(crate) delay: Duration,
}

impl BenchApp {
    pub(crate) async fn start(delay: Duration, open: bool) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (gate, gate_rx) = watch::channel(open);
        let state = Arc::new(AppState {
            acked: AtomicU64::new(0),
            arrived: AtomicU64::new(0),
            lat: Mutex::new(vec![]),
            gate: gate_rx,
            delay,
        });
        let st = state.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let st = st.clone();
                        async move { st.answer(req).await }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self { port, state, gate }
    }

    pub(crate) fn open(&self) {
        self.gate.send_replace(true);
    }

    pub(crate) fn acked(&self) -> usize {
        self.state.acked.load(Ordering::Relaxed) as usize
    }

    /// Waits until a request reached the app (the consumer is running).
    pub(crate) async fn wait_arrival(&self) {
        let start = Instant::now();
        while self.state.arrived.load(Ordering::Relaxed) == 0 {
            assert!(start.elapsed() < Duration::from_secs(60), "no delivery");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub(crate) fn take_latencies(&self) -> Vec<Duration> {
        std::mem::take(&mut *self.state.lat.lock().unwrap())
    }
}

impl AppState {
    pub(crate) async fn answer(
        &self,
        req: Request<hyper::body::Incoming>,
    ) -> Result<Response<Full<Bytes>>, Infallible> {
        let path = req.uri().path().to_owned();
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let reply = |status: u16, body: String| {
            Ok(Response::builder()
                .status(status)
                .body(Full::new(Bytes::from(body)))
                .unwrap())
        };
        // The sidecar's own start-up calls (`/dapr/subscribe`, and daprd's
        // `/dapr/config`) are answered at once: daprd is not ready until
        // they are, and they are not deliveries.
        if path.starts_with("/dapr/") {
            return reply(404, String::new());
        }
        self.arrived.fetch_add(1, Ordering::Relaxed);
        let _ = self.gate.clone().wait_for(|open| *open).await;
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        if path == "/bulk" {
            // As little work as the per-message answer: read the entry ids
            // only (the events are scanned, not built).
            #[derive(serde::Deserialize)]
            struct Entry {
                #[serde(rename = "entryId")]
                entry_id: String,
            }
            #[derive(serde::Deserialize)]
            struct Bulk {
                entries: Vec<Entry>,
            }
            let entries = serde_json::from_slice::<Bulk>(&body).unwrap().entries;
            let statuses: Vec<serde_json::Value> = entries
                .iter()
                .map(|e| json!({"entryId": e.entry_id, "status": "SUCCESS"}))
                .collect();
            self.acked
                .fetch_add(entries.len() as u64, Ordering::Relaxed);
            return reply(200, json!({ "statuses": statuses }).to_string());
        }
        if let Some(sent) = sent_at(&body) {
            let lat = Duration::from_micros(now_micros().saturating_sub(sent));
            self.lat.lock().unwrap().push(lat);
        }
        self.acked.fetch_add(1, Ordering::Relaxed);
        reply(200, String::new())
    }
}

/// The `"ts":N` send time in a delivered body.
pub(crate) fn sent_at(body: &[u8]) -> Option<u64> {
    let at = body.windows(5).position(|w| w == b"\"ts\":")? + 5;
    let digits: Vec<u8> = body[at..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .copied()
        .collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}
