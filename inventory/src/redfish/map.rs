//! Pure mapping from Redfish JSON documents to the out-of-band model.
//!
//! Tolerant by design: vendors differ in which properties they fill, in
//! number types (`"CapacityMiB": "32768"` has been seen) and in case, so a
//! missing or oddly typed property becomes `None`, never an error. No I/O
//! here; `walk` fetches and calls these.

use serde_json::Value;

use crate::oob::{
    Battery, BmcNic, BmcSystem, Dimm, Drive, FirmwareComponent, PowerState, PowerSupply, Processor, Sensor, SensorKind,
};
use crate::{MacAddr, Source};

/// `"@odata.id"` of a reference object.
pub(crate) fn odata_id(v: &Value) -> Option<&str> {
    v.get("@odata.id").and_then(Value::as_str)
}

/// The `@odata.id` found at `path` (`["Links", "Sessions"]`).
pub(crate) fn link<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for key in path {
        cur = cur.get(key)?;
    }
    odata_id(cur)
}

/// References in an array property (`Links.Chassis`, `Drives`).
pub(crate) fn links<'a>(v: &'a Value, path: &[&str]) -> Vec<&'a str> {
    let mut cur = v;
    for key in path {
        match cur.get(key) {
            Some(next) => cur = next,
            None => return Vec::new(),
        }
    }
    cur.as_array().into_iter().flatten().filter_map(odata_id).collect()
}

/// A non-empty, trimmed string property.
pub(crate) fn text(v: &Value, key: &str) -> Option<String> {
    let s = v.get(key)?.as_str()?.trim();
    (!s.is_empty() && !s.eq_ignore_ascii_case("n/a") && !s.eq_ignore_ascii_case("not available")).then(|| s.to_owned())
}

/// A number, also when given as a string or as a sensor excerpt
/// (`{"Reading": 97}`).
pub(crate) fn num(v: &Value, key: &str) -> Option<f64> {
    let x = v.get(key)?;
    let x = x.get("Reading").unwrap_or(x);
    x.as_f64().or_else(|| x.as_str().and_then(|s| s.trim().parse().ok()))
}

fn uint(v: &Value, key: &str) -> Option<u32> {
    num(v, key).filter(|x| *x >= 0.0 && *x <= f64::from(u32::MAX)).map(|x| x as u32)
}

fn health(v: &Value) -> Option<String> {
    v.get("Status").and_then(|s| text(s, "Health"))
}

/// `Status.State == "Absent"`: an empty slot or bay.
pub(crate) fn absent(v: &Value) -> bool {
    v.pointer("/Status/State").and_then(Value::as_str).is_some_and(|s| s.eq_ignore_ascii_case("Absent"))
}

/// Lower-case and hyphenated (`4c4c4544-...`), as in-band DMI reports it.
/// Braces and missing hyphens are tolerated; an all-zero UUID is `None`.
pub fn normalize_uuid(raw: &str) -> Option<String> {
    let hex: String = raw.chars().filter(|c| c.is_ascii_hexdigit()).collect::<String>().to_ascii_lowercase();
    let stripped = raw.trim().trim_matches(|c| c == '{' || c == '}');
    if hex.len() != 32 || stripped.chars().any(|c| !c.is_ascii_hexdigit() && c != '-') {
        let s = raw.trim().to_ascii_lowercase();
        return (!s.is_empty()).then_some(s);
    }
    if hex.chars().all(|c| c == '0') {
        return None;
    }
    Some(format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32]))
}

pub(crate) fn power_state(v: &Value) -> Option<PowerState> {
    Some(match v.as_str()? {
        "On" => PowerState::On,
        "Off" => PowerState::Off,
        "PoweringOn" => PowerState::PoweringOn,
        "PoweringOff" => PowerState::PoweringOff,
        _ => PowerState::Unknown,
    })
}

pub(crate) fn system(sys: &Value) -> BmcSystem {
    BmcSystem {
        source: Some(Source::Redfish),
        manufacturer: text(sys, "Manufacturer"),
        model: text(sys, "Model"),
        serial: text(sys, "SerialNumber"),
        uuid: text(sys, "UUID").and_then(|u| normalize_uuid(&u)),
        bios_version: text(sys, "BiosVersion"),
        power_state: sys.get("PowerState").and_then(power_state),
        firmware_mode: match sys.pointer("/Boot/BootSourceOverrideMode").and_then(Value::as_str) {
            Some("UEFI") => Some(crate::FirmwareMode::Uefi),
            Some("Legacy") => Some(crate::FirmwareMode::Bios),
            _ => None,
        },
        secure_boot: None,
    }
}

/// A `SecureBoot` resource: on at the current boot, or (older BMCs
/// without `SecureBootCurrentBoot`) whether it is enabled.
pub(crate) fn secure_boot(sb: &Value) -> Option<bool> {
    match sb.get("SecureBootCurrentBoot").and_then(Value::as_str) {
        Some("Enabled") => Some(true),
        Some("Disabled") => Some(false),
        _ => sb.get("SecureBootEnable").and_then(Value::as_bool),
    }
}

pub(crate) fn processor(p: &Value) -> Option<Processor> {
    if absent(p) || p.get("ProcessorType").and_then(Value::as_str).is_some_and(|t| t != "CPU") {
        return None;
    }
    Some(Processor {
        socket: text(p, "Socket").or_else(|| text(p, "Id")),
        manufacturer: text(p, "Manufacturer"),
        model: text(p, "Model"),
        cores: uint(p, "TotalCores"),
        threads: uint(p, "TotalThreads"),
    })
}

/// A populated DIMM; empty slots (absent, or 0 MiB) are `None`.
pub(crate) fn dimm(m: &Value) -> Option<Dimm> {
    let mib = num(m, "CapacityMiB").filter(|x| *x > 0.0)?;
    if absent(m) {
        return None;
    }
    Some(Dimm {
        slot: text(m, "DeviceLocator")
            .or_else(|| m.pointer("/MemoryLocation/Slot").map(|s| s.to_string()))
            .or_else(|| text(m, "Id"))
            .unwrap_or_default(),
        size_bytes: (mib as u64) * 1024 * 1024,
        kind: text(m, "MemoryDeviceType"),
        speed_mhz: uint(m, "OperatingSpeedMhz"),
        manufacturer: text(m, "Manufacturer"),
        serial: text(m, "SerialNumber"),
    })
}

fn lower(s: Option<String>) -> Option<String> {
    s.map(|s| s.to_ascii_lowercase())
}

pub(crate) fn drive(d: &Value) -> Option<Drive> {
    if absent(d) {
        return None;
    }
    Some(Drive {
        name: text(d, "Name").or_else(|| text(d, "Id")).unwrap_or_default(),
        model: text(d, "Model"),
        serial: text(d, "SerialNumber"),
        size_bytes: num(d, "CapacityBytes").filter(|x| *x > 0.0).map(|x| x as u64),
        media: lower(text(d, "MediaType")),
        protocol: lower(text(d, "Protocol")),
    })
}

/// A legacy `SimpleStorage.Devices[]` entry.
pub(crate) fn simple_device(d: &Value) -> Option<Drive> {
    if absent(d) {
        return None;
    }
    Some(Drive {
        name: text(d, "Name").unwrap_or_default(),
        model: text(d, "Model"),
        serial: None,
        size_bytes: num(d, "CapacityBytes").filter(|x| *x > 0.0).map(|x| x as u64),
        media: None,
        protocol: None,
    })
}

pub(crate) fn nic(n: &Value) -> Option<BmcNic> {
    if absent(n) {
        return None;
    }
    let mac = text(n, "MACAddress")
        .or_else(|| text(n, "PermanentMACAddress"))
        .and_then(|m| m.parse::<MacAddr>().ok())
        .filter(|m| !m.is_zero());
    Some(BmcNic {
        name: text(n, "Id").or_else(|| text(n, "Name")).unwrap_or_default(),
        mac,
        speed_mbps: uint(n, "SpeedMbps"),
        link_up: n.get("LinkStatus").and_then(Value::as_str).map(|s| s == "LinkUp"),
    })
}

/// A PSU from legacy `Power.PowerSupplies[]` or a new-style
/// `PowerSubsystem/PowerSupplies` member.
pub(crate) fn power_supply(p: &Value) -> Option<PowerSupply> {
    if absent(p) {
        return None;
    }
    Some(PowerSupply {
        name: text(p, "Name").or_else(|| text(p, "MemberId")).or_else(|| text(p, "Id")).unwrap_or_default(),
        model: text(p, "Model"),
        serial: text(p, "SerialNumber"),
        capacity_watts: num(p, "PowerCapacityWatts").or_else(|| num(p, "PowerOutputWatts")),
        input_watts: num(p, "PowerInputWatts")
            .or_else(|| p.pointer("/Metrics/InputPowerWatts").and_then(Value::as_f64)),
        firmware: text(p, "FirmwareVersion"),
        health: health(p),
    })
}

pub(crate) fn sensor(s: &Value, kind: SensorKind) -> Option<Sensor> {
    if absent(s) {
        return None;
    }
    let (key, units) = match kind {
        SensorKind::Temperature => ("ReadingCelsius", "Cel"),
        SensorKind::Fan => ("Reading", "RPM"),
        SensorKind::Voltage => ("ReadingVolts", "V"),
        SensorKind::Power => ("PowerConsumedWatts", "W"),
        SensorKind::Current | SensorKind::Other => ("Reading", ""),
    };
    let units = match (kind, s.get("ReadingUnits").and_then(Value::as_str)) {
        (SensorKind::Fan, Some(u)) if u.eq_ignore_ascii_case("percent") => "%",
        _ => units,
    };
    Some(Sensor {
        name: text(s, "Name").or_else(|| text(s, "FanName")).or_else(|| text(s, "MemberId")).unwrap_or_default(),
        kind,
        reading: num(s, key).or_else(|| num(s, "Reading")).or_else(|| num(s, "SpeedPercent")),
        units: (!units.is_empty()).then(|| units.to_owned()),
        health: health(s),
    })
}

/// A Battery resource; charge from `ChargePercent` (a sensor excerpt in
/// the schema), `CapacityRemainingPercent`, or inline `Metrics`.
pub(crate) fn battery(b: &Value) -> Battery {
    Battery {
        name: text(b, "Name").or_else(|| text(b, "Id")).unwrap_or_default(),
        charge_percent: battery_charge(b),
        health: health(b),
    }
}

pub(crate) fn battery_charge(b: &Value) -> Option<f64> {
    num(b, "ChargePercent")
        .or_else(|| num(b, "CapacityRemainingPercent"))
        .or_else(|| b.get("Metrics").and_then(|m| num(m, "ChargePercent")))
}

pub(crate) fn firmware(f: &Value) -> Option<FirmwareComponent> {
    Some(FirmwareComponent {
        id: text(f, "Id").or_else(|| odata_id(f).and_then(|p| p.rsplit('/').next()).map(str::to_owned))?,
        name: text(f, "Name"),
        version: text(f, "Version"),
        updateable: f.get("Updateable").and_then(Value::as_bool),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn firmware_mode_and_secure_boot_as_bmcs_spell_them() {
        let sys = |mode: &str| serde_json::json!({ "Boot": { "BootSourceOverrideMode": mode } });
        assert_eq!(system(&sys("UEFI")).firmware_mode, Some(crate::FirmwareMode::Uefi));
        assert_eq!(system(&sys("Legacy")).firmware_mode, Some(crate::FirmwareMode::Bios));
        assert_eq!(system(&sys("Other")).firmware_mode, None);
        assert_eq!(system(&serde_json::json!({})).firmware_mode, None);
        let sb = |v: Value| secure_boot(&v);
        assert_eq!(
            sb(serde_json::json!({ "SecureBootCurrentBoot": "Enabled", "SecureBootEnable": false })),
            Some(true)
        );
        assert_eq!(sb(serde_json::json!({ "SecureBootCurrentBoot": "Disabled" })), Some(false));
        assert_eq!(sb(serde_json::json!({ "SecureBootEnable": true })), Some(true), "older BMCs: enabled only");
        assert_eq!(sb(serde_json::json!({ "SecureBootMode": "SetupMode" })), None);
    }

    #[test]
    fn uuids_normalize_to_lower_hyphenated() {
        let check = |raw: &str, want: Option<&str>| assert_eq!(normalize_uuid(raw).as_deref(), want, "{raw}");
        check("4C4C4544-0042-3510-8053-B7C04F564E32", Some("4c4c4544-0042-3510-8053-b7c04f564e32"));
        check("{4C4C4544004235108053B7C04F564E32}", Some("4c4c4544-0042-3510-8053-b7c04f564e32"));
        check("00000000-0000-0000-0000-000000000000", None);
        check("not-a-uuid", Some("not-a-uuid"));
    }

    #[test]
    fn empty_dimm_slots_are_skipped_and_capacity_is_bytes() {
        let full = serde_json::json!({"Id": "DIMM1", "DeviceLocator": "A1", "CapacityMiB": "32768"});
        assert_eq!(dimm(&full).map(|d| d.size_bytes), Some(32 << 30));
        let empty = serde_json::json!({"Id": "DIMM2", "CapacityMiB": 0, "Status": {"State": "Absent"}});
        assert!(dimm(&empty).is_none());
    }
}
