#!/usr/bin/env bash
# The Go example end to end against `perch run` on the in-memory broker:
# the service/http subscriber behind a sidecar, two orders published with
# the SDK's client, the subscriber's log. PERCH_BIN names the perch binary
# (default: cargo build). The modules come from the Go module proxy
# (go.sum committed) into Go's cache; the binary is built outside the repo.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$here/../.."
perch="${PERCH_BIN:-}"
if [ -z "$perch" ]; then
  (cd "$root" && cargo build --quiet --bin perch)
  perch="${CARGO_TARGET_DIR:-$root/target}/debug/perch"
fi
bin="${PERCH_EXAMPLES_CACHE:-$HOME/.cache/perch-examples}/go-$(cat "$here/go.mod" "$here/go.sum" "$here/main.go" | sha256sum | cut -c1-12)/orders"
if [ ! -x "$bin" ]; then
  mkdir -p "$(dirname "$bin")"
  (cd "$here" && go build -mod=readonly -o "$bin" .)
fi
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
export APP_PORT=$(free_port) DAPR_HTTP_PORT=$(free_port) DAPR_GRPC_PORT=$(free_port)
log="$(mktemp)"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -f "$log"' EXIT
"$bin" >"$log" 2>&1 &
pids+=($!)
"$perch" run --app-id orders-go --app-port "$APP_PORT" --dapr-http-port "$DAPR_HTTP_PORT" \
  --dapr-grpc-port "$DAPR_GRPC_PORT" --dapr-public-port 0 --metrics-port 0 \
  --resources-path "$here/components" --log-level warn &
pids+=($!)
# Ready once the subscription runs.
for _ in $(seq 150); do
  python3 -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:$DAPR_HTTP_PORT/v1.0/healthz').status==204 else 1)" 2>/dev/null && break
  sleep 0.1
done
"$bin" publish 2>&1 | grep published
for _ in $(seq 50); do
  [ "$(grep -c 'received order' "$log")" -ge 2 ] && break
  sleep 0.2
done
grep 'received order' "$log"
