#!/usr/bin/env bash
# Daemon benchmark (a measurement, not a test): figures for `certkeeper run`.
#
#   scripts/bench-daemon.sh            # BENCH_CERTS=100 BENCH_IDLE=60 BENCH_DELETES=5
#
# 1. Starts Pebble + challtestsrv on free loopback ports (real HTTP-01 validation,
#    day-long certificates so nothing renews during the run).
# 2. Starts `certkeeper run` with BENCH_CERTS certificates and waits until all are issued
#    (startup issuance time).
# 3. Idle: samples the daemon's RSS and CPU time over BENCH_IDLE seconds, and counts what
#    it logged meanwhile (an idle daemon should log nothing).
# 4. Deletes a certificate file BENCH_DELETES times and measures the time until a valid
#    replacement is installed.
# Prints a table and writes it to target/bench/daemon.md.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
# shellcheck source=scripts/lib.sh
. "$repo/scripts/lib.sh"

N=${BENCH_CERTS:-100}
IDLE=${BENCH_IDLE:-60}
DELETES=${BENCH_DELETES:-5}

ensure_acme_test_deps
# shellcheck disable=SC2119 # no extra components needed
ensure_cargo
log "building certkeeper (release)"
cargo build --release --bin certkeeper
bin="$repo/${CARGO_TARGET_DIR:-target}/release/certkeeper"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/certkeeper-bench-daemon.XXXXXX")
pids=()
cleanup() {
    local rc=$?
    stop_pids
    rm -rf "$tmp"
    exit "$rc"
}
trap cleanup EXIT

now_ms() { date +%s%3N; }

log "Pebble CA and ports"
pebble_tls "$tmp" "bench CA"
acme=$(free_port 16000 16099)
mgmt=$(free_port 16100 16199)
http=$(free_port 16200 16299)
tls=$(free_port 16300 16399)
dns=$(free_port 16400 16499)
cts=$(free_port 16500 16599)
metrics=$(free_port 16600 16699)
start_pebble "$tmp" "$acme" "$mgmt" "$http" "$tls" "$dns" "$cts" 86400
wait_pebble "$tmp" "$acme" "$cts" >/dev/null

mkdir -p "$tmp/certs"
{
    cat <<TOML
state_dir = "$tmp/state"
metrics_listen = "127.0.0.1:$metrics"
[acme]
directory = "https://127.0.0.1:$acme/dir"
ca_bundle = "$tmp/pebble/ca.pem"
[defaults]
http01_listen = "127.0.0.1:$http"
TOML
    for i in $(seq "$N"); do
        printf '[[cert]]\nname = "c%d"\ndomains = ["c%d.bench.test"]\ncert_path = "%s/certs/c%d.pem"\nkey_path = "%s/certs/c%d.key"\n' \
            "$i" "$i" "$tmp" "$i" "$tmp" "$i"
    done
} >"$tmp/ck.toml"

log "starting certkeeper run with $N certificates"
t0=$(now_ms)
"$bin" -c "$tmp/ck.toml" run >"$tmp/daemon.log" 2>&1 &
dpid=$!
pids+=("$dpid")
valid_count() {
    "$bin" -c "$tmp/ck.toml" status --json | grep -c '"state": "valid"' || true
}
while [ "$(valid_count)" -lt "$N" ]; do
    kill -0 "$dpid" || { cat "$tmp/daemon.log"; exit 1; }
    sleep 0.5
done
startup_ms=$(($(now_ms) - t0))
echo "all $N certificates issued in ${startup_ms} ms"
sleep 2

log "idle for ${IDLE}s"
cpu_ticks() { awk '{print $14 + $15}' "/proc/$dpid/stat"; }
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$dpid/status"; }
hz=$(getconf CLK_TCK)
lines0=$(wc -l <"$tmp/daemon.log")
c0=$(cpu_ticks)
max_rss=0
for _ in $(seq "$IDLE"); do
    r=$(rss_kb)
    [ "$r" -gt "$max_rss" ] && max_rss=$r
    sleep 1
done
c1=$(cpu_ticks)
lines1=$(wc -l <"$tmp/daemon.log")
idle_cpu_ms=$(((c1 - c0) * 1000 / hz))
idle_lines=$((lines1 - lines0))
threads=$(awk '/^Threads/ {print $2}' "/proc/$dpid/status")
echo "idle: RSS max ${max_rss} kB, CPU ${idle_cpu_ms} ms over ${IDLE}s, ${idle_lines} log lines, ${threads} threads"

log "deleting a certificate file $DELETES times"
times=()
for k in $(seq "$DELETES"); do
    f="$tmp/certs/c$k.pem"
    before=$(sha256sum "$f" | cut -d' ' -f1)
    t0=$(now_ms)
    rm -f "$f"
    while true; do
        if [ -s "$f" ] && [ "$(sha256sum "$f" | cut -d' ' -f1)" != "$before" ] \
            && "$bin" -c "$tmp/ck.toml" status --json | grep -A12 "\"name\": \"c$k\"" | grep -q '"state": "valid"'; then
            break
        fi
        [ $(($(now_ms) - t0)) -gt 30000 ] && { echo "not reinstalled within 30 s" >&2; exit 1; }
        sleep 0.02
    done
    times+=($(($(now_ms) - t0)))
done
sorted=$(printf '%s\n' "${times[@]}" | sort -n | tr '\n' ' ')
median=$(printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
echo "deletion -> reinstalled: ${sorted}ms (median ${median} ms)"

mkdir -p "$repo/target/bench"
{
    echo "# certkeeper daemon benchmark ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores)"
    echo
    echo "| figure | value |"
    echo "|---|---|"
    echo "| certificates | $N |"
    echo "| startup: all issued (Pebble, real HTTP-01) | ${startup_ms} ms |"
    echo "| idle RSS (max over ${IDLE}s) | ${max_rss} kB |"
    echo "| idle CPU over ${IDLE}s | ${idle_cpu_ms} ms |"
    echo "| log lines while idle | ${idle_lines} |"
    echo "| threads | ${threads} |"
    echo "| external deletion -> valid reinstall (median of $DELETES) | ${median} ms (all: ${sorted}) |"
} | tee "$repo/target/bench/daemon.md"
