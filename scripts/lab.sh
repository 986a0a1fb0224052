#!/usr/bin/env bash
# Quick start, part one: build Slipway and run the lab end to end: two VMs
# (one BIOS, one UEFI) network-boot through Slipway and appear in its API.
# Extra arguments go to `slipway lab up` (e.g. --nodes 4 --keep).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/prereqs.sh
# Build artifacts are cached outside the clone; cargo keys them by input.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/slipway/cargo-target}"
cargo build --release --locked --bins
args=("$@")
[ "${#args[@]}" -gt 0 ] || args=(--nodes 2 --firmware mixed --report lab-report.json)
exec "$CARGO_TARGET_DIR/release/slipway" lab up "${args[@]}"
