//! The agent protocol: what `slipway-agent` sends to the appliance and what
//! it is told to do. Shared by the `agent` and `api` crates so both sides
//! compile against one definition. Paths are relative to the API base the
//! agent was given on its kernel command line.

use serde::{Deserialize, Serialize};

pub use inventory::Inventory;

pub const HELLO_PATH: &str = "/api/v1/agent/hello";
pub const INVENTORY_PATH: &str = "/api/v1/agent/inventory";
pub const INSTRUCTIONS_PATH: &str = "/api/v1/agent/instructions";
pub const DEPLOY_PATH: &str = "/api/v1/agent/deploy";
pub const WIPED_PATH: &str = "/api/v1/agent/wiped";

/// First contact from a booted agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    /// The MAC the machine booted from, lower-case with colons.
    pub mac: String,
    pub agent_version: String,
    /// `discovery` in the ramdisk.
    pub mode: String,
}

/// What the agent should do next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "action")]
pub enum Instruction {
    /// Stay up and ask again after `poll_seconds`.
    Wait {
        poll_seconds: u32,
    },
    PowerOff,
    Reboot,
    /// Write an image to a disk, verify it, report, then ask again.
    Deploy(DeploySpec),
    /// Wipe every disk, report, then ask again.
    Wipe {
        /// `quick`: partition tables and signatures (the first and last MiB
        /// of each disk); `full`: every byte overwritten with zeros.
        mode: String,
    },
}

/// The agent's report after a wipe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WipeReport {
    pub mode: String,
    /// Disks wiped, e.g. `/dev/vda`.
    pub disks: Vec<String>,
    /// Why it failed; absent on success.
    #[serde(default)]
    pub error: Option<String>,
}

/// An image to write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploySpec {
    pub image: String,
    /// raw+zstd content, relative to the API base; supports Range.
    pub url_path: String,
    /// SHA-256 of the raw content, hex.
    pub sha256: String,
    /// Size of the raw content.
    pub raw_bytes: u64,
    pub disk: DiskHint,
    /// First-boot configuration written into the image's root filesystem.
    #[serde(default)]
    pub hostname: String,
    #[serde(default)]
    pub ssh_authorized_keys: Vec<String>,
}

/// Which disk to write: the first that matches every given field; with
/// none given, the largest non-removable disk.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskHint {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// Kernel name, e.g. `vda`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_size_bytes: Option<u64>,
}

/// The agent's report on a deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployReport {
    /// `writing`, `verifying`, `configuring`, `written` or `failed`.
    pub phase: String,
    pub bytes_written: u64,
    #[serde(default)]
    pub disk: Option<String>,
    /// Why it failed, for `failed`.
    #[serde(default)]
    pub error: Option<String>,
    /// Where first-boot configuration went (with `written`), or why not.
    #[serde(default)]
    pub configured: Option<String>,
}
