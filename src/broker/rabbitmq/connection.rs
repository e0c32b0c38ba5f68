//! The connection keeper: one connection per component, reconnected
//! forever with capped backoff (also when the broker is down at start-up);
//! each new connection is a new generation that subscriptions resume on.
//! TLS for `amqps://` with the configured CA or the system's roots.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::types::LongString;
use lapin::{Connection, ConnectionProperties};

use super::config::{redact, RabbitConfig};
use super::{Inner, Live, MAX_RECONNECT_WAIT};

/// Connects, and reconnects whenever the connection is lost, until the
/// broker is dropped or closed.
pub(super) async fn keep_connected(inner: std::sync::Weak<Inner>) {
    let generation = AtomicU64::new(0);
    let mut wait = Duration::ZERO;
    loop {
        tokio::time::sleep(wait).await;
        let Some(me) = inner.upgrade() else { return };
        if me.closed.load(Ordering::Acquire) {
            return;
        }
        let uri = with_heartbeat(&me.cfg.uri, me.cfg.heartbeat);
        let mut props = ConnectionProperties::default();
        if let Some(n) = &me.cfg.client_name {
            props = props.with_connection_name(LongString::from(n.as_str()));
        }
        let conn = match tokio::time::timeout(
            Duration::from_secs(10),
            connect(&uri, props, &me.cfg),
        )
        .await
        {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                tracing::warn!(pubsub = %me.name, uri = %redact(&me.cfg.uri), error = %e, "rabbitmq connection failed; retrying");
                wait = next_wait(wait, me.cfg.reconnect_wait);
                continue;
            }
            Err(_) => {
                tracing::warn!(pubsub = %me.name, "rabbitmq connection timed out; retrying");
                wait = next_wait(wait, me.cfg.reconnect_wait);
                continue;
            }
        };
        let g = generation.fetch_add(1, Ordering::AcqRel) + 1;
        tracing::info!(pubsub = %me.name, generation = g, "rabbitmq connected");
        let live = Arc::new(Live {
            generation: g,
            conn,
            publish: tokio::sync::Mutex::new(None),
            declared: Mutex::new(HashSet::new()),
        });
        me.live.send_replace(Some(live.clone()));
        drop(me);
        // Watch the connection; on loss, clear it and reconnect.
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if !live.conn.status().connected() {
                break;
            }
            if inner
                .upgrade()
                .is_none_or(|i| i.closed.load(Ordering::Acquire))
            {
                return;
            }
        }
        let Some(me) = inner.upgrade() else { return };
        tracing::warn!(pubsub = %me.name, "rabbitmq connection lost; reconnecting");
        me.live.send_replace(None);
        wait = me.cfg.reconnect_wait;
    }
}

/// Connects, with TLS for `amqps://` (the configured CA, else the
/// system's roots; the client certificate for mutual TLS).
async fn connect(
    uri: &str,
    props: ConnectionProperties,
    cfg: &RabbitConfig,
) -> lapin::Result<Connection> {
    let uri = &with_frame_max(uri);
    if !uri.starts_with("amqps://") {
        return Connection::connect(uri, props).await;
    }
    let tls = lapin::tcp::OwnedTLSConfig {
        identity: cfg
            .tls
            .client
            .as_ref()
            .map(|(cert, key)| lapin::tcp::OwnedIdentity::PKCS8 {
                pem: cert.as_bytes().to_vec(),
                key: key.as_bytes().to_vec(),
            }),
        cert_chain: cfg.tls.ca_cert.clone(),
    };
    Connection::connect_with_config(uri, props, tls, lapin::runtime::default_runtime()?).await
}

/// The largest AMQP frame Perch asks for, unless the connection string
/// says (`frame_max=`). lapin keeps a receive and a send buffer of 32
/// frames each, written in full: at RabbitMQ's default of 128 KiB that is
/// 8 MiB per connection, most of an idle sidecar's memory (measured: 24.0
/// MiB idle on RabbitMQ against 15.0 on the in-memory broker). At 32 KiB it
/// is 2 MiB; a larger message is sent in more frames.
const FRAME_MAX: u32 = 32 * 1024;

/// `uri` with `frame_max` set to [`FRAME_MAX`] when it has none.
fn with_frame_max(uri: &str) -> std::borrow::Cow<'_, str> {
    let query = uri.split_once('?').map(|(_, q)| q).unwrap_or("");
    if query.split('&').any(|kv| kv.starts_with("frame_max=")) {
        return uri.into();
    }
    let sep = if uri.contains('?') { '&' } else { '?' };
    format!("{uri}{sep}frame_max={FRAME_MAX}").into()
}

fn next_wait(current: Duration, first: Duration) -> Duration {
    if current.is_zero() {
        first
    } else {
        (current * 2).min(MAX_RECONNECT_WAIT)
    }
}

/// Adds `heartbeat=<secs>` to the URI's query unless it has one.
fn with_heartbeat(uri: &str, heartbeat: Duration) -> String {
    if uri.contains("heartbeat=") {
        return uri.to_owned();
    }
    let sep = if uri.contains('?') { '&' } else { '?' };
    format!("{uri}{sep}heartbeat={}", heartbeat.as_secs().max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_max_is_asked_for_unless_the_connection_string_sets_it() {
        assert_eq!(
            with_frame_max("amqp://guest:guest@localhost:5672"),
            "amqp://guest:guest@localhost:5672?frame_max=32768"
        );
        assert_eq!(
            with_frame_max("amqps://h:5671/%2f?heartbeat=10"),
            "amqps://h:5671/%2f?heartbeat=10&frame_max=32768"
        );
        assert_eq!(
            with_frame_max("amqp://h?heartbeat=5&frame_max=131072"),
            "amqp://h?heartbeat=5&frame_max=131072"
        );
    }

    #[test]
    fn reconnect_waits_double_up_to_the_cap() {
        let first = Duration::from_secs(1);
        let mut w = Duration::ZERO;
        let mut seen = vec![];
        for _ in 0..5 {
            w = next_wait(w, first);
            seen.push(w.as_secs());
        }
        assert_eq!(seen, [1, 2, 4, 5, 5]);
    }

    #[test]
    fn the_heartbeat_goes_into_the_query_unless_given() {
        let hb = Duration::from_secs(10);
        assert_eq!(with_heartbeat("amqp://h", hb), "amqp://h?heartbeat=10");
        assert_eq!(
            with_heartbeat("amqp://h/?x=1", hb),
            "amqp://h/?x=1&heartbeat=10"
        );
        assert_eq!(
            with_heartbeat("amqp://h?heartbeat=3", hb),
            "amqp://h?heartbeat=3"
        );
    }
}
