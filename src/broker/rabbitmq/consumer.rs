//! Consuming: each subscription's queue consumed on every connection the
//! broker gets; deliveries are settled through the consume loop, which
//! sends what the [`AckLedger`] says (nacks first, then a `multiple` ack
//! below the oldest unsettled delivery, the rest one by one). On shutdown
//! the consumer is cancelled and the channel closed only once every
//! delivery handed out is settled.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::FieldTable;
use lapin::Channel;
use tokio::sync::mpsc;

use super::acks::{AckLedger, Frame};
use super::{properties, topology, Inner, Live, MAX_RECONNECT_WAIT};
use crate::broker::{AckHandle, BoxFuture, BrokerError, Delivery, SubscribeRequest};

/// Consumes `queue` on every connection the broker gets, until the
/// subscription is dropped.
pub(super) async fn consume_forever(
    inner: Arc<Inner>,
    req: SubscribeRequest,
    queue: String,
    tx: mpsc::UnboundedSender<Delivery>,
    declared: tokio::sync::oneshot::Sender<()>,
) {
    let mut declared = Some(declared);
    let mut live_rx = inner.live.subscribe();
    let mut last_generation = 0;
    loop {
        let live = tokio::select! {
            l = live_rx.wait_for(|l| l.as_ref().is_some_and(|l| l.generation > last_generation)) => match l {
                Ok(l) => l.clone().expect("checked"),
                Err(_) => return,
            },
            _ = tx.closed() => return,
        };
        last_generation = live.generation;
        match consume_once(&inner, &live, &req, &queue, &tx, &mut declared).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(pubsub = %inner.name, %queue, error = %e, "rabbitmq consumer stopped; resuming on the next connection");
                // A topology error on a live connection: wait before trying
                // again on it.
                if live.conn.status().connected() {
                    last_generation -= 1;
                    tokio::select! {
                        _ = tokio::time::sleep(MAX_RECONNECT_WAIT) => {}
                        _ = tx.closed() => return,
                    }
                }
            }
        }
    }
}

/// Declares the topology and consumes until the connection is lost (`Err`)
/// or the subscription is dropped (`Ok`).
async fn consume_once(
    inner: &Inner,
    live: &Live,
    req: &SubscribeRequest,
    queue: &str,
    tx: &mpsc::UnboundedSender<Delivery>,
    declared: &mut Option<tokio::sync::oneshot::Sender<()>>,
) -> Result<(), String> {
    let e = |e: lapin::Error| e.to_string();
    // Deliveries of this channel are ours while it lives: once it is gone
    // the broker requeues them, so the engine stops retrying them (no
    // dead letter, no ack: the next delivery decides).
    let owned = ChannelLife(Arc::new(AtomicBool::new(true)));
    let ch = live.conn.create_channel().await.map_err(e)?;
    let prefetch = inner
        .cfg
        .prefetch
        .unwrap_or_else(|| u16::try_from(req.window).unwrap_or(u16::MAX));
    ch.basic_qos(prefetch, BasicQosOptions::default())
        .await
        .map_err(e)?;
    topology::declare_queue(inner, &live.conn, &ch, &req.topic, queue, &req.metadata).await?;
    if let Some(dlq) = &req.dead_letter_topic {
        let dlq_queue = format!("{}-{dlq}", req.group);
        // Dead letters are kept: a durable queue whatever the settings.
        topology::declare_bound_queue(
            inner,
            &live.conn,
            &ch,
            dlq,
            &dlq_queue,
            &[String::new()],
            true,
            FieldTable::default(),
        )
        .await?;
    }
    let tag = format!("{queue}-{}", uuid::Uuid::new_v4().simple());
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(e)?;
    tracing::info!(pubsub = %inner.name, %queue, prefetch, "rabbitmq consuming");
    if let Some(d) = declared.take() {
        let _ = d.send(());
    }
    // Deliveries are settled through this loop, which coalesces acks: what
    // finished below the oldest unfinished delivery goes in one `multiple`
    // ack, the rest one by one (a slow message never holds others' acks).
    let (settle, mut settled) = mpsc::unbounded_channel::<(u64, bool)>();
    let mut ledger = AckLedger::default();
    let mut closing = false;
    loop {
        let next = tokio::select! {
            d = std::future::poll_fn(|cx| futures_core::Stream::poll_next(std::pin::Pin::new(&mut consumer), cx)), if !closing => d,
            Some(first) = settled.recv() => {
                let mut batch = vec![first];
                while let Ok(more) = settled.try_recv() {
                    batch.push(more);
                }
                send_frames(&ch, ledger.settle(batch)).await.map_err(e)?;
                if closing && ledger.is_empty() {
                    let _ = ch.close(200, "subscription closed".into()).await;
                    return Ok(());
                }
                continue;
            }
            _ = tx.closed(), if !closing => {
                // No more deliveries; those handed out are settled first.
                let _ = ch.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()).await;
                closing = true;
                if ledger.is_empty() {
                    let _ = ch.close(200, "subscription closed".into()).await;
                    return Ok(());
                }
                continue;
            }
        };
        let d = match next {
            Some(Ok(d)) => d,
            Some(Err(err)) => return Err(err.to_string()),
            None => return Err("consumer ended".into()),
        };
        ledger.delivered(d.delivery_tag);
        let delivery = Delivery {
            topic: req.topic.clone(),
            data: Bytes::from(d.data),
            content_type: d.properties.content_type().as_ref().map(|c| c.to_string()),
            metadata: properties::metadata_of(&d.properties, inner.cfg.properties_to_metadata),
            lane: 0,
            owned: Some(owned.0.clone()),
            ack: Box::new(RabbitAck {
                tag: d.delivery_tag,
                settle: Some(settle.clone()),
            }),
        };
        // A subscription that is gone drops the delivery, which nacks
        // itself; the loop then sees `tx` closed.
        let _ = tx.send(delivery);
    }
}

/// Marks the channel's deliveries not owned when the consume loop ends.
struct ChannelLife(Arc<AtomicBool>);

impl Drop for ChannelLife {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Sends the frames the ack ledger chose, in order.
async fn send_frames(ch: &Channel, frames: Vec<Frame>) -> Result<(), lapin::Error> {
    for f in frames {
        match f {
            Frame::Nack(tag) => {
                let requeue = BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                };
                ch.basic_nack(tag, requeue).await?;
            }
            Frame::Ack { tag, multiple } => {
                ch.basic_ack(tag, BasicAckOptions { multiple }).await?;
            }
        }
    }
    Ok(())
}

/// Settles one delivery through its subscription's consume loop.
struct RabbitAck {
    tag: u64,
    settle: Option<mpsc::UnboundedSender<(u64, bool)>>,
}

impl RabbitAck {
    fn send(&mut self, ack: bool) {
        if let Some(settle) = self.settle.take() {
            // A closed loop means a closed channel: the message is already
            // back in the queue.
            let _ = settle.send((self.tag, ack));
        }
    }
}

impl AckHandle for RabbitAck {
    fn ack(mut self: Box<Self>) -> BoxFuture<'static, Result<(), BrokerError>> {
        self.send(true);
        Box::pin(async { Ok(()) })
    }

    fn nack(mut self: Box<Self>) -> BoxFuture<'static, Result<(), BrokerError>> {
        self.send(false);
        Box::pin(async { Ok(()) })
    }
}

impl Drop for RabbitAck {
    fn drop(&mut self) {
        // Unfinished: back to the queue now (or when the channel closes).
        self.send(false);
    }
}
