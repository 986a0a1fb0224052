//! The campaign runner: one task that ticks (every second by default),
//! loads the campaigns that are not finished, gathers each one's facts
//! (the time, the state of every UPS feeding a remaining target, which
//! targets' BMCs answer), asks `engine::step` what to do, and applies it:
//! the campaign's new state and the nodes to start, each through the
//! store (guarded, with its event). Then it takes one step of each node in
//! progress: of its stored saga (`os_refresh::tick`, `firmware::tick`),
//! the nodes of a campaign side by side (at most a batch of them).
//!
//! Nothing about a node lives in the runner but the pace of its BMC polls:
//! dropping the runner's future stops everything, and the next runner (after
//! a restart, or on the appliance that takes over the leader lease) steps
//! the stored phases on. Only one runner may drive a database: with several
//! appliances, the leader runs it (see `serve`).

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use serde_json::json;
use tracing::{info, warn};

use crate::AppState;
use model::campaign::{Action, Campaign, CampaignState, NodeProgress};
use model::engine::{self, Facts, UpsFact};
use store::StoreError;

/// Timings; the defaults suit real BMCs, tests shorten them.
#[derive(Debug, Clone)]
pub struct RunnerSettings {
    pub tick: Duration,
    /// Between a firmware node's reads of its BMC (its task, its version).
    pub task_poll: Duration,
    /// How long a BMC may take to fetch and flash an image.
    pub task_timeout: Duration,
    /// How long after the update (and reset) the version must show.
    pub verify_timeout: Duration,
    /// How long a Swarm manager may take to show a node drained (or made
    /// active, or tidied). An OS refresh's write and rejoin are bounded by
    /// the machine's own deadlines.
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

/// When each firmware node last read its BMC, by (campaign, machine).
type Paced = HashMap<(String, String), Instant>;

/// Runs campaigns until the future is dropped.
pub async fn run(app: AppState, settings: RunnerSettings) {
    let mut paced = Paced::new();
    let mut tick = tokio::time::interval(settings.tick);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    info!("campaign runner started");
    loop {
        tick.tick().await;
        if let Err(err) = tick_once(&app, &settings, &mut paced).await {
            warn!(error = %err, "campaign runner: a tick failed; trying again");
        }
    }
}

async fn tick_once(app: &AppState, settings: &RunnerSettings, paced: &mut Paced) -> Result<(), StoreError> {
    let campaigns = app.store.campaigns_to_run().await?;
    paced.retain(|(c, _), _| campaigns.iter().any(|k| &k.id == c));
    for campaign in campaigns {
        let nodes = app.store.campaign_nodes(&campaign.id).await?;
        step_nodes(app, settings, &campaign, &nodes, paced).await;
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
        // Started here, stepped from the next tick on.
        for machine in &decision.start {
            app.store.start_campaign_node(&campaign.id, machine).await?;
        }
    }
    Ok(())
}

/// One step of each node in progress. A firmware node reads its BMC at
/// most every `task_poll`.
async fn step_nodes(
    app: &AppState,
    settings: &RunnerSettings,
    campaign: &Campaign,
    nodes: &[NodeProgress],
    paced: &mut Paced,
) {
    let now = Instant::now();
    let due: Vec<&NodeProgress> = nodes
        .iter()
        .filter(|n| n.state.in_flight())
        .filter(|n| match &campaign.action {
            Action::OsRefresh { .. } => true,
            Action::Firmware(_) => {
                let key = (campaign.id.clone(), n.machine_id.clone());
                let due = paced.get(&key).is_none_or(|last| now.duration_since(*last) >= settings.task_poll);
                if due {
                    paced.insert(key, now);
                }
                due
            }
        })
        .collect();
    let steps = due.into_iter().map(|node| async move {
        let stepped = match &campaign.action {
            Action::OsRefresh { image } => super::os_refresh::tick(app, settings, campaign, image, node).await,
            Action::Firmware(action) => super::firmware::tick(app, settings, campaign, action, node).await,
        };
        if let Err(err) = stepped {
            warn!(campaign = campaign.id, machine = node.machine_id, error = %err, "a node's step failed; trying again");
        }
    });
    futures_util::future::join_all(steps).await;
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
