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
use crate::drain::{Place, PutBack, PutBackStep, Seen, TakeOut, TakeOutStep, Waits};
pub use crate::drain::{SwarmEntry, Wanted};
use crate::lifecycle::MachineState;
use crate::refresh_plan::{self, DeployView, Progress};
use crate::saga;

/// One step of a node's saga.
pub type Step = saga::Step<Saga, Effect, Outcome>;
pub type Next = saga::Next<Saga, Outcome>;

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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Phase {
    /// Not started: may it be refreshed, and how is it drained?
    Check,
    /// Taking it out of its cluster (or undoing a drain that failed).
    TakeOut { wait: TakeOut },
    /// Reinstalling `image`; with `rollback_of`, the refresh failed for
    /// that reason and this is the way back to the previous image.
    Install { image: String, rollback_of: Option<String>, step: InstallStep },
    /// Back (on either image): its old Swarm entry is tidied, or the
    /// undrain command runs, before the node finishes with `outcome`.
    PutBack { wait: PutBack, outcome: Outcome },
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

/// What does not change while the node runs.
#[derive(Debug, Clone)]
pub struct Plan<'a> {
    pub waits: Waits<'a>,
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

impl Facts<'_> {
    fn seen(&self) -> Seen<'_> {
        Seen { now_ms: self.now_ms, members: self.members, hook: self.hook }
    }
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
            Phase::TakeOut { wait } => Some(wait.wanted()),
            Phase::PutBack { wait, .. } => Some(wait.wanted()),
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
            Phase::TakeOut { wait } => match wait.step(&plan.waits, facts.seen(), self.since_ms) {
                TakeOutStep::Wait => Step::stay(self),
                TakeOutStep::Drained { by_command, detail } => {
                    let saga = Saga { drained_by_command: by_command, ..self.install(&self.target, None, now) };
                    Step::with(vec![Effect::Event("campaign.node_drained", detail)], Next::Go(saga))
                }
                TakeOutStep::Then(wait) => Step::go(self.go(Phase::TakeOut { wait }, now)),
                TakeOutStep::Failed(why) => Step::finish(Outcome::Failed(why)),
            },
            Phase::Install { image, rollback_of, step } => self.installing(plan, facts, image, rollback_of, *step),
            Phase::PutBack { wait, outcome } => match wait.step(&plan.waits, facts.seen(), self.since_ms) {
                PutBackStep::Wait => Step::stay(self),
                PutBackStep::Done(event) => {
                    let effects = event.map(|(kind, detail)| Effect::Event(kind, detail)).into_iter().collect();
                    Step::with(effects, Next::Finish(outcome.clone()))
                }
                // A Swarm entry left behind is the operator's to tidy; the
                // node is back all the same.
                PutBackStep::Failed(_) if matches!(wait, PutBack::Swarm { .. }) => Step::finish(outcome.clone()),
                PutBackStep::Failed(why) => Step::finish(match outcome {
                    Outcome::RolledBack(before) => Outcome::Failed(format!("{before}; but {why}")),
                    _ => Outcome::Failed(format!("reinstalled and back, but {why}")),
                }),
            },
        }
    }

    /// The (re)install of `image` could not be started or the machine not
    /// rebooted (`why`): as if it failed.
    pub fn install_failed(&self, why: &str, now_ms: i64) -> Step {
        match &self.phase {
            Phase::Install { image, rollback_of, .. } => self.failed(image, rollback_of.as_deref(), why, now_ms),
            _ => Step::finish(Outcome::Failed(why.into())),
        }
    }

    fn check(&self, plan: &Plan<'_>, facts: &Facts<'_>) -> Step {
        let now = facts.now_ms;
        let failed = |why: String| Step::finish(Outcome::Failed(why));
        let Some((state, _)) = facts.machine else { return failed("the machine no longer exists".into()) };
        let Some(deployment) = &facts.deployment else {
            return failed(format!("the machine is {state} with no deployment to refresh"));
        };
        if !matches!(state, MachineState::Deployed | MachineState::Joined) {
            return failed(format!("the machine is {state}: only a deployed or joined machine is refreshed"));
        }
        if deployment.image == self.target {
            return Step::finish(Outcome::Done("already on this image".into()));
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
        let place = Place {
            joined: state == MachineState::Joined,
            managed_cluster: facts.managed_cluster,
            node_id: facts.node_id,
            foreign_cluster: facts.foreign_cluster,
        };
        match TakeOut::start(&plan.waits, place, facts.members, now) {
            Err(why) => Step::with(effects, Next::Finish(Outcome::Failed(why))),
            Ok(Some((wait, entry))) => {
                saga.swarm = entry;
                Step::with(effects, Next::Go(saga.go(Phase::TakeOut { wait }, now)))
            }
            Ok(None) => Step::with(effects, Next::Go(saga.install(&self.target, None, now))),
        }
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
                    return Step::go(at(InstallStep::Boot));
                }
                if !facts.available.contains(&image) {
                    return self.failed(image, rollback_of.as_deref(), &format!("image {image} is not available"), now);
                }
                Step::with(vec![Effect::Deploy { image: image.into() }], Next::Go(at(InstallStep::Boot)))
            }
            InstallStep::Boot => {
                Step::with(vec![Effect::NetworkBoot { image: image.into() }], Next::Go(at(InstallStep::Write)))
            }
            InstallStep::Write | InstallStep::ComeBack => {
                let Some((state, failure)) = facts.machine else {
                    return Step::finish(Outcome::Failed("the machine no longer exists".into()));
                };
                match refresh_plan::progress(state, failure, facts.deployment, image, facts.clustered, facts.node_image)
                {
                    Progress::Back => self.back(plan, image, rollback_of, facts.node_id, now),
                    Progress::Failed(why) => self.failed(image, rollback_of.as_deref(), &why, now),
                    Progress::Written if step == InstallStep::Write => {
                        Step::with(vec![Effect::NoteVerifying], Next::Go(at(InstallStep::ComeBack)))
                    }
                    Progress::Written | Progress::Installing => {
                        let limit = if step == InstallStep::Write {
                            plan.write_ms
                        } else {
                            let health = plan.back_within_ms.filter(|_| rollback_of.is_none());
                            health.map_or(plan.come_back_ms, |b| b.min(plan.come_back_ms))
                        };
                        if self.elapsed(now) <= limit {
                            return Step::stay(self);
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
            return Step::go(self.go(Phase::PutBack { wait: PutBack::Swarm { op }, outcome }, now));
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
                Step::with(vec![Effect::Event("campaign.node_rolling_back", detail)], Next::Go(saga))
            }
            (Some(first), old) => {
                let old = old.unwrap_or(image);
                let reason = format!("{first}; the rollback to {old} failed too: {why}");
                Step::with(vec![Effect::RollbackFailed(reason.clone())], Next::Finish(Outcome::Failed(reason)))
            }
            (None, _) => Step::finish(Outcome::Failed(why.into())),
        }
    }

    fn undrain_or_finish(&self, plan: &Plan<'_>, outcome: Outcome, now: i64) -> Step {
        let back = matches!(outcome, Outcome::Done(_) | Outcome::RolledBack(_));
        match PutBack::command(&plan.waits, now).filter(|_| self.drained_by_command && back) {
            Some(wait) => Step::go(self.go(Phase::PutBack { wait, outcome }, now)),
            None => Step::finish(outcome),
        }
    }
}

#[cfg(test)]
#[path = "refresh_tests.rs"]
mod tests;
