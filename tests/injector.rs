//! `perch injector`: the patch over apiserver-shaped pods
//! (`tests/fixtures/admission/`), applied with the `json-patch` crate and
//! compared with golden patched pods (`PERCH_BLESS=1` writes them again);
//! the pod rules a schema cannot check; the webhook's `matchConditions`
//! evaluated with CEL; and the real `perch injector` over TLS, called as
//! the apiserver calls it, with a test CA (`tests/fixtures/tls/`, made by
//! `k8s/injector/gen-certs.sh`).

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::*;
use perch::injector::annotations::Resources;
use perch::injector::patch::{patch_for, Decision, Settings};
use serde_json::{json, Value};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/admission")
}

fn pod(name: &str) -> Value {
    let path = fixtures().join(format!("{name}.json"));
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

fn settings(native: bool, dapr: bool) -> Settings {
    Settings {
        image: "ghcr.io/perch-sidecar/perch:0.1.0".into(),
        native,
        dapr_annotations: dapr,
        resources: Resources {
            cpu_request: Some("50m".into()),
            cpu_limit: None,
            memory_request: Some("32Mi".into()),
            memory_limit: Some("256Mi".into()),
        },
        resources_configmap: "perch-resources".into(),
    }
}

/// The patch of a pod that must be patched, with its warnings.
fn patched(pod: &Value, s: &Settings) -> (Value, Vec<String>) {
    match patch_for(pod, "event-driven", s) {
        Decision::Patch { ops, warnings } => {
            let patch: json_patch::Patch = serde_json::from_value(Value::Array(ops)).unwrap();
            let mut out = pod.clone();
            json_patch::patch(&mut out, &patch).expect("the patch applies to the pod");
            (out, warnings)
        }
        other => panic!("expected a patch, got {other:?}"),
    }
}

/// Compares with (or, with PERCH_BLESS=1, writes) `<name>.patched.json`.
fn golden(name: &str, pod: &Value) {
    let path = fixtures().join(format!("{name}.patched.json"));
    let text = serde_json::to_string_pretty(pod).unwrap() + "\n";
    if std::env::var_os("PERCH_BLESS").is_some() {
        std::fs::write(&path, &text).unwrap();
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("{} is missing: run with PERCH_BLESS=1", path.display()));
    assert_eq!(
        text,
        want,
        "{name}: the patched pod differs from {}",
        path.display()
    );
}

/// The pod rules the OpenAPI schema cannot check; every broken one.
fn pod_rule_problems(pod: &Value) -> Vec<String> {
    let spec = &pod["spec"];
    let list = |k: &str| spec[k].as_array().cloned().unwrap_or_default();
    let (containers, inits, volumes) =
        (list("containers"), list("initContainers"), list("volumes"));
    let mut problems = vec![];
    let mut seen = BTreeSet::new();
    for c in containers.iter().chain(&inits) {
        let name = c["name"].as_str().unwrap_or("");
        if !seen.insert(name.to_owned()) {
            problems.push(format!("container name {name} twice"));
        }
    }
    let volume_names: Vec<&str> = volumes.iter().filter_map(|v| v["name"].as_str()).collect();
    let mut vs = BTreeSet::new();
    for v in &volume_names {
        if !perch::injector::annotations::is_dns_label(v) {
            problems.push(format!("volume name {v} is not a DNS-1123 label"));
        }
        if !vs.insert(*v) {
            problems.push(format!("volume {v} twice"));
        }
    }
    let mut ports = BTreeSet::new();
    for (c, init) in containers
        .iter()
        .map(|c| (c, false))
        .chain(inits.iter().map(|c| (c, true)))
    {
        let name = c["name"].as_str().unwrap_or("");
        for p in c["ports"].as_array().into_iter().flatten() {
            if let Some(n) = p["name"].as_str() {
                let iana = n.len() <= 15
                    && n.chars()
                        .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-')
                    && n.chars().any(|ch| ch.is_ascii_lowercase())
                    && !n.starts_with('-')
                    && !n.ends_with('-')
                    && !n.contains("--");
                if !iana {
                    problems.push(format!("port name {n} is not an IANA_SVC_NAME"));
                }
                if !ports.insert(n.to_owned()) {
                    problems.push(format!("port name {n} twice in the pod"));
                }
            }
        }
        let sidecar = c["restartPolicy"] == "Always";
        if init && !sidecar {
            for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
                if !c[probe].is_null() {
                    problems.push(format!(
                        "{probe} on init container {name}, which is not a sidecar"
                    ));
                }
            }
        }
        if !init && !c["restartPolicy"].is_null() {
            problems.push(format!("restartPolicy on app container {name}"));
        }
        let mut paths = BTreeSet::new();
        for m in c["volumeMounts"].as_array().into_iter().flatten() {
            let (v, p) = (
                m["name"].as_str().unwrap_or(""),
                m["mountPath"].as_str().unwrap_or(""),
            );
            if !volume_names.contains(&v) {
                problems.push(format!("{name} mounts volume {v}, which the pod lacks"));
            }
            if !paths.insert(p.to_owned()) {
                problems.push(format!("{name} mounts {p} twice"));
            }
        }
        let mut envs = BTreeSet::new();
        for e in c["env"].as_array().into_iter().flatten() {
            if !envs.insert(e["name"].as_str().unwrap_or("").to_owned()) {
                problems.push(format!("{name} sets env {} twice", e["name"]));
            }
        }
    }
    problems
}

fn sidecar(pod: &Value, native: bool) -> &Value {
    let list = if native {
        "initContainers"
    } else {
        "containers"
    };
    pod["spec"][list]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "perch")
        .expect("a perch container")
}

fn env_of<'a>(c: &'a Value, name: &str) -> Option<&'a Value> {
    c["env"].as_array()?.iter().find(|e| e["name"] == name)
}

fn args(c: &Value) -> Vec<&str> {
    c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect()
}

/// Re-invoked (`reinvocationPolicy: IfNeeded`) on its own output, the
/// webhook changes nothing.
fn reinvoked_is_a_no_op(pod: &Value, s: &Settings) {
    assert!(
        matches!(
            patch_for(pod, "event-driven", s),
            Decision::Allow {
                why: "already has a perch container",
                ..
            }
        ),
        "a patched pod is not patched again"
    );
}

#[test]
fn an_annotated_pod_gets_a_native_sidecar() {
    let s = settings(true, false);
    let (out, warnings) = patched(&pod("annotated"), &s);
    golden("annotated", &out);
    assert_eq!(pod_rule_problems(&out), Vec::<String>::new());
    assert!(warnings.is_empty(), "{warnings:?}");
    let c = sidecar(&out, true);
    assert_eq!(c["restartPolicy"], "Always");
    // The startup probe must not wait for the app (which starts after it).
    assert_eq!(
        c["startupProbe"]["httpGet"]["path"],
        "/v1.0/healthz/outbound"
    );
    assert_eq!(c["startupProbe"]["httpGet"]["port"], 3501);
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/v1.0/healthz");
    assert_eq!(c["livenessProbe"]["tcpSocket"]["port"], 3501);
    let a = args(c);
    for want in [
        "--app-id",
        "order-processor",
        "--app-port",
        "8080",
        "--resources-path",
        "/etc/perch/resources",
        "--secrets-path",
        "/var/run/secrets/perch",
        "--enable-app-health-check=true",
        "--app-health-check-path=/health",
    ] {
        assert!(a.contains(&want), "{want} in {a:?}");
    }
    assert_eq!(env_of(c, "NAMESPACE").unwrap()["value"], "event-driven");
    assert_eq!(
        env_of(c, "POD_NAME").unwrap()["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    assert_eq!(
        env_of(c, "DAPR_API_TOKEN").unwrap()["valueFrom"]["secretKeyRef"],
        json!({"name": "perch-api-token", "key": "token"})
    );
    assert_eq!(env_of(c, "GOMAXPROCS").unwrap()["value"], "2");
    assert_eq!(
        c["resources"]["limits"]["memory"], "128Mi",
        "annotation over the default"
    );
    assert_eq!(
        c["resources"]["requests"]["cpu"], "50m",
        "the injector's default"
    );
    let sc = &c["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    // The pointer-escaped labels land under their real keys.
    let labels = &out["metadata"]["labels"];
    assert_eq!(labels["perch.io/app-id"], "order-processor");
    assert_eq!(labels["perch.io/sidecar-injected"], "true");
    assert_eq!(labels["app"], "order-processor", "existing labels kept");
    // The app learns where the sidecar is; its own env is kept.
    let app = &out["spec"]["containers"][0];
    assert_eq!(env_of(app, "DAPR_HTTP_PORT").unwrap()["value"], "3500");
    assert_eq!(env_of(app, "DAPR_GRPC_PORT").unwrap()["value"], "50001");
    assert_eq!(env_of(app, "APP_PROTOCOL").unwrap()["value"], "http");
    assert_eq!(env_of(app, "LOG_FORMAT").unwrap()["value"], "json");
    let volumes: Vec<&str> = out["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        volumes,
        [
            "kube-api-access-x7k2p",
            "perch-resources",
            "perch-secret-kafka-creds"
        ]
    );
    reinvoked_is_a_no_op(&out, &s);
}

#[test]
fn a_classic_sidecar_is_a_container_without_a_startup_probe() {
    let s = settings(false, false);
    let (out, _) = patched(&pod("annotated"), &s);
    golden("annotated.classic", &out);
    assert_eq!(pod_rule_problems(&out), Vec::<String>::new());
    let c = sidecar(&out, false);
    assert!(c["restartPolicy"].is_null());
    assert!(c["startupProbe"].is_null());
    assert_eq!(
        c["livenessProbe"]["initialDelaySeconds"], 180,
        "Dapr's delay"
    );
    assert!(
        out["spec"]["initContainers"].is_null(),
        "no init containers added"
    );
    reinvoked_is_a_no_op(&out, &s);
    // The annotation overrides the injector's default.
    let mut p = pod("annotated");
    p["metadata"]["annotations"]["perch.io/enable-native-sidecar"] = json!("true");
    let (out, _) = patched(&p, &s);
    assert_eq!(sidecar(&out, true)["restartPolicy"], "Always");
}

#[test]
fn a_bare_pod_gets_its_lists_and_maps_created() {
    let s = settings(true, false);
    let (out, _) = patched(&pod("bare"), &s);
    golden("bare", &out);
    assert_eq!(pod_rule_problems(&out), Vec::<String>::new());
    assert_eq!(out["metadata"]["labels"]["perch.io/app-id"], "publisher");
    let app = &out["spec"]["containers"][0];
    assert_eq!(app["env"].as_array().unwrap().len(), 3);
    assert!(
        !args(sidecar(&out, true)).contains(&"--app-port"),
        "publish-only: no app port"
    );
    reinvoked_is_a_no_op(&out, &s);
}

#[test]
fn dapr_annotations_are_read_with_the_flag_only() {
    let p = pod("dapr-annotated");
    assert!(matches!(
        patch_for(&p, "event-driven", &settings(true, false)),
        Decision::Allow {
            why: "not annotated",
            ..
        }
    ));
    let s = settings(true, true);
    let (out, warnings) = patched(&p, &s);
    golden("dapr-annotated", &out);
    assert_eq!(pod_rule_problems(&out), Vec::<String>::new());
    let c = sidecar(&out, true);
    let a = args(c);
    for want in ["checkout", "--log-level=debug", "--metrics-port", "9095"] {
        assert!(a.contains(&want), "{want} in {a:?}");
    }
    assert_eq!(c["resources"]["requests"]["cpu"], "25m");
    assert!(c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["mountPath"] == "/var/run/extra" && m["readOnly"] == true));
    // DAPR_HTTP_PORT set by the app is not overridden; the second
    // container gets all three.
    let app = &out["spec"]["containers"][0];
    assert_eq!(env_of(app, "DAPR_HTTP_PORT").unwrap()["value"], "3600");
    assert_eq!(
        app["env"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["name"] == "DAPR_HTTP_PORT")
            .count(),
        1
    );
    assert_eq!(
        out["spec"]["containers"][1]["env"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("dapr.io/enable-profiling: not supported by Perch")),
        "{warnings:?}"
    );
    assert!(
        warnings.iter().any(|w| w.starts_with("dapr.io/config:")),
        "{warnings:?}"
    );
    reinvoked_is_a_no_op(&out, &s);
}

#[test]
fn pods_that_are_not_for_perch_are_left_alone() {
    let s = settings(true, true);
    assert!(matches!(
        patch_for(&pod("not-annotated"), "ns", &s),
        Decision::Allow {
            why: "not annotated",
            ..
        }
    ));
    match patch_for(&pod("daprd-present"), "ns", &s) {
        Decision::Allow {
            why: "a Dapr pod",
            warnings,
        } => {
            assert!(warnings[0].contains("daprd"), "{warnings:?}")
        }
        other => panic!("{other:?}"),
    }
    let mut off = pod("annotated");
    off["metadata"]["annotations"]["perch.io/enabled"] = json!("false");
    assert!(matches!(patch_for(&off, "ns", &s), Decision::Allow { .. }));
}

#[test]
fn invalid_annotations_deny_the_pod_naming_every_problem() {
    let Decision::Deny(message) = patch_for(&pod("invalid"), "ns", &settings(true, false)) else {
        panic!("denied")
    };
    for want in [
        "perch.io/app-id: \"Order_Processor\" is not a valid app id",
        "perch.io/app-port: \"80800\" is not a port",
        "perch.io/app-protocol: \"https\" is not supported",
        "perch.io/sidecar-cpu-limit: \"lots\" is not a Kubernetes quantity",
        "perch.io/volume-mounts: the pod has no volume \"nosuch\"",
    ] {
        assert!(message.contains(want), "{want:?} in {message}");
    }
    let Decision::Deny(message) = patch_for(&pod("port-clash"), "ns", &settings(true, false))
    else {
        panic!("denied")
    };
    assert!(message.contains("declares port 9090"), "{message}");
}

#[test]
fn unknown_annotation_keys_come_back_as_warnings() {
    let (out, warnings) = patched(&pod("unknown-keys"), &settings(true, false));
    assert_eq!(pod_rule_problems(&out), Vec::<String>::new());
    assert!(
        warnings
            .iter()
            .any(|w| w == "unknown annotation perch.io/app-prot (did you mean perch.io/app-port?)"),
        "{warnings:?}"
    );
    assert!(
        warnings
            .iter()
            .any(|w| w == "perch.io/grpc-port: not supported by Perch (ignored)"),
        "{warnings:?}"
    );
}

#[test]
fn the_admission_review_answer_has_the_apis_shape() {
    let s = settings(true, false);
    let review = |object: Value, kind: &str, op: &str| {
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": kind},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "operation": op, "namespace": "event-driven", "object": object,
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "dryRun": false}})
    };
    let answer = |r: Value| {
        perch::injector::review::answer(&serde_json::to_vec(&r).unwrap(), &s)
            .unwrap()
            .0
    };
    let a = answer(review(pod("annotated"), "Pod", "CREATE"));
    assert_eq!(a["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(a["kind"], "AdmissionReview");
    let r = &a["response"];
    assert_eq!(r["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
    assert_eq!(r["allowed"], true);
    assert_eq!(r["patchType"], "JSONPatch");
    use base64::Engine as _;
    let ops: Value = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(r["patch"].as_str().expect("patch is a base64 string"))
            .unwrap(),
    )
    .unwrap();
    assert!(ops.as_array().unwrap().iter().all(|o| o["op"] == "add"));
    // No patch, no patchType (the apiserver refuses one without the other).
    let a = answer(review(pod("not-annotated"), "Pod", "CREATE"));
    assert_eq!(a["response"]["allowed"], true);
    assert!(a["response"].get("patchType").is_none() && a["response"].get("patch").is_none());
    let a = answer(review(pod("annotated"), "Pod", "UPDATE"));
    assert!(
        a["response"].get("patch").is_none(),
        "only creations are patched"
    );
    let a = answer(review(json!({}), "Service", "CREATE"));
    assert!(a["response"].get("patch").is_none());
    let a = answer(review(pod("invalid"), "Pod", "CREATE"));
    assert_eq!(a["response"]["allowed"], false);
    assert_eq!(a["response"]["status"]["code"], 400);
    assert!(a["response"]["status"]["message"]
        .as_str()
        .unwrap()
        .contains("app-port"));
    assert!(
        perch::injector::review::answer(b"{}", &s).is_err(),
        "no request"
    );
}

/// The webhook's `matchConditions` expression, read from the shipped
/// manifest, evaluated as the apiserver would (CEL, `object` = the pod).
#[test]
fn the_webhook_match_condition_selects_annotated_pods() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("k8s/injector/mutatingwebhookconfiguration.yaml");
    let doc: serde_json::Value =
        serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let expr = doc["webhooks"][0]["matchConditions"][0]["expression"]
        .as_str()
        .unwrap()
        .to_owned();
    let program = cel::Program::compile(&expr).unwrap();
    let matches = |pod: Value| {
        let mut ctx = cel::Context::default();
        ctx.add_variable_from_value("object", perch::expr::json_to_cel(&pod));
        program.execute(&ctx).unwrap() == cel::Value::Bool(true)
    };
    assert!(matches(pod("annotated")));
    // Any value: the webhook itself reads truthiness and answers.
    assert!(matches(
        json!({"metadata": {"annotations": {"perch.io/enabled": "yes"}}})
    ));
    assert!(!matches(pod("not-annotated")));
    assert!(
        !matches(json!({"metadata": {"name": "x"}})),
        "a pod without annotations"
    );
}

// --- the real `perch injector` over TLS ---

fn tls_dir(which: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tls")
        .join(which)
}

/// A TLS client trusting both test CAs, as the apiserver trusts the
/// caBundle, with the Service's name as SNI.
fn connector() -> tokio_rustls::TlsConnector {
    use rustls_pki_types::pem::PemObject;
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    for d in ["a", "b"] {
        let ca =
            rustls_pki_types::CertificateDer::from_pem_file(tls_dir(d).join("ca.crt")).unwrap();
        roots.add(ca).unwrap();
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = tokio_rustls::rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// One HTTPS request; the status, the body and the leaf certificate the
/// server showed.
async fn https(
    port: u16,
    method: &str,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
) -> std::io::Result<(u16, Vec<u8>, Vec<u8>)> {
    use http_body_util::{BodyExt, Full};
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let name = rustls_pki_types::ServerName::try_from("perch-injector.perch-system.svc").unwrap();
    let tls = connector().connect(name, tcp).await?;
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(conn);
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "perch-injector.perch-system.svc:443")
        .header("content-type", content_type)
        .body(Full::new(bytes::Bytes::from(body)))
        .unwrap();
    let resp = send
        .send_request(req)
        .await
        .map_err(std::io::Error::other)?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(std::io::Error::other)?
        .to_bytes()
        .to_vec();
    Ok((status, body, leaf))
}

fn leaf_of(which: &str) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_file(tls_dir(which).join("tls.crt"))
        .unwrap()
        .to_vec()
}

#[tokio::test]
async fn the_injector_answers_over_tls_and_reloads_its_certificate() -> TestResult {
    let dir = tempfile::tempdir()?;
    let copy = |which: &str| {
        for f in ["tls.crt", "tls.key"] {
            std::fs::copy(tls_dir(which).join(f), dir.path().join(f)).unwrap();
        }
    };
    copy("a");
    let port = free_port();
    let _child = tokio::process::Command::new(perch_bin())
        .args([
            "injector",
            "--listen-address",
            "127.0.0.1",
            "--port",
            &port.to_string(),
        ])
        .arg("--tls-cert")
        .arg(dir.path().join("tls.crt"))
        .arg("--tls-key")
        .arg(dir.path().join("tls.key"))
        .args([
            "--sidecar-image",
            "perch:test",
            "--cert-reload-seconds",
            "1",
        ])
        .kill_on_drop(true)
        .spawn()?;
    let mut up = None;
    for _ in 0..100 {
        if let Ok(r) = https(port, "GET", "/healthz", "text/plain", vec![]).await {
            up = Some(r);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (status, body, leaf) = up.expect("the injector serves /healthz over TLS");
    assert_eq!((status, &body[..]), (200, &b"ok"[..]));
    assert_eq!(leaf, leaf_of("a"));
    let review = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": "b1f5c2d3", "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "operation": "CREATE", "namespace": "event-driven", "object": pod("annotated")}});
    let body = serde_json::to_vec(&review)?;
    // The apiserver adds ?timeout=: matched on the path alone.
    let (status, answer, _) = https(
        port,
        "POST",
        "/mutate?timeout=10s",
        "application/json",
        body.clone(),
    )
    .await?;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    let answer: Value = serde_json::from_slice(&answer)?;
    assert_eq!(answer["response"]["uid"], "b1f5c2d3");
    assert_eq!(answer["response"]["patchType"], "JSONPatch");
    assert!(answer["response"]["patch"].is_string());
    let (status, _, _) = https(port, "POST", "/mutate", "text/plain", body).await?;
    assert_eq!(status, 415);
    let (status, _, _) = https(
        port,
        "POST",
        "/mutate",
        "application/json",
        b"not json".to_vec(),
    )
    .await?;
    assert_eq!(status, 400);
    let (status, _, _) = https(port, "GET", "/other", "text/plain", vec![]).await?;
    assert_eq!(status, 404);
    // A rotated Secret: the new pair is served without a restart.
    copy("b");
    let mut leaf = vec![];
    for _ in 0..50 {
        leaf = https(port, "GET", "/healthz", "text/plain", vec![])
            .await?
            .2;
        if leaf == leaf_of("b") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(leaf, leaf_of("b"), "the new certificate is served");
    Ok(())
}
