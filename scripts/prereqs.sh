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
