//! What changed between two out-of-band inventories of one machine, as a
//! list an operator reads: a DIMM gone from its slot, a disk replaced, a
//! power supply removed, new firmware. Pure; the store raises the event.

use std::collections::BTreeMap;

use crate::oob::BmcInventory;
use serde_json::{json, Value};

/// One entry per change: `{"section", "change": added|removed|changed, "item", "from"?, "to"?}`.
pub fn diff(old: &BmcInventory, new: &BmcInventory) -> Vec<Value> {
    let mut out = vec![];
    keyed(&mut out, "memory", by(&old.memory, |d| d.slot.clone()), by(&new.memory, |d| d.slot.clone()), |d| {
        format!("{} MiB {}", d.size_bytes >> 20, d.serial.as_deref().unwrap_or(""))
    });
    // A drive is its serial where the BMC gives one: a replaced disk shows
    // as one removed and one added, even in the same bay.
    let drive_key = |d: &crate::oob::Drive| d.serial.clone().unwrap_or_else(|| d.name.clone());
    keyed(&mut out, "drives", by(&old.drives, drive_key), by(&new.drives, drive_key), |d| {
        format!("{} {} bytes", d.model.as_deref().unwrap_or("?"), d.size_bytes.unwrap_or(0))
    });
    let nic_key = |n: &crate::oob::BmcNic| n.mac.map_or_else(|| n.name.clone(), |m| m.to_string());
    keyed(&mut out, "nics", by(&old.nics, nic_key), by(&new.nics, nic_key), |n| n.name.clone());
    let psu_key = |p: &crate::oob::PowerSupply| p.serial.clone().unwrap_or_else(|| p.name.clone());
    keyed(&mut out, "power_supplies", by(&old.power_supplies, psu_key), by(&new.power_supplies, psu_key), |p| {
        format!("{} {}", p.name, p.model.as_deref().unwrap_or(""))
    });
    let cpu_key = |i: usize, p: &crate::oob::Processor| p.socket.clone().unwrap_or_else(|| i.to_string());
    let cpus = |list: &[crate::oob::Processor]| {
        list.iter().enumerate().map(|(i, p)| (cpu_key(i, p), p.clone())).collect::<BTreeMap<_, _>>()
    };
    keyed(&mut out, "processors", cpus(&old.processors), cpus(&new.processors), |p| {
        p.model.clone().unwrap_or_default()
    });
    keyed(&mut out, "firmware", by(&old.firmware, |f| f.id.clone()), by(&new.firmware, |f| f.id.clone()), |f| {
        f.version.clone().unwrap_or_default()
    });
    for (field, a, b) in [
        ("serial", &old.system.serial, &new.system.serial),
        ("uuid", &old.system.uuid, &new.system.uuid),
        ("bios_version", &old.system.bios_version, &new.system.bios_version),
    ] {
        if a != b {
            out.push(json!({ "section": "system", "change": "changed", "item": field, "from": a, "to": b }));
        }
    }
    out
}

/// The same for two in-band inventories (what the discovery agent saw at
/// two boots): disks by serial, NICs by MAC, CPU count, memory size.
pub fn diff_in_band(old: &crate::Inventory, new: &crate::Inventory) -> Vec<Value> {
    let mut out = vec![];
    let disk_key = |d: &crate::Disk| d.serial.clone().unwrap_or_else(|| d.name.clone());
    keyed(&mut out, "disks", by(&old.disks, disk_key), by(&new.disks, disk_key), |d| {
        format!("{} {} bytes", d.name, d.size_bytes)
    });
    keyed(&mut out, "nics", by(&old.nics, |n| n.mac.to_string()), by(&new.nics, |n| n.mac.to_string()), |n| {
        n.name.clone()
    });
    if old.cpu.count != new.cpu.count {
        out.push(json!({ "section": "cpu", "change": "changed", "item": "count", "from": old.cpu.count, "to": new.cpu.count }));
    }
    // MemTotal moves by a few KiB between kernels; a DIMM is at least 1 GiB.
    let (a, b) = (old.memory.total_bytes, new.memory.total_bytes);
    if a.abs_diff(b) > 256 << 20 {
        out.push(json!({ "section": "memory", "change": "changed", "item": "total_bytes", "from": a, "to": b }));
    }
    out
}

fn by<T: Clone>(items: &[T], key: impl Fn(&T) -> String) -> BTreeMap<String, T> {
    items.iter().map(|i| (key(i), i.clone())).collect()
}

fn keyed<T: PartialEq>(
    out: &mut Vec<Value>,
    section: &str,
    old: BTreeMap<String, T>,
    new: BTreeMap<String, T>,
    describe: impl Fn(&T) -> String,
) {
    for (key, item) in &old {
        match new.get(key) {
            None => out.push(json!({ "section": section, "change": "removed", "item": key, "from": describe(item) })),
            Some(now) if now != item => out.push(
                json!({ "section": section, "change": "changed", "item": key, "from": describe(item), "to": describe(now) }),
            ),
            Some(_) => {}
        }
    }
    for (key, item) in &new {
        if !old.contains_key(key) {
            out.push(json!({ "section": section, "change": "added", "item": key, "to": describe(item) }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oob::{Dimm, Drive, FirmwareComponent};

    fn machine() -> BmcInventory {
        let dimm = |slot: &str| Dimm { slot: slot.into(), size_bytes: 16 << 30, ..Default::default() };
        BmcInventory {
            memory: vec![dimm("A1"), dimm("A2")],
            drives: vec![Drive { name: "Disk.Bay.0".into(), serial: Some("S1".into()), ..Default::default() }],
            firmware: vec![FirmwareComponent { id: "BIOS".into(), version: Some("1.0".into()), ..Default::default() }],
            ..Default::default()
        }
    }

    fn check(change: impl FnOnce(&mut BmcInventory), expected: &[(&str, &str, &str)]) {
        let mut new = machine();
        change(&mut new);
        let got: Vec<(String, String, String)> = diff(&machine(), &new)
            .iter()
            .map(|c| {
                let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
                (s("section"), s("change"), s("item"))
            })
            .collect();
        let expected: Vec<(String, String, String)> =
            expected.iter().map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string())).collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn changes_are_named_by_section_and_item() {
        check(|_| {}, &[]);
        check(|m| drop(m.memory.remove(1)), &[("memory", "removed", "A2")]);
        check(|m| m.drives[0].serial = Some("S2".into()), &[("drives", "removed", "S1"), ("drives", "added", "S2")]);
        check(|m| m.firmware[0].version = Some("1.1".into()), &[("firmware", "changed", "BIOS")]);
        check(|m| m.system.bios_version = Some("1.1".into()), &[("system", "changed", "bios_version")]);
    }
}

#[cfg(test)]
mod in_band_tests {
    use super::diff_in_band;
    use crate::{Cpu, Disk, Inventory, Memory, Nic, Source, SystemInfo};

    fn machine() -> Inventory {
        Inventory {
            source: Source::InBand,
            system: SystemInfo::default(),
            cpu: Cpu { model: None, count: 4 },
            memory: Memory { total_bytes: 16 << 30 },
            disks: vec![Disk {
                name: "sda".into(),
                size_bytes: 1 << 40,
                model: None,
                serial: Some("S1".into()),
                rotational: None,
            }],
            nics: vec![Nic {
                name: "eth0".into(),
                mac: "52:54:00:00:00:01".parse().unwrap(),
                link: true,
                speed_mbps: None,
            }],
            firmware: None,
        }
    }

    #[test]
    fn a_replaced_disk_and_a_missing_dimm_are_named() {
        assert!(diff_in_band(&machine(), &machine()).is_empty());
        let mut new = machine();
        new.disks[0].serial = Some("S2".into());
        new.memory.total_bytes = 8 << 30;
        new.memory.total_bytes += 4096;
        let items: Vec<String> = diff_in_band(&machine(), &new)
            .iter()
            .map(|c| format!("{} {} {}", c["section"], c["change"], c["item"]))
            .collect();
        assert_eq!(
            items,
            ["\"disks\" \"removed\" \"S1\"", "\"disks\" \"added\" \"S2\"", "\"memory\" \"changed\" \"total_bytes\""]
        );
    }
}
