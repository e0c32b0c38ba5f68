//! `pubsub.rabbitmq` metadata (reference 5.3). Dapr's keys keep their names;
//! where Dapr's defaults lose messages (non-durable or auto-deleted queues,
//! transient messages, no publisher confirms) Perch's defaults do not.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::report::meta::{
    dapr_keys, field, flag, lookup, whole_number, DaprKey, DaprKey::*, BACKOFF_KEYS,
};
use crate::report::DocCtx;
use crate::util::parse_go_duration;

/// Keys Perch reads for RabbitMQ.
pub const KEYS: &[&str] = &[
    "connectionString",
    "host",
    "protocol",
    "hostname",
    "username",
    "password",
    "durable",
    "deletedWhenUnused",
    "autoAck",
    "requeueInFailure",
    "deliveryMode",
    "prefetchCount",
    "concurrencyMode",
    "publisherConfirm",
    "queueType",
    "maxLen",
    "maxLenBytes",
    "ttlInSeconds",
    "ttl",
    "exchangeKind",
    "reconnectWaitSeconds",
    "clientName",
    "heartBeat",
    "publishMessagePropertiesToMetadata",
    "caCert",
    "clientCert",
    "clientKey",
];

/// Dapr's `pubsub.rabbitmq` keys Perch does not implement, and what it
/// does with each.
pub const DAPR_ONLY: &[(&str, DaprKey)] = &[
    (
        "enableDeadLetter",
        Ignored("Perch dead-letters every message it gives up on, to the subscription's deadLetterTopic (default {topic}.dlq, a topic that can be subscribed and replayed), not to RabbitMQ's dlx-/dlq- objects"),
    ),
    (
        "saslExternal",
        OffOnly("SASL EXTERNAL is not supported yet; use username and password over TLS"),
    ),
    ("reconnectWait", Ignored("daprd ignores it too; Perch reads reconnectWaitSeconds")),
    ("concurrency", Ignored("daprd reads concurrencyMode, and so does Perch")),
];

/// TLS settings (PEM text).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tls {
    /// CA certificates to trust (else the system's roots).
    pub ca_cert: Option<String>,
    /// Client certificate and its key, for mutual TLS.
    pub client: Option<(String, String)>,
}

/// A RabbitMQ component's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RabbitConfig {
    /// `amqp://user:pass@host:port/vhost`.
    pub uri: String,
    /// Durable exchanges and queues (default true).
    pub durable: bool,
    /// Auto-delete exchanges and queues (default false; Dapr: true).
    pub auto_delete: bool,
    /// AMQP delivery mode of published messages (default 2, persistent).
    pub delivery_mode: u8,
    /// `prefetchCount`; `None` uses the in-flight window (`maxInFlight`).
    pub prefetch: Option<u16>,
    /// Wait for publisher confirms (default true; Dapr: false).
    pub publisher_confirm: bool,
    /// `queueType` for queues (`classic` or `quorum`), unless a
    /// subscription sets its own.
    pub queue_type: Option<String>,
    /// `maxLen` / `maxLenBytes` queue limits.
    pub max_len: Option<i64>,
    /// `maxLenBytes`.
    pub max_len_bytes: Option<i64>,
    /// Default per-message TTL (`ttlInSeconds`).
    pub ttl: Option<Duration>,
    /// `exchangeKind` (default fanout).
    pub exchange_kind: String,
    /// First reconnect wait (doubling, capped at 30 s).
    pub reconnect_wait: Duration,
    /// Connection name shown in the management UI.
    pub client_name: Option<String>,
    /// AMQP heartbeat (default 10 s).
    pub heartbeat: Duration,
    /// Deliver AMQP properties as `metadata.*`.
    pub properties_to_metadata: bool,
    /// `concurrencyMode` if set: `single` or `parallel`.
    pub concurrency_mode: Option<String>,
    /// TLS (`amqps://`) settings.
    pub tls: Tls,
}

/// Reads the RabbitMQ keys of `metadata`; problems go to `ctx`.
pub fn read(ctx: &mut DocCtx<'_>, metadata: &BTreeMap<String, String>) -> Option<RabbitConfig> {
    let before = ctx.problems.len();
    let get = |k: &str| lookup(metadata, k);
    dapr_keys(ctx, metadata, DAPR_ONLY, "RabbitMQ");
    dapr_keys(ctx, metadata, BACKOFF_KEYS, "RabbitMQ");
    let parts = ["protocol", "hostname", "username", "password"];
    let uri = match get("connectionString").or_else(|| get("host")) {
        Some(uri) => {
            if let Some(k) = parts.iter().find(|k| get(k).is_some()) {
                ctx.problem(
                    field(k),
                    "connectionString and protocol/hostname/username/password are exclusive",
                );
            }
            uri
        }
        None => {
            let protocol = get("protocol").unwrap_or_else(|| "amqp".into());
            let host = get("hostname").unwrap_or_else(|| "localhost".into());
            match (get("username"), get("password")) {
                (Some(u), Some(p)) => format!("{protocol}://{u}:{p}@{host}"),
                (Some(u), None) => format!("{protocol}://{u}@{host}"),
                _ => format!("{protocol}://{host}"),
            }
        }
    };
    if !uri.starts_with("amqp://") && !uri.starts_with("amqps://") {
        ctx.problem(
            field("connectionString"),
            format!("must be an amqp:// or amqps:// URI, got {:?}", redact(&uri)),
        );
    }
    let client = match (get("clientCert"), get("clientKey")) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        _ => {
            ctx.problem(
                field("clientCert"),
                "clientCert and clientKey go together: set both or neither",
            );
            None
        }
    };
    let tls = Tls {
        ca_cert: get("caCert"),
        client,
    };
    if (tls.ca_cert.is_some() || tls.client.is_some()) && !uri.starts_with("amqps://") {
        ctx.problem(
            field("caCert"),
            "TLS certificates need an amqps:// connection string",
        );
    }
    let flag = |ctx: &mut DocCtx<'_>, key: &str, default: bool| flag(ctx, metadata, key, default);
    let durable = flag(ctx, "durable", true);
    let auto_delete = flag(ctx, "deletedWhenUnused", false);
    let publisher_confirm = flag(ctx, "publisherConfirm", true);
    let properties_to_metadata = flag(ctx, "publishMessagePropertiesToMetadata", false);
    if flag(ctx, "autoAck", false) {
        ctx.problem(
            field("autoAck"),
            "autoAck loses every message the app fails; Perch acks after delivery (remove it)",
        );
    }
    // requeueInFailure is read and has no effect: the sidecar retries and
    // dead-letters; a broker nack always requeues.
    let _ = flag(ctx, "requeueInFailure", false);
    let number = |ctx: &mut DocCtx<'_>, key: &str, min: i64, max: i64| {
        whole_number(ctx, metadata, key, min, max)
    };
    let delivery_mode = number(ctx, "deliveryMode", 0, 2).unwrap_or(2) as u8;
    let delivery_mode = if delivery_mode == 0 { 2 } else { delivery_mode };
    let prefetch = number(ctx, "prefetchCount", 0, 65535)
        .filter(|n| *n > 0)
        .map(|n| n as u16);
    let max_len = number(ctx, "maxLen", 1, i64::MAX);
    let max_len_bytes = number(ctx, "maxLenBytes", 1, i64::MAX);
    // Dapr's TryGetTTL: `ttl` before `ttlInSeconds`, each a Go duration or
    // whole seconds.
    let ttl = ["ttl", "ttlInSeconds"].iter().find_map(|k| {
        let v = get(k)?;
        match crate::util::parse_ttl(&v) {
            Ok(d) => Some(d),
            Err(e) => {
                ctx.problem(field(k), e);
                None
            }
        }
    });
    let reconnect_wait = number(ctx, "reconnectWaitSeconds", 0, 3600)
        .map(|s| Duration::from_secs(s as u64))
        .unwrap_or(Duration::from_millis(500))
        .max(Duration::from_millis(100));
    let queue_type = match get("queueType").as_deref() {
        None => None,
        Some(t @ ("classic" | "quorum")) => Some(t.to_owned()),
        Some(other) => {
            ctx.problem(
                field("queueType"),
                format!("must be classic or quorum, got {other:?}"),
            );
            None
        }
    };
    let exchange_kind = match get("exchangeKind").as_deref() {
        None => "fanout".to_owned(),
        Some(k @ ("fanout" | "topic" | "direct" | "headers")) => k.to_owned(),
        Some(other) => {
            ctx.problem(
                field("exchangeKind"),
                format!("must be fanout, topic, direct or headers, got {other:?}"),
            );
            "fanout".to_owned()
        }
    };
    let concurrency_mode = match get("concurrencyMode").as_deref() {
        None => None,
        Some(m @ ("single" | "parallel")) => Some(m.to_owned()),
        Some(other) => {
            ctx.problem(
                field("concurrencyMode"),
                format!("must be single or parallel, got {other:?}"),
            );
            None
        }
    };
    let heartbeat = match get("heartBeat") {
        None => Duration::from_secs(10),
        Some(v) => parse_go_duration(&v)
            .map_err(|e| ctx.problem(field("heartBeat"), e))
            .unwrap_or(Duration::from_secs(10)),
    };
    (ctx.problems.len() == before).then(|| RabbitConfig {
        uri,
        durable,
        auto_delete,
        delivery_mode,
        prefetch,
        publisher_confirm,
        queue_type,
        max_len,
        max_len_bytes,
        ttl,
        exchange_kind,
        reconnect_wait,
        client_name: get("clientName"),
        heartbeat,
        properties_to_metadata,
        concurrency_mode,
        tls,
    })
}

/// The URI without its password, for messages.
pub fn redact(uri: &str) -> String {
    match (uri.find("://"), uri.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &uri[s + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &uri[..s + 3], &uri[at..])
        }
        _ => uri.to_owned(),
    }
}
