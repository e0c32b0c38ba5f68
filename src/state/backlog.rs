//! The outbox backlog of one pub/sub component, as this sidecar knows it:
//! which topics have messages waiting in the outbox (a publish to such a
//! topic is kept behind them, so order per topic holds), how many wait,
//! and how many are parked. The publish path marks topics; the relay
//! clears them from what the store holds.
//!
//! Clearing must never lose a wake-up: a topic is cleared only from a
//! store count taken after a [`Snapshot`] in which no keep of that topic
//! was in flight and none started since. A keep that began before the
//! snapshot had committed before it, so the count sees its rows; one that
//! began after it changed the topic's generation. When the count finds a
//! topic empty while keeps of it are in flight, the topic is *draining*:
//! new publishes to it wait (milliseconds) until those keeps finish and
//! the store is counted again. The relay also sets a topic draining when a
//! pass took all of it: a steady stream of publishes then waits one pass
//! instead of refilling the outbox as fast as it is relayed, so a topic
//! always leaves the outbox once the relay is faster than its publishers.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;

/// Topics with messages waiting, and the wake-ups of the relay and of
/// publishers waiting on a draining topic.
#[derive(Default)]
pub struct Backlog {
    inner: Mutex<Inner>,
    /// A keep finished: the relay may count again.
    kept: Notify,
    /// A draining topic was settled: waiting publishers route again.
    settled: Notify,
}

#[derive(Default)]
struct Inner {
    topics: BTreeMap<String, Topic>,
    /// Bumped by every keep that starts or ends, on any topic.
    generation: u64,
    /// Messages the broker refused for good, set aside.
    parked: u64,
}

#[derive(Default)]
struct Topic {
    /// Messages waiting, as last counted plus kept since.
    waiting: u64,
    /// Keeps of this topic started and not finished.
    keeping: u32,
    /// `Inner::generation` at this topic's last keep start or end.
    generation: u64,
    /// The store had none of it while keeps were in flight.
    draining: bool,
}

/// What the relay saw before it counted the store: per topic, its
/// generation and whether no keep was in flight.
#[derive(Debug, Clone, Default)]
pub struct Snapshot(BTreeMap<String, (u64, bool)>);

/// How a publish to a topic goes.
pub enum Route {
    /// Nothing of the topic waits: straight to the broker.
    Direct,
    /// Messages wait: keep this one behind them. [`Backlog::keep_started`]
    /// was done; call [`Backlog::keep_finished`] after the write.
    Keep,
}

impl Backlog {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How a publish to `topic` goes; while the topic is draining, waits
    /// (bounded) for the relay to settle it.
    pub async fn route(&self, topic: &str) -> Route {
        for _ in 0..100 {
            let wait = {
                let mut i = self.lock();
                let generation = i.generation + 1;
                match i.topics.get_mut(topic) {
                    None => return Route::Direct,
                    Some(t) if !t.draining => {
                        t.keeping += 1;
                        t.waiting += 1;
                        t.generation = generation;
                        i.generation = generation;
                        return Route::Keep;
                    }
                    // Created under the lock: a settle after it wakes it.
                    Some(_) => self.settled.notified(),
                }
            };
            let _ = tokio::time::timeout(Duration::from_millis(50), wait).await;
        }
        self.keep_started(std::iter::once(topic));
        Route::Keep
    }

    /// A keep of messages to `topics` starts (before its rows are
    /// written), whether or not they wait already (a publish the broker
    /// could not take).
    pub fn keep_started<'a>(&self, topics: impl IntoIterator<Item = &'a str>) {
        let mut i = self.lock();
        i.generation += 1;
        let generation = i.generation;
        for name in topics {
            let t = i.topics.entry(name.to_owned()).or_default();
            t.keeping += 1;
            t.waiting += 1;
            t.generation = generation;
        }
    }

    /// The keeps of `topics` finished (committed, or failed: the topics
    /// stay marked until the store is counted again); wakes the relay.
    pub fn keep_finished<'a>(&self, topics: impl IntoIterator<Item = &'a str>) {
        {
            let mut i = self.lock();
            i.generation += 1;
            let generation = i.generation;
            for name in topics {
                if let Some(t) = i.topics.get_mut(name) {
                    t.keeping = t.keeping.saturating_sub(1);
                    t.generation = generation;
                }
            }
        }
        self.kept.notify_one();
    }

    /// Taken before counting the store.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot(
            self.lock()
                .topics
                .iter()
                .map(|(n, t)| (n.clone(), (t.generation, t.keeping == 0)))
                .collect(),
        )
    }

    /// What the store holds now (waiting per topic, parked), counted after
    /// `snap`. A topic the store has none of is cleared if nothing of it
    /// was kept meanwhile, or set draining while keeps are in flight.
    pub fn counted(&self, snap: &Snapshot, waiting: BTreeMap<String, u64>, parked: u64) {
        let mut settled = false;
        {
            let mut i = self.lock();
            i.parked = parked;
            let mut gone = vec![];
            for (name, t) in i.topics.iter_mut() {
                if let Some(n) = waiting.get(name) {
                    // Believed only when no keep of the topic was in flight
                    // at the snapshot and none started since: a row being
                    // written may be missing from the count.
                    let settled = snap
                        .0
                        .get(name)
                        .is_some_and(|(g, idle)| *idle && *g == t.generation);
                    t.waiting = if settled { *n } else { t.waiting.max(*n) };
                    continue;
                }
                match snap.0.get(name) {
                    Some((g, true)) if *g == t.generation => gone.push(name.clone()),
                    _ if t.keeping > 0 => t.draining = true,
                    _ => {}
                }
            }
            for name in gone {
                settled |= i.topics.remove(&name).is_some_and(|t| t.draining);
            }
            // Topics this sidecar did not know of (kept by a replica, or
            // before a restart).
            for (name, n) in waiting {
                i.topics.entry(name).or_insert_with(|| Topic {
                    waiting: n,
                    ..Topic::default()
                });
            }
        }
        if settled {
            self.settled.notify_waiters();
        }
    }

    /// The relay caught up with `topic` (its last pass took all there
    /// was): new publishes to it wait for the rest to be relayed instead
    /// of joining the outbox, so the topic leaves it even while publishes
    /// keep arriving.
    pub fn drain(&self, topic: &str) {
        if let Some(t) = self.lock().topics.get_mut(topic) {
            t.draining = true;
        }
    }

    /// The broker cannot take `topic`'s messages again: publishes to it
    /// are kept instead of waiting.
    pub fn undrain(&self, topic: &str) {
        let was = self
            .lock()
            .topics
            .get_mut(topic)
            .is_some_and(|t| std::mem::take(&mut t.draining));
        if was {
            self.settled.notify_waiters();
        }
    }

    /// `n` messages of `topic` were relayed (or parked).
    pub fn relayed(&self, topic: &str, n: u64) {
        if let Some(t) = self.lock().topics.get_mut(topic) {
            t.waiting = t.waiting.saturating_sub(n);
        }
    }

    /// Any topic waiting (or draining).
    pub fn any_waiting(&self) -> bool {
        !self.lock().topics.is_empty()
    }

    /// Messages waiting, as last known.
    pub fn waiting(&self) -> u64 {
        self.lock().topics.values().map(|t| t.waiting).sum()
    }

    /// Messages parked, as last counted.
    pub fn parked(&self) -> u64 {
        self.lock().parked
    }

    /// Resolves after the next keep finishes (or at once if one finished
    /// since the last call).
    pub async fn kept(&self) {
        self.kept.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(t: &[(&str, u64)]) -> BTreeMap<String, u64> {
        t.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
    }

    #[test]
    fn a_count_taken_while_a_keep_was_in_flight_never_clears_its_topic() {
        let b = Backlog::default();
        b.keep_started(["a"]);
        let snap = b.snapshot();
        // The keep commits after the relay's count ran (and saw nothing).
        b.keep_finished(["a"]);
        b.counted(&snap, counts(&[]), 0);
        assert!(b.any_waiting(), "the wake-up is not lost");
        // The next count, with nothing in flight, is believed.
        let snap = b.snapshot();
        b.counted(&snap, counts(&[]), 0);
        assert!(!b.any_waiting());
    }

    #[test]
    fn a_keep_started_after_the_snapshot_is_not_cleared() {
        let b = Backlog::default();
        let snap = b.snapshot();
        b.keep_started(["a"]);
        b.counted(&snap, counts(&[("b", 2)]), 1);
        assert_eq!(b.waiting(), 3, "a is kept, b counted");
        b.keep_finished(["a"]);
        assert_eq!(b.parked(), 1);
        let snap = b.snapshot();
        b.counted(&snap, counts(&[("b", 2)]), 1);
        assert_eq!(b.waiting(), 2, "a counted empty with nothing in flight");
        b.relayed("b", 2);
        assert_eq!(b.waiting(), 0);
        assert!(b.any_waiting(), "b stays until the store says it is empty");
    }

    #[test]
    fn a_count_missing_an_in_flight_row_does_not_lower_the_depth() {
        let b = Backlog::default();
        b.keep_started(["a"]);
        b.keep_finished(["a"]);
        b.keep_started(["a"]);
        let snap = b.snapshot();
        // The store has the first row; the second is being written.
        b.counted(&snap, counts(&[("a", 1)]), 0);
        b.keep_finished(["a"]);
        assert_eq!(b.waiting(), 2);
    }

    #[tokio::test]
    async fn a_caught_up_topic_drains_even_while_publishes_keep_coming() {
        let b = std::sync::Arc::new(Backlog::default());
        b.keep_started(["a"]);
        assert!(matches!(b.route("a").await, Route::Keep));
        // The store has relayed everything; two keeps are still in flight.
        let snap = b.snapshot();
        b.counted(&snap, counts(&[]), 0);
        // A new publish waits instead of joining the outbox...
        let waiter = {
            let b = b.clone();
            tokio::spawn(async move { matches!(b.route("a").await, Route::Direct) })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!waiter.is_finished(), "waits while the topic drains");
        // ...the in-flight keeps finish (and their rows were relayed).
        b.keep_finished(["a"]);
        b.keep_finished(["a"]);
        let snap = b.snapshot();
        b.counted(&snap, counts(&[]), 0);
        assert!(waiter.await.unwrap(), "then goes straight to the broker");
        assert!(!b.any_waiting());
    }
}
