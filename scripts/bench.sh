#!/usr/bin/env bash
# Runs the benchmark harness at full size (release build) and prints its
# table. Starts what the tests start (scripts/services.sh): PostgreSQL,
# RabbitMQ, Apache Kafka and Redis, installed when missing, stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/perch-target}"
. "$(dirname "$0")/services.sh"
start_services >&2
cargo bench --bench perch 2>/dev/null | sed -n '/mode, /,$p'
