//! `enableTLS` with `clientCert`/`clientKey` against a Redis server of the
//! test's own that speaks only TLS and requires a client certificate
//! (Debian's redis-server, built with TLS), with certificates made by
//! `openssl` for the run; the CA reaches rustls through `SSL_CERT_FILE`.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::json;

/// A TLS-only Redis on a free port, requiring client certificates signed
/// by the run's CA; stopped when dropped.
struct TlsRedis {
    port: u16,
    _child: tokio::process::Child,
}

async fn tls_redis(dir: &Path) -> TlsRedis {
    let port = free_port();
    let p = |f: &str| dir.join(f).display().to_string();
    let child = tokio::process::Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .args([
            "--tls-cert-file",
            &p("server.pem"),
            "--tls-key-file",
            &p("server.key"),
        ])
        .args([
            "--tls-ca-cert-file",
            &p("ca.pem"),
            "--tls-auth-clients",
            "yes",
        ])
        .args([
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            &dir.display().to_string(),
        ])
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("redis-server runs");
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    TlsRedis {
        port,
        _child: child,
    }
}

/// The component on the TLS server, with the client certificate or not.
fn component(port: u16, dir: &Path, client_cert: bool) -> String {
    let pem = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    let host = format!("127.0.0.1:{port}");
    let (cert, key) = (pem("client.pem"), pem("client.key"));
    let mut md = vec![("redisHost", host.as_str()), ("enableTLS", "true")];
    if client_cert {
        md.extend([("clientCert", cert.as_str()), ("clientKey", key.as_str())]);
    }
    // Block scalars keep the PEM's lines.
    let mut yaml = String::from(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: pubsub}\nspec:\n  type: pubsub.redis\n  version: v1\n  metadata:\n",
    );
    for (k, v) in md {
        yaml.push_str(&format!("    - name: {k}\n      value: |-\n"));
        for line in v.lines() {
            yaml.push_str(&format!("        {line}\n"));
        }
    }
    yaml
}

#[tokio::test]
async fn mutual_tls_publishes_and_delivers_and_a_missing_client_certificate_does_not_connect(
) -> TestResult {
    let certs = tempfile::tempdir()?;
    make_test_certs(certs.path());
    let redis = tls_redis(certs.path()).await;
    let ca = certs.path().join("ca.pem").display().to_string();
    let env = [("SSL_CERT_FILE", ca.as_str())];

    let dir = resources(&[
        ("pubsub.yaml", &component(redis.port, certs.path(), true)),
        ("s.yaml", &subscription("s", "orders", "/orders")),
    ]);
    let mut app = TestApp::ok(None).await;
    let sc = Sidecar::start(dir.path(), Some(app.port), &env, &[]).await;
    assert!(
        sc.wait_component("pubsub", true, 20).await,
        "connected over TLS"
    );
    assert_eq!(
        sc.publish_json("pubsub/orders", &json!({"n": 1}).to_string())
            .await,
        204
    );
    assert_eq!(app.next(20).await?.json()["data"]["n"], 1);

    // The server requires a client certificate: without one, no connection.
    let dir = resources(&[("pubsub.yaml", &component(redis.port, certs.path(), false))]);
    let sc = Sidecar::start(dir.path(), None, &env, &[]).await;
    assert!(
        !sc.wait_component("pubsub", true, 3).await,
        "connected without a client certificate"
    );
    assert_eq!(sc.component_healthy("pubsub").await, Some(false));
    assert_eq!(sc.publish_json("pubsub/orders", "{}").await, 500);
    Ok(())
}
