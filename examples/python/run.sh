#!/usr/bin/env bash
# The Python example end to end against `perch run` on the in-memory broker:
# the consumer (FastAPI + the Dapr SDK's extension) behind a sidecar, the
# producer publishing task 1 twice and task 2 once through the same sidecar,
# and the consumer's log: task 1 and task 2, once each.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/../lib.sh"
venv="$examples_cache/python-$(sha256sum "$here/requirements.txt" | cut -c1-12)"
if [ ! -x "$venv/bin/uvicorn" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
fi
example_ports
start_app "$venv/bin/uvicorn" --app-dir "$here" consumer:app --port "$APP_PORT" --log-level warning
start_perch task-processor "$here/components"
"$venv/bin/python" -W ignore "$here/producer.py" 1 "write the docs" 1 "write the docs" 2 "ship it"
app_lines 'processed task' 2
