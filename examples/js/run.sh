#!/usr/bin/env bash
# The JS example end to end against `perch run` on the in-memory broker:
# the subscriber behind a sidecar, two orders published, the subscriber's
# log. PERCH_BIN names the perch binary (default: cargo build).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$here/../.."
perch="${PERCH_BIN:-}"
if [ -z "$perch" ]; then
  (cd "$root" && cargo build --quiet --bin perch)
  perch="${CARGO_TARGET_DIR:-$root/target}/debug/perch"
fi
# node_modules outside the repository, once per lock; the scripts run
# beside it (ESM resolves packages next to the script).
dir="${PERCH_EXAMPLES_CACHE:-$HOME/.cache/perch-examples}/js-$(cat "$here/package.json" "$here/package-lock.json" | sha256sum | cut -c1-12)"
if [ ! -d "$dir/node_modules/@dapr/dapr" ]; then
  mkdir -p "$dir" && cp "$here/package.json" "$here/package-lock.json" "$dir/"
  (cd "$dir" && npm ci --silent --no-audit --no-fund --ignore-scripts)
fi
cp "$here/subscriber.mjs" "$here/publisher.mjs" "$dir/"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
export APP_PORT=$(free_port) DAPR_HTTP_PORT=$(free_port)
grpc_port=$(free_port)
log="$(mktemp)"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -f "$log"' EXIT
node "$dir/subscriber.mjs" >"$log" 2>&1 &
pids+=($!)
"$perch" run --app-id orders-js --app-port "$APP_PORT" --dapr-http-port "$DAPR_HTTP_PORT" \
  --dapr-grpc-port "$grpc_port" --dapr-public-port 0 --metrics-port 0 \
  --resources-path "$here/components" --log-level warn &
pids+=($!)
# Ready once the subscription runs.
for _ in $(seq 150); do
  python3 -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:$DAPR_HTTP_PORT/v1.0/healthz').status==204 else 1)" 2>/dev/null && break
  sleep 0.1
done
node "$dir/publisher.mjs"
for _ in $(seq 50); do
  [ "$(grep -c 'received order' "$log")" -ge 2 ] && break
  sleep 0.2
done
grep 'received order' "$log"
