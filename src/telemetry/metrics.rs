//! Prometheus metrics: Dapr's names and labels (reference 10), so existing
//! dashboards keep working, and Perch's own. One registry per process,
//! served as text on `--metrics-port`. Labels are low-cardinality: app id,
//! component, namespace, topic, partition, outcome.

use std::sync::OnceLock;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric Perch records.
pub struct Metrics {
    registry: Registry,
    /// Deliveries to the app, by outcome (Dapr).
    pub ingress_count: IntCounterVec,
    /// App processing time in ms (Dapr).
    pub ingress_latencies: HistogramVec,
    /// Publishes to the broker, by success (Dapr).
    pub egress_count: IntCounterVec,
    /// Broker publish time in ms (Dapr).
    pub egress_latencies: HistogramVec,
    /// Bulk deliveries (Dapr; component label is the literal `pubsubName`).
    pub ingress_bulk_count: IntCounterVec,
    /// Entries per status in bulk deliveries (Dapr).
    pub ingress_bulk_event_count: IntCounterVec,
    /// Bulk publishes (Dapr).
    pub egress_bulk_count: IntCounterVec,
    /// API errors by code (Dapr).
    pub error_code_total: IntCounterVec,
    /// Components loaded (Dapr).
    pub component_loaded: IntGaugeVec,
    /// Consumer lag per pubsub, topic and partition or queue.
    pub consumer_lag: IntGaugeVec,
    /// Deliveries in progress.
    pub inflight: IntGaugeVec,
    /// Attempts after the first.
    pub redeliveries: IntCounterVec,
    /// Events the idempotency store recognised as already done.
    pub duplicates_suppressed: IntCounterVec,
    /// Messages sent to a dead-letter topic.
    pub dead_lettered: IntCounterVec,
    /// Deliveries and consume loops cut off by a panic.
    pub panics: IntCounterVec,
    /// Publishes waiting in the outbox.
    pub outbox_pending: IntGaugeVec,
    /// Kept publishes the broker refused for good, parked in the outbox.
    pub outbox_parked: IntGaugeVec,
    /// Idempotency store call time.
    pub store_latency: HistogramVec,
    /// App call time, per attempt.
    pub app_latency: HistogramVec,
    /// 1 while the broker is reachable.
    pub broker_connected: IntGaugeVec,
    /// 1 while the store is reachable.
    pub store_connected: IntGaugeVec,
}

const INGRESS: &[&str] = &[
    "app_id",
    "component",
    "namespace",
    "process_status",
    "status",
    "topic",
];
const EGRESS: &[&str] = &["app_id", "component", "namespace", "success", "topic"];
const BULK_IN: &[&str] = &[
    "app_id",
    "component",
    "namespace",
    "process_status",
    "topic",
];
const MS_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0,
];
const S_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
];

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("metric");
    r.register(Box::new(c.clone())).expect("register");
    c
}

fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("metric");
    r.register(Box::new(g.clone())).expect("register");
    g
}

fn histogram(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> HistogramVec {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )
    .expect("metric");
    r.register(Box::new(h.clone())).expect("register");
    h
}

impl Metrics {
    fn new() -> Self {
        let r = Registry::new();
        Self {
            ingress_count: counter(
                &r,
                "dapr_component_pubsub_ingress_count",
                "Deliveries to the app by outcome",
                INGRESS,
            ),
            ingress_latencies: histogram(
                &r,
                "dapr_component_pubsub_ingress_latencies",
                "App processing latency (ms)",
                INGRESS,
                MS_BUCKETS,
            ),
            egress_count: counter(
                &r,
                "dapr_component_pubsub_egress_count",
                "Publishes to the broker",
                EGRESS,
            ),
            egress_latencies: histogram(
                &r,
                "dapr_component_pubsub_egress_latencies",
                "Broker publish latency (ms)",
                EGRESS,
                MS_BUCKETS,
            ),
            ingress_bulk_count: counter(
                &r,
                "dapr_component_pubsub_ingress_bulk_count",
                "Bulk deliveries",
                BULK_IN,
            ),
            ingress_bulk_event_count: counter(
                &r,
                "dapr_component_pubsub_ingress_bulk_event_count",
                "Bulk entries by status",
                BULK_IN,
            ),
            egress_bulk_count: counter(
                &r,
                "dapr_component_pubsub_egress_bulk_count",
                "Bulk publishes",
                EGRESS,
            ),
            error_code_total: counter(
                &r,
                "dapr_error_code_total",
                "API errors by code",
                &["category", "error_code"],
            ),
            component_loaded: gauge(
                &r,
                "dapr_runtime_component_loaded",
                "Components loaded",
                &["app_id", "component", "type"],
            ),
            consumer_lag: gauge(
                &r,
                "perch_consumer_lag",
                "Messages the consumer group has not finished",
                &["pubsub", "topic", "partition"],
            ),
            inflight: gauge(
                &r,
                "perch_inflight",
                "Deliveries in progress",
                &["pubsub", "topic"],
            ),
            redeliveries: counter(
                &r,
                "perch_redeliveries_total",
                "Delivery attempts after the first",
                &["pubsub", "topic"],
            ),
            duplicates_suppressed: counter(
                &r,
                "perch_duplicates_suppressed_total",
                "Duplicate events acknowledged without delivery",
                &["pubsub", "topic"],
            ),
            dead_lettered: counter(
                &r,
                "perch_dead_lettered_total",
                "Messages sent to a dead-letter topic",
                &["pubsub", "topic"],
            ),
            panics: counter(
                &r,
                "perch_panics_total",
                "Deliveries and consume loops cut off by a panic (a bug: please report it)",
                &["pubsub", "topic"],
            ),
            outbox_pending: gauge(
                &r,
                "perch_outbox_pending",
                "Publishes waiting in the outbox",
                &["pubsub"],
            ),
            outbox_parked: gauge(
                &r,
                "perch_outbox_parked",
                "Kept publishes the broker refused for good, parked in the outbox table",
                &["pubsub"],
            ),
            store_latency: histogram(
                &r,
                "perch_store_latency_seconds",
                "Idempotency store call latency",
                &["store", "op"],
                S_BUCKETS,
            ),
            app_latency: histogram(
                &r,
                "perch_app_latency_seconds",
                "App call latency per attempt",
                &["pubsub", "topic"],
                S_BUCKETS,
            ),
            broker_connected: gauge(
                &r,
                "perch_broker_connected",
                "1 while the broker is reachable",
                &["pubsub"],
            ),
            store_connected: gauge(
                &r,
                "perch_store_connected",
                "1 while the store is reachable",
                &["store"],
            ),
            registry: r,
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        buf
    }
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(Metrics::new)
}
