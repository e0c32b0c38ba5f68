#!/usr/bin/env bash
# Sourced by test.sh and bench.sh: installs (when missing) and starts every
# service the tests need, and stops at exit what it started (DESIGN.md
# section 9). A service already answering on its port is used as it is.
#
#   PostgreSQL  127.0.0.1:5432  trust auth for local TCP, database `test`
#   RabbitMQ    127.0.0.1:5672  guest/guest, started without systemd
#   Kafka       127.0.0.1:9092  Apache Kafka 4.x in KRaft mode (kafka.sh)
#   Redis       127.0.0.1:6379  Debian redis-server, append-only file on
#                               (fsync every second), data in $REDIS_DIR
#
# Run directly, it injects a fault: `scripts/services.sh kafka kill`
# (see `fault` at the end); the fault tests call it.
#
# Installs use Debian's packages (`apt-get update` once first) and print
# what is installed and how long it took.

SERVICES_HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$SERVICES_HERE/kafka.sh"

svc_log() { printf 'services: %s\n' "$*"; }
port_up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() {
  local i
  for i in $(seq 1 "${2:-300}"); do port_up "$1" && return 0; sleep 0.2; done
  return 1
}

APT_UPDATED=""
# Installs the Debian packages "$@" (apt-get update once per run first).
apt_install() {
  command -v apt-get >/dev/null || { svc_log "apt-get is missing: install $* by hand"; return 1; }
  local t0=$SECONDS
  if [ -z "$APT_UPDATED" ]; then
    svc_log "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    APT_UPDATED=1
  fi
  svc_log "installing Debian packages: $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
  svc_log "installed $* in $((SECONDS - t0)) s"
}

STARTED_SERVICES=""
stop_services() {
  local s
  for s in $STARTED_SERVICES; do
    case "$s" in
      kafka) kafka_stop ;;
      rabbitmq) rabbitmqctl stop >/dev/null 2>&1 || true ;;
      postgres) pg_ctlcluster --skip-systemctl-redirect "$PG_VERSION" main stop >/dev/null 2>&1 || true ;;
      redis) redis_stop ;;
    esac
  done
  [ -n "$STARTED_SERVICES" ] && svc_log "stopped $STARTED_SERVICES"
  return 0
}
trap stop_services EXIT

# --- PostgreSQL ------------------------------------------------------------
PG_VERSION=""
pg_hba_trust() {
  local hba="/etc/postgresql/$PG_VERSION/main/pg_hba.conf"
  grep -q '^# perch: trust local TCP' "$hba" && return 0
  # First match wins in pg_hba.conf: the trust lines go on top.
  { printf '# perch: trust local TCP for the test suite (scripts/services.sh)\n'
    printf 'host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\n'
    cat "$hba"; } >"$hba.new"
  chown --reference="$hba" "$hba.new"; chmod --reference="$hba" "$hba.new"
  mv "$hba.new" "$hba"
  svc_log "postgres: trust auth for 127.0.0.1 added to $hba"
  return 1
}
start_postgres() {
  command -v pg_ctlcluster >/dev/null && ls /etc/postgresql/*/main >/dev/null 2>&1 \
    || apt_install postgresql postgresql-client
  PG_VERSION="$(ls /etc/postgresql | sort -n | tail -n 1)"
  local fresh=0
  pg_hba_trust || fresh=1
  if port_up 5432; then
    # Already running: a new pg_hba.conf needs a reload.
    [ "$fresh" = 1 ] && pg_ctlcluster --skip-systemctl-redirect "$PG_VERSION" main reload
  else
    local t0=$SECONDS
    pg_ctlcluster --skip-systemctl-redirect "$PG_VERSION" main start
    wait_port 5432 || { svc_log "postgres: did not start on 127.0.0.1:5432"; return 1; }
    STARTED_SERVICES="postgres $STARTED_SERVICES"
    svc_log "postgres $PG_VERSION started in $((SECONDS - t0)) s"
  fi
  local i
  for i in $(seq 1 50); do
    psql -h 127.0.0.1 -U postgres -d postgres -Atqc 'select 1' >/dev/null 2>&1 && break
    sleep 0.2
  done
  if [ -z "$(psql -h 127.0.0.1 -U postgres -d postgres -Atqc "select 1 from pg_database where datname = 'test'")" ]; then
    psql -h 127.0.0.1 -U postgres -d postgres -qc 'create database test'
    svc_log "postgres: database test created"
  fi
}

# --- RabbitMQ --------------------------------------------------------------
start_rabbitmq() {
  command -v rabbitmq-server >/dev/null || apt_install rabbitmq-server
  port_up 5672 && return 0
  local t0=$SECONDS
  # The node may be up with its app stopped (a test's stop_app).
  if ! rabbitmqctl start_app >/dev/null 2>&1; then
    rabbitmq-server -detached >/dev/null 2>&1 || true
    # await_startup fails at once while the node is not reachable yet.
    local i ok=0
    for i in $(seq 1 60); do
      rabbitmqctl await_startup --timeout 120 >/dev/null 2>&1 && { ok=1; break; }
      sleep 1
    done
    [ "$ok" = 1 ] || { svc_log "rabbitmq: did not start (logs in /var/log/rabbitmq)"; return 1; }
  fi
  wait_port 5672 || { svc_log "rabbitmq: not listening on 127.0.0.1:5672"; return 1; }
  STARTED_SERVICES="rabbitmq $STARTED_SERVICES"
  svc_log "rabbitmq started in $((SECONDS - t0)) s"
}

# --- Kafka -----------------------------------------------------------------
start_kafka() {
  if kafka_up; then
    svc_log "kafka: something already listens on 127.0.0.1:$KAFKA_PORT; using it"
    return 0
  fi
  # A run starts on an empty data directory; restarts within it keep data.
  rm -rf "$KAFKA_DIR"
  kafka_start
  STARTED_SERVICES="kafka $STARTED_SERVICES"
}

# --- Redis -----------------------------------------------------------------
# Its own server on a data directory of the run (not Debian's service): the
# append-only file keeps every acknowledged write across a clean restart
# (SHUTDOWN writes it out) and all but the last second across a kill, as a
# production Redis for pub/sub is set up.
REDIS_DIR="${REDIS_DIR:-/tmp/perch-redis}"
redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; }
redis_run() {
  mkdir -p "$REDIS_DIR"
  redis-server --bind 127.0.0.1 --port 6379 --daemonize yes --dir "$REDIS_DIR" \
    --appendonly yes --appendfsync everysec --save "" \
    --logfile "$REDIS_DIR/redis.log" --pidfile "$REDIS_DIR/redis.pid" >/dev/null
  local i
  for i in $(seq 1 100); do redis_up && return 0; sleep 0.1; done
  svc_log "redis: did not start (log: $REDIS_DIR/redis.log)"; return 1
}
redis_stop() { redis-cli -h 127.0.0.1 -p 6379 shutdown >/dev/null 2>&1 || true
  local i; for i in $(seq 1 100); do port_up 6379 || return 0; sleep 0.1; done; }
redis_kill() { [ -f "$REDIS_DIR/redis.pid" ] && kill -9 "$(cat "$REDIS_DIR/redis.pid")" 2>/dev/null
  local i; for i in $(seq 1 100); do port_up 6379 || return 0; sleep 0.1; done; }
start_redis() {
  command -v redis-server >/dev/null || apt_install redis-server
  if port_up 6379; then
    svc_log "redis: something already listens on 127.0.0.1:6379; using it"
    return 0
  fi
  local t0=$SECONDS
  # A run starts on an empty data directory; restarts within it keep data.
  rm -rf "$REDIS_DIR"
  redis_run || return 1
  STARTED_SERVICES="redis $STARTED_SERVICES"
  svc_log "redis $(redis-server --version | sed -n 's/.*v=\([0-9.]*\).*/\1/p') started in $((SECONDS - t0)) s"
}

start_services() {
  local t0=$SECONDS
  start_postgres
  start_rabbitmq
  start_kafka
  start_redis
  svc_log "all up in $((SECONDS - t0)) s"
}

# --- Faults, for the tests that restart or kill a service --------------------
# scripts/services.sh <postgres|rabbitmq|kafka|redis> <restart|kill>
#   restart: a clean stop and start; kill: SIGKILL (PostgreSQL: an immediate
#   shutdown, which is a crash for its WAL) and start. Waits until the
#   service answers again; always leaves it running.
fault() {
  local svc="$1" how="$2" t0=$SECONDS
  case "$svc/$how" in
    postgres/restart|postgres/kill)
      PG_VERSION="$(ls /etc/postgresql | sort -n | tail -n 1)"
      local mode=fast; [ "$how" = kill ] && mode=immediate
      pg_ctlcluster --skip-systemctl-redirect "$PG_VERSION" main stop -m "$mode" >/dev/null 2>&1 || true
      pg_ctlcluster --skip-systemctl-redirect "$PG_VERSION" main start
      wait_port 5432 ;;
    rabbitmq/restart)
      rabbitmqctl stop_app >/dev/null
      rabbitmqctl start_app >/dev/null
      wait_port 5672 ;;
    rabbitmq/kill)
      pkill -9 -f 'beam.smp.*rabbit' || true
      local i; for i in $(seq 1 50); do port_up 5672 || break; sleep 0.1; done
      start_rabbitmq ;;
    kafka/restart) kafka_stop && kafka_start ;;
    kafka/kill) kafka_kill && kafka_start ;;
    redis/restart) redis_stop && redis_run ;;
    redis/kill) redis_kill && redis_run ;;
    *) echo "usage: scripts/services.sh <postgres|rabbitmq|kafka|redis> <restart|kill>" >&2; return 2 ;;
  esac
  svc_log "$svc $how done in $((SECONDS - t0)) s"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  fault "$@"
  # Whatever it started stays up: the test suite stops the services.
  STARTED_SERVICES=""
fi
