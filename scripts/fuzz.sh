#!/usr/bin/env bash
# Fuzzes pageless's parsers of outside input: runs each cargo-fuzz target of fuzz/ (libFuzzer,
# nightly Rust, AddressSanitizer, debug assertions and overflow checks on) for SECONDS (default
# 60), one after the other, starting from the checked-in seeds in fuzz/corpus/<target>/.
#   scripts/fuzz.sh [SECONDS] [TARGET...]
# Fails if any target crashes (a panic, a failed check, a sanitizer error, a leak or a hang over
# 10 s): the input that did it is left in fuzz/artifacts/<target>/ and the command that replays
# it is printed. What libFuzzer finds along the way goes to fuzz/work/<target>/ (not checked in),
# each target's log to fuzz/work/<target>.log. Needs what scripts/setup.sh installs (the nightly
# toolchain and cargo-fuzz under .cache/tools).
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in -h|--help) sed -n '2,10p' "$0"; exit 0 ;; esac
seconds=${1:-60}
shift || true
case "$seconds" in ''|*[!0-9]*) echo "fuzz: SECONDS must be a number, not $seconds (try --help)" >&2; exit 2 ;; esac
cache=$(readlink -f .cache)
export PATH="$cache/tools/bin:$HOME/.cargo/bin:$PATH"
if ! command -v cargo-fuzz >/dev/null 2>&1 || ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz: cargo-fuzz or the nightly toolchain is missing: run scripts/setup.sh --no-demo" >&2
    exit 1
fi
# Build output lives in the shared cache, so a fresh clone (CI) does not rebuild from scratch.
target_dir="$cache/fuzz-target"
fuzz() { cargo +nightly fuzz "$@"; }
if [ $# -gt 0 ]; then targets=("$@"); else mapfile -t targets < <(fuzz list); fi

echo "==> building ${#targets[@]} fuzz targets ($(cargo +nightly --version))"
fuzz build --debug-assertions --target-dir "$target_dir"

failed=()
for target in "${targets[@]}"; do
    mkdir -p "fuzz/work/$target" "fuzz/artifacts/$target"
    log="fuzz/work/$target.log"
    echo "==> $target: ${seconds}s from fuzz/corpus/$target"
    # The first corpus directory receives new inputs; the checked-in seeds are only read.
    if fuzz run --debug-assertions --target-dir "$target_dir" "$target" "fuzz/work/$target" "fuzz/corpus/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$log" 2>&1; then
        runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
        cov=$(grep -E '^#[0-9]+' "$log" | tail -n1 | sed -n 's/.*\(cov: [0-9]*\).*\(corp: [^ ]*\).*\(exec\/s: [0-9]*\).*/\1 \2 \3/p')
        echo "    ok: ${runs:-?} runs, $cov, corpus fuzz/work/$target: $(find "fuzz/work/$target" -type f | wc -l) inputs"
    else
        failed+=("$target")
        echo "    CRASH: the end of $log:" >&2
        tail -n 40 "$log" | sed 's/^/    /' >&2
        artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n1)
        [ -z "$artifact" ] || echo "    replay: cargo +nightly fuzz run --debug-assertions --target-dir $target_dir $target $artifact" >&2
    fi
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz: ${#failed[@]} target(s) crashed: ${failed[*]}" >&2
    exit 1
fi
echo "fuzz: every target ran ${seconds}s without a crash"
