"""Validates every Kubernetes manifest Perch ships, without a cluster.

Usage: validate.py --perch PATH_TO_PERCH_BINARY [--kubectl KUBECTL] [--node-modules DIR]

What it checks (scripts/k8s-validate.sh runs it; scripts/test.sh runs that):
- every document of k8s/**/*.yaml and keda/*.yaml (but k8s/monitoring, which
  holds Prometheus rule files and a dashboard, not Kubernetes objects, and
  kustomization.yaml files, which are rendered instead);
- the golden patched pods of the injector's tests
  (tests/fixtures/admission/*.patched.json): the sidecar as the apiserver
  would receive it;
- `kubectl kustomize` of every folder with a kustomization.yaml;
- what k8s/injector/gen-certs.sh writes (the Secret, the webhook with its
  caBundle filled in).
Core kinds go through kubernetes-validate against Kubernetes 1.37 in strict
mode (unknown fields are errors); Dapr and KEDA kinds through JSON Schema
(tests/k8s/schemas, copied from the CRDs catalog); cert-manager kinds
through the schemas of @kubernetes-models/cert-manager (npm, pinned in
tests/k8s/package-lock.json; validate-crd.mjs). A kind with no schema is a
failure, never a pass. Every ConfigMap named perch-resources (or with the
label perch.io/resources) is also loaded by `perch validate`, as the sidecar
would load it. Prints every problem, then `N passed, N failed`; exits 1 when
anything failed.
"""

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile

import jsonschema
import kubernetes_validate
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCHEMAS = os.path.join(ROOT, "tests", "k8s", "schemas")
K8S_VERSION = "1.37"
CRD_GROUPS = ("dapr.io", "keda.sh")
# Validated by tests/k8s/validate-crd.mjs with cert-manager's schemas.
NODE_GROUPS = ("cert-manager.io",)
NODE_MODULES = None

passed = 0
failed = 0
# Secrets shipped beside the ConfigMaps (<name>/<key> files), so that
# `perch validate` resolves secretKeyRef as the sidecar does with
# perch.io/secrets mounted at --secrets-path.
SECRETS = tempfile.mkdtemp(prefix="perch-k8s-secrets-")


def report(where, problems):
    global passed, failed
    if problems:
        failed += 1
        print(f"FAIL {where}")
        for p in problems:
            print(f"     {p}")
    else:
        passed += 1
        print(f"ok   {where}")


def crd_schema(doc):
    group, _, version = doc.get("apiVersion", "").rpartition("/")
    path = os.path.join(SCHEMAS, group, f"{doc.get('kind', '').lower()}_{version}.json")
    if not os.path.exists(path):
        return None, path
    with open(path) as f:
        return json.load(f), path


def check_doc(doc, perch):
    """Every problem of one document."""
    if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
        return ["not a Kubernetes object (no kind or apiVersion)"]
    group = doc["apiVersion"].rpartition("/")[0]
    problems = []
    if group in NODE_GROUPS:
        return node_validate(doc)
    if group in CRD_GROUPS:
        schema, path = crd_schema(doc)
        if schema is None:
            return [f"no schema for {doc['apiVersion']} {doc['kind']} ({os.path.relpath(path, ROOT)})"]
        validator = jsonschema.Draft7Validator(schema)
        for e in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path)):
            at = "/".join(str(p) for p in e.absolute_path) or "(top)"
            problems.append(f"{at}: {e.message}")
    else:
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            return [f"no schema for {doc['apiVersion']} {doc['kind']} in Kubernetes {K8S_VERSION}"]
        except kubernetes_validate.ValidationError as e:
            at = "/".join(str(p) for p in e.path) or "(top)"
            problems.append(f"{at}: {e.message}")
    if doc["kind"] == "ConfigMap" and is_resources(doc):
        problems += perch_validate(doc, perch)
    return problems


def node_validate(doc):
    """A cert-manager document through validate-crd.mjs."""
    if NODE_MODULES is None:
        return ["no cert-manager schemas: pass --node-modules"]
    script = os.path.join(ROOT, "tests", "k8s", "validate-crd.mjs")
    # ESM resolves packages next to the script: run a copy beside them.
    copy = os.path.join(os.path.dirname(NODE_MODULES), "validate-crd.mjs")
    with open(script) as src, open(copy, "w") as dst:
        dst.write(src.read())
    r = subprocess.run(["node", copy], input=json.dumps([doc]), capture_output=True, text=True)
    if r.returncode != 0:
        return [f"validate-crd.mjs failed: {r.stderr.strip()}"]
    result = json.loads(r.stdout)[0]
    if result is None:
        return [f"no schema for {doc['apiVersion']} {doc['kind']}"]
    return result


def is_resources(doc):
    md = doc.get("metadata", {})
    return md.get("name", "").startswith("perch-resources") or "perch.io/resources" in (md.get("labels") or {})


def perch_validate(cm, perch):
    """The ConfigMap's files loaded as the sidecar loads them."""
    with tempfile.TemporaryDirectory() as d:
        for name, text in (cm.get("data") or {}).items():
            with open(os.path.join(d, name), "w") as f:
                f.write(text)
        r = subprocess.run([perch, "validate", "--app-id", "validate", "--secrets-path", SECRETS, d],
                           capture_output=True, text=True)
        if r.returncode != 0:
            return ["perch validate: " + line for line in (r.stderr + r.stdout).strip().splitlines()]
    return []


def collect_secrets(path):
    """Writes the stringData and data of every Secret in `path` to SECRETS."""
    import base64
    with open(path) as f:
        for doc in yaml.safe_load_all(f):
            if not isinstance(doc, dict) or doc.get("kind") != "Secret":
                continue
            d = os.path.join(SECRETS, doc["metadata"]["name"])
            os.makedirs(d, exist_ok=True)
            values = dict(doc.get("stringData") or {})
            values.update({k: base64.b64decode(v).decode() for k, v in (doc.get("data") or {}).items()})
            for k, v in values.items():
                with open(os.path.join(d, k), "w") as out:
                    out.write(v)


def check_file(path, perch, label=None):
    where = label or os.path.relpath(path, ROOT)
    try:
        with open(path) as f:
            if path.endswith(".json"):
                docs = [json.load(f)]
            else:
                docs = [d for d in yaml.safe_load_all(f) if d is not None]
    except (yaml.YAMLError, json.JSONDecodeError) as e:
        report(where, [f"does not parse: {e}"])
        return
    if not docs:
        report(where, ["no documents"])
    for i, doc in enumerate(docs):
        kind = doc.get("kind", "?") if isinstance(doc, dict) else "?"
        name = (doc.get("metadata") or {}).get("name", "?") if isinstance(doc, dict) else "?"
        report(f"{where} #{i + 1} {kind}/{name}", check_doc(doc, perch))


def check_text(text, where, perch):
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(text)
    try:
        check_file(f.name, perch, where)
    finally:
        os.unlink(f.name)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--perch", required=True)
    ap.add_argument("--kubectl", default="kubectl")
    ap.add_argument("--node-modules", help="node_modules with @kubernetes-models/cert-manager")
    a = ap.parse_args()
    global NODE_MODULES
    NODE_MODULES = a.node_modules
    files = []
    for pattern in ("k8s/**/*.yaml", "keda/*.yaml"):
        files += glob.glob(os.path.join(ROOT, pattern), recursive=True)
    files = sorted(
        f for f in files
        if not f.startswith(os.path.join(ROOT, "k8s", "monitoring"))
        and os.path.basename(f) != "kustomization.yaml"
    )
    for f in files:
        collect_secrets(f)
    for f in files:
        check_file(f, a.perch)
    for f in sorted(glob.glob(os.path.join(ROOT, "tests/fixtures/admission/*.patched.json"))):
        check_file(f, a.perch)
    for k in sorted(glob.glob(os.path.join(ROOT, "**/kustomization.yaml"), recursive=True)):
        d = os.path.dirname(k)
        r = subprocess.run([a.kubectl, "kustomize", d], capture_output=True, text=True)
        where = f"kubectl kustomize {os.path.relpath(d, ROOT)}"
        if r.returncode != 0:
            report(where, [r.stderr.strip()])
            continue
        check_text(r.stdout, where, a.perch)
    with tempfile.TemporaryDirectory() as d:
        r = subprocess.run(["bash", os.path.join(ROOT, "k8s/injector/gen-certs.sh"), "--out", d, "--days", "1"],
                           capture_output=True, text=True)
        if r.returncode != 0:
            report("k8s/injector/gen-certs.sh", [r.stderr.strip() or r.stdout.strip()])
        else:
            mwc = open(os.path.join(d, "mutatingwebhookconfiguration.yaml")).read()
            problems = [] if 'caBundle: ""' not in mwc else ["caBundle was not filled in"]
            report("gen-certs.sh fills the webhook's caBundle", problems)
            check_file(os.path.join(d, "secret.yaml"), a.perch, "gen-certs.sh secret.yaml")
            check_file(os.path.join(d, "mutatingwebhookconfiguration.yaml"), a.perch,
                       "gen-certs.sh mutatingwebhookconfiguration.yaml")
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
