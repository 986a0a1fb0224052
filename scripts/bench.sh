#!/usr/bin/env bash
# Benchmarks side by side with real peers (a report, not a test).
#   bash scripts/bench.sh            # DHCP storm of 1,000 clients (Slipway, Kea, dnsmasq),
#                                    # then TFTP with atftp (Slipway, tftpd-hpa), then the
#                                    # image write pipeline (slipway-agent, curl | zstd -d | dd)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/prereqs.sh
if ! command -v kea-dhcp4 >/dev/null 2>&1 || ! command -v in.tftpd >/dev/null 2>&1 || ! [ -x /usr/sbin/nginx ] || ! [ -x /usr/bin/time ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends kea-dhcp4-server tftpd-hpa nginx-light time >/dev/null
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/slipway/cargo-target}"
cargo build --release --locked --bins
"$CARGO_TARGET_DIR/release/slipway" bench dhcp --clients "${CLIENTS:-1000}" --report bench-dhcp.json
"$CARGO_TARGET_DIR/release/slipway" bench tftp --parallel "${PARALLEL:-200}" --report bench-tftp.json
"$CARGO_TARGET_DIR/release/slipway" bench write --size-mib "${WRITE_MIB:-2048}" --report bench-write.json
