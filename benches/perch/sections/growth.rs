//! How cost grows with the work: drain throughput and the sidecar's RSS
//! (idle before the backlog, peak while draining) as subscriptions, Kafka
//! partitions, payload size and the in-flight window grow, one row per
//! dimension, and a plot of the four (`plot`).

use std::fmt::Write as _;

use crate::*;

/// One measured point of a dimension.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Point {
    /// The dimension's value (topics, partitions, bytes, window).
    pub(crate) x: usize,
    pub(crate) rate: f64,
    pub(crate) idle_kib: u64,
    pub(crate) peak_kib: u64,
}

/// A dimension: its name, unit and points.
pub(crate) struct Dimension {
    pub(crate) name: &'static str,
    pub(crate) what: String,
    pub(crate) points: Vec<Point>,
    pub(crate) peer: Option<Vec<Point>>,
}

/// What one point drains.
struct Work {
    backend: Backend,
    md: Vec<(&'static str, String)>,
    topics: usize,
    messages: usize,
    pad: usize,
    keys: Option<usize>,
    delay: Duration,
}

/// Drains `w.messages` (spread over `w.topics`) through one sidecar.
async fn point(x: usize, w: &Work) -> Point {
    let md: Vec<(&str, &str)> = w.md.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let s = setup(
        w.backend,
        SetupOpts {
            delay: w.delay,
            open: false,
            topics: w.topics,
            ..SetupOpts::new(&md)
        },
    )
    .await;
    let pid = s.sc.child.id().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = proc_stats(pid).0;
    let per = w.messages.div_ceil(w.topics);
    for t in &s.topics {
        backlog_of(&s.sc, t, per, w.keys, w.pad).await;
    }
    let total = per * w.topics;
    s.app.wait_arrival().await;
    let mut peak = proc_stats(pid).0;
    let start = Instant::now();
    s.app.open();
    while s.app.acked() < total {
        peak = peak.max(proc_stats(pid).0);
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "growth point stalled at {} of {total}",
            s.app.acked()
        );
    }
    Point {
        x,
        rate: total as f64 / start.elapsed().as_secs_f64(),
        idle_kib: idle,
        peak_kib: peak.max(proc_stats(pid).0),
    }
}

/// Every point of one dimension, through Perch and (with one) the peer.
async fn dimension(
    name: &'static str,
    what: String,
    xs: &[usize],
    work: impl Fn(usize) -> Work,
) -> Dimension {
    let mut points = vec![];
    let mut peer_points = vec![];
    for &x in xs {
        let w = work(x);
        let (p, q) = both(|| point(x, &w)).await;
        points.push(p);
        peer_points.extend(q);
    }
    Dimension {
        name,
        what,
        points,
        peer: (!peer_points.is_empty()).then_some(peer_points),
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn size(bytes: usize) -> String {
    match bytes {
        b if b >= 1 << 20 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}

pub(crate) async fn run(backends: &[Backend], s: &Sizes, rows: &mut Rows, full: bool) {
    let n = s.deliver;
    let has = |b: Backend| backends.contains(&b);
    let none = |window: usize| {
        vec![
            ("deliveryOrder", "none".to_owned()),
            ("maxInFlight", window.to_string()),
        ]
    };
    let mut dims = vec![];
    if has(Backend::Rabbit) {
        dims.push(
            dimension(
                "subscriptions",
                format!("RabbitMQ, {n} x 1 KiB spread over the topics, one subscription each"),
                &[1, 10, 100],
                |topics| Work {
                    backend: Backend::Rabbit,
                    md: none(64),
                    topics,
                    messages: n,
                    pad: 1000,
                    keys: None,
                    delay: Duration::ZERO,
                },
            )
            .await,
        );
    }
    if has(Backend::Kafka) {
        // One topic, 4 keys per partition, each partition in order
        // (Kafka's default deliveryOrder).
        dims.push(
            dimension(
                "Kafka partitions",
                format!("one topic, {n} x 1 KiB over 4 keys per partition, partition order"),
                &[1, 8, 64],
                |p| Work {
                    backend: Backend::Kafka,
                    md: vec![
                        ("topicPartitions", p.to_string()),
                        ("maxInFlight", "64".to_owned()),
                    ],
                    topics: 1,
                    messages: n,
                    pad: 1000,
                    keys: Some(p * 4),
                    delay: Duration::ZERO,
                },
            )
            .await,
        );
    }
    if has(Backend::Redis) {
        // At most 64 MiB of backlog (8 MiB in the smoke).
        let cap: usize = if full { 64 << 20 } else { 8 << 20 };
        dims.push(
            dimension(
                "payload",
                format!(
                    "Redis, up to {n} events, at most {} of backlog, maxInFlight 64",
                    size(cap)
                ),
                &[1 << 10, 64 << 10, 1 << 20],
                |pad| Work {
                    backend: Backend::Redis,
                    md: none(64),
                    topics: 1,
                    messages: n.min(cap / pad).max(8),
                    pad,
                    keys: None,
                    delay: Duration::ZERO,
                },
            )
            .await,
        );
    }
    if has(Backend::Memory) {
        // An app taking 5 ms per event: the window is how many requests
        // it has open at once.
        let m = if full { 2000 } else { 40 };
        dims.push(
            dimension(
                "app concurrency",
                format!("in-memory, 5 ms app, {m} x 1 KiB, maxInFlight = the app's concurrency"),
                &[1, 16, 256],
                |c| Work {
                    backend: Backend::Memory,
                    md: none(c),
                    topics: 1,
                    messages: m,
                    pad: 1000,
                    keys: None,
                    delay: Duration::from_millis(5),
                },
            )
            .await,
        );
    }
    for d in &dims {
        let cells: Vec<String> = d
            .points
            .iter()
            .map(|p| {
                format!(
                    "{}: {:.0}/s, {:.1} MiB",
                    label(d.name, p.x),
                    p.rate,
                    mib(p.peak_kib)
                )
            })
            .collect();
        let idle: Vec<String> = d
            .points
            .iter()
            .map(|p| format!("{:.1}", mib(p.idle_kib)))
            .collect();
        let (first, last) = (d.points[0], d.points[d.points.len() - 1]);
        row(
            rows,
            format!("growth, {}: {}", d.name, d.what),
            cells.join("; "),
            "".into(),
            format!(
                "{}: throughput {:.2}x, peak RSS {:.2}x of {}",
                label(d.name, last.x),
                last.rate / first.rate,
                last.peak_kib as f64 / first.peak_kib.max(1) as f64,
                label(d.name, first.x)
            ),
            format!("idle RSS {} MiB", idle.join(" / ")),
        );
        if let Some(q) = &d.peer {
            let r: Vec<String> = d
                .points
                .iter()
                .zip(q)
                .map(|(a, b)| {
                    format!(
                        "{}: throughput {:.2}x, RSS peak {:.2}x",
                        label(d.name, a.x),
                        a.rate / b.rate,
                        a.peak_kib as f64 / b.peak_kib.max(1) as f64
                    )
                })
                .collect();
            peer_cell(rows, r.join("; "));
        }
    }
    if !dims.is_empty() {
        let path = plot_path(full);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("the plot's folder");
        }
        std::fs::write(&path, plot(&dims)).expect("write the growth plot");
        println!("growth plot: {}", path.display());
    }
}

/// The plot's file: `docs/bench-growth.svg` in a full run of every section
/// and broker (the plot the README shows), the temp dir in the smoke or a
/// run narrowed by `PERCH_BENCH_ONLY` / `PERCH_BENCH_BROKERS` (the
/// repository is left as it is: a narrowed run once overwrote the README's
/// plot with one that lacked a dimension).
fn plot_path(full: bool) -> std::path::PathBuf {
    let narrowed = ["PERCH_BENCH_ONLY", "PERCH_BENCH_BROKERS"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()));
    if full && !narrowed {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/bench-growth.svg")
    } else {
        std::env::temp_dir().join("perch-bench-growth.svg")
    }
}

fn label(name: &str, x: usize) -> String {
    match name {
        "subscriptions" if x == 1 => "1 topic".into(),
        "subscriptions" => format!("{x} topics"),
        "Kafka partitions" if x == 1 => "1 partition".into(),
        "Kafka partitions" => format!("{x} partitions"),
        "payload" => size(x),
        _ => format!("window {x}"),
    }
}

/// Four panels, one per dimension: throughput (blue, left axis) and peak
/// RSS (orange, right axis) at each point, as an SVG.
pub(crate) fn plot(dims: &[Dimension]) -> String {
    let (pw, ph) = (460.0, 260.0);
    let cols = 2.0;
    let rows = (dims.len() as f64 / cols).ceil();
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" font-family="sans-serif" font-size="11">"#,
        pw * cols,
        ph * rows + 30.0
    );
    let _ = write!(
        svg,
        r##"<rect width="100%" height="100%" fill="white"/><text x="10" y="18" font-size="13">Perch: drain throughput (blue, msgs/s) and peak RSS (orange, MiB) as the work grows</text>"##
    );
    for (i, d) in dims.iter().enumerate() {
        let ox = (i % 2) as f64 * pw;
        let oy = 30.0 + (i / 2) as f64 * ph;
        let (l, r, t, b) = (ox + 60.0, ox + pw - 60.0, oy + 30.0, oy + ph - 40.0);
        let _ = write!(
            svg,
            r##"<text x="{}" y="{}" font-size="12" font-weight="bold">{}</text><rect x="{l}" y="{t}" width="{}" height="{}" fill="none" stroke="#999"/>"##,
            ox + 60.0,
            oy + 14.0,
            d.name,
            r - l,
            b - t
        );
        let max_rate = d.points.iter().map(|p| p.rate).fold(1.0, f64::max) * 1.1;
        let max_rss = d.points.iter().map(|p| mib(p.peak_kib)).fold(1.0, f64::max) * 1.1;
        let n = d.points.len().max(2) as f64 - 1.0;
        let xat = |k: usize| l + (r - l) * k as f64 / n;
        let mut rate_line = vec![];
        let mut rss_line = vec![];
        for (k, p) in d.points.iter().enumerate() {
            let x = xat(k);
            let yr = b - (b - t) * p.rate / max_rate;
            let ym = b - (b - t) * mib(p.peak_kib) / max_rss;
            rate_line.push(format!("{x:.1},{yr:.1}"));
            rss_line.push(format!("{x:.1},{ym:.1}"));
            let _ = write!(
                svg,
                r##"<circle cx="{x:.1}" cy="{yr:.1}" r="3" fill="#1f77b4"/><text x="{x:.1}" y="{:.1}" fill="#1f77b4" text-anchor="middle">{:.0}</text><circle cx="{x:.1}" cy="{ym:.1}" r="3" fill="#ff7f0e"/><text x="{x:.1}" y="{:.1}" fill="#ff7f0e" text-anchor="middle">{:.1}</text><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
                yr - 6.0,
                p.rate,
                ym + 14.0,
                mib(p.peak_kib),
                b + 16.0,
                label(d.name, p.x)
            );
        }
        let _ = write!(
            svg,
            r##"<polyline points="{}" fill="none" stroke="#1f77b4" stroke-width="2"/><polyline points="{}" fill="none" stroke="#ff7f0e" stroke-width="2" stroke-dasharray="5,3"/><text x="{}" y="{:.1}" fill="#1f77b4" text-anchor="end">{:.0}/s</text><text x="{}" y="{:.1}" fill="#ff7f0e">{:.0} MiB</text>"##,
            rate_line.join(" "),
            rss_line.join(" "),
            l,
            t - 4.0,
            max_rate,
            r,
            t - 4.0,
            max_rss
        );
    }
    svg.push_str("</svg>\n");
    svg
}
