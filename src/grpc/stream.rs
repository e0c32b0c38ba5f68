//! `SubscribeTopicEventsAlpha1`, Dapr's streaming subscription: the first
//! message names the pubsub and topic (anything else first is an error, as
//! daprd: "initial request is required"), Perch answers `initial_response`
//! (the Go SDK requires it first), then sends each event and takes the
//! client's `event_processed` outcome for its id. The stream's end, from
//! either side, stops the subscription and leaves what is unsettled for
//! redelivery ([`crate::delivery::stream`]).

use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::mpsc;
use tonic::codegen::tokio_stream::{wrappers::ReceiverStream, Stream};
use tonic::{Request, Response, Status, Streaming};

use super::gen::subscribe_topic_events_request_alpha1::SubscribeTopicEventsRequestType as In;
use super::gen::subscribe_topic_events_response_alpha1::SubscribeTopicEventsResponseType as Out;
use super::gen::*;
use crate::config::{subscription::Route, SubscriptionSource, SubscriptionSpec};
use crate::delivery::stream::{StreamEvent, StreamOutcome, StreamSink};
use crate::delivery::{Engine, StartError};

/// The response stream of a streaming subscription.
pub type EventStream =
    Pin<Box<dyn Stream<Item = Result<SubscribeTopicEventsResponseAlpha1, Status>> + Send>>;

/// Serves one streaming subscription on `engine`.
pub async fn subscribe(
    engine: &Engine,
    req: Request<Streaming<SubscribeTopicEventsRequestAlpha1>>,
) -> Result<Response<EventStream>, Status> {
    let mut inbound = req.into_inner();
    let initial = match inbound.message().await? {
        Some(SubscribeTopicEventsRequestAlpha1 {
            subscribe_topic_events_request_type: Some(In::InitialRequest(i)),
        }) => i,
        _ => return Err(Status::unknown("initial request is required")),
    };
    if initial.pubsub_name.is_empty() {
        return Err(Status::unknown("pubsubName is required"));
    }
    if initial.topic.is_empty() {
        return Err(Status::unknown("topic is required"));
    }
    let spec = SubscriptionSpec {
        name: String::new(),
        pubsubname: initial.pubsub_name.clone(),
        topic: initial.topic.clone(),
        // daprd's one internal rule for a stream.
        rules: vec![Route {
            match_expr: String::new(),
            path: "/".into(),
        }],
        dead_letter_topic: initial.dead_letter_topic.filter(|t| !t.is_empty()),
        bulk: Default::default(),
        metadata: initial.metadata.into_iter().collect(),
        source: SubscriptionSource::Streaming,
    };
    let (events_tx, mut events) = mpsc::channel::<StreamEvent>(64);
    let sink = Arc::new(StreamSink::new(events_tx));
    engine
        .start_stream(spec, sink.clone())
        .await
        .map_err(|e| match e {
            StartError::UnknownPubsub => {
                Status::invalid_argument(format!("pubsub {} is not found", initial.pubsub_name))
            }
            StartError::Denied => Status::permission_denied(format!(
                "topic {} is not allowed for this app",
                initial.topic
            )),
            StartError::AlreadySubscribed => Status::unknown(format!(
                "already subscribed to pubsub {} topic {}",
                initial.pubsub_name, initial.topic
            )),
            other => Status::internal(other.to_string()),
        })?;
    tracing::info!(pubsub = %initial.pubsub_name, topic = %initial.topic, "streaming subscription opened");
    let (out_tx, out_rx) = mpsc::channel(64);
    let _ = out_tx
        .send(Ok(SubscribeTopicEventsResponseAlpha1 {
            subscribe_topic_events_response_type: Some(Out::InitialResponse(
                SubscribeTopicEventsResponseInitialAlpha1 {},
            )),
        }))
        .await;
    // Events out, until the client is gone.
    let writer_sink = sink.clone();
    tokio::spawn(async move {
        while let Some(ev) = events.recv().await {
            let msg = SubscribeTopicEventsResponseAlpha1 {
                subscribe_topic_events_response_type: Some(Out::EventMessage(
                    crate::delivery::app_grpc::request_of(ev),
                )),
            };
            if out_tx.send(Ok(msg)).await.is_err() {
                break;
            }
        }
        writer_sink.close();
    });
    // Outcomes in, until the stream ends.
    let (pubsub, topic) = (initial.pubsub_name, initial.topic);
    tokio::spawn(async move {
        loop {
            match inbound.message().await {
                Ok(Some(SubscribeTopicEventsRequestAlpha1 {
                    subscribe_topic_events_request_type: Some(In::EventProcessed(p)),
                })) => {
                    let outcome = StreamOutcome::from_wire(p.status.map_or(1, |s| s.status));
                    if !sink.settle(&p.id, outcome) {
                        tracing::debug!(id = %p.id, "an outcome for no event waiting; ignored");
                    }
                }
                Ok(Some(_)) => {
                    tracing::warn!(%pubsub, %topic, "duplicate initial request received; stream closed");
                    break;
                }
                Ok(None) | Err(_) => break,
            }
        }
        tracing::info!(%pubsub, %topic, "streaming subscription closed; unsettled events are redelivered");
        sink.close();
    });
    Ok(Response::new(Box::pin(ReceiverStream::new(out_rx))))
}
