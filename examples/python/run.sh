#!/usr/bin/env bash
# The Python example end to end against `perch run` on the in-memory broker:
# the consumer (FastAPI + the Dapr SDK's extension) behind a sidecar, the
# producer publishing task 1 twice and task 2 once through the same sidecar,
# and the consumer's log: task 1 and task 2, once each.
# PERCH_BIN names the perch binary (default: cargo build, then target/debug).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$here/../.."
perch="${PERCH_BIN:-}"
if [ -z "$perch" ]; then
  (cd "$root" && cargo build --quiet --bin perch)
  perch="${CARGO_TARGET_DIR:-$root/target}/debug/perch"
fi
venv="${PERCH_EXAMPLES_CACHE:-$HOME/.cache/perch-examples}/python-$(sha256sum "$here/requirements.txt" | cut -c1-12)"
if [ ! -x "$venv/bin/uvicorn" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
fi
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
app_port=$(free_port) http_port=$(free_port) grpc_port=$(free_port)
log="$(mktemp)"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -f "$log"' EXIT
(cd "$here" && exec "$venv/bin/uvicorn" consumer:app --port "$app_port" --log-level warning) >"$log" 2>&1 &
pids+=($!)
"$perch" run --app-id task-processor --app-port "$app_port" --dapr-http-port "$http_port" \
  --dapr-grpc-port "$grpc_port" --dapr-public-port 0 --metrics-port 0 \
  --resources-path "$here/components" --log-level warn &
pids+=($!)
# Ready once the subscription runs (the in-memory broker keeps nothing
# for a subscriber that is not there yet).
"$venv/bin/python" - "$http_port" <<'PY'
import sys, time, urllib.request
for _ in range(150):
    try:
        if urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/v1.0/healthz").status == 204:
            break
    except OSError:
        pass
    time.sleep(0.1)
PY
export DAPR_HTTP_PORT="$http_port" DAPR_GRPC_PORT="$grpc_port"
"$venv/bin/python" -W ignore "$here/producer.py" 1 "write the docs" 1 "write the docs" 2 "ship it"
for _ in $(seq 50); do
  [ "$(grep -c 'processed task' "$log")" -ge 2 ] && break
  sleep 0.2
done
sleep 1
grep 'processed task' "$log"
