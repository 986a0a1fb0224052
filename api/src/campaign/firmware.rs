//! The firmware action on one node, through its BMC: SimpleUpdate with
//! the image URL, poll the task (bounded), reset the host when the
//! component starts at reset (BIOS), then read the BMC inventory again
//! until FirmwareInventory shows the target version (bounded).
//!
//! A member of a Slipway-formed Swarm is drained before a host reset (if
//! the other managers keep a quorum without it), and once the version
//! shows and its node agent reports again after the reset it is made
//! active again; a joined member of another cluster is drained and
//! undrained the same way by the campaign's drain commands, if it has
//! them.
//!
//! A node found in progress after a restart is re-checked first: if the
//! version is already there it is done (and undrained if it was left
//! drained); a stored task is polled again
//! (a task the BMC no longer knows is applied again). The store records
//! each step, so a crash at any point resumes from the last one.
//! Deciding which node runs is `engine`'s; this only carries one out.

use std::time::{Duration, Instant};

use inventory::oob::{BmcInventory, OobError, PowerAction, PowerState};
use serde_json::json;
use tracing::{info, warn};

use super::hook;
use super::runner::RunnerSettings;
use super::swarm::{Membership, NodeHand};
use crate::oob::OobFailure;
use crate::AppState;
use model::campaign::{DrainCommands, FirmwareAction, NodeProgress, NodeState};
use model::lifecycle::MachineState;
use model::refresh_plan::{ClusterOp, OpKind};
use store::StoreError;

/// Why a node's update failed: the node's `reason`.
#[derive(Debug, thiserror::Error)]
pub enum NodeFailure {
    #[error("the machine has no BMC enrolled")]
    NoBmc,
    #[error("the machine is {0}: a firmware update would interrupt it")]
    Busy(MachineState),
    #[error("no image to give the BMC: {0}")]
    NoImage(String),
    #[error(transparent)]
    Bmc(#[from] OobFailure),
    #[error("the BMC's update task ended {state}: {messages}")]
    Task { state: String, messages: String },
    #[error("the BMC's update task did not finish within {0} s")]
    TaskTimeout(u64),
    #[error("the BMC shows {component} {shown:?}, not {wanted:?}, {secs} s after the update")]
    NotVerified { component: String, shown: Option<String>, wanted: String, secs: u64 },
    /// Draining, the node's return or undraining failed (it may be left
    /// drained: the reason says).
    #[error("{0}")]
    Drain(String),
}

impl From<StoreError> for NodeFailure {
    fn from(e: StoreError) -> Self {
        NodeFailure::Bmc(OobFailure::Store(e))
    }
}

/// What a finished update notes beside the version.
pub struct Applied {
    pub note: &'static str,
}

/// The version `component` runs, as this inventory shows it.
pub fn running_version(inv: &BmcInventory, component: &str) -> Option<String> {
    let listed = inv.firmware.iter().find(|f| f.id.eq_ignore_ascii_case(component)).and_then(|f| f.version.clone());
    listed.or_else(|| component.eq_ignore_ascii_case("BIOS").then(|| inv.system.bios_version.clone()).flatten())
}

/// The URL the BMC fetches the image from.
pub fn image_url(app: &AppState, action: &FirmwareAction) -> Result<String, NodeFailure> {
    match (&action.firmware, &action.image_url) {
        (_, Some(url)) => Ok(url.clone()),
        (Some(name), None) => {
            if crate::routes::firmware::find(&app.firmware_dir, name).is_none() {
                return Err(NodeFailure::NoImage(format!("firmware {name} is not uploaded")));
            }
            let boot = app
                .boot
                .as_ref()
                .ok_or_else(|| NodeFailure::NoImage("the boot HTTP face is off (no provisioning interface)".into()))?;
            Ok(format!("{}/boot/firmware/{name}", boot.http_base))
        }
        (None, None) => Err(NodeFailure::NoImage("the action names no firmware".into())),
    }
}

struct Node<'a> {
    app: &'a AppState,
    settings: &'a RunnerSettings,
    campaign_id: &'a str,
    machine_id: &'a str,
    bmc_id: String,
    action: &'a FirmwareAction,
}

/// Runs the update on one node and records the outcome.
pub async fn run_node(
    app: AppState,
    settings: RunnerSettings,
    campaign_id: String,
    node: NodeProgress,
    action: FirmwareAction,
    drain: Option<DrainCommands>,
    resume: bool,
) {
    let outcome = apply(&app, &settings, &campaign_id, &node, &action, drain.as_ref(), resume).await;
    let store = &app.store;
    let machine = node.machine_id.as_str();
    let recorded = match &outcome {
        Ok(applied) => {
            info!(campaign = campaign_id, machine, version = action.version, "firmware node done");
            let detail = json!({ "component": action.component, "note": applied.note });
            store.finish_campaign_node(&campaign_id, machine, Ok(&action.version), detail).await
        }
        // A store failure leaves the node in progress: the runner resumes it.
        Err(NodeFailure::Bmc(OobFailure::Store(err))) => {
            warn!(campaign = campaign_id, machine, error = %err, "recording a node's progress failed; it is resumed");
            return;
        }
        Err(why) => {
            warn!(campaign = campaign_id, machine, error = %why, "firmware node failed");
            let detail = json!({ "component": action.component, "wanted": action.version });
            store.finish_campaign_node(&campaign_id, machine, Err(&why.to_string()), detail).await
        }
    };
    if let Err(err) = recorded {
        warn!(campaign = campaign_id, machine, error = %err, "recording a node's outcome failed; it is resumed");
    }
}

async fn apply(
    app: &AppState,
    settings: &RunnerSettings,
    campaign_id: &str,
    progress: &NodeProgress,
    action: &FirmwareAction,
    drain: Option<&DrainCommands>,
    resume: bool,
) -> Result<Applied, NodeFailure> {
    let machine_id = progress.machine_id.as_str();
    let bmc = app.store.bmc_for_machine(machine_id).await?.ok_or(NodeFailure::NoBmc)?;
    let node = Node { app, settings, campaign_id, machine_id, bmc_id: bmc.id, action };
    let hand = NodeHand { app, settings, campaign_id, machine_id };
    let membership = if action.needs_host_reset() { hand.membership().await? } else { None };
    let drain = match drain {
        Some(commands) if action.needs_host_reset() && hook::foreign_cluster(hand.join_spec().await?.as_ref()) => {
            Some(commands)
        }
        _ => None,
    };
    let current = node.version().await?;
    if current.as_deref() == Some(action.version.as_str()) {
        node.note(None, current.as_deref(), false).await?;
        if let Some(m) = &membership {
            node.put_back(&hand, m, None).await?;
        }
        if let (Some(commands), true) = (drain, resume) {
            // It may have been left drained before the restart.
            node.undrain(&hand, commands, None).await?;
        }
        let note = if resume { "the version was found in place after a restart" } else { "already at this version" };
        return Ok(Applied { note });
    }
    if !resume {
        let machine = app.store.machine(machine_id).await?;
        if let Some(state @ (MachineState::Deploying | MachineState::Releasing)) = machine.map(|m| m.state) {
            return Err(NodeFailure::Busy(state));
        }
        node.note(None, current.as_deref(), false).await?;
    }
    let task_done = resume && progress.state == NodeState::Verifying;
    if !task_done {
        let stored = if resume { progress.task.clone() } else { None };
        let polled = match stored {
            Some(task) => node.wait_task(&task).await,
            None => Err(TaskGone),
        };
        match polled {
            Ok(result) => result?,
            Err(TaskGone) => {
                let url = image_url(app, action)?;
                let task = app.oob.simple_update(&node.bmc_id, &url, &[]).await?;
                info!(campaign = campaign_id, machine = machine_id, url, ?task, "SimpleUpdate sent");
                node.note(Some(task.as_deref()), None, false).await?;
                if let Some(task) = task {
                    let Ok(result) = node.wait_task(&task).await else {
                        let messages = format!("the BMC no longer knows task {task}");
                        return Err(NodeFailure::Task { state: "lost".into(), messages });
                    };
                    result?;
                }
            }
        }
        node.note(None, None, true).await?;
    }
    if let Some(m) = &membership {
        // A drain from before a restart stands.
        if !hand.is_drained(m).await? {
            hand.take_out(m).await?.map_err(NodeFailure::Drain)?;
        }
    }
    let joined = app.store.machine(machine_id).await?.is_some_and(|m| m.state == MachineState::Joined);
    let drain = drain.filter(|_| joined);
    if let Some(commands) = drain {
        hand.drain_by_command(commands).await?.map_err(|why| NodeFailure::Drain(format!("not drained: {why}")))?;
    }
    let reset_at_ms = app.store.now_ms();
    let was_off = if action.needs_host_reset() {
        let power = app.oob.power_state(&node.bmc_id).await?;
        let cause = format!("campaign {campaign_id}: {} {} starts at reset", action.component, action.version);
        app.oob.power(&node.bmc_id, Some(PowerAction::Cycle), None, &cause).await?;
        power == PowerState::Off
    } else {
        false
    };
    let verified = node.verify().await;
    if was_off {
        let cause = format!("campaign {campaign_id}: the machine was off before the update");
        if let Err(err) = app.oob.power(&node.bmc_id, Some(PowerAction::ForceOff), None, &cause).await {
            warn!(machine = machine_id, error = %err, "powering the machine off again failed");
        }
    }
    verified?;
    if let Some(m) = &membership {
        node.put_back(&hand, m, Some(reset_at_ms)).await?;
    }
    if let Some(commands) = drain {
        node.undrain(&hand, commands, Some(reset_at_ms)).await?;
    }
    Ok(Applied { note: "applied and verified" })
}

/// The BMC no longer knows the task (it restarted): apply again.
struct TaskGone;

impl Node<'_> {
    async fn version(&self) -> Result<Option<String>, OobFailure> {
        let (inv, _) = self.app.oob.refresh_inventory(&self.bmc_id).await?;
        Ok(running_version(&inv, &self.action.component))
    }

    async fn note(&self, task: Option<Option<&str>>, old: Option<&str>, verifying: bool) -> Result<(), StoreError> {
        self.app.store.note_campaign_node(self.campaign_id, self.machine_id, task, old, verifying).await
    }

    /// Polls until the task finishes (bounded); a few failed polls in a
    /// row fail the node.
    async fn wait_task(&self, task: &str) -> Result<Result<(), NodeFailure>, TaskGone> {
        let started = Instant::now();
        let mut errors = 0;
        loop {
            match self.app.oob.task_state(&self.bmc_id, task).await {
                Ok(info) if info.is_finished() => {
                    return Ok(if info.state == "Completed" {
                        Ok(())
                    } else {
                        Err(NodeFailure::Task { state: info.state, messages: info.messages.join("; ") })
                    });
                }
                Ok(_) => errors = 0,
                Err(OobFailure::Device(OobError::Http { status: 404, .. })) => return Err(TaskGone),
                Err(err) if errors >= 4 => return Ok(Err(err.into())),
                Err(_) => errors += 1,
            }
            if started.elapsed() > self.settings.task_timeout {
                return Ok(Err(NodeFailure::TaskTimeout(self.settings.task_timeout.as_secs())));
            }
            tokio::time::sleep(self.settings.task_poll).await;
        }
    }

    /// Makes a drained Swarm member active again once it is back.
    async fn put_back(&self, hand: &NodeHand<'_>, m: &Membership, reset_at_ms: Option<i64>) -> Result<(), NodeFailure> {
        if !hand.is_drained(m).await? {
            return Ok(());
        }
        self.wait_back(reset_at_ms, &format!("it is left drained in Swarm {}", m.cluster)).await?;
        let op = ClusterOp { cluster: m.cluster.clone(), op: OpKind::Active, node: m.node.clone() };
        hand.op(&op).await?.map_err(NodeFailure::Drain)?;
        hand.event("campaign.node_undrained", json!({ "cluster": m.cluster, "node": m.node })).await?;
        Ok(())
    }

    /// Runs the undrain command once the node is back.
    async fn undrain(
        &self,
        hand: &NodeHand<'_>,
        commands: &DrainCommands,
        reset_at_ms: Option<i64>,
    ) -> Result<(), NodeFailure> {
        self.wait_back(reset_at_ms, "it is left drained").await?;
        hand.undrain_by_command(commands).await?.map_err(NodeFailure::Drain)
    }

    /// Waits until the machine is `joined` and its node agent reports
    /// (after `reset_at_ms`, with a few seconds' margin for the reset to
    /// take); bounded by the verify timeout. `left` says what stays undone.
    async fn wait_back(&self, reset_at_ms: Option<i64>, left: &str) -> Result<(), NodeFailure> {
        let store = &self.app.store;
        let started = Instant::now();
        let after = reset_at_ms.map_or(0, |at| at + 5_000);
        loop {
            let joined = store.machine(self.machine_id).await?.is_some_and(|m| m.state == MachineState::Joined);
            let seen = store
                .node_report(self.machine_id)
                .await?
                .and_then(|r| chrono::DateTime::parse_from_rfc3339(&r.last_seen).ok().map(|t| t.timestamp_millis()));
            if joined && seen.is_some_and(|t| t >= after) {
                return Ok(());
            }
            if started.elapsed() > self.settings.verify_timeout {
                return Err(NodeFailure::Drain(format!(
                    "its node agent did not report within {} s of the reset; {left}",
                    self.settings.verify_timeout.as_secs()
                )));
            }
            tokio::time::sleep(self.settings.task_poll.max(Duration::from_millis(100))).await;
        }
    }

    /// Reads the inventory until the target version shows (bounded); the
    /// BMC may be restarting meanwhile.
    async fn verify(&self) -> Result<(), NodeFailure> {
        let started = Instant::now();
        let mut shown = None;
        while started.elapsed() <= self.settings.verify_timeout {
            match self.version().await {
                Ok(v) if v.as_deref() == Some(self.action.version.as_str()) => return Ok(()),
                Ok(v) => shown = v,
                Err(OobFailure::Store(e)) => return Err(e.into()),
                Err(_) => {}
            }
            tokio::time::sleep(self.settings.task_poll.max(Duration::from_millis(100))).await;
        }
        Err(NodeFailure::NotVerified {
            component: self.action.component.clone(),
            shown,
            wanted: self.action.version.clone(),
            secs: self.settings.verify_timeout.as_secs(),
        })
    }
}
