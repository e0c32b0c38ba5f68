//! The real binary against bad and good YAML: every problem listed at once
//! (golden file), non-zero exit, and `perch validate` exit codes.

mod common;

use common::*;

const BAD: &str = "tests/fixtures/bad-config";

/// The command's stderr must be exactly the golden report, with exit code 1.
fn assert_golden_report(out: std::process::Output) {
    assert_eq!(out.status.code(), Some(1));
    let golden = std::fs::read_to_string("tests/fixtures/bad-config.golden").unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stderr), golden);
}

#[test]
fn validate_lists_every_problem_with_file_document_and_field() {
    assert_golden_report(
        std::process::Command::new(perch_bin())
            .args(["validate", BAD])
            .output()
            .unwrap(),
    );
}

#[test]
fn run_with_bad_yaml_stops_before_serving_and_prints_the_same_report() {
    let port = free_port().to_string();
    let args = [
        "run",
        "--app-id",
        "x",
        "--dapr-http-port",
        &port,
        "--resources-path",
        BAD,
    ];
    assert_golden_report(
        std::process::Command::new(perch_bin())
            .args(args)
            .output()
            .unwrap(),
    );
}

#[test]
fn resources_scoped_to_other_apps_are_skipped() {
    let dir = resources(&[(
        "c.yaml",
        "apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: pubsub}
spec:
  type: pubsub.in-memory
  version: v1
  metadata:
    - {name: consumerID, value: \"{appID}-group\"}
scopes: [app-a]
---
apiVersion: dapr.io/v1alpha1
kind: Subscription
metadata: {name: s}
spec: {pubsubname: pubsub, topic: t, route: /t}
scopes: [app-a]
",
    )]);
    let ok = std::process::Command::new(perch_bin())
        .args(["validate", "--app-id", "app-a"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&ok.stdout).contains("1 pubsub component(s), 1 subscription(s),")
    );
    let other = std::process::Command::new(perch_bin())
        .args(["validate", "--app-id", "app-b"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&other.stdout).contains("0 pubsub component(s), 0 subscription(s)")
    );
}

#[tokio::test]
async fn namespace_template_scopes_topics_and_other_namespaces_are_skipped() -> TestResult {
    let dir = resources(&[
        (
            "c.yaml",
            "apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: pubsub, namespace: ns1}
spec:
  type: pubsub.in-memory
  version: v1
  metadata:
    - {name: consumerID, value: \"{namespace}\"}
---
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: elsewhere, namespace: ns2}
spec: {type: pubsub.in-memory, version: v1}
",
        ),
        ("s.yaml", &subscription("s", "orders", "/orders")),
    ]);
    let mut app = TestApp::ok(None).await;
    let sc = Sidecar::start(dir.path(), Some(app.port), &[("NAMESPACE", "ns1")], &[]).await;
    assert_eq!(sc.publish_json("pubsub/orders", r#"{"n":1}"#).await, 204);
    let ev = app.next(10).await?.json();
    assert_eq!(
        ev["topic"], "orders",
        "the app sees the topic it subscribed to"
    );
    assert_eq!(
        sc.publish_json("elsewhere/orders", "{}").await,
        404,
        "a component of another namespace is not loaded"
    );
    Ok(())
}

#[test]
fn shipped_component_folders_are_valid() {
    for dir in [
        "components/in-memory",
        "components/kafka",
        "components/rabbitmq",
        "components/redis",
    ] {
        let out = std::process::Command::new(perch_bin())
            .args(["validate", "--app-id", "demo", dir])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{dir}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Issue 18: the component files of Dapr's docs, quickstarts and
/// conformance tests load; every Dapr key Perch ignores is named once in a
/// warning, and nothing is an error.
#[test]
fn daprs_own_component_files_load_with_one_warning_per_ignored_key() {
    let out = std::process::Command::new(perch_bin())
        .args([
            "validate",
            "--app-id",
            "checkout",
            "tests/fixtures/dapr-yaml",
        ])
        .env("KAFKA_SECRETS_SASLPASSWORDSECRET", "s3cret")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "ok: 5 pubsub component(s), 0 subscription(s), 0 resiliency polic(ies)"
    );
    let warned: Vec<(&str, &str)> = stderr
        .lines()
        .filter_map(|l| l.strip_prefix("warning: tests/fixtures/dapr-yaml/"))
        .filter_map(|l| {
            let file = l.split(' ').next()?;
            let key = l.split("spec.metadata.").nth(1)?.split(':').next()?;
            Some((file, key))
        })
        .collect();
    assert_eq!(
        warned.len(),
        stderr.lines().count(),
        "only warnings: {stderr}"
    );
    for (file, key) in [
        ("kafka-conformance.yaml", "consumeRetryEnabled"),
        ("kafka-docs.yaml", "version"),
        ("kafka-docs.yaml", "schemaRegistryURL"),
        ("kafka-docs.yaml", "useAvroJSON"),
        ("rabbitmq-docs.yaml", "enableDeadLetter"),
        ("rabbitmq-docs.yaml", "reconnectWait"),
        ("rabbitmq-docs.yaml", "backOffMaxRetries"),
        ("rabbitmq-quickstart.yaml", "concurrency"),
    ] {
        assert!(warned.contains(&(file, key)), "{file} {key}: {stderr}");
    }
    let mut once = warned.clone();
    once.dedup();
    assert_eq!(once.len(), warned.len(), "each key once per document");
}
