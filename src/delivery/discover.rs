//! The app's programmatic subscriptions (`GET /dapr/subscribe`), and the
//! client the engine calls the app with.

use std::time::Duration;

use tokio::sync::watch;

use super::app::AppClient;
use super::context::Sink;
use super::retry::Backoff;
use crate::config::subscription::programmatic;
use crate::config::SubscriptionSpec;
use crate::state::{AppProtocol, Settings};

/// Fetches the app's programmatic subscriptions, retrying with backoff until
/// the app answers with a list (Dapr gives up after 10 s; a slow app then
/// has none): a connection failure, a 5xx or an answer that is not a list
/// is asked again, logged at ERROR. 404 means none. Returns empty when
/// `stopping` fires first.
pub async fn discover(
    settings: &Settings,
    mut stopping: watch::Receiver<bool>,
) -> Vec<SubscriptionSpec> {
    let client = match app_client(settings) {
        None => return vec![],
        Some(Sink::GrpcApp(c)) => return discover_grpc(&c, stopping).await,
        Some(Sink::App(c)) => c,
        Some(Sink::Stream(_)) => unreachable!("the app is never a stream"),
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

/// `ListTopicSubscriptions`, asked again until the app answers
/// (`UNIMPLEMENTED` is none, as daprd).
async fn discover_grpc(
    client: &super::app_grpc::GrpcAppClient,
    mut stopping: watch::Receiver<bool>,
) -> Vec<SubscriptionSpec> {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    let mut failures = 0u32;
    loop {
        match client.list_subscriptions().await {
            Ok(subs) => return subs,
            Err(why) => {
                failures += 1;
                if failures == 1 || failures.is_multiple_of(30) {
                    tracing::error!(failures, "the app's {why}; asking again");
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff.next_delay()) => {}
            _ = stopping.wait_for(|s| *s) => return vec![],
        }
    }
}

/// The app's client for `--app-protocol`; `None` without `--app-port`.
pub(super) fn app_client(s: &Settings) -> Option<Sink> {
    let port = s.app_port?;
    Some(match s.app_protocol {
        AppProtocol::Http => Sink::App(AppClient::new(
            &s.app_channel_address,
            port,
            &s.app_id,
            s.app_api_token.clone(),
        )),
        AppProtocol::Grpc => Sink::GrpcApp(super::app_grpc::GrpcAppClient::new(
            &s.app_channel_address,
            port,
            s.app_api_token.clone(),
        )),
    })
}
