# Sourced by test.sh and bench.sh: installs tansu 0.6.0 when missing, starts
# it on 127.0.0.1:9092 from an empty directory unless something already
# listens there, and stops it when the calling script exits.
# --- Kafka: tansu 0.6.0 on 127.0.0.1:9092 (DESIGN.md section 9) ------------
KAFKA_PORT=9092
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
TANSU_PID=""
stop_tansu() {
  if [ -n "$TANSU_PID" ]; then
    kill "$TANSU_PID" 2>/dev/null || true
    wait "$TANSU_PID" 2>/dev/null || true
  fi
}
trap stop_tansu EXIT
if port_open "$KAFKA_PORT"; then
  echo "kafka: something already listens on 127.0.0.1:$KAFKA_PORT; using it"
else
  if ! command -v tansu >/dev/null && [ ! -x "$HOME/.cargo/bin/tansu" ]; then
    echo "kafka: installing tansu 0.6.0 (about 12 minutes on 2 cores, once per machine)"
    cargo install tansu --version 0.6.0 --locked --features libsql
  fi
  TANSU="$(command -v tansu || echo "$HOME/.cargo/bin/tansu")"
  TANSU_DIR="$(mktemp -d)"
  (cd "$TANSU_DIR" && exec "$TANSU" broker \
      --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
      --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
      --storage-engine sqlite://tansu.db >"$TANSU_DIR/tansu.log" 2>&1) &
  TANSU_PID=$!
  for _ in $(seq 1 100); do
    port_open "$KAFKA_PORT" && break
    sleep 0.1
  done
  port_open "$KAFKA_PORT" || { echo "kafka: tansu did not start"; cat "$TANSU_DIR/tansu.log"; exit 1; }
  echo "kafka: tansu started from $TANSU_DIR (pid $TANSU_PID)"
fi

