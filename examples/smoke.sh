#!/usr/bin/env bash
# Runs every example end to end (its run.sh) and checks its output: the
# events it published arrived, once each. PERCH_BIN names the perch binary
# to run them against (scripts/test.sh passes its build). Ends with
# `N passed, N failed`; exits 1 when one failed.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
passed=0 failed=0
check() {
  local name="$1"; shift
  local out
  out="$(bash "$here/$name/run.sh" 2>&1)"
  local ok=1
  for want in "$@"; do
    [ "$(grep -cF -- "$want" <<<"$out")" -eq 1 ] || { ok=0; echo "FAIL $name: expected once: $want"; }
  done
  if [ "$ok" = 1 ]; then passed=$((passed + 1)); echo "ok   $name"; else failed=$((failed + 1)); echo "$out" | tail -20; fi
}
check python "processed task 1 (write the docs), event task-1" "processed task 2 (ship it), event task-2"
check js "received order 1: perch" "received order 2: sidecar"
check go "received order 1: perch" "received order 2: sidecar"
check rust 'received com.example.order.placed order-1 from /examples/rust: {"id":1,"item":"perch"}' \
  'received com.example.order.placed order-2 from /examples/rust: {"id":2,"item":"sidecar"}'
echo "examples: $passed passed, $failed failed"
[ "$failed" = 0 ]
