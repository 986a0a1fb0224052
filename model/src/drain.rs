//! Taking a campaign node out of its cluster before it goes down, and
//! putting it back after: the waits the OS refresh and the firmware sagas
//! share. Out of a Slipway-formed Swarm through a manager's node agent
//! (done once the manager's member list shows it, and only while the
//! other managers keep a quorum); out of any other cluster by the
//! campaign's drain commands, run by the node's own agent (done once the
//! agent reports that command's result, matched by a fresh id so an older
//! result never counts). Every wait is bounded.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use wire::{HookResult, Member};

use crate::campaign::DrainCommands;
use crate::hook::NodeHook;
use crate::refresh_plan::{self, ClusterOp, OpKind};

/// A node's entry in its Slipway-formed Swarm before it went down.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwarmEntry {
    pub cluster: String,
    pub node: String,
}

/// What a node's agent (or its Swarm manager's) is handed while a phase
/// waits for it; stored beside the phase so agents' reports find it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Wanted {
    ClusterOp(ClusterOp),
    Hook(NodeHook),
}

/// What does not change while a node runs.
#[derive(Debug, Clone)]
pub struct Waits<'a> {
    pub campaign_id: &'a str,
    pub machine_id: &'a str,
    /// The campaign's drain commands (for a cluster Slipway did not form).
    pub drain: Option<&'a DrainCommands>,
    /// How long a Swarm manager may take to show a change.
    pub drain_ms: i64,
    /// Beyond a command's own time: how late its agent may report it.
    pub hook_grace_ms: i64,
}

/// What the waits look at, as seen this tick.
#[derive(Debug, Clone, Copy)]
pub struct Seen<'a> {
    pub now_ms: i64,
    /// The node's Swarm as its manager last reported it.
    pub members: &'a [Member],
    /// The last command result the node's agent reported.
    pub hook: Option<&'a HookResult>,
}

/// The node's place in its cluster, as seen when it is about to go down.
#[derive(Debug, Clone, Copy, Default)]
pub struct Place<'a> {
    pub joined: bool,
    /// Its Slipway-formed Swarm, if it has one, and its node id there.
    pub managed_cluster: Option<&'a str>,
    pub node_id: Option<&'a str>,
    /// In a cluster Slipway did not form (drained by command).
    pub foreign_cluster: bool,
}

/// Taking a node out, and undoing a drain that failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "wait", rename_all = "snake_case")]
pub enum TakeOut {
    /// Waiting for a manager to show the node drained.
    Swarm { op: ClusterOp },
    /// Waiting for the node's agent to run the drain command.
    Command { hook: NodeHook },
    /// The drain failed (`why`): made active again, then the node fails.
    UndoSwarm { op: ClusterOp, why: String },
    /// The drain command failed: its undo runs, then the node fails.
    UndoCommand { hook: NodeHook, why: String },
}

#[derive(Debug, Clone, PartialEq)]
pub enum TakeOutStep {
    Wait,
    /// Out; the event to record.
    Drained {
        by_command: bool,
        detail: Value,
    },
    Then(TakeOut),
    Failed(String),
}

impl TakeOut {
    /// How a node at `place` leaves its cluster: from its Swarm (if the
    /// other managers keep a quorum), by the drain command, or not at all
    /// (`Ok(None)`: not joined, or nothing to drain it with).
    pub fn start(
        waits: &Waits<'_>,
        place: Place<'_>,
        members: &[Member],
        now_ms: i64,
    ) -> Result<Option<(TakeOut, Option<SwarmEntry>)>, String> {
        if !place.joined {
            return Ok(None);
        }
        if let (Some(cluster), Some(node)) = (place.managed_cluster, place.node_id.filter(|id| !id.is_empty())) {
            refresh_plan::quorum_without(members, node)
                .map_err(|why| format!("not taken out of Swarm {cluster}: {why}"))?;
            let op = ClusterOp { cluster: cluster.into(), op: OpKind::Drain, node: node.into() };
            let entry = SwarmEntry { cluster: cluster.into(), node: node.into() };
            return Ok(Some((TakeOut::Swarm { op }, Some(entry))));
        }
        match (waits.drain, place.foreign_cluster) {
            (Some(d), true) => {
                Ok(Some((TakeOut::Command { hook: new_hook(waits, "drain", &d.run, d.timeout_seconds, now_ms) }, None)))
            }
            _ => Ok(None),
        }
    }

    pub fn wanted(&self) -> Wanted {
        match self {
            TakeOut::Swarm { op } | TakeOut::UndoSwarm { op, .. } => Wanted::ClusterOp(op.clone()),
            TakeOut::Command { hook } | TakeOut::UndoCommand { hook, .. } => Wanted::Hook(hook.clone()),
        }
    }

    /// One tick of the wait that began at `since_ms`.
    pub fn step(&self, waits: &Waits<'_>, seen: Seen<'_>, since_ms: i64) -> TakeOutStep {
        let elapsed = seen.now_ms.saturating_sub(since_ms);
        match self {
            TakeOut::Swarm { op } if op.done(seen.members) => {
                TakeOutStep::Drained { by_command: false, detail: json!({ "cluster": op.cluster, "node": op.node }) }
            }
            TakeOut::Swarm { op } if elapsed > waits.drain_ms => {
                let undo = ClusterOp { op: OpKind::Active, ..op.clone() };
                TakeOutStep::Then(TakeOut::UndoSwarm { op: undo, why: not_shown(op, waits.drain_ms) })
            }
            TakeOut::Swarm { .. } => TakeOutStep::Wait,
            TakeOut::UndoSwarm { op, why } if op.done(seen.members) || elapsed > waits.drain_ms => {
                TakeOutStep::Failed(why.clone())
            }
            TakeOut::UndoSwarm { .. } => TakeOutStep::Wait,
            TakeOut::Command { hook } => match hook_result(waits, seen, hook, "drain", since_ms) {
                None => TakeOutStep::Wait,
                Some(Ok(output)) => {
                    TakeOutStep::Drained { by_command: true, detail: json!({ "by": "command", "output": output }) }
                }
                Some(Err(why)) => {
                    let undo = waits.drain.map(|d| d.undo.as_str()).unwrap_or_default();
                    let hook = new_hook(waits, "undrain", undo, hook.timeout_seconds, seen.now_ms);
                    TakeOutStep::Then(TakeOut::UndoCommand { hook, why: format!("not drained: {why}") })
                }
            },
            TakeOut::UndoCommand { hook, why } => match hook_result(waits, seen, hook, "undrain", since_ms) {
                None => TakeOutStep::Wait,
                Some(_) => TakeOutStep::Failed(why.clone()),
            },
        }
    }
}

/// Putting a node back once it is up again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "wait", rename_all = "snake_case")]
pub enum PutBack {
    /// Its old Swarm entry made active again, or removed (it rejoined
    /// under a new id).
    Swarm { op: ClusterOp },
    /// The campaign's undrain command, run by its agent.
    Command { hook: NodeHook },
}

#[derive(Debug, Clone, PartialEq)]
pub enum PutBackStep {
    Wait,
    /// Back; the event to record, if any.
    Done(Option<(&'static str, Value)>),
    /// It did not happen in time, or the command failed (why).
    Failed(String),
}

impl PutBack {
    /// The undrain command for a node the drain command took out.
    pub fn command(waits: &Waits<'_>, now_ms: i64) -> Option<PutBack> {
        let d = waits.drain?;
        Some(PutBack::Command { hook: new_hook(waits, "undrain", &d.undo, d.timeout_seconds, now_ms) })
    }

    pub fn wanted(&self) -> Wanted {
        match self {
            PutBack::Swarm { op } => Wanted::ClusterOp(op.clone()),
            PutBack::Command { hook } => Wanted::Hook(hook.clone()),
        }
    }

    pub fn step(&self, waits: &Waits<'_>, seen: Seen<'_>, since_ms: i64) -> PutBackStep {
        match self {
            PutBack::Swarm { op } if op.done(seen.members) => {
                let event = (op.op == OpKind::Active)
                    .then(|| ("campaign.node_undrained", json!({ "cluster": op.cluster, "node": op.node })));
                PutBackStep::Done(event)
            }
            PutBack::Swarm { op } if seen.now_ms.saturating_sub(since_ms) > waits.drain_ms => {
                PutBackStep::Failed(not_shown(op, waits.drain_ms))
            }
            PutBack::Swarm { .. } => PutBackStep::Wait,
            PutBack::Command { hook } => match hook_result(waits, seen, hook, "undrain", since_ms) {
                None => PutBackStep::Wait,
                Some(Ok(output)) => {
                    PutBackStep::Done(Some(("campaign.node_undrained", json!({ "by": "command", "output": output }))))
                }
                Some(Err(why)) => PutBackStep::Failed(format!("{why}; the node may be left drained")),
            },
        }
    }
}

/// A command for the node's agent, with an id of its own so an older
/// result never counts.
fn new_hook(waits: &Waits<'_>, which: &str, run: &str, timeout_seconds: u32, now_ms: i64) -> NodeHook {
    NodeHook {
        hook_id: format!("{}:{}:{which}:{now_ms}", waits.campaign_id, waits.machine_id),
        run: run.into(),
        timeout_seconds,
    }
}

/// The reported result of `hook`: its output when it exited 0; `None`
/// while it may still come.
fn hook_result(
    waits: &Waits<'_>,
    seen: Seen<'_>,
    hook: &NodeHook,
    which: &str,
    since_ms: i64,
) -> Option<Result<String, String>> {
    match seen.hook.filter(|r| r.id == hook.hook_id) {
        Some(r) if r.exit_code == 0 => Some(Ok(r.output.clone())),
        Some(r) => Some(Err(format!("the {which} command exited {}: {}", r.exit_code, r.output))),
        None => {
            let limit = i64::from(hook.timeout_seconds) * 1000 + waits.hook_grace_ms;
            (seen.now_ms.saturating_sub(since_ms) > limit).then(|| {
                Err(format!(
                    "the node agent did not report the {which} command within {} s (is it running?)",
                    limit / 1000
                ))
            })
        }
    }
}

fn not_shown(op: &ClusterOp, limit_ms: i64) -> String {
    format!(
        "Swarm {} did not show node {} {:?} within {} s (no manager's node agent reporting?)",
        op.cluster,
        op.node,
        op.op,
        limit_ms / 1000
    )
}
