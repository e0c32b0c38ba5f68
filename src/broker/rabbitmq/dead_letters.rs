//! `perch dlq` on RabbitMQ: the dead letters sit in the durable queue
//! `{consumerID}-{dead-letter topic}` Perch declares with the subscription.
//! They are read with `basic.get` on a channel of their own and held
//! unacked: a removed (replayed) one is acked, and closing the channel
//! returns the rest to the queue, in order. The queue's depth when the
//! session opened bounds what is read.

use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::Channel;

use super::properties::metadata_of;
use crate::broker::{BoxFuture, BrokerError, DeadLetters, Peeked};

pub(super) struct RabbitDeadLetters {
    channel: Channel,
    queue: String,
    left: u32,
    last: Option<u64>,
}

/// Opens the queue `queue` on a new channel of `conn`.
pub(super) async fn open(
    conn: &lapin::Connection,
    queue: String,
    topic: &str,
) -> Result<Box<dyn DeadLetters>, BrokerError> {
    let channel = conn
        .create_channel()
        .await
        .map_err(|e| BrokerError::Unavailable(format!("rabbitmq: {e}")))?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let info = channel
        .queue_declare(queue.as_str().into(), passive, FieldTable::default())
        .await
        .map_err(|_| {
            BrokerError::Rejected(format!(
                "no queue {queue} holds dead letters of {topic} (it is declared when a subscription with that dead-letter topic starts; --app-id names the consumerID)"
            ))
        })?;
    Ok(Box::new(RabbitDeadLetters {
        channel,
        queue,
        left: info.message_count(),
        last: None,
    }))
}

impl DeadLetters for RabbitDeadLetters {
    fn next(&mut self) -> BoxFuture<'_, Result<Option<Peeked>, BrokerError>> {
        Box::pin(async move {
            if self.left == 0 {
                return Ok(None);
            }
            let got = self
                .channel
                .basic_get(
                    self.queue.as_str().into(),
                    BasicGetOptions { no_ack: false },
                )
                .await
                .map_err(|e| BrokerError::Unavailable(format!("rabbitmq: {e}")))?;
            let Some(m) = got else {
                self.left = 0;
                return Ok(None);
            };
            self.left -= 1;
            let d = m.delivery;
            self.last = Some(d.delivery_tag);
            let p = &d.properties;
            Ok(Some(Peeked {
                data: bytes::Bytes::from(d.data.clone()),
                content_type: p.content_type().as_ref().map(|c| c.to_string()),
                metadata: metadata_of(p, false),
                timestamp_ms: p.timestamp().map(|t| (t as i64).saturating_mul(1000)),
            }))
        })
    }

    fn remove(&mut self) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async move {
            let Some(tag) = self.last.take() else {
                return Ok(());
            };
            self.channel
                .basic_ack(tag, BasicAckOptions::default())
                .await
                .map_err(|e| BrokerError::Unavailable(format!("rabbitmq: ack: {e}")))
        })
    }

    fn close(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            // Unacked messages go back to the queue.
            let _ = self.channel.close(200, "perch dlq done".into()).await;
        })
    }
}
