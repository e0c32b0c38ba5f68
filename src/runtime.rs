//! The sidecar's life cycle: build brokers from the loaded resources, serve
//! the API, discover subscriptions, start delivery, and drain on shutdown.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};

use crate::broker::Broker;
use crate::config::{PubsubComponent, Resources, SubscriptionSpec};
use crate::delivery;

/// Process settings (flags with env fallbacks; see `cli`).
#[derive(Debug, Clone)]
pub struct Settings {
    /// `--app-id`.
    pub app_id: String,
    /// `--app-port`; without it there is no app channel and no subscriptions.
    pub app_port: Option<u16>,
    /// `--app-channel-address`.
    pub app_channel_address: String,
    /// `--app-max-concurrency`; `None` is unlimited.
    pub app_max_concurrency: Option<usize>,
    /// `DAPR_API_TOKEN`.
    pub api_token: Option<String>,
    /// `APP_API_TOKEN`, sent to the app as `dapr-api-token`.
    pub app_api_token: Option<String>,
    /// `--max-body-size` in bytes.
    pub max_body_size: usize,
    /// `--dapr-graceful-shutdown-seconds`.
    pub graceful_shutdown: Duration,
    /// `--enable-app-health-check` and its settings; `None` when off.
    pub app_health: Option<AppHealthCheck>,
}

/// How the app's health is probed (`--app-health-*` flags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppHealthCheck {
    /// Path probed with GET.
    pub path: String,
    /// Time between probes.
    pub interval: Duration,
    /// Time a probe may take.
    pub timeout: Duration,
    /// Consecutive failures that make the app unhealthy.
    pub threshold: u32,
}

/// One pub/sub component with its running broker.
pub struct PubsubEntry {
    /// The component's configuration.
    pub component: PubsubComponent,
    /// Its broker.
    pub broker: Arc<dyn Broker>,
    /// The `outboxStore`, if set.
    pub outbox: Option<Arc<dyn crate::store::Store>>,
    /// Messages waiting in the outbox (as last counted).
    pub outbox_pending: std::sync::atomic::AtomicU64,
}

/// State shared by the API and the delivery engine.
pub struct Shared {
    /// Process settings.
    pub settings: Settings,
    /// Pub/sub components by name.
    pub pubsubs: BTreeMap<String, PubsubEntry>,
    /// Store components by name.
    pub stores: BTreeMap<String, Arc<dyn crate::store::Store>>,
    /// Active subscriptions, for the metadata API.
    pub subscriptions: RwLock<Vec<SubscriptionSpec>>,
    /// Subscriptions refused by scoping (reported, never retried silently).
    pub denied: RwLock<Vec<SubscriptionSpec>>,
    /// Resiliency documents (policies applied to deliveries).
    pub resiliency: Vec<crate::config::resiliency::Resiliency>,
    /// Readiness latch behind `/v1.0/healthz`.
    pub ready: watch::Sender<bool>,
    /// The app is healthy: deliveries run only while this is true.
    pub app_healthy: watch::Sender<bool>,
    /// `PUT /v1.0/metadata/{key}` attributes.
    pub extended: Mutex<BTreeMap<String, String>>,
    shutdown: Notify,
    shutdown_requested: AtomicBool,
}

impl Shared {
    /// Builds brokers for the loaded components; fails with the component's
    /// name when a client library refuses its settings.
    pub fn build(settings: Settings, resources: &Resources) -> Result<Arc<Self>, String> {
        let stores: BTreeMap<String, Arc<dyn crate::store::Store>> = resources
            .stores
            .iter()
            .map(|c| {
                let store =
                    crate::store::build(c).map_err(|e| format!("component {}: {e}", c.name))?;
                Ok((c.name.clone(), store))
            })
            .collect::<Result<_, String>>()?;
        let pubsubs = resources
            .pubsubs
            .iter()
            .map(|c| {
                let broker =
                    crate::broker::build(c).map_err(|e| format!("component {}: {e}", c.name))?;
                Ok((
                    c.name.clone(),
                    PubsubEntry {
                        component: c.clone(),
                        broker,
                        outbox: c.outbox_store.as_ref().and_then(|n| stores.get(n).cloned()),
                        outbox_pending: Default::default(),
                    },
                ))
            })
            .collect::<Result<_, String>>()?;
        Ok(Arc::new(Self {
            settings,
            pubsubs,
            stores,
            subscriptions: RwLock::new(vec![]),
            resiliency: resources.resiliency.clone(),
            denied: RwLock::new(vec![]),
            ready: watch::Sender::new(false),
            app_healthy: watch::Sender::new(false),
            extended: Mutex::new(BTreeMap::new()),
            shutdown: Notify::new(),
            shutdown_requested: AtomicBool::new(false),
        }))
    }

    /// Asks the process to shut down (`POST /v1.0/shutdown`).
    pub fn request_shutdown(&self) {
        self.shutdown_requested.store(true, Ordering::Release);
        self.shutdown.notify_waiters();
    }

    /// Resolves once shutdown was requested through the API.
    pub async fn shutdown_requested(&self) {
        loop {
            let notified = self.shutdown.notified();
            if self.shutdown_requested.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }
}

/// Runs the sidecar on the given listeners until `signal` resolves or the
/// API asks to stop, then drains deliveries within the grace period.
pub async fn run(
    shared: Arc<Shared>,
    listeners: Vec<TcpListener>,
    declared: Vec<SubscriptionSpec>,
    signal: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut servers = Vec::new();
    for l in listeners {
        let mut rx = stop_rx.clone();
        servers.push(tokio::spawn(crate::http::serve(
            l,
            shared.clone(),
            async move {
                let _ = rx.wait_for(|s| *s).await;
            },
        )));
    }
    for (name, entry) in &shared.pubsubs {
        if entry.outbox.is_some() {
            tokio::spawn(crate::outbox::relay(
                shared.clone(),
                name.clone(),
                stop_rx.clone(),
            ));
        }
    }
    let gauges = tokio::spawn(update_gauges(shared.clone()));
    let engine = delivery::Engine::new(shared.clone(), stop_rx.clone());
    let health = delivery::health::watch_app(shared.clone(), stop_rx.clone());
    let starter = {
        let shared = shared.clone();
        let engine = engine.clone();
        tokio::spawn(async move {
            let mut healthy = shared.app_healthy.subscribe();
            if shared.settings.app_port.is_some() && healthy.wait_for(|h| *h).await.is_err() {
                return;
            }
            let subs = if shared.settings.app_port.is_some() {
                let programmatic = delivery::discover(&shared, engine.stopping()).await;
                merge(declared, programmatic)
            } else {
                vec![]
            };
            engine.start(subs).await;
            shared.ready.send_replace(true);
            tracing::info!(app_id = %shared.settings.app_id, "perch is ready");
        })
    };
    tokio::select! {
        _ = signal => tracing::info!("signal received, shutting down"),
        _ = shared.shutdown_requested() => tracing::info!("shutdown requested through the API"),
    }
    shared.ready.send_replace(false);
    let _ = stop_tx.send(true);
    starter.abort();
    health.abort();
    gauges.abort();
    engine.drain(shared.settings.graceful_shutdown).await;
    for entry in shared.pubsubs.values() {
        entry.broker.close().await;
    }
    for s in servers {
        let _ = s.await;
    }
}

/// Refreshes the gauges that are read rather than counted: consumer lag,
/// broker connection and outbox depth, every 5 s.
async fn update_gauges(shared: Arc<Shared>) {
    let m = crate::telemetry::metrics::metrics();
    loop {
        for (name, store) in &shared.stores {
            m.store_connected
                .with_label_values(&[name])
                .set(i64::from(store.health().is_ok()));
        }
        for (name, entry) in &shared.pubsubs {
            m.broker_connected
                .with_label_values(&[name])
                .set(i64::from(entry.broker.health().is_ok()));
            if entry.outbox.is_some() {
                m.outbox_pending.with_label_values(&[name]).set(
                    entry
                        .outbox_pending
                        .load(std::sync::atomic::Ordering::Acquire) as i64,
                );
            }
            for l in entry.broker.lag().await {
                m.consumer_lag
                    .with_label_values(&[name, &l.topic, &l.partition.to_string()])
                    .set(l.messages);
            }
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

/// Merges declarative and programmatic subscriptions: one per pubsub+topic;
/// programmatic replaces declarative; among declaratives the first wins.
pub fn merge(
    declared: Vec<SubscriptionSpec>,
    programmatic: Vec<SubscriptionSpec>,
) -> Vec<SubscriptionSpec> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    // Programmatic first, so a declarative one for the same key is skipped.
    for s in programmatic.into_iter().chain(declared) {
        let key = (s.pubsubname.clone(), s.topic.clone());
        if seen.insert(key) {
            out.push(s);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BulkSubscribe, Route, SubscriptionSource};

    fn sub(topic: &str, path: &str, source: SubscriptionSource) -> SubscriptionSpec {
        SubscriptionSpec {
            name: String::new(),
            pubsubname: "p".into(),
            topic: topic.into(),
            rules: vec![Route {
                match_expr: String::new(),
                path: path.into(),
            }],
            dead_letter_topic: None,
            bulk: BulkSubscribe::default(),
            metadata: BTreeMap::new(),
            source,
        }
    }

    #[test]
    fn programmatic_replaces_declarative_and_first_declarative_wins() {
        use SubscriptionSource::*;
        let merged = merge(
            vec![
                sub("a", "/a1", Declarative),
                sub("a", "/a2", Declarative),
                sub("b", "/b-yaml", Declarative),
            ],
            vec![sub("b", "/b-app", Programmatic)],
        );
        let paths: Vec<(&str, &str)> = merged
            .iter()
            .map(|s| (s.topic.as_str(), s.rules[0].path.as_str()))
            .collect();
        assert_eq!(paths, [("b", "/b-app"), ("a", "/a1")]);
    }
}
