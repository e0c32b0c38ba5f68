//! The pod's `perch.io/*` annotations (and, with `--dapr-annotations`,
//! `dapr.io/*`, where `perch.io` wins), read into what the sidecar needs.
//! Every problem is collected, so a denied pod names all of them at once.

use std::collections::BTreeMap;

/// Annotation prefix Perch owns.
pub const PERCH: &str = "perch.io/";
/// Dapr's prefix, read with `--dapr-annotations`.
pub const DAPR: &str = "dapr.io/";

/// One Secret key read into an env var of the sidecar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretEnv {
    pub var: String,
    pub secret: String,
    pub key: String,
}

/// A pod volume mounted into the sidecar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub volume: String,
    pub path: String,
    pub read_only: bool,
}

/// One probe's timings (Kubernetes field names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub initial_delay_seconds: u32,
    pub timeout_seconds: u32,
    pub period_seconds: u32,
    pub failure_threshold: u32,
}

/// CPU and memory requests and limits (Kubernetes quantities).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    pub cpu_request: Option<String>,
    pub cpu_limit: Option<String>,
    pub memory_request: Option<String>,
    pub memory_limit: Option<String>,
}

/// What the annotations ask of the sidecar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub app_id: String,
    pub app_port: Option<u16>,
    /// `http` or `grpc`.
    pub app_protocol: String,
    /// `perch run` flags with their values, in annotation order.
    pub flags: Vec<(&'static str, String)>,
    pub metrics: bool,
    pub metrics_port: u16,
    pub image: Option<String>,
    pub resources: Resources,
    pub api_token_secret: Option<String>,
    pub app_token_secret: Option<String>,
    pub env: Vec<(String, String)>,
    pub env_from_secret: Vec<SecretEnv>,
    pub mounts: Vec<Mount>,
    pub readiness: Probe,
    pub liveness: Probe,
    pub seccomp: String,
    /// A native sidecar (an init container with `restartPolicy: Always`).
    pub native: bool,
    pub resources_configmap: Option<String>,
    pub secrets: Vec<String>,
}

/// What the annotations say.
#[derive(Debug)]
pub enum Read {
    /// Not annotated for Perch.
    NotEnabled,
    /// Annotated, with these problems (the pod is denied).
    Invalid(Vec<String>),
    /// Annotated and valid, with warnings for the apiserver to show.
    Valid(Box<Wanted>, Vec<String>),
}

/// Dapr's truthy strings (`utils.IsTruthy`).
pub fn truthy(v: &str) -> bool {
    matches!(
        v.trim().to_ascii_lowercase().as_str(),
        "y" | "yes" | "true" | "t" | "on" | "1"
    )
}

fn falsy(v: &str) -> bool {
    matches!(
        v.trim().to_ascii_lowercase().as_str(),
        "n" | "no" | "false" | "f" | "off" | "0"
    )
}

/// A Kubernetes quantity (`100m`, `1.5Gi`, `2e3`).
pub fn is_quantity(v: &str) -> bool {
    static RE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    RE.get_or_init(|| {
        regex::Regex::new(r"^[+-]?(\d+(\.\d*)?|\.\d+)([KMGTPE]i|[numkMGTPE]|[eE][+-]?\d+)?$")
            .expect("quantity regex")
    })
    .is_match(v)
}

/// A DNS-1123 label: lower-case letters, digits and `-`, at most 63.
pub fn is_dns_label(v: &str) -> bool {
    let b = v.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// A DNS-1123 subdomain (Secret and ConfigMap names): labels joined by
/// dots, at most 253.
pub fn is_dns_subdomain(v: &str) -> bool {
    v.len() <= 253 && v.split('.').all(is_dns_label)
}

/// Keys of Dapr's that Perch has nothing behind (a warning each).
const DAPR_ONLY: &[&str] = &[
    "grpc-port",
    "internal-grpc-port",
    "enable-profiling",
    "enable-debug",
    "debug-port",
    "placement-host-address",
    "scheduler-host-address",
    "actors-disseminate-timeout",
    "unix-domain-socket-path",
    "pluggable-components",
    "pluggable-components-sockets-folder",
    "component-container",
    "inject-pluggable-components",
    "app-ssl",
    "disable-builtin-k8s-secret-store",
    "sentry-request-jwt-audiences",
    "sidecar-svc-annotations",
    "disable-init-endpoints",
    "http-read-buffer-size",
    "read-buffer-size",
    "app-binding-options-timeout",
    "block-shutdown-duration",
    "enable-mtls",
    "sidecar-run-as-user",
    "sidecar-run-as-group",
    "sidecar-drop-all-capabilities",
    "sidecar-image-pull-policy",
    "sidecar-listen-address",
];

/// Keys that map straight to a `perch run` flag, with how the value is
/// checked.
const FLAGS: &[(&str, &str, Check)] = &[
    ("app-channel-address", "--app-channel-address", Check::Text),
    (
        "app-max-concurrency",
        "--app-max-concurrency",
        Check::Concurrency,
    ),
    ("log-level", "--log-level", Check::LogLevel),
    ("log-as-json", "--log-as-json", Check::Bool),
    ("enable-api-logging", "--enable-api-logging", Check::Bool),
    ("max-body-size", "--max-body-size", Check::Size),
    (
        "http-max-request-size",
        "--dapr-http-max-request-size",
        Check::Int,
    ),
    (
        "graceful-shutdown-seconds",
        "--dapr-graceful-shutdown-seconds",
        Check::Int,
    ),
    (
        "enable-app-health-check",
        "--enable-app-health-check",
        Check::Bool,
    ),
    (
        "app-health-check-path",
        "--app-health-check-path",
        Check::Text,
    ),
    (
        "app-health-probe-interval",
        "--app-health-probe-interval",
        Check::Int,
    ),
    (
        "app-health-probe-timeout",
        "--app-health-probe-timeout",
        Check::Int,
    ),
    ("app-health-threshold", "--app-health-threshold", Check::Int),
    (
        "sidecar-listen-addresses",
        "--dapr-listen-addresses",
        Check::Text,
    ),
];

/// Every other key read by [`read`].
const OWN: &[&str] = &[
    "enabled",
    "app-id",
    "app-port",
    "app-protocol",
    "enable-metrics",
    "metrics-port",
    "sidecar-image",
    "sidecar-cpu-request",
    "sidecar-cpu-limit",
    "sidecar-memory-request",
    "sidecar-memory-limit",
    "api-token-secret",
    "app-token-secret",
    "env",
    "env-from-secret",
    "volume-mounts",
    "volume-mounts-rw",
    "sidecar-seccomp-profile-type",
    "enable-native-sidecar",
    "resources",
    "secrets",
    "config",
];

const PROBE_KEYS: [&str; 4] = [
    "delay-seconds",
    "timeout-seconds",
    "period-seconds",
    "threshold",
];

#[derive(Clone, Copy)]
enum Check {
    Text,
    Bool,
    Int,
    Concurrency,
    LogLevel,
    Size,
}

/// Dapr's readiness probe (1 s delay, 1 s timeout, every 1 s, 5 failures).
pub const READINESS: Probe = Probe {
    initial_delay_seconds: 1,
    timeout_seconds: 1,
    period_seconds: 1,
    failure_threshold: 5,
};

/// The liveness probe: Dapr's (180 s delay), or 10 s for a native
/// sidecar, which the startup probe already waited for.
pub fn liveness(native: bool) -> Probe {
    Probe {
        initial_delay_seconds: if native { 10 } else { 180 },
        timeout_seconds: 3,
        period_seconds: 10,
        failure_threshold: 5,
    }
}

/// The annotation `key` (without prefix): `perch.io/key`, else, with
/// `dapr`, `dapr.io/key`; with the full name it was read under.
fn lookup<'a>(
    annotations: &'a BTreeMap<String, String>,
    key: &str,
    dapr: bool,
) -> Option<(String, &'a str)> {
    let perch = format!("{PERCH}{key}");
    if let Some(v) = annotations.get(&perch) {
        return Some((perch, v.as_str()));
    }
    if dapr {
        let d = format!("{DAPR}{key}");
        if let Some(v) = annotations.get(&d) {
            return Some((d, v.as_str()));
        }
    }
    None
}

/// Whether the pod asks for Perch (`perch.io/enabled`, or with `dapr`
/// `dapr.io/enabled`, truthy).
pub fn enabled(annotations: &BTreeMap<String, String>, dapr: bool) -> bool {
    lookup(annotations, "enabled", dapr).is_some_and(|(_, v)| truthy(v))
}

/// Reads the annotations. `default_app_id` is used without `app-id`;
/// `volumes` are the pod's volume names (mounts must name one of them);
/// `native_default` is the injector's `--native-sidecar`.
pub fn read(
    annotations: &BTreeMap<String, String>,
    dapr: bool,
    default_app_id: Option<&str>,
    volumes: &[&str],
    native_default: bool,
) -> Read {
    if !enabled(annotations, dapr) {
        return Read::NotEnabled;
    }
    let mut problems = vec![];
    let mut warnings = vec![];
    let get = |key: &str| lookup(annotations, key, dapr);
    let app_id = match get("app-id") {
        Some((name, v)) => {
            if !is_dns_label(v) {
                problems.push(format!("{name}: {v:?} is not a valid app id (lower-case letters, digits and '-', at most 63, as a DNS label)"));
            }
            v.to_owned()
        }
        None => match default_app_id {
            Some(id) if is_dns_label(id) => {
                warnings.push(format!("no {PERCH}app-id: the app id is {id:?}, from the pod's name; set {PERCH}app-id so that the consumer group stays the same across rollouts"));
                id.to_owned()
            }
            _ => {
                problems.push(format!(
                    "{PERCH}app-id is required: the pod has no name to default it from"
                ));
                String::new()
            }
        },
    };
    let port = |key: &str, problems: &mut Vec<String>| -> Option<u16> {
        let (name, v) = get(key)?;
        match v.trim().parse::<u16>() {
            Ok(p) if p > 0 => Some(p),
            _ => {
                problems.push(format!("{name}: {v:?} is not a port (1-65535)"));
                None
            }
        }
    };
    let app_port = port("app-port", &mut problems);
    let metrics_port = port("metrics-port", &mut problems).unwrap_or(9090);
    let app_protocol = match get("app-protocol") {
        None => "http".to_owned(),
        Some((name, v)) => match v.trim() {
            "http" | "grpc" => v.trim().to_owned(),
            other => {
                problems.push(format!("{name}: {other:?} is not supported: Perch calls the app over http or grpc (h2c); https, grpcs and h2c as a protocol name are not"));
                String::new()
            }
        },
    };
    let boolean = |key: &str, problems: &mut Vec<String>| -> Option<bool> {
        let (name, v) = get(key)?;
        if truthy(v) {
            Some(true)
        } else if falsy(v) {
            Some(false)
        } else {
            problems.push(format!("{name}: {v:?} is not true or false"));
            None
        }
    };
    let metrics = boolean("enable-metrics", &mut problems).unwrap_or(true);
    let native = boolean("enable-native-sidecar", &mut problems).unwrap_or(native_default);
    let mut flags = vec![];
    for (key, flag, check) in FLAGS {
        let Some((name, v)) = get(key) else { continue };
        let v = v.trim();
        let ok = match check {
            Check::Text => !v.is_empty(),
            Check::Bool => truthy(v) || falsy(v),
            Check::Int => v.parse::<u32>().is_ok(),
            Check::Concurrency => v.parse::<i64>().is_ok_and(|n| n >= -1),
            Check::LogLevel => matches!(v, "debug" | "info" | "warn" | "error"),
            Check::Size => v == "-1" || is_quantity(v),
        };
        if !ok {
            let want = match check {
                Check::Text => "a value",
                Check::Bool => "true or false",
                Check::Int => "a whole number",
                Check::Concurrency => "a whole number, -1 for no limit",
                Check::LogLevel => "debug, info, warn or error",
                Check::Size => "a quantity such as 4Mi, or -1",
            };
            problems.push(format!("{name}: {v:?} is not {want}"));
            continue;
        }
        let value = match check {
            Check::Bool => truthy(v).to_string(),
            _ => v.to_owned(),
        };
        flags.push((*flag, value));
    }
    let mut resources = Resources::default();
    for (key, slot) in [
        ("sidecar-cpu-request", &mut resources.cpu_request),
        ("sidecar-cpu-limit", &mut resources.cpu_limit),
        ("sidecar-memory-request", &mut resources.memory_request),
        ("sidecar-memory-limit", &mut resources.memory_limit),
    ] {
        if let Some((name, v)) = get(key) {
            if is_quantity(v.trim()) {
                *slot = Some(v.trim().to_owned());
            } else {
                problems.push(format!(
                    "{name}: {v:?} is not a Kubernetes quantity (such as 100m, 64Mi)"
                ));
            }
        }
    }
    let secret_name = |key: &str, problems: &mut Vec<String>| -> Option<String> {
        let (name, v) = get(key)?;
        if is_dns_subdomain(v.trim()) {
            Some(v.trim().to_owned())
        } else {
            problems.push(format!("{name}: {v:?} is not a Secret name"));
            None
        }
    };
    let api_token_secret = secret_name("api-token-secret", &mut problems);
    let app_token_secret = secret_name("app-token-secret", &mut problems);
    let mut env = vec![];
    if let Some((name, v)) = get("env") {
        for pair in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some((k, val)) if is_env_name(k.trim()) => {
                    env.push((k.trim().to_owned(), val.trim().to_owned()))
                }
                _ => problems.push(format!(
                    "{name}: {pair:?} is not NAME=value (pairs separated by commas)"
                )),
            }
        }
    }
    let mut env_from_secret = vec![];
    if let Some((name, v)) = get("env-from-secret") {
        for pair in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let parsed = pair.split_once('=').and_then(|(var, rest)| {
                let (secret, key) = rest.split_once(':').unwrap_or((rest, var));
                let (var, secret, key) = (var.trim(), secret.trim(), key.trim());
                (is_env_name(var) && is_dns_subdomain(secret) && !key.is_empty()).then(|| {
                    SecretEnv {
                        var: var.to_owned(),
                        secret: secret.to_owned(),
                        key: key.to_owned(),
                    }
                })
            });
            match parsed {
                Some(s) => env_from_secret.push(s),
                None => problems.push(format!(
                    "{name}: {pair:?} is not VAR=secret:key (or VAR=secret, key VAR)"
                )),
            }
        }
    }
    let mut mounts = vec![];
    for (key, read_only) in [("volume-mounts", true), ("volume-mounts-rw", false)] {
        let Some((name, v)) = get(key) else { continue };
        for m in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match m.split_once(':') {
                Some((vol, path)) if path.trim().starts_with('/') => {
                    let vol = vol.trim();
                    if volumes.contains(&vol) {
                        mounts.push(Mount {
                            volume: vol.to_owned(),
                            path: path.trim().to_owned(),
                            read_only,
                        });
                    } else {
                        problems.push(format!("{name}: the pod has no volume {vol:?} to mount"));
                    }
                }
                _ => problems.push(format!(
                    "{name}: {m:?} is not volume:/absolute/path (pairs separated by commas)"
                )),
            }
        }
    }
    let probe = |kind: &str, default: Probe, problems: &mut Vec<String>| -> Probe {
        let mut p = default;
        for (suffix, slot) in PROBE_KEYS.iter().zip([
            &mut p.initial_delay_seconds,
            &mut p.timeout_seconds,
            &mut p.period_seconds,
            &mut p.failure_threshold,
        ]) {
            let key = format!("sidecar-{kind}-probe-{suffix}");
            if let Some((name, v)) = get(&key) {
                match v.trim().parse::<u32>() {
                    Ok(n) if n > 0 || *suffix == "delay-seconds" => *slot = n,
                    _ => problems.push(format!("{name}: {v:?} is not a positive whole number")),
                }
            }
        }
        p
    };
    let readiness = probe("readiness", READINESS, &mut problems);
    let liveness = probe("liveness", liveness(native), &mut problems);
    let seccomp = match get("sidecar-seccomp-profile-type") {
        None => "RuntimeDefault".to_owned(),
        Some((name, v)) => match v.trim() {
            "RuntimeDefault" | "Unconfined" => v.trim().to_owned(),
            other => {
                problems.push(format!("{name}: {other:?} is not RuntimeDefault or Unconfined (a Localhost profile needs its path, which no annotation gives)"));
                String::new()
            }
        },
    };
    let resources_configmap = secret_name("resources", &mut problems);
    let mut secrets = vec![];
    if let Some((name, v)) = get("secrets") {
        for s in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            // The volume is `perch-secret-<name>`, a DNS label.
            if is_dns_label(s) && s.len() <= 63 - "perch-secret-".len() {
                secrets.push(s.to_owned());
            } else {
                problems.push(format!("{name}: {s:?} is not a Secret name of at most 50 characters (lower-case letters, digits, '-')"));
            }
        }
    }
    if let Some((name, _)) = get("config") {
        warnings.push(format!("{name}: a Configuration resource is not read from the cluster; put Configuration files in the resources ConfigMap and pass them with --config"));
    }
    for key in annotations.keys() {
        let Some(rest) = key
            .strip_prefix(PERCH)
            .or_else(|| key.strip_prefix(DAPR).filter(|_| dapr))
        else {
            continue;
        };
        let known = OWN.contains(&rest)
            || FLAGS.iter().any(|(k, _, _)| *k == rest)
            || ["readiness", "liveness"].iter().any(|kind| {
                PROBE_KEYS
                    .iter()
                    .any(|s| rest == format!("sidecar-{kind}-probe-{s}"))
            })
            || rest == "inject"
            || rest == "sidecar-injected";
        if known {
            continue;
        }
        if DAPR_ONLY.contains(&rest) {
            warnings.push(format!("{key}: not supported by Perch (ignored)"));
        } else {
            let valid: Vec<&str> = OWN
                .iter()
                .copied()
                .chain(FLAGS.iter().map(|f| f.0))
                .collect();
            let hint = crate::report::meta::did_you_mean(rest, &valid)
                .map(|k| format!(" (did you mean {PERCH}{k}?)"))
                .unwrap_or_default();
            warnings.push(format!("unknown annotation {key}{hint}"));
        }
    }
    if !problems.is_empty() {
        return Read::Invalid(problems);
    }
    Read::Valid(
        Box::new(Wanted {
            app_id,
            app_port,
            app_protocol,
            flags,
            metrics,
            metrics_port,
            image: get("sidecar-image").map(|(_, v)| v.trim().to_owned()),
            resources,
            api_token_secret,
            app_token_secret,
            env,
            env_from_secret,
            mounts,
            readiness,
            liveness,
            seccomp,
            native,
            resources_configmap,
            secrets,
        }),
        warnings,
    )
}

/// An env var name as Kubernetes takes it (a C identifier, also `.` `-`).
fn is_env_name(v: &str) -> bool {
    !v.is_empty()
        && !v.starts_with(|c: char| c.is_ascii_digit())
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}
