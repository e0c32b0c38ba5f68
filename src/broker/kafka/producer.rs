//! Publishing: topic creation (`autoCreateTopics`), one record queued per
//! message, its delivery report awaited within `publishTimeout`, and
//! broker errors classified once as retryable or final.

use std::time::Duration;

use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureRecord, Producer};
use rdkafka::util::Timeout;
use std::sync::atomic::Ordering;

use super::{KafkaBroker, CONTENT_TYPE};
use crate::broker::{BrokerError, Message};

impl KafkaBroker {
    /// Creates `topic` once when auto-creation is on; an existing topic is
    /// fine, other failures are logged and left to the produce or fetch.
    /// With auto-creation off, a topic the cluster does not have is a final
    /// error (retrying cannot create it), found from the metadata once per
    /// topic instead of waiting out the publish timeout.
    pub(super) async fn ensure_topic(&self, topic: &str) -> Result<(), BrokerError> {
        if self
            .created
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(topic)
        {
            return Ok(());
        }
        if !self.cfg.auto_create_topics {
            return self.topic_exists(topic).await;
        }
        let new = NewTopic::new(
            topic,
            self.cfg.topic_partitions,
            TopicReplication::Fixed(self.cfg.topic_replication),
        );
        let opts =
            AdminOptions::new().request_timeout(Some(Timeout::After(Duration::from_secs(5))));
        let admin = match self.admin() {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(pubsub = %self.name, %topic, error = %e, "could not create topic");
                return Ok(());
            }
        };
        let created = admin.create_topics([&new], &opts).await;
        drop(admin);
        match created {
            Ok(results) => {
                let ok = results.iter().all(|r| match r {
                    Ok(_) => true,
                    Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => true,
                    Err((t, e)) => {
                        tracing::warn!(pubsub = %self.name, topic = %t, error = %e, "could not create topic");
                        false
                    }
                });
                if ok && self.wait_for_metadata(topic).await {
                    self.created
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert(topic.to_owned());
                }
            }
            Err(e) => {
                tracing::warn!(pubsub = %self.name, %topic, error = %e, "could not create topic")
            }
        }
        Ok(())
    }

    /// `Ok` when the cluster has `topic` (remembered); `Rejected` when it
    /// answers that it does not; `Unavailable` when it cannot be asked.
    async fn topic_exists(&self, topic: &str) -> Result<(), BrokerError> {
        let p = self.producer.clone();
        let t = topic.to_owned();
        let limit = self.cfg.publish_timeout.min(Duration::from_secs(10));
        let found = tokio::task::spawn_blocking(move || {
            p.client().fetch_metadata(Some(&t), limit).map(|m| {
                m.topics()
                    .iter()
                    .find(|mt| mt.name() == t)
                    .map(|mt| (mt.error(), mt.partitions().len()))
            })
        })
        .await
        .map_err(|e| BrokerError::Unavailable(format!("kafka pubsub {}: {e}", self.name)))?;
        match found {
            Ok(Some((None, n))) if n > 0 => {
                self.created
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(topic.to_owned());
                Ok(())
            }
            Ok(Some((Some(e), _)))
                if RDKafkaErrorCode::from(e) != RDKafkaErrorCode::UnknownTopicOrPartition
                    && RDKafkaErrorCode::from(e) != RDKafkaErrorCode::UnknownTopic =>
            {
                Err(BrokerError::Unavailable(format!(
                    "kafka pubsub {}: topic {topic:?}: {:?}",
                    self.name,
                    RDKafkaErrorCode::from(e)
                )))
            }
            Ok(_) => Err(BrokerError::Rejected(format!(
                "kafka pubsub {}: topic {topic:?} does not exist and autoCreateTopics is false",
                self.name
            ))),
            Err(e) => Err(self.classify(e)),
        }
    }

    /// Waits (up to 5 s) until the cluster's metadata lists `topic` with
    /// partitions, so a consumer subscribing right after the creation sees
    /// it instead of waiting for its next metadata refresh.
    async fn wait_for_metadata(&self, topic: &str) -> bool {
        for _ in 0..20 {
            let p = self.producer.clone();
            let t = topic.to_owned();
            let visible = tokio::task::spawn_blocking(move || {
                p.client()
                    .fetch_metadata(Some(&t), Duration::from_secs(1))
                    .is_ok_and(|m| {
                        m.topics()
                            .iter()
                            .any(|mt| mt.error().is_none() && !mt.partitions().is_empty())
                    })
            })
            .await
            .unwrap_or(false);
            if visible {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        tracing::warn!(pubsub = %self.name, %topic, "created topic not visible in metadata after 5 s");
        false
    }

    /// Queues one record; the future resolves on its delivery report.
    pub(super) async fn enqueue(
        &self,
        msg: &Message,
    ) -> Result<rdkafka::producer::DeliveryFuture, BrokerError> {
        let key = msg
            .metadata
            .get("partitionKey")
            .or_else(|| msg.metadata.get("__key"));
        let partition = match msg.metadata.get("partitionNumber") {
            None => None,
            Some(p) => Some(p.parse::<i32>().map_err(|_| {
                BrokerError::Rejected(format!("partitionNumber must be a whole number, got {p:?}"))
            })?),
        };
        let mut headers = OwnedHeaders::new();
        for (k, v) in crate::broker::carried_metadata(&msg.metadata) {
            if k == "__key" || k == "partitionNumber" || self.excluded(k) {
                continue;
            }
            headers = headers.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            });
        }
        if let Some(ct) = &msg.content_type {
            headers = headers.insert(Header {
                key: CONTENT_TYPE,
                value: Some(ct.as_bytes()),
            });
        }
        let deadline = tokio::time::Instant::now() + self.cfg.publish_timeout;
        let mut record = FutureRecord::to(&msg.topic)
            .payload(msg.data.as_ref())
            .headers(headers);
        if let Some(k) = key {
            record = record.key(k.as_bytes());
        }
        if let Some(p) = partition {
            record = record.partition(p);
        }
        loop {
            match self.producer.send_result(record) {
                Ok(f) => return Ok(f),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r))
                    if tokio::time::Instant::now() < deadline =>
                {
                    record = r;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => return Err(self.classify(e)),
            }
        }
    }

    /// Waits for the delivery report, never past the publish timeout (plus
    /// a second): librdkafka's own `message.timeout.ms` can run late while
    /// the idempotent producer recovers from a broker outage.
    pub(super) async fn confirmed(
        &self,
        f: rdkafka::producer::DeliveryFuture,
    ) -> Result<(), BrokerError> {
        let limit = self.cfg.publish_timeout + Duration::from_secs(1);
        let Ok(report) = tokio::time::timeout(limit, f).await else {
            self.healthy.store(false, Ordering::Release);
            return Err(BrokerError::Unavailable(format!(
                "kafka pubsub {}: not confirmed within {limit:?}",
                self.name
            )));
        };
        match report {
            Ok(Ok(_)) => {
                self.healthy.store(true, Ordering::Release);
                Ok(())
            }
            Ok(Err((e, _))) => Err(self.classify(e)),
            Err(_) => Err(BrokerError::Unavailable(format!(
                "kafka pubsub {}: producer closed",
                self.name
            ))),
        }
    }

    /// A broker error as the publish path sees it; a retryable one also
    /// marks the broker unhealthy until the next confirm or probe.
    fn classify(&self, e: KafkaError) -> BrokerError {
        let text = format!("kafka pubsub {}: {e}", self.name);
        if is_final(e.rdkafka_error_code()) {
            BrokerError::Rejected(text)
        } else {
            self.healthy.store(false, Ordering::Release);
            BrokerError::Unavailable(text)
        }
    }
}

/// Errors that retrying cannot fix: the message or its destination is
/// refused as it is. Everything else (timeouts, transport, leadership,
/// queue full) may pass once the broker recovers.
fn is_final(code: Option<RDKafkaErrorCode>) -> bool {
    matches!(
        code,
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::InvalidTopic
                | RDKafkaErrorCode::UnknownPartition
                | RDKafkaErrorCode::MessageBatchTooLarge
                | RDKafkaErrorCode::PolicyViolation
                | RDKafkaErrorCode::InvalidRequiredAcks,
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_errors_are_final_or_retryable() {
        use RDKafkaErrorCode::*;
        let cases = [
            (Some(MessageSizeTooLarge), true),
            (Some(InvalidMessage), true),
            (Some(TopicAuthorizationFailed), true),
            (Some(UnknownPartition), true),
            (Some(InvalidTopic), true),
            (Some(MessageBatchTooLarge), true),
            (Some(PolicyViolation), true),
            (Some(MessageTimedOut), false),
            (Some(NotLeaderForPartition), false),
            (Some(BrokerTransportFailure), false),
            (Some(AllBrokersDown), false),
            (Some(QueueFull), false),
            (None, false),
        ];
        for (code, want) in cases {
            assert_eq!(is_final(code), want, "{code:?}");
        }
    }
}
