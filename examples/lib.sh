# Sourced by each example's run.sh: the perch binary, free ports, starting
# `perch run` next to the app, waiting for it, and cleaning up.
# PERCH_BIN names the perch binary (default: cargo build, then target/debug).

examples_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
examples_cache="${PERCH_EXAMPLES_CACHE:-$HOME/.cache/perch-examples}"

# Prints the perch binary, building it when PERCH_BIN is not set.
perch_bin() {
  if [ -n "${PERCH_BIN:-}" ]; then
    echo "$PERCH_BIN"
  else
    (cd "$examples_root" && cargo build --quiet --bin perch)
    echo "${CARGO_TARGET_DIR:-$examples_root/target}/debug/perch"
  fi
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Sets APP_PORT, DAPR_HTTP_PORT and DAPR_GRPC_PORT (exported: the SDKs read
# the last two), and a log file for the app.
example_ports() {
  export APP_PORT=$(free_port) DAPR_HTTP_PORT=$(free_port) DAPR_GRPC_PORT=$(free_port)
  app_log="$(mktemp)"
  pids=()
  trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -f "$app_log"' EXIT
}

# Runs the app command in the background, its output in $app_log.
start_app() {
  "$@" >"$app_log" 2>&1 &
  pids+=($!)
}

# perch run as APP_ID for the app on APP_PORT with the resources in DIR,
# then waits until its subscriptions run (/v1.0/healthz answers 204: the
# in-memory broker keeps nothing for a subscriber that is not there yet).
start_perch() {
  local app_id="$1" dir="$2"
  "$(perch_bin)" run --app-id "$app_id" --app-port "$APP_PORT" --dapr-http-port "$DAPR_HTTP_PORT" \
    --dapr-grpc-port "$DAPR_GRPC_PORT" --dapr-public-port 0 --metrics-port 0 \
    --resources-path "$dir" --log-level warn &
  pids+=($!)
  for _ in $(seq 150); do
    python3 -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:$DAPR_HTTP_PORT/v1.0/healthz').status==204 else 1)" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "perch did not get ready" >&2
  return 1
}

# Waits (10 s at most) until the app logged N lines matching PATTERN, then
# prints those lines.
app_lines() {
  local pattern="$1" n="$2"
  for _ in $(seq 50); do
    [ "$(grep -c -- "$pattern" "$app_log")" -ge "$n" ] && break
    sleep 0.2
  done
  sleep 0.5
  grep -- "$pattern" "$app_log"
}
