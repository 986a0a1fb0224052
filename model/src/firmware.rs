//! A firmware update of one campaign node as a saga, like the OS
//! refresh's (`refresh`): a stored phase, and the next step as a pure
//! function of it and what is seen now. The story: check the running
//! version (done if it is there already), send the update to the BMC
//! (Redfish SimpleUpdate), follow its task, take the node out of its
//! cluster when the component starts at a host reset (BIOS), reset the
//! host, read the inventory until the version shows, wait for the node's
//! agent to report after the reset, put it back in its cluster.

use serde::{Deserialize, Serialize};
use wire::{HookResult, Member};

use crate::campaign::FirmwareAction;
use crate::drain::{Place, PutBack, PutBackStep, Seen, SwarmEntry, TakeOut, TakeOutStep, Waits, Wanted};
use crate::lifecycle::MachineState;
use crate::refresh_plan::{ClusterOp, OpKind};
use crate::saga;

/// One step of a node's saga.
pub type Step = saga::Step<Saga, Effect, Result<String, String>>;
pub type Next = saga::Next<Saga, Result<String, String>>;

/// What the runner keeps of one node's update.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Saga {
    pub phase: Phase,
    /// When the phase began: its time limit counts from here.
    pub since_ms: i64,
    /// Updates sent: a BMC that forgets its task gets one more.
    pub sent: u32,
    /// Taken out of its Swarm (put back after) or drained by command.
    pub swarm: Option<SwarmEntry>,
    pub drained_by_command: bool,
    /// When the host was reset; `was_off`: it was off before, and is
    /// turned off again once the version shows.
    pub reset_at_ms: Option<i64>,
    pub was_off: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Phase {
    /// Is the version there already; may the machine be interrupted?
    Check,
    /// The update is to be sent to the BMC.
    Send,
    /// Following the BMC's update task.
    Task {
        task: String,
        errors: u32,
    },
    /// Taking the node out before the host reset.
    TakeOut {
        wait: TakeOut,
    },
    /// The host is to be reset; first its power state is read and kept
    /// (`was_off`), so a reset repeated after a restart does not forget
    /// that the host was off.
    Reset {
        was_off: Option<bool>,
    },
    /// Reading the inventory until the version shows (`shown`: last seen).
    Verify {
        shown: Option<String>,
    },
    /// Waiting for the node's agent to report after the reset.
    ComeBack,
    PutBack {
        wait: PutBack,
    },
}

/// What does not change while the node runs.
#[derive(Debug, Clone)]
pub struct Plan<'a> {
    pub waits: Waits<'a>,
    pub action: &'a FirmwareAction,
    pub task_ms: i64,
    pub verify_ms: i64,
}

/// The BMC's update task as read this tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskSeen {
    Running,
    /// Finished: `Completed`, or another end state with the BMC's messages.
    Ended {
        state: String,
        messages: String,
    },
    /// The BMC no longer knows it (it restarted).
    Gone,
    Unreadable(String),
}

/// The machine as seen this tick. `version` and `task` are read from the
/// BMC only in the phases that look at them.
#[derive(Debug, Clone, Default)]
pub struct Facts<'a> {
    pub now_ms: i64,
    pub has_bmc: bool,
    pub machine: Option<MachineState>,
    pub managed_cluster: Option<&'a str>,
    pub foreign_cluster: bool,
    pub node_id: Option<&'a str>,
    pub members: &'a [Member],
    pub hook: Option<&'a HookResult>,
    /// When its node agent last reported.
    pub reported_ms: Option<i64>,
    /// The running version of the component, or why it could not be read.
    pub version: Option<Result<Option<String>, String>>,
    /// Whether the host is off (read before a reset), or why it could not
    /// be read.
    pub power_off: Option<Result<bool, String>>,
    pub task: Option<TaskSeen>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    NotePrevious(String),
    NoteVerifying,
    Event(&'static str, serde_json::Value),
    /// Send the update; its result goes to `Saga::sent`.
    SimpleUpdate,
    /// Power-cycle the host; its result goes to `Saga::reset`.
    Reset,
    /// The host was off before: off again.
    PowerOff,
}

/// The Redfish task states that mean the update is in place.
const COMPLETED: &str = "Completed";
/// Unreadable task polls in a row before the node fails.
const MAX_TASK_ERRORS: u32 = 5;

impl Saga {
    pub fn new(now_ms: i64) -> Saga {
        Saga {
            phase: Phase::Check,
            since_ms: now_ms,
            sent: 0,
            swarm: None,
            drained_by_command: false,
            reset_at_ms: None,
            was_off: false,
        }
    }

    /// A node found in progress with no stored saga (started by an
    /// appliance from before sagas were stored): its BMC task polled again
    /// if it had one, its version checked again otherwise.
    pub fn adopt(task: Option<&str>, verifying: bool, now_ms: i64) -> Saga {
        let phase = match (task, verifying) {
            (_, true) => Phase::Verify { shown: None },
            (Some(task), false) => Phase::Task { task: task.into(), errors: 0 },
            (None, false) => Phase::Check,
        };
        Saga { phase, sent: 1, ..Saga::new(now_ms) }
    }

    pub fn wanted(&self) -> Option<Wanted> {
        match &self.phase {
            Phase::TakeOut { wait } => Some(wait.wanted()),
            Phase::PutBack { wait } => Some(wait.wanted()),
            _ => None,
        }
    }

    fn go(&self, phase: Phase, now_ms: i64) -> Saga {
        Saga { phase, since_ms: now_ms, ..self.clone() }
    }

    fn elapsed(&self, now_ms: i64) -> i64 {
        now_ms.saturating_sub(self.since_ms)
    }

    pub fn step(&self, plan: &Plan<'_>, facts: &Facts<'_>) -> Step {
        let now = facts.now_ms;
        let wanted = plan.action.version.as_str();
        match &self.phase {
            Phase::Check => {
                if !facts.has_bmc {
                    return fail("the machine has no BMC enrolled".into());
                }
                let current = match &facts.version {
                    Some(Ok(v)) => v.clone(),
                    Some(Err(why)) => return fail(why.clone()),
                    None => return Step::stay(self),
                };
                if current.as_deref() == Some(wanted) {
                    return Step::with(vec![], Next::Finish(Ok("already at this version".into())));
                }
                if let Some(state @ (MachineState::Deploying | MachineState::Releasing)) = facts.machine {
                    return fail(format!("the machine is {state}: a firmware update would interrupt it"));
                }
                let effects = current.map(Effect::NotePrevious).into_iter().collect();
                Step::with(effects, Next::Go(self.go(Phase::Send, now)))
            }
            Phase::Send => Step::with(vec![Effect::SimpleUpdate], Next::Go(self.clone())),
            Phase::Task { task, errors } => match &facts.task {
                None | Some(TaskSeen::Running) if self.elapsed(now) <= plan.task_ms => Step::stay(self),
                None | Some(TaskSeen::Running) => {
                    fail(format!("the BMC's update task did not finish within {} s", plan.task_ms / 1000))
                }
                Some(TaskSeen::Ended { state, .. }) if state == COMPLETED => self.updated(plan, facts),
                Some(TaskSeen::Ended { state, messages }) => {
                    fail(format!("the BMC's update task ended {state}: {messages}"))
                }
                Some(TaskSeen::Gone) if self.sent < 2 => Step::go(self.go(Phase::Send, now)),
                Some(TaskSeen::Gone) => fail(format!("the BMC no longer knows task {task}")),
                Some(TaskSeen::Unreadable(why)) if errors + 1 >= MAX_TASK_ERRORS => fail(why.clone()),
                Some(TaskSeen::Unreadable(_)) => {
                    Step::go(Saga { phase: Phase::Task { task: task.clone(), errors: errors + 1 }, ..self.clone() })
                }
            },
            Phase::TakeOut { wait } => match wait.step(&plan.waits, seen(facts), self.since_ms) {
                TakeOutStep::Wait => Step::stay(self),
                TakeOutStep::Drained { by_command, detail } => {
                    let saga = Saga { drained_by_command: by_command, ..self.go(Phase::Reset { was_off: None }, now) };
                    Step::with(vec![Effect::Event("campaign.node_drained", detail)], Next::Go(saga))
                }
                TakeOutStep::Then(wait) => Step::go(self.go(Phase::TakeOut { wait }, now)),
                TakeOutStep::Failed(why) => fail(why),
            },
            Phase::Reset { was_off: None } => match &facts.power_off {
                Some(Ok(off)) => Step::go(self.go(Phase::Reset { was_off: Some(*off) }, now)),
                Some(Err(why)) => fail(why.clone()),
                None => Step::stay(self),
            },
            Phase::Reset { was_off: Some(_) } => Step::with(vec![Effect::Reset], Next::Go(self.clone())),
            Phase::Verify { shown } => {
                let seen = match &facts.version {
                    Some(Ok(v)) => v.clone(),
                    // The BMC may be restarting: read again next tick.
                    Some(Err(_)) | None => shown.clone(),
                };
                let off = if self.was_off { vec![Effect::PowerOff] } else { vec![] };
                if seen.as_deref() == Some(wanted) {
                    return Step::with(off, self.after_verify(now));
                }
                if self.elapsed(now) > plan.verify_ms {
                    let why = format!(
                        "the BMC shows {} {seen:?}, not {wanted:?}, {} s after the update",
                        plan.action.component,
                        plan.verify_ms / 1000
                    );
                    return Step::with(off, Next::Finish(Err(why)));
                }
                Step::go(Saga { phase: Phase::Verify { shown: seen }, ..self.clone() })
            }
            Phase::ComeBack => {
                let after = self.reset_at_ms.map_or(0, |at| at + 5_000);
                let joined = facts.machine == Some(MachineState::Joined);
                if joined && facts.reported_ms.is_some_and(|t| t >= after) {
                    return Step::with(vec![], self.put_back(plan, now));
                }
                if self.elapsed(now) > plan.verify_ms {
                    let left = match &self.swarm {
                        Some(entry) => format!("it is left drained in Swarm {}", entry.cluster),
                        None => "it is left drained".into(),
                    };
                    return fail(format!(
                        "its node agent did not report within {} s of the reset; {left}",
                        plan.verify_ms / 1000
                    ));
                }
                Step::stay(self)
            }
            Phase::PutBack { wait } => match wait.step(&plan.waits, seen(facts), self.since_ms) {
                PutBackStep::Wait => Step::stay(self),
                PutBackStep::Done(event) => {
                    let effects = event.map(|(kind, detail)| Effect::Event(kind, detail)).into_iter().collect();
                    Step::with(effects, Next::Finish(Ok("applied and verified".into())))
                }
                PutBackStep::Failed(why) => fail(why),
            },
        }
    }

    /// The update was sent: `task`, the BMC's task to follow (none: it
    /// applied at once), or why it could not be sent.
    pub fn sent(&self, plan: &Plan<'_>, facts: &Facts<'_>, task: Result<Option<String>, String>) -> Step {
        let sent = Saga { sent: self.sent + 1, ..self.clone() };
        match task {
            Ok(Some(task)) => Step::go(sent.go(Phase::Task { task, errors: 0 }, facts.now_ms)),
            Ok(None) => sent.updated(plan, facts),
            Err(why) => fail(why),
        }
    }

    /// The host was reset, or why not.
    pub fn reset(&self, facts: &Facts<'_>, reset: Result<(), String>) -> Step {
        let was_off = matches!(self.phase, Phase::Reset { was_off: Some(true) });
        match reset {
            Ok(()) => {
                let now = facts.now_ms;
                Step::go(Saga { reset_at_ms: Some(now), was_off, ..self.go(Phase::Verify { shown: None }, now) })
            }
            Err(why) => fail(why),
        }
    }

    /// The update is in place on the BMC: take the node out and reset the
    /// host when the component starts at reset; verify otherwise.
    fn updated(&self, plan: &Plan<'_>, facts: &Facts<'_>) -> Step {
        let now = facts.now_ms;
        let verifying = vec![Effect::NoteVerifying];
        if !plan.action.needs_host_reset() {
            return Step::with(verifying, Next::Go(self.go(Phase::Verify { shown: None }, now)));
        }
        let place = Place {
            joined: facts.machine == Some(MachineState::Joined),
            managed_cluster: facts.managed_cluster,
            node_id: facts.node_id,
            foreign_cluster: facts.foreign_cluster,
        };
        match TakeOut::start(&plan.waits, place, facts.members, now) {
            Err(why) => Step::with(verifying, Next::Finish(Err(why))),
            Ok(Some((wait, swarm))) => {
                Step::with(verifying, Next::Go(Saga { swarm, ..self.go(Phase::TakeOut { wait }, now) }))
            }
            Ok(None) => Step::with(verifying, Next::Go(self.go(Phase::Reset { was_off: None }, now))),
        }
    }

    fn after_verify(&self, now: i64) -> Next {
        if self.swarm.is_some() || self.drained_by_command {
            return Next::Go(self.go(Phase::ComeBack, now));
        }
        Next::Finish(Ok("applied and verified".into()))
    }

    /// Back after the reset: made active in its Swarm again, or undrained
    /// by the campaign's command.
    fn put_back(&self, plan: &Plan<'_>, now: i64) -> Next {
        let wait = match &self.swarm {
            Some(e) => {
                let op = ClusterOp { cluster: e.cluster.clone(), op: OpKind::Active, node: e.node.clone() };
                Some(PutBack::Swarm { op })
            }
            None => PutBack::command(&plan.waits, now),
        };
        match wait {
            Some(wait) => Next::Go(self.go(Phase::PutBack { wait }, now)),
            None => Next::Finish(Ok("applied and verified".into())),
        }
    }
}

fn seen<'a>(facts: &Facts<'a>) -> Seen<'a> {
    Seen { now_ms: facts.now_ms, members: facts.members, hook: facts.hook }
}

fn fail(why: String) -> Step {
    Step::finish(Err(why))
}

#[cfg(test)]
#[path = "firmware_tests.rs"]
mod tests;
