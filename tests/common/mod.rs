//! Test harness: a small real HTTP app that records what it receives, the
//! real `perch` binary started on a free port, and an HTTP client.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

pub type TestResult = Result<(), Box<dyn std::error::Error>>;

/// One request the app received.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: BTreeMap<String, String>,
    pub body: Bytes,
}

impl Received {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("app received JSON")
    }
}

/// The app's answer to `GET /dapr/subscribe`: (status, body).
pub type Discovery = Arc<dyn Fn() -> (u16, String) + Send + Sync>;

/// Decides the app's answer: (status, body); status 0 never answers.
pub type Behaviour = Arc<dyn Fn(&Received) -> (u16, String) + Send + Sync>;

/// A real HTTP app on 127.0.0.1:0.
pub struct TestApp {
    pub port: u16,
    pub rx: mpsc::UnboundedReceiver<Received>,
    /// Most requests the app had open at once.
    pub max_concurrent: Arc<std::sync::atomic::AtomicUsize>,
}

impl TestApp {
    /// `subscribe` is the JSON answered on `/dapr/subscribe` (`None`: 404).
    pub async fn start(subscribe: Option<serde_json::Value>, behaviour: Behaviour) -> Self {
        Self::start_slow(subscribe, Duration::ZERO, behaviour).await
    }

    /// Like `start`, but each event takes `delay` before the app answers.
    pub async fn start_slow(
        subscribe: Option<serde_json::Value>,
        delay: Duration,
        behaviour: Behaviour,
    ) -> Self {
        let discovery: Discovery = match subscribe {
            Some(v) => {
                let body = v.to_string();
                Arc::new(move || (200, body.clone()))
            }
            None => Arc::new(|| (404, String::new())),
        };
        Self::start_discovering(discovery, delay, behaviour).await
    }

    /// An app whose `/dapr/subscribe` answers what `discovery` returns,
    /// asked anew on every request.
    pub async fn start_discovering(
        discovery: Discovery,
        delay: Duration,
        behaviour: Behaviour,
    ) -> Self {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let open = Arc::new(AtomicUsize::new(0));
        let max_concurrent = Arc::new(AtomicUsize::new(0));
        let (open_c, max_c) = (open.clone(), max_concurrent.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = mpsc::unbounded_channel();
        let subscribe = discovery;
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (tx, behaviour, subscribe) = (tx.clone(), behaviour.clone(), subscribe.clone());
                let (open, max_c) = (open_c.clone(), max_c.clone());
                tokio::spawn(async move {
                    let svc =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let (tx, behaviour, subscribe) =
                                (tx.clone(), behaviour.clone(), subscribe.clone());
                            let (open, max_c) = (open.clone(), max_c.clone());
                            async move {
                                let path = req.uri().path().to_owned();
                                if path == "/dapr/subscribe" {
                                    let (status, body) = subscribe();
                                    let resp = Response::builder()
                                        .status(status)
                                        .body(Full::new(Bytes::from(body)))
                                        .unwrap();
                                    return Ok::<_, Infallible>(resp);
                                }
                                let headers = req
                                    .headers()
                                    .iter()
                                    .map(|(k, v)| {
                                        (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned())
                                    })
                                    .collect();
                                let now = open.fetch_add(1, Ordering::SeqCst) + 1;
                                max_c.fetch_max(now, Ordering::SeqCst);
                                let body = req.into_body().collect().await.unwrap().to_bytes();
                                tokio::time::sleep(delay).await;
                                open.fetch_sub(1, Ordering::SeqCst);
                                let r = Received {
                                    path,
                                    headers,
                                    body,
                                };
                                let (status, answer) = behaviour(&r);
                                if r.path != "/healthz" {
                                    let _ = tx.send(r);
                                }
                                if status == 0 {
                                    // Status 0: the app never answers.
                                    std::future::pending::<()>().await;
                                }
                                Ok(Response::builder()
                                    .status(status)
                                    .body(Full::new(Bytes::from(answer)))
                                    .unwrap())
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self {
            port,
            rx,
            max_concurrent,
        }
    }

    /// An app that answers 200 to every event after `delay`.
    pub async fn acking_after(delay: Duration) -> Self {
        Self::start_slow(None, delay, Arc::new(|_| (200, String::new()))).await
    }

    /// An app that answers SUCCESS to everything.
    /// An app that answers SUCCESS for every entry of a bulk request.
    pub async fn bulk_ok(subscribe: Option<serde_json::Value>) -> Self {
        Self::start(subscribe, Arc::new(|r| (200, bulk_success(r)))).await
    }

    pub async fn ok(subscribe: Option<serde_json::Value>) -> Self {
        Self::start(
            subscribe,
            Arc::new(|_| (200, r#"{"status":"SUCCESS"}"#.into())),
        )
        .await
    }

    /// The next request, or an error after `secs`.
    pub async fn next(&mut self, secs: u64) -> Result<Received, String> {
        tokio::time::timeout(Duration::from_secs(secs), self.rx.recv())
            .await
            .map_err(|_| format!("app received nothing within {secs}s"))?
            .ok_or_else(|| "app channel closed".to_string())
    }
}

/// The real `perch` binary.
pub struct Sidecar {
    pub port: u16,
    pub grpc_port: u16,
    pub metrics_port: u16,
    /// `--dapr-public-port`, on 127.0.0.1 in tests.
    pub public_port: u16,
    pub child: Child,
}

/// Dapr's bulk answer with SUCCESS for every entry of request `r`.
pub fn bulk_success(r: &Received) -> String {
    let statuses: Vec<serde_json::Value> = r.json()["entries"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| serde_json::json!({"entryId": e["entryId"], "status": "SUCCESS"}))
                .collect()
        })
        .unwrap_or_default();
    serde_json::json!({ "statuses": statuses }).to_string()
}

pub fn perch_bin() -> &'static str {
    env!("CARGO_BIN_EXE_perch")
}

/// A port nothing listens on now, and that this test process has not
/// handed out before: tests in one binary start sidecars concurrently, and
/// the system may offer a port again once the probe closes it, before the
/// sidecar it was picked for binds it (a CI run saw one sidecar's metrics
/// port handed out as another's API port).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if GIVEN
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(port)
        {
            return port;
        }
    }
}

impl Sidecar {
    /// Starts `perch run` and waits until `/v1.0/healthz` answers 204.
    pub async fn start(
        resources: &Path,
        app_port: Option<u16>,
        env: &[(&str, &str)],
        extra: &[&str],
    ) -> Self {
        Self::start_until(resources, app_port, env, extra, "/v1.0/healthz").await
    }

    /// Starts `perch run` and waits until `ready_path` answers 204. The
    /// API port is picked free just before the start, so another test may
    /// take it first (`perch` then exits: address in use); it is started
    /// again on a new port.
    pub async fn start_until(
        resources: &Path,
        app_port: Option<u16>,
        env: &[(&str, &str)],
        extra: &[&str],
        ready_path: &str,
    ) -> Self {
        for _ in 0..5 {
            if let Some(sc) =
                Self::try_start(None, resources, app_port, env, extra, ready_path).await
            {
                return sc;
            }
        }
        panic!("perch did not start on a free port five times");
    }

    /// Starts `bin` as daprd is started (no subcommand; `--app-id`,
    /// `--app-port`, `--dapr-http-port`, `--dapr-grpc-port`,
    /// `--metrics-port`, `--resources-path` and `extra`): any
    /// daprd-compatible sidecar, Perch included (the bench's peer column).
    pub async fn start_daprd_style(
        bin: &str,
        resources: &Path,
        app_port: Option<u16>,
        extra: &[&str],
    ) -> Self {
        for _ in 0..5 {
            if let Some(sc) =
                Self::try_start(Some(bin), resources, app_port, &[], extra, "/v1.0/healthz").await
            {
                return sc;
            }
        }
        panic!("{bin} did not start on a free port five times");
    }

    async fn try_start(
        daprd_style: Option<&str>,
        resources: &Path,
        app_port: Option<u16>,
        env: &[(&str, &str)],
        extra: &[&str],
        ready_path: &str,
    ) -> Option<Self> {
        let port = free_port();
        let grpc_port = free_port();
        let metrics_port = free_port();
        let public_port = free_port();
        let mut cmd = Command::new(daprd_style.unwrap_or(perch_bin()));
        if daprd_style.is_none() {
            cmd.arg("run");
        }
        // The app id is test-app unless the test names one.
        if !extra.contains(&"--app-id") {
            cmd.args(["--app-id", "test-app"]);
        }
        cmd.args(["--dapr-http-port", &port.to_string()])
            .args(["--metrics-port", &metrics_port.to_string()])
            .args(["--dapr-grpc-port", &grpc_port.to_string()]);
        if daprd_style.is_none() {
            cmd.args(["--dapr-public-port", &public_port.to_string()])
                .args(["--dapr-public-listen-address", "127.0.0.1"]);
        }
        cmd.arg("--resources-path")
            .arg(resources)
            .args(extra)
            .env_remove("DAPR_API_TOKEN")
            .env_remove("APP_API_TOKEN")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        // daprd logs to stdout: a peer's log goes to stderr, so one that
        // exits before it is ready says why.
        if daprd_style.is_some() {
            if let Ok(fd) = std::os::fd::AsFd::as_fd(&std::io::stderr()).try_clone_to_owned() {
                cmd.stdout(Stdio::from(fd));
            }
        }
        if let Some(p) = app_port {
            cmd.args(["--app-port", &p.to_string()]);
        }
        let child = cmd.spawn().expect("spawn perch");
        let mut sc = Self {
            port,
            grpc_port,
            metrics_port,
            public_port,
            child,
        };
        // Perch keeps running when its metrics port is taken (an ERROR, not
        // an exit), so that one is checked here and the start retried.
        let metrics_off = extra.iter().any(|a| a.contains("enable-metrics=false"));
        // Up to 30 s: a RabbitMQ subscription waits up to 10 s for its
        // declarations, and a loaded 2-core CI box runs many at once.
        for _ in 0..600 {
            if let Ok((204, _, _)) = sc.call("GET", ready_path, &[], "").await {
                if daprd_style.is_some() || metrics_off {
                    return Some(sc);
                }
                let url = format!("http://127.0.0.1:{}/metrics", sc.metrics_port);
                if let Ok((200, _, _)) = request("GET", &url, &[], "").await {
                    return Some(sc);
                }
                eprintln!(
                    "perch is not serving metrics on port {}; starting it again",
                    sc.metrics_port
                );
                let _ = sc.child.kill().await;
                return None;
            }
            if let Ok(Some(status)) = sc.child.try_wait() {
                eprintln!(
                    "perch exited ({status}) before it was ready on port {port}; starting it again"
                );
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("perch did not become healthy on port {port}");
    }

    /// The Prometheus text from `--metrics-port`.
    pub async fn scrape(&self) -> String {
        let url = format!("http://127.0.0.1:{}/metrics", self.metrics_port);
        let (_, _, body) = request("GET", &url, &[], "").await.expect("metrics scrape");
        String::from_utf8(body.to_vec()).unwrap()
    }

    /// The value of the sample `name{labels}` (labels in any order), if any.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let text = self.scrape().await;
        text.lines().find_map(|line| {
            let rest = line.strip_prefix(name)?;
            if !(rest.starts_with('{') || rest.starts_with(' ')) {
                return None;
            }
            let (labelset, value) = match rest.strip_prefix('{') {
                Some(r) => {
                    let (l, v) = r.split_once('}')?;
                    (l, v)
                }
                None => ("", rest),
            };
            labels
                .iter()
                .all(|(k, v)| labelset.contains(&format!("{k}=\"{v}\"")))
                .then(|| value.trim().parse().ok())
                .flatten()
        })
    }

    /// Polls `metric` until it equals `want` (at most 10 s); the last value.
    pub async fn metric_reaches(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        want: f64,
    ) -> Option<f64> {
        let mut last = None;
        for _ in 0..100 {
            last = self.metric(name, labels).await;
            if last == Some(want) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        last
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    /// Whether `/v1.0/metadata` reports the component `name` reachable
    /// (`None` when the sidecar does not answer or lists no health).
    pub async fn component_healthy(&self, name: &str) -> Option<bool> {
        let (status, _, body) = self.call("GET", "/v1.0/metadata", &[], "").await.ok()?;
        if status != 200 {
            return None;
        }
        let md: serde_json::Value = serde_json::from_slice(&body).ok()?;
        md["components"]
            .as_array()?
            .iter()
            .find(|c| c["name"] == name)?["healthy"]
            .as_bool()
    }

    /// Waits up to `secs` until the component `name` is reported as
    /// `healthy`; whether it was.
    pub async fn wait_component(&self, name: &str, healthy: bool, secs: u64) -> bool {
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        while std::time::Instant::now() < deadline {
            if self.component_healthy(name).await == Some(healthy) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    /// One request; returns status, headers and body.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Result<(u16, BTreeMap<String, String>, Bytes), Box<dyn std::error::Error>> {
        request(method, &self.url(path), headers, body).await
    }

    /// A request to the public port (`--dapr-public-port`).
    pub async fn call_public(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<(u16, BTreeMap<String, String>, Bytes), Box<dyn std::error::Error>> {
        let url = format!("http://127.0.0.1:{}{}", self.public_port, path);
        request(method, &url, headers, "").await
    }

    pub async fn publish_json(&self, pubsub_topic: &str, body: &str) -> u16 {
        self.call(
            "POST",
            &format!("/v1.0/publish/{pubsub_topic}"),
            &[("content-type", "application/json")],
            body,
        )
        .await
        .unwrap()
        .0
    }
}

pub async fn request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<(u16, BTreeMap<String, String>, Bytes), Box<dyn std::error::Error>> {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client
        .request(req.body(Full::new(Bytes::from(body.to_owned())))?)
        .await?;
    let status = resp.status().as_u16();
    let hdrs = resp
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, hdrs, body))
}

/// Writes `files` (name, YAML) into a new temp dir.
pub fn resources(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

pub const PUBSUB: &str = "apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: pubsub
spec:
  type: pubsub.in-memory
  version: v1
";

/// An in-memory pub/sub component named `name` with `metadata` entries.
pub fn component(name: &str, metadata: &[(&str, &str)]) -> String {
    let mut yaml = format!(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: {name}\nspec:\n  type: pubsub.in-memory\n  version: v1\n"
    );
    if !metadata.is_empty() {
        yaml.push_str("  metadata:\n");
        for (k, v) in metadata {
            yaml.push_str(&format!("    - name: {k}\n      value: \"{v}\"\n"));
        }
    }
    yaml
}

pub fn subscription(name: &str, topic: &str, route: &str) -> String {
    format!(
        "apiVersion: dapr.io/v2alpha1
kind: Subscription
metadata:
  name: {name}
spec:
  pubsubname: pubsub
  topic: {topic}
  routes:
    default: {route}
"
    )
}

/// A subscription with a `deadLetterTopic`.
pub fn subscription_with_dead_letter(name: &str, topic: &str, route: &str, dead: &str) -> String {
    format!(
        "{}  deadLetterTopic: {dead}\n",
        subscription(name, topic, route)
    )
}

/// A Resiliency document that retries deliveries from the component named
/// `pubsub` every `duration`, at most `max_retries` times.
pub fn constant_retries(duration: &str, max_retries: u32) -> String {
    format!(
        "apiVersion: dapr.io/v1alpha1
kind: Resiliency
metadata: {{name: r}}
spec:
  policies:
    retries:
      constant: {{policy: constant, duration: {duration}, maxRetries: {max_retries}}}
  targets:
    components:
      pubsub:
        inbound: {{retry: constant}}
"
    )
}

/// The broker a behaviour test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `pubsub.in-memory`.
    Memory,
    /// `pubsub.kafka` on the Kafka-protocol broker at 127.0.0.1:9092.
    Kafka,
    /// `pubsub.rabbitmq` on the RabbitMQ server at 127.0.0.1:5672.
    Rabbit,
    /// `pubsub.redis` on the Redis server at 127.0.0.1:6379.
    Redis,
}

/// One test's view of a backend: component YAML and topic names unique to
/// the test, so tests can share a real broker (and run concurrently).
pub struct Bench {
    pub backend: Backend,
    pub id: String,
    /// Topics handed out, for clean-up.
    topics: std::sync::Mutex<Vec<String>>,
}

impl Bench {
    pub fn new(backend: Backend) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string()[..10].to_owned();
        Self {
            backend,
            id,
            topics: Default::default(),
        }
    }

    /// The real topic name for `base` (unique per test on real brokers).
    pub fn topic(&self, base: &str) -> String {
        match self.backend {
            Backend::Memory => base.to_owned(),
            _ => {
                let t = format!("{base}-{}", self.id);
                self.topics.lock().unwrap().push(t.clone());
                t
            }
        }
    }

    /// The pubsub component named `pubsub` on this backend, with `metadata`.
    pub fn pubsub(&self, metadata: &[(&str, &str)]) -> String {
        let group = format!("g-{}", self.id);
        let mut md: Vec<(&str, &str)> = match self.backend {
            Backend::Memory => vec![],
            Backend::Kafka => vec![
                ("brokers", "127.0.0.1:9092"),
                // Required by daprd (the bench's peer); Perch takes none
                // as the default.
                ("authType", "none"),
                ("consumerGroup", group.as_str()),
                ("initialOffset", "oldest"),
            ],
            Backend::Rabbit => vec![
                ("connectionString", RABBIT_URI),
                ("consumerID", group.as_str()),
            ],
            // What a killed sidecar held is taken over after 5 s (Dapr's
            // default is 60 s), looked for every second.
            Backend::Redis => [
                ("redisHost", REDIS_HOST),
                ("consumerID", group.as_str()),
                ("processingTimeout", "5s"),
                ("redeliverInterval", "1s"),
            ]
            .into_iter()
            .filter(|(k, _)| !metadata.iter().any(|(m, _)| m == k))
            .collect(),
        };
        md.extend_from_slice(metadata);
        let ty = match self.backend {
            Backend::Memory => "pubsub.in-memory",
            Backend::Kafka => "pubsub.kafka",
            Backend::Rabbit => "pubsub.rabbitmq",
            Backend::Redis => "pubsub.redis",
        };
        component("pubsub", &md).replace("pubsub.in-memory", ty)
    }

    /// A v2alpha1 subscription to this test's `base` topic.
    pub fn subscription(&self, name: &str, base: &str, route: &str) -> String {
        subscription(name, &self.topic(base), route)
    }

    /// This backend's broker, built straight from `pubsub(metadata)`, with
    /// no sidecar (the broker contract, lag).
    pub fn broker(&self, metadata: &[(&str, &str)]) -> Arc<dyn perch::broker::Broker> {
        let dir = resources(&[("pubsub.yaml", &self.pubsub(metadata))]);
        let opts = perch::config::LoadOptions {
            app_id: "direct".into(),
            ..Default::default()
        };
        let res = perch::config::load(&[dir.path().to_owned()], &opts).expect("component loads");
        perch::broker::build(&res.pubsubs[0].name, &res.pubsubs[0].kind).expect("broker builds")
    }

    /// Publishes the numbers `0..n` (as text) to `topic` on `broker`,
    /// one message each, in order.
    pub async fn publish_numbers(
        &self,
        broker: &dyn perch::broker::Broker,
        topic: &str,
        n: u32,
    ) -> Result<(), perch::broker::BrokerError> {
        for i in 0..n {
            broker
                .publish(perch::broker::Message {
                    topic: topic.to_owned(),
                    data: i.to_string().into(),
                    content_type: None,
                    metadata: Default::default(),
                })
                .await?;
        }
        Ok(())
    }

    /// Subscribes this test's group to `topic` on `broker`, `window`
    /// deliveries handed out at most.
    pub async fn subscribe(
        &self,
        broker: &dyn perch::broker::Broker,
        topic: &str,
        window: usize,
    ) -> perch::broker::DeliveryStream {
        broker
            .subscribe(perch::broker::SubscribeRequest {
                topic: topic.to_owned(),
                group: format!("g-{}", self.id),
                consumer: "test".into(),
                metadata: Default::default(),
                window,
                dead_letter_topic: None,
            })
            .await
            .expect("subscribe")
    }
}

pub const RABBIT_URI: &str = "amqp://guest:guest@127.0.0.1:5672";
pub const REDIS_HOST: &str = "127.0.0.1:6379";

/// Runs one command on the test Redis server.
pub async fn redis_cmd<T: redis::FromRedisValue>(cmd: &redis::Cmd) -> redis::RedisResult<T> {
    let client = redis::Client::open(format!("redis://{REDIS_HOST}"))?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    cmd.query_async(&mut conn).await
}

impl Drop for Bench {
    /// Deletes the test's streams from the Redis server, and its exchanges
    /// and queues (`g-{id}-{topic}`, and the same for `{topic}.dlq`) from
    /// the RabbitMQ server.
    fn drop(&mut self) {
        let mut topics = std::mem::take(&mut *self.topics.lock().unwrap());
        topics.sort();
        topics.dedup();
        if self.backend == Backend::Redis && !topics.is_empty() {
            let keys: Vec<String> = topics
                .iter()
                .flat_map(|t| [t.clone(), format!("{t}.dlq"), format!("{t}.dlq.dlq")])
                .collect();
            let _ = std::thread::spawn(move || {
                let Ok(client) = redis::Client::open(format!("redis://{REDIS_HOST}")) else {
                    return;
                };
                if let Ok(mut conn) = client.get_connection() {
                    let _ = redis::cmd("DEL").arg(&keys).query::<i64>(&mut conn);
                }
            })
            .join();
        }
        if self.backend != Backend::Rabbit {
            return;
        }
        let group = format!("g-{}", self.id);
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
                let Ok(conn) =
                    lapin::Connection::connect(RABBIT_URI, lapin::ConnectionProperties::default())
                        .await
                else {
                    return;
                };
                for t in topics {
                    for name in [t.clone(), format!("{t}.dlq"), format!("{t}.dlq.dlq")] {
                        // Each delete on its own channel: a failure closes it.
                        if let Ok(ch) = conn.create_channel().await {
                            let q = format!("{group}-{name}");
                            let _ = ch
                                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                                .await;
                        }
                        if let Ok(ch) = conn.create_channel().await {
                            let _ = ch
                                .exchange_delete(
                                    name.as_str().into(),
                                    ExchangeDeleteOptions::default(),
                                )
                                .await;
                        }
                    }
                }
                let _ = conn.close(200, "test clean-up".into()).await;
            });
        })
        .join();
    }
}

/// The machine's PostgreSQL (trust auth, database `test`).
pub const PG: &str = "postgres://postgres@127.0.0.1:5432/test";

/// A `store.postgresql` component on tables of its own (`{table}` inbox,
/// `{table}_out` outbox; 3 s leases, so a killed sidecar's claims expire
/// quickly), dropped when the guard goes. Also a clean-up guard when the
/// test stops PostgreSQL: it runs after the test started it again.
pub struct PgStore {
    pub table: String,
}

impl Default for PgStore {
    fn default() -> Self {
        Self::new()
    }
}

impl PgStore {
    pub fn new() -> Self {
        Self {
            table: format!("inbox_{}", uuid::Uuid::new_v4().simple()),
        }
    }

    /// The outbox table's name.
    pub fn outbox_table(&self) -> String {
        format!("{}_out", self.table)
    }

    /// The component YAML, named `name`.
    pub fn yaml(&self, name: &str) -> String {
        format!(
            "apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: {name}
spec:
  type: store.postgresql
  version: v1
  metadata:
    - name: connectionString
      value: {PG}
    - name: inboxTable
      value: {t}
    - name: outboxTable
      value: {t}_out
    - name: leaseDuration
      value: 3s
",
            t = self.table
        )
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        let t = &self.table;
        let _ = std::process::Command::new("psql")
            .args([PG, "-qc", &format!("DROP TABLE IF EXISTS {t}, {t}_out")])
            .output();
    }
}

/// The test Kafka broker, stopped and started with `scripts/kafka.sh`, the
/// script `scripts/test.sh` starts it with. Started again when the guard
/// goes, however the test ends.
pub struct KafkaBroker {
    started: bool,
}

/// Runs `scripts/kafka.sh {cmd}`; true when it succeeded.
async fn kafka_script(cmd: &str) -> bool {
    Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/kafka.sh"))
        .arg(cmd)
        .stdin(Stdio::null())
        .status()
        .await
        .is_ok_and(|s| s.success())
}

impl KafkaBroker {
    /// Stops the broker (controlled shutdown).
    pub async fn stop() -> Self {
        assert!(kafka_script("stop").await, "scripts/kafka.sh stop");
        Self { started: false }
    }

    /// Kills the broker with SIGKILL, as a crash would.
    pub async fn kill() -> Self {
        assert!(kafka_script("kill").await, "scripts/kafka.sh kill");
        Self { started: false }
    }

    /// Starts it again on the same data and waits until it answers.
    pub async fn start(mut self) {
        self.started = true;
        assert!(kafka_script("start").await, "scripts/kafka.sh start");
    }
}

impl Drop for KafkaBroker {
    fn drop(&mut self) {
        if !self.started {
            let _ = std::process::Command::new(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/scripts/kafka.sh"
            ))
            .arg("start")
            .status();
        }
    }
}

/// `psql` on the test database: what `sql` selects, unaligned, one row a
/// line. Panics with psql's error when the statement fails.
pub fn psql(sql: &str) -> String {
    let out = std::process::Command::new("psql")
        .args([PG, "-qAtc", sql])
        .output()
        .expect("psql runs");
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

pub fn openssl(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`ca.pem`), a server certificate for 127.0.0.1 (`server.pem`,
/// `server.key`) and a client certificate (`client.pem`, `client.key`) in
/// `dir`, made with `openssl` for the run.
pub fn make_test_certs(dir: &Path) {
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=perch-test-ca",
        ],
    );
    for (name, cn) in [("server", "127.0.0.1"), ("client", "perch-sidecar")] {
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={cn}"),
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{name}.pem"),
                "-days",
                "2",
                "-extfile",
                &format!("{name}.ext"),
            ],
        );
    }
}
