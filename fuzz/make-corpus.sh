#!/usr/bin/env bash
# Regenerates the checked-in seed corpus under fuzz/corpus/<target>/ (run once; the
# output is committed so fuzzing is reproducible without openssl). Seeds: the example
# configs, and with openssl a CA, an intermediate and a leaf for fuzz.example and
# *.fuzz.example (valid 2026-2036), their keys in PKCS#8, SEC1, PKCS#1 and Ed25519
# form, chains in order and out of order. verify_set seeds use the layout
# fuzz_targets/verify_set.rs reads: 2-byte big-endian key length, key, chain.
set -euo pipefail
fuzz=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$fuzz")
c=$fuzz/corpus
rm -rf "$c"
mkdir -p "$c/config" "$c/pem_certs" "$c/pem_key" "$c/verify_set"
cp "$repo"/examples/*.toml "$c/config/"
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
cd "$t"
o() { openssl "$@" 2>/dev/null; }
o req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.pem \
    -days 3650 -subj "/CN=fuzz root" -addext basicConstraints=critical,CA:TRUE
o req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout int.key -out int.csr -subj "/CN=fuzz int"
o x509 -req -in int.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out int.pem -days 3650 \
    -extfile <(printf "basicConstraints=critical,CA:TRUE\n")
leaf() { # name keyopts...
    local n=$1
    shift
    o req -newkey "$@" -nodes -keyout "$n.key" -out "$n.csr" -subj "/CN=fuzz.example"
    o x509 -req -in "$n.csr" -CA int.pem -CAkey int.key -CAcreateserial -out "$n.pem" -days 3650 \
        -extfile <(printf "subjectAltName=DNS:fuzz.example,DNS:*.fuzz.example\nbasicConstraints=CA:FALSE\n")
}
leaf ec ec -pkeyopt ec_paramgen_curve:P-256
leaf rsa rsa:2048
leaf ed ed25519
o ec -in ec.key -out ec.sec1.key
o rsa -in rsa.key -traditional -out rsa.pkcs1.key
cat ec.pem int.pem ca.pem >"$c/pem_certs/chain-ec"
cat rsa.pem int.pem >"$c/pem_certs/chain-rsa"
cat ed.pem >"$c/pem_certs/leaf-ed25519"
cat int.pem ec.pem >"$c/pem_certs/chain-out-of-order"
for k in ec.key ec.sec1.key rsa.key rsa.pkcs1.key ed.key; do cp "$k" "$c/pem_key/$k"; done
seed() { # out key chain...
    local out=$1 key=$2
    shift 2
    python3 - "$out" "$key" "$@" <<'PY'
import struct, sys
out, key, *chain = sys.argv[1:]
k = open(key, "rb").read()
data = struct.pack(">H", len(k)) + k + b"".join(open(p, "rb").read() for p in chain)
open(out, "wb").write(data)
PY
}
seed "$c/verify_set/ok-ec" ec.key ec.pem int.pem
seed "$c/verify_set/ok-rsa-pkcs1" rsa.pkcs1.key rsa.pem int.pem ca.pem
seed "$c/verify_set/ok-ed25519" ed.key ed.pem
seed "$c/verify_set/wrong-key" rsa.key ec.pem int.pem
seed "$c/verify_set/out-of-order" ec.sec1.key ec.pem ca.pem int.pem
du -sh "$c"
