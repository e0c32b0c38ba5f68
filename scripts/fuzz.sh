#!/usr/bin/env bash
# Builds and runs the cargo-fuzz targets under fuzz/ (issue 17), each for a
# bounded time, and prints how long each ran and whether it crashed. Not
# run in CI. No AddressSanitizer (`--sanitizer none`): the crate forbids
# `unsafe`, so a panic is what a target can find, and ASan breaks the build
# of librdkafka (cc instruments the C it compiles, and mklove's link
# checks then fail). Needs the nightly toolchain (`rustup toolchain install
# nightly`) and installs cargo-fuzz from crates.io when missing.
#
#   scripts/fuzz.sh            # 60 s per target
#   FUZZ_SECONDS=600 scripts/fuzz.sh publish_target
#
# The seed corpora (fuzz/corpus/<target>/seed-*) are kept in the repo;
# what a run adds stays local (.gitignore). A crash leaves its input in
# fuzz/artifacts/<target>/ and fails the script.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${FUZZ_SECONDS:-60}"
targets="${*:-publish_envelope publish_target yaml_loader app_response}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
rustup toolchain list | grep -q nightly || {
  echo "fuzz.sh: the nightly toolchain is missing (rustup toolchain install nightly)"; exit 1; }
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$HOME/.cache/perch-fuzz-target}"
cd fuzz
cargo +nightly fuzz build -O --sanitizer none
failed=""
for t in $targets; do
  mkdir -p "corpus/$t"
  t0=$SECONDS
  if cargo +nightly fuzz run -O --sanitizer none "$t" "corpus/$t" -- -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1 \
       >"/tmp/perch-fuzz-$t.log" 2>&1; then
    runs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "/tmp/perch-fuzz-$t.log" | tail -1 | awk '{print $2}')
    echo "fuzz.sh: $t ran $((SECONDS - t0)) s, ${runs:-?} inputs, no crash"
  else
    echo "fuzz.sh: $t FAILED after $((SECONDS - t0)) s (log /tmp/perch-fuzz-$t.log):"
    grep -E 'panicked|ERROR|SUMMARY|Test unit written' "/tmp/perch-fuzz-$t.log" | head -5
    failed="$failed $t"
  fi
done
[ -z "$failed" ] || { echo "fuzz.sh: crashed:$failed"; exit 1; }
