//! OS refreshes: a deployed machine's new deployment (moved to
//! `refreshing` in the same transaction), each refresh node's saga and
//! what it wants of agents (the cluster operations a Swarm manager is
//! asked for, the drain commands a node's agent runs), and a node's
//! rolled-back outcome. Deciding is `model::refresh`'s; this module only
//! stores.

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use sqlx::Row;

use super::{Image, Result, Store, StoreError};
use model::drain::Wanted;
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
        match self.fire_in(&mut tx, machine_id, Trigger::RefreshRequested, cause, Some(deadline_ms)).await? {
            Some((_, MachineState::Refreshing)) => {}
            Some((from, _)) => {
                return Err(StoreError::Conflict(format!(
                    "machine {machine_id} is {from}; only a deployed or joined machine can be refreshed"
                )))
            }
            None => return Err(StoreError::Conflict(format!("machine {machine_id} does not exist"))),
        }
        let now = self.now_ms();
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

    /// The stored saga of a campaign node (an OS refresh's or a firmware
    /// update's; `None` before its first step, or when an appliance from
    /// before sagas started it).
    pub async fn campaign_saga<T: DeserializeOwned>(&self, campaign_id: &str, machine_id: &str) -> Result<Option<T>> {
        let row = sqlx::query("SELECT saga FROM campaign_nodes WHERE campaign_id = $1 AND machine_id = $2")
            .bind(campaign_id)
            .bind(machine_id)
            .fetch_optional(&self.pool)
            .await?;
        let Some(text) = row.map(|r| r.try_get::<Option<String>, _>("saga")).transpose()?.flatten() else {
            return Ok(None);
        };
        serde_json::from_str(&text).map(Some).map_err(|e| StoreError::Corrupt(format!("campaign node saga: {e}")))
    }

    /// Stores a node's saga and what its phase wants of an agent, while
    /// the node is in progress (a node an operator or another runner
    /// finished stays finished).
    pub async fn save_campaign_saga<T: Serialize>(
        &self,
        campaign_id: &str,
        machine_id: &str,
        saga: &T,
        wanted: Option<&Wanted>,
    ) -> Result<()> {
        let text = serde_json::to_string(saga).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let wanted = wanted.map(serde_json::to_string).transpose().map_err(|e| StoreError::Corrupt(e.to_string()))?;
        sqlx::query(
            "UPDATE campaign_nodes SET saga = $1, wanted = $2, updated_at_ms = $3 \
             WHERE campaign_id = $4 AND machine_id = $5 AND state IN ('applying', 'verifying')",
        )
        .bind(text)
        .bind(wanted)
        .bind(self.now_ms())
        .bind(campaign_id)
        .bind(machine_id)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// What the nodes in progress want, of `machine_id`'s agent or (with
    /// `None`) of any, oldest first.
    async fn wanted(&self, machine_id: Option<&str>) -> Result<Vec<Wanted>> {
        const IN_PROGRESS: &str = "SELECT wanted FROM campaign_nodes \
             WHERE state IN ('applying', 'verifying') AND wanted IS NOT NULL";
        let sql = match machine_id {
            Some(_) => format!("{IN_PROGRESS} AND machine_id = $1"),
            None => format!("{IN_PROGRESS} ORDER BY started_at_ms"),
        };
        let mut query = sqlx::query(&sql);
        if let Some(id) = machine_id {
            query = query.bind(id.to_string());
        }
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter()
            .map(|row| {
                let text: String = row.try_get("wanted")?;
                serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(format!("campaign node wanted: {e}")))
            })
            .collect()
    }

    /// The cluster operations that nodes in progress are waiting for on
    /// `cluster`, oldest first.
    pub async fn cluster_ops(&self, cluster: &str) -> Result<Vec<ClusterOp>> {
        let wanted = self.wanted(None).await?;
        Ok(wanted
            .into_iter()
            .filter_map(|w| match w {
                Wanted::ClusterOp(op) if op.cluster == cluster => Some(op),
                _ => None,
            })
            .collect())
    }

    /// The drain or undrain command a node in progress waits for its own
    /// agent to run.
    pub async fn node_hook(&self, machine_id: &str) -> Result<Option<NodeHook>> {
        Ok(self.wanted(Some(machine_id)).await?.into_iter().find_map(|w| match w {
            Wanted::Hook(hook) => Some(hook),
            Wanted::ClusterOp(_) => None,
        }))
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
        let now = self.now_ms();
        let updated = sqlx::query(
            "UPDATE campaign_nodes SET state = 'rolled_back', reason = $1, task = NULL, wanted = NULL, finished_at_ms = $2, \
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
