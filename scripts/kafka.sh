#!/usr/bin/env bash
# Apache Kafka 4.x for the tests and benchmarks (DESIGN.md section 9): one
# KRaft node (broker and controller) on 127.0.0.1:9092, controller on
# 127.0.0.1:9093, run with Java 17 from the official jars on Maven Central.
#
#   scripts/kafka.sh start     resolve the jars (once per machine), format the
#                              data directory if it is new, start, wait until
#                              the broker answers
#   scripts/kafka.sh stop      SIGTERM (controlled shutdown), wait for exit
#   scripts/kafka.sh kill      SIGKILL, as a crash would
#   scripts/kafka.sh restart   stop, then start on the same data
#   scripts/kafka.sh status    exit 0 when the broker answers on 9092
#
# Tests that restart the broker call this same script. The state (data, log,
# pid, cluster id) lives in $PERCH_KAFKA_DIR (default /tmp/perch-kafka), so a
# restart keeps every message; scripts/services.sh empties it before the
# first start of a run. The jars go to ~/.cache/perch-m2 and the resolved
# class path to ~/.cache/perch-kafka: a second run downloads nothing.
#
# PERCH_KAFKA_VERSIONS lists the releases to try, in order: the first that
# resolves and starts is used, and the script says which and why it moved on.
set -euo pipefail

KAFKA_HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/kafka"
KAFKA_DIR="${PERCH_KAFKA_DIR:-/tmp/perch-kafka}"
KAFKA_CACHE="${PERCH_KAFKA_CACHE:-$HOME/.cache/perch-kafka}"
KAFKA_M2="${PERCH_M2_REPO:-$HOME/.cache/perch-m2}"
KAFKA_VERSIONS="${PERCH_KAFKA_VERSIONS:-4.1.1 4.2.1 4.0.1}"
KAFKA_HEAP="${PERCH_KAFKA_HEAP:--Xms256m -Xmx1g}"
KAFKA_PORT=9092

kafka_log() { printf 'kafka: %s\n' "$*" >&2; }

kafka_up() { (exec 3<>"/dev/tcp/127.0.0.1/$KAFKA_PORT") 2>/dev/null; }

kafka_pid() {
  local pid
  pid="$(cat "$KAFKA_DIR/kafka.pid" 2>/dev/null)" || return 1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && printf '%s' "$pid"
}

# Writes the class path of release $1 to $KAFKA_CACHE/classpath-$1.txt,
# downloading with Maven only when a jar of it is missing.
kafka_resolve() {
  local v="$1" cp="$KAFKA_CACHE/classpath-$1.txt" jar missing=0
  if [ -s "$cp" ]; then
    for jar in $(tr ':' ' ' <"$cp"); do [ -f "$jar" ] || missing=1; done
    [ "$missing" = 0 ] && return 0
  fi
  command -v mvn >/dev/null || { kafka_log "mvn is required to fetch Kafka's jars (Debian: maven)"; return 1; }
  mkdir -p "$KAFKA_CACHE"
  kafka_log "resolving org.apache.kafka:kafka_2.13:$v and its runtime dependencies (Maven Central)"
  local t0=$SECONDS
  if ! mvn -q -B -f "$KAFKA_HERE/pom.xml" -Dkafka.version="$v" \
      -Dmaven.repo.local="$KAFKA_M2" -Dmdep.outputFile="$cp.tmp" \
      -Dmdep.includeScope=runtime dependency:build-classpath >"$KAFKA_CACHE/mvn-$v.log" 2>&1; then
    kafka_log "Kafka $v did not resolve (see $KAFKA_CACHE/mvn-$v.log):"
    tail -n 5 "$KAFKA_CACHE/mvn-$v.log" >&2
    rm -f "$cp.tmp"
    return 1
  fi
  mv "$cp.tmp" "$cp"
  kafka_log "Kafka $v resolved in $((SECONDS - t0)) s"
}

# Runs a Kafka main class of release $1 with the arguments after it.
kafka_java() {
  local v="$1"; shift
  # shellcheck disable=SC2086 # KAFKA_HEAP holds several JVM flags
  java $KAFKA_HEAP -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$KAFKA_HERE/log4j2.properties" \
    -cp "$(cat "$KAFKA_CACHE/classpath-$v.txt")" "$@"
}

# Starts release $1 on the data in $KAFKA_DIR (formatted first if new) and
# waits up to 60 s for it to answer.
kafka_start_version() {
  local v="$1"
  mkdir -p "$KAFKA_DIR/data"
  cp "$KAFKA_HERE/server.properties" "$KAFKA_DIR/server.properties"
  printf '\nlog.dirs=%s\n' "$KAFKA_DIR/data" >>"$KAFKA_DIR/server.properties"
  if [ ! -f "$KAFKA_DIR/data/meta.properties" ]; then
    local id
    id="$(kafka_java "$v" kafka.tools.StorageTool random-uuid 2>"$KAFKA_DIR/format.log")" || {
      kafka_log "Kafka $v: the storage tool did not run:"; tail -n 5 "$KAFKA_DIR/format.log" >&2; return 1; }
    kafka_java "$v" kafka.tools.StorageTool format -t "$id" \
        -c "$KAFKA_DIR/server.properties" >>"$KAFKA_DIR/format.log" 2>&1 || {
      kafka_log "Kafka $v: formatting $KAFKA_DIR/data failed:"; tail -n 5 "$KAFKA_DIR/format.log" >&2; return 1; }
    printf '%s\n' "$v" >"$KAFKA_DIR/version"
  fi
  [ -f "$KAFKA_DIR/kafka.log" ] && mv "$KAFKA_DIR/kafka.log" "$KAFKA_DIR/kafka.log.1"
  # Own session (setsid execs java: $! is the broker) and no inherited
  # descriptors: the broker outlives a test that restarted it, and holds
  # none of the test runner's pipes.
  # shellcheck disable=SC2086
  setsid java $KAFKA_HEAP -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$KAFKA_HERE/log4j2.properties" \
    -cp "$(cat "$KAFKA_CACHE/classpath-$v.txt")" kafka.Kafka "$KAFKA_DIR/server.properties" \
    </dev/null >"$KAFKA_DIR/kafka.log" 2>&1 &
  printf '%s\n' "$!" >"$KAFKA_DIR/kafka.pid"
  local i
  for i in $(seq 1 300); do
    if grep -q "Kafka Server started" "$KAFKA_DIR/kafka.log" 2>/dev/null && kafka_up; then
      return 0
    fi
    kafka_pid >/dev/null || break
    sleep 0.2
  done
  kafka_log "Kafka $v did not start (log: $KAFKA_DIR/kafka.log):"
  tail -n 15 "$KAFKA_DIR/kafka.log" >&2
  kafka_stop >/dev/null 2>&1 || true
  return 1
}

kafka_start() {
  if kafka_pid >/dev/null && kafka_up; then
    kafka_log "already running (pid $(kafka_pid))"
    return 0
  fi
  if kafka_up; then
    kafka_log "something else listens on 127.0.0.1:$KAFKA_PORT; stop it first"
    return 1
  fi
  command -v java >/dev/null || { kafka_log "java (17 or later) is required (Debian: openjdk-17-jre-headless)"; return 1; }
  local versions="$KAFKA_VERSIONS" v t0=$SECONDS
  # Data formatted by one release is started with the same release.
  [ -f "$KAFKA_DIR/version" ] && versions="$(cat "$KAFKA_DIR/version")"
  for v in $versions; do
    kafka_resolve "$v" || continue
    if kafka_start_version "$v"; then
      kafka_log "Apache Kafka $v up on 127.0.0.1:$KAFKA_PORT in $((SECONDS - t0)) s (pid $(kafka_pid), data $KAFKA_DIR)"
      return 0
    fi
    kafka_log "trying the next release after $v"
    rm -rf "$KAFKA_DIR"
  done
  kafka_log "no Kafka release of '$versions' resolved and started here"
  return 1
}

# Sends $1 (TERM or KILL) and waits for the process to exit.
kafka_signal() {
  local pid i
  pid="$(kafka_pid)" || { rm -f "$KAFKA_DIR/kafka.pid"; return 0; }
  kill "-$1" "$pid" 2>/dev/null || true
  for i in $(seq 1 300); do
    kill -0 "$pid" 2>/dev/null || break
    [ "$i" = 150 ] && kill -KILL "$pid" 2>/dev/null
    sleep 0.2
  done
  rm -f "$KAFKA_DIR/kafka.pid"
  # The port closes with the process; wait so a start right after binds it.
  for i in $(seq 1 50); do kafka_up || return 0; sleep 0.1; done
}

kafka_stop() { kafka_signal TERM; }
kafka_kill() { kafka_signal KILL; }

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  case "${1:-}" in
    start) kafka_start ;;
    stop) kafka_stop ;;
    kill) kafka_kill ;;
    restart) kafka_stop && kafka_start ;;
    status) kafka_up ;;
    *) echo "usage: $0 start|stop|kill|restart|status" >&2; exit 2 ;;
  esac
fi
