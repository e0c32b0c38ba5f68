#!/usr/bin/env bash
# The Go example end to end against `perch run` on the in-memory broker:
# the service/http subscriber behind a sidecar, two orders published with
# the SDK's client, the subscriber's log. The modules come from the Go
# module proxy (go.sum committed) into Go's cache; the binary is built
# outside the repository.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/../lib.sh"
bin="$examples_cache/go-$(cat "$here/go.mod" "$here/go.sum" "$here/main.go" | sha256sum | cut -c1-12)/orders"
if [ ! -x "$bin" ]; then
  mkdir -p "$(dirname "$bin")"
  (cd "$here" && go build -mod=readonly -o "$bin" .)
fi
example_ports
start_app "$bin"
start_perch orders-go "$here/components"
"$bin" publish 2>&1 | grep published
app_lines 'received order' 2
