//! The app's programmatic subscriptions (`GET /dapr/subscribe`), and the
//! client the engine calls the app with.

use std::time::Duration;

use tokio::sync::watch;

use super::app::AppClient;
use super::retry::Backoff;
use crate::config::subscription::programmatic;
use crate::config::SubscriptionSpec;
use crate::state::Settings;

/// Fetches the app's programmatic subscriptions, retrying with backoff until
/// the app answers with a list (Dapr gives up after 10 s; a slow app then
/// has none): a connection failure, a 5xx or an answer that is not a list
/// is asked again, logged at ERROR. 404 means none. Returns empty when
/// `stopping` fires first.
pub async fn discover(
    settings: &Settings,
    mut stopping: watch::Receiver<bool>,
) -> Vec<SubscriptionSpec> {
    let Some(client) = app_client(settings) else {
        return vec![];
    };
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    let mut failures = 0u32;
    loop {
        let failure = match client.get_subscriptions().await {
            Some((200, body)) => match programmatic(&body) {
                Ok((specs, skipped)) => {
                    for why in &skipped {
                        tracing::warn!(
                            "the app's /dapr/subscribe: {why}; that subscription is ignored"
                        );
                    }
                    return specs;
                }
                Err(e) => Some(format!("the answer is {e}")),
            },
            Some((404, _)) => return vec![],
            // A failing endpoint is not "no subscriptions": asked again
            // (the sidecar is not ready meanwhile, which shows).
            Some((status, _)) => Some(format!("it answered {status}")),
            None => None,
        };
        if let Some(why) = failure {
            failures += 1;
            if failures == 1 || failures.is_multiple_of(30) {
                tracing::error!(
                    failures,
                    "the app's /dapr/subscribe failed ({why}); asking again"
                );
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff.next_delay()) => {}
            _ = stopping.wait_for(|s| *s) => return vec![],
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
