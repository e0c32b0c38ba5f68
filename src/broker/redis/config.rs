//! `pubsub.redis` metadata, Dapr's keys under their own names (the
//! components-contrib Redis settings): connection, consumer group,
//! redelivery of what a dead consumer held, trimming. Durations are
//! Dapr's: a whole number of milliseconds or a Go duration.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::report::meta::{
    dapr_keys, field, flag, lookup, whole_number, DaprKey, DaprKey::*, BACKOFF_KEYS,
};
use crate::report::DocCtx;
use crate::util::parse_go_duration;

/// Keys Perch reads for Redis.
pub const KEYS: &[&str] = &[
    "redisHost",
    "redisPort",
    "redisPassword",
    "redisUsername",
    "redisDB",
    "redisType",
    "enableTLS",
    "insecureSkipTLSVerify",
    "clientCert",
    "clientKey",
    "consumerID",
    "processingTimeout",
    "redeliverInterval",
    "queueDepth",
    "concurrency",
    "maxLenApprox",
    "streamTTL",
    "dialTimeout",
    "readTimeout",
    "writeTimeout",
    "redisMaxRetries",
    "redisMinRetryInterval",
    "redisMaxRetryInterval",
];

const NO_POOL: &str = "Perch keeps one multiplexed (pipelined) connection per component and one per subscription, reconnected on loss; there is no pool to size";

/// Dapr's `pubsub.redis` keys Perch does not implement, and what it does
/// with each.
pub const DAPR_ONLY: &[(&str, DaprKey)] = &[
    ("poolSize", Ignored(NO_POOL)),
    ("poolTimeout", Ignored(NO_POOL)),
    ("maxConnAge", Ignored(NO_POOL)),
    ("minIdleConns", Ignored(NO_POOL)),
    ("idleCheckFrequency", Ignored(NO_POOL)),
    ("idleTimeout", Ignored(NO_POOL)),
    (
        "ackOnError",
        Ignored("the sidecar acks a message once its retries end (delivered, dropped or dead-lettered), never while it still retries"),
    ),
    (
        "failover",
        OffOnly("Redis Sentinel is not supported yet; point redisHost at the master"),
    ),
    ("sentinelMasterName", Ignored("used with failover only, which Perch does not support")),
    ("sentinelUsername", Ignored("used with failover only, which Perch does not support")),
    ("sentinelPassword", Ignored("used with failover only, which Perch does not support")),
    (
        "useEntraID",
        OffOnly("Entra ID authentication is not supported; use redisUsername and redisPassword"),
    ),
    (
        "useOIDC",
        OffOnly("OIDC authentication is not supported; use redisUsername and redisPassword"),
    ),
];

/// A Redis component's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// `host:port` (`redisHost`, with `redisPort` or 6379 when it has none).
    pub addr: String,
    /// `redisUsername` (ACL user, Redis 6+).
    pub username: Option<String>,
    /// `redisPassword`.
    pub password: Option<String>,
    /// `redisDB`.
    pub db: i64,
    /// `enableTLS`.
    pub tls: bool,
    /// `insecureSkipTLSVerify`.
    pub insecure_tls: bool,
    /// `clientCert` and `clientKey` (PEM), for mutual TLS.
    pub client_cert: Option<(String, String)>,
    /// How long a message may stay pending before another consumer of the
    /// group takes it over (`processingTimeout`, default 60 s; 0: never).
    pub processing_timeout: Duration,
    /// How often pending messages of dead consumers are looked for
    /// (`redeliverInterval`, default 15 s; 0: never).
    pub redeliver_interval: Duration,
    /// Most messages one `XREADGROUP` reads (`queueDepth`, default 100).
    pub queue_depth: usize,
    /// `concurrency`: the subscription's in-flight window when
    /// `maxInFlight` is not set.
    pub concurrency: Option<usize>,
    /// `maxLenApprox`: `XADD ... MAXLEN ~ n`.
    pub max_len_approx: Option<u64>,
    /// `streamTTL`: `XADD ... MINID ~ (now - ttl)`.
    pub stream_ttl: Option<Duration>,
    /// `dialTimeout` (default 5 s).
    pub dial_timeout: Duration,
    /// `readTimeout` (default 3 s): the longest a command waits for its
    /// answer, and the longest a blocking read waits for new messages.
    pub read_timeout: Duration,
    /// `redisMaxRetries` (default 3): reconnection attempts of one command.
    pub max_retries: usize,
    /// `redisMinRetryInterval` (default 8 ms).
    pub min_retry_interval: Duration,
    /// `redisMaxRetryInterval` (default 512 ms).
    pub max_retry_interval: Duration,
}

/// A Dapr Redis duration: whole milliseconds or a Go duration.
fn duration(v: &str) -> Result<Duration, String> {
    match v.trim().parse::<i64>() {
        Ok(ms) if ms >= 0 => Ok(Duration::from_millis(ms as u64)),
        // Dapr's -1 ("no timeout", "no backoff").
        Ok(_) => Ok(Duration::ZERO),
        Err(_) => parse_go_duration(v),
    }
}

/// Reads the Redis keys of `metadata`; problems go to `ctx`.
pub fn read(ctx: &mut DocCtx<'_>, metadata: &BTreeMap<String, String>) -> Option<RedisConfig> {
    let before = ctx.problems.len();
    let get = |k: &str| lookup(metadata, k).filter(|v| !v.is_empty());
    dapr_keys(ctx, metadata, DAPR_ONLY, "Redis");
    dapr_keys(ctx, metadata, BACKOFF_KEYS, "Redis");
    let number = |ctx: &mut DocCtx<'_>, key: &str, min: i64, max: i64| {
        whole_number(ctx, metadata, key, min, max)
    };
    let dur = |ctx: &mut DocCtx<'_>, key: &str, default: Duration| match get(key) {
        None => default,
        Some(v) => duration(&v).unwrap_or_else(|e| {
            ctx.problem(
                field(key),
                format!("{e} (milliseconds or a duration such as 30s)"),
            );
            default
        }),
    };
    let host = match get("redisHost") {
        Some(h) => h,
        None => {
            ctx.problem(
                field("redisHost"),
                "required: host:port of the Redis server",
            );
            String::new()
        }
    };
    if host.contains("://") || host.contains(',') {
        ctx.problem(
            field("redisHost"),
            format!("must be one host:port (a URL or a list is not supported), got {host:?}"),
        );
    }
    let port = number(ctx, "redisPort", 1, 65535);
    let addr = match (host.rsplit_once(':'), port) {
        (Some((_, p)), Some(port)) if p != port.to_string() => {
            ctx.problem(
                field("redisPort"),
                format!("redisHost {host:?} already names port {p}; remove one of them"),
            );
            host.clone()
        }
        (Some(_), _) => host.clone(),
        (None, port) => format!("{host}:{}", port.unwrap_or(6379)),
    };
    match get("redisType").as_deref() {
        None | Some("node") => {}
        Some(other) => {
            ctx.problem(
                field("redisType"),
                format!("{other:?} is not supported: Perch connects to one Redis node (redisType: node)"),
            );
        }
    }
    let tls = flag(ctx, metadata, "enableTLS", false);
    let insecure_tls = flag(ctx, metadata, "insecureSkipTLSVerify", false);
    let client_cert = match (get("clientCert"), get("clientKey")) {
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
    if client_cert.is_some() && !tls {
        ctx.problem(
            field("clientCert"),
            "a client certificate needs enableTLS: true",
        );
    }
    let read_timeout = dur(ctx, "readTimeout", Duration::from_secs(3));
    let read_timeout = if read_timeout.is_zero() {
        Duration::from_secs(3)
    } else {
        read_timeout
    };
    // writeTimeout is read for its errors; a command's one timeout is the
    // read timeout (the client writes and waits as one step).
    let _ = dur(ctx, "writeTimeout", read_timeout);
    let cfg = RedisConfig {
        addr,
        username: get("redisUsername"),
        password: get("redisPassword"),
        db: number(ctx, "redisDB", 0, i64::from(i32::MAX)).unwrap_or(0),
        tls,
        insecure_tls,
        client_cert,
        processing_timeout: dur(ctx, "processingTimeout", Duration::from_secs(60)),
        redeliver_interval: dur(ctx, "redeliverInterval", Duration::from_secs(15)),
        queue_depth: number(ctx, "queueDepth", 1, 100_000).unwrap_or(100) as usize,
        concurrency: number(ctx, "concurrency", 1, 100_000).map(|n| n as usize),
        max_len_approx: number(ctx, "maxLenApprox", 0, i64::MAX)
            .filter(|n| *n > 0)
            .map(|n| n as u64),
        stream_ttl: get("streamTTL").and_then(|v| match duration(&v) {
            Ok(d) if d.is_zero() => None,
            Ok(d) => Some(d),
            Err(e) => {
                ctx.problem(field("streamTTL"), e);
                None
            }
        }),
        dial_timeout: dur(ctx, "dialTimeout", Duration::from_secs(5)),
        read_timeout,
        max_retries: number(ctx, "redisMaxRetries", -1, 100)
            .map(|n| n.max(0) as usize)
            .unwrap_or(3),
        min_retry_interval: dur(ctx, "redisMinRetryInterval", Duration::from_millis(8)),
        max_retry_interval: dur(ctx, "redisMaxRetryInterval", Duration::from_millis(512)),
    };
    (ctx.problems.len() == before).then_some(cfg)
}
