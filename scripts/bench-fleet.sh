#!/usr/bin/env bash
# Fleet benchmark (a measurement, not a test): 3 `certkeeper run` replicas coordinated
# through a 3-member etcd, renewing one certificate from Pebble.
#
#   scripts/bench-fleet.sh          # BENCH_RENEWALS=20 BENCH_TAKEOVERS=3 BENCH_IDLE=60
#
# 1. Builds certkeeper (release), starts Pebble + pebble-challtestsrv (BENCH_VALIDITY-second
#    certificates, real HTTP-01 validation, no authorization reuse), a 3-member etcd cluster
#    and 3 replicas (own state_dir, own files, own metrics port; the same [cluster] prefix
#    and seal key; lease_ttl BENCH_LEASE_TTL). Everything listens on 127.0.0.1.
#    HTTP-01: with BENCH_HTTP01=proxy (default) Pebble's httpPort is a small TCP proxy that
#    hands each connection to the replicas in turn (the next one when a replica is down),
#    like a load balancer; so every replica answers challenges, and the takeover may kill
#    any replica. With BENCH_HTTP01=direct, replica 0 listens on Pebble's httpPort itself,
#    and the takeover never kills replica 0 (nobody else could answer Pebble).
# 2. (a) + (b): waits for BENCH_RENEWALS renewals installed on all 3 replicas. Each
#    replica's reload hook appends "<time> <serial>" to a file right after its install; the
#    orderer of a serial is the holder of the lock key (`etcdctl watch <prefix>/locks/`)
#    taken last before that serial's first install. (a) is the time from the orderer's
#    install to the last replica's install; (b) counts Pebble's "Added order" (new orders)
#    and "Issued certificate" (finalized orders) lines per renewal.
# 3. (c): BENCH_TAKEOVERS times, waits for the next order in flight (a PUT on
#    <prefix>/orders/), reads the lock holder (`etcdctl get <prefix>/locks/site`), SIGKILLs
#    it, and measures the time until another replica installs a new serial. Then restarts
#    the killed replica and measures until it has installed the current set.
# 4. (d): stops the replicas, replaces Pebble with one issuing day-long certificates (on a
#    new ACME port: a new CA), restarts the replicas with it, waits until every replica has
#    a day-long certificate (nothing is due afterwards), then sums etcd's
#    grpc_server_handled_total (completed RPCs) and grpc_server_msg_received_total (also
#    counts stream messages such as lease keep-alives) over the 3 members' /metrics before
#    and after BENCH_IDLE idle seconds, per replica and minute. A baseline with no replica
#    running is measured first.
# Prints a table on stdout (the narration goes to stderr).
#
# Environment:
#   BENCH_RENEWALS=20        renewals observed for (a) and (b)
#   BENCH_VALIDITY=30        Pebble's certificate lifetime (seconds) during (a)-(c)
#   BENCH_RENEW_BEFORE=50%   the replicas' renew_before
#   BENCH_LEASE_TTL=3s       [cluster] lease_ttl
#   BENCH_TAKEOVERS=3        SIGKILLs of the lock holder for (c) (0 skips)
#   BENCH_IDLE=60            idle window for (d), seconds (0 skips)
#   BENCH_BASELINE=15        etcd baseline window with no replica, seconds
#   BENCH_HTTP01=proxy       or direct (see 1.)
#   BENCH_PORT_BASE=17000    first port tried (free ports are taken upwards from it)
#   BENCH_MAX_SECONDS=3600   the whole run is stopped after this
#   BENCH_KEEP=1             keep the work directory (logs) and print its path
#   CERTKEEPER_BIN           use this binary instead of building one
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
# shellcheck source=scripts/lib.sh
. "$repo/scripts/lib.sh"

RENEWALS=${BENCH_RENEWALS:-20}
VALIDITY=${BENCH_VALIDITY:-30}
RENEW_BEFORE=${BENCH_RENEW_BEFORE:-50%}
LEASE_TTL=${BENCH_LEASE_TTL:-3s}
TAKEOVERS=${BENCH_TAKEOVERS:-3}
IDLE=${BENCH_IDLE:-60}
BASELINE=${BENCH_BASELINE:-15}
HTTP01=${BENCH_HTTP01:-proxy}
port_cursor=${BENCH_PORT_BASE:-17000}
MAX_SECONDS=${BENCH_MAX_SECONDS:-3600}
for v in RENEWALS VALIDITY TAKEOVERS IDLE BASELINE port_cursor MAX_SECONDS; do
    case ${!v} in
        '' | *[!0-9]*)
            echo "error: $v must be a non-negative integer, got '${!v}'" >&2
            exit 2
            ;;
    esac
done
case $HTTP01 in
    proxy | direct) ;;
    *)
        echo "error: BENCH_HTTP01 must be proxy or direct, got '$HTTP01'" >&2
        exit 2
        ;;
esac
case $LEASE_TTL in
    *[0-9]s) lease_s=${LEASE_TTL%s} ;;
    *)
        echo "error: BENCH_LEASE_TTL must be whole seconds such as 3s, got '$LEASE_TTL'" >&2
        exit 2
        ;;
esac
if [ "$RENEWALS" -lt 1 ]; then
    echo "error: BENCH_RENEWALS must be at least 1" >&2
    exit 2
fi
N=3 # replicas (and etcd members)

ensure_acme_test_deps
ensure_debian_packages "python3 timeout" python3 coreutils
# shellcheck disable=SC2119 # no extra components needed
ensure_cargo
if [ -n "${CERTKEEPER_BIN:-}" ]; then
    bin=$CERTKEEPER_BIN
else
    log "building certkeeper (release)"
    cargo build --release --bin certkeeper
    bin="$repo/${CARGO_TARGET_DIR:-target}/release/certkeeper"
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/certkeeper-bench-fleet.XXXXXX")
pids=()
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_pids
    if [ "${BENCH_KEEP:-0}" = 1 ]; then
        echo "work directory kept: $tmp" >&2
    else
        rm -rf "$tmp"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'echo "error: stopped (BENCH_MAX_SECONDS=$MAX_SECONDS, or a signal)" >&2; exit 143' TERM
(
    sleep "$MAX_SECONDS" &
    s=$!
    trap 'kill "$s" 2>/dev/null; exit 0' TERM
    wait "$s" && kill -TERM $$
) 2>/dev/null &
pids+=("$!")

export ETCDCTL_API=3
now_us() { echo "${EPOCHREALTIME/./}"; }
# take_port VAR: the next free loopback port at or above the cursor, into VAR.
take_port() {
    local p
    p=$(free_port "$port_cursor" 29999) || return 1
    port_cursor=$((p + 1))
    printf -v "$1" '%s' "$p"
}
# die MESSAGE: the message, the tail of every replica's log, exit 1.
die() {
    echo "error: $*" >&2
    local i
    for i in $(seq 0 $((N - 1))); do
        if [ -s "$tmp/r$i/log" ]; then
            echo "--- replica $i (node$i), last lines of $tmp/r$i/log:" >&2
            tail -n 15 "$tmp/r$i/log" >&2
        fi
    done
    exit 1
}
median() { sort -n | awk '{a[NR] = $1} END {if (NR) print a[int((NR + 1) / 2)]; else print "-"}'; }
maxof() { sort -n | tail -n 1; }
ms() { # MICROSECONDS -> whole milliseconds ("-" stays "-")
    case $1 in
        '' | *[!0-9-]*) echo "-" ;;
        *) awk -v us="$1" 'BEGIN {printf "%.0f", us / 1000}' ;;
    esac
}

# ---------------------------------------------------------------------------
log "ports, Pebble CA, seal key"
acme="" mgmt="" pebble_http="" pebble_tls_port="" dns="" cts=""
take_port acme
take_port mgmt
take_port pebble_http
take_port pebble_tls_port
take_port dns
take_port cts
client=() peer=() h01=() metrics=() etcd_pid=() proxy_pid=""
for i in $(seq 0 $((N - 1))); do
    take_port "client[$i]"
    take_port "peer[$i]"
    take_port "metrics[$i]"
    if [ "$HTTP01" = direct ] && [ "$i" = 0 ]; then
        h01[0]=$pebble_http
    else
        take_port "h01[$i]"
    fi
done
pebble_tls "$tmp" "fleet bench CA"
openssl rand -out "$tmp/seal.key" 32
chmod 600 "$tmp/seal.key"
prefix="/certkeeper/bench-$$"

start_ca() { # VALIDITY
    start_pebble "$tmp" "$acme" "$mgmt" "$pebble_http" "$pebble_tls_port" "$dns" "$cts" "$1" \
        PEBBLE_AUTHZREUSE=0
    wait_pebble "$tmp" "$acme" "$cts" >/dev/null
}
start_ca "$VALIDITY"

if [ "$HTTP01" = proxy ]; then
    cat >"$tmp/h01proxy.py" <<'PY'
# Pebble's httpPort -> the replicas' HTTP-01 responders, one connection each in turn (the
# next replica when one refuses), like a load balancer. Prints the port that answered.
import asyncio, itertools, sys

listen, backends = int(sys.argv[1]), [int(p) for p in sys.argv[2:]]
turn = itertools.count()

async def pipe(r, w):
    try:
        while data := await r.read(65536):
            w.write(data)
            await w.drain()
    except Exception:
        pass
    finally:
        w.close()

async def handle(cr, cw):
    start = next(turn)
    for k in range(len(backends)):
        port = backends[(start + k) % len(backends)]
        try:
            br, bw = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 2)
        except Exception:
            continue
        print(port, flush=True)
        await asyncio.gather(pipe(cr, bw), pipe(br, cw))
        return
    cw.close()

async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", listen)
    async with server:
        await server.serve_forever()

asyncio.run(main())
PY
    python3 "$tmp/h01proxy.py" "$pebble_http" "${h01[@]}" >"$tmp/h01proxy.log" 2>&1 &
    proxy_pid=$!
    pids+=("$!")
fi

# ---------------------------------------------------------------------------
log "etcd: $N members on 127.0.0.1"
cluster_spec=""
eps=""
for i in $(seq 0 $((N - 1))); do
    cluster_spec+="${cluster_spec:+,}bench$$-m$i=http://127.0.0.1:${peer[$i]}"
    eps+="${eps:+,}http://127.0.0.1:${client[$i]}"
done
for i in $(seq 0 $((N - 1))); do
    etcd --name "bench$$-m$i" --data-dir "$tmp/etcd/m$i" \
        --listen-client-urls "http://127.0.0.1:${client[$i]}" \
        --advertise-client-urls "http://127.0.0.1:${client[$i]}" \
        --listen-peer-urls "http://127.0.0.1:${peer[$i]}" \
        --initial-advertise-peer-urls "http://127.0.0.1:${peer[$i]}" \
        --initial-cluster "$cluster_spec" --initial-cluster-state new \
        --initial-cluster-token "bench-$$" >"$tmp/etcd-m$i.log" 2>&1 &
    etcd_pid[i]=$!
    pids+=("$!")
done
deadline=$((SECONDS + 30))
until etcdctl --endpoints "$eps" --command-timeout=2s endpoint health >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || { tail -n 20 "$tmp"/etcd-m*.log >&2; die "etcd not healthy within 30 s"; }
    sleep 0.5
done
etcd_version=$(etcd --version 2>/dev/null | awk '/etcd Version/ {print $3}')
ectl() { etcdctl --endpoints "$eps" --command-timeout=5s "$@"; }

# etcd_sum METRIC: the sum of METRIC over all members' /metrics (client port).
etcd_sum() {
    local i
    for i in $(seq 0 $((N - 1))); do
        curl -sf --max-time 5 "http://127.0.0.1:${client[$i]}/metrics"
    done | awk -v m="$1" 'index($0, m "{") == 1 {s += $NF} END {printf "%.0f\n", s}'
}
# etcd_by_method METRIC: "method count" lines summed over the members.
etcd_by_method() {
    local i
    for i in $(seq 0 $((N - 1))); do
        curl -sf --max-time 5 "http://127.0.0.1:${client[$i]}/metrics"
    done | awk -v m="$1" 'index($0, m "{") == 1 && match($0, /grpc_method="[^"]*"/) {
            s[substr($0, RSTART + 13, RLENGTH - 14)] += $NF
        } END {for (k in s) print k, s[k]}' | sort
}

base_h=0 base_m=0
if [ "$BASELINE" -gt 0 ]; then
    log "etcd baseline: ${BASELINE}s with no replica"
    h0=$(etcd_sum grpc_server_handled_total)
    m0=$(etcd_sum grpc_server_msg_received_total)
    sleep "$BASELINE"
    # The /metrics scrapes are plain HTTP, not gRPC: they do not count.
    base_h=$(($(etcd_sum grpc_server_handled_total) - h0))
    base_m=$(($(etcd_sum grpc_server_msg_received_total) - m0))
fi

# ---------------------------------------------------------------------------
log "$N replicas (lease_ttl $LEASE_TTL, ${VALIDITY}s certificates, renew_before $RENEW_BEFORE, HTTP-01 $HTTP01)"
# The reload hook: "<microseconds since the epoch> <serial>" right after each install.
cat >"$tmp/record-install" <<'SH'
#!/bin/sh
printf '%s %s\n' "$(date +%s%6N)" "$CERTKEEPER_SERIAL" >>"$1"
SH
chmod 755 "$tmp/record-install"
etcd_toml=$(for i in $(seq 0 $((N - 1))); do printf '"http://127.0.0.1:%s", ' "${client[$i]}"; done)
etcd_toml="[${etcd_toml%, }]"
rpid=()
for i in $(seq 0 $((N - 1))); do
    mkdir -p "$tmp/r$i/certs"
    : >"$tmp/r$i/installs"
    cat >"$tmp/r$i/certkeeper.toml" <<TOML
state_dir = "$tmp/r$i/state"
metrics_listen = "127.0.0.1:${metrics[$i]}"

[acme]
directory = "https://127.0.0.1:$acme/dir"
ca_bundle = "$tmp/pebble/ca.pem"
max_new_orders = "unlimited"

[cluster]
etcd = $etcd_toml
prefix = "$prefix"
node_name = "node$i"
lease_ttl = "$LEASE_TTL"
seal_key_file = "$tmp/seal.key"

[defaults]
renew_before = "$RENEW_BEFORE"
http01_listen = "127.0.0.1:${h01[$i]}"
max_orders_per_cert = 100000
reload = [["$tmp/record-install", "$tmp/r$i/installs"]]
hook_timeout = "10s"

[[cert]]
name = "site"
domains = ["fleet.bench.test"]
cert_path = "$tmp/r$i/certs/site.pem"
key_path = "$tmp/r$i/certs/site.key"
TOML
done
start_replica() { # INDEX
    "$bin" -c "$tmp/r$1/certkeeper.toml" --log-format json run >>"$tmp/r$1/log" 2>&1 &
    rpid[$1]=$!
    pids+=("$!")
}
# alive_or_die INDEX...: these replicas, and Pebble, challtestsrv, every etcd member and
# the HTTP-01 proxy, must still run (something else on the machine may kill them).
alive_or_die() {
    local i
    for i in "$@"; do
        kill -0 "${rpid[$i]}" 2>/dev/null || die "replica $i exited unexpectedly"
    done
    kill -0 "$pebble_pid" 2>/dev/null || die "Pebble (pid $pebble_pid) exited; its log: $tmp/pebble.log"
    kill -0 "$challtestsrv_pid" 2>/dev/null || die "pebble-challtestsrv (pid $challtestsrv_pid) exited"
    for i in "${!etcd_pid[@]}"; do
        kill -0 "${etcd_pid[$i]}" 2>/dev/null || die "etcd member $i (pid ${etcd_pid[$i]}) exited; its log: $tmp/etcd-m$i.log"
    done
    if [ -n "$proxy_pid" ]; then
        kill -0 "$proxy_pid" 2>/dev/null || die "the HTTP-01 proxy exited; its log: $tmp/h01proxy.log"
    fi
}
mapfile -t all < <(seq 0 $((N - 1)))

# Lock holders over time: "<us> PUT|DELETE|<key>|<value>" lines from `etcdctl watch`.
: >"$tmp/locks.log"
etcdctl --endpoints "$eps" watch --prefix "$prefix/locks/" \
    > >(while IFS= read -r l; do printf '%s %s\n' "${EPOCHREALTIME/./}" "$l"; done >>"$tmp/locks.log") 2>/dev/null &
lockw_pid=$!
pids+=("$lockw_pid")

# installs: "replica us serial" for every install seen so far.
installs() {
    local i
    for i in "${all[@]}"; do
        awk -v r="$i" 'NF == 2 {print r, $1, $2}' "$tmp/r$i/installs"
    done
}
# complete_serials: serials installed on every replica, by their first install time.
complete_serials() {
    installs | awk -v n="$N" '
        !(($3, $1) in seen) {seen[$3, $1] = 1; c[$3]++}
        !($3 in f) || $2 < f[$3] {f[$3] = $2}
        END {for (s in c) if (c[s] >= n) print f[s], s}' | sort -n | awk '{print $2}'
}
pebble_count() { grep -c "$1" "$tmp/pebble.log" || true; }

t_start=$(now_us)
for i in "${all[@]}"; do
    start_replica "$i"
done
log "waiting for the first certificate on all replicas"
deadline=$((SECONDS + 90))
while [ -z "$(complete_serials)" ]; do
    alive_or_die "${all[@]}"
    [ "$SECONDS" -lt "$deadline" ] || die "no certificate on all $N replicas within 90 s"
    sleep 0.2
done
first_ms=$(ms $(($(now_us) - t_start)))
echo "first certificate installed on all $N replicas ${first_ms} ms after start" >&2

# ---------------------------------------------------------------------------
log "(a)+(b): $RENEWALS renewals"
mapfile -t before < <(complete_serials)
orders0=$(pebble_count "Added order")
issued0=$(pebble_count "Issued certificate serial")
t_a0=$(now_us)
deadline=$((SECONDS + RENEWALS * VALIDITY * 2 + 120))
renewed=()
while :; do
    mapfile -t now_complete < <(complete_serials)
    renewed=()
    for s in "${now_complete[@]}"; do
        case " ${before[*]} " in *" $s "*) continue ;; esac
        renewed+=("$s")
    done
    [ "${#renewed[@]}" -ge "$RENEWALS" ] && break
    alive_or_die "${all[@]}"
    [ "$SECONDS" -lt "$deadline" ] || die "only ${#renewed[@]} of $RENEWALS renewals on all replicas in time"
    sleep 0.2
done
t_a1=$(now_us)
orders1=$(pebble_count "Added order")
issued1=$(pebble_count "Issued certificate serial")
renewed=("${renewed[@]:0:$RENEWALS}")
printf '%s\n' "${renewed[@]}" >"$tmp/renewed.txt"

# lock_events: "us holder" for every lock PUT.
lock_events() {
    awk '$2 == "PUT" {st = 1; next}
         $2 == "DELETE" {st = 3; next}
         st == 1 {st = 2; next}
         st == 2 {st = 0; if (match($0, /node[0-9]+/)) print $1, substr($0, RSTART + 4, RLENGTH - 4); next}
         st == 3 {st = 0; next}' "$tmp/locks.log"
}
lock_events >"$tmp/lock-events.txt"
# Per renewed serial: "serial orderer delay_us spread_us" (orderer = holder of the last
# lock taken before the first install; -1 when no lock event was seen).
{
    sed 's/^/S /' "$tmp/renewed.txt"
    sed 's/^/L /' "$tmp/lock-events.txt"
    installs | sed 's/^/I /'
} | awk '
    $1 == "S" {want[$2] = 1; order[++ns] = $2; next}
    $1 == "L" {nl++; lt[nl] = $2; lh[nl] = $3; next}
    $1 == "I" && ($4 in want) && !(($4, $2) in t) {t[$4, $2] = $3
        if (!($4 in tmin) || $3 < tmin[$4]) tmin[$4] = $3
        if (!($4 in tmax) || $3 > tmax[$4]) tmax[$4] = $3}
    END {
        for (k = 1; k <= ns; k++) {
            s = order[k]; o = -1
            for (j = 1; j <= nl; j++) if (lt[j] <= tmin[s]) o = lh[j]
            d = (o >= 0 && ((s, o) in t)) ? tmax[s] - t[s, o] : -1
            print s, o, d, tmax[s] - tmin[s]
        }
    }' >"$tmp/renewals.txt"
delays=$(awk '$3 >= 0 {print $3}' "$tmp/renewals.txt")
a_med=$(ms "$(echo "$delays" | median)")
a_max=$(ms "$(echo "$delays" | maxof)")
a_n=$(echo "$delays" | grep -c . || true)
spread_med=$(ms "$(awk '{print $4}' "$tmp/renewals.txt" | median)")
spread_max=$(ms "$(awk '{print $4}' "$tmp/renewals.txt" | maxof)")
orderers=$(awk '{c[$2]++} END {for (o in c) printf "%s%s: %d", (n++ ? ", " : ""), (o == "-1" ? "unknown" : "node" o), c[o]}' "$tmp/renewals.txt")
locks_in_window=$(awk -v a="$t_a0" -v b="$t_a1" '$1 >= a && $1 <= b' "$tmp/lock-events.txt" | grep -c . || true)
new_orders=$((orders1 - orders0))
new_issued=$((issued1 - issued0))
per() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }
echo "renewals: $RENEWALS, new orders: $new_orders, issued: $new_issued, lock acquisitions: $locks_in_window" >&2
echo "orderer install -> last install: median ${a_med} ms, max ${a_max} ms ($a_n renewals with a known orderer)" >&2
h01_answers="-"
if [ "$HTTP01" = proxy ]; then
    h01_answers=$(for i in "${all[@]}"; do
        printf 'node%s: %s\n' "$i" "$(grep -cx "${h01[$i]}" "$tmp/h01proxy.log" || true)"
    done | paste -sd, - | sed 's/,/, /g')
fi

# ---------------------------------------------------------------------------
take_ms=() join_ms=() take_orders=() resumed=0 takes_done=0 published0=()
if [ "$TAKEOVERS" -gt 0 ]; then
    log "(c): $TAKEOVERS takeovers (SIGKILL of the lock holder while its order is in flight)"
fi
for k in $(seq 1 "$TAKEOVERS"); do
    victim=""
    o_before=$(pebble_count "Added order")
    exec {wfd}< <(exec timeout $((VALIDITY * 3 + 60)) etcdctl --endpoints "$eps" watch --prefix "$prefix/orders/" 2>/dev/null)
    watch_pid=$!
    deadline=$((SECONDS + VALIDITY * 3 + 60))
    while [ -z "$victim" ] && [ "$SECONDS" -lt "$deadline" ]; do
        alive_or_die "${all[@]}"
        ev=""
        if ! read -r -t 5 -u "$wfd" ev; then
            [ -n "$ev" ] || { kill -0 "$watch_pid" 2>/dev/null && continue; } || break
        fi
        [ "$ev" = PUT ] || continue
        read -r -t 5 -u "$wfd" _ || continue # the key
        read -r -t 5 -u "$wfd" _ || continue # the value
        holder=$(ectl get "$prefix/locks/site" --print-value-only | grep -o 'node[0-9]*' | head -n 1 || true)
        h=${holder#node}
        if [ -z "$h" ]; then
            echo "takeover $k: an order was written, but nobody holds the lock any more; waiting for the next" >&2
            continue
        fi
        if [ "$HTTP01" = direct ] && [ "$h" = 0 ]; then
            echo "takeover $k: node0 holds the lock (and alone answers HTTP-01 in direct mode); waiting for the next" >&2
            o_before=$(pebble_count "Added order")
            continue
        fi
        installs | awk '{print $3}' | sort -u >"$tmp/known.txt"
        for i in "${all[@]}"; do
            published0[i]=$(grep -c "fleet: published" "$tmp/r$i/log" || true)
        done
        kill -KILL "${rpid[$h]}"
        t_kill=$(now_us)
        victim=$h
    done
    exec {wfd}<&-
    kill "$watch_pid" 2>/dev/null || true
    [ -n "$victim" ] || die "takeover $k: no order in flight within $((VALIDITY * 3 + 60)) s"
    wait "${rpid[$victim]}" 2>/dev/null || true
    others=()
    for i in "${all[@]}"; do
        [ "$i" = "$victim" ] || others+=("$i")
    done
    echo "takeover $k: killed node$victim (lock holder, order in flight)" >&2
    # The first install of a new serial by another replica.
    deadline=$((SECONDS + lease_s + 150))
    t_new=""
    while [ -z "$t_new" ]; do
        t_new=$(installs | awk -v v="$victim" '
            FILENAME != "-" {k[$1] = 1; next}
            $1 != v && !($3 in k) {if (best == "" || $2 < best) {best = $2; who = $1}}
            END {if (best != "") print best, who}' "$tmp/known.txt" -)
        [ -n "$t_new" ] && break
        alive_or_die "${others[@]}"
        [ "$SECONDS" -lt "$deadline" ] || die "takeover $k: no replica installed a new set within $((lease_s + 150)) s of the kill"
        sleep 0.05
    done
    read -r t_inst first <<<"$t_new"
    take_ms+=("$(ms $((t_inst - t_kill)))")
    take_orders+=("$(($(pebble_count "Added order") - o_before))")
    # The new orderer: the survivor with a new `fleet: published` line (it publishes before
    # it installs, so it may not be the first to install). Did it resume the order?
    deadline=$((SECONDS + 10))
    taker=""
    while [ -z "$taker" ] && [ "$SECONDS" -lt "$deadline" ]; do
        for i in "${others[@]}"; do
            if [ "$(grep -c "fleet: published" "$tmp/r$i/log" || true)" -gt "${published0[i]}" ]; then
                taker=$i
            fi
        done
        [ -n "$taker" ] || sleep 0.1
    done
    how="placed a new order"
    [ -n "$taker" ] || how="published nothing within 10 s"
    if [ -n "$taker" ] && awk -v n="${published0[taker]}" '/fleet: published/ {p++} p >= n && /fleet: resuming the order/ {f = 1} END {exit !f}' "$tmp/r$taker/log"; then
        resumed=$((resumed + 1))
        how="resumed the order"
    fi
    takes_done=$((takes_done + 1))
    echo "takeover $k: node${taker:-?} took over and $how; node$first installed the new set first, $(ms $((t_inst - t_kill))) ms after the kill" >&2
    # The killed replica comes back and installs the current set.
    current=$(installs | awk -v t="$first" '$1 == t {s = $3} END {print s}')
    t_restart=$(now_us)
    start_replica "$victim"
    deadline=$((SECONDS + 60))
    until awk -v s="$current" '$2 == s {f = 1} END {exit !f}' "$tmp/r$victim/installs"; do
        alive_or_die "$victim"
        [ "$SECONDS" -lt "$deadline" ] || die "restarted node$victim did not install the current set within 60 s"
        sleep 0.05
    done
    t_join=$(awk -v s="$current" '$2 == s {print $1; exit}' "$tmp/r$victim/installs")
    join_ms+=("$(ms $((t_join - t_restart)))")
done

# ---------------------------------------------------------------------------
idle_h="-" idle_m="-" idle_detail=""
if [ "$IDLE" -gt 0 ]; then
    log "(d): a new Pebble with day-long certificates, then ${IDLE}s idle"
    # The replicas stop (SIGTERM: their leases are revoked), Pebble is replaced by one
    # issuing day-long certificates on a new ACME port, and the replicas start again with
    # that directory: a new CA to them, with a new fleet account, rather than a CA that
    # forgot the fleet's account.
    kill "$lockw_pid" 2>/dev/null || true
    for i in "${all[@]}"; do
        kill -TERM "${rpid[$i]}" 2>/dev/null || true
    done
    for i in "${all[@]}"; do
        wait "${rpid[$i]}" 2>/dev/null || true
    done
    kill "$pebble_pid" "$challtestsrv_pid" 2>/dev/null || true
    wait "$pebble_pid" "$challtestsrv_pid" 2>/dev/null || true
    take_port acme
    start_ca 86400
    for i in "${all[@]}"; do
        sed -i "s#^directory = .*#directory = \"https://127.0.0.1:$acme/dir\"#" "$tmp/r$i/certkeeper.toml"
        start_replica "$i"
    done
    deadline=$((SECONDS + VALIDITY * 2 + 240))
    for i in "${all[@]}"; do
        until [ -s "$tmp/r$i/certs/site.pem" ] && openssl x509 -noout -checkend 3600 -in "$tmp/r$i/certs/site.pem" >/dev/null 2>&1; do
            alive_or_die "${all[@]}"
            [ "$SECONDS" -lt "$deadline" ] || die "node$i has no day-long certificate within $((VALIDITY * 2 + 240)) s"
            sleep 0.5
        done
    done
    sleep 5
    h0=$(etcd_sum grpc_server_handled_total)
    m0=$(etcd_sum grpc_server_msg_received_total)
    etcd_by_method grpc_server_handled_total >"$tmp/idle-h0.txt"
    etcd_by_method grpc_server_msg_received_total >"$tmp/idle-m0.txt"
    sleep "$IDLE"
    h1=$(etcd_sum grpc_server_handled_total)
    m1=$(etcd_sum grpc_server_msg_received_total)
    etcd_by_method grpc_server_handled_total >"$tmp/idle-h1.txt"
    etcd_by_method grpc_server_msg_received_total >"$tmp/idle-m1.txt"
    alive_or_die "${all[@]}"
    idle_h=$(awk -v d=$((h1 - h0)) -v n="$N" -v s="$IDLE" 'BEGIN {printf "%.1f", d / n / (s / 60)}')
    idle_m=$(awk -v d=$((m1 - m0)) -v n="$N" -v s="$IDLE" 'BEGIN {printf "%.1f", d / n / (s / 60)}')
    # "method RPCs/messages" per replica and minute, for the methods that moved.
    per_method() { # BEFORE AFTER
        join -a 2 -e 0 -o 0,1.2,2.2 "$1" "$2" | awk -v n="$N" -v s="$IDLE" '{print $1, ($3 - $2) / n / (s / 60)}'
    }
    idle_detail=$(join -a 1 -a 2 -e 0 -o 0,1.2,2.2 <(per_method "$tmp/idle-h0.txt" "$tmp/idle-h1.txt") \
        <(per_method "$tmp/idle-m0.txt" "$tmp/idle-m1.txt") |
        awk '$2 > 0 || $3 > 0 {printf "%s%s %.1f/%.1f", (k++ ? ", " : ""), $1, $2, $3}')
fi
base_h_min=$(awk -v d="$base_h" -v s="$BASELINE" 'BEGIN {if (s > 0) printf "%.1f", d / (s / 60); else print "-"}')
base_m_min=$(awk -v d="$base_m" -v s="$BASELINE" 'BEGIN {if (s > 0) printf "%.1f", d / (s / 60); else print "-"}')

# Log lines per replica (stable substrings of the fleet's log).
loglines=""
for sub in "fleet: took the lock" "fleet: published" "fleet: installed the fleet's set" \
    "fleet: resuming the order" "fleet: lost the fleet lock" "fleet: etcd unavailable" "fleet: emergency"; do
    c=""
    for i in "${all[@]}"; do
        c+="${c:+/}$(grep -cF "$sub" "$tmp/r$i/log" || true)"
    done
    loglines+="${loglines:+; }\`$sub\` $c"
done

# ---------------------------------------------------------------------------
list() { if [ "$#" -gt 0 ]; then echo "$*"; else echo "-"; fi; }
take_med=$(printf '%s\n' "${take_ms[@]}" | grep . | median || true)
join_med=$(printf '%s\n' "${join_ms[@]}" | grep . | median || true)
cat <<EOF

# certkeeper fleet benchmark ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, etcd $etcd_version, Pebble $VALIDITY s certificates)

| figure | value |
|---|---|
| replicas, lease_ttl, renew_before, HTTP-01 | $N, $LEASE_TTL, $RENEW_BEFORE, $HTTP01 |
| first certificate on all replicas, from start | ${first_ms} ms |
| (a) orderer's install -> last replica's install, median (max) of $a_n renewals | ${a_med} ms (${a_max} ms) |
| (a) first -> last install in the fleet, median (max) | ${spread_med} ms (${spread_max} ms) |
| (b) new orders per renewal (Pebble "Added order") | $new_orders / $RENEWALS = $(per "$new_orders" "$RENEWALS") |
| (b) certificates issued per renewal | $new_issued / $RENEWALS = $(per "$new_issued" "$RENEWALS") |
| lock acquisitions per renewal | $locks_in_window / $RENEWALS = $(per "$locks_in_window" "$RENEWALS") |
| orders placed by | $orderers |
| HTTP-01 connections answered | $h01_answers |
| (c) SIGKILL of the lock holder mid-order -> another replica installs, median (all) | ${take_med:--} ms ($(list "${take_ms[@]}") ms) |
| (c) new orders per takeover renewal | $(list "${take_orders[@]}") |
| (c) takeovers that resumed the dead orderer's order (\`fleet: resuming the order\`) | $resumed of $takes_done |
| restarted replica -> current set installed, median (all) | ${join_med:--} ms ($(list "${join_ms[@]}") ms) |
| (d) etcd RPCs completed per idle minute per replica (grpc_server_handled_total) | $idle_h |
| (d) etcd messages received per idle minute per replica (grpc_server_msg_received_total) | $idle_m |
| (d) by method, RPCs/messages per minute per replica | ${idle_detail:--} |
| etcd with no replica, per minute (RPCs, messages) | $base_h_min, $base_m_min |
| log lines node0/node1/node2 | $loglines |
EOF
