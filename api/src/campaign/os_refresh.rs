//! The OS-refresh action on one node, one step per runner tick. The story
//! (drain, reinstall the target image with the machine's own deploy
//! settings through a BMC reboot into the installer, wait until it is
//! written, verified and back, roll back to the previous image on
//! failure, tidy the Swarm, undrain) and every decision in it are
//! `model::refresh`'s saga. Here, each tick: read the node's stored saga,
//! gather what it looks at (the machine, its deployment, its node agent's
//! last report, its Swarm as a manager reported it, its BMC, the images),
//! take the step, carry out its effects, store the new phase (and what it
//! wants of an agent), or record how the node ended.
//!
//! A restarted appliance reads the phase back and takes the next step
//! from it: nothing is rebuilt from the event log. The effects that are
//! not idempotent are guarded by the saga: a deployment already made is
//! seen and not made again; a BMC reboot whose phase was not stored is
//! asked for again (a second reset of the ramdisk only delays it).
//!
//! Every wait is bounded (`model::refresh::Plan`): a Swarm change by
//! `RunnerSettings::drain_timeout`, a drain command by its own time plus
//! two node-agent heartbeats, the write and the return by 95% of the
//! machine's own deadlines (`deploy_timeout`, `join_timeout`), the return
//! of the new image also by `gates.back_within_seconds`; so the action
//! decides before the reaper would fail the machine.

use serde_json::{json, Value};
use tracing::{info, warn};

use super::runner::RunnerSettings;
use crate::join::JoinSpec;
use crate::AppState;
use model::campaign::{Campaign, NodeProgress};
use model::lifecycle::Trigger;
use model::refresh::{Effect, Facts, Next, Outcome, Plan, Saga};
use model::refresh_plan::DeployView;
use store::{ImageState, StoreError};

type Result<T> = std::result::Result<T, StoreError>;

/// 95% of a deadline, so the action decides before the reaper.
fn bound(ms: i64) -> i64 {
    (ms - ms / 20).max(1000)
}

/// One step of `node`'s refresh to `image`.
pub async fn tick(
    app: &AppState,
    settings: &RunnerSettings,
    campaign: &Campaign,
    image: &str,
    node: &NodeProgress,
) -> Result<()> {
    let store = &app.store;
    let machine_id = node.machine_id.as_str();
    let stored = store.campaign_saga::<Saga>(&campaign.id, machine_id).await?;

    // What the saga looks at.
    let machine = store.machine(machine_id).await?;
    let deployment = store.deployment(machine_id).await?;
    let report = store.node_report(machine_id).await?;
    let join = deployment.as_ref().and_then(|d| d.spec.cluster.as_ref());
    let managed = join.and_then(JoinSpec::managed_cluster);
    let swarm = stored.as_ref().and_then(|s| s.swarm.as_ref()).map(|e| e.cluster.as_str()).or(managed);
    let members = match swarm {
        Some(name) => store.cluster(name).await?.map(|c| c.members).unwrap_or_default(),
        None => vec![],
    };
    let mut available = vec![];
    let previous = stored.as_ref().and_then(|s| s.previous.clone()).or_else(|| node.old_version.clone());
    for name in std::iter::once(image).chain(previous.as_deref()) {
        if store.image(name).await?.is_some_and(|i| i.state == ImageState::Available) {
            available.push(name);
        }
    }
    let status = report.as_ref().map(|r| &r.status);
    let facts = Facts {
        now_ms: store.now_ms(),
        machine: machine.as_ref().map(|m| (m.state, m.failure.as_ref().map(|f| f.reason.as_str()))),
        deployment: deployment.as_ref().map(|d| DeployView {
            image: &d.image,
            phase: d.phase,
            error: d.error.as_deref(),
        }),
        clustered: join.is_some(),
        managed_cluster: managed,
        foreign_cluster: super::foreign_cluster(join),
        node_image: status.and_then(|s| s.image.as_deref()),
        node_id: status.and_then(|s| s.cluster.as_ref()).map(|c| c.node_id.as_str()),
        hook: status.and_then(|s| s.hook.as_ref()),
        members: &members,
        has_bmc: store.bmc_for_machine(machine_id).await?.is_some(),
        available: &available,
    };
    let plan = Plan {
        waits: super::waits(settings, campaign, machine_id),
        write_ms: bound(app.deploy_timeout_ms),
        come_back_ms: bound(app.join_timeout_ms),
        back_within_ms: campaign.gates.back_within_seconds.map(|s| i64::try_from(s).unwrap_or(i64::MAX / 1000) * 1000),
    };

    let saga = match &stored {
        Some(saga) => saga.clone(),
        None if node.old_version.is_some() => {
            info!(campaign = campaign.id, machine = machine_id, "adopting a refresh started before sagas were stored");
            Saga::adopt(image, node.old_version.as_deref(), &facts)
        }
        None => Saga::new(image, facts.now_ms),
    };
    let mut step = saga.step(&plan, &facts);
    let node = Node { app, campaign_id: &campaign.id, machine_id, target: image };
    if let Err(why) = node.carry_out(&step.effects).await? {
        // The (re)install could not start: as if it failed.
        step = saga.install_failed(&why, facts.now_ms);
        if let Err(why) = node.carry_out(&step.effects).await? {
            warn!(machine = machine_id, reason = why, "an effect after a failed install");
        }
    }
    match step.next {
        Next::Go(next) => {
            let wanted = next.wanted();
            super::save_if_moved(store, (&campaign.id, machine_id), stored.as_ref(), &next, wanted).await
        }
        Next::Finish(outcome) => node.finish(outcome).await,
    }
}

struct Node<'a> {
    app: &'a AppState,
    campaign_id: &'a str,
    machine_id: &'a str,
    target: &'a str,
}

impl Node<'_> {
    /// Carries out a step's effects in order; `Err` says why a (re)install
    /// could not be started (the effects after it are not carried out).
    async fn carry_out(&self, effects: &[Effect]) -> Result<std::result::Result<(), String>> {
        let store = &self.app.store;
        let (campaign, machine) = (self.campaign_id, self.machine_id);
        for effect in effects {
            match effect {
                Effect::NotePrevious(image) => store.note_campaign_node(campaign, machine, Some(image), false).await?,
                Effect::NoteVerifying => store.note_campaign_node(campaign, machine, None, true).await?,
                Effect::Event(kind, detail) => self.event(kind, detail.clone()).await?,
                Effect::Deploy { image } => {
                    if let Err(why) = self.deploy(image).await? {
                        return Ok(Err(why));
                    }
                }
                Effect::NetworkBoot { image } => match self.app.oob.network_boot(machine, &self.cause(image)).await {
                    Ok(true) => info!(machine, image, "rebooted into the installer"),
                    Ok(false) => {
                        return Ok(Err("the machine's BMC is gone: it cannot be rebooted into the installer".into()))
                    }
                    Err(err) => return Ok(Err(format!("rebooting into the installer through the BMC failed: {err}"))),
                },
                Effect::RollbackFailed(reason) => {
                    store.fire_because(machine, Trigger::RollbackFailed, reason, None).await?;
                }
            }
        }
        Ok(Ok(()))
    }

    fn cause(&self, image: &str) -> String {
        if image == self.target {
            format!("campaign {}: OS refresh to {image}", self.campaign_id)
        } else {
            format!("campaign {}: rollback to {image}", self.campaign_id)
        }
    }

    /// Replaces the deployment with `image` and the same settings (the
    /// machine moves to `refreshing`).
    async fn deploy(&self, image: &str) -> Result<std::result::Result<(), String>> {
        let app = self.app;
        let Some(img) = app.store.image(image).await?.filter(|i| i.state == ImageState::Available) else {
            return Ok(Err(format!("image {image} is not available")));
        };
        let Some(current) = app.store.deployment(self.machine_id).await? else {
            return Ok(Err("the machine's deployment was removed".into()));
        };
        let spec = current.spec.with_image(image);
        let deadline = app.store.now_ms() + app.deploy_timeout_ms;
        match app.store.start_refresh(self.machine_id, &img, &spec, deadline, &self.cause(image)).await {
            Ok(()) => {}
            Err(StoreError::Conflict(why)) => return Ok(Err(why)),
            Err(err) => return Err(err),
        }
        app.work_posted.posted(self.machine_id);
        Ok(Ok(()))
    }

    async fn event(&self, kind: &str, mut detail: Value) -> Result<()> {
        if let Some(obj) = detail.as_object_mut() {
            obj.insert("campaign".into(), json!(self.campaign_id));
        }
        self.app.store.record_event(Some(self.machine_id), kind, detail).await
    }

    /// Records how the node ended.
    async fn finish(&self, outcome: Outcome) -> Result<()> {
        let (store, campaign, machine, image) = (&self.app.store, self.campaign_id, self.machine_id, self.target);
        match outcome {
            Outcome::Done(note) => {
                info!(campaign, machine, image, note, "OS refresh node done");
                store.finish_campaign_node(campaign, machine, Ok(image), json!({ "note": note })).await
            }
            Outcome::RolledBack(why) => {
                warn!(campaign, machine, reason = why, "OS refresh node rolled back");
                store.roll_back_campaign_node(campaign, machine, &why, json!({ "image": image })).await
            }
            Outcome::Failed(why) => {
                warn!(campaign, machine, reason = why, "OS refresh node failed");
                store.finish_campaign_node(campaign, machine, Err(&why), json!({ "image": image })).await
            }
        }
    }
}
