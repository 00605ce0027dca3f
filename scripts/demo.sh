#!/usr/bin/env bash
# The demo: a real ACME CA (Pebble) on loopback, certkeeper issuing, renewing
# and reloading, all inside one temporary directory. Works from any directory.
#
#   scripts/demo.sh
#
# Installs pebble, openssl and curl with apt-get (sudo when not root) if they
# are missing, builds certkeeper (debug), then:
#   1. makes a CA and a leaf for Pebble's HTTPS listener (openssl),
#   2. starts pebble-challtestsrv (fake DNS: every name is 127.0.0.1) and
#      Pebble with 5-minute certificates, on free loopback ports,
#   3. writes a certkeeper config with two certificates: "demo" for
#      demo.certkeeper.test over HTTP-01 (certkeeper's built-in responder) and
#      "wildcard" for *.demo.certkeeper.test over DNS-01 (hooks/dns-challtestsrv),
#      both with a reload hook that logs each time it fires,
#   4. runs renew, renew again (nothing due), status, renew --force, shows the
#      hook log, and status again.
# Pebble and challtestsrv are stopped on exit; the temporary directory is kept
# so you can look at the files (its path is printed).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
# shellcheck source=scripts/lib.sh
. "$repo/scripts/lib.sh"

demo_start=$(date +%s.%N)
elapsed() { # elapsed START: seconds since START, to 0.01 s
    awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }'
}

log "step 0: prerequisites (pebble, pebble-challtestsrv, openssl, curl, cargo)"
ensure_acme_test_deps
# shellcheck disable=SC2119 # no extra components needed
ensure_cargo
echo "pebble: $(command -v pebble), pebble-challtestsrv: $(command -v pebble-challtestsrv)"

log "step 1: building certkeeper (cargo build)"
cargo build --bin certkeeper
target_dir=${CARGO_TARGET_DIR:-target}
case $target_dir in
    /*) bin="$target_dir/debug/certkeeper" ;;
    *) bin="$repo/$target_dir/debug/certkeeper" ;;
esac
if [ ! -x "$bin" ]; then
    echo "error: built binary not found at $bin" >&2
    exit 1
fi
echo "binary: $bin"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/certkeeper-demo.XXXXXX")
log "step 2: everything goes in $tmp"
mkdir -p "$tmp/pebble" "$tmp/certs" "$tmp/hooks"

pids=()
cleanup() {
    local rc=$?
    stop_pids
    if [ "${#pids[@]}" -gt 0 ]; then
        echo "stopped pebble and pebble-challtestsrv" >&2
    fi
    echo "demo files kept in $tmp (remove with: rm -rf '$tmp')" >&2
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log "step 3: a CA and a leaf for Pebble's HTTPS listener (certkeeper trusts the CA via ca_bundle)"
pebble_tls "$tmp" "certkeeper demo CA"
echo "$tmp/pebble/ca.pem, $tmp/pebble/leaf.pem"

log "step 4: picking free loopback ports"
acme_port=$(free_port 14000 14099)
pebble_mgmt_port=$(free_port 15000 15099)
http01_port=$(free_port 15100 15199)
tls_port=$(free_port 15200 15299)
dns_port=$(free_port 18053 18099)
cts_port=$(free_port 18100 18199)
echo "ACME directory  https://127.0.0.1:$acme_port/dir"
echo "HTTP-01 port    127.0.0.1:$http01_port (certkeeper's responder; Pebble validates here)"
echo "fake DNS        127.0.0.1:$dns_port, management http://127.0.0.1:$cts_port"

log "step 5: starting pebble-challtestsrv and pebble (5-minute certificates)"
start_pebble "$tmp" "$acme_port" "$pebble_mgmt_port" "$http01_port" "$tls_port" "$dns_port" "$cts_port" 300
wait_pebble "$tmp" "$acme_port" "$cts_port"

log "step 6: the reload hook and the certkeeper config"
cat >"$tmp/hooks/log-reload" <<'HOOK'
#!/bin/sh
# Demo reload hook: records that it fired, with the facts certkeeper passes.
set -eu
msg="reload hook fired for $CERTKEEPER_NAME (serial $CERTKEEPER_SERIAL)"
echo "$(date -u +%H:%M:%S) $msg: domains=$CERTKEEPER_DOMAINS not_after=$CERTKEEPER_NOT_AFTER" >>"$(dirname "$0")/../hook.log"
cat >"$(dirname "$0")/../hook-stdin.$CERTKEEPER_NAME.json"   # the same facts, as JSON
echo "$msg"
HOOK
chmod 755 "$tmp/hooks/log-reload"

cfg="$tmp/certkeeper.toml"
cat >"$cfg" <<TOML
# Written by scripts/demo.sh.
state_dir = "$tmp/state"

[acme]
directory = "https://127.0.0.1:$acme_port/dir"
ca_bundle = "$tmp/pebble/ca.pem"
contact = ["mailto:demo@certkeeper.test"]

[defaults]
# Pebble's certificates here live 300 s, so this renews after ~150 s.
renew_before = "50%"
key_type = "ecdsa-p256"
challenge = "http-01"
http01_listen = "127.0.0.1:$http01_port"
reload = [["$tmp/hooks/log-reload"]]
hook_timeout = "30s"

[[cert]]
name = "demo"
domains = ["demo.certkeeper.test"]
cert_path = "$tmp/certs/demo.fullchain.pem"
key_path = "$tmp/certs/demo.key.pem"
chain_path = "$tmp/certs/demo.chain.pem"

[[cert]]
name = "wildcard"
domains = ["*.demo.certkeeper.test"]
challenge = "dns-01"
dns01_hook = ["$repo/hooks/dns-challtestsrv", "http://127.0.0.1:$cts_port"]
cert_path = "$tmp/certs/wildcard.fullchain.pem"
key_path = "$tmp/certs/wildcard.key.pem"
TOML
cat "$cfg"

# ck ARGS...: run certkeeper with the demo config, narrate its exit status.
ck() {
    local t0 rc=0
    echo "\$ certkeeper $*" >&2
    t0=$(date +%s.%N)
    "$bin" --config "$cfg" "$@" || rc=$?
    echo "(exit status $rc, $(elapsed "$t0") s)" >&2
    return "$rc"
}
fail() {
    echo "error: $*" >&2
    echo "pebble's log: $tmp/pebble.log" >&2
    exit 1
}

log "step 7: certkeeper check (validates the config and paths)"
ck check || fail "certkeeper check found problems"

log "step 8: certkeeper renew: nothing is installed yet, so both certificates are ordered"
ck renew || fail "the first renew failed"
for f in demo.fullchain.pem demo.key.pem demo.chain.pem wildcard.fullchain.pem wildcard.key.pem; do
    [ -s "$tmp/certs/$f" ] || fail "renew exited 0 but $tmp/certs/$f was not installed"
done
ls -l "$tmp/certs"

log "step 9: the installed certificate, seen by openssl"
openssl x509 -in "$tmp/certs/demo.fullchain.pem" -noout -subject -issuer -serial -dates -ext subjectAltName

log "step 10: certkeeper renew again: both are fresh, so nothing is ordered and no hook runs"
ck renew || fail "the second renew failed"

log "step 11: certkeeper status"
ck status || fail "status failed"

log "step 12: certkeeper renew --force: renews even though nothing is due"
ck renew --force || fail "the forced renew failed"

log "step 13: the reload hook's log: one line per certificate per renewal"
cat "$tmp/hook.log"
echo
echo "what the hook got on stdin (demo):"
cat "$tmp/hook-stdin.demo.json"
echo

log "step 14: certkeeper status, after the forced renewal (new serials, new expiry)"
ck status || fail "status failed"
ck status --json || fail "status --json failed"

lines=$(wc -l <"$tmp/hook.log")
if [ "$lines" -ne 4 ]; then
    fail "expected the reload hook to fire 4 times (2 certificates x 2 renewals), it fired $lines times"
fi
log "demo finished in $(elapsed "$demo_start") s: 2 certificates issued, renewed by force, the hook fired $lines times"
