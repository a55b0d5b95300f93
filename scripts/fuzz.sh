#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets) for a bounded time each:
#   scripts/fuzz.sh [SECONDS_PER_TARGET]   (default 30)
# Seeds come from fuzz/corpus/<target> (kept in the repository); what the
# run discovers goes to a temporary folder, so the tree stays clean. A crash
# fails the script and leaves its input under fuzz/artifacts/<target>/.
# Needs a nightly toolchain (libFuzzer's instrumentation and AddressSanitizer)
# and cargo-fuzz, which it installs when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-30}

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz (first run only)"
  cargo install --locked cargo-fuzz
fi
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  toolchain=(+nightly)
  sanitizer=address
else
  # No nightly: stable with its unstable flags unlocked, without ASan.
  echo "no nightly toolchain: fuzzing on stable without AddressSanitizer"
  toolchain=()
  sanitizer=none
  export RUSTC_BOOTSTRAP=1
fi

cargo "${toolchain[@]}" fuzz build -s "$sanitizer"
targets=$(cargo "${toolchain[@]}" fuzz list)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for target in $targets; do
  mkdir -p "$work/$target"
  log="$work/$target.log"
  if ! cargo "${toolchain[@]}" fuzz run -s "$sanitizer" "$target" "$work/$target" "fuzz/corpus/$target" -- \
      -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
    grep -A 12 -E 'panicked|ERROR: (AddressSanitizer|libFuzzer)' "$log" | head -n 40 || tail -n 40 "$log"
    echo "fuzz target $target failed; the input is under fuzz/artifacts/$target/"
    exit 1
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  found=$(find "$work/$target" -type f | wc -l)
  echo "fuzz $target: ${runs:-?} executions in ${seconds}s, no crash; $found new corpus inputs"
done
