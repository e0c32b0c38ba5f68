#!/usr/bin/env bash
# The Rust example end to end against `perch run` on the in-memory broker:
# the app behind a sidecar, two CloudEvents published, the app's log. It
# builds into $CARGO_TARGET_DIR/example-rust.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/../lib.sh"
target="${CARGO_TARGET_DIR:-$examples_root/target}/example-rust"
(cd "$here" && CARGO_TARGET_DIR="$target" cargo build --quiet)
example_ports
start_app "$target/debug/perch-example-rust"
start_perch orders-rust "$here/components"
"$target/debug/perch-example-rust" publish
app_lines '^received' 2
