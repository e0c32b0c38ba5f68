//! Consuming: one consumer per consumer group covers every subscribed
//! topic; records go to each partition's [`Ledger`], which decides what is
//! handed out, what waits, when to pause, and what may be committed. This
//! file does the I/O around it: the poll loop, the topic list, pause and
//! resume, storing offsets, and the ack handles.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;

use super::ledger::{Flow, Ledger};
use super::rebalance::GroupContext;
use super::record::{record_of, Record};
use crate::broker::{AckHandle, BoxFuture, BrokerError, Delivery, Lag};

/// One consumer group's consumer and its per-partition bookkeeping.
pub(super) struct Group {
    pub(super) name: String,
    pub(super) consumer: StreamConsumer<GroupContext>,
    pub(super) state: Arc<Mutex<GroupState>>,
    pub(super) escape_headers: bool,
    pub(super) exclude: Option<regex::Regex>,
    /// The subscribed topic list changed.
    pub(super) topics_changed: tokio::sync::Notify,
}

/// Applies the group's topic list to the consumer, 200 ms after the last
/// change, so that subscriptions started together join the group once.
pub(super) async fn apply_topics(group: Weak<Group>) {
    let mut applied: Vec<String> = vec![];
    loop {
        {
            // Upgraded for a bounded wait only, so a dropped broker ends
            // the task.
            let Some(g) = group.upgrade() else { return };
            let changed = g.topics_changed.notified();
            if tokio::time::timeout(Duration::from_secs(5), changed)
                .await
                .is_err()
            {
                continue;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let Some(g) = group.upgrade() else { return };
        let topics = g.topic_names();
        if topics == applied {
            continue;
        }
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        match g.consumer.subscribe(&names) {
            Ok(()) => {
                tracing::info!(group = %g.name, topics = ?topics, "kafka consumer subscribed");
                applied = topics;
            }
            Err(e) => {
                tracing::error!(group = %g.name, error = %e, "kafka subscribe failed; retrying");
                g.topics_changed.notify_one();
            }
        }
    }
}

impl Group {
    /// The topics subscribed in this group, in order.
    fn topic_names(&self) -> Vec<String> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .topics
            .keys()
            .cloned()
            .collect()
    }
}

/// One subscription of the group: where its deliveries go, and how many
/// of one partition may be out at once.
pub(super) struct TopicSub {
    pub(super) tx: mpsc::UnboundedSender<Delivery>,
    pub(super) window: usize,
}

/// One assigned partition: its ledger, and the flag shared with the
/// deliveries handed out (false once revoked).
pub(super) struct Part {
    pub(super) owned: Arc<AtomicBool>,
    pub(super) ledger: Ledger<Record>,
}

#[derive(Default)]
pub(super) struct GroupState {
    pub(super) topics: BTreeMap<String, TopicSub>,
    pub(super) parts: HashMap<(String, i32), Part>,
}

type Deliveries = Vec<Delivery>;

impl GroupState {
    /// Hands out waiting records of every partition of `topic`.
    pub(super) fn pump_topic(&mut self, group: &Arc<Group>, topic: &str) -> Deliveries {
        let keys: Vec<(String, i32)> = self
            .parts
            .keys()
            .filter(|(t, _)| t == topic)
            .cloned()
            .collect();
        let mut failed = vec![];
        for k in keys {
            failed.extend(self.pump(group, &k));
        }
        failed
    }

    /// Hands out waiting records of one partition up to its window, in
    /// offset order, and pauses or resumes the partition as its ledger
    /// says. Sends happen under the lock (unbounded, never blocking) so the
    /// order on the channel is the offset order; deliveries whose channel
    /// is closed are returned, to be dropped after the lock is released.
    fn pump(&mut self, group: &Arc<Group>, key: &(String, i32)) -> Deliveries {
        let mut failed = vec![];
        let Some(sub) = self.topics.get(&key.0) else {
            return failed;
        };
        let Some(part) = self.parts.get_mut(key) else {
            return failed;
        };
        while !sub.tx.is_closed() {
            let Some((_, rec)) = part.ledger.take(sub.window) else {
                break;
            };
            let d = Delivery {
                topic: rec.topic.clone(),
                data: rec.data.clone(),
                content_type: rec.content_type.clone(),
                metadata: rec.metadata.clone(),
                lane: rec.partition,
                owned: Some(part.owned.clone()),
                ack: Box::new(KafkaAck {
                    group: Arc::downgrade(group),
                    owned: part.owned.clone(),
                    record: Some(rec),
                }),
            };
            if let Err(e) = sub.tx.send(d) {
                failed.push(e.0);
                break;
            }
        }
        let tpl = || {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&key.0, key.1);
            tpl
        };
        match part.ledger.flow() {
            Flow::Keep => {}
            Flow::Pause => {
                if group.consumer.pause(&tpl()).is_ok() {
                    tracing::debug!(topic = %key.0, partition = key.1, next = part.ledger.next(), "partition paused");
                    part.ledger.paused(true);
                }
            }
            Flow::ResumeAt(next) => {
                if group.consumer.resume(&tpl()).is_ok() {
                    tracing::debug!(topic = %key.0, partition = key.1, next, "partition resumed");
                    part.ledger.paused(false);
                    // librdkafka's resume does not wake the broker thread,
                    // which then idles up to a second before fetching
                    // again; a seek to the next offset (asynchronous,
                    // timeout 0) restarts the fetch at once. What was
                    // fetched before the pause was purged, so the position
                    // is the same.
                    if let Err(e) =
                        group
                            .consumer
                            .seek(&key.0, key.1, Offset::Offset(next), Duration::ZERO)
                    {
                        tracing::debug!(error = %e, "seek after resume");
                    }
                }
            }
        }
        failed
    }

    /// Records a finished offset and stores the new commit position.
    fn finish(&mut self, group: &Group, key: &(String, i32), offset: i64) {
        let Some(part) = self.parts.get_mut(key) else {
            return;
        };
        let Some(position) = part.ledger.finished(offset) else {
            return;
        };
        let mut tpl = TopicPartitionList::new();
        if tpl
            .add_partition_offset(&key.0, key.1, Offset::Offset(position))
            .is_ok()
            && group.consumer.store_offsets(&tpl).is_ok()
        {
            part.ledger.stored(position);
        }
    }
}

/// Receives records and hands them to the subscriptions, until the group
/// is dropped.
pub(super) async fn poll_loop(group: Weak<Group>) {
    loop {
        let Some(g) = group.upgrade() else { return };
        // The timeout lets the loop notice the group was dropped. A resumed
        // partition needs no wake-up here: the seek after the resume starts
        // its fetch, and the records wake the receive.
        let received = tokio::time::timeout(Duration::from_millis(500), g.consumer.recv()).await;
        let failed = match received {
            Err(_) => vec![],
            Ok(Err(e)) => {
                tracing::warn!(group = %g.name, error = %e, "kafka consumer error");
                tokio::time::sleep(Duration::from_millis(100)).await;
                vec![]
            }
            Ok(Ok(m)) => {
                let rec = record_of(&g, &m);
                let key = (rec.topic.clone(), rec.partition);
                let mut s = g
                    .state
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let part = s.parts.entry(key.clone()).or_insert_with(|| Part {
                    owned: Arc::new(AtomicBool::new(true)),
                    ledger: Ledger::starting_at(rec.offset),
                });
                let (offset, bytes) = (rec.offset, rec.data.len());
                part.ledger.receive(offset, rec, bytes);
                s.pump(&g, &key)
            }
        };
        drop(failed);
    }
}

/// High watermark minus committed offset for each assigned partition.
pub(super) fn group_lag(g: &Group) -> Vec<Lag> {
    // Every partition of every subscribed topic, not only the ones this
    // member owns: the lag of the whole group (what an autoscaler needs).
    let timeout = Duration::from_secs(2);
    let topics = g.topic_names();
    let mut tpl = TopicPartitionList::new();
    for t in &topics {
        if let Ok(md) = g.consumer.fetch_metadata(Some(t), timeout) {
            for mt in md.topics() {
                for p in mt.partitions() {
                    tpl.add_partition(mt.name(), p.id());
                }
            }
        }
    }
    let Ok(committed) = g.consumer.committed_offsets(tpl, timeout) else {
        return vec![];
    };
    committed
        .elements()
        .iter()
        .filter_map(|e| {
            let (low, high) = g
                .consumer
                .fetch_watermarks(e.topic(), e.partition(), timeout)
                .ok()?;
            let from = match e.offset() {
                Offset::Offset(o) => o,
                _ => low,
            };
            Some(Lag {
                topic: e.topic().to_owned(),
                partition: e.partition(),
                messages: (high - from).max(0),
            })
        })
        .collect()
}

struct KafkaAck {
    group: Weak<Group>,
    owned: Arc<AtomicBool>,
    record: Option<Record>,
}

impl KafkaAck {
    /// Finishes (`done`) or returns the record to waiting; ignored once the
    /// partition was revoked.
    fn settle(&mut self, done: bool) {
        let Some(rec) = self.record.take() else {
            return;
        };
        let Some(group) = self.group.upgrade() else {
            return;
        };
        if !self.owned.load(Ordering::Acquire) {
            return;
        }
        let key = (rec.topic.clone(), rec.partition);
        let failed = {
            let mut s = group
                .state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let Some(part) = s.parts.get_mut(&key) else {
                return;
            };
            if !Arc::ptr_eq(&part.owned, &self.owned) {
                return;
            }
            if done {
                s.finish(&group, &key, rec.offset);
            } else {
                let (offset, bytes) = (rec.offset, rec.data.len());
                part.ledger.returned(offset, rec, bytes);
            }
            s.pump(&group, &key)
        };
        drop(failed);
    }
}

impl AckHandle for KafkaAck {
    fn ack(mut self: Box<Self>) -> BoxFuture<'static, Result<(), BrokerError>> {
        self.settle(true);
        Box::pin(async { Ok(()) })
    }
    fn nack(mut self: Box<Self>) -> BoxFuture<'static, Result<(), BrokerError>> {
        self.settle(false);
        Box::pin(async { Ok(()) })
    }
}

impl Drop for KafkaAck {
    fn drop(&mut self) {
        self.settle(false);
    }
}
