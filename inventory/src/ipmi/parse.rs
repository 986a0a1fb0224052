//! Pure functions over ipmitool's text: what `chassis power status`,
//! `mc info`, `mc guid`, `fru print` and `sdr list full` print, turned into
//! the out-of-band model, and what ipmitool's stderr says went wrong.
//!
//! No I/O here: the client (`super`) runs ipmitool and hands the text in,
//! so every function is tested with captured output (`tests/ipmi_peer.rs`,
//! fixtures under `tests/fixtures/ipmi/`). What this module does not own:
//! running ipmitool, timeouts and retries, and which section failed.
//!
//! Vendor quirks are data: [`FRU_PLACEHOLDERS`] lists the values vendors
//! leave in FRU fields, each with who ships it.

use crate::oob::{BmcSystem, FirmwareComponent, PowerAction, PowerState, Sensor, SensorKind};

/// FRU values that mean "not filled in" (the identity module's list,
/// which also keeps them from linking machines).
pub use crate::identity::PLACEHOLDERS as FRU_PLACEHOLDERS;

/// Trims a FRU value and drops the placeholders of [`FRU_PLACEHOLDERS`].
pub fn clean_fru_value(value: &str) -> Option<String> {
    let v = value.trim();
    let lower = v.to_ascii_lowercase();
    (!FRU_PLACEHOLDERS.iter().any(|(p, _)| *p == lower)).then(|| v.to_string())
}

/// `chassis power status`: "Chassis Power is on". `None` when the line is
/// missing (the caller reports a malformed answer); a state ipmitool
/// names that we do not know is [`PowerState::Unknown`].
pub fn parse_power_status(text: &str) -> Option<PowerState> {
    let line = text.lines().find_map(|l| l.trim().strip_prefix("Chassis Power is "))?;
    Some(match line.trim().to_ascii_lowercase().as_str() {
        "on" => PowerState::On,
        "off" => PowerState::Off,
        _ => PowerState::Unknown,
    })
}

/// ipmitool's word for each power action (`chassis power WORD`).
pub fn power_command(action: PowerAction) -> &'static str {
    match action {
        PowerAction::On => "on",
        PowerAction::GracefulOff => "soft",
        PowerAction::ForceOff => "off",
        PowerAction::Cycle => "cycle",
        PowerAction::Reset => "reset",
    }
}

/// The `key : value` lines of ipmitool's listings (`mc info`, `fru print`,
/// `mc guid`), in order, keys and values trimmed. Lines without a colon
/// (the indented lists under "Additional Device Support") are skipped.
fn key_values(text: &str) -> impl Iterator<Item = (&str, &str)> {
    text.lines().filter_map(|l| {
        let (k, v) = l.split_once(':')?;
        Some((k.trim(), v.trim()))
    })
}

/// `mc info`: the BMC's firmware as the component with id `BMC`, its
/// version the "Firmware Revision" (for example `2.47`). `None` when the
/// line is missing or empty.
pub fn parse_mc_info(text: &str) -> Option<FirmwareComponent> {
    let version = key_values(text).find(|(k, _)| *k == "Firmware Revision").map(|(_, v)| v.to_string())?;
    if version.is_empty() {
        return None;
    }
    let maker = key_values(text)
        .find(|(k, _)| *k == "Manufacturer Name")
        .map(|(_, v)| v.to_string())
        .filter(|v| !v.is_empty() && !v.starts_with("Unknown"));
    let name = match maker {
        Some(m) => format!("{m} BMC firmware"),
        None => "BMC firmware".to_string(),
    };
    Some(FirmwareComponent { id: "BMC".into(), name: Some(name), version: Some(version), updateable: None })
}

/// `mc guid`: the "System GUID" line, as ipmitool decoded it, lower-case
/// and hyphenated (`7e1a2b3c-4d5e-4f60-a1b2-c3d4e5f60718`). `None` when
/// missing, not 32 hex digits, or all zeros / all ones (BMCs that never
/// had one set).
pub fn parse_mc_guid(text: &str) -> Option<String> {
    let raw = key_values(text).find(|(k, _)| *k == "System GUID").map(|(_, v)| v)?;
    normalize_guid(raw)
}

/// Any spelling of a GUID (hyphens, braces, upper case) to the lower-case
/// hyphenated form in-band DMI uses. `None` for anything else and for the
/// all-zero and all-ones values.
pub fn normalize_guid(raw: &str) -> Option<String> {
    let hex: String = raw.chars().filter(|c| !matches!(c, '-' | '{' | '}' | ' ')).collect();
    if hex.len() != 32 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let hex = hex.to_ascii_lowercase();
    if hex.chars().all(|c| c == '0') || hex.chars().all(|c| c == 'f') {
        return None;
    }
    Some(format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32]))
}

/// `fru print`: the machine's identity from the first FRU device (the
/// builtin one, ID 0, on every BMC we know). Manufacturer and model come
/// from the product area, else the board area; the serial from the
/// product area, else the chassis, else the board. Placeholders are
/// dropped (see [`FRU_PLACEHOLDERS`]). `source`, `uuid` and
/// `power_state` are left for the caller.
pub fn parse_fru(text: &str) -> BmcSystem {
    // Only the first device: later ones are DIMMs, PSUs, backplanes.
    let mut first = Vec::new();
    let mut devices = 0;
    for (k, v) in key_values(text) {
        if k == "FRU Device Description" {
            devices += 1;
            if devices > 1 {
                break;
            }
            continue;
        }
        first.push((k, v));
    }
    let get = |key: &str| first.iter().find(|(k, _)| *k == key).and_then(|(_, v)| clean_fru_value(v));
    BmcSystem {
        manufacturer: get("Product Manufacturer").or_else(|| get("Board Mfg")),
        model: get("Product Name").or_else(|| get("Board Product")),
        serial: get("Product Serial").or_else(|| get("Chassis Serial")).or_else(|| get("Board Serial")),
        ..BmcSystem::default()
    }
}

/// `sdr list full`: one sensor per `name | reading units | status` line.
/// Readings ipmitool could not take ("no reading", "disabled") are `None`;
/// units are mapped to `Cel`, `RPM`, `V`, `W`, `A`, `%` (Fahrenheit and
/// Kelvin converted to Celsius) and decide the kind; other units are kept
/// as ipmitool spells them. Status `ok` is health `OK`, `nc` `Warning`,
/// `cr` and `nr` `Critical`; `ns` and `na` have no health.
pub fn parse_sdr_list(text: &str) -> Vec<Sensor> {
    text.lines().filter_map(parse_sdr_line).collect()
}

fn parse_sdr_line(line: &str) -> Option<Sensor> {
    let mut cols = line.split('|').map(str::trim);
    let (name, value, status) = (cols.next()?, cols.next()?, cols.next()?);
    if name.is_empty() {
        return None;
    }
    let (number, unit_text) = match value.split_once(' ') {
        Some((n, u)) => (n, u.trim()),
        None => (value, ""),
    };
    let parsed = if number.starts_with("0x") { None } else { number.parse::<f64>().ok() };
    let (kind, units, reading) = match parsed {
        Some(v) => map_units(unit_text, v),
        None => (SensorKind::Other, None, None),
    };
    let health = match status {
        "ok" => Some("OK"),
        "nc" => Some("Warning"),
        "cr" | "nr" => Some("Critical"),
        _ => None,
    };
    Some(Sensor { name: name.to_string(), kind, reading, units, health: health.map(str::to_string) })
}

/// ipmitool's unit text to the model's kind, unit and (converted) value.
fn map_units(unit: &str, value: f64) -> (SensorKind, Option<String>, Option<f64>) {
    let (kind, units, reading) = match unit {
        "degrees C" => (SensorKind::Temperature, "Cel", value),
        "degrees F" => (SensorKind::Temperature, "Cel", (value - 32.0) * 5.0 / 9.0),
        "degrees K" => (SensorKind::Temperature, "Cel", value - 273.15),
        "RPM" => (SensorKind::Fan, "RPM", value),
        "Volts" => (SensorKind::Voltage, "V", value),
        "Watts" => (SensorKind::Power, "W", value),
        "Amps" => (SensorKind::Current, "A", value),
        u if u == "percent" || u.starts_with('%') => (SensorKind::Other, "%", value),
        "" | "unspecified" => return (SensorKind::Other, None, Some(value)),
        other => return (SensorKind::Other, Some(other.to_string()), Some(value)),
    };
    (kind, Some(units.to_string()), Some(reading))
}

/// What a failed ipmitool run's stderr says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The BMC refused the user name or the password (RAKP).
    Auth,
    /// Nothing answered the session set-up: down, filtered or wrong port.
    NoAnswer,
    /// The BMC answered but has no free session slot: worth one retry.
    Busy,
    /// The session could not be set up for another reason (cipher suite,
    /// privilege level, unsupported IPMI version, unresolvable name).
    Session,
    /// The session worked and the command itself failed.
    Command,
}

/// Classifies stderr of a failed run. Needs `-v` for the RAKP details:
/// without it ipmitool prints only "Unable to establish IPMI v2 / RMCP+
/// session" for a wrong password and for a dead BMC alike.
pub fn classify_failure(stderr: &str) -> Failure {
    let s = stderr.to_ascii_lowercase();
    let any = |needles: &[&str]| needles.iter().any(|n| s.contains(n));
    if any(&[
        "rakp 2 hmac is invalid",
        "unauthorized name",
        "invalid integrity check",
        "rakp 4 message has invalid integrity",
        "invalid password",
        "unauthorized role",
        "invalid name length",
    ]) {
        Failure::Auth
    } else if any(&["insufficient resources for session", "no session slot"]) {
        Failure::Busy
    } else if any(&[
        "get auth capabilities error",
        "no response from remote controller",
        "error issuing get channel authentication capabilities",
    ]) {
        Failure::NoAnswer
    } else if any(&["unable to establish", "address lookup for", "set session privilege level"]) {
        Failure::Session
    } else {
        Failure::Command
    }
}

/// ipmitool's stderr cut to what a person needs in an error: the last
/// lines that are not `-v` chatter, joined with "; ", at most 300 bytes.
pub fn trim_stderr(stderr: &str) -> String {
    const CHATTER: &[&str] = &["Loading IANA PEN Registry", "Running Get ", "Discovered IPMB address"];
    let lines: Vec<&str> = stderr
        .lines()
        .map(|l| l.trim().trim_start_matches('>').trim())
        .filter(|l| !l.is_empty() && !CHATTER.iter().any(|c| l.starts_with(c)))
        .collect();
    let tail = &lines[lines.len().saturating_sub(3)..];
    let mut joined = tail.join("; ");
    if joined.len() > 300 {
        let mut cut = 300;
        while !joined.is_char_boundary(cut) {
            cut -= 1;
        }
        joined.truncate(cut);
        joined.push('…');
    }
    if joined.is_empty() {
        "ipmitool failed without a message".to_string()
    } else {
        joined
    }
}
