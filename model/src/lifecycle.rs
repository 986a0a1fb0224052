//! The machine lifecycle as pure functions: which transitions a trigger may
//! cause, what a network boot gets in each state, and which states wait
//! with a deadline. The store applies the results; nothing here does I/O.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
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
    /// A campaign reinstalls a deployed machine (OS refresh), or starts
    /// over with the previous image (rollback).
    RefreshRequested,
    /// The rollback of a failed OS refresh failed too.
    RollbackFailed,
    /// An operator retries a failed machine, into the state its failed
    /// phase implies ([`retry_target`]).
    RetryRequested(MachineState),
    /// An operator marks a machine failed (the reason is recorded).
    MarkFailedRequested,
    /// An operator sends a machine back to discovery (its deployment is
    /// cleared; its inventory is kept).
    ResetRequested,
    /// An operator retires a machine for good.
    RetireRequested,
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
            Trigger::RefreshRequested => "OS refresh requested by a campaign",
            Trigger::RollbackFailed => "the OS refresh failed and so did its rollback",
            Trigger::RetryRequested(_) => "retry requested by an operator",
            Trigger::MarkFailedRequested => "marked failed by an operator",
            Trigger::ResetRequested => "reset to discovery by an operator",
            Trigger::RetireRequested => "retired by an operator",
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
        (Discovering | Deploying | Deployed | Releasing | Refreshing, Trigger::DeadlinePassed) => {
            Some(Transition { to: Failed, failed_phase: Some(state) })
        }
        (Ready, Trigger::DeployRequested) => to(Deploying),
        (Deploying | Refreshing, Trigger::ImageWritten) => to(Deployed),
        // Refreshing -> refreshing is a rollback starting over. A failed
        // write leaves the machine refreshing: its campaign rolls it back.
        (Deployed | Joined | Refreshing, Trigger::RefreshRequested) => to(Refreshing),
        (Refreshing | Deployed, Trigger::RollbackFailed) => {
            Some(Transition { to: Failed, failed_phase: Some(Refreshing) })
        }
        (Deployed, Trigger::ClusterJoined) => to(Joined),
        (Deploying, Trigger::DeployFailed) => Some(Transition { to: Failed, failed_phase: Some(Deploying) }),
        (Deployed | Joined | Failed, Trigger::ReleaseRequested) => to(Releasing),
        (Releasing, Trigger::Wiped) => to(Ready),
        (Releasing, Trigger::WipeFailed) => Some(Transition { to: Failed, failed_phase: Some(Releasing) }),
        // Operator actions. Retired is terminal: nothing leaves it.
        (Failed, Trigger::RetryRequested(to @ (Discovering | Ready | Deploying | Releasing))) => {
            Some(Transition { to, failed_phase: None })
        }
        (
            Discovering | Ready | Deploying | Deployed | Joined | Releasing | Refreshing,
            Trigger::MarkFailedRequested,
        ) => Some(Transition { to: Failed, failed_phase: Some(state) }),
        (Retired, Trigger::ResetRequested) => None,
        (_, Trigger::ResetRequested) => to(Discovering),
        // Work in progress is marked failed first, so nothing is cut off
        // silently.
        (Discovering | Ready | Deployed | Joined | Failed, Trigger::RetireRequested) => to(Retired),
        _ => None,
    }
}

/// The state retrying a machine that failed in `failed_phase` leads to:
/// discovery starts over; a failed deploy is retried when its deployment
/// is still there, else the machine is ready again; a failed wipe is
/// retried. `None`: retry does not apply (release or reset instead).
pub fn retry_target(failed_phase: Option<MachineState>, has_deployment: bool) -> Option<MachineState> {
    use MachineState::*;
    match failed_phase? {
        Discovering => Some(Discovering),
        Deploying if has_deployment => Some(Deploying),
        Deploying => Some(Ready),
        Releasing => Some(Releasing),
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
        // A retired machine is never handed the ramdisk again.
        Some(Deployed | Joined | Retired) => BootKind::LocalDisk,
        // Unknown, discovering, ready, failed: the discovery ramdisk, which
        // reports and waits. Deploying, refreshing and releasing: the same
        // ramdisk is the installer and the wiper; its agent is handed the
        // work (a refreshing machine gets its new deployment).
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
    fn refresh_path() {
        for from in [Deployed, Joined] {
            assert_eq!(next(from, Trigger::RefreshRequested).unwrap().to, Refreshing, "{from}");
        }
        assert_eq!(next(Refreshing, Trigger::RefreshRequested).unwrap().to, Refreshing, "a rollback starts over");
        for from in [Ready, Deploying, Releasing, Failed] {
            assert_eq!(next(from, Trigger::RefreshRequested), None, "{from} is not refreshed");
        }
        assert_eq!(next(Refreshing, Trigger::ImageWritten).unwrap().to, Deployed);
        assert_eq!(next(Refreshing, Trigger::DeployFailed), None, "a failed write is rolled back, not failed");
        let t = next(Refreshing, Trigger::RollbackFailed).unwrap();
        assert_eq!((t.to, t.failed_phase), (Failed, Some(Refreshing)));
        let t = next(Refreshing, Trigger::DeadlinePassed).unwrap();
        assert_eq!((t.to, t.failed_phase), (Failed, Some(Refreshing)), "the backstop when no campaign acts");
        assert_eq!(boot_kind(Some(Refreshing)), BootKind::Discovery, "a refreshing machine boots the installer");
    }

    #[test]
    fn deployed_machines_never_get_the_ramdisk() {
        assert_eq!(boot_kind(None), BootKind::Discovery);
        assert_eq!(boot_kind(Some(Ready)), BootKind::Discovery);
        assert_eq!(boot_kind(Some(Deployed)), BootKind::LocalDisk);
        assert_eq!(boot_kind(Some(Joined)), BootKind::LocalDisk);
    }

    #[test]
    fn operator_actions() {
        assert_eq!(retry_target(Some(Discovering), false), Some(Discovering));
        assert_eq!(retry_target(Some(Deploying), true), Some(Deploying));
        assert_eq!(retry_target(Some(Deploying), false), Some(Ready), "no deployment left: ready again");
        assert_eq!(retry_target(Some(Releasing), false), Some(Releasing));
        assert_eq!(retry_target(Some(Refreshing), true), None, "a campaign owns refresh failures");
        assert_eq!(retry_target(None, true), None);
        for to in [Discovering, Ready, Deploying, Releasing] {
            assert_eq!(next(Failed, Trigger::RetryRequested(to)).unwrap().to, to);
            assert_eq!(next(Ready, Trigger::RetryRequested(to)), None, "only a failed machine is retried");
        }
        assert_eq!(next(Failed, Trigger::RetryRequested(Deployed)), None, "retry never skips the work");
        let t = next(Deploying, Trigger::MarkFailedRequested).unwrap();
        assert_eq!((t.to, t.failed_phase), (Failed, Some(Deploying)));
        assert_eq!(next(Failed, Trigger::MarkFailedRequested), None, "already failed");
        assert_eq!(next(Retired, Trigger::MarkFailedRequested), None);
        for from in ALL_STATES.into_iter().filter(|s| *s != Retired) {
            assert_eq!(next(from, Trigger::ResetRequested).unwrap().to, Discovering, "{from}");
        }
        assert_eq!(next(Retired, Trigger::ResetRequested), None, "retired is terminal");
        for from in [Discovering, Ready, Deployed, Joined, Failed] {
            assert_eq!(next(from, Trigger::RetireRequested).unwrap().to, Retired, "{from}");
        }
        for from in [Deploying, Releasing, Refreshing, Retired] {
            assert_eq!(next(from, Trigger::RetireRequested), None, "{from}: mark it failed first");
        }
        for trigger in [Trigger::InventoryReceived, Trigger::DeadlinePassed, Trigger::DeployRequested] {
            assert_eq!(next(Retired, trigger), None, "retired is terminal");
        }
        assert_eq!(boot_kind(Some(Retired)), BootKind::LocalDisk, "a retired machine never gets the ramdisk");
    }

    #[test]
    fn states_round_trip() {
        for s in ALL_STATES {
            assert_eq!(s.as_str().parse::<MachineState>(), Ok(s));
        }
    }
}
