#!/usr/bin/env bash
# The JS example end to end against `perch run` on the in-memory broker:
# the subscriber behind a sidecar, two orders published, the subscriber's
# log.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/../lib.sh"
# node_modules outside the repository, once per lock; the scripts run
# beside it (ESM resolves packages next to the script).
dir="$examples_cache/js-$(cat "$here/package.json" "$here/package-lock.json" | sha256sum | cut -c1-12)"
if [ ! -d "$dir/node_modules/@dapr/dapr" ]; then
  mkdir -p "$dir" && cp "$here/package.json" "$here/package-lock.json" "$dir/"
  (cd "$dir" && npm ci --silent --no-audit --no-fund --ignore-scripts)
fi
cp "$here/subscriber.mjs" "$here/publisher.mjs" "$dir/"
example_ports
start_app node "$dir/subscriber.mjs"
start_perch orders-js "$here/components"
node "$dir/publisher.mjs" | grep published
app_lines 'received order' 2
