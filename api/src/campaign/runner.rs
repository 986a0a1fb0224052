//! The campaign runner: one task that ticks (every second by default),
//! loads the campaigns that are not finished, gathers each one's facts
//! (the time, the state of every UPS feeding a remaining target, which
//! targets' BMCs answer), asks `engine::step` what to do, and applies it:
//! the campaign's new state and the nodes to start, each through the
//! store (guarded, with its event), each node's action in its own task.
//!
//! A firmware node runs in a task of its own; a node the store shows in
//! progress with no task here (the appliance restarted, or a task died) is
//! resumed. An OS refresh node has no task: each tick takes one step of
//! its stored saga (`os_refresh::tick`), so a restart simply goes on. Dropping the runner's future
//! aborts its node tasks; every step is in the store, so the next runner
//! goes on. Only one runner may drive a database: with several
//! appliances, the leader runs it (see `serve`).

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use serde_json::json;
use tokio::task::{AbortHandle, JoinSet};
use tracing::{info, warn};

use crate::AppState;
use model::campaign::{Action, Campaign, CampaignState, NodeProgress};
use model::engine::{self, Facts, UpsFact};
use store::StoreError;

/// Timings; the defaults suit real BMCs, tests shorten them.
#[derive(Debug, Clone)]
pub struct RunnerSettings {
    pub tick: Duration,
    /// Between polls of a BMC task and reads of the version.
    pub task_poll: Duration,
    /// How long a BMC may take to fetch and flash an image.
    pub task_timeout: Duration,
    /// How long after the update (and reset) the version must show.
    pub verify_timeout: Duration,
    /// OS refresh: how long a Swarm manager may take to show a node
    /// drained (or tidied). The write and the rejoin are bounded by the
    /// machine's own deadlines.
    pub drain_timeout: Duration,
}

impl Default for RunnerSettings {
    fn default() -> Self {
        RunnerSettings {
            tick: Duration::from_secs(1),
            task_poll: Duration::from_secs(2),
            task_timeout: Duration::from_secs(30 * 60),
            verify_timeout: Duration::from_secs(10 * 60),
            drain_timeout: Duration::from_secs(10 * 60),
        }
    }
}

/// Node tasks by (campaign, machine).
type Workers = HashMap<(String, String), AbortHandle>;

/// Runs campaigns until the future is dropped.
pub async fn run(app: AppState, settings: RunnerSettings) {
    let mut tasks = JoinSet::new();
    let mut workers = Workers::new();
    let mut tick = tokio::time::interval(settings.tick);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    info!("campaign runner started");
    loop {
        tick.tick().await;
        while tasks.try_join_next().is_some() {}
        workers.retain(|_, h| !h.is_finished());
        if let Err(err) = tick_once(&app, &settings, &mut tasks, &mut workers).await {
            warn!(error = %err, "campaign runner: a tick failed; trying again");
        }
    }
}

async fn tick_once(
    app: &AppState,
    settings: &RunnerSettings,
    tasks: &mut JoinSet<()>,
    workers: &mut Workers,
) -> Result<(), StoreError> {
    for campaign in app.store.campaigns_to_run().await? {
        let nodes = app.store.campaign_nodes(&campaign.id).await?;
        let in_flight = nodes.iter().filter(|n| n.state.in_flight());
        match &campaign.action {
            // One step of each refreshing node's saga (at most a batch of them).
            Action::OsRefresh { image } => {
                let campaign = &campaign;
                let steps = in_flight.map(|node| async move {
                    if let Err(err) = super::os_refresh::tick(app, settings, campaign, image, node).await {
                        warn!(campaign = campaign.id, machine = node.machine_id, error = %err, "an OS refresh step failed; trying again");
                    }
                });
                futures_util::future::join_all(steps).await;
            }
            Action::Firmware(_) => {
                for node in in_flight {
                    if !workers.contains_key(&(campaign.id.clone(), node.machine_id.clone())) {
                        info!(campaign = campaign.id, machine = node.machine_id, "resuming a node in progress");
                        spawn_node(app, settings, &campaign, node.clone(), true, tasks, workers);
                    }
                }
            }
        }
        // Paused and finished campaigns start nothing; only their nodes
        // in progress (above) go on.
        if campaign.state.is_final() || campaign.state == CampaignState::Paused {
            continue;
        }
        let facts = gather(app, &campaign, &nodes).await?;
        let decision = engine::step(&campaign, &nodes, &facts);
        if let Some(t) = &decision.transition {
            let detail = json!({ "ups": t.ups });
            let moved = app
                .store
                .transition_campaign(&campaign.id, &[campaign.state], t.to, Some(&t.reason), t.event, detail, false)
                .await?;
            if moved.is_none() {
                // An operator got there first: decide again next tick.
                continue;
            }
            info!(campaign = campaign.id, to = t.to.as_str(), reason = t.reason, "campaign state");
        }
        for machine in &decision.start {
            if app.store.start_campaign_node(&campaign.id, machine).await? {
                let node = nodes.iter().find(|n| &n.machine_id == machine).cloned();
                if let Some(node) = node {
                    spawn_node(app, settings, &campaign, node, false, tasks, workers);
                }
            }
        }
    }
    Ok(())
}

fn spawn_node(
    app: &AppState,
    settings: &RunnerSettings,
    campaign: &Campaign,
    node: NodeProgress,
    resume: bool,
    tasks: &mut JoinSet<()>,
    workers: &mut Workers,
) {
    let key = (campaign.id.clone(), node.machine_id.clone());
    let (app, settings, id) = (app.clone(), settings.clone(), campaign.id.clone());
    let Action::Firmware(action) = &campaign.action else {
        // An OS refresh node has no task: the runner steps it every tick.
        return;
    };
    let (action, drain) = (action.clone(), campaign.gates.drain.clone());
    let handle =
        tasks.spawn(async move { super::firmware::run_node(app, settings, id, node, action, drain, resume).await });
    workers.insert(key, handle);
}

/// The facts the engine needs for one campaign.
async fn gather(app: &AppState, campaign: &Campaign, nodes: &[NodeProgress]) -> Result<Facts, StoreError> {
    let remaining: BTreeSet<&str> =
        nodes.iter().filter(|n| !n.state.finished()).map(|n| n.machine_id.as_str()).collect();
    let mut ups = vec![];
    for u in app.store.ups_list().await? {
        let fed = app.store.machines_fed_by(&u.feeds).await?;
        if fed.iter().any(|m| remaining.contains(m.as_str())) {
            ups.push(UpsFact {
                status: u.state.as_ref().map(|s| s.status).unwrap_or_default(),
                charge_percent: u.state.as_ref().and_then(|s| s.charge_percent),
                error: u.last_error.clone(),
                name: u.name,
            });
        }
    }
    // Only the next few pending nodes can start; ask about those.
    let in_flight = nodes.iter().filter(|n| n.state.in_flight()).count();
    let room = (campaign.rollout.batch_size as usize).saturating_sub(in_flight);
    let mut bmc_ok = BTreeSet::new();
    if room > 0 {
        let mut pending: Vec<&NodeProgress> =
            nodes.iter().filter(|n| !n.state.finished() && !n.state.in_flight()).collect();
        pending.sort_by_key(|n| n.position);
        for n in pending.into_iter().take(room.saturating_mul(4).max(16)) {
            if app.store.bmc_for_machine(&n.machine_id).await?.is_some_and(|b| b.last_error.is_none()) {
                bmc_ok.insert(n.machine_id.clone());
            }
        }
    }
    Ok(Facts { now_ms: app.store.now_ms(), ups, bmc_ok })
}
