#!/usr/bin/env bash
# Exercises the shipped hooks in hooks/ for real: signals a live process,
# builds a haproxy bundle and checks its mode, publishes and clears TXT
# records in a pebble-challtestsrv started on a free loopback port, and
# checks the error paths. Runs shellcheck on them too when it is installed.
# scripts/test.sh runs this; it can also run alone.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib.sh
. "$repo/scripts/lib.sh"
hooks="$repo/hooks"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/certkeeper-hooks.XXXXXX")
pids=()
cleanup() {
    local pid
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT

checks=0
ok() {
    checks=$((checks + 1))
    echo "ok: $*"
}
die() {
    echo "FAIL: $*" >&2
    exit 1
}
# expect_fail DESCRIPTION CMD...: CMD must exit non-zero and say something on stderr.
expect_fail() {
    local what=$1 err
    shift
    if "$@" >/dev/null 2>"$tmp/err"; then die "$what: succeeded but should have failed"; fi
    err=$(cat "$tmp/err")
    [ -n "$err" ] || die "$what: failed without a message on stderr"
    ok "$what ($err)"
}

if command -v shellcheck >/dev/null 2>&1; then
    shellcheck -s sh "$hooks"/*
    ok "shellcheck hooks/*"
else
    echo "shellcheck not installed; skipping the lint of hooks/"
fi
for h in "$hooks"/*; do
    [ -x "$h" ] || die "$h is not executable"
    head -n 1 "$h" | grep -qx '#!/bin/sh' || die "$h does not start with #!/bin/sh"
    grep -qx 'set -eu' "$h" || die "$h lacks set -eu"
done
ok "all hooks are executable POSIX sh with set -eu"

# --- signal-pidfile ---------------------------------------------------------
sh -c 'trap "echo HUP >>\"$1\"" HUP; trap "echo USR1 >>\"$1\"" USR1; while :; do sleep 0.05; done' \
    sh "$tmp/signals" &
pids+=("$!")
echo "$!" >"$tmp/server.pid"
sleep 0.2
"$hooks/signal-pidfile" "$tmp/server.pid" >/dev/null
for _ in $(seq 50); do grep -qx HUP "$tmp/signals" 2>/dev/null && break; sleep 0.05; done
grep -qx HUP "$tmp/signals" || die "signal-pidfile: HUP not received"
ok "signal-pidfile delivers HUP by default"
"$hooks/signal-pidfile" "$tmp/server.pid" SIGUSR1 >/dev/null
for _ in $(seq 50); do grep -qx USR1 "$tmp/signals" && break; sleep 0.05; done
grep -qx USR1 "$tmp/signals" || die "signal-pidfile: USR1 not received"
ok "signal-pidfile delivers a named signal"
expect_fail "signal-pidfile: missing pidfile" "$hooks/signal-pidfile" "$tmp/nope.pid"
echo "12ab" >"$tmp/bad.pid"
expect_fail "signal-pidfile: garbage pid" "$hooks/signal-pidfile" "$tmp/bad.pid"
echo 0 >"$tmp/zero.pid"
expect_fail "signal-pidfile: pid 0" "$hooks/signal-pidfile" "$tmp/zero.pid"
sh -c 'exit 0' &
dead=$!
wait "$dead" || true
echo "$dead" >"$tmp/dead.pid"
expect_fail "signal-pidfile: dead process" "$hooks/signal-pidfile" "$tmp/dead.pid"

# --- haproxy-bundle ---------------------------------------------------------
mkdir -p "$tmp/tls" "$tmp/haproxy"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=hooks.test \
    -keyout "$tmp/tls/key.pem" -out "$tmp/tls/fullchain.pem" 2>/dev/null
export CERTKEEPER_CERT_PATH="$tmp/tls/fullchain.pem" CERTKEEPER_KEY_PATH="$tmp/tls/key.pem"
(umask 022 && echo '{"name":"x"}' | "$hooks/haproxy-bundle" "$tmp/haproxy/x.pem" touch "$tmp/reloaded" >/dev/null)
[ "$(stat -c %a "$tmp/haproxy/x.pem")" = 600 ] || die "haproxy-bundle: bundle mode is not 0600"
[ -e "$tmp/reloaded" ] || die "haproxy-bundle: reload command did not run"
openssl x509 -in "$tmp/haproxy/x.pem" -noout || die "haproxy-bundle: no certificate in the bundle"
openssl pkey -in "$tmp/haproxy/x.pem" -noout || die "haproxy-bundle: no key in the bundle"
[ "$(grep -c BEGIN "$tmp/haproxy/x.pem")" = 2 ] || die "haproxy-bundle: expected 2 PEM blocks"
[ -z "$(find "$tmp/haproxy" -name '.*')" ] || die "haproxy-bundle: left a temp file behind"
ok "haproxy-bundle writes chain + key, mode 0600, then runs the reload command"
chmod 0644 "$tmp/haproxy/x.pem"
"$hooks/haproxy-bundle" "$tmp/haproxy/x.pem" >/dev/null
[ "$(stat -c %a "$tmp/haproxy/x.pem")" = 640 ] || die "haproxy-bundle: existing mode not kept minus other bits"
ok "haproxy-bundle keeps an existing file's mode, never world-readable"
expect_fail "haproxy-bundle: failing reload command" "$hooks/haproxy-bundle" "$tmp/haproxy/x.pem" false
CERTKEEPER_KEY_PATH="$tmp/tls/fullchain.pem" expect_fail "haproxy-bundle: key file without a key" \
    "$hooks/haproxy-bundle" "$tmp/haproxy/x.pem"
expect_fail "haproxy-bundle: missing directory" "$hooks/haproxy-bundle" "$tmp/nodir/x.pem"
unset CERTKEEPER_CERT_PATH CERTKEEPER_KEY_PATH
expect_fail "haproxy-bundle: not run by certkeeper" "$hooks/haproxy-bundle" "$tmp/haproxy/x.pem"

# --- systemctl-reload (with a stand-in systemctl) ---------------------------
# shellcheck disable=SC2016 # a script body, expanded when it runs
printf '#!/bin/sh\necho "$*" >>"%s"\n[ "$3" != broken.service ]\n' "$tmp/systemctl.log" >"$tmp/systemctl"
chmod 755 "$tmp/systemctl"
SYSTEMCTL="$tmp/systemctl" "$hooks/systemctl-reload" a.service b.service >/dev/null
[ "$(cat "$tmp/systemctl.log")" = "$(printf 'reload -- a.service\nreload -- b.service')" ] ||
    die "systemctl-reload: unexpected calls: $(cat "$tmp/systemctl.log")"
ok "systemctl-reload reloads each unit"
SYSTEMCTL="$tmp/systemctl" expect_fail "systemctl-reload: one unit fails" \
    "$hooks/systemctl-reload" a.service broken.service

# --- nginx-reload (with a stand-in nginx) -----------------------------------
# shellcheck disable=SC2016 # a script body, expanded when it runs
printf '#!/bin/sh\necho "$*" >>"%s"\n[ -z "${NGINX_BROKEN:-}" ] || [ "$1" != -t ] || { echo "emerg: bad cert"; exit 1; }\n' \
    "$tmp/nginx.log" >"$tmp/nginx"
chmod 755 "$tmp/nginx"
"$hooks/nginx-reload" "$tmp/nginx" >/dev/null
[ "$(cat "$tmp/nginx.log")" = "$(printf -- '-t\n-s reload')" ] || die "nginx-reload: unexpected calls"
ok "nginx-reload tests, then reloads"
: >"$tmp/nginx.log"
NGINX_BROKEN=1 expect_fail "nginx-reload: config test fails" "$hooks/nginx-reload" "$tmp/nginx"
grep -q 'emerg: bad cert' "$tmp/err" || die "nginx-reload: nginx -t output not shown"
[ "$(cat "$tmp/nginx.log")" = "-t" ] || die "nginx-reload: reloaded despite a failed test"
ok "nginx-reload does not reload after a failed test, and shows why"

# --- dns-challtestsrv against a real pebble-challtestsrv ----------------------
if command -v pebble-challtestsrv >/dev/null 2>&1; then
    dns_port=$(free_port 28053 28099)
    mgmt_port=$(free_port 28100 28199)
    pebble-challtestsrv -dns01 "127.0.0.1:$dns_port" -http01 "" -https01 "" -tlsalpn01 "" \
        -management "127.0.0.1:$mgmt_port" -defaultIPv6 "" >"$tmp/cts.log" 2>&1 &
    pids+=("$!")
    url="http://127.0.0.1:$mgmt_port"
    for _ in $(seq 100); do curl -s -o /dev/null "$url/" && break; sleep 0.1; done
    # Two values on one name, as for example.com + *.example.com; checked over
    # DNS when dig is installed.
    "$hooks/dns-challtestsrv" "$url" set _acme-challenge.hooks.test. value-one >/dev/null
    CHALLTESTSRV_URL="$url" "$hooks/dns-challtestsrv" set _acme-challenge.hooks.test value-two >/dev/null
    ok "dns-challtestsrv set (explicit URL, and URL from CHALLTESTSRV_URL without trailing dot)"
    if command -v dig >/dev/null 2>&1; then
        got=$(dig +short +time=2 +tries=1 @127.0.0.1 -p "$dns_port" TXT _acme-challenge.hooks.test | sort | tr '\n' ' ')
        [ "$got" = '"value-one" "value-two" ' ] || die "dns-challtestsrv: TXT records are '$got'"
        ok "TXT records visible over DNS: $got"
    fi
    "$hooks/dns-challtestsrv" "$url" clear _acme-challenge.hooks.test. value-one >/dev/null
    if command -v dig >/dev/null 2>&1; then
        got=$(dig +short +time=2 +tries=1 @127.0.0.1 -p "$dns_port" TXT _acme-challenge.hooks.test)
        [ -z "$got" ] || die "dns-challtestsrv: TXT records left after clear: $got"
    fi
    ok "dns-challtestsrv clear"
    expect_fail "dns-challtestsrv: value needing JSON escaping" \
        "$hooks/dns-challtestsrv" "$url" set _acme-challenge.hooks.test. 'a"b'
    expect_fail "dns-challtestsrv: unknown action" "$hooks/dns-challtestsrv" "$url" add x. y
    unused=$(free_port 28200 28299)
    expect_fail "dns-challtestsrv: server unreachable" \
        "$hooks/dns-challtestsrv" "http://127.0.0.1:$unused" set x. y
else
    echo "pebble-challtestsrv not installed; skipping dns-challtestsrv"
fi

echo "hooks: all $checks checks ok"
