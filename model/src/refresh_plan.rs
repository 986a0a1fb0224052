//! The pure pieces of an OS refresh that its saga (`refresh`) and the
//! agents' routes share: which Swarm operation a refresh waits for and
//! whether the cluster shows it done, what a manager's node agent is told
//! next, whether a manager may leave, and where a machine's (re)install
//! stands. No I/O.

use serde::{Deserialize, Serialize};
use wire::{Member, NodeInstruction};

use crate::deploy::DeployPhase;
use crate::lifecycle::MachineState;

/// A change to a Slipway-formed Swarm that a refresh waits for. Carried
/// out by a manager's node agent (Swarm only lets managers change nodes);
/// stored as the campaign node's `task` (JSON) while it is wanted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterOp {
    pub cluster: String,
    pub op: OpKind,
    /// The Swarm node id.
    pub node: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    /// Availability `drain`: its tasks move to other nodes.
    Drain,
    /// Availability `active` again (undo a drain).
    Active,
    /// Remove the entry a reinstalled node left behind (it rejoined under
    /// a new node id).
    Remove,
}

impl ClusterOp {
    /// Whether the members a manager reported show this done.
    pub fn done(&self, members: &[Member]) -> bool {
        let member = members.iter().find(|m| m.id == self.node);
        match (self.op, member) {
            (OpKind::Drain, Some(m)) => m.availability.eq_ignore_ascii_case("drain"),
            (OpKind::Drain, None) => false,
            (OpKind::Active, Some(m)) => m.availability.eq_ignore_ascii_case("active"),
            // Gone is as good as active or removed.
            (OpKind::Active | OpKind::Remove, None) => true,
            (OpKind::Remove, Some(_)) => false,
        }
    }

    pub fn instruction(&self) -> NodeInstruction {
        let availability =
            |a: &str| NodeInstruction::NodeAvailability { node: self.node.clone(), availability: a.into() };
        match self.op {
            OpKind::Drain => availability("drain"),
            OpKind::Active => availability("active"),
            OpKind::Remove => NodeInstruction::NodeRemove { node: self.node.clone() },
        }
    }
}

/// What a manager reporting `members` does next: the first wanted
/// operation the cluster does not show done yet.
pub fn next_cluster_op(ops: &[ClusterOp], members: &[Member]) -> Option<NodeInstruction> {
    ops.iter().find(|op| !op.done(members)).map(ClusterOp::instruction)
}

/// After a node is back (on the new image or rolled back): its old
/// Swarm entry is removed when it rejoined as a new node, or made
/// active again when it kept its id (it was never reinstalled).
pub fn after_refresh(cluster: &str, old_node: &str, new_node: Option<&str>) -> ClusterOp {
    let op = if new_node == Some(old_node) { OpKind::Active } else { OpKind::Remove };
    ClusterOp { cluster: cluster.into(), op, node: old_node.into() }
}

/// Whether the Swarm keeps a quorum of managers while `node` is down:
/// Raft needs more than half of all managers (down ones count) to be up.
/// A worker, or a node not in the list, leaves the managers as they are.
pub fn quorum_without(members: &[Member], node: &str) -> Result<(), String> {
    let Some(leaving) = members.iter().find(|m| m.id == node) else { return Ok(()) };
    if !leaving.manager {
        return Ok(());
    }
    let managers = members.iter().filter(|m| m.manager).count();
    let up_after =
        members.iter().filter(|m| m.manager && m.id != node && m.status.eq_ignore_ascii_case("ready")).count();
    if up_after * 2 > managers {
        Ok(())
    } else {
        Err(format!(
            "it is a Swarm manager, and without it {up_after} of {managers} managers would be up: no quorum \
             (deploy three or five nodes with role manager)"
        ))
    }
}

/// Where a machine's (re)install of `target` stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Not written yet.
    Installing,
    /// Written and verified; waiting for the new OS's node agent to report
    /// `target` (and, with a cluster, its membership).
    Written,
    /// Up on `target`: its node agent reports `target`, and it is joined
    /// when it has a cluster.
    Back,
    Failed(String),
}

/// The deployment as the store has it: image, phase, error.
#[derive(Debug, Clone, Copy)]
pub struct DeployView<'a> {
    pub image: &'a str,
    pub phase: DeployPhase,
    pub error: Option<&'a str>,
}

pub fn progress(
    state: MachineState,
    failure_reason: Option<&str>,
    deployment: Option<DeployView<'_>>,
    target: &str,
    clustered: bool,
    node_image: Option<&str>,
) -> Progress {
    use MachineState::*;
    let Some(d) = deployment.filter(|d| d.image == target) else {
        return Progress::Failed(format!("the deployment of {target} was replaced or removed (machine {state})"));
    };
    match state {
        Refreshing if d.phase == DeployPhase::Failed => {
            Progress::Failed(d.error.unwrap_or("the installer reported a failed write").to_string())
        }
        Refreshing => Progress::Installing,
        Deployed | Joined if node_image != Some(target) => Progress::Written,
        Deployed if clustered => Progress::Written,
        Deployed | Joined => Progress::Back,
        Failed => Progress::Failed(format!("the machine failed: {}", failure_reason.unwrap_or("no reason given"))),
        other => Progress::Failed(format!("the machine is {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, availability: &str) -> Member {
        Member {
            id: id.into(),
            hostname: format!("host-{id}"),
            status: "Ready".into(),
            availability: availability.into(),
            manager: false,
        }
    }

    fn op(kind: OpKind, node: &str) -> ClusterOp {
        ClusterOp { cluster: "rack7".into(), op: kind, node: node.into() }
    }

    #[test]
    fn cluster_ops_are_done_when_the_manager_shows_them() {
        let members = [member("a", "Active"), member("b", "Drain")];
        for (o, done) in [
            (op(OpKind::Drain, "a"), false),
            (op(OpKind::Drain, "b"), true),
            (op(OpKind::Drain, "gone"), false),
            (op(OpKind::Active, "b"), false),
            (op(OpKind::Active, "a"), true),
            (op(OpKind::Active, "gone"), true),
            (op(OpKind::Remove, "b"), false),
            (op(OpKind::Remove, "gone"), true),
        ] {
            assert_eq!(o.done(&members), done, "{o:?}");
        }
        let ops = [op(OpKind::Drain, "b"), op(OpKind::Remove, "b"), op(OpKind::Drain, "a")];
        assert_eq!(next_cluster_op(&ops, &members), Some(NodeInstruction::NodeRemove { node: "b".into() }));
        assert_eq!(next_cluster_op(&ops[..1], &members), None, "nothing left to do: the manager just reports");
        assert_eq!(
            op(OpKind::Drain, "a").instruction(),
            NodeInstruction::NodeAvailability { node: "a".into(), availability: "drain".into() }
        );
        let stored: ClusterOp = serde_json::from_str(r#"{"cluster":"rack7","op":"drain","node":"a"}"#).unwrap();
        assert_eq!(stored, op(OpKind::Drain, "a"));
        assert!(serde_json::from_str::<ClusterOp>("\"5\"").is_err(), "a firmware task id is not an op");
    }

    #[test]
    fn a_reinstalled_node_leaves_an_entry_to_remove() {
        assert_eq!(after_refresh("rack7", "old", Some("new")).op, OpKind::Remove);
        assert_eq!(after_refresh("rack7", "old", None).op, OpKind::Remove);
        assert_eq!(after_refresh("rack7", "old", Some("old")).op, OpKind::Active);
    }

    #[test]
    fn progress_of_a_refresh() {
        use MachineState::*;
        let d = |image, phase, error| Some(DeployView { image, phase, error });
        let check = |state, dep, clustered, reported: Option<&str>, want: Progress| {
            assert_eq!(progress(state, Some("deadline"), dep, "img-2", clustered, reported), want);
        };
        check(Refreshing, d("img-2", DeployPhase::Writing, None), true, None, Progress::Installing);
        check(
            Refreshing,
            d("img-2", DeployPhase::Failed, Some("sha256 mismatch")),
            true,
            None,
            Progress::Failed("sha256 mismatch".into()),
        );
        let written = || d("img-2", DeployPhase::Written, None);
        check(Deployed, written(), true, Some("img-2"), Progress::Written);
        check(Deployed, written(), false, None, Progress::Written);
        check(Deployed, written(), false, Some("img-2"), Progress::Back);
        check(Joined, written(), true, Some("img-2"), Progress::Back);
        // Back, but from the old disk (or an agent that does not say): not yet.
        check(Joined, written(), true, Some("img-1"), Progress::Written);
        check(Deployed, written(), false, Some("img-1"), Progress::Written);
        assert!(matches!(
            progress(Failed, Some("deadline"), d("img-2", DeployPhase::Writing, None), "img-2", true, None),
            Progress::Failed(why) if why.contains("deadline")
        ));
        assert!(matches!(
            progress(Joined, None, d("img-1", DeployPhase::Written, None), "img-2", true, Some("img-1")),
            Progress::Failed(why) if why.contains("replaced")
        ));
        assert!(matches!(progress(Ready, None, None, "img-2", true, None), Progress::Failed(_)));
    }

    #[test]
    fn a_manager_leaves_only_while_the_others_keep_a_quorum() {
        let manager = |id: &str, status: &str| Member { manager: true, status: status.into(), ..member(id, "Active") };
        let three = [manager("a", "Ready"), manager("b", "Ready"), manager("c", "Ready"), member("w", "Active")];
        assert_eq!(quorum_without(&three, "a"), Ok(()), "2 of 3 stay up");
        assert_eq!(quorum_without(&three, "w"), Ok(()), "a worker");
        assert_eq!(quorum_without(&three, "gone"), Ok(()));
        let one_down = [manager("a", "Ready"), manager("b", "Ready"), manager("c", "Down")];
        assert!(quorum_without(&one_down, "a").unwrap_err().contains("1 of 3"));
        let only = [manager("a", "Ready"), member("w", "Active")];
        assert!(quorum_without(&only, "a").unwrap_err().contains("0 of 1"));
        // A reinstalled manager back under a new id, its old entry not yet
        // removed: four managers, three up; another may not leave yet.
        let rejoined = [manager("a2", "Ready"), manager("a", "Down"), manager("b", "Ready"), manager("c", "Ready")];
        assert!(quorum_without(&rejoined, "b").is_err());
    }
}
