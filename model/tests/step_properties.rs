//! Properties of the model's step functions over generated inputs: the
//! machine lifecycle (`lifecycle::next`) and the campaign decision
//! (`engine::step`), each also driven tick after tick from stored state
//! only, as the appliance does after a restart.

use std::collections::BTreeSet;

use inventory::oob::UpsStatus;
use model::campaign::{
    Action, Campaign, CampaignState, FirmwareAction, Gates, NodeProgress, NodeState, Rollout, Schedule,
};
use model::engine::{step, Facts, UpsFact};
use model::lifecycle::{next, retry_target, MachineState, Trigger, ALL_STATES};
use proptest::prelude::*;

fn machine_state() -> impl Strategy<Value = MachineState> {
    proptest::sample::select(ALL_STATES.to_vec())
}

fn trigger() -> impl Strategy<Value = Trigger> {
    prop_oneof![
        Just(Trigger::InventoryReceived),
        Just(Trigger::DeadlinePassed),
        Just(Trigger::DeployRequested),
        Just(Trigger::ImageWritten),
        Just(Trigger::DeployFailed),
        Just(Trigger::ReleaseRequested),
        Just(Trigger::Wiped),
        Just(Trigger::WipeFailed),
        Just(Trigger::ClusterJoined),
        Just(Trigger::RefreshRequested),
        Just(Trigger::RollbackFailed),
        machine_state().prop_map(Trigger::RetryRequested),
        Just(Trigger::MarkFailedRequested),
        Just(Trigger::ResetRequested),
        Just(Trigger::RetireRequested),
    ]
}

proptest! {
    /// Any history of triggers keeps the lifecycle's promises: a machine
    /// reaches `failed` only with the phase it failed in, and no other
    /// state carries one; `deployed` only from a verified write (or a
    /// refresh's rollback write), never by an operator or a deadline;
    /// `retired` is never left.
    #[test]
    fn every_history_keeps_the_lifecycle_invariants(
        start in machine_state(),
        triggers in proptest::collection::vec(trigger(), 0..40),
    ) {
        let mut state = start;
        for t in triggers {
            let Some(move_) = next(state, t) else { continue };
            prop_assert_eq!(move_.failed_phase.is_some(), move_.to == MachineState::Failed, "{:?} --{:?}-->", state, t);
            if move_.to == MachineState::Deployed {
                prop_assert_eq!(t, Trigger::ImageWritten);
            }
            prop_assert_ne!(state, MachineState::Retired, "left retired by {:?}", t);
            if t == Trigger::DeadlinePassed {
                prop_assert_eq!(move_.failed_phase, Some(state), "a deadline fails the state it bounds");
            }
            state = move_.to;
        }
    }

    /// Whatever a machine is doing, an operator can always end it: mark it
    /// failed, then retire it, in at most two steps.
    #[test]
    fn an_operator_can_always_retire_a_machine(state in machine_state()) {
        prop_assume!(state != MachineState::Retired);
        let mut at = state;
        for t in [Trigger::RetireRequested, Trigger::MarkFailedRequested, Trigger::RetireRequested] {
            if at == MachineState::Retired {
                break;
            }
            if let Some(m) = next(at, t) {
                at = m.to;
            }
        }
        prop_assert_eq!(at, MachineState::Retired, "from {:?}", state);
    }

    /// Retrying a failed machine goes exactly where `retry_target` says,
    /// and nowhere when it says nothing.
    #[test]
    fn retry_follows_its_target(phase in proptest::option::of(machine_state()), has_deployment: bool) {
        match retry_target(phase, has_deployment) {
            Some(to) => {
                let m = next(MachineState::Failed, Trigger::RetryRequested(to));
                prop_assert_eq!(m.map(|m| m.to), Some(to));
            }
            None => {
                let retried = |p: MachineState| {
                    matches!(p, MachineState::Discovering | MachineState::Deploying | MachineState::Releasing)
                };
                prop_assert!(phase.is_none_or(|p| !retried(p)), "no retry for phase {:?}", phase);
            }
        }
    }
}

// ---- engine::step ----

const NOW: i64 = 1_749_265_200_000;

fn node_state() -> impl Strategy<Value = NodeState> {
    proptest::sample::select(vec![
        NodeState::Pending,
        NodeState::Applying,
        NodeState::Verifying,
        NodeState::Done,
        NodeState::Failed,
        NodeState::RolledBack,
    ])
}

fn campaign_state() -> impl Strategy<Value = CampaignState> {
    proptest::sample::select(vec![
        CampaignState::Scheduled,
        CampaignState::Running,
        CampaignState::Held,
        CampaignState::Paused,
        CampaignState::Completed,
        CampaignState::Failed,
        CampaignState::Cancelled,
    ])
}

fn ups_status() -> impl Strategy<Value = UpsStatus> {
    proptest::sample::select(vec![UpsStatus::Online, UpsStatus::OnBattery, UpsStatus::LowBattery, UpsStatus::Unknown])
}

#[derive(Debug, Clone)]
struct World {
    campaign: Campaign,
    nodes: Vec<NodeProgress>,
    facts: Facts,
}

fn campaign(state: CampaignState, batch: u32, max_failures: u32, on_mains: bool) -> Campaign {
    Campaign {
        id: "c1".into(),
        name: "bios".into(),
        targets: Default::default(),
        action: Action::Firmware(FirmwareAction {
            component: "BIOS".into(),
            firmware: Some("bios-2".into()),
            image_url: None,
            sha256: None,
            version: "2.0".into(),
        }),
        schedule: Schedule::Now,
        rollout: Rollout { batch_size: batch, max_failures, ..Rollout::default() },
        gates: Gates { on_mains, ..Default::default() },
        state,
        reason: None,
        acknowledged_failures: 0,
        created_at_ms: 0,
        updated_at_ms: 0,
        started_at_ms: None,
        finished_at_ms: None,
    }
}

fn world() -> impl Strategy<Value = World> {
    (
        campaign_state(),
        1u32..5,
        1u32..4,
        any::<bool>(),
        proptest::collection::vec((node_state(), any::<bool>()), 1..12),
        proptest::collection::vec((ups_status(), proptest::option::of(0.0f64..100.0)), 0..3),
    )
        .prop_map(|(state, batch, max_failures, on_mains, nodes, ups)| {
            let mut bmc_ok = BTreeSet::new();
            let nodes = nodes
                .into_iter()
                .enumerate()
                .map(|(i, (s, bmc_answers))| {
                    let mut n = NodeProgress::pending(&format!("m{i}"), i as u32, None);
                    n.state = s;
                    if bmc_answers {
                        bmc_ok.insert(n.machine_id.clone());
                    }
                    n
                })
                .collect();
            let ups = ups
                .into_iter()
                .enumerate()
                .map(|(i, (status, charge_percent))| UpsFact {
                    name: format!("ups{i}"),
                    status,
                    charge_percent,
                    error: None,
                })
                .collect();
            World {
                campaign: campaign(state, batch, max_failures, on_mains),
                nodes,
                facts: Facts { now_ms: NOW, ups, bmc_ok },
            }
        })
}

fn in_flight(nodes: &[NodeProgress]) -> usize {
    nodes.iter().filter(|n| n.state.in_flight()).count()
}

proptest! {
    /// One decision, any world: only pending nodes start, each once, never
    /// more than the batch has room for; a paused or finished campaign does
    /// nothing; a UPS off mains behind an on-mains gate starts nothing.
    #[test]
    fn a_decision_respects_the_batch_and_the_gates(w in world()) {
        let d = step(&w.campaign, &w.nodes, &w.facts);
        let started: BTreeSet<&String> = d.start.iter().collect();
        prop_assert_eq!(started.len(), d.start.len(), "a node started twice");
        for id in &d.start {
            let node = w.nodes.iter().find(|n| &n.machine_id == id).expect("a known node");
            prop_assert_eq!(node.state, NodeState::Pending, "started a node that is not pending");
        }
        let batch = w.campaign.rollout.batch_size as usize;
        prop_assert!(d.start.is_empty() || in_flight(&w.nodes) + d.start.len() <= batch);
        if matches!(w.campaign.state, CampaignState::Paused) || w.campaign.state.is_final() {
            prop_assert!(d.start.is_empty() && d.transition.is_none());
        }
        let off_mains = w.facts.ups.iter().any(|u| u.status != UpsStatus::Online);
        if w.campaign.gates.on_mains && off_mains {
            prop_assert!(d.start.is_empty(), "started behind a shut gate");
        }
    }

    /// A campaign driven tick after tick, each tick deciding from the
    /// stored campaign and nodes alone (as after a restart), while started
    /// nodes finish one way or the other: it ends (completed, failed or
    /// paused by its failure policy) within a bounded number of ticks,
    /// never starts a node twice, and never holds more than its batch.
    #[test]
    fn a_campaign_runs_to_an_end_from_stored_state_alone(
        n in 1usize..15,
        batch in 1u32..4,
        max_failures in 1u32..4,
        outcomes in proptest::collection::vec(any::<bool>(), 15),
    ) {
        let mut c = campaign(CampaignState::Scheduled, batch, max_failures, true);
        let mut nodes: Vec<NodeProgress> =
            (0..n).map(|i| NodeProgress::pending(&format!("m{i}"), i as u32, None)).collect();
        let facts = Facts {
            now_ms: NOW,
            ups: vec![UpsFact { name: "ups0".into(), status: UpsStatus::Online, charge_percent: Some(100.0), error: None }],
            bmc_ok: nodes.iter().map(|n| n.machine_id.clone()).collect(),
        };
        let mut starts = vec![0u32; n];
        for _tick in 0..(3 * n + 3) {
            let d = step(&c, &nodes, &facts);
            if let Some(t) = &d.transition {
                if t.to == CampaignState::Running && c.started_at_ms.is_none() {
                    c.started_at_ms = Some(NOW);
                }
                c.state = t.to;
            }
            if matches!(c.state, CampaignState::Paused) || c.state.is_final() {
                break;
            }
            for id in &d.start {
                let i: usize = id[1..].parse().unwrap();
                starts[i] += 1;
                nodes[i].state = NodeState::Applying;
            }
            prop_assert!(in_flight(&nodes) <= batch as usize);
            // The in-flight nodes finish before the next tick.
            for (i, node) in nodes.iter_mut().enumerate() {
                if node.state.in_flight() {
                    node.state = if outcomes[i] { NodeState::Done } else { NodeState::Failed };
                }
            }
        }
        prop_assert!(
            matches!(c.state, CampaignState::Paused | CampaignState::Completed | CampaignState::Failed),
            "still {:?} after the ticks: {:?}", c.state, nodes.iter().map(|n| n.state).collect::<Vec<_>>()
        );
        prop_assert!(starts.iter().all(|s| *s <= 1), "a node started twice: {:?}", starts);
        if c.state == CampaignState::Completed {
            prop_assert!(nodes.iter().all(|n| n.state == NodeState::Done));
        }
    }
}
