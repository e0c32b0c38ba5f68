#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: checks the toolchain, makes
# sure the services the tests need are up (installing and starting the
# Kafka-protocol broker tansu when needed), then runs fmt, clippy and tests.
set -euo pipefail
cd "$(dirname "$0")/.."

# Reuse one build cache per machine; a fresh machine builds from scratch.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/perch-target}"

command -v cargo >/dev/null || { echo "cargo is required (rustup.rs)"; exit 1; }

# Kafka: tansu on 127.0.0.1:9092 (DESIGN.md section 9).
. "$(dirname "$0")/kafka.sh"

cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
cargo test --all-targets
