//! The agent protocol: what `slipway-agent` sends to the appliance and what
//! it is told to do. Shared by the `agent` and `api` crates so both sides
//! compile against one definition. Paths are relative to the API base the
//! agent was given on its kernel command line.

use serde::{Deserialize, Serialize};

pub use inventory::Inventory;

pub const HELLO_PATH: &str = "/api/v1/agent/hello";
pub const INVENTORY_PATH: &str = "/api/v1/agent/inventory";
pub const INSTRUCTIONS_PATH: &str = "/api/v1/agent/instructions";

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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "action")]
pub enum Instruction {
    /// Stay up and ask again after `poll_seconds`.
    Wait {
        poll_seconds: u32,
    },
    PowerOff,
    Reboot,
}
