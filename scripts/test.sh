#!/usr/bin/env bash
# Quick start, part two: every test, lab included. This is what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/prereqs.sh
# Build artifacts are cached outside the clone; cargo keys them by input.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/slipway/cargo-target}"
export CARGO_TERM_COLOR=never

echo "== format and lints"
cargo fmt --all --check
cargo clippy --locked --workspace --all-targets -- -D warnings

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

echo "== unit, peer and lab tests"
# The lab tests share one namespace name: run test binaries one thread each.
log=$(mktemp)
trap 'rm -f "$log"; bash scripts/postgres.sh stop "$pgdir"; rm -rf "$pgdir"' EXIT
cargo test --locked --workspace -- --test-threads=1 2>&1 | tee "$log"
echo "== the API's deploy flow on PostgreSQL"
SLIPWAY_TEST_API_DB=postgres cargo test --locked --workspace --lib -- --test-threads=1 routes::deploy 2>&1 | tee -a "$log"

echo "== fuzzing the network decoders (20 s a target)"
bash scripts/fuzz.sh 20 | tee -a "$log"
echo "== fuzzing the operator API from its OpenAPI document (schemathesis, loopback-only namespace)"
# Its last line is "api fuzz: ... ok" or "... FAILED"; a failure fails the run.
bash scripts/api-fuzz.sh 150 | tee -a "$log"
# One closing line for the whole run (the last cargo line is a doc-test
# binary with nothing in it).
awk '/^test result:/ { p += $4; f += $6 } /^fuzz [a-z_]*: ok/ { z += 1 } /^api fuzz: / { a = $0 }
     END { printf "\n%s\ntests: %d passed, %d failed; fuzz targets: %d passed\n", a, p, f, z }' "$log"
