//! `pubsub.kafka` metadata (reference 5.2) mapped onto librdkafka
//! properties. Dapr's keys keep their names and meaning; Perch adds
//! topic auto-creation settings, `publishTimeout` and a passthrough for raw
//! librdkafka properties (`rdkafka.<property>`). Dapr keys Perch does not
//! support are errors that say so, never ignored.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::report::meta::{
    dapr_keys, field, flag, lookup, DaprKey, DaprKey::Ignored, BACKOFF_KEYS,
};
use crate::report::DocCtx;
use crate::util::parse_go_duration;

/// Keys Perch reads for Kafka (Dapr's, then Perch's).
pub const KEYS: &[&str] = &[
    "brokers",
    "consumerGroup",
    "clientID",
    "initialOffset",
    "authType",
    "saslUsername",
    "saslPassword",
    "saslMechanism",
    "caCert",
    "clientCert",
    "clientKey",
    "skipVerify",
    "disableTls",
    "maxMessageBytes",
    "compression",
    "escapeHeaders",
    "excludeHeaderMetaRegex",
    "producerRequiredAcks",
    "producerRetryMax",
    "heartbeatInterval",
    "sessionTimeout",
    "dialTimeout",
    "clientConnectionTopicMetadataRefreshInterval",
    "consumerGroupRebalanceStrategy",
    "autoCreateTopics",
    "topicPartitions",
    "topicReplicationFactor",
    "publishTimeout",
    "authRequired",
];

const OIDC: &str = "used only with authType oidc, which Perch does not support";
const AWS: &str = "used only with authType awsiam, which Perch does not support";
const AVRO: &str =
    "Perch does not decode Avro (a subscription with valueSchemaType Avro is refused)";

/// Dapr's `pubsub.kafka` keys Perch does not implement, and what it does
/// with each (`authRequired` is mapped onto `authType` as Dapr does).
pub const DAPR_ONLY: &[(&str, DaprKey)] = &[
    (
        "version",
        Ignored("librdkafka negotiates the protocol version with the broker"),
    ),
    (
        "channelBufferSize",
        Ignored("the in-flight window is maxInFlight"),
    ),
    ("consumerFetchMin", Ignored("set rdkafka.fetch.min.bytes")),
    (
        "consumerFetchDefault",
        Ignored("set rdkafka.fetch.max.bytes"),
    ),
    (
        "clientConnectionKeepAliveInterval",
        Ignored("set rdkafka.socket.keepalive.enable"),
    ),
    ("readTimeout", Ignored("set rdkafka.socket.timeout.ms")),
    ("writeTimeout", Ignored("set rdkafka.socket.timeout.ms")),
    (
        "metadataTimeout",
        Ignored("set rdkafka.metadata.max.age.ms"),
    ),
    (
        "consumeRetryEnabled",
        Ignored(crate::report::meta::SIDECAR_RETRIES),
    ),
    (
        "consumeRetryInterval",
        Ignored(crate::report::meta::SIDECAR_RETRIES),
    ),
    ("oidcTokenEndpoint", Ignored(OIDC)),
    ("oidcClientID", Ignored(OIDC)),
    ("oidcClientSecret", Ignored(OIDC)),
    ("oidcScopes", Ignored(OIDC)),
    ("oidcExtensions", Ignored(OIDC)),
    ("oidcClientAssertionCert", Ignored(OIDC)),
    ("oidcClientAssertionKey", Ignored(OIDC)),
    ("oidcResource", Ignored(OIDC)),
    ("oidcAudience", Ignored(OIDC)),
    ("oidcKid", Ignored(OIDC)),
    ("awsRegion", Ignored(AWS)),
    ("region", Ignored(AWS)),
    ("awsAccessKey", Ignored(AWS)),
    ("accessKey", Ignored(AWS)),
    ("awsSecretKey", Ignored(AWS)),
    ("secretKey", Ignored(AWS)),
    ("awsSessionToken", Ignored(AWS)),
    ("sessionToken", Ignored(AWS)),
    ("awsIamRoleArn", Ignored(AWS)),
    ("assumeRoleArn", Ignored(AWS)),
    ("awsStsSessionName", Ignored(AWS)),
    ("sessionName", Ignored(AWS)),
    ("schemaRegistryURL", Ignored(AVRO)),
    ("schemaRegistryAPIKey", Ignored(AVRO)),
    ("schemaRegistryAPISecret", Ignored(AVRO)),
    ("schemaCachingEnabled", Ignored(AVRO)),
    ("schemaLatestVersionCacheTTL", Ignored(AVRO)),
    ("useAvroJSON", Ignored(AVRO)),
];

/// Prefix of raw librdkafka properties.
pub const PASSTHROUGH: &str = "rdkafka.";

/// The producer's `linger.ms`: 1 ms, where librdkafka's default is 5 ms
/// and daprd's sarama producer sends each message at once. Measured with 16
/// publishing clients on one 2-core box (README, Benchmarks): 5 ms gave
/// 2.1k publishes/s at p50 7.3 ms; 1 ms 5.9k/s at p50 2.3 ms, p99 9.3 ms,
/// 0.38 CPU s per 10k; 0 ms 5.3k/s at p50 1.6 ms but p99 21 ms and 3.6x
/// the CPU (a produce request per message, for the broker too).
pub const DEFAULT_LINGER_MS: &str = "1";

/// The idempotent producer's `max.in.flight.requests.per.connection`: 1,
/// where librdkafka's default is 5 (see `read` for the loss it prevents).
/// A/B with the bench's publish section, same box, one run each: single
/// publish 0.85x direct with 1, 0.83x with 5; bulk within this VM's noise.
pub const IDEMPOTENT_MAX_IN_FLIGHT: &str = "1";

/// Where a new consumer group starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitialOffset {
    /// Only messages produced after the group first joined.
    Newest,
    /// From the beginning of each partition.
    Oldest,
}

/// A Kafka component's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaConfig {
    /// librdkafka properties shared by producer, consumer and admin client
    /// (servers, client id, security, passthrough).
    pub common: BTreeMap<String, String>,
    /// Producer-only properties (acks, idempotence, compression, sizes).
    pub producer: BTreeMap<String, String>,
    /// Consumer-only properties (timeouts).
    pub consumer: BTreeMap<String, String>,
    /// `consumerGroup`, if set (else `consumerID`, else the app id).
    pub consumer_group: Option<String>,
    /// `initialOffset` (default newest, as Dapr).
    pub initial_offset: InitialOffset,
    /// `escapeHeaders`: URL-escape header values delivered to the app.
    pub escape_headers: bool,
    /// `excludeHeaderMetaRegex`: metadata and headers not carried either way.
    pub exclude_headers: Option<String>,
    /// `autoCreateTopics` (default true): create missing topics.
    pub auto_create_topics: bool,
    /// `topicPartitions` for created topics (default 1).
    pub topic_partitions: i32,
    /// `topicReplicationFactor` for created topics (default 1).
    pub topic_replication: i32,
    /// `publishTimeout` (default 10 s): a publish not confirmed by then fails.
    pub publish_timeout: Duration,
    /// librdkafka's `partition.assignment.strategy`, from
    /// `consumerGroupRebalanceStrategy` (default `sticky`).
    pub assignment_strategy: &'static str,
}

/// Reads the Kafka keys of `metadata`; problems go to `ctx`.
pub fn read(ctx: &mut DocCtx<'_>, metadata: &BTreeMap<String, String>) -> Option<KafkaConfig> {
    let before = ctx.problems.len();
    let get = |k: &str| lookup(metadata, k);
    dapr_keys(ctx, metadata, DAPR_ONLY, "Kafka");
    dapr_keys(ctx, metadata, BACKOFF_KEYS, "Kafka");
    let mut common = BTreeMap::new();
    let mut producer = BTreeMap::new();
    let mut consumer: BTreeMap<String, String> = BTreeMap::new();
    match get("brokers") {
        Some(b) if !b.is_empty() => {
            common.insert("bootstrap.servers".into(), b);
        }
        _ => ctx.problem(field("brokers"), "required: comma-separated host:port list"),
    }
    if let Some(id) = get("clientID") {
        common.insert("client.id".into(), id);
    }
    let flag = |ctx: &mut DocCtx<'_>, key: &str, default: bool| flag(ctx, metadata, key, default);
    let disable_tls = flag(ctx, "disableTls", false);
    let skip_verify = flag(ctx, "skipVerify", false);
    let escape_headers = flag(ctx, "escapeHeaders", false);
    let auto_create_topics = flag(ctx, "autoCreateTopics", true);
    if !auto_create_topics {
        // Or the broker's `auto.create.topics.enable` creates the topic on
        // the producer's first metadata request after all.
        producer.insert("allow.auto.create.topics".into(), "false".into());
    }
    let (ca, cert, key) = (get("caCert"), get("clientCert"), get("clientKey"));
    if cert.is_some() != key.is_some() {
        ctx.problem(
            field("clientCert"),
            "clientCert and clientKey go together: set both or neither",
        );
    }
    let auth = match (
        get("authType").filter(|a| !a.is_empty()),
        get("authRequired"),
    ) {
        (Some(a), _) => a,
        // Dapr's upgrade of the legacy key: required means password auth
        // when a password is set, else mTLS.
        (None, Some(r)) if !r.is_empty() => match crate::util::parse_go_bool(&r) {
            Some(true) if get("saslPassword").is_some_and(|p| !p.is_empty()) => "password".into(),
            Some(true) => "mtls".into(),
            Some(false) => "none".into(),
            None => {
                ctx.problem(
                    field("authRequired"),
                    format!("must be true or false, got {r:?}"),
                );
                "none".into()
            }
        },
        (None, _) => "none".into(),
    };
    let protocol = match auth.as_str() {
        "none" if ca.is_some() && !disable_tls => "ssl",
        "none" => "plaintext",
        "password" => {
            let mechanism = match get("saslMechanism").as_deref() {
                None | Some("PLAINTEXT") | Some("PLAIN") => "PLAIN",
                Some("SHA-256") | Some("SCRAM-SHA-256") => "SCRAM-SHA-256",
                Some("SHA-512") | Some("SCRAM-SHA-512") => "SCRAM-SHA-512",
                Some(other) => {
                    ctx.problem(
                        field("saslMechanism"),
                        format!("must be PLAINTEXT, SHA-256 or SHA-512, got {other:?}"),
                    );
                    "PLAIN"
                }
            };
            common.insert("sasl.mechanism".into(), mechanism.into());
            for (k, prop) in [
                ("saslUsername", "sasl.username"),
                ("saslPassword", "sasl.password"),
            ] {
                match get(k) {
                    Some(v) => {
                        common.insert(prop.into(), v);
                    }
                    None => ctx.problem(field(k), "required with authType password"),
                }
            }
            if disable_tls {
                "sasl_plaintext"
            } else {
                "sasl_ssl"
            }
        }
        "mtls" => {
            if cert.is_none() {
                ctx.problem(field("clientCert"), "required with authType mtls");
            }
            "ssl"
        }
        other => {
            ctx.problem(
                field("authType"),
                format!("must be none, password or mtls, got {other:?} (Perch does not support oidc, awsiam or certificate yet)"),
            );
            "plaintext"
        }
    };
    common.insert("security.protocol".into(), protocol.into());
    if protocol.ends_with("ssl") {
        for (v, prop) in [
            (&ca, "ssl.ca.pem"),
            (&cert, "ssl.certificate.pem"),
            (&key, "ssl.key.pem"),
        ] {
            if let Some(v) = v {
                common.insert(prop.into(), v.clone());
            }
        }
        if skip_verify {
            common.insert("enable.ssl.certificate.verification".into(), "false".into());
        }
    }
    // Case-insensitive, as Dapr's.
    let initial_offset = match get("initialOffset")
        .map(|o| o.to_ascii_lowercase())
        .as_deref()
    {
        None | Some("newest") => InitialOffset::Newest,
        Some("oldest") => InitialOffset::Oldest,
        Some(other) => {
            ctx.problem(
                field("initialOffset"),
                format!("must be newest or oldest, got {other:?}"),
            );
            InitialOffset::Newest
        }
    };
    match get("producerRequiredAcks").as_deref() {
        None | Some("all") => {
            producer.insert("acks".into(), "all".into());
            producer.insert("enable.idempotence".into(), "true".into());
        }
        Some("local") => {
            producer.insert("acks".into(), "1".into());
        }
        Some("none") => {
            producer.insert("acks".into(), "0".into());
        }
        Some(other) => ctx.problem(
            field("producerRequiredAcks"),
            format!("must be all, local or none, got {other:?}"),
        ),
    }
    match get("compression").as_deref() {
        None => {}
        Some(c @ ("none" | "gzip" | "snappy" | "lz4" | "zstd")) => {
            producer.insert("compression.type".into(), c.into());
        }
        Some(other) => ctx.problem(
            field("compression"),
            format!("must be none, gzip, snappy, lz4 or zstd, got {other:?}"),
        ),
    }
    let number = |ctx: &mut DocCtx<'_>, key: &str, min: i64| -> Option<i64> {
        let v = get(key)?;
        match v.parse::<i64>() {
            Ok(n) if n >= min => Some(n),
            _ => {
                ctx.problem(
                    field(key),
                    format!("must be a whole number of at least {min}, got {v:?}"),
                );
                None
            }
        }
    };
    if let Some(n) = number(ctx, "maxMessageBytes", 1) {
        producer.insert("message.max.bytes".into(), n.to_string());
    }
    if let Some(n) = number(ctx, "producerRetryMax", 0) {
        producer.insert("message.send.max.retries".into(), n.to_string());
    }
    let topic_partitions = number(ctx, "topicPartitions", 1).unwrap_or(1) as i32;
    let topic_replication = number(ctx, "topicReplicationFactor", 1).unwrap_or(1) as i32;
    let duration = |ctx: &mut DocCtx<'_>, key: &str| -> Option<Duration> {
        let v = get(key)?;
        parse_go_duration(&v)
            .map_err(|e| ctx.problem(field(key), e))
            .ok()
    };
    for (key, prop, consumer_only) in [
        ("heartbeatInterval", "heartbeat.interval.ms", true),
        ("sessionTimeout", "session.timeout.ms", true),
        ("dialTimeout", "socket.connection.setup.timeout.ms", false),
        (
            "clientConnectionTopicMetadataRefreshInterval",
            "topic.metadata.refresh.interval.ms",
            false,
        ),
    ] {
        if let Some(d) = duration(ctx, key) {
            let target = if consumer_only {
                &mut consumer
            } else {
                &mut common
            };
            target.insert(prop.into(), d.as_millis().to_string());
        }
    }
    let publish_timeout = duration(ctx, "publishTimeout").unwrap_or(Duration::from_secs(10));
    let assignment_strategy = match get("consumerGroupRebalanceStrategy").as_deref() {
        None | Some("sticky") => "cooperative-sticky",
        Some("range") => "range",
        Some("roundrobin") => "roundrobin",
        Some(other) => {
            ctx.problem(
                field("consumerGroupRebalanceStrategy"),
                format!("must be sticky, range or roundrobin, got {other:?}"),
            );
            "cooperative-sticky"
        }
    };
    let exclude_headers = get("excludeHeaderMetaRegex").filter(|r| !r.is_empty());
    if let Some(r) = &exclude_headers {
        if let Err(e) = regex::Regex::new(r) {
            ctx.problem(
                field("excludeHeaderMetaRegex"),
                format!("not a valid regular expression: {e}"),
            );
        }
    }
    for (k, v) in metadata {
        if let Some(prop) = k.strip_prefix(PASSTHROUGH) {
            common.insert(prop.to_owned(), v.clone());
        }
    }
    // A key lands on the partition daprd's sarama producer picks (its hash
    // partitioner is FNV-1a; librdkafka's `fnv1a_random` is the same hash
    // and, without a key, random as sarama), so daprd and Perch replicas
    // publishing during a migration keep each key on one partition.
    // `rdkafka.partitioner` overrides it.
    if !common.contains_key("partitioner") {
        producer.insert("partitioner".into(), "fnv1a_random".into());
    }
    // A publish is answered on its delivery report, so every millisecond a
    // record waits to be batched is a millisecond of the app's request
    // (DEFAULT_LINGER_MS says what was measured). librdkafka still batches
    // what queues up while earlier requests are in flight, so a bulk
    // publish keeps its batches. `rdkafka.linger.ms` (or its alias
    // `queue.buffering.max.ms`) overrides it.
    if !common.contains_key("linger.ms") && !common.contains_key("queue.buffering.max.ms") {
        producer.insert("linger.ms".into(), DEFAULT_LINGER_MS.into());
    }
    // One produce request in flight per broker connection with the
    // idempotent producer. With more, a request that fails retryably (a
    // partition just created, whose log the broker has not made yet, or a
    // leader moving) can be overtaken by the next one; a broker that has no
    // state for this producer on that partition takes the later sequence
    // as its start, and librdkafka then reports the retried first batch
    // delivered though it was never written: a publish answered 204 and
    // lost. Seen as the fault suite's lost first event of a key;
    // `tests/kafka.rs` a_burst_into_a_new_topic_is_all_written catches it
    // in a few rounds. `rdkafka.max.in.flight` (or its long name)
    // overrides it. Idempotence is the producer's own setting, or else the
    // passthrough's (the producer's are applied after the common ones).
    let idempotent = producer
        .get("enable.idempotence")
        .or(common.get("enable.idempotence"))
        .is_some_and(|v| v == "true");
    if idempotent
        && !common.contains_key("max.in.flight.requests.per.connection")
        && !common.contains_key("max.in.flight")
    {
        producer.insert(
            "max.in.flight.requests.per.connection".into(),
            IDEMPOTENT_MAX_IN_FLIGHT.into(),
        );
    }
    (ctx.problems.len() == before).then(|| KafkaConfig {
        common,
        producer,
        consumer,
        consumer_group: get("consumerGroup"),
        initial_offset,
        escape_headers,
        exclude_headers,
        auto_create_topics,
        topic_partitions,
        topic_replication,
        publish_timeout,
        assignment_strategy,
    })
}
