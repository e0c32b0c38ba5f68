//! What changes while the sidecar runs: the readiness latch behind
//! `/v1.0/healthz`, the app's health, and the metadata view (active and
//! refused subscriptions, `PUT /v1.0/metadata` attributes).

use std::collections::BTreeMap;
use std::sync::{Mutex, RwLock};

use tokio::sync::watch;

use crate::config::SubscriptionSpec;

/// The sidecar's live status.
pub struct Status {
    /// Readiness latch behind `/v1.0/healthz`.
    pub ready: watch::Sender<bool>,
    /// The app is healthy: deliveries run only while this is true.
    pub app_healthy: watch::Sender<bool>,
    /// Active subscriptions, for the metadata API.
    pub subscriptions: RwLock<Vec<SubscriptionSpec>>,
    /// Subscriptions refused by scoping (reported, never retried silently).
    pub denied: RwLock<Vec<SubscriptionSpec>>,
    /// `PUT /v1.0/metadata/{key}` attributes.
    pub extended: Mutex<BTreeMap<String, String>>,
    /// Subscriptions whose consume loop died (`pubsub/topic`: why); while
    /// any is listed, `/v1.0/healthz` answers not ready.
    pub failed: Mutex<BTreeMap<String, String>>,
}

impl Default for Status {
    /// Not ready, app not yet healthy, nothing subscribed.
    fn default() -> Self {
        Self {
            ready: watch::Sender::new(false),
            app_healthy: watch::Sender::new(false),
            subscriptions: RwLock::new(vec![]),
            denied: RwLock::new(vec![]),
            extended: Mutex::new(BTreeMap::new()),
            failed: Mutex::new(BTreeMap::new()),
        }
    }
}
