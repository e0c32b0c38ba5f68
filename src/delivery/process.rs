//! One message through the state machine of [`super::machine`]: prepare,
//! claim, deliver with retries, then ack, dead-letter, release or leave,
//! as the machine decides.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Semaphore};

use super::app;
use super::context::InFlight;
use super::dead_letter::{finish_dropped, Why};
use super::idempotency::{claim, idempotency_key, mark_finished};
use super::machine::{after_delivery, before_delivery, After, Before, Claimed};
use super::outcome::{self, Outcome};
use super::prepare::prepare;
use super::retry::{self, RetryEnd};
use super::SubCtx;
use crate::broker::Delivery;
use crate::store::Finish;
use crate::telemetry::metrics::metrics;

/// Delivers one message; `lane` is its lane's app window (with a store).
pub(super) async fn process(
    ctx: &SubCtx,
    d: Delivery,
    lane: Option<Arc<Semaphore>>,
    stop: watch::Receiver<bool>,
) {
    let _inflight = InFlight::new(ctx);
    let Some(ready) = prepare(ctx, d, stop.clone()).await else {
        return;
    };
    let held = match (&ctx.store, idempotency_key(ctx, &ready)) {
        (Some(store), Some(key)) => {
            let claimed = claim(ctx, store.as_ref(), &key, &mut stop.clone()).await;
            Some((store.clone(), key, claimed))
        }
        _ => None,
    };
    // A panic from here on drops this future unfinished: the guard then
    // gives the claim back, so the redelivered copy is not `Busy` for the
    // life of the process (review F11).
    let guard = ClaimGuard(held.as_ref().and_then(|(store, key, c)| {
        matches!(c, Claimed::Owned { .. }).then(|| (store.clone(), key.clone()))
    }));
    deliver(ctx, ready, held, lane, stop).await;
    guard.disarm();
}

/// Releases a claim when dropped armed: the delivery holding it was cut
/// off by a panic.
struct ClaimGuard(Option<(Arc<dyn crate::store::Store>, crate::store::Key)>);

impl ClaimGuard {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        if let Some((store, key)) = self.0.take() {
            tracing::error!(key = %key.header(), "delivery cut off (a panic, or aborted at the end of the grace period); its claim is released and the message left for redelivery");
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move { store.release(vec![key]).await });
            }
        }
    }
}

/// The claimed (or unclaimed) part of [`process`]: deliver with retries,
/// then finish as the state machine decides.
async fn deliver(
    ctx: &SubCtx,
    ready: super::context::Ready,
    held: Option<(Arc<dyn crate::store::Store>, crate::store::Key, Claimed)>,
    lane: Option<Arc<Semaphore>>,
    stop: watch::Receiver<bool>,
) {
    let claimed = held.as_ref().map_or(Claimed::Unclaimed, |(_, _, c)| *c);
    let claim = match before_delivery(claimed, ctx.policy.max_retries) {
        Before::AckDuplicate => {
            ctx.count(&metrics().duplicates_suppressed);
            if let Some((_, key, _)) = &held {
                tracing::debug!(topic = %ctx.sub.topic, key = %key.header(), "duplicate event; acknowledged without delivery");
            }
            let _ = ready.delivery.ack.ack().await;
            return;
        }
        Before::Leave => return,
        Before::DeadLetterOverclaimed => {
            let (store, key, _) = held.as_ref().expect("only a claim is over-claimed");
            tracing::warn!(topic = %ctx.sub.topic, key = %key.header(), ?claimed,
                "claimed more times than the retry policy allows (earlier attempts were cut short); dead-lettering");
            let mark = Some((store.as_ref(), key, Finish::Dead));
            let attempts = match claimed {
                Claimed::Owned { attempts } => attempts,
                _ => 0,
            };
            let why = Why::new(
                "its deliveries were cut short (crashes) more often than the retry policy allows",
                attempts,
            );
            return finish_dropped(ctx, ready.delivery, stop, mark, why).await;
        }
        Before::Deliver { claimed } => held.filter(|_| claimed).map(|(store, key, _)| (store, key)),
    };
    // A place in the lane's app window, held until the message is finished
    // (marked, then acknowledged or dead-lettered): at most `maxInFlight`
    // per lane are delivered and not yet marked, which bounds the duplicates
    // a crash can cause. Only the claims run ahead of it.
    let _permit = match lane {
        Some(lane) => {
            let mut s = stop.clone();
            let permit = tokio::select! {
                p = lane.acquire_owned() => Some(p.expect("lane semaphore open")),
                _ = s.wait_for(|s| *s) => None,
            };
            if permit.is_none() {
                // Shutdown while waiting for a place: never delivered, so
                // the claim goes back at once.
                if let Some((store, key)) = claim {
                    let _ = tokio::time::timeout(Duration::from_secs(1), store.release(vec![key]))
                        .await;
                }
                return;
            }
            permit
        }
        None => None,
    };
    let mut retry_stop = stop.clone();
    let idempotency_header = claim.as_ref().map(|(_, key)| key.header());
    let attempts = AtomicU32::new(0);
    // Delivery holds its (not Sync) ack handle: read only its flag.
    let owned = ready.delivery.owned.clone();
    let is_owned = move || {
        owned
            .as_ref()
            .is_none_or(|o| o.load(std::sync::atomic::Ordering::Acquire))
    };
    let outgoing = ready.outgoing();
    let mut span = deliver_span(ctx, &ready);
    let end = retry::run(&ctx.policy, &mut retry_stop, &is_owned, || async {
        if attempts.fetch_add(1, Ordering::Relaxed) > 0 {
            ctx.count(&metrics().redeliveries);
        } else if let Some((store, key)) = &claim {
            // This claim's delivery reaches the app: it counts toward the
            // over-claim limit (a claim alone does not).
            drop(store.started(vec![key.clone()]));
        }
        // Fault hook for the panic tests (unset outside them).
        static PANIC_ON: crate::util::FaultHook =
            crate::util::FaultHook::new("PERCH_FAULT_PANIC_ON");
        if PANIC_ON.hit(&ready.delivery.data) {
            panic!("fault injected: PERCH_FAULT_PANIC_ON matched the payload");
        }
        let classify = |answer: &app::AppAnswer| match answer {
            Some((s, body)) => outcome::classify(Some(*s), body),
            None => outcome::classify(None, b""),
        };
        let started = std::time::Instant::now();
        let answer = ctx
            .call_app(
                ctx.deliver_once(outgoing, idempotency_header.as_deref()),
                |a| !matches!(classify(a), Outcome::Retry(_)),
            )
            .await;
        let status = answer.as_ref().map(|(s, _)| *s);
        let outcome = classify(&answer);
        // Dapr's labels: an app DROP is drop/success, a 404 drop/drop.
        let (process_status, status_label) = match (&outcome, status) {
            (Outcome::Success, _) => ("success", "success"),
            (Outcome::Drop(_), Some(404)) => ("drop", "drop"),
            (Outcome::Drop(_), _) => ("drop", "success"),
            (Outcome::Retry(_), _) => ("retry", "retry"),
        };
        let elapsed = answer.as_ref().map(|_| started.elapsed());
        ctx.record_ingress(process_status, status_label, elapsed);
        outcome.into_attempt(status)
    })
    .await;
    let d = ready.delivery;
    let outcome_label = match &end {
        RetryEnd::Done(Outcome::Success) => "success",
        RetryEnd::Done(_) => "drop",
        RetryEnd::Exhausted(_) => "exhausted",
        RetryEnd::Stopped => "stopped",
        RetryEnd::Revoked => "revoked",
    };
    tracing::Span::current().record("outcome", outcome_label);
    if let Some(mut s) = span.take() {
        s.outcome(
            outcome_label,
            matches!(end, RetryEnd::Done(Outcome::Success)),
        );
    }
    match &end {
        RetryEnd::Done(Outcome::Success) | RetryEnd::Stopped => {}
        RetryEnd::Revoked => {
            tracing::info!(topic = %ctx.sub.topic, "message no longer ours (partition revoked or channel lost); left to its next owner")
        }
        RetryEnd::Done(outcome) => {
            tracing::warn!(topic = %ctx.sub.topic, ?outcome, "message dropped by the app")
        }
        RetryEnd::Exhausted(reason) => {
            tracing::warn!(topic = %ctx.sub.topic, %reason, "retries exhausted")
        }
    }
    let mark_of = |how: Option<Finish>| {
        how.zip(claim.as_ref())
            .map(|(how, (store, key))| (store.as_ref(), key, how))
    };
    match after_delivery(&end, claim.is_some()) {
        After::Ack { mark } => {
            if let Some((store, key, how)) = mark_of(mark) {
                if !mark_finished(ctx, store, std::slice::from_ref(key), how, stop).await {
                    return;
                }
            }
            let _ = d.ack.ack().await;
        }
        After::DeadLetter { mark } => {
            let reason = match &end {
                RetryEnd::Done(Outcome::Drop(r)) | RetryEnd::Exhausted(r) => r.clone(),
                _ => String::new(),
            };
            let why = Why::new(reason, attempts.load(Ordering::Relaxed));
            finish_dropped(ctx, d, stop, mark_of(mark), why).await
        }
        // Shutdown is not exhaustion: leave the message unacked, and give
        // the claim back so another sidecar may take it at once.
        After::Release => {
            if let Some((store, key)) = claim {
                let _ =
                    tokio::time::timeout(Duration::from_secs(1), store.release(vec![key])).await;
            }
        }
        After::Leave => {}
    }
}

/// The exported `deliver` span (when tracing is configured): the ids of
/// the trace context sent to the app, the event's `traceparent` (its
/// publish span) as parent.
pub(super) fn deliver_span(
    ctx: &SubCtx,
    ready: &super::context::Ready,
) -> Option<crate::telemetry::otel::Span> {
    use crate::telemetry::trace::TraceParent;
    if !crate::telemetry::otel::enabled() {
        return None;
    }
    let this = TraceParent::parse(ready.traceparent.as_deref()?)?;
    let parent = ready
        .event
        .get("traceparent")
        .and_then(serde_json::Value::as_str)
        .and_then(TraceParent::parse);
    let id = ready
        .event
        .get("id")
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default();
    let mut attributes = crate::telemetry::otel::messaging_attributes(
        &ctx.entry().component.type_name,
        &ctx.sub.pubsubname,
        &ctx.sub.topic,
        id,
        "process",
    );
    attributes.push(opentelemetry::KeyValue::new(
        "perch.route",
        ready.path.clone(),
    ));
    crate::telemetry::otel::start(
        format!("deliver {}", ctx.sub.topic),
        opentelemetry::trace::SpanKind::Consumer,
        &this,
        parent.as_ref(),
        attributes,
    )
}
