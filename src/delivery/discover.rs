//! The app's programmatic subscriptions (`GET /dapr/subscribe`), and the
//! client the engine calls the app with.

use std::time::Duration;

use tokio::sync::watch;

use super::app::AppClient;
use super::retry::Backoff;
use crate::config::subscription::ProgrammaticSubscription;
use crate::config::SubscriptionSpec;
use crate::state::Settings;

/// Fetches the app's programmatic subscriptions, retrying with backoff until
/// the app answers (Dapr gives up after 10 s; a slow app then has none).
/// 404 means none. Returns empty when `stopping` fires first.
pub async fn discover(
    settings: &Settings,
    mut stopping: watch::Receiver<bool>,
) -> Vec<SubscriptionSpec> {
    let Some(client) = app_client(settings) else {
        return vec![];
    };
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    loop {
        match client.get_subscriptions().await {
            Some((200, body)) => {
                return match serde_json::from_slice::<Vec<ProgrammaticSubscription>>(&body) {
                    Ok(items) => items
                        .into_iter()
                        .filter_map(|i| {
                            let (p, t) = (i.pubsubname.clone(), i.topic.clone());
                            let spec = i.into_spec();
                            if spec.is_none() {
                                tracing::warn!(pubsub = %p, topic = %t, "programmatic subscription has no route; ignored");
                            }
                            spec
                        })
                        .collect(),
                    Err(e) => {
                        tracing::error!(error = %e, "the app's /dapr/subscribe answer is not a list of subscriptions");
                        vec![]
                    }
                };
            }
            Some((404, _)) => return vec![],
            Some((status, _)) => {
                tracing::error!(
                    status,
                    "the app's /dapr/subscribe failed; no programmatic subscriptions"
                );
                return vec![];
            }
            None => {
                tokio::select! {
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                    _ = stopping.wait_for(|s| *s) => return vec![],
                }
            }
        }
    }
}

/// The app's client; `None` without `--app-port`.
pub(super) fn app_client(s: &Settings) -> Option<AppClient> {
    Some(AppClient::new(
        &s.app_channel_address,
        s.app_port?,
        &s.app_id,
        s.app_api_token.clone(),
    ))
}
