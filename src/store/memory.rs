//! `store.in-memory`: the store protocol in this process, bounded. For the
//! demo and unit tests; it does not survive a restart or span replicas.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::{Claim, Finish, Key, OutboxDepth, Pass, RelaySend, Relayed, Store, StoreError};
use crate::message::{BoxFuture, Message};

#[derive(Debug)]
enum State {
    InProgress { lease_until: Instant },
    Finished { at: Instant, how: Finish },
}

#[derive(Debug)]
struct Entry {
    state: State,
    attempts: u32,
}

/// The in-memory store.
pub struct MemoryStore {
    max_entries: usize,
    lease: Duration,
    retention: Duration,
    entries: Mutex<HashMap<Key, Entry>>,
    /// The last id given, and the kept messages in id order.
    outbox: Mutex<(i64, Vec<Kept>)>,
    /// Held by the relay pass in progress.
    relaying: tokio::sync::Mutex<()>,
}

/// An outbox entry.
struct Kept {
    id: i64,
    pubsub: String,
    msg: Message,
    /// Why the broker refused it for good, once parked.
    parked: Option<String>,
}

impl MemoryStore {
    /// A store keeping at most `max_entries` keys.
    pub fn new(max_entries: usize, lease: Duration, retention: Duration) -> Self {
        Self {
            max_entries,
            lease,
            retention,
            entries: Mutex::new(HashMap::new()),
            outbox: Mutex::new((0, vec![])),
            relaying: tokio::sync::Mutex::new(()),
        }
    }

    /// Applies `f` to each of `keys` that is in progress.
    fn each_in_progress(&self, keys: &[Key], mut f: impl FnMut(&mut Entry)) {
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for k in keys {
            if let Some(e) = entries
                .get_mut(k)
                .filter(|e| matches!(e.state, State::InProgress { .. }))
            {
                f(e);
            }
        }
    }

    /// Makes room by forgetting the oldest finished keys (a tenth at once).
    fn evict(&self, entries: &mut HashMap<Key, Entry>) {
        if entries.len() < self.max_entries {
            return;
        }
        let mut finished: Vec<(Instant, Key)> = entries
            .iter()
            .filter_map(|(k, e)| match e.state {
                State::Finished { at, .. } => Some((at, k.clone())),
                State::InProgress { .. } => None,
            })
            .collect();
        finished.sort();
        for (_, k) in finished.into_iter().take(self.max_entries / 10 + 1) {
            entries.remove(&k);
        }
    }
}

impl Store for MemoryStore {
    fn claim(&self, keys: Vec<Key>) -> BoxFuture<'_, Result<Vec<Claim>, StoreError>> {
        let now = Instant::now();
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.evict(&mut entries);
        let out = keys
            .into_iter()
            .map(|k| match entries.get_mut(&k) {
                None => {
                    entries.insert(
                        k,
                        Entry {
                            state: State::InProgress {
                                lease_until: now + self.lease,
                            },
                            attempts: 0,
                        },
                    );
                    Claim::Owned { attempts: 1 }
                }
                Some(Entry {
                    state:
                        State::Finished {
                            how: Finish::Done, ..
                        },
                    ..
                }) => Claim::Done,
                // Dead-lettered, never delivered: a replay is claimed anew.
                Some(
                    e @ Entry {
                        state:
                            State::Finished {
                                how: Finish::Dead, ..
                            },
                        ..
                    },
                ) => {
                    e.state = State::InProgress {
                        lease_until: now + self.lease,
                    };
                    e.attempts = 0;
                    Claim::Owned { attempts: 1 }
                }
                Some(e) => match e.state {
                    State::InProgress { lease_until } if lease_until > now => Claim::Busy,
                    _ => {
                        e.state = State::InProgress {
                            lease_until: now + self.lease,
                        };
                        Claim::Owned {
                            attempts: e.attempts + 1,
                        }
                    }
                },
            })
            .collect();
        Box::pin(async move { Ok(out) })
    }

    fn finish(&self, keys: Vec<Key>, how: Finish) -> BoxFuture<'_, Result<Vec<bool>, StoreError>> {
        let now = Instant::now();
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let out = keys
            .iter()
            .map(|k| match entries.get_mut(k) {
                Some(e) if matches!(e.state, State::InProgress { .. }) => {
                    e.state = State::Finished { at: now, how };
                    true
                }
                _ => false,
            })
            .collect();
        Box::pin(async move { Ok(out) })
    }

    fn started(&self, keys: Vec<Key>) -> BoxFuture<'_, Result<(), StoreError>> {
        self.each_in_progress(&keys, |e| e.attempts += 1);
        Box::pin(async { Ok(()) })
    }

    fn release(&self, keys: Vec<Key>) -> BoxFuture<'_, Result<(), StoreError>> {
        let now = Instant::now();
        self.each_in_progress(&keys, |e| e.state = State::InProgress { lease_until: now });
        Box::pin(async { Ok(()) })
    }

    fn purge(&self) -> BoxFuture<'_, Result<u64, StoreError>> {
        let now = Instant::now();
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let before = entries.len();
        entries.retain(|_, e| match e.state {
            State::Finished { at, .. } => now.duration_since(at) < self.retention,
            State::InProgress { .. } => true,
        });
        let purged = (before - entries.len()) as u64;
        Box::pin(async move { Ok(purged) })
    }

    fn health(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn outbox_put(
        &self,
        pubsub: &str,
        msgs: Vec<Message>,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let mut o = self
            .outbox
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for m in msgs {
            o.0 += 1;
            let id = o.0;
            o.1.push(Kept {
                id,
                pubsub: pubsub.to_owned(),
                msg: m,
                parked: None,
            });
        }
        Box::pin(async { Ok(()) })
    }

    fn outbox_relay<'a>(
        &'a self,
        pubsub: &'a str,
        limit: usize,
        send: RelaySend<'a>,
    ) -> BoxFuture<'a, Result<Pass, StoreError>> {
        Box::pin(async move {
            // One relay at a time, as the Postgres store's advisory lock.
            let Ok(_relaying) = self.relaying.try_lock() else {
                return Ok(Pass::Busy);
            };
            let kept: Vec<(i64, Message)> = {
                let o = self
                    .outbox
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                o.1.iter()
                    .filter(|k| k.pubsub == pubsub && k.parked.is_none())
                    .take(limit)
                    .map(|k| (k.id, k.msg.clone()))
                    .collect()
            };
            if kept.is_empty() {
                return Ok(Pass::Relayed(vec![]));
            }
            let answers = send(kept.iter().map(|(_, m)| m.clone()).collect()).await;
            let mut o = self
                .outbox
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for ((id, _), a) in kept.iter().zip(&answers) {
                match a {
                    Relayed::Sent => o.1.retain(|k| k.id != *id),
                    Relayed::Park(why) => {
                        if let Some(k) = o.1.iter_mut().find(|k| k.id == *id) {
                            k.parked = Some(why.clone());
                        }
                    }
                    Relayed::Retry => {}
                }
            }
            Ok(Pass::Relayed(super::tally(&kept, &answers)))
        })
    }

    fn outbox_depth(&self, pubsub: &str) -> BoxFuture<'_, Result<OutboxDepth, StoreError>> {
        let mut depth = OutboxDepth::default();
        for k in self
            .outbox
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .1
            .iter()
        {
            if k.pubsub != pubsub {
                continue;
            }
            if k.parked.is_some() {
                depth.parked += 1;
            } else {
                *depth.waiting.entry(k.msg.topic.clone()).or_default() += 1;
            }
        }
        Box::pin(async move { Ok(depth) })
    }
}
