#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: checks the toolchain, makes
# sure the services the tests need are up (installing and starting the
# Kafka-protocol broker tansu when needed), then runs fmt, clippy and tests.
set -euo pipefail
cd "$(dirname "$0")/.."

# Reuse one build cache per machine; a fresh machine builds from scratch.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/perch-target}"

command -v cargo >/dev/null || { echo "cargo is required (rustup.rs)"; exit 1; }

# Tools the tests call: psql (clean-up), openssl (TLS test certificates),
# pg_ctlcluster and rabbitmqctl (tests that stop and start the services).
for tool in psql openssl pg_ctlcluster rabbitmqctl; do
  command -v "$tool" >/dev/null || {
    echo "$tool is required by the tests (Debian: postgresql-client, openssl, postgresql-common, rabbitmq-server)"
    exit 1
  }
done

# PostgreSQL (127.0.0.1:5432) and RabbitMQ (127.0.0.1:5672) are the
# machine's; start them if a previous run left them stopped.
port_up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() {
  for _ in $(seq 1 150); do port_up "$1" && return 0; sleep 0.2; done
  return 1
}
if ! port_up 5432; then
  echo "postgres: not listening; starting it"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start || true
  wait_port 5432 || { echo "postgres: could not start it on 127.0.0.1:5432"; exit 1; }
fi
if ! port_up 5672; then
  echo "rabbitmq: not listening; starting it"
  rabbitmqctl start_app >/dev/null 2>&1 || rabbitmq-server -detached || true
  wait_port 5672 || { echo "rabbitmq: could not start it on 127.0.0.1:5672"; exit 1; }
fi

# Kafka: tansu on 127.0.0.1:9092 (DESIGN.md section 9).
. "$(dirname "$0")/kafka.sh"

cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
cargo test --all-targets
