//! The OS-refresh action on one node: drain it (from its Slipway-formed
//! Swarm through a manager's node agent, or from another cluster with the
//! campaign's drain commands through its own agent), reinstall the target
//! image with the machine's own deploy settings by rebooting it into the
//! installer through its BMC, wait until it is written, verified and back
//! (joined, or its new node agent reporting), tidy its Swarm entry or run
//! the undrain command; on failure reinstall the previous image the same
//! way and record `rolled_back`.
//!
//! "Back" means the new OS's node agent reports the target image (written
//! with its credential at deploy, so an OS that came up from the old disk
//! does not count) and, with a cluster, that it is joined.
//!
//! A Swarm manager is refreshed only while the other managers keep a Raft
//! quorum without it; its old entry is demoted and removed once it is back.
//!
//! Every wait is bounded: the drain by `RunnerSettings::drain_timeout` (a
//! drain command by its own time), the write and the rejoin by 95% of the
//! machine's own deadlines (`deploy_timeout`, `join_timeout`), the rejoin
//! also by the campaign's `gates.back_within_seconds` (the new image's
//! health check; a rollback to the known-good image gets the join
//! deadline), so the action decides before the reaper would fail the
//! machine. The decisions are `refresh_plan`'s.
//!
//! After an appliance restart a node in progress continues: if its
//! reinstall had not started it starts again from the drain (a drain is
//! idempotent); if it had, the wait for it goes on, with the rollback to
//! the recorded previous image if it fails (a deployment no installer
//! took yet gets its BMC reboot again); a rollback that had started
//! (its `campaign.node_rolling_back` event is there) is finished; the old Swarm entry it left
//! (its id was in the lost task's memory) is found by host name and
//! removed.

use std::time::{Duration, Instant};

use serde_json::json;
use tracing::{info, warn};

use super::hook;
use super::runner::RunnerSettings;
use super::swarm::NodeHand;
use crate::join::JoinSpec;
use crate::AppState;
use model::campaign::{DrainCommands, NodeProgress};
use model::deploy::DeploymentSpec;
use model::lifecycle::{MachineState, Trigger};
use model::refresh_plan::{self, ClusterOp, DeployView, OpKind, Progress};
use store::{now_ms, DeployPhase, Deployment, ImageState, StoreError};

/// How a node ended, or a store failure (the node stays in progress and
/// the runner resumes it).
enum Outcome {
    Done(&'static str),
    RolledBack(String),
    Failed(String),
}

type Step<T> = Result<T, StoreError>;

struct Node<'a> {
    app: &'a AppState,
    settings: &'a RunnerSettings,
    campaign_id: &'a str,
    machine_id: &'a str,
    back_within: Option<Duration>,
    drain: Option<DrainCommands>,
}

/// What a node is refreshed to, and the campaign's gates.
pub struct Target {
    pub image: String,
    /// From the image written to the node agent reporting it (and joined).
    pub back_within: Option<Duration>,
    /// For a node of a cluster Slipway did not form.
    pub drain: Option<DrainCommands>,
}

/// Runs the refresh on one node and records the outcome.
pub async fn run_node(
    app: AppState,
    settings: RunnerSettings,
    campaign_id: String,
    progress: NodeProgress,
    target: Target,
    resume: bool,
) {
    let Target { image, back_within, drain } = target;
    let node = Node {
        app: &app,
        settings: &settings,
        campaign_id: &campaign_id,
        machine_id: &progress.machine_id,
        back_within,
        drain,
    };
    let machine = progress.machine_id.as_str();
    let store = &app.store;
    // The previous image, recorded before the reinstall, for a resumed node.
    let recorded_previous = if resume { progress.old_version.as_deref() } else { None };
    let recorded = match node.apply(&image, recorded_previous).await {
        Ok(Outcome::Done(note)) => {
            info!(campaign = campaign_id, machine, image, note, "OS refresh node done");
            store.finish_campaign_node(&campaign_id, machine, Ok(&image), json!({ "note": note })).await
        }
        Ok(Outcome::RolledBack(why)) => {
            warn!(campaign = campaign_id, machine, reason = why, "OS refresh node rolled back");
            store.roll_back_campaign_node(&campaign_id, machine, &why, json!({ "image": image })).await
        }
        Ok(Outcome::Failed(why)) => {
            warn!(campaign = campaign_id, machine, reason = why, "OS refresh node failed");
            store.finish_campaign_node(&campaign_id, machine, Err(&why), json!({ "image": image })).await
        }
        Err(err) => Err(err),
    };
    if let Err(err) = recorded {
        warn!(campaign = campaign_id, machine, error = %err, "recording a node's progress failed; it is resumed");
    }
}

/// 95% of a deadline, so the action decides before the reaper.
fn bound(ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(ms - ms / 20).unwrap_or(0).max(1000))
}

impl Node<'_> {
    /// `recorded_previous`: the node is resumed after an appliance
    /// restart, and this was its image before the refresh (if recorded).
    async fn apply(&self, target: &str, recorded_previous: Option<&str>) -> Step<Outcome> {
        let store = &self.app.store;
        let Some(machine) = store.machine(self.machine_id).await? else {
            return Ok(Outcome::Failed("the machine no longer exists".into()));
        };
        let Some(previous) = store.deployment(self.machine_id).await? else {
            return Ok(Outcome::Failed(format!("the machine is {} with no deployment to refresh", machine.state)));
        };
        let join = previous.spec.cluster.clone();
        let cluster = join.as_ref().and_then(JoinSpec::managed_cluster);
        let drain = self.drain.as_ref().filter(|_| hook::foreign_cluster(join.as_ref()));
        if let Some(old) = recorded_previous {
            if let Some(outcome) = self.resume(target, old, machine.state, &previous, join.is_some(), cluster).await? {
                return self.undrain(drain, outcome).await;
            }
            // Its reinstall had not started: from the drain on, as new.
        }
        if !matches!(machine.state, MachineState::Deployed | MachineState::Joined) {
            return Ok(Outcome::Failed(format!(
                "the machine is {}: only a deployed or joined machine is refreshed",
                machine.state
            )));
        }
        if previous.image == target {
            return Ok(Outcome::Done("already on this image"));
        }
        if store.bmc_for_machine(self.machine_id).await?.is_none() {
            return Ok(Outcome::Failed(
                "an OS refresh needs a BMC (to reboot the machine into the installer); none is enrolled".into(),
            ));
        }
        match store.image(target).await? {
            Some(i) if i.state == ImageState::Available => {}
            _ => return Ok(Outcome::Failed(format!("image {target} is not available"))),
        }
        store.note_campaign_node(self.campaign_id, self.machine_id, None, Some(&previous.image), false).await?;

        // (a) Drain: from a Slipway-formed Swarm through a manager, from
        // another cluster by the campaign's command (when joined).
        let old_node = match (cluster, self.hand().membership().await?) {
            (Some(_), Some(m)) => {
                if let Err(why) = self.hand().take_out(&m).await? {
                    return Ok(Outcome::Failed(why));
                }
                Some((m.cluster, m.node))
            }
            _ => None,
        };
        let drain = match drain {
            Some(commands) if machine.state == MachineState::Joined => {
                if let Err(why) = self.hand().drain_by_command(commands).await? {
                    return Ok(Outcome::Failed(format!("not drained: {why}")));
                }
                Some(commands)
            }
            _ => None,
        };

        // (b), (c) Reinstall with the machine's own settings.
        let cause = format!("campaign {}: OS refresh to {target}", self.campaign_id);
        let spec = previous.spec.with_image(target);
        let refreshed = self.install(target, &spec, &cause, join.is_some(), self.back_within).await?;
        let (outcome, new_node) = match refreshed {
            Ok(new_node) => (Outcome::Done("reinstalled, verified and back"), new_node),
            // (e) Roll back to the previous image, the same way.
            Err(why) => self.roll_back(&why, &previous.image, &previous.spec, join.is_some()).await?,
        };
        // (d) Its old Swarm entry: removed (it rejoined as a new node).
        if let (Some((name, old)), false) = (old_node, matches!(outcome, Outcome::Failed(_))) {
            let op = refresh_plan::after_refresh(&name, &old, new_node.as_deref());
            if let Err(why) = self.hand().op(&op).await? {
                warn!(machine = self.machine_id, reason = why, "tidying the Swarm after a refresh");
            }
        }
        self.undrain(drain, outcome).await
    }

    /// A node resumed after an appliance restart, `old` its image before
    /// the refresh. `None`: its reinstall had not started.
    async fn resume(
        &self,
        target: &str,
        old: &str,
        state: MachineState,
        previous: &Deployment,
        clustered: bool,
        cluster: Option<&str>,
    ) -> Step<Option<Outcome>> {
        if old != target && self.was_rolling_back().await? {
            // The rollback had started: finish it.
            let (outcome, _) = if previous.image == target {
                let why = "the refresh failed before an appliance restart";
                self.roll_back(why, old, &previous.spec.with_image(old), clustered).await?
            } else {
                self.reboot_if_untaken(state, previous.phase, old).await;
                let back = self.wait_back(old, clustered, None).await?;
                self.rollback_ended("the refresh failed", old, " across an appliance restart", back).await?
            };
            return Ok(Some(outcome));
        }
        if previous.image != target {
            return Ok(None);
        }
        // The reinstall had started: wait for it, roll back if it fails.
        self.reboot_if_untaken(state, previous.phase, target).await;
        let (outcome, new_node) = match self.wait_back(target, clustered, self.back_within).await? {
            Ok(new_node) => (Outcome::Done("found in place after a restart"), new_node),
            Err(why) if old != target => self.roll_back(&why, old, &previous.spec.with_image(old), clustered).await?,
            Err(why) => (Outcome::Failed(format!("interrupted by an appliance restart: {why}")), None),
        };
        if let (Some(name), Some(new)) = (cluster, &new_node) {
            self.remove_stale(name, new).await?;
        }
        Ok(Some(outcome))
    }

    /// Removes the Swarm entries the node's reinstall left behind when
    /// their ids were lost with a restart (found by host name).
    async fn remove_stale(&self, cluster: &str, new_node: &str) -> Step<()> {
        let members = self.app.store.cluster(cluster).await?.map(|c| c.members).unwrap_or_default();
        for old in refresh_plan::stale_entries(&members, new_node) {
            let op = ClusterOp { cluster: cluster.into(), op: OpKind::Remove, node: old };
            if let Err(why) = self.hand().op(&op).await? {
                warn!(machine = self.machine_id, reason = why, "removing a stale Swarm entry after a restart");
            }
        }
        Ok(())
    }

    /// After a restart: a (re)install that no installer has taken yet may
    /// never have had its BMC reboot (the restart came between the two), so
    /// it is asked for again; a second reset of a ramdisk only delays it.
    async fn reboot_if_untaken(&self, state: MachineState, phase: DeployPhase, image: &str) {
        if state != MachineState::Refreshing || phase != DeployPhase::Requested {
            return;
        }
        let cause = format!("campaign {}: {image} again after an appliance restart", self.campaign_id);
        match self.app.oob.network_boot(self.machine_id, &cause).await {
            Ok(_) => info!(machine = self.machine_id, image, "rebooted into the installer again after a restart"),
            Err(err) => warn!(machine = self.machine_id, error = %err, "rebooting into the installer after a restart"),
        }
    }

    /// Whether this campaign had started rolling the node back (before an
    /// appliance restart).
    async fn was_rolling_back(&self) -> Step<bool> {
        let event = self.app.store.latest_event(self.machine_id, "campaign.node_rolling_back").await?;
        Ok(event.is_some_and(|e| e.detail["campaign"] == self.campaign_id))
    }

    /// Reinstalls the previous image after `why`.
    async fn roll_back(
        &self,
        why: &str,
        old: &str,
        spec: &DeploymentSpec,
        clustered: bool,
    ) -> Step<(Outcome, Option<String>)> {
        self.hand().event("campaign.node_rolling_back", json!({ "reason": why, "image": old })).await?;
        let cause = format!("campaign {}: rollback to {old}", self.campaign_id);
        let back = self.install(old, spec, &cause, clustered, None).await?;
        self.rollback_ended(why, old, "", back).await
    }

    /// The node's outcome once its rollback to `old` ended (`note` follows
    /// "rolled back to OLD"); a failed rollback fails the machine too.
    async fn rollback_ended(
        &self,
        why: &str,
        old: &str,
        note: &str,
        back: Result<Option<String>, String>,
    ) -> Step<(Outcome, Option<String>)> {
        Ok(match back {
            Ok(new_node) => (Outcome::RolledBack(format!("{why}; rolled back to {old}{note}")), new_node),
            Err(why2) => {
                let reason = format!("{why}; the rollback to {old} failed too: {why2}");
                self.app.store.fire_because(self.machine_id, Trigger::RollbackFailed, &reason, None).await?;
                (Outcome::Failed(reason), None)
            }
        })
    }

    /// Runs the undrain command on a node that is back (on either image);
    /// its failure fails the node, which may be left drained.
    async fn undrain(&self, drain: Option<&DrainCommands>, outcome: Outcome) -> Step<Outcome> {
        let (Some(commands), Outcome::Done(_) | Outcome::RolledBack(_)) = (drain, &outcome) else {
            return Ok(outcome);
        };
        Ok(match (self.hand().undrain_by_command(commands).await?, outcome) {
            (Ok(()), outcome) => outcome,
            (Err(why), Outcome::RolledBack(before)) => Outcome::Failed(format!("{before}; but {why}")),
            (Err(why), _) => Outcome::Failed(format!("reinstalled and back, but {why}")),
        })
    }

    fn hand(&self) -> NodeHand<'_> {
        NodeHand { app: self.app, settings: self.settings, campaign_id: self.campaign_id, machine_id: self.machine_id }
    }

    /// Starts a deployment of `image` (machine to `refreshing`), reboots
    /// the machine into the installer through its BMC, and waits until it
    /// is back (within `back_within` of the write, when given). Returns
    /// its new Swarm node id, if it reports one.
    async fn install(
        &self,
        image: &str,
        spec: &DeploymentSpec,
        cause: &str,
        clustered: bool,
        back_within: Option<Duration>,
    ) -> Step<Result<Option<String>, String>> {
        let app = self.app;
        let Some(img) = app.store.image(image).await?.filter(|i| i.state == ImageState::Available) else {
            return Ok(Err(format!("image {image} is not available")));
        };
        match app.store.start_refresh(self.machine_id, &img, spec, now_ms() + app.deploy_timeout_ms, cause).await {
            Ok(()) => {}
            Err(StoreError::Conflict(why)) => return Ok(Err(why)),
            Err(err) => return Err(err),
        }
        app.work_posted.notify_waiters();
        match app.oob.network_boot(self.machine_id, cause).await {
            Ok(true) => {}
            Ok(false) => return Ok(Err("the machine's BMC is gone: it cannot be rebooted into the installer".into())),
            Err(err) => return Ok(Err(format!("rebooting into the installer through the BMC failed: {err}"))),
        }
        info!(machine = self.machine_id, image, "rebooted into the installer");
        self.wait_back(image, clustered, back_within).await
    }

    /// Waits (bounded) until `image` is written and the machine is back.
    /// `back_within` bounds the wait once the image is written (besides
    /// the join deadline).
    async fn wait_back(
        &self,
        image: &str,
        clustered: bool,
        back_within: Option<Duration>,
    ) -> Step<Result<Option<String>, String>> {
        let store = &self.app.store;
        let mut started = Instant::now();
        let mut limit = bound(self.app.deploy_timeout_ms);
        let mut written = false;
        loop {
            let machine = store.machine(self.machine_id).await?;
            let deployment = store.deployment(self.machine_id).await?;
            let report = store.node_report(self.machine_id).await?;
            let Some(machine) = machine else { return Ok(Err("the machine no longer exists".into())) };
            let view =
                deployment.as_ref().map(|d| DeployView { image: &d.image, phase: d.phase, error: d.error.as_deref() });
            let node_image = report.as_ref().and_then(|r| r.status.image.clone());
            let at = refresh_plan::progress(
                machine.state,
                machine.failure.as_ref().map(|f| f.reason.as_str()),
                view,
                image,
                clustered,
                node_image.as_deref(),
            );
            match at {
                Progress::Back => return Ok(Ok(report.and_then(|r| r.status.cluster).map(|c| c.node_id))),
                Progress::Failed(why) => return Ok(Err(why)),
                Progress::Written if !written => {
                    written = true;
                    store.note_campaign_node(self.campaign_id, self.machine_id, None, None, true).await?;
                    started = Instant::now();
                    limit = bound(self.app.join_timeout_ms);
                    limit = back_within.map_or(limit, |b| b.min(limit));
                }
                Progress::Written | Progress::Installing => {}
            }
            if started.elapsed() > limit {
                let what = if written { "come back" } else { "be written and verified" };
                let seen = match (written, node_image) {
                    (false, _) => String::new(),
                    (true, None) => ": no node agent reported".into(),
                    (true, Some(other)) => format!(": its node agent reports image {other}"),
                };
                return Ok(Err(format!("{image} did not {what} within {} s{seen}", limit.as_secs())));
            }
            tokio::time::sleep(self.settings.task_poll.max(Duration::from_millis(50))).await;
        }
    }
}
