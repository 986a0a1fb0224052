//! The campaign decision as a pure function: given a campaign, its nodes'
//! progress and the facts of the moment (time, the UPSes feeding its
//! targets, which BMCs answer), which nodes start now and which state the
//! campaign moves to. No I/O, no clock: `runner` gathers the facts and
//! applies the decision.
//!
//! Rules, in order:
//! 1. `paused` and final campaigns start nothing (nodes in progress finish).
//! 2. Nothing pending and nothing in progress: `completed`, or `failed`
//!    when a node failed.
//! 3. Failures since the last resume reaching `max_failures`, or failed /
//!    all targets above `max_failure_ratio`: `paused`.
//! 4. `scheduled` waits for its schedule (`now`, `at`, or inside a window).
//! 5. A shut gate (a UPS feeding a remaining target on battery, low, below
//!    the minimum charge, or not answering) holds new starts: `held`,
//!    naming the UPS; nodes in progress go on. Gates open again: `running`.
//! 6. Outside the window nothing starts; the campaign stays `running`.
//! 7. Up to `batch_size` nodes in progress, in rollout order; nodes whose
//!    BMC answers go first, but when nothing else can run the next one
//!    starts anyway (its failure then says why). Only `pending` nodes ever
//!    start, so a finished node is never redone.

use std::collections::BTreeSet;

use inventory::oob::UpsStatus;

use crate::campaign::{Campaign, CampaignState, NodeProgress, NodeState};

/// The world as the runner saw it this tick.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    pub now_ms: i64,
    /// The UPSes feeding a target that is not finished.
    pub ups: Vec<UpsFact>,
    /// Machines whose BMC answered its last request.
    pub bmc_ok: BTreeSet<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UpsFact {
    pub name: String,
    pub status: UpsStatus,
    pub charge_percent: Option<f64>,
    /// The UPS's last read failed (its state is then stale).
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Decision {
    /// Machines to start, in order.
    pub start: Vec<String>,
    pub transition: Option<Transition>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub to: CampaignState,
    /// The event recorded: `campaign.started`, `.held`, `.resumed`,
    /// `.paused`, `.completed` or `.failed`.
    pub event: &'static str,
    pub reason: String,
    /// The UPS whose state shut a gate.
    pub ups: Option<String>,
}

fn transition(to: CampaignState, event: &'static str, reason: impl Into<String>) -> Option<Transition> {
    Some(Transition { to, event, reason: reason.into(), ups: None })
}

pub fn step(campaign: &Campaign, nodes: &[NodeProgress], facts: &Facts) -> Decision {
    use CampaignState::*;
    let state = campaign.state;
    if matches!(state, Paused | Completed | Failed | Cancelled) {
        return Decision::default();
    }
    let count = |s: NodeState| nodes.iter().filter(|n| n.state == s).count();
    let (pending, done) = (count(NodeState::Pending), count(NodeState::Done));
    // A rolled-back OS refresh is a failure to the policy.
    let failed = nodes.iter().filter(|n| n.state.is_failure()).count();
    let in_flight = nodes.iter().filter(|n| n.state.in_flight()).count();

    // 2. Finished.
    if pending == 0 && in_flight == 0 {
        let reason = format!("{done} done, {failed} failed");
        return Decision {
            start: vec![],
            transition: if failed == 0 {
                transition(Completed, "campaign.completed", reason)
            } else {
                transition(Failed, "campaign.failed", reason)
            },
        };
    }

    // 3. The failure policy.
    let new_failures = failed.saturating_sub(campaign.acknowledged_failures as usize);
    if new_failures > 0 {
        let rollout = &campaign.rollout;
        let ratio = failed as f64 / nodes.len().max(1) as f64;
        let why = if new_failures >= rollout.max_failures as usize {
            Some(format!("{new_failures} node(s) failed (max_failures {})", rollout.max_failures))
        } else {
            rollout
                .max_failure_ratio
                .filter(|max| ratio > *max)
                .map(|max| format!("{failed} of {} nodes failed (max_failure_ratio {max})", nodes.len()))
        };
        if let Some(why) = why {
            return Decision { start: vec![], transition: transition(Paused, "campaign.paused", why) };
        }
    }

    // 4. The schedule.
    let schedule = match campaign.schedule.parse() {
        Ok(s) => s,
        Err(e) => {
            let why = format!("the stored schedule is not valid: {e}");
            return Decision { start: vec![], transition: transition(Paused, "campaign.paused", why) };
        }
    };
    let open = schedule.open_at(facts.now_ms);
    if state == Scheduled && !open {
        return Decision::default();
    }

    // 5. Gates.
    let never_started = campaign.started_at_ms.is_none() && in_flight == 0 && done + failed == 0;
    if let Some((ups, why)) = shut_gate(campaign, facts) {
        if state == Held {
            return Decision::default();
        }
        let t = Transition { to: Held, event: "campaign.held", reason: why, ups: Some(ups) };
        return Decision { start: vec![], transition: Some(t) };
    }
    let mut decision = Decision::default();
    if state != Running {
        decision.transition = if never_started {
            transition(Running, "campaign.started", "the schedule is open")
        } else {
            transition(Running, "campaign.resumed", "every gate is open again")
        };
    }

    // 6, 7. Starts.
    if !open {
        return decision;
    }
    let capacity = (campaign.rollout.batch_size as usize).saturating_sub(in_flight);
    let mut waiting: Vec<&NodeProgress> = nodes.iter().filter(|n| n.state == NodeState::Pending).collect();
    waiting.sort_by_key(|n| n.position);
    decision.start = waiting
        .iter()
        .filter(|n| facts.bmc_ok.contains(&n.machine_id))
        .take(capacity)
        .map(|n| n.machine_id.clone())
        .collect();
    if decision.start.is_empty() && in_flight == 0 && capacity > 0 {
        decision.start.extend(waiting.first().map(|n| n.machine_id.clone()));
    }
    decision
}

/// The first UPS that keeps new nodes from starting, and why.
fn shut_gate(campaign: &Campaign, facts: &Facts) -> Option<(String, String)> {
    let gates = &campaign.gates;
    if !gates.on_mains && gates.ups_min_charge_percent.is_none() {
        return None;
    }
    facts.ups.iter().find_map(|u| {
        let why = if let Some(err) = &u.error {
            Some(format!("UPS {} is not answering ({err})", u.name))
        } else if gates.on_mains && u.status != UpsStatus::Online {
            let what = match u.status {
                UpsStatus::OnBattery => "is on battery",
                UpsStatus::LowBattery => "is on battery with the battery low",
                _ => "reports no known state",
            };
            Some(format!("UPS {} {what}", u.name))
        } else {
            gates.ups_min_charge_percent.and_then(|min| match u.charge_percent {
                Some(c) if c >= min => None,
                Some(c) => Some(format!("UPS {} is charged {c}%, below the gate's {min}%", u.name)),
                None => Some(format!("UPS {} reports no charge (the gate needs {min}%)", u.name)),
            })
        };
        why.map(|w| (u.name.clone(), w))
    })
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
