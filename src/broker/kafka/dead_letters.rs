//! `perch dlq` on Kafka: a dead-letter topic read by a consumer of its own
//! group, assigned (not subscribed: no rebalance, no other member) at the
//! group's committed offsets, up to the high watermarks seen when the
//! session opened. Nothing is committed by reading; a removed (replayed)
//! message moves its partition's committed offset past it once every
//! message before it there was removed too, so what was read and kept
//! shows again next time, in order.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message as _};
use rdkafka::{Offset, TopicPartitionList};

use super::CONTENT_TYPE;
use crate::broker::{BoxFuture, BrokerError, DeadLetters, Peeked};

/// How long the cluster has to answer (metadata, offsets, each record).
const WAIT: Duration = Duration::from_secs(10);

struct Partition {
    /// Next offset to read; the end is `high` (exclusive).
    next: i64,
    high: i64,
    /// The committed offset, and offsets removed beyond it.
    committed: i64,
    removed: BTreeSet<i64>,
}

pub(super) struct KafkaDeadLetters {
    consumer: StreamConsumer,
    topic: String,
    parts: BTreeMap<i32, Partition>,
    last: Option<(i32, i64)>,
}

/// Opens `topic` for the group `group`.
pub(super) async fn open(
    mut config: rdkafka::ClientConfig,
    topic: &str,
    group: &str,
) -> Result<Box<dyn DeadLetters>, BrokerError> {
    config
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest");
    let consumer: StreamConsumer = config
        .create()
        .map_err(|e| BrokerError::Rejected(format!("kafka consumer settings: {e}")))?;
    let (consumer, topic_owned) = (consumer, topic.to_owned());
    // librdkafka's metadata and offset calls block: off the runtime.
    let (consumer, parts) = tokio::task::spawn_blocking(move || {
        let md = consumer
            .fetch_metadata(Some(&topic_owned), WAIT)
            .map_err(|e| BrokerError::Unavailable(format!("kafka unreachable: {e}")))?;
        let t = md
            .topics()
            .iter()
            .find(|t| t.name() == topic_owned)
            .ok_or_else(|| BrokerError::Rejected(format!("topic {topic_owned} does not exist")))?;
        if t.error().is_some() || t.partitions().is_empty() {
            return Err(BrokerError::Rejected(format!(
                "topic {topic_owned} does not exist"
            )));
        }
        let mut tpl = TopicPartitionList::new();
        for p in t.partitions() {
            tpl.add_partition(&topic_owned, p.id());
        }
        let committed = consumer
            .committed_offsets(tpl, WAIT)
            .map_err(|e| BrokerError::Unavailable(format!("kafka: the group's offsets: {e}")))?;
        let mut parts = BTreeMap::new();
        for p in t.partitions() {
            let (low, high) = consumer
                .fetch_watermarks(&topic_owned, p.id(), WAIT)
                .map_err(|e| BrokerError::Unavailable(format!("kafka: watermarks: {e}")))?;
            let at = committed
                .find_partition(&topic_owned, p.id())
                .and_then(|e| match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                })
                .unwrap_or(low)
                .max(low);
            parts.insert(
                p.id(),
                Partition {
                    next: at,
                    high,
                    committed: at,
                    removed: BTreeSet::new(),
                },
            );
        }
        let mut assign = TopicPartitionList::new();
        for (id, p) in &parts {
            if p.next < p.high {
                assign
                    .add_partition_offset(&topic_owned, *id, Offset::Offset(p.next))
                    .map_err(|e| BrokerError::Rejected(format!("kafka: assign: {e}")))?;
            }
        }
        consumer
            .assign(&assign)
            .map_err(|e| BrokerError::Rejected(format!("kafka: assign: {e}")))?;
        Ok((consumer, parts))
    })
    .await
    .map_err(|e| BrokerError::Unavailable(format!("kafka: {e}")))??;
    Ok(Box::new(KafkaDeadLetters {
        consumer,
        topic: topic.to_owned(),
        parts,
        last: None,
    }))
}

impl DeadLetters for KafkaDeadLetters {
    fn next(&mut self) -> BoxFuture<'_, Result<Option<Peeked>, BrokerError>> {
        Box::pin(async move {
            loop {
                if self.parts.values().all(|p| p.next >= p.high) {
                    return Ok(None);
                }
                let m = tokio::time::timeout(WAIT, self.consumer.recv())
                    .await
                    .map_err(|_| BrokerError::Unavailable("kafka returned no record within 10 s although the partitions hold more: check that the brokers are up, then run the command again (nothing was removed that was not replayed)".into()))?
                    .map_err(|e| BrokerError::Unavailable(format!("kafka: {e}")))?;
                let Some(p) = self.parts.get_mut(&m.partition()) else {
                    continue;
                };
                // Past the end seen at the start: not this session's.
                if m.offset() >= p.high || m.offset() < p.next {
                    p.next = p.next.max(m.offset().min(p.high));
                    continue;
                }
                p.next = m.offset() + 1;
                self.last = Some((m.partition(), m.offset()));
                let mut metadata = BTreeMap::new();
                let mut content_type = None;
                if let Some(h) = m.headers() {
                    for hdr in h.iter() {
                        let v = hdr
                            .value
                            .map(|v| String::from_utf8_lossy(v).into_owned())
                            .unwrap_or_default();
                        if hdr.key == CONTENT_TYPE {
                            content_type = Some(v);
                        } else {
                            metadata.insert(hdr.key.to_owned(), v);
                        }
                    }
                }
                if let Some(k) = m.key() {
                    metadata.insert("__key".into(), String::from_utf8_lossy(k).into_owned());
                }
                metadata.insert("__partition".into(), m.partition().to_string());
                metadata.insert("__offset".into(), m.offset().to_string());
                return Ok(Some(Peeked {
                    data: bytes::Bytes::copy_from_slice(m.payload().unwrap_or_default()),
                    content_type,
                    metadata,
                    timestamp_ms: m.timestamp().to_millis(),
                }));
            }
        })
    }

    fn remove(&mut self) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async move {
            let Some((id, offset)) = self.last.take() else {
                return Ok(());
            };
            let Some(p) = self.parts.get_mut(&id) else {
                return Ok(());
            };
            p.removed.insert(offset);
            let before = p.committed;
            while p.removed.remove(&p.committed) {
                p.committed += 1;
            }
            if p.committed == before {
                return Ok(());
            }
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&self.topic, id, Offset::Offset(p.committed))
                .map_err(|e| BrokerError::Rejected(format!("kafka: commit: {e}")))?;
            self.consumer
                .commit(&tpl, CommitMode::Sync)
                .map_err(|e| BrokerError::Unavailable(format!("kafka: commit: {e}")))
        })
    }

    fn close(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let _ = tokio::task::spawn_blocking(move || drop(self)).await;
        })
    }
}
