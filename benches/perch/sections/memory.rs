//! RSS: sampled over a sustained run, idle, and the peak of every row.

use crate::*;

/// RSS sampled over a sustained publish-and-deliver run on RabbitMQ.
pub(crate) async fn soak(s: &Sizes, rows: &mut Rows) -> u64 {
    let st = setup(
        Backend::Rabbit,
        SetupOpts::new(&[("deliveryOrder", "none"), ("maxInFlight", "64")]),
    )
    .await;
    let url = st.sc.url(&format!("/v1.0/publish/pubsub/{}", st.topic));
    let pid = st.sc.child.id().unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients = 8;
    let mut pubs = tokio::task::JoinSet::new();
    for _ in 0..clients {
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
    let samples = 10;
    let mut rss = vec![];
    let (_, cpu0) = proc_stats(pid);
    for _ in 0..samples {
        tokio::time::sleep(s.soak / samples).await;
        rss.push(proc_stats(pid).0);
    }
    stop.store(true, Ordering::Relaxed);
    let mut sent = 0;
    while let Some(n) = pubs.join_next().await {
        sent += n.unwrap();
    }
    let (_, cpu1) = proc_stats(pid);
    let (lo, hi) = (*rss.iter().min().unwrap(), *rss.iter().max().unwrap());
    row(
        rows,
        format!(
            "RSS over {} s sustained RabbitMQ publish + delivery, 1 KiB, {clients} clients, every {} s",
            s.soak.as_secs(),
            (s.soak / samples).as_secs_f64()
        ),
        rss.iter()
            .map(|k| format!("{:.1}", *k as f64 / 1024.0))
            .collect::<Vec<_>>()
            .join(", ")
            + " MiB",
        "".into(),
        "".into(),
        format!(
            "{sent} published, {} delivered; spread {:.1} MiB; {:.2} CPU s per 10k (publish + delivery)",
            st.app.acked(),
            (hi - lo) as f64 / 1024.0,
            (cpu1 - cpu0) * 10000.0 / (sent + st.app.acked()).max(1) as f64 * 2.0
        ),
    );
    hi
}

pub(crate) async fn run(s: &Sizes, rows: &mut Rows, peak_rss: u64) {
    let peak_rss = peak_rss.max(soak(s, rows).await);
    let dir = resources(&[("pubsub.yaml", PUBSUB)]);
    let idle = Sidecar::start(dir.path(), None, &[], &["--log-level", "warn"]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (idle_rss, _) = proc_stats(idle.child.id().unwrap());
    row(
        rows,
        "RSS of the perch process".into(),
        format!(
            "idle {:.1} MiB, peak {:.1} MiB",
            idle_rss as f64 / 1024.0,
            peak_rss as f64 / 1024.0
        ),
        "".into(),
        "".into(),
        "peak over every run above".into(),
    );
}
