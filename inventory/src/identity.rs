//! Which serials and UUIDs identify a machine. Firmware of cheap and
//! white-box boards ships the same placeholder in every unit ("To Be
//! Filled By O.E.M.", an all-zero UUID); two machines that both report one
//! are not the same machine, so such values never link records. The
//! inventory keeps what the machine reported; only linking ignores it.

/// Values vendors leave in serial (and other FRU/SMBIOS) fields. Each
/// entry names who ships it. Compared case-insensitively after trimming.
pub const PLACEHOLDERS: &[(&str, &str)] = &[
    ("", "any vendor: an empty field"),
    ("to be filled by o.e.m.", "AMI firmware on Supermicro, ASRock Rack and white-box boards"),
    ("0123456789", "Supermicro X10/X11 FRU product serial and version left at the factory default"),
    ("default string", "AMI Aptio V boards"),
    ("not specified", "HPE and generic SMBIOS-derived FRUs"),
    ("system serial number", "Intel S2600 reference boards"),
    ("chassis serial number", "generic SMBIOS type 3 defaults"),
    ("none", "Quanta and generic OEM FRUs"),
    ("n/a", "Lenovo XClarity FRU areas that are not populated"),
];

/// SMBIOS UUIDs that firmware writes when the board was never given one.
pub const PLACEHOLDER_UUIDS: &[(&str, &str)] = &[
    ("03000200-0400-0500-0006-000700080009", "AMI Aptio default on white-box boards"),
    ("00020003-0004-0005-0006-000700080009", "the same default in SMBIOS 2.6+ byte order"),
];

/// Whether `value` is a vendor placeholder rather than something that
/// tells machines apart: a listed value, or one character repeated
/// (`0000000000`, `XXXXXXXX`, `..........`).
pub fn is_placeholder(value: &str) -> bool {
    let v = value.trim().to_ascii_lowercase();
    let mut chars = v.chars();
    let repeated = chars.next().is_some_and(|first| chars.all(|c| c == first));
    repeated || PLACEHOLDERS.iter().any(|(p, _)| *p == v)
}

/// Whether `uuid` is a placeholder: a listed default, or one hex digit
/// repeated (all zeros, all F).
pub fn is_placeholder_uuid(uuid: &str) -> bool {
    let u = uuid.trim().to_ascii_lowercase();
    let mut digits = u.chars().filter(|c| *c != '-');
    let repeated = digits.next().is_none_or(|first| digits.all(|c| c == first));
    repeated || PLACEHOLDER_UUIDS.iter().any(|(p, _)| *p == u)
}

/// The serial, if it can link records.
pub fn linkable_serial(serial: Option<&str>) -> Option<String> {
    serial.filter(|s| !is_placeholder(s)).map(|s| s.trim().to_string())
}

/// The UUID, if it can link records.
pub fn linkable_uuid(uuid: Option<&str>) -> Option<String> {
    uuid.filter(|u| !is_placeholder_uuid(u)).map(|u| u.trim().to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_do_not_identify_a_machine() {
        for serial in
            ["To Be Filled By O.E.M.", " System Serial Number ", "0000000000", "XXXXXXXX", "", "  ", "Default string"]
        {
            assert_eq!(linkable_serial(Some(serial)), None, "{serial:?}");
        }
        assert_eq!(linkable_serial(Some(" LAB-0001 ")), Some("LAB-0001".into()));
        assert_eq!(linkable_serial(Some("S211X0912AB")), Some("S211X0912AB".into()));
        for uuid in [
            "00000000-0000-0000-0000-000000000000",
            "FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF",
            "03000200-0400-0500-0006-000700080009",
            "",
        ] {
            assert_eq!(linkable_uuid(Some(uuid)), None, "{uuid:?}");
        }
        assert_eq!(
            linkable_uuid(Some("5F1A0000-0000-4000-8000-000000000001")),
            Some("5f1a0000-0000-4000-8000-000000000001".into())
        );
    }
}
