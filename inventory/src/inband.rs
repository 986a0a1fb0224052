//! Builds an [`Inventory`] from the text of `/proc` and `/sys` files.
//!
//! [`collect`] takes a [`FactSource`] so the same code runs against the real
//! filesystem in the agent and against a map of fixture files in tests.

use crate::model::{Cpu, Disk, Firmware, FirmwareMode, Inventory, Memory, Nic, Source, SystemInfo};
use crate::MacAddr;

/// Read access to the files the collector needs. Paths are absolute
/// (`/proc/cpuinfo`, `/sys/block`).
pub trait FactSource {
    /// The file's contents, or `None` when it is absent or unreadable.
    fn read(&self, path: &str) -> Option<String>;
    /// Entry names of a directory, sorted; empty when absent.
    fn list(&self, dir: &str) -> Vec<String>;
}

/// Collects every in-band fact. Missing files leave their fields empty
/// rather than failing: a partial inventory is still worth reporting.
pub fn collect(src: &dyn FactSource) -> Inventory {
    let cpuinfo = src.read("/proc/cpuinfo").unwrap_or_default();
    let meminfo = src.read("/proc/meminfo").unwrap_or_default();
    Inventory {
        source: Source::InBand,
        system: system_info(src),
        cpu: parse_cpuinfo(&cpuinfo),
        memory: Memory { total_bytes: parse_meminfo_total(&meminfo).unwrap_or(0) },
        disks: disks(src),
        nics: nics(src),
        firmware: Some(firmware(src)),
    }
}

/// The EFI global variables' vendor GUID (UEFI spec, `EFI_GLOBAL_VARIABLE`).
pub const EFI_GLOBAL: &str = "8be4df61-93ca-11d2-aa0d-00e098032b8c";

/// UEFI when the kernel was started through EFI (`/sys/firmware/efi`);
/// Secure Boot from the `SecureBoot` variable: four bytes of attributes,
/// then 1 when enforcing.
fn firmware(src: &dyn FactSource) -> Firmware {
    if src.list("/sys/firmware/efi").is_empty() {
        return Firmware { mode: FirmwareMode::Bios, secure_boot: None };
    }
    let var = src.read(&format!("/sys/firmware/efi/efivars/SecureBoot-{EFI_GLOBAL}"));
    let secure_boot = var.and_then(|v| v.as_bytes().get(4).map(|&b| b == 1));
    Firmware { mode: FirmwareMode::Uefi, secure_boot }
}

pub fn parse_cpuinfo(text: &str) -> Cpu {
    let mut count = 0;
    let mut model = None;
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        match key.trim() {
            "processor" => count += 1,
            "model name" if model.is_none() => model = clean(value),
            _ => {}
        }
    }
    Cpu { model, count }
}

/// `MemTotal` in bytes (`/proc/meminfo` reports kibibytes).
pub fn parse_meminfo_total(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

fn system_info(src: &dyn FactSource) -> SystemInfo {
    let dmi = |name: &str| src.read(&format!("/sys/class/dmi/id/{name}")).and_then(|v| clean(&v));
    SystemInfo {
        vendor: dmi("sys_vendor"),
        product: dmi("product_name"),
        serial: dmi("product_serial"),
        uuid: dmi("product_uuid").map(|u| u.to_ascii_lowercase()),
    }
}

/// Block devices that are disks: not loop, ram, zram, device-mapper or
/// optical devices, and not empty (a CD drive with no medium has size 0).
fn disks(src: &dyn FactSource) -> Vec<Disk> {
    const SKIP: [&str; 6] = ["loop", "ram", "zram", "dm-", "sr", "md"];
    src.list("/sys/block")
        .into_iter()
        .filter(|name| !SKIP.iter().any(|p| name.starts_with(p)))
        .filter_map(|name| {
            let base = format!("/sys/block/{name}");
            let sectors: u64 = src.read(&format!("{base}/size"))?.trim().parse().ok()?;
            if sectors == 0 {
                return None;
            }
            let attr = |path: &str| src.read(&format!("{base}/{path}")).and_then(|v| clean(&v));
            Some(Disk {
                size_bytes: sectors * 512, // sysfs counts 512-byte sectors whatever the block size
                model: attr("device/model"),
                serial: attr("serial").or_else(|| attr("device/serial")),
                rotational: attr("queue/rotational").map(|r| r == "1"),
                name,
            })
        })
        .collect()
}

/// Physical NICs: those with a `device` link in sysfs (skips lo, bridges,
/// bonds and other virtual interfaces).
fn nics(src: &dyn FactSource) -> Vec<Nic> {
    src.list("/sys/class/net")
        .into_iter()
        .filter(|name| src.read(&format!("/sys/class/net/{name}/device/uevent")).is_some())
        .filter_map(|name| {
            let base = format!("/sys/class/net/{name}");
            // An all-zero address is no identity (it would match every such NIC).
            let mac = src.read(&format!("{base}/address"))?.parse::<MacAddr>().ok().filter(|m| !m.is_zero())?;
            let link = src.read(&format!("{base}/carrier")).is_some_and(|c| c.trim() == "1");
            // `speed` is -1 or unreadable without link; only positive values mean anything.
            let speed_mbps = src
                .read(&format!("{base}/speed"))
                .and_then(|s| s.trim().parse::<i64>().ok())
                .filter(|s| *s > 0)
                .and_then(|s| u32::try_from(s).ok());
            Some(Nic { name, mac, link, speed_mbps })
        })
        .collect()
}

/// Trims a firmware string and drops the placeholders vendors ship
/// (`identity::is_placeholder`).
fn clean(value: &str) -> Option<String> {
    let v = value.trim();
    (!crate::identity::is_placeholder(v)).then(|| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    struct Files(BTreeMap<&'static str, &'static str>);

    impl FactSource for Files {
        fn read(&self, path: &str) -> Option<String> {
            self.0.get(path).map(|s| s.to_string())
        }
        fn list(&self, dir: &str) -> Vec<String> {
            let prefix = format!("{dir}/");
            let mut names: Vec<String> = self
                .0
                .keys()
                .filter_map(|k| k.strip_prefix(&prefix))
                .map(|rest| rest.split('/').next().unwrap_or_default().to_string())
                .collect();
            names.dedup();
            names
        }
    }

    fn qemu_node() -> Files {
        Files(BTreeMap::from([
            ("/proc/cpuinfo", "processor\t: 0\nmodel name\t: QEMU Virtual CPU version 2.5+\n\nprocessor\t: 1\nmodel name\t: QEMU Virtual CPU version 2.5+\n"),
            ("/proc/meminfo", "MemTotal:         482556 kB\nMemFree:          400000 kB\n"),
            ("/sys/class/dmi/id/sys_vendor", "Slipway Lab\n"),
            ("/sys/class/dmi/id/product_name", "QEMU Lab Node\n"),
            ("/sys/class/dmi/id/product_serial", "LAB-0001\n"),
            ("/sys/class/dmi/id/product_uuid", "5F2A0B6C-0000-4000-8000-000000000001\n"),
            ("/sys/block/vda/size", "16777216\n"),
            ("/sys/block/vda/serial", "disk-0001\n"),
            ("/sys/block/vda/queue/rotational", "1\n"),
            ("/sys/block/loop0/size", "0\n"),
            ("/sys/block/sr0/size", "0\n"),
            ("/sys/class/net/eth0/address", "52:54:00:AB:CD:01\n"),
            ("/sys/class/net/eth0/carrier", "1\n"),
            ("/sys/class/net/eth0/speed", "-1\n"),
            ("/sys/class/net/eth0/device/uevent", "DRIVER=virtio_net\n"),
            ("/sys/class/net/lo/address", "00:00:00:00:00:00\n"),
        ]))
    }

    #[test]
    fn collects_a_qemu_node() {
        let inv = collect(&qemu_node());
        assert_eq!(inv.cpu.count, 2);
        assert_eq!(inv.cpu.model.as_deref(), Some("QEMU Virtual CPU version 2.5+"));
        assert_eq!(inv.memory.total_bytes, 482_556 * 1024);
        assert_eq!(inv.system.serial.as_deref(), Some("LAB-0001"));
        assert_eq!(inv.system.uuid.as_deref(), Some("5f2a0b6c-0000-4000-8000-000000000001"));
        assert_eq!(inv.disks.len(), 1, "loop and empty optical drives are not disks");
        assert_eq!(inv.disks[0].size_bytes, 8 << 30);
        assert_eq!(inv.disks[0].serial.as_deref(), Some("disk-0001"));
        assert_eq!(inv.nics.len(), 1, "lo has no device and is skipped");
        assert_eq!(inv.nics[0].mac.to_string(), "52:54:00:ab:cd:01");
        assert!(inv.nics[0].link);
        assert_eq!(inv.nics[0].speed_mbps, None);
    }

    #[test]
    fn missing_files_give_a_partial_inventory() {
        let inv = collect(&Files(BTreeMap::new()));
        assert_eq!(inv.cpu.count, 0);
        assert!(inv.disks.is_empty() && inv.nics.is_empty());
        assert_eq!(inv.system, SystemInfo::default());
    }

    #[test]
    fn firmware_mode_and_secure_boot_come_from_sysfs_and_efivars() {
        let bios = collect(&qemu_node()).firmware.unwrap();
        assert_eq!((bios.mode, bios.secure_boot), (FirmwareMode::Bios, None));
        let var = "/sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c";
        let mut uefi = qemu_node();
        uefi.0.insert("/sys/firmware/efi/fw_platform_size", "64\n");
        assert_eq!(
            collect(&uefi).firmware,
            Some(Firmware { mode: FirmwareMode::Uefi, secure_boot: None }),
            "no efivarfs"
        );
        uefi.0.insert(var, "\u{6}\0\0\0\u{1}");
        assert_eq!(collect(&uefi).firmware.unwrap().secure_boot, Some(true));
        uefi.0.insert(var, "\u{6}\0\0\0\0");
        assert_eq!(collect(&uefi).firmware.unwrap().secure_boot, Some(false), "setup mode or disabled");
    }

    #[test]
    fn placeholders_are_dropped() {
        assert_eq!(clean("To Be Filled By O.E.M.\n"), None);
        assert_eq!(clean("System Serial Number"), None);
        assert_eq!(clean("0"), None);
        assert_eq!(clean("  Dell Inc. "), Some("Dell Inc.".into()));
    }

    #[test]
    fn inventory_round_trips_as_json() {
        let inv = collect(&qemu_node());
        let json = serde_json::to_string(&inv).unwrap();
        assert_eq!(serde_json::from_str::<Inventory>(&json).unwrap(), inv);
    }
}
