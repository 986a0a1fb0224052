//! The machine lifecycle as pure functions: which transitions a trigger may
//! cause, what a network boot gets in each state, and which states wait
//! with a deadline. The store applies the results; nothing here does I/O.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MachineState {
    Discovering,
    Ready,
    Deploying,
    Deployed,
    Joined,
    Releasing,
    Refreshing,
    Failed,
    Retired,
}

pub const ALL_STATES: [MachineState; 9] = [
    MachineState::Discovering,
    MachineState::Ready,
    MachineState::Deploying,
    MachineState::Deployed,
    MachineState::Joined,
    MachineState::Releasing,
    MachineState::Refreshing,
    MachineState::Failed,
    MachineState::Retired,
];

impl MachineState {
    pub fn as_str(self) -> &'static str {
        match self {
            MachineState::Discovering => "discovering",
            MachineState::Ready => "ready",
            MachineState::Deploying => "deploying",
            MachineState::Deployed => "deployed",
            MachineState::Joined => "joined",
            MachineState::Releasing => "releasing",
            MachineState::Refreshing => "refreshing",
            MachineState::Failed => "failed",
            MachineState::Retired => "retired",
        }
    }
}

impl fmt::Display for MachineState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for MachineState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        ALL_STATES.into_iter().find(|st| st.as_str() == s).ok_or_else(|| format!("unknown state {s:?}"))
    }
}

/// Something that happened to a machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The discovery agent posted an inventory.
    InventoryReceived,
    /// A waiting state's deadline passed (discovering: no inventory;
    /// deploying: no image written).
    DeadlinePassed,
    /// An operator asked for a deployment.
    DeployRequested,
    /// The agent wrote the image and verified it on the disk.
    ImageWritten,
    /// The agent reported a deploy phase failed.
    DeployFailed,
    /// An operator released the machine: wipe it and make it ready again.
    ReleaseRequested,
    /// The agent wiped the machine's disks.
    Wiped,
    /// The agent could not wipe them.
    WipeFailed,
    /// The node agent on the deployed OS reported membership, as the
    /// cluster itself confirms it.
    ClusterJoined,
}

impl Trigger {
    pub fn cause(self) -> &'static str {
        match self {
            Trigger::InventoryReceived => "inventory received from the discovery agent",
            Trigger::DeadlinePassed => "the state's deadline passed",
            Trigger::DeployRequested => "deployment requested",
            Trigger::ImageWritten => "image written and verified on disk",
            Trigger::DeployFailed => "the agent reported a failed deploy",
            Trigger::ReleaseRequested => "release requested",
            Trigger::Wiped => "disks wiped by the agent",
            Trigger::WipeFailed => "the agent could not wipe the disks",
            Trigger::ClusterJoined => "the node agent reported cluster membership",
        }
    }
}

/// A transition to apply, with the failure phase when it goes to `failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub to: MachineState,
    pub failed_phase: Option<MachineState>,
}

/// The state `trigger` moves a machine in `state` to, or `None` when the
/// trigger does not apply there (it is recorded and otherwise ignored).
pub fn next(state: MachineState, trigger: Trigger) -> Option<Transition> {
    use MachineState::*;
    let to = |to| Some(Transition { to, failed_phase: None });
    match (state, trigger) {
        // A failed discovery is retried by simply booting again.
        (Discovering | Ready | Failed, Trigger::InventoryReceived) => to(Ready),
        // Deployed waits (with a deadline) only when a cluster join was asked for.
        (Discovering | Deploying | Deployed | Releasing, Trigger::DeadlinePassed) => {
            Some(Transition { to: Failed, failed_phase: Some(state) })
        }
        (Ready, Trigger::DeployRequested) => to(Deploying),
        (Deploying, Trigger::ImageWritten) => to(Deployed),
        (Deployed, Trigger::ClusterJoined) => to(Joined),
        (Deploying, Trigger::DeployFailed) => Some(Transition { to: Failed, failed_phase: Some(Deploying) }),
        (Deployed | Joined | Failed, Trigger::ReleaseRequested) => to(Releasing),
        (Releasing, Trigger::Wiped) => to(Ready),
        (Releasing, Trigger::WipeFailed) => Some(Transition { to: Failed, failed_phase: Some(Releasing) }),
        _ => None,
    }
}

/// What a network boot of a machine in `state` gets (the brief's table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootKind {
    Discovery,
    LocalDisk,
}

pub fn boot_kind(state: Option<MachineState>) -> BootKind {
    use MachineState::*;
    match state {
        Some(Deployed | Joined) => BootKind::LocalDisk,
        // Unknown, discovering, ready, failed: the discovery ramdisk, which
        // reports and waits. Deploying and releasing: the same ramdisk is
        // the installer and the wiper; its agent is handed the work.
        _ => BootKind::Discovery,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use MachineState::*;

    #[test]
    fn discovery_path() {
        assert_eq!(next(Discovering, Trigger::InventoryReceived).unwrap().to, Ready);
        assert_eq!(next(Ready, Trigger::InventoryReceived).unwrap().to, Ready);
        let t = next(Discovering, Trigger::DeadlinePassed).unwrap();
        assert_eq!((t.to, t.failed_phase), (Failed, Some(Discovering)));
        assert_eq!(next(Ready, Trigger::DeadlinePassed), None, "ready waits for nothing");
        assert_eq!(next(Deployed, Trigger::InventoryReceived), None, "a deployed machine is never rediscovered");
    }

    #[test]
    fn deploy_path() {
        assert_eq!(next(Ready, Trigger::DeployRequested).unwrap().to, Deploying);
        assert_eq!(next(Deployed, Trigger::DeployRequested), None, "deploying twice needs a release first");
        assert_eq!(next(Deploying, Trigger::ImageWritten).unwrap().to, Deployed);
        assert_eq!(next(Ready, Trigger::ImageWritten), None, "a stale report cannot deploy a machine");
        let t = next(Deploying, Trigger::DeployFailed).unwrap();
        assert_eq!((t.to, t.failed_phase), (Failed, Some(Deploying)));
        let t = next(Deploying, Trigger::DeadlinePassed).unwrap();
        assert_eq!((t.to, t.failed_phase), (Failed, Some(Deploying)));
        assert_eq!(next(Deploying, Trigger::InventoryReceived), None, "a rebooted installer keeps its deployment");
        assert_eq!(next(Deployed, Trigger::ClusterJoined).unwrap().to, Joined);
        assert_eq!(next(Deploying, Trigger::ClusterJoined), None, "only a deployed OS joins");
        let t = next(Deployed, Trigger::DeadlinePassed).unwrap();
        assert_eq!((t.to, t.failed_phase), (Failed, Some(Deployed)), "a join that never came");
    }

    #[test]
    fn release_path() {
        for from in [Deployed, Joined, Failed] {
            assert_eq!(next(from, Trigger::ReleaseRequested).unwrap().to, Releasing, "{from}");
        }
        assert_eq!(next(Ready, Trigger::ReleaseRequested), None, "nothing to release");
        assert_eq!(next(Deploying, Trigger::ReleaseRequested), None, "a write in progress is not interrupted");
        assert_eq!(next(Releasing, Trigger::Wiped).unwrap().to, Ready);
        assert_eq!(next(Releasing, Trigger::DeadlinePassed).unwrap().failed_phase, Some(Releasing));
        assert_eq!(boot_kind(Some(Releasing)), BootKind::Discovery, "a released machine boots the wiper");
    }

    #[test]
    fn deployed_machines_never_get_the_ramdisk() {
        assert_eq!(boot_kind(None), BootKind::Discovery);
        assert_eq!(boot_kind(Some(Ready)), BootKind::Discovery);
        assert_eq!(boot_kind(Some(Deployed)), BootKind::LocalDisk);
        assert_eq!(boot_kind(Some(Joined)), BootKind::LocalDisk);
    }

    #[test]
    fn states_round_trip() {
        for s in ALL_STATES {
            assert_eq!(s.as_str().parse::<MachineState>(), Ok(s));
        }
    }
}
