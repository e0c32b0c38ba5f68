#!/usr/bin/env bash
# Makes the injector's TLS material with openssl: an RSA CA and a serving
# certificate for the injector's Service (RSA: some managed apiservers
# refuse other key types for webhooks), then writes
#   <out>/ca.crt, <out>/tls.crt, <out>/tls.key
#   <out>/secret.yaml                   Secret perch-injector-tls (kubectl apply)
#   <out>/mutatingwebhookconfiguration.yaml  the MWC with its caBundle filled in
# Rotation: run it again and apply both files; the injector reloads the
# Secret's files without a restart (--cert-reload-seconds).
#
# Usage: gen-certs.sh [--out DIR] [--namespace NS] [--days N] [--ip ADDR]
#   --out        default ./perch-injector-certs
#   --namespace  the injector's namespace, default perch-system
#   --days       validity, default 3650
#   --ip         also valid for this IP address (tests use 127.0.0.1)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out=./perch-injector-certs ns=perch-system days=3650 ip=""
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out="$2"; shift 2 ;;
    --namespace) ns="$2"; shift 2 ;;
    --days) days="$2"; shift 2 ;;
    --ip) ip="$2"; shift 2 ;;
    *) echo "gen-certs.sh: unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
command -v openssl >/dev/null || { echo "gen-certs.sh: openssl is missing (Debian: openssl)" >&2; exit 1; }
mkdir -p "$out"
svc=perch-injector
san="DNS:$svc,DNS:$svc.$ns,DNS:$svc.$ns.svc,DNS:$svc.$ns.svc.cluster.local"
[ -n "$ip" ] && san="$san,IP:$ip"
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days "$days" \
  -subj "/CN=perch-injector-ca" -keyout "$tmp/ca.key" -out "$out/ca.crt" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -sha256 -subj "/CN=$svc.$ns.svc" \
  -keyout "$out/tls.key" -out "$tmp/tls.csr" 2>/dev/null
printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\nkeyUsage=digitalSignature,keyEncipherment\nbasicConstraints=CA:FALSE\n' "$san" > "$tmp/ext"
openssl x509 -req -sha256 -days "$days" -in "$tmp/tls.csr" -CA "$out/ca.crt" -CAkey "$tmp/ca.key" \
  -CAcreateserial -extfile "$tmp/ext" -out "$out/tls.crt" 2>/dev/null
openssl verify -CAfile "$out/ca.crt" "$out/tls.crt" >/dev/null
b64() { base64 < "$1" | tr -d '\n'; }
cat > "$out/secret.yaml" <<YAML
apiVersion: v1
kind: Secret
metadata:
  name: perch-injector-tls
  namespace: $ns
type: kubernetes.io/tls
data:
  tls.crt: $(b64 "$out/tls.crt")
  tls.key: $(b64 "$out/tls.key")
YAML
sed -e "s|caBundle: \"\"|caBundle: \"$(b64 "$out/ca.crt")\"|" \
    -e "s|namespace: perch-system|namespace: $ns|" \
    "$here/mutatingwebhookconfiguration.yaml" > "$out/mutatingwebhookconfiguration.yaml"
echo "gen-certs.sh: $out/{ca.crt,tls.crt,tls.key,secret.yaml,mutatingwebhookconfiguration.yaml} for $svc.$ns.svc, $days days"
