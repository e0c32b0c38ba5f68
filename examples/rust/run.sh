#!/usr/bin/env bash
# The Rust example end to end against `perch run` on the in-memory broker:
# the app behind a sidecar, two CloudEvents published, the app's log.
# PERCH_BIN names the perch binary (default: cargo build). The example
# builds into CARGO_TARGET_DIR/example-rust (shared crates build once).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$here/../.."
target="${CARGO_TARGET_DIR:-$root/target}"
perch="${PERCH_BIN:-}"
if [ -z "$perch" ]; then
  (cd "$root" && cargo build --quiet --bin perch)
  perch="$target/debug/perch"
fi
(cd "$here" && CARGO_TARGET_DIR="$target/example-rust" cargo build --quiet)
bin="$target/example-rust/debug/perch-example-rust"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
export APP_PORT=$(free_port) DAPR_HTTP_PORT=$(free_port)
grpc_port=$(free_port)
log="$(mktemp)"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -f "$log"' EXIT
"$bin" >"$log" 2>&1 &
pids+=($!)
"$perch" run --app-id orders-rust --app-port "$APP_PORT" --dapr-http-port "$DAPR_HTTP_PORT" \
  --dapr-grpc-port "$grpc_port" --dapr-public-port 0 --metrics-port 0 \
  --resources-path "$here/components" --log-level warn &
pids+=($!)
for _ in $(seq 150); do
  python3 -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:$DAPR_HTTP_PORT/v1.0/healthz').status==204 else 1)" 2>/dev/null && break
  sleep 0.1
done
"$bin" publish
for _ in $(seq 50); do
  [ "$(grep -c '^received' "$log")" -ge 2 ] && break
  sleep 0.2
done
grep '^received' "$log"
