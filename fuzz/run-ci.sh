#!/usr/bin/env bash
# Bounded fuzzing for CI, on the stable toolchain.
#
#   fuzz/run-ci.sh                  # every target, FUZZ_SECONDS each (default 60)
#   FUZZ_SECONDS=300 fuzz/run-ci.sh control_request
#
# Builds the targets with `cargo fuzz build --sanitizer none` (the sanitizers need nightly; the
# coverage instrumentation libFuzzer needs does not), replays the reproducers in
# fuzz/artifacts-found/, then fuzzes the targets side by side, each starting from its committed
# corpus. New inputs go to a temporary directory, so the checkout stays clean. Prints the number
# of executions per target and exits non-zero on any crash, timeout, out-of-memory or
# over-large allocation; the failing input is kept under target/fuzz/artifacts/.
#
# Environment: FUZZ_SECONDS (per target, default 60); CARGO_TARGET_DIR (the build goes to
# $CARGO_TARGET_DIR/fuzz, default target/fuzz of the repository).
set -euo pipefail

fuzz_dir="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$fuzz_dir")"
seconds="${FUZZ_SECONDS:-60}"
target_dir="${CARGO_TARGET_DIR:-$repo/target}/fuzz"
cargo_fuzz_version="0.13.2"

# Limits shared by every target: a hang is an input that takes over 5 s; an input may use at
# most 512 MB in all, and no single allocation may be larger (libFuzzer reports either as an
# out-of-memory crash).
common_flags=(-timeout=5 -rss_limit_mb=512 -malloc_limit_mb=512 -print_final_stats=1)

# The largest input each target is given: packages are kept small (the reader's cost is
# linear in the input); requests go past the control socket's 64 KiB limit; a hand-off channel
# holds a few components' states (the seeds are under 8 KiB).
max_len() {
    case "$1" in
        package_reader) echo 16384 ;;
        control_request) echo 70000 ;;
        handoff_stream) echo 32768 ;;
        *) echo "error: no input size limit set for fuzz target \`$1\`; add it to max_len in $0" >&2; exit 2 ;;
    esac
}

targets=(package_reader control_request handoff_stream)
[ "$#" -eq 0 ] || targets=("$@")

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz is missing: installing cargo-fuzz $cargo_fuzz_version" >&2
    cargo install cargo-fuzz --locked --version "$cargo_fuzz_version" \
        || { echo "error: cannot install cargo-fuzz (cargo install cargo-fuzz --locked failed); fuzzing needs it" >&2; exit 1; }
fi
command -v c++ >/dev/null \
    || { echo "error: no C++ compiler (c++): libfuzzer-sys compiles libFuzzer with it; install g++" >&2; exit 1; }
cargo fuzz --version

host="$(rustc -vV | sed -n 's/^host: //p')"
if ! cargo fetch --locked --manifest-path "$fuzz_dir/Cargo.toml" >/dev/null 2>&1; then
    echo "warning: fuzz/Cargo.lock is out of date (the runtime's dependencies changed); updating it: commit the new fuzz/Cargo.lock" >&2
fi
build_start=$SECONDS
for target in "${targets[@]}"; do
    cargo fuzz build --fuzz-dir "$fuzz_dir" --sanitizer none --target "$host" --target-dir "$target_dir" "$target" >/dev/null
done
echo "built ${targets[*]} in $((SECONDS - build_start)) s"

bin_dir="$target_dir/$host/release"
artifacts="$target_dir/artifacts"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$artifacts"

# Earlier findings must stay fixed: each reproducer runs once through its target.
failed=0
for target in "${targets[@]}"; do
    for input in "$fuzz_dir"/artifacts-found/"$target"-*; do
        [ -e "$input" ] || continue
        if ! "$bin_dir/$target" -rss_limit_mb=512 -malloc_limit_mb=512 -timeout=5 "$input" >"$work/replay.log" 2>&1; then
            echo "FAIL $target: the recorded finding $(basename "$input") fails again:" >&2
            grep -A8 -E "panicked|ERROR|timeout|out-of-memory" "$work/replay.log" | head -40 >&2
            failed=1
        fi
    done
done

fuzz_start=$SECONDS
pids=()
for target in "${targets[@]}"; do
    mkdir -p "$work/$target"
    # The first directory receives new inputs; the committed corpus is only read.
    "$bin_dir/$target" "$work/$target" "$fuzz_dir/corpus/$target" \
        -max_total_time="$seconds" -max_len="$(max_len "$target")" "${common_flags[@]}" \
        -artifact_prefix="$artifacts/$target-" >"$work/$target.log" 2>&1 &
    pids+=($!)
done

for i in "${!targets[@]}"; do
    target="${targets[$i]}"
    status=0
    wait "${pids[$i]}" || status=$?
    executions="$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/$target.log" | tail -n 1)"
    if [ "$status" -ne 0 ] || [ -z "$executions" ]; then
        echo "FAIL $target (exit status $status); the end of libFuzzer's log:" >&2
        grep -v -E '^#[0-9]+' "$work/$target.log" | tail -n 60 >&2
        echo "the failing input is kept in $artifacts/ (reproduce: $bin_dir/$target FILE)" >&2
        failed=1
    else
        echo "ok   $target: $executions executions in ${seconds} s, corpus $(find "$fuzz_dir/corpus/$target" -type f | wc -l) committed + $(find "$work/$target" -type f | wc -l) new inputs"
    fi
done
echo "fuzzed for $((SECONDS - fuzz_start)) s"
exit "$failed"
