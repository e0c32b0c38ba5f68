//! RSS: sampled over a sustained run, idle on each broker, and the peak of
//! every row.

use crate::*;

/// What a sustained run measured of one sidecar.
struct Soak {
    /// RSS samples, KiB.
    rss: Vec<u64>,
    sent: usize,
    delivered: usize,
    cpu_per_10k: f64,
}

/// RSS sampled over a sustained publish-and-deliver run on RabbitMQ.
async fn soak_run(s: &Sizes) -> Soak {
    let st = setup(
        Backend::Rabbit,
        SetupOpts::new(&[("deliveryOrder", "none"), ("maxInFlight", "64")]),
    )
    .await;
    let url = st.sc.url(&format!("/v1.0/publish/pubsub/{}", st.topic));
    let pid = st.sc.child.id().unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut pubs = tokio::task::JoinSet::new();
    for _ in 0..SOAK_CLIENTS {
        let (url, stop) = (url.clone(), stop.clone());
        pubs.spawn(async move {
            let mut sent = 0;
            while !stop.load(Ordering::Relaxed) {
                load(&url, &payload(), "application/json", 50, 1).await;
                sent += 50;
            }
            sent
        });
    }
    let mut rss = vec![];
    let (_, cpu0) = proc_stats(pid);
    for _ in 0..SOAK_SAMPLES {
        tokio::time::sleep(s.soak / SOAK_SAMPLES).await;
        rss.push(proc_stats(pid).0);
    }
    stop.store(true, Ordering::Relaxed);
    let mut sent = 0;
    while let Some(n) = pubs.join_next().await {
        sent += n.unwrap();
    }
    let (_, cpu1) = proc_stats(pid);
    let delivered = st.app.acked();
    Soak {
        rss,
        sent,
        delivered,
        cpu_per_10k: (cpu1 - cpu0) * 10000.0 / (sent + delivered).max(1) as f64 * 2.0,
    }
}

const SOAK_CLIENTS: usize = 8;
const SOAK_SAMPLES: u32 = 10;

/// RSS (KiB) of a sidecar connected to `b` with one subscription, once it
/// delivered a few events and went quiet.
async fn idle_rss(b: Backend) -> u64 {
    let st = setup(b, SetupOpts::new(&[])).await;
    backlog(&st.sc, &st.topic, 10, None).await;
    while st.app.acked() < 10 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    proc_stats(st.sc.child.id().unwrap()).0
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

pub(crate) async fn run(backends: &[Backend], s: &Sizes, rows: &mut Rows, peak_rss: u64) {
    let (soak, other) = both(|| soak_run(s)).await;
    let hi = *soak.rss.iter().max().unwrap();
    let lo = *soak.rss.iter().min().unwrap();
    row(
        rows,
        format!(
            "RSS over {} s sustained RabbitMQ publish + delivery, 1 KiB, {SOAK_CLIENTS} clients, every {} s",
            s.soak.as_secs(),
            (s.soak / SOAK_SAMPLES).as_secs_f64()
        ),
        soak.rss
            .iter()
            .map(|k| format!("{:.1}", mib(*k)))
            .collect::<Vec<_>>()
            .join(", ")
            + " MiB",
        "".into(),
        "".into(),
        format!(
            "{} published, {} delivered; spread {:.1} MiB ({}); {:.2} CPU s per 10k (publish + delivery)",
            soak.sent,
            soak.delivered,
            mib(hi - lo),
            if hi - lo <= 2048 { "flat: within 2 MiB" } else { "not flat: over 2 MiB" },
            soak.cpu_per_10k
        ),
    );
    let m = |k: &Soak| Measure {
        rss_peak_kib: k.rss.iter().max().copied(),
        cpu_per_10k: Some(k.cpu_per_10k),
        ..Measure::default()
    };
    peer_cell(rows, peer_text(&m(&soak), other.as_ref().map(m).as_ref()));
    let peak_rss = peak_rss.max(hi);
    // Idle, on each broker: connected, one subscription, quiet.
    let mut idle = vec![];
    let mut cells = vec![];
    for &b in backends {
        let (perch, other) = both(|| idle_rss(b)).await;
        idle.push(format!("{b:?} {:.1}", mib(perch)));
        if let Some(o) = other {
            cells.push(format!("{b:?} {:.2}x", perch as f64 / o as f64));
        }
    }
    row(
        rows,
        "RSS of the sidecar: idle with one subscription on each broker (after 10 events); peak over every run above".into(),
        format!("idle {} MiB; peak {:.1} MiB", idle.join(", "), mib(peak_rss)),
        "".into(),
        "".into(),
        "".into(),
    );
    if peer().is_some() {
        peer_cell(rows, format!("RSS idle {}", cells.join(", ")));
    }
}
