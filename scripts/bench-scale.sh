#!/usr/bin/env bash
# Scale benchmark (issue 8): certkeeper, lego and certbot against one local Pebble
# (PEBBLE_VA_ALWAYS_VALID=1 PEBBLE_VA_NOSLEEP=1 PEBBLE_WFE_NONCEREJECT=0), in one run.
# A benchmark, not a test: it prints figures and never fails on them. Measures:
#   1. renewing N due certificates: certkeeper in one `renew --force` pass (default
#      max_concurrent_orders), lego one process per certificate
#      (`renew --days 999 --no-random-sleep`), certbot `renew --force-renewal`;
#   2. Pebble's ceiling: certkeeper with max_concurrent_orders = 0 (no limit);
#   3. a pass with nothing due over N for all three, over BENCH_SCALE_SIZES for certkeeper
#      (CA unreachable, and steady state against Pebble), over BENCH_SCALE_CERTBOT_SIZES
#      for certbot (generated lineages);
#   4. peak RSS of each (GNU time %M);
#   5. `certkeeper status` and `check` over BENCH_SCALE_SIZES.
# Inventories come from examples/gen_inventory.rs (a CA of the benchmark's own).
# Writes BENCHMARKS.md at the repo root and target/bench-scale/raw.tsv.
#
# Environment:
#   BENCH_SCALE_N=50                     due certificates renewed (section 1) and no-op at N
#   BENCH_SCALE_SIZES="100 1000 10000"   certkeeper no-op/status/check inventory sizes
#   BENCH_SCALE_CERTBOT_SIZES="1000"     certbot no-op sizes on generated lineages ("" skips)
#   BENCH_SCALE_CLIENTS="certkeeper lego certbot"
#   BENCH_SCALE_TIMEOUT=600              seconds allowed for each measured command
#   BENCH_SCALE_KEEP=1                   keep the temporary directory
#   BENCH_SCALE_OUT=<repo>/BENCHMARKS.md where the report goes
#   CERTKEEPER_BIN                       use this binary instead of building one
#   TMPDIR                               where the inventories go; creating files is most of
#                                        the generator's time (about 1.7 ms per file on this
#                                        machine's loaded ext4 /tmp), so tmpfs (/dev/shm) is faster
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
# shellcheck source=scripts/lib.sh
. "$repo/scripts/lib.sh"

N=${BENCH_SCALE_N:-50}
SIZES=${BENCH_SCALE_SIZES:-100 1000 10000}
CB_SIZES=${BENCH_SCALE_CERTBOT_SIZES-1000}
CLIENTS=${BENCH_SCALE_CLIENTS:-certkeeper lego certbot}
T=${BENCH_SCALE_TIMEOUT:-600}
REPORT=${BENCH_SCALE_OUT:-$repo/BENCHMARKS.md}
has() { case " $CLIENTS " in *" $1 "*) return 0 ;; esac; return 1; }

bench_start=$EPOCHREALTIME
log "prerequisites: pebble, lego, certbot, GNU time, openssl, curl"
ensure_debian_packages "pebble pebble-challtestsrv lego certbot /usr/bin/time openssl curl timeout" \
    pebble lego certbot time openssl curl ca-certificates coreutils

target_dir=${CARGO_TARGET_DIR:-target}
case $target_dir in /*) ;; *) target_dir="$repo/$target_dir" ;; esac
ensure_cargo
ensure_build_deps
log "building the inventory generator (and certkeeper unless CERTKEEPER_BIN is set)"
if [ -n "${CERTKEEPER_BIN:-}" ]; then
    cargo build --release --example gen_inventory
    bin=$CERTKEEPER_BIN
else
    cargo build --release --example gen_inventory --bin certkeeper
    bin="$target_dir/release/certkeeper"
fi
gen="$target_dir/release/examples/gen_inventory"
[ -x "$bin" ] || { echo "error: certkeeper binary not found at $bin" >&2; exit 1; }

out="$repo/target/bench-scale"
rm -rf "$out" && mkdir -p "$out/logs"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/certkeeper-bench-scale.XXXXXX")
mkdir -p "$tmp/runs"
pids=()
cleanup() {
    local rc=$?
    stop_pids
    if [ "${BENCH_SCALE_KEEP:-0}" = 1 ]; then echo "files kept in $tmp" >&2; else rm -rf "$tmp"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

pebble_tls "$tmp" "certkeeper bench-scale TLS CA"
ca="$tmp/pebble/ca.pem"
acme_port=$(free_port 14400 14499)
mgmt_port=$(free_port 15600 15699)
http01_port=$(free_port 15700 15799)
tls_port=$(free_port 15800 15899)
dns_port=$(free_port 18500 18599)
cts_port=$(free_port 18600 18699)
closed_port=$(free_port 19600 19699)
directory="https://127.0.0.1:$acme_port/dir"
down_dir="https://127.0.0.1:$closed_port/dir"
log "pebble on $directory (always valid, no sleep, no nonce rejection); unreachable CA: $down_dir"
start_pebble "$tmp" "$acme_port" "$mgmt_port" "$http01_port" "$tls_port" "$dns_port" "$cts_port" 7776000 \
    PEBBLE_VA_ALWAYS_VALID=1 PEBBLE_WFE_NONCEREJECT=0 PEBBLE_AUTHZREUSE=0
wait_pebble "$tmp" "$acme_port" "$cts_port" >/dev/null

pkg_version() { dpkg-query -W -f '${Version}' "$1" 2>/dev/null || echo unknown; }
v_certkeeper="$("$bin" --version 2>/dev/null | head -n1) ($bin, git $(git rev-parse --short HEAD 2>/dev/null || echo none))"
v_lego="lego $(pkg_version lego) (Debian)"
v_certbot="$(certbot --version 2>&1 | head -n1) (Debian $(pkg_version certbot))"
v_pebble="pebble $(pkg_version pebble) (Debian)"

raw="$out/raw.tsv"
printf 'key\tcount\twall_s\tmaxrss_kib\texit\tlog_lines\tnote\n' >"$raw"

# measure KEY COUNT NOTE CMD...: run CMD under timeout and GNU time; one row in raw.tsv.
measure() {
    local key=$1 count=$2 note=$3 t0 t1 rc=0 rss wall lines
    shift 3
    local logf="$tmp/runs/$key.log" tf="$tmp/runs/$key.time"
    t0=$EPOCHREALTIME
    /usr/bin/time -o "$tf" -f '%M' timeout -k 5 "$T" "$@" </dev/null >"$logf" 2>&1 || rc=$?
    t1=$EPOCHREALTIME
    wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
    rss=$(grep -E '^[0-9]+$' "$tf" | tail -n1 || true)
    lines=$(wc -l <"$logf")
    [ "$rc" -eq 0 ] || { note="${note:+$note; }exit $rc: $(grep -v '^\s*$' "$logf" | tail -n1 | cut -c1-160 | tr '\t|' '  ')"; cp "$logf" "$out/logs/"; }
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$key" "$count" "$wall" "${rss:-0}" "$rc" "$lines" "$note" >>"$raw"
    printf '  %-28s %6s  %8ss  %7s KiB  exit %s  %s lines  %s\n' "$key" "$count" "$wall" "${rss:-0}" "$rc" "$lines" "$note" >&2
}
# serials FILE...: one serial per line.
serials() { local f; for f in "$@"; do openssl x509 -in "$f" -noout -serial 2>/dev/null || echo none; done; }
# changed A B: how many lines differ.
changed() { paste -d ' ' "$1" "$2" | awk '$1 != $2' | wc -l; }
# get KEY COLUMN: a field of the row KEY of raw.tsv ("-" when absent).
get() { awk -F'\t' -v k="$1" -v c="$2" 'NR > 1 && $1 == k { v = $c } END { print (v == "" ? "-" : v) }' "$raw"; }
# add_note TEXT: append TEXT to the note of the last row of raw.tsv.
add_note() {
    awk -F'\t' -v OFS='\t' -v t="$1" -v last="$(wc -l <"$raw")" \
        'NR == last { $7 = ($7 == "" ? t : $7 "; " t) } { print }' "$raw" >"$raw.new" && mv "$raw.new" "$raw"
}
# ck_gen DIR COUNT DIRECTORY [gen args...]: a certkeeper inventory.
ck_gen() {
    local d=$1 c=$2 url=$3
    shift 3
    "$gen" "$d" "$c" --directory "$url" --ca-bundle "$ca" --http01-listen "127.0.0.1:$http01_port" "$@"
}
# ck_cfg SRC DST DIRECTORY [EXTRA]: a copy of SRC with another directory (and a line after it).
ck_cfg() {
    awk -v url="$2" -v extra="${4:-}" '/^directory = /{ print "directory = \"" url "\""; if (extra != "") print extra; next } { print }' "$1" >"$3"
}

# --- 1 and 2: renewing N due certificates --------------------------------------------
if has certkeeper; then
    log "certkeeper: renewing $N certificates (renew --force; first pass registers the account)"
    d="$tmp/ck-$N"
    ck_gen "$d" "$N" "$directory" >/dev/null
    measure "renew.certkeeper.first" "$N" "with account registration" "$bin" --config "$d/certkeeper.toml" renew --force
    serials "$d"/certs/n*.pem >"$tmp/s0"
    measure "renew.certkeeper" "$N" "" "$bin" --config "$d/certkeeper.toml" renew --force
    serials "$d"/certs/n*.pem >"$tmp/s1"
    add_note "replaced $(changed "$tmp/s0" "$tmp/s1")/$N"
    ck_cfg "$d/certkeeper.toml" "$directory" "$d/ceiling.toml" "max_concurrent_orders = 0"
    if "$bin" --config "$d/ceiling.toml" check >/dev/null 2>&1; then
        measure "renew.ceiling" "$N" "max_concurrent_orders = 0" "$bin" --config "$d/ceiling.toml" renew --force
    else
        printf 'renew.ceiling\t%s\t-\t-\t-\t-\tnot measured: this binary does not accept max_concurrent_orders\n' "$N" >>"$raw"
    fi
    serials "$d"/certs/n*.pem >"$tmp/s2"
    [ "$(get renew.ceiling 3)" = - ] || add_note "replaced $(changed "$tmp/s1" "$tmp/s2")/$N"
    measure "noop.$N.certkeeper.renewed" "$N" "Pebble, right after the renewals" "$bin" --config "$d/certkeeper.toml" renew
fi

lego_common=(env "LEGO_CA_CERTIFICATES=$ca" lego --server "$directory" --accept-tos
    --email bench@bench.test --path "$tmp/lego" --key-type ec256 --http --http.port "127.0.0.1:$http01_port")
# per_cert SCRIPT ARGS...: a script that runs `lego ... --domains n<i>.example ARGS` for
# each certificate, one process each, and exits with the number of failures.
per_cert() {
    local f=$1 i
    shift
    {
        echo '#!/bin/sh'
        echo 'fails=0'
        for ((i = 1; i <= N; i++)); do
            printf '%q ' "${lego_common[@]}" --domains "n$i.example" "$@"
            echo '>/dev/null 2>&1 || fails=$((fails + 1))'
        done
        echo 'exit $fails'
    } >"$f"
    chmod 755 "$f"
}
if has lego; then
    log "lego: $N certificates, one process each (run, then renew --days 999, then renew --days 30)"
    per_cert "$tmp/lego-run.sh" run
    per_cert "$tmp/lego-renew.sh" renew --days 999 --no-random-sleep
    per_cert "$tmp/lego-noop.sh" renew --days 30 --no-random-sleep
    measure "renew.lego.first" "$N" "lego run, with account registration" "$tmp/lego-run.sh"
    serials "$tmp"/lego/certificates/n*.example.crt >"$tmp/l0"
    measure "renew.lego" "$N" "" "$tmp/lego-renew.sh"
    serials "$tmp"/lego/certificates/n*.example.crt >"$tmp/l1"
    add_note "replaced $(changed "$tmp/l0" "$tmp/l1")/$N"
    measure "noop.$N.lego" "$N" "" "$tmp/lego-noop.sh"
fi

cb_common() {
    echo env "REQUESTS_CA_BUNDLE=$ca" certbot --server "$directory" --config-dir "$1/etc" \
        --work-dir "$1/work" --logs-dir "$1/logs" --non-interactive
}
if has certbot; then
    log "certbot: $N generated lineages, renew --force-renewal, then renew"
    cb="$tmp/cb-$N"
    # shellcheck disable=SC2046 # word splitting of cb_common is intended
    $(cb_common "$cb") register --agree-tos --register-unsafely-without-email >"$tmp/runs/cb-register.log" 2>&1 || true
    acct=$(basename "$(find "$cb/etc/accounts" -mindepth 3 -maxdepth 3 -type d 2>/dev/null | head -n1)")
    "$gen" "$cb/gen" "$N" --directory "$directory" --certbot "$cb/etc" --certbot-account "$acct" \
        --certbot-http01-port "$http01_port" >/dev/null
    serials "$cb"/etc/live/n*/cert.pem >"$tmp/c0"
    # shellcheck disable=SC2046
    measure "renew.certbot" "$N" "" $(cb_common "$cb") renew --force-renewal --no-random-sleep-on-renew
    serials "$cb"/etc/live/n*/cert.pem >"$tmp/c1"
    add_note "replaced $(changed "$tmp/c0" "$tmp/c1")/$N"
    # shellcheck disable=SC2046
    measure "noop.$N.certbot" "$N" "" $(cb_common "$cb") renew --no-random-sleep-on-renew
    add_note "$(grep -c '(skipped)' "$tmp/runs/noop.$N.certbot.log" || true) skipped as not due"
    for s in $CB_SIZES; do
        cbs="$tmp/cb-noop-$s"
        "$gen" "$cbs/gen" "$s" --directory "$directory" --certbot "$cbs/etc" --certbot-account "$acct" \
            --certbot-http01-port "$http01_port" >/dev/null
        mkdir -p "$cbs/etc/accounts" && cp -a "$cb/etc/accounts/." "$cbs/etc/accounts/"
        # shellcheck disable=SC2046
        measure "noop.$s.certbot" "$s" "generated lineages" $(cb_common "$cbs") renew --no-random-sleep-on-renew
        add_note "$(grep -c '(skipped)' "$tmp/runs/noop.$s.certbot.log" || true) skipped as not due"
    done
fi

# --- 3 and 5: no-op passes, status and check at scale ------------------------------------
if has certkeeper; then
    for s in $N $SIZES; do
        log "certkeeper: $s certificates, nothing due"
        d="$tmp/ck-noop-$s"
        ck_gen "$d" "$s" "$directory" >/dev/null
        ck_cfg "$d/certkeeper.toml" "$down_dir" "$d/down.toml"
        measure "noop.$s.certkeeper.down" "$s" "CA unreachable, fresh state" "$bin" --config "$d/down.toml" renew
        measure "noop.$s.certkeeper.down2" "$s" "CA unreachable, second pass" "$bin" --config "$d/down.toml" renew
        measure "noop.$s.certkeeper.first" "$s" "Pebble, fresh state" "$bin" --config "$d/certkeeper.toml" renew
        measure "noop.$s.certkeeper.steady" "$s" "Pebble, second pass" "$bin" --config "$d/certkeeper.toml" renew
        measure "status.$s" "$s" "" "$bin" --config "$d/certkeeper.toml" status
        measure "check.$s" "$s" "" "$bin" --config "$d/certkeeper.toml" check
        rm -rf "$d"
    done
fi
cp "$tmp/pebble.log" "$out/logs/pebble.log"

# --- the report ----------------------------------------------------------------------
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a + 0 > 0 && b + 0 > 0) printf "%.1f", a / b; else print "-" }'; }
mib() { awk -v k="$1" 'BEGIN { if (k + 0 > 0) printf "%.1f", k / 1024; else print "-" }'; }
row() {
    [ "$(get "$1" 1)" != - ] || return 0
    printf '| %s | %s | %s | %s | %s |\n' "$2" "$(get "$1" 2)" "$(get "$1" 3)" "$(mib "$(get "$1" 4)")" "$(get "$1" 7 | sed 's/^-$//')$( [ "$(get "$1" 5)" = 0 ] || [ "$(get "$1" 5)" = - ] || echo " (exit $(get "$1" 5))")"
}
total=$(awk -v a="$bench_start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.0f", b - a }')
ck=$(get renew.certkeeper 3); lg=$(get renew.lego 3); cbt=$(get renew.certbot 3); ceil=$(get renew.ceiling 3)
big=$(for s in $SIZES; do echo "$s"; done | sort -n | tail -n1)
k1=1000
cbn=$(get "noop.$k1.certbot" 3); ckn=$(get "noop.$k1.certkeeper.steady" 3); ckd=$(get "noop.$k1.certkeeper.down" 3)
cb50=$(get "noop.$N.certbot" 3)
{
    echo "# Scale benchmark (issue 8)"
    echo
    echo "Written by \`scripts/bench-scale.sh\` on $(date -u '+%Y-%m-%d %H:%M UTC'); total run ${total}s."
    echo "N = $N, sizes = $SIZES, certbot no-op sizes = ${CB_SIZES:-none}; files in $(df -T "$tmp" | awk 'NR == 2 { print $2 }') (TMPDIR=${TMPDIR:-/tmp})."
    echo
    echo "## Machine and versions"
    echo
    echo "- $(nproc) CPUs: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'); RAM $(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo); kernel $(uname -sr)"
    echo "- certkeeper: $v_certkeeper"
    echo "- $v_lego"
    echo "- $v_certbot"
    echo "- $v_pebble"
    echo
    echo "## Method"
    echo
    echo "- One Pebble for all, with PEBBLE_VA_ALWAYS_VALID=1 (no validation: the figures are the clients' and the CA's protocol work), PEBBLE_VA_NOSLEEP=1, PEBBLE_WFE_NONCEREJECT=0 (no badNonce rejection: Pebble's default 5% would make certbot fail runs and measure retries, not speed), PEBBLE_AUTHZREUSE=0, 90-day certificates."
    echo "- Renewing N: certkeeper \`renew --force\` over N \`[[cert]]\` entries in one process (the default max_concurrent_orders; a first forced pass registers the account and is not the figure); Pebble's ceiling is the same with \`max_concurrent_orders = 0\` (no limit); lego \`renew --days 999 --no-random-sleep\`, one process per certificate, sequentially, after \`lego run\` for each; certbot \`renew --force-renewal\` over N lineages (generated, with an account registered by \`certbot register\`; standalone HTTP-01). \"replaced\" counts certificates whose serial changed."
    echo "- No-op passes: certkeeper \`renew\` with nothing due, with acme.directory at a closed port (\"down\", fresh state, then a second pass) and against Pebble (\"first\" on a fresh state, then \"steady\", the second pass); lego \`renew --days 30\` per certificate; certbot \`renew\` (at N over the lineages it just renewed; at the larger sizes over generated lineages, which certbot reads like its own)."
    echo "- Inventories: \`examples/gen_inventory.rs\` (rcgen): a CA of the benchmark's own, P-256 leaves valid 90 days, SAN n<i>.example, with an AKI; keys 0600."
    echo "- Wall time of the whole command (EPOCHREALTIME); peak RSS by GNU time %M (for lego's loop: the largest single lego process). One run each: figures, not statistics. \"log lines\" is the number of lines the command printed."
    echo
    echo "## Renewing $N due certificates"
    echo
    echo "| what | certs | wall s | peak RSS MiB | note |"
    echo "|---|---:|---:|---:|---|"
    row renew.certkeeper "certkeeper, one pass"
    row renew.ceiling "certkeeper, no concurrency limit (Pebble's ceiling)"
    row renew.lego "lego, one process per certificate"
    row renew.certbot "certbot renew --force-renewal"
    row renew.certkeeper.first "(certkeeper first pass, with account)"
    row renew.lego.first "(lego run, with account)"
    echo
    echo "## Passes with nothing due"
    echo
    echo "| what | certs | wall s | peak RSS MiB | note |"
    echo "|---|---:|---:|---:|---|"
    for s in $N $SIZES; do
        for v in renewed down down2 first steady; do row "noop.$s.certkeeper.$v" "certkeeper renew, $v"; done
        row "noop.$s.lego" "lego renew --days 30, per certificate"
        row "noop.$s.certbot" "certbot renew"
    done
    for s in $CB_SIZES; do case " $N $SIZES " in *" $s "*) ;; *) row "noop.$s.certbot" "certbot renew" ;; esac; done
    echo
    echo "## status and check"
    echo
    echo "| what | certs | wall s | peak RSS MiB | note |"
    echo "|---|---:|---:|---:|---|"
    for s in $SIZES; do row "status.$s" "certkeeper status"; row "check.$s" "certkeeper check"; done
    echo
    echo "## Against the issue's targets"
    echo
    echo "| target | figure | met |"
    echo "|---|---|---|"
    r=$(ratio "$lg" "$ck"); echo "| renew $N: at least 15x faster than lego | ${r}x (lego ${lg}s, certkeeper ${ck}s) | $(awk -v r="$r" 'BEGIN { print (r != "-" && r >= 15) ? "yes" : "no" }') |"
    r=$(ratio "$ck" "$ceil"); echo "| renew $N: within 1.5x of Pebble's ceiling | ${r}x (ceiling ${ceil}s) | $(awk -v r="$r" 'BEGIN { print (r != "-" && r <= 1.5) ? "yes" : "no" }') |"
    r=$(ratio "$cbt" "$ck"); echo "| (renew $N vs certbot, no target) | ${r}x (certbot ${cbt}s) | - |"
    if [ "$cbn" != - ]; then
        r=$(ratio "$cbn" "$ckn"); rd=$(ratio "$cbn" "$ckd")
        echo "| no-op over 1,000: at least 50x faster than certbot | ${r}x steady, ${rd}x CA down (certbot ${cbn}s) | $(awk -v r="$r" 'BEGIN { print (r != "-" && r >= 50) ? "yes" : "no" }') |"
    elif [ "$cb50" != - ] && [ "$ckn" != - ]; then
        per=$(awk -v a="$cb50" -v n="$N" 'BEGIN { printf "%.4f", a / n * 1000 }')
        r=$(ratio "$per" "$ckn")
        echo "| no-op over 1,000: at least 50x faster than certbot (certbot per certificate at $N, x1000) | ${r}x | $(awk -v r="$r" 'BEGIN { print (r != "-" && r >= 50) ? "yes" : "no" }') |"
    fi
    for k in "noop.$big.certkeeper.steady" "noop.$big.certkeeper.down" "status.$big" "check.$big"; do
        w=$(get "$k" 3); m=$(mib "$(get "$k" 4)")
        echo "| $k: under 1 s and 60 MB | ${w}s, ${m} MiB | $(awk -v w="$w" -v m="$m" 'BEGIN { print (w != "-" && w < 1 && m != "-" && m < 57.2) ? "yes" : "no" }') |"
    done
    echo
    echo "Peak RSS curve (MiB) over $SIZES: no-op renew (steady) $(for s in $SIZES; do printf '%s ' "$(mib "$(get "noop.$s.certkeeper.steady" 4)")"; done)/ status $(for s in $SIZES; do printf '%s ' "$(mib "$(get "status.$s" 4)")"; done)/ check $(for s in $SIZES; do printf '%s ' "$(mib "$(get "check.$s" 4)")"; done)."
    echo
    echo "60 MB is taken as 57.2 MiB. Logs of failed commands: target/bench-scale/logs/."
} >"$REPORT"
log "results (also in $REPORT; raw figures in target/bench-scale/raw.tsv)"
cat "$REPORT"
