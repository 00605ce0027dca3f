# shellcheck shell=bash
# Helpers shared by the scripts in scripts/ (test.sh, demo.sh, bench.sh,
# bench-daemon.sh, ...). Source it; don't run it.

# log MESSAGE...: a narrated step, on stderr so it never mixes with data.
log() {
    printf '\n==> %s\n' "$*" >&2
}

# need_cmd_or_pkg: install Debian packages when any of the given commands is
# missing. Usage: ensure_debian_packages "cmd1 cmd2 ..." pkg1 pkg2 ...
ensure_debian_packages() {
    local cmds=$1
    shift
    local missing=() c
    for c in $cmds; do
        command -v "$c" >/dev/null 2>&1 || missing+=("$c")
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        return 0
    fi
    log "missing: ${missing[*]}; installing Debian packages: $*"
    apt_install "$@" || return 1
    for c in $cmds; do
        if ! command -v "$c" >/dev/null 2>&1; then
            echo "error: '$c' is still missing after installing: $*" >&2
            return 1
        fi
    done
}

# apt_install PKG...: apt-get update + install (with sudo when not root).
apt_install() {
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "error: apt-get is not available. Install these yourself (Debian/Ubuntu package names): $*" >&2
        return 1
    fi
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1; then
            sudo=(sudo)
        else
            echo "error: not root and sudo is not available; run as root: apt-get install -y $*" >&2
            return 1
        fi
    fi
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
}

# ensure_acme_test_deps: Pebble 2.4.0 (pebble + pebble-challtestsrv), openssl, curl,
# and the real servers the endpoint checks run against: nginx, haproxy, an SMTP
# server with STARTTLS (Debian's python3-aiosmtpd, run by /usr/bin/python3), and
# promtool (Debian's prometheus package, which does not start a server here).
ensure_acme_test_deps() {
    ensure_debian_packages "pebble pebble-challtestsrv openssl curl nginx haproxy promtool etcd etcdctl" \
        pebble openssl curl ca-certificates nginx-light haproxy prometheus etcd-server etcd-client || return 1
    ensure_build_deps || return 1
    if ! /usr/bin/python3 -c 'import aiosmtpd' >/dev/null 2>&1; then
        log "missing: aiosmtpd; installing Debian packages: python3-aiosmtpd"
        apt_install python3 python3-aiosmtpd || return 1
    fi
}

# ensure_build_deps: what building certkeeper needs beyond cargo: protoc and the
# protobuf well-known types (google/protobuf/*.proto), for etcd-client's generated
# gRPC code (fleet mode).
ensure_build_deps() {
    ensure_debian_packages protoc protobuf-compiler libprotobuf-dev || return 1
    if [ ! -e /usr/include/google/protobuf/descriptor.proto ]; then
        log "missing: google/protobuf/descriptor.proto; installing Debian packages: libprotobuf-dev"
        apt_install libprotobuf-dev || return 1
    fi
}

# ensure_cargo [components...]: cargo must exist; rustup adds missing components.
ensure_cargo() {
    if ! command -v cargo >/dev/null 2>&1; then
        echo "error: cargo not found. Install a Rust toolchain (>= 1.85), e.g. with rustup." >&2
        return 1
    fi
    local comp
    for comp in "$@"; do
        case $comp in
            clippy) cargo clippy --version >/dev/null 2>&1 && continue ;;
            rustfmt) cargo fmt --version >/dev/null 2>&1 && continue ;;
        esac
        if command -v rustup >/dev/null 2>&1; then
            log "adding rustup component $comp"
            rustup component add "$comp"
        else
            echo "error: cargo $comp is not installed and rustup is not available to add it" >&2
            return 1
        fi
    done
}

# ensure_nextest: cargo-nextest (the test runner scripts/test.sh uses),
# installed from crates.io when missing, the way scripts/fuzz.sh installs cargo-fuzz.
ensure_nextest() {
    if cargo nextest --version >/dev/null 2>&1; then
        return 0
    fi
    log "cargo-nextest missing: cargo install --locked cargo-nextest"
    local t0
    t0=$(date +%s)
    cargo install --locked cargo-nextest || return 1
    log "cargo-nextest installed in $(($(date +%s) - t0))s"
}

# ensure_toolchain: cargo with rustfmt and clippy, and cargo-nextest.
ensure_toolchain() {
    ensure_cargo rustfmt clippy && ensure_nextest
}

# free_port START END: print the first TCP port in [START, END] that nothing
# listens on (checked by trying to connect on 127.0.0.1; bash's /dev/tcp).
free_port() {
    local p
    for ((p = $1; p <= $2; p++)); do
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return 0
        fi
    done
    echo "error: no free port in $1-$2" >&2
    return 1
}

# ---------------------------------------------------------------------------
# Pebble on loopback, for demo.sh, bench.sh and bench-daemon.sh. The layout in
# a work directory DIR: DIR/pebble/ holds the HTTPS CA and leaf and
# pebble.json, DIR/challtestsrv.log and DIR/pebble.log the servers' output.
# ---------------------------------------------------------------------------

# pebble_tls DIR CA_NAME: a CA (CN=CA_NAME) and a leaf for localhost and
# 127.0.0.1 signed by it, for Pebble's HTTPS listener, in DIR/pebble/:
# ca.pem (what clients trust), leaf.pem and leaf.key (what Pebble serves).
pebble_tls() (
    mkdir -p "$1/pebble" && cd "$1/pebble" || exit 1
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout ca.key -out ca.pem -days 30 -subj "/CN=$2" 2>/dev/null || exit 1
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout leaf.key -out leaf.csr -subj /CN=localhost 2>/dev/null || exit 1
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >leaf.ext
    openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
        -out leaf.pem -days 30 -extfile leaf.ext 2>/dev/null
)

# start_pebble DIR ACME_PORT MGMT_PORT HTTP_PORT TLS_PORT DNS_PORT CTS_PORT VALIDITY [VAR=VALUE...]
# Write DIR/pebble/pebble.json (HTTPS with pebble_tls's leaf, certificates
# valid VALIDITY seconds, no EAB) and start, in the background,
# pebble-challtestsrv (fake DNS on DNS_PORT that answers 127.0.0.1 for every
# name, management API on CTS_PORT) and Pebble (ACME on ACME_PORT, management
# on MGMT_PORT, validating HTTP-01 on HTTP_PORT, resolving through
# challtestsrv) with PEBBLE_VA_NOSLEEP=1 and the extra VAR=VALUE environment.
# Both listen on 127.0.0.1. Their pids are appended to the caller's `pids`
# array (for its cleanup) and kept in challtestsrv_pid and pebble_pid (for
# wait_pebble). Returns at once: call wait_pebble next.
start_pebble() {
    local dir=$1 acme=$2 mgmt=$3 http=$4 tls=$5 dns=$6 cts=$7 validity=$8
    shift 8
    cat >"$dir/pebble/pebble.json" <<JSON || return 1
{"pebble":{"listenAddress":"127.0.0.1:$acme","managementListenAddress":"127.0.0.1:$mgmt",
 "certificate":"$dir/pebble/leaf.pem","privateKey":"$dir/pebble/leaf.key",
 "httpPort":$http,"tlsPort":$tls,"ocspResponderURL":"",
 "externalAccountBindingRequired":false,"certificateValidityPeriod":$validity}}
JSON
    pebble-challtestsrv -dns01 "127.0.0.1:$dns" -http01 "" -https01 "" -tlsalpn01 "" \
        -management "127.0.0.1:$cts" -defaultIPv6 "" >"$dir/challtestsrv.log" 2>&1 &
    challtestsrv_pid=$!
    pids+=("$challtestsrv_pid")
    env PEBBLE_VA_NOSLEEP=1 "$@" pebble -config "$dir/pebble/pebble.json" -dnsserver "127.0.0.1:$dns" \
        >"$dir/pebble.log" 2>&1 &
    pebble_pid=$!
    pids+=("$pebble_pid")
}

# stop_pids: kill every process in the caller's `pids` array, then reap them
# (for an EXIT trap; never fails).
stop_pids() {
    local pid
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
}

# wait_up WHAT LOGFILE PID CURL-ARGS...: wait (10 s at most) until curl with
# CURL-ARGS gets an answer, and say "WHAT is up" on stdout. Fails, showing
# LOGFILE on stderr, when PID exits first or time runs out.
wait_up() {
    local what=$1 logf=$2 pid=$3 i
    shift 3
    for ((i = 0; i < 100; i++)); do
        if curl -s -o /dev/null "$@"; then
            echo "$what is up"
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "error: $what exited; its log ($logf):" >&2
            cat "$logf" >&2
            return 1
        fi
        sleep 0.1
    done
    echo "error: $what did not come up within 10 s; its log ($logf):" >&2
    cat "$logf" >&2
    return 1
}

# wait_pebble DIR ACME_PORT CTS_PORT: wait until the pair start_pebble
# started answers: challtestsrv's management API, then Pebble's directory
# (over HTTPS, trusting DIR/pebble/ca.pem). Says "... is up" for each on
# stdout (send it to /dev/null to keep quiet).
wait_pebble() {
    wait_up pebble-challtestsrv "$1/challtestsrv.log" "$challtestsrv_pid" \
        "http://127.0.0.1:$3/" || return 1
    wait_up pebble "$1/pebble.log" "$pebble_pid" \
        --cacert "$1/pebble/ca.pem" "https://127.0.0.1:$2/dir"
}

# The acme2certifier release the ARI tests run as a second CA (tests/common/a2c.rs).
A2C_VERSION=0.46.3

# a2c_venv_dir: where the tests' acme2certifier venv lives. The same rule as
# tests/common/a2c.rs: $CERTKEEPER_A2C_VENV, else
# <CARGO_TARGET_DIR (relative to the repo) or <repo>/target>/a2c-venv.
a2c_venv_dir() {
    if [ -n "${CERTKEEPER_A2C_VENV:-}" ]; then
        echo "$CERTKEEPER_A2C_VENV"
        return 0
    fi
    local root target
    root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    target=${CARGO_TARGET_DIR:-target}
    case $target in
        /*) ;;
        *) target="$root/$target" ;;
    esac
    echo "$target/a2c-venv"
}

# ensure_a2c_venv: create the venv with acme2certifier $A2C_VERSION when it is
# missing, so that the tests don't pay for it inside their timeouts. Uses the
# same lock and ready marker as the test harness (which is the fallback).
# `python3 -m venv` needs Debian's python3-venv on some machines: it is
# installed when the first attempt fails.
ensure_a2c_venv() {
    local venv marker
    venv=$(a2c_venv_dir)
    marker="$venv/.certkeeper-a2c-ready"
    if [ "$(cat "$marker" 2>/dev/null)" = "$A2C_VERSION" ]; then
        return 0
    fi
    ensure_debian_packages "python3 flock" python3 util-linux || return 1
    mkdir -p "$(dirname "$venv")" || return 1
    # Explicit checks: callers may run this where `set -e` is off (`step` does).
    (
        flock 9 || exit 1
        if [ "$(cat "$marker" 2>/dev/null)" = "$A2C_VERSION" ]; then
            exit 0
        fi
        log "creating the acme2certifier $A2C_VERSION venv at $venv"
        rm -rf "$venv"
        if ! python3 -m venv "$venv"; then
            rm -rf "$venv"
            log "python3 -m venv failed; installing python3-venv"
            apt_install python3-venv || exit 1
            python3 -m venv "$venv" || exit 1
        fi
        "$venv/bin/python" -m pip install -q --disable-pip-version-check \
            "acme2certifier==$A2C_VERSION" || exit 1
        printf '%s' "$A2C_VERSION" >"$marker"
    ) 9>"$(dirname "$venv")/a2c-venv.lock"
}
