//! The patch: a pure function from a pod (as the apiserver sends it), its
//! namespace and the injector's settings to what the webhook answers:
//! allow unchanged, deny with a message, or a JSONPatch (RFC 6902) that
//! adds the `perch` sidecar. No I/O, so every case is a table test.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::annotations::{self, Probe, Read, Wanted};

/// The sidecar container's name; a pod that has it is not patched again.
pub const CONTAINER: &str = "perch";
/// Where the resources ConfigMap is mounted (`--resources-path`).
pub const RESOURCES_PATH: &str = "/etc/perch/resources";
/// Where `perch.io/secrets` are mounted (`--secrets-path`).
pub const SECRETS_PATH: &str = "/var/run/secrets/perch";
/// The resources volume; a pod that already has one of this name keeps it.
pub const RESOURCES_VOLUME: &str = "perch-resources";
/// The sidecar's ports, daprd's numbers.
pub const HTTP_PORT: u16 = 3500;
pub const GRPC_PORT: u16 = 50001;
pub const PUBLIC_PORT: u16 = 3501;

/// The injector's own settings (its flags).
#[derive(Debug, Clone)]
pub struct Settings {
    /// The sidecar image, unless `perch.io/sidecar-image` names one.
    pub image: String,
    /// Native sidecars unless `perch.io/enable-native-sidecar` says no.
    pub native: bool,
    /// Read `dapr.io/*` annotations too.
    pub dapr_annotations: bool,
    /// Requests and limits when the annotations give none.
    pub resources: annotations::Resources,
    /// The resources ConfigMap unless `perch.io/resources` names one.
    pub resources_configmap: String,
}

/// What the webhook answers for one pod.
#[derive(Debug, PartialEq)]
pub enum Decision {
    /// Admitted unchanged (why, for the log; warnings for the apiserver).
    Allow {
        why: &'static str,
        warnings: Vec<String>,
    },
    /// Refused: the message reaches the ReplicaSet's events.
    Deny(String),
    /// Admitted with the sidecar.
    Patch {
        ops: Vec<Value>,
        warnings: Vec<String>,
    },
}

/// Escapes one JSON-pointer token (RFC 6901).
pub fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

fn names(list: Option<&Value>) -> Vec<&str> {
    list.and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|c| c["name"].as_str()).collect())
        .unwrap_or_default()
}

/// The patch for `pod` created in `namespace`.
pub fn patch_for(pod: &Value, namespace: &str, settings: &Settings) -> Decision {
    let annotations: BTreeMap<String, String> = pod["metadata"]["annotations"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default();
    if !annotations::enabled(&annotations, settings.dapr_annotations) {
        return Decision::Allow {
            why: "not annotated",
            warnings: vec![],
        };
    }
    let spec = &pod["spec"];
    let containers = names(spec.get("containers"));
    let inits = names(spec.get("initContainers"));
    let all: Vec<&str> = containers.iter().chain(inits.iter()).copied().collect();
    if all.contains(&CONTAINER) {
        return Decision::Allow {
            why: "already has a perch container",
            warnings: vec![],
        };
    }
    if all.contains(&"daprd") {
        return Decision::Allow {
            why: "a Dapr pod",
            warnings: vec![
                "the pod has a daprd container (Dapr's injector ran): Perch is not injected".into(),
            ],
        };
    }
    let volumes = names(spec.get("volumes"));
    let default_id = pod["metadata"]["name"]
        .as_str()
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .or_else(|| {
            pod["metadata"]["generateName"]
                .as_str()
                .map(|g| g.trim_end_matches('-').to_owned())
        });
    let (wanted, warnings) = match annotations::read(
        &annotations,
        settings.dapr_annotations,
        default_id.as_deref(),
        &volumes,
        settings.native,
    ) {
        Read::NotEnabled => unreachable!("checked above"),
        Read::Invalid(problems) => {
            return Decision::Deny(format!(
                "perch injector: invalid annotations: {}",
                problems.join("; ")
            ))
        }
        Read::Valid(w, warnings) => (w, warnings),
    };
    if let Some(clash) = port_clash(spec, &wanted) {
        return Decision::Deny(format!("perch injector: {clash}"));
    }
    let mut ops = vec![];
    let add = |ops: &mut Vec<Value>, path: String, value: Value| {
        ops.push(json!({"op": "add", "path": path, "value": value}));
    };
    if !pod["metadata"]["labels"].is_object() {
        add(&mut ops, "/metadata/labels".into(), json!({}));
    }
    if wanted.native && !spec["initContainers"].is_array() {
        add(&mut ops, "/spec/initContainers".into(), json!([]));
    }
    if !spec["volumes"].is_array() {
        add(&mut ops, "/spec/volumes".into(), json!([]));
    }
    if !volumes.contains(&RESOURCES_VOLUME) {
        let cm = wanted
            .resources_configmap
            .clone()
            .unwrap_or_else(|| settings.resources_configmap.clone());
        add(
            &mut ops,
            "/spec/volumes/-".into(),
            json!({"name": RESOURCES_VOLUME, "configMap": {"name": cm}}),
        );
    }
    for s in &wanted.secrets {
        let name = format!("perch-secret-{s}");
        if volumes.contains(&name.as_str()) {
            continue;
        }
        add(
            &mut ops,
            "/spec/volumes/-".into(),
            json!({"name": name, "secret": {"secretName": s}}),
        );
    }
    let sidecar = container(&wanted, namespace, settings);
    let at = if wanted.native {
        "/spec/initContainers/-"
    } else {
        "/spec/containers/-"
    };
    add(&mut ops, at.into(), sidecar);
    for (k, v) in [
        ("perch.io/sidecar-injected", "true".to_owned()),
        ("perch.io/app-id", wanted.app_id.clone()),
        ("perch.io/metrics-enabled", wanted.metrics.to_string()),
    ] {
        add(
            &mut ops,
            format!("/metadata/labels/{}", escape(k)),
            Value::String(v),
        );
    }
    // The app containers learn where the sidecar is, unless they say.
    let app_env = [
        ("DAPR_HTTP_PORT", HTTP_PORT.to_string()),
        ("DAPR_GRPC_PORT", GRPC_PORT.to_string()),
        ("APP_PROTOCOL", wanted.app_protocol.clone()),
    ];
    for (i, c) in spec["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let have = names(c.get("env"));
        let missing: Vec<Value> = app_env
            .iter()
            .filter(|(k, _)| !have.contains(k))
            .map(|(k, v)| json!({"name": k, "value": v}))
            .collect();
        if c["env"].is_array() {
            for e in missing {
                add(&mut ops, format!("/spec/containers/{i}/env/-"), e);
            }
        } else if !missing.is_empty() {
            add(
                &mut ops,
                format!("/spec/containers/{i}/env"),
                Value::Array(missing),
            );
        }
    }
    Decision::Patch { ops, warnings }
}

/// A port of the sidecar that an app container already declares (they
/// share the pod's network namespace).
fn port_clash(spec: &Value, w: &Wanted) -> Option<String> {
    let mut ours = vec![
        (HTTP_PORT, "the HTTP API"),
        (GRPC_PORT, "the gRPC API"),
        (PUBLIC_PORT, "the public port"),
    ];
    if w.metrics {
        ours.push((w.metrics_port, "metrics (perch.io/metrics-port)"));
    }
    for c in spec["containers"]
        .as_array()
        .into_iter()
        .chain(spec["initContainers"].as_array())
        .flatten()
    {
        for p in c["ports"].as_array().into_iter().flatten() {
            let Some(n) = p["containerPort"].as_u64() else {
                continue;
            };
            if let Some((_, what)) = ours.iter().find(|(o, _)| u64::from(*o) == n) {
                return Some(format!(
                    "container {:?} declares port {n}, which the sidecar needs for {what}",
                    c["name"].as_str().unwrap_or("")
                ));
            }
        }
    }
    None
}

fn probe(p: Probe, handler: Value) -> Value {
    let mut v = handler;
    v["initialDelaySeconds"] = json!(p.initial_delay_seconds);
    v["timeoutSeconds"] = json!(p.timeout_seconds);
    v["periodSeconds"] = json!(p.period_seconds);
    v["failureThreshold"] = json!(p.failure_threshold);
    v
}

/// The `perch` container.
fn container(w: &Wanted, namespace: &str, settings: &Settings) -> Value {
    let mut args: Vec<String> = vec![
        "run".into(),
        "--app-id".into(),
        w.app_id.clone(),
        "--resources-path".into(),
        RESOURCES_PATH.into(),
        "--dapr-http-port".into(),
        HTTP_PORT.to_string(),
        "--dapr-grpc-port".into(),
        GRPC_PORT.to_string(),
        "--dapr-public-port".into(),
        PUBLIC_PORT.to_string(),
        "--app-protocol".into(),
        w.app_protocol.clone(),
    ];
    if let Some(p) = w.app_port {
        args.extend(["--app-port".into(), p.to_string()]);
    }
    if w.metrics {
        args.extend(["--metrics-port".into(), w.metrics_port.to_string()]);
        // The API stays on loopback; Prometheus scrapes from outside.
        args.extend(["--metrics-listen-address".into(), "0.0.0.0".into()]);
    } else {
        args.extend(["--enable-metrics".into(), "false".into()]);
    }
    if !w.secrets.is_empty() {
        args.extend(["--secrets-path".into(), SECRETS_PATH.into()]);
    }
    for (flag, v) in &w.flags {
        args.push(format!("{flag}={v}"));
    }
    let mut ports = vec![
        json!({"name": "perch-http", "containerPort": HTTP_PORT, "protocol": "TCP"}),
        json!({"name": "perch-grpc", "containerPort": GRPC_PORT, "protocol": "TCP"}),
        json!({"name": "perch-public", "containerPort": PUBLIC_PORT, "protocol": "TCP"}),
    ];
    if w.metrics {
        ports.push(
            json!({"name": "perch-metrics", "containerPort": w.metrics_port, "protocol": "TCP"}),
        );
    }
    let mut env = vec![
        json!({"name": "NAMESPACE", "value": namespace}),
        json!({"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}),
    ];
    for (var, secret) in [
        ("DAPR_API_TOKEN", &w.api_token_secret),
        ("APP_API_TOKEN", &w.app_token_secret),
    ] {
        if let Some(s) = secret {
            env.push(
                json!({"name": var, "valueFrom": {"secretKeyRef": {"name": s, "key": "token"}}}),
            );
        }
    }
    for (k, v) in &w.env {
        env.push(json!({"name": k, "value": v}));
    }
    for s in &w.env_from_secret {
        env.push(
            json!({"name": s.var, "valueFrom": {"secretKeyRef": {"name": s.secret, "key": s.key}}}),
        );
    }
    let mut mounts =
        vec![json!({"name": RESOURCES_VOLUME, "mountPath": RESOURCES_PATH, "readOnly": true})];
    for s in &w.secrets {
        mounts.push(json!({"name": format!("perch-secret-{s}"), "mountPath": format!("{SECRETS_PATH}/{s}"), "readOnly": true}));
    }
    for m in &w.mounts {
        mounts.push(json!({"name": m.volume, "mountPath": m.path, "readOnly": m.read_only}));
    }
    let mut resources = json!({});
    let r = &w.resources;
    let d = &settings.resources;
    for (kind, key, given, default) in [
        ("requests", "cpu", &r.cpu_request, &d.cpu_request),
        ("requests", "memory", &r.memory_request, &d.memory_request),
        ("limits", "cpu", &r.cpu_limit, &d.cpu_limit),
        ("limits", "memory", &r.memory_limit, &d.memory_limit),
    ] {
        if let Some(q) = given.as_ref().or(default.as_ref()) {
            resources[kind][key] = json!(q);
        }
    }
    let public = json!(PUBLIC_PORT);
    let mut c = json!({
        "name": CONTAINER,
        "image": w.image.clone().unwrap_or_else(|| settings.image.clone()),
        "imagePullPolicy": "IfNotPresent",
        "args": args,
        "ports": ports,
        "env": env,
        "resources": resources,
        "volumeMounts": mounts,
        "readinessProbe": probe(w.readiness, json!({"httpGet": {"path": "/v1.0/healthz", "port": public}})),
        "livenessProbe": probe(w.liveness, json!({"tcpSocket": {"port": public}})),
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "runAsNonRoot": true,
            "runAsUser": 65532,
            "runAsGroup": 65532,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": w.seccomp},
        },
        "terminationMessagePolicy": "FallbackToLogsOnError",
    });
    if w.native {
        c["restartPolicy"] = json!("Always");
        // Outbound health, not /v1.0/healthz: that one waits for the app,
        // which starts only after this probe passes.
        c["startupProbe"] = json!({
            "httpGet": {"path": "/v1.0/healthz/outbound", "port": public},
            "periodSeconds": 1,
            "failureThreshold": 120,
            "timeoutSeconds": 1,
        });
    }
    c
}
