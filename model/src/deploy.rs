//! Where a deployment is: the phases an agent reports while it writes an
//! image, verifies it and lays down first-boot configuration.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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
