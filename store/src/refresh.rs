//! OS refreshes: a deployed machine's new deployment (moved to
//! `refreshing` in the same transaction), the cluster operations a
//! refresh campaign asks a Swarm manager for, and a node's rolled-back
//! outcome. Deciding is `campaign::os_refresh`'s and
//! `campaign::refresh_plan`'s; this module only stores.

use serde_json::{json, Value};
use sqlx::Row;

use super::{now_ms, Image, Result, Store, StoreError};
use model::hook::NodeHook;
use model::lifecycle::{MachineState, Trigger};
use model::refresh_plan::ClusterOp;

impl Store {
    /// Replaces a deployed, joined (or, for a rollback, refreshing)
    /// machine's deployment with `image` and `spec` and moves it to
    /// `refreshing` with `deadline_ms`, in one transaction. The old OS's
    /// last node report goes with it, so any report after this comes from
    /// the new OS (its credential is minted when the installer takes the
    /// deployment).
    pub async fn start_refresh(
        &self,
        machine_id: &str,
        image: &Image,
        spec: &model::deploy::DeploymentSpec,
        deadline_ms: i64,
        cause: &str,
    ) -> Result<()> {
        let total = image
            .raw_bytes
            .ok_or_else(|| StoreError::Conflict(format!("image {:?} is not available", image.meta.name)))?;
        let mut tx = self.writer.begin().await?;
        match Self::fire_in(&mut tx, machine_id, Trigger::RefreshRequested, cause, Some(deadline_ms)).await? {
            Some((_, MachineState::Refreshing)) => {}
            Some((from, _)) => {
                return Err(StoreError::Conflict(format!(
                    "machine {machine_id} is {from}; only a deployed or joined machine can be refreshed"
                )))
            }
            None => return Err(StoreError::Conflict(format!("machine {machine_id} does not exist"))),
        }
        let now = now_ms();
        for table in ["deployments", "node_status"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE machine_id = $1"))
                .bind(machine_id)
                .execute(&mut *tx)
                .await?;
        }
        Self::insert_deployment_in(&mut tx, machine_id, &image.meta.name, spec, total, now).await?;
        let detail = json!({ "image": image.meta.name, "spec": spec, "refresh": true, "cause": cause });
        Self::event_in(&mut *tx, Some(machine_id), now, "deploy.requested", detail).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The cluster operations that refresh nodes in progress are waiting
    /// for on `cluster` (kept in the node's `task`), oldest first.
    pub async fn cluster_ops(&self, cluster: &str) -> Result<Vec<ClusterOp>> {
        let rows = sqlx::query(
            "SELECT task FROM campaign_nodes WHERE state IN ('applying', 'verifying') AND task IS NOT NULL \
             ORDER BY started_at_ms",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut ops = vec![];
        for row in rows {
            let task: String = row.try_get("task")?;
            // Firmware nodes keep BMC task ids here: not ours.
            if let Ok(op) = serde_json::from_str::<ClusterOp>(&task) {
                if op.cluster == cluster {
                    ops.push(op);
                }
            }
        }
        Ok(ops)
    }

    /// The drain or undrain command a refresh node in progress waits for
    /// its own agent to run (kept in the node's `task`).
    pub async fn node_hook(&self, machine_id: &str) -> Result<Option<NodeHook>> {
        let rows = sqlx::query(
            "SELECT task FROM campaign_nodes WHERE machine_id = $1 AND state IN ('applying', 'verifying') \
             AND task IS NOT NULL",
        )
        .bind(machine_id)
        .fetch_all(&self.pool)
        .await?;
        for row in rows {
            let task: String = row.try_get("task")?;
            // Other tasks (BMC task ids, Swarm operations) are not hooks.
            if let Ok(hook) = serde_json::from_str::<NodeHook>(&task) {
                return Ok(Some(hook));
            }
        }
        Ok(None)
    }

    /// An OS refresh node that failed and is back on its previous image:
    /// `rolled_back` with why, recorded as `campaign.node_rolled_back`.
    pub async fn roll_back_campaign_node(
        &self,
        campaign_id: &str,
        machine_id: &str,
        reason: &str,
        detail: Value,
    ) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        let now = now_ms();
        let updated = sqlx::query(
            "UPDATE campaign_nodes SET state = 'rolled_back', reason = $1, task = NULL, finished_at_ms = $2, \
             updated_at_ms = $2 WHERE campaign_id = $3 AND machine_id = $4 AND state IN ('applying', 'verifying')",
        )
        .bind(reason)
        .bind(now)
        .bind(campaign_id)
        .bind(machine_id)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() == 1 {
            let mut detail = detail;
            if let Some(obj) = detail.as_object_mut() {
                obj.insert("campaign".into(), json!(campaign_id));
                obj.insert("reason".into(), json!(reason));
            }
            Self::event_in(&mut *tx, Some(machine_id), now, "campaign.node_rolled_back", detail).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
