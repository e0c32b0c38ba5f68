//! A sidecar, its app and its files for one row, and the two measurements
//! most rows make: a backlog drain and publish-to-receipt latency.

use super::*;

/// The `pubsub` component for `backend`, with `md`.
pub(crate) fn pubsub_yaml(backend: Backend, bench: &Bench, md: &[(&str, &str)]) -> String {
    let mut md = md.to_vec();
    if backend == Backend::Memory {
        md.push(("maxMessages", "1000000"));
    }
    bench.pubsub(&md)
}

/// The sidecar of this measurement: Perch (`perch run`), or the peer
/// started as daprd is (inside the peer half of `both`).
pub(crate) async fn start_sc(dir: &std::path::Path, app_port: Option<u16>) -> Sidecar {
    let extra = ["--log-level", "warn", "--app-id", "bench"];
    match current_peer() {
        Some(bin) => Sidecar::start_daprd_style(bin, dir, app_port, &extra).await,
        None => Sidecar::start(dir, app_port, &[], &extra).await,
    }
}

/// A running sidecar with its app and files.
pub(crate) struct Setup {
    pub(crate) app: BenchApp,
    pub(crate) sc: Sidecar,
    pub(crate) topic: String,
    /// Every topic subscribed (`topic` first).
    pub(crate) topics: Vec<String>,
    pub(crate) _dir: tempfile::TempDir,
    pub(crate) _bench: Bench,
}

pub(crate) struct SetupOpts<'a> {
    pub(crate) md: &'a [(&'a str, &'a str)],
    pub(crate) bulk: bool,
    pub(crate) store: Option<&'a str>,
    pub(crate) delay: Duration,
    pub(crate) open: bool,
    /// Topics subscribed (each its own subscription to `/orders`).
    pub(crate) topics: usize,
}

impl<'a> SetupOpts<'a> {
    /// Per-message, no store, an app that answers at once.
    pub(crate) fn new(md: &'a [(&'a str, &'a str)]) -> Self {
        Self {
            md,
            bulk: false,
            store: None,
            delay: Duration::ZERO,
            open: true,
            topics: 1,
        }
    }
}

pub(crate) async fn setup(backend: Backend, o: SetupOpts<'_>) -> Setup {
    let bench = Bench::new(backend);
    let app = BenchApp::start(o.delay, o.open).await;
    // One Kafka partition (the default): one ordering lane, as on the
    // RabbitMQ queue.
    let topic = bench.topic("bench");
    let mut files = vec![("pubsub.yaml".to_owned(), pubsub_yaml(backend, &bench, o.md))];
    files.push((
        "s.yaml".into(),
        if o.bulk {
            format!("apiVersion: dapr.io/v2alpha1\nkind: Subscription\nmetadata: {{name: s}}\nspec:\n  pubsubname: pubsub\n  topic: {topic}\n  bulkSubscribe: {{enabled: true, maxMessagesCount: 100, maxAwaitDurationMs: 50}}\n  routes: {{default: /bulk}}\n")
        } else {
            subscription("s", &topic, "/orders")
        },
    ));
    let mut topics = vec![topic.clone()];
    for i in 1..o.topics {
        let t = bench.topic(&format!("bench{i}"));
        files.push((
            format!("s{i}.yaml"),
            subscription(&format!("s{i}"), &t, "/orders"),
        ));
        topics.push(t);
    }
    if let Some(s) = o.store {
        files.push(("store.yaml".into(), s.to_owned()));
    }
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let dir = resources(&refs);
    let sc = start_sc(dir.path(), Some(app.port)).await;
    Setup {
        app,
        sc,
        topic,
        topics,
        _dir: dir,
        _bench: bench,
    }
}

/// What draining a backlog measured.
pub(crate) struct Drained {
    pub(crate) rate: f64,
    pub(crate) peak_rss_kib: u64,
    pub(crate) cpu_s: f64,
}

impl Drained {
    /// As a `Measure` of a drain of `n` messages.
    pub(crate) fn measure(&self, n: usize) -> Measure {
        Measure {
            rate: Some(self.rate),
            cpu_per_10k: Some(self.cpu_s * 10000.0 / n as f64),
            rss_peak_kib: Some(self.peak_rss_kib),
            ..Measure::default()
        }
    }
}

/// With `PERCH_BENCH_PERF=<dir>`, records the sidecar `pid` with perf
/// (call graphs by DWARF, so build with line tables: see the README's
/// profiling note) into `<dir>/<name>.data`, for the length of a drain
/// (or of the publish section's HTTP and gRPC single-publish runs). perf
/// starts with its events off and turns them on by its control FIFO; this
/// returns once perf has acknowledged that, so the run is recorded whole.
pub(crate) async fn perf_record(pid: u32, name: &str) -> Option<std::process::Child> {
    let dir = std::env::var("PERCH_BENCH_PERF").ok()?;
    let (ctl, ack) = (format!("{dir}/{name}.ctl"), format!("{dir}/{name}.ack"));
    for fifo in [&ctl, &ack] {
        let _ = std::fs::remove_file(fifo);
        let made = std::process::Command::new("mkfifo").arg(fifo).status();
        if !made.is_ok_and(|s| s.success()) {
            eprintln!("PERCH_BENCH_PERF: could not make the FIFO {fifo}; not profiling {name}");
            return None;
        }
    }
    // Opened for reading and writing, a FIFO never blocks the open; the
    // spare writer of `ack` lets a read that waits for perf be ended.
    let rw = |f: &str| std::fs::OpenOptions::new().read(true).write(true).open(f);
    let (Ok(mut ctl_f), Ok(ack_f)) = (rw(&ctl), rw(&ack)) else {
        eprintln!("PERCH_BENCH_PERF: could not open the FIFOs in {dir}; not profiling {name}");
        return None;
    };
    let mut child = std::process::Command::new("perf")
        .args([
            "record",
            "-q",
            "-F",
            "499",
            "--call-graph",
            "dwarf,16384",
            "-D",
            "-1",
        ])
        .arg(format!("--control=fifo:{ctl},{ack}"))
        .arg(format!("--output={dir}/{name}.data"))
        .arg(format!("--pid={pid}"))
        .stdout(std::process::Stdio::null())
        .spawn()
        .map_err(|e| eprintln!("PERCH_BENCH_PERF: perf not started ({e}); is perf installed?"))
        .ok()?;
    let (Ok(mut unblock), Ok(())) = (
        ack_f.try_clone(),
        std::io::Write::write_all(&mut ctl_f, b"enable\n"),
    ) else {
        let _ = child.kill();
        return None;
    };
    let mut acked = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(ack_f), &mut line);
        line
    });
    let line = match tokio::time::timeout(Duration::from_secs(10), &mut acked).await {
        Ok(line) => line.unwrap_or_default(),
        Err(_) => {
            let _ = std::io::Write::write_all(&mut unblock, b"\n");
            acked.await.unwrap_or_default()
        }
    };
    // perf has opened them by now, or never will.
    for fifo in [&ctl, &ack] {
        let _ = std::fs::remove_file(fifo);
    }
    if line.trim() != "ack" {
        eprintln!("PERCH_BENCH_PERF: perf did not acknowledge 'enable' (see its message above); not profiling {name}");
        let _ = child.kill();
        let _ = child.wait();
        return None;
    }
    Some(child)
}

/// Stops a `perf_record` (SIGINT, so perf writes its file) and waits.
pub(crate) fn perf_stop(perf: Option<std::process::Child>) {
    let Some(mut child) = perf else { return };
    let _ = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

/// Fills the broker with `n` events, then times Perch delivering them all
/// to the app (`maxInFlight` 64, no ordering).
pub(crate) async fn drain(
    backend: Backend,
    n: usize,
    md: &[(&str, &str)],
    bulk: bool,
    store: Option<&str>,
) -> Drained {
    let mut all = vec![("deliveryOrder", "none"), ("maxInFlight", "64")];
    all.extend_from_slice(md);
    let s = setup(
        backend,
        SetupOpts {
            bulk,
            store,
            open: false,
            ..SetupOpts::new(&all)
        },
    )
    .await;
    backlog(&s.sc, &s.topic, n, None).await;
    s.app.wait_arrival().await;
    let pid = s.sc.child.id().unwrap();
    let perf = perf_record(
        pid,
        &format!("{backend:?}-{}", if bulk { "bulk" } else { "one" }),
    )
    .await;
    let (mut peak, cpu0) = proc_stats(pid);
    let start = Instant::now();
    s.app.open();
    while s.app.acked() < n {
        peak = peak.max(proc_stats(pid).0);
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "delivery stalled at {} of {n}",
            s.app.acked()
        );
    }
    let elapsed = start.elapsed();
    let (rss, cpu1) = proc_stats(pid);
    perf_stop(perf);
    Drained {
        rate: n as f64 / elapsed.as_secs_f64(),
        peak_rss_kib: peak.max(rss),
        cpu_s: cpu1 - cpu0,
    }
}

/// Publish-to-app latency at a fixed `rate`, one POST per event.
pub(crate) async fn end_to_end(backend: Backend, rate: u32, n: usize) -> (f64, f64) {
    let s = setup(backend, SetupOpts::new(&[])).await;
    let url = s.sc.url(&format!("/v1.0/publish/pubsub/{}", s.topic));
    // Warm up until events flow (consumer joined, connections open).
    let warm = 20;
    for _ in 0..warm {
        load(&url, &payload(), "application/json", 1, 1).await;
    }
    while s.app.acked() < warm {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    s.app.take_latencies();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
    let mut sends = tokio::task::JoinSet::new();
    for _ in 0..n {
        tick.tick().await;
        let req = Request::post(&url)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(payload())))
            .unwrap();
        let client = client.clone();
        sends.spawn(async move {
            let resp = client.request(req).await.expect("publish");
            assert!(resp.status().is_success(), "{}", resp.status());
        });
    }
    while let Some(r) = sends.join_next().await {
        r.unwrap();
    }
    let start = Instant::now();
    while s.app.acked() < warm + n {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "delivery stalled"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let lat = s.app.take_latencies();
    (pct(&lat, 0.5), pct(&lat, 0.99))
}
