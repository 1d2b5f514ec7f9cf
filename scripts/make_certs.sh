#!/usr/bin/env bash
# Makes a certificate authority and one certificate per host for PolyBeast's mutual TLS
# (--tls_cert, --tls_key, --tls_ca of polybeast_env and polybeast_learner).
#
#   scripts/make_certs.sh DIR HOST [HOST ...]
#
# HOST is an IP address or DNS name (the certificate is DIR/HOST.crt, its key DIR/HOST.key), or
# NAME=SAN,SAN,... for a certificate DIR/NAME.crt naming several addresses or names, e.g.
#
#   scripts/make_certs.sh certs learner=10.0.0.1,gpu01 10.0.0.2 cpu07.cluster
#
# A certificate must name the address its peers dial (the learner's --registry_bind host, an
# env server's advertised address); each one serves as server and client certificate. The CA
# (DIR/ca.crt, DIR/ca.key) is made on the first call and reused later, so hosts can be added to a
# run; keep ca.key private and copy each host its .crt, .key and ca.crt. Keys are EC P-256;
# certificates last TB_CERT_DAYS days (default 365). Needs openssl.
set -euo pipefail

if [ "$#" -lt 2 ]; then
  echo "usage: $0 DIR HOST|NAME=SAN,SAN... [...]" >&2
  exit 2
fi
command -v openssl >/dev/null || { echo "$0: needs openssl (apt-get install openssl)" >&2; exit 2; }
dir="$1"
shift
days="${TB_CERT_DAYS:-365}"
mkdir -p "$dir"
umask 077

if [ ! -s "$dir/ca.crt" ] || [ ! -s "$dir/ca.key" ]; then
  openssl ecparam -name prime256v1 -genkey -noout -out "$dir/ca.key"
  openssl req -x509 -new -key "$dir/ca.key" -sha256 -days "$days" -subj "/CN=torchbeast run CA $(date +%s)" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out "$dir/ca.crt"
  echo "made CA $dir/ca.crt"
fi

for spec in "$@"; do
  case "$spec" in
    *=*) name="${spec%%=*}"; sans="${spec#*=}" ;;
    *) name="$spec"; sans="$spec" ;;
  esac
  if [ -z "$name" ] || [ -z "$sans" ] || [[ "$name" == */* ]]; then
    echo "$0: bad host argument '$spec': expected HOST or NAME=SAN,SAN..." >&2
    exit 2
  fi
  alt=""
  IFS=',' read -ra names <<<"$sans"
  for san in "${names[@]}"; do
    [ -n "$san" ] || continue
    if [[ "$san" =~ ^[0-9.]+$ ]] || [[ "$san" == *:* ]]; then
      alt+="${alt:+,}IP:$san"
    else
      alt+="${alt:+,}DNS:$san"
    fi
  done
  ext="$(mktemp)"
  printf 'subjectAltName=%s\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\n' \
    "$alt" >"$ext"
  openssl ecparam -name prime256v1 -genkey -noout -out "$dir/$name.key"
  openssl req -new -key "$dir/$name.key" -subj "/CN=${names[0]}" -out "$dir/$name.csr"
  openssl x509 -req -in "$dir/$name.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial -sha256 \
    -days "$days" -extfile "$ext" -out "$dir/$name.crt" 2>/dev/null
  rm -f "$ext" "$dir/$name.csr"
  chmod 644 "$dir/$name.crt"
  echo "made $dir/$name.crt ($alt)"
done
chmod 644 "$dir/ca.crt"
