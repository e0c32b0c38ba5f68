//! Command line: `perch run` (daprd's flag names and defaults, each with a
//! `PERCH_*` env fallback), `perch validate` and `perch demo`; invoked as
//! daprd is, `perch` runs as `perch run` ([`daprd`]).

pub mod daprd;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::{self, LoadOptions};
use crate::sidecar::{self, Sidecar};
use crate::state::{AppHealthCheck, Settings};

/// Perch: a Dapr-compatible pub/sub sidecar.
#[derive(Debug, Parser)]
#[command(name = "perch", version)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the sidecar next to an app.
    Run(Box<RunArgs>),
    /// Load YAML exactly as `run` would and print every problem; exit 0 when clean.
    Validate(ValidateArgs),
    /// Sidecar + built-in echo app + in-memory broker: events flowing, no services needed.
    Demo(crate::demo::DemoArgs),
    /// The Kubernetes mutating admission webhook that injects the sidecar.
    Injector(Box<crate::injector::InjectorArgs>),
    /// Lists or replays what sits in a dead-letter topic.
    Dlq(crate::dlq::DlqArgs),
}

/// Flags of `perch run` (daprd's names and defaults).
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// The app's id: consumer group, CloudEvent `source`, scopes.
    #[arg(long, env = "PERCH_APP_ID", default_value = "")]
    pub app_id: String,
    /// The app's HTTP port; without it there are no subscriptions.
    #[arg(long, env = "PERCH_APP_PORT")]
    pub app_port: Option<u16>,
    /// Address of the app.
    #[arg(long, env = "PERCH_APP_CHANNEL_ADDRESS", default_value = "127.0.0.1")]
    pub app_channel_address: String,
    /// Protocol to the app: `http`, or `grpc` (Dapr's AppCallback, h2c).
    #[arg(long, env = "PERCH_APP_PROTOCOL", default_value = "http", value_parser = ["http", "grpc"])]
    pub app_protocol: String,
    /// daprd's deprecated TLS-to-the-app switch; Perch calls the app over
    /// plain HTTP, so `true` is refused.
    #[arg(long, hide = true, num_args = 0..=1, default_missing_value = "true", default_value_t = false, action = clap::ArgAction::Set)]
    pub app_ssl: bool,
    /// Most concurrent calls to the app; -1 is unlimited.
    #[arg(long, env = "PERCH_APP_MAX_CONCURRENCY", default_value_t = -1, allow_hyphen_values = true)]
    pub app_max_concurrency: i64,
    /// Port of the HTTP API.
    #[arg(
        long,
        visible_alias = "http-port",
        env = "PERCH_DAPR_HTTP_PORT",
        default_value_t = 3500
    )]
    pub dapr_http_port: u16,
    /// Port of the gRPC API (`dapr.proto.runtime.v1.Dapr`), on the same
    /// listen addresses.
    #[arg(long, env = "PERCH_DAPR_GRPC_PORT", default_value_t = 50001)]
    pub dapr_grpc_port: u16,
    /// Port of the public endpoints (health, outbound health, lag) on
    /// `--dapr-public-listen-address`, for the kubelet's probes and KEDA;
    /// the API stays on the listen addresses.
    #[arg(long, env = "PERCH_DAPR_PUBLIC_PORT", default_value_t = 3501)]
    pub dapr_public_port: u16,
    /// Comma-separated addresses the public port listens on (default all
    /// interfaces).
    #[arg(
        long,
        env = "PERCH_DAPR_PUBLIC_LISTEN_ADDRESS",
        default_value = "0.0.0.0"
    )]
    pub dapr_public_listen_address: String,
    /// Comma-separated addresses the API listens on.
    #[arg(long, env = "PERCH_DAPR_LISTEN_ADDRESSES", default_value = "127.0.0.1")]
    pub dapr_listen_addresses: String,
    /// Folder of Component, Subscription and Resiliency YAML (repeatable).
    #[arg(
        long,
        visible_alias = "components-path",
        env = "PERCH_RESOURCES_PATH",
        value_delimiter = ','
    )]
    pub resources_path: Vec<PathBuf>,
    /// Dapr `Configuration` files (repeatable): `spec.metrics.enabled` and
    /// `spec.logging.apiLogging.enabled` apply; other sections are named in
    /// a warning.
    #[arg(long, env = "PERCH_CONFIG", value_delimiter = ',')]
    pub config: Vec<PathBuf>,
    /// Folder of mounted secrets for `secretKeyRef` (`<dir>/<name>/<key>`).
    #[arg(long, env = "PERCH_SECRETS_PATH")]
    pub secrets_path: Option<PathBuf>,
    /// Log level: debug, info, warn, error.
    #[arg(long, env = "PERCH_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// Log as JSON lines.
    #[arg(long, env = "PERCH_LOG_AS_JSON", num_args = 0..=1, default_missing_value = "true", default_value_t = false, action = clap::ArgAction::Set)]
    pub log_as_json: bool,
    /// Log every API call (method, path, status) at INFO.
    #[arg(long, env = "PERCH_ENABLE_API_LOGGING", num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub enable_api_logging: Option<bool>,
    /// Largest request body, a Kubernetes quantity (`4Mi`, `512Ki`, `1M`,
    /// bytes; `-1` is no limit). Default 4Mi.
    #[arg(long, env = "PERCH_MAX_BODY_SIZE", value_parser = parse_size, allow_hyphen_values = true)]
    pub max_body_size: Option<usize>,
    /// daprd's deprecated body limit in MB (`--max-body-size` wins).
    #[arg(long, hide = true, allow_hyphen_values = true)]
    pub dapr_http_max_request_size: Option<i64>,
    /// daprd's Unix-socket API; Perch listens on TCP only, so it is refused.
    #[arg(long, hide = true)]
    pub unix_domain_socket: Option<String>,
    /// Print the build information and exit (daprd's flag).
    #[arg(long, hide = true)]
    pub build_info: bool,
    /// Seconds to let in-flight deliveries finish at shutdown.
    #[arg(
        long,
        env = "PERCH_DAPR_GRACEFUL_SHUTDOWN_SECONDS",
        default_value_t = 5
    )]
    pub dapr_graceful_shutdown_seconds: u64,
    /// Probe the app's health path and deliver only while it is healthy.
    #[arg(long, env = "PERCH_ENABLE_APP_HEALTH_CHECK", num_args = 0..=1, default_missing_value = "true", default_value_t = false, action = clap::ArgAction::Set)]
    pub enable_app_health_check: bool,
    /// Path probed with GET (2xx is healthy).
    #[arg(long, env = "PERCH_APP_HEALTH_CHECK_PATH", default_value = "/healthz")]
    pub app_health_check_path: String,
    /// Seconds between probes.
    #[arg(long, env = "PERCH_APP_HEALTH_PROBE_INTERVAL", default_value_t = 5)]
    pub app_health_probe_interval: u64,
    /// Milliseconds a probe may take.
    #[arg(long, env = "PERCH_APP_HEALTH_PROBE_TIMEOUT", default_value_t = 500)]
    pub app_health_probe_timeout: u64,
    /// Consecutive failed probes that make the app unhealthy.
    #[arg(long, env = "PERCH_APP_HEALTH_THRESHOLD", default_value_t = 3)]
    pub app_health_threshold: u32,
    /// Serve Prometheus metrics (`--enable-metrics=false` turns them off).
    #[arg(long, env = "PERCH_ENABLE_METRICS", default_value_t = true, action = clap::ArgAction::Set)]
    pub enable_metrics: bool,
    /// Port of the metrics endpoint.
    #[arg(long, env = "PERCH_METRICS_PORT", default_value_t = 9090)]
    pub metrics_port: u16,
    /// Address of the metrics endpoint (default: the API's listen
    /// addresses; daprd's is 0.0.0.0).
    #[arg(long, env = "PERCH_METRICS_LISTEN_ADDRESS")]
    pub metrics_listen_address: Option<String>,
    /// daprd's flags that Perch accepts and does not act on.
    #[command(flatten)]
    pub daprd: daprd::DaprdOnly,
}

impl RunArgs {
    /// The body limit: `--max-body-size`, else daprd's deprecated
    /// `--dapr-http-max-request-size` (MB), else 4 MiB.
    pub fn body_limit(&self) -> usize {
        match (self.max_body_size, self.dapr_http_max_request_size) {
            (Some(n), _) => n,
            (None, Some(mb)) if mb > 0 => (mb as usize) << 20,
            (None, Some(_)) => usize::MAX,
            (None, None) => 4 << 20,
        }
    }
}

#[derive(Debug, Args)]
struct ValidateArgs {
    /// App id used for scopes and `{appID}` templates.
    #[arg(long, env = "PERCH_APP_ID", default_value = "")]
    app_id: String,
    /// Folder of mounted secrets for `secretKeyRef`.
    #[arg(long, env = "PERCH_SECRETS_PATH")]
    secrets_path: Option<PathBuf>,
    /// Resources folders.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
}

/// Every listen address is a loopback one (`127.0.0.1`, `::1`,
/// `localhost`).
fn listen_is_loopback(addresses: &str) -> bool {
    addresses
        .split(',')
        .map(|a| a.trim().trim_start_matches('[').trim_end_matches(']'))
        .filter(|a| !a.is_empty())
        .all(|a| {
            a == "localhost"
                || a.parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        })
}

/// Parses a size as daprd does, a Kubernetes quantity: `4Mi`, `512Ki`,
/// `1.5Gi`, `1M`, `500k`, `100` (bytes); a negative value is no limit.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    if let Some(n) = s.strip_prefix('-') {
        return n
            .parse::<u64>()
            .map(|_| usize::MAX)
            .map_err(|_| format!("invalid size {s:?}: use e.g. 4Mi"));
    }
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("invalid size {s:?}: use e.g. 4Mi"))?;
    let mult: f64 = match unit {
        "" | "B" => 1.0,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "k" | "K" | "KB" => 1e3,
        "M" | "MB" => 1e6,
        "G" | "GB" => 1e9,
        "T" => 1e12,
        _ => {
            return Err(format!(
                "invalid size unit {unit:?}: use Ki, Mi, Gi, k, M or G"
            ))
        }
    };
    let bytes = (n * mult).ceil();
    if bytes > usize::MAX as f64 {
        return Ok(usize::MAX);
    }
    Ok(bytes as usize)
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse_from(daprd::rewrite(std::env::args_os()));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match cli.command {
        Command::Validate(a) => {
            let opts = LoadOptions::from_env(&a.app_id, a.secrets_path);
            match config::load(&a.paths, &opts) {
                Ok(r) => {
                    for w in &r.warnings {
                        eprintln!("warning: {w}");
                    }
                    println!(
                        "ok: {} pubsub component(s), {} subscription(s), {} resiliency polic(ies)",
                        r.pubsubs.len(),
                        r.subscriptions.len(),
                        r.resiliency.len()
                    );
                    ExitCode::SUCCESS
                }
                Err(report) => {
                    eprint!("{report}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run(a) => {
            crate::telemetry::logging::init(&a.log_level, a.log_as_json);
            rt.block_on(run(*a))
        }
        Command::Demo(a) => {
            crate::telemetry::logging::init("warn", false);
            rt.block_on(crate::demo::run(a))
        }
        Command::Dlq(a) => {
            crate::telemetry::logging::init("warn", false);
            rt.block_on(crate::dlq::run(a))
        }
        Command::Injector(a) => {
            crate::telemetry::logging::init(&a.log_level, a.log_as_json);
            rt.block_on(crate::injector::run(*a))
        }
    }
}

/// Loads configuration, binds the listeners and runs until a signal.
async fn run(mut a: RunArgs) -> ExitCode {
    if a.build_info {
        println!(
            "perch {} (a Dapr-compatible pub/sub sidecar)",
            env!("CARGO_PKG_VERSION")
        );
        return ExitCode::SUCCESS;
    }
    if a.app_ssl {
        eprintln!("--app-ssl: Perch calls the app over plain HTTP only (--app-protocol http)");
        return ExitCode::FAILURE;
    }
    if a.unix_domain_socket
        .as_deref()
        .is_some_and(|s| !s.is_empty())
    {
        eprintln!("--unix-domain-socket: Perch serves its API on TCP only (--dapr-http-port)");
        return ExitCode::FAILURE;
    }
    let given = a.daprd.given();
    if !given.is_empty() {
        let list: Vec<String> = given
            .iter()
            .map(|(f, why)| format!("--{f} ({why})"))
            .collect();
        tracing::warn!(
            "daprd flags Perch accepts and does not act on: {}",
            list.join("; ")
        );
    }
    let mut tracing_cfg = None;
    for path in a.config.clone() {
        match daprd::read_configuration(&path) {
            Ok(c) => {
                if c.tracing.is_some() {
                    tracing_cfg = c.tracing.clone();
                }
                if c.metrics_enabled == Some(false) {
                    a.enable_metrics = false;
                }
                if a.enable_api_logging.is_none() {
                    a.enable_api_logging = c.api_logging;
                }
                if !c.ignored.is_empty() {
                    tracing::warn!(config = %path.display(), "Configuration sections Perch does not use: {}", c.ignored.join(", "));
                }
            }
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        }
    }
    if let Some(t) = tracing_cfg.as_ref().filter(|t| t.sampling_rate > 0.0) {
        if let Err(e) = crate::telemetry::otel::init(t, &a.app_id) {
            eprintln!("--config: {e}");
            return ExitCode::FAILURE;
        }
        tracing::info!(endpoint = %t.endpoint, protocol = ?t.protocol, sampling_rate = t.sampling_rate, "traces exported over OTLP");
    } else if tracing_cfg.is_some() {
        tracing::warn!("spec.tracing.samplingRate is 0 (or absent): no spans are exported");
    }
    let opts = LoadOptions::from_env(&a.app_id, a.secrets_path.clone());
    let resources = match config::load(&a.resources_path, &opts) {
        Ok(r) => r,
        Err(report) => {
            eprint!("{report}");
            return ExitCode::FAILURE;
        }
    };
    for w in &resources.warnings {
        tracing::warn!(file = %w.file.display(), field = %w.field, "{}", w.message);
    }
    let mut listeners = sidecar::Listeners::default();
    for (addrs, ports) in [
        (
            &a.dapr_listen_addresses,
            vec![
                (a.dapr_http_port, "--dapr-http-port", Surface::Http),
                (a.dapr_grpc_port, "--dapr-grpc-port", Surface::Grpc),
            ],
        ),
        (
            &a.dapr_public_listen_address,
            vec![(a.dapr_public_port, "--dapr-public-port", Surface::Public)],
        ),
    ] {
        for addr in addrs.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let host = addr.trim_start_matches('[').trim_end_matches(']');
            for (port, flag, surface) in &ports {
                let sock: SocketAddr = match format!("{}:{port}", bracket(host)).parse() {
                    Ok(s) => s,
                    Err(_) => {
                        eprintln!("{}: {addr:?} is not an IP address", surface.address_flag());
                        return ExitCode::FAILURE;
                    }
                };
                match (tokio::net::TcpListener::bind(sock).await, surface) {
                    (Ok(l), Surface::Http) => listeners.http.push(l),
                    (Ok(l), Surface::Grpc) => listeners.grpc.push(l),
                    (Ok(l), Surface::Public) => listeners.public.push(l),
                    // Like metrics, not worth refusing to start over: the
                    // probes that need it fail visibly instead.
                    (Err(e), Surface::Public) => tracing::error!(%sock, error = %e,
                        "cannot serve the public health and lag port ({flag}); the API still runs"),
                    (Err(e), _) => {
                        eprintln!(
                            "cannot listen on {sock} ({flag} / {}): {e}",
                            surface.address_flag()
                        );
                        return ExitCode::FAILURE;
                    }
                }
            }
        }
    }
    if a.enable_metrics {
        let hosts = a
            .metrics_listen_address
            .clone()
            .unwrap_or_else(|| a.dapr_listen_addresses.clone());
        for host in hosts.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let addr = format!("{}:{}", bracket(host), a.metrics_port);
            match tokio::net::TcpListener::bind(&addr).await {
                Ok(l) => {
                    tracing::info!(%addr, "metrics served");
                    tokio::spawn(crate::http::serve_metrics(l));
                }
                // Metrics are not worth refusing to start over.
                Err(e) => {
                    tracing::error!(%addr, error = %e, "cannot serve metrics (--metrics-port)")
                }
            }
        }
    }
    if !listen_is_loopback(&a.dapr_listen_addresses)
        && std::env::var("DAPR_API_TOKEN").map_or(true, |t| t.is_empty())
    {
        tracing::warn!(addresses = %a.dapr_listen_addresses,
            "the API listens beyond loopback without DAPR_API_TOKEN: any host that reaches it can publish and shut the sidecar down; set DAPR_API_TOKEN or listen on 127.0.0.1");
    }
    let settings = settings_from(&a);
    tracing::info!(app_id = %a.app_id, port = a.dapr_http_port, grpc_port = a.dapr_grpc_port, pubsubs = resources.pubsubs.len(), "starting perch");
    let loaded = &crate::telemetry::metrics::metrics().component_loaded;
    for p in &resources.pubsubs {
        tracing::info!(component = %p.name, r#type = %p.type_name, "component loaded");
        loaded
            .with_label_values(&[&a.app_id, &p.name, &p.type_name])
            .set(1);
    }
    for s in &resources.stores {
        tracing::info!(component = %s.name, "store component loaded");
        loaded
            .with_label_values(&[&a.app_id, &s.name, s.type_name()])
            .set(1);
    }
    let sc = match Sidecar::build(settings, &resources) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("perch: {e}");
            return ExitCode::FAILURE;
        }
    };
    sidecar::run(
        sc,
        listeners,
        resources.subscriptions,
        sidecar::shutdown_signal(),
    )
    .await;
    // The spans still queued go out before the process ends.
    let _ = tokio::task::spawn_blocking(crate::telemetry::otel::shutdown).await;
    ExitCode::SUCCESS
}

/// Which listener a bound socket is for.
enum Surface {
    Http,
    Grpc,
    Public,
}

impl Surface {
    /// The flag naming the addresses it listens on.
    fn address_flag(&self) -> &'static str {
        match self {
            Self::Http | Self::Grpc => "--dapr-listen-addresses",
            Self::Public => "--dapr-public-listen-address",
        }
    }
}

fn bracket(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

/// Turns flags and env into runtime settings.
pub fn settings_from(a: &RunArgs) -> Settings {
    Settings {
        app_id: a.app_id.clone(),
        // daprd (and `dapr run` without an app) pass `--app-port 0`: no app.
        app_port: a.app_port.filter(|p| *p != 0),
        app_channel_address: a.app_channel_address.clone(),
        app_protocol: match a.app_protocol.as_str() {
            "grpc" => crate::state::AppProtocol::Grpc,
            _ => crate::state::AppProtocol::Http,
        },
        app_max_concurrency: usize::try_from(a.app_max_concurrency)
            .ok()
            .filter(|n| *n > 0),
        api_token: std::env::var("DAPR_API_TOKEN")
            .ok()
            .filter(|s| !s.is_empty()),
        app_api_token: std::env::var("APP_API_TOKEN")
            .ok()
            .filter(|s| !s.is_empty()),
        max_body_size: a.body_limit(),
        api_logging: a.enable_api_logging.unwrap_or(false),
        graceful_shutdown: Duration::from_secs(a.dapr_graceful_shutdown_seconds),
        app_health: a.enable_app_health_check.then(|| AppHealthCheck {
            path: a.app_health_check_path.clone(),
            interval: Duration::from_secs(a.app_health_probe_interval.max(1)),
            timeout: Duration::from_millis(a.app_health_probe_timeout.max(1)),
            threshold: a.app_health_threshold.max(1),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_kubernetes_quantities() {
        assert_eq!(parse_size("4Mi"), Ok(4 << 20));
        assert_eq!(parse_size("100"), Ok(100));
        assert_eq!(parse_size("1.5Ki"), Ok(1536));
        assert_eq!(parse_size("2k"), Ok(2000));
        assert_eq!(parse_size("-1"), Ok(usize::MAX), "daprd's no limit");
        assert!(parse_size("4 parsecs").is_err());
    }
}
