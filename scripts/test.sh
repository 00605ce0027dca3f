#!/usr/bin/env bash
# The test command: installs what the tests need (Debian/Ubuntu) if missing,
# then runs the shipped hooks' checks, formatting, lint, the regular test suite,
# the bounded fault suite and bounded fuzzing. .ci/run calls exactly this. Works
# from any directory.
#
#   scripts/test.sh                 # every step
#   FAULTS=0 FUZZ_SECONDS=0 scripts/test.sh   # up to the regular suite only
#
# The test runner is cargo-nextest (every test in its own process, in parallel,
# with the timeouts and the regular/fault split of .config/nextest.toml). It is
# installed from crates.io (`cargo install --locked cargo-nextest`) when missing.
#
# What it installs when missing: pebble (gives pebble and pebble-challtestsrv,
# the real ACME CA the tests run against), openssl and curl, via apt-get
# (with sudo when not root). The tests start and stop Pebble themselves, on
# loopback ports of their own. It also creates the Python venv with
# acme2certifier (the second CA, with ARI, that tests/ari.rs runs) at
# ${CARGO_TARGET_DIR:-target}/a2c-venv when it is missing, installing
# python3-venv with apt-get if `python3 -m venv` needs it. The fuzz step
# installs cargo-fuzz from crates.io when missing (see scripts/fuzz.sh).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
# shellcheck source=scripts/lib.sh
. "$repo/scripts/lib.sh"

start=$(date +%s)
timings=()
step() {
    local name=$1 t0 rc=0
    shift
    log "$name: $*"
    t0=$(date +%s)
    "$@" || rc=$?
    timings+=("$(printf '%-9s %4ss  %s' "$name" "$(($(date +%s) - t0))" "$([ "$rc" -eq 0 ] && echo ok || echo "FAILED ($rc)")")")
    if [ "$rc" -ne 0 ]; then
        summary
        echo "scripts/test.sh: $name failed (exit $rc)" >&2
        exit "$rc"
    fi
}
summary() {
    printf '\n==> timings\n' >&2
    printf '  %s\n' "${timings[@]}" >&2
    printf '  %-9s %4ss\n' "total" "$(($(date +%s) - start))" >&2
}

step deps ensure_acme_test_deps
step a2c ensure_a2c_venv
step toolchain ensure_toolchain
step hooks scripts/test-hooks.sh
step fmt cargo fmt --all -- --check
step clippy cargo clippy --all-targets -- -D warnings
# The regular suite: unit and integration tests, the nextest default profile.
step test cargo nextest run -j "$(nproc)"
# Doc tests (nextest does not run them; today the crate has none, so this only
# builds the docs' examples and reports 0).
step doctest cargo test --doc
# The long fault runs (profile `faults`: random SIGKILLs, hostile CAs, long
# readers, real certificate lifetimes), each bounded by the profile's
# slow-timeout. FAULTS=0 skips them.
if [ "${FAULTS:-1}" != 0 ]; then
    step faults cargo nextest run -j "$(nproc)" --profile faults
fi
# Bounded fuzzing of the config/PEM parsers (scripts/fuzz.sh): 30 s per target here,
# plus the fuzz build on the first run. FUZZ_SECONDS=0 skips it.
step fuzz env FUZZ_SECONDS="${FUZZ_SECONDS:-30}" FUZZ_DEV="${FUZZ_DEV:-1}" \
    FUZZ_SANITIZER="${FUZZ_SANITIZER:-none}" scripts/fuzz.sh
summary
echo "scripts/test.sh: all checks passed in $(($(date +%s) - start))s" >&2
