//! The receive loop of one subscription: messages are ordered into chains
//! (their lane for `partition`, their key for `key`, none for `none`), each
//! waits for its predecessor, and the loop itself never blocks; bulk
//! subscriptions gather batches instead.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tracing::Instrument;

use super::window::{ordering_key, Chain, Chains};
use super::{bulk, health, process::process, SubCtx};
use crate::config::DeliveryOrder;

/// Consumes `stream` until it ends or `stop` fires, then waits for what is
/// in flight.
pub(super) async fn consume(
    ctx: Arc<SubCtx>,
    mut stream: crate::broker::DeliveryStream,
    mut stop: watch::Receiver<bool>,
) {
    if ctx.sub.bulk.enabled {
        let comp = &ctx.entry().component;
        let slots = Arc::new(Semaphore::new(bulk::batches_in_flight(
            comp.delivery_order,
            comp.max_in_flight,
            ctx.sub.bulk.max_messages_count,
        )));
        let mut running = JoinSet::new();
        loop {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                break;
            };
            let batch = bulk::next_batch(&ctx, &mut stream, &mut stop).await;
            // An unhealthy app: hold the batch until it recovers; at
            // shutdown the batch is dropped unfinished (redelivered).
            if batch.is_empty()
                || (ctx.needs_app() && !health::until_healthy(&ctx.deps.status, &mut stop).await)
            {
                break;
            }
            let (task_ctx, stop) = (ctx.clone(), stop.clone());
            running.spawn(async move {
                reporting_panics(&task_ctx, bulk::process_batch(&task_ctx, batch, stop)).await;
                drop(slot);
            });
            while let Some(r) = running.try_join_next() {
                reap(&ctx, r);
            }
        }
        while let Some(r) = running.join_next().await {
            reap(&ctx, r);
        }
        return;
    }
    // The broker hands out at most `maxInFlight` unfinished deliveries per
    // lane; the engine only orders them. Each message waits for its
    // predecessor in its chain (the lane for `partition`, the key for `key`),
    // so the receive loop never blocks and a slow lane never holds up another.
    let comp = &ctx.entry().component;
    let order = comp.delivery_order;
    let mut chains = Chains::default();
    // With a store the broker window is wider than the app's (STORE_WINDOW):
    // each lane's app calls are limited to `maxInFlight` here.
    let mut lanes: HashMap<i32, Arc<Semaphore>> = HashMap::new();
    let mut tasks = JoinSet::new();
    loop {
        let d = tokio::select! {
            d = stream.recv() => match d { Some(d) => d, None => break },
            _ = stop.wait_for(|s| *s) => break,
        };
        // Fault hook for the dead-loop tests (unset outside them).
        static PANIC_ON: crate::util::FaultHook =
            crate::util::FaultHook::new("PERCH_FAULT_PANIC_CONSUME_ON");
        if PANIC_ON.hit(&d.data) {
            panic!("fault injected: PERCH_FAULT_PANIC_CONSUME_ON matched the payload");
        }
        // An unhealthy app: hold the message until it recovers; at
        // shutdown it is dropped unfinished (redelivered).
        if ctx.needs_app() && !health::until_healthy(&ctx.deps.status, &mut stop).await {
            break;
        }
        let chain = match order {
            DeliveryOrder::Partition => Some(Chain::Lane(d.lane)),
            DeliveryOrder::Key => ordering_key(&d.metadata).map(Chain::Key),
            DeliveryOrder::None => None,
        };
        let (previous, done) = chains.enqueue(chain, comp.max_in_flight);
        let lane = ctx.store.as_ref().map(|_| {
            lanes
                .entry(d.lane)
                .or_insert_with(|| Arc::new(Semaphore::new(comp.max_in_flight.max(1))))
                .clone()
        });
        let task_ctx = ctx.clone();
        let stop = stop.clone();
        tasks.spawn(async move {
            let ctx = task_ctx;
            if let Some(prev) = previous {
                // Sender dropped or sent: either way the predecessor is finished.
                let _ = prev.await;
            }
            // A revoked message is left to its next owner.
            if d.is_owned() && !*stop.borrow() {
                // At debug: at the default level a per-message span costs five
                // allocations and adds nothing the log lines do not say.
                let span = tracing::debug_span!("deliver", pubsub = %ctx.sub.pubsubname,
                    topic = %ctx.sub.topic, outcome = tracing::field::Empty);
                reporting_panics(&ctx, process(&ctx, d, lane, stop).instrument(span)).await;
            }
            drop(done);
        });
        while let Some(r) = tasks.try_join_next() {
            reap(&ctx, r);
        }
    }
    drop(stream);
    while let Some(r) = tasks.join_next().await {
        reap(&ctx, r);
    }
}

/// Runs a delivery (or batch) and reports a panic in it at once, in its
/// own task, not when the receive loop next reaps its tasks.
async fn reporting_panics(ctx: &SubCtx, run: impl std::future::Future<Output = ()>) {
    let run = std::pin::pin!(run);
    if let Err(p) = crate::util::CatchPanic(run).await {
        panicked(ctx, &crate::util::panic_message(p.as_ref()));
    }
}

/// A delivery (or batch) that panicked: logged at ERROR and counted when
/// it happens (its claims were released by their guards, and its messages
/// are left for redelivery), never dropped silently (review F11).
fn panicked(ctx: &SubCtx, panic: &str) {
    tracing::error!(pubsub = %ctx.sub.pubsubname, topic = %ctx.sub.topic,
        %panic, "a delivery panicked; its message is left for redelivery");
    ctx.count(&crate::telemetry::metrics::metrics().panics);
}

/// A finished delivery task; a panic outside the delivery itself (which
/// [`panicked`] reports) is reported here.
fn reap(ctx: &SubCtx, r: Result<(), tokio::task::JoinError>) {
    if let Err(e) = r {
        if e.is_panic() {
            panicked(ctx, &crate::util::panic_text(e));
        }
    }
}
