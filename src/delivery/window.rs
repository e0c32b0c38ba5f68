//! Ordering chains: each message waits for the previous message of its
//! chain (its lane, or its key); different chains run concurrently.

use std::collections::BTreeMap;

/// The ordering key of a message: `partitionKey`, else `__key` (Kafka).
pub(super) fn ordering_key(md: &BTreeMap<String, String>) -> Option<String> {
    md.get("partitionKey").or_else(|| md.get("__key")).cloned()
}

/// What a message waits behind: its lane (`partition` order) or its key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum Chain {
    Lane(i32),
    Key(String),
}

/// Ordering chains: each message waits for the previous message of its
/// chain (its lane, or its key); different chains run concurrently.
#[derive(Default)]
pub(super) struct Chains {
    tails: std::collections::HashMap<Chain, tokio::sync::oneshot::Receiver<()>>,
}

impl Chains {
    /// Returns what the new message waits for, and what it signals when done.
    /// Keyless messages have no order to keep.
    pub(super) fn enqueue(
        &mut self,
        key: Option<Chain>,
        window: usize,
    ) -> (
        Option<tokio::sync::oneshot::Receiver<()>>,
        Option<tokio::sync::oneshot::Sender<()>>,
    ) {
        let Some(key) = key else { return (None, None) };
        if self.tails.len() > window * 2 {
            // Forget keys whose last message has finished; keeps memory bounded.
            self.tails.retain(|_, rx| {
                matches!(
                    rx.try_recv(),
                    Err(tokio::sync::oneshot::error::TryRecvError::Empty)
                )
            });
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let previous = self.tails.insert(key, rx);
        (previous, Some(tx))
    }
}
