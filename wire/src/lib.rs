//! The agent protocol: what `slipway-agent` sends to the appliance and what
//! it is told to do. Shared by the `agent` and `api` crates so both sides
//! compile against one definition. Paths are relative to the API base the
//! agent was given on its kernel command line.

use serde::{Deserialize, Serialize};

pub use inventory::Inventory;

pub const HELLO_PATH: &str = "/api/v1/agent/hello";

/// Request header: a fresh random nonce (hex, at most 64 characters) an
/// agent sends with each request whose answer it acts on.
pub const NONCE_HEADER: &str = "x-slipway-nonce";
/// Response header: the appliance's Ed25519 signature (hex) over
/// [`signed_bytes`] of that nonce and the response body, so an agent that
/// pinned the appliance's key acts only on what this appliance said, to
/// this request (a replayed answer carries another nonce).
pub const SIGNATURE_HEADER: &str = "x-slipway-signature";

/// Request header: how many answers the agent refused this boot (bad or
/// missing signatures), sent once there is one, so the appliance hears of
/// whoever is impersonating it on the machine's network.
pub const REFUSED_ANSWERS_HEADER: &str = "x-slipway-refused-answers";

/// What the appliance signs: a context string, the nonce, the body.
pub fn signed_bytes(nonce: &str, body: &[u8]) -> Vec<u8> {
    let mut bytes = format!("slipway agent answer v1\n{nonce}\n").into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// Whether `nonce` is one an agent would send: 16 to 64 hex digits.
pub fn valid_nonce(nonce: &str) -> bool {
    (16..=64).contains(&nonce.len()) && nonce.bytes().all(|b| b.is_ascii_hexdigit())
}
/// A SHA-256 digest as Slipway writes them: 64 lower-case hex digits (so
/// it can name a file).
pub fn is_sha256_hex(digest: &str) -> bool {
    digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

pub const INVENTORY_PATH: &str = "/api/v1/agent/inventory";
pub const INSTRUCTIONS_PATH: &str = "/api/v1/agent/instructions";
pub const DEPLOY_PATH: &str = "/api/v1/agent/deploy";
pub const WIPED_PATH: &str = "/api/v1/agent/wiped";
/// The node agent (on a deployed OS) reports its status here; the reply is
/// what to do about the cluster.
pub const NODE_STATUS_PATH: &str = "/api/v1/agent/node/status";
/// The node that created a Swarm hands its join tokens back here.
pub const NODE_SWARM_PATH: &str = "/api/v1/agent/node/swarm";
/// Where the node agent's configuration lives on a deployed OS.
pub const NODE_CONFIG_PATH: &str = "/etc/slipway/agent.env";

/// First contact from a booted agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    /// The MAC the machine booted from (any spelling; shown lower-case with colons).
    pub mac: inventory::MacAddr,
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
    /// (Boxed: much larger than the other variants.)
    Deploy(Box<DeploySpec>),
    /// Wipe every disk, report, then ask again.
    Wipe {
        mode: WipeMode,
    },
}

/// How a release wipes a machine's disks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum WipeMode {
    /// Partition tables and signatures: the first and last MiB of each disk.
    Quick,
    /// Every byte overwritten with zeros.
    Full,
}

impl WipeMode {
    pub fn as_str(self) -> &'static str {
        match self {
            WipeMode::Quick => "quick",
            WipeMode::Full => "full",
        }
    }

    pub fn parse(text: &str) -> Option<WipeMode> {
        [WipeMode::Quick, WipeMode::Full].into_iter().find(|m| m.as_str() == text)
    }
}

/// The agent's report after a wipe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WipeReport {
    pub mode: WipeMode,
    /// Disks wiped, e.g. `/dev/vda`.
    pub disks: Vec<String>,
    /// Why it failed; absent on success.
    #[serde(default)]
    pub error: Option<String>,
}

/// An image to write.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Accounts to create at first boot, besides root.
    #[serde(default)]
    pub users: Vec<User>,
    /// Static addressing; DHCP when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<StaticNetwork>,
    /// Raw cloud-init user-data, for images that have cloud-init.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
    /// The node agent's credential on the deployed OS; empty: install no
    /// node agent.
    #[serde(default)]
    pub node_token: String,
}

/// An account created at first boot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct User {
    /// A POSIX user name other than `root`.
    #[cfg_attr(feature = "openapi", schema(pattern = "^[a-z_][a-z0-9_-]{0,31}$"))]
    pub name: String,
    #[serde(default)]
    pub ssh_authorized_keys: Vec<String>,
    /// Supplementary groups (e.g. `sudo`, `docker`); missing ones are skipped.
    #[serde(default)]
    pub groups: Vec<String>,
}

/// A static address on the NIC the machine booted from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct StaticNetwork {
    /// `10.0.0.5/24`.
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    #[serde(default)]
    pub dns: Vec<String>,
}

/// What the node agent on a deployed OS reports, every heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NodeStatus {
    pub agent_version: String,
    pub hostname: String,
    /// `PRETTY_NAME` of `/etc/os-release`.
    pub os: String,
    /// The running kernel release.
    pub kernel: String,
    /// The Slipway image this OS was deployed from (written with the node
    /// agent's credential at deploy): how an OS refresh knows the node came
    /// back on the new image, not on the old disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The address the node reaches the appliance from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub containerd_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker_version: Option<String>,
    /// Membership as the cluster itself reports it; absent when the node is
    /// in no cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<Membership>,
    /// Why the last join attempt failed, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join_error: Option<String>,
    /// How the last [`NodeInstruction::RunHook`] ended, repeated in every
    /// report until another runs (the appliance matches it by `id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook: Option<HookResult>,
}

/// How a refresh campaign's command on the node ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct HookResult {
    pub id: String,
    /// The command's exit code: 124 when its time ran out (coreutils
    /// `timeout`), -1 when it could not start or died of a signal.
    pub exit_code: i32,
    /// The end of its output (stdout then stderr), at most 2048 bytes
    /// (`HOOK_OUTPUT_MAX`).
    pub output: String,
}

/// How much of a hook's output the node agent reports.
pub const HOOK_OUTPUT_MAX: usize = 2048;

inventory::closed_enum!(
    /// How a node agent knows its membership: from Docker (`docker info`)
    /// or from its join spec's check command.
    #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
    MembershipKind { Swarm => "swarm", Command => "command" }
);

/// A node's cluster membership, read from the cluster (`docker info`, or
/// a join spec's check command).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Membership {
    pub kind: MembershipKind,
    /// The cluster's id for this node (Swarm NodeID).
    pub node_id: String,
    pub manager: bool,
    /// Every node as a manager sees them; empty on workers.
    #[serde(default)]
    pub members: Vec<Member>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Member {
    /// The cluster's id for the node (Swarm `ID`); empty from old agents.
    #[serde(default)]
    pub id: String,
    pub hostname: String,
    /// Swarm: `Ready` or `Down`.
    pub status: String,
    /// Swarm: `Active`, `Pause` or `Drain`.
    pub availability: String,
    pub manager: bool,
}

/// What the node agent should do about its cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "action")]
pub enum NodeInstruction {
    /// Report again after `poll_seconds`.
    Wait { poll_seconds: u32 },
    /// Create a Swarm with this node as its first manager, then post the
    /// join tokens to [`NODE_SWARM_PATH`].
    SwarmInit,
    /// Join the Swarm whose manager listens at `endpoint` (`ip:2377`).
    SwarmJoin { endpoint: String, token: String },
    /// Run `run` (`sh -c`) to join; the node is a member once `check`
    /// exits 0.
    Command { run: String, check: String },
    /// On a Swarm manager, for another node (or itself) during an OS
    /// refresh: `docker node update --availability AVAILABILITY NODE`
    /// (`drain` before the refresh, `active` to undo a drain).
    NodeAvailability { node: String, availability: String },
    /// On a Swarm manager: `docker node rm --force NODE`, the entry a
    /// reinstalled node left behind (it rejoined as a new node).
    NodeRemove { node: String },
    /// A refresh campaign's drain or undrain command for a cluster Slipway
    /// did not form (`kubectl drain`, ...): run `run` (`sh -c`) on this
    /// node, at most `timeout_seconds`, and report a [`HookResult`] with
    /// this `id` in the following statuses.
    RunHook { id: String, run: String, timeout_seconds: u32 },
}

/// A new Swarm's join tokens, from the node that created it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwarmCreated {
    /// `ip:2377`.
    pub endpoint: String,
    pub worker_token: String,
    pub manager_token: String,
}

/// Which disk to write: the first that matches every given field; with
/// none given, the largest non-removable disk.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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

// Where a deployment is: the phases an agent reports while it writes an
// image, verifies it and lays down first-boot configuration. (A plain
// comment: a doc comment would become the OpenAPI schema's description.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum DeployPhase {
    /// Waiting for the machine's agent to pick it up.
    Requested,
    Writing,
    Verifying,
    Configuring,
    Written,
    Failed,
}

impl DeployPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            DeployPhase::Requested => "requested",
            DeployPhase::Writing => "writing",
            DeployPhase::Verifying => "verifying",
            DeployPhase::Configuring => "configuring",
            DeployPhase::Written => "written",
            DeployPhase::Failed => "failed",
        }
    }
}

/// The agent's report on a deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployReport {
    /// Any phase but `requested` (the appliance's own).
    pub phase: DeployPhase,
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
