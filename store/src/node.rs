//! Deployed nodes: their agent's credential and last report, and the
//! clusters Slipway forms from them.

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;

use super::{parse_col, rfc3339, sha256_hex, Result, Store, StoreError};
use model::join::JoinKind;
use wire::{Member, NodeStatus};

/// A node agent's last report, as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct NodeReport {
    pub status: NodeStatus,
    pub first_seen: String,
    pub last_seen: String,
}

/// A cluster Slipway formed. Join tokens are kept for the nodes and never
/// shown.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Cluster {
    pub name: String,
    pub kind: JoinKind,
    /// The machine that created it (its first manager).
    pub initiator: String,
    /// `ip:2377` once created.
    pub endpoint: Option<String>,
    /// As the cluster's manager last reported them.
    pub members: Vec<Member>,
    pub created_at: String,
    pub updated_at: String,
    #[serde(skip)]
    pub worker_token: Option<String>,
    #[serde(skip)]
    pub manager_token: Option<String>,
}

fn cluster_from_row(r: &AnyRow) -> Result<Cluster> {
    let members: String = r.try_get("members")?;
    Ok(Cluster {
        name: r.try_get("name")?,
        kind: parse_col(r, "kind")?,
        initiator: r.try_get("initiator")?,
        endpoint: r.try_get("endpoint")?,
        members: serde_json::from_str(&members).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        created_at: rfc3339(r.try_get("created_at_ms")?),
        updated_at: rfc3339(r.try_get("updated_at_ms")?),
        worker_token: r.try_get("worker_token")?,
        manager_token: r.try_get("manager_token")?,
    })
}

impl Store {
    /// A fresh node credential for `machine_id`, replacing any earlier one.
    pub async fn issue_node_token(&self, machine_id: &str) -> Result<String> {
        let token = crate::random_token();
        let mut tx = self.writer.begin().await?;
        sqlx::query("DELETE FROM node_tokens WHERE machine_id = $1").bind(machine_id).execute(&mut *tx).await?;
        sqlx::query("INSERT INTO node_tokens (machine_id, token_sha256, created_at_ms) VALUES ($1, $2, $3)")
            .bind(machine_id)
            .bind(sha256_hex(&token))
            .bind(self.now_ms())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(token)
    }

    pub async fn machine_for_node_token(&self, token: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT machine_id FROM node_tokens WHERE token_sha256 = $1")
            .bind(sha256_hex(token))
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get("machine_id")).transpose()?)
    }

    /// Stores a node's report; returns true for its first one (worth an
    /// event: the deployed OS came up and its agent reached us). Only while
    /// the machine is deployed or joined, checked in the same statements:
    /// a report that races an OS refresh's start (which deletes the old
    /// OS's last report) is refused, not stored after it.
    pub async fn record_node_status(&self, machine_id: &str, status: &NodeStatus) -> Result<bool> {
        const UP: &str = "EXISTS (SELECT 1 FROM machines WHERE id = $3 AND state IN ('deployed', 'joined'))";
        let text = serde_json::to_string(status).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let now = self.now_ms();
        let mut tx = self.writer.begin().await?;
        let updated = sqlx::query(&format!(
            "UPDATE node_status SET status = $1, last_seen_ms = $2 WHERE machine_id = $3 AND {UP}"
        ))
        .bind(&text)
        .bind(now)
        .bind(machine_id)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() == 0 {
            let inserted = sqlx::query(&format!(
                "INSERT INTO node_status (machine_id, status, first_seen_ms, last_seen_ms) \
                 SELECT $3, $1, $2, $2 WHERE {UP} AND NOT EXISTS (SELECT 1 FROM node_status WHERE machine_id = $3)"
            ))
            .bind(&text)
            .bind(now)
            .bind(machine_id)
            .execute(&mut *tx)
            .await?;
            if inserted.rows_affected() == 0 {
                return Err(StoreError::Conflict(format!("machine {machine_id} is not deployed")));
            }
        }
        let first = updated.rows_affected() == 0;
        if first {
            Self::event_in(
                &mut *tx,
                Some(machine_id),
                now,
                "node.agent_started",
                serde_json::to_value(status).unwrap_or_default(),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(first)
    }

    pub async fn node_report(&self, machine_id: &str) -> Result<Option<NodeReport>> {
        let row = sqlx::query("SELECT * FROM node_status WHERE machine_id = $1")
            .bind(machine_id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| -> Result<NodeReport> {
            let text: String = r.try_get("status")?;
            Ok(NodeReport {
                status: serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(e.to_string()))?,
                first_seen: rfc3339(r.try_get("first_seen_ms")?),
                last_seen: rfc3339(r.try_get("last_seen_ms")?),
            })
        })
        .transpose()
    }

    /// The cluster `name`, creating it with `machine_id` as its initiator
    /// when it does not exist yet. Two nodes asking at once get the same
    /// initiator: the insert is a no-op for the second.
    pub async fn claim_cluster(&self, name: &str, kind: JoinKind, machine_id: &str) -> Result<Cluster> {
        let now = self.now_ms();
        sqlx::query(
            "INSERT INTO clusters (name, kind, initiator, members, created_at_ms, updated_at_ms) \
             VALUES ($1, $2, $3, '[]', $4, $4) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(kind.as_str())
        .bind(machine_id)
        .bind(now)
        .execute(&self.writer)
        .await?;
        self.cluster(name).await?.ok_or_else(|| StoreError::Corrupt(format!("cluster {name} vanished")))
    }

    pub async fn cluster(&self, name: &str) -> Result<Option<Cluster>> {
        let row = sqlx::query("SELECT * FROM clusters WHERE name = $1").bind(name).fetch_optional(&self.pool).await?;
        row.as_ref().map(cluster_from_row).transpose()
    }

    pub async fn clusters(&self) -> Result<Vec<Cluster>> {
        let rows = sqlx::query("SELECT * FROM clusters ORDER BY name").fetch_all(&self.pool).await?;
        rows.iter().map(cluster_from_row).collect()
    }

    /// The initiator's report that the cluster exists: where to join and
    /// with which tokens. Refused from any other machine.
    pub async fn cluster_created(
        &self,
        name: &str,
        machine_id: &str,
        endpoint: &str,
        worker_token: &str,
        manager_token: &str,
    ) -> Result<()> {
        let now = self.now_ms();
        let mut tx = self.writer.begin().await?;
        let updated = sqlx::query(
            "UPDATE clusters SET endpoint = $1, worker_token = $2, manager_token = $3, updated_at_ms = $4 \
             WHERE name = $5 AND initiator = $6",
        )
        .bind(endpoint)
        .bind(worker_token)
        .bind(manager_token)
        .bind(now)
        .bind(name)
        .bind(machine_id)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() != 1 {
            return Err(StoreError::Conflict(format!("machine {machine_id} did not create cluster {name}")));
        }
        Self::event_in(
            &mut *tx,
            Some(machine_id),
            now,
            "cluster.created",
            serde_json::json!({ "cluster": name, "endpoint": endpoint }),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// `ip:2377` of a manager of the Slipway-formed cluster `name` other than
    /// `except` whose node agent reported since `since_ms`: where a node
    /// joins when the one that created the Swarm may be the one away.
    pub async fn live_manager_endpoint(&self, name: &str, except: &str, since_ms: i64) -> Result<Option<String>> {
        let rows = sqlx::query(
            "SELECT n.machine_id, n.status, d.spec, d.cluster FROM node_status n \
             JOIN deployments d ON d.machine_id = n.machine_id \
             WHERE n.last_seen_ms >= $1 AND n.machine_id <> $2 ORDER BY n.machine_id",
        )
        .bind(since_ms)
        .bind(except)
        .fetch_all(&self.pool)
        .await?;
        for r in rows {
            let status: String = r.try_get("status")?;
            let (Ok(status), Ok(spec)) =
                (serde_json::from_str::<NodeStatus>(&status), crate::deploy::spec_from_row(&r))
            else {
                continue;
            };
            let in_cluster = spec
                .cluster
                .is_some_and(|c| c.kind == model::join::JoinKind::Swarm && c.cluster.as_deref() == Some(name));
            if let (true, Some(true), Some(address)) =
                (in_cluster, status.cluster.as_ref().map(|c| c.manager), status.address)
            {
                return Ok(Some(format!("{address}:2377")));
            }
        }
        Ok(None)
    }

    /// Members as a manager of the cluster sees them.
    pub async fn set_cluster_members(&self, name: &str, members: &[Member]) -> Result<()> {
        let text = serde_json::to_string(members).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        sqlx::query("UPDATE clusters SET members = $1, updated_at_ms = $2 WHERE name = $3")
            .bind(text)
            .bind(self.now_ms())
            .bind(name)
            .execute(&self.writer)
            .await?;
        Ok(())
    }
}
