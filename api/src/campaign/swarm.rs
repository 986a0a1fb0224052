//! A firmware campaign node's dealings with its Slipway-formed Swarm: find its membership, check that the
//! managers keep a quorum without it, drain it and make it active again.
//! Swarm changes are asked of a manager's node agent (the wanted operation
//! is stored as the node's `task`) and count as done only when the
//! manager's own member list shows them. (The OS refresh's are steps of
//! its saga, `model::refresh`.)

use std::future::Future;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::runner::RunnerSettings;
use crate::join::JoinSpec;
use crate::AppState;
use model::lifecycle::MachineState;
use model::refresh::Wanted;
use model::refresh_plan::{self, ClusterOp, OpKind};
use store::StoreError;

type Step<T> = Result<T, StoreError>;

/// One campaign node, for its dealings with its cluster: the Swarm ones
/// here, the drain commands in `hook`.
pub struct NodeHand<'a> {
    pub app: &'a AppState,
    pub settings: &'a RunnerSettings,
    pub campaign_id: &'a str,
    pub machine_id: &'a str,
}

/// A joined machine's place in its Slipway-formed Swarm.
pub struct Membership {
    pub cluster: String,
    pub node: String,
}

impl NodeHand<'_> {
    /// Where the machine is in its Slipway-formed Swarm, when it is joined
    /// to one and its node agent has said under which node id.
    pub async fn membership(&self) -> Step<Option<Membership>> {
        let store = &self.app.store;
        let joined = store.machine(self.machine_id).await?.is_some_and(|m| m.state == MachineState::Joined);
        let spec = self.join_spec().await?;
        let Some(cluster) = spec.as_ref().and_then(JoinSpec::managed_cluster).filter(|_| joined) else {
            return Ok(None);
        };
        let report = store.node_report(self.machine_id).await?;
        let node = report.and_then(|r| r.status.cluster).map(|c| c.node_id).filter(|id| !id.is_empty());
        Ok(node.map(|node| Membership { cluster: cluster.to_string(), node }))
    }

    /// The join spec of the machine's deployment, if it has one.
    pub async fn join_spec(&self) -> Step<Option<JoinSpec>> {
        Ok(self.app.store.deployment(self.machine_id).await?.and_then(|d| d.spec.cluster))
    }

    /// Drains the node after checking that the managers keep a quorum
    /// without it; `Err` says why it was not (it is left as it was).
    pub async fn take_out(&self, m: &Membership) -> Step<Result<(), String>> {
        let members = self.app.store.cluster(&m.cluster).await?.map(|c| c.members).unwrap_or_default();
        if let Err(why) = refresh_plan::quorum_without(&members, &m.node) {
            return Ok(Err(format!("not taken out of Swarm {}: {why}", m.cluster)));
        }
        self.drain(&m.cluster, &m.node).await
    }

    /// Whether the manager last showed the node drained.
    pub async fn is_drained(&self, m: &Membership) -> Step<bool> {
        let members = self.app.store.cluster(&m.cluster).await?.map(|c| c.members).unwrap_or_default();
        Ok(ClusterOp { cluster: m.cluster.clone(), op: OpKind::Drain, node: m.node.clone() }.done(&members))
    }

    pub async fn event(&self, kind: &str, mut detail: Value) -> Step<()> {
        if let Some(obj) = detail.as_object_mut() {
            obj.insert("campaign".into(), json!(self.campaign_id));
        }
        self.app.store.record_event(Some(self.machine_id), kind, detail).await
    }

    /// Asks a manager to drain the node and waits until it shows drained;
    /// on timeout asks for it active again.
    pub async fn drain(&self, cluster: &str, node: &str) -> Step<Result<(), String>> {
        let op = ClusterOp { cluster: cluster.into(), op: OpKind::Drain, node: node.into() };
        match self.op(&op).await? {
            Ok(()) => {
                self.event("campaign.node_drained", json!({ "cluster": cluster, "node": node })).await?;
                Ok(Ok(()))
            }
            Err(why) => {
                let undo = ClusterOp { op: OpKind::Active, ..op };
                let _ = self.op(&undo).await?;
                Ok(Err(why))
            }
        }
    }

    /// Stores `op` as wanted (a manager's node agent is told at its next
    /// report) and waits, bounded, until the manager's member list shows it.
    pub async fn op(&self, op: &ClusterOp) -> Step<Result<(), String>> {
        let limit = self.settings.drain_timeout;
        let store = &self.app.store;
        let shown = self
            .while_wanted(Wanted::ClusterOp(op.clone()), limit, || async move {
                let members = store.cluster(&op.cluster).await?.map(|c| c.members).unwrap_or_default();
                Ok(op.done(&members).then_some(()))
            })
            .await?;
        Ok(shown.ok_or_else(|| {
            format!(
                "Swarm {} did not show node {} {:?} within {} s (no manager's node agent reporting?)",
                op.cluster,
                op.node,
                op.op,
                limit.as_secs()
            )
        }))
    }

    /// Keeps `wanted` as what the node wants of an agent (handed out at its
    /// next report) while polling `seen` until it finds the outcome, at
    /// most `limit`; `None` when the time ran out. It is cleared after.
    pub async fn while_wanted<T, F>(
        &self,
        wanted: Wanted,
        limit: Duration,
        mut seen: impl FnMut() -> F,
    ) -> Step<Option<T>>
    where
        F: Future<Output = Step<Option<T>>>,
    {
        let store = &self.app.store;
        store.want_for_campaign_node(self.campaign_id, self.machine_id, Some(&wanted)).await?;
        let started = Instant::now();
        let found = loop {
            if let Some(found) = seen().await? {
                break Some(found);
            }
            if started.elapsed() > limit {
                break None;
            }
            tokio::time::sleep(self.settings.task_poll.max(Duration::from_millis(50))).await;
        };
        store.want_for_campaign_node(self.campaign_id, self.machine_id, None).await?;
        Ok(found)
    }
}
