#!/usr/bin/env bash
# Coverage-guided fuzzing (libFuzzer through cargo-fuzz) of the parsers that read
# untrusted files: the config (fuzz target `config`), PEM certificate chains
# (`pem_certs`), PEM private keys (`pem_key`) and the whole key + chain check
# (`verify_set`). Each target runs for a bounded time; any crash, panic, timeout or
# out-of-memory fails the script, and libFuzzer leaves the input in
# fuzz/artifacts/<target>/.
#
#   scripts/fuzz.sh [TARGET...]          # default: every target, 60 s each
#   FUZZ_SECONDS=30 scripts/fuzz.sh      # shorter (scripts/test.sh uses this)
#   FUZZ_SECONDS=0 scripts/fuzz.sh       # skip
#   FUZZ_DEV=1 FUZZ_SANITIZER=none ...   # the quicker build scripts/test.sh uses
#
# Runs on the stable toolchain: cargo-fuzz needs nightly-only rustc flags
# (-Zsanitizer, coverage instrumentation), which RUSTC_BOOTSTRAP=1 unlocks.
# Installs cargo-fuzz from crates.io (`cargo install --locked cargo-fuzz`) when
# missing. The checked-in seeds in fuzz/corpus/<target>/ are read but never written:
# inputs the fuzzer finds go to ${CARGO_TARGET_DIR:-fuzz/target}/fuzz-corpus/<target>/
# and are kept between runs. Regenerate the seeds with fuzz/make-corpus.sh.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib.sh
. "$repo/scripts/lib.sh"
cd "$repo/fuzz"

seconds=${FUZZ_SECONDS:-60}
if [ "$seconds" = 0 ]; then
    log "FUZZ_SECONDS=0: fuzzing skipped"
    exit 0
fi
export RUSTC_BOOTSTRAP=1
target_dir=${CARGO_TARGET_DIR:-$repo/fuzz/target}
# Same flags for build and run, so `run` never rebuilds. Optimised, but with debug
# assertions and overflow checks, so arithmetic overflow in a parser is a crash.
# FUZZ_DEV=1 builds without optimisation (debug assertions are on there too): about
# half the build time on a fresh machine, fewer execs per second; CI uses it together with
# FUZZ_SANITIZER=none (the targets are safe Rust; ASan mostly slows the build).
if [ "${FUZZ_DEV:-0}" = 1 ]; then
    flags=(--dev --sanitizer "${FUZZ_SANITIZER:-address}")
else
    flags=(-O --debug-assertions --sanitizer "${FUZZ_SANITIZER:-address}")
fi

if ! command -v cargo-fuzz >/dev/null 2>&1; then
    log "cargo-fuzz missing: cargo install --locked cargo-fuzz"
    t0=$(date +%s)
    cargo install --locked cargo-fuzz
    log "cargo-fuzz installed in $(($(date +%s) - t0))s"
fi

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi

log "building fuzz targets (${flags[*]})"
t0=$(date +%s)
cargo fuzz build "${flags[@]}"
log "built in $(($(date +%s) - t0))s"

results=()
for t in "${targets[@]}"; do
    found=$target_dir/fuzz-corpus/$t
    mkdir -p "$found"
    logf=$target_dir/fuzz-$t.log
    log "fuzzing $t for ${seconds}s (seeds: fuzz/corpus/$t; log: $logf)"
    rc=0
    cargo fuzz run "${flags[@]}" "$t" "$found" "corpus/$t" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=16384 \
        -print_final_stats=1 >"$logf" 2>&1 || rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$logf" | tail -n1)
    cov=$(grep -o 'cov: [0-9]*' "$logf" | tail -n1 || true)
    if [ "$rc" -ne 0 ]; then
        tail -n 60 "$logf" >&2
        echo "scripts/fuzz.sh: target $t FAILED (exit $rc); the input is in fuzz/artifacts/$t/" >&2
        exit 1
    fi
    results+=("$(printf '%-12s %6ss  %10s execs  %s' "$t" "$seconds" "${execs:-?}" "$cov")")
done
printf '\n==> fuzz results (no crashes)\n' >&2
printf '  %s\n' "${results[@]}" >&2
