#!/usr/bin/env bash
# Runs each cargo-fuzz target for SECONDS (default 20; test.sh uses that,
# run longer by hand: `bash scripts/fuzz.sh 600`). Stable Rust, no
# sanitizer: we hunt panics and broken invariants in memory-safe code.
# A crash leaves its input in fuzz/artifacts/<target>/ and fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-20}"
cache=/var/cache/slipway
fuzz="$cache/tools/bin/cargo-fuzz"
if [ ! -x "$fuzz" ]; then
  cargo install --locked --quiet --root "$cache/tools" cargo-fuzz@0.13.2
fi
target_dir="$cache/fuzz-target"
"$fuzz" build --fuzz-dir fuzz --sanitizer none -O --target-dir "$target_dir" >/dev/null 2>&1 || "$fuzz" build --fuzz-dir fuzz --sanitizer none -O --target-dir "$target_dir"
passed=0
for t in dhcp_request tftp_session image_bootable; do
  # Disk images need room for a partition table and a small FAT.
  max_len=4096
  [ "$t" = image_bootable ] && max_len=131072
  mkdir -p "fuzz/corpus/$t"
  # The corpus grows under the cache; the committed seeds stay read-only.
  work="$cache/fuzz-corpus/$t"
  mkdir -p "$work"
  if "$fuzz" run --fuzz-dir fuzz --sanitizer none -O --target-dir "$target_dir" "$t" "$work" "fuzz/corpus/$t" -- \
      -max_total_time="$seconds" -max_len="$max_len" -rss_limit_mb=1024 -print_final_stats=1 2>"$cache/fuzz-$t.log"; then
    echo "fuzz $t: ok, $(grep -m1 -o 'stat::number_of_executed_units: *[0-9]*' "$cache/fuzz-$t.log" | grep -o '[0-9]*$') runs in ${seconds}s"
    passed=$((passed + 1))
  else
    echo "fuzz $t: FAILED (see $cache/fuzz-$t.log and fuzz/artifacts/$t/)"
    tail -30 "$cache/fuzz-$t.log"
    exit 1
  fi
done
echo "fuzz: $passed targets passed"
