#!/usr/bin/env bash
# The fault suite's tier 1 (issue 16): 100,000 messages per broker (Apache
# Kafka, RabbitMQ, then Redis) through the sidecar with the PostgreSQL inbox and
# outbox on, while the sidecar is SIGKILLed 10 times, the broker restarted
# 3 times and killed 3 times, PostgreSQL restarted 3 times, and a second
# sidecar joins and leaves twice. Prints the table the README carries.
# Installs and starts the services like test.sh, and stops what it started.
#
#   scripts/faults.sh                      # the full run (about 15 minutes)
#   PERCH_FAULTS_MESSAGES=10000 scripts/faults.sh   # a shorter one
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/perch-target}"
. scripts/services.sh
start_services
cargo test --test faults tier1_table -- --ignored --nocapture 2>&1 \
  | tee /tmp/perch-faults.log | grep -E '^(fault suite|\||faults:)' || true
grep -q 'test result: ok' /tmp/perch-faults.log || {
  echo "faults.sh: the run failed; the whole log is in /tmp/perch-faults.log"
  grep -E 'panicked|assertion|left:|right:' /tmp/perch-faults.log | head -20
  exit 1
}
