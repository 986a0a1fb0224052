use super::*;
use crate::campaign::DrainCommands;

fn action(component: &str) -> FirmwareAction {
    FirmwareAction {
        component: component.into(),
        firmware: Some("bios-2.0.0".into()),
        image_url: None,
        sha256: None,
        version: "2.0.0".into(),
    }
}

fn plan<'a>(action: &'a FirmwareAction, drain: Option<&'a DrainCommands>) -> Plan<'a> {
    Plan {
        waits: Waits { campaign_id: "c1", machine_id: "m1", drain, drain_ms: 600_000, hook_grace_ms: 45_000 },
        action,
        task_ms: 1_800_000,
        verify_ms: 600_000,
    }
}

fn member(id: &str, availability: &str, manager: bool) -> Member {
    Member { id: id.into(), hostname: id.into(), status: "Ready".into(), availability: availability.into(), manager }
}

fn next(step: &Step) -> Saga {
    match &step.next {
        Next::Go(saga) => saga.clone(),
        Next::Finish(end) => panic!("finished early: {end:?}"),
    }
}

fn version(v: &str) -> Option<Result<Option<String>, String>> {
    Some(Ok(Some(v.into())))
}

#[test]
fn a_node_already_at_the_version_is_done_untouched() {
    let action = action("BIOS");
    let facts =
        Facts { has_bmc: true, machine: Some(MachineState::Joined), version: version("2.0.0"), ..Default::default() };
    let step = Saga::new(0).step(&plan(&action, None), &facts);
    assert_eq!(step, Step { effects: vec![], next: Next::Finish(Ok("already at this version".into())) });
    let no_bmc = Facts { has_bmc: false, ..facts };
    assert_eq!(
        Saga::new(0).step(&plan(&action, None), &no_bmc).next,
        Next::Finish(Err("the machine has no BMC enrolled".into()))
    );
}

#[test]
fn a_bios_update_drains_a_swarm_worker_around_its_reset() {
    let action = action("BIOS");
    let plan = plan(&action, None);
    let mut members = vec![member("mgr", "Active", true), member("w1", "Active", false)];
    let mut facts = Facts {
        now_ms: 1_000,
        has_bmc: true,
        machine: Some(MachineState::Joined),
        managed_cluster: Some("rack7"),
        node_id: Some("w1"),
        version: version("1.0.0"),
        ..Default::default()
    };
    let step = Saga::new(0).step(&plan, &{
        let mut f = facts.clone();
        f.members = &members;
        f
    });
    assert_eq!(step.effects, [Effect::NotePrevious("1.0.0".into())]);
    let saga = next(&step);
    let step = saga.step(&plan, &facts);
    assert_eq!(step.effects, [Effect::SimpleUpdate]);
    let saga = next(&saga.sent(&plan, &facts, Ok(Some("/redfish/v1/TaskService/Tasks/7".into()))));
    assert_eq!(saga.phase, Phase::Task { task: "/redfish/v1/TaskService/Tasks/7".into(), errors: 0 });
    facts.task = Some(TaskSeen::Ended { state: "Completed".into(), messages: String::new() });
    let step = saga.step(&plan, &Facts { members: &members, ..facts.clone() });
    assert_eq!(step.effects, [Effect::NoteVerifying]);
    let saga = next(&step);
    assert!(matches!(saga.wanted(), Some(Wanted::ClusterOp(ClusterOp { op: OpKind::Drain, .. }))), "{saga:?}");
    members[1].availability = "Drain".into();
    let step = saga.step(&plan, &Facts { members: &members, ..facts.clone() });
    assert!(matches!(step.effects[..], [Effect::Event("campaign.node_drained", _)]));
    let saga = next(&step);
    facts.power_off = Some(Ok(true));
    let saga = next(&saga.step(&plan, &facts));
    assert_eq!(saga.phase, Phase::Reset { was_off: Some(true) }, "kept before the reset");
    assert_eq!(saga.step(&plan, &facts).effects, [Effect::Reset]);
    facts.now_ms = 2_000;
    let saga = next(&saga.reset(&facts, Ok(())));
    facts.version = version("1.0.0");
    assert_eq!(saga.step(&plan, &facts).effects, [], "not showing yet");
    facts.version = version("2.0.0");
    let step = saga.step(&plan, &facts);
    assert_eq!(step.effects, [Effect::PowerOff], "it was off before the update");
    let saga = next(&step);
    assert_eq!(saga.phase, Phase::ComeBack);
    facts.reported_ms = Some(3_000);
    assert_eq!(next(&saga.step(&plan, &facts)).phase, Phase::ComeBack, "a report from before the reset settled");
    facts.reported_ms = Some(7_500);
    let saga = next(&saga.step(&plan, &facts));
    assert!(matches!(saga.wanted(), Some(Wanted::ClusterOp(ClusterOp { op: OpKind::Active, .. }))));
    members[1].availability = "Active".into();
    let step = saga.step(&plan, &Facts { members: &members, ..facts.clone() });
    assert!(matches!(step.effects[..], [Effect::Event("campaign.node_undrained", _)]));
    assert_eq!(step.next, Next::Finish(Ok("applied and verified".into())));
}

#[test]
fn bmc_firmware_needs_no_reset() {
    let action = action("BMC");
    let plan = plan(&action, None);
    let facts =
        Facts { has_bmc: true, machine: Some(MachineState::Joined), version: version("1.0"), ..Default::default() };
    let saga = Saga { phase: Phase::Send, ..Saga::new(0) };
    let saga = next(&saga.sent(&plan, &facts, Ok(None)));
    assert_eq!(saga.phase, Phase::Verify { shown: None });
}

#[test]
fn a_task_that_fails_or_is_forgotten_twice_fails_the_node() {
    let action = action("BIOS");
    let plan = plan(&action, None);
    let saga = Saga { phase: Phase::Task { task: "7".into(), errors: 0 }, sent: 1, ..Saga::new(0) };
    let ended = Facts {
        task: Some(TaskSeen::Ended { state: "Exception".into(), messages: "bad image".into() }),
        ..Default::default()
    };
    assert_eq!(
        saga.step(&plan, &ended).next,
        Next::Finish(Err("the BMC's update task ended Exception: bad image".into()))
    );
    let gone = Facts { task: Some(TaskSeen::Gone), ..Default::default() };
    assert_eq!(next(&saga.step(&plan, &gone)).phase, Phase::Send, "sent again once");
    let twice = Saga { sent: 2, ..saga.clone() };
    assert_eq!(twice.step(&plan, &gone).next, Next::Finish(Err("the BMC no longer knows task 7".into())));
    let unreadable = Facts { task: Some(TaskSeen::Unreadable("timeout".into())), ..Default::default() };
    let mut s = saga;
    for _ in 0..4 {
        s = next(&s.step(&plan, &unreadable));
    }
    assert_eq!(s.step(&plan, &unreadable).next, Next::Finish(Err("timeout".into())));
}

#[test]
fn a_version_that_never_shows_fails_and_powers_an_off_host_off_again() {
    let action = action("BIOS");
    let plan = plan(&action, None);
    let saga = Saga { phase: Phase::Verify { shown: None }, was_off: true, reset_at_ms: Some(0), ..Saga::new(0) };
    let facts = Facts { now_ms: 600_001, version: version("1.0.0"), ..Default::default() };
    let step = saga.step(&plan, &facts);
    assert_eq!(step.effects, [Effect::PowerOff]);
    assert_eq!(
        step.next,
        Next::Finish(Err("the BMC shows BIOS Some(\"1.0.0\"), not \"2.0.0\", 600 s after the update".into()))
    );
}

#[test]
fn a_node_from_before_stored_sagas_is_adopted() {
    assert_eq!(Saga::adopt(Some("7"), false, 0).phase, Phase::Task { task: "7".into(), errors: 0 });
    assert_eq!(Saga::adopt(Some("7"), true, 0).phase, Phase::Verify { shown: None });
    assert_eq!(Saga::adopt(None, false, 0).phase, Phase::Check);
}
