//! Properties of the firmware saga (`model::firmware`) driven through a
//! simulated BMC and node that act as generated choices say (a task that
//! completes, fails or is forgotten; a version that shows or never does;
//! a host that was on or off; a Swarm manager or drain commands that do as
//! asked or stay silent), with the saga read back from its stored form
//! before every step and now and then a step's new phase lost after its
//! effects: every node ends; it ends done only with the version showing;
//! a host that was off is off again; a node is reset only after it was
//! drained; and when its peers cooperate nothing is left drained.

use model::campaign::{DrainCommands, FirmwareAction};
use model::drain::{Waits, Wanted};
use model::firmware::{Effect, Facts, Next, Phase, Plan, Saga, TaskSeen};
use model::lifecycle::MachineState;
use model::refresh_plan::OpKind;
use proptest::prelude::*;
use wire::{HookResult, Member};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Cluster {
    None,
    Swarm,
    Foreign,
}

#[derive(Debug, Clone)]
struct Script {
    cluster: Cluster,
    /// `Completed`, `Exception`, or forgotten by the BMC (a restart).
    task_end: u8,
    version_shows: bool,
    was_off: bool,
    peers_cooperate: bool,
    agent_reports: bool,
    dice: Vec<u8>,
}

fn script() -> impl Strategy<Value = Script> {
    (
        prop_oneof![Just(Cluster::None), Just(Cluster::Swarm), Just(Cluster::Foreign)],
        prop_oneof![6 => Just(0u8), 1 => Just(1), 1 => Just(2)],
        prop::bool::weighted(0.8),
        any::<bool>(),
        prop::bool::weighted(0.8),
        prop::bool::weighted(0.9),
        prop::collection::vec(any::<u8>(), 64..256),
    )
        .prop_map(|(cluster, task_end, version_shows, was_off, peers_cooperate, agent_reports, dice)| Script {
            cluster,
            task_end,
            version_shows,
            was_off,
            peers_cooperate,
            agent_reports,
            dice,
        })
}

struct Bmc {
    now: i64,
    version: String,
    /// The task the BMC runs, and whether it still knows it.
    task: Option<(String, bool)>,
    tasks_made: u32,
    flashed: bool,
    powered_off: bool,
    reset_at: Option<i64>,
    drained: bool,
    reported: i64,
    hook: Option<HookResult>,
    members: Vec<Member>,
}

fn member(id: &str, manager: bool) -> Member {
    Member { id: id.into(), hostname: id.into(), status: "Ready".into(), availability: "Active".into(), manager }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_update_ends_and_leaves_the_node_as_it_should(s in script()) {
        let action = FirmwareAction {
            component: "BIOS".into(), firmware: Some("bios-2.0.0".into()), image_url: None, sha256: None, version: "2.0.0".into(),
        };
        let drain = DrainCommands { run: "drain-node".into(), undo: "undrain-node".into(), timeout_seconds: 60 };
        let plan = Plan {
            waits: Waits { campaign_id: "c1", machine_id: "m1", drain: Some(&drain), drain_ms: 600_000, hook_grace_ms: 45_000 },
            action: &action,
            task_ms: 1_800_000,
            verify_ms: 600_000,
        };
        let mut bmc = Bmc {
            now: 1_000_000,
            version: "1.0.0".into(),
            task: None,
            tasks_made: 0,
            flashed: false,
            powered_off: s.was_off,
            reset_at: None,
            drained: false,
            reported: 0,
            hook: None,
            members: if s.cluster == Cluster::Swarm { vec![member("mgr", true), member("w1", false)] } else { vec![] },
        };
        let mut stored = serde_json::to_string(&Saga::new(bmc.now)).unwrap();
        let mut end = None;
        let mut reset_while_undrained = false;
        for tick in 0..2_000usize {
            let die = s.dice[tick % s.dice.len()];
            let saga: Saga = serde_json::from_str(&stored).unwrap();
            let reads = matches!(saga.phase, Phase::Check | Phase::Verify { .. });
            let reads_power = matches!(saga.phase, Phase::Reset { was_off: None });
            let task = match (&saga.phase, &bmc.task) {
                (Phase::Task { task, .. }, Some((t, known))) if t == task => Some(match (known, s.task_end) {
                    (false, _) => TaskSeen::Gone,
                    (true, _) if die % 4 == 0 => TaskSeen::Running,
                    (true, 1) => TaskSeen::Ended { state: "Exception".into(), messages: "bad image".into() },
                    (true, _) => TaskSeen::Ended { state: "Completed".into(), messages: String::new() },
                }),
                (Phase::Task { .. }, _) => Some(TaskSeen::Gone),
                _ => None,
            };
            let facts = Facts {
                now_ms: bmc.now,
                has_bmc: true,
                machine: Some(if s.cluster == Cluster::None { MachineState::Deployed } else { MachineState::Joined }),
                managed_cluster: (s.cluster == Cluster::Swarm).then_some("rack7"),
                foreign_cluster: s.cluster == Cluster::Foreign,
                node_id: (s.cluster != Cluster::None).then_some("w1"),
                members: &bmc.members,
                hook: bmc.hook.as_ref(),
                reported_ms: Some(bmc.reported),
                version: reads.then(|| Ok(Some(bmc.version.clone()))),
                power_off: reads_power.then_some(Ok(bmc.powered_off)),
                task,
            };
            let mut step = saga.step(&plan, &facts);
            loop {
                let mut follow = None;
                for effect in &step.effects {
                    match effect {
                        Effect::SimpleUpdate => {
                            bmc.tasks_made += 1;
                            let id = format!("task-{}", bmc.tasks_made);
                            // The third kind of end: the BMC forgets its first task.
                            bmc.task = Some((id.clone(), !(s.task_end == 2 && bmc.tasks_made == 1)));
                            bmc.flashed = s.task_end != 1;
                            follow = Some(saga.sent(&plan, &facts, Ok(Some(id))));
                        }
                        Effect::Reset => {
                            let drained = s.cluster == Cluster::None || bmc.drained;
                            reset_while_undrained |= !drained && (s.cluster == Cluster::Swarm || s.peers_cooperate);
                            (bmc.powered_off, bmc.reset_at) = (false, Some(bmc.now));
                            if bmc.flashed && s.version_shows {
                                bmc.version = "2.0.0".into();
                            }
                            follow = Some(saga.reset(&facts, Ok(())));
                        }
                        Effect::PowerOff => bmc.powered_off = true,
                        Effect::NotePrevious(_) | Effect::NoteVerifying | Effect::Event(..) => {}
                    }
                }
                match follow {
                    Some(next) => step = next,
                    None => break,
                }
            }
            match step.next {
                Next::Go(next) => {
                    // The peers' turn.
                    if s.agent_reports && bmc.reset_at.is_some() && die % 2 == 0 {
                        bmc.reported = bmc.now;
                    }
                    if s.peers_cooperate {
                        match next.wanted() {
                            Some(Wanted::ClusterOp(op)) => {
                                let availability = if op.op == OpKind::Drain { "Drain" } else { "Active" };
                                bmc.drained = op.op == OpKind::Drain;
                                for m in bmc.members.iter_mut().filter(|m| m.id == op.node) {
                                    m.availability = availability.into();
                                }
                            }
                            Some(Wanted::Hook(hook)) => {
                                bmc.drained = hook.run == "drain-node";
                                bmc.hook = Some(HookResult { id: hook.hook_id, exit_code: 0, output: String::new() });
                            }
                            None => {}
                        }
                    }
                    bmc.now += 1_000 + i64::from(die) * 400;
                    if die % 7 != 3 {
                        stored = serde_json::to_string(&next).unwrap();
                    }
                }
                Next::Finish(e) => {
                    end = Some(e);
                    break;
                }
            }
        }
        let end = end.expect("the update ended");
        if end.is_ok() {
            prop_assert_eq!(bmc.version.as_str(), "2.0.0");
        }
        if s.task_end == 1 {
            prop_assert!(end.is_err(), "a failed task fails the node");
        }
        prop_assert!(!reset_while_undrained, "reset while still in its cluster");
        if bmc.reset_at.is_some() && s.was_off && end.is_ok() {
            prop_assert!(bmc.powered_off, "a host that was off is off again");
        }
        if s.peers_cooperate && s.agent_reports && end.is_ok() {
            prop_assert!(!bmc.drained, "{:?}", end);
        }
    }
}
