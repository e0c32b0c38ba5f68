//! The registry: every loaded component with what runs it (a broker per
//! pub/sub component, a store per store component) and the resiliency
//! documents. Built once at start-up, never changed after.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::broker::Broker;
use crate::config::resiliency::Resiliency;
use crate::config::{PubsubComponent, Resources};
use crate::store::Store;

/// One pub/sub component with its running broker and, if it has an
/// `outboxStore`, the outbox the publish path falls back to.
pub struct Pubsub {
    /// The component's configuration.
    pub component: PubsubComponent,
    /// Its broker.
    pub broker: Arc<dyn Broker>,
    /// The `outboxStore`, if set.
    pub outbox: Option<Arc<dyn Store>>,
    /// What waits in the outbox, per topic (kept by the publish path,
    /// cleared by the relay).
    pub backlog: super::backlog::Backlog,
    /// Resiliency for publishes (`targets.components.<name>.outbound`).
    pub outbound: crate::resilience::outbound::Outbound,
}

/// Components by name, with what runs them.
pub struct Registry {
    /// Pub/sub components by name.
    pub pubsubs: BTreeMap<String, Arc<Pubsub>>,
    /// Store components by name.
    pub stores: BTreeMap<String, Arc<dyn Store>>,
    /// Each store component's `spec.type`, by name.
    pub store_types: BTreeMap<String, &'static str>,
    /// `Resiliency` documents (policies applied to deliveries).
    pub resiliency: Vec<Resiliency>,
}

impl Registry {
    /// Builds brokers and stores for the loaded components; fails with the
    /// component's name when a client library refuses its settings.
    pub fn build(resources: &Resources) -> Result<Self, String> {
        let stores: BTreeMap<String, Arc<dyn Store>> = resources
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
                let broker = crate::broker::build(&c.name, &c.kind)
                    .map_err(|e| format!("component {}: {e}", c.name))?;
                let pubsub = Pubsub {
                    component: c.clone(),
                    broker,
                    outbox: c.outbox_store.as_ref().and_then(|n| stores.get(n).cloned()),
                    backlog: Default::default(),
                    outbound: crate::resilience::outbound::Outbound::for_pubsub(
                        &resources.resiliency,
                        &c.name,
                    ),
                };
                Ok((c.name.clone(), Arc::new(pubsub)))
            })
            .collect::<Result<_, String>>()?;
        let store_types = resources
            .stores
            .iter()
            .map(|c| (c.name.clone(), c.type_name()))
            .collect();
        Ok(Self {
            pubsubs,
            stores,
            store_types,
            resiliency: resources.resiliency.clone(),
        })
    }
}
