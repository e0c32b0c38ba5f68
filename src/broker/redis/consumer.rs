//! One subscription: three tasks around what this sidecar holds (`held`,
//! the entries it read and has not settled, each with its "still ours"
//! flag).
//!
//! - `read_loop` reads new entries (`XREADGROUP … >`) on a connection of
//!   its own (the read blocks), as many as the in-flight window allows,
//!   and every `redeliverInterval` first takes over what other consumers
//!   held longer than `processingTimeout` (`XAUTOCLAIM`). It also deletes
//!   consumers of the group that hold nothing and were idle for an hour
//!   (each sidecar is a consumer of its own).
//! - `settle_loop` turns finished deliveries into commands: acks batched
//!   into one `XACK`; a nack claims the entry again and hands it out anew;
//!   after the subscription stopped, a nack hands the entry back to the
//!   group instead (its idle time set to `processingTimeout`, so the next
//!   `XAUTOCLAIM` of any replica takes it).
//! - `refresh_loop` refreshes what is held (`XCLAIM … JUSTID`: its idle
//!   time back to 0, so no other consumer takes it over) and notices what
//!   was taken over anyway (a stalled sidecar: the entry is no longer in
//!   this consumer's pending list; it stops being retried here).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::streams::{
    StreamAutoClaimReply, StreamClaimReply, StreamId, StreamInfoConsumersReply,
    StreamPendingCountReply, StreamReadReply,
};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use super::{entry, manager_config, Inner};
use crate::broker::{
    AckHandle, BoxFuture, BrokerError, Delivery, DeliveryStream, SubscribeRequest,
};

/// A consumer holding nothing and idle this long is deleted from the group.
const IDLE_CONSUMER: Duration = Duration::from_secs(3600);
/// Longest pause between attempts while Redis is unreachable.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// How a delivery finished.
enum Settle {
    Ack(String),
    /// Redeliver (or hand back); the permit travels with the entry.
    Nack(String, Option<OwnedSemaphorePermit>),
}

struct Sub {
    inner: Arc<Inner>,
    topic: String,
    group: String,
    /// This sidecar's consumer name in the group.
    consumer: String,
    /// The in-flight window: a permit per delivery handed out.
    window: Arc<Semaphore>,
    /// Entry id -> still ours.
    held: Mutex<HashMap<String, Arc<AtomicBool>>>,
    tx: mpsc::UnboundedSender<Delivery>,
}

/// Stream ids compare as (milliseconds, sequence).
pub(super) fn id_key(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

/// Creates the group at the stream's start (the stream too), as Dapr does;
/// an existing group is fine.
pub(super) async fn create_group(
    conn: &mut ConnectionManager,
    topic: &str,
    group: &str,
) -> Result<(), redis::RedisError> {
    match redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(topic)
        .arg(group)
        .arg("0")
        .arg("MKSTREAM")
        .query_async::<()>(conn)
        .await
    {
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        other => other,
    }
}

/// Starts the subscription's tasks; returns once the group exists (or, with
/// Redis unreachable, after a warning: it starts when Redis is back).
pub(super) async fn start(
    inner: Arc<Inner>,
    req: SubscribeRequest,
) -> Result<(DeliveryStream, Vec<JoinHandle<()>>), BrokerError> {
    let block = inner.cfg.read_timeout;
    let reader = ConnectionManager::new_lazy_with_config(
        inner.client.clone(),
        manager_config(&inner.cfg, Some(block)),
    )
    .map_err(|e| inner.error("subscribe", &e))?;
    let mut conn = inner.conn.clone();
    let ready = match create_group(&mut conn, &req.topic, &req.group).await {
        Ok(()) => true,
        Err(e) if super::is_final(&e) => return Err(inner.error("subscribe", &e)),
        Err(e) => {
            tracing::warn!(pubsub = %inner.name, topic = %req.topic, error = %e, "redis not reachable yet; the subscription starts when it is");
            false
        }
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let (settle_tx, settle_rx) = mpsc::unbounded_channel();
    let sub = Arc::new(Sub {
        consumer: req.consumer,
        topic: req.topic,
        group: req.group,
        window: Arc::new(Semaphore::new(req.window.max(1))),
        held: Mutex::new(HashMap::new()),
        tx,
        inner,
    });
    tracing::debug!(topic = %sub.topic, group = %sub.group, consumer = %sub.consumer, "redis subscription");
    let tasks = vec![
        tokio::spawn(read_loop(sub.clone(), reader, settle_tx.clone(), ready)),
        tokio::spawn(refresh_loop(sub.clone())),
        tokio::spawn(settle_loop(sub, settle_rx, settle_tx.downgrade())),
    ];
    Ok((rx, tasks))
}

/// Finishes one delivery through the subscription's settle task.
struct RedisAck {
    id: Option<String>,
    permit: Option<OwnedSemaphorePermit>,
    settle: mpsc::UnboundedSender<Settle>,
}

impl AckHandle for RedisAck {
    fn ack(mut self: Box<Self>) -> BoxFuture<'static, Result<(), BrokerError>> {
        if let Some(id) = self.id.take() {
            self.permit.take();
            let _ = self.settle.send(Settle::Ack(id));
        }
        Box::pin(async { Ok(()) })
    }

    fn nack(mut self: Box<Self>) -> BoxFuture<'static, Result<(), BrokerError>> {
        if let Some(id) = self.id.take() {
            let _ = self.settle.send(Settle::Nack(id, self.permit.take()));
        }
        Box::pin(async { Ok(()) })
    }
}

impl Drop for RedisAck {
    /// Neither acked nor nacked: redelivered, as a nack.
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            let _ = self.settle.send(Settle::Nack(id, self.permit.take()));
        }
    }
}

impl Sub {
    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<AtomicBool>>> {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn stopped(&self) -> bool {
        self.tx.is_closed()
    }

    /// Hands `entry` to the engine (unless this sidecar holds it already).
    fn emit(
        &self,
        entry: StreamId,
        permit: OwnedSemaphorePermit,
        settle: &mpsc::UnboundedSender<Settle>,
    ) {
        let owned = Arc::new(AtomicBool::new(true));
        {
            let mut held = self.held();
            if held.contains_key(&entry.id) {
                return;
            }
            held.insert(entry.id.clone(), owned.clone());
        }
        let decoded = entry::decode(&entry.id, entry.map);
        let delivery = Delivery {
            topic: self.topic.clone(),
            data: decoded.data,
            content_type: decoded.content_type,
            metadata: decoded.metadata,
            lane: 0,
            owned: Some(owned),
            ack: Box::new(RedisAck {
                id: Some(entry.id),
                permit: Some(permit),
                settle: settle.clone(),
            }),
        };
        // A subscription that is gone drops the delivery, which nacks it
        // (handed back to the group).
        let _ = self.tx.send(delivery);
    }

    /// Hands out the entries of a read or claim, a permit each.
    fn emit_all(
        &self,
        entries: Vec<StreamId>,
        mut permits: OwnedSemaphorePermit,
        settle: &mpsc::UnboundedSender<Settle>,
    ) {
        for e in entries {
            let Some(p) = permits.split(1) else {
                tracing::error!(topic = %self.topic, "redis answered more entries than asked; the rest is redelivered");
                break;
            };
            self.emit(e, p, settle);
        }
    }

    /// `XACK`s `ids`, retrying while Redis is unreachable (up to about
    /// half a minute); entries whose ack is lost are redelivered after
    /// `processingTimeout`.
    async fn ack(&self, ids: &[String]) {
        let mut conn = self.inner.conn.clone();
        let mut wait = Duration::from_millis(100);
        for attempt in 0..20 {
            match redis::cmd("XACK")
                .arg(&self.topic)
                .arg(&self.group)
                .arg(ids)
                .query_async::<i64>(&mut conn)
                .await
            {
                Ok(_) => return,
                Err(e) if attempt == 19 || super::is_final(&e) => {
                    tracing::warn!(topic = %self.topic, n = ids.len(), error = %e, "redis acks not written; these messages are redelivered after processingTimeout");
                    return;
                }
                Err(_) => {
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Hands `ids` back to the group: still pending, idle as long as
    /// `processingTimeout`, so the next `XAUTOCLAIM` of any replica takes
    /// them (without redelivery configured they stay where they are).
    async fn hand_back(&self, ids: &[String]) {
        let pt = self.inner.cfg.processing_timeout;
        if ids.is_empty() || pt.is_zero() || self.inner.cfg.redeliver_interval.is_zero() {
            return;
        }
        let mut conn = self.inner.conn.clone();
        let r = redis::cmd("XCLAIM")
            .arg(&self.topic)
            .arg(&self.group)
            .arg(&self.consumer)
            .arg(0)
            .arg(ids)
            .arg("IDLE")
            .arg(pt.as_millis() as u64)
            .arg("JUSTID")
            .query_async::<redis::Value>(&mut conn)
            .await;
        if let Err(e) = r {
            tracing::warn!(topic = %self.topic, n = ids.len(), error = %e, "could not hand redis messages back; they are redelivered after processingTimeout");
        }
    }

    /// Claims `items` again and hands them out anew (a nack). An entry no
    /// longer in the stream (trimmed by `maxLenApprox`/`streamTTL`) is
    /// acked away.
    async fn redeliver(
        &self,
        items: Vec<(String, Option<OwnedSemaphorePermit>)>,
        settle: &mpsc::UnboundedSender<Settle>,
    ) {
        let ids: Vec<&str> = items.iter().map(|(id, _)| id.as_str()).collect();
        let mut conn = self.inner.conn.clone();
        let claimed = redis::cmd("XCLAIM")
            .arg(&self.topic)
            .arg(&self.group)
            .arg(&self.consumer)
            .arg(0)
            .arg(&ids)
            .query_async::<StreamClaimReply>(&mut conn)
            .await;
        let mut entries: HashMap<String, StreamId> = match claimed {
            Ok(r) => r.ids.into_iter().map(|e| (e.id.clone(), e)).collect(),
            Err(e) => {
                // Left pending: taken over after processingTimeout.
                tracing::warn!(topic = %self.topic, error = %e, "could not claim nacked redis messages again; they are redelivered after processingTimeout");
                return;
            }
        };
        let mut gone = vec![];
        for (id, permit) in items {
            match (entries.remove(&id), permit) {
                (Some(e), Some(p)) => self.emit(e, p, settle),
                (Some(e), None) => {
                    // Its permit went with an earlier settle: wait for one.
                    if let Ok(p) = self.window.clone().acquire_owned().await {
                        self.emit(e, p, settle);
                    }
                }
                (None, _) => gone.push(id),
            }
        }
        if !gone.is_empty() {
            tracing::warn!(topic = %self.topic, n = gone.len(), "nacked redis messages were trimmed from the stream before redelivery (maxLenApprox/streamTTL)");
            self.ack(&gone).await;
        }
    }

    /// Keeps what this sidecar holds from being taken over, and stops
    /// what was taken over anyway.
    async fn refresh(&self) {
        let ids: Vec<String> = self
            .held()
            .iter()
            .filter(|(_, owned)| owned.load(Ordering::Acquire))
            .map(|(id, _)| id.clone())
            .collect();
        let (Some(lo), Some(hi)) = (
            ids.iter().min_by_key(|i| id_key(i)),
            ids.iter().max_by_key(|i| id_key(i)),
        ) else {
            return;
        };
        let count = ids.len() * 2 + 256;
        let mut conn = self.inner.conn.clone();
        let Ok(pending) = redis::cmd("XPENDING")
            .arg(&self.topic)
            .arg(&self.group)
            .arg(lo)
            .arg(hi)
            .arg(count)
            .arg(&self.consumer)
            .query_async::<StreamPendingCountReply>(&mut conn)
            .await
            .map_err(|e| tracing::debug!(topic = %self.topic, error = %e, "redis XPENDING failed"))
        else {
            return;
        };
        let complete = pending.ids.len() < count;
        let last = pending.ids.last().map(|p| id_key(&p.id));
        let mine: HashSet<&str> = pending.ids.iter().map(|p| p.id.as_str()).collect();
        let mut keep = vec![];
        {
            let held = self.held();
            for id in &ids {
                if mine.contains(id.as_str()) {
                    keep.push(id.as_str());
                } else if complete || last.is_some_and(|l| id_key(id) < l) {
                    if let Some(owned) = held.get(id) {
                        if owned.swap(false, Ordering::AcqRel) {
                            tracing::warn!(topic = %self.topic, entry = %id, "redis message taken over by another consumer (held longer than processingTimeout); no longer delivered here");
                        }
                    }
                }
            }
        }
        if keep.is_empty() {
            return;
        }
        let _ = redis::cmd("XCLAIM")
            .arg(&self.topic)
            .arg(&self.group)
            .arg(&self.consumer)
            .arg(0)
            .arg(&keep)
            .arg("JUSTID")
            .query_async::<redis::Value>(&mut conn)
            .await;
    }

    /// Takes over what other consumers held longer than
    /// `processingTimeout`, as far as the window allows.
    async fn take_over(&self, settle: &mpsc::UnboundedSender<Settle>) {
        let pt = self.inner.cfg.processing_timeout.as_millis() as u64;
        let mut conn = self.inner.conn.clone();
        let mut cursor = "0-0".to_owned();
        loop {
            let n = self
                .window
                .available_permits()
                .min(self.inner.cfg.queue_depth);
            if n == 0 {
                return;
            }
            let Ok(permits) = self.window.clone().try_acquire_many_owned(n as u32) else {
                return;
            };
            let Ok(reply) = redis::cmd("XAUTOCLAIM")
                .arg(&self.topic)
                .arg(&self.group)
                .arg(&self.consumer)
                .arg(pt)
                .arg(&cursor)
                .arg("COUNT")
                .arg(n)
                .query_async::<StreamAutoClaimReply>(&mut conn)
                .await
                .map_err(
                    |e| tracing::debug!(topic = %self.topic, error = %e, "redis XAUTOCLAIM failed"),
                )
            else {
                return;
            };
            let fresh = {
                let held = self.held();
                reply
                    .claimed
                    .iter()
                    .filter(|e| !held.contains_key(&e.id))
                    .count()
            };
            if fresh > 0 {
                tracing::info!(topic = %self.topic, n = fresh, "redis messages of a consumer gone quiet taken over");
            }
            self.emit_all(reply.claimed, permits, settle);
            cursor = reply.next_stream_id;
            if cursor == "0-0" || self.stopped() {
                return;
            }
        }
    }

    /// Deletes consumers of the group that hold nothing and were idle for
    /// an hour (crashed or replaced sidecars).
    async fn forget_idle_consumers(&self) {
        let mut conn = self.inner.conn.clone();
        let Ok(info) = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(&self.topic)
            .arg(&self.group)
            .query_async::<StreamInfoConsumersReply>(&mut conn)
            .await
        else {
            return;
        };
        for c in info.consumers {
            if c.pending == 0
                && c.idle as u128 > IDLE_CONSUMER.as_millis()
                && c.name != self.consumer
            {
                let _ = redis::cmd("XGROUP")
                    .arg("DELCONSUMER")
                    .arg(&self.topic)
                    .arg(&self.group)
                    .arg(&c.name)
                    .query_async::<i64>(&mut conn)
                    .await;
            }
        }
    }
}

/// Reads new entries while the subscription lives, and every
/// `redeliverInterval` first takes over what others left (one task hands
/// out the window's permits, so a blocked read cannot starve the take-over).
async fn read_loop(
    sub: Arc<Sub>,
    mut conn: ConnectionManager,
    settle: mpsc::UnboundedSender<Settle>,
    mut ready: bool,
) {
    let cfg = &sub.inner.cfg;
    let block = cfg.read_timeout;
    // Dapr's switch: either at 0, no redelivery of what a consumer left.
    let takes_over = !cfg.processing_timeout.is_zero() && !cfg.redeliver_interval.is_zero();
    let mut next_take = tokio::time::Instant::now();
    let mut wait = Duration::from_millis(100);
    let mut down = false;
    // First what this consumer held before a restart (its pending
    // entries, from id 0), then new entries (`>`).
    let mut from = Some("0".to_owned());
    loop {
        if !ready {
            let mut c = sub.inner.conn.clone();
            match create_group(&mut c, &sub.topic, &sub.group).await {
                Ok(()) => ready = true,
                Err(e) => {
                    if !down {
                        tracing::warn!(topic = %sub.topic, error = %e, "redis consumer group not created yet; retrying");
                        down = true;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = sub.tx.closed() => break,
                    }
                    wait = (wait * 2).min(MAX_BACKOFF);
                    continue;
                }
            }
        }
        if from.is_none() && takes_over && tokio::time::Instant::now() >= next_take {
            sub.take_over(&settle).await;
            sub.forget_idle_consumers().await;
            next_take = tokio::time::Instant::now() + cfg.redeliver_interval;
        }
        let mut permits = tokio::select! {
            p = sub.window.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = sub.tx.closed() => break,
        };
        let more = sub
            .window
            .available_permits()
            .min(cfg.queue_depth.saturating_sub(1));
        if more > 0 {
            if let Ok(p) = sub.window.clone().try_acquire_many_owned(more as u32) {
                permits.merge(p);
            }
        }
        // Blocks no longer than until the next take-over (BLOCK 0 would
        // wait forever).
        let block_for = if takes_over {
            block.min(next_take.saturating_duration_since(tokio::time::Instant::now()))
        } else {
            block
        };
        let read = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(&sub.group)
            .arg(&sub.consumer)
            .arg("COUNT")
            .arg(permits.num_permits())
            .arg("BLOCK")
            .arg((block_for.as_millis() as u64).max(1))
            .arg("STREAMS")
            .arg(&sub.topic)
            .arg(from.as_deref().unwrap_or(">"))
            .to_owned();
        let reply = tokio::select! {
            r = read.query_async::<Option<StreamReadReply>>(&mut conn) => r,
            _ = sub.tx.closed() => break,
        };
        match reply {
            Ok(reply) => {
                if down {
                    tracing::info!(topic = %sub.topic, "redis subscription reading again");
                    down = false;
                }
                wait = Duration::from_millis(100);
                let entries: Vec<StreamId> = reply
                    .map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect())
                    .unwrap_or_default();
                if from.is_some() {
                    // Resuming: on from the last entry; none left, new ones.
                    from = entries.last().map(|e| e.id.clone());
                    if from.is_none() {
                        continue;
                    }
                    let (gone, live): (Vec<StreamId>, Vec<StreamId>) =
                        entries.into_iter().partition(|e| e.map.is_empty());
                    if !gone.is_empty() {
                        // Deleted from the stream while held (trimmed).
                        let ids: Vec<String> = gone.into_iter().map(|e| e.id).collect();
                        sub.ack(&ids).await;
                    }
                    if !live.is_empty() {
                        tracing::info!(topic = %sub.topic, n = live.len(), "redis messages this consumer held before a restart delivered again");
                    }
                    sub.emit_all(live, permits, &settle);
                    continue;
                }
                sub.emit_all(entries, permits, &settle);
            }
            Err(e) if e.code() == Some("NOGROUP") => {
                tracing::warn!(topic = %sub.topic, group = %sub.group, "redis consumer group is gone (stream deleted, or Redis lost its data); creating it again");
                ready = false;
            }
            Err(e) => {
                if !down {
                    tracing::warn!(topic = %sub.topic, error = %e, "redis read failed; retrying");
                    down = true;
                }
                drop(permits);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = sub.tx.closed() => break,
                }
                wait = (wait * 2).min(MAX_BACKOFF);
            }
        }
    }
    // A read cancelled by the stop may have taken entries nobody saw: hand
    // back whatever this consumer has pending and does not hold.
    let mut c = sub.inner.conn.clone();
    if let Ok(pending) = redis::cmd("XPENDING")
        .arg(&sub.topic)
        .arg(&sub.group)
        .arg("-")
        .arg("+")
        .arg(10_000)
        .arg(&sub.consumer)
        .query_async::<StreamPendingCountReply>(&mut c)
        .await
    {
        let unheld: Vec<String> = {
            let held = sub.held();
            pending
                .ids
                .into_iter()
                .map(|p| p.id)
                .filter(|id| !held.contains_key(id))
                .collect()
        };
        sub.hand_back(&unheld).await;
    }
}

/// Keeps what is held fresh while the subscription lives, a third of
/// `processingTimeout` apart (at most `redeliverInterval`).
async fn refresh_loop(sub: Arc<Sub>) {
    let cfg = &sub.inner.cfg;
    if cfg.processing_timeout.is_zero() || cfg.redeliver_interval.is_zero() {
        return;
    }
    let beat = cfg
        .redeliver_interval
        .min(cfg.processing_timeout / 3)
        .max(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(beat) => {}
            _ = sub.tx.closed() => return,
        }
        sub.refresh().await;
    }
}

/// Applies finished deliveries until every handle is settled and the
/// other two tasks ended.
async fn settle_loop(
    sub: Arc<Sub>,
    mut rx: mpsc::UnboundedReceiver<Settle>,
    me: mpsc::WeakUnboundedSender<Settle>,
) {
    let mut batch = Vec::with_capacity(256);
    while rx.recv_many(&mut batch, 1024).await > 0 {
        let mut acks = vec![];
        let mut again = vec![];
        let mut back = vec![];
        {
            let mut held = sub.held();
            for s in batch.drain(..) {
                let (id, nack) = match s {
                    Settle::Ack(id) => (id, None),
                    Settle::Nack(id, permit) => (id, Some(permit)),
                };
                // Taken over by another consumer: theirs to finish.
                let Some(owned) = held.remove(&id) else {
                    continue;
                };
                if !owned.load(Ordering::Acquire) {
                    continue;
                }
                match nack {
                    None => acks.push(id),
                    Some(_) if sub.stopped() => back.push(id),
                    Some(permit) => again.push((id, permit)),
                }
            }
        }
        if !acks.is_empty() {
            sub.ack(&acks).await;
        }
        sub.hand_back(&back).await;
        if !again.is_empty() {
            if let Some(settle) = me.upgrade() {
                sub.redeliver(again, &settle).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_order_by_time_then_sequence() {
        assert!(id_key("1700000000000-2") < id_key("1700000000000-10"));
        assert!(id_key("999-5") < id_key("1000-0"));
    }
}
