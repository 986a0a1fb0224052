//! The OS refresh of one campaign node as a saga: a phase the store keeps,
//! and the next step as a pure function of that phase and what is seen
//! now (`Saga::step`). The campaign runner ticks it: gather the facts,
//! step, carry out the effects, store the new phase. An appliance that
//! restarts reads the phase back and goes on from it; nothing is rebuilt
//! from events or host names.
//!
//! The story of a node: check it may be refreshed and record its image;
//! drain it (from its Slipway-formed Swarm through a manager, or by the
//! campaign's drain command through its own agent); reinstall the target
//! image with its own settings (new deployment, BMC reboot into the
//! installer, wait until written, verified and back); on failure the same
//! to the previous image; tidy its old Swarm entry; run the undrain
//! command; finish as done, rolled back or failed.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use wire::{HookResult, Member};

use crate::deploy::DeployPhase;
use crate::hook::NodeHook;
use crate::lifecycle::MachineState;
use crate::refresh_plan::{self, ClusterOp, DeployView, OpKind, Progress};

/// What the runner keeps of one node's refresh.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Saga {
    pub target: String,
    /// The image before the refresh: what a failed refresh goes back to.
    pub previous: Option<String>,
    /// The node's entry in its Slipway-formed Swarm before the refresh:
    /// drained first, removed (or made active) after.
    pub swarm: Option<SwarmEntry>,
    /// Drained by the campaign's command: its undo runs at the end.
    pub drained_by_command: bool,
    pub phase: Phase,
    /// When the phase began: its time limit counts from here.
    pub since_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwarmEntry {
    pub cluster: String,
    pub node: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Phase {
    /// Not started: may it be refreshed, and how is it drained?
    Check,
    /// Waiting for a manager to show the node drained.
    Draining { op: ClusterOp },
    /// Waiting for the node's agent to run the drain command.
    DrainCommand { hook: NodeHook },
    /// The drain failed (`why`): made active again, then the node fails.
    UndoDrain { op: ClusterOp, why: String },
    /// The drain command failed: its undo runs, then the node fails.
    UndoDrainCommand { hook: NodeHook, why: String },
    /// Reinstalling `image`; with `rollback_of`, the refresh failed for
    /// that reason and this is the way back to the previous image.
    Install { image: String, rollback_of: Option<String>, step: InstallStep },
    /// Back: the old Swarm entry is tidied before the node finishes.
    Tidy { op: ClusterOp, outcome: Outcome },
    /// Back: the undrain command runs before the node finishes.
    Undrain { hook: NodeHook, outcome: Outcome },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstallStep {
    /// The new deployment is to be made.
    Deploy,
    /// The machine is to be rebooted into the installer by its BMC.
    Boot,
    /// Waiting for the image to be written and verified.
    Write,
    /// Written; waiting for the new OS's node agent (and its join).
    ComeBack,
}

/// How a node ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Done(String),
    RolledBack(String),
    Failed(String),
}

/// What a node's agent (or its Swarm manager's) is handed while a phase
/// waits for it; stored beside the phase so agents' reports find it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Wanted {
    ClusterOp(ClusterOp),
    Hook(NodeHook),
}

/// What does not change while the node runs.
#[derive(Debug, Clone)]
pub struct Plan<'a> {
    pub campaign_id: &'a str,
    pub machine_id: &'a str,
    /// The campaign's drain commands (for a cluster Slipway did not form).
    pub drain: Option<&'a crate::campaign::DrainCommands>,
    /// How long a Swarm manager may take to show a change.
    pub drain_ms: i64,
    /// Beyond a command's own time: how late its agent may report it.
    pub hook_grace_ms: i64,
    /// How long the image may take to be written (95% of the deploy deadline).
    pub write_ms: i64,
    /// How long a written node may take to come back (95% of the join deadline).
    pub come_back_ms: i64,
    /// The campaign's health check: the new image back within this.
    pub back_within_ms: Option<i64>,
}

/// The machine as seen this tick.
#[derive(Debug, Clone, Default)]
pub struct Facts<'a> {
    pub now_ms: i64,
    /// The machine's state and, when failed, why; `None`: it is gone.
    pub machine: Option<(MachineState, Option<&'a str>)>,
    pub deployment: Option<DeployView<'a>>,
    /// The deployment's join spec: in a cluster at all, in one Slipway
    /// formed (its name), in one it did not.
    pub clustered: bool,
    pub managed_cluster: Option<&'a str>,
    pub foreign_cluster: bool,
    /// From its node agent's last report: the image, its cluster node id,
    /// the last command result.
    pub node_image: Option<&'a str>,
    pub node_id: Option<&'a str>,
    pub hook: Option<&'a HookResult>,
    /// The Swarm as its manager last reported it (the node's cluster).
    pub members: &'a [Member],
    pub has_bmc: bool,
    /// Images (of the target and the previous one) that are available.
    pub available: &'a [&'a str],
}

/// Something the runner does for a step, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Record the node's image before the refresh.
    NotePrevious(String),
    /// The node's image is written: the campaign node is `verifying`.
    NoteVerifying,
    Event(&'static str, Value),
    /// Replace the deployment with `image` and the same settings (machine
    /// to `refreshing`). If it cannot: `Saga::install_failed`.
    Deploy {
        image: String,
    },
    /// Reboot the machine into the installer. If it cannot:
    /// `Saga::install_failed`.
    NetworkBoot {
        image: String,
    },
    /// The rollback failed too: the machine fails.
    RollbackFailed(String),
}

/// The result of a step: effects, then the node's new saga, or how it ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub effects: Vec<Effect>,
    pub next: Next,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    Go(Saga),
    Finish(Outcome),
}

impl Saga {
    pub fn new(target: &str, now_ms: i64) -> Saga {
        Saga {
            target: target.into(),
            previous: None,
            swarm: None,
            drained_by_command: false,
            phase: Phase::Check,
            since_ms: now_ms,
        }
    }

    /// A node found in progress with no stored saga (it was started by an
    /// appliance from before sagas were stored): where it most likely is.
    /// Its Swarm entry, then only in that appliance's memory, is not tidied.
    pub fn adopt(target: &str, previous: Option<&str>, facts: &Facts<'_>) -> Saga {
        let mut saga = Saga::new(target, facts.now_ms);
        let (Some(previous), Some(d), Some((state, _))) = (previous, &facts.deployment, facts.machine) else {
            return saga;
        };
        saga.previous = Some(previous.into());
        let refreshing = state == MachineState::Refreshing;
        let step = if refreshing && d.phase == DeployPhase::Requested { InstallStep::Boot } else { InstallStep::Write };
        if d.image == target {
            saga.phase = Phase::Install { image: target.into(), rollback_of: None, step };
        } else if d.image == previous && refreshing {
            let why = "the refresh failed before an appliance restart".to_string();
            saga.phase = Phase::Install { image: previous.into(), rollback_of: Some(why), step };
        }
        saga
    }

    /// What an agent is handed while this phase waits.
    pub fn wanted(&self) -> Option<Wanted> {
        match &self.phase {
            Phase::Draining { op } | Phase::UndoDrain { op, .. } | Phase::Tidy { op, .. } => {
                Some(Wanted::ClusterOp(op.clone()))
            }
            Phase::DrainCommand { hook } | Phase::UndoDrainCommand { hook, .. } | Phase::Undrain { hook, .. } => {
                Some(Wanted::Hook(hook.clone()))
            }
            Phase::Check | Phase::Install { .. } => None,
        }
    }

    fn go(&self, phase: Phase, now_ms: i64) -> Saga {
        Saga { phase, since_ms: now_ms, ..self.clone() }
    }

    fn elapsed(&self, now_ms: i64) -> i64 {
        now_ms.saturating_sub(self.since_ms)
    }

    /// The next step from this phase and what is seen now.
    pub fn step(&self, plan: &Plan<'_>, facts: &Facts<'_>) -> Step {
        let now = facts.now_ms;
        match &self.phase {
            Phase::Check => self.check(plan, facts),
            Phase::Draining { op } => {
                if op.done(facts.members) {
                    let detail = json!({ "cluster": op.cluster, "node": op.node });
                    let install = self.install(&self.target, None, now);
                    return with(vec![Effect::Event("campaign.node_drained", detail)], Next::Go(install));
                }
                if self.elapsed(now) <= plan.drain_ms {
                    return stay(self);
                }
                let why = not_shown(op, plan.drain_ms);
                let undo = ClusterOp { op: OpKind::Active, ..op.clone() };
                go(self.go(Phase::UndoDrain { op: undo, why }, now))
            }
            Phase::UndoDrain { op, why } => {
                if op.done(facts.members) || self.elapsed(now) > plan.drain_ms {
                    return finish(Outcome::Failed(why.clone()));
                }
                stay(self)
            }
            Phase::DrainCommand { hook } => match self.hook_result(plan, facts, hook, "drain") {
                None => stay(self),
                Some(Ok(output)) => {
                    let saga = Saga { drained_by_command: true, ..self.install(&self.target, None, now) };
                    let detail = json!({ "by": "command", "output": output });
                    with(vec![Effect::Event("campaign.node_drained", detail)], Next::Go(saga))
                }
                Some(Err(why)) => {
                    let undo = plan.drain.map(|d| d.undo.as_str()).unwrap_or_default();
                    let hook = new_hook(plan, "undrain", undo, hook.timeout_seconds, now);
                    go(self.go(Phase::UndoDrainCommand { hook, why: format!("not drained: {why}") }, now))
                }
            },
            Phase::UndoDrainCommand { hook, why } => match self.hook_result(plan, facts, hook, "undrain") {
                None => stay(self),
                Some(_) => finish(Outcome::Failed(why.clone())),
            },
            Phase::Install { image, rollback_of, step } => self.installing(plan, facts, image, rollback_of, *step),
            Phase::Tidy { op, outcome } => {
                if op.done(facts.members) || self.elapsed(now) > plan.drain_ms {
                    return self.undrain_or_finish(plan, outcome.clone(), now);
                }
                stay(self)
            }
            Phase::Undrain { hook, outcome } => match self.hook_result(plan, facts, hook, "undrain") {
                None => stay(self),
                Some(Ok(output)) => {
                    let detail = json!({ "by": "command", "output": output });
                    with(vec![Effect::Event("campaign.node_undrained", detail)], Next::Finish(outcome.clone()))
                }
                Some(Err(why)) => {
                    let why = format!("{why}; the node may be left drained");
                    finish(match outcome {
                        Outcome::RolledBack(before) => Outcome::Failed(format!("{before}; but {why}")),
                        _ => Outcome::Failed(format!("reinstalled and back, but {why}")),
                    })
                }
            },
        }
    }

    /// The (re)install of `image` could not be started or the machine not
    /// rebooted (`why`): as if it failed.
    pub fn install_failed(&self, why: &str, now_ms: i64) -> Step {
        match &self.phase {
            Phase::Install { image, rollback_of, .. } => self.failed(image, rollback_of.as_deref(), why, now_ms),
            _ => finish(Outcome::Failed(why.into())),
        }
    }

    fn check(&self, plan: &Plan<'_>, facts: &Facts<'_>) -> Step {
        let now = facts.now_ms;
        let failed = |why: String| finish(Outcome::Failed(why));
        let Some((state, _)) = facts.machine else { return failed("the machine no longer exists".into()) };
        let Some(deployment) = &facts.deployment else {
            return failed(format!("the machine is {state} with no deployment to refresh"));
        };
        if !matches!(state, MachineState::Deployed | MachineState::Joined) {
            return failed(format!("the machine is {state}: only a deployed or joined machine is refreshed"));
        }
        if deployment.image == self.target {
            return finish(Outcome::Done("already on this image".into()));
        }
        if !facts.has_bmc {
            return failed(
                "an OS refresh needs a BMC (to reboot the machine into the installer); none is enrolled".into(),
            );
        }
        if !facts.available.contains(&self.target.as_str()) {
            return failed(format!("image {} is not available", self.target));
        }
        let previous = deployment.image.to_string();
        let mut saga = Saga { previous: Some(previous.clone()), ..self.clone() };
        let effects = vec![Effect::NotePrevious(previous)];
        let joined = state == MachineState::Joined;
        let member = facts.node_id.filter(|id| !id.is_empty());
        if let (Some(cluster), Some(node), true) = (facts.managed_cluster, member, joined) {
            if let Err(why) = refresh_plan::quorum_without(facts.members, node) {
                return with(
                    effects,
                    Next::Finish(Outcome::Failed(format!("not taken out of Swarm {cluster}: {why}"))),
                );
            }
            saga.swarm = Some(SwarmEntry { cluster: cluster.into(), node: node.into() });
            let op = ClusterOp { cluster: cluster.into(), op: OpKind::Drain, node: node.into() };
            return with(effects, Next::Go(saga.go(Phase::Draining { op }, now)));
        }
        if let (Some(drain), true, true) = (plan.drain, facts.foreign_cluster, joined) {
            let hook = new_hook(plan, "drain", &drain.run, drain.timeout_seconds, now);
            return with(effects, Next::Go(saga.go(Phase::DrainCommand { hook }, now)));
        }
        with(effects, Next::Go(saga.install(&self.target, None, now)))
    }

    fn install(&self, image: &str, rollback_of: Option<String>, now_ms: i64) -> Saga {
        self.go(Phase::Install { image: image.into(), rollback_of, step: InstallStep::Deploy }, now_ms)
    }

    fn installing(
        &self,
        plan: &Plan<'_>,
        facts: &Facts<'_>,
        image: &str,
        rollback_of: &Option<String>,
        step: InstallStep,
    ) -> Step {
        let now = facts.now_ms;
        let at = |step| self.go(Phase::Install { image: image.into(), rollback_of: rollback_of.clone(), step }, now);
        match step {
            InstallStep::Deploy => {
                // Made before a restart that came before this phase was stored.
                let made = facts.deployment.as_ref().is_some_and(|d| d.image == image)
                    && facts.machine.is_some_and(|(s, _)| s == MachineState::Refreshing);
                if made {
                    return go(at(InstallStep::Boot));
                }
                if !facts.available.contains(&image) {
                    return self.failed(image, rollback_of.as_deref(), &format!("image {image} is not available"), now);
                }
                with(vec![Effect::Deploy { image: image.into() }], Next::Go(at(InstallStep::Boot)))
            }
            InstallStep::Boot => {
                with(vec![Effect::NetworkBoot { image: image.into() }], Next::Go(at(InstallStep::Write)))
            }
            InstallStep::Write | InstallStep::ComeBack => {
                let Some((state, failure)) = facts.machine else {
                    return finish(Outcome::Failed("the machine no longer exists".into()));
                };
                match refresh_plan::progress(state, failure, facts.deployment, image, facts.clustered, facts.node_image)
                {
                    Progress::Back => self.back(plan, image, rollback_of, facts.node_id, now),
                    Progress::Failed(why) => self.failed(image, rollback_of.as_deref(), &why, now),
                    Progress::Written if step == InstallStep::Write => {
                        with(vec![Effect::NoteVerifying], Next::Go(at(InstallStep::ComeBack)))
                    }
                    Progress::Written | Progress::Installing => {
                        let limit = if step == InstallStep::Write {
                            plan.write_ms
                        } else {
                            let health = plan.back_within_ms.filter(|_| rollback_of.is_none());
                            health.map_or(plan.come_back_ms, |b| b.min(plan.come_back_ms))
                        };
                        if self.elapsed(now) <= limit {
                            return stay(self);
                        }
                        let what = if step == InstallStep::Write { "be written and verified" } else { "come back" };
                        let seen = match (step, facts.node_image) {
                            (InstallStep::Write, _) => String::new(),
                            (_, None) => ": no node agent reported".into(),
                            (_, Some(other)) => format!(": its node agent reports image {other}"),
                        };
                        let why = format!("{image} did not {what} within {} s{seen}", limit / 1000);
                        self.failed(image, rollback_of.as_deref(), &why, now)
                    }
                }
            }
        }
    }

    /// `image` is up on the node.
    fn back(&self, plan: &Plan<'_>, image: &str, rollback_of: &Option<String>, node: Option<&str>, now: i64) -> Step {
        let outcome = match rollback_of {
            None => Outcome::Done("reinstalled, verified and back".into()),
            Some(why) => Outcome::RolledBack(format!("{why}; rolled back to {image}")),
        };
        if let Some(entry) = &self.swarm {
            let op = refresh_plan::after_refresh(&entry.cluster, &entry.node, node.filter(|n| !n.is_empty()));
            return go(self.go(Phase::Tidy { op, outcome }, now));
        }
        self.undrain_or_finish(plan, outcome, now)
    }

    /// The (re)install of `image` failed: roll back to the previous image,
    /// or, when this was the rollback, fail the node and the machine.
    fn failed(&self, image: &str, rollback_of: Option<&str>, why: &str, now: i64) -> Step {
        match (rollback_of, self.previous.as_deref()) {
            (None, Some(old)) if old != image => {
                let detail = json!({ "reason": why, "image": old });
                let saga = self.install(old, Some(why.into()), now);
                with(vec![Effect::Event("campaign.node_rolling_back", detail)], Next::Go(saga))
            }
            (Some(first), old) => {
                let old = old.unwrap_or(image);
                let reason = format!("{first}; the rollback to {old} failed too: {why}");
                with(vec![Effect::RollbackFailed(reason.clone())], Next::Finish(Outcome::Failed(reason)))
            }
            (None, _) => finish(Outcome::Failed(why.into())),
        }
    }

    fn undrain_or_finish(&self, plan: &Plan<'_>, outcome: Outcome, now: i64) -> Step {
        match (plan.drain, self.drained_by_command, &outcome) {
            (Some(d), true, Outcome::Done(_) | Outcome::RolledBack(_)) => {
                let hook = new_hook(plan, "undrain", &d.undo, d.timeout_seconds, now);
                go(self.go(Phase::Undrain { hook, outcome }, now))
            }
            _ => finish(outcome),
        }
    }

    /// The reported result of `hook`: its output when it exited 0; `None`
    /// while it may still come.
    fn hook_result(
        &self,
        plan: &Plan<'_>,
        facts: &Facts<'_>,
        hook: &NodeHook,
        which: &str,
    ) -> Option<Result<String, String>> {
        match facts.hook.filter(|r| r.id == hook.hook_id) {
            Some(r) if r.exit_code == 0 => Some(Ok(r.output.clone())),
            Some(r) => Some(Err(format!("the {which} command exited {}: {}", r.exit_code, r.output))),
            None => {
                let limit = i64::from(hook.timeout_seconds) * 1000 + plan.hook_grace_ms;
                (self.elapsed(facts.now_ms) > limit).then(|| {
                    Err(format!(
                        "the node agent did not report the {which} command within {} s (is it running?)",
                        limit / 1000
                    ))
                })
            }
        }
    }
}

/// A command for the node's agent, with an id of its own so an older
/// result never counts.
fn new_hook(plan: &Plan<'_>, which: &str, run: &str, timeout_seconds: u32, now_ms: i64) -> NodeHook {
    NodeHook {
        hook_id: format!("{}:{}:{which}:{now_ms}", plan.campaign_id, plan.machine_id),
        run: run.into(),
        timeout_seconds,
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

fn with(effects: Vec<Effect>, next: Next) -> Step {
    Step { effects, next }
}

fn go(saga: Saga) -> Step {
    with(vec![], Next::Go(saga))
}

fn stay(saga: &Saga) -> Step {
    go(saga.clone())
}

fn finish(outcome: Outcome) -> Step {
    with(vec![], Next::Finish(outcome))
}

#[cfg(test)]
#[path = "refresh_tests.rs"]
mod tests;
