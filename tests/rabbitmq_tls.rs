//! RabbitMQ over TLS (`amqps://`, `caCert`, `clientCert`, `clientKey`):
//! the sidecar talks to a TLS-terminating proxy in front of the machine's
//! RabbitMQ; the proxy requires a client certificate signed by the test CA
//! (mutual TLS). Certificates are made with `openssl` for each run.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tokio_rustls::rustls;

/// Terminates TLS (client certificate required) and forwards to RabbitMQ.
async fn tls_proxy(dir: &Path) -> u16 {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(dir.join("server.pem"))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(dir.join("ca.pem")).unwrap() {
        roots.add(ca.unwrap()).unwrap();
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                if let Ok(mut server) = tokio::net::TcpStream::connect("127.0.0.1:5672").await {
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut server).await;
                }
            });
        }
    });
    port
}

/// The component with PEM values inlined (as a Secret would provide them).
fn tls_component(b: &Bench, port: u16, pems: &[(&str, String)]) -> String {
    let mut yaml = component(
        "pubsub",
        &[
            (
                "connectionString",
                &format!("amqps://guest:guest@127.0.0.1:{port}"),
            ),
            ("consumerID", &format!("g-{}", b.id)),
            ("reconnectWaitSeconds", "1"),
        ],
    )
    .replace("pubsub.in-memory", "pubsub.rabbitmq");
    for (k, pem) in pems {
        yaml.push_str(&format!("    - name: {k}\n      value: |\n"));
        for line in pem.lines() {
            yaml.push_str(&format!("        {line}\n"));
        }
    }
    yaml
}

#[tokio::test]
async fn mutual_tls_with_the_configured_ca_and_client_certificate() -> TestResult {
    let certs = tempfile::tempdir()?;
    make_test_certs(certs.path());
    let port = tls_proxy(certs.path()).await;
    let read = |f: &str| std::fs::read_to_string(certs.path().join(f)).unwrap();
    let b = Bench::new(Backend::Rabbit);
    let pubsub = tls_component(
        &b,
        port,
        &[
            ("caCert", read("ca.pem")),
            ("clientCert", read("client.pem")),
            ("clientKey", read("client.key")),
        ],
    );
    let dir = resources(&[
        ("pubsub.yaml", &pubsub),
        ("s.yaml", &b.subscription("s", "orders", "/orders")),
    ]);
    let mut app = TestApp::ok(None).await;
    let sc = Sidecar::start(dir.path(), Some(app.port), &[], &[]).await;
    assert_eq!(
        sc.component_healthy("pubsub").await,
        Some(true),
        "connected over TLS"
    );
    assert_eq!(
        sc.publish_json(&format!("pubsub/{}", b.topic("orders")), r#"{"tls":true}"#)
            .await,
        204
    );
    assert_eq!(app.next(20).await?.json()["data"]["tls"], true);
    Ok(())
}

#[tokio::test]
async fn an_unknown_server_certificate_or_missing_client_certificate_does_not_connect() -> TestResult
{
    let certs = tempfile::tempdir()?;
    make_test_certs(certs.path());
    let port = tls_proxy(certs.path()).await;
    let read = |f: &str| std::fs::read_to_string(certs.path().join(f)).unwrap();
    let b = Bench::new(Backend::Rabbit);
    for pems in [
        vec![
            ("clientCert", read("client.pem")),
            ("clientKey", read("client.key")),
        ],
        vec![("caCert", read("ca.pem"))],
    ] {
        let dir = resources(&[("pubsub.yaml", &tls_component(&b, port, &pems))]);
        let sc = Sidecar::start(dir.path(), None, &[], &[]).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(
            sc.component_healthy("pubsub").await,
            Some(false),
            "no connection with {:?}",
            pems.iter().map(|(k, _)| *k).collect::<Vec<_>>()
        );
    }
    Ok(())
}
