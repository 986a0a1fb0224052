#!/usr/bin/env bash
# Quick start, part one: build Slipway and run its main job end to end in
# the lab: three VMs (BIOS, UEFI, Secure Boot) network-boot through Slipway, are inventoried, get
# Debian written to their disks, boot it, and form one Docker Swarm.
# Extra arguments go to `slipway lab up` (e.g. --nodes 4 --keep).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/prereqs.sh
# Build artifacts are cached outside the clone; cargo keys them by input.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/slipway/cargo-target}"
cargo build --release --locked --bins
args=("$@")
[ "${#args[@]}" -gt 0 ] || args=(--nodes 3 --firmware mixed --deploy lab-debian --timeout 900 --report lab-report.json)
exec "$CARGO_TARGET_DIR/release/slipway" lab up "${args[@]}"
