//! Traces exported over OTLP, as Dapr users configure them: the
//! `Configuration` given by `--config` (`spec.tracing.samplingRate`,
//! `spec.tracing.otel.endpointAddress`, `isSecure`, `protocol` grpc|http).
//!
//! Perch already makes the W3C trace context of every event (the
//! CloudEvent's `traceparent`, the child it sends the app): a span here
//! takes those very ids, so a publish span is the parent of its delivery
//! spans in the collector, and the app's own spans hang under the
//! delivery's. Spans are batched and exported on the runtime. Without a
//! configured endpoint nothing is built and [`start`] answers `None` at
//! the cost of one atomic load.

use std::borrow::Cow;
use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};

use super::trace::TraceParent;

/// `spec.tracing` of a Configuration, as far as Perch exports it.
#[derive(Debug, Clone, PartialEq)]
pub struct TracingConfig {
    /// `samplingRate`, 0 to 1.
    pub sampling_rate: f64,
    /// `otel.endpointAddress` (`host:port`).
    pub endpoint: String,
    /// `otel.isSecure`: TLS to the collector.
    pub secure: bool,
    /// `otel.protocol`.
    pub protocol: Protocol,
}

/// The OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    Http,
}

static TRACING: OnceLock<(SdkTracerProvider, SdkTracer)> = OnceLock::new();

thread_local! {
    /// The ids the next span built on this thread takes (see [`Ids`]).
    static NEXT: std::cell::Cell<(Option<TraceId>, Option<SpanId>)> =
        const { std::cell::Cell::new((None, None)) };
}

/// Gives a span the ids Perch already chose (the SDK's span builder has
/// no way to pass them): [`start`] sets them just before it builds the
/// span on the same thread; anything else gets random ids.
#[derive(Debug)]
struct Ids;

impl opentelemetry_sdk::trace::IdGenerator for Ids {
    fn new_trace_id(&self) -> TraceId {
        let (t, s) = NEXT.get();
        NEXT.set((None, s));
        t.unwrap_or_else(|| TraceId::from_bytes(*uuid::Uuid::new_v4().as_bytes()))
    }

    fn new_span_id(&self) -> SpanId {
        let (t, s) = NEXT.get();
        NEXT.set((t, None));
        s.unwrap_or_else(|| {
            let b = uuid::Uuid::new_v4().as_u128().to_be_bytes();
            SpanId::from_bytes(b[..8].try_into().expect("8 bytes"))
        })
    }
}

/// Starts exporting to the configured collector (on the current tokio
/// runtime). Errors name what is wrong with the settings.
pub fn init(cfg: &TracingConfig, service: &str) -> Result<(), String> {
    let scheme = if cfg.secure { "https" } else { "http" };
    let exporter = match cfg.protocol {
        Protocol::Grpc => {
            use opentelemetry_otlp::WithTonicConfig;
            let b = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(format!("{scheme}://{}", cfg.endpoint))
                .with_timeout(Duration::from_secs(10));
            if cfg.secure {
                // The system's roots (SSL_CERT_FILE / SSL_CERT_DIR honoured).
                b.with_tls_config(
                    opentelemetry_otlp::tonic_types::transport::ClientTlsConfig::new()
                        .with_native_roots(),
                )
                .build()
            } else {
                b.build()
            }
        }
        Protocol::Http => {
            use opentelemetry_otlp::WithHttpConfig;
            let b = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(format!("{scheme}://{}/v1/traces", cfg.endpoint))
                .with_timeout(Duration::from_secs(10));
            if cfg.secure {
                let connector = super::otel_tls::TlsConnector::new()
                    .map_err(|e| format!("spec.tracing.otel.isSecure: {e}"))?;
                b.with_http_client(opentelemetry_http::hyper::HyperClient::new(
                    connector,
                    Duration::from_secs(10),
                    None,
                ))
                .build()
            } else {
                b.build()
            }
        }
    }
    .map_err(|e| format!("spec.tracing.otel: {e}"))?;
    let processor =
        opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
            exporter,
            opentelemetry_sdk::runtime::Tokio,
        )
        .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(Sampler::TraceIdRatioBased(
            cfg.sampling_rate.clamp(0.0, 1.0),
        ))
        .with_id_generator(Ids)
        .with_resource(
            opentelemetry_sdk::Resource::builder_empty()
                .with_service_name(service.to_owned())
                .build(),
        )
        .build();
    use opentelemetry::trace::TracerProvider as _;
    let tracer = provider.tracer("perch");
    TRACING
        .set((provider, tracer))
        .map_err(|_| "tracing is already set up".to_string())
}

/// Exports what is left and stops (at shutdown).
pub fn shutdown() {
    if let Some((provider, _)) = TRACING.get() {
        let _ = provider.force_flush();
        let _ = provider.shutdown();
    }
}

/// An exported span; ends (and is queued for export) when dropped.
pub struct Span(opentelemetry_sdk::trace::Span);

impl Span {
    /// Records the outcome: an error status unless `ok`.
    pub fn outcome(&mut self, outcome: &str, ok: bool) {
        self.0
            .set_attribute(KeyValue::new("perch.outcome", outcome.to_owned()));
        if !ok {
            self.0.set_status(Status::error(outcome.to_owned()));
        }
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// A span with the ids of `this` (whose parent span is `parent`), when
/// tracing is configured.
pub fn start(
    name: String,
    kind: SpanKind,
    this: &TraceParent,
    parent: Option<&TraceParent>,
    attributes: Vec<KeyValue>,
) -> Option<Span> {
    let (_, tracer) = TRACING.get()?;
    let cx = match parent {
        Some(p) => Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from_bytes(p.trace_id),
            SpanId::from_bytes(p.span_id),
            TraceFlags::SAMPLED,
            true,
            TraceState::NONE,
        )),
        None => Context::new(),
    };
    NEXT.set((
        Some(TraceId::from_bytes(this.trace_id)),
        Some(SpanId::from_bytes(this.span_id)),
    ));
    let span = tracer
        .span_builder(Cow::Owned(name))
        .with_kind(kind)
        .with_attributes(attributes)
        .start_with_context(tracer, &cx);
    NEXT.set((None, None));
    Some(Span(span))
}

/// OpenTelemetry's messaging attributes for a pub/sub operation.
pub fn messaging_attributes(
    component_type: &str,
    pubsub: &str,
    topic: &str,
    message_id: &str,
    operation: &'static str,
) -> Vec<KeyValue> {
    let system = component_type
        .strip_prefix("pubsub.")
        .unwrap_or(component_type);
    vec![
        KeyValue::new("messaging.system", system.to_owned()),
        KeyValue::new("messaging.destination.name", topic.to_owned()),
        KeyValue::new("messaging.operation.type", operation),
        KeyValue::new("messaging.message.id", message_id.to_owned()),
        KeyValue::new("perch.pubsub", pubsub.to_owned()),
    ]
}

/// Whether spans are exported (tracing configured).
pub fn enabled() -> bool {
    TRACING.get().is_some()
}
