//! Data-driven tests of `engine::step`: one line per situation, nodes
//! written as a string of states (`P`ending, `A`pplying, `V`erifying,
//! `D`one, `F`ailed) for machines m0, m1, ...

use inventory::oob::UpsStatus;

use super::*;
use crate::campaign::{Action, FirmwareAction, Gates, Rollout, Schedule, Window};

/// 2025-06-07T03:00:00Z, a Saturday, inside a 02:00 window of 4 hours.
const SAT_3AM: i64 = 1_749_265_200_000;

#[derive(Clone)]
struct Case {
    state: CampaignState,
    nodes: &'static str,
    batch: u32,
    max_failures: u32,
    ratio: Option<f64>,
    acknowledged: u32,
    started: bool,
    schedule: Schedule,
    min_charge: Option<f64>,
    on_mains: bool,
    ups: Vec<UpsFact>,
    bmc_down: Vec<usize>,
    now: i64,
}

fn case(state: CampaignState, nodes: &'static str) -> Case {
    Case {
        state,
        nodes,
        batch: 1,
        max_failures: 1,
        ratio: None,
        acknowledged: 0,
        started: nodes.chars().any(|c| c != 'P' && c != ' '),
        schedule: Schedule::Now,
        min_charge: None,
        on_mains: true,
        ups: vec![ups("rack1-ups", UpsStatus::Online, Some(100.0))],
        bmc_down: vec![],
        now: SAT_3AM,
    }
}

fn ups(name: &str, status: UpsStatus, charge: Option<f64>) -> UpsFact {
    UpsFact { name: name.into(), status, charge_percent: charge, error: None }
}

fn sat_window() -> Schedule {
    Schedule::Window(Window { cron: "0 2 * * SAT".into(), timezone: "UTC".into(), minutes: 240 })
}

fn run(c: &Case) -> Decision {
    let nodes: Vec<NodeProgress> = c
        .nodes
        .split_whitespace()
        .enumerate()
        .map(|(i, s)| {
            let mut n = NodeProgress::pending(&format!("m{i}"), i as u32, None);
            n.state = match s {
                "P" => NodeState::Pending,
                "A" => NodeState::Applying,
                "V" => NodeState::Verifying,
                "D" => NodeState::Done,
                "F" => NodeState::Failed,
                other => panic!("node state {other}"),
            };
            n
        })
        .collect();
    let campaign = Campaign {
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
        schedule: c.schedule.clone(),
        rollout: Rollout {
            batch_size: c.batch,
            max_failures: c.max_failures,
            max_failure_ratio: c.ratio,
            ..Rollout::default()
        },
        gates: Gates { ups_min_charge_percent: c.min_charge, on_mains: c.on_mains, ..Default::default() },
        state: c.state,
        reason: None,
        acknowledged_failures: c.acknowledged,
        created_at_ms: 0,
        updated_at_ms: 0,
        started_at_ms: c.started.then_some(1),
        finished_at_ms: None,
    };
    let bmc_ok = (0..nodes.len()).filter(|i| !c.bmc_down.contains(i)).map(|i| format!("m{i}")).collect();
    step(&campaign, &nodes, &Facts { now_ms: c.now, ups: c.ups.clone(), bmc_ok })
}

/// `start` as machine numbers; `to` as the new state, its event and a
/// fragment of its reason.
fn check(c: Case, start: &[usize], to: Option<(CampaignState, &str, &str)>) {
    let d = run(&c);
    let want: Vec<String> = start.iter().map(|i| format!("m{i}")).collect();
    assert_eq!(d.start, want, "starts for {:?} [{}]", c.state, c.nodes);
    match (to, &d.transition) {
        (None, None) => {}
        (Some((state, event, fragment)), Some(t)) => {
            assert_eq!((t.to, t.event), (state, event), "[{}]: {t:?}", c.nodes);
            assert!(t.reason.contains(fragment), "[{}]: {:?} lacks {fragment:?}", c.nodes, t.reason);
        }
        (want, got) => panic!("{:?} [{}]: wanted {want:?}, got {got:?}", c.state, c.nodes),
    }
}

use CampaignState::{Cancelled, Completed, Failed, Held, Paused, Running, Scheduled};

#[test]
fn the_batch_size_is_never_exceeded() {
    check(case(Running, "P P P"), &[0], None);
    check(Case { batch: 2, ..case(Running, "P P P") }, &[0, 1], None);
    check(Case { batch: 2, ..case(Running, "A P P") }, &[1], None);
    check(Case { batch: 2, ..case(Running, "A V P") }, &[], None);
    check(Case { batch: 5, ..case(Running, "D A P P") }, &[2, 3], None);
    check(case(Running, "A P P"), &[], None);
}

#[test]
fn a_scheduled_campaign_starts_when_its_schedule_opens() {
    check(case(Scheduled, "P P"), &[0], Some((Running, "campaign.started", "schedule")));
    let later = Schedule::At("2025-06-07T04:00:00Z".into());
    check(Case { schedule: later.clone(), ..case(Scheduled, "P P") }, &[], None);
    check(
        Case { schedule: later, now: SAT_3AM + 3_600_000, ..case(Scheduled, "P P") },
        &[0],
        Some((Running, "campaign.started", "")),
    );
}

#[test]
fn nothing_starts_outside_the_window() {
    let w = || Case { schedule: sat_window(), ..case(Scheduled, "P P") };
    check(w(), &[0], Some((Running, "campaign.started", "")));
    check(Case { now: SAT_3AM - 2 * 3_600_000, ..w() }, &[], None);
    check(Case { now: SAT_3AM + 3 * 3_600_000, ..w() }, &[], None);
    // Started last window: stays running, starts nothing, the node in flight goes on.
    let running = Case { schedule: sat_window(), now: SAT_3AM + 3 * 3_600_000, batch: 2, ..case(Running, "D A P") };
    check(running.clone(), &[], None);
    check(Case { now: SAT_3AM + 7 * 24 * 3_600_000, ..running }, &[2], None);
}

#[test]
fn a_ups_on_battery_or_low_holds_new_starts_and_mains_resumes() {
    let on = |status, charge| vec![ups("rack1-ups", UpsStatus::Online, Some(100.0)), ups("rack2-ups", status, charge)];
    let battery = Case { ups: on(UpsStatus::OnBattery, Some(90.0)), batch: 2, ..case(Running, "A P P") };
    check(battery.clone(), &[], Some((Held, "campaign.held", "UPS rack2-ups is on battery")));
    assert_eq!(run(&battery).transition.unwrap().ups.as_deref(), Some("rack2-ups"));
    check(Case { state: Held, ..battery.clone() }, &[], None);
    check(
        Case { ups: on(UpsStatus::LowBattery, Some(10.0)), ..battery.clone() },
        &[],
        Some((Held, "campaign.held", "battery low")),
    );
    check(
        Case { ups: on(UpsStatus::Unknown, None), ..battery.clone() },
        &[],
        Some((Held, "campaign.held", "no known state")),
    );
    let mut silent = on(UpsStatus::Online, Some(100.0));
    silent[1].error = Some("127.0.0.1:3493: no answer within 2 s".into());
    check(Case { ups: silent, ..battery.clone() }, &[], Some((Held, "campaign.held", "not answering")));
    // Below the minimum charge, even on mains.
    let low = Case { min_charge: Some(50.0), ups: on(UpsStatus::Online, Some(35.0)), ..battery.clone() };
    check(low.clone(), &[], Some((Held, "campaign.held", "charged 35%, below the gate's 50%")));
    check(Case { ups: on(UpsStatus::Online, Some(60.0)), ..low }, &[1], None);
    // Mains again: resumed, and starts in the same step.
    check(
        Case { state: Held, ups: on(UpsStatus::Online, Some(80.0)), ..battery.clone() },
        &[1],
        Some((Running, "campaign.resumed", "")),
    );
    // A scheduled campaign whose UPS is on battery is held before it starts, then started.
    let fresh = Case { ups: on(UpsStatus::OnBattery, Some(90.0)), ..case(Scheduled, "P P") };
    check(fresh.clone(), &[], Some((Held, "campaign.held", "rack2-ups")));
    check(
        Case { state: Held, ups: on(UpsStatus::Online, Some(90.0)), ..fresh },
        &[0],
        Some((Running, "campaign.started", "")),
    );
    // Gates switched off: nothing holds.
    check(Case { on_mains: false, ..battery }, &[1], None);
}

#[test]
fn failures_pause_by_count_and_ratio_until_an_operator_resumes() {
    check(case(Running, "F P P"), &[], Some((Paused, "campaign.paused", "1 node(s) failed")));
    check(Case { max_failures: 2, ..case(Running, "F P P") }, &[1], None);
    check(Case { max_failures: 2, ..case(Running, "F F P") }, &[], Some((Paused, "campaign.paused", "max_failures 2")));
    let ratio = Case { max_failures: 10, ratio: Some(0.25), ..case(Running, "F D P P") };
    check(ratio.clone(), &[2], None);
    check(Case { nodes: "F F D P", ..ratio }, &[], Some((Paused, "campaign.paused", "2 of 4 nodes failed")));
    // Resumed past one failure: counted from there.
    check(Case { acknowledged: 1, ..case(Running, "F P P") }, &[1], None);
    check(Case { acknowledged: 1, ..case(Running, "F F P") }, &[], Some((Paused, "campaign.paused", "")));
    // The last node failing finishes the campaign as failed, not paused.
    check(case(Running, "D D F"), &[], Some((Failed, "campaign.failed", "2 done, 1 failed")));
}

#[test]
fn paused_cancelled_and_finished_campaigns_start_nothing() {
    for state in [Paused, Cancelled, Completed, Failed] {
        check(Case { batch: 3, ..case(state, "P P P") }, &[], None);
    }
    check(case(Running, "D D D"), &[], Some((Completed, "campaign.completed", "3 done, 0 failed")));
    check(case(Running, "D D V"), &[], None);
}

#[test]
fn a_restart_never_redoes_a_finished_node() {
    // After a restart the runner feeds the stored progress back in.
    check(Case { batch: 3, ..case(Running, "D F P") }, &[], Some((Paused, "campaign.paused", "")));
    check(Case { batch: 3, acknowledged: 1, ..case(Running, "D F A P") }, &[3], None);
    check(Case { batch: 3, ..case(Running, "D D P") }, &[2], None);
}

#[test]
fn nodes_whose_bmc_answers_go_first_but_none_waits_forever() {
    check(Case { bmc_down: vec![0], batch: 1, ..case(Running, "P P P") }, &[1], None);
    check(Case { bmc_down: vec![0, 1, 2], ..case(Running, "P P P") }, &[0], None);
    check(Case { bmc_down: vec![0, 1, 2], ..case(Running, "D A P") }, &[], None);
}
