#!/usr/bin/env bash
# Quick start, part two: every test, lab included. This is what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/prereqs.sh
# Build artifacts are cached outside the clone; cargo keys them by input.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/slipway/cargo-target}"
export CARGO_TERM_COLOR=never

echo "== format, lints and crate layers"
cargo fmt --all --check
cargo clippy --locked --workspace --all-targets -- -D warnings
# Dependencies point down the layers; the appliance links no simulator.
python3 scripts/check-layers.py

echo "== release binaries for the lab and peer tests"
cargo build --release --locked --bins
export SLIPWAY_BIN="$CARGO_TARGET_DIR/release/slipway"
# Tests that need root, QEMU or real peers fail (not skip) when this is set.
export SLIPWAY_LAB_TESTS=1
# A throwaway PostgreSQL on loopback: the store suite and two appliances
# on one database run against it as well as against SQLite.
pgdir=$(mktemp -d /tmp/slipway-pg.XXXXXX)
SLIPWAY_TEST_POSTGRES_URL=$(bash scripts/postgres.sh start "$pgdir")
export SLIPWAY_TEST_POSTGRES_URL

# The lab tests boot QEMU guests (TCG, both cores) and share the lab's
# namespace: they run after the rest, one at a time. Everything else runs
# in parallel, one process per test (cargo-nextest). Keep LAB_TESTS the
# same as the `lab` group's filter in .config/nextest.toml.
LAB_TESTS='binary(lab_boot) | binary(bmc_qemu) | binary(fleet)'
log=$(mktemp)
trap 'rm -f "$log"; bash scripts/postgres.sh stop "$pgdir"; rm -rf "$pgdir"' EXIT
nextest() { cargo nextest run --locked --workspace --no-fail-fast --hide-progress-bar "$@" 2>&1 | tee -a "$log"; }
echo "== unit and peer tests (parallel)"
nextest -E "not ($LAB_TESTS)"
echo "== the API's deploy flow on PostgreSQL"
SLIPWAY_TEST_API_DB=postgres nextest --lib -E 'test(/routes::deploy/)'
echo "== lab tests (QEMU, one at a time)"
nextest -E "$LAB_TESTS" --test-threads 1

echo "== fuzzing the network decoders (20 s a target)"
bash scripts/fuzz.sh 20 | tee -a "$log"
echo "== fuzzing the operator API from its OpenAPI document (schemathesis, loopback-only namespace)"
# Its last line is "api fuzz: ... ok" or "... FAILED"; a failure fails the run.
bash scripts/api-fuzz.sh 150 | tee -a "$log"
# One closing line for the whole run, from nextest's summaries
# ("Summary [ 61.2s] 380 tests run: 380 passed, 9 skipped": skipped are
# the other phases' tests).
awk '/^ *Summary \[/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     /^fuzz [a-z_]*: ok/ { z += 1 } /^api fuzz: / { a = $0 }
     END { printf "\n%s\ntests: %d passed, %d failed; fuzz targets: %d passed\n", a, p, f, z }' "$log"
