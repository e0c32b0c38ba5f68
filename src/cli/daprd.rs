//! Standing in for daprd: invoked as daprd is invoked (no subcommand,
//! daprd's flags, Go's single-dash spellings), Perch runs as `perch run`
//! does, so `dapr run` (whose run template can point at another runtime),
//! Dapr's test harness and manifests written for daprd start it unchanged.
//! Every daprd 1.18 flag is accepted: the ones that mean something to
//! Perch are implemented in [`super::RunArgs`]; the others are below, and
//! one WARN at start-up names each one given with what Perch does not do.
//! Also the `Configuration` file of `--config` (what `dapr init` writes).

use std::ffi::OsString;
use std::path::Path;

use clap::Args;

/// Subcommands and top-level flags of `perch` itself.
const OWN: &[&str] = &[
    "run",
    "validate",
    "demo",
    "help",
    "-h",
    "--help",
    "-V",
    "--version",
];

/// The arguments as `perch` reads them: daprd's single-dash long flags
/// (`-app-id`, Go's `flag` syntax, which daprd still accepts) doubled, and
/// `run` put first when the first argument is a flag and not one of
/// Perch's own (`perch --app-id x` is `perch run --app-id x`).
pub fn rewrite(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let mut out: Vec<OsString> = args
        .into_iter()
        .enumerate()
        .map(|(i, a)| {
            let Some(s) = a.to_str() else { return a };
            let b = s.as_bytes();
            // A flag, not a value such as -1: a letter after one dash.
            if i > 0 && b.len() > 2 && b[0] == b'-' && b[1].is_ascii_alphabetic() {
                OsString::from(format!("-{s}"))
            } else {
                a
            }
        })
        .collect();
    let first = out.get(1).and_then(|a| a.to_str()).map(str::to_owned);
    if let Some(first) = first {
        if first.starts_with('-') && !OWN.contains(&first.as_str()) {
            out.insert(1, "run".into());
        }
    }
    out
}

/// Declares the daprd flags Perch accepts and does not act on, with what
/// Perch does not do for each.
macro_rules! daprd_only {
    (
        values { $( $vfield:ident : $vflag:literal => $vwhy:literal ),* $(,)? }
        switches { $( $bfield:ident : $bflag:literal => $bwhy:literal ),* $(,)? }
    ) => {
        /// daprd flags Perch accepts and does not act on.
        #[derive(Debug, Clone, Default, Args)]
        pub struct DaprdOnly {
            $(
                #[arg(long = $vflag, hide = true, allow_hyphen_values = true)]
                $vfield: Option<String>,
            )*
            $(
                #[arg(long = $bflag, hide = true, num_args = 0..=1, default_missing_value = "true")]
                $bfield: Option<String>,
            )*
        }

        impl DaprdOnly {
            /// Each flag given, with what Perch does not do (a switch set
            /// to `false` asks for nothing and is left out).
            pub fn given(&self) -> Vec<(&'static str, &'static str)> {
                let mut out = vec![];
                $( if self.$vfield.is_some() { out.push(($vflag, $vwhy)); } )*
                $(
                    if self.$bfield.as_deref().is_some_and(|v| crate::util::parse_go_bool(v) != Some(false)) {
                        out.push(($bflag, $bwhy));
                    }
                )*
                out
            }
        }
    };
}

daprd_only! {
    values {
        mode: "mode" => "Perch reads resources from files (--resources-path) in every mode",
        dapr_internal_grpc_port: "dapr-internal-grpc-port" => "no sidecar-to-sidecar API: Perch does pub/sub, not service invocation",
        dapr_internal_grpc_listen_address: "dapr-internal-grpc-listen-address" => "no sidecar-to-sidecar API",
        profile_port: "profile-port" => "no profiling server",
        placement_host_address: "placement-host-address" => "no actors",
        actors_service: "actors-service" => "no actors",
        reminders_service: "reminders-service" => "no reminders",
        scheduler_host_address: "scheduler-host-address" => "no jobs, reminders or workflows",
        scheduler_job_streams: "scheduler-job-streams" => "no jobs",
        control_plane_address: "control-plane-address" => "no control plane",
        control_plane_trust_domain: "control-plane-trust-domain" => "no control plane",
        control_plane_namespace: "control-plane-namespace" => "no control plane",
        sentry_address: "sentry-address" => "no mTLS between sidecars",
        sentry_request_jwt_audiences: "sentry-request-jwt-audiences" => "no mTLS between sidecars",
        allowed_origins: "allowed-origins" => "no CORS: the API is for the app next to it",
        read_buffer_size: "read-buffer-size" => "request headers are limited by the HTTP server (about 400 KiB), not by this",
        dapr_http_read_buffer_size: "dapr-http-read-buffer-size" => "request headers are limited by the HTTP server, not by this",
        dapr_block_shutdown_duration: "dapr-block-shutdown-duration" => "shutdown is not blocked; in-flight deliveries get --dapr-graceful-shutdown-seconds",
    }
    switches {
        enable_profiling: "enable-profiling" => "no profiling server",
        enable_mtls: "enable-mtls" => "no mTLS between sidecars (Perch does not do service invocation)",
        wait: "wait" => "the sidecar is ready when /v1.0/healthz/outbound is",
        disable_builtin_k8s_secret_store: "disable-builtin-k8s-secret-store" => "secrets come from env or --secrets-path only",
    }
}

/// What Perch takes from a Dapr `Configuration` document.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Configuration {
    /// `spec.metrics.enabled`, when set.
    pub metrics_enabled: Option<bool>,
    /// `spec.logging.apiLogging.enabled`, when set.
    pub api_logging: Option<bool>,
    /// `spec.tracing` with an `otel` exporter, when set.
    pub tracing: Option<crate::telemetry::otel::TracingConfig>,
    /// `spec.*` sections Perch does not use, for one warning.
    pub ignored: Vec<String>,
}

/// `spec.tracing`: `samplingRate` (a number as a string, as Dapr writes
/// it; absent is 0: nothing sampled, as daprd) and `otel` (`endpointAddress`,
/// `isSecure`, `protocol` grpc or http, default http). `zipkin` and
/// `stdout` are named as unused.
fn read_tracing(
    section: &serde_yaml::Value,
    c: &mut Configuration,
    at: &dyn Fn(String) -> String,
) -> Result<(), String> {
    use crate::telemetry::otel::{Protocol, TracingConfig};
    let text = |v: &serde_yaml::Value| match v {
        serde_yaml::Value::String(s) => Some(s.clone()),
        serde_yaml::Value::Number(n) => Some(n.to_string()),
        serde_yaml::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    };
    let rate = match section.get("samplingRate").and_then(text) {
        None => 0.0,
        Some(r) if r.trim().is_empty() => 0.0,
        Some(r) => match r.trim().parse::<f64>() {
            Ok(x) if (0.0..=1.0).contains(&x) => x,
            _ => {
                return Err(at(format!(
                    "spec.tracing.samplingRate: {r:?} is not a number from 0 to 1"
                )))
            }
        },
    };
    for unused in ["zipkin", "stdout"] {
        if section.get(unused).is_some() {
            c.ignored.push(format!(
                "tracing.{unused} (Perch exports traces over OTLP only: tracing.otel)"
            ));
        }
    }
    let Some(otel) = section.get("otel") else {
        return Ok(());
    };
    let endpoint = otel
        .get("endpointAddress")
        .and_then(text)
        .filter(|e| !e.trim().is_empty())
        .ok_or_else(|| {
            at("spec.tracing.otel.endpointAddress: required (host:port of the collector)".into())
        })?;
    // Dapr writes host:port; a scheme given anyway is taken off.
    let endpoint = endpoint
        .trim()
        .trim_start_matches("http://")
        .trim_start_matches("https://")
        .trim_end_matches('/')
        .to_owned();
    let secure = match otel.get("isSecure").and_then(text) {
        None => false,
        Some(v) => crate::util::parse_go_bool(&v).ok_or_else(|| {
            at(format!(
                "spec.tracing.otel.isSecure: must be true or false, got {v:?}"
            ))
        })?,
    };
    let protocol = match otel
        .get("protocol")
        .and_then(text)
        .as_deref()
        .map(str::trim)
    {
        None | Some("") | Some("http") => Protocol::Http,
        Some("grpc") => Protocol::Grpc,
        Some(other) => {
            return Err(at(format!(
                "spec.tracing.otel.protocol: {other:?} is not grpc or http"
            )))
        }
    };
    c.tracing = Some(TracingConfig {
        sampling_rate: rate,
        endpoint,
        secure,
        protocol,
    });
    Ok(())
}

/// Reads a `--config` file: a `kind: Configuration` document (the one
/// `dapr init` writes, with zipkin tracing, loads). Errors name the file
/// and field.
pub fn read_configuration(path: &Path) -> Result<Configuration, String> {
    let at = |what: String| format!("--config {}: {what}", path.display());
    let text = std::fs::read_to_string(path).map_err(|e| at(format!("cannot read: {e}")))?;
    let v: serde_yaml::Value =
        serde_yaml::from_str(&text).map_err(|e| at(format!("not valid YAML: {e}")))?;
    match v.get("kind").and_then(|k| k.as_str()) {
        Some("Configuration") => {}
        other => return Err(at(format!("kind must be Configuration, got {other:?}"))),
    }
    let mut c = Configuration::default();
    let Some(spec) = v.get("spec").and_then(|s| s.as_mapping()) else {
        return Ok(c);
    };
    let flag = |v: Option<&serde_yaml::Value>, field: &str| -> Result<Option<bool>, String> {
        match v {
            None | Some(serde_yaml::Value::Null) => Ok(None),
            Some(serde_yaml::Value::Bool(b)) => Ok(Some(*b)),
            Some(serde_yaml::Value::String(s)) => crate::util::parse_go_bool(s)
                .map(Some)
                .ok_or_else(|| at(format!("{field}: must be true or false, got {s:?}"))),
            Some(other) => Err(at(format!("{field}: must be true or false, got {other:?}"))),
        }
    };
    for (key, section) in spec {
        let key = key.as_str().unwrap_or_default();
        match key {
            "metrics" => c.metrics_enabled = flag(section.get("enabled"), "spec.metrics.enabled")?,
            "logging" => {
                c.api_logging = flag(
                    section.get("apiLogging").and_then(|a| a.get("enabled")),
                    "spec.logging.apiLogging.enabled",
                )?
            }
            "tracing" => read_tracing(section, &mut c, &at)?,
            other => c.ignored.push(other.to_owned()),
        }
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: Vec<OsString>) -> Vec<String> {
        v.into_iter().map(|a| a.into_string().unwrap()).collect()
    }

    #[test]
    fn daprd_invocations_become_perch_run() {
        let r = |args: &[&str]| strings(rewrite(args.iter().map(OsString::from)));
        assert_eq!(
            r(&["daprd", "--app-id", "a", "--app-max-concurrency", "-1"]),
            [
                "daprd",
                "run",
                "--app-id",
                "a",
                "--app-max-concurrency",
                "-1"
            ]
        );
        assert_eq!(
            r(&["perch", "-app-id", "a", "-dapr-http-port", "3501"]),
            ["perch", "run", "--app-id", "a", "--dapr-http-port", "3501"]
        );
        assert_eq!(
            r(&["perch", "validate", "dir"]),
            ["perch", "validate", "dir"]
        );
        assert_eq!(r(&["perch", "--version"]), ["perch", "--version"]);
        assert_eq!(
            r(&["perch", "run", "-x"]),
            ["perch", "run", "-x"],
            "a short flag stays"
        );
    }

    #[test]
    fn the_configuration_dapr_init_writes_loads() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.yaml");
        std::fs::write(
            &p,
            "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata:\n  name: daprConfig\nspec:\n  tracing:\n    samplingRate: \"1\"\n    zipkin:\n      endpointAddress: http://localhost:9411/api/v2/spans\n",
        )
        .unwrap();
        let c = read_configuration(&p).unwrap();
        assert_eq!(c.metrics_enabled, None);
        assert_eq!(c.ignored.len(), 1);
        assert!(
            c.ignored[0].starts_with("tracing.zipkin"),
            "{:?}",
            c.ignored
        );
        assert_eq!(c.tracing, None, "zipkin only: nothing exported");
        std::fs::write(
            &p,
            "kind: Configuration\nspec:\n  tracing:\n    samplingRate: \"0.5\"\n    otel:\n      endpointAddress: localhost:4317\n      isSecure: false\n      protocol: grpc\n",
        )
        .unwrap();
        let t = read_configuration(&p).unwrap().tracing.unwrap();
        assert_eq!(
            (t.sampling_rate, t.endpoint.as_str(), t.secure, t.protocol),
            (
                0.5,
                "localhost:4317",
                false,
                crate::telemetry::otel::Protocol::Grpc
            )
        );
        std::fs::write(
            &p,
            "kind: Configuration\nspec:\n  tracing:\n    samplingRate: \"2\"\n",
        )
        .unwrap();
        assert!(read_configuration(&p)
            .unwrap_err()
            .contains("spec.tracing.samplingRate"));
        std::fs::write(
            &p,
            "kind: Configuration\nspec:\n  metrics: {enabled: false}\n  logging: {apiLogging: {enabled: true}}\n  features: [{name: x, enabled: true}]\n",
        )
        .unwrap();
        let c = read_configuration(&p).unwrap();
        assert_eq!(
            (c.metrics_enabled, c.api_logging),
            (Some(false), Some(true))
        );
        assert_eq!(c.ignored, ["features"]);
        std::fs::write(
            &p,
            "kind: Configuration\nspec:\n  metrics: {enabled: maybe}\n",
        )
        .unwrap();
        let e = read_configuration(&p).unwrap_err();
        assert!(
            e.contains("spec.metrics.enabled: must be true or false"),
            "{e}"
        );
        std::fs::write(&p, "kind: Component\n").unwrap();
        assert!(read_configuration(&p)
            .unwrap_err()
            .contains("kind must be Configuration"));
    }
}
