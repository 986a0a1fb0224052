//! Vendor quirks as data: which BMC, which firmware, what goes wrong, and
//! what this client does about it.
//!
//! [`QUIRKS`] is the table the documentation and the tests read; the
//! predicates below it are the few places the client branches on a
//! vendor, each pointing at its table row. Quirks that the generic code
//! already absorbs (reset types read from the advertised values, inline or
//! through `@Redfish.ActionInfo`; `If-Match` sent whenever an ETag is
//! known; a boot override read back after the PATCH) are listed too, with
//! `handling` saying where. The vendor is classified once from the service
//! root (`Vendor`, then `Oem` keys), then from the System's
//! `Manufacturer`.

use serde_json::Value;

/// A BMC family with known quirks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vendor {
    /// Dell iDRAC (8, 9).
    Dell,
    /// HPE iLO (4, 5, 6).
    Hpe,
    /// Supermicro (X11, X12, H12 and later; AMI-based firmware).
    Supermicro,
    /// Lenovo XClarity Controller.
    Lenovo,
    /// AMI MegaRAC (many white-box and ODM boards).
    Ami,
    /// OpenBMC's bmcweb.
    OpenBmc,
    Other,
}

/// One known deviation from what a generic Redfish client expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quirk {
    pub vendor: Vendor,
    /// Firmware or product line it was seen on, when narrower than the vendor.
    pub firmware: Option<&'static str>,
    pub symptom: &'static str,
    /// What this client does about it.
    pub handling: &'static str,
}

/// The table. Sources are public: vendor documentation, DMTF tool issues,
/// Ironic/sushy, gofish, bmclib and nv-redfish notes.
pub const QUIRKS: &[Quirk] = &[
    Quirk {
        vendor: Vendor::Dell,
        firmware: Some("iDRAC 9"),
        symptom: "FirmwareInventory lists `Installed-*`, `Previous-*` and `Available-*` entries for the same \
                  component, so a naive read reports each firmware two or three times with different versions",
        handling: "firmware(): keep `Installed-*` and unprefixed entries only (skip_firmware_entry)",
    },
    Quirk {
        vendor: Vendor::Dell,
        firmware: Some("iDRAC 8/9"),
        symptom: "SimpleUpdate answers 202 with the job in the `Location` header \
                  (`/redfish/v1/TaskService/Tasks/JID_...`, `Managers/iDRAC.Embedded.1/Jobs/JID_...` on older \
                  firmware) and an empty body",
        handling: "simple_update(): the task URI is taken from `Location` first, then from a Task body",
    },
    Quirk {
        vendor: Vendor::Dell,
        firmware: None,
        symptom: "a few concurrent sessions only (RAC0218 'maximum number of user sessions is reached'); \
                  firmware inventory `ReleaseDate` is `00:00:00Z`",
        handling: "session create refused with a non-401 status -> fall back to basic auth; logout() deletes the \
                   session; dates are not read",
    },
    Quirk {
        vendor: Vendor::Hpe,
        firmware: Some("iLO 4/5"),
        symptom: "ResetType offers no `PowerCycle` (and no `GracefulRestart` on older firmware); iLO 4 offers \
                  `PushPowerButton` for what other BMCs call GracefulShutdown; `On` on a running server is \
                  refused with 400 `InvalidOperationForSystemState`",
        handling: "power(): reset types chosen from the advertised values (Cycle -> ForceRestart); GracefulOff -> \
                   PushPowerButton on HPE when GracefulShutdown is absent; On when already On is a no-op",
    },
    Quirk {
        vendor: Vendor::Hpe,
        firmware: Some("iLO 4"),
        symptom: "OEM data lives under `Oem.Hp` on iLO 4 and `Oem.Hpe` on iLO 5+, and the session `Location` is \
                  an absolute URL",
        handling: "classification accepts both OEM keys; absolute Location URLs are used as given for logout()",
    },
    Quirk {
        vendor: Vendor::Supermicro,
        firmware: Some("X11/X12/H12"),
        symptom: "a Boot PATCH without BootSourceOverrideMode resets the mode to the default (Legacy), and a \
                  PATCH answered 200 may not stick (mode/enabled silently reverted)",
        handling: "set_boot_once(): always send BootSourceOverrideMode on Supermicro (boot_mode_always); read \
                   the System back and fail if the target did not stick",
    },
    Quirk {
        vendor: Vendor::Supermicro,
        firmware: Some("X12 and later"),
        symptom: "PATCH on the System without `If-Match` is refused (428/412 precondition); the ETag is only in \
                  `@odata.etag`",
        handling: "If-Match from the ETag header, else from `@odata.etag`, on every PATCH",
    },
    Quirk {
        vendor: Vendor::Supermicro,
        firmware: None,
        symptom: "older boards expose disks only through `SimpleStorage`; Storage and UpdateService need an \
                  out-of-band licence and answer 4xx without it",
        handling: "SimpleStorage Devices read when present (deduplicated against Storage drives); a refused \
                   section is recorded in BmcInventory::errors, not fatal",
    },
    Quirk {
        vendor: Vendor::Lenovo,
        firmware: Some("ThinkSystem SR635/SR655 (AMD, AMI Redfish Server)"),
        symptom: "Boot PATCH without If-Match fails with `Ami.1.0.PreconditionHeaderMissing` while Intel \
                  ThinkSystem XCC accepts it",
        handling: "If-Match from the ETag (header or `@odata.etag`) on every PATCH",
    },
    Quirk {
        vendor: Vendor::Lenovo,
        firmware: Some("XCC"),
        symptom: "SimpleUpdate accepts only the transfer protocols it lists (SFTP/TFTP on XCC), HTTP images \
                  need the multipart push URI",
        handling: "simple_update(): an image URI whose scheme is not in TransferProtocol@Redfish.AllowableValues \
                   is Unsupported, naming what is offered",
    },
    Quirk {
        vendor: Vendor::Ami,
        firmware: Some("MegaRAC, Redfish 1.11.0 (e.g. GB200 'Viking' trays)"),
        symptom: "Systems collection lists members that are not computer systems; chassis without ChassisType \
                  and Name; `$expand` answers drop properties",
        handling: "inventory(): the first member whose `@odata.type` is ComputerSystem is the System; no \
                   property is required; `$expand` is never used",
    },
    Quirk {
        vendor: Vendor::OpenBmc,
        firmware: Some("bmcweb"),
        symptom: "ComputerSystem.Reset has no inline ResetType@Redfish.AllowableValues, only \
                  `@Redfish.ActionInfo` (`/redfish/v1/Systems/system/ResetActionInfo`); session create rejects \
                  any property other than exactly `UserName`/`Password`",
        handling: "power(): allowable values read from the ActionInfo Parameters when not inline; session body \
                   is exactly {UserName, Password}",
    },
];

impl Vendor {
    /// Classifies a BMC from its service root and, if known, its System.
    pub fn detect(root: &Value, system: Option<&Value>) -> Vendor {
        let by_name = |s: &str| -> Option<Vendor> {
            let s = s.to_ascii_lowercase();
            Some(if s.starts_with("dell") {
                Vendor::Dell
            } else if s == "hpe" || s == "hp" || s.starts_with("hewlett") {
                Vendor::Hpe
            } else if s.starts_with("supermicro") {
                Vendor::Supermicro
            } else if s.starts_with("lenovo") {
                Vendor::Lenovo
            } else if s == "ami" || s.starts_with("american megatrends") {
                Vendor::Ami
            } else if s == "openbmc" {
                Vendor::OpenBmc
            } else {
                return None;
            })
        };
        if let Some(v) = root.get("Vendor").and_then(Value::as_str).and_then(by_name) {
            return v;
        }
        if let Some(oem) = root.get("Oem").and_then(Value::as_object) {
            if let Some(v) = oem.keys().find_map(|k| by_name(k)) {
                return v;
            }
        }
        if let Some(v) = system.and_then(|s| s.get("Manufacturer")).and_then(Value::as_str).and_then(by_name) {
            return v;
        }
        if system.and_then(|s| s.get("Oem")).and_then(Value::as_object).is_some_and(|o| o.contains_key("Hpe")) {
            return Vendor::Hpe;
        }
        Vendor::Other
    }

    /// The table rows for this vendor.
    pub fn quirks(self) -> impl Iterator<Item = &'static Quirk> {
        QUIRKS.iter().filter(move |q| q.vendor == self)
    }
}

/// Supermicro resets the override mode unless it is sent with the target.
pub(crate) fn boot_mode_always(v: Vendor) -> bool {
    v == Vendor::Supermicro
}

/// iLO offers PushPowerButton where GracefulShutdown is missing.
pub(crate) fn push_button_for_graceful(v: Vendor) -> bool {
    v == Vendor::Hpe
}

/// iDRAC's FirmwareInventory entries that are not the running version.
pub(crate) fn skip_firmware_entry(v: Vendor, id: &str) -> bool {
    v == Vendor::Dell && (id.starts_with("Previous-") || id.starts_with("Available-"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn vendors_are_classified_from_root_oem_or_manufacturer() {
        let check = |root: Value, sys: Option<Value>, want: Vendor| {
            assert_eq!(Vendor::detect(&root, sys.as_ref()), want, "{root}");
        };
        check(json!({"Vendor": "Dell"}), None, Vendor::Dell);
        check(json!({"Oem": {"Hpe": {}}}), None, Vendor::Hpe);
        check(json!({"Oem": {"Hp": {}}}), None, Vendor::Hpe);
        check(json!({"Oem": {"Supermicro": {}}}), None, Vendor::Supermicro);
        check(json!({}), Some(json!({"Manufacturer": "Lenovo"})), Vendor::Lenovo);
        check(json!({"Vendor": "AMI"}), None, Vendor::Ami);
        check(json!({"Vendor": "OpenBMC"}), None, Vendor::OpenBmc);
        check(json!({"Vendor": "Contoso"}), None, Vendor::Other);
    }

    #[test]
    fn every_named_vendor_has_a_quirk_with_a_symptom_and_a_handling() {
        for v in [Vendor::Dell, Vendor::Hpe, Vendor::Supermicro, Vendor::Lenovo, Vendor::Ami, Vendor::OpenBmc] {
            assert!(v.quirks().count() > 0, "{v:?}");
            assert!(v.quirks().all(|q| !q.symptom.is_empty() && !q.handling.is_empty()));
        }
    }
}
