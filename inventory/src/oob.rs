//! The out-of-band model: what a BMC (Redfish, IPMI) or a UPS (NUT, SNMP
//! UPS-MIB, Redfish power equipment) says about a machine or a rack,
//! normalized so that the API, the poller and the tests see one shape
//! whatever protocol produced it.
//!
//! Pure data and one error type; the clients that fill it live in
//! `redfish`, `ipmi` and `ups` (feature `oob`).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::Source;

/// A BMC's or UPS's login. `Debug` never shows the password, so a
/// credential that ends up in a log line or an error says nothing secret.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials").field("username", &self.username).field("password", &"<redacted>").finish()
    }
}

crate::closed_enum!(
    /// How Slipway talks to a BMC.
    #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
    BmcProtocol { Redfish => "redfish", Ipmi => "ipmi" }
);

crate::closed_enum!(
    /// How Slipway reads a UPS: a NUT upsd, SNMP (UPS-MIB), or Redfish
    /// power equipment.
    #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
    UpsProtocol { Nut => "nut", Snmp => "snmp", Redfish => "redfish" }
);

/// How to trust a BMC's TLS certificate. Most BMCs ship a self-signed one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case", tag = "mode", content = "ca_pem")]
pub enum TlsTrust {
    /// The system roots (and the name must match).
    #[default]
    Verify,
    /// Any certificate: for BMCs with a factory self-signed certificate.
    Insecure,
    /// Only certificates issued by this CA (PEM).
    Ca(String),
}

/// Chassis power as the BMC reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum PowerState {
    On,
    Off,
    PoweringOn,
    PoweringOff,
    /// The BMC answered with a value we do not know; kept rather than guessed.
    Unknown,
}

/// What an operator (or the lifecycle engine) asks of a machine's power.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum PowerAction {
    On,
    /// ACPI shutdown request; the OS decides.
    GracefulOff,
    ForceOff,
    /// Off, then on again.
    Cycle,
    /// Warm reset without removing power.
    Reset,
}

/// Where the machine boots next, once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum BootTarget {
    Pxe,
    /// UEFI HTTP Boot (Redfish `UefiHttp`); IPMI has no such device.
    UefiHttp,
    Disk,
}

/// Everything a BMC reports about its machine. Sections a BMC does not
/// have are empty; sections that failed to read are empty and named in
/// `errors`, so one broken resource never hides the rest.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BmcInventory {
    pub system: BmcSystem,
    pub processors: Vec<Processor>,
    /// Populated slots only.
    pub memory: Vec<Dimm>,
    pub drives: Vec<Drive>,
    pub nics: Vec<BmcNic>,
    pub power_supplies: Vec<PowerSupply>,
    /// Temperatures, fans, voltages, power readings (Redfish Thermal/Power,
    /// IPMI SDR).
    pub sensors: Vec<Sensor>,
    pub batteries: Vec<Battery>,
    pub firmware: Vec<FirmwareComponent>,
    pub errors: Vec<SectionError>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BmcSystem {
    pub source: Option<Source>,
    pub manufacturer: Option<String>,
    pub model: Option<String>,
    pub serial: Option<String>,
    /// Lower-case, hyphenated, as in-band DMI reports it.
    pub uuid: Option<String>,
    pub bios_version: Option<String>,
    pub power_state: Option<PowerState>,
    /// The firmware mode the BMC boots the host in (Redfish
    /// `Boot.BootSourceOverrideMode`: `UEFI` or `Legacy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware_mode: Option<crate::FirmwareMode>,
    /// Whether Secure Boot was on at the host's current boot (Redfish
    /// `SecureBoot.SecureBootCurrentBoot`), where the BMC has the resource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure_boot: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Processor {
    pub socket: Option<String>,
    pub manufacturer: Option<String>,
    pub model: Option<String>,
    pub cores: Option<u32>,
    pub threads: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Dimm {
    pub slot: String,
    pub size_bytes: u64,
    pub kind: Option<String>,
    pub speed_mhz: Option<u32>,
    pub manufacturer: Option<String>,
    pub serial: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Drive {
    pub name: String,
    pub model: Option<String>,
    pub serial: Option<String>,
    pub size_bytes: Option<u64>,
    /// `hdd` or `ssd` where known.
    pub media: Option<String>,
    /// `sata`, `sas`, `nvme`, ... where known.
    pub protocol: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BmcNic {
    pub name: String,
    /// Lower-case, colon separated, as in-band reports it.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub mac: Option<crate::MacAddr>,
    pub speed_mbps: Option<u32>,
    pub link_up: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PowerSupply {
    pub name: String,
    pub model: Option<String>,
    pub serial: Option<String>,
    pub capacity_watts: Option<f64>,
    pub input_watts: Option<f64>,
    pub firmware: Option<String>,
    /// Redfish `Status.Health` or IPMI's reading, as given (`OK`, `Critical`).
    pub health: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum SensorKind {
    Temperature,
    Fan,
    Voltage,
    Power,
    Current,
    Other,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Sensor {
    pub name: String,
    pub kind: SensorKind,
    pub reading: Option<f64>,
    /// `Cel`, `RPM`, `V`, `W`, `A`, `%` (Redfish/UCUM style).
    pub units: Option<String>,
    pub health: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Battery {
    pub name: String,
    pub charge_percent: Option<f64>,
    pub health: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FirmwareComponent {
    /// The BMC's id for it (`BIOS`, `BMC`, `Installed-0-2.10.2`).
    pub id: String,
    pub name: Option<String>,
    pub version: Option<String>,
    pub updateable: Option<bool>,
}

/// One inventory section that could not be read, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SectionError {
    pub section: String,
    pub error: String,
}

/// A UPS's state, normalized across NUT, SNMP UPS-MIB and Redfish.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UpsState {
    pub status: UpsStatus,
    /// NUT-style flags (`OL`, `OB`, `LB`, `RB`, `CHRG`, `DISCHRG`, ...),
    /// derived the same way from SNMP and Redfish values.
    pub flags: Vec<String>,
    pub charge_percent: Option<f64>,
    pub runtime_secs: Option<u64>,
    pub load_percent: Option<f64>,
    pub input_voltage: Option<f64>,
    pub manufacturer: Option<String>,
    pub model: Option<String>,
}

/// The headline a campaign gate reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum UpsStatus {
    Online,
    OnBattery,
    /// On battery with the battery low: shutdown is near.
    LowBattery,
    #[default]
    Unknown,
}

impl UpsStatus {
    /// From NUT-style flags: LB wins over OB, OB over OL.
    pub fn from_flags<S: AsRef<str>>(flags: &[S]) -> UpsStatus {
        let has = |f: &str| flags.iter().any(|x| x.as_ref() == f);
        if has("LB") {
            UpsStatus::LowBattery
        } else if has("OB") {
            UpsStatus::OnBattery
        } else if has("OL") {
            UpsStatus::Online
        } else {
            UpsStatus::Unknown
        }
    }
}

/// Why talking to a BMC or UPS failed. Each variant names the peer; the
/// label (`kind`) is the metrics label.
#[derive(Debug, thiserror::Error)]
pub enum OobError {
    #[error("{peer}: no answer within {secs} s")]
    Timeout { peer: String, secs: u64 },
    #[error("{peer}: cannot connect: {detail}")]
    Connect { peer: String, detail: String },
    #[error("{peer}: login refused")]
    Auth { peer: String },
    #[error("{peer}: {what} answered HTTP {status}: {detail}")]
    Http { peer: String, what: String, status: u16, detail: String },
    #[error("{peer}: malformed answer to {what}: {detail}")]
    Malformed { peer: String, what: String, detail: String },
    #[error("{peer}: does not support {what}")]
    Unsupported { peer: String, what: String },
    #[error("{peer}: {detail}")]
    Protocol { peer: String, detail: String },
}

impl OobError {
    pub fn kind(&self) -> &'static str {
        match self {
            OobError::Timeout { .. } => "timeout",
            OobError::Connect { .. } => "connect",
            OobError::Auth { .. } => "auth",
            OobError::Http { .. } => "http",
            OobError::Malformed { .. } => "malformed",
            OobError::Unsupported { .. } => "unsupported",
            OobError::Protocol { .. } => "protocol",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_print_the_password() {
        let c = Credentials { username: "root".into(), password: "calvin".into() };
        let shown = format!("{c:?}");
        assert!(shown.contains("root") && !shown.contains("calvin"), "{shown}");
    }

    #[test]
    fn low_battery_outranks_on_battery_outranks_online() {
        assert_eq!(UpsStatus::from_flags(&["OL", "CHRG"]), UpsStatus::Online);
        assert_eq!(UpsStatus::from_flags(&["OB", "DISCHRG"]), UpsStatus::OnBattery);
        assert_eq!(UpsStatus::from_flags(&["OB", "LB"]), UpsStatus::LowBattery);
        assert_eq!(UpsStatus::from_flags::<&str>(&[]), UpsStatus::Unknown);
    }
}
