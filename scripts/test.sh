#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: checks the toolchain,
# installs (when missing) and starts PostgreSQL, RabbitMQ, Apache Kafka and
# Redis (scripts/services.sh), installs the pinned Dapr SDK clients the gRPC tests
# drive (scripts/sdk.sh), runs fmt, clippy and every test, validates the
# Kubernetes and KEDA manifests (scripts/k8s-validate.sh), runs the
# examples (examples/smoke.sh), and stops at the end what it started.
set -euo pipefail
cd "$(dirname "$0")/.."
t_start=$SECONDS

# Reuse one build cache per machine; a fresh machine builds from scratch.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/perch-target}"
# No incremental cache: with some fifty test binaries it grew past 20 GiB
# on this machine's disk (which once filled up mid-run); a clean build does
# not use it anyway.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

# The toolchain the scripts call. Rust's parts come with rustup; java and
# mvn run the Kafka broker. A missing one is named, with where it comes from.
missing=""
for tool in cargo rustfmt cargo-clippy java mvn python3 node npm go openssl; do
  command -v "$tool" >/dev/null || missing="$missing $tool"
done
if [ -n "$missing" ]; then
  echo "missing from this machine:$missing"
  echo "  cargo, rustfmt, cargo-clippy: rustup (rustup component add rustfmt clippy)"
  echo "  java (17 or later), mvn: Debian openjdk-17-jre-headless, maven"
  echo "  python3: Debian python3 and python3-venv (scripts/module-dag.py, the Dapr Python SDK tests)"
  echo "  node, npm: Debian nodejs, npm (the Dapr JS SDK tests)"
  echo "  go: the Go toolchain, 1.26 or later (the Dapr Go SDK tests)"
  echo "  openssl: Debian openssl (TLS test certificates, k8s/injector/gen-certs.sh)"
  exit 1
fi

. "$(dirname "$0")/services.sh"
start_services
# Tools the tests call: psql (clean-up), openssl (TLS test certificates),
# pg_ctlcluster, rabbitmqctl, redis-server and redis-cli (tests that stop
# and start the services).
for tool in psql openssl pg_ctlcluster rabbitmqctl redis-server redis-cli; do
  command -v "$tool" >/dev/null || { echo "$tool is required by the tests"; exit 1; }
done

# The real SDK clients the compatibility tests drive, pinned, cached
# outside the repository (scripts/sdk.sh).
. "$(dirname "$0")/sdk.sh"
sdk_python
sdk_js
sdk_go
sdk_java

cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
# The modules import each other without a circle (top level and within).
python3 scripts/module-dag.py
python3 scripts/module-dag.py --inner
# The bench smoke (under cargo test) runs every Perch row again through
# a peer sidecar, this very build, to check the peer column's mechanics.
PERCH_BENCH_PEER="${PERCH_BENCH_PEER:-$CARGO_TARGET_DIR/debug/perch}" cargo test --all-targets
# Every manifest under k8s/ and keda/, without a cluster.
./scripts/k8s-validate.sh "$CARGO_TARGET_DIR/debug/perch"
# Every example under examples/, end to end against this build.
PERCH_BIN="$CARGO_TARGET_DIR/debug/perch" ./examples/smoke.sh
echo "test.sh: finished in $((SECONDS - t_start)) s"
