//! App health (reference 8.3). Deliveries start only once the app is
//! healthy and pause while it is not:
//! - with `--enable-app-health-check`, the app is probed with `GET
//!   {--app-health-check-path}` every interval; the first 2xx makes it
//!   healthy, `threshold` failures in a row make it unhealthy, and the next
//!   2xx healthy again;
//! - without it, the app is healthy from the moment its port accepts a
//!   connection, and stays so.
//!
//! The state lives in `Status::app_healthy`; the engine waits on it before
//! taking each message (or batch) from the broker, so an unhealthy app
//! leaves messages in the broker rather than failing them into the
//! dead-letter topic.

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{app_client, Deps};
use crate::state::Status;

/// Spawns the watcher; it ends at `stop`, or at once without an app port.
pub fn watch_app(deps: Deps, mut stop: watch::Receiver<bool>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let Some(client) = app_client(&deps.settings) else {
            return;
        };
        let Some(check) = deps.settings.app_health.clone() else {
            let address = format!(
                "{}:{}",
                deps.settings.app_channel_address,
                deps.settings.app_port.unwrap_or_default()
            );
            loop {
                if tokio::net::TcpStream::connect(&address).await.is_ok() {
                    tracing::info!(%address, "app port is open; app is ready");
                    deps.status.app_healthy.send_replace(true);
                    return;
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        };
        let mut failures = 0u32;
        loop {
            let status = match &client {
                super::context::Sink::App(c) => c.probe(&check.path, check.timeout).await,
                super::context::Sink::GrpcApp(c) => c.probe(check.timeout).await,
                super::context::Sink::Stream(_) => Some(200),
            };
            let ok = status.is_some_and(|s| (200..300).contains(&s));
            if ok {
                failures = 0;
                if !deps.status.app_healthy.send_replace(true) {
                    tracing::info!(path = %check.path, "app is healthy; deliveries run");
                }
            } else {
                failures += 1;
                if failures >= check.threshold && deps.status.app_healthy.send_replace(false) {
                    tracing::warn!(path = %check.path, ?status, failures, "app is unhealthy; deliveries paused");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(check.interval) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    })
}

/// Waits until the app is healthy; `false` when `stop` fired first.
pub async fn until_healthy(status: &Status, stop: &mut watch::Receiver<bool>) -> bool {
    let mut healthy = status.app_healthy.subscribe();
    tokio::select! {
        h = healthy.wait_for(|h| *h) => h.is_ok(),
        _ = stop.wait_for(|s| *s) => false,
    }
}
