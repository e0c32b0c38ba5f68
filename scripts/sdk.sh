#!/usr/bin/env bash
# Installs the real SDK clients the compatibility tests drive, pinned, into
# a cache outside the repository (PERCH_SDK_CACHE, default
# ~/.cache/perch-sdk), once per pinned set: a Python venv with the Dapr SDK
# (tests/sdk/python/requirements.txt), the JS SDK's node_modules
# (tests/sdk/js/package-lock.json) and a publisher built with the Go SDK
# (tests/sdk/go, go.sum committed; modules from the Go module proxy into
# Go's own cache) and one with the Java SDK (tests/sdk/java, from Maven
# Central into Maven's cache). Sourced by scripts/test.sh, which exports
# PERCH_SDK_PYTHON, PERCH_SDK_NODE_MODULES, PERCH_SDK_GO_PUBLISHER and
# PERCH_SDK_JAVA_CP for the tests; run it alone to run those tests with
# plain `cargo test`.
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

sdk_go() {
  local here key dir
  here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  key="$(cat "$here/tests/sdk/go/go.mod" "$here/tests/sdk/go/go.sum" "$here/tests/sdk/go/main.go" "$here/tests/sdk/go/subscriber/main.go" | sha256sum | cut -c1-12)"
  dir="${PERCH_SDK_CACHE:-$HOME/.cache/perch-sdk}/go-$key"
  if [ ! -x "$dir/publisher" ] || [ ! -x "$dir/subscriber" ]; then
    command -v go >/dev/null || { echo "sdk.sh: go is missing (the Go toolchain, 1.26 or later)"; return 1; }
    mkdir -p "$dir"
    (cd "$here/tests/sdk/go" && go build -mod=readonly -o "$dir/publisher" . \
      && go build -mod=readonly -o "$dir/subscriber" ./subscriber) \
      || { echo "sdk.sh: the Go SDK clients did not build (modules from the Go module proxy)"; return 1; }
    echo "sdk.sh: Dapr Go SDK publisher and gRPC subscriber built in $dir"
  fi
  export PERCH_SDK_GO_PUBLISHER="$dir/publisher"
  export PERCH_SDK_GO_SUBSCRIBER="$dir/subscriber"
}

sdk_java() {
  local here key dir
  here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  key="$(cat "$here/tests/sdk/java/pom.xml" "$here/tests/sdk/java/Publisher.java" | sha256sum | cut -c1-12)"
  dir="${PERCH_SDK_CACHE:-$HOME/.cache/perch-sdk}/java-$key"
  if [ ! -f "$dir/classes/Publisher.class" ]; then
    command -v mvn >/dev/null && command -v javac >/dev/null \
      || { echo "sdk.sh: mvn and javac are missing (Debian maven, openjdk-17-jdk-headless)"; return 1; }
    rm -rf "$dir" && mkdir -p "$dir/classes"
    (cd "$here/tests/sdk/java" && mvn -q -B dependency:build-classpath -Dmdep.outputFile="$dir/cp.txt") \
      || { echo "sdk.sh: Maven could not resolve the Dapr Java SDK from Maven Central"; return 1; }
    javac -d "$dir/classes" -cp "$(cat "$dir/cp.txt")" "$here/tests/sdk/java/Publisher.java" \
      || { echo "sdk.sh: the Java SDK publisher did not compile"; return 1; }
    echo "sdk.sh: Dapr Java SDK publisher built in $dir"
  fi
  export PERCH_SDK_JAVA_CP="$dir/classes:$(cat "$dir/cp.txt")"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  sdk_java
  sdk_python
  sdk_js
  sdk_go
  echo "PERCH_SDK_GO_PUBLISHER=$PERCH_SDK_GO_PUBLISHER"
  echo "PERCH_SDK_PYTHON=$PERCH_SDK_PYTHON"
  echo "PERCH_SDK_NODE_MODULES=$PERCH_SDK_NODE_MODULES"
fi
