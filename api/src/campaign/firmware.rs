//! The firmware action on one node, one step per runner tick, through its
//! BMC. The story (check the version, SimpleUpdate with the image URL,
//! follow the task, drain a joined node before a host reset, reset,
//! verify the version in FirmwareInventory, wait for the node's agent
//! after the reset, put it back) and its decisions are
//! `model::firmware`'s saga. Here, each tick: read the stored saga, gather
//! what its phase looks at (the BMC's inventory and task only in the
//! phases that need them), take the step, carry out its effects and store
//! the new phase, or record how the node ended.
//!
//! A restarted appliance goes on from the stored phase: a task is polled
//! again (a task the BMC no longer knows is sent once more), a reset whose
//! phase was not stored is done again. The one effect not safe to repeat,
//! SimpleUpdate, is repeated only when the appliance died between sending
//! it and storing its task (the BMC then flashes the same image twice).

use inventory::oob::{BmcInventory, OobError, PowerAction, PowerState};
use serde_json::json;
use tracing::{info, warn};

use super::runner::RunnerSettings;
use crate::join::JoinSpec;
use crate::oob::OobFailure;
use crate::AppState;
use model::campaign::{Campaign, FirmwareAction, NodeProgress, NodeState};
use model::firmware::{Effect, Facts, Next, Phase, Plan, Saga, Step, TaskSeen};
use store::StoreError;

type Result<T> = std::result::Result<T, StoreError>;

/// The version `component` runs, as this inventory shows it.
pub fn running_version(inv: &BmcInventory, component: &str) -> Option<String> {
    let listed = inv.firmware.iter().find(|f| f.id.eq_ignore_ascii_case(component)).and_then(|f| f.version.clone());
    listed.or_else(|| component.eq_ignore_ascii_case("BIOS").then(|| inv.system.bios_version.clone()).flatten())
}

/// The URL the BMC fetches the image from, or why there is none.
pub fn image_url(app: &AppState, action: &FirmwareAction) -> std::result::Result<String, String> {
    match (&action.firmware, &action.image_url) {
        (_, Some(url)) => Ok(url.clone()),
        (Some(name), None) => {
            let boot = app.boot.as_ref().ok_or_else(|| {
                "no image to give the BMC: the boot HTTP face is off (no provisioning interface)".to_string()
            })?;
            // Pinned at creation: exactly the content uploaded then.
            if let Some(sha256) = &action.sha256 {
                return match crate::firmware_files::pinned_path(&app.firmware_dir, sha256) {
                    Some(path) if path.is_file() => Ok(format!("{}/boot/firmware/sha256/{sha256}", boot.http_base)),
                    _ => Err(format!("no image to give the BMC: firmware {name} with SHA-256 {sha256} is gone")),
                };
            }
            if crate::firmware_files::find(&app.firmware_dir, name).is_none() {
                return Err(format!("no image to give the BMC: firmware {name} is not uploaded"));
            }
            Ok(format!("{}/boot/firmware/{name}", boot.http_base))
        }
        (None, None) => Err("no image to give the BMC: the action names no firmware".into()),
    }
}

/// A BMC failure is the node's, unless it is the store's (then the step
/// is tried again next tick).
fn device<T>(r: std::result::Result<T, OobFailure>) -> Result<std::result::Result<T, String>> {
    match r {
        Ok(v) => Ok(Ok(v)),
        Err(OobFailure::Store(e)) => Err(e),
        Err(e) => Ok(Err(e.to_string())),
    }
}

/// One step of `node`'s update.
pub async fn tick(
    app: &AppState,
    settings: &RunnerSettings,
    campaign: &Campaign,
    action: &FirmwareAction,
    node: &NodeProgress,
) -> Result<()> {
    let store = &app.store;
    let machine_id = node.machine_id.as_str();
    let stored = store.campaign_saga::<Saga>(&campaign.id, machine_id).await?;
    let saga = match &stored {
        Some(saga) => saga.clone(),
        None if node.task.is_some() || node.state == NodeState::Verifying => {
            info!(campaign = campaign.id, machine = machine_id, "adopting an update started before sagas were stored");
            Saga::adopt(node.task.as_deref(), node.state == NodeState::Verifying, store.now_ms())
        }
        None => Saga::new(store.now_ms()),
    };

    // What the saga looks at.
    let bmc = store.bmc_for_machine(machine_id).await?;
    let machine = store.machine(machine_id).await?;
    let join = store.deployment(machine_id).await?.and_then(|d| d.spec.cluster);
    let managed = join.as_ref().and_then(JoinSpec::managed_cluster);
    let report = store.node_report(machine_id).await?;
    let swarm = saga.swarm.as_ref().map(|e| e.cluster.as_str()).or(managed);
    let members = match swarm {
        Some(name) => store.cluster(name).await?.map(|c| c.members).unwrap_or_default(),
        None => vec![],
    };
    let bmc_id = bmc.as_ref().map(|b| b.id.as_str()).unwrap_or_default();
    let version = match (&saga.phase, &bmc) {
        (Phase::Check | Phase::Verify { .. }, Some(_)) => {
            let read = device(app.oob.refresh_inventory(bmc_id).await)?;
            Some(read.map(|(inv, _)| running_version(&inv, &action.component)))
        }
        _ => None,
    };
    let task = match (&saga.phase, &bmc) {
        (Phase::Task { task, .. }, Some(_)) => Some(match app.oob.task_state(bmc_id, task).await {
            Ok(info) if info.is_finished() => TaskSeen::Ended { state: info.state, messages: info.messages.join("; ") },
            Ok(_) => TaskSeen::Running,
            Err(OobFailure::Device(OobError::Http { status: 404, .. })) => TaskSeen::Gone,
            Err(OobFailure::Store(e)) => return Err(e),
            Err(e) => TaskSeen::Unreadable(e.to_string()),
        }),
        _ => None,
    };
    let power_off = match (&saga.phase, &bmc) {
        (Phase::Reset { was_off: None }, Some(_)) => {
            Some(device(app.oob.power_state(bmc_id).await)?.map(|p| p == PowerState::Off))
        }
        _ => None,
    };
    let status = report.as_ref().map(|r| &r.status);
    let facts = Facts {
        now_ms: store.now_ms(),
        has_bmc: bmc.is_some(),
        machine: machine.as_ref().map(|m| m.state),
        managed_cluster: managed,
        foreign_cluster: super::foreign_cluster(join.as_ref()),
        node_id: status.and_then(|s| s.cluster.as_ref()).map(|c| c.node_id.as_str()),
        members: &members,
        hook: status.and_then(|s| s.hook.as_ref()),
        reported_ms: report
            .as_ref()
            .and_then(|r| chrono::DateTime::parse_from_rfc3339(&r.last_seen).ok())
            .map(|t| t.timestamp_millis()),
        version,
        power_off,
        task,
    };
    let plan = Plan {
        waits: super::waits(settings, campaign, machine_id),
        action,
        task_ms: i64::try_from(settings.task_timeout.as_millis()).unwrap_or(i64::MAX),
        verify_ms: i64::try_from(settings.verify_timeout.as_millis()).unwrap_or(i64::MAX),
    };

    let node = Node { app, campaign_id: &campaign.id, machine_id, bmc_id, action };
    let mut step = saga.step(&plan, &facts);
    // An effect whose result the saga needs hands it back (`sent`, `reset`).
    while let Some(follow) = node.carry_out(&saga, &plan, &facts, &step).await? {
        step = follow;
    }
    match step.next {
        Next::Go(next) => {
            let wanted = next.wanted();
            super::save_if_moved(store, (&campaign.id, machine_id), stored.as_ref(), &next, wanted).await
        }
        Next::Finish(end) => node.finish(end).await,
    }
}

struct Node<'a> {
    app: &'a AppState,
    campaign_id: &'a str,
    machine_id: &'a str,
    bmc_id: &'a str,
    action: &'a FirmwareAction,
}

impl Node<'_> {
    /// Carries out a step's effects in order; the step the saga takes with
    /// an effect's result, when it has one.
    async fn carry_out(&self, saga: &Saga, plan: &Plan<'_>, facts: &Facts<'_>, step: &Step) -> Result<Option<Step>> {
        let (app, campaign, machine) = (self.app, self.campaign_id, self.machine_id);
        let action = self.action;
        for effect in &step.effects {
            match effect {
                Effect::NotePrevious(v) => app.store.note_campaign_node(campaign, machine, Some(v), false).await?,
                Effect::NoteVerifying => app.store.note_campaign_node(campaign, machine, None, true).await?,
                Effect::Event(kind, detail) => {
                    let mut detail = detail.clone();
                    if let Some(obj) = detail.as_object_mut() {
                        obj.insert("campaign".into(), json!(campaign));
                    }
                    app.store.record_event(Some(machine), kind, detail).await?;
                }
                Effect::SimpleUpdate => {
                    let sent = match image_url(app, action) {
                        Ok(url) => {
                            let sent = device(app.oob.simple_update(self.bmc_id, &url, &[]).await)?;
                            info!(campaign, machine, url, ?sent, "SimpleUpdate sent");
                            sent
                        }
                        Err(why) => Err(why),
                    };
                    return Ok(Some(saga.sent(plan, facts, sent)));
                }
                Effect::Reset => {
                    let cause = format!("campaign {campaign}: {} {} starts at reset", action.component, action.version);
                    let cycled = app.oob.power(self.bmc_id, Some(PowerAction::Cycle), None, &cause).await;
                    return Ok(Some(saga.reset(facts, device(cycled)?.map(|_| ()))));
                }
                Effect::PowerOff => {
                    let cause = format!("campaign {campaign}: the machine was off before the update");
                    if let Err(err) = app.oob.power(self.bmc_id, Some(PowerAction::ForceOff), None, &cause).await {
                        warn!(machine, error = %err, "powering the machine off again failed");
                    }
                }
            }
        }
        Ok(None)
    }

    /// Records how the node ended.
    async fn finish(&self, end: std::result::Result<String, String>) -> Result<()> {
        let (store, campaign, machine, action) = (&self.app.store, self.campaign_id, self.machine_id, self.action);
        match end {
            Ok(note) => {
                info!(campaign, machine, version = action.version, note, "firmware node done");
                let detail = json!({ "component": action.component, "note": note });
                store.finish_campaign_node(campaign, machine, Ok(&action.version), detail).await
            }
            Err(why) => {
                warn!(campaign, machine, reason = why, "firmware node failed");
                let detail = json!({ "component": action.component, "wanted": action.version });
                store.finish_campaign_node(campaign, machine, Err(&why), detail).await
            }
        }
    }
}
