//! `pubsub.rabbitmq` on lapin, with Dapr's topology (reference 4.4): an
//! exchange per topic (`exchangeKind`, default fanout) and a queue per
//! subscribing app, `{consumerID}-{topic}` (or the subscription's
//! `queueName`), bound with the subscription's `routingKey`s. Replicas of an
//! app compete on one queue; different apps each get every message.
//!
//! **Connection**: one connection per component, kept by a task that
//! reconnects forever with capped backoff (also when the broker is down at
//! start-up); each subscription redeclares its topology and resumes
//! consuming on every new connection. While disconnected, publishes fail
//! with Dapr's 500 and `/v1.0/healthz/outbound` reports the outage.
//!
//! **Publish**: durable exchanges and persistent messages by default;
//! publisher confirms awaited (a negative confirm is an error, unlike
//! Dapr), and a batch is published first and confirmed after, so a bulk
//! publish is not one round trip per message. Metadata travels as AMQP
//! headers; `routingKey`, `priority`, `ttlInSeconds`, `messageID`,
//! `correlationID`, `type` and `contentType` map onto AMQP properties.
//!
//! **Consume**: manual acks, each delivery settled when finished (in any
//! order) through the consume loop, which sends what finished below the
//! oldest unfinished delivery as one `multiple` ack and the rest one by one;
//! prefetch = the in-flight window (`maxInFlight`) unless
//! `prefetchCount` is set; a nack requeues (the sidecar owns retries; there
//! is no requeue loop). The subscription's dead-letter topic gets its
//! exchange and a durable queue `{consumerID}-{dead-letter topic}` declared
//! with the subscription, so dead letters are kept before anyone subscribes.

//!
//! Files: `connection` (the reconnecting connection keeper, TLS),
//! `publisher` (exchanges, properties, confirms), `consumer` (the consume
//! loop and ack handles), `acks` (the pure ack ledger), `topology` (queue
//! declarations and bindings), `properties` (AMQP properties and headers as
//! delivered metadata).

mod acks;
pub mod config;
mod connection;
mod consumer;
mod dead_letters;
mod properties;
mod publisher;
mod topology;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use tokio::sync::{mpsc, watch};

use super::{BoxFuture, Broker, BrokerError, DeliveryStream, Lag, Message, SubscribeRequest};
use config::{redact, RabbitConfig};

/// How long a publish (including its confirm) may take.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a publish waits for a connection before failing.
const CONNECT_GRACE: Duration = Duration::from_secs(2);
/// How long `close` waits for the consume loops to write their last acks.
const CLOSE_GRACE: Duration = Duration::from_secs(3);
/// Longest wait between reconnection attempts.
const MAX_RECONNECT_WAIT: Duration = Duration::from_secs(5);

/// A live connection and its publishing channel.
struct Live {
    generation: u64,
    conn: Connection,
    publish: tokio::sync::Mutex<Option<Channel>>,
    /// Exchanges declared on this connection.
    declared: Mutex<HashSet<String>>,
}

/// The RabbitMQ broker of one component.
pub struct RabbitBroker {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    cfg: RabbitConfig,
    live: watch::Sender<Option<Arc<Live>>>,
    /// (topic, queue) of each subscription.
    queues: Mutex<Vec<(String, String)>>,
    /// Each subscription's consume loop, awaited at close so the acks of
    /// what finished are written before the connection goes (review F9).
    loops: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    closed: AtomicBool,
}

impl RabbitBroker {
    /// Starts connecting in the background.
    pub fn new(name: &str, cfg: &RabbitConfig) -> Self {
        let inner = Arc::new(Inner {
            name: name.to_owned(),
            cfg: cfg.clone(),
            live: watch::Sender::new(None),
            queues: Mutex::new(vec![]),
            loops: Mutex::new(vec![]),
            closed: AtomicBool::new(false),
        });
        crate::util::spawn_watched(
            "rabbitmq connection",
            connection::keep_connected(Arc::downgrade(&inner)),
        );
        Self { inner }
    }
}

impl Inner {
    /// The live connection, waiting up to `CONNECT_GRACE` for one (so the
    /// first publishes after start-up or a reconnect do not fail).
    async fn connected(&self) -> Result<Arc<Live>, BrokerError> {
        let mut rx = self.live.subscribe();
        if let Ok(Ok(l)) = tokio::time::timeout(CONNECT_GRACE, rx.wait_for(Option::is_some)).await {
            if let Some(l) = l.clone() {
                return Ok(l);
            }
        }
        self.current()
    }

    fn current(&self) -> Result<Arc<Live>, BrokerError> {
        self.live.borrow().clone().ok_or_else(|| {
            BrokerError::Unavailable(format!(
                "rabbitmq pubsub {}: not connected to {}",
                self.name,
                redact(&self.cfg.uri)
            ))
        })
    }

    /// A lapin error, classified once: the broker's channel-level refusals
    /// of this message or its exchange (access refused, not found, an
    /// exchange declared with other settings, content too large, no route)
    /// are final; everything else (connection and channel loss, timeouts,
    /// a resource locked) may pass later.
    fn error(&self, e: lapin::Error) -> BrokerError {
        let text = format!("rabbitmq pubsub {}: {e}", self.name);
        if is_final(&e) {
            BrokerError::Rejected(text)
        } else {
            BrokerError::Unavailable(text)
        }
    }
}

impl Broker for RabbitBroker {
    fn dead_letters<'a>(
        &'a self,
        topic: &'a str,
        group: &'a str,
    ) -> BoxFuture<'a, Result<Box<dyn crate::broker::DeadLetters>, BrokerError>> {
        Box::pin(async move {
            let live = self.inner.connected().await?;
            dead_letters::open(&live.conn, format!("{group}-{topic}"), topic).await
        })
    }

    fn publish(&self, msg: Message) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async move {
            let inner = &self.inner;
            let work = async {
                let pending = inner.send(&msg).await?;
                inner.confirmed(pending).await
            };
            tokio::time::timeout(PUBLISH_TIMEOUT, work)
                .await
                .unwrap_or_else(|_| {
                    Err(BrokerError::Unavailable(format!(
                        "rabbitmq pubsub {}: publish not confirmed within {PUBLISH_TIMEOUT:?}",
                        inner.name
                    )))
                })
        })
    }

    fn publish_batch(&self, msgs: Vec<Message>) -> BoxFuture<'_, Vec<Result<(), BrokerError>>> {
        Box::pin(async move {
            let inner = &self.inner;
            // All sent first, then the confirms awaited: pipelined. A send
            // that fails stops the batch: the messages after it are not
            // sent (and answered unavailable), so a retry of the batch
            // keeps their order instead of publishing them ahead of it.
            let mut pending = Vec::with_capacity(msgs.len());
            let mut failed = false;
            for m in &msgs {
                if failed {
                    pending.push(Err(BrokerError::Unavailable(format!(
                        "rabbitmq pubsub {}: not sent: an earlier message of the batch failed",
                        inner.name
                    ))));
                    continue;
                }
                let sent = inner.send(m).await;
                failed = sent.is_err();
                pending.push(sent);
            }
            let mut out = Vec::with_capacity(pending.len());
            for p in pending {
                out.push(match p {
                    Ok(confirm) => tokio::time::timeout(PUBLISH_TIMEOUT, inner.confirmed(confirm))
                        .await
                        .unwrap_or_else(|_| {
                            Err(BrokerError::Unavailable(format!(
                                "rabbitmq pubsub {}: publish not confirmed in time",
                                inner.name
                            )))
                        }),
                    Err(e) => Err(e),
                });
            }
            out
        })
    }

    fn validate(&self, msg: &Message) -> Result<(), String> {
        self.inner.validate(msg)
    }

    fn subscribe(
        &self,
        req: SubscribeRequest,
    ) -> BoxFuture<'_, Result<DeliveryStream, BrokerError>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            let queue = req
                .metadata
                .get("queueName")
                .cloned()
                .unwrap_or_else(|| format!("{}-{}", req.group, req.topic));
            publisher::exchange_name(&req.topic).map_err(BrokerError::Rejected)?;
            if queue.len() > publisher::SHORT_MAX {
                return Err(BrokerError::Rejected(format!(
                    "queue name {}... is {} bytes; a RabbitMQ queue name is at most 255 bytes (set a shorter queueName)",
                    queue.chars().take(32).collect::<String>(),
                    queue.len()
                )));
            }
            inner
                .queues
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push((req.topic.clone(), queue.clone()));
            let (tx, rx) = mpsc::unbounded_channel();
            let (declared_tx, declared) = tokio::sync::oneshot::channel();
            let connected = inner.live.borrow().is_some();
            let consume = tokio::spawn(consumer::consume_forever(
                inner.clone(),
                req,
                queue.clone(),
                tx,
                declared_tx,
            ));
            inner
                .loops
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(consume);
            // Like Dapr, return once consuming (the queue is bound, so what
            // is published next reaches it); when the broker is down the
            // subscription starts by itself on connection.
            let wait = if connected {
                Duration::from_secs(10)
            } else {
                CONNECT_GRACE
            };
            if tokio::time::timeout(wait, declared).await.is_err() {
                tracing::warn!(pubsub = %inner.name, %queue, "rabbitmq not reachable yet; the subscription starts when it is");
            }
            Ok(rx)
        })
    }

    fn health(&self) -> Result<(), BrokerError> {
        let live = self.inner.current()?;
        if live.conn.status().connected() {
            Ok(())
        } else {
            Err(BrokerError::Unavailable(format!(
                "rabbitmq pubsub {}: connection lost",
                self.inner.name
            )))
        }
    }

    fn capabilities(&self) -> Vec<&'static str> {
        vec!["MESSAGE_TTL"]
    }

    fn lag(&self) -> BoxFuture<'_, Vec<Lag>> {
        Box::pin(async move {
            let Ok(live) = self.inner.current() else {
                return vec![];
            };
            let queues = self
                .inner
                .queues
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone();
            let mut out = vec![];
            for (topic, q) in queues {
                // A passive declare of a missing queue closes its channel.
                let Ok(ch) = live.conn.create_channel().await else {
                    break;
                };
                let passive = QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                };
                if let Ok(info) = ch
                    .queue_declare(q.as_str().into(), passive, FieldTable::default())
                    .await
                {
                    out.push(Lag {
                        topic: topic.clone(),
                        partition: 0,
                        messages: i64::from(info.message_count()),
                    });
                }
                let _ = ch.close(200, "lag read".into()).await;
            }
            out
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            // The engine has dropped its subscriptions: each consume loop
            // settles what it handed out (the last acks of a clean
            // shutdown) and closes its channel. Wait for that, a bounded
            // time, before the connection closes under them.
            if !crate::util::join_within(&self.inner.loops, CLOSE_GRACE).await {
                tracing::warn!(pubsub = %self.inner.name, "rabbitmq consumers still settling at close; what they hold is redelivered");
            }
            self.inner.closed.store(true, Ordering::Release);
            if let Some(live) = self.inner.live.send_replace(None) {
                let _ = live.conn.close(200, "perch shutting down".into()).await;
            }
        })
    }
}

/// The broker refused the operation for good (AMQP soft errors 311, 312,
/// 403, 404 and 406): trying again with the same message cannot work.
fn is_final(e: &lapin::Error) -> bool {
    use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
    match e.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => matches!(
            amqp.kind(),
            AMQPErrorKind::Soft(
                AMQPSoftError::ACCESSREFUSED
                    | AMQPSoftError::NOTFOUND
                    | AMQPSoftError::PRECONDITIONFAILED
                    | AMQPSoftError::CONTENTTOOLARGE
                    | AMQPSoftError::NOROUTE
            )
        ),
        _ => false,
    }
}

#[cfg(test)]
mod classify_tests {
    use super::is_final;
    use lapin::protocol::{AMQPError, AMQPErrorKind, AMQPHardError, AMQPSoftError};

    #[test]
    fn refusals_are_final_and_losses_retryable() {
        let soft = |k| {
            lapin::Error::from(lapin::ErrorKind::ProtocolError(AMQPError::new(
                AMQPErrorKind::Soft(k),
                "x".into(),
            )))
        };
        assert!(is_final(&soft(AMQPSoftError::ACCESSREFUSED)));
        assert!(is_final(&soft(AMQPSoftError::PRECONDITIONFAILED)));
        assert!(is_final(&soft(AMQPSoftError::NOTFOUND)));
        assert!(!is_final(&soft(AMQPSoftError::RESOURCELOCKED)));
        let hard = lapin::Error::from(lapin::ErrorKind::ProtocolError(AMQPError::new(
            AMQPErrorKind::Hard(AMQPHardError::CONNECTIONFORCED),
            "x".into(),
        )));
        assert!(!is_final(&hard));
        let io = lapin::Error::from(lapin::ErrorKind::IOError(std::sync::Arc::new(
            std::io::Error::from(std::io::ErrorKind::ConnectionReset),
        )));
        assert!(!is_final(&io));
    }
}
