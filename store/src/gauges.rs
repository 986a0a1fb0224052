//! What `/metrics` reads from the database: counts by state for the
//! gauges set at scrape, and the times a deploy's phases began, for the
//! phase-duration histograms (`api::metrics_catalog`).
//!
//! Phase clocks are read from rows and events that already exist
//! (`deploy.requested`, `deploy.phase`, the node agent's first report);
//! nothing here writes.

use std::collections::HashMap;

use sqlx::{AnyConnection, Row};

use super::{Result, Store};

impl Store {
    /// Campaigns by state (every campaign, finished ones included).
    pub async fn count_campaigns_by_state(&self) -> Result<HashMap<String, i64>> {
        self.count_grouped("SELECT state, COUNT(*) AS n FROM campaigns GROUP BY state").await
    }

    /// Target nodes by state, of campaigns not yet finished: finished
    /// campaigns would make `done` grow for ever.
    pub async fn count_active_campaign_nodes_by_state(&self) -> Result<HashMap<String, i64>> {
        self.count_grouped(
            "SELECT n.state AS state, COUNT(*) AS n FROM campaign_nodes n JOIN campaigns c ON c.id = n.campaign_id \
             WHERE c.state NOT IN ('completed', 'failed', 'cancelled') GROUP BY n.state",
        )
        .await
    }

    async fn count_grouped(&self, sql: &str) -> Result<HashMap<String, i64>> {
        let rows = sqlx::query(sql).fetch_all(&self.pool).await?;
        rows.iter().map(|r| Ok((r.try_get::<String, _>("state")?, r.try_get::<i64, _>("n")?))).collect()
    }

    /// When the machine's deploy entered its current phase: its latest
    /// `deploy.requested` or `deploy.phase` event. Read inside the
    /// transaction that records the next phase, before its event.
    pub(super) async fn deploy_phase_began_ms(conn: &mut AnyConnection, machine_id: &str) -> Result<Option<i64>> {
        let row = sqlx::query(
            "SELECT MAX(at_ms) AS at_ms FROM events WHERE machine_id = $1 AND kind IN ('deploy.requested', 'deploy.phase')",
        )
        .bind(machine_id)
        .fetch_one(conn)
        .await?;
        Ok(row.try_get::<Option<i64>, _>("at_ms")?)
    }

    /// When the machine's image was reported written (the agent was told
    /// to reboot into it), if that is its deployment's last phase.
    pub async fn deploy_written_at_ms(&self, machine_id: &str) -> Result<Option<i64>> {
        let row = sqlx::query("SELECT updated_at_ms FROM deployments WHERE machine_id = $1 AND phase = 'written'")
            .bind(machine_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get::<i64, _>("updated_at_ms")).transpose()?)
    }

    /// When the machine's node agent first reported from the deployed OS.
    pub async fn node_first_seen_ms(&self, machine_id: &str) -> Result<Option<i64>> {
        let row = sqlx::query("SELECT first_seen_ms FROM node_status WHERE machine_id = $1")
            .bind(machine_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get::<i64, _>("first_seen_ms")).transpose()?)
    }
}
