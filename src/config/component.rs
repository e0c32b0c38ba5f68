//! `kind: Component` for pub/sub: the type, Perch's common metadata
//! (`deliveryOrder`, `maxInFlight`, `deadLetterDefault`, ...), Dapr's scoping
//! keys, and each type's own keys. Unknown keys are errors that list the
//! valid ones (Dapr silently ignores typos such as `deleteWhenUnused`).

use std::collections::BTreeMap;

use serde_yaml::{Mapping, Value};

use super::options::LoadOptions;
use super::scopes::Scoping;
use super::value;
use crate::broker::kafka::config as kafka;
use crate::broker::rabbitmq::config as rabbitmq;
use crate::broker::redis::config as redis;
use crate::broker::Spec as PubsubKind;
use crate::report::DocCtx;
use crate::store::config as store;

/// Default in-flight window per partition or queue (DESIGN.md section 3).
pub const DEFAULT_MAX_IN_FLIGHT: usize = 64;
/// Default bound on unacknowledged messages per in-memory subscriber queue;
/// a publish beyond it fails instead of growing memory without limit.
pub const DEFAULT_MEMORY_MAX_MESSAGES: usize = 10_000;

/// Keys every pub/sub component accepts: Dapr's scoping keys and `consumerID`
/// (which daprd injects), plus Perch's additions.
const COMMON_KEYS: &[&str] = &[
    "consumerID",
    "publishingScopes",
    "subscriptionScopes",
    "allowedTopics",
    "protectedTopics",
    "deliveryOrder",
    "maxInFlight",
    "deadLetterDefault",
    "idempotencyStore",
    "outboxStore",
];

/// How the engine orders deliveries of one partition or queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryOrder {
    /// One message in flight per partition (Dapr's Kafka behaviour).
    Partition,
    /// Same key in order, different keys concurrently.
    Key,
    /// Up to `maxInFlight` concurrently, no order.
    None,
}

/// A loaded pub/sub component.
#[derive(Debug, Clone)]
pub struct PubsubComponent {
    /// `metadata.name`: the `{pubsub}` in publish URLs.
    pub name: String,
    /// `spec.type`.
    pub type_name: String,
    /// The backend and its settings.
    pub kind: PubsubKind,
    /// Dapr's topic scoping for this component.
    pub scoping: Scoping,
    /// `deliveryOrder` (default `none` for the in-memory broker).
    pub delivery_order: DeliveryOrder,
    /// `maxInFlight` per partition or queue.
    pub max_in_flight: usize,
    /// `{topic}.dlq` unless `deadLetterDefault: none`; `None` disables.
    pub dead_letter_default: Option<String>,
    /// All metadata after resolution, by key as written.
    pub metadata: BTreeMap<String, String>,
    /// The namespace when a metadata value used `{namespace}`: Dapr then
    /// scopes the component to it and prefixes every topic with it.
    pub topic_prefix: String,
    /// `idempotencyStore`: the store component that deduplicates deliveries.
    pub idempotency_store: Option<String>,
    /// `outboxStore`: the store that keeps publishes the broker cannot take.
    pub outbox_store: Option<String>,
}

impl PubsubComponent {
    /// The topic name on the broker: `topic`, prefixed with the namespace
    /// when the component is namespace-scoped.
    pub fn broker_topic(&self, topic: &str) -> String {
        format!("{}{topic}", self.topic_prefix)
    }

    /// The consumer group (Kafka) or queue prefix (RabbitMQ) of `app_id`'s
    /// subscriptions: `consumerGroup`, else `consumerID`, else the app id.
    pub fn consumer_group(&self, app_id: &str) -> String {
        self.metadata
            .get("consumerGroup")
            .or_else(|| self.metadata.get("consumerID"))
            .cloned()
            .unwrap_or_else(|| app_id.to_owned())
    }

    /// The dead-letter topic for `topic` when a subscription names none.
    pub fn default_dead_letter_topic(&self, topic: &str) -> Option<String> {
        self.dead_letter_default
            .as_ref()
            .map(|pattern| pattern.replace("{topic}", topic))
    }
}

/// What a Component document turned out to be.
#[derive(Debug, Clone)]
pub enum Loaded {
    /// A pub/sub component.
    Pubsub(Box<PubsubComponent>),
    /// A store component.
    Store(store::StoreComponent),
}
/// Dapr building blocks Perch does not serve: such components are skipped.
const OTHER_BLOCKS: &[&str] = &[
    "state.",
    "bindings.",
    "secretstores.",
    "configuration.",
    "lock.",
    "middleware.",
    "nameresolution.",
    "crypto.",
    "conversation.",
    "workflow.",
];

/// Reads a Component document; `None` when it has problems or is skipped.
pub fn read(ctx: &mut DocCtx<'_>, name: &str, doc: &Mapping, opts: &LoadOptions) -> Option<Loaded> {
    let spec = ctx.spec(doc, &["auth"])?;
    ctx.unknown_keys(
        spec,
        "spec",
        &["type", "version", "ignoreErrors", "initTimeout", "metadata"],
    );
    let type_name = ctx.required_string(spec, "spec", "type")?;
    if OTHER_BLOCKS.iter().any(|p| type_name.starts_with(p)) {
        tracing::warn!(component = name, r#type = %type_name, "skipping component: Perch serves pub/sub only");
        return None;
    }
    // Dapr's IsInitialVersion: empty, v0 and v1 are the first version.
    match ctx
        .string(spec, "spec", "version")
        .map(|v| v.to_ascii_lowercase())
        .as_deref()
    {
        None | Some("" | "v0" | "v1") => {}
        Some(v) => ctx.problem("spec.version", format!("unsupported version {v:?}; use v1")),
    }
    let kafka_keys: Vec<&str> = kafka::KEYS
        .iter()
        .copied()
        .chain(kafka::DAPR_ONLY.iter().map(|(k, _)| *k))
        .chain(crate::report::meta::BACKOFF_KEYS.iter().map(|(k, _)| *k))
        .collect();
    let rabbit_keys: Vec<&str> = rabbitmq::KEYS
        .iter()
        .copied()
        .chain(rabbitmq::DAPR_ONLY.iter().map(|(k, _)| *k))
        .chain(crate::report::meta::BACKOFF_KEYS.iter().map(|(k, _)| *k))
        .collect();
    let redis_keys: Vec<&str> = redis::KEYS
        .iter()
        .copied()
        .chain(redis::DAPR_ONLY.iter().map(|(k, _)| *k))
        .chain(crate::report::meta::BACKOFF_KEYS.iter().map(|(k, _)| *k))
        .collect();
    let (own_keys, passthrough): (&[&str], Option<&str>) = match type_name.as_str() {
        "pubsub.in-memory" => (&["maxMessages"], None),
        "pubsub.kafka" => (&kafka_keys, Some(kafka::PASSTHROUGH)),
        "pubsub.rabbitmq" => (&rabbit_keys, None),
        "pubsub.redis" => (&redis_keys, None),
        t @ ("store.postgresql" | "store.in-memory") => {
            let keys = if t == "store.postgresql" {
                store::POSTGRES_KEYS
            } else {
                store::MEMORY_KEYS
            };
            let before = ctx.problems.len();
            let metadata = read_metadata(ctx, spec, keys, None, opts);
            if ctx.problems.len() != before {
                return None;
            }
            return store::read(ctx, name, t, &metadata).map(Loaded::Store);
        }
        t => {
            ctx.problem(
                "spec.type",
                format!("unknown type {t:?}; supported: pubsub.in-memory, pubsub.kafka, pubsub.rabbitmq, pubsub.redis, store.postgresql, store.in-memory"),
            );
            return None;
        }
    };
    let before = ctx.problems.len();
    let metadata = read_metadata(ctx, spec, own_keys, passthrough, opts);
    let mut ok = ctx.problems.len() == before;
    let get = |k: &str| {
        metadata
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.as_str())
    };
    let mut positive = |ctx: &mut DocCtx<'_>, key: &str, default: usize| match get(key) {
        None => default,
        Some(v) => match v.trim().parse::<usize>() {
            Ok(n) if n > 0 => n,
            _ => {
                ctx.problem(
                    format!("spec.metadata.{key}"),
                    format!("must be a whole number above 0, got {v:?}"),
                );
                ok = false;
                default
            }
        },
    };
    let max_in_flight_set = get("maxInFlight").is_some();
    let mut max_in_flight = positive(ctx, "maxInFlight", DEFAULT_MAX_IN_FLIGHT);
    let max_messages = positive(ctx, "maxMessages", DEFAULT_MEMORY_MAX_MESSAGES);
    let kind = match type_name.as_str() {
        "pubsub.kafka" => match kafka::read(ctx, &metadata) {
            Some(k) => PubsubKind::Kafka(Box::new(k)),
            None => {
                ok = false;
                PubsubKind::InMemory { max_messages }
            }
        },
        "pubsub.rabbitmq" => match rabbitmq::read(ctx, &metadata) {
            Some(r) => PubsubKind::Rabbit(Box::new(r)),
            None => {
                ok = false;
                PubsubKind::InMemory { max_messages }
            }
        },
        "pubsub.redis" => match redis::read(ctx, &metadata) {
            Some(r) => {
                // Dapr's `concurrency` (workers per subscription) is the
                // in-flight window unless maxInFlight says otherwise.
                if let (Some(c), false) = (r.concurrency, max_in_flight_set) {
                    max_in_flight = c;
                }
                PubsubKind::Redis(Box::new(r))
            }
            None => {
                ok = false;
                PubsubKind::InMemory { max_messages }
            }
        },
        _ => PubsubKind::InMemory { max_messages },
    };
    let default_order = match &kind {
        PubsubKind::Kafka(_) => DeliveryOrder::Partition,
        // Dapr's concurrencyMode: single is one at a time, parallel (its
        // default) has no order.
        PubsubKind::Rabbit(r) if r.concurrency_mode.as_deref() == Some("single") => {
            DeliveryOrder::Partition
        }
        // Dapr's Redis workers take the stream's entries concurrently.
        PubsubKind::Rabbit(_) | PubsubKind::Redis(_) | PubsubKind::InMemory { .. } => {
            DeliveryOrder::None
        }
    };
    let delivery_order = match get("deliveryOrder") {
        None => default_order,
        Some("none") => DeliveryOrder::None,
        Some("partition") => DeliveryOrder::Partition,
        Some("key") => DeliveryOrder::Key,
        Some(other) => {
            ctx.problem(
                "spec.metadata.deliveryOrder",
                format!("must be partition, key or none, got {other:?}"),
            );
            ok = false;
            DeliveryOrder::None
        }
    };
    let dead_letter_default = match get("deadLetterDefault") {
        None => Some("{topic}.dlq".to_owned()),
        Some("none") => None,
        Some(p) => Some(p.to_owned()),
    };
    // Checked against the loaded stores once every document is read.
    let idempotency_store = get("idempotencyStore").map(str::to_owned);
    let outbox_store = get("outboxStore").map(str::to_owned);
    let scoping = Scoping::from_metadata(&metadata);
    let uses_namespace = matches!(spec.get("metadata"), Some(Value::Sequence(items))
        if items.iter().any(|i| i.get("value").and_then(Value::as_str).is_some_and(|v| v.contains("{namespace}"))));
    let topic_prefix = if uses_namespace {
        opts.template_namespace().to_owned()
    } else {
        String::new()
    };
    ok.then(|| {
        Loaded::Pubsub(Box::new(PubsubComponent {
            name: name.to_owned(),
            idempotency_store,
            outbox_store,
            type_name: type_name.clone(),
            kind,
            scoping,
            delivery_order,
            max_in_flight,
            dead_letter_default,
            metadata,
            topic_prefix,
        }))
    })
}

fn read_metadata(
    ctx: &mut DocCtx<'_>,
    spec: &Mapping,
    own_keys: &[&str],
    passthrough: Option<&str>,
    opts: &LoadOptions,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let items = match spec.get("metadata") {
        None | Some(Value::Null) => return out,
        Some(Value::Sequence(items)) => items,
        Some(_) => {
            ctx.problem("spec.metadata", "must be a list of {name, value} entries");
            return out;
        }
    };
    let valid: Vec<&str> = own_keys.iter().chain(COMMON_KEYS).copied().collect();
    for (i, item) in items.iter().enumerate() {
        let path = format!("spec.metadata[{i}]");
        let Some(entry) = item.as_mapping() else {
            ctx.problem(path, "must be a mapping with name and value");
            continue;
        };
        let Some(key) = ctx.required_string(entry, &path, "name") else {
            continue;
        };
        let passed = passthrough.is_some_and(|p| key.starts_with(p) && key.len() > p.len());
        if !passed && !valid.iter().any(|k| k.eq_ignore_ascii_case(&key)) {
            let hint = match crate::report::meta::did_you_mean(&key, &valid) {
                Some(k) => format!("did you mean {k:?}? "),
                None => String::new(),
            };
            ctx.problem(
                format!("{path}.name"),
                format!(
                    "unknown metadata key {key:?} (not a Dapr or Perch key); {hint}valid keys are: {}",
                    valid.join(", ")
                ),
            );
            continue;
        }
        if out.keys().any(|k: &String| k.eq_ignore_ascii_case(&key)) {
            ctx.problem(
                format!("{path}.name"),
                format!("duplicate metadata key {key:?}"),
            );
            continue;
        }
        if let Some(v) = value::resolve(ctx, entry, &path, opts) {
            out.insert(key, v);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::DocCtx;
    use std::time::Duration;

    fn load(yaml: &str, ns: Option<&str>) -> (Option<PubsubComponent>, Vec<String>) {
        let (c, problems, _) = load_warned(yaml, ns);
        (c, problems)
    }

    /// Like `load`, with the warnings too.
    fn load_warned(
        yaml: &str,
        ns: Option<&str>,
    ) -> (Option<PubsubComponent>, Vec<String>, Vec<String>) {
        let doc: serde_yaml::Value = serde_yaml::from_str(yaml).unwrap();
        let mut problems = vec![];
        let mut warnings = vec![];
        let mut ctx = DocCtx {
            file: std::path::Path::new("c.yaml"),
            doc: 1,
            problems: &mut problems,
            warnings: &mut warnings,
        };
        let opts = LoadOptions {
            app_id: "app".into(),
            namespace: ns.map(str::to_owned),
            ..Default::default()
        };
        let c = read(&mut ctx, "pubsub", doc.as_mapping().unwrap(), &opts);
        let c = match c {
            Some(Loaded::Pubsub(p)) => Some(*p),
            _ => None,
        };
        let text = |ps: &[crate::report::Problem]| -> Vec<String> {
            ps.iter()
                .map(|p| format!("{}: {}", p.field, p.message))
                .collect()
        };
        (c, text(&problems), text(&warnings))
    }

    #[test]
    fn namespace_template_prefixes_topics() {
        let yaml = "spec: {type: pubsub.in-memory, version: v1, metadata: [{name: consumerID, value: \"{namespace}\"}]}";
        let (c, problems) = load(yaml, Some("prod"));
        let c = c.unwrap_or_else(|| panic!("{problems:?}"));
        assert_eq!(c.metadata["consumerID"], "prod.app");
        assert_eq!(c.broker_topic("orders"), "prodorders");
        let (c, _) = load("spec: {type: pubsub.in-memory, version: v1}", Some("prod"));
        assert_eq!(c.unwrap().broker_topic("orders"), "orders");
    }

    #[test]
    fn a_postgres_store_needs_a_connection_string() {
        let (c, problems) = load("spec: {type: store.postgresql, version: v1}", None);
        assert!(c.is_none());
        assert_eq!(
            problems,
            ["spec.metadata.connectionString: required (e.g. postgres://user@host/db)"]
        );
    }

    fn kafka(metadata: &str) -> (Option<PubsubComponent>, Vec<String>) {
        load(
            &format!("spec: {{type: pubsub.kafka, version: v1, metadata: [{metadata}]}}"),
            None,
        )
    }

    #[test]
    fn kafka_metadata_maps_onto_librdkafka() {
        let (c, problems) = kafka(
            "{name: brokers, value: 'a:9092,b:9092'}, {name: authType, value: password},
             {name: saslUsername, value: u}, {name: saslPassword, value: p},
             {name: saslMechanism, value: SHA-512}, {name: compression, value: zstd},
             {name: rdkafka.fetch.wait.max.ms, value: '50'}, {name: initialOffset, value: oldest}",
        );
        let c = c.unwrap_or_else(|| panic!("{problems:?}"));
        assert_eq!(c.delivery_order, DeliveryOrder::Partition, "Dapr's default");
        let PubsubKind::Kafka(k) = c.kind else {
            panic!("not kafka")
        };
        assert_eq!(k.common["bootstrap.servers"], "a:9092,b:9092");
        assert_eq!(k.common["security.protocol"], "sasl_ssl");
        assert_eq!(k.common["sasl.mechanism"], "SCRAM-SHA-512");
        assert_eq!(k.common["fetch.wait.max.ms"], "50", "passthrough");
        assert_eq!(k.producer["acks"], "all");
        assert_eq!(k.producer["enable.idempotence"], "true");
        assert_eq!(k.producer["compression.type"], "zstd");
        assert_eq!(k.initial_offset, kafka::InitialOffset::Oldest);
        assert_eq!(k.producer["partitioner"], "fnv1a_random", "sarama's hash");
        assert_eq!(
            k.producer["linger.ms"], "1",
            "1 ms, not librdkafka's 5: a publish waits for its delivery report"
        );
        assert_eq!(
            k.producer["max.in.flight.requests.per.connection"], "1",
            "the idempotent producer's batches never overtake a failed one"
        );
        let (c, _) = kafka(
            "{name: brokers, value: 'a:9092'}, {name: rdkafka.partitioner, value: murmur2},
             {name: rdkafka.linger.ms, value: '5'}, {name: rdkafka.max.in.flight, value: '5'}",
        );
        let PubsubKind::Kafka(k) = c.unwrap().kind else {
            panic!("not kafka")
        };
        assert_eq!(k.common["partitioner"], "murmur2");
        assert_eq!(k.common["linger.ms"], "5");
        assert_eq!(k.common["max.in.flight"], "5");
        for key in [
            "partitioner",
            "linger.ms",
            "max.in.flight.requests.per.connection",
        ] {
            assert!(!k.producer.contains_key(key), "the passthrough wins: {key}");
        }
        let (c, _) = kafka(
            "{name: brokers, value: 'a:9092'}, {name: producerRequiredAcks, value: local},
             {name: rdkafka.enable.idempotence, value: 'true'}",
        );
        let PubsubKind::Kafka(k) = c.unwrap().kind else {
            panic!("not kafka")
        };
        assert_eq!(
            k.producer["max.in.flight.requests.per.connection"], "1",
            "idempotence asked for through the passthrough"
        );
        let (c, _) =
            kafka("{name: brokers, value: 'a:9092'}, {name: producerRequiredAcks, value: local}");
        let PubsubKind::Kafka(k) = c.unwrap().kind else {
            panic!("not kafka")
        };
        assert!(
            !k.producer
                .contains_key("max.in.flight.requests.per.connection"),
            "not idempotent: librdkafka's default"
        );
        let (c, _) = kafka(
            "{name: brokers, value: 'a:9092'}, {name: rdkafka.queue.buffering.max.ms, value: '2'}",
        );
        let PubsubKind::Kafka(k) = c.unwrap().kind else {
            panic!("not kafka")
        };
        assert!(
            !k.producer.contains_key("linger.ms"),
            "librdkafka's alias of linger.ms wins too"
        );
    }

    #[test]
    fn rabbitmq_defaults_keep_messages_and_concurrency_mode_maps_to_order() {
        let (c, problems) = load(
            "spec: {type: pubsub.rabbitmq, version: v1, metadata: [{name: hostname, value: mq},
             {name: username, value: u}, {name: password, value: p}, {name: concurrencyMode, value: single}]}",
            None,
        );
        let c = c.unwrap_or_else(|| panic!("{problems:?}"));
        assert_eq!(
            c.delivery_order,
            DeliveryOrder::Partition,
            "single = one at a time"
        );
        let PubsubKind::Rabbit(r) = c.kind else {
            panic!("not rabbitmq")
        };
        assert_eq!(r.uri, "amqp://u:p@mq");
        assert!(r.durable && !r.auto_delete && r.publisher_confirm);
        assert_eq!(r.delivery_mode, 2, "persistent");
        let (c, problems) = load(
            "spec: {type: pubsub.rabbitmq, version: v1, metadata: [{name: connectionString, value: 'amqp://h'},
             {name: caCert, value: pem}, {name: enableDeadLetter, value: 'true'}, {name: autoAck, value: 'true'}]}",
            None,
        );
        assert!(c.is_none());
        assert_eq!(
            problems.len(),
            2,
            "caCert without amqps, autoAck: {problems:?}"
        );
    }

    /// Issue 22: Dapr's `pubsub.redis` keys, with Dapr's defaults and its
    /// duration forms (whole milliseconds or a Go duration); `concurrency`
    /// is the in-flight window unless maxInFlight is set; what Perch cannot
    /// do (cluster, Sentinel) is an error naming the key, pool sizes a
    /// warning.
    #[test]
    fn redis_keys_load_with_daprs_defaults_and_forms() {
        let (c, problems) = load(
            "spec: {type: pubsub.redis, version: v1, metadata: [{name: redisHost, value: 'localhost:6379'},
             {name: redisPassword, value: ''}]}",
            None,
        );
        let c = c.unwrap_or_else(|| panic!("{problems:?}"));
        assert_eq!(c.delivery_order, DeliveryOrder::None);
        assert_eq!(c.max_in_flight, DEFAULT_MAX_IN_FLIGHT);
        let PubsubKind::Redis(r) = c.kind else {
            panic!("not redis")
        };
        assert_eq!(r.addr, "localhost:6379");
        assert_eq!(r.password, None, "an empty password is none");
        assert_eq!(r.processing_timeout, Duration::from_secs(60));
        assert_eq!(r.redeliver_interval, Duration::from_secs(15));
        assert_eq!((r.queue_depth, r.max_len_approx), (100, None));
        let (c, problems, warnings) = load_warned(
            "spec: {type: pubsub.redis, version: v1, metadata: [{name: redisHost, value: redis},
             {name: redisPort, value: '6380'}, {name: processingTimeout, value: '30000'},
             {name: redeliverInterval, value: 2s}, {name: concurrency, value: '5'},
             {name: maxLenApprox, value: '1000'}, {name: poolSize, value: '20'}, {name: redisDB, value: '2'}]}",
            None,
        );
        let c = c.unwrap_or_else(|| panic!("{problems:?}"));
        assert_eq!(c.max_in_flight, 5, "concurrency is the window");
        assert_eq!(warnings.len(), 1, "poolSize: {warnings:?}");
        let PubsubKind::Redis(r) = c.kind else {
            panic!("not redis")
        };
        assert_eq!(r.addr, "redis:6380");
        assert_eq!(r.db, 2);
        assert_eq!(
            r.processing_timeout,
            Duration::from_secs(30),
            "milliseconds"
        );
        assert_eq!(r.redeliver_interval, Duration::from_secs(2));
        assert_eq!(r.max_len_approx, Some(1000));
        let (c, problems) = load(
            "spec: {type: pubsub.redis, version: v1, metadata: [{name: redisHost, value: 'redis://h:1'},
             {name: redisType, value: cluster}, {name: failover, value: 'true'},
             {name: processingTimeout, value: soon}]}",
            None,
        );
        assert!(c.is_none());
        for key in ["redisHost", "redisType", "failover", "processingTimeout"] {
            assert!(
                problems
                    .iter()
                    .any(|p| p.starts_with(&format!("spec.metadata.{key}"))),
                "{key}: {problems:?}"
            );
        }
        let (_, problems) = load("spec: {type: pubsub.redis, version: v1}", None);
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("spec.metadata.redisHost") && p.contains("required")),
            "{problems:?}"
        );
    }

    /// Issue 18: Dapr's keys load (ignored ones with one warning each), an
    /// ask Perch cannot honour is an error saying what, and a key that is
    /// no Dapr key stays an error, with a suggestion.
    #[test]
    fn kafka_dapr_keys_load_with_warnings_and_only_real_asks_fail() {
        let (c, problems, warnings) = load_warned(
            "spec: {type: pubsub.kafka, version: '', metadata: [{name: brokers, value: 'a:9092'},
             {name: consumeRetryEnabled, value: 'false'}, {name: version, value: 2.0.0.0},
             {name: authRequired, value: 'false'}, {name: useAvroJSON, value: 'true'},
             {name: initialOffset, value: Oldest}, {name: backOffMaxRetries, value: '3'}]}",
            None,
        );
        let c = c.unwrap_or_else(|| panic!("{problems:?}"));
        assert_eq!(warnings.len(), 4, "{warnings:?}");
        assert!(warnings
            .iter()
            .any(|w| w.starts_with("spec.metadata.consumeRetryEnabled")
                && w.contains("ignored by Perch: the sidecar owns retries")));
        let PubsubKind::Kafka(k) = c.kind else {
            panic!("not kafka")
        };
        assert_eq!(
            k.initial_offset,
            kafka::InitialOffset::Oldest,
            "case-insensitive"
        );
        assert_eq!(
            k.common["security.protocol"], "plaintext",
            "authRequired false = none"
        );

        let (c, problems) = kafka(
            "{name: brokers, value: 'a:9092'}, {name: authType, value: oidc},
             {name: compresion, value: gzip}",
        );
        assert!(c.is_none());
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems
            .iter()
            .any(|p| p.starts_with("spec.metadata.authType") && p.contains("oidc")));
        assert!(problems
            .iter()
            .any(|p| p.contains("unknown metadata key \"compresion\"")
                && p.contains("did you mean \"compression\"?")));
        let (c, problems) = kafka("{name: initialOffset, value: oldest}");
        assert!(c.is_none());
        assert!(problems
            .iter()
            .any(|p| p.starts_with("spec.metadata.brokers: required")));
    }

    /// Dapr's legacy `authRequired` becomes password auth with a password,
    /// else mTLS (Dapr's upgradeMetadata).
    #[test]
    fn kafka_auth_required_maps_as_dapr_maps_it() {
        let (c, problems) = kafka(
            "{name: brokers, value: 'a:9092'}, {name: authRequired, value: 'true'},
             {name: saslUsername, value: u}, {name: saslPassword, value: p}",
        );
        let c = c.unwrap_or_else(|| panic!("{problems:?}"));
        let PubsubKind::Kafka(k) = c.kind else {
            panic!("not kafka")
        };
        assert_eq!(k.common["security.protocol"], "sasl_ssl");
        let (_, problems) =
            kafka("{name: brokers, value: 'a:9092'}, {name: authRequired, value: 'true'}");
        assert!(
            problems
                .iter()
                .any(|p| p.contains("clientCert: required with authType mtls")),
            "{problems:?}"
        );
    }

    #[test]
    fn rabbitmq_dapr_keys_off_load_on_fail_and_ttl_reads_durations() {
        let (c, problems, warnings) = load_warned(
            "spec: {type: pubsub.rabbitmq, metadata: [{name: host, value: 'amqp://h'},
             {name: enableDeadLetter, value: 'true'}, {name: saslExternal, value: 'false'},
             {name: reconnectWait, value: '0'}, {name: concurrency, value: parallel},
             {name: ttlInSeconds, value: 10s}]}",
            None,
        );
        let c = c.unwrap_or_else(|| panic!("{problems:?}"));
        assert_eq!(warnings.len(), 3, "{warnings:?}");
        let PubsubKind::Rabbit(r) = c.kind else {
            panic!("not rabbitmq")
        };
        assert_eq!(r.ttl, Some(std::time::Duration::from_secs(10)));
        let (c, problems) = load(
            "spec: {type: pubsub.rabbitmq, version: v1, metadata: [{name: host, value: 'amqp://h'},
             {name: saslExternal, value: 'true'}, {name: deleteWhenUnused, value: 'false'}]}",
            None,
        );
        assert!(c.is_none());
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems.iter().any(
                |p| p.starts_with("spec.metadata.saslExternal: \"true\" asks for")
                    && p.contains("SASL EXTERNAL is not supported")
            ),
            "{problems:?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.contains("did you mean \"deletedWhenUnused\"?")),
            "{problems:?}"
        );
    }

    #[test]
    fn dead_letter_default_pattern_and_opt_out() {
        let (c, _) = load("spec: {type: pubsub.in-memory, version: v1}", None);
        assert_eq!(
            c.unwrap().default_dead_letter_topic("orders").as_deref(),
            Some("orders.dlq")
        );
        let (c, _) = load("spec: {type: pubsub.in-memory, version: v1, metadata: [{name: deadLetterDefault, value: none}]}", None);
        assert_eq!(c.unwrap().default_dead_letter_topic("orders"), None);
    }
}
