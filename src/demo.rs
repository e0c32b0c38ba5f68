//! `perch demo`: the sidecar, a built-in echo app and the in-memory broker in
//! one process. It publishes a few orders through the real HTTP API and
//! prints each CloudEvent as the app receives it.

use std::convert::Infallible;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::config::{self, LoadOptions};
use crate::sidecar::{self, Sidecar};
use crate::state::Settings;

/// Flags of `perch demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Resources for the demo (an in-memory pubsub and a subscription to `orders`).
    #[arg(long, default_value = "components/in-memory")]
    pub resources_path: PathBuf,
    /// How many events to publish.
    #[arg(long, default_value_t = 5)]
    pub count: usize,
}

/// Runs the demo; succeeds when every published event reached the app.
pub async fn run(a: DemoArgs) -> ExitCode {
    let resources = match config::load(
        std::slice::from_ref(&a.resources_path),
        &LoadOptions::from_env("demo-app", None),
    ) {
        Ok(r) => r,
        Err(report) => {
            eprint!("{report}");
            return ExitCode::FAILURE;
        }
    };
    let Some(sub) = resources.subscriptions.first().cloned() else {
        eprintln!(
            "{}: the demo needs a Subscription",
            a.resources_path.display()
        );
        return ExitCode::FAILURE;
    };
    let (app_port, mut received) = match start_echo_app().await {
        Ok(x) => x,
        Err(e) => {
            eprintln!("cannot start the echo app: {e}");
            return ExitCode::FAILURE;
        }
    };
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind sidecar");
    let port = listener.local_addr().expect("local addr").port();
    let settings = Settings {
        app_id: "demo-app".into(),
        app_port: Some(app_port),
        app_channel_address: "127.0.0.1".into(),
        app_protocol: Default::default(),
        app_max_concurrency: None,
        api_token: None,
        app_api_token: None,
        max_body_size: 4 << 20,
        api_logging: false,
        graceful_shutdown: Duration::from_secs(5),
        app_health: None,
    };
    let sc = match Sidecar::build(settings, &resources) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("perch demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let status = sc.status.clone();
    let sidecar = tokio::spawn(sidecar::run(
        sc,
        sidecar::Listeners {
            http: vec![listener],
            grpc: vec![],
            public: vec![],
        },
        resources.subscriptions.clone(),
        async {
            let _ = stop_rx.await;
        },
    ));
    println!("perch demo: sidecar on 127.0.0.1:{port}, echo app on 127.0.0.1:{app_port}");
    let _ = status.ready.subscribe().wait_for(|ready| *ready).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    for i in 1..=a.count {
        let body = format!(r#"{{"orderId":{i},"item":"widget"}}"#);
        let uri = format!(
            "http://127.0.0.1:{port}/v1.0/publish/{}/{}",
            sub.pubsubname, sub.topic
        );
        let req = Request::post(uri)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.clone())))
            .expect("request");
        match client.request(req).await {
            Ok(r) => println!(
                "publish  -> POST /v1.0/publish/{}/{} {body} => {}",
                sub.pubsubname,
                sub.topic,
                r.status()
            ),
            Err(e) => {
                eprintln!("publish failed: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let mut got = 0;
    while got < a.count {
        match tokio::time::timeout(Duration::from_secs(10), received.recv()).await {
            Ok(Some((path, ev))) => {
                got += 1;
                println!(
                    "app      <- POST {path} id={} data={}",
                    ev["id"], ev["data"]
                );
            }
            _ => break,
        }
    }
    let _ = stop_tx.send(());
    let _ = sidecar.await;
    if got == a.count {
        println!(
            "perch demo: {got}/{} events flowed publish -> broker -> app",
            a.count
        );
        ExitCode::SUCCESS
    } else {
        eprintln!("perch demo: only {got}/{} events reached the app", a.count);
        ExitCode::FAILURE
    }
}

type Received = mpsc::UnboundedReceiver<(String, serde_json::Value)>;

/// A tiny app: 404 on `/dapr/subscribe` (declarative subscriptions only),
/// SUCCESS for every event, which it passes to the demo.
async fn start_echo_app() -> std::io::Result<(u16, Received)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let (tx, rx) = mpsc::unbounded_channel();
    let tx = Arc::new(tx);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let tx = tx.clone();
                    async move {
                        let path = req.uri().path().to_owned();
                        if path == "/dapr/subscribe" {
                            return Ok::<_, Infallible>(
                                Response::builder()
                                    .status(404)
                                    .body(Full::new(Bytes::new()))
                                    .expect("response"),
                            );
                        }
                        let body = req
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let ev = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                        let _ = tx.send((path, ev));
                        Ok(Response::new(Full::new(Bytes::from_static(
                            br#"{"status":"SUCCESS"}"#,
                        ))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok((port, rx))
}
