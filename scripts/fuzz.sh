#!/usr/bin/env bash
# Runs every fuzz target of fuzz/ (phaul-transport's frame, message and
# handshake parsers) for SECONDS each (default 20), starting from the
# committed seeds in fuzz/seeds/<target>/ plus whatever earlier runs left in
# fuzz/corpus/<target>/ (git-ignored). Exits non-zero on the first crash,
# leak, timeout or out-of-memory; libFuzzer saves the input that did it in
# fuzz/artifacts/<target>/.
#
#   ./scripts/fuzz.sh [SECONDS]
#
# Needs only the stable toolchain: cargo-fuzz passes -Z flags to rustc
# (sanitizer, coverage), which stable accepts with RUSTC_BOOTSTRAP=1. If
# that does not build, it tries without AddressSanitizer, then a nightly
# toolchain if one is installed. Installs cargo-fuzz if it is missing.
# Set FUZZ_ARGS to pass more libFuzzer options (e.g. "-jobs=2 -workers=2").
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${1:-20}"
if ! [[ "$secs" =~ ^[0-9]+$ ]] || [ "$secs" -lt 1 ]; then
    echo "usage: $0 [SECONDS]  (seconds per target, default 20)" >&2
    exit 2
fi

run() {
    echo "+ $*"
    "$@"
}

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz is missing: installing it"
    run cargo install cargo-fuzz --locked
fi
echo "$(cargo fuzz --version), $(rustc --version)"

# Build every target once, in the first configuration that works.
# -a: debug assertions and overflow checks on, so an arithmetic overflow in
# a parser is a crash too.
toolchain=()
flags=(-a)
export RUSTC_BOOTSTRAP=1
if run cargo fuzz build "${flags[@]}"; then
    echo "building on $(rustc --version) with RUSTC_BOOTSTRAP=1, AddressSanitizer on"
elif flags=(-a --sanitizer none) && run cargo fuzz build "${flags[@]}"; then
    echo "AddressSanitizer did not build here: fuzzing without it"
elif rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    unset RUSTC_BOOTSTRAP
    toolchain=(+nightly)
    flags=(-a)
    echo "the stable toolchain cannot build the fuzz targets: using nightly"
    run cargo "${toolchain[@]}" fuzz build "${flags[@]}"
else
    echo "cannot build the fuzz targets (see above), and no nightly toolchain" >&2
    exit 1
fi

mapfile -t targets < <(cargo "${toolchain[@]}" fuzz list)
if [ "${#targets[@]}" -eq 0 ]; then
    echo "no fuzz targets found" >&2
    exit 1
fi

# shellcheck disable=SC2206 # FUZZ_ARGS is meant to be split into words
extra=(${FUZZ_ARGS:-})
for t in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$t"
    seeds=()
    [ -d "fuzz/seeds/$t" ] && seeds=("fuzz/seeds/$t")
    echo "=== $t: ${secs}s"
    # The first corpus directory receives new inputs; the seeds are only read.
    run cargo "${toolchain[@]}" fuzz run "${flags[@]}" "$t" "fuzz/corpus/$t" "${seeds[@]}" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        "${extra[@]}"
done
echo "fuzzing passed: ${#targets[@]} targets, ${secs}s each"
