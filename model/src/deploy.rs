//! Where a deployment is: the phases an agent reports while it writes an
//! image, verifies it and lays down first-boot configuration.

use serde::{Deserialize, Serialize};

pub use wire::DeployPhase;

inventory::closed_enum!(
    /// The firmwares an image boots under, read from its content when it is
    /// imported (MBR boot code; an EFI System Partition with a loader).
    /// `none` until then, and for content with neither.
    #[derive(Default, utoipa::ToSchema)]
    BootMode {
        Bios => "bios",
        Uefi => "uefi",
        Both => "both",
        #[default]
        #[serde(rename = "none")]
        Neither => "none",
    }
);

impl BootMode {
    pub fn from_firmwares(bios: bool, uefi: bool) -> BootMode {
        match (bios, uefi) {
            (true, true) => BootMode::Both,
            (true, false) => BootMode::Bios,
            (false, true) => BootMode::Uefi,
            (false, false) => BootMode::Neither,
        }
    }

    /// Whether a machine started by `firmware` boots this image.
    pub fn boots(self, firmware: inventory::FirmwareMode) -> bool {
        use inventory::FirmwareMode;
        matches!(
            (self, firmware),
            (BootMode::Both, _) | (BootMode::Bios, FirmwareMode::Bios) | (BootMode::Uefi, FirmwareMode::Uefi)
        )
    }
}

inventory::closed_enum!(
    /// The CPU architecture an image is built for.
    #[derive(Default, utoipa::ToSchema)]
    Arch {
        #[default]
        #[serde(rename = "x86_64")]
        X86_64 => "x86_64",
        Arm64 => "arm64",
    }
);

// What a deployment installs: the image, and the first-boot settings laid
// down with it. Read and written only as this type: the deploy request is
// one, the stored deployment holds one (its `cluster` in a column of its
// own), and the agent's instruction is built from one. (A plain comment:
// a doc comment would become the OpenAPI schema's description.)
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = DeployRequest, example = json!({
    "image": "debian-12", "hostname": "node1", "ssh_authorized_keys": ["ssh-ed25519 AAAAC3Nz... ops@example"],
    "disk": {"serial": "DISK-1"}, "cluster": {"kind": "swarm", "cluster": "rack7"}
}))]
pub struct DeploymentSpec {
    pub image: String,
    /// An RFC 1123 host name.
    #[schema(
        max_length = 253,
        pattern = "^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
    )]
    pub hostname: String,
    #[serde(default)]
    pub ssh_authorized_keys: Vec<String>,
    #[serde(default)]
    pub disk: wire::DiskHint,
    /// Accounts created at first boot.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<wire::User>,
    /// Static addressing on the boot NIC; DHCP when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<wire::StaticNetwork>,
    /// cloud-init user-data, for images that have cloud-init.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
    /// The cluster the node joins once its OS is up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<crate::join::JoinSpec>,
}

impl DeploymentSpec {
    /// The same settings with another image (an OS refresh, or its
    /// rollback).
    pub fn with_image(&self, image: &str) -> DeploymentSpec {
        DeploymentSpec { image: image.into(), ..self.clone() }
    }
}
