//! `pubsub.in-memory`: topics live in this process. Each consumer group of a
//! topic has its own bounded queue; a message is kept until acked, and a nack
//! or a dropped handle puts it back at the front. A message published to a
//! topic no group subscribes to is accepted and discarded, as Dapr's
//! in-memory component does.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, Notify};

use super::{
    AckHandle, BoxFuture, Broker, BrokerError, Delivery, DeliveryStream, Message, SubscribeRequest,
};

/// The in-memory broker.
pub struct MemoryBroker {
    name: String,
    max_messages: usize,
    topics: Mutex<BTreeMap<String, BTreeMap<String, Arc<Group>>>>,
}

struct Group {
    state: Mutex<GroupState>,
    notify: Notify,
}

#[derive(Default)]
struct GroupState {
    queue: VecDeque<Message>,
    in_flight: usize,
}

impl MemoryBroker {
    /// A broker named after its component, with `max_messages` unacknowledged
    /// messages allowed per group before publishes fail.
    pub fn new(name: &str, max_messages: usize) -> Self {
        Self {
            name: name.to_owned(),
            max_messages,
            topics: Mutex::new(BTreeMap::new()),
        }
    }

    fn groups(&self, topic: &str) -> Vec<Arc<Group>> {
        let topics = self
            .topics
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        topics
            .get(topic)
            .map(|g| g.values().cloned().collect())
            .unwrap_or_default()
    }
}

impl Broker for MemoryBroker {
    fn publish(&self, msg: Message) -> BoxFuture<'_, Result<(), BrokerError>> {
        let groups = self.groups(&msg.topic);
        let result = (|| {
            let mut states: Vec<_> = groups
                .iter()
                .map(|g| {
                    g.state
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                })
                .collect();
            if states
                .iter()
                .any(|s| s.queue.len() + s.in_flight >= self.max_messages)
            {
                return Err(BrokerError::Unavailable(format!(
                    "in-memory pubsub {} is full: {} unacknowledged messages on topic {} (raise maxMessages)",
                    self.name, self.max_messages, msg.topic
                )));
            }
            for s in &mut states {
                s.queue.push_back(msg.clone());
            }
            Ok(())
        })();
        if result.is_ok() {
            for g in &groups {
                g.notify.notify_one();
            }
        }
        Box::pin(async move { result })
    }

    fn subscribe(
        &self,
        req: SubscribeRequest,
    ) -> BoxFuture<'_, Result<DeliveryStream, BrokerError>> {
        let group = {
            let mut topics = self
                .topics
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            topics
                .entry(req.topic.clone())
                .or_default()
                .entry(req.group.clone())
                .or_insert_with(|| {
                    Arc::new(Group {
                        state: Mutex::new(GroupState::default()),
                        notify: Notify::new(),
                    })
                })
                .clone()
        };
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(pump(group, tx, req.window.max(1)));
        Box::pin(async move { Ok(rx) })
    }

    fn health(&self) -> Result<(), BrokerError> {
        Ok(())
    }

    fn capabilities(&self) -> Vec<&'static str> {
        vec![]
    }

    fn lag(&self) -> BoxFuture<'_, Vec<super::Lag>> {
        let topics = self
            .topics
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let out = topics
            .iter()
            .flat_map(|(topic, groups)| {
                groups.values().map(move |g| {
                    let s = g
                        .state
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    super::Lag {
                        topic: topic.clone(),
                        partition: 0,
                        messages: (s.queue.len() + s.in_flight) as i64,
                    }
                })
            })
            .collect();
        Box::pin(async move { out })
    }
}

/// Moves queued messages into the subscription's channel, at most `window`
/// unfinished at a time, until the channel is dropped.
async fn pump(group: Arc<Group>, tx: mpsc::UnboundedSender<Delivery>, window: usize) {
    loop {
        let msg = loop {
            let next = {
                let mut s = group
                    .state
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let m = if s.in_flight < window {
                    s.queue.pop_front()
                } else {
                    None
                };
                if m.is_some() {
                    s.in_flight += 1;
                }
                m
            };
            match next {
                Some(m) => break m,
                None => tokio::select! {
                    _ = group.notify.notified() => {}
                    _ = tx.closed() => return,
                },
            }
        };
        let metadata = super::carried_metadata(&msg.metadata)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let delivery = Delivery {
            topic: msg.topic.clone(),
            data: msg.data.clone(),
            content_type: msg.content_type.clone(),
            metadata,
            lane: 0,
            owned: None,
            ack: Box::new(MemoryAck {
                group: group.clone(),
                msg: Some(msg),
            }),
        };
        // A closed channel hands the delivery back; dropping it requeues.
        if tx.send(delivery).is_err() {
            return;
        }
    }
}

struct MemoryAck {
    group: Arc<Group>,
    msg: Option<Message>,
}

impl MemoryAck {
    fn finish(&mut self, redeliver: bool) {
        if let Some(msg) = self.msg.take() {
            let mut s = self
                .group
                .state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            s.in_flight -= 1;
            if redeliver {
                s.queue.push_front(msg);
            }
            drop(s);
            self.group.notify.notify_one();
        }
    }
}

impl AckHandle for MemoryAck {
    fn ack(mut self: Box<Self>) -> BoxFuture<'static, Result<(), BrokerError>> {
        self.finish(false);
        Box::pin(async { Ok(()) })
    }
    fn nack(mut self: Box<Self>) -> BoxFuture<'static, Result<(), BrokerError>> {
        self.finish(true);
        Box::pin(async { Ok(()) })
    }
}

impl Drop for MemoryAck {
    fn drop(&mut self) {
        self.finish(true);
    }
}
