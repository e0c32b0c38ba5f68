//! The sidecar's life cycle, and the only module that ties the others
//! together: build the registry from the loaded resources, serve the API,
//! discover subscriptions, start delivery, and drain on shutdown.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::config::{Resources, SubscriptionSpec};
use crate::delivery;
use crate::state::{Registry, Settings, Shutdown, Status};

/// Everything the sidecar runs on, built once at start-up.
pub struct Sidecar {
    /// Process settings.
    pub settings: Arc<Settings>,
    /// Components with their brokers and stores.
    pub registry: Arc<Registry>,
    /// Live status (readiness, app health, metadata view).
    pub status: Arc<Status>,
    /// The token `POST /v1.0/shutdown` asks through.
    pub shutdown: Shutdown,
}

impl Sidecar {
    /// Builds brokers and stores for the loaded components; fails with the
    /// component's name when a client library refuses its settings.
    pub fn build(settings: Settings, resources: &Resources) -> Result<Self, String> {
        Ok(Self {
            settings: Arc::new(settings),
            registry: Arc::new(Registry::build(resources)?),
            status: Arc::new(Status::default()),
            shutdown: Shutdown::default(),
        })
    }
}

/// The sockets the sidecar serves its APIs on.
#[derive(Default)]
pub struct Listeners {
    /// The HTTP API (`--dapr-http-port` on each listen address).
    pub http: Vec<TcpListener>,
    /// The gRPC API (`--dapr-grpc-port`).
    pub grpc: Vec<TcpListener>,
    /// Health, outbound health and lag only (`--dapr-public-port`).
    pub public: Vec<TcpListener>,
}

/// Runs the sidecar on the given listeners until `signal` resolves or the
/// API asks to stop, then drains deliveries within the grace period.
pub async fn run(
    sidecar: Sidecar,
    listeners: Listeners,
    declared: Vec<SubscriptionSpec>,
    signal: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let Sidecar {
        settings,
        registry,
        status,
        shutdown,
    } = sidecar;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let api = crate::http::ApiState {
        settings: settings.clone(),
        registry: registry.clone(),
        status: status.clone(),
        shutdown: shutdown.clone(),
    };
    let deps = delivery::Deps {
        settings: settings.clone(),
        registry: registry.clone(),
        status: status.clone(),
    };
    let engine = delivery::Engine::new(deps.clone(), stop_rx.clone());
    let mut servers = Vec::new();
    let http = listeners.http.into_iter().map(|l| (l, false));
    for (l, public) in http.chain(listeners.public.into_iter().map(|l| (l, true))) {
        let mut rx = stop_rx.clone();
        servers.push(tokio::spawn(crate::http::serve_on(
            l,
            api.clone(),
            public,
            async move {
                let _ = rx.wait_for(|s| *s).await;
            },
        )));
    }
    for l in listeners.grpc {
        let mut rx = stop_rx.clone();
        servers.push(tokio::spawn(crate::grpc::serve(
            l,
            api.clone(),
            engine.clone(),
            async move {
                let _ = rx.wait_for(|s| *s).await;
            },
        )));
    }
    for pubsub in registry.pubsubs.values() {
        if pubsub.outbox.is_some() {
            crate::util::spawn_watched(
                "outbox relay",
                crate::publish::relay(pubsub.clone(), stop_rx.clone()),
            );
        }
    }
    let gauges = tokio::spawn(update_gauges(registry.clone()));
    let health = delivery::health::watch_app(deps.clone(), stop_rx.clone());
    let starter = {
        let deps = deps.clone();
        let engine = engine.clone();
        tokio::spawn(async move {
            let mut healthy = deps.status.app_healthy.subscribe();
            if deps.settings.app_port.is_some() && healthy.wait_for(|h| *h).await.is_err() {
                return;
            }
            let subs = if deps.settings.app_port.is_some() {
                let programmatic = delivery::discover(&deps.settings, engine.stopping()).await;
                merge(declared, programmatic)
            } else {
                vec![]
            };
            engine.start(subs).await;
            deps.status.ready.send_replace(true);
            tracing::info!(app_id = %deps.settings.app_id, "perch is ready");
        })
    };
    tokio::select! {
        _ = signal => tracing::info!("signal received, shutting down"),
        _ = shutdown.requested() => tracing::info!("shutdown requested through the API"),
    }
    status.ready.send_replace(false);
    let _ = stop_tx.send(true);
    starter.abort();
    health.abort();
    gauges.abort();
    engine.drain(settings.graceful_shutdown).await;
    // Claims of deliveries that did not finish (claimed ahead, or cut off
    // at the end of the grace period) go back now, not after their lease.
    for (name, store) in &registry.stores {
        match tokio::time::timeout(Duration::from_secs(2), store.release_held()).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!(store = %name, released = n, "unfinished claims released"),
            Ok(Err(e)) => {
                tracing::warn!(store = %name, error = %e, "claims not released; they expire with their lease")
            }
            Err(_) => {
                tracing::warn!(store = %name, "releasing claims timed out; they expire with their lease")
            }
        }
    }
    for pubsub in registry.pubsubs.values() {
        pubsub.broker.close().await;
    }
    for s in servers {
        let _ = s.await;
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Refreshes the gauges that are read rather than counted: consumer lag,
/// broker connection and outbox depth, every 5 s.
async fn update_gauges(registry: Arc<Registry>) {
    let m = crate::telemetry::metrics::metrics();
    loop {
        for (name, store) in &registry.stores {
            m.store_connected
                .with_label_values(&[name])
                .set(i64::from(store.health().is_ok()));
        }
        for (name, entry) in &registry.pubsubs {
            m.broker_connected
                .with_label_values(&[name])
                .set(i64::from(entry.broker.health().is_ok()));
            if entry.outbox.is_some() {
                m.outbox_pending
                    .with_label_values(&[name])
                    .set(entry.backlog.waiting() as i64);
                m.outbox_parked
                    .with_label_values(&[name])
                    .set(entry.backlog.parked() as i64);
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
    use std::collections::BTreeMap;

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
