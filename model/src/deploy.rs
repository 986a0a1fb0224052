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

    /// Why image `image` (of this mode) cannot be written to `machine`,
    /// whose agent saw `firmware`; `None` when it boots, or when the
    /// machine's firmware is not known. Deploys and OS refreshes refuse
    /// with it: written, such an image would never start.
    pub fn refusal(self, image: &str, machine: &str, firmware: Option<inventory::FirmwareMode>) -> Option<String> {
        let firmware = firmware?;
        if self.boots(firmware) {
            return None;
        }
        let boots = match self {
            BootMode::Neither => {
                "neither BIOS nor UEFI (no MBR boot code, no EFI System Partition with a loader)".into()
            }
            mode => format!("{mode} only"),
        };
        Some(format!("image {image:?} boots {boots}, but machine {machine} starts through {firmware} firmware"))
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

    /// What a viewer may see: the user data (often carrying passwords and
    /// keys), a cluster's join token and the commands a `command` join runs
    /// as root are replaced by [`REDACTED`]; the rest is as asked.
    /// The first field of this spec that runs commands as root on the node
    /// (user data, a `command` join's `run` and `check`), which only the
    /// `node_root` role may ask for.
    pub fn root_commands(&self) -> Option<&'static str> {
        if self.user_data.is_some() {
            return Some("user_data");
        }
        let cluster = self.cluster.as_ref()?;
        (cluster.run.is_some() || cluster.check.is_some()).then_some("cluster.run")
    }

    pub fn redacted(&self) -> DeploymentSpec {
        let hide = |v: &Option<String>| v.as_ref().map(|_| REDACTED.to_string());
        DeploymentSpec {
            user_data: hide(&self.user_data),
            cluster: self.cluster.as_ref().map(|c| crate::join::JoinSpec {
                token: hide(&c.token),
                run: hide(&c.run),
                check: hide(&c.check),
                ..c.clone()
            }),
            ..self.clone()
        }
    }
}

/// Stands in for a secret a caller's role may not read.
pub const REDACTED: &str = "(redacted)";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redacted_spec_keeps_its_shape_and_loses_its_secrets() {
        let spec: DeploymentSpec = serde_json::from_value(serde_json::json!({
            "image": "debian-12", "hostname": "node1", "user_data": "#cloud-config\npassword: hunter2",
            "cluster": {"kind": "command", "run": "join --token s3cret", "check": "test -f /joined", "token": "SWMTKN-1-x"}
        }))
        .unwrap();
        let seen = serde_json::to_string(&spec.redacted()).unwrap();
        for secret in ["hunter2", "s3cret", "/joined", "SWMTKN"] {
            assert!(!seen.contains(secret), "{secret} in {seen}");
        }
        let back: DeploymentSpec = serde_json::from_str(&seen).unwrap();
        assert_eq!((back.image.as_str(), back.hostname.as_str()), ("debian-12", "node1"));
        assert_eq!(back.user_data.as_deref(), Some(REDACTED));
        let plain = DeploymentSpec { user_data: None, cluster: None, ..spec.clone() };
        assert_eq!(plain.redacted(), plain, "nothing to hide: unchanged");
    }

    #[test]
    fn an_image_is_refused_only_where_the_firmware_is_known_and_cannot_boot_it() {
        use inventory::FirmwareMode::{Bios, Uefi};
        assert_eq!(BootMode::Both.refusal("i", "m", Some(Uefi)), None);
        assert_eq!(BootMode::Bios.refusal("i", "m", None), None, "unknown firmware: not refused");
        assert_eq!(
            BootMode::Bios.refusal("i", "m", Some(Uefi)).as_deref(),
            Some("image \"i\" boots bios only, but machine m starts through uefi firmware")
        );
        assert!(BootMode::Uefi.refusal("i", "m", Some(Bios)).is_some());
        assert!(BootMode::Neither.refusal("i", "m", Some(Bios)).unwrap().contains("neither BIOS nor UEFI"));
    }
}
