use super::*;
use crate::campaign::DrainCommands;
use crate::drain::{TakeOut, Waits};
use crate::refresh_plan::{ClusterOp, OpKind};

fn member(id: &str, availability: &str, manager: bool) -> Member {
    Member {
        id: id.into(),
        hostname: format!("host-{id}"),
        status: "Ready".into(),
        availability: availability.into(),
        manager,
    }
}

fn plan(drain: Option<&DrainCommands>) -> Plan<'_> {
    Plan {
        waits: Waits { campaign_id: "c1", machine_id: "m1", drain, drain_ms: 10_000, hook_grace_ms: 45_000 },
        write_ms: 570_000,
        come_back_ms: 570_000,
        back_within_ms: Some(60_000),
    }
}

/// A joined machine on img-1 in Swarm rack7 as node `n1`, a BMC, both images.
struct Seen {
    now: i64,
    state: MachineState,
    image: &'static str,
    phase: DeployPhase,
    error: Option<&'static str>,
    node_image: Option<&'static str>,
    node_id: Option<&'static str>,
    hook: Option<HookResult>,
    members: Vec<Member>,
    managed: bool,
}

impl Seen {
    fn joined() -> Seen {
        Seen {
            now: 1_000,
            state: MachineState::Joined,
            image: "img-1",
            phase: DeployPhase::Written,
            error: None,
            node_image: Some("img-1"),
            node_id: Some("n1"),
            hook: None,
            members: vec![member("mgr", "Active", true), member("n1", "Active", false)],
            managed: true,
        }
    }

    fn facts(&self) -> Facts<'_> {
        Facts {
            now_ms: self.now,
            machine: Some((self.state, Some("deadline passed"))),
            deployment: Some(DeployView { image: self.image, phase: self.phase, error: self.error }),
            clustered: true,
            managed_cluster: self.managed.then_some("rack7"),
            foreign_cluster: !self.managed,
            node_image: self.node_image,
            node_id: self.node_id,
            hook: self.hook.as_ref(),
            members: &self.members,
            has_bmc: true,
            available: &["img-1", "img-2"],
        }
    }
}

fn next_saga(step: &Step) -> Saga {
    match &step.next {
        Next::Go(saga) => saga.clone(),
        Next::Finish(outcome) => panic!("finished early: {outcome:?}"),
    }
}

fn install_step(saga: &Saga) -> (String, Option<String>, InstallStep) {
    match &saga.phase {
        Phase::Install { image, rollback_of, step } => (image.clone(), rollback_of.clone(), *step),
        other => panic!("not installing: {other:?}"),
    }
}

/// Plays the new image's install: deployed, booted, written, back.
fn reinstall(saga: Saga, plan: &Plan<'_>, seen: &mut Seen, image: &'static str) -> Saga {
    let step = saga.step(plan, &seen.facts());
    assert_eq!(step.effects, [Effect::Deploy { image: image.into() }]);
    (seen.state, seen.image, seen.phase, seen.node_image) =
        (MachineState::Refreshing, image, DeployPhase::Requested, None);
    let saga = next_saga(&step);
    let step = saga.step(plan, &seen.facts());
    assert_eq!(step.effects, [Effect::NetworkBoot { image: image.into() }]);
    let saga = next_saga(&step);
    assert_eq!(saga.step(plan, &seen.facts()).next, Next::Go(saga.clone()), "still writing");
    (seen.state, seen.phase) = (MachineState::Deployed, DeployPhase::Written);
    let step = saga.step(plan, &seen.facts());
    assert_eq!(step.effects, [Effect::NoteVerifying]);
    let saga = next_saga(&step);
    assert_eq!(install_step(&saga).2, InstallStep::ComeBack);
    (seen.state, seen.node_image) = (MachineState::Joined, Some(image));
    saga
}

#[test]
fn a_swarm_node_is_drained_reinstalled_and_its_old_entry_removed() {
    let plan = plan(None);
    let mut seen = Seen::joined();
    let saga = Saga::new("img-2", 0);
    let step = saga.step(&plan, &seen.facts());
    assert_eq!(step.effects, [Effect::NotePrevious("img-1".into())]);
    let saga = next_saga(&step);
    assert_eq!(
        saga.wanted(),
        Some(Wanted::ClusterOp(ClusterOp { cluster: "rack7".into(), op: OpKind::Drain, node: "n1".into() }))
    );
    assert_eq!(saga.step(&plan, &seen.facts()).next, Next::Go(saga.clone()), "not drained yet");
    seen.members[1].availability = "Drain".into();
    let step = saga.step(&plan, &seen.facts());
    assert!(matches!(step.effects[..], [Effect::Event("campaign.node_drained", _)]));
    let saga = next_saga(&step);
    assert_eq!(saga.wanted(), None);
    let saga = reinstall(saga, &plan, &mut seen, "img-2");
    seen.node_id = Some("n1-2");
    let saga = next_saga(&saga.step(&plan, &seen.facts()));
    let remove = ClusterOp { cluster: "rack7".into(), op: OpKind::Remove, node: "n1".into() };
    assert_eq!(saga.wanted(), Some(Wanted::ClusterOp(remove)), "the old entry, by the id kept since the drain");
    seen.members.retain(|m| m.id != "n1");
    let step = saga.step(&plan, &seen.facts());
    assert_eq!(step.next, Next::Finish(Outcome::Done("reinstalled, verified and back".into())));
}

#[test]
fn a_failed_write_rolls_back_to_the_previous_image() {
    let plan = plan(None);
    let mut seen = Seen { managed: false, node_id: None, ..Seen::joined() };
    let saga = next_saga(&Saga::new("img-2", 0).step(&plan, &seen.facts()));
    let saga = next_saga(&saga.step(&plan, &seen.facts()));
    (seen.state, seen.image, seen.phase) = (MachineState::Refreshing, "img-2", DeployPhase::Requested);
    let saga = next_saga(&saga.step(&plan, &seen.facts()));
    (seen.phase, seen.error) = (DeployPhase::Failed, Some("sha256 mismatch"));
    let step = saga.step(&plan, &seen.facts());
    assert!(matches!(&step.effects[..], [Effect::Event("campaign.node_rolling_back", d)] if d["image"] == "img-1"));
    let saga = next_saga(&step);
    assert_eq!(install_step(&saga), ("img-1".into(), Some("sha256 mismatch".into()), InstallStep::Deploy));
    seen.error = None;
    let saga = reinstall(saga, &plan, &mut seen, "img-1");
    let step = saga.step(&plan, &seen.facts());
    assert_eq!(step.next, Next::Finish(Outcome::RolledBack("sha256 mismatch; rolled back to img-1".into())));
}

#[test]
fn a_failed_rollback_fails_the_machine() {
    let plan = plan(None);
    let seen = Seen { managed: false, state: MachineState::Refreshing, ..Seen::joined() };
    let saga = Saga {
        previous: Some("img-1".into()),
        phase: Phase::Install { image: "img-1".into(), rollback_of: Some("sha".into()), step: InstallStep::Write },
        ..Saga::new("img-2", 0)
    };
    let step = saga.install_failed("BMC unreachable", 5);
    let reason = "sha; the rollback to img-1 failed too: BMC unreachable".to_string();
    assert_eq!(step.effects, [Effect::RollbackFailed(reason.clone())]);
    assert_eq!(step.next, Next::Finish(Outcome::Failed(reason)));
    // Out of time writing: the same, with the limit named.
    let late = Seen { now: 1_000_000, ..seen };
    assert!(matches!(saga.step(&plan, &late.facts()).next,
        Next::Finish(Outcome::Failed(why)) if why.ends_with("img-1 did not be written and verified within 570 s")));
}

#[test]
fn the_only_manager_is_refused_before_any_drain() {
    let plan = plan(None);
    let seen = Seen { node_id: Some("mgr"), ..Seen::joined() };
    let step = Saga::new("img-2", 0).step(&plan, &seen.facts());
    assert!(matches!(&step.next, Next::Finish(Outcome::Failed(why)) if why.contains("0 of 1 managers")));
}

#[test]
fn a_foreign_cluster_is_drained_and_undrained_by_command() {
    let drain = DrainCommands { run: "drain-node".into(), undo: "undrain-node".into(), timeout_seconds: 30 };
    let plan = plan(Some(&drain));
    let mut seen = Seen { managed: false, ..Seen::joined() };
    let saga = next_saga(&Saga::new("img-2", 0).step(&plan, &seen.facts()));
    let Some(Wanted::Hook(hook)) = saga.wanted() else { panic!("{saga:?}") };
    assert_eq!((hook.hook_id.as_str(), hook.run.as_str()), ("c1:m1:drain:1000", "drain-node"));
    seen.hook = Some(HookResult { id: hook.hook_id.clone(), exit_code: 0, output: "drained".into() });
    let saga = next_saga(&saga.step(&plan, &seen.facts()));
    assert!(saga.drained_by_command);
    seen.now = 2_000;
    let saga = reinstall(saga, &plan, &mut seen, "img-2");
    let saga = next_saga(&saga.step(&plan, &seen.facts()));
    let Some(Wanted::Hook(undo)) = saga.wanted() else { panic!("{saga:?}") };
    assert_eq!((undo.hook_id.as_str(), undo.run.as_str()), ("c1:m1:undrain:2000", "undrain-node"));
    assert_eq!(saga.step(&plan, &seen.facts()).next, Next::Go(saga.clone()), "the drain's result does not count");
    seen.hook = Some(HookResult { id: undo.hook_id.clone(), exit_code: 0, output: "ok".into() });
    let step = saga.step(&plan, &seen.facts());
    assert!(matches!(step.effects[..], [Effect::Event("campaign.node_undrained", _)]));
    assert_eq!(step.next, Next::Finish(Outcome::Done("reinstalled, verified and back".into())));
}

#[test]
fn a_failed_drain_command_is_undone_and_fails_the_node() {
    let drain = DrainCommands { run: "drain-node".into(), undo: "undrain-node".into(), timeout_seconds: 30 };
    let plan = plan(Some(&drain));
    let mut seen = Seen { managed: false, ..Seen::joined() };
    let saga = next_saga(&Saga::new("img-2", 0).step(&plan, &seen.facts()));
    let Some(Wanted::Hook(hook)) = saga.wanted() else { panic!() };
    seen.hook = Some(HookResult { id: hook.hook_id, exit_code: 1, output: "PodDisruptionBudget".into() });
    seen.now = 3_000;
    let saga = next_saga(&saga.step(&plan, &seen.facts()));
    assert!(
        matches!(&saga.phase, Phase::TakeOut { wait: TakeOut::UndoCommand { hook, .. } } if hook.run == "undrain-node")
    );
    // The undo is not reported: after its time the node fails anyway.
    seen.now += 30_000 + 45_000 + 1;
    let want = "not drained: the drain command exited 1: PodDisruptionBudget";
    assert_eq!(saga.step(&plan, &seen.facts()).next, Next::Finish(Outcome::Failed(want.into())));
}

#[test]
fn a_deployment_made_before_a_restart_is_not_made_twice() {
    let plan = plan(None);
    let seen =
        Seen { state: MachineState::Refreshing, image: "img-2", phase: DeployPhase::Requested, ..Seen::joined() };
    let saga = Saga {
        previous: Some("img-1".into()),
        phase: Phase::Install { image: "img-2".into(), rollback_of: None, step: InstallStep::Deploy },
        ..Saga::new("img-2", 0)
    };
    let step = saga.step(&plan, &seen.facts());
    assert_eq!(step.effects, [], "no second deployment");
    assert_eq!(install_step(&next_saga(&step)).2, InstallStep::Boot, "but the BMC reboot, which may not have happened");
}

#[test]
fn a_node_from_before_stored_sagas_is_adopted_where_it_stands() {
    let requested =
        Seen { state: MachineState::Refreshing, image: "img-2", phase: DeployPhase::Requested, ..Seen::joined() };
    let saga = Saga::adopt("img-2", Some("img-1"), &requested.facts());
    assert_eq!(install_step(&saga), ("img-2".into(), None, InstallStep::Boot));
    let rolling =
        Seen { state: MachineState::Refreshing, image: "img-1", phase: DeployPhase::Writing, ..Seen::joined() };
    let (image, why, step) = install_step(&Saga::adopt("img-2", Some("img-1"), &rolling.facts()));
    assert_eq!((image.as_str(), why.is_some(), step), ("img-1", true, InstallStep::Write));
    assert_eq!(Saga::adopt("img-2", None, &rolling.facts()).phase, Phase::Check);
    assert_eq!(Saga::adopt("img-2", Some("img-1"), &Seen::joined().facts()).phase, Phase::Check, "not started");
}

#[test]
fn the_stored_form_reads_back() {
    let stored = r#"{"target":"img-2","previous":"img-1","swarm":{"cluster":"rack7","node":"n1"},
        "drained_by_command":false,"since_ms":5,
        "phase":{"phase":"install","image":"img-1","rollback_of":"sha","step":"come_back"}}"#;
    let saga: Saga = serde_json::from_str(stored).unwrap();
    assert_eq!(install_step(&saga), ("img-1".into(), Some("sha".into()), InstallStep::ComeBack));
    assert_eq!(serde_json::from_str::<Saga>(&serde_json::to_string(&saga).unwrap()).unwrap(), saga);
    let wanted: Wanted =
        serde_json::from_str(r#"{"cluster_op":{"cluster":"rack7","op":"remove","node":"n1"}}"#).unwrap();
    assert!(matches!(wanted, Wanted::ClusterOp(_)));
}
