//! Streaming subscriptions (Dapr's `SubscribeTopicEventsAlpha1`): the
//! client on the other end of a stream plays the app. Each delivery is
//! sent as an event and waits for the client's outcome for its id; the
//! outcome goes through the same retry, dead-letter and ack code as an
//! app's answer. When the stream ends or breaks, the subscription stops:
//! what is unsettled is neither acked nor dead-lettered, and the broker
//! hands it out again (to the next stream).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use bytes::Bytes;
use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot, watch};

use super::app::AppAnswer;
use crate::cloudevents::Envelope;

/// One event for the stream's client, as daprd's `TopicEventRequest`.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamEvent {
    /// CloudEvent `id`: the client settles the event by it.
    pub id: String,
    /// `source`.
    pub source: String,
    /// `type`.
    pub r#type: String,
    /// `specversion`.
    pub spec_version: String,
    /// `datacontenttype`.
    pub data_content_type: String,
    /// `data` as bytes (`data_base64` decoded).
    pub data: Vec<u8>,
    /// The topic as subscribed.
    pub topic: String,
    /// The pub/sub component.
    pub pubsub_name: String,
    /// The route (`/` for a stream, as daprd).
    pub path: String,
    /// Every other CloudEvent attribute.
    pub extensions: Map<String, Value>,
}

/// The client's outcome for an event (`TopicEventResponse.status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamOutcome {
    /// Processed: ack.
    Success,
    /// Try again (the retry policy decides).
    Retry,
    /// Give up: dead letter.
    Drop,
}

impl StreamOutcome {
    /// From the wire enum; an unknown value is RETRY (daprd's rule).
    pub fn from_wire(v: i32) -> Self {
        match v {
            0 => Self::Success,
            2 => Self::Drop,
            _ => Self::Retry,
        }
    }
}

/// The engine's side of one stream.
pub struct StreamSink {
    events: mpsc::Sender<StreamEvent>,
    pending: Mutex<HashMap<String, VecDeque<oneshot::Sender<StreamOutcome>>>>,
    closed: watch::Sender<bool>,
}

impl StreamSink {
    /// A sink whose events go to `events` (read by the stream's writer).
    pub fn new(events: mpsc::Sender<StreamEvent>) -> Self {
        Self {
            events,
            pending: Mutex::new(HashMap::new()),
            closed: watch::channel(false).0,
        }
    }

    /// The client's outcome for `id` (the oldest event of that id still
    /// waiting); `false` when none waits.
    pub fn settle(&self, id: &str, outcome: StreamOutcome) -> bool {
        let mut p = self
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(q) = p.get_mut(id) else {
            return false;
        };
        let sent = q.pop_front().is_some_and(|tx| tx.send(outcome).is_ok());
        if q.is_empty() {
            p.remove(id);
        }
        sent
    }

    /// The stream ended: every waiting delivery gives up (unsettled).
    pub fn close(&self) {
        self.closed.send_replace(true);
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
    }

    /// Turns true when the stream ended.
    pub fn closed(&self) -> watch::Receiver<bool> {
        self.closed.subscribe()
    }

    /// Sends the CloudEvent `event` on the stream and waits for its
    /// outcome, as an app's answer; `None` when the stream is gone.
    pub async fn deliver(&self, topic: &str, pubsub: &str, event: &Envelope) -> AppAnswer {
        let ev = event_of(topic, pubsub, event)?;
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(ev.id.clone())
            .or_default()
            .push_back(tx);
        let mut closed = self.closed.subscribe();
        if *closed.borrow() || self.events.send(ev).await.is_err() {
            return None;
        }
        let outcome = tokio::select! {
            o = rx => o.ok()?,
            _ = closed.wait_for(|c| *c) => return None,
        };
        let body: &[u8] = match outcome {
            StreamOutcome::Success => b"",
            StreamOutcome::Retry => br#"{"status":"RETRY"}"#,
            StreamOutcome::Drop => br#"{"status":"DROP"}"#,
        };
        Some((200, Bytes::from_static(body)))
    }
}

/// The stream event for a CloudEvent (daprd's
/// `GRPCEnvelopeFromSubscriptionMessage`): `data_base64` decoded into
/// `data`, JSON `data` as its JSON text, a string as its bytes, and every
/// attribute but the core ones in `extensions`. Built from the event the
/// delivery already parsed; `None` when `data_base64` is not base64.
pub fn event_of(topic: &str, pubsub: &str, ce: &Envelope) -> Option<StreamEvent> {
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    let mut ev = StreamEvent {
        id: String::new(),
        source: String::new(),
        r#type: String::new(),
        spec_version: String::new(),
        data_content_type: String::new(),
        data: vec![],
        topic: topic.to_owned(),
        pubsub_name: pubsub.to_owned(),
        path: "/".to_owned(),
        extensions: Map::new(),
    };
    for (k, v) in ce {
        match k.as_str() {
            "id" => ev.id = text(v),
            "source" => ev.source = text(v),
            "type" => ev.r#type = text(v),
            "specversion" => ev.spec_version = text(v),
            "datacontenttype" => ev.data_content_type = text(v),
            // Read below, `data_base64` first.
            "data" | "data_base64" => {}
            _ => {
                ev.extensions.insert(k.clone(), v.clone());
            }
        }
    }
    ev.data = match (ce.get("data_base64"), ce.get("data")) {
        (Some(Value::String(b64)), _) => {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.decode(b64).ok()?
        }
        (_, Some(Value::String(s))) => s.clone().into_bytes(),
        (_, Some(Value::Null)) | (_, None) => vec![],
        (_, Some(v)) => crate::util::to_go_json(v),
    };
    Some(ev)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cloudevent_becomes_daprds_stream_event() {
        let body = br#"{"id":"1","source":"app","type":"t","specversion":"1.0","datacontenttype":"application/json","data":{"n":1},"traceparent":"00-x","topic":"orders","pubsubname":"pubsub"}"#;
        let parse = |b: &[u8]| serde_json::from_slice::<Envelope>(b).unwrap();
        let ev = event_of("orders", "pubsub", &parse(body)).unwrap();
        assert_eq!(ev.id, "1");
        assert_eq!(ev.data, br#"{"n":1}"#);
        assert_eq!(ev.path, "/");
        let ext: Vec<&str> = ev.extensions.keys().map(String::as_str).collect();
        assert_eq!(ext, ["pubsubname", "topic", "traceparent"]);
        let b64 =
            br#"{"id":"2","data_base64":"aGk=","datacontenttype":"application/octet-stream"}"#;
        assert_eq!(event_of("t", "p", &parse(b64)).unwrap().data, b"hi");
        assert_eq!(
            event_of("t", "p", &parse(br#"{"id":"3","data":"text"}"#))
                .unwrap()
                .data,
            b"text"
        );
        assert!(event_of("t", "p", &parse(br#"{"id":"4","data_base64":"%%"}"#)).is_none());
        assert_eq!(StreamOutcome::from_wire(7), StreamOutcome::Retry);
    }

    fn event(json: &str) -> Envelope {
        serde_json::from_str(json).unwrap()
    }

    #[tokio::test]
    async fn an_outcome_settles_its_event_and_a_closed_stream_settles_none() {
        let (tx, mut rx) = mpsc::channel(4);
        let sink = std::sync::Arc::new(StreamSink::new(tx));
        let s = sink.clone();
        let waiting = tokio::spawn(async move {
            s.deliver("t", "p", &event(r#"{"id":"a","data":"x"}"#))
                .await
        });
        assert_eq!(rx.recv().await.unwrap().id, "a");
        assert!(!sink.settle("other", StreamOutcome::Success));
        assert!(sink.settle("a", StreamOutcome::Drop));
        let answer = waiting.await.unwrap().unwrap();
        assert_eq!(&answer.1[..], br#"{"status":"DROP"}"#);

        let s = sink.clone();
        let waiting = tokio::spawn(async move {
            s.deliver("t", "p", &event(r#"{"id":"b","data":"x"}"#))
                .await
        });
        assert_eq!(rx.recv().await.unwrap().id, "b");
        sink.close();
        assert_eq!(
            waiting.await.unwrap(),
            None,
            "unsettled when the stream ends"
        );
    }
}
