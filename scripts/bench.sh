#!/usr/bin/env bash
# Runs the benchmark harness at full size (release build) and prints its
# table. Needs what the tests need: RabbitMQ and PostgreSQL running; Kafka
# (tansu) is installed and started here when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/perch-target}"
. "$(dirname "$0")/kafka.sh"
cargo bench --bench perch 2>/dev/null | sed -n '/mode, /,$p'
