#!/usr/bin/env bash
# Installs the real SDK clients the compatibility tests drive, pinned, into
# a cache outside the repository (PERCH_SDK_CACHE, default
# ~/.cache/perch-sdk), once per pinned set: a Python venv with the Dapr SDK
# (tests/sdk/python/requirements.txt) and the JS SDK's node_modules
# (tests/sdk/js/package-lock.json). Sourced by scripts/test.sh, which
# exports PERCH_SDK_PYTHON and PERCH_SDK_NODE_MODULES for the tests; run it
# alone to run those tests with plain `cargo test`.
set -euo pipefail

sdk_python() {
  local here req key venv
  here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  req="$here/tests/sdk/python/requirements.txt"
  key="$(sha256sum "$req" | cut -c1-12)"
  venv="${PERCH_SDK_CACHE:-$HOME/.cache/perch-sdk}/python-$key"
  if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import dapr.clients' 2>/dev/null; then
    command -v python3 >/dev/null || { echo "sdk.sh: python3 is missing (Debian python3, python3-venv)"; return 1; }
    rm -rf "$venv"
    python3 -m venv "$venv" || { echo "sdk.sh: python3 -m venv failed (Debian python3-venv)"; return 1; }
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req" \
      || { echo "sdk.sh: pip could not install $req from PyPI"; return 1; }
    echo "sdk.sh: Dapr Python SDK installed in $venv"
  fi
  export PERCH_SDK_PYTHON="$venv/bin/python"
}

sdk_js() {
  local here lock key dir
  here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  lock="$here/tests/sdk/js/package-lock.json"
  key="$(cat "$here/tests/sdk/js/package.json" "$lock" | sha256sum | cut -c1-12)"
  dir="${PERCH_SDK_CACHE:-$HOME/.cache/perch-sdk}/js-$key"
  if [ ! -d "$dir/node_modules/@dapr/dapr" ]; then
    command -v npm >/dev/null || { echo "sdk.sh: npm is missing (Debian nodejs, npm)"; return 1; }
    rm -rf "$dir" && mkdir -p "$dir"
    cp "$here/tests/sdk/js/package.json" "$lock" "$dir/"
    (cd "$dir" && npm ci --silent --no-audit --no-fund --ignore-scripts) \
      || { echo "sdk.sh: npm could not install $lock"; return 1; }
    echo "sdk.sh: Dapr JS SDK installed in $dir"
  fi
  export PERCH_SDK_NODE_MODULES="$dir/node_modules"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  sdk_python
  sdk_js
  echo "PERCH_SDK_PYTHON=$PERCH_SDK_PYTHON"
  echo "PERCH_SDK_NODE_MODULES=$PERCH_SDK_NODE_MODULES"
fi
