//! The hardware model shared by the API, the agent and the lab report.

use serde::{Deserialize, Serialize};

/// Where a fact came from. In-band facts are read by our agent on the
/// machine; out-of-band facts come from its BMC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Source {
    InBand,
    Redfish,
    Ipmi,
}

/// Everything Slipway knows about a machine's hardware.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Inventory {
    pub source: Source,
    pub system: SystemInfo,
    pub cpu: Cpu,
    pub memory: Memory,
    pub disks: Vec<Disk>,
    pub nics: Vec<Nic>,
    /// How the firmware started the machine; absent where unknown (an
    /// out-of-band view, an older agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<Firmware>,
}

crate::closed_enum!(
    /// The firmware interface a machine booted through.
    #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
    FirmwareMode {
        Bios => "bios",
        Uefi => "uefi",
    }
);

/// The machine's firmware as its running kernel sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Firmware {
    pub mode: FirmwareMode,
    /// Whether UEFI Secure Boot is enforcing; null under BIOS or when the
    /// variable cannot be read.
    pub secure_boot: Option<bool>,
}

/// DMI system identity (SMBIOS type 1). Fields the firmware leaves empty or
/// fills with placeholders ("To Be Filled By O.E.M.") are `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SystemInfo {
    pub vendor: Option<String>,
    pub product: Option<String>,
    pub serial: Option<String>,
    pub uuid: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Cpu {
    pub model: Option<String>,
    /// Logical processors the kernel sees.
    pub count: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Memory {
    /// `MemTotal` from `/proc/meminfo`: usable RAM, slightly below installed.
    pub total_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Disk {
    /// Kernel name, for example `vda` or `nvme0n1`.
    pub name: String,
    pub size_bytes: u64,
    pub model: Option<String>,
    pub serial: Option<String>,
    pub rotational: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Nic {
    pub name: String,
    /// Lower-case, colon separated.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub mac: crate::MacAddr,
    /// Carrier present.
    pub link: bool,
    pub speed_mbps: Option<u32>,
}
