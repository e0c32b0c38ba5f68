//! `perch injector`: the Kubernetes mutating admission webhook that adds
//! the `perch` sidecar to annotated pods.
//!
//! # Design
//! - The decision is a pure function, [`patch::patch_for`], from the pod,
//!   its namespace and the injector's [`patch::Settings`] to allow, deny or
//!   a JSONPatch (the kube-rs admission example's shape); table-tested over
//!   apiserver-shaped pods in `tests/fixtures/admission/`.
//! - Around it, a thin HTTPS server (tokio-rustls, HTTP/1.1): `POST
//!   /mutate`, matched on the path alone (the apiserver appends
//!   `?timeout=10s`), `application/json` only (else 415), 4 MiB at most;
//!   `GET /healthz`. The certificate files are read again every
//!   `--cert-reload-seconds` and swapped in when they changed, so a
//!   rotated Secret needs no restart.
//! - No cluster access and no RBAC: the sidecar reads its YAML from the
//!   resources ConfigMap mounted into the pod. Any requester gets a
//!   sidecar (no service-account allow-list, Dapr's first complaint).
//! - Invalid annotations **deny** the pod with every problem named (a
//!   ReplicaSet event), instead of letting it run without its sidecar;
//!   unknown annotation keys come back as admission warnings.

pub mod annotations;
pub mod patch;
pub mod review;

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, Response, StatusCode};
use tokio_rustls::rustls;

/// Largest AdmissionReview read.
const BODY_LIMIT: usize = 4 * 1024 * 1024;

/// Flags of `perch injector`.
#[derive(Debug, Clone, Args)]
pub struct InjectorArgs {
    /// HTTPS port of `/mutate` and `/healthz`.
    #[arg(long, env = "PERCH_INJECTOR_PORT", default_value_t = 8443)]
    pub port: u16,
    /// Address to listen on.
    #[arg(long, env = "PERCH_INJECTOR_LISTEN_ADDRESS", default_value = "0.0.0.0")]
    pub listen_address: String,
    /// PEM certificate chain (the Secret's `tls.crt`).
    #[arg(long, env = "PERCH_INJECTOR_TLS_CERT")]
    pub tls_cert: PathBuf,
    /// PEM private key (`tls.key`).
    #[arg(long, env = "PERCH_INJECTOR_TLS_KEY")]
    pub tls_key: PathBuf,
    /// Seconds between checks of the certificate files for a new pair.
    #[arg(long, default_value_t = 30)]
    pub cert_reload_seconds: u64,
    /// The sidecar image (`perch.io/sidecar-image` overrides it per pod).
    #[arg(long, env = "PERCH_SIDECAR_IMAGE")]
    pub sidecar_image: String,
    /// Inject a native sidecar (an init container with `restartPolicy:
    /// Always`, Kubernetes 1.29+); `false` for a classic container.
    #[arg(long, env = "PERCH_INJECTOR_NATIVE_SIDECAR", default_value_t = true, action = clap::ArgAction::Set)]
    pub native_sidecar: bool,
    /// Read `dapr.io/*` annotations too (`perch.io/*` wins), so pods
    /// annotated for Dapr's injector switch unchanged.
    #[arg(long, env = "PERCH_INJECTOR_DAPR_ANNOTATIONS", num_args = 0..=1, default_missing_value = "true", default_value_t = false, action = clap::ArgAction::Set)]
    pub dapr_annotations: bool,
    /// The ConfigMap of Dapr YAML mounted as `--resources-path`, unless
    /// `perch.io/resources` names another.
    #[arg(long, default_value = "perch-resources")]
    pub resources_configmap: String,
    /// Default CPU request of the sidecar.
    #[arg(long, default_value = "50m")]
    pub default_cpu_request: String,
    /// Default CPU limit (none unless given).
    #[arg(long)]
    pub default_cpu_limit: Option<String>,
    /// Default memory request.
    #[arg(long, default_value = "32Mi")]
    pub default_memory_request: String,
    /// Default memory limit.
    #[arg(long, default_value = "256Mi")]
    pub default_memory_limit: String,
    /// Log level: debug, info, warn, error.
    #[arg(long, env = "PERCH_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// Log as JSON lines.
    #[arg(long, env = "PERCH_LOG_AS_JSON", num_args = 0..=1, default_missing_value = "true", default_value_t = false, action = clap::ArgAction::Set)]
    pub log_as_json: bool,
}

impl InjectorArgs {
    /// The patch settings; `Err` names a bad default quantity.
    pub fn settings(&self) -> Result<patch::Settings, String> {
        let q = |flag: &str, v: &str| -> Result<String, String> {
            if annotations::is_quantity(v) {
                Ok(v.to_owned())
            } else {
                Err(format!("{flag}: {v:?} is not a Kubernetes quantity"))
            }
        };
        Ok(patch::Settings {
            image: self.sidecar_image.clone(),
            native: self.native_sidecar,
            dapr_annotations: self.dapr_annotations,
            resources: annotations::Resources {
                cpu_request: Some(q("--default-cpu-request", &self.default_cpu_request)?),
                cpu_limit: self
                    .default_cpu_limit
                    .as_deref()
                    .map(|v| q("--default-cpu-limit", v))
                    .transpose()?,
                memory_request: Some(q("--default-memory-request", &self.default_memory_request)?),
                memory_limit: Some(q("--default-memory-limit", &self.default_memory_limit)?),
            },
            resources_configmap: self.resources_configmap.clone(),
        })
    }
}

/// The serving certificate, swapped when its files change.
#[derive(Debug)]
struct Certs {
    current: RwLock<Arc<rustls::sign::CertifiedKey>>,
}

impl rustls::server::ResolvesServerCert for Certs {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
        )
    }
}

/// Reads a PEM certificate chain and key into a signing pair.
fn load_pair(
    cert_pem: &[u8],
    key_pem: &[u8],
    provider: &rustls::crypto::CryptoProvider,
) -> Result<rustls::sign::CertifiedKey, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("the certificate file is not PEM: {e}"))?;
    if certs.is_empty() {
        return Err("the certificate file has no certificate".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| format!("the key file is not a PEM private key: {e}"))?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("the private key cannot sign: {e}"))?;
    Ok(rustls::sign::CertifiedKey::new(certs, signing))
}

fn read_pair(cert: &Path, key: &Path) -> Result<(Vec<u8>, Vec<u8>), String> {
    let read =
        |p: &Path, flag: &str| std::fs::read(p).map_err(|e| format!("{flag} {}: {e}", p.display()));
    Ok((read(cert, "--tls-cert")?, read(key, "--tls-key")?))
}

/// Runs the injector until SIGTERM or Ctrl-C.
pub async fn run(a: InjectorArgs) -> ExitCode {
    let settings = match a.settings() {
        Ok(s) => Arc::new(s),
        Err(e) => {
            eprintln!("perch injector: {e}");
            return ExitCode::FAILURE;
        }
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let (mut cert_pem, mut key_pem) = match read_pair(&a.tls_cert, &a.tls_key) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("perch injector: {e}");
            return ExitCode::FAILURE;
        }
    };
    let pair = match load_pair(&cert_pem, &key_pem, &provider) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("perch injector: {}: {e}", a.tls_cert.display());
            return ExitCode::FAILURE;
        }
    };
    let certs = Arc::new(Certs {
        current: RwLock::new(Arc::new(pair)),
    });
    let config = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map(|b| b.with_no_client_auth().with_cert_resolver(certs.clone()));
    let mut config = match config {
        Ok(c) => c,
        Err(e) => {
            eprintln!("perch injector: TLS set-up: {e}");
            return ExitCode::FAILURE;
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let host = a
        .listen_address
        .trim_start_matches('[')
        .trim_end_matches(']');
    let addr = if host.contains(':') {
        format!("[{host}]:{}", a.port)
    } else {
        format!("{host}:{}", a.port)
    };
    let listener = match tokio::net::TcpListener::bind(&addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("perch injector: cannot listen on {addr} (--port / --listen-address): {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(%addr, native = settings.native, dapr_annotations = settings.dapr_annotations,
        image = %settings.image, "perch injector serving /mutate");
    // The certificate files, read again until the process ends.
    let reload = {
        let (cert, key) = (a.tls_cert.clone(), a.tls_key.clone());
        let every = Duration::from_secs(a.cert_reload_seconds.max(1));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Ok((c, k)) = read_pair(&cert, &key) else {
                    tracing::warn!(cert = %cert.display(), "cannot read the certificate files; the current certificate stays");
                    continue;
                };
                if c == cert_pem && k == key_pem {
                    continue;
                }
                match load_pair(&c, &k, &provider) {
                    Ok(pair) => {
                        *certs
                            .current
                            .write()
                            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(pair);
                        (cert_pem, key_pem) = (c, k);
                        tracing::info!(cert = %cert.display(), "certificate reloaded");
                    }
                    // Mid-rotation (one file new, the other old) reads
                    // as a bad pair: tried again next time.
                    Err(e) => {
                        tracing::warn!(cert = %cert.display(), error = %e, "the new certificate files do not load; the current certificate stays")
                    }
                }
            }
        })
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    crate::http::accept_loop(
        listener,
        "injector",
        crate::sidecar::shutdown_signal(),
        |stream, permit| {
            let acceptor = acceptor.clone();
            let settings = settings.clone();
            let mut stop = stop_rx.clone();
            async move {
                let _permit = permit;
                let tls =
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    };
                let svc = hyper::service::service_fn(move |req| {
                    let settings = settings.clone();
                    async move { Ok::<_, Infallible>(handle(req, &settings).await) }
                });
                crate::http::serve_http1(tls, svc, &mut stop).await;
            }
        },
    )
    .await
    .drained_after(stop_tx)
    .await;
    reload.abort();
    tracing::info!("perch injector stopped");
    ExitCode::SUCCESS
}

type Resp = Response<Full<Bytes>>;

fn reply(status: StatusCode, content_type: &str, body: Vec<u8>) -> Resp {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts")
}

/// One request: `/mutate` (path only: the apiserver adds `?timeout=`),
/// `/healthz`, else 404.
async fn handle(req: Request<hyper::body::Incoming>, settings: &patch::Settings) -> Resp {
    let text =
        |s: StatusCode, m: &str| reply(s, "text/plain; charset=utf-8", m.as_bytes().to_vec());
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok"),
        (&Method::POST, "/mutate") => {
            let json = req
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| {
                    v.split(';')
                        .next()
                        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
                });
            if !json {
                return text(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "an AdmissionReview is application/json",
                );
            }
            let body = match Limited::new(req.into_body(), BODY_LIMIT).collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => {
                    return text(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "the AdmissionReview is larger than 4 MiB or broken off",
                    )
                }
            };
            match review::answer(&body, settings) {
                Ok((review, what)) => {
                    let uid = review["response"]["uid"].as_str().unwrap_or("").to_owned();
                    tracing::info!(%uid, "{what}");
                    reply(
                        StatusCode::OK,
                        "application/json",
                        serde_json::to_vec(&review).expect("JSON"),
                    )
                }
                Err(e) => {
                    tracing::warn!(error = %e, "bad admission request");
                    text(StatusCode::BAD_REQUEST, &e)
                }
            }
        }
        (_, "/mutate" | "/healthz") => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
        _ => text(StatusCode::NOT_FOUND, "404 page not found"),
    }
}
