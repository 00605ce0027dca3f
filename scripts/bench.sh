#!/usr/bin/env bash
# Benchmark: certkeeper next to lego and certbot, on the same Pebble instance,
# in the same run. A benchmark, not a test: it prints figures and never fails
# on them. Works from any directory.
#
#   scripts/bench.sh                  # N=10 issuances per client per challenge
#   BENCH_N=20 scripts/bench.sh
#
# What it does:
#   1. installs pebble, lego, certbot, GNU time, openssl and curl with apt-get
#      (sudo when not root) if missing, and builds certkeeper (release);
#   2. starts pebble-challtestsrv (fake DNS: every name is 127.0.0.1) and
#      Pebble on free loopback ports, with PEBBLE_VA_NOSLEEP=1 and Pebble's
#      default 5% badNonce rejection;
#   3. for each challenge type (HTTP-01, then DNS-01) and each client in turn
#      (sequentially: they share Pebble's httpPort):
#        - one first issuance, which also registers the ACME account;
#        - N forced issuances of a fresh certificate (new key, new order, real
#          validation);
#        - BENCH_NOOP_N "no-op" renew passes, when nothing is due;
#      each invocation under `timeout` and GNU time (wall time, max RSS);
#   4. prints a table and writes it to target/bench/results.md, with the raw
#      figures in target/bench/raw.tsv and the logs of failed runs in
#      target/bench/logs/.
#
# An issuance counts as a failure when the client exits non-zero, times out,
# or exits 0 without installing a certificate with a new serial. Failures are
# counted and reported, with the client's last error line; the timing figures
# are over the successful runs only.
#
# Environment:
#   BENCH_N=10             forced issuances per client and challenge type
#   BENCH_NOOP_N=3         no-op renew passes per client and challenge type
#   BENCH_TIMEOUT=120      seconds allowed for each client invocation
#   BENCH_DNS=1            0 skips the DNS-01 round
#   BENCH_CLIENTS="certkeeper lego certbot"
#   BENCH_VALIDITY=7776000 Pebble's certificateValidityPeriod in seconds
#                          (90 days, like Let's Encrypt). With 1-hour
#                          certificates there is no honest no-op pass for the
#                          peers: lego's --days counts whole days (1 h left is
#                          "0 days", due for any --days >= 0) and certbot
#                          renews within 30 days by default.
#   BENCH_AUTHZREUSE=0     PEBBLE_AUTHZREUSE: 0 makes every issuance validate
#                          for real (Pebble's own default, 50, would let half
#                          of the orders skip validation at random)
#   BENCH_NONCEREJECT      PEBBLE_WFE_NONCEREJECT, unset = Pebble's default 5
#   BENCH_KEEP=1           keep the temporary directory
#   CERTKEEPER_BIN         use this binary instead of building one
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
# shellcheck source=scripts/lib.sh
. "$repo/scripts/lib.sh"

N=${BENCH_N:-10}
NOOP_N=${BENCH_NOOP_N:-3}
T=${BENCH_TIMEOUT:-120}
DNS_ROUND=${BENCH_DNS:-1}
CLIENTS=${BENCH_CLIENTS:-certkeeper lego certbot}
VALIDITY=${BENCH_VALIDITY:-7776000}
AUTHZREUSE=${BENCH_AUTHZREUSE:-0}
for v in N NOOP_N T VALIDITY AUTHZREUSE; do
    case ${!v} in
        '' | *[!0-9]*)
            echo "error: $v must be a non-negative integer, got '${!v}'" >&2
            exit 2
            ;;
    esac
done
for c in $CLIENTS; do
    case $c in
        certkeeper | lego | certbot) ;;
        *)
            echo "error: unknown client '$c' in BENCH_CLIENTS (certkeeper, lego, certbot)" >&2
            exit 2
            ;;
    esac
done

bench_start=$EPOCHREALTIME

log "prerequisites: pebble, pebble-challtestsrv, lego, certbot, GNU time, openssl, curl, cargo"
ensure_debian_packages "pebble pebble-challtestsrv lego certbot /usr/bin/time openssl curl timeout" \
    pebble lego certbot time openssl curl ca-certificates coreutils

if [ -n "${CERTKEEPER_BIN:-}" ]; then
    bin=$CERTKEEPER_BIN
else
    # shellcheck disable=SC2119 # no extra components needed
    ensure_cargo
    ensure_build_deps
    log "building certkeeper (cargo build --release)"
    cargo build --release --bin certkeeper
    target_dir=${CARGO_TARGET_DIR:-target}
    case $target_dir in
        /*) bin="$target_dir/release/certkeeper" ;;
        *) bin="$repo/$target_dir/release/certkeeper" ;;
    esac
fi
if [ ! -x "$bin" ]; then
    echo "error: certkeeper binary not found at $bin" >&2
    exit 1
fi

out="$repo/target/bench"
mkdir -p "$out"
rm -rf "$out/logs"
mkdir -p "$out/logs"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/certkeeper-bench.XXXXXX")
mkdir -p "$tmp/pebble" "$tmp/runs" "$tmp/hooks"

pids=()
cleanup() {
    local rc=$?
    stop_pids
    if [ "${BENCH_KEEP:-0}" = 1 ]; then
        echo "bench files kept in $tmp" >&2
    else
        rm -rf "$tmp"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log "a CA and a leaf for Pebble's HTTPS listener"
pebble_tls "$tmp" "certkeeper bench CA"
ca="$tmp/pebble/ca.pem"

acme_port=$(free_port 14300 14399)
pebble_mgmt_port=$(free_port 15300 15399)
http01_port=$(free_port 15400 15499)
tls_port=$(free_port 15500 15599)
dns_port=$(free_port 18300 18399)
cts_port=$(free_port 18400 18499)
directory="https://127.0.0.1:$acme_port/dir"
cts_url="http://127.0.0.1:$cts_port"

# Pebble's environment besides PEBBLE_VA_NOSLEEP=1 (which start_pebble sets).
pebble_env=("PEBBLE_AUTHZREUSE=$AUTHZREUSE")
if [ -n "${BENCH_NONCEREJECT:-}" ]; then
    pebble_env+=("PEBBLE_WFE_NONCEREJECT=$BENCH_NONCEREJECT")
fi
nonce_desc=${BENCH_NONCEREJECT:-5}%
[ -n "${BENCH_NONCEREJECT:-}" ] || nonce_desc="$nonce_desc (default)"

log "starting pebble-challtestsrv and pebble: $directory, HTTP-01 on 127.0.0.1:$http01_port"
start_pebble "$tmp" "$acme_port" "$pebble_mgmt_port" "$http01_port" "$tls_port" "$dns_port" "$cts_port" \
    "$VALIDITY" "${pebble_env[@]}"
wait_pebble "$tmp" "$acme_port" "$cts_port" >/dev/null

# DNS-01 hooks for the peers, as thin wrappers around the shipped hook that
# certkeeper uses, so all three publish TXT records the same way.
cat >"$tmp/hooks/lego-exec" <<HOOK
#!/bin/sh
# lego --dns exec: EXEC_PATH present|cleanup <fqdn> <value>
case \$1 in
    present) exec "$repo/hooks/dns-challtestsrv" "$cts_url" set "\$2" "\$3" ;;
    cleanup) exec "$repo/hooks/dns-challtestsrv" "$cts_url" clear "\$2" ;;
    *) exit 0 ;;
esac
HOOK
cat >"$tmp/hooks/certbot-auth" <<HOOK
#!/bin/sh
exec "$repo/hooks/dns-challtestsrv" "$cts_url" set "_acme-challenge.\$CERTBOT_DOMAIN." "\$CERTBOT_VALIDATION"
HOOK
cat >"$tmp/hooks/certbot-cleanup" <<HOOK
#!/bin/sh
exec "$repo/hooks/dns-challtestsrv" "$cts_url" clear "_acme-challenge.\$CERTBOT_DOMAIN."
HOOK
chmod 755 "$tmp/hooks/"*

# Versions.
pkg_version() { dpkg-query -W -f '${Version}' "$1" 2>/dev/null || echo unknown; }
if [ -n "${CERTKEEPER_BIN:-}" ]; then
    v_certkeeper="$("$bin" --version 2>/dev/null | head -n1) (CERTKEEPER_BIN=$bin)"
else
    v_certkeeper="$("$bin" --version 2>/dev/null | head -n1) (built from $(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo no-git)$(git -C "$repo" diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || echo ' with uncommitted changes'))"
fi
v_lego="lego $(pkg_version lego) (Debian; \`lego --version\` says \"$(lego --version 2>/dev/null | head -n1)\")"
v_certbot="$(certbot --version 2>&1 | head -n1) (Debian $(pkg_version certbot))"
v_pebble="pebble $(pkg_version pebble) (Debian)"
log "versions: $v_certkeeper; $v_lego; $v_certbot; $v_pebble"

raw="$tmp/raw.tsv"
printf 'client\tchallenge\tphase\ti\twall_s\tmaxrss_kib\texit\tresult\tnote\n' >"$raw"

# serial_of FILE: the certificate's serial, or "none".
serial_of() {
    if [ -s "$1" ]; then
        openssl x509 -in "$1" -noout -serial 2>/dev/null | sed 's/^serial=//' || echo none
    else
        echo none
    fi
}

# last_error LOG: one line that says why a run failed.
last_error() {
    local line
    line=$(grep -E -i 'error|fail|problem|urn:ietf|timed out|refused' "$1" 2>/dev/null |
        grep -v -E -i 'error: 0|errors?=0|^\s*$' | tail -n1 || true)
    [ -n "$line" ] || line=$(grep -v '^\s*$' "$1" 2>/dev/null | tail -n1 || true)
    line=${line//$'\t'/ }
    printf '%s' "${line:0:240}"
}

# servers_alive: pebble and challtestsrv are still running. Anything else on
# the machine (a test suite signalling a stale, reused pid) could kill them,
# and every later figure would then be a bogus failure: the run stops instead.
aborted=""
servers_alive() {
    local pid
    for pid in "${pids[@]}"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            aborted="pebble or pebble-challtestsrv (pid $pid) exited unexpectedly during the run (killed from outside the benchmark, or crashed); the figures below are incomplete (Pebble's log: target/bench/logs/pebble.log)"
            echo "error: $aborted" >&2
            return 1
        fi
    done
}

# measure CLIENT CHALLENGE PHASE I CERTFILE CMD...: run CMD under timeout and
# GNU time, append one row to the raw table. PHASE "noop" expects the
# certificate to stay; the others expect a new serial.
measure() {
    local client=$1 chal=$2 phase=$3 i=$4 certfile=$5
    shift 5
    local tag="$client-$chal-$phase-$i" before after t0 t1 rc=0 rss wall result note=""
    local logf="$tmp/runs/$tag.log" tf="$tmp/runs/$tag.time"
    servers_alive || return 1
    before=$(serial_of "$certfile")
    t0=$EPOCHREALTIME
    /usr/bin/time -o "$tf" -f '%M' timeout -k 5 "$T" "$@" </dev/null >"$logf" 2>&1 || rc=$?
    t1=$EPOCHREALTIME
    wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
    rss=$(grep -E '^[0-9]+$' "$tf" | tail -n1 || true)
    [ -n "$rss" ] || rss=0
    after=$(serial_of "$certfile")
    # A run that failed because the CA went away is not the client's failure.
    servers_alive || return 1
    if [ "$rc" -ne 0 ]; then
        result=fail
        if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
            note="timed out after ${T}s"
        else
            note="exit $rc: $(last_error "$logf")"
        fi
    elif [ "$phase" = noop ]; then
        result=ok
        if [ "$after" != "$before" ]; then
            result=fail
            note="the no-op pass issued a certificate"
        fi
    elif [ "$after" = none ]; then
        result=fail
        note="exit 0 but no certificate at $certfile"
    elif [ "$after" = "$before" ]; then
        result=fail
        note="exit 0 but the certificate was not replaced (same serial)"
    else
        result=ok
    fi
    if [ "$result" = fail ]; then
        cp "$logf" "$out/logs/$tag.log"
        # certbot prints one line; the traceback is in its own log.
        local lelog="$tmp/certbot-$chal/logs/letsencrypt.log" cause
        if [ "$client" = certbot ] && [ -f "$lelog" ]; then
            cp "$lelog" "$out/logs/$tag.letsencrypt.log"
            # certbot 2.1 can mask an ACME error with "AttributeError: can't
            # set attribute"; name the ACME error that came first.
            cause=$(grep -E '^acme\.messages\.Error: ' "$lelog" | tail -n1 | cut -c1-160 || true)
            if [ -n "$cause" ] && [ "$rc" -ne 0 ]; then
                note="$note (certbot's log: ${cause#acme.messages.Error: })"
            fi
        fi
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
        "$client" "$chal" "$phase" "$i" "$wall" "$rss" "$rc" "$result" "$note" >>"$raw"
    printf '  %-10s %-6s %-5s %3s  %7ss  %6s MiB  %s%s\n' "$client" "$chal" "$phase" "$i" "$wall" \
        "$(awk -v k="$rss" 'BEGIN { printf "%.1f", k / 1024 }')" "$result" "${note:+  ($note)}" >&2
}

# run_client CLIENT CHALLENGE: first issuance, N forced, NOOP_N no-op passes.
run_client() {
    local client=$1 chal=$2 dir="$tmp/$1-$2" i
    local domain="$client-$chal.bench.test"
    mkdir -p "$dir"
    local first=() again=() noop=() certfile
    case $client in
        certkeeper)
            local challenge_cfg
            if [ "$chal" = http ]; then
                challenge_cfg="challenge = \"http-01\"
http01_listen = \"127.0.0.1:$http01_port\""
            else
                challenge_cfg="challenge = \"dns-01\"
dns01_hook = [\"$repo/hooks/dns-challtestsrv\", \"$cts_url\"]"
            fi
            cat >"$dir/certkeeper.toml" <<TOML
# Written by scripts/bench.sh.
state_dir = "$dir/state"

[acme]
directory = "$directory"
ca_bundle = "$ca"
contact = ["mailto:bench@bench.test"]

[defaults]
renew_before = "33%"
key_type = "ecdsa-p256"
$challenge_cfg
hook_timeout = "60s"

[[cert]]
name = "bench"
domains = ["$domain"]
cert_path = "$dir/certs/fullchain.pem"
key_path = "$dir/certs/key.pem"
TOML
            mkdir -p "$dir/certs"
            certfile="$dir/certs/fullchain.pem"
            first=("$bin" --config "$dir/certkeeper.toml" renew)
            again=("$bin" --config "$dir/certkeeper.toml" renew --force)
            noop=("$bin" --config "$dir/certkeeper.toml" renew)
            ;;
        lego)
            local common=(env "LEGO_CA_CERTIFICATES=$ca" lego --server "$directory" --accept-tos
                --email bench@bench.test --path "$dir/lego" --key-type ec256 --domains "$domain")
            if [ "$chal" = http ]; then
                common+=(--http --http.port "127.0.0.1:$http01_port")
            else
                # --dns.disable-cp: lego then checks the TXT record on the
                # resolver only; its full check looks up the zone's SOA, which
                # challtestsrv answers with NOTIMP, and fails after 60 s.
                common=(env "EXEC_PATH=$tmp/hooks/lego-exec" "${common[@]}"
                    --dns exec --dns.resolvers "127.0.0.1:$dns_port" --dns.disable-cp)
            fi
            certfile="$dir/lego/certificates/$domain.crt"
            first=("${common[@]}" run)
            again=("${common[@]}" renew --days 100000 --no-random-sleep)
            noop=("${common[@]}" renew --days 30 --no-random-sleep)
            ;;
        certbot)
            local common=(env "REQUESTS_CA_BUNDLE=$ca" certbot --server "$directory"
                --config-dir "$dir/etc" --work-dir "$dir/work" --logs-dir "$dir/logs"
                --agree-tos --register-unsafely-without-email --non-interactive
                --key-type ecdsa --elliptic-curve secp256r1)
            local issue=(certonly --cert-name bench -d "$domain")
            if [ "$chal" = http ]; then
                issue+=(--standalone --preferred-challenges http
                    --http-01-port "$http01_port" --http-01-address 127.0.0.1)
            else
                issue+=(--manual --preferred-challenges dns
                    --manual-auth-hook "$tmp/hooks/certbot-auth"
                    --manual-cleanup-hook "$tmp/hooks/certbot-cleanup")
            fi
            certfile="$dir/etc/live/bench/cert.pem"
            first=("${common[@]}" "${issue[@]}")
            again=("${common[@]}" "${issue[@]}" --force-renewal)
            noop=("${common[@]}" renew --no-random-sleep-on-renew)
            ;;
    esac
    measure "$client" "$chal" first 1 "$certfile" "${first[@]}" || return 1
    for ((i = 1; i <= N; i++)); do
        measure "$client" "$chal" issue "$i" "$certfile" "${again[@]}" || return 1
    done
    for ((i = 1; i <= NOOP_N; i++)); do
        measure "$client" "$chal" noop "$i" "$certfile" "${noop[@]}" || return 1
    done
}

challenges=(http)
[ "$DNS_ROUND" = 0 ] || challenges+=(dns)
for chal in "${challenges[@]}"; do
    for client in $CLIENTS; do
        log "$client, ${chal^^}-01: 1 first issuance (with account registration), $N forced, $NOOP_N no-op"
        run_client "$client" "$chal" || break 2
    done
done

cp "$raw" "$out/raw.tsv"
cp "$tmp/pebble.log" "$out/logs/pebble.log"

# stats CLIENT CHALLENGE PHASE: "runs fails median p90 min max rss_max_mib"
# over the successful runs (nearest-rank p90).
stats() {
    awk -F'\t' -v c="$1" -v ch="$2" -v ph="$3" '
        NR > 1 && $1 == c && $2 == ch && $3 == ph {
            runs++
            if ($8 != "ok") { fails++; next }
            w[++n] = $5
            if ($6 + 0 > rss) rss = $6 + 0
        }
        END {
            if (n == 0) { printf "%d %d - - - - -\n", runs, fails; exit }
            for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (w[j] + 0 < w[i] + 0) { t = w[i]; w[i] = w[j]; w[j] = t }
            med = (n % 2) ? w[(n + 1) / 2] : (w[n / 2] + w[n / 2 + 1]) / 2
            k = int(0.9 * n); if (k < 0.9 * n) k++; if (k < 1) k = 1
            printf "%d %d %.2f %.2f %.2f %.2f %.1f\n", runs, fails + 0, med, w[k], w[1], w[n], rss / 1024
        }' "$raw"
}

total=$(awk -v a="$bench_start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.0f", b - a }')
{
    echo "# certkeeper benchmark: certkeeper, lego and certbot on one Pebble"
    echo
    echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, $(uname -sr); total run ${total}s."
    echo
    echo "- certkeeper: $v_certkeeper"
    echo "- $v_lego"
    echo "- $v_certbot"
    echo "- $v_pebble, PEBBLE_VA_NOSLEEP=1, badNonce rejection ${nonce_desc}, PEBBLE_AUTHZREUSE=$AUTHZREUSE, certificates valid ${VALIDITY}s"
    echo "- Real validation: HTTP-01 by each client's own responder on Pebble's httpPort (certkeeper http01_listen, lego --http, certbot --standalone); DNS-01 through pebble-challtestsrv via hooks/dns-challtestsrv (certkeeper dns01_hook, lego --dns exec, certbot --manual hooks). ECDSA P-256 keys for all three."
    echo "- first = first issuance, including account registration; issue = a forced issuance of a fresh certificate (certkeeper renew --force, lego renew --days 100000, certbot certonly --force-renewal), $N per client; no-op = a renew pass with nothing due (certkeeper renew, lego renew --days 30, certbot renew), $NOOP_N per client."
    echo "- Times are wall seconds per invocation over successful runs (p90 nearest-rank); max RSS by GNU time. A failure is a non-zero exit, a timeout (${T}s) or no new certificate."
    echo
    if [ -n "$aborted" ]; then
        echo "**INCOMPLETE:** $aborted."
        echo
    fi
    echo "| client | challenge | phase | runs | failures | median s | p90 s | min s | max s | max RSS MiB |"
    echo "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"
    for chal in "${challenges[@]}"; do
        for phase in issue first noop; do
            for client in $CLIENTS; do
                read -r runs fails med p90 mn mx rss < <(stats "$client" "$chal" "$phase")
                printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' \
                    "$client" "${chal^^}-01" "$phase" "$runs" "$fails" "$med" "$p90" "$mn" "$mx" "$rss"
            done
        done
    done
    echo
    echo "What shapes the peers' figures (Pebble 2.4.0 sends no Retry-After):"
    echo
    echo "- lego re-checks a pending authorization after a fixed 5 s when the CA gives no Retry-After, so most of its issuances take 5-8 s whatever the machine (when its first look already finds the authorization valid, under 1 s); its DNS-01 exec provider also waits its 2 s polling interval before answering the challenge. lego runs DNS-01 with --dns.disable-cp, because its full propagation check looks up the zone's SOA, which challtestsrv answers with NOTIMP."
    echo "- certbot's times include starting Python (about the no-op time)."
    nfail=$(awk -F'\t' 'NR > 1 && $8 != "ok"' "$raw" | wc -l)
    echo
    if [ "$nfail" -eq 0 ]; then
        echo "No failures."
    else
        echo "Failures ($nfail; logs in target/bench/logs/):"
        echo
        awk -F'\t' 'NR > 1 && $8 != "ok" {
            note = $9; gsub(/\|/, "\\|", note)
            printf "- %s %s-01 %s #%s (%.2fs): %s\n", $1, toupper($2), $3, $4, $5, note }' "$raw"
    fi
} >"$out/results.md"

log "results (also in target/bench/results.md; raw figures in target/bench/raw.tsv)"
cat "$out/results.md"
if [ -n "$aborted" ]; then
    exit 1
fi
