//! Perch standing in for daprd (issue 18 item 7): invoked with no
//! subcommand and daprd's flags, exactly as `dapr run` invokes daprd (the
//! argument list below is what the Dapr CLI's `RunConfig.getArgs` builds
//! for `dapr run --app-id myapp --app-port P --resources-path DIR`, with
//! the `Configuration` `dapr init` writes), it runs the sidecar.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncBufReadExt, BufReader};

/// The `Configuration` `dapr init` writes to `~/.dapr/config.yaml`.
const DAPR_INIT_CONFIG: &str = "apiVersion: dapr.io/v1alpha1
kind: Configuration
metadata:
  name: daprConfig
  namespace: default
spec:
  tracing:
    samplingRate: \"1\"
    zipkin:
      endpointAddress: http://localhost:9411/api/v2/spans
";

/// A sidecar started with exactly `args` (no subcommand added); its
/// stderr lines are collected.
struct Daprd {
    port: u16,
    _child: tokio::process::Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl Daprd {
    async fn start(args: &[String], port: u16) -> Self {
        let mut child = tokio::process::Command::new(perch_bin())
            .args(args)
            .env_remove("DAPR_API_TOKEN")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn perch");
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        let mut err = BufReader::new(child.stderr.take().unwrap()).lines();
        tokio::spawn(async move {
            while let Ok(Some(l)) = err.next_line().await {
                eprintln!("{l}");
                let _ = tx.send(l);
            }
        });
        let url = format!("http://127.0.0.1:{port}/v1.0/healthz");
        for _ in 0..300 {
            if let Ok((204, _, _)) = request("GET", &url, &[], "").await {
                return Self {
                    port,
                    _child: child,
                    lines,
                };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("perch did not become ready with {args:?}");
    }

    /// Every stderr line so far.
    fn log(&mut self) -> String {
        let mut out = String::new();
        while let Ok(l) = self.lines.try_recv() {
            out.push_str(&l);
            out.push('\n');
        }
        out
    }

    async fn publish(&self, topic: &str, body: &str) -> u16 {
        let url = format!("http://127.0.0.1:{}/v1.0/publish/pubsub/{topic}", self.port);
        request("POST", &url, &[("content-type", "application/json")], body)
            .await
            .map(|r| r.0)
            .unwrap_or(0)
    }
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|a| a.to_string()).collect()
}

/// What `dapr run` passes daprd, field by field of the CLI's `RunConfig`
/// (`SharedRunConfig` first): `--config` (`dapr init`'s), `--app-protocol
/// http`, `--log-level info`, `--app-max-concurrency -1`,
/// `--placement-host-address localhost:50005`, `--resources-path`,
/// `--max-body-size 4Mi`, `--read-buffer-size 4Ki`,
/// `--scheduler-host-address localhost:50006`, `--app-id`, `--app-port`,
/// `--dapr-http-port`, `--dapr-grpc-port`, `--profile-port -1`,
/// `--metrics-port`, `--dapr-internal-grpc-port`.
fn dapr_run_args(config: &Path, resources: &Path, app_port: u16, http_port: u16) -> Vec<String> {
    let p = |n: u16| n.to_string();
    vec![
        "--config".into(),
        config.display().to_string(),
        "--app-protocol".into(),
        "http".into(),
        "--log-level".into(),
        "info".into(),
        "--app-max-concurrency".into(),
        "-1".into(),
        "--placement-host-address".into(),
        "localhost:50005".into(),
        "--resources-path".into(),
        resources.display().to_string(),
        "--max-body-size".into(),
        "4Mi".into(),
        "--read-buffer-size".into(),
        "4Ki".into(),
        "--scheduler-host-address".into(),
        "localhost:50006".into(),
        "--app-id".into(),
        "myapp".into(),
        "--app-port".into(),
        p(app_port),
        "--dapr-http-port".into(),
        p(http_port),
        "--dapr-grpc-port".into(),
        p(free_port()),
        "--profile-port".into(),
        "-1".into(),
        "--metrics-port".into(),
        p(free_port()),
        "--dapr-internal-grpc-port".into(),
        p(free_port()),
        // Not in `dapr run`'s list (daprd serves no public port unless
        // asked; Perch's default is 3501): a free one, so that tests
        // running at once do not share it.
        "--dapr-public-port".into(),
        p(free_port()),
    ]
}

#[tokio::test]
async fn started_as_dapr_run_starts_daprd_it_runs_the_sidecar() -> TestResult {
    let home = tempfile::tempdir()?;
    let config = home.path().join("config.yaml");
    std::fs::write(&config, DAPR_INIT_CONFIG)?;
    let dir = resources(&[
        ("pubsub.yaml", PUBSUB),
        ("s.yaml", &subscription("s", "orders", "/orders")),
    ]);
    let mut app = TestApp::ok(None).await;
    let port = free_port();
    let mut d = Daprd::start(&dapr_run_args(&config, dir.path(), app.port, port), port).await;
    assert_eq!(d.publish("orders", r#"{"n":1}"#).await, 204);
    let r = app.next(10).await?;
    assert_eq!(r.path, "/orders");
    assert_eq!(r.json()["source"], "myapp", "--app-id applied");
    let log = d.log();
    let warned = log
        .lines()
        .find(|l| l.contains("daprd flags Perch accepts and does not act on"))
        .unwrap_or_else(|| panic!("one warning for the ignored flags:\n{log}"));
    for flag in [
        "--placement-host-address (no actors)",
        "--scheduler-host-address",
        "--dapr-internal-grpc-port",
        "--profile-port",
        "--read-buffer-size",
    ] {
        assert!(warned.contains(flag), "{flag} in {warned}");
    }
    assert_eq!(
        log.matches("daprd flags Perch accepts").count(),
        1,
        "one warning"
    );
    assert!(
        log.contains("Configuration sections Perch does not use: tracing"),
        "{log}"
    );
    Ok(())
}

/// Go's flag syntax, which daprd still accepts: single dashes and
/// `--flag=value`; `--app-port 0` means no app.
#[tokio::test]
async fn go_style_flags_and_no_app() -> TestResult {
    let dir = resources(&[("pubsub.yaml", PUBSUB)]);
    let port = free_port();
    let args = vec![
        "-app-id".to_owned(),
        "go-style".into(),
        format!("-dapr-http-port={port}"),
        format!("-dapr-grpc-port={}", free_port()),
        "-metrics-port".into(),
        free_port().to_string(),
        "-app-port".into(),
        "0".into(),
        "-enable-metrics=false".into(),
        "-resources-path".into(),
        dir.path().display().to_string(),
        "--mode".into(),
        "standalone".into(),
    ];
    let d = Daprd::start(&args, port).await;
    assert_eq!(d.publish("orders", "{}").await, 204);
    let url = format!("http://127.0.0.1:{port}/v1.0/metadata");
    let (_, _, body) = request("GET", &url, &[], "").await?;
    let md: serde_json::Value = serde_json::from_slice(&body)?;
    assert_eq!(md["id"], "go-style");
    assert!(
        md["appConnectionProperties"].get("port").is_none(),
        "no app: {md}"
    );
    Ok(())
}

/// `--max-body-size` takes daprd's quantities; the deprecated
/// `--dapr-http-max-request-size` (MB) applies when it is not given;
/// `--enable-api-logging` logs each call.
#[tokio::test]
async fn body_limits_and_api_logging_as_daprd() -> TestResult {
    let dir = resources(&[("pubsub.yaml", PUBSUB)]);
    let big = format!("\"{}\"", "x".repeat(1500));
    for (flags, status) in [
        (s(&["--max-body-size", "1Ki"]), 413),
        (
            s(&[
                "--max-body-size",
                "1.5Ki",
                "--dapr-http-max-request-size",
                "8",
            ]),
            204,
        ),
        (s(&["--dapr-http-max-request-size", "1"]), 204),
    ] {
        let port = free_port();
        let mut args = s(&["--app-id", "a", "--enable-api-logging", "--dapr-http-port"]);
        args.push(port.to_string());
        args.extend(s(&[
            "--dapr-grpc-port",
            &free_port().to_string(),
            "--metrics-port",
            &free_port().to_string(),
            "--resources-path",
        ]));
        args.push(dir.path().display().to_string());
        args.extend(flags.clone());
        let mut d = Daprd::start(&args, port).await;
        assert_eq!(d.publish("orders", &big).await, status, "{flags:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let log = d.log();
        assert!(
            log.lines().any(|l| l.contains("api call")
                && l.contains("/v1.0/publish/pubsub/orders")
                && l.contains(&format!("status={status}"))),
            "{log}"
        );
    }
    Ok(())
}

/// What Perch cannot do is refused with the flag named.
#[test]
fn flags_asking_for_what_perch_cannot_do_are_refused() {
    for (flag, value, says) in [
        ("--app-ssl", "true", "plain HTTP only"),
        ("--unix-domain-socket", "/tmp/dapr-sockets", "TCP only"),
        ("--app-protocol", "grpcs", "grpcs"),
    ] {
        let out = std::process::Command::new(perch_bin())
            .args(["--app-id", "a", &format!("{flag}={value}")])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{flag}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{flag}: {err}");
    }
}
