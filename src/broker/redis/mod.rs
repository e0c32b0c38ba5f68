//! `pubsub.redis` on Redis Streams, with Dapr's layout and group model
//! (components-contrib `pubsub/redis`): a topic is a stream, publish is
//! `XADD` (fields `data` and `metadata`, see `entry`), and each app is a
//! consumer group (`consumerID`, else the app id) created at the stream's
//! start (`XGROUP CREATE … 0 MKSTREAM`), so what was published before the
//! first subscription is delivered, as Dapr does. Replicas of an app
//! compete in the group; different apps each get every message.
//!
//! **Connections**: one multiplexed connection per component (publishes,
//! acks, claims, lag), and one per subscription for its blocking reads;
//! both reconnect by themselves (`redisMaxRetries` attempts per command,
//! then the command fails and the next one tries again). While Redis is
//! down publishes fail with Dapr's 500 (or go to the outbox) and
//! `/v1.0/healthz/outbound` reports the outage (a `PING` every second).
//!
//! **Publish**: `XADD` resolves once Redis appended the entry (with
//! `maxLenApprox`: `MAXLEN ~ n`; with `streamTTL`: `MINID ~`); a batch is
//! one pipeline, with a result per message.
//!
//! **Consume** (`consumer`): `XREADGROUP … >` reads at most the in-flight
//! window (and `queueDepth` per read); an entry is acked (`XACK`, batched)
//! only when the engine finishes it. A nack re-reads the entry by claiming
//! it again (`XCLAIM`), so it is redelivered at once. Each sidecar is a
//! consumer of its own in the group, named by its pod (or host) and app
//! port (not Dapr's one name shared by every replica, with which replicas
//! cannot tell each other's entries apart): a restarted sidecar first
//! delivers what it held before (`XREADGROUP … 0`), in order, then new
//! entries. It keeps what it holds fresh (`XCLAIM … JUSTID` of its
//! in-flight entries, a third of `processingTimeout` apart), so that
//! `XAUTOCLAIM` every `redeliverInterval` takes over only what a dead or
//! stalled consumer held for longer than `processingTimeout`. An entry a
//! stalled sidecar lost that way stops being retried there (it is
//! "revoked", like a Kafka partition). On shutdown what was read and not
//! finished is handed back at once (its idle time set to
//! `processingTimeout`), so another replica takes it on its next reclaim.
//!
//! **Order**: a stream has no partitions: one lane, read in order; what is
//! redelivered (nacked or reclaimed) comes after what was read since.

pub mod config;
mod consumer;
mod dead_letters;
mod entry;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo};

use super::{BoxFuture, Broker, BrokerError, DeliveryStream, Lag, Message, SubscribeRequest};
use config::RedisConfig;

/// How long `close` waits for the subscriptions to write their last acks.
const CLOSE_GRACE: Duration = Duration::from_secs(3);
/// How often the component's connection is checked.
const HEALTH_EVERY: Duration = Duration::from_secs(1);

/// The Redis broker of one component.
pub struct RedisBroker {
    inner: Arc<Inner>,
}

pub(super) struct Inner {
    name: String,
    cfg: RedisConfig,
    client: Client,
    /// Publishes, acks, claims, lag.
    conn: ConnectionManager,
    healthy: AtomicBool,
    closed: AtomicBool,
    /// (stream, group) of each subscription, for lag.
    subs: Mutex<Vec<(String, String)>>,
    /// Each subscription's tasks, awaited at close.
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// The client for `cfg`: TCP or TLS (`enableTLS`, the system's roots and
/// `SSL_CERT_FILE`; `clientCert`/`clientKey` for mutual TLS), with the
/// user, password and database of the component.
fn client_for(cfg: &RedisConfig) -> Result<Client, String> {
    let (host, port) = cfg
        .addr
        .rsplit_once(':')
        .and_then(|(h, p)| {
            Some((
                h.trim_matches(['[', ']']).to_owned(),
                p.parse::<u16>().ok()?,
            ))
        })
        .ok_or_else(|| format!("redisHost {:?} is not host:port", cfg.addr))?;
    let addr = if cfg.tls {
        ConnectionAddr::TcpTls {
            host,
            port,
            insecure: cfg.insecure_tls,
            tls_params: None,
        }
    } else {
        ConnectionAddr::Tcp(host, port)
    };
    let mut redis = RedisConnectionInfo::default().set_db(cfg.db);
    if let Some(u) = &cfg.username {
        redis = redis.set_username(u);
    }
    if let Some(p) = &cfg.password {
        redis = redis.set_password(p);
    }
    let info = addr
        .into_connection_info()
        .map_err(|e| e.to_string())?
        .set_redis_settings(redis);
    match &cfg.client_cert {
        Some((cert, key)) => Client::build_with_tls(
            info,
            redis::TlsCertificates {
                client_tls: Some(redis::ClientTlsConfig {
                    client_cert: cert.as_bytes().to_vec(),
                    client_key: key.as_bytes().to_vec(),
                }),
                root_cert: None,
            },
        ),
        None => Client::open(info),
    }
    .map_err(|e| e.to_string())
}

impl RedisBroker {
    /// Connects lazily: a Redis that is down at start-up is retried.
    pub fn new(name: &str, cfg: &RedisConfig) -> Result<Self, BrokerError> {
        let rejected = |e: String| BrokerError::Rejected(format!("redis pubsub {name}: {e}"));
        let client = client_for(cfg).map_err(rejected)?;
        let conn =
            ConnectionManager::new_lazy_with_config(client.clone(), manager_config(cfg, None))
                .map_err(|e| rejected(e.to_string()))?;
        let inner = Arc::new(Inner {
            name: name.to_owned(),
            cfg: cfg.clone(),
            client,
            conn,
            healthy: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            subs: Mutex::new(vec![]),
            tasks: Mutex::new(vec![]),
        });
        crate::util::spawn_watched("redis health", check_health(Arc::downgrade(&inner)));
        Ok(Self { inner })
    }
}

/// The connection settings of `cfg`; `wait` is the longest a blocking read
/// waits, added to the answer timeout of the connection that makes it.
fn manager_config(cfg: &RedisConfig, wait: Option<Duration>) -> ConnectionManagerConfig {
    let answer = cfg.read_timeout + wait.unwrap_or_default();
    ConnectionManagerConfig::new()
        .set_number_of_retries(cfg.max_retries)
        .set_min_delay(cfg.min_retry_interval.max(Duration::from_millis(1)))
        .set_max_delay(cfg.max_retry_interval.max(cfg.min_retry_interval))
        .set_connection_timeout(Some(cfg.dial_timeout))
        .set_response_timeout(Some(answer))
}

/// Pings the component's connection every second while the broker lives.
async fn check_health(inner: Weak<Inner>) {
    let mut tick = tokio::time::interval(HEALTH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        if inner.closed.load(Ordering::Acquire) {
            return;
        }
        let mut conn = inner.conn.clone();
        let ok = redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .is_ok();
        if inner.healthy.swap(ok, Ordering::AcqRel) != ok {
            if ok {
                tracing::info!(pubsub = %inner.name, addr = %inner.cfg.addr, "redis connected");
            } else {
                tracing::warn!(pubsub = %inner.name, addr = %inner.cfg.addr, "redis not reachable");
            }
        }
    }
}

impl Inner {
    /// A Redis error, classified once: lost connections, timeouts and a
    /// server that is loading, busy or out of memory may pass later; a
    /// refusal of the command itself (the key is not a stream, no
    /// permission, bad arguments) is final.
    pub(super) fn error(&self, what: &str, e: &redis::RedisError) -> BrokerError {
        let text = format!("redis pubsub {}: {what}: {e}", self.name);
        if is_final(e) {
            BrokerError::Rejected(text)
        } else {
            if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
                // Reported at once; the next PING says when it is back.
                self.healthy.store(false, Ordering::Release);
            }
            BrokerError::Unavailable(text)
        }
    }

    /// The `XADD` of `msg`, trimmed as the component says.
    fn xadd(&self, msg: &Message) -> redis::Cmd {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&msg.topic);
        if let Some(n) = self.cfg.max_len_approx {
            cmd.arg("MAXLEN").arg("~").arg(n);
        } else if let Some(min) = self.min_id() {
            cmd.arg("MINID").arg("~").arg(min);
        }
        cmd.arg("*");
        entry::push_fields(&mut cmd, msg);
        cmd
    }

    /// `streamTTL` as the oldest entry id to keep (Dapr's `GetMinID`).
    fn min_id(&self) -> Option<String> {
        let ttl = self.cfg.stream_ttl?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?;
        Some(format!("{}-1", now.saturating_sub(ttl).as_millis()))
    }

    /// With both `maxLenApprox` and `streamTTL` set, the `XADD` trims by
    /// length and this trims by age after it.
    fn trim_by_age(&self, pipe: &mut redis::Pipeline, topic: &str) {
        if self.cfg.max_len_approx.is_some() {
            if let Some(min) = self.min_id() {
                pipe.cmd("XTRIM")
                    .arg(topic)
                    .arg("MINID")
                    .arg("~")
                    .arg(min)
                    .ignore();
            }
        }
    }
}

/// The server refused the command for good.
fn is_final(e: &redis::RedisError) -> bool {
    if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() {
        return false;
    }
    matches!(
        e.code(),
        Some("WRONGTYPE" | "NOPERM" | "ERR" | "NOSCRIPT" | "EXECABORT")
    )
}

impl Broker for RedisBroker {
    fn dead_letters<'a>(
        &'a self,
        topic: &'a str,
        group: &'a str,
    ) -> BoxFuture<'a, Result<Box<dyn crate::broker::DeadLetters>, BrokerError>> {
        Box::pin(dead_letters::open(self.inner.conn.clone(), topic, group))
    }

    fn publish(&self, msg: Message) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async move {
            let inner = &self.inner;
            let mut conn = inner.conn.clone();
            let mut pipe = redis::pipe();
            pipe.add_command(inner.xadd(&msg));
            inner.trim_by_age(&mut pipe, &msg.topic);
            pipe.query_async::<Vec<redis::Value>>(&mut conn)
                .await
                .map(drop)
                .map_err(|e| inner.error("publish", &e))
        })
    }

    fn publish_batch(&self, msgs: Vec<Message>) -> BoxFuture<'_, Vec<Result<(), BrokerError>>> {
        Box::pin(async move {
            let inner = &self.inner;
            if msgs.is_empty() {
                return vec![];
            }
            // One pipeline, one round trip; each XADD answers for itself.
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            for m in &msgs {
                pipe.add_command(inner.xadd(m));
            }
            let mut conn = inner.conn.clone();
            let answers = pipe
                .query_async::<Vec<redis::RedisResult<redis::Value>>>(&mut conn)
                .await;
            let out: Vec<Result<(), BrokerError>> = match answers {
                Ok(each) if each.len() == msgs.len() => each
                    .into_iter()
                    .map(|r| r.map(drop).map_err(|e| inner.error("publish", &e)))
                    .collect(),
                Ok(each) => (0..msgs.len())
                    .map(|_| {
                        Err(BrokerError::Unavailable(format!(
                            "redis pubsub {}: {} answers to {} publishes",
                            inner.name,
                            each.len(),
                            msgs.len()
                        )))
                    })
                    .collect(),
                Err(e) => (0..msgs.len())
                    .map(|_| Err(inner.error("publish", &e)))
                    .collect(),
            };
            // With both maxLenApprox and streamTTL, each topic of the batch
            // is trimmed by age once after it.
            if inner.cfg.max_len_approx.is_some() && inner.cfg.stream_ttl.is_some() {
                let topics: std::collections::BTreeSet<&str> =
                    msgs.iter().map(|m| m.topic.as_str()).collect();
                let mut trims = redis::pipe();
                for t in topics {
                    inner.trim_by_age(&mut trims, t);
                }
                let _ = trims.query_async::<()>(&mut conn).await;
            }
            out
        })
    }

    fn subscribe(
        &self,
        req: SubscribeRequest,
    ) -> BoxFuture<'_, Result<DeliveryStream, BrokerError>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            if inner.closed.load(Ordering::Acquire) {
                return Err(BrokerError::Unavailable(format!(
                    "redis pubsub {}: closed",
                    inner.name
                )));
            }
            inner
                .subs
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push((req.topic.clone(), req.group.clone()));
            let (rx, tasks) = consumer::start(inner.clone(), req).await?;
            inner
                .tasks
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .extend(tasks);
            Ok(rx)
        })
    }

    fn health(&self) -> Result<(), BrokerError> {
        if self.inner.healthy.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(BrokerError::Unavailable(format!(
                "redis pubsub {}: not connected to {}",
                self.inner.name, self.inner.cfg.addr
            )))
        }
    }

    fn capabilities(&self) -> Vec<&'static str> {
        // Dapr's Redis component declares no features.
        vec![]
    }

    fn lag(&self) -> BoxFuture<'_, Vec<Lag>> {
        Box::pin(async move {
            let subs = self
                .inner
                .subs
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone();
            let mut conn = self.inner.conn.clone();
            let mut out = vec![];
            for (topic, group) in subs {
                let Ok(groups) = redis::cmd("XINFO")
                    .arg("GROUPS")
                    .arg(&topic)
                    .query_async::<redis::streams::StreamInfoGroupsReply>(&mut conn)
                    .await
                else {
                    continue;
                };
                if let Some(g) = groups.groups.iter().find(|g| g.name == group) {
                    // Pending (read, not acked) plus not read yet. Redis
                    // cannot count the unread part after entries were
                    // deleted from the middle of the stream (XDEL): then
                    // only the pending part is reported.
                    out.push(Lag {
                        topic: topic.clone(),
                        partition: 0,
                        messages: (g.pending + g.lag.unwrap_or(0)) as i64,
                    });
                }
            }
            out
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            // The engine dropped its subscriptions: each hands back what it
            // read and did not finish and writes its last acks.
            self.inner.closed.store(true, Ordering::Release);
            if !crate::util::join_within(&self.inner.tasks, CLOSE_GRACE).await {
                tracing::warn!(pubsub = %self.inner.name, "redis subscriptions still settling at close; what they hold is redelivered after processingTimeout");
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(reply: &str) -> redis::RedisError {
        let v = redis::parse_redis_value(format!("-{reply}\r\n").as_bytes()).expect("parses");
        v.extract_error().expect_err("an error reply")
    }

    #[test]
    fn refusals_are_final_and_losses_retryable() {
        assert!(is_final(&server(
            "WRONGTYPE Operation against a key holding the wrong kind of value"
        )));
        assert!(is_final(&server("NOPERM this user has no permissions")));
        assert!(is_final(&server("ERR syntax error")));
        assert!(!is_final(&server(
            "LOADING Redis is loading the dataset in memory"
        )));
        assert!(!is_final(&server(
            "OOM command not allowed when used memory > 'maxmemory'"
        )));
        assert!(!is_final(&server("BUSY Redis is busy running a script")));
        let io = redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(!is_final(&io));
    }
}
