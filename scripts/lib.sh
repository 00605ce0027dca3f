# shellcheck shell=bash
# Helpers shared by scripts/test.sh and scripts/demo.sh. Source it; don't run it.

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
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "error: ${missing[*]} not found and apt-get is not available." >&2
        echo "       Install these yourself (Debian/Ubuntu package names): $*" >&2
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
    for c in $cmds; do
        if ! command -v "$c" >/dev/null 2>&1; then
            echo "error: '$c' is still missing after installing: $*" >&2
            return 1
        fi
    done
}

# ensure_acme_test_deps: Pebble 2.4.0 (pebble + pebble-challtestsrv), openssl, curl.
ensure_acme_test_deps() {
    ensure_debian_packages "pebble pebble-challtestsrv openssl curl" pebble openssl curl ca-certificates
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
