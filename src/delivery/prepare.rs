//! Before the app: decode (CloudEvent JSON, or the raw-payload envelope),
//! drop what expired, route by the CEL rules. What cannot be delivered is
//! finished here (dead letter or ack).

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::watch;

use super::context::Ready;
use super::dead_letter::{dead_letter_topic, finish_dropped, Why, DEAD_LETTER_FROM};
use super::{retry, SubCtx};
use crate::broker::Delivery;
use crate::cloudevents::{self, Envelope};
use crate::telemetry::trace::TraceParent;

/// Decodes, checks expiry and routes one delivery. A message that cannot be
/// delivered (not a CloudEvent, expired, no route) is finished here (dead
/// letter or ack) and `None` is returned.
pub(super) async fn prepare(
    ctx: &SubCtx,
    d: Delivery,
    mut stop: watch::Receiver<bool>,
) -> Option<Ready> {
    let sub = &ctx.sub;
    let mut metadata = d.metadata.clone();
    if let Some(ct) = &d.content_type {
        metadata.insert("content-type".into(), ct.clone());
    }
    metadata.insert("pubsubName".into(), sub.pubsubname.clone());
    let (body, event) = if ctx.raw {
        let ev = cloudevents::raw_payload_envelope(&sub.pubsubname, &sub.topic, &d.data, &metadata);
        (Bytes::from(crate::util::to_go_json(&ev)), Some(ev))
    } else {
        // An HTTP app without routing rules gets the broker's bytes: only
        // the attributes the delivery reads are parsed out of them.
        let event = if ctx.needs_whole_event() {
            serde_json::from_slice::<Envelope>(&d.data).ok()
        } else {
            cloudevents::parse_attributes(&d.data, cloudevents::DELIVERY_ATTRIBUTES)
        };
        (d.data.clone(), event)
    };
    let Some(event) = event else {
        tracing::warn!(topic = %sub.topic, "message is not a JSON CloudEvent; dead-lettering");
        finish_dropped(ctx, d, stop, None, Why::new("not a JSON CloudEvent", 0)).await;
        return None;
    };
    // A dead letter keeps its `expiration`; it is delivered anyway, since
    // the dead-letter topic exists so that it can be inspected.
    if !d.metadata.contains_key(DEAD_LETTER_FROM) && cloudevents::has_expired(&event) {
        tracing::warn!(topic = %sub.topic, "dropping expired pub/sub event");
        finish_dropped(ctx, d, stop, None, Why::new("expired", 0)).await;
        return None;
    }
    let path = match ctx.router.route(&event) {
        Ok(Some(p)) => p.to_owned(),
        Ok(None) => {
            tracing::debug!(topic = %sub.topic, "no route matched; dropping");
            ctx.record_ingress("drop", "success", None);
            finish_dropped(ctx, d, stop, None, Why::new("no route matched", 0)).await;
            return None;
        }
        Err(e) if dead_letter_topic(ctx).is_some() => {
            tracing::warn!(topic = %sub.topic, error = %e, "routing failed; dead-lettering");
            finish_dropped(
                ctx,
                d,
                stop,
                None,
                Why::new(format!("routing failed: {e}"), 0),
            )
            .await;
            return None;
        }
        Err(e) => {
            // Dapr returns the error to the broker (redelivery); pause first
            // so a bad rule does not spin.
            tracing::error!(topic = %sub.topic, error = %e, "routing failed and no dead-letter topic; will redeliver");
            tokio::select! {
                _ = tokio::time::sleep(retry::DEFAULT_INITIAL) => {}
                _ = stop.wait_for(|s| *s) => return None,
            }
            let _ = d.ack.nack().await;
            return None;
        }
    };
    let traceparent = event
        .get("traceparent")
        .or_else(|| event.get("traceid"))
        .and_then(Value::as_str)
        .map(|tp| TraceParent::child_of(Some(tp)).to_string());
    Some(Ready {
        path,
        body,
        event,
        metadata,
        traceparent,
        delivery: d,
    })
}
