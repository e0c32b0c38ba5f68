//! The broker trait's contract, driven directly (as Dapr's component
//! conformance drives its `PubSub` interface, reference 12.1), for every
//! backend: each subscription gets its own topic, a cancelled subscription
//! stops receiving while the other continues and loses nothing, nack
//! redelivers, ack finishes.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use perch::broker::{Broker, Delivery, DeliveryStream, Message};

fn broker_for(b: &Bench) -> Arc<dyn Broker> {
    b.broker(&[])
}

fn msg(topic: &str, n: u32) -> Message {
    Message {
        topic: topic.to_owned(),
        data: Bytes::from(format!("{n}")),
        content_type: Some("text/plain".into()),
        metadata: Default::default(),
    }
}

async fn subscribe(broker: &dyn Broker, b: &Bench, topic: &str) -> DeliveryStream {
    b.subscribe(broker, topic, 16).await
}

async fn next(stream: &mut DeliveryStream) -> Result<Delivery, String> {
    tokio::time::timeout(Duration::from_secs(20), stream.recv())
        .await
        .map_err(|_| "nothing delivered within 20s".to_string())?
        .ok_or_else(|| "stream ended".to_string())
}

/// Receives `n` messages, acks them, and returns their payloads as numbers.
async fn take(stream: &mut DeliveryStream, n: usize) -> Result<Vec<u32>, String> {
    let mut out = vec![];
    for _ in 0..n {
        let d = next(stream).await?;
        out.push(std::str::from_utf8(&d.data).unwrap().parse().unwrap());
        d.ack.ack().await.map_err(|e| e.to_string())?;
    }
    out.sort();
    Ok(out)
}

async fn cancelled_subscription_stops_and_the_other_continues(b: &Bench) -> TestResult {
    let broker = broker_for(b);
    let (t1, t2) = (b.topic("multi1"), b.topic("multi2"));
    let mut s1 = subscribe(broker.as_ref(), b, &t1).await;
    let mut s2 = subscribe(broker.as_ref(), b, &t2).await;
    for n in 0..6 {
        let topic = if n % 2 == 0 { &t1 } else { &t2 };
        broker.publish(msg(topic, n)).await?;
    }
    assert_eq!(take(&mut s1, 3).await?, [0, 2, 4], "topic 1 only");
    assert_eq!(take(&mut s2, 3).await?, [1, 3, 5], "topic 2 only");
    drop(s1);
    for n in 6..10 {
        let topic = if n % 2 == 0 { &t1 } else { &t2 };
        broker.publish(msg(topic, n)).await?;
    }
    assert_eq!(take(&mut s2, 2).await?, [7, 9], "topic 2 keeps flowing");
    let mut again = subscribe(broker.as_ref(), b, &t1).await;
    assert_eq!(
        take(&mut again, 2).await?,
        [6, 8],
        "what was published while cancelled waits for the group"
    );
    Ok(())
}

async fn nack_redelivers_and_ack_finishes(b: &Bench) -> TestResult {
    let broker = broker_for(b);
    let topic = b.topic("nack");
    let mut s = subscribe(broker.as_ref(), b, &topic).await;
    broker.publish(msg(&topic, 1)).await?;
    let first = next(&mut s).await?;
    assert_eq!(first.data, "1");
    first.ack.nack().await?;
    let again = next(&mut s).await?;
    assert_eq!(again.data, "1", "nacked: delivered again");
    again.ack.ack().await?;
    assert!(
        tokio::time::timeout(Duration::from_secs(2), s.recv())
            .await
            .is_err(),
        "acked: not delivered again"
    );
    Ok(())
}

async fn batch_publish_reports_each_message(b: &Bench) -> TestResult {
    let broker = broker_for(b);
    let topic = b.topic("batch");
    let mut s = subscribe(broker.as_ref(), b, &topic).await;
    let results = broker
        .publish_batch((0..5).map(|n| msg(&topic, n)).collect())
        .await;
    assert_eq!(results.len(), 5);
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(take(&mut s, 5).await?, [0, 1, 2, 3, 4]);
    Ok(())
}

macro_rules! contract {
    ($module:ident, $backend:expr) => {
        mod $module {
            use super::*;
            contract!(@tests $backend;
                cancelled_subscription_stops_and_the_other_continues,
                nack_redelivers_and_ack_finishes,
                batch_publish_reports_each_message);
        }
    };
    (@tests $backend:expr; $($name:ident),*) => {
        $(
            #[tokio::test]
            async fn $name() -> TestResult {
                super::$name(&Bench::new($backend)).await
            }
        )*
    };
}

contract!(memory, Backend::Memory);
contract!(kafka, Backend::Kafka);
contract!(rabbitmq, Backend::Rabbit);
contract!(redis, Backend::Redis);
