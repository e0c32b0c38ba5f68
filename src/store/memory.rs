//! `store.in-memory`: the store protocol in this process, bounded. For the
//! demo and unit tests; it does not survive a restart or span replicas.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::{Claim, Finish, Key, Store, StoreError};
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
}

/// An outbox entry: id, pubsub, message.
type Kept = (i64, String, Message);

impl MemoryStore {
    /// A store keeping at most `max_entries` keys.
    pub fn new(max_entries: usize, lease: Duration, retention: Duration) -> Self {
        Self {
            max_entries,
            lease,
            retention,
            entries: Mutex::new(HashMap::new()),
            outbox: Mutex::new((0, vec![])),
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
        let mut entries = self.entries.lock().expect("store lock");
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
                            attempts: 1,
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
                    e.attempts = 1;
                    Claim::Owned { attempts: 1 }
                }
                Some(e) => match e.state {
                    State::InProgress { lease_until } if lease_until > now => Claim::Busy,
                    _ => {
                        e.state = State::InProgress {
                            lease_until: now + self.lease,
                        };
                        e.attempts += 1;
                        Claim::Owned {
                            attempts: e.attempts,
                        }
                    }
                },
            })
            .collect();
        Box::pin(async move { Ok(out) })
    }

    fn finish(&self, keys: Vec<Key>, how: Finish) -> BoxFuture<'_, Result<Vec<bool>, StoreError>> {
        let now = Instant::now();
        let mut entries = self.entries.lock().expect("store lock");
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

    fn release(&self, keys: Vec<Key>) -> BoxFuture<'_, Result<(), StoreError>> {
        let now = Instant::now();
        let mut entries = self.entries.lock().expect("store lock");
        for k in &keys {
            if let Some(e) = entries.get_mut(k) {
                if matches!(e.state, State::InProgress { .. }) {
                    e.state = State::InProgress { lease_until: now };
                }
            }
        }
        Box::pin(async { Ok(()) })
    }

    fn purge(&self) -> BoxFuture<'_, Result<u64, StoreError>> {
        let now = Instant::now();
        let mut entries = self.entries.lock().expect("store lock");
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
        let mut o = self.outbox.lock().expect("outbox lock");
        for m in msgs {
            o.0 += 1;
            let id = o.0;
            o.1.push((id, pubsub.to_owned(), m));
        }
        Box::pin(async { Ok(()) })
    }

    fn outbox_peek(
        &self,
        pubsub: &str,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<(i64, Message)>, StoreError>> {
        let o = self.outbox.lock().expect("outbox lock");
        let out =
            o.1.iter()
                .filter(|(_, p, _)| p == pubsub)
                .take(limit)
                .map(|(id, _, m)| (*id, m.clone()))
                .collect();
        Box::pin(async move { Ok(out) })
    }

    fn outbox_delete(&self, ids: Vec<i64>) -> BoxFuture<'_, Result<(), StoreError>> {
        self.outbox
            .lock()
            .expect("outbox lock")
            .1
            .retain(|(id, _, _)| !ids.contains(id));
        Box::pin(async { Ok(()) })
    }

    fn outbox_depth(&self, pubsub: &str) -> BoxFuture<'_, Result<u64, StoreError>> {
        let n = self
            .outbox
            .lock()
            .expect("outbox lock")
            .1
            .iter()
            .filter(|(_, p, _)| p == pubsub)
            .count() as u64;
        Box::pin(async move { Ok(n) })
    }
}
