//! Refresh campaigns and their nodes' progress, durable so a restarted
//! appliance goes on where it was. Every change of a campaign's or a
//! node's state is guarded on the state it was read in (so two runners,
//! or a runner and an operator, cannot both move it) and is recorded as a
//! `campaign.*` event in the same transaction. Deciding what changes is
//! `campaign::engine`'s; this module only stores.

use std::str::FromStr;

use serde_json::{json, Value};
use sqlx::any::AnyRow;
use sqlx::Row;

use super::{Result, Store, StoreError};
use model::campaign::{Campaign, CampaignState, NodeProgress, NodeState};

fn json_text<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn json_col<T: serde::de::DeserializeOwned>(r: &AnyRow, col: &str) -> Result<T> {
    let text: String = r.try_get(col)?;
    serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(format!("campaign {col}: {e}")))
}

fn campaign_from_row(r: &AnyRow) -> Result<Campaign> {
    let state: String = r.try_get("state")?;
    Ok(Campaign {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        targets: json_col(r, "targets")?,
        action: json_col(r, "action")?,
        schedule: json_col(r, "schedule")?,
        rollout: json_col(r, "rollout")?,
        gates: json_col(r, "gates")?,
        state: CampaignState::from_str(&state).map_err(StoreError::Corrupt)?,
        reason: r.try_get("reason")?,
        acknowledged_failures: u32::try_from(r.try_get::<i64, _>("acknowledged_failures")?).unwrap_or(0),
        created_at_ms: r.try_get("created_at_ms")?,
        updated_at_ms: r.try_get("updated_at_ms")?,
        started_at_ms: r.try_get("started_at_ms")?,
        finished_at_ms: r.try_get("finished_at_ms")?,
    })
}

fn node_from_row(r: &AnyRow) -> Result<NodeProgress> {
    let state: String = r.try_get("state")?;
    Ok(NodeProgress {
        machine_id: r.try_get("machine_id")?,
        position: u32::try_from(r.try_get::<i64, _>("position")?).unwrap_or(u32::MAX),
        rack: r.try_get("rack")?,
        state: NodeState::from_str(&state).map_err(StoreError::Corrupt)?,
        reason: r.try_get("reason")?,
        task: r.try_get("task")?,
        old_version: r.try_get("old_version")?,
        new_version: r.try_get("new_version")?,
        started_at_ms: r.try_get("started_at_ms")?,
        finished_at_ms: r.try_get("finished_at_ms")?,
    })
}

const ACTIVE: &str = "('scheduled', 'running', 'held', 'paused')";

impl Store {
    /// Stores a new campaign with its nodes (all pending). A machine can be
    /// in one unfinished campaign at a time (409 otherwise).
    pub async fn insert_campaign(&self, c: &Campaign, nodes: &[NodeProgress]) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        for n in nodes {
            let busy = sqlx::query(&format!(
                "SELECT c.id FROM campaign_nodes n JOIN campaigns c ON c.id = n.campaign_id \
                 WHERE n.machine_id = $1 AND c.state IN {ACTIVE}"
            ))
            .bind(&n.machine_id)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(row) = busy {
                let other: String = row.try_get("id")?;
                return Err(StoreError::Conflict(format!(
                    "machine {} is in campaign {other}, which has not finished",
                    n.machine_id
                )));
            }
        }
        sqlx::query(
            "INSERT INTO campaigns (id, name, targets, action, schedule, rollout, gates, state, reason, \
             acknowledged_failures, created_at_ms, updated_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL, 0, $9, $9)",
        )
        .bind(&c.id)
        .bind(&c.name)
        .bind(json_text(&c.targets)?)
        .bind(json_text(&c.action)?)
        .bind(json_text(&c.schedule)?)
        .bind(json_text(&c.rollout)?)
        .bind(json_text(&c.gates)?)
        .bind(c.state.as_str())
        .bind(c.created_at_ms)
        .execute(&mut *tx)
        .await?;
        for n in nodes {
            sqlx::query(
                "INSERT INTO campaign_nodes (campaign_id, machine_id, position, rack, state, updated_at_ms) \
                 VALUES ($1, $2, $3, $4, 'pending', $5)",
            )
            .bind(&c.id)
            .bind(&n.machine_id)
            .bind(i64::from(n.position))
            .bind(n.rack.clone())
            .bind(c.created_at_ms)
            .execute(&mut *tx)
            .await?;
        }
        let detail = json!({ "campaign": c.id, "name": c.name, "action": c.action, "nodes": nodes.len() });
        Self::event_in(&mut *tx, None, c.created_at_ms, "campaign.created", detail).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn campaign(&self, id: &str) -> Result<Option<Campaign>> {
        let row = sqlx::query("SELECT * FROM campaigns WHERE id = $1").bind(id).fetch_optional(&self.pool).await?;
        row.as_ref().map(campaign_from_row).transpose()
    }

    pub async fn campaigns(&self) -> Result<Vec<Campaign>> {
        let rows = sqlx::query("SELECT * FROM campaigns ORDER BY created_at_ms, id").fetch_all(&self.pool).await?;
        rows.iter().map(campaign_from_row).collect()
    }

    /// Campaigns the runner looks at: unfinished ones, and finished ones
    /// with a node still in progress (a cancel lets an update finish).
    pub async fn campaigns_to_run(&self) -> Result<Vec<Campaign>> {
        let rows = sqlx::query(&format!(
            "SELECT * FROM campaigns WHERE state IN {ACTIVE} OR id IN \
             (SELECT campaign_id FROM campaign_nodes WHERE state IN ('applying', 'verifying')) \
             ORDER BY created_at_ms, id"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(campaign_from_row).collect()
    }

    pub async fn campaign_nodes(&self, id: &str) -> Result<Vec<NodeProgress>> {
        let rows = sqlx::query("SELECT * FROM campaign_nodes WHERE campaign_id = $1 ORDER BY position")
            .bind(id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(node_from_row).collect()
    }

    /// Moves the campaign from one of `from` to `to` and records `event`
    /// with `detail` (plus the campaign, states and reason). Returns the
    /// state it left, or `None` when it was in none of `from`.
    /// `acknowledge` (an operator's resume) accepts the failures so far.
    #[allow(clippy::too_many_arguments)]
    pub async fn transition_campaign(
        &self,
        id: &str,
        from: &[CampaignState],
        to: CampaignState,
        reason: Option<&str>,
        event: &str,
        mut detail: Value,
        acknowledge: bool,
    ) -> Result<Option<CampaignState>> {
        let mut tx = self.writer.begin().await?;
        let Some(row) =
            sqlx::query("SELECT state FROM campaigns WHERE id = $1").bind(id).fetch_optional(&mut *tx).await?
        else {
            return Ok(None);
        };
        let was = CampaignState::from_str(&row.try_get::<String, _>("state")?).map_err(StoreError::Corrupt)?;
        if !from.contains(&was) {
            return Ok(None);
        }
        let now = self.now_ms();
        let failed = if acknowledge {
            let row =
                sqlx::query("SELECT COUNT(*) AS n FROM campaign_nodes WHERE campaign_id = $1 AND state IN ('failed', 'rolled_back')")
                    .bind(id)
                    .fetch_one(&mut *tx)
                    .await?;
            Some(row.try_get::<i64, _>("n")?)
        } else {
            None
        };
        let updated = sqlx::query(
            "UPDATE campaigns SET state = $1, reason = $2, updated_at_ms = $3, \
             started_at_ms = CASE WHEN $4 = 1 THEN COALESCE(started_at_ms, $3) ELSE started_at_ms END, \
             finished_at_ms = CASE WHEN $5 = 1 THEN $3 ELSE finished_at_ms END, \
             acknowledged_failures = COALESCE($6, acknowledged_failures) \
             WHERE id = $7 AND state = $8",
        )
        .bind(to.as_str())
        .bind(reason.map(str::to_string))
        .bind(now)
        .bind(i64::from(to == CampaignState::Running))
        .bind(i64::from(to.is_final()))
        .bind(failed)
        .bind(id)
        .bind(was.as_str())
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() != 1 {
            return Ok(None);
        }
        if let Some(obj) = detail.as_object_mut() {
            obj.insert("campaign".into(), json!(id));
            obj.insert("from".into(), json!(was));
            obj.insert("to".into(), json!(to));
            if let Some(reason) = reason {
                obj.insert("reason".into(), json!(reason));
            }
        }
        Self::event_in(&mut *tx, None, now, event, detail).await?;
        tx.commit().await?;
        Ok(Some(was))
    }

    /// `pending -> applying`, only while the campaign is running. Returns
    /// whether it moved (`campaign.node_started`).
    pub async fn start_campaign_node(&self, campaign_id: &str, machine_id: &str) -> Result<bool> {
        let mut tx = self.writer.begin().await?;
        let now = self.now_ms();
        let updated = sqlx::query(
            "UPDATE campaign_nodes SET state = 'applying', started_at_ms = $1, updated_at_ms = $1 \
             WHERE campaign_id = $2 AND machine_id = $3 AND state = 'pending' \
             AND EXISTS (SELECT 1 FROM campaigns WHERE id = $2 AND state = 'running')",
        )
        .bind(now)
        .bind(campaign_id)
        .bind(machine_id)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() == 1 {
            Self::event_in(
                &mut *tx,
                Some(machine_id),
                now,
                "campaign.node_started",
                json!({ "campaign": campaign_id }),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(updated.rows_affected() == 1)
    }

    /// Notes on a node in progress: the version (or image) found before,
    /// the move to `verifying`.
    pub async fn note_campaign_node(
        &self,
        campaign_id: &str,
        machine_id: &str,
        old_version: Option<&str>,
        verifying: bool,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE campaign_nodes SET old_version = COALESCE(old_version, $1), \
             state = CASE WHEN $2 = 1 THEN 'verifying' ELSE state END, updated_at_ms = $3 \
             WHERE campaign_id = $4 AND machine_id = $5 AND state IN ('applying', 'verifying')",
        )
        .bind(old_version.map(str::to_string))
        .bind(i64::from(verifying))
        .bind(self.now_ms())
        .bind(campaign_id)
        .bind(machine_id)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// A node in progress is `done` or `failed` (with why), recorded as
    /// `campaign.node_done` / `campaign.node_failed`.
    pub async fn finish_campaign_node(
        &self,
        campaign_id: &str,
        machine_id: &str,
        outcome: Result<&str, &str>,
        detail: Value,
    ) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        let now = self.now_ms();
        let (state, version, reason, event) = match outcome {
            Ok(version) => (NodeState::Done, Some(version), None, "campaign.node_done"),
            Err(why) => (NodeState::Failed, None, Some(why), "campaign.node_failed"),
        };
        let updated = sqlx::query(
            "UPDATE campaign_nodes SET state = $1, new_version = COALESCE($2, new_version), reason = $3, \
             wanted = NULL, finished_at_ms = $4, updated_at_ms = $4 \
             WHERE campaign_id = $5 AND machine_id = $6 AND state IN ('applying', 'verifying')",
        )
        .bind(state.as_str())
        .bind(version.map(str::to_string))
        .bind(reason.map(str::to_string))
        .bind(now)
        .bind(campaign_id)
        .bind(machine_id)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() == 1 {
            let mut detail = detail;
            if let Some(obj) = detail.as_object_mut() {
                obj.insert("campaign".into(), json!(campaign_id));
                obj.insert("version".into(), json!(version));
                obj.insert("reason".into(), json!(reason));
            }
            Self::event_in(&mut *tx, Some(machine_id), now, event, detail).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
