#!/usr/bin/env bash
# Installs what Slipway's lab and tests need on Debian 12 (run as root).
# Idempotent: does nothing when everything is already there.
set -euo pipefail

packages=(
  qemu-system-x86 qemu-utils ipxe ipxe-qemu ovmf   # the lab's VMs and firmware
  iproute2 cpio zstd                               # namespaces, ramdisk tools
  busybox udhcpc isc-dhcp-client dhcpcd-base       # real DHCP clients in tests
  tftp-hpa curl atftp                              # real TFTP clients in tests
  dnsmasq-base                                     # the other DHCP server (proxy mode)
  isc-dhcp-relay                                   # a real DHCP relay (relay mode)
  fdisk dosfstools mtools syslinux syslinux-common # lab disk images, built unmounted
  gdisk                                            # sgdisk checks the GPTs the agent grows
  debootstrap e2fsprogs                            # the lab-debian OS image
  ca-certificates gcc pkg-config                    # building crates
  ipmitool openipmi                                # IPMI client; ipmi_sim, an IPMI BMC to test against
  nut-server                                       # NUT upsd + dummy-ups: a UPS to test against, the lab's UPS
  snmpsim                                          # snmpsimd: an SNMP agent serving UPS-MIB values
  python3-venv                                     # a venv for sushy-tools (a Redfish BMC to test against)
  postgresql                                       # PostgreSQL 15: the store suite's second database (scripts/postgres.sh)
)
find_missing() {
  missing=()
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
}
export DEBIAN_FRONTEND=noninteractive
find_missing
if [ "${#missing[@]}" -gt 0 ] || ! apt-cache show linux-image-amd64 >/dev/null 2>&1; then
  echo "prereqs: installing ${missing[*]:-(package lists only)}"
  apt-get update -qq
  [ "${#missing[@]}" -eq 0 ] || apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Installing one package can remove another: a machine with a backported
# qemu-utils loses it when Debian's qemu-system-x86 comes in. Check again.
find_missing
if [ "${#missing[@]}" -gt 0 ]; then
  echo "prereqs: installing ${missing[*]} (removed by the first round)"
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  find_missing
  [ "${#missing[@]}" -eq 0 ] || { echo "prereqs: could not install ${missing[*]}" >&2; exit 1; }
fi
for tool in qemu-img qemu-system-x86_64 debootstrap; do
  command -v "$tool" >/dev/null || { echo "prereqs: $tool missing after install" >&2; exit 1; }
done

if ! command -v cargo >/dev/null 2>&1; then
  # Debian's own toolchain is older than this workspace needs; a rustup
  # toolchain is expected on the machine. Try Debian's as a last resort.
  echo "prereqs: cargo not found; trying Debian's rustc/cargo"
  apt-get install -y -qq cargo rustc >/dev/null
fi

# The test runner: one process per test, parallel, with a serial group for
# the lab (.config/nextest.toml). Built from crates.io when missing.
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "prereqs: installing cargo-nextest"
  cargo install --locked --quiet cargo-nextest
fi

# Python peers live in a venv outside the clone, keyed by what it holds.
venv=/var/cache/slipway/venv
py_peers="sushy-tools==2.2.0"
if [ "$(cat "$venv/.peers" 2>/dev/null)" != "$py_peers" ]; then
  echo "prereqs: creating $venv with $py_peers"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q $py_peers
  echo "$py_peers" > "$venv/.peers"
fi

# schemathesis, which fuzzes the operator API from its OpenAPI document
# (scripts/api-fuzz.sh), in a venv of its own: changing its pin does not
# rebuild the peers' venv, and the reverse.
fuzz_venv=/var/cache/slipway/venv-schemathesis
fuzz_pkgs="schemathesis==4.32.5 hypothesis==6.170.17"  # hypothesis: scripts/api-fuzz-hooks.py patches it
if [ "$(cat "$fuzz_venv/.pkgs" 2>/dev/null)" != "$fuzz_pkgs" ]; then
  echo "prereqs: creating $fuzz_venv with $fuzz_pkgs"
  rm -rf "$fuzz_venv"
  python3 -m venv "$fuzz_venv"
  "$fuzz_venv/bin/pip" install -q $fuzz_pkgs
  echo "$fuzz_pkgs" > "$fuzz_venv/.pkgs"
fi
